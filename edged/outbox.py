"""The outbox: a durable record per clip part, waiting for delivery.

SQLite (WAL, synchronous=FULL) in the state folder. A part is enqueued once its file is verified
and durable; the uploader (``edged.upload``) takes parts in priority order (marked events before
recalls), oldest event first within a priority. Until parts are delivered, the footage they were
cut from stays held in the ring buffer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edged.db import Store

#: Lower sorts first.
PRIORITY_MARK = 10
PRIORITY_RECALL = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (
    id            INTEGER PRIMARY KEY,
    clip_id       TEXT NOT NULL,
    number        INTEGER NOT NULL,
    path          TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    event_wall_ns INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT 'queued',
    created_ns    INTEGER NOT NULL,
    UNIQUE (clip_id, number)
);
CREATE INDEX IF NOT EXISTS parts_order ON parts(state, priority, event_wall_ns, number);
"""


@dataclass(frozen=True, slots=True)
class OutboxPart:
    id: int
    clip_id: str
    number: int
    path: str
    bytes: int
    duration_ms: int
    sha256: str
    priority: int
    event_wall_ns: int
    state: str
    created_ns: int


class Outbox(Store):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    def enqueue(self, clip_id: str, parts: list[tuple[int, Path, int, int, str]], priority: int,
                event_wall_ns: int) -> None:
        """Queue every part of a clip in one transaction: (number, path, bytes, duration_ms, sha256).
        Enqueuing the same clip again is a no-op (a restart may rebuild a clip)."""
        now = time.time_ns()
        with self.tx() as db:
            db.executemany("INSERT OR IGNORE INTO parts (clip_id, number, path, bytes, duration_ms, sha256,"
                           " priority, event_wall_ns, created_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                           [(clip_id, n, str(p), b, d, h, priority, event_wall_ns, now) for n, p, b, d, h in parts])

    def parts(self, clip_id: str | None = None) -> list[OutboxPart]:
        sql = "SELECT * FROM parts"
        args: tuple = ()
        if clip_id is not None:
            sql += " WHERE clip_id=?"
            args = (clip_id,)
        return [OutboxPart(*r) for r in self.query(sql + " ORDER BY priority, event_wall_ns, clip_id, number", args)]

    def counts(self) -> dict[str, int]:
        return dict(self.query("SELECT state, COUNT(*) FROM parts GROUP BY state"))
