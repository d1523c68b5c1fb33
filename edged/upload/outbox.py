"""The outbox: a durable record per clip part and per upload target, until the target confirms it.

SQLite (WAL, synchronous=FULL) in the state folder. A part is enqueued once its file is verified
and durable, with one *delivery* row for each configured target. A delivery moves

    queued → sending → delivered
                     → deferred (until ``next_try_ns``, with the reason) → sending ...
                     → failed   (permanent, with the server's reason; the clip file is kept)

Every transition is one committed transaction, so ``kill -9`` or a power cut at any point leaves a
state the next start understands: a delivery found in ``sending`` was interrupted after the request
may have reached the server, so it goes back to ``queued`` and ``resends`` counts the possible
duplicate (delivery is at-least-once); so does a send whose request went out whole but whose
answer never came (``defer(..., resent=True)``). Marked clips go before recalls; within a priority the
oldest event first. The uploader (``edged.upload``) owns the policy; this module owns the rows.

No secret is stored: every reason, response and progress value goes through the scrubber that
guards the logs (``edged.core.journal.scrub``: registered keys and tokens, ``Bearer …``, presigned
signatures, ``key=`` values) on its way in, here, so no caller can forget it; and rows are
scrubbed again on their way out (a file written before this rule, or before a key was known).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from edged.core.db import Store
from edged.core.journal import scrub
from edged.core.states import DeliveryState

#: Lower sorts first: a panic's clip before everything, marks before recalls.
PRIORITY_PANIC = 0
PRIORITY_MARK = 10
PRIORITY_RECALL = 20

#: A delivery's states (``edged.core.states.DeliveryState``; the words stored in ``deliveries.state``).
STATES = tuple(DeliveryState)
#: States after which nothing more happens unless an operator asks for a retry.
SETTLED = (DeliveryState.DELIVERED, DeliveryState.FAILED)
#: States an operator's retry makes due again.
_RETRIABLE = (DeliveryState.FAILED, DeliveryState.DEFERRED, DeliveryState.QUEUED)
#: A part's state across its targets is the first of these any of its deliveries is in.
_LEAST_ADVANCED_FIRST = (
    DeliveryState.SENDING,
    DeliveryState.QUEUED,
    DeliveryState.DEFERRED,
    DeliveryState.FAILED,
    DeliveryState.DELIVERED,
)


def _sql(states: Sequence[str]) -> str:
    """States as an SQL list of literals: ``'delivered','failed'`` (the words are ours, never input)."""
    return ",".join(f"'{s}'" for s in states)


_SCHEMA = f"""
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
    created_ns    INTEGER NOT NULL,
    UNIQUE (clip_id, number)
);
CREATE TABLE IF NOT EXISTS deliveries (
    part_id      INTEGER NOT NULL REFERENCES parts(id),
    target       TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT '{DeliveryState.QUEUED}'
                 CHECK (state IN ({_sql(STATES)})),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try_ns  INTEGER NOT NULL DEFAULT 0,
    wait_net     INTEGER NOT NULL DEFAULT 0,
    reason       TEXT NOT NULL DEFAULT '',
    response     TEXT NOT NULL DEFAULT '',
    resends      INTEGER NOT NULL DEFAULT 0,
    updated_ns   INTEGER NOT NULL DEFAULT 0,
    delivered_ns INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (part_id, target)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(target, state, next_try_ns);
-- A multi-step target's progress on a clip (e.g. bota: recording id, media uploaded, completed),
-- one committed row per step, so a kill between steps resumes instead of starting over. Added
-- after the first release: IF NOT EXISTS is its migration (an older file gains it at the next open).
CREATE TABLE IF NOT EXISTS progress (
    clip_id    TEXT NOT NULL,
    target     TEXT NOT NULL,
    step       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (clip_id, target, step)
);
-- A target paused by the uploader (a refused key or account): kept across restarts, and read by
-- `edged outbox list` so a paused delivery is not shown as due. `fingerprint` is the key's, never it.
CREATE TABLE IF NOT EXISTS target_state (
    name            TEXT PRIMARY KEY,
    paused_reason   TEXT NOT NULL,
    paused_until_ns INTEGER NOT NULL,
    fingerprint     TEXT NOT NULL
);
"""


class OutboxPart(NamedTuple):
    id: int
    clip_id: str
    number: int
    path: str
    bytes: int
    duration_ms: int
    sha256: str
    priority: int
    event_wall_ns: int
    created_ns: int


class Delivery(NamedTuple):
    part: OutboxPart
    target: str
    state: DeliveryState
    attempts: int
    next_try_ns: int
    wait_net: bool
    reason: str
    response: str
    resends: int
    updated_ns: int
    delivered_ns: int

    def as_dict(self) -> dict:
        p = self.part
        return {
            "id": p.id,
            "clip_id": p.clip_id,
            "part": p.number,
            "target": self.target,
            "state": self.state,
            "attempts": self.attempts,
            "next_try_ns": self.next_try_ns or None,
            "reason": self.reason,
            "response": self.response,
            "resends": self.resends,
            "bytes": p.bytes,
            "duration_ms": p.duration_ms,
            "priority": p.priority,
            "path": p.path,
            "delivered_ns": self.delivered_ns or None,
        }


_PART_COLS = (
    "p.id, p.clip_id, p.number, p.path, p.bytes, p.duration_ms, p.sha256, p.priority, p.event_wall_ns, p.created_ns"
)
_DELIVERY_COLS = (
    "d.target, d.state, d.attempts, d.next_try_ns, d.wait_net, d.reason, d.response, d.resends, "
    "d.updated_ns, d.delivered_ns"
)
_ORDER = " ORDER BY p.priority, p.event_wall_ns, p.clip_id, p.number"


def _delivery(row: tuple) -> Delivery:
    part = OutboxPart(*row[:10])
    t, state, attempts, next_try, wait_net, reason, response, resends, updated, delivered = row[10:]
    return Delivery(
        part,
        t,
        DeliveryState(state),
        attempts,
        next_try,
        bool(wait_net),
        _clean(reason),
        _clean(response),
        resends,
        updated,
        delivered,
    )


def _clean(text: str) -> str:
    """What may be stored or shown: secrets replaced by ``***``."""
    return scrub(text) if text else text


def least_advanced(states: Sequence[str]) -> DeliveryState:
    """One word for several deliveries (a part's targets, a clip's parts): the least advanced one's."""
    present = set(states)
    for s in _LEAST_ADVANCED_FIRST:
        if s in present:
            return s
    return DeliveryState.QUEUED


class Outbox(Store):
    def __init__(
        self,
        path: Path,
        targets: Sequence[str] | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        read_only: bool = False,
    ) -> None:
        """``targets``: the configured upload targets (the daemon); None opens the rows as they are
        (the command line's listing), without adding deliveries. ``read_only``: never writes."""
        super().__init__(path, _SCHEMA, read_only=read_only)
        self.now_ns = now_ns
        self.targets: tuple[str, ...] = ()
        #: Called after parts are enqueued or made due again (the uploader wakes).
        self.on_change: Callable[[], None] | None = None
        if targets is not None:
            self.set_targets(targets)

    def _changed(self) -> None:
        if self.on_change:
            self.on_change()

    def set_targets(self, targets: Sequence[str]) -> None:
        """Every part not yet settled everywhere gets a delivery for each configured target (a target
        added by a new configuration also receives the backlog)."""
        self.targets = tuple(targets)
        with self.tx() as db:
            for t in self.targets:
                db.execute(
                    "INSERT OR IGNORE INTO deliveries (part_id, target, updated_ns) SELECT p.id, ?, ? FROM parts p"
                    " WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.part_id = p.id)"
                    " OR EXISTS (SELECT 1 FROM deliveries d WHERE d.part_id = p.id"
                    f"            AND d.state NOT IN ({_sql(SETTLED)}))",
                    (t, self.now_ns()),
                )
            marks = ",".join("?" * len(self.targets))
            db.execute(
                f"UPDATE deliveries SET state=?, reason='target removed from the configuration',"
                f" updated_ns=? WHERE state NOT IN ({_sql(SETTLED)}) AND target NOT IN ({marks})",
                (DeliveryState.FAILED, self.now_ns(), *self.targets),
            )

    def enqueue(
        self, clip_id: str, parts: list[tuple[int, Path, int, int, str]], priority: int, event_wall_ns: int
    ) -> None:
        """Queue every part of a clip, for every target, in one transaction: (number, path, bytes,
        duration_ms, sha256). Enqueuing the same clip again is a no-op (a restart may rebuild a clip)."""
        now = self.now_ns()
        with self.tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO parts (clip_id, number, path, bytes, duration_ms, sha256,"
                " priority, event_wall_ns, created_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                [(clip_id, n, str(p), b, d, h, priority, event_wall_ns, now) for n, p, b, d, h in parts],
            )
            for t in self.targets:
                db.execute(
                    "INSERT OR IGNORE INTO deliveries (part_id, target, updated_ns)"
                    " SELECT id, ?, ? FROM parts WHERE clip_id=?",
                    (t, now, clip_id),
                )
        self._changed()

    # --- the uploader's transitions ---------------------------------------------------------------

    def recover(self) -> int:
        """At start: deliveries left in 'sending' were cut off (crash, power cut) after the request may
        have reached the server. They go back to the queue; ``resends`` counts the possible duplicate."""
        with self.tx() as db:
            n = db.execute(
                "UPDATE deliveries SET state=?, resends=resends+1, reason=?, updated_ns=? WHERE state=?",
                (DeliveryState.QUEUED, "interrupted while sending; sent again", self.now_ns(), DeliveryState.SENDING),
            ).rowcount
        return n

    def next_due(self, target: str, now_ns: int | None = None) -> Delivery | None:
        """The delivery this target should send next: highest priority, oldest event first."""
        now = self.now_ns() if now_ns is None else now_ns
        rows = self.query(
            f"SELECT {_PART_COLS}, {_DELIVERY_COLS} FROM deliveries d JOIN parts p ON p.id=d.part_id"
            " WHERE d.target=? AND (d.state=? OR (d.state=? AND d.next_try_ns<=?))" + _ORDER + " LIMIT 1",
            (target, DeliveryState.QUEUED, DeliveryState.DEFERRED, now),
        )
        return _delivery(rows[0]) if rows else None

    def next_try_ns(self, target: str) -> int | None:
        """When the earliest deferred delivery of this target becomes due (None: nothing deferred)."""
        row = self.query(
            "SELECT MIN(next_try_ns) FROM deliveries WHERE target=? AND state=?", (target, DeliveryState.DEFERRED)
        )
        return row[0][0]

    def begin(self, d: Delivery) -> None:
        self._set(d, DeliveryState.SENDING, attempts=d.attempts + 1, reason="")

    def delivered(self, d: Delivery, response: str) -> None:
        self._set(d, DeliveryState.DELIVERED, response=response, reason="", delivered_ns=self.now_ns(), wait_net=0)

    def defer(self, d: Delivery, until_ns: int, reason: str, wait_net: bool = False, resent: bool = False) -> None:
        """Tried again at ``until_ns``. ``resent``: the request went out whole and its answer was
        lost (reset, timeout): the server may have it, so the next send is counted in ``resends``."""
        more = {"resends": d.resends + 1} if resent else {}
        self._set(d, DeliveryState.DEFERRED, next_try_ns=until_ns, reason=reason, wait_net=int(wait_net), **more)

    def fail(self, d: Delivery, reason: str) -> None:
        self._set(d, DeliveryState.FAILED, reason=reason, wait_net=0)

    def requeue(self, d: Delivery, reason: str) -> None:
        """A send we cut off ourselves (stop, the operator's retry) after the request may have reached
        the server: queued again, due now, and counted in ``resends`` like one cut off by a crash."""
        self._set(d, DeliveryState.QUEUED, next_try_ns=0, reason=reason, wait_net=0, resends=d.resends + 1)

    def _set(self, d: Delivery, state: DeliveryState, **cols: object) -> None:
        for text in ("reason", "response"):
            if isinstance(cols.get(text), str):
                cols[text] = _clean(cols[text])  # type: ignore[arg-type]
        cols = {"state": state, "updated_ns": self.now_ns(), **cols}
        with self.tx() as db:
            db.execute(
                f"UPDATE deliveries SET {', '.join(f'{k}=?' for k in cols)} WHERE part_id=? AND target=?",
                (*cols.values(), d.part.id, d.target),
            )

    def expedite(self, target: str, network_only: bool = True) -> int:
        """Make deferred deliveries due now (a link appeared: those waiting for the network)."""
        with self.tx() as db:
            n = db.execute(
                "UPDATE deliveries SET next_try_ns=0 WHERE target=? AND state=?"
                + (" AND wait_net=1" if network_only else ""),
                (target, DeliveryState.DEFERRED),
            ).rowcount
        if n:
            self._changed()
        return n

    def retry(self, ident: str) -> int:
        """Operator: send again every unsettled or failed delivery of a part id or a clip id, now."""
        where = "part_id=?" if ident.isdigit() else "part_id IN (SELECT id FROM parts WHERE clip_id=?)"
        arg: object = int(ident) if ident.isdigit() else ident
        with self.tx() as db:
            n = db.execute(
                "UPDATE deliveries SET state=?, next_try_ns=0, reason='retry requested', updated_ns=?"
                f" WHERE {where} AND state IN ({_sql(_RETRIABLE)})",
                (DeliveryState.QUEUED, self.now_ns(), arg),
            ).rowcount
        if n:
            self._changed()
        return n

    # --- a multi-step target's progress on a clip -------------------------------------------------

    def progress(self, clip_id: str, target: str) -> dict[str, str]:
        """Every step this target recorded for the clip: {step: value}."""
        return dict(self.query("SELECT step, value FROM progress WHERE clip_id=? AND target=?", (clip_id, target)))

    def record_progress(self, clip_id: str, target: str, step: str, value: str) -> None:
        """One step done (or its value changed), committed before the next step starts. The value is
        scrubbed: a secret in it (a presigned URL's signature) is stored as ``***``."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO progress (clip_id, target, step, value, updated_ns) VALUES (?,?,?,?,?)"
                " ON CONFLICT (clip_id, target, step) DO UPDATE SET value=excluded.value,"
                " updated_ns=excluded.updated_ns",
                (clip_id, target, step, _clean(value), self.now_ns()),
            )

    # --- reading ----------------------------------------------------------------------------------

    def get(self, part_id: int, target: str) -> Delivery:
        rows = self.query(
            f"SELECT {_PART_COLS}, {_DELIVERY_COLS} FROM deliveries d JOIN parts p ON p.id=d.part_id"
            " WHERE d.part_id=? AND d.target=?",
            (part_id, target),
        )
        return _delivery(rows[0])

    def deliveries(
        self, target: str | None = None, states: Iterable[str] | None = None, clip_id: str | None = None
    ) -> list[Delivery]:
        where, args = [], []
        if target is not None:
            where.append("d.target=?")
            args.append(target)
        if states is not None:
            states = list(states)
            where.append(f"d.state IN ({','.join('?' * len(states))})")
            args += states
        if clip_id is not None:
            where.append("p.clip_id=?")
            args.append(clip_id)
        sql = f"SELECT {_PART_COLS}, {_DELIVERY_COLS} FROM deliveries d JOIN parts p ON p.id=d.part_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_delivery(r) for r in self.query(sql + _ORDER + ", d.target", tuple(args))]

    def parts(self, clip_id: str | None = None) -> list[OutboxPart]:
        sql = f"SELECT {_PART_COLS} FROM parts p"
        args: tuple = ()
        if clip_id is not None:
            sql += " WHERE p.clip_id=?"
            args = (clip_id,)
        return [OutboxPart(*r) for r in self.query(sql + _ORDER, args)]

    def paused_targets(self) -> dict[str, tuple[str, int]]:
        """Targets the uploader paused: name → (reason, until when it tries again, ns). A file written
        before the table existed, opened read-only, has none."""
        if not self.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name='target_state'"):
            return {}
        return {
            name: (_clean(reason), until)
            for name, reason, until in self.query("SELECT name, paused_reason, paused_until_ns FROM target_state")
        }

    def part_state(self, part_id: int) -> DeliveryState:
        """One word for a part across its targets: the least advanced delivery's state."""
        return least_advanced([s for (s,) in self.query("SELECT state FROM deliveries WHERE part_id=?", (part_id,))])

    def clip_delivered(self, clip_id: str) -> bool:
        """Every part of the clip confirmed by every configured target it was queued for (a target
        since removed from the configuration no longer counts)."""
        sql = "SELECT COUNT(*), SUM(d.state=?) FROM deliveries d JOIN parts p ON p.id=d.part_id WHERE p.clip_id=?"
        args: tuple = (DeliveryState.DELIVERED, clip_id)
        if self.targets:
            sql += f" AND d.target IN ({','.join('?' * len(self.targets))})"
            args += self.targets
        row = self.query(sql, args)[0]
        return row[0] > 0 and row[0] == row[1]

    def counts(self) -> dict[str, int]:
        return dict(self.query("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))

    def resends(self) -> int:
        return self.query("SELECT COALESCE(SUM(resends), 0) FROM deliveries")[0][0]
