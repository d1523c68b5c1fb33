"""What an upload's outcome means, in one place: every HTTP answer and transport error becomes a
``Verdict`` the uploader acts on. See ../shared/reference/NOTES.md: a 4xx is not always permanent.
"""

from __future__ import annotations

import email.utils
import enum
import json
import re
import ssl
from dataclasses import dataclass, field

import httpx


class Kind(enum.Enum):
    DELIVERED = "delivered"          # the server has the clip
    RATE_LIMITED = "rate_limited"    # 429: wait (Retry-After), slow down on this key
    ALLOWANCE = "allowance"          # the plan's rolling 24 h minutes are used up: wait for the window
    PAUSE = "pause"                  # the key or the account is refused: every clip would fail the same way
    FAILED = "failed"                # this clip is refused for good (type, size, duration, ...)
    RETRY = "retry"                  # server or network trouble: back off and try again


@dataclass(frozen=True, slots=True)
class Verdict:
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


#: Messages that mean the configuration (not the clip) is wrong: pause the target, alarm.
_CONFIG_ERRORS = re.compile(r"not found in this community|invalid account id|invalid session id|"
                            r"unable to validate bodycam upload session|provide exactly one of", re.I)
#: The plan's rolling allowance: "Bodycam uploads are limited to 10 minutes per 24 hours for the FREE plan."
_ALLOWANCE = re.compile(r"limited to \d+ minutes per 24 hours", re.I)
#: Stored the file but not its metadata: the recording is not registered; sending again is right.
_SERVER_SIDE = re.compile(r"failed to save recording metadata", re.I)

_MAX_REASON = 300


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_s)


def message(status: int, content_type: str, text: str) -> str:
    """The human part of an error answer: problem+json's detail/title, or the plain text."""
    text = text.strip()
    if "json" in content_type:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            parts = [str(doc[k]) for k in ("detail", "title", "message", "error") if doc.get(k)]
            if parts:
                return parts[0][:_MAX_REASON]
    return (text or f"HTTP {status}")[:_MAX_REASON]


def classify_response(status: int, headers: httpx.Headers | dict, text: str, now_s: float) -> Verdict:
    ctype = headers.get("content-type", "") or ""
    if 200 <= status < 300:
        urls: list[str] = []
        try:
            doc = json.loads(text)
            if isinstance(doc, list):
                urls = [u for u in doc if isinstance(u, str)]
        except ValueError:
            pass
        return Verdict(Kind.DELIVERED, f"HTTP {status}", response=text.strip()[:4000], status=status, urls=urls)
    why = f"HTTP {status}: {message(status, ctype, text)}"
    retry_after = parse_retry_after(headers.get("retry-after"), now_s)
    if status == 429:
        return Verdict(Kind.RATE_LIMITED, why, retry_after_s=retry_after, status=status)
    if _ALLOWANCE.search(text):
        return Verdict(Kind.ALLOWANCE, why, retry_after_s=retry_after, status=status)
    if status in (401, 403) or _CONFIG_ERRORS.search(text):
        return Verdict(Kind.PAUSE, why, status=status)
    if status >= 500 or status in (408, 425) or _SERVER_SIDE.search(text):
        return Verdict(Kind.RETRY, why, retry_after_s=retry_after, status=status)
    if 400 <= status < 500:
        return Verdict(Kind.FAILED, why, status=status)
    # 1xx/3xx: nothing we asked for; treat as trouble on the way and try again later.
    return Verdict(Kind.RETRY, why, status=status)


def classify_error(exc: BaseException) -> Verdict:
    """A request that got no answer. Everything here is worth another try; ``offline`` says whether
    waiting for a link (rather than a timer) is the better wake-up."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "SSL" in detail or "certificate" in detail:
            # A wrong clock makes every certificate look invalid: say so, it is the usual cause.
            return Verdict(Kind.RETRY, f"TLS error (is the clock right?): {detail}"[:_MAX_REASON])
        return Verdict(Kind.RETRY, f"cannot connect: {detail}"[:_MAX_REASON], offline=True)
    if isinstance(exc, httpx.ConnectTimeout):
        return Verdict(Kind.RETRY, f"cannot connect: {detail}"[:_MAX_REASON], offline=True)
    if isinstance(exc, httpx.TimeoutException):
        return Verdict(Kind.RETRY, f"timed out: {detail}"[:_MAX_REASON])
    return Verdict(Kind.RETRY, f"connection lost: {detail}"[:_MAX_REASON])
