"""Storage faults: a full disk, a read-only folder, a corrupt or missing index."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edged.app.daemon import EXIT_STORAGE, Daemon
from edged.core.files import write_atomic
from edged.core.paths import StatePaths
from edged.footage.index import Index, IndexUnavailable, open_or_rebuild
from edged.recording.segment import PART_SUFFIX
from tests.conftest import REPO, make_settings
from tests.support import Running, SteppableClock, decode_all, ext4_loop, segment_files, tmpfs, wait_until

SMALL = {"width": 320, "height": 180, "bitrate": 150_000}
DAY_NS = 86_400 * 10**9


def rows_of(state: Path) -> list:
    idx = Index(StatePaths(state).index)
    try:
        return idx.segments()
    finally:
        idx.close()


def assert_stored_segments_decode(state: Path, rows) -> None:
    for r in rows:
        if r.state in ("final", "salvaged"):
            frames, _ = decode_all(state / "segments" / r.name)
            assert frames == r.frames > 0, r


def edged_status(tmp_path: Path, state: Path) -> subprocess.CompletedProcess:
    cfg = tmp_path / "status.toml"
    cfg.write_text(f'[storage]\ndir = "{state}"\n')
    return subprocess.run(
        [sys.executable, "-m", "edged", "status", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


# --- a full disk ----------------------------------------------------------------------------


def test_disk_filled_by_someone_else_mid_segment(tmp_path):
    """Another writer fills the card while a segment is being written (ENOSPC mid-segment): the
    daemon keeps running, deals with the segment it was writing (salvaged, or recorded as lost
    when nothing of it reached the disk), resumes when space returns, and a mark taken after that
    still becomes a clip."""
    with tmpfs(tmp_path / "small", "size=8m") as mnt:
        s = make_settings(
            mnt / "state",
            camera=SMALL | {"paced": True},
            storage={"segment_seconds": 2.0},
            clips={"pre_roll_seconds": 1.0, "post_roll_seconds": 1.0},
        )
        run = Running(Daemon(s))
        filler = mnt / "filler"
        try:
            wait_until(
                lambda: run.recorder is not None and run.recorder.status.segments_written >= 1, 20, "a first segment"
            )
            time.sleep(0.5)  # into the next segment
            with open(filler, "wb", buffering=0) as f:  # take every free byte (unbuffered: close cannot fail)
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            wait_until(lambda: "storage_error" in run.recorder.status.alarms, 15, "alarm storage_error")
            st = run.recorder.status
            assert st.last_error.startswith("write failed")
            assert run.thread.is_alive(), "the daemon must not crash on a full disk"
            filler.unlink()
            written = st.segments_written
            wait_until(lambda: run.recorder.status.segments_written >= written + 2, 20, "recording resumed")
            assert "storage_error" not in run.recorder.status.alarms, "the alarm clears when writing works again"
            # Nothing of the episode may stand in the way of later evidence.
            event_id = run.daemon.mark("test", "after the disk was full").event_id
            try:
                wait_until(lambda: run.daemon.events_store.get(event_id).state != "open", 15, "the event built")
            except AssertionError:
                raise AssertionError(
                    f"event {event_id}, marked after recovery, was never built; segment rows: "
                    f"{[(r.seq, r.state) for r in rows_of(s.state_dir)]}"
                ) from None
            assert run.daemon.events_store.get(event_id).state == "built"
        finally:
            run.stop()
        assert run.error is None and run.rc == 0
        rows = rows_of(s.state_dir)
        # The segment cut off ends salvaged or lost; a salvaged one may since have been evicted to make
        # room (the ring keeps its note), which on a loaded machine happens before the test looks.
        hit = [r for r in rows if r.state in ("salvaged", "lost") or (r.state == "evicted" and "write error" in r.note)]
        assert hit, f"the full disk cut a segment off: {[(r.seq, r.state, r.note) for r in rows]}"
        others = [r for r in rows if r not in hit and r.state not in ("final", "evicted")]
        assert not others, f"the segment cut off by the full disk must end salvaged or lost, not {others}"
        assert not list((s.state_dir / "segments").glob(f"*{PART_SUFFIX}"))
        assert_stored_segments_decode(s.state_dir, rows)


def _fill_to_the_last_byte(path: Path) -> None:
    """Another writer takes every byte left on the file system of ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"x" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)


