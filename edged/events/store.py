"""The events store (``events.sqlite``): every marked event, its window and its marks.

An event is stored at the press, before anything else happens, so a daemon restarted during a
post-roll finds it and finishes it. A mark keeps the device's position at the press (or the word
saying there was none), as ``edged.capture.position.position_doc`` gives it. Its state is an
:class:`~edged.core.states.EventState`: ``open`` while its post-roll is recorded (or extended by
another press), then ``built`` once its clip is in the outbox, or ``failed`` with the reason.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from edged.core.db import Store
from edged.core.states import EventState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id             TEXT PRIMARY KEY,
    boot_id        TEXT NOT NULL,
    start_mono_ns  INTEGER NOT NULL,
    end_mono_ns    INTEGER NOT NULL,
    pre_roll_ns    INTEGER NOT NULL,
    post_roll_ns   INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('open','built','failed')),
    reason         TEXT NOT NULL DEFAULT '',
    created_wall_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    event_id  TEXT NOT NULL REFERENCES events(id),
    mono_ns   INTEGER NOT NULL,
    wall_ns   INTEGER NOT NULL,
    clock_synced INTEGER NOT NULL,
    source    TEXT NOT NULL,
    note      TEXT NOT NULL DEFAULT '',
    position  TEXT
);
"""

#: Range holds in the index are owned by ``event:<id>``.
HOLD_PREFIX = "event:"


class Mark(NamedTuple):
    mono_ns: int
    wall_ns: int
    clock_synced: bool
    source: str
    note: str
    #: Where the device was at the press (``position_doc``); None for marks stored before edged
    #: recorded positions.
    position: dict[str, Any] | None = None


class Event(NamedTuple):
    id: str
    boot_id: str
    start_mono_ns: int
    end_mono_ns: int
    pre_roll_ns: int
    post_roll_ns: int
    state: EventState
    reason: str
    created_wall_ns: int

    @property
    def hold_owner(self) -> str:
        return HOLD_PREFIX + self.id


def _event(r: tuple) -> Event:
    return Event(r[0], r[1], r[2], r[3], r[4], r[5], EventState(r[6]), r[7], r[8])


def _position(text: str | None) -> dict[str, Any] | None:
    """A stored position back (what this store wrote; anything else reads as none)."""
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class EventStore(Store):
    def __init__(self, path: Path, read_only: bool = False) -> None:
        super().__init__(path, _SCHEMA, read_only=read_only)
        self._has_position = self._add_position_column()

    def _add_position_column(self) -> bool:
        """A store made before marks had positions gains the column (read-only: it goes without)."""
        columns = {r[1] for r in self.query("PRAGMA table_info(marks)")}
        if "position" in columns:
            return True
        if self.read_only:
            return False
        with self.tx() as db:
            db.execute("ALTER TABLE marks ADD COLUMN position TEXT")
        return True

    def events(self, state: EventState | None = None) -> list[Event]:
        sql = "SELECT * FROM events"
        args: tuple[str, ...] = ()
        if state:
            sql, args = sql + " WHERE state=?", (str(state),)
        return [_event(r) for r in self.query(sql + " ORDER BY start_mono_ns", args)]

    def get(self, event_id: str) -> Event | None:
        rows = self.query("SELECT * FROM events WHERE id=?", (event_id,))
        return _event(rows[0]) if rows else None

    def marks(self, event_id: str) -> list[Mark]:
        position = "position" if self._has_position else "NULL"
        rows = self.query(
            f"SELECT mono_ns, wall_ns, clock_synced, source, note, {position} FROM marks "
            "WHERE event_id=? ORDER BY mono_ns",
            (event_id,),
        )
        return [Mark(r[0], r[1], bool(r[2]), r[3], r[4], _position(r[5])) for r in rows]

    def open_event(self, event: Event, mark: Mark) -> None:
        """Store a new event with its first mark (one transaction)."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    event.id,
                    event.boot_id,
                    event.start_mono_ns,
                    event.end_mono_ns,
                    event.pre_roll_ns,
                    event.post_roll_ns,
                    event.state,
                    event.reason,
                    event.created_wall_ns,
                ),
            )
            self._add_mark(db, event.id, mark)

    def extend(self, event_id: str, end_mono_ns: int, mark: Mark) -> None:
        """A press during an event's post-roll: its new end and the mark (one transaction)."""
        with self.tx() as db:
            db.execute("UPDATE events SET end_mono_ns=? WHERE id=?", (end_mono_ns, event_id))
            self._add_mark(db, event_id, mark)

    @staticmethod
    def _add_mark(db: sqlite3.Connection, event_id: str, mark: Mark) -> None:
        db.execute(
            "INSERT INTO marks (event_id, mono_ns, wall_ns, clock_synced, source, note, position) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                event_id,
                mark.mono_ns,
                mark.wall_ns,
                int(mark.clock_synced),
                mark.source,
                mark.note,
                None if mark.position is None else json.dumps(mark.position),
            ),
        )

    def set_state(self, event_id: str, state: EventState, reason: str = "") -> None:
        with self.tx() as db:
            db.execute("UPDATE events SET state=?, reason=? WHERE id=?", (state, reason, event_id))
