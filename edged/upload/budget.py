"""Limits kept on our side, before the server has to say no, persisted across restarts.

``RequestBudget``: requests per rolling minute per API key (Sonoran: 30, counted per key for
every client using it, refused requests too). A device paces its requests evenly at its rate; a
lone device (``devices_sharing_key`` 1, the default) uses the whole limit. How devices sharing a
key find their rate (what a 429 means, how many devices are counted on the key) is the pure rules
of ``edged.upload.key_share``; this class keeps what they learned in the store (it survives
restarts), paces the requests by it, and holds every request through a 429's wait.

``PlanAllowance``: uploaded minutes per rolling 24 h per community (free 10, standard 100, pro
1000). A part that would exceed the window waits until enough earlier uploads age out. It is
keyed by the community or account (``Target.allowance_key``), never by the API key: the minutes
are the community's, whichever key uploads them, and a rotated key does not reset them.

Every request on a key asks as a :class:`Claim`, so the unit operations share the key's window
with the uploads in order of urgency: a panic may use the whole window at once (one slot of it,
``reserve``, is never taken by anything else while the unit's panic is on), uploads and call notes
are paced and leave the reserve alone, and location updates only go while half of what is left is
free (they yield to uploads). The server's own "wait" (a 429's Retry-After) holds every claim.

Both live in the outbox's SQLite file (one store per device, ``synchronous=FULL``). The request
budget is keyed by a fingerprint of the API key in use (never the key itself), asked for at every
use (a callable): a key rotated in its file counts under the new key at once.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from enum import IntEnum

from edged.core import limits
from edged.core.db import Store
from edged.upload.key_share import (
    MIN_RATE,
    WINDOW_MARGIN_S,
    Learned,
    Refusal,
    after_refusal,
    counted,
    ladder,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_requests (key TEXT NOT NULL, at_ns INTEGER NOT NULL,
                                          refused INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS rate_requests_key ON rate_requests(key, at_ns);
CREATE TABLE IF NOT EXISTS rate_state (key TEXT PRIMARY KEY, rate REAL NOT NULL, blocked_until_ns INTEGER NOT NULL,
                                       next_ns INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS allowance_used (key TEXT NOT NULL, at_ns INTEGER NOT NULL, duration_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS allowance_used_key ON allowance_used(key, at_ns);
"""
#: Columns added to ``rate_state`` after the first release (an older file gains them at the next
#: open; its old learned rate, from a linear climb, is not carried over: ``set_ns`` 0 means none).
_ADDED = {
    "set_ns": "INTEGER NOT NULL DEFAULT 0",  # when the wait of the last 429 ended (0: never refused)
    "run_ns": "INTEGER NOT NULL DEFAULT 0",  # first request accepted since the last 429 (0: none yet)
    "probe_ns": "INTEGER NOT NULL DEFAULT 0",  # when the probe above the learned rate starts
    "devices": "INTEGER NOT NULL DEFAULT 0",  # the devices counted on the key (0: never refused)
    "settled": "INTEGER NOT NULL DEFAULT 0",  # 1: the count has held through a clean window
    "event_ns": "INTEGER NOT NULL DEFAULT 0",  # until then 429s are one event with the one after a clean window
    "laddered": "INTEGER NOT NULL DEFAULT 0",  # 1: the count was stepped up while counting (evened out by AIMD)
}

#: Slots of a key's window kept for a panic while the unit's panic is on (uploads never take them).
PANIC_RESERVE = 1


class Claim(IntEnum):
    """Who asks for a request on a key (lower goes first)."""

    PANIC = 0  # the whole window, not paced: only the server's own wait (429) holds it back
    DELIVERY = 1  # uploads and call notes: paced at the rate, never into the panic's reserve
    BACKGROUND = 2  # location updates: not paced here (their own interval), at most half of what is left


def key_fingerprint(secret: str) -> str:
    return "key:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def install(store: Store) -> None:
    with store.tx() as db:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            db.execute(statement)
        have = {row[1] for row in db.execute("PRAGMA table_info(rate_state)")}
        for name, decl in _ADDED.items():
            if name not in have:
                db.execute(f"ALTER TABLE rate_state ADD COLUMN {name} {decl}")


