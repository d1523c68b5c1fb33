"""What a send comes to: the :class:`Verdict` a target answers with and the uploader acts on, and
the upload's alarms.

Apart from ``answers`` (which judges HTTP answers and transport errors, and so imports httpx) so
that the uploader, the target interface and the directory target import no HTTP stack: a device
that delivers to a folder, or nowhere, never loads httpx (~11 MB resident, ~40 ms of start-up;
``tests/daemon/test_start_imports.py``). ``answers`` re-exports all of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from edged.core.states import Alarm

# --- alarms ----------------------------------------------------------------------------------------
# Every alarm of the device is a member of ``edged.core.states.Alarm``; these are the upload's, by the
# short names the tests and older callers use. The verdicts below carry the members themselves.

#: A target is paused: its key or account is refused (every clip would be refused the same way).
ALARM_PAUSED = Alarm.UPLOAD_PAUSED
#: A part was refused for good (it is kept, marked failed).
ALARM_FAILED = Alarm.UPLOAD_FAILED
#: A 2xx that is not the contract's answer (HTML, invalid JSON, wrong shape, too large), an HTML
#: error page or 511: a captive portal or a proxy answered instead of the server.
ALARM_PORTAL = Alarm.UPLOAD_CAPTIVE_PORTAL
#: Redirects (3xx) in a row: a captive portal, a proxy, or a wrong ``base_url``; never followed.
ALARM_REDIRECTED = Alarm.UPLOAD_REDIRECTED
#: A request ran past its overall deadline: the server dripped or held back its answer.
ALARM_STALLED = Alarm.UPLOAD_STALLED
#: A delivery folder (directory target) is a link or not a folder: nothing is written through it.
ALARM_FOLDER_REFUSED = Alarm.DELIVERY_FOLDER_REFUSED
#: Every alarm the uploader may raise.
ALARMS: tuple[Alarm, ...] = (
    Alarm.UPLOAD_PAUSED,
    Alarm.UPLOAD_FAILED,
    Alarm.UPLOAD_CAPTIVE_PORTAL,
    Alarm.UPLOAD_REDIRECTED,
    Alarm.UPLOAD_STALLED,
    Alarm.DELIVERY_FOLDER_REFUSED,
)


class Kind(enum.Enum):
    DELIVERED = "delivered"  # the server has the clip
    RATE_LIMITED = "rate_limited"  # 429: wait (Retry-After), slow down on this key
    ALLOWANCE = "allowance"  # the plan's rolling 24 h minutes are used up: wait for the window
    PAUSE = "pause"  # the key or the account is refused: every clip would fail the same way
    FAILED = "failed"  # this clip is refused for good (type, size, duration, ...)
    RETRY = "retry"  # server or network trouble: back off and try again
    CANCELLED = "cancelled"  # we cut the request off (stop, operator's retry): due again at once


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a delivery attempt's answer means."""

    kind: Kind
    reason: str
    #: Seconds the server asked us to wait (Retry-After), if it said.
    retry_after_s: float | None = None
    #: The answer body worth keeping with a delivered part (the Sonoran URL list, a path).
    response: str = ""
    #: The failure looks like no network at all (connect refused/unreachable, DNS): wait for a link.
    offline: bool = False
    status: int | None = None
    urls: list[str] = field(default_factory=list)
    #: The alarm this answer calls for (one of :data:`ALARMS`), if any.
    alarm: Alarm | None = None
    #: A delivered JSON answer, parsed (what a multi-step target reads its next step from).
    document: Any = None
    #: No answer came, but the request had gone out whole (its body sent, the answer being read
    #: when the connection was reset or timed out): the server may have it, a resend may duplicate it.
    answer_lost: bool = False
