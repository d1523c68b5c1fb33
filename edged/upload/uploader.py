"""The uploader: one worker per target takes the outbox's next due delivery and carries it out.

For each delivery, in this order: a target paused (refused key or account) or offline waits; the
part is checked locally (file intact, within the contract); the plan's allowance and the key's
request budget are consulted *before* the request; then the target sends a ``target.Parcel`` (the
part, or for a target whose scope is the whole clip every part of it, and the clip's progress),
and the ``Verdict`` decides the row's next state (``outbox``), the retry time (``policy``) and the
budgets (``budget``). Every target is driven this way; none is known here by name (the registry,
``targets``, builds them). Nothing here deletes a file: a refused clip is kept and marked failed.

Waiting never spins: a worker sleeps on its wake event until its next due time, and is woken by a
new part, an operator's retry, a link appearing (``edged.upload.network``) or stop.

Sending never outlives stop or an operator's retry either: both cancel the request in flight
(``Target.cancel``: its socket is shut down), which puts the delivery back in the queue, due at
once and counted as a possible resend. Answers that are not the server's (a captive portal's page,
redirects in a row, a dripped answer cut at its deadline) raise the alarm ``answers`` names for
them, until that target delivers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edged.core.journal import Msg, log_event, register_secret_file, scrub
from edged.core.priority import background_thread
from edged.core.states import Alarm
from edged.core.timefmt import iso
from edged.upload.budget import PlanAllowance, RequestBudget
from edged.upload.outbox import Delivery, Outbox
from edged.upload.policy import ALLOWANCE_RECHECK_S, PAUSE_POLL_S, RetryPolicy
from edged.upload.target import Parcel, Progress, Scope, Target, check_part
from edged.upload.verdict import ALARM_FAILED as ALARM_FAILED  # re-exported: tests import them from here
from edged.upload.verdict import ALARM_PAUSED as ALARM_PAUSED
from edged.upload.verdict import ALARMS, Kind, Verdict

log = logging.getLogger("edged.upload")

#: Longest sleep with nothing due (a safety net; wake-ups come from events).
IDLE_WAIT_S = 60.0
#: How long the reachability probe may take.
PROBE_TIMEOUT_S = 2.0

#: The alarms raised from answers, held per target while it does not deliver (``answers.ALARMS``
#: less the two the uploader raises itself: a paused target, a part refused for good).
_ANSWER_ALARMS = tuple(a for a in ALARMS if a not in (Alarm.UPLOAD_PAUSED, Alarm.UPLOAD_FAILED))
#: Verdicts calling for an alarm needed in a row before it is raised (default 1): one redirect may
#: be a load balancer's hiccup, repeated ones are not.
_ALARM_AFTER = {Alarm.UPLOAD_REDIRECTED: 2}


def _fields(d: Delivery, target: str) -> dict[str, Any]:
    """The journal fields naming a delivery: ``EDGED_CLIP_ID``, ``EDGED_PART``, ``EDGED_TARGET``."""
    return {"clip_id": d.part.clip_id, "part": d.part.number, "target": target, "part_id": d.part.id}


@dataclass
class _Pause:
    """A target paused: why, until when, and its fingerprint then (a change resumes it)."""

    reason: str
    until_ns: int
    fingerprint: str


class _Worker(threading.Thread):
    def __init__(self, up: Uploader, target: Target) -> None:
        super().__init__(name=f"upload-{target.name}", daemon=True)
        self.up, self.target, self.outbox = up, target, up.outbox
        self.wake = threading.Event()
        self.link_changed = threading.Event()
        self.budget = allowance = None
        key = target.budget_key
        if key:
            # The key in use at each request (a key changed in its file counts under the new one).
            self.budget = RequestBudget(
                self.outbox,
                lambda: target.budget_key or key,
                share=target.share,
                now_ns=up.now_ns,
                rng=up.policy.rng,
                reserve=target.reserve,
            )
            if target.plan:  # the community's minutes, whichever key uploads them
                allowance = PlanAllowance(self.outbox, target.allowance_key or key, target.plan)
                allowance.adopt(key)  # kept under the key's fingerprint by an older edged
        self.allowance = allowance
        self.pause: _Pause | None = self._load_pause()
        self.offline = False
        self._net_failures = 0
        self._net_retry_ns = 0
        self._allowance_until_ns = 0
        self.last_delivered_ns = 0
        #: The delivery being sent (the operator's retry of it cancels the request).
        self.current: Delivery | None = None
        #: Answer alarms this target holds (of ``answers.ALARMS``), and the run of the last one.
        self.alarms: set[Alarm] = set()
        self._alarm_run: tuple[Alarm | None, int] = (None, 0)

    # --- pause (refused key or account), persisted ----------------------------------------------

    def _load_pause(self) -> _Pause | None:
        rows = self.outbox.query(
            "SELECT paused_reason, paused_until_ns, fingerprint FROM target_state WHERE name=?", (self.target.name,)
        )
        return _Pause(scrub(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def _set_pause(self, pause: _Pause | None) -> None:
        if pause:  # stored in outbox.sqlite and shown in the status: never a secret in it
            pause = _Pause(scrub(pause.reason), pause.until_ns, pause.fingerprint)
        with self.outbox.tx() as db:
            db.execute("DELETE FROM target_state WHERE name=?", (self.target.name,))
            if pause:
                db.execute(
                    "INSERT INTO target_state VALUES (?,?,?,?)",
                    (self.target.name, pause.reason, pause.until_ns, pause.fingerprint),
                )
        self.pause = pause
        self.up.raise_alarm(Alarm.UPLOAD_PAUSED, any(w.pause for w in self.up.workers))

    def resume(self, why: str) -> None:
        if self.pause:
            log_event(
                log,
                Msg.UPLOAD_RESUMED,
                "upload target %s resumes: %s",
                self.target.name,
                why,
                level=logging.WARNING,
                target=self.target.name,
                reason=why,
            )
            self._set_pause(None)
        self.offline, self._net_retry_ns = False, 0
        self.wake.set()

    def _paused_wait_s(self, now: int) -> float | None:
        """Seconds to stay paused, or None when the pause is over."""
        if not self.pause:
            return None
        if self.target.fingerprint() != self.pause.fingerprint:
            self.resume("its configuration or credentials changed")
            return None
        if now < self.pause.until_ns:
            # Look again soon: a key corrected in its file resumes within PAUSE_POLL_S (a stat of
            # the key file, ``keyfile``; a new configuration builds a new uploader, which looks at once).
            return min(PAUSE_POLL_S * self.up.time_scale, (self.pause.until_ns - now) / 1e9)
        if now >= self.pause.until_ns:
            log.warning("upload target %s: trying again after its pause (%s)", self.target.name, self.pause.reason)
            self.pause.until_ns = now + int(self.up.policy.auth_retry_s * 1e9)  # one try; a refusal re-pauses
        return None

    # --- offline: wait for a link or the back-off timer, then probe -------------------------------

    def _offline_wait_s(self, now: int) -> float | None:
        if not self.offline:
            return None
        if not self.link_changed.is_set() and now < self._net_retry_ns:
            return (self._net_retry_ns - now) / 1e9
        self.link_changed.clear()
        from edged.upload.network import probe

        host, port = self.target.endpoint or ("", 0)
        if self.target.endpoint is None or probe(host, port, PROBE_TIMEOUT_S):
            log.info("upload target %s reachable again", self.target.name)
            self.offline, self._net_failures = False, 0
            self.outbox.expedite(self.target.name)
            return None
        self._net_failures += 1
        self._net_retry_ns = self.up.now_ns() + int(self.up.policy.backoff_s(self._net_failures) * 1e9)
        return max(0.05, (self._net_retry_ns - self.up.now_ns()) / 1e9)

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        background_thread(f"upload to {self.target.name}")  # an upload can wait; recording cannot
        while not self.up.stopping.is_set():
            try:
                wait = self.step()
            except Exception:
                log.exception("upload target %s: unexpected error", self.target.name)
                wait = 5.0
            if wait:
                self.wake.wait(wait / self.up.time_scale)
                self.wake.clear()

    def step(self) -> float:
        """Do one thing; return how long to sleep (0: go on at once)."""
        name = self.target.name
        now = self.up.now_ns()
        for gate in (self._paused_wait_s, self._offline_wait_s):
            w = gate(now)
            if w is not None:
                return w
        if now < self._allowance_until_ns:
            return (self._allowance_until_ns - now) / 1e9
        d = self.outbox.next_due(name, now)
        if d is None:
            nxt = self.outbox.next_try_ns(name)
            return IDLE_WAIT_S if nxt is None else min(IDLE_WAIT_S, max(0.01, (nxt - now) / 1e9))
        local = check_part(d.part, self.target.contract)
        if local is not None:
            self.apply(d, local, now)
            return 0.0
        if self.allowance:
            w = self.allowance.wait_s(d.part.duration_ms, now)
            if w > 0:
                self._allowance_until_ns = now + int(w * 1e9)
                self.outbox.defer(
                    d,
                    now + int(w * 1e9),
                    f"waiting for the {self.target.plan} plan's 24 h allowance "
                    f"(free again at {iso(now + int(w * 1e9))})",
                )
                log_event(
                    log,
                    Msg.UPLOAD_DEFERRED,
                    "upload target %s: 24 h allowance used up; next upload at %s",
                    name,
                    iso(now + int(w * 1e9)),
                    level=logging.WARNING,
                    **_fields(d, name),
                    reason="plan allowance used up",
                    next_try=iso(now + int(w * 1e9)),
                )
                return 0.0
        if self.budget:
            w = self.budget.try_take(now)
            if w > 0:
                return w
        return self._send(d)

    def _send(self, d: Delivery) -> float:
        self.current = d
        self.target.arm()  # then look at stopping: a stop's cancel is either seen here or in the send
        try:
            if self.up.stopping.is_set():
                return 0.0
            self.outbox.begin(d)
            t0 = time.monotonic()
            verdict = self.target.send(self._parcel(d))
        finally:
            self.current = None
        self.apply(self.outbox.get(d.part.id, self.target.name), verdict, self.up.now_ns(), time.monotonic() - t0)
        return 0.0

    def _parcel(self, d: Delivery) -> Parcel:
        """What the delivery's send carries: its part, or (``Scope.CLIP``) every part of its clip;
        and the target's progress on the clip, in this outbox."""
        part = d.part
        parts = (part,) if self.target.scope is Scope.PART else tuple(self.outbox.parts(part.clip_id))
        return Parcel(part, parts, Progress(self.outbox, part.clip_id, self.target.name))

    def cancel(self, why: str, ident: str | None = None) -> bool:
        """Cut off the send in progress (all of them, or the one of part id / clip id ``ident``)."""
        d = self.current
        if d is None or (ident is not None and ident not in (str(d.part.id), d.part.clip_id)):
            return False
        self.target.cancel(why)
        return True

    def _note_alarm(self, v: Verdict) -> None:
        """Answer alarms: raised after ``_ALARM_AFTER`` such verdicts in a row; cleared by a delivery."""
        if v.kind is Kind.DELIVERED:
            self._alarm_run = (None, 0)
            if self.alarms:
                cleared, self.alarms = self.alarms, set()
                for name in cleared:
                    self.up.update_alarm(name)
            return
        if v.kind is Kind.CANCELLED or v.alarm is None:
            return
        run = self._alarm_run[1] + 1 if self._alarm_run[0] == v.alarm else 1
        self._alarm_run = (v.alarm, run)
        if run >= _ALARM_AFTER.get(v.alarm, 1) and v.alarm not in self.alarms:
            self.alarms.add(v.alarm)
            self.up.update_alarm(v.alarm)
            log.error("upload target %s: alarm %s: %s", self.target.name, v.alarm, v.reason)

    def apply(self, d: Delivery, v: Verdict, now: int, took_s: float = 0.0) -> None:
        name, part = self.target.name, d.part
        what = f"{part.clip_id} part {part.number} → {name}"
        self._note_alarm(v)
        if v.kind is Kind.CANCELLED:
            # Cut off by us (stop, the operator's retry) after the request may have reached the server.
            self.outbox.requeue(d, v.reason)
            log_event(
                log,
                Msg.UPLOAD_DEFERRED,
                "upload %s: %s; sent again when due (attempt %d)",
                what,
                v.reason,
                d.attempts,
                level=logging.WARNING,
                **_fields(d, name),
                reason=v.reason,
                next_try=iso(now),
                attempts=d.attempts,
            )
        elif v.kind is Kind.DELIVERED:
            self.outbox.delivered(d, v.response)
            if self.budget:
                self.budget.accepted()
            if self.allowance:
                self.allowance.record(part.duration_ms, now)
            self.last_delivered_ns = now
            if self.pause:
                self.resume("the server accepted an upload")
            log_event(
                log,
                Msg.UPLOAD_DELIVERED,
                "UPLOADED %s: %d bytes, %d ms, in %.1f s (attempt %d)%s",
                what,
                part.bytes,
                part.duration_ms,
                took_s,
                d.attempts,
                f", resent {d.resends}x after interruptions" if d.resends else "",
                **_fields(d, name),
                bytes=part.bytes,
                duration_ms=part.duration_ms,
                attempts=d.attempts,
                resends=d.resends,
            )
            if self.up.on_part_delivered:
                self.up.on_part_delivered(name, part.clip_id)
            if self.outbox.clip_delivered(part.clip_id) and self.up.on_delivered:
                self.up.on_delivered(part.clip_id)
        elif v.kind is Kind.RATE_LIMITED:
            wait = self.up.policy.retry_after_s(v.retry_after_s)
            rate = self.budget.refused(now, wait, v.retry_after_s) if self.budget else 0
            self.outbox.defer(d, now + int(wait * 1e9), v.reason)
            log_event(
                log,
                Msg.UPLOAD_DEFERRED,
                "upload %s: rate limited (%s); waiting %.0f s, now %.1f requests/min",
                what,
                v.reason,
                wait,
                rate,
                level=logging.WARNING,
                **_fields(d, name),
                reason=v.reason,
                next_try=iso(now + int(wait * 1e9)),
                attempts=d.attempts,
            )
        elif v.kind is Kind.ALLOWANCE:
            w = self.allowance.wait_s(part.duration_ms, now) if self.allowance else 0.0
            w = w or ALLOWANCE_RECHECK_S  # the community's other devices used it: look again later
            self._allowance_until_ns = now + int(w * 1e9)
            self.outbox.defer(d, now + int(w * 1e9), v.reason)
            log_event(
                log,
                Msg.UPLOAD_DEFERRED,
                "upload %s: plan allowance used up (%s); next try at %s",
                what,
                v.reason,
                iso(now + int(w * 1e9)),
                level=logging.WARNING,
                **_fields(d, name),
                reason=v.reason,
                next_try=iso(now + int(w * 1e9)),
                attempts=d.attempts,
            )
        elif v.kind is Kind.PAUSE:
            self.outbox.defer(d, now, f"target paused: {v.reason}")
            self._set_pause(_Pause(v.reason, now + int(self.up.policy.auth_retry_s * 1e9), self.target.fingerprint()))
            log_event(
                log,
                Msg.UPLOAD_PAUSED,
                "upload target %s PAUSED: %s. Every clip would be refused the same way; "
                "clips wait. Fix the configuration (a change resumes at once) or run `edged outbox retry`.",
                name,
                v.reason,
                level=logging.CRITICAL,
                **_fields(d, name),
                reason=v.reason,
            )
        elif v.kind is Kind.FAILED:
            self.outbox.fail(d, v.reason)
            self.up.raise_alarm(Alarm.UPLOAD_FAILED, True)
            log_event(
                log,
                Msg.UPLOAD_FAILED,
                "upload %s FAILED for good: %s (clip kept: %s)",
                what,
                v.reason,
                part.path,
                level=logging.ERROR,
                **_fields(d, name),
                reason=v.reason,
                file=part.path,
                attempts=d.attempts,
            )
        else:
            wait = self.up.policy.backoff_s(max(1, d.attempts))
            # an answer lost after the request went out whole: the server may have it (a resend)
            self.outbox.defer(d, now + int(wait * 1e9), v.reason, wait_net=v.offline, resent=v.answer_lost)
            if v.offline and self.target.endpoint is not None:
                self.offline, self._net_failures = True, 1
                self._net_retry_ns = now + int(wait * 1e9)
            log_event(
                log,
                Msg.UPLOAD_DEFERRED,
                "upload %s: %s; next try in %.1f s (attempt %d)",
                what,
                v.reason,
                wait,
                d.attempts,
                level=logging.WARNING,
                **_fields(d, name),
                reason=v.reason,
                next_try=iso(now + int(wait * 1e9)),
                attempts=d.attempts,
                offline=int(bool(v.offline)),
                answer_lost=int(v.answer_lost),
            )


