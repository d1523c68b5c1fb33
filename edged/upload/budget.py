"""Limits kept on our side, before the server has to say no, persisted across restarts.

``RequestBudget``: requests per rolling minute per API key (Sonoran: 30, counted per key for
every client using it, refused requests too). Each device starts at its configured share of the
limit (``devices_sharing_key``), at a random phase, and paces its requests evenly. When the server
still answers 429 (other devices or clients share the key), the device is silent until
Retry-After and learns from what the server said (:func:`after_refusal`):

- **Whose doing it is.** After a whole window without a 429 at its rate (*clean*), a device that
  meets a 429 with the key offered twice its limit or more has met someone else's burst: it
  regains its rate in full. With the key just over its limit it is the fleet's own doing: it keeps
  ``BACKOFF`` of its rate; so it does when refused again within a window.
- **How far over the key is.** Retry-After is when the oldest of the key's last 30 requests leaves
  the server's window, so those 30 took ``span = window - Retry-After``: the key is offered about
  ``window / span`` times what it allows. At first contact (a 429 before any clean window, never
  refused before: a fleet starting together) a device keeps that fraction of its rate, with a
  margin (``FIRST_MARGIN``): one step to about its share.
- **Regained within minutes.** Whatever the level kept (``good``), the rate first drops to a
  quarter of what it was or less for a while (``TEMPORARY_CUT``; never under ``MAX_CUT`` of it from
  one 429 after a clean window), so the refusals in the server's window age out, then doubles every
  ``REGAIN_DOUBLING_S`` back to ``good``: a minute or two, not a slow linear climb.
- **The refused request took its turn.** The next goes a spacing (of the cut rate) after it, at a
  new random phase: retrying sooner would put refusals on top of the pace, and since they count
  in the key's window a fleet would keep it full of them.
- **Probing for more.** Above ``good``, a cubic probe (as TCP CUBIC): back at the rate of the last
  429 after ``PROBE_S``, slowly near it, faster beyond it, starting at a random delay.

What is learned is kept in the store (a restart does not pay the first contact again) and decays
by the same probe: the longer since the last 429, the higher the rate, back to the configured
share. The rate never goes below ``MIN_RATE`` (one request every five minutes). Figures, and the
limits of this with 50 devices on one key: ``scripts/bench_upload.py`` and the README.

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
from dataclasses import dataclass
from enum import IntEnum, StrEnum

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
#: Columns added to ``rate_state`` after the first release (an older file gains them at the next
#: open; its old learned rate, from a linear climb, is not carried over: ``set_ns`` 0 means none).
_ADDED = {
    "good": "REAL NOT NULL DEFAULT 0",  # the level regained fast after a 429
    "set_ns": "INTEGER NOT NULL DEFAULT 0",  # when the wait of the last 429 ended (0: never refused)
    "run_ns": "INTEGER NOT NULL DEFAULT 0",  # first request accepted since the last 429 (0: none yet)
    "probe_ns": "INTEGER NOT NULL DEFAULT 0",  # when the probe above ``good`` starts
    "peak": "REAL NOT NULL DEFAULT 0",  # the rate at the last 429
}

#: Our clock and the server's see a request a little apart (latency): count our window this much longer.
WINDOW_MARGIN_S = 1.0
#: The lowest rate ever learned, requests per window (one every 5 minutes).
MIN_RATE = 0.2
#: What a 429 takes off the rate a device had (multiplicative decrease): the level it regains.
BACKOFF = 0.85
#: One 429 never cuts the rate below this fraction of it for its while (the sane floor).
MAX_CUT = 0.25
#: Below the level to regain, the rate doubles this often (seconds).
REGAIN_DOUBLING_S = 20.0
#: Above it, the cubic probe is back at the rate of the last 429 after this long (seconds).
PROBE_S = 1800.0
#: The probe starts a random time up to this long after the level is regained (a fleet refused
#: together does not probe together).
PROBE_DELAY = 0.5
#: At first contact a device keeps this much of what got through in the window (its share of it).
FIRST_MARGIN = 0.9
#: At first contact a window filled within less than this is taken as filled within this.
MIN_SPAN_S = 3.0
#: After any 429 the rate drops at least this far for a while, before it regains ``good``.
TEMPORARY_CUT = 0.25
#: Each slot moves by up to this fraction of the spacing (devices do not stay in lock-step).
PACE_JITTER = 0.1
#: After a 429 the next turn moves by up to this fraction of the spacing (a new phase).
REPHASE = 0.5
#: Without Retry-After, a 429 is taken to mean the key is offered twice what it allows.
UNKNOWN_OVERLOAD = 2.0


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


@dataclass(frozen=True, slots=True)
class Learned:
    """What a key's budget has learned (one ``rate_state`` row). Rates are requests per window."""

    rate: float  # the rate right after the last 429 (its wait over)
    good: float  # the level regained fast (``REGAIN_DOUBLING_S``), then probed above (``PROBE_S``)
    set_ns: int  # when the last 429's wait ended; 0: never refused (the configured share holds)
    run_ns: int  # the first request accepted since then; 0: none yet
    probe_ns: int  # when probing above ``good`` starts (a random delay after regaining it)
    peak: float = 0.0  # the rate at the last 429


