"""Limits kept on our side, before the server has to say no, persisted across restarts.

``RequestBudget``: requests per rolling minute per API key (Sonoran: 30, counted per key for
every client using it). Each device starts at its configured share of the limit and paces its
requests evenly. When the server still answers 429 (other devices share the key), the device
waits for Retry-After and sets its rate to what it actually got through in the window that
filled up — its share of the key — or, when it was already about at its share, one less; then
it probes upwards slowly (a random step averaging one request per minute every
``PROBE_WINDOWS`` full windows, so devices drift apart), and a fleet settles near the limit with
few refusals (scripts/bench_upload.py).

``PlanAllowance``: uploaded minutes per rolling 24 h per community (free 10, standard 100, pro
1000). A part that would exceed the window waits until enough earlier uploads age out.

Every request on a key asks as a :class:`Claim`, so the unit operations share the key's window
with the uploads in order of urgency: a panic may use the whole window at once (one slot of it,
``reserve``, is never taken by anything else while the unit's panic is on), uploads and call notes
are paced and leave the reserve alone, and location updates only go while half of what is left is
free (they yield to uploads). The server's own "wait" (a 429's Retry-After) holds every claim.

Both live in the outbox's SQLite file (one store per device, ``synchronous=FULL``), keyed by a
fingerprint of the API key (never the key itself) or the legacy community id.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from enum import IntEnum

from edged.core import limits
from edged.core.db import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_requests (key TEXT NOT NULL, at_ns INTEGER NOT NULL,
                                          refused INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS rate_requests_key ON rate_requests(key, at_ns);
CREATE TABLE IF NOT EXISTS rate_state (key TEXT PRIMARY KEY, rate REAL NOT NULL, blocked_until_ns INTEGER NOT NULL,
                                       next_ns INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS allowance_used (key TEXT NOT NULL, at_ns INTEGER NOT NULL, duration_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS allowance_used_key ON allowance_used(key, at_ns);
"""

#: Our clock and the server's see a request a little apart (latency): count our window this much longer.
WINDOW_MARGIN_S = 1.0
#: Full windows of success between two one-request-per-minute increases of the rate.
PROBE_WINDOWS = 10


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


class RequestBudget:
    def __init__(
        self,
        store: Store,
        key: str,
        share: int = 1,
        limit: int = limits.REQUESTS_PER_MINUTE,
        window_s: float = limits.RATE_WINDOW_S,
        now_ns: Callable[[], int] | None = None,
        rng: random.Random | None = None,
        reserve: int = 0,
    ) -> None:
        """``reserve``: slots of the window only a :attr:`Claim.PANIC` may take (``PANIC_RESERVE``
        when the unit's panic is on); every instance on the same key must be given the same."""
        install(store)
        self.store, self.key, self.reserve = store, key, max(0, reserve)
        self.ceiling = max(1.0, limit / share)
        self.window_ns = int((window_s + WINDOW_MARGIN_S) * 1e9)
        self.rng = rng or random.Random()

    def _state(self, db) -> tuple[float, int, int]:
        row = db.execute("SELECT rate, blocked_until_ns, next_ns FROM rate_state WHERE key=?", (self.key,)).fetchone()
        if row is None:
            db.execute("INSERT INTO rate_state VALUES (?,?,0,0)", (self.key, self.ceiling))
            return self.ceiling, 0, 0
        return min(row[0], self.ceiling), row[1], row[2]

    def rate(self) -> float:
        with self.store.tx() as db:
            return self._state(db)[0]

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
        with self.store.tx() as db:
            rate, blocked, next_ns = self._state(db)
            db.execute("DELETE FROM rate_requests WHERE key=? AND at_ns<=?", (self.key, now_ns - self.window_ns))
            if blocked > now_ns:
                return (blocked - now_ns) / 1e9
            times = [
                t
                for (t,) in db.execute(
                    "SELECT at_ns FROM rate_requests WHERE key=? AND at_ns<=? ORDER BY at_ns", (self.key, now_ns)
                )
            ]
            cap = self._cap(max(1, math.floor(rate)), claim)
            if cap <= 0:  # no room for this claim at this rate: look again in a while
                return self.window_ns / 1e9 / 4
            waits = []
            if len(times) >= cap:  # its share of the window is full: wait for the oldest to age out
                waits.append(times[len(times) - cap] + self.window_ns - now_ns)
            # Paced: one request every window/rate. ``next_ns`` is when the next may go; a clock
            # stepped backwards (next far ahead) does not block for longer than one spacing.
            spacing = int(self.window_ns / rate)
            if claim is Claim.DELIVERY and now_ns < next_ns <= now_ns + 2 * spacing:
                waits.append(next_ns - now_ns)
            if waits:
                return max(waits) / 1e9
            db.execute("INSERT INTO rate_requests (key, at_ns) VALUES (?,?)", (self.key, now_ns))
            if claim is not Claim.DELIVERY:
                return 0.0
            # Random phase for the next slot: devices sharing a key do not stay in lock-step.
            jitter = int(self.rng.uniform(-0.25, 0.25) * spacing)
            db.execute("UPDATE rate_state SET next_ns=? WHERE key=?", (now_ns + spacing + jitter, self.key))
            return 0.0

    def accepted(self) -> None:
        """The server took a request: probe upwards slowly."""
        with self.store.tx() as db:
            rate, _, _ = self._state(db)
            # A random step (mean as stated above): devices sharing a key drift apart, so when the
            # key's window fills again one of them meets the 429, not all at once.
            rate = min(self.ceiling, rate + self.rng.uniform(0, 2) / (rate * PROBE_WINDOWS))
            db.execute("UPDATE rate_state SET rate=? WHERE key=?", (rate, self.key))

    def refused(self, now_ns: int, wait_s: float) -> float:
        """The server answered 429: take as our rate what got through in the window that filled up
        (our share of the key), at most half the old rate (just half when nothing got through);
        block until the server's window frees.
        Returns the new rate."""
        with self.store.tx() as db:
            rate, _, _ = self._state(db)
            db.execute(
                "UPDATE rate_requests SET refused=1 WHERE rowid = (SELECT rowid FROM rate_requests"
                " WHERE key=? AND at_ns<=? ORDER BY at_ns DESC LIMIT 1)",
                (self.key, now_ns),
            )
            got = db.execute(
                "SELECT COUNT(*) FROM rate_requests WHERE key=? AND refused=0 AND at_ns>?",
                (self.key, now_ns - self.window_ns),
            ).fetchone()[0]
            if not got:  # nothing got through: no measure of our share yet, so only halve
                rate = max(1.0, rate / 2)
            elif got < 0.75 * rate:  # far over our share: take what we really got
                rate = max(1.0, float(got))
            else:  # about at our share, a probe went one over: step back by one
                rate = max(1.0, rate - 1.0)
            db.execute(
                "UPDATE rate_state SET rate=?, blocked_until_ns=? WHERE key=?",
                (rate, now_ns + int(wait_s * 1e9), self.key),
            )
        return rate


class PlanAllowance:
    def __init__(self, store: Store, key: str, plan: str, window_s: float = limits.ALLOWANCE_WINDOW_S) -> None:
        install(store)
        self.store, self.key, self.plan = store, key, plan
        self.minutes = limits.PLAN_MINUTES[plan]
        self.window_ns = int(window_s * 1e9)

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
