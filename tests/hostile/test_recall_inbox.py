"""Hostile input: the synced recall inbox and its status files (issue 12).

Whoever fills the synced folder may plant links at every name edged writes or reads there, swap
``status/``, ``recall/`` or ``recall/processed/`` for a link into the evidence, drop FIFOs,
devices, 60 KB of ``[``, times from year 1600 or 9999, a key to be echoed back, or a request
that reuses the id of one already delivered; a Pi before NTP gives request files mtimes far in
the future. Against the real daemon, each test checks what matters: the evidence (segments, clip
parts, manifests) is byte for byte what it was, nothing is written or moved outside the synced
folder, recording goes on, the inbox still takes a good request afterwards, and the daemon stops
within systemd's ``TimeoutStopSec``. Races that need a precise moment (a file swapped for a FIFO
between the listing and the read, a folder swapped while a look is under way) are forced
in-process.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edged.clips.job import FootageJobs
from edged.core import files, journal
from edged.core.states import RecallState
from edged.core.syncfolder import ALARM
from edged.footage.index import Index
from edged.recall.inbox import Inbox
from edged.recall.request import RecallStore
from edged.recall.service import RecallService, status_dir
from edged.recording.clock import RecordingClock
from edged.upload.outbox import Outbox
from tests.conftest import make_settings
from tests.hostile.harness import (
    REPO,
    DaemonUnderTest,
    assert_evidence_kept,
    assert_no_links,
    assert_stores_sound,
    evidence_snapshot,
    sha256_of,
)

SESSION_SECRET = "hostile-session-7f3a9c1e5b"  # registered by the daemon (a key in its config)
SECRET_CONFIG = {"upload": {"sonoran_legacy": {"session_id": SESSION_SECRET}}}


def stop_bound_s() -> float:
    """systemd's TimeoutStopSec for edged: the daemon must be gone by then (a bound, not a speed)."""
    text = (REPO / "systemd" / "edged.service").read_text()
    return float(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))


def stop_promptly(d: DaemonUnderTest) -> None:
    assert d.stop(timeout=stop_bound_s()) == 0, d.log()[-3000:]


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def good(k: int) -> dict[str, Any]:
    """A valid request for a window starting a few seconds ago (k keeps them distinct footage)."""
    return {"start_time": iso(time.time() - 3 - k * 0.01), "duration": 1}


def drop(d: DaemonUnderTest, name: str, content: bytes | dict, mtime_ns: int | None = None) -> Path:
    """A request file written as a sync tool does: a hidden temporary renamed into place."""
    folder = d.sync / "recall"
    folder.mkdir(parents=True, exist_ok=True)
    data = json.dumps(content).encode() if isinstance(content, dict) else content
    tmp = folder / f".{name}.sync-tmp"
    tmp.write_bytes(data)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, folder / name)
    return folder / name


def taken(d: DaemonUnderTest, name: str) -> bool:
    """The inbox has taken ``name`` (moved it to processed/)."""
    return not os.path.lexists(d.sync / "recall" / name) and os.path.lexists(d.sync / "recall" / "processed" / name)


def answer(d: DaemonUnderTest, rid: str, status: str, name: str | None = None) -> dict[str, Any]:
    """Until ``status/recall-<rid>.json`` (or ``name``) is a regular file saying ``status``."""
    path = d.sync / "status" / (name or f"recall-{rid}.json")

    def read() -> dict[str, Any] | None:
        if path.is_symlink() or not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return doc if doc.get("status") == status else None

    return d.wait(read, what=f"{path.name} says {status}")


def relink(path: Path, target: Path) -> None:
    """``path`` becomes a link to ``target`` in one step (never absent in between: edged would make
    a real folder there)."""
    tmp = path.parent / f".{path.name}.relink"
    os.symlink(target, tmp)
    os.replace(tmp, path)