def learned_rate(s: Learned, now_ns: int, ceiling: float, window_s: float) -> float:
    """The rate now: the configured share until a 429; after one, ``rate`` doubling every
    ``REGAIN_DOUBLING_S`` up to ``good``, then the cubic probe above it, within [MIN_RATE, ceiling]."""
    floor = min(MIN_RATE, ceiling)
    if not s.set_ns:
        return ceiling
    t = (now_ns - s.set_ns) / 1e9
    if t < -2 * window_s:  # the clock was stepped back: what was learned is from the future
        t = math.inf
    rate, good = max(floor, s.rate), max(floor, s.rate, s.good)
    if t <= 0:
        return min(ceiling, rate)
    regain_s = REGAIN_DOUBLING_S * math.log2(good / rate)
    if t < regain_s:
        return min(ceiling, rate * 2 ** (t / REGAIN_DOUBLING_S))
    probe = (now_ns - s.probe_ns) / 1e9 if t != math.inf else math.inf
    if probe <= 0:
        return min(ceiling, good)
    if probe > 100 * PROBE_S:
        return ceiling
    # cubic (as TCP CUBIC): back to the peak in PROBE_S, slowly near it, faster beyond it
    step = max(s.peak - good, (1 - BACKOFF) * good)
    return min(ceiling, good + step * (1 + (probe / PROBE_S - 1) ** 3))


class Refusal(StrEnum):
    """What a 429 was taken to mean (``after_refusal``)."""

    BURST = "burst"  # someone else's burst after a clean window: wait it out, keep the rate
    FIRST_CONTACT = "first contact"  # a fleet meeting the limit together: take about its share
    OVERSHOOT = "overshoot"  # the key just over its limit, or refused again: the fleet's own doing