def test_a_status_write_refused_by_a_full_disk_leaves_no_temporary_file(tmp_path):
    """status.json (and a clip's manifest) are replaced whole or not at all; a write the disk
    refuses leaves the previous file and no temporary file taking up the little room left."""
    with tmpfs(tmp_path / "card", "size=256k") as mnt:
        target = mnt / "status.json"
        write_atomic(target, b"{}")
        _fill_to_the_last_byte(mnt / "filler")
        with pytest.raises(OSError):
            write_atomic(target, b"x" * 65536)
        assert sorted(p.name for p in mnt.iterdir()) == ["filler", "status.json"]
        assert target.read_bytes() == b"{}"


def _fill_own_disk(mnt: Path, monkeypatch):
    """Record into a 2 MB tmpfs with no free-space floor and a budget far larger than the file
    system, until a write fails for lack of space. The ring guards against that (a reserve for
    its records, the open segment counted, a generous size estimate), so the guards are taken
    away here, as segments larger than their estimate or unbudgeted files would: what is tested
    is how the daemon gets out of a disk full of its own footage."""
    import edged.footage.ring
    import edged.recording.recorder

    monkeypatch.setattr(edged.footage.ring, "METADATA_RESERVE_BYTES", 0)
    monkeypatch.setattr(edged.recording.recorder, "segment_bytes_estimate", lambda settings: 0)
    monkeypatch.setattr(edged.recording.recorder.Recorder, "_open_bytes", lambda self: 0)
    s = make_settings(mnt / "state", camera=SMALL | {"bitrate": 300_000}, storage={"segment_seconds": 2.0})
    assert s.storage.max_bytes > 2 * 2**20 and s.storage.min_free_bytes == 0
    run = Running(Daemon(s))
    try:
        wait_until(
            lambda: run.recorder is not None and "storage_error" in run.recorder.status.alarms,
            60,
            "a write error on the full file system",
        )
    except BaseException:
        run.stop()
        raise
    return s, run


def test_the_ring_keeps_room_for_its_own_records_on_a_small_disk(tmp_path):
    """With the metadata reserve, a disk smaller than the budget never fills: the ring evicts
    before the index, events and outbox run out of room, and no write error happens."""
    with tmpfs(tmp_path / "small", "size=2m") as mnt:
        s = make_settings(mnt / "state", camera=SMALL | {"bitrate": 300_000}, storage={"segment_seconds": 2.0})
        run = Running(Daemon(s))
        try:
            wait_until(
                lambda: run.recorder is not None and run.recorder.status.segments_written >= 14,
                60,
                "twice the disk's worth of segments",
            )
            assert "storage_error" not in run.recorder.status.alarms and run.recorder.status.last_error is None
        finally:
            run.stop()
        assert run.rc == 0
        rows = rows_of(s.state_dir)
        assert [r for r in rows if r.state == "evicted"], "the oldest footage was overwritten"
        assert_stored_segments_decode(s.state_dir, rows)


def test_disk_full_of_own_footage_does_not_crash_and_keeps_footage(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "small", "size=2m") as mnt:
        s, run = _fill_own_disk(mnt, monkeypatch)
        try:
            assert run.recorder.status.last_error.startswith("write failed")
            time.sleep(1.5)  # a retry or two on the full disk
            assert run.thread.is_alive() and run.error is None, "the daemon must not crash on a full disk"
        finally:
            run.stop()
        assert run.error is None, f"the daemon raised: {run.error!r}"
        assert run.rc == 0 and run.recorder.crashed is None
        rows = rows_of(s.state_dir)
        assert len([r for r in rows if r.state == "final"]) >= 3
        assert_stored_segments_decode(s.state_dir, rows)
        # The segment the error cut off may be left 'writing' (its .part, if any, kept for the next
        # start to salvage: the disk had no room for the copy). Give the folder a disk with room,
        # as an operator would: the next start completes it.
        copy = tmp_path / "copy"
        shutil.copytree(s.state_dir, copy, ignore=shutil.ignore_patterns("control.sock", "edged.lock"))
    s2 = make_settings(copy, camera=SMALL, storage={"segment_seconds": 2.0})
    assert Daemon(s2, stop_after_s=2).run() == 0
    after = rows_of(copy)
    assert not [r for r in after if r.state == "writing"]
    assert not list((copy / "segments").glob(f"*{PART_SUFFIX}"))
    assert_stored_segments_decode(copy, after)
    before = {r.seq: r for r in rows}
    for r in after:
        if r.seq in before and before[r.seq].state == "final":
            assert r.state == "final" and r.sha256 == before[r.seq].sha256


