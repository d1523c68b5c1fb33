"""What an upload's outcome means, in one place: every HTTP answer and transport error becomes a
``Verdict`` the uploader acts on. See ../shared/reference/NOTES.md: a 4xx is not always permanent.

Nothing a server sends is trusted. An answer is read by the targets only up to
:data:`MAX_ANSWER_BYTES` (``targets.read_answer``); here it counts as *delivered* only when it has
the shape the target's contract documents (:class:`Contract`: Sonoran's JSON list of URL strings,
Bota's JSON objects, storage's empty PUT answer). A 2xx of any other shape — an HTML page, invalid
JSON, JSON of the wrong shape, an answer cut off at the cap — is what a captive portal or a
proxy sends: the footage stays held and the delivery is tried again, with an alarm that says so.
A redirect is never followed. Every reason and response leaves this module scrubbed of secrets
(``edged.core.journal.scrub``): a server that echoes the API key cannot get it stored or shown.

The alarms an answer calls for are members of ``edged.core.states.Alarm`` (one definition for the
device); ``ALARM_*`` here are their short names.
"""

from __future__ import annotations

import email.utils
import json
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from edged.core.journal import scrub
from edged.core.states import Alarm

# The verdict and the upload's alarms live in ``verdict`` (no HTTP there), re-exported here, where
# the HTTP targets and the tests have always found them.
from edged.upload.verdict import ALARM_FAILED as ALARM_FAILED
from edged.upload.verdict import ALARM_FOLDER_REFUSED as ALARM_FOLDER_REFUSED
from edged.upload.verdict import ALARM_PAUSED as ALARM_PAUSED
from edged.upload.verdict import ALARM_PORTAL as ALARM_PORTAL
from edged.upload.verdict import ALARM_REDIRECTED as ALARM_REDIRECTED
from edged.upload.verdict import ALARM_STALLED as ALARM_STALLED
from edged.upload.verdict import ALARMS as ALARMS
from edged.upload.verdict import Kind as Kind
from edged.upload.verdict import Verdict as Verdict

#: The most of an answer's body ever read; the rest is discarded unread (the connection is closed).
MAX_ANSWER_BYTES = 64 * 1024

# --- exceptions: the httpx tree, so ``except httpx.HTTPError`` still catches every failure ----------


class RequestCancelled(httpx.TransportError):
    """The request was cut off on purpose (the daemon stops, the operator asked for a retry)."""


class DeadlineExceeded(httpx.TimeoutException):
    """The request ran past its overall deadline (a server dripping its answer, or holding it)."""


# --- the answer and the contracts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as read: at most :data:`MAX_ANSWER_BYTES` of its body (``truncated``: there
    was more, discarded unread). ``headers`` keys are lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    truncated: bool = False

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").strip().lower()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


#: ``check(document, answer)``: None when the answer is shaped as documented, else what is wrong.
Check = Callable[[Any, Answer], str | None]


@dataclass(frozen=True, slots=True)
class Contract:
    """What a successful answer of one endpoint looks like, per its reference document."""

    name: str
    #: For the reason: "a JSON list of URL strings".
    wanted: str
    check: Check
    #: The body is JSON (parsed before ``check``); False: ``check`` gets None and the raw answer.
    json: bool = True


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"https?://[^\s/?#]+\S*", value, re.I)) and len(value) <= 4096


def _url_list(doc: Any, _: Answer) -> str | None:
    if not isinstance(doc, list):
        return f"got {_shape(doc)}"
    if not doc:
        return "got an empty list"
    bad = [v for v in doc if not _is_url(v)]
    return f"got {len(bad)} item(s) that are not URLs" if bad else None


def _object_with(*names: str, urls: tuple[str, ...] = ()) -> Check:
    def check(doc: Any, _: Answer) -> str | None:
        if not isinstance(doc, dict):
            return f"got {_shape(doc)}"
        missing = [n for n in names if not isinstance(doc.get(n), str) or not doc[n].strip()]
        if missing:
            return f"no {', '.join(missing)}"
        bad = [n for n in urls if not _is_url(doc.get(n))]
        return f"{', '.join(bad)} not a URL" if bad else None

    return check


