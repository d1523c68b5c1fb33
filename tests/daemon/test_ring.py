"""The ring buffer: bounded, oldest unprotected first, protected footage never deleted."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from edged.app.daemon import Daemon, prepare_state_dir
from edged.config import schema as config
from edged.core.clock import SystemClock
from edged.core.paths import StatePaths
from edged.footage.index import Index
from edged.footage.ring import RingBuffer, Room, free_bytes
from edged.recording.recorder import Recorder
from tests.conftest import make_settings
from tests.support import decode_all, tmpfs, wait_until

SMALL = {"width": 320, "height": 180, "bitrate": 150_000}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Twelve real 2 s segments (small picture, so the module stays fast)."""
    state = tmp_path_factory.mktemp("ring") / "state"
    s = make_settings(state, camera=SMALL, storage={"segment_seconds": 2.0})
    assert Daemon(s, stop_after_s=24).run() == 0
    return state


@pytest.fixture
def ring_copy(recorded, tmp_path) -> tuple[Index, RingBuffer, Path]:
    state = tmp_path / "state"
    shutil.copytree(recorded, state)
    paths = StatePaths(state)
    idx = Index(paths.index)
    yield idx, RingBuffer(idx, paths.segments, max_bytes=10**12, min_free_bytes=0), paths.segments
    idx.close()


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_recording_fixture_is_what_the_tests_assume(ring_copy):
    idx, ring, seg_dir = ring_copy
    rows = idx.stored()
    assert [r.seq for r in rows] == list(range(1, 13)) and all(r.state == "final" for r in rows)
    for r in rows:
        assert (seg_dir / r.name).stat().st_size == r.bytes and digest(seg_dir / r.name) == r.sha256
    assert ring.usage().stored_bytes == sum(r.bytes for r in rows) and ring.usage().held_bytes == 0


def test_bounded_by_max_bytes_oldest_first(ring_copy):
    idx, ring, seg_dir = ring_copy
    rows = idx.stored()
    budget = sum(r.bytes for r in rows[-5:])
    ring.configure(max_bytes=budget, min_free_bytes=0)
    assert ring.make_room(0) is Room.OK
    kept = idx.stored()
    assert [r.seq for r in kept] == [r.seq for r in rows[-5:]], "the oldest must go first"
    assert sum(r.bytes for r in kept) <= budget
    assert ring.evicted == 7
    evicted = idx.segments(["evicted"])
    assert [r.seq for r in evicted] == [r.seq for r in rows[:-5]]
    assert all(not (seg_dir / r.name).exists() for r in evicted), "evicted: the file is gone"
    assert [r.sha256 for r in evicted] == [r.sha256 for r in rows[:-5]], "evicted: the row stays"
    assert sorted(p.name for p in seg_dir.iterdir()) == [r.name for r in kept]


def test_reserve_makes_room_for_the_next_segment(ring_copy):
    idx, ring, _ = ring_copy
    rows = idx.stored()
    total = sum(r.bytes for r in rows)
    ring.configure(max_bytes=total, min_free_bytes=0)
    assert ring.make_room(0) is Room.OK and len(idx.stored()) == 12, "within budget: nothing goes"
    assert ring.make_room(rows[0].bytes) is Room.OK
    assert [r.seq for r in idx.stored()] == [r.seq for r in rows[1:]], "exactly enough for the reserve"


def test_held_segments_are_never_evicted(ring_copy):
    idx, ring, seg_dir = ring_copy
    rows = idx.stored()
    held = [rows[0].seq, rows[1].seq, rows[6].seq]
    before = {r.seq: digest(seg_dir / r.name) for r in rows if r.seq in held}
    idx.hold("clip:test", held)
    assert idx.held_bytes() == sum(r.bytes for r in rows if r.seq in held)
    ring.configure(max_bytes=1, min_free_bytes=0)
    room = ring.make_room(0)
    assert room is Room.OVER_BUDGET  # only held footage is left, the disk still has room
    left = idx.stored()
    assert sorted(r.seq for r in left) == sorted(held) and all(r.held for r in left)
    assert {r.seq: digest(seg_dir / r.name) for r in left} == before
    assert {r.seq: r.sha256 for r in left} == before
    idx.release("clip:test", [rows[0].seq])
    assert ring.make_room(0) is Room.OVER_BUDGET
    assert rows[0].seq not in [r.seq for r in idx.stored()], "released footage becomes evictable"
    assert not (seg_dir / rows[0].name).exists()
    idx.release("clip:test")
    assert ring.make_room(0) is Room.OK and idx.stored() == []


