"""Storage faults: a full disk, a read-only folder, a corrupt or missing index."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from edged.daemon import EXIT_STORAGE, Daemon
from edged.index import Index
from edged.paths import StatePaths
from tests.conftest import make_settings
from tests.helpers import decode_all, segment_files

SMALL = {"width": 320, "height": 180, "bitrate": 150_000}


@contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def test_disk_filled_by_someone_else_mid_segment(tmp_path):
    """Another writer fills the card while a segment is being written (ENOSPC mid-segment): the
    daemon keeps running, salvages what the segment had, and resumes when space returns."""
    with tmpfs(tmp_path / "small", "size=8m") as mnt:
        s = make_settings(mnt / "state", camera=SMALL | {"paced": True}, storage={"segment_seconds": 4.0})
        daemon = Daemon(s)
        t = threading.Thread(target=daemon.run)
        t.start()
        filler = mnt / "filler"
        try:
            wait(lambda: daemon.recorder is not None and daemon.recorder.status.segments_written >= 1, 20)
            time.sleep(1.5)  # into the next segment
            with open(filler, "wb") as f:  # take every free byte
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            wait(lambda: daemon.recorder.status.last_error is not None, 15)
            st = daemon.recorder.status
            assert "write failed" in st.last_error and "storage_error" in st.alarms
            assert t.is_alive(), "the daemon must not crash on a full disk"
            filler.unlink()
            written = st.segments_written
            wait(lambda: daemon.recorder.status.segments_written >= written + 2, 20)
        finally:
            daemon.recorder.stop()
            t.join(timeout=30)
        idx = Index(StatePaths(s.state_dir).index)
        rows = idx.stored()
        assert any(r.state == "salvaged" for r in rows) or idx.segments(["lost"]), \
            "the segment hit by the full disk is salvaged (or recorded as lost if nothing was on disk)"
        for r in rows:
            assert decode_all(s.state_dir / "segments" / r.name)[0] == r.frames


def wait(pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_read_only_storage_folder_is_a_clear_error(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        cfg = tmp_path / "edged.toml"
        cfg.write_text(f'[camera]\nsource = "synthetic"\n[storage]\ndir = "{mnt / "state"}"\nmin_free_bytes = 0\n')
        out = subprocess.run([sys.executable, "-m", "edged", "run", "--config", str(cfg), "--for", "2"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == EXIT_STORAGE
        assert "storage.dir" in out.stderr and "read-only" in out.stderr


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_index_rebuilt_from_the_segment_files(tmp_path, damage):
    s = make_settings(tmp_path / "state", camera=SMALL, storage={"segment_seconds": 3.0})
    Daemon(s, stop_after_s=12).run()
    paths = StatePaths(s.state_dir)
    before = [(r.seq, r.name, r.wall_start_ns, r.mono_start_ns, r.boot_id, r.sha256) for r in Index(paths.index).stored()]
    for suffix in ("-wal", "-shm"):
        Path(str(paths.index) + suffix).unlink(missing_ok=True)
    if damage == "garbage":
        paths.index.write_bytes(b"this is not a database" * 100)
    else:
        paths.index.unlink()
    Daemon(s, stop_after_s=1).run()
    after = [(r.seq, r.name, r.wall_start_ns, r.mono_start_ns, r.boot_id, r.sha256)
             for r in Index(paths.index).stored()][: len(before)]
    assert after == before
    if damage == "garbage":
        assert list(s.state_dir.glob("index.sqlite.corrupt-*")), "the corrupt index is kept aside"