def _upload_url(doc: Any, a: Answer) -> str | None:
    problem = _object_with("media_id", "upload_url", urls=("upload_url",))(doc, a)
    if problem:
        return problem
    headers = doc.get("headers", {})
    if headers is None:
        headers = {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in headers.items()
    ):
        return "headers not an object of strings"
    if "expires_at" in doc and doc["expires_at"] is not None and not isinstance(doc["expires_at"], str):
        return "expires_at not a string"
    return None


def _any_object(doc: Any, _: Answer) -> str | None:
    return None if isinstance(doc, dict) else f"got {_shape(doc)}"


def _complete(doc: Any, a: Answer) -> str | None:
    if a.status == 204 and not a.body.strip():
        return None  # No Content: nothing to check
    return _any_object(doc, a)


def _storage_put(_: Any, a: Answer) -> str | None:
    if a.body.strip():
        return f"got a {len(a.body)}-byte body ({a.content_type or 'no content type'})"
    if not a.headers.get("etag"):
        return "no ETag"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _unit_update(doc: Any, a: Answer) -> str | None:
    problem = _any_object(doc, a)
    if problem:
        return problem
    if "updated" in doc and not _is_count(doc["updated"]):
        return "updated not a count"
    if "isPanic" in doc and not isinstance(doc["isPanic"], bool):
        return "isPanic not true or false"
    return None


def _current_call(doc: Any, a: Answer) -> str | None:
    problem = _any_object(doc, a)
    if problem:
        return problem
    for name in ("CallId", "IdentId"):
        value = doc.get(name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53):
            return f"{name} not a number"
    return None


#: Sonoran v2 and legacy (sonoran-v2-openapi.md, sonoran-legacy-bodycam-upload.md): 200, the URL list.
SONORAN_URLS = Contract("sonoran", "a JSON list of URL strings", _url_list)
#: Bota ``POST /v1/recordings``: the recording, with its ``id``.
BOTA_RECORDING = Contract("bota recording", "a JSON object with an id", _object_with("id"))
#: Bota ``POST /v1/recordings/{id}/upload-url`` (bota-recording-upload-url.txt).
BOTA_UPLOAD_URL = Contract("bota upload-url", "a JSON object with media_id, upload_url and headers", _upload_url)
#: Bota ``POST /v1/recordings/{id}/complete`` (path and answer undocumented: an object, or 204).
BOTA_COMPLETE = Contract("bota complete", "a JSON object", _complete)
#: Sonoran v2 ``PATCH .../units/panic`` and ``.../unit-locations``: an object, ``updated`` a count.
SONORAN_UNIT_UPDATE = Contract("sonoran unit update", "a JSON object with updated a count", _unit_update)
#: Sonoran v2 ``GET /v2/emergency/accounts/{accountUuid}/current-call``: ``{IdentId, CallId}``
#: (CallId null or absent: no current call).
SONORAN_CURRENT_CALL = Contract("sonoran current call", "a JSON object with CallId a number or null", _current_call)
#: Sonoran v2 ``POST .../dispatch-calls/{callId}/notes``: an object (``{callId, note}``).
SONORAN_CALL_NOTE = Contract("sonoran call note", "a JSON object", _any_object)
#: A presigned S3 ``PUT``: 200 with an ETag and no body (S3 PutObject).
STORAGE_PUT = Contract("storage", "an empty answer with an ETag", _storage_put, json=False)


def _shape(doc: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(doc), type(doc).__name__)


# --- reading bodies -----------------------------------------------------------------------------------

_MAX_REASON = 300
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_HTML = re.compile(rb"\s*(?:<!doctype\s+html|<html|<head|<body|<meta|<title|<script|<!--)", re.I)


def _printable(text: str, limit: int = _MAX_REASON) -> str:
    """One line for a reason: secrets scrubbed (before the cut, so no part of one is left),
    control characters out, whitespace collapsed, cut at ``limit``."""
    return " ".join(_CONTROL.sub(" ", scrub(text)).split())[:limit]


