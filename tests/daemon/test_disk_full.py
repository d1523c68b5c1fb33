"""Disk full, end to end (issue 7, part 3): the real daemon records unpaced into a 256 MB ext4 image
that another program fills, with marked clips waiting for an upload server that is down.

What tests/daemon/test_storage_faults.py and tests/daemon/test_ring.py already show in small pieces (ENOSPC in
the middle of a segment, a disk full of the daemon's own footage, artificial holds on a tmpfs) is
put together here the way it happens on a card: the footage is protected by real marks whose clips
are not delivered yet, someone else's file grows in steps, and the only ways out are the ones the
README's "Storage policy (ring buffer)" names: the holds are released once the clips are delivered,
and the other program frees its space. Checked all along the run:

* the oldest unprotected footage is overwritten first, and only at the free-space floor;
* footage of an undelivered mark is never evicted or changed (sha256 as recorded);
* ``storage_full`` is raised only when nothing unprotected is left, and recording pauses (frames
  counted as not stored), with no write error and the daemon alive;
* delivery releases the holds: the oldest released footage goes first and recording resumes by
  itself; space given back is used without evicting anything;
* the daemon stops cleanly (exit 0), no ``.part`` is left, every finalised segment and every clip
  part decodes, and the server received every part unchanged.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from edged.app.daemon import Daemon
from edged.core.files import sha256_file
from edged.core.paths import StatePaths
from edged.footage.index import STORED, Index, Segment
from edged.footage.ring import free_bytes
from edged.recording.segment import PART_SUFFIX
from tests.conftest import make_settings
from tests.contract.sonoran_server import SonoranServer
from tests.support import Running, decode_all, ext4_loop, wait_until
from tests.support.upload import ACCOUNT

MB = 1 << 20
KEY = "disk-full-key"
#: 1 Mbps at 320x180: ~270 kB per 2 s segment, so a few seconds of the test move megabytes.
CAMERA = {"width": 320, "height": 180, "bitrate": 1_000_000}
FLOOR = 4 * MB  # storage.min_free_bytes


class OtherProgram:
    """Another program's file on the same file system, grown in steps (written, not just reserved)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._block = b"\xa5" * 65536

    def grow(self, nbytes: int) -> int:
        done = 0
        try:
            while done < nbytes:
                done += os.write(self._fd, self._block[: min(len(self._block), nbytes - done)])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        os.fsync(self._fd)
        return done

    def leave_free(self, nbytes: int) -> None:
        """Take the file system's free space down to ``nbytes`` (if there is more)."""
        extra = free_bytes(self.path.parent) - nbytes
        if extra > 0:
            self.grow(extra)

    def remove(self) -> None:
        os.close(self._fd)
        self.path.unlink()


class Watch:
    """Reads the index as the operator's tools do (read-only) and checks the policy at every look."""

    def __init__(self, state: Path) -> None:
        self.paths = StatePaths(state)
        self.protected: dict[int, str] = {}  # seq -> sha256 of footage held by an undelivered mark
        self.alarms_seen: set[str] = set()
        self.released: set[int] = set()  # once protected, then delivered: older than what went around them

    def rows(self) -> list[Segment]:
        idx = Index(self.paths.index, read_only=True)
        try:
            return idx.segments()
        finally:
            idx.close()

    def look(self, run: Running) -> list[Segment]:
        alarms = set(run.recorder.status.alarms)
        self.alarms_seen |= alarms
        assert run.thread.is_alive() and run.error is None, f"the daemon stopped: {run.error!r}"
        rows = self.rows()
        by_seq = {r.seq: r for r in rows}
        for seq, digest in self.protected.items():
            r = by_seq[seq]
            assert r.state in STORED, f"protected segment {seq} is {r.state}"
            assert r.held, f"protected segment {seq} lost its hold"
            assert sha256_file(self.paths.segments / r.name) == digest, f"protected segment {seq} changed"
        evicted = [r.seq for r in rows if r.state == "evicted"]
        unheld = [r.seq for r in rows if r.state in STORED and not r.held and r.seq not in self.released]
        if evicted and unheld:
            # Oldest unprotected first: nothing unheld that is still stored is older than what went.
            assert max(evicted) < min(unheld), (evicted, unheld)
        if "storage_full" in alarms:
            # The segment being written when the ring found nothing to evict is finished as recording
            # pauses (or the next one, if it resumed since): the only unprotected footage it may see.
            newest = max((r.seq for r in rows if r.state in STORED), default=0)
            assert all(seq == newest for seq in unheld), f"storage_full with older unprotected footage left: {unheld}"
        return rows


