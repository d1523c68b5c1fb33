"""The unit's panic: the wearer's gesture sets it in CAD, a later gesture clears it.

A gesture commits the wanted state first (``store.UnitStore.want_panic``: a new generation), then
pokes this worker, which sends only the latest wanted state: a panic raised and cleared before the
link came back reaches CAD as cleared (what the wearer wants now), and a restart sends whatever is
wanted and not yet acknowledged (setting a panic is idempotent). The request takes the key's budget
first (``budget.Claim.PANIC``: not paced, with a slot of the window kept for it) and is retried
per the shared ``policy.RetryPolicy`` until the server acknowledges it: its answer classified by
``answers`` like an upload's. A server that answers ``updated: 0`` changed no unit (the unit is not
signed on in CAD): that is no acknowledgement, and the request is tried again. A refusal for good
(the key refused, the body refused) is given up with its reason and raises ``PANIC_NOT_SENT``, shown
as a fault on the LED; the next gesture tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edged.core.states import Alarm
from edged.upload.answers import Kind, Verdict
from edged.upload.budget import Claim, RequestBudget
from edged.upload.policy import RetryPolicy
from edged.upload.sonoran_unit.api import UnitApi
from edged.upload.sonoran_unit.loop import IDLE_WAIT_S, Loop
from edged.upload.sonoran_unit.store import PanicRecord, UnitStore

log = logging.getLogger("edged.unit")


def word(on: bool) -> str:
    return "ON" if on else "OFF"


class PanicWorker(Loop):
    def __init__(
        self,
        api: UnitApi,
        store: UnitStore,
        budget: RequestBudget,
        policy: RetryPolicy,
        stopping: threading.Event,
        on_alarm: Callable[[str, bool], None],
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__("sonoran-panic", stopping)
        self.api, self.store, self.budget, self.policy = api, store, budget, policy
        self.on_alarm, self.now_ns = on_alarm, now_ns
        self._next_try_ns = 0
        self._failures = 0
        #: The generation being retried (a new gesture starts its own back-off).
        self._generation = -1
        #: Seconds from the gesture to the server's acknowledgement, of the last one.
        self.last_ack_s: float | None = None

    def gesture(self) -> None:
        """A new wanted state was committed: send it now, whatever the back-off of the last one."""
        self._next_try_ns = 0
        self.poke()

    def link_up(self) -> None:
        self._next_try_ns = 0
        self.poke()

    def step(self) -> float:
        record = self.store.panic()
        if record is None or not record.pending:
            return IDLE_WAIT_S
        if record.generation != self._generation:
            self._generation, self._failures = record.generation, 0
        now = self.now_ns()
        if now < self._next_try_ns:
            return (self._next_try_ns - now) / 1e9
        wait = self.budget.try_take(now, Claim.PANIC)
        if wait > 0:
            return wait
        self.store.panic_attempt(record.generation)
        self.api.arm()
        if self.stopping.is_set():
            return 0.0
        verdict = self.api.set_panic(record.wanted)
        self._apply(record, verdict)
        return 0.0

    def _apply(self, record: PanicRecord, v: Verdict) -> None:
        now = self.now_ns()
        state = word(record.wanted)
        updated = v.document.get("updated") if isinstance(v.document, dict) else None
        if v.kind is Kind.DELIVERED and updated == 0:
            v = Verdict(
                Kind.RETRY,
                f"{v.reason}, but the server updated no unit (is communityUserId "
                f"{self.api.community_user_id!r} signed on in CAD?)",
                status=v.status,
            )
        if v.kind is Kind.DELIVERED:
            self.budget.accepted()
            self.store.panic_acked(record.generation, record.wanted, now)
            self.last_ack_s = (now - record.wanted_ns) / 1e9
            self.on_alarm(Alarm.PANIC_NOT_SENT, False)
            log.warning("PANIC %s acknowledged by Sonoran CAD %.2f s after the gesture", state, self.last_ack_s)
            return
        if v.kind is Kind.CANCELLED:
            return  # stopping: the next start sends it
        if v.kind in (Kind.PAUSE, Kind.FAILED):
            self.store.panic_reason(record.generation, v.reason, given_up=True)
            self.on_alarm(Alarm.PANIC_NOT_SENT, True)
            log.critical("PANIC %s NOT SENT to Sonoran CAD, refused: %s (a new gesture tries again)", state, v.reason)
            return
        if v.kind is Kind.RATE_LIMITED:
            wait = self.policy.retry_after_s(v.retry_after_s)
            self.budget.refused(now, wait, v.retry_after_s)
        else:  # RETRY (and ALLOWANCE, which a panic's answer cannot mean): back off, and try again
            self._failures += 1
            wait = self.policy.backoff_s(self._failures)
        self._next_try_ns = now + int(wait * 1e9)
        self.store.panic_reason(record.generation, v.reason)
        log.error("PANIC %s not yet acknowledged: %s; trying again in %.1f s", state, v.reason, wait)