def test_a_segment_held_by_two_owners_stays_until_both_release(ring_copy):
    idx, ring, seg_dir = ring_copy
    target = idx.stored()[0]
    idx.hold("clip:a", [target.seq])
    idx.hold("upload:b", [target.seq])
    ring.configure(max_bytes=1, min_free_bytes=0)
    ring.make_room(0)
    idx.release("clip:a")
    assert ring.make_room(0) is Room.OVER_BUDGET
    assert [r.seq for r in idx.stored()] == [target.seq] and (seg_dir / target.name).exists()
    idx.release("upload:b", [target.seq])
    assert ring.make_room(0) is Room.OK and idx.stored() == []


def test_a_hold_taken_after_the_candidates_were_listed_still_wins(ring_copy):
    """make_room lists candidates first; a mark may protect one of them in between. The row is
    only marked evicted if it is still unheld at that moment."""
    idx, ring, seg_dir = ring_copy
    first = idx.eviction_candidates()[0]
    idx.hold("mark:late", [first.seq])
    assert ring.evict(first.seq, first.name) is False
    assert idx.get(first.seq).state == "final" and (seg_dir / first.name).exists()


def test_range_hold_protects_footage_not_yet_recorded(ring_copy):
    idx, ring, _ = ring_copy
    rows = idx.stored()
    idx.hold_range("event:x", rows[3].boot_id, rows[3].mono_start_ns + 1, rows[-1].mono_start_ns + 10**12)
    ring.configure(max_bytes=1, min_free_bytes=0)
    ring.make_room(0)
    assert [r.seq for r in idx.stored()] == [r.seq for r in rows[3:]]
    idx.hold_range("event:other-boot", "another-boot", 0, 2**62)  # another boot's range protects nothing here
    idx.release_range("event:x")
    ring.make_room(0)
    assert idx.stored() == []


def test_disk_floor_with_nothing_evictable_is_full(ring_copy):
    idx, ring, seg_dir = ring_copy
    idx.hold("all", [r.seq for r in idx.stored()])
    ring.configure(max_bytes=10**12, min_free_bytes=free_bytes(seg_dir) + 10**9)  # more than the disk has
    assert ring.make_room(0) is Room.FULL
    assert len(idx.stored()) == 12 and ring.evicted == 0
    # Over budget and over the floor with nothing evictable: FULL wins (recording must pause).
    ring.configure(max_bytes=1, min_free_bytes=free_bytes(seg_dir) + 10**9)
    assert ring.make_room(0) is Room.FULL


def test_disk_floor_evicts_unheld_footage_first(ring_copy):
    idx, ring, seg_dir = ring_copy
    rows = idx.stored()
    idx.hold("keep", [r.seq for r in rows[-2:]])
    # Ask for a floor that is met only once about three segments' worth has been freed.
    need = rows[0].bytes + rows[1].bytes + rows[2].bytes // 2
    ring.configure(max_bytes=10**12, min_free_bytes=free_bytes(seg_dir) + need)
    assert ring.make_room(0) is Room.OK
    gone = [r.seq for r in idx.segments(["evicted"])]
    assert gone[:3] == [1, 2, 3] and gone == list(range(1, len(gone) + 1)), "oldest first, no gap"
    assert {r.seq for r in rows[-2:]} <= {r.seq for r in idx.stored()}


