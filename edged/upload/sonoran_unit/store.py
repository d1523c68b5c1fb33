"""What the unit operations keep across a restart or a power cut, in the outbox's SQLite file.

One store per device (``outbox.sqlite``, ``synchronous=FULL``), beside the deliveries whose
outcome the notes follow and the request budget they share:

- ``unit_panic``, one row: the panic the wearer wants (on/off, with a generation counted up at
  every gesture) and the last generation the server acknowledged. A restart finds a wanted state
  not yet acknowledged and sends it: setting a panic is idempotent, so sending it twice is safe.
- ``call_notes``, a row per clip: its note on the unit's current call, from ``queued`` to
  ``noted`` (or ``no_call``, ``too_old``, ``failed``) through ``sending``; the same transitions as
  a delivery (``outbox``), each one committed. A row found in ``sending`` at start was cut off after
  the note may have reached the server: it is sent again and ``resends`` counts it. Once ``noted``
  a clip is never noted again.
- ``unit_meta``: since when call notes are on (clips queued before that are never noted).

Reasons are scrubbed of secrets on their way in, as the outbox's are.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, NamedTuple

from edged.core.db import Store
from edged.core.journal import scrub
from edged.core.states import CallNoteState, DeliveryState

_NOTE_STATES = ",".join(f"'{s}'" for s in CallNoteState)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS unit_panic (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    wanted           INTEGER NOT NULL,
    generation       INTEGER NOT NULL,
    wanted_ns        INTEGER NOT NULL,
    acked            INTEGER NOT NULL DEFAULT 0,
    acked_generation INTEGER NOT NULL DEFAULT 0,
    acked_ns         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    given_up         INTEGER NOT NULL DEFAULT 0,
    reason           TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS call_notes (
    clip_id       TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ({_NOTE_STATES})),
    event_wall_ns INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_try_ns   INTEGER NOT NULL DEFAULT 0,
    wait_net      INTEGER NOT NULL DEFAULT 0,
    resends       INTEGER NOT NULL DEFAULT 0,
    call_id       INTEGER,
    reason        TEXT NOT NULL DEFAULT '',
    created_ns    INTEGER NOT NULL,
    updated_ns    INTEGER NOT NULL,
    noted_ns      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS call_notes_due ON call_notes(state, next_try_ns);
CREATE TABLE IF NOT EXISTS unit_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: A note's states after which nothing more happens.
NOTE_SETTLED = (CallNoteState.NOTED, CallNoteState.NO_CALL, CallNoteState.TOO_OLD, CallNoteState.FAILED)


class PanicRecord(NamedTuple):
    wanted: bool
    generation: int
    wanted_ns: int
    acked: bool
    acked_generation: int
    acked_ns: int
    attempts: int
    given_up: bool
    reason: str

    @property
    def pending(self) -> bool:
        """The wanted state is not yet acknowledged by the server (nor given up)."""
        return self.generation != self.acked_generation and not self.given_up


class CallNote(NamedTuple):
    clip_id: str
    state: CallNoteState
    event_wall_ns: int
    attempts: int
    next_try_ns: int
    wait_net: bool
    resends: int
    call_id: int | None
    reason: str
    created_ns: int
    updated_ns: int
    noted_ns: int

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


_NOTE_COLS = (
    "clip_id, state, event_wall_ns, attempts, next_try_ns, wait_net, resends, call_id, reason, created_ns,"
    " updated_ns, noted_ns"
)


def _note(row: tuple) -> CallNote:
    return CallNote(
        row[0], CallNoteState(row[1]), row[2], row[3], row[4], bool(row[5]), row[6], row[7], scrub(row[8]), *row[9:]
    )


class UnitStore:
    """The unit's rows in the outbox's store (its connection and lock, shared by the daemon's threads)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.tx() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)

    # --- panic ----------------------------------------------------------------------------------------

    def panic(self) -> PanicRecord | None:
        rows = self.store.query(
            "SELECT wanted, generation, wanted_ns, acked, acked_generation, acked_ns, attempts, given_up, reason"
            " FROM unit_panic WHERE id=1"
        )
        if not rows:
            return None
        r = rows[0]
        return PanicRecord(bool(r[0]), r[1], r[2], bool(r[3]), r[4], r[5], r[6], bool(r[7]), scrub(r[8]))

    def want_panic(self, on: bool | None, now_ns: int) -> PanicRecord:
        """The wearer's gesture: ``on`` (None: the opposite of what is wanted now), a new generation,
        committed before the request is made."""
        with self.store.tx() as db:
            row = db.execute("SELECT wanted, generation FROM unit_panic WHERE id=1").fetchone()
            wanted = (not bool(row[0]) if row else True) if on is None else on
            generation = (row[1] if row else 0) + 1
            db.execute(
                "INSERT INTO unit_panic (id, wanted, generation, wanted_ns) VALUES (1,?,?,?)"
                " ON CONFLICT (id) DO UPDATE SET wanted=excluded.wanted, generation=excluded.generation,"
                " wanted_ns=excluded.wanted_ns, attempts=0, given_up=0, reason=''",
                (int(wanted), generation, now_ns),
            )
        record = self.panic()
        assert record is not None
        return record

    def panic_attempt(self, generation: int) -> None:
        with self.store.tx() as db:
            db.execute("UPDATE unit_panic SET attempts=attempts+1 WHERE generation=?", (generation,))

    def panic_acked(self, generation: int, on: bool, now_ns: int) -> None:
        """The server set the unit's panic to ``on`` for this generation (what it now shows)."""
        with self.store.tx() as db:
            db.execute(
                "UPDATE unit_panic SET acked=?, acked_generation=?, acked_ns=?, reason='' WHERE generation=?",
                (int(on), generation, now_ns, generation),
            )

    def panic_reason(self, generation: int, reason: str, given_up: bool = False) -> None:
        with self.store.tx() as db:
            db.execute(
                "UPDATE unit_panic SET reason=?, given_up=? WHERE generation=?",
                (scrub(reason), int(given_up), generation),
            )

    # --- call notes -----------------------------------------------------------------------------------

    def notes_since_ns(self, now_ns: int) -> int:
        """Since when call notes are on: set the first time they are (clips queued before are never noted)."""
        with self.store.tx() as db:
            db.execute("INSERT OR IGNORE INTO unit_meta VALUES ('call_notes_since_ns', ?)", (now_ns,))
            return db.execute("SELECT value FROM unit_meta WHERE name='call_notes_since_ns'").fetchone()[0]

    def adopt_delivered(self, target: str, since_ns: int, now_ns: int) -> list[str]:
        """A note row (queued) for every clip queued since ``since_ns`` whose every part is delivered
        to ``target`` and that has none yet; the clips' ids. Derived from the committed deliveries,
        so a kill between a delivery and this leaves nothing behind: the next start finds the clip."""
        with self.store.tx() as db:
            clips = [
                (clip_id, wall)
                for clip_id, wall in db.execute(
                    "SELECT p.clip_id, MIN(p.event_wall_ns) FROM parts p JOIN deliveries d ON d.part_id=p.id"
                    " WHERE d.target=? AND p.created_ns>=?"
                    " AND NOT EXISTS (SELECT 1 FROM call_notes n WHERE n.clip_id=p.clip_id)"
                    " GROUP BY p.clip_id HAVING SUM(d.state!=?)=0",
                    (target, since_ns, DeliveryState.DELIVERED),
                )
            ]
            db.executemany(
                "INSERT OR IGNORE INTO call_notes (clip_id, state, event_wall_ns, created_ns, updated_ns)"
                " VALUES (?,?,?,?,?)",
                [(c, CallNoteState.QUEUED, wall, now_ns, now_ns) for c, wall in clips],
            )
        return [c for c, _ in clips]

    def recover_notes(self, now_ns: int) -> int:
        """At start: notes cut off in ``sending`` go back to the queue, counted as possible resends."""
        with self.store.tx() as db:
            return db.execute(
                "UPDATE call_notes SET state=?, resends=resends+1, reason=?, updated_ns=? WHERE state=?",
                (CallNoteState.QUEUED, "interrupted while sending; sent again", now_ns, CallNoteState.SENDING),
            ).rowcount

    def next_note(self, now_ns: int) -> CallNote | None:
        rows = self.store.query(
            f"SELECT {_NOTE_COLS} FROM call_notes WHERE state=? OR (state=? AND next_try_ns<=?)"
            " ORDER BY event_wall_ns, clip_id LIMIT 1",
            (CallNoteState.QUEUED, CallNoteState.DEFERRED, now_ns),
        )
        return _note(rows[0]) if rows else None

    def next_note_try_ns(self) -> int | None:
        return self.store.query("SELECT MIN(next_try_ns) FROM call_notes WHERE state=?", (CallNoteState.DEFERRED,))[0][
            0
        ]

    def set_note(self, clip_id: str, state: CallNoteState, now_ns: int, **cols: Any) -> None:
        if isinstance(cols.get("reason"), str):
            cols["reason"] = scrub(cols["reason"])
        cols = {"state": state, "updated_ns": now_ns, **cols}
        with self.store.tx() as db:
            db.execute(
                f"UPDATE call_notes SET {', '.join(f'{k}=?' for k in cols)} WHERE clip_id=?",
                (*cols.values(), clip_id),
            )

    def expedite_notes(self) -> int:
        """A link appeared: notes waiting for the network are due now."""
        with self.store.tx() as db:
            return db.execute(
                "UPDATE call_notes SET next_try_ns=0 WHERE state=? AND wait_net=1", (CallNoteState.DEFERRED,)
            ).rowcount

    def note_counts(self) -> dict[str, int]:
        return dict(self.store.query("SELECT state, COUNT(*) FROM call_notes GROUP BY state"))

    def clip_urls(self, clip_id: str, target: str) -> list[tuple[int, list[str]]]:
        """The URLs the target's answers gave for each part of the clip (kept as the deliveries'
        responses, scrubbed), in part order: [(part number, [url, ...]), ...]."""
        out = []
        for number, response in self.store.query(
            "SELECT p.number, d.response FROM deliveries d JOIN parts p ON p.id=d.part_id"
            " WHERE p.clip_id=? AND d.target=? ORDER BY p.number",
            (clip_id, target),
        ):
            try:
                doc = json.loads(response)
            except ValueError:
                doc = []
            urls = [u for u in doc if isinstance(u, str)] if isinstance(doc, list) else []
            out.append((number, urls))
        return out


def read_notes(store: Store, clip_id: str | None = None) -> list[CallNote]:
    """Every clip's note (or one clip's), from any store on the outbox file, read-only ones too
    (``edged outbox list``); none when the file has no notes table (notes never on)."""
    sql, args = f"SELECT {_NOTE_COLS} FROM call_notes", tuple[str, ...]()
    if clip_id is not None:
        sql, args = sql + " WHERE clip_id=?", (clip_id,)
    try:
        return [_note(r) for r in store.query(sql + " ORDER BY event_wall_ns, clip_id", args)]
    except sqlite3.OperationalError:
        return []