def test_disk_full_of_own_footage_recording_resumes_by_overwriting_the_oldest(tmp_path, monkeypatch):
    """Nothing is held: a full card is no reason to stop recording, the ring overwrites its own
    oldest footage (the index's own growth included) and the operator sees the error."""
    with tmpfs(tmp_path / "small", "size=2m") as mnt:
        s, run = _fill_own_disk(mnt, monkeypatch)
        try:
            n = run.recorder.status.segments_written
            wait_until(
                lambda: run.recorder.status.segments_written >= n + 2,
                30,  # a deadline: on a loaded machine recovery takes longer, never forever
                "recording to resume after the full disk (old unheld footage is evictable)",
            )
            out = edged_status(tmp_path, s.state_dir)
            assert out.returncode == 0, out.stderr
            st = json.loads(out.stdout)
            assert st["state"] == "recording"
            assert (st["last_error"] or "").startswith("write failed"), st
        finally:
            run.stop()
        assert run.error is None and run.rc == 0


def test_restart_on_a_disk_full_of_own_footage_records(tmp_path, monkeypatch):
    """After a power cut or restart with the card full of its own (unheld) ring, the daemon must
    make room and record, not refuse the storage folder (systemd would restart it forever)."""
    with tmpfs(tmp_path / "small", "size=2m") as mnt:
        s, run = _fill_own_disk(mnt, monkeypatch)
        run.stop()
        assert run.error is None
        again = Daemon(s, stop_after_s=4)
        rc = again.run()
        assert rc == 0, f"exit {rc} on a disk full of evictable footage"
        assert again.recorder.status.segments_written >= 1
        assert not list((s.state_dir / "segments").glob(".write-test-*")), "no probe file left behind"


def test_restart_on_a_disk_topped_up_to_the_last_byte_makes_room_before_opening_the_index(tmp_path):
    """The card holds the ring (kept below the disk by the ring's reserve) and something else took
    the last bytes while edged was stopped: SQLite cannot even open the index then (no room for
    its shared-memory file). That is no corruption: the index stays, the oldest footage makes room,
    recording goes on."""
    with tmpfs(tmp_path / "small", "size=2m") as mnt:
        s = make_settings(mnt / "state", camera=SMALL | {"bitrate": 300_000}, storage={"segment_seconds": 2.0})
        run = Running(Daemon(s))
        try:
            wait_until(
                lambda: run.recorder is not None and run.recorder.status.segments_written >= 10,
                60,
                "the disk's worth of segments",
            )
        finally:
            run.stop()
        assert run.error is None and run.rc == 0
        before = {r.seq: r for r in rows_of(s.state_dir)}
        assert not Path(str(StatePaths(s.state_dir).index) + "-shm").exists(), "a clean stop removes it"
        _fill_to_the_last_byte(mnt / "someone-elses-file")
        again = Daemon(s, stop_after_s=4)
        rc = again.run()
        assert rc == 0, f"exit {rc} on a disk full of evictable footage"
        assert not list(s.state_dir.glob("index.sqlite.corrupt-*")), "a sound index is not moved aside"
        rows = rows_of(s.state_dir)
        assert [r.seq for r in rows][: len(before)] == sorted(before), "the index kept its rows"
        assert [r for r in rows if r.seq in before and r.state == "evicted" and before[r.seq].state == "final"]
        assert [r for r in rows if r.seq > max(before) and r.state == "final"], "recorded after the restart"
        assert not list((s.state_dir / "segments").glob(".write-test-*")), "no probe file left behind"
        assert_stored_segments_decode(s.state_dir, rows)


# --- read-only storage ------------------------------------------------------------------------