def after_refusal(
    s: Learned, now_ns: int, rate: float, retry_after_s: float | None, got: int, ceiling: float, window_s: float
) -> tuple[Refusal, float, float]:
    """What a 429 at ``rate`` means, the rate for a while and the level to regain (``good``), given
    Retry-After and ``got``, the device's own requests accepted in the last window (module docstring)."""
    floor = min(MIN_RATE, ceiling)
    if retry_after_s is None:
        factor = 1 / UNKNOWN_OVERLOAD
    else:  # the key's last ``limit`` requests took ``span``: it is offered window/span times its limit
        span = min(window_s, max(1.0, window_s - retry_after_s))
        factor = span / window_s
    clean = s.run_ns > 0 and now_ns - s.run_ns >= window_s * 1e9
    if clean and factor < 0.5:
        return Refusal.BURST, rate, rate
    if not clean and not s.set_ns:
        # what got through in the window is its share of it; what the span measured, for a device
        # that got nothing through
        good = max(floor, min(rate, max(got * FIRST_MARGIN, rate * max(factor, MIN_SPAN_S / window_s) / 2)))
        return Refusal.FIRST_CONTACT, good, good
    good = max(floor, rate * BACKOFF)
    # Below it for a while: the refused requests in the server's window must age out.
    return Refusal.OVERSHOOT, max(floor, min(good, rate * min(max(factor, MAX_CUT), TEMPORARY_CUT))), good


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
        self.ceiling = max(MIN_RATE, limit / share)
        self.window_s = window_s + WINDOW_MARGIN_S
        self.window_ns = int(self.window_s * 1e9)
        self.now_ns = now_ns
        self.rng = rng or random.Random()

    @property
    def key(self) -> str:
        return self._key()

    def _state(self, db, key: str, now_ns: int = 0) -> tuple[Learned, int, int]:
        row = db.execute(
            "SELECT rate, good, set_ns, run_ns, probe_ns, peak, blocked_until_ns, next_ns FROM rate_state WHERE key=?",
            (key,),
        ).fetchone()
        if row is None:  # a key never used here: its first slot at a random phase of the pace
            first = now_ns + int(self.rng.uniform(0, self.window_ns / self.ceiling)) if now_ns else 0
            db.execute(
                "INSERT INTO rate_state (key, rate, blocked_until_ns, next_ns) VALUES (?,?,0,?)",
                (key, self.ceiling, first),
            )
            return Learned(self.ceiling, 0.0, 0, 0, 0), 0, first
        return Learned(*row[:6]), row[6], row[7]

    def _rate(self, s: Learned, now_ns: int) -> float:
        return learned_rate(s, now_ns, self.ceiling, self.window_s)

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
            # Random phase for the next slot: devices sharing a key do not stay in lock-step.
            jitter = int(self.rng.uniform(-PACE_JITTER, PACE_JITTER) * spacing)
            db.execute("UPDATE rate_state SET next_ns=? WHERE key=?", (now_ns + spacing + jitter, key))
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
        claim for ``wait_s`` (Retry-After and its jitter, ``policy``), learn the new rate and the
        level to regain (module docstring), and start the next slot at a random phase of the
        regained pace (a fleet refused together does not come back together). Returns the new rate."""
        key = self.key
        with self.store.tx() as db:
            learned, _, _ = self._state(db, key)
            now_rate = self._rate(learned, now_ns)
            db.execute(
                "UPDATE rate_requests SET refused=1 WHERE rowid = (SELECT rowid FROM rate_requests"
                " WHERE key=? AND at_ns<=? ORDER BY at_ns DESC LIMIT 1)",
                (key, now_ns),
            )
            got = db.execute(
                "SELECT COUNT(*) FROM rate_requests WHERE key=? AND refused=0 AND at_ns>?",
                (key, now_ns - self.window_ns),
            ).fetchone()[0]
            meaning, rate, good = after_refusal(
                learned, now_ns, now_rate, retry_after_s, got, self.ceiling, self.window_s
            )
            until = now_ns + int(wait_s * 1e9)
            if meaning is Refusal.OVERSHOOT:
                # The refused request took its turn: the next one a spacing of the cut rate later, at a
                # new phase. Sooner would add refusals to the pace, and as they count in the key's
                # window a fleet would keep it full of them.
                turn = now_ns + int(self.window_ns / rate * (1 + self.rng.uniform(-REPHASE, REPHASE)))
            else:  # once the wait is over, at a random phase of the pace (a crowd does not return at once)
                turn = until + int(self.rng.uniform(0, self.window_ns / rate))
            regain_s = REGAIN_DOUBLING_S * math.log2(good / rate)
            probe = until + int((regain_s + self.rng.uniform(0, PROBE_DELAY * PROBE_S)) * 1e9)
            db.execute(
                "UPDATE rate_state SET rate=?, good=?, set_ns=?, run_ns=0, probe_ns=?, peak=?, blocked_until_ns=?,"
                " next_ns=? WHERE key=?",
                (
                    rate,
                    good,
                    until,
                    probe,
                    now_rate if meaning is not Refusal.FIRST_CONTACT else good,
                    until,
                    max(until, turn),
                    key,
                ),
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