def test_evictions_whose_rows_a_full_disk_refuses_still_count_as_gone(ring_copy, monkeypatch):
    """On a full disk the file goes first and SQLite may refuse the 'evicted' row for a while: the
    ring must still see that room as made (not evict everything else unheld meanwhile), and the
    rows are marked once SQLite can write again."""
    idx, ring, seg_dir = ring_copy
    rows = idx.stored()

    def refused(seq: int) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(idx, "mark_evicted_if_unheld", refused)
    monkeypatch.setattr(idx, "_tx", lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database or disk is full")))
    budget = sum(r.bytes for r in rows[-5:])
    ring.configure(max_bytes=budget, min_free_bytes=0)
    assert ring.make_room(0) is Room.OK
    assert ring.evicted == 7
    assert sorted(p.name for p in seg_dir.iterdir()) == [r.name for r in rows[-5:]], "only the oldest 7 went"
    assert ring.usage().stored_bytes == budget
    assert [r.seq for r in idx.eviction_candidates()] == [r.seq for r in rows[-5:]]
    assert ring.make_room(0) is Room.OK and ring.evicted == 7, "asked again: nothing more goes"
    assert not idx.segments(["evicted"]), "not marked yet: the disk refuses"

    monkeypatch.undo()  # room again
    assert ring.make_room(0) is Room.OK and ring.evicted == 7
    assert [r.seq for r in idx.segments(["evicted"])] == [r.seq for r in rows[:7]]
    assert ring.usage().stored_bytes == budget


def test_a_real_recording_stays_within_the_smallest_allowed_budget(tmp_path):
    """The recorder's own ring with the smallest budget the configuration accepts (three
    segments): after every finished segment and after the stop, the stored footage fits."""
    s = make_settings(tmp_path / "state", camera=SMALL, storage={"segment_seconds": 2.0})
    budget = 3 * config.segment_bytes_estimate(s)
    paths = StatePaths(s.state_dir)
    prepare_state_dir(paths)
    idx = Index(paths.index)
    try:
        ring = RingBuffer(idx, paths.segments, max_bytes=budget, min_free_bytes=0)
        after_each: list[int] = []
        rec = Recorder(
            s,
            idx,
            ring,
            SystemClock(),
            paths.segments,
            stop_after_s=24,
            on_segment=lambda seq: after_each.append(idx.stored_bytes()),
        )
        rec.run()
        assert rec.crashed is None and rec.status.segments_written == 12
        evicted = idx.segments(["evicted"])
        kept = idx.stored()
        assert evicted and [r.seq for r in evicted] == list(range(1, len(evicted) + 1)), "oldest first"
        assert [r.seq for r in kept] == list(range(len(evicted) + 1, 13))
        for r in evicted:
            assert not (paths.segments / r.name).exists()
        for r in kept:
            assert decode_all(paths.segments / r.name)[0] == r.frames == 20
        assert max(after_each) <= budget, f"over budget: stored bytes after each segment {after_each} > {budget}"
        stored = sum(r.bytes for r in kept)
        assert stored <= budget, f"{stored} bytes stored after the stop, budget {budget}"
    finally:
        idx.close()


def test_daemon_pauses_when_full_of_protected_footage_and_resumes_when_released(tmp_path):
    """A real tmpfs with a free-space floor fills with held footage: recording pauses loudly (the
    daemon keeps running), nothing held is lost, and it resumes by itself once holds are released."""
    with tmpfs(tmp_path / "small", "size=4m") as mnt:
        state = mnt / "state"
        # 1 Mbps: ~250 kB segments, so the index's own growth (its WAL) is small beside the footage.
        base = {"camera": SMALL | {"bitrate": 1_000_000}, "audio": {"source": "none"}}
        first = make_settings(state, storage={"segment_seconds": 2.0}, **base)
        assert Daemon(first, stop_after_s=6).run() == 0  # three segments of evidence
        paths = StatePaths(state)
        idx = Index(paths.index)
        daemon = None
        t = None
        try:
            evidence = idx.stored()
            assert len(evidence) == 3
            idx.hold("test:evidence", [r.seq for r in evidence])
            idx.hold_range("test:future", evidence[0].boot_id, 0, 2**62)  # and all that follows
            # The floor leaves room for about five more segments.
            floor = free_bytes(paths.segments) - 1_500_000
            s = make_settings(state, storage={"segment_seconds": 2.0, "min_free_bytes": floor}, **base)
            daemon = Daemon(s)
            t = threading.Thread(target=daemon.run, name="daemon-under-test")
            t.start()
            wait_until(
                lambda: daemon.recorder is not None and "storage_full" in daemon.recorder.status.alarms,
                30,
                "alarm storage_full",
            )
            st = daemon.recorder.status
            assert st.state == "storage_full" and st.segments_written >= 2, "it recorded until the floor"
            assert t.is_alive(), "the daemon keeps running while full"

            def status_json() -> dict:
                try:
                    return json.loads(paths.status.read_text())
                except (OSError, ValueError):
                    return {}

            wait_until(
                lambda: (
                    "storage_full" in status_json().get("alarms", []) and status_json().get("frames_not_stored", 0) > 0
                ),
                10,
                "status.json showing storage_full",
            )
            assert status_json()["state"] == "storage_full"
            n = st.frames_not_stored
            wait_until(lambda: daemon.recorder.status.frames_not_stored > n, 10, "frames counted while paused")
            # Nothing held was lost or changed.
            now = {r.seq: r for r in idx.stored()}
            for r in evidence:
                assert r.seq in now and digest(paths.segments / r.name) == r.sha256
            assert not idx.segments(["evicted"]) and not idx.segments(["lost"])
            held_rows = idx.stored()
            # Release: the recorder evicts the oldest and records again, by itself.
            idx.release("test:evidence")
            idx.release_range("test:future")
            written = daemon.recorder.status.segments_written
            wait_until(lambda: daemon.recorder.status.segments_written >= written + 2, 20, "recording resumed")
            assert "storage_full" not in daemon.recorder.status.alarms
            wait_until(
                lambda: "storage_full" not in status_json().get("alarms", ["?"]), 10, "status.json alarm cleared"
            )
            assert idx.segments(["evicted"])[0].seq == held_rows[0].seq, "oldest first after release"
        finally:
            if daemon is not None and daemon.recorder is not None:
                daemon.recorder.stop()
            if t is not None:
                t.join(timeout=30)
            idx.close()
        assert not t.is_alive()
        after = Index(paths.index)
        try:
            for r in after.stored():
                assert decode_all(paths.segments / r.name)[0] == r.frames
        finally:
            after.close()


def test_the_free_space_floor_holds_while_recording(tmp_path):
    """min_free_bytes: "never fill the file system past this". Recording into a tmpfs with a
    floor, every segment start and finish leaves at least the floor free."""
    with tmpfs(tmp_path / "small", "size=6m") as mnt:
        state = mnt / "state"
        paths = StatePaths(state)
        prepare_state_dir(paths)
        floor = free_bytes(paths.segments) - 2_000_000  # room for about six 250 kB segments
        s = make_settings(
            state,
            camera=SMALL | {"bitrate": 1_000_000},
            audio={"source": "none"},
            storage={"segment_seconds": 2.0, "min_free_bytes": floor},
        )
        idx = Index(paths.index)
        try:
            ring = RingBuffer(idx, paths.segments, s.storage.max_bytes, s.storage.min_free_bytes)
            free_after: list[int] = []
            rec = Recorder(
                s,
                idx,
                ring,
                SystemClock(),
                paths.segments,
                stop_after_s=40,
                on_segment=lambda seq: free_after.append(free_bytes(paths.segments)),
            )
            rec.run()
            assert rec.crashed is None and idx.segments(["evicted"]), "the floor made the ring evict"
            assert min(free_after) >= floor, f"free space fell {floor - min(free_after)} bytes below min_free_bytes"
            assert free_bytes(paths.segments) >= floor
        finally:
            idx.close()


def test_over_budget_with_only_held_footage_keeps_recording_and_warns(tmp_path):
    """Everything held, budget exceeded, disk still has room: recording goes on past the budget
    (alarm storage_over_budget), nothing is deleted; once released the ring shrinks back."""
    s = make_settings(tmp_path / "state", camera=SMALL, storage={"segment_seconds": 2.0})
    budget = 3 * config.segment_bytes_estimate(s)
    paths = StatePaths(s.state_dir)
    prepare_state_dir(paths)
    idx = Index(paths.index)
    clock = SystemClock()
    try:
        idx.hold_range("event:all", clock.boot_id(), 0, 2**62)
        ring = RingBuffer(idx, paths.segments, max_bytes=budget, min_free_bytes=0)
        rec = Recorder(s, idx, ring, clock, paths.segments, stop_after_s=16)
        rec.run()
        assert rec.crashed is None and rec.status.segments_written == 8 and rec.status.frames_not_stored == 0
        assert "storage_over_budget" in rec.status.alarms and "storage_full" not in rec.status.alarms
        rows = idx.stored()
        assert len(rows) == 8 and not idx.segments(["evicted"]) and sum(r.bytes for r in rows) > budget
        for r in rows:
            assert decode_all(paths.segments / r.name)[0] == r.frames
        idx.release_range("event:all")
        assert ring.make_room(0) is Room.OK
        kept = idx.stored()
        assert sum(r.bytes for r in kept) <= budget and kept[-1].seq == 8
    finally:
        idx.close()