def _parse_json(body: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False, None


def looks_html(a: Answer) -> bool:
    """The answer is a web page: a body with an HTML content type, or one that starts like a page
    (an empty body is no page, whatever its type says: some servers label every answer text/html)."""
    if not a.body.strip():
        return False
    return "html" in a.content_type or bool(_HTML.match(a.body[:512]))


_S3_CODE = re.compile(r"<Code>([^<]{0,200})</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]{0,400})</Message>")


def message(status: int, content_type: str, text: str | bytes) -> str:
    """The human part of an error answer: problem+json's detail/title, S3's XML error as
    "Code: Message", or the plain text. One scrubbed line."""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    text = raw.decode("utf-8", "replace").strip()
    if "json" in content_type:
        ok, doc = _parse_json(raw)
        if ok and isinstance(doc, dict):
            parts = [str(doc[k]) for k in ("detail", "title", "message", "error") if doc.get(k)]
            if parts:
                return _printable(parts[0])
    code = _S3_CODE.search(text[:8192]) if "<Code>" in text[:8192] else None
    if code:
        msg = _S3_MESSAGE.search(text[:8192])
        return _printable(f"{code.group(1)}: {msg.group(1) if msg else ''}".rstrip(": "))
    return _printable(text) or f"HTTP {status}"


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 9:  # "²" is a digit to str.isdigit
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        return max(0.0, when.timestamp() - now_s)
    except (OverflowError, OSError, ValueError):
        return None


# --- classifying --------------------------------------------------------------------------------------

#: Messages that mean the configuration (not the clip) is wrong: pause the target, alarm.
_CONFIG_ERRORS = re.compile(
    r"not found in this community|invalid account id|invalid session id|"
    r"unable to validate bodycam upload session|provide exactly one of",
    re.I,
)
#: The plan's rolling allowance: "Bodycam uploads are limited to 10 minutes per 24 hours for the FREE plan."
_ALLOWANCE = re.compile(r"limited to \d+ minutes per 24 hours", re.I)
#: Stored the file but not its metadata: the recording is not registered; sending again is right.
_SERVER_SIDE = re.compile(r"failed to save recording metadata", re.I)
_PORTAL = "a captive portal or proxy answered"


def classify(a: Answer, contract: Contract, now_s: float) -> Verdict:
    """The verdict on one answer, judged against ``contract``; reasons and responses scrubbed."""
    v = _judge(a, contract, now_s)
    return _clean(v)


def classify_response(
    status: int,
    headers: httpx.Headers | Mapping[str, str],
    body: str | bytes,
    now_s: float,
    contract: Contract = SONORAN_URLS,
    truncated: bool = False,
) -> Verdict:
    """:func:`classify` for an answer given as its parts (``body`` as text or bytes)."""
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    return classify(
        Answer(status, lower, raw[:MAX_ANSWER_BYTES], truncated or len(raw) > MAX_ANSWER_BYTES), contract, now_s
    )


def _judge(a: Answer, contract: Contract, now_s: float) -> Verdict:
    status = a.status
    if 200 <= status < 300:
        return _success(a, contract)
    if 300 <= status < 400:
        where = _printable(a.headers.get("location", ""), 200) or "nowhere"
        return Verdict(
            Kind.RETRY,
            f"HTTP {status}: redirected to {where}, not followed ({_PORTAL}, or base_url "
            "is wrong: http:// for https://?)",
            status=status,
            alarm=Alarm.UPLOAD_REDIRECTED,
        )
    why = f"HTTP {status}: {message(status, a.content_type, a.body)}"
    retry_after = parse_retry_after(a.headers.get("retry-after"), now_s)
    if status == 429:
        return Verdict(Kind.RATE_LIMITED, why, retry_after_s=retry_after, status=status)
    if status == 511 or (400 <= status < 500 and looks_html(a)):
        # The API answers errors as problem+json or text; a web page is someone else's (RFC 6585 §6).
        return Verdict(
            Kind.RETRY,
            f"HTTP {status}: {_PORTAL} with a web page: {message(status, '', a.body)}",
            status=status,
            alarm=Alarm.UPLOAD_CAPTIVE_PORTAL,
        )
    text = a.text
    if _ALLOWANCE.search(text):
        return Verdict(Kind.ALLOWANCE, why, retry_after_s=retry_after, status=status)
    if status in (401, 403) or _CONFIG_ERRORS.search(text):
        return Verdict(Kind.PAUSE, why, status=status)
    if status >= 500 or status in (408, 425) or _SERVER_SIDE.search(text):
        return Verdict(Kind.RETRY, why, retry_after_s=retry_after, status=status)
    if 400 <= status < 500:
        return Verdict(Kind.FAILED, why, status=status)
    # 1xx and anything outside 100..599: nothing we asked for; trouble on the way, try again later.
    return Verdict(Kind.RETRY, why, status=status)


def _success(a: Answer, contract: Contract) -> Verdict:
    def not_delivered(what: str) -> Verdict:
        return Verdict(
            Kind.RETRY,
            f"HTTP {a.status} but not {contract.wanted}: {what} ({_PORTAL}?)",
            status=a.status,
            alarm=Alarm.UPLOAD_CAPTIVE_PORTAL,
        )

    if a.truncated:
        return not_delivered(f"an answer over {MAX_ANSWER_BYTES // 1024} KiB, cut off")
    if looks_html(a):
        return not_delivered(f"a web page ({a.content_type or 'HTML'}): {message(a.status, '', a.body)[:120]}")
    doc = None
    if contract.json:
        ok, doc = _parse_json(a.body)
        if not ok:
            return not_delivered(f"invalid JSON: {_printable(a.text, 120)!r}")
    problem = contract.check(doc, a)
    if problem:
        return not_delivered(f"{'JSON' if contract.json else 'an answer'} of the wrong shape, {problem}")
    urls = [u for u in doc if isinstance(u, str)] if isinstance(doc, list) else []
    return Verdict(
        Kind.DELIVERED,
        f"HTTP {a.status}",
        response=scrub(a.text.strip())[:4000],
        status=a.status,
        urls=urls,
        document=doc,
    )


def classify_error(exc: BaseException, body_sent: bool = False) -> Verdict:
    """A request that got no answer. Everything here is worth another try; ``offline`` says whether
    waiting for a link (rather than a timer) is the better wake-up. ``body_sent``: the request had
    gone out whole (``http.Call.answering``) when it failed: the verdict says the answer was lost
    (``answer_lost``), unless we cut it off ourselves (a cancel is counted where it is asked for)."""
    v = _clean(_judge_error(exc))
    if body_sent and v.kind is Kind.RETRY:
        return _replace(v, answer_lost=True, reason=f"{v.reason} (after the request was sent: answer lost)")
    return v


def _judge_error(exc: BaseException) -> Verdict:
    detail = _printable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, RequestCancelled):
        return Verdict(Kind.CANCELLED, f"cancelled: {exc}")
    if isinstance(exc, DeadlineExceeded):
        return Verdict(Kind.RETRY, f"the server answered too slowly: {exc}", alarm=Alarm.UPLOAD_STALLED)
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "SSL" in detail or "certificate" in detail:
            # A wrong clock makes every certificate look invalid: say so, it is the usual cause.
            return Verdict(Kind.RETRY, f"TLS error (is the clock right?): {detail}")
        return Verdict(Kind.RETRY, f"cannot connect: {detail}", offline=True)
    if isinstance(exc, httpx.ConnectTimeout):
        return Verdict(Kind.RETRY, f"cannot connect: {detail}", offline=True)
    if isinstance(exc, httpx.TimeoutException):
        return Verdict(Kind.RETRY, f"timed out: {detail}")
    return Verdict(Kind.RETRY, f"connection lost: {detail}")


def _clean(v: Verdict) -> Verdict:
    """Secrets out of what may be stored or shown, and a reason that is one short line."""
    reason = _printable(v.reason) or f"{v.kind.value} (no reason given)"
    response = scrub(v.response) if v.response else ""
    if reason == v.reason and response == v.response:
        return v
    return _replace(v, reason=reason, response=response)


def _replace(v: Verdict, **changes: Any) -> Verdict:
    import dataclasses

    return dataclasses.replace(v, **changes)