def protect_event(watch: Watch, run: Running, event_id: str) -> list[int]:
    """The segments a built event's clip came from: remember their sha256 while it is undelivered."""
    manifest = json.loads((watch.paths.clips / event_id / "manifest.json").read_text())
    seqs = [s["seq"] for s in manifest["source_segments"]]
    for s in manifest["source_segments"]:
        watch.protected[s["seq"]] = s["sha256"]
    return seqs


def test_a_filling_disk_keeps_the_storage_policy_end_to_end(tmp_path):
    with (
        ext4_loop(tmp_path / "card", size_mb=256) as (mnt, _sysfs, _img),
        SonoranServer(keys={KEY: "pro"}, accounts={ACCOUNT}) as server,
    ):
        server.down()  # the clips wait: their footage stays protected
        key_file = tmp_path / "api.key"
        key_file.write_text(KEY + "\n")
        other = OtherProgram(mnt / "other-program.dat")
        other.leave_free(24 * MB)  # a 256 MB card nearly full of someone else's data
        s = make_settings(
            mnt / "state",
            camera=CAMERA,
            storage={"segment_seconds": 2.0, "max_bytes": 10**9, "min_free_bytes": FLOOR},
            clips={"pre_roll_seconds": 4.0, "post_roll_seconds": 4.0},
            upload={
                "targets": ["sonoran_v2"],
                "retry_base_seconds": 0.2,
                "retry_cap_seconds": 1.0,
                "sonoran_v2": {
                    "base_url": server.url,
                    "api_key_file": str(key_file),
                    "account_uuid": ACCOUNT,
                    "plan": "pro",
                },
            },
        )
        assert s.storage.max_bytes > 256 * MB, "the free-space floor, not the budget, decides here"
        watch = Watch(s.state_dir)
        run = Running(Daemon(s))
        try:
            # 1. The ring fills what is free down to the floor, then overwrites its oldest footage.
            wait_until(
                lambda: run.recorder is not None and len([r for r in watch.look(run) if r.state == "evicted"]) >= 5,
                90,
                "the ring to overwrite its oldest footage at the floor",
            )
            rows = watch.look(run)
            evicted = [r.seq for r in rows if r.state == "evicted"]
            assert evicted == list(range(1, len(evicted) + 1)), "oldest first"
            assert free_bytes(mnt) >= FLOOR - MB, "the floor is kept (within a segment)"
            assert not watch.alarms_seen & {"storage_full", "storage_error", "storage_over_budget"}

            # 2. Three marks; their clips cannot be delivered (server down).
            events = []
            for n in range(3):
                written = run.recorder.status.segments_written
                wait_until(lambda w=written: run.recorder.status.segments_written >= w + 8, 60, "more footage")
                events.append(run.daemon.mark("test", f"event {n}").event_id)
                wait_until(lambda e=events[-1]: run.daemon.events_store.get(e).state != "open", 60, f"event {n} built")
                assert run.daemon.events_store.get(events[-1]).state == "built"
                protect_event(watch, run, events[-1])
                watch.look(run)
            assert not server.uploads
            assert all(d.state != "delivered" for d in run.daemon.outbox.deliveries())

            # 3. The ring goes on overwriting around the held footage, long enough for the first
            # event's segments to be the oldest on the card.
            oldest_held = min(watch.protected)
            wait_until(
                lambda: min(r.seq for r in watch.look(run) if r.state in STORED) >= oldest_held,
                60,
                "everything older than the first event overwritten",
            )
            n_evicted = len([r for r in watch.look(run) if r.state == "evicted"])
            wait_until(
                lambda: len([r for r in watch.look(run) if r.state == "evicted"]) >= n_evicted + 10,
                60,
                "ten more segments overwritten around the held footage",
            )

            # 4. The other program takes what the ring frees, step by step, until only protected
            # footage is left: recording pauses (storage_full), nothing protected is touched.
            def squeeze() -> bool:
                rows = watch.look(run)  # storage_full with older unprotected footage fails here
                if "storage_full" in run.recorder.status.alarms and not [
                    r for r in rows if r.state in STORED and not r.held
                ]:
                    return True
                other.leave_free(FLOOR + MB // 2)  # and whatever the ring frees is taken again
                return False

            wait_until(squeeze, 90, "alarm storage_full with only protected footage left")
            stored = [r for r in watch.look(run) if r.state in STORED]
            assert {r.seq for r in stored} >= set(watch.protected)
            st = run.recorder.status
            assert st.state == "storage_full"
            n = st.frames_not_stored
            wait_until(lambda: run.recorder.status.frames_not_stored > n, 15, "frames counted as not stored")
            # status.json is rewritten every second by the main loop: wait for the one that says so
            wait_until(
                lambda: (lambda doc: "storage_full" in doc["alarms"] or doc["state"] == "storage_full")(
                    json.loads(watch.paths.status.read_text())
                ),
                15,
                "status.json saying storage_full",
            )
            watch.look(run)

            # 5. The server comes back: the clips are delivered, their footage released, and the ring
            # makes room by overwriting it, oldest first; recording resumes by itself.
            server.up()
            wait_until(
                lambda: all(d.state == "delivered" for d in run.daemon.outbox.deliveries()), 60, "every clip delivered"
            )
            released = sorted(watch.protected)
            watch.released |= set(released)
            watch.protected.clear()
            written = run.recorder.status.segments_written
            wait_until(
                lambda: (
                    "storage_full" not in run.recorder.status.alarms
                    and run.recorder.status.segments_written >= written + 3
                ),
                60,
                "recording resumed after delivery",
            )
            rows = watch.look(run)
            gone = [r.seq for r in rows if r.seq in released and r.state == "evicted"]
            assert gone and gone == released[: len(gone)], f"released footage overwritten oldest first: {gone}"

            # 6. The other program deletes its file: the space is used, nothing needs overwriting.
            other.remove()
            # A segment finished just before the removal may still make room the old way: count
            # from the first segment finished after it.
            written = run.recorder.status.segments_written
            wait_until(lambda: run.recorder.status.segments_written >= written + 2, 60, "a segment after the removal")
            n_evicted = len([r for r in watch.look(run) if r.state == "evicted"])
            written = run.recorder.status.segments_written
            wait_until(lambda: run.recorder.status.segments_written >= written + 10, 60, "ten segments with room")
            assert len([r for r in watch.look(run) if r.state == "evicted"]) == n_evicted, (
                "nothing overwritten once the space came back"
            )
        finally:
            run.stop()
        assert run.error is None and run.rc == 0 and run.recorder.crashed is None, (run.error, run.rc)
        assert "storage_error" not in watch.alarms_seen, "the floor kept every write within the disk"

        rows = watch.rows()
        assert not [r for r in rows if r.state in ("writing", "lost")]
        assert not list(watch.paths.segments.glob(f"*{PART_SUFFIX}"))
        for r in rows:
            if r.state in STORED:
                frames, _ = decode_all(watch.paths.segments / r.name)
                assert frames == r.frames > 0, r
        received = {u.sha256 for u in server.uploads}
        for event_id in events:
            manifest = json.loads((watch.paths.clips / event_id / "manifest.json").read_text())
            for p in manifest["parts"]:
                part = watch.paths.clips / event_id / p["file"]
                assert sha256_file(part) == p["sha256"] and p["sha256"] in received
                assert decode_all(part)[0] > 0