def test_read_only_storage_folder_is_a_clear_error(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        cfg = tmp_path / "edged.toml"
        cfg.write_text(f'[camera]\nsource = "synthetic"\n[storage]\ndir = "{mnt / "state"}"\nmin_free_bytes = 0\n')
        out = subprocess.run(
            [sys.executable, "-m", "edged", "run", "--config", str(cfg), "--for", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert out.returncode == EXIT_STORAGE == 73
        assert "storage.dir" in out.stderr and "read-only" in out.stderr and str(mnt / "state") in out.stderr
        assert "Traceback" not in out.stderr


def test_storage_going_read_only_while_recording(tmp_path):
    """The card's file system turns read-only under the running daemon (ext4 errors=remount-ro,
    as on a failing SD card): no crash, the error is shown, finished footage is intact, and the
    next start with the storage back salvages the segment that was cut off."""
    with ext4_loop(tmp_path / "card") as (mnt, sysfs, _img):
        s = make_settings(mnt / "state", camera=SMALL | {"paced": True}, storage={"segment_seconds": 2.0})
        run = Running(Daemon(s))
        try:
            wait_until(
                lambda: run.recorder is not None and run.recorder.status.segments_written >= 1, 20, "a first segment"
            )
            idx = Index(StatePaths(s.state_dir).index)
            finished = idx.stored()
            idx.close()
            time.sleep(0.5)
            (sysfs / "trigger_fs_error").write_text("edged test: card failed\n")
            wait_until(lambda: run.recorder.status.last_error is not None, 10, "the write error")
            wait_until(lambda: "storage_error" in run.recorder.status.alarms, 20, "the storage_error alarm")
            time.sleep(1.5)  # a retry or two: still alive after them
            st = run.recorder.status
            assert "Read-only file system" in st.last_error or "I/O error" in st.last_error, st.last_error
            assert run.thread.is_alive() and run.error is None, "the daemon must not crash"
        finally:
            run.stop()
        assert run.error is None, f"the daemon raised while stopping on read-only storage: {run.error!r}"
        assert isinstance(run.rc, int) and run.recorder.crashed is None
        assert finished
        for r in finished:
            path = s.state_dir / "segments" / r.name
            assert decode_all(path)[0] == r.frames
        # The card is read back on a working disk: the next start completes the index.
        copy = tmp_path / "copy"
        shutil.copytree(s.state_dir, copy, ignore=shutil.ignore_patterns("control.sock", "edged.lock"))
    s2 = make_settings(copy, camera=SMALL, storage={"segment_seconds": 2.0})
    assert Daemon(s2, stop_after_s=2).run() == 0
    rows = rows_of(copy)
    assert not [r for r in rows if r.state == "writing"]
    assert not list((copy / "segments").glob(f"*{PART_SUFFIX}"))
    assert_stored_segments_decode(copy, rows)
    by_seq = {r.seq: r for r in rows}
    for r in finished:
        assert by_seq[r.seq].state == "final" and by_seq[r.seq].sha256 == r.sha256
    cut = by_seq[max(r.seq for r in finished) + 1]
    assert cut.state in ("salvaged", "lost"), "the segment the failure cut off is salvaged (or recorded lost)"


def test_status_command_works_on_read_only_storage(tmp_path):
    """`edged status` is what the operator runs when something is wrong, e.g. the card went
    read-only: it must read, not fail (it must not need to write the index to read it)."""
    with tmpfs(tmp_path / "card", "size=16m") as mnt:
        s = make_settings(mnt / "state", camera=SMALL, storage={"segment_seconds": 2.0})
        assert Daemon(s, stop_after_s=4).run() == 0
        rows = rows_of(s.state_dir)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)  # no file open: allowed
        out = edged_status(tmp_path, s.state_dir)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        st = json.loads(out.stdout)
        assert st["state"] == "stopped" and st["segments"] == len(rows) == 2
        assert st["bytes_used"] == sum(r.bytes for r in rows)


# --- the index ------------------------------------------------------------------------------


def _key(r) -> tuple:
    return (r.seq, r.name, r.wall_start_ns, r.mono_start_ns, r.boot_id, r.clock_synced, r.sha256, r.frames, r.bytes)


@pytest.mark.parametrize("damage", ["garbage", "damaged-pages", "missing"])
def test_index_rebuilt_from_the_segment_files(tmp_path, damage):
    s = make_settings(tmp_path / "state", camera=SMALL, storage={"segment_seconds": 3.0})
    Daemon(s, stop_after_s=12).run()
    paths = StatePaths(s.state_dir)
    before = [_key(r) for r in rows_of(s.state_dir)]
    assert len(before) == 4
    for suffix in ("-wal", "-shm"):
        Path(str(paths.index) + suffix).unlink(missing_ok=True)
    if damage == "garbage":
        paths.index.write_bytes(b"this is not a database" * 100)
    elif damage == "damaged-pages":
        data = bytearray(paths.index.read_bytes())
        assert len(data) > 8192
        data[4096:] = bytes((i * 131 + 7) % 256 for i in range(len(data) - 4096))  # header page intact
        paths.index.write_bytes(bytes(data))
    else:
        paths.index.unlink()
    Daemon(s, stop_after_s=1).run()
    rows = rows_of(s.state_dir)
    after = [_key(r) for r in rows][: len(before)]
    assert after == before
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1)), "numbering continues after the rebuilt rows"
    assert_stored_segments_decode(s.state_dir, rows)
    aside = list(s.state_dir.glob("index.sqlite.corrupt-*"))
    if damage == "missing":
        assert not aside
    else:
        assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))], "the corrupt index is kept aside"


