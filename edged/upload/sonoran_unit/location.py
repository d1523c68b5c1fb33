"""The unit's position in CAD, while it moves, never more often than the key's budget allows.

:class:`LocationPacer` decides (no I/O, so it is tested on its own): the first fix goes at once;
after that a fix goes when ``location_interval_seconds`` have passed since the last one sent *and*
the unit moved ``location_min_distance_m`` from it or goes at least ``location_min_speed_mps``.
No fix (``PositionSource.latest()`` is None) → nothing is sent, never a guess.

:class:`LocationWorker` asks the source and the pacer, then the budget as a
``budget.Claim.BACKGROUND`` (not while uploads, notes or a panic need the key's window), and
sends. A position is perishable: a failed one is not sent again, the next fix is, after the shared
back-off (``policy``), a 429's Retry-After, or the pause a refused key calls for.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edged.capture.position import Fix, PositionSource
from edged.core.timefmt import iso
from edged.upload.answers import Kind
from edged.upload.budget import Claim, RequestBudget
from edged.upload.policy import RetryPolicy
from edged.upload.sonoran_unit.api import UnitApi, valid_fix
from edged.upload.sonoran_unit.loop import Loop

log = logging.getLogger("edged.unit")

#: How often the source is asked while nothing is due (a fix appearing, the unit starting to move).
POLL_S = 2.0
#: Mean Earth radius (m), for the distance between two fixes.
EARTH_RADIUS_M = 6_371_008.8


def distance_m(a: Fix, b: Fix) -> float:
    """Great-circle distance (haversine): plenty for tens of metres to hundreds of kilometres."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass
class LocationPacer:
    interval_s: float
    min_distance_m: float
    min_speed_mps: float
    last_sent: Fix | None = None
    last_sent_mono: float = 0.0

    def wait_s(self, fix: Fix, now_mono: float) -> float:
        """0: send this fix now; otherwise how long before asking again."""
        if self.last_sent is None:
            return 0.0
        left = self.last_sent_mono + self.interval_s - now_mono
        if left > 0:
            return left
        if fix.wall_s == self.last_sent.wall_s:
            return min(POLL_S, self.interval_s)  # the same fix again: nothing new to say
        moving = distance_m(self.last_sent, fix) >= self.min_distance_m or (
            fix.speed_mps is not None and fix.speed_mps >= self.min_speed_mps
        )
        return 0.0 if moving else min(POLL_S, self.interval_s)

    def sent(self, fix: Fix, now_mono: float) -> None:
        self.last_sent, self.last_sent_mono = fix, now_mono


class LocationWorker(Loop):
    def __init__(
        self,
        api: UnitApi,
        source: PositionSource,
        pacer: LocationPacer,
        budget: RequestBudget,
        policy: RetryPolicy,
        stopping: threading.Event,
        auth_retry_s: float,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__("sonoran-location", stopping)
        self.api, self.source, self.pacer, self.budget, self.policy = api, source, pacer, budget, policy
        self.auth_retry_s, self.now_ns = auth_retry_s, now_ns
        self._hold_until_mono = 0.0
        self._failures = 0
        #: What the status shows.
        self.sent = 0
        self.asked = 0  # times the source was asked
        self.last_sent_ns = 0
        self.last_reason = ""
        self.fix = False

    def link_up(self) -> None:
        self._hold_until_mono = 0.0
        self.poke()

    def step(self) -> float:
        mono = time.monotonic()
        if mono < self._hold_until_mono:
            return self._hold_until_mono - mono
        fix = self.source.latest()
        self.asked += 1
        self.fix = fix is not None
        if fix is None:
            return min(POLL_S, self.pacer.interval_s)
        if not valid_fix(fix):
            self.last_reason = "the position source gave an invalid fix; not sent"
            return min(POLL_S, self.pacer.interval_s)
        wait = self.pacer.wait_s(fix, mono)
        if wait > 0:
            return wait
        now = self.now_ns()
        wait = self.budget.try_take(now, Claim.BACKGROUND)
        if wait > 0:
            return min(wait, self.pacer.interval_s)
        self.api.arm()
        if self.stopping.is_set():
            return 0.0
        v = self.api.update_location(fix)
        mono = time.monotonic()
        if v.kind is Kind.DELIVERED:
            self.budget.accepted()
            self.pacer.sent(fix, mono)
            self.sent, self.last_sent_ns, self.last_reason, self._failures = self.sent + 1, now, "", 0
            return 0.0
        if v.kind is Kind.CANCELLED:
            return 0.0
        if v.kind is Kind.RATE_LIMITED:
            hold = self.policy.retry_after_s(v.retry_after_s)
            self.budget.refused(now, hold, v.retry_after_s)
        elif v.kind is Kind.PAUSE:
            hold = self.auth_retry_s
        else:  # RETRY, FAILED: the next fix, after the back-off (at least an interval)
            self._failures += 1
            hold = max(self.pacer.interval_s, self.policy.backoff_s(self._failures))
        if v.reason != self.last_reason:
            log.error("unit location not sent: %s; next try after %s", v.reason, iso(now + int(hold * 1e9)))
        self.last_reason = v.reason
        self._hold_until_mono = mono + hold
        return hold
