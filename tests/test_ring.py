"""The ring buffer: bounded, oldest unprotected first, protected footage never deleted."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edged.daemon import Daemon
from edged.index import Index
from edged.paths import StatePaths
from edged.ring import RingBuffer, Room
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Twelve real 2 s segments (small picture, so the module stays fast)."""
    state = tmp_path_factory.mktemp("ring") / "state"
    s = make_settings(state, camera={"width": 320, "height": 180, "bitrate": 150_000},
                      storage={"segment_seconds": 2.0})
    Daemon(s, stop_after_s=24).run()
    return state


@pytest.fixture
def ring_copy(recorded, tmp_path) -> tuple[Index, RingBuffer, Path]:
    state = tmp_path / "state"
    shutil.copytree(recorded, state)
    paths = StatePaths(state)
    idx = Index(paths.index)
    return idx, RingBuffer(idx, paths.segments, max_bytes=10**12, min_free_bytes=0), paths.segments


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_bounded_by_max_bytes_oldest_first(ring_copy):
    idx, ring, seg_dir = ring_copy
    rows = idx.stored()
    assert len(rows) == 12
    budget = sum(r.bytes for r in rows[-5:])
    ring.configure(max_bytes=budget, min_free_bytes=0)
    assert ring.make_room(0) is Room.OK
    kept = idx.stored()
    assert [r.seq for r in kept] == [r.seq for r in rows[-5:]], "the oldest must go first"
    assert sum(r.bytes for r in kept) <= budget
    evicted = idx.segments(["evicted"])
    assert [r.seq for r in evicted] == [r.seq for r in rows[:-5]]
    assert all(not (seg_dir / r.name).exists() for r in evicted)  # rows kept, files gone


def test_held_segments_are_never_evicted(ring_copy):
    idx, ring, seg_dir = ring_copy
    rows = idx.stored()
    held = [rows[0].seq, rows[1].seq, rows[6].seq]
    before = {r.seq: digest(seg_dir / r.name) for r in rows if r.seq in held}
    idx.hold("clip:test", held)
    ring.configure(max_bytes=1, min_free_bytes=0)
    room = ring.make_room(0)
    assert room is Room.OVER_BUDGET  # only held footage is left, the disk still has room
    left = idx.stored()
    assert sorted(r.seq for r in left) == sorted(held)
    assert {r.seq: digest(seg_dir / r.name) for r in left} == before
    idx.release("clip:test", [rows[0].seq])
    ring.make_room(0)
    assert rows[0].seq not in [r.seq for r in idx.stored()], "released footage becomes evictable"


def test_range_hold_protects_footage_not_yet_recorded(ring_copy):
    idx, ring, _ = ring_copy
    rows = idx.stored()
    idx.hold_range("event:x", rows[3].boot_id, rows[3].mono_start_ns + 1, rows[-1].mono_start_ns + 10**12)
    ring.configure(max_bytes=1, min_free_bytes=0)
    ring.make_room(0)
    assert [r.seq for r in idx.stored()] == [r.seq for r in rows[3:]]


def test_disk_floor_with_nothing_evictable_is_full(ring_copy):
    idx, ring, _ = ring_copy
    idx.hold("all", [r.seq for r in idx.stored()])
    ring.configure(max_bytes=10**12, min_free_bytes=10**15)  # more free space than any disk has
    assert ring.make_room(0) is Room.FULL
    assert len(idx.stored()) == 12


def test_daemon_pauses_when_full_of_protected_footage_and_resumes_when_released(tmp_path):
    """A real tmpfs fills with held footage: recording pauses loudly, nothing held is lost, and it
    resumes by itself once the holds are released."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        s = make_settings(mnt / "state", camera={"width": 320, "height": 180, "bitrate": 150_000, "paced": True},
                          audio={"source": "none"},
                          storage={"segment_seconds": 2.0, "min_free_bytes": 2_000_000})
        daemon = Daemon(s)
        t = threading.Thread(target=daemon.run)
        t.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (daemon.recorder is None or
                                                   daemon.recorder.status.segments_written < 1):
                time.sleep(0.1)
            idx = Index(StatePaths(s.state_dir).index)
            protected = {r.name: r.sha256 for r in idx.stored()}
            idx.hold("test:evidence", [r.seq for r in idx.stored()])
            idx.hold_range("test:future", idx.stored()[0].boot_id, 0, 2**62)
            while time.monotonic() < deadline and "storage_full" not in daemon.recorder.status.alarms:
                time.sleep(0.1)
            assert "storage_full" in daemon.recorder.status.alarms
            assert daemon.recorder.status.state == "storage_full"
            n = daemon.recorder.status.frames_not_stored
            time.sleep(1.0)
            assert daemon.recorder.status.frames_not_stored > n, "frames are counted while paused"
            for r in Index(StatePaths(s.state_dir).index).stored():
                if r.name in protected:
                    assert r.sha256 == protected[r.name]
            assert set(protected) <= {r.name for r in idx.stored()}
            idx.release("test:evidence")
            idx.release_range("test:future")
            written = daemon.recorder.status.segments_written
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and daemon.recorder.status.segments_written <= written + 1:
                time.sleep(0.1)
            assert daemon.recorder.status.segments_written > written + 1, "recording did not resume"
            assert "storage_full" not in daemon.recorder.status.alarms
        finally:
            daemon.recorder.stop()
            t.join(timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
