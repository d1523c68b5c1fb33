"""Crash safety: kill -9 at random moments, truncated segments, salvage on restart."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edged.app.daemon import Daemon
from edged.core.paths import StatePaths
from edged.footage.index import Index
from edged.recording.reconcile import reconcile
from edged.recording.segment import PART_SUFFIX
from tests.conftest import make_settings
from tests.support import decode_all, load_factor, segment_files

SEED = int(os.environ.get("EDGED_TEST_SEED", random.randrange(1 << 30)))


def _config(tmp_path: Path, segment_seconds: float = 4.0) -> Path:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "synthetic"
paced = true
[audio]
source = "synthetic"
[storage]
dir = "{tmp_path / "state"}"
segment_seconds = {segment_seconds}
min_free_bytes = 0
""")
    return cfg


def _wait_for_first_segment_row(state: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout * load_factor()
    while time.monotonic() < deadline:
        if list((state / "segments").glob("*.part")):
            return
        time.sleep(0.05)
    raise AssertionError("daemon never started a segment")


@pytest.mark.parametrize("trial", range(2))
def test_kill_9_loses_at_most_two_seconds(tmp_path, trial):
    rng = random.Random(SEED + trial)
    print(f"seed {SEED + trial}")
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_first_segment_row(state)
        time.sleep(rng.uniform(2.5, 9.5))  # anywhere, across segment boundaries too
        killed_at_ns = time.monotonic_ns()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list((state / "segments").glob("*" + PART_SUFFIX)), "a segment was being written"

    # Restart: reconcile salvages the cut-off segment before recording resumes.
    s = make_settings(state, camera={"paced": False})
    Daemon(s, stop_after_s=1).run()
    idx = Index(StatePaths(state).index)
    rows = [r for r in idx.segments() if r.mono_start_ns < killed_at_ns]
    states = [(r.name, r.state) for r in rows]
    # The segment being written is salvaged; only if the kill came before its first cluster
    # reached the disk is it "lost" (and then the loss is still bounded below).
    assert rows and rows[-1].state in ("salvaged", "lost"), states
    assert all(r.state in ("final", "salvaged") for r in rows[:-1]), states
    kept = [r for r in rows if r.state != "lost"]
    for r in kept:
        frames, _ = decode_all(state / "segments" / r.name)
        assert frames == r.frames
    recorded_until = kept[-1].mono_start_ns + kept[-1].duration_ns
    lost_s = (killed_at_ns - recorded_until) / 1e9
    print(f"footage lost at kill: {lost_s:.2f} s")
    assert lost_s <= 2.0, f"lost {lost_s:.2f} s of footage"
    assert not list((state / "segments").glob("*" + PART_SUFFIX))


def _recorded(tmp_path: Path, seconds: float = 10) -> tuple[Path, Path]:
    s = make_settings(tmp_path / "state")
    Daemon(s, stop_after_s=seconds).run()
    return s.state_dir, segment_files(s.state_dir)[0]


@pytest.mark.parametrize("keep", [0.35, 0.7, 0.97])
def test_truncated_segment_is_salvaged_to_its_last_complete_frames(tmp_path, keep):
    state, seg = _recorded(tmp_path)
    idx = Index(StatePaths(state).index)
    row = idx.stored()[0]
    full_frames = row.frames
    # Turn it back into a segment cut off mid-write: a .part of a prefix, its row 'writing'.
    data = seg.read_bytes()
    part = seg.with_name(seg.name + PART_SUFFIX)
    part.write_bytes(data[: int(len(data) * keep)])
    seg.unlink()
    idx.set_state(row.seq, "writing")
    report = reconcile(idx, state / "segments")
    assert report.salvaged == [seg.name]
    after = idx.get(row.seq)
    assert after.state == "salvaged"
    frames, samples = decode_all(seg)
    assert frames == after.frames
    assert 0 < frames < full_frames
    # Clusters are at most one second: the prefix keeps all but its last second or so.
    assert frames >= int(full_frames * keep) - 15, (frames, full_frames, keep)
    assert not part.exists()


def test_segment_with_only_a_header_is_marked_lost(tmp_path):
    state, seg = _recorded(tmp_path)
    idx = Index(StatePaths(state).index)
    row = idx.stored()[0]
    part = seg.with_name(seg.name + PART_SUFFIX)
    part.write_bytes(seg.read_bytes()[:200])
    seg.unlink()
    idx.set_state(row.seq, "writing")
    report = reconcile(idx, state / "segments")
    assert report.lost == [seg.name]
    assert idx.get(row.seq).state == "lost"
    assert not part.exists() and not seg.exists()


def test_part_file_without_index_row_is_salvaged_and_adopted(tmp_path):
    state, seg = _recorded(tmp_path, seconds=10)
    paths = StatePaths(state)
    original = Index(paths.index).stored()[0]
    shutil.move(seg, seg.with_name(seg.name + PART_SUFFIX))
    for suffix in ("", "-wal", "-shm"):
        Path(str(paths.index) + suffix).unlink(missing_ok=True)
    idx = Index(paths.index)
    report = reconcile(idx, paths.segments)
    assert report.salvaged == [seg.name]
    row = idx.get(original.seq)
    assert row is not None and row.state == "salvaged"
    assert (row.mono_start_ns, row.wall_start_ns, row.boot_id) == (
        original.mono_start_ns,
        original.wall_start_ns,
        original.boot_id,
    )


def test_crash_after_rename_before_index_update_keeps_the_segment(tmp_path):
    state, seg = _recorded(tmp_path)
    idx = Index(StatePaths(state).index)
    row = idx.stored()[0]
    idx.set_state(row.seq, "writing")  # the final .webm exists, the row says writing
    report = reconcile(idx, state / "segments")
    assert report.adopted == [seg.name]
    assert idx.get(row.seq).state == "final"
    assert idx.get(row.seq).sha256 == row.sha256


def test_evicted_row_whose_file_survived_is_deleted(tmp_path):
    state, seg = _recorded(tmp_path)
    idx = Index(StatePaths(state).index)
    row = idx.stored()[0]
    idx.set_state(row.seq, "evicted")  # crash between the index update and the unlink
    report = reconcile(idx, state / "segments")
    assert report.deleted == [seg.name] and not seg.exists()
