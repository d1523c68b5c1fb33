"""The local control socket: how ``edged mark`` (and other commands) reach the running daemon.

A Unix stream socket in the state folder, owner-only (0600, created under umask 077). One JSON
request per connection, one JSON answer line: ``{"cmd": "mark", "note": "..."}`` →
``{"ok": true, "event_id": "...", ...}`` or ``{"ok": false, "error": "..."}``.

Why it is built this way: whatever can connect may send anything, nothing, or a byte a minute,
and may vanish before its answer — and the daemon must keep recording and keep answering the
next ``edged mark`` at once. So:

* **No thread per connection.** One thread reads every connection with ``selectors``
  (non-blocking), at most ``max_connections`` at a time. A connection beyond that evicts the
  *oldest* one still being read (answered with a clear error): a client that connects and sends
  its request at once (``edged mark``) always gets in, however many idle ones are held open.
* **A deadline per connection.** A complete request must arrive within ``deadline_s`` of the
  connect, in total (dripping bytes does not extend it); the answer is written with a timeout.
* **Bounded requests.** At most ``max_request`` bytes up to the newline, at most ``MAX_DEPTH``
  levels of nesting (checked before parsing), strings that are valid text without NUL, a JSON
  object with a string ``cmd`` and the arguments ``COMMANDS`` lists with their types.
* **Commands run on a few worker threads** fed by a bounded queue; when it is full the new
  request is answered ``busy`` (the client retries until its timeout).
* **Every failure is an answer**, never an exception out of the server: ``{"ok": false,
  "error": ...}`` with the text scrubbed of secrets (``edged.core.journal.scrub``). A client gone
  before its answer is logged at debug level, one line, no traceback.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edged.core.ids import CLIP_ID
from edged.core.journal import scrub

log = logging.getLogger("edged.control")

Handler = Callable[[dict[str, Any]], dict[str, Any]]

#: Bytes of one request, up to its newline.
MAX_REQUEST = 64 * 1024
#: Connections read at once (a new one beyond it evicts the oldest still being read).
MAX_CONNECTIONS = 8
#: Seconds from connect to a complete request; and to write the answer.
DEADLINE_S = 5.0
#: Threads running commands, and complete requests waiting for one.
WORKERS = 4
QUEUE = 16
#: Nesting levels of a request (``{"cmd": "recall", "request": {...}}`` needs 2).
MAX_DEPTH = 8
#: Bytes of one answer a client accepts.
MAX_ANSWER = 16 * 1024 * 1024

#: A part of the outbox (its row id) as ``outbox_retry`` takes it.
PART_ID = re.compile(r"[0-9]{1,18}")
#: A clip's id: a marked event's (``20240501T143000Z-1a2b3c``) or a recall's (``recall-<id>``).
#: Characters of a mark's note.
MAX_NOTE = 4096


class Arg(NamedTuple):
    """One argument of a command: its JSON type, and for a string its longest length or its form."""

    type: type
    max_len: int = 256
    pattern: re.Pattern[str] | None = None
    form: str = ""


#: The protocol: each known command's arguments. Any other key is refused.
COMMANDS: dict[str, dict[str, Arg]] = {
    "mark": {"note": Arg(str, MAX_NOTE)},
    "status": {},
    "mute": {"set": Arg(str, pattern=re.compile("on|off|toggle"), form='"on", "off" or "toggle"')},
    "outbox_retry": {
        "id": Arg(
            str,
            pattern=re.compile(f"{PART_ID.pattern}|{CLIP_ID.pattern}"),
            form="a part number (digits 0-9) or a clip id",
        )
    },
    "recall": {"request": Arg(dict), "id": Arg(str)},  # the recall service judges the request and its id
    "recall_status": {"id": Arg(str)},
    "panic": {"state": Arg(str, pattern=re.compile("on|off|toggle"), form="on, off or toggle")},
}

_JSON_TYPES = {str: "a string", dict: "an object", list: "a list", int: "a number", bool: "true or false"}
_TOKEN = re.compile(rb'["\\\[\]{}]')


class ControlError(Exception):
    """The daemon could not be reached or refused the request."""


class NotRunning(ControlError):
    """No daemon listens on the socket (absent, or nobody accepting)."""


class BadRequest(ValueError):
    """A request the protocol refuses; the message says why (sent back as the error)."""


# --- one request → one answer (pure: no socket; the fuzz tests call it directly too) -----------


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _check_depth(line: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the parser recurses into it (one linear pass
    over the quotes, backslashes and brackets; brackets inside strings do not count)."""
    depth, in_string, skip = 0, False, -1
    for m in _TOKEN.finditer(line):
        at, c = m.start(), m.group()
        if at == skip:
            continue
        if in_string:
            if c == b"\\":
                skip = at + 1
            elif c == b'"':
                in_string = False
        elif c == b'"':
            in_string = True
        elif c in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise BadRequest(f"nested deeper than {MAX_DEPTH} levels")
        elif c in (b"]", b"}"):
            depth -= 1


