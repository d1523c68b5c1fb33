"""A fleet sharing one API key, simulated on a virtual clock: each device a real ``RequestBudget``
(on its own in-memory SQLite store) driven the way ``uploader._Worker`` drives it, and a server
counting the key's requests the way the contract server does (30 per rolling 60 s, refused ones
too, Retry-After in whole seconds until a request would be let through).

It runs an hour of a 50-device fleet in seconds, with no threads and no sleeps, so the budget's
rules can be checked as a fleet (tests/unit/test_upload_fleet_share.py) and tried out before the
real benchmark (scripts/bench_upload.py, real uploaders over HTTP on a scaled clock). What is
simulated, and only that: the server's window, a request's latency (uniform in ``latency_s``),
the uploader's order of things (a due delivery asks the budget; a 429 defers the delivery by
``RetryPolicy.retry_after_s`` and tells the budget; a 200 calls ``accepted``).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from edged.core import limits
from edged.core.db import Store
from edged.upload.budget import RequestBudget, key_fingerprint
from edged.upload.policy import RetryPolicy

S = 10**9
T0 = 10**12  # the simulation's start, ns (any fixed time: the budget only sees differences)


#: Recovery after a burst: back at this share of the rate of the minute before, over this window (s).
RECOVERY_SHARE = 0.9
RECOVERY_WINDOW_S = 30.0


def recovery_s(
    accepted: list[float], burst_at: float, share: float = RECOVERY_SHARE, trailing_s: float = RECOVERY_WINDOW_S
) -> float | None:
    """Seconds from another client's burst until the fleet's requests accepted over the trailing
    ``trailing_s`` are back at ``share`` of what it delivered in the minute before the burst
    (None: never); the one measure of the simulator and scripts/bench_upload.py. At best about a
    window and a half: the burst's requests hold the key's window for a minute, then the trailing
    window must fill."""
    before = sum(1 for t in accepted if burst_at - limits.RATE_WINDOW_S <= t < burst_at)
    need = max(1.0, share * before * trailing_s / limits.RATE_WINDOW_S)
    after = [t for t in accepted if t >= burst_at]
    j = 0
    for k, t in enumerate(after):
        while after[j] < t - trailing_s:
            j += 1
        if k - j + 1 >= need:
            return t - burst_at
    return None


class KeyWindow:
    """The server's rule for one key (tests/contract/sonoran_server.py ``_rate``)."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def ask(self, now: float) -> float | None:
        """Count a request at ``now`` (s); None if let through, else the Retry-After (s)."""
        w = self.times
        while w and w[0] <= now - limits.RATE_WINDOW_S:
            w.popleft()
        w.append(now)
        if len(w) <= limits.REQUESTS_PER_MINUTE:
            return None
        free_at = w[len(w) - limits.REQUESTS_PER_MINUTE] + limits.RATE_WINDOW_S
        return float(max(1, math.ceil(free_at - now)))


@dataclass
class Device:
    budget: RequestBudget
    backlog: int
    due: float = 0.0  # when its next delivery is due (a 429 defers it)
    accepted: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)


@dataclass
class FleetRun:
    accepted: list[float]  # every device's accepted requests (s from the start), sorted
    refused_at: list[float]  # every device's refused requests (s from the start), sorted
    refused: int
    requests: int
    drain_s: float  # from the start to the last clip accepted
    ideal_s: float  # clips ÷ the key's limit
    burst_at: float | None
    per_device_rate: list[float]  # each device's learned rate at the end (requests per window)

    @property
    def refused_share(self) -> float:
        return self.refused / max(1, self.requests)

    def refused_share_after(self, start_s: float) -> float:
        """The share of the fleet's requests answered from ``start_s`` on that were refused."""
        refused = sum(1 for t in self.refused_at if t >= start_s)
        return refused / max(1, refused + sum(1 for t in self.accepted if t >= start_s))

    @property
    def drain_vs_ideal(self) -> float:
        return self.drain_s / self.ideal_s

    def recovery_s(self, share: float = RECOVERY_SHARE, trailing_s: float = RECOVERY_WINDOW_S) -> float | None:
        """Seconds from the burst until the fleet's accepted requests over ``trailing_s`` are back at
        ``share`` of its rate of the minute before it (as scripts/bench_upload.py measures it)."""
        return None if self.burst_at is None else recovery_s(self.accepted, self.burst_at, share, trailing_s)


def run_fleet(
    devices: int,
    clips: int,
    *,
    share: int = 1,
    seed: int = 1,
    burst: int = 0,
    burst_at_s: float | None = None,
    latency_s: tuple[float, float] = (0.02, 0.2),
    stores: list[Store] | None = None,
    start_spread_s: float = 0.0,
    limit_s: float = 6 * 3600.0,
) -> FleetRun:
    """``devices`` each with a backlog of ``clips`` on one key (``share``: devices_sharing_key),
    all started at the same time (or spread uniformly over ``start_spread_s``); another client
    sends ``burst`` requests at once at ``burst_at_s``. ``stores``: the devices' stores (kept from
    an earlier run: a restart); new in-memory ones if not given."""
    rng = random.Random(seed)
    key = key_fingerprint("fleet-key")
    stores = stores or [Store(Path(":memory:"), "") for _ in range(devices)]
    fleet = [
        Device(
            RequestBudget(stores[i], key, share=share, rng=random.Random(rng.random())),
            clips,
            due=rng.uniform(0, start_spread_s),
        )
        for i in range(devices)
    ]
    policy = RetryPolicy(rng=random.Random(rng.random()))
    server = KeyWindow()
    queue = [(d.due, i) for i, d in enumerate(fleet)]
    heapq.heapify(queue)
    requests = refused = 0
    last = 0.0
    burst_pending = burst > 0 and burst_at_s is not None
    while queue:
        now, i = heapq.heappop(queue)
        if now > limit_s:
            break
        if burst_pending and burst_at_s is not None and now >= burst_at_s:
            burst_pending = False
            for _ in range(burst):
                server.ask(burst_at_s)
        d = fleet[i]
        if d.backlog == 0:
            continue
        if now < d.due:
            heapq.heappush(queue, (d.due, i))
            continue
        wait = d.budget.try_take(T0 + int(now * S))
        if wait > 0:
            heapq.heappush(queue, (now + wait, i))
            continue
        answered = now + rng.uniform(*latency_s)
        retry_after = server.ask(now + (answered - now) / 2)
        requests += 1
        if retry_after is None:
            d.budget.accepted()
            d.accepted.append(answered)
            d.backlog -= 1
            last = max(last, answered)
        else:
            refused += 1
            d.refused.append(answered)
            hold = policy.retry_after_s(retry_after)
            d.budget.refused(T0 + int(answered * S), hold, retry_after)
            d.due = answered + hold
        heapq.heappush(queue, (answered, i))
    end = T0 + int(last * S)
    return FleetRun(
        accepted=sorted(t for d in fleet for t in d.accepted),
        refused_at=sorted(t for d in fleet for t in d.refused),
        refused=refused,
        requests=requests,
        drain_s=last,
        ideal_s=devices * clips / limits.REQUESTS_PER_MINUTE * limits.RATE_WINDOW_S,
        burst_at=burst_at_s if burst else None,
        per_device_rate=[d.budget.rate(end) for d in fleet],
    )
