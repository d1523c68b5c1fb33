"""Logging: systemd journal with structured fields, stderr without a journal, secrets scrubbed.

Every event a fleet operator searches for is logged through :func:`log_event` with a fixed
``MESSAGE_ID`` and ``EDGED_*`` fields; find them with, e.g.::

    journalctl -t edged MESSAGE_ID=a7758b3eb80f40d2b385fb8d77e2f70a      # clips built
    journalctl -t edged EDGED_CLIP_ID=<id> -o json                      # a clip's whole story

=================  ================================  ============================================
event              MESSAGE_ID                        fields (``EDGED_…``) and who logs it
=================  ================================  ============================================
RECORDING_STARTED  e7884386447342ac945d558a5f2d7569  SOURCE, AUDIO, STORAGE_DIR, FPS (recorder,
                                                     at the first frame)
RECORDING_STOPPED  8287fc16ac4244d9b229e540bde3380f  REASON, SEGMENTS, SALVAGED, FRAMES, DROPPED
SEGMENT_SALVAGED   fbb9ef0ab6cd42ef893501dc6a673fb4  SEGMENT, REASON, CAUSE, DURATION_MS
                                                     (recorder: write error; reconcile: crash)
STORAGE_ALARM      83d34d921a5645ea80632a17a90dcc22  ALARM (storage_over_budget, storage_full,
                                                     storage_error, disk_full_at_start),
                                                     STATE (raised/cleared), STORAGE_DIR, REASON
MARK               384e080c244f4063a4265356494da8c9  EVENT_ID, CLIP_ID, SOURCE, NOTE, EXTENDED
CLIP_BUILT         a7758b3eb80f40d2b385fb8d77e2f70a  CLIP_ID, EVENT_ID, PARTS, DURATION_MS, BYTES,
                                                     REENCODED
CLIP_FAILED        ee1ac69955c5404a9ed4909da8fff0e2  CLIP_ID, EVENT_ID, REASON
UPLOAD_DELIVERED   c86e321f264842789fca95965b7e3837  CLIP_ID, PART, PART_ID, TARGET, ATTEMPTS,
                                                     RESENDS, BYTES, DURATION_MS
UPLOAD_DEFERRED    a25d9db4de5545ad8758e15b34073e78  CLIP_ID, PART, PART_ID, TARGET, REASON,
                                                     NEXT_TRY, ATTEMPTS, OFFLINE
UPLOAD_FAILED      14c1033b35494a5ba803a8a61351ab8c  CLIP_ID, PART, PART_ID, TARGET, REASON, FILE
UPLOAD_PAUSED      a43e97405681458bb801bf62f1cf25c9  TARGET, REASON (key or account refused),
                                                     CLIP_ID, PART
UPLOAD_RESUMED     1e51f80f9dab4fe28162a8966ffd533c  TARGET, REASON
CONFIG_APPLIED     f6bbbb768fb24144b1bb8b9671b6b688  CONFIG, KEY
CONFIG_REJECTED    80c8fd56f2984177a15bcb498857b5ec  CONFIG, KEY, REASON
WATCHDOG           b4eca48812964b808b7df3d848e0bff1  STALL (camera/disk), SECONDS, SOURCE
CAMERA_LOST        195f5972c9e54bbfa9c3b8734e58fff2  SOURCE, REASON, ALARM
CAMERA_RESTORED    dee849102f9c47d287511d0f2df0adf4  SOURCE, ALARM (camera_lost/camera_stalled)
RECALL_COMPLETED   fd595d2eb10249a3b1fc2a3dea768962  CLIP_ID, EVENT_ID
RECALL_FAILED      ca3d32fe9720492e9c4af125c48be7d0  REASON
=================  ================================  ============================================

Every entry also has ``SYSLOG_IDENTIFIER=edged``, ``PRIORITY`` (from the level), ``LOGGER``,
``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` (the caller of :func:`log_event`) and ``THREAD_NAME``.

``systemd/edged.catalog`` explains each one (``journalctl -x``) once it is installed in
``/usr/lib/systemd/catalog/`` and ``journalctl --update-catalog`` has run.

Secrets: :func:`register_secret` (and :func:`register_secret_file`, for a key read from a file
at every use) add values that never reach a log; the filter installed on every handler also
blanks ``Bearer <token>``, presigned-URL signatures (``X-Amz-Signature=``…), ``api_key=`` /
``key=`` / ``token=`` query values and ``"key": "…"`` style JSON / dict entries, in the
message, its arguments, the exception text and every upper-case (journal) field.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import socket
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from edged.core.files import read_bounded

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "edged"
MASK = "***"


class Msg(enum.Enum):
    """One fixed journal ``MESSAGE_ID`` (128 bits, lower-case hex) per kind of event."""

    RECORDING_STARTED = "e7884386447342ac945d558a5f2d7569"
    RECORDING_STOPPED = "8287fc16ac4244d9b229e540bde3380f"
    SEGMENT_SALVAGED = "fbb9ef0ab6cd42ef893501dc6a673fb4"
    STORAGE_ALARM = "83d34d921a5645ea80632a17a90dcc22"
    MARK = "384e080c244f4063a4265356494da8c9"
    CLIP_BUILT = "a7758b3eb80f40d2b385fb8d77e2f70a"
    CLIP_FAILED = "ee1ac69955c5404a9ed4909da8fff0e2"
    UPLOAD_DELIVERED = "c86e321f264842789fca95965b7e3837"
    UPLOAD_DEFERRED = "a25d9db4de5545ad8758e15b34073e78"
    UPLOAD_FAILED = "14c1033b35494a5ba803a8a61351ab8c"
    UPLOAD_PAUSED = "a43e97405681458bb801bf62f1cf25c9"
    UPLOAD_RESUMED = "1e51f80f9dab4fe28162a8966ffd533c"
    CONFIG_APPLIED = "f6bbbb768fb24144b1bb8b9671b6b688"
    CONFIG_REJECTED = "80c8fd56f2984177a15bcb498857b5ec"
    WATCHDOG = "b4eca48812964b808b7df3d848e0bff1"
    CAMERA_LOST = "195f5972c9e54bbfa9c3b8734e58fff2"
    CAMERA_RESTORED = "dee849102f9c47d287511d0f2df0adf4"
    RECALL_COMPLETED = "fd595d2eb10249a3b1fc2a3dea768962"
    RECALL_FAILED = "ca3d32fe9720492e9c4af125c48be7d0"


_FIELD_KEY = re.compile(r"[a-z][a-z0-9_]{0,56}")  # EDGED_ + this stays within 64 chars
_JOURNAL_FIELD = re.compile(r"[A-Z][A-Z0-9_]{0,63}")  # what journald accepts from a client
_DROPPED = frozenset({"CODE_ARGS", "EXCEPTION_INFO"})  # raw args / exc_info reprs: never sent


def field_name(key: str) -> str:
    """``clip_id`` → ``EDGED_CLIP_ID``; a key that cannot be a journal field is a ValueError."""
    if not isinstance(key, str) or not _FIELD_KEY.fullmatch(key):
        raise ValueError(
            f"log field {key!r}: must be lower-case letters, digits and _, "
            "starting with a letter, at most 57 characters"
        )
    return "EDGED_" + key.upper()


def log_event(
    logger: logging.Logger,
    msg: Msg,
    text: str,
    *args: Any,
    level: int = logging.INFO,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log ``text % args`` as event ``msg``; each keyword becomes an ``EDGED_<KEY>`` field.

    Values are stringified; a ``None`` value is left out. ``exc_info`` works as in logging.
    """
    if not isinstance(msg, Msg):
        raise TypeError(f"log_event: msg must be an edged.core.journal.Msg, not {msg!r}")
    extra: dict[str, str] = {"MESSAGE_ID": msg.value}
    for key, value in fields.items():
        name = field_name(key)
        if value is not None:
            extra[name] = value if isinstance(value, str) else str(value)
    logger.log(level, text, *args, exc_info=exc_info, extra=extra, stacklevel=2)


