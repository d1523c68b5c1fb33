"""The ring buffer: bounded disk use, oldest unprotected footage overwritten first.

Policy when room runs out (README "Storage policy"):
  * Over ``max_bytes``: evict the oldest segments that nobody holds, one by one.
  * Over budget with only held footage left: keep recording past the budget while the file
    system still has ``min_free_bytes`` free, and warn (alarm ``storage_over_budget``).
  * The file system at ``min_free_bytes`` with nothing evictable: stop writing new footage
    (frames are counted as dropped), raise ``storage_full`` loudly, and look again every
    second; recording resumes by itself when holds are released or space appears.
Held (protected) footage is never deleted here.
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
from pathlib import Path
from typing import NamedTuple

from edged.core.journal import Msg, log_event
from edged.footage.index import Index, IndexCorrupt, IndexUnavailable, open_or_rebuild

log = logging.getLogger("edged.ring")


#: Kept free beyond ``min_free_bytes`` for SQLite's journals and the status file: a disk filled
#: to the last byte by footage could not even record an eviction. (WAL files are capped in db.py.)
METADATA_RESERVE_BYTES = 256 * 1024


class Room(enum.Enum):
    OK = "ok"
    OVER_BUDGET = "storage_over_budget"  # recording goes on, only held footage is left to evict
    FULL = "storage_full"  # no room for the next segment: recording pauses


class Usage(NamedTuple):
    stored_bytes: int
    held_bytes: int
    free_bytes: int


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class RingBuffer:
    def __init__(self, index: Index, segments_dir: Path, max_bytes: int, min_free_bytes: int) -> None:
        self.index = index
        self.dir = segments_dir
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.evicted = 0

    def configure(self, max_bytes: int, min_free_bytes: int) -> None:
        self.max_bytes, self.min_free_bytes = max_bytes, min_free_bytes

    def usage(self) -> Usage:
        return Usage(self.index.stored_bytes(), self.index.held_bytes(), free_bytes(self.dir))

    def make_room(self, reserve_bytes: int) -> Room:
        """Evict until ``reserve_bytes`` more fit in the budget and on the disk (with room kept
        for the stores' own writes: index, events, outbox, status)."""
        self.index.retry_evictions()
        candidates = iter(self.index.eviction_candidates())
        while True:
            stored = self.index.stored_bytes()
            free = free_bytes(self.dir)
            over_budget = stored + reserve_bytes > self.max_bytes
            over_disk = free - reserve_bytes < self.min_free_bytes + METADATA_RESERVE_BYTES
            if not over_budget and not over_disk:
                return Room.OK
            victim = next(candidates, None)
            if victim is None:
                return Room.FULL if over_disk else Room.OVER_BUDGET
            self.evict(victim.seq, victim.name)

    def evict(self, seq: int, name: str) -> bool:
        # Checked unheld, file removed, row marked: atomically with respect to holds (the index
        # lock). A crash between file and row leaves a row whose file is gone: reconcile records it.
        if not self.index.evict_if_unheld(seq, lambda: (self.dir / name).unlink(missing_ok=True)):
            return False
        self.evicted += 1
        log.debug("evicted segment %s", name)
        return True


def open_index_making_room(
    index_path: Path, segments_dir: Path, max_bytes: int, min_free_bytes: int, reserve_bytes: int
) -> tuple[Index, str | None]:
    """``open_or_rebuild`` at start. On a disk full to the last byte SQLite cannot open the index
    as usual (it cannot allocate the shared-memory file): room is made first, by the same policy,
    through an exclusive connection, which needs none (nobody else uses the index yet; the
    operator's read-only view waits meanwhile). Raises ``IndexUnavailable`` if it still fails."""
    try:
        return open_or_rebuild(index_path)
    except IndexUnavailable as exc:
        if free_bytes(segments_dir) >= min_free_bytes + METADATA_RESERVE_BYTES:
            raise  # not for lack of room: read-only, an I/O error, ...
        log_event(
            log,
            Msg.STORAGE_ALARM,
            "segment index cannot be opened on the full disk (%s): overwriting the oldest unprotected footage first",
            exc,
            level=logging.WARNING,
            alarm="disk_full_at_start",
            state="raised",
            storage_dir=segments_dir,
            reason=exc,
        )
    try:
        index = Index(index_path, exclusive=True)
        try:
            room = RingBuffer(index, segments_dir, max_bytes, min_free_bytes).make_room(reserve_bytes)
            index.retry_evictions()  # rows a full disk refused while the first files went
        finally:
            index.close()
    except (IndexCorrupt, IndexUnavailable, OSError, sqlite3.OperationalError) as exc:
        log_event(
            log,
            Msg.STORAGE_ALARM,
            "could not make room before opening the segment index: %s",
            exc,
            level=logging.ERROR,
            alarm="storage_error",
            state="raised",
            storage_dir=segments_dir,
            reason=exc,
        )
    else:
        if room is Room.FULL:
            log_event(
                log,
                Msg.STORAGE_ALARM,
                "no unprotected footage left to overwrite on the full disk",
                level=logging.ERROR,
                alarm=Room.FULL.value,
                state="raised",
                storage_dir=segments_dir,
            )
    return open_or_rebuild(index_path)
