"""The Sonoran unit operations through the real daemon and the contract server on 127.0.0.1:
the panic gesture reaching CAD first, ahead of queued uploads and under a full budget, and its
event's clip going first; the position paced while moving and never sent without a fix; a clip's
call note sent once across a kill -9 between its delivery and its note."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from edged.app.daemon import Daemon
from edged.capture.position import Fix
from edged.config import schema as config
from edged.core.paths import StatePaths
from edged.core.states import CallNoteState
from edged.events.manager import PANIC_SOURCE
from edged.upload.budget import PANIC_RESERVE, Claim, RequestBudget, key_fingerprint
from edged.upload.outbox import PRIORITY_MARK, PRIORITY_PANIC, Outbox
from edged.upload.sonoran_unit import read_notes
from tests.contract.sonoran_server import SonoranServer
from tests.support import SMALL, wait_until
from tests.support.upload import ACCOUNT, make_webm

REPO = Path(__file__).resolve().parents[2]
UNIT = "player-1234"
KEY = "test-key-0123456789"


def data(tmp_path: Path, server: SonoranServer, **unit) -> dict:
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY + "\n")
    return {
        "device": {"unit_number": "1A-12"},
        "camera": {"source": "synthetic", "paced": True} | SMALL,
        "audio": {"source": "synthetic"},
        "storage": {"dir": str(tmp_path / "state"), "min_free_bytes": 0, "segment_seconds": 2.0},
        "clips": {"pre_roll_seconds": 2.0, "post_roll_seconds": 2.0},
        "upload": {
            "targets": ["sonoran_v2"],
            "retry_base_seconds": 0.2,
            "retry_cap_seconds": 2.0,
            "sonoran_v2": {
                "base_url": server.url,
                "api_key_file": str(key_file),
                "account_uuid": ACCOUNT,
                "plan": "pro",
                "unit": {"community_user_id": UNIT, "panic": True} | unit,
            },
        },
    }


@contextmanager
def running(settings: config.Settings, **kw):
    d = Daemon(settings, **kw)
    t = threading.Thread(target=d.run, name="daemon-under-test")
    t.start()
    try:
        assert d.wait_ready(30), "the daemon did not become ready"
        wait_until(lambda: d.recorder.status.segments_written >= 1, 30, "footage on disk")
        yield d
    finally:
        d.stop()
        t.join(60)
        assert not t.is_alive(), "the daemon did not stop"


def backlog(d: Daemon, tmp_path: Path, n: int) -> list[str]:
    """``n`` marked clips waiting in the daemon's outbox (queued before anything else happens)."""
    clips = []
    for i in range(n):
        clip = f"20260101T0000{i:02d}Z-b{i:05d}"
        folder = tmp_path / "backlog" / clip
        folder.mkdir(parents=True)
        f = make_webm(folder / "p1.webm", frames=20)
        row = (1, f, f.stat().st_size, 2000, hashlib.sha256(f.read_bytes()).hexdigest())
        d.outbox.enqueue(clip, [row], PRIORITY_MARK, time.time_ns() - 3600 * 10**9 + i)
        clips.append(clip)
    return clips


def uploaded_clips(server: SonoranServer, outbox: Outbox) -> list[str]:
    """The clips whose parts the server accepted, in the order it received them."""
    by_sha = {p.sha256: p.clip_id for p in outbox.parts()}
    return [by_sha.get(u.sha256, "?") for u in server.uploads]