# --- secrets -------------------------------------------------------------------------------

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_files: dict[Path, tuple[int, int, int] | None] = {}  # path → what was last read
_MIN_SECRET = 4

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: Bearer <token> / Basic <creds>
    (re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9\-._~+/]+=*", re.I), r"\1\2" + MASK),
    # presigned URLs (S3, GCS): signature, credential, session token
    (re.compile(r"\b((?:X-Amz|X-Goog)-(?:Signature|Credential|Security-Token)=)[^&\s\"'<>]+", re.I), r"\1" + MASK),
    # query values: ?api_key=…&key=…&token=…&signature=…
    (
        re.compile(
            r"([?&;](?:api_?key|apikey|key|token|access_token|secret|password|signature|sig)=)"
            r"[^&\s\"'<>#]+",
            re.I,
        ),
        r"\1" + MASK,
    ),
    # JSON / Python dict entries: "key": "…", 'api_key': '…'
    (
        re.compile(
            r"""(["'](?:api_?key|apikey|key|token|access_token|secret|password|authorization)["']"""
            r"""\s*:\s*)(["'])(?:(?!\2)[^\\]|\\.)*\2""",
            re.I,
        ),
        r"\1\2" + MASK + r"\2",
    ),
]


def register_secret(value: str) -> None:
    """Never log ``value`` (nor its URL-encoded form) from now on, through any edged handler."""
    if not isinstance(value, str):
        raise TypeError(f"register_secret: a secret must be a str, not {type(value).__name__}")
    value = value.strip()
    if len(value) < _MIN_SECRET:
        raise ValueError(
            f"register_secret: a secret must have at least {_MIN_SECRET} characters "
            "(a shorter one would blank ordinary words in every log line)"
        )
    with _lock:
        _secrets.add(value)
        quoted = urllib.parse.quote(value, safe="")
        if quoted != value:
            _secrets.add(quoted)


