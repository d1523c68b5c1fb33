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
from dataclasses import dataclass
from pathlib import Path

from edged.index import Index

log = logging.getLogger("edged.ring")


#: Kept free beyond ``min_free_bytes`` for SQLite's journals and the status file: a disk filled
#: to the last byte by footage could not even record an eviction. (WAL files are capped in db.py.)
METADATA_RESERVE_BYTES = 256 * 1024


class Room(enum.Enum):
    OK = "ok"
    OVER_BUDGET = "storage_over_budget"  # recording goes on, only held footage is left to evict
    FULL = "storage_full"                # no room for the next segment: recording pauses


@dataclass(frozen=True, slots=True)
class Usage:
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
