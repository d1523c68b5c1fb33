"""Call linking: a clip delivered to Sonoran v2 is noted, with its URLs, on the unit's current call.

Once per clip, durable like a delivery (``store``: a row per clip, every transition committed):

1. every part of the clip delivered to ``sonoran_v2`` → a ``queued`` note (found from the committed
   deliveries, at start too: a kill between the last delivery and this loses nothing);
2. ``GET .../accounts/{accountUuid}/current-call``: no call (``CallId`` null or absent, or a 404)
   → ``no_call``, nothing sent; a call → its id kept with the note;
3. ``sending`` (committed), then ``POST .../dispatch-calls/{callId}/notes`` → ``noted``.

The note says which clip, when, which unit, and the URLs each part's upload answer gave (the
deliveries' responses). A clip older than ``call_note_max_age_minutes`` when it comes to be noted
(delivered late, after a long time offline) is not linked (``too_old``): the current call is then
most likely not the one it shows. Each request takes the key's budget as a
``budget.Claim.DELIVERY`` (paced, like an upload) and its answer is classified by ``answers``:
a 429 waits for its Retry-After, a 5xx or no answer backs off (``policy``), a refused key waits
``auth_retry_minutes``, any other 4xx gives the note up with the server's reason kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edged.core.states import CallNoteState
from edged.core.timefmt import iso
from edged.upload.answers import Kind, Verdict
from edged.upload.budget import Claim, RequestBudget
from edged.upload.policy import RetryPolicy
from edged.upload.sonoran_unit.api import MAX_NOTE_CHARS, UnitApi, positive_call_id
from edged.upload.sonoran_unit.loop import IDLE_WAIT_S, Loop
from edged.upload.sonoran_unit.store import CallNote, UnitStore

log = logging.getLogger("edged.unit")

#: The target whose deliveries are linked (the note's URLs are its answers').
TARGET = "sonoran_v2"


def note_text(clip_id: str, event_wall_ns: int, unit_number: str, parts: list[tuple[int, list[str]]]) -> str:
    """What the dispatcher reads on the call."""
    who = f" (unit {unit_number})" if unit_number else ""
    lines = [f"Bodycam clip {clip_id}{who}, recorded from {iso(event_wall_ns)}, {len(parts)} part(s):"]
    for number, urls in parts:
        lines.append(f"part {number}: " + (" ".join(urls) if urls else "(no URL in the upload's answer)"))
    text = "\n".join(lines)
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


class NoteWorker(Loop):
    #: the upload target whose deliveries get a note
    target = TARGET

    def __init__(
        self,
        api: UnitApi,
        store: UnitStore,
        budget: RequestBudget,
        policy: RetryPolicy,
        stopping: threading.Event,
        *,
        unit_number: str,
        max_age_s: float,
        auth_retry_s: float,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__("sonoran-notes", stopping)
        self.api, self.store, self.budget, self.policy = api, store, budget, policy
        self.unit_number, self.max_age_s, self.auth_retry_s = unit_number, max_age_s, auth_retry_s
        self.now_ns = now_ns
        self.since_ns = store.notes_since_ns(now_ns())
        self._look = True  # find newly delivered clips at the next step (and at start)

    def delivered(self) -> None:
        """A part was delivered to Sonoran v2: its clip may now be complete."""
        self._look = True
        self.poke()

    def link_up(self) -> None:
        if self.store.expedite_notes():
            self.poke()

    def step(self) -> float:
        now = self.now_ns()
        if self._look:
            self._look = False
            for clip_id in self.store.adopt_delivered(TARGET, self.since_ns, now):
                log.info("clip %s delivered to %s: its note on the current call is due", clip_id, TARGET)
        note = self.store.next_note(now)
        if note is None:
            nxt = self.store.next_note_try_ns()
            return IDLE_WAIT_S if nxt is None else max(0.01, (nxt - now) / 1e9)
        age_s = (now - note.event_wall_ns) / 1e9
        if age_s > self.max_age_s:
            why = f"recorded {age_s / 60:.0f} min before it came to be noted; the current call is not its call"
            self.store.set_note(note.clip_id, CallNoteState.TOO_OLD, now, reason=why)
            log.warning("clip %s not linked to a call: %s", note.clip_id, why)
            return 0.0
        wait = self.budget.try_take(now, Claim.DELIVERY)
        if wait > 0:
            return wait
        self.api.arm()
        if self.stopping.is_set():
            return 0.0
        if note.call_id is None:
            self._find_call(note)
        else:
            self._add_note(note, note.call_id)
        return 0.0

    def _find_call(self, note: CallNote) -> None:
        self.store.set_note(note.clip_id, note.state, self.now_ns(), attempts=note.attempts + 1)
        v = self.api.current_call()
        now = self.now_ns()
        if v.kind is Kind.DELIVERED:
            self.budget.accepted()
            call_id = positive_call_id(v.document)
            if call_id is None:
                self._no_call(note, f"{v.reason}: CallId {v.document.get('CallId')!r}")
            else:  # kept: a retry of the note goes to this call, not to a later one
                self.store.set_note(note.clip_id, CallNoteState.QUEUED, now, call_id=call_id, reason="")
        elif v.kind is Kind.FAILED and v.status == 404:
            self._no_call(note, v.reason)
        else:
            self._not_now(note, v, note.attempts + 1)

    def _no_call(self, note: CallNote, why: str) -> None:
        self.store.set_note(note.clip_id, CallNoteState.NO_CALL, self.now_ns(), reason=f"no current call ({why})")
        log.info("clip %s: the unit has no current call; no note sent (%s)", note.clip_id, why)

    def _add_note(self, note: CallNote, call_id: int) -> None:
        text = note_text(note.clip_id, note.event_wall_ns, self.unit_number, self.store.clip_urls(note.clip_id, TARGET))
        attempts = note.attempts + 1
        self.store.set_note(note.clip_id, CallNoteState.SENDING, self.now_ns(), attempts=attempts)
        v = self.api.add_note(call_id, text)
        now = self.now_ns()
        if v.kind is Kind.DELIVERED:
            self.budget.accepted()
            self.store.set_note(note.clip_id, CallNoteState.NOTED, now, noted_ns=now, reason=v.reason, wait_net=0)
            log.warning("clip %s noted on Sonoran call %d", note.clip_id, call_id)
        elif v.kind is Kind.CANCELLED:  # cut off by stop: may have reached the server
            self.store.set_note(note.clip_id, CallNoteState.QUEUED, now, reason=v.reason, resends=note.resends + 1)
        else:
            self._not_now(note, v, attempts)

    def _not_now(self, note: CallNote, v: Verdict, attempts: int) -> None:
        """Any verdict but a success: when to try again, or given up with the reason kept."""
        now = self.now_ns()
        if v.kind is Kind.CANCELLED:
            self.store.set_note(note.clip_id, CallNoteState.QUEUED, now, reason=v.reason)
            return
        if v.kind is Kind.FAILED:
            self.store.set_note(note.clip_id, CallNoteState.FAILED, now, reason=v.reason, wait_net=0)
            log.error("clip %s: call note given up: %s", note.clip_id, v.reason)
            return
        if v.kind is Kind.RATE_LIMITED:
            wait = self.policy.retry_after_s(v.retry_after_s)
            self.budget.refused(now, wait, v.retry_after_s)
        elif v.kind is Kind.PAUSE:
            wait = self.auth_retry_s
        else:
            wait = self.policy.backoff_s(max(1, attempts))
        until = now + int(wait * 1e9)
        self.store.set_note(
            note.clip_id, CallNoteState.DEFERRED, now, next_try_ns=until, reason=v.reason, wait_net=int(v.offline)
        )
        log.warning("clip %s: call note: %s; next try at %s", note.clip_id, v.reason, iso(until))