class RequestBudget:
    def __init__(
        self,
        store: Store,
        key: str | Callable[[], str],
        share: int = 1,
        limit: int = limits.REQUESTS_PER_MINUTE,
        window_s: float = limits.RATE_WINDOW_S,
        now_ns: Callable[[], int] | None = None,
        rng: random.Random | None = None,
        reserve: int = 0,
    ) -> None:
        """``key``: the budget's identity (``key_fingerprint``), or what gives it at each use (the
        fingerprint of the key in use: a key changed in its file counts under the new one at once).
        ``reserve``: slots of the window only a :attr:`Claim.PANIC` may take (``PANIC_RESERVE``
        when the unit's panic is on); every instance on the same key must be given the same.
        ``now_ns``: the clock for :meth:`rate` (the others are given the time)."""
        install(store)
        self.store, self.reserve = store, max(0, reserve)
        self._key = key if callable(key) else (lambda: key)
        self.share, self.limit = max(1, share), limit
        self.ceiling = max(MIN_RATE, ladder(self.share, limit))
        self.window_s = window_s + WINDOW_MARGIN_S
        self.window_ns = int(self.window_s * 1e9)
        self.now_ns = now_ns
        self.rng = rng or random.Random()

    @property
    def key(self) -> str:
        return self._key()

    def _state(self, db, key: str, now_ns: int = 0) -> tuple[Learned, int, int]:
        row = db.execute(
            "SELECT devices, set_ns, run_ns, probe_ns, settled, event_ns, laddered, blocked_until_ns, next_ns"
            " FROM rate_state WHERE key=?",
            (key,),
        ).fetchone()
        if row is None:  # a key never used here: its first slot at a random phase of the pace
            first = now_ns + int(self.rng.uniform(0, self.window_ns / self.ceiling)) if now_ns else 0
            db.execute(
                "INSERT INTO rate_state (key, rate, blocked_until_ns, next_ns) VALUES (?,?,0,?)",
                (key, self.ceiling, first),
            )
            return Learned(0, 0, 0, 0), 0, first
        return Learned(*row[:7]), row[7], row[8]

    def _rate(self, s: Learned, now_ns: int) -> float:
        return max(min(MIN_RATE, self.ceiling), ladder(counted(s, now_ns, self.share, self.limit), self.limit))

    def rate(self, now_ns: int | None = None) -> float:
        """Requests per window now (what ``edged status`` shows)."""
        now = now_ns if now_ns is not None else (self.now_ns or time.time_ns)()
        with self.store.tx() as db:
            return self._rate(self._state(db, self.key, now)[0], now)

    def _cap(self, allowed: int, claim: Claim) -> int:
        """Requests of the window this claim may find already taken and still go."""
        if claim is Claim.PANIC:
            return allowed
        delivery = max(1, allowed - self.reserve)  # a rate of 1 after a 429 storm still delivers
        return delivery if claim is Claim.DELIVERY else (allowed - self.reserve) // 2

    def try_take(self, now_ns: int, claim: Claim = Claim.DELIVERY) -> float:
        """Reserve one request now and return 0, or return the seconds to wait before asking again.
        A reserved request is recorded at once (a crash after it still counts it). Only a
        :attr:`Claim.DELIVERY` is paced (and moves the pace); see the module docstring."""
        key = self.key
        with self.store.tx() as db:
            learned, blocked, next_ns = self._state(db, key, now_ns)
            rate = self._rate(learned, now_ns)
            db.execute("DELETE FROM rate_requests WHERE key=? AND at_ns<=?", (key, now_ns - self.window_ns))
            if blocked > now_ns:
                return (blocked - now_ns) / 1e9
            times = [
                t
                for (t,) in db.execute(
                    "SELECT at_ns FROM rate_requests WHERE key=? AND at_ns<=? ORDER BY at_ns", (key, now_ns)
                )
            ]
            cap = self._cap(max(1, math.ceil(rate - 1e-6)), claim)
            if cap <= 0:  # no room for this claim at this rate: look again in a while
                return self.window_ns / 1e9 / 4
            waits = []
            if len(times) >= cap:  # its share of the window is full: wait for the oldest to age out
                waits.append(times[len(times) - cap] + self.window_ns - now_ns)
            # Paced: one request every window/rate. ``next_ns`` is when the next may go; a clock
            # stepped backwards (next far ahead) does not block for longer than two spacings.
            spacing = int(self.window_ns / rate)
            if claim is Claim.DELIVERY and now_ns < next_ns <= now_ns + 2 * spacing:
                waits.append(next_ns - now_ns)
            if waits:
                return max(max(waits) / 1e9, 0.001)
            db.execute("INSERT INTO rate_requests (key, at_ns) VALUES (?,?)", (key, now_ns))
            if claim is not Claim.DELIVERY:
                return 0.0
            # The next slot keeps this device's phase (a spacing after the slot this one was due at,
            # if it went in time): phases that 429s have spread stay spread, however late the
            # request itself went. A device back from idle starts a new phase now.
            on_time = 0 < next_ns <= now_ns < next_ns + spacing // 2
            db.execute("UPDATE rate_state SET next_ns=? WHERE key=?", ((next_ns if on_time else now_ns) + spacing, key))
            return 0.0

    def accepted(self) -> None:
        """The server took a request: a clean run (no 429) starts at the first one after a 429."""
        key = self.key
        with self.store.tx() as db:
            self._state(db, key)
            db.execute(
                "UPDATE rate_state SET run_ns=(SELECT COALESCE(MAX(at_ns), 0) FROM rate_requests"
                " WHERE key=? AND refused=0) WHERE key=? AND run_ns=0",
                (key, key),
            )

    def refused(self, now_ns: int, wait_s: float, retry_after_s: float | None = None) -> float:
        """The server answered 429 (``retry_after_s``: its Retry-After, if it gave one): block every
        claim for ``wait_s`` (Retry-After and its jitter, ``policy``), learn how many devices share
        the key (module docstring) and move this device's turn. Returns the new rate."""
        key = self.key
        with self.store.tx() as db:
            learned, _, next_ns = self._state(db, key)
            devices = counted(learned, now_ns, self.share, self.limit)
            db.execute(
                "UPDATE rate_requests SET refused=1 WHERE rowid = (SELECT rowid FROM rate_requests"
                " WHERE key=? AND at_ns<=? ORDER BY at_ns DESC LIMIT 1)",
                (key, now_ns),
            )
            (own,) = db.execute(
                "SELECT COUNT(*) FROM rate_requests WHERE key=? AND at_ns>?", (key, now_ns - self.window_ns)
            ).fetchone()
            meaning, devices, settled, event_ns, laddered = after_refusal(
                learned, now_ns, devices, self.limit, retry_after_s, self.window_s - WINDOW_MARGIN_S, self.share, own
            )
            rate = max(min(MIN_RATE, self.ceiling), ladder(devices, self.limit))
            spacing = self.window_ns / rate
            until = now_ns + int(wait_s * 1e9)
            if meaning is Refusal.CROWDED and retry_after_s is not None:
                # The refused request took this turn; the next is a spacing after the moment the key's
                # window frees: the device's phase moves to the end of the crowd it met, where the
                # window has room (every pace being equal, it still has a period later).
                turn = now_ns + int(retry_after_s * 1e9 + spacing)
            elif meaning is Refusal.BURST and next_ns:
                # Someone else's: the pace and the phase are kept (the fleet's phases stay spread),
                # from its first slot after the wait.
                turn = next_ns + max(0, math.ceil((until - next_ns) / spacing)) * int(spacing)
            else:  # the pace changed: a random phase of it after the wait, so a crowd spreads
                turn = until + int(self.rng.uniform(0, spacing))
            db.execute(
                "UPDATE rate_state SET rate=?, devices=?, set_ns=?, run_ns=0, probe_ns=?, blocked_until_ns=?,"
                " next_ns=?, settled=?, event_ns=?, laddered=? WHERE key=?",
                (rate, devices, until, until, until, max(until, turn), int(settled), event_ns, int(laddered), key),
            )
        return rate


