"""Marked events end to end: the daemon records, a mark arrives (CLI over the control socket or
the GPIO button through gpiozero's MockFactory), footage is protected at once, and a verified
clip lands in the outbox."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import time
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from edged.app.daemon import Daemon
from edged.core.paths import StatePaths
from edged.events.store import EventStore
from edged.footage.index import Index
from edged.upload.outbox import Outbox
from tests.support import SMALL, Running, decode_all, packets, timeline_s, wait_until


def built(d: Daemon, event_id: str) -> bool:
    e = EventStore(d.paths.events).get(event_id)
    return e is not None and e.state != "open"


def cli(settings_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args, "--config", str(settings_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def config_file(tmp_path: Path, s) -> Path:
    p = tmp_path / "edged.toml"
    p.write_text(f'[storage]\ndir = "{s.state_dir}"\n')
    return p


def test_cli_mark_builds_a_verified_clip_with_pre_and_post_roll(settings_factory, tmp_path):
    # The delivery folder sits below a file at first, so the clip cannot be delivered (and its
    # footage released) before the test has looked at the hold; unpaced, 8 s of post-roll pass
    # faster than a test can look.
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    s = settings_factory(
        camera=SMALL,
        clips={"pre_roll_seconds": 12.0, "post_roll_seconds": 8.0},
        storage={"segment_seconds": 5.0},
        upload={"directory": {"path": str(blocker / "delivered")}},
    )
    cfg = config_file(tmp_path, s)
    with Running(s) as d:
        sock = d.paths.control
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600, "control socket must be owner-only"
        wait_until(lambda: timeline_s(d) > 25, 60, "25 s of footage")
        out = cli(cfg, "mark", "--note", "suspect vehicle")
        assert out.returncode == 0, out.stderr
        event_id = out.stdout.split()[-1]
        event = EventStore(d.paths.events).get(event_id)
        mark = EventStore(d.paths.events).marks(event_id)[0]
        # Protected at once, before the post-roll exists.
        held_now = [x for x in Index(d.paths.index).stored() if x.held]
        assert held_now and held_now[0].mono_start_ns <= event.start_mono_ns
        wait_until(lambda: built(d, event_id), 60, "clip built")
        wait_until(
            lambda: any(x.attempts for x in Outbox(d.paths.outbox).deliveries(clip_id=event_id)), 30, "a first try"
        )
        assert any(x.held for x in Index(d.paths.index).stored()), "held until delivered"
        blocker.unlink()  # the folder can be made now: the next try delivers
        # The directory target copies it into the folder; then its footage is released.
        wait_until(
            lambda: Outbox(d.paths.outbox).clip_delivered(event_id), 30, "clip delivered to the directory target"
        )
        wait_until(lambda: not any(x.held for x in Index(d.paths.index).stored()), 10, "footage released")
    event = EventStore(s.state_dir / "events.sqlite").get(event_id)
    assert event.state == "built", event.reason
    manifest = json.loads((s.state_dir / "clips" / event_id / "manifest.json").read_text())
    assert manifest["marks"][0]["note"] == "suspect vehicle" and manifest["marks"][0]["source"] == "cli"
    assert manifest["pre_roll_seconds"]["short"] is False
    assert manifest["pre_roll_seconds"]["actual"] >= 12.0  # trimmed to the keyframe at or before
    outbox = Outbox(StatePaths(s.state_dir).outbox)
    parts = outbox.parts(event_id)
    assert [(x.target, x.state) for x in outbox.deliveries(clip_id=event_id)] == [("directory", "delivered")]
    part = Path(parts[0].path)
    assert (s.delivery_dir / event_id / part.name).read_bytes() == part.read_bytes()
    assert (
        json.loads((s.delivery_dir / event_id / "manifest.json").read_text())["parts"][0]["sha256"] == parts[0].sha256
    )
    frames, _ = decode_all(part)
    v = packets(part, "video")
    assert v.keyframes[0] == v.pts_ms[0]
    assert manifest["parts"][0]["sha256"] == parts[0].sha256
    assert event.end_mono_ns == mark.mono_ns + 8_000_000_000
    # Covers [mark − pre-roll, mark + post-roll]: at least 20 s of frames at 10 fps.
    assert frames >= 200 and parts[0].duration_ms >= 20_000 - 100
    assert manifest["source_segments"] and all(x["sha256"] for x in manifest["source_segments"])
    # `edged clips list --json` and `export` give the operator the same clip.
    listing = json.loads(cli(cfg, "clips", "list", "--json").stdout)
    assert [c["id"] for c in listing] == [event_id] and listing[0]["state"] == "built"
    assert listing[0]["delivery"] == "delivered", listing  # built, and delivered everywhere
    assert f"{event_id}  delivered" in cli(cfg, "clips", "list").stdout
    exported = cli(cfg, "clips", "export", event_id, str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / part.name).read_bytes() == part.read_bytes()
    assert (tmp_path / "out" / "manifest.json").exists()


def test_mark_without_a_daemon_is_a_clear_error(settings_factory, tmp_path):
    s = settings_factory()
    out = cli(config_file(tmp_path, s), "mark")
    assert out.returncode == 1 and "not running" in out.stderr


def test_button_press_marks_and_presses_in_the_post_roll_extend_the_event(settings_factory):
    factory = MockFactory()
    s = settings_factory(
        camera=SMALL | {"paced": True},
        clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 3.0},
        gpio={"button_pin": "GPIO17", "led_pin": "GPIO27"},
        storage={"segment_seconds": 2.0},
    )
    with Running(s, pin_factory=factory) as d:
        wait_until(lambda: timeline_s(d) > 2.5, 10, "footage")
        pin = factory.pin(17)
        for _ in range(3):  # three quick presses: one event
            pin.drive_low()
            time.sleep(0.1)
            pin.drive_high()
            time.sleep(0.3)
        store = EventStore(d.paths.events)
        wait_until(lambda: len(store.events()) == 1 and len(store.marks(store.events()[0].id)) == 3, 10, "3 marks")
        event = store.events()[0]
        marks = store.marks(event.id)
        assert all(m.source == "button" for m in marks)
        assert event.end_mono_ns == marks[-1].mono_ns + 3_000_000_000  # extended by the last press
        wait_until(lambda: built(d, event.id), 60, "clip built")
    assert EventStore(s.state_dir / "events.sqlite").get(event.id).state == "built"


def test_press_right_after_boot_says_the_pre_roll_is_short(settings_factory):
    s = settings_factory(
        camera=SMALL | {"paced": True},
        clips={"pre_roll_seconds": 30.0, "post_roll_seconds": 2.0},
        storage={"segment_seconds": 2.0},
    )
    with Running(s) as d:
        wait_until(lambda: d.recorder.status.frames_encoded >= 15, 10, "first frames")
        result = d.mark("cli", "right after boot")
        wait_until(lambda: built(d, result.event_id), 20, "clip built")
    manifest = json.loads((s.state_dir / "clips" / result.event_id / "manifest.json").read_text())
    pre = manifest["pre_roll_seconds"]
    assert pre["short"] is True and pre["asked"] == 30.0 and 0.5 < pre["actual"] < 5.0


def test_ten_minute_event_is_split_into_parts_within_the_limits(settings_factory):
    s = settings_factory(
        camera=SMALL, audio={"source": "synthetic"}, clips={"pre_roll_seconds": 0.0, "post_roll_seconds": 600.0}
    )
    with Running(s) as d:
        wait_until(lambda: timeline_s(d) > 2, 30, "footage")
        result = d.mark("cli", "long event")
        wait_until(lambda: built(d, result.event_id), 300, "10-minute clip built")
    parts = Outbox(StatePaths(s.state_dir).outbox).parts(result.event_id)
    assert len(parts) >= 5
    for p in parts:
        assert 1 <= p.duration_ms <= 120_000 and p.bytes <= 6_000_000
    # The event is 600 s from the mark; the clip starts at the keyframe at or before the mark
    # (at most one keyframe interval, 10 s, earlier).
    assert 600_000 <= sum(p.duration_ms for p in parts) <= 611_000


def test_restart_during_the_post_roll_finishes_the_event(settings_factory):
    s = settings_factory(
        camera=SMALL | {"paced": True},
        clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 6.0},
        storage={"segment_seconds": 2.0},
    )
    with Running(s) as d:
        wait_until(lambda: d.recorder.status.frames_encoded >= 35, 15, "footage")
        result = d.mark("cli")
        time.sleep(1.0)
    assert EventStore(s.state_dir / "events.sqlite").get(result.event_id).state == "open"
    with Running(s) as d:
        wait_until(lambda: built(d, result.event_id), 30, "event finished after restart")
    event = EventStore(s.state_dir / "events.sqlite").get(result.event_id)
    assert event.state == "built", event.reason
    parts = Outbox(StatePaths(s.state_dir).outbox).parts(result.event_id)
    total_ms = sum(p.duration_ms for p in parts)
    assert total_ms >= 6_000, "the post-roll recorded after the restart is in the clip"


def test_press_while_storage_is_full_of_protected_footage(settings_factory, caplog):
    paced = SMALL | {"paced": True}  # both runs on the real clock, so the pre-roll reaches the first
    s = settings_factory(
        camera=paced, clips={"pre_roll_seconds": 10.0, "post_roll_seconds": 3.0}, storage={"segment_seconds": 2.0}
    )
    Daemon(s, stop_after_s=8).run()
    idx = Index(StatePaths(s.state_dir).index)
    held = idx.stored()
    idx.hold("test:evidence", [x.seq for x in held])
    before = {x.name: x.sha256 for x in held}
    full = settings_factory(
        camera=paced,
        clips={"pre_roll_seconds": 10.0, "post_roll_seconds": 3.0},
        storage={"segment_seconds": 2.0, "min_free_bytes": 10**15},
    )
    caplog.set_level(logging.WARNING)
    with Running(full) as d:
        wait_until(lambda: "storage_full" in d.recorder.status.alarms, 20, "storage_full alarm")
        result = d.mark("cli", "while full")
        wait_until(lambda: built(d, result.event_id), 30, "event finished")
    assert "taken while storage is FULL" in caplog.text
    after = {x.name: x.sha256 for x in Index(StatePaths(s.state_dir).index).stored()}
    assert after == before, "protected footage changed"
    event = EventStore(s.state_dir / "events.sqlite").get(result.event_id)
    # The pre-roll reaches back into the held footage: the clip is built from it.
    assert event.state == "built", event.reason