def _check_strings(value: Any) -> None:
    """Every key and string is text a store and the journal can hold: UTF-8, no NUL."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
        elif isinstance(v, str):
            if "\0" in v:
                raise BadRequest("a string holds a NUL character")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("a string is not valid text (a lone surrogate)") from None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return "a number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def parse_request(line: bytes, known: frozenset[str] | None = None) -> dict[str, Any]:
    """The request in ``line`` checked against the protocol; BadRequest saying why not.
    ``known``: the commands served (an unknown one is refused, naming them)."""
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"request too large ({len(line)} bytes; at most {MAX_REQUEST})")
    _check_depth(line)
    try:
        request = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("not UTF-8 text") from None
    except RecursionError:
        raise BadRequest(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest(f'a request is a JSON object with "cmd", got {_type_name(request)}')
    _check_strings(request)
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise BadRequest(f'"cmd" must be a string, got {_type_name(cmd)}')
    if known is not None and cmd not in known:
        raise BadRequest(f"unknown command {_short(cmd)} (known: {', '.join(sorted(known))})")
    spec = COMMANDS.get(cmd)
    if spec is not None:
        _check_arguments(cmd, request, spec)
    return request


def _check_arguments(cmd: str, request: dict[str, Any], spec: dict[str, Arg]) -> None:
    for key, value in request.items():
        if key == "cmd":
            continue
        arg = spec.get(key)
        if arg is None:
            allowed = ", ".join(sorted(spec)) or "none"
            raise BadRequest(f"{cmd}: unknown argument {_short(key)} (arguments: {allowed})")
        if not isinstance(value, arg.type):
            raise BadRequest(f"{cmd}: {key} must be {_JSON_TYPES[arg.type]}, got {_type_name(value)}")
        if isinstance(value, str):
            if len(value) > arg.max_len:
                raise BadRequest(f"{cmd}: {key} has {len(value)} characters; at most {arg.max_len}")
            if arg.pattern is not None and not arg.pattern.fullmatch(value):
                raise BadRequest(f"{cmd}: {key} must be {arg.form}, got {_short(value)}")


def answer(line: bytes, handlers: dict[str, Handler]) -> dict[str, Any]:
    """The answer to one request line: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``;
    never raises (but for BaseExceptions such as KeyboardInterrupt)."""
    try:
        request = parse_request(line, frozenset(handlers))
    except BadRequest as exc:
        return _error(f"bad request: {exc}")
    cmd = request["cmd"]
    try:
        result = handlers[cmd](request)
        if not isinstance(result, dict):
            raise TypeError(f"handler returned {type(result).__name__}, not a dict")
        out = {"ok": True} | result
        json.dumps(out)  # what cannot be sent is an error here, not in the writer
        return out
    except (ValueError, LookupError) as exc:  # the handler's own refusal: its words
        return _error(str(exc) or type(exc).__name__)
    except Exception as exc:
        log.error("control command %s failed: %s: %s", cmd, type(exc).__name__, exc)
        log.debug("control command %s failed", cmd, exc_info=True)
        return _error(f"{cmd} failed: {type(exc).__name__}: {exc}")


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": scrub(text) or "error"}


def encode(doc: dict[str, Any]) -> bytes:
    """One JSON line (no raw newline inside: json escapes them)."""
    return json.dumps(doc).encode() + b"\n"


# --- the server ------------------------------------------------------------------------------------


@dataclass
class _Conn:
    """A client connection being read: its socket, when it must have asked, what it sent so far."""

    sock: socket.socket
    deadline: float
    buf: bytearray = field(default_factory=bytearray)


class ControlServer:
    """Serves ``handlers`` on the Unix socket ``path``; ``start()``, ``stop()``. ``stats`` counts
    what happened (accepted, answered, evicted, timed_out, too_large, busy, gone)."""

    def __init__(
        self,
        path: Path,
        handlers: dict[str, Handler],
        *,
        max_connections: int = MAX_CONNECTIONS,
        deadline_s: float = DEADLINE_S,
        workers: int = WORKERS,
        queue_size: int = QUEUE,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.max_connections = max_connections
        self.deadline_s = deadline_s
        self.max_request = min(max_request, MAX_REQUEST)
        self.stats: collections.Counter[str] = collections.Counter()
        self._stats_lock = threading.Lock()
        self._n_workers = workers
        self._jobs: queue.Queue[tuple[socket.socket, bytes] | None] = queue.Queue(queue_size)
        self._conns: dict[int, _Conn] = {}  # fd → connection still being read, oldest first
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a stale socket from a crash (the state lock is ours)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            listener.bind(str(self.path))
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._serve, name="control", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"control-{i}", daemon=True) for i in range(self._n_workers)
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        if self._listener is not None:
            self._stopping.set()
            try:
                self._wake_w.send(b"x")  # type: ignore[union-attr]
            except OSError:
                pass
            for _ in range(self._n_workers):
                try:
                    self._jobs.put(None, timeout=1)
                except queue.Full:
                    break
            for t in self._threads:
                t.join(timeout=5)  # a command still running is a daemon thread: it dies with us
            self._listener = None
            for s in (self._wake_r, self._wake_w):
                if s is not None:
                    s.close()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # storage gone read-only: shutting down must go on
            log.warning("control socket %s not removed: %s", self.path, exc)

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    # --- the reading thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        listener = self._listener
        assert listener is not None and self._wake_r is not None
        sel.register(listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(self._timeout()):
                    if key.data == "accept":
                        self._accept(sel, listener)
                    elif key.data == "read":
                        self._read(sel, key.fd)
                self._expire(sel)
        except Exception:
            log.error("control socket stopped serving", exc_info=True)
        finally:
            for fd in list(self._conns):
                self._drop(sel, fd, None)
            sel.close()
            listener.close()

    def _timeout(self) -> float:
        if not self._conns:
            return 1.0
        first = min(c.deadline for c in self._conns.values())
        return max(0.0, min(1.0, first - time.monotonic()))

    def _accept(self, sel: selectors.BaseSelector, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the connection stays in the backlog
                log.warning("control socket: cannot accept: %s", exc)
                return
            self._count("accepted")
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections:
                self._make_room(sel)
            self._conns[sock.fileno()] = _Conn(sock, time.monotonic() + self.deadline_s)
            sel.register(sock, selectors.EVENT_READ, "read")

    def _make_room(self, sel: selectors.BaseSelector) -> None:
        """A slot for a new connection: what the open ones have sent is taken first (a burst of
        quick clients is served, not evicted); failing that, the oldest one goes."""
        for fd in list(self._conns):
            self._read(sel, fd)
            if len(self._conns) < self.max_connections:
                return
        self._count("evicted")
        self._drop(
            sel,
            next(iter(self._conns)),
            f"too many connections (at most {self.max_connections} at "
            "once); dropped the oldest without a complete request",
        )

    def _read(self, sel: selectors.BaseSelector, fd: int) -> None:
        conn = self._conns.get(fd)
        if conn is None:
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._count("gone")
            log.debug("control client gone while sending: %s", type(exc).__name__)
            self._drop(sel, fd, None)
            return
        conn.buf += data
        end = conn.buf.find(b"\n")
        if end > self.max_request or (end < 0 and len(conn.buf) > self.max_request):
            self._count("too_large")
            self._drop(sel, fd, f"bad request: request too large (at most {self.max_request} bytes)")
        elif end >= 0 or (not data and conn.buf):  # a line, or the last bytes before the client's EOF
            self._dispatch(sel, fd, bytes(conn.buf[:end] if end >= 0 else conn.buf))
        elif not data:  # connected and left without a word
            self._count("gone")
            self._drop(sel, fd, None)

    def _dispatch(self, sel: selectors.BaseSelector, fd: int, line: bytes) -> None:
        conn = self._conns.pop(fd)
        sel.unregister(conn.sock)
        try:
            self._jobs.put_nowait((conn.sock, line))
        except queue.Full:
            self._count("busy")
            _send_quietly(conn.sock, {"ok": False, "busy": True, "error": "busy: too many commands waiting"})

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for fd in [fd for fd, c in self._conns.items() if c.deadline <= now]:
            self._count("timed_out")
            self._drop(sel, fd, f"bad request: no complete request within {self.deadline_s:g} s")

    def _drop(self, sel: selectors.BaseSelector, fd: int, error: str | None) -> None:
        conn = self._conns.pop(fd)
        sel.unregister(conn.sock)
        if error is None:
            conn.sock.close()
        else:
            log.debug("control connection dropped: %s", error)
            _send_quietly(conn.sock, _error(error))

    # --- the command threads -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            sock, line = job
            try:
                doc = answer(line, self.handlers)
                sock.settimeout(self.deadline_s)
                sock.sendall(encode(doc))
                self._count("answered")
            except OSError as exc:  # BrokenPipe, ConnectionReset, timeout: the client left first
                self._count("gone")
                log.debug("control client gone before its answer: %s", type(exc).__name__)
            except Exception:
                log.error("control answer not sent", exc_info=True)
            finally:
                sock.close()


def _send_quietly(sock: socket.socket, doc: dict[str, Any]) -> None:
    """Best effort, never blocking: the answer to a connection being dropped."""
    try:
        sock.setblocking(False)
        sock.send(encode(doc))
    except OSError:
        pass
    finally:
        sock.close()


# --- the client ----------------------------------------------------------------------------------------


def request(path: Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the daemon at ``path``; raise ControlError with a clear reason.
    A ``busy`` daemon is asked again until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        answer_doc = _exchange(path, payload, max(0.1, deadline - time.monotonic()))
        if answer_doc.get("busy") and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        if answer_doc.get("ok") is not True:
            raise ControlError(scrub(str(answer_doc.get("error") or "no answer from edged")))
        return answer_doc


def _exchange(path: Path, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    if not path.exists():
        raise NotRunning(f"edged is not running (no control socket at {path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            _connect(s, path, time.monotonic() + timeout)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise NotRunning(f"edged is not running (control socket {path}: {exc.strerror})") from exc
        except PermissionError as exc:
            raise ControlError(f"not allowed to reach edged at {path} (run as the daemon's user)") from exc
        except TimeoutError:
            raise ControlError(f"edged did not accept the connection within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"cannot reach edged at {path}: {exc.strerror or exc}") from exc
        try:
            s.sendall(encode(payload))
            data = _read_line(s)
        except TimeoutError:
            raise ControlError(f"edged did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"connection to edged lost: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise ControlError("edged gave no answer" if not data.strip() else "edged answered garbage") from None
    if not isinstance(doc, dict):
        raise ControlError("edged answered garbage")
    return doc


def _connect(s: socket.socket, path: Path, deadline: float) -> None:
    """Connect; a full backlog (EAGAIN: the daemon is accepting a burst) is tried again until
    ``deadline`` rather than reported as an error."""
    while True:
        try:
            s.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError("the control socket's backlog stayed full") from None
            time.sleep(0.02)


def _read_line(s: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_ANSWER:
            raise ControlError(f"edged's answer exceeds {MAX_ANSWER} bytes")
    return bytes(data)