def register_secret_file(path: str | os.PathLike[str]) -> None:
    """Never log the (stripped) content of ``path``: looked at again whenever the file changes
    (a key rotated in its file), and every value it ever held stays hidden."""
    with _lock:
        _secret_files.setdefault(Path(path), None)


def _current_secrets() -> list[str]:
    with _lock:
        for path, seen in list(_secret_files.items()):
            try:
                st = path.stat()
                now = (st.st_mtime_ns, st.st_size, st.st_ino)
                if now != seen:
                    _secret_files[path] = now
                    # bounded, and a FIFO or device there never blocks the logger
                    text = read_bounded(path, 64 * 1024).decode(errors="replace").strip()
                    if len(text) >= _MIN_SECRET:
                        _secrets.update({text, urllib.parse.quote(text, safe="")})
            except OSError:
                pass  # absent or unreadable now: what it held before stays hidden
        values = list(_secrets)
    return sorted(values, key=len, reverse=True)  # longest first: no partial leftovers


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every registered secret and every known secret pattern replaced by ``***``."""
    for value in _current_secrets() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


#: Short strings already scrubbed, for the secrets they were scrubbed against: the status is
#: scrubbed once a second and repeats the same few hundred keys and states; scrubbing each anew
#: (every secret, every pattern) was most of the cost of writing it. Replaced, never edited, when
#: the secrets change; bounded.
_memo: tuple[tuple[str, ...], dict[str, str]] = ((), {})
_MEMO_TEXT = 200
_MEMO_ENTRIES = 4096


def scrub_doc(doc: Any, secrets: list[str] | None = None) -> Any:
    """A JSON-shaped document (dicts, lists, strings, numbers) with every string scrubbed: what
    edged stores or shows (status files, CLI output) goes through here, not only its logs."""
    global _memo
    if secrets is None:
        secrets = _current_secrets()
    memo = _memo
    if memo[0] != tuple(secrets):
        memo = _memo = (tuple(secrets), {})
    return _scrub_doc(doc, secrets, memo[1])


def _scrub_doc(doc: Any, secrets: list[str], memo: dict[str, str]) -> Any:
    if isinstance(doc, str):
        if len(doc) > _MEMO_TEXT:
            return scrub(doc, secrets)
        done = memo.get(doc)
        if done is None:
            if len(memo) >= _MEMO_ENTRIES:
                memo.clear()
            done = memo[doc] = scrub(doc, secrets)
        return done
    if isinstance(doc, dict):
        return {
            _scrub_doc(k, secrets, memo) if isinstance(k, str) else k: _scrub_doc(v, secrets, memo)
            for k, v in doc.items()
        }
    if isinstance(doc, (list, tuple)):
        return [_scrub_doc(v, secrets, memo) for v in doc]
    return doc


def scrubbed_json(doc: Any, indent: int | None = None) -> str:
    """``doc`` as JSON with no secret in it: every string scrubbed, then the text itself (which
    catches ``"api_key": "…"`` entries by their name); the second pass is kept only if it is still
    valid JSON. (The text pass blanks any ``"key": …`` entry: not for documents whose ``key``
    fields name config keys; ``scrub_doc`` those.)"""
    text = json.dumps(scrub_doc(doc), indent=indent)
    again = scrub(text)
    if again != text:
        try:
            json.loads(again)
        except ValueError:
            return text
        return again
    return text


class SecretFilter(logging.Filter):
    """Scrubs a record in place: message (formatted with its args), exception, stack, fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = _current_secrets()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - bad %-args: keep what there is rather than lose the line
            message = f"{record.msg!s} (args {record.args!r})"
        record.msg, record.args = scrub(message, secrets), ()
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # the raw exception (its repr too) is not sent anywhere
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, secrets)
        for name, value in list(vars(record).items()):
            if name.isupper() and isinstance(value, str):
                setattr(record, name, scrub(value, secrets))
        return True