@pytest.mark.parametrize("trouble", ["disk-full", "read-only"])
def test_a_sound_index_that_cannot_be_opened_now_is_left_in_place(tmp_path, trouble):
    """A full disk or a read-only card makes SQLite fail to open the index (an I/O error, a
    read-only database): no reason to move a healthy index aside and rebuild it."""
    with tmpfs(tmp_path / "card", "size=1m") as mnt:
        path = mnt / "index.sqlite"
        idx = Index(path)
        idx.begin(1, "1.webm", "boot", 1, 2, True)
        idx.close()
        if trouble == "disk-full":
            _fill_to_the_last_byte(mnt / "filler")
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(IndexUnavailable):
            open_or_rebuild(path)
        assert sorted(p.name for p in mnt.iterdir() if "corrupt" in p.name) == []
        if trouble == "disk-full":
            (mnt / "filler").unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        idx, moved = open_or_rebuild(path)
        try:
            assert moved is None and [r.name for r in idx.segments()] == ["1.webm"]
        finally:
            idx.close()


def test_index_rebuild_keeps_the_clock_correction(tmp_path):
    """Footage recorded before NTP synchronised the clock is placed by the boot's synchronised
    offset. The files carry what is needed (boot id, monotonic and wall starts, sync flag), so an
    index rebuilt after a power cut (a new boot) must still place it right, not a day off."""
    s = make_settings(tmp_path / "state", camera=SMALL, storage={"segment_seconds": 2.0})
    clock = SteppableClock(synced=False, boot="boot-1")
    true_offset = clock.offset_ns
    clock.offset_ns = true_offset - DAY_NS  # no RTC: the clock starts a day behind
    assert Daemon(s, clock=clock, stop_after_s=4).run() == 0
    clock.offset_ns, clock.synced = true_offset, True  # NTP set it
    assert Daemon(s, clock=clock, stop_after_s=4).run() == 0
    rows = rows_of(s.state_dir)
    assert [r.clock_synced for r in rows] == [False, False, True, True]
    for r in rows:
        assert abs(r.best_wall_start_ns - (r.mono_start_ns + true_offset)) < 10**9, "corrected before the damage"

    paths = StatePaths(s.state_dir)
    for suffix in ("-wal", "-shm"):
        Path(str(paths.index) + suffix).unlink(missing_ok=True)
    paths.index.write_bytes(b"\0garbage" * 512)
    assert Daemon(s, clock=SteppableClock(synced=True, boot="boot-2"), stop_after_s=2).run() == 0
    rebuilt = [r for r in rows_of(s.state_dir) if r.boot_id == "boot-1"]
    assert [_key(r) for r in rebuilt] == [_key(r) for r in rows]
    for r in rebuilt:
        off_by = r.best_wall_start_ns - (r.mono_start_ns + true_offset)
        assert abs(off_by) < 10**9, f"segment {r.seq} placed {off_by / 1e9:+.0f} s off after the rebuild"


def test_segment_files_are_what_the_index_says(tmp_path):
    """The files alone carry the index: tags read back by an independent reader (PyAV)."""
    import av

    s = make_settings(tmp_path / "state", camera=SMALL, storage={"segment_seconds": 2.0})
    Daemon(s, stop_after_s=4).run()
    rows = rows_of(s.state_dir)
    files = segment_files(s.state_dir)
    assert [f.name for f in files] == [r.name for r in rows]
    for r, f in zip(rows, files):
        with av.open(str(f)) as c:
            tags = {k.upper(): v for k, v in c.metadata.items()}
        assert int(tags["EDGED_SEQ"]) == r.seq and tags["EDGED_BOOT_ID"] == r.boot_id
        assert int(tags["EDGED_MONO_START_NS"]) == r.mono_start_ns
        assert int(tags["EDGED_WALL_START_NS"]) == r.wall_start_ns


def test_a_durable_atomic_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    """A clip's manifest must survive a power cut with its parts: its data reaches the disk
    before it replaces the old file. The status file, rewritten every second, skips the fsync."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(tmp_path / "status.json", b"{}")
    assert synced == []
    write_atomic(tmp_path / "manifest.json", b'{"parts": []}', durable=True)
    # the data before the rename, then the folder that holds the new name
    assert len(synced) == 2 and synced[0].endswith(".tmp") and "manifest.json" in synced[0]
    assert synced[1] == str(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == b'{"parts": []}'
    import inspect as pyinspect

    from edged.clips.job import FootageJobs  # (marks and recalls write their manifests through it)

    assert "durable=True" in pyinspect.getsource(FootageJobs.run), "the manifest is written durably"