def listing(folder: Path) -> dict[str, str]:
    return {p.name: sha256_of(p) for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def only_segments(folder: Path) -> list[str]:
    """Names in the segments folder edged would not have put there."""
    return [n for n in os.listdir(folder) if not n.endswith((".webm", ".webm.part")) and not n.startswith(".")]


def marked_clip(d: DaemonUnderTest) -> Path:
    event = d.mark("evidence to keep")
    return d.wait_built(event)


# --- the status folder -------------------------------------------------------------------------------


def test_links_at_status_names_and_a_status_folder_swapped_for_a_link(tmp_path):
    d = DaemonUnderTest(tmp_path)
    with d:
        d.start()
        clip = marked_clip(d)
        segment = sorted((d.state / "segments").glob("*.webm"))[0]
        before = evidence_snapshot(d.state)
        clip_files = listing(clip)
        status = d.sync / "status"
        status.mkdir(exist_ok=True)
        # Links at every name edged writes for "ok-1", temporaries included (old and new style).
        os.symlink(clip / "manifest.json", status / "recall-ok-1.json")
        os.symlink(segment, status / "recall-ok-1.rejected.json")
        for name in ("recall-ok-1.json", "recall-ok-1.rejected.json"):
            for n in range(64):
                os.symlink(segment, status / f".{name}.{n:08x}.tmp")
            os.symlink(clip / "manifest.json", status / f".{name}.{d.proc.pid}.tmp")
        body = good(1)
        drop(d, "ok-1.json", body)
        doc = answer(d, "ok-1", "pending")
        assert doc["id"] == "ok-1"
        assert not (status / "recall-ok-1.json").is_symlink(), "the planted link was written through"
        drop(d, "ok-1.json", body | {"duration": 2})  # the same id for other footage: rejected beside it
        answer(d, "ok-1", "rejected", name="recall-ok-1.rejected.json")
        assert not (status / "recall-ok-1.rejected.json").is_symlink()
        assert d.sync_status("recall-ok-1.json")["status"] == "pending"

        # status/ swapped for a link into the clip folder, then into the segments folder.
        os.rename(status, d.sync / "status.real")
        relink(status, clip)
        drop(d, "ok-2.json", good(2))
        d.wait(lambda: taken(d, "ok-2.json"), what="ok-2 taken while status/ is a link")
        d.wait(lambda: "recall status files not written" in d.log(), what="the refusal logged")
        relink(status, d.state / "segments")
        drop(d, "ok-3.json", good(3))
        d.wait(lambda: taken(d, "ok-3.json"), what="ok-3 taken while status/ is a link")
        d.wait_frames_grow()
        assert listing(clip) == clip_files, "something was written into the clip folder"
        assert not only_segments(d.state / "segments"), "something was written into the segments folder"

        # A real folder again (edged makes it): what could not be written is written now.
        os.unlink(status)
        answer(d, "ok-2", "pending")
        answer(d, "ok-3", "pending")
        d.wait(lambda: "recall status: usable again" in d.log(), what="the end of the refusal logged")
        drop(d, "ok-4.json", good(4))
        answer(d, "ok-4", "pending")
        log = d.log()
        assert log.count("recall status files not written") == 1, "the refusal is logged once, not per poll"
        assert "is a symbolic link" in log
        stop_promptly(d)
    assert_evidence_kept(before, evidence_snapshot(d.state))
    assert listing(clip) == clip_files
    assert_stores_sound(d.state)
    assert_no_links(d.state)


# --- recall/ and recall/processed/ ---------------------------------------------------------------------


def test_recall_and_processed_swapped_for_links_are_refused(tmp_path):
    d = DaemonUnderTest(tmp_path)
    with d:
        d.start()
        clip = marked_clip(d)
        before = evidence_snapshot(d.state)
        clip_files = listing(clip)
        segments = {p.name for p in (d.state / "segments").glob("*.webm")}  # finished ones
        recall = d.sync / "recall"

        # recall/ is a link into the clip folder (which holds manifest.json), then the segments.
        os.symlink(clip, recall)
        d.wait(lambda: "recall inbox refused" in d.log(), what="recall/ refused")
        d.wait_frames_grow()
        relink(recall, d.state / "segments")
        d.wait_frames_grow()
        assert listing(clip) == clip_files, "the clip folder was read as an inbox"
        assert set(segments) <= set(os.listdir(d.state / "segments")), "a segment was moved"
        os.unlink(recall)

        # A real recall/, but processed/ is a link into the clip folder: a request named
        # manifest.json must not replace the clip's manifest.
        recall.mkdir()
        os.symlink(clip, recall / "processed")
        drop(d, "manifest.json", good(1))
        drop(d, "ok-b1.json", good(2))
        d.wait(lambda: "processed: is a symbolic link" in d.log(), what="processed/ refused")
        d.wait_frames_grow()
        relink(recall / "processed", d.state / "segments")
        d.wait_frames_grow()
        assert listing(clip) == clip_files, "a request was moved into the clip folder"
        assert (recall / "manifest.json").exists() and (recall / "ok-b1.json").exists()
        assert not only_segments(d.state / "segments")

        # A real processed/ again: the requests are taken.
        os.unlink(recall / "processed")
        answer(d, "ok-b1", "pending")
        answer(d, "manifest", "pending")
        assert taken(d, "manifest.json")
        assert d.log().count("processed: is a symbolic link") == 1, "the refusal is logged once, not per poll"
        stop_promptly(d)
    assert_evidence_kept(before, evidence_snapshot(d.state))
    assert listing(clip) == clip_files
    assert_stores_sound(d.state)
    assert_no_links(d.state)


# --- hostile request files ------------------------------------------------------------------------------


def test_hostile_request_files_are_each_rejected_once_and_the_inbox_goes_on(tmp_path):
    d = DaemonUnderTest(tmp_path, SECRET_CONFIG)
    with d:
        d.start()
        clip = marked_clip(d)
        segment = sorted((d.state / "segments").glob("*.webm"))[0]
        before = evidence_snapshot(d.state)
        recall = d.sync / "recall"
        recall.mkdir()
        elsewhere = tmp_path / "fifo-elsewhere"
        os.mkfifo(elsewhere)
        os.mkfifo(recall / "fifo.json")
        os.symlink(elsewhere, recall / "link-fifo.json")
        os.symlink("/dev/zero", recall / "zero.json")
        os.symlink(segment, recall / "segment.json")
        os.symlink(clip / "manifest.json", recall / "manifest-link.json")
        (recall / "a-folder.json").mkdir()
        start = "2025-01-01T00:00:00Z"
        hostile: dict[str, tuple[bytes | dict, str]] = {
            "deep": (b"[" * 60_000, "more than 8 deep"),
            "huge": (b" " * (10 << 20), "at most 65536 are read here"),
            "latin": (b'{"start_time": "2025-01-01T00:00:00Z", "duration": 1, "asset_name": "Caf\xe9"}', "not UTF-8"),
            "y1600": ({"start_time": "1600-01-01T00:00:00Z", "duration": 1}, "before any footage"),
            "y1677": ({"start_time": "1677-09-21T00:00:00Z", "duration": 1}, "before any footage"),
            "y9999": ({"start_time": "9999-12-31T23:59:59Z", "duration": 1}, "in the future"),
            "negative": ({"start_time": start, "duration": -3}, "got -3"),
            "nan": (b'{"start_time": "2025-01-01T00:00:00Z", "duration": NaN}', "not valid JSON"),
            "inf": (b'{"start_time": "2025-01-01T00:00:00Z", "duration": 1e999}', "got inf"),
            "bigint": (b'{"start_time": "2025-01-01T00:00:00Z", "duration": ' + b"9" * 5000 + b"}", "not valid JSON"),
            "type-list": ({"start_time": start, "duration": 1, "recall_type": [[[]]]}, "recall_type"),
            "secret": (
                {
                    "start_time": start,
                    "duration": 1,
                    "vehicle_number": SESSION_SECRET,
                    "api_key": SESSION_SECRET + "-2",
                },
                "is not this device",
            ),
        }
        for rid, (content, _) in hostile.items():
            drop(d, f"{rid}.json", content)
        expected = {
            "fifo": "is a FIFO",
            "link-fifo": "is a symbolic link",
            "zero": "is a symbolic link",
            "segment": "is a symbolic link",
            "manifest-link": "is a symbolic link",
            "a-folder": "is a folder",
            **{rid: words for rid, (_, words) in hostile.items()},
        }
        for rid, words in expected.items():
            doc = answer(d, rid, "rejected")
            assert words in doc["reason"], (rid, doc["reason"])
            assert doc["reasons"] and all(r.strip() for r in doc["reasons"])
        d.wait(lambda: all(taken(d, f"{rid}.json") for rid in expected), what="every hostile file moved")
        assert (recall / "processed" / "segment.json").is_symlink(), "the link itself is moved, not its target"

        # The inbox goes on; recording goes on.
        drop(d, "ok-c1.json", good(1))
        answer(d, "ok-c1", "pending")
        d.wait_frames_grow()
        log = d.log()
        for rid in expected:
            assert log.count(f"RECALL {rid} rejected") == 1, f"{rid}: rejected once, not at every poll"
        stop_promptly(d)
    # The key echoed in a reason is nowhere edged keeps or shows text.
    for path in [*(d.sync / "status").iterdir(), *d.state.glob("recall.sqlite*")]:
        assert SESSION_SECRET.encode() not in path.read_bytes(), f"the key is in {path}"
    assert SESSION_SECRET not in d.log()
    assert "***" in (d.sync / "status" / "recall-secret.json").read_text()
    assert_evidence_kept(before, evidence_snapshot(d.state))
    assert_stores_sound(d.state)
    assert_no_links(d.state)


def test_request_files_with_far_future_and_far_past_mtimes_are_taken(tmp_path):
    """A Pi before NTP (or a sync tool keeping the sender's mtime): settled by looks, not by age."""
    d = DaemonUnderTest(tmp_path)
    with d:
        d.start()
        future = int(dt.datetime(2099, 1, 1, tzinfo=dt.UTC).timestamp()) * 10**9
        past = int(dt.datetime(1980, 1, 1, tzinfo=dt.UTC).timestamp()) * 10**9
        drop(d, "future.json", good(1), mtime_ns=future)
        drop(d, "past.json", good(2), mtime_ns=past)
        drop(d, "epoch.json", b"{", mtime_ns=0)
        answer(d, "future", "pending")
        answer(d, "past", "pending")
        answer(d, "epoch", "rejected")
        stop_promptly(d)


def test_a_rejected_request_reusing_a_completed_id_leaves_its_answer(tmp_path):
    d = DaemonUnderTest(tmp_path, {"camera": {"paced": False}})  # unpaced: a minute of footage in seconds
    with d:
        d.start()
        index = Index(d.state / "index.sqlite", read_only=True)
        try:
            first = index.stored()[0].best_wall_start_ns
        finally:
            index.close()
        body = {"start_time": iso(first / 1e9 + 1), "duration": 1}
        drop(d, "done-1.json", body)
        completed = answer(d, "done-1", "completed")
        assert completed["urls"]
        before = evidence_snapshot(d.state)
        assert any(k.startswith("clips/recall-done-1/") for k in before)

        # The same id for other footage, then not even JSON: answered beside it.
        drop(d, "done-1.json", body | {"duration": 2})
        doc = answer(d, "done-1", "rejected", name="recall-done-1.rejected.json")
        assert "already names another request" in doc["reason"]
        drop(d, "done-1.json", b"{not json")
        d.wait(
            lambda: "not valid JSON" in json.dumps(d.sync_status("recall-done-1.rejected.json")),
            what="the second rejection beside the answer",
        )
        # The same request again (a sync tool pushing it twice): answered with its state.
        drop(d, "done-1.json", body)
        d.wait(
            lambda: (
                taken(d, "done-1.json")
                and (d.sync / "recall" / "processed" / "done-1.json").read_bytes() == json.dumps(body).encode()
            ),
            what="the repeat taken",
        )
        now = d.sync_status("recall-done-1.json")
        assert now is not None and now["status"] == "completed" and now["urls"] == completed["urls"]
        stop_promptly(d)
    assert_evidence_kept(before, evidence_snapshot(d.state), evicted_ok=True)
    assert_stores_sound(d.state)


# --- races forced in-process ------------------------------------------------------------------------------


def _settled_inbox(tmp_path: Path) -> tuple[Path, Inbox]:
    folder = tmp_path / "sync" / "recall"
    folder.mkdir(parents=True)
    return folder, Inbox(folder, settle_s=0.0)


def _in_thread(fn) -> Any:
    """Run ``fn`` in a thread; a blocked read shows as a thread that never ends (deadline, not speed)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "the look blocked"
    return out[0]


def test_a_request_swapped_for_a_fifo_between_listing_and_reading_is_rejected_without_blocking(tmp_path, monkeypatch):
    folder, inbox = _settled_inbox(tmp_path)
    (folder / "r1.json").write_text(json.dumps(good(1)))
    items: list = []
    assert inbox.take(items.append) == 0  # first sight
    listed = files.Folder.entries

    def swap_after_listing(self):
        out = listed(self)
        if self.path == folder and (folder / "r1.json").exists() and not (folder / "r1.json").is_fifo():
            os.unlink(folder / "r1.json")
            os.mkfifo(folder / "r1.json")
        return out

    monkeypatch.setattr(files.Folder, "entries", swap_after_listing)
    assert _in_thread(lambda: inbox.take(items.append)) == 1
    [item] = items
    assert item.body is None and "is a FIFO" in item.error
    assert (folder / "processed" / "r1.json").is_fifo()


def test_folders_swapped_for_links_during_a_look_take_nothing_out_of_the_inbox(tmp_path, monkeypatch):
    """recall/ and processed/ swapped after they were opened: the move goes through the descriptors
    opened first (the real folders), never into the link's target."""
    folder, inbox = _settled_inbox(tmp_path)
    evidence = tmp_path / "clip"
    evidence.mkdir()
    (evidence / "manifest.json").write_text("the clip's manifest")
    (folder / "manifest.json").write_text(json.dumps(good(1)))
    items: list = []
    inbox.take(items.append)
    listed = files.Folder.entries

    def swap(self):
        out = listed(self)
        if self.path == folder and not folder.is_symlink():
            os.rename(folder / "processed", tmp_path / "processed.moved")
            os.symlink(evidence, folder / "processed")
            os.rename(folder, tmp_path / "recall.moved")
            os.symlink(evidence, folder)
        return out

    monkeypatch.setattr(files.Folder, "entries", swap)
    assert inbox.take(items.append) == 1
    assert (evidence / "manifest.json").read_text() == "the clip's manifest"
    assert sorted(os.listdir(evidence)) == ["manifest.json"]
    assert (tmp_path / "processed.moved" / "manifest.json").exists()  # where processed/ really was
    # Next look: both are links now; the inbox is refused and reads nothing.
    monkeypatch.setattr(files.Folder, "entries", listed)
    assert inbox.take(items.append) == 0 and "is a symbolic link" in inbox.refused
    assert len(items) == 1


# --- the service in-process: the alarm, and the store's scrubbing ------------------------------------------


@pytest.fixture
def service(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    settings = make_settings(state, sync={"dir": str(tmp_path / "sync"), "poll_seconds": 0.2})
    index = Index(state / "index.sqlite")
    outbox = Outbox(state / "outbox.sqlite", targets=["directory"])
    alarms: list[tuple[str, bool]] = []
    clock = RecordingClock(
        boot_id="b",
        timeline_now_ns=time.monotonic_ns,
        wall_offset_ns=lambda: time.time_ns() - time.monotonic_ns(),
        footage_offset_ns=lambda: time.time_ns() - time.monotonic_ns(),
        clock_synced=lambda: True,
    )
    svc = RecallService(
        settings,
        RecallStore(state / "recall.sqlite"),
        FootageJobs(index, outbox, state / "clips", state / "segments", clock),
        outbox,
        status_folder=status_dir(settings),
        inbox=Inbox(tmp_path / "sync" / "recall", settle_s=0.0),
        on_alarm=lambda name, active: alarms.append((name, active)),
    )
    svc.alarms = alarms  # type: ignore[attr-defined]
    yield svc
    svc.close()
    outbox.close()
    index.close()


def test_a_refused_folder_raises_the_alarm_once_and_clears_it(service, tmp_path, caplog):
    sync = tmp_path / "sync"
    (sync / "recall").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, sync / "status")
    caplog.set_level(logging.INFO, logger="edged.recall")
    (sync / "recall" / "a.json").write_text(json.dumps(good(1)))
    for _ in range(4):
        service.poll_inbox()
        service.flush_status()
    assert service.store.get("a") is not None, "the request is taken while status/ is refused"
    assert service.alarms == [(ALARM, True)]
    assert os.listdir(elsewhere) == []
    assert sum("recall status files not written" in r.getMessage() for r in caplog.records) == 1
    os.unlink(sync / "status")
    service.flush_status()
    assert service.alarms == [(ALARM, True), (ALARM, False)]
    assert json.loads((sync / "status" / "recall-a.json").read_text())["status"] == "pending"
    # recall/ a link: refused until it is a folder again.
    os.rename(sync / "recall", tmp_path / "recall.real")
    os.symlink(tmp_path / "recall.real", sync / "recall")
    service.poll_inbox()
    service.poll_inbox()
    assert service.alarms[-1] == (ALARM, True) and "recall inbox refused" in service.troubles["inbox"]
    os.unlink(sync / "recall")
    service.poll_inbox()
    assert service.alarms[-1] == (ALARM, False) and service.troubles == {}


def test_a_key_in_a_reason_is_stored_and_written_scrubbed(service, tmp_path):
    key = "K3y-" + os.urandom(8).hex()
    journal.register_secret(key)
    assert service.submit(good(1), "leak")["status"] == "pending"
    rec = service.store.get("leak")
    service._set(
        rec,
        RecallState.FAILED,
        f'upload refused for good: 401 {{"error": "bad key {key}", "api_key": "other-{key[:6]}"}}',
    )
    service.store.close()
    for path in (tmp_path / "state").glob("recall.sqlite*"):
        assert key.encode() not in path.read_bytes(), path
    text = (tmp_path / "sync" / "status" / "recall-leak.json").read_text()
    assert key not in text and f"other-{key[:6]}" not in text and "***" in text
    service.store = RecallStore(tmp_path / "state" / "recall.sqlite")