class Uploader:
    def __init__(
        self,
        outbox: Outbox,
        targets: list[Target],
        policy: RetryPolicy,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        on_delivered: Callable[[str], None] | None = None,
        on_alarm: Callable[[str, bool], None] | None = None,
        time_scale: float = 1.0,
        on_part_delivered: Callable[[str, str], None] | None = None,
    ) -> None:
        """``now_ns``: the wall clock the outbox, budgets and allowance use. ``time_scale``: tests and
        benchmarks run that clock faster than real time (waits shrink by the same factor).
        ``on_delivered(clip_id)``: a clip is delivered to every target; ``on_part_delivered(target,
        clip_id)``: one of its parts to one target (committed before the call)."""
        self.outbox, self.targets, self.policy, self.now_ns = outbox, targets, policy, now_ns
        self.time_scale = time_scale
        self.on_delivered, self.on_alarm = on_delivered, on_alarm
        self.on_part_delivered = on_part_delivered
        self.stopping = threading.Event()
        self.workers: list[_Worker] = []
        self.workers = [_Worker(self, t) for t in targets]
        for t in targets:  # a key read from a file at every use: never logged, even after rotation
            key_path = getattr(t, "key_path", None)
            if key_path:
                register_secret_file(key_path)
        self.interrupted = 0

    def start(self) -> None:
        self.interrupted = self.outbox.recover()
        if self.interrupted:
            log.warning(
                "%d upload(s) were cut off by a stop or power cut; sending them again "
                "(the server may receive them twice)",
                self.interrupted,
            )
        self.outbox.on_change = self.wake
        self.raise_alarm(Alarm.UPLOAD_PAUSED, any(w.pause for w in self.workers))
        for name in _ANSWER_ALARMS:  # an earlier uploader's (before a new configuration) no longer hold
            self.raise_alarm(name, False)
        for w in self.workers:
            w.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake()
        for w in self.workers:  # a send in progress ends now, not at its deadline
            w.cancel("the daemon is stopping")
        for w in self.workers:
            if w.is_alive():
                w.join(timeout)
        for t in self.targets:
            t.close()

    def wake(self) -> None:
        for w in self.workers:
            w.wake.set()

    def on_link_change(self, what: str = "") -> None:
        """A network interface appeared or changed: offline targets probe at once."""
        for w in self.workers:
            w.link_changed.set()
            w.wake.set()

    def retry(self, ident: str) -> int:
        """Operator: send a part (id) or a clip (id) again now, and lift any pause."""
        n = self.outbox.retry(ident)
        for w in self.workers:
            n += w.cancel("retry requested by the operator", ident)  # a stuck send of it starts over
            w.resume("retry requested by the operator")
        return n

    def raise_alarm(self, name: Alarm, active: bool) -> None:
        if self.on_alarm:
            self.on_alarm(name, active)

    def update_alarm(self, name: Alarm) -> None:
        """An answer alarm is active while any target holds it."""
        self.raise_alarm(name, any(name in w.alarms for w in self.workers))

    def status(self) -> dict:
        now = self.now_ns()
        out = {}
        for w in self.workers:
            t = w.target
            out[t.name] = {
                "paused": w.pause.reason if w.pause else None,
                "paused_until": iso(w.pause.until_ns) if w.pause else None,
                "offline": w.offline,
                "requests_per_min": round(w.budget.rate(), 2) if w.budget else None,
                "allowance_used_minutes": round(w.allowance.used_ms(now) / 60000, 2) if w.allowance else None,
                "last_delivered": iso(w.last_delivered_ns) if w.last_delivered_ns else None,
                "alarms": sorted(w.alarms),
            }
        return out