class PlanAllowance:
    def __init__(self, store: Store, key: str, plan: str, window_s: float = limits.ALLOWANCE_WINDOW_S) -> None:
        """``key``: the community's or account's identity (``Target.allowance_key``), not the API key's."""
        install(store)
        self.store, self.key, self.plan = store, key, plan
        self.minutes = limits.PLAN_MINUTES[plan]
        self.window_ns = int(window_s * 1e9)

    def adopt(self, old_key: str) -> int:
        """Count what was recorded under ``old_key`` as this allowance's (an older edged kept the
        minutes under the API key's fingerprint). Returns the uploads taken over."""
        if old_key == self.key:
            return 0
        with self.store.tx() as db:
            return db.execute("UPDATE allowance_used SET key=? WHERE key=?", (self.key, old_key)).rowcount

    def used_ms(self, now_ns: int) -> int:
        row = self.store.query(
            "SELECT COALESCE(SUM(duration_ms),0) FROM allowance_used WHERE key=? AND at_ns>?",
            (self.key, now_ns - self.window_ns),
        )
        return row[0][0]

    def wait_s(self, duration_ms: int, now_ns: int) -> float:
        """0 if a part of this length fits the rolling window now, else the seconds until it does."""
        cap = self.minutes * 60_000
        rows = self.store.query(
            "SELECT at_ns, duration_ms FROM allowance_used WHERE key=? AND at_ns>? ORDER BY at_ns",
            (self.key, now_ns - self.window_ns),
        )
        used = sum(d for _, d in rows)
        if used + duration_ms <= cap:
            return 0.0
        for at, d in rows:  # oldest first: when has enough aged out?
            used -= d
            if used + duration_ms <= cap:
                return max(0.0, (at + self.window_ns - now_ns) / 1e9)
        return self.window_ns / 1e9

    def record(self, duration_ms: int, now_ns: int) -> None:
        with self.store.tx() as db:
            db.execute("DELETE FROM allowance_used WHERE key=? AND at_ns<=?", (self.key, now_ns - self.window_ns))
            db.execute("INSERT INTO allowance_used VALUES (?,?,?)", (self.key, now_ns, duration_ms))