def test_panic_on_and_off_reach_the_server_first_ahead_of_queued_uploads(tmp_path):
    with SonoranServer(keys={KEY: "pro"}, accounts={ACCOUNT}, units={UNIT}) as srv:
        s = config.from_mapping(data(tmp_path, srv), origin="<test>")
        with running(s) as d:
            srv.stall_next(100, 1.5)  # every upload answered slowly: the backlog drains over ~20 s
            queued = backlog(d, tmp_path, 6)
            wait_until(lambda: srv.count(api="v2") >= 1, 30, "the backlog's first upload on the wire")
            assert d.toggle_panic() is True
            wait_until(lambda: srv.panics, 10, "the panic on the wire")
            order = [r.api for r in srv.requests]
            assert order.index("panic") < len(queued), "the panic went before the backlog had drained"
            assert srv.panics[0] == {"communityUserIds": UNIT, "isPanic": True}
            assert srv.units[UNIT] is True

            # its event: a mark whose clip goes before every clip queued earlier
            events = d.events_store.events()
            panic_events = [e.id for e in events if any(m.source == PANIC_SOURCE for m in d.events_store.marks(e.id))]
            assert len(panic_events) == 1
            event_id = panic_events[0]
            wait_until(lambda: d.outbox.parts(event_id), 30, "the panic's clip queued")
            assert {p.priority for p in d.outbox.parts(event_id)} == {PRIORITY_PANIC}
            wait_until(lambda: d.outbox.clip_delivered(event_id), 60, "the panic's clip delivered")
            got = uploaded_clips(srv, d.outbox)
            assert any(c in queued for c in got[got.index(event_id) + 1 :] + [c for c in queued if c not in got]), (
                "the panic's clip went ahead of clips queued before it",
                got,
            )

            cfg = tmp_path / "edged.toml"
            cfg.write_text(f'[storage]\ndir = "{s.state_dir}"\n')
            out = subprocess.run(
                [sys.executable, "-m", "edged", "panic", "off", "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0 and out.stdout.strip() == "panic off", out
            wait_until(lambda: len(srv.panics) == 2, 10, "the panic cleared")
            assert srv.panics[1]["isPanic"] is False and srv.units[UNIT] is False

            def panic_status() -> dict:
                return status(d.paths.root).get("unit", {}).get("panic", {})

            wait_until(lambda: panic_status().get("on") is False and panic_status().get("acknowledged"), 10, "status")
            assert panic_status()["given_up"] is False
        assert len(srv.panics) == 2, "off opened no event and sent nothing more"


def test_a_panic_takes_the_reserved_slot_when_uploads_have_filled_the_keys_window(tmp_path):
    with SonoranServer(keys={KEY: "pro"}, accounts={ACCOUNT}, units={UNIT}) as srv:
        s = config.from_mapping(data(tmp_path, srv), origin="<test>")
        with running(s) as d:
            now = time.time_ns()
            with d.outbox.tx() as db:  # 29 requests this minute: all that uploads may use of 30
                db.executemany(
                    "INSERT INTO rate_requests (key, at_ns) VALUES (?,?)",
                    [(key_fingerprint(KEY), now - i * 10**6) for i in range(29)],
                )
            backlog(d, tmp_path, 2)
            assert d.toggle_panic() is True
            wait_until(lambda: srv.panics, 10, "the panic on the wire")
            assert srv.count(api="v2") == 0, "no upload went: the window is full for them"
            d.set_panic(False)  # the 30th request of the window was the panic's: the clear waits
            probe = RequestBudget(d.outbox, key_fingerprint(KEY), reserve=PANIC_RESERVE)
            assert probe.try_take(time.time_ns(), Claim.PANIC) > 50, "no slot for anyone for about a minute"
            assert len(srv.panics) == 1 and srv.in_window(KEY) == 1
            with d.outbox.tx() as db:  # a minute later: the window frees
                db.execute("UPDATE rate_requests SET at_ns = at_ns - 62000000000")
            d.stages.unit.panic.poke()
            wait_until(lambda: len(srv.panics) == 2, 10, "the clear on the wire once a slot is free")
            assert srv.panics[1]["isPanic"] is False


class Positions:
    """A PositionSource (edged.capture.position) the test moves."""

    def __init__(self) -> None:
        self.fix: Fix | None = None

    def latest(self) -> Fix | None:
        return self.fix

    def fix_status(self) -> str:
        return "3d" if self.fix else "no-fix"

    def track(self, start_wall_s: float, end_wall_s: float) -> list[Fix]:
        return [self.fix] if self.fix else []


def test_the_position_goes_to_cad_while_moving_paced_and_never_without_a_fix(tmp_path):
    with SonoranServer(keys={KEY: "pro"}, accounts={ACCOUNT}, units={UNIT}) as srv:
        unit = {"panic": False, "location": True, "location_interval_seconds": 5.0, "location_min_distance_m": 25.0}
        s = config.from_mapping(data(tmp_path, srv, **unit), origin="<test>")
        src = Positions()
        with running(s, position=src) as d:
            loc = d.stages.unit.location
            wait_until(lambda: loc.asked >= 3, 20, "the source asked a few times")
            assert srv.locations == [] and d.status().unit["location"]["fix"] is False, "no fix: nothing sent"

            src.fix = Fix(51.50070, -0.12460, 3, time.time(), speed_mps=0.0)
            wait_until(lambda: srv.locations, 10, "the first fix sent at once")
            first = srv.unit_requests[-1].at
            coords = srv.locations[0]["updates"][0]["coordinates"]
            assert (coords["x"], coords["y"]) == (-0.1246, 51.5007)

            src.fix = Fix(51.50072, -0.12460, 3, time.time() + 1, speed_mps=0.1)  # 2 m: standing still
            asked = loc.asked
            wait_until(lambda: time.monotonic() > first + 8 and loc.asked > asked + 2, 20, "two intervals later")
            assert len(srv.locations) == 1, "standing still: nothing more sent"

            src.fix = Fix(51.50160, -0.12460, 3, time.time() + 2, speed_mps=1.5)  # 100 m north
            wait_until(lambda: len(srv.locations) == 2, 10, "moved: sent")
            for _ in range(3):  # moving on: once an interval, not at every fix
                src.fix = Fix(src.fix.lat + 0.001, src.fix.lon, 3, src.fix.wall_s + 1, speed_mps=5.0)
                n = len(srv.locations)
                wait_until(lambda n=n: len(srv.locations) > n, 15, "the next position")
            times = [r.at for r in srv.unit_requests if r.endpoint == "location"]
            assert min(b - a for a, b in zip(times[1:], times[2:])) >= 4.9, times


# --- a clip's note on the current call, across a kill -9 ------------------------------------------------


def start_daemon(cfg: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def status(state: Path) -> dict:
    try:
        return json.loads(StatePaths(state).status.read_text())
    except (OSError, ValueError):
        return {}


def note_rows(state: Path) -> list:
    outbox = Outbox(state / "outbox.sqlite", read_only=True)
    try:
        return read_notes(outbox)
    finally:
        outbox.close()


def toml(value) -> str:
    if isinstance(value, dict):
        raise TypeError("tables are written by write_config")
    return json.dumps(value)


def write_config(path: Path, doc: dict, prefix: str = "") -> None:
    lines: list[str] = []

    def table(name: str, t: dict) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml(v)}" for k, v in t.items() if not isinstance(v, dict))
        for k, v in t.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)

    for name, t in doc.items():
        table(name, t)
    path.write_text("\n".join(lines) + "\n")


def test_a_clips_call_note_is_sent_once_across_a_kill_between_its_delivery_and_its_note(tmp_path):
    with SonoranServer(keys={KEY: "pro"}, accounts={ACCOUNT}, units={UNIT}, calls={ACCOUNT: 501}) as srv:
        doc = data(tmp_path, srv, panic=False, call_notes=True)
        cfg = tmp_path / "edged.toml"
        write_config(cfg, doc)
        state = tmp_path / "state"
        srv.fail_next(1000, 503, "call service down", endpoint="current_call")
        p = start_daemon(cfg, tmp_path / "daemon.log")
        try:
            wait_until(lambda: status(state).get("segments_written", 0) >= 2, 60, "recording")
            marked = subprocess.run(
                [sys.executable, "-m", "edged", "mark", "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert marked.returncode == 0, marked.stderr
            wait_until(lambda: srv.uploads, 60, "the clip delivered")
            wait_until(lambda: any(r.endpoint == "current_call" for r in srv.unit_requests), 30, "its note due")
            p.send_signal(signal.SIGKILL)  # between the delivery and the note
            p.wait(30)
            assert srv.notes == []
            srv.clear_faults("current_call")
            p = start_daemon(cfg, tmp_path / "daemon.log")
            wait_until(lambda: srv.notes, 60, "the note sent after the restart")
            wait_until(lambda: [n.state for n in note_rows(state)] == [CallNoteState.NOTED], 30, "recorded as noted")
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            p = start_daemon(cfg, tmp_path / "daemon.log")  # once more: a noted clip is never noted again
            wait_until(lambda: status(state).get("unit", {}).get("call_notes") == {"noted": 1}, 60, "running again")
            wait_until(lambda: status(state).get("segments_written", 0) >= 3, 60, "recording again")
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        assert len(srv.notes) == 1
        call, body = srv.notes[0]
        assert call == 501 and f"{srv.url}/files/{srv.uploads[0].sha256}.webm" in body["note"]
        listing = subprocess.run(
            [sys.executable, "-m", "edged", "outbox", "list", "--json", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        notes = [r for r in json.loads(listing.stdout) if r["target"] == "sonoran_v2 note"]
        assert [(r["state"], r["call_id"], r["resends"]) for r in notes] == [("noted", 501, 0)]