# --- handlers ------------------------------------------------------------------------------


def _send_to_journal(MESSAGE: str, **fields: Any) -> None:  # noqa: N803 - the journal field name
    """JournalHandler's sender: only valid upper-case fields; LogRecord's own attributes
    (``msg``, ``args``, ``levelname``, …, which JournalHandler passes along) stay out."""
    from systemd import journal

    clean = {k: v for k, v in fields.items() if v is not None and k not in _DROPPED and _JOURNAL_FIELD.fullmatch(k)}
    journal.send(MESSAGE, **clean)


def _compact(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in " \"'=[]\n") else text


class StderrFormatter(logging.Formatter):
    """``time LEVEL logger: message [event key=value …]``; the brackets only for events."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging.Formatter API
        line = super().formatMessage(record)
        mid = getattr(record, "MESSAGE_ID", None)
        if mid is None:
            return line
        try:
            kind = Msg(mid).name.lower()
        except ValueError:
            kind = str(mid)
        fields = " ".join(f"{k[6:].lower()}={_compact(v)}" for k, v in vars(record).items() if k.startswith("EDGED_"))
        return f"{line} [{kind}{' ' if fields else ''}{fields}]"


def _journal_reachable(path: str = JOURNAL_SOCKET) -> bool:
    """A journald listens on ``path`` (a stale socket file does not count)."""
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
        return True
    except OSError:
        return False


def _stderr_is_journal() -> bool:
    """systemd connected our stderr to the journal ($JOURNAL_STREAM is its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_edged", False)


def setup_logging(verbose: bool = False) -> str:
    """Send the root logger to the journal when one is there, else to stderr; return which.

    With a journal: ``systemd.journal.JournalHandler`` (``SYSLOG_IDENTIFIER=edged``); stderr
    keeps a copy of each line too unless stderr itself is the journal (a systemd service), so
    a daemon started from a terminal or a test still shows its log. Without one: stderr only.
    Calling it again replaces the handlers it installed before (never doubles them).
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    scrubber = SecretFilter()
    handlers: list[logging.Handler] = []
    kind = "stderr"
    if _journal_reachable():
        from systemd.journal import JournalHandler

        handlers.append(JournalHandler(sender_function=_send_to_journal, SYSLOG_IDENTIFIER=IDENTIFIER))
        kind = "journal"
    if kind == "stderr" or not _stderr_is_journal():
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(StderrFormatter())
        handlers.append(stderr)
    for handler in handlers:
        handler._edged = True  # type: ignore[attr-defined]
        handler.addFilter(scrubber)
        root.addHandler(handler)
    return kind
