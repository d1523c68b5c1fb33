"""A contract server for the tests: Sonoran CAD's bodycam upload endpoints on 127.0.0.1, enforcing
what ../shared/reference/ documents (and NOTES.md adds). The numbers come from ``edged.core.limits``.

v2  ``POST /v2/general/bodycam-recordings``, in this order:
    ``Authorization: Bearer <key>`` (missing/unknown → 401); 30 requests per rolling 60 s per key,
    every request with a valid key counted, refused ones (429s too) included (→ 429 + Retry-After:
    whole seconds until a request would be let through); then the body: multipart/form-data with
    exactly one file part, named ``file``; ≤ 6,000,000 bytes; ``.webm`` name and EBML magic;
    exactly one of accountUuid / communityUserId / roblox (integer) / discord; the account known
    (if ``accounts`` is given); durationMs an integer in 1..120000; identId an integer if given;
    the plan's minutes per rolling 24 h per community ("your community's rolling 24 hour plan
    allowance": keys of one community, ``communities``, share it; a key alone is its own community).
    Errors are application/problem+json
    ``{"title": "Unable to upload bodycam recording", "status": N, "detail": "..."}``.
    Success: 200, a JSON list with one URL (``<url>/files/<sha256>.webm``).
legacy ``POST /upload``: community, account, sessionId, username, type=bodycam, durationMs (identId,
    unitNumber, unitLocation optional); the same limits, counted per community (known only from the
    body, so the rate limit comes after parsing it; an unknown community is not counted); errors
    are text/plain ``Error: ...`` with status 400 (429 for the rate limit).

Bodies may come with Content-Length or chunked; they are parsed as they arrive (the boundary from
the Content-Type header), file parts spooled to temporary files, never held in memory.
``GET /files/<sha256>.webm`` serves a stored upload (with ``store_dir``); other paths answer 404.

The unit operations of sonoran-v2-openapi.md (each with the v2 bearer key, counted in the same
30-per-minute window as the key's uploads; errors as problem+json; bodies JSON, at most 64 KiB):
``PATCH /v2/emergency/servers/{serverId}/units/panic`` (setUnitPanic) ``{"communityUserIds":
"<id>" (or a list of them), "isPanic": bool}`` → ``{"updated": n, "isPanic": bool}``, n the units
of ``units`` (signed on) it names; ``PATCH .../servers/{serverId}/unit-locations``
(updateUnitLocations) ``{"updates": [{"communityUserId", "location"?, "coordinates"?: {x, y, z?,
w?}}, ...]}`` → ``{"updated": n}``; ``GET /v2/emergency/accounts/{accountUuid}/current-call``
(getCurrentCall) → ``{"IdentId", "CallId"}`` from ``calls``; no current call, which the document
does not show, answers ``CallId: null`` (``no_call="null"``) or 404 (``no_call="404"``); an
account not in ``calls`` is "not found in this community" (400); ``POST .../servers/{serverId}/
dispatch-calls/{callId}/notes`` (addCallNote) ``{"note": non-empty, "noteType"?, "label"?}`` →
``{"callId", "note"}``, 404 for a call not open. ``serverId`` and ``callId`` are integers (400);
a server not in ``servers`` is 404. What each received is kept (``unit_requests``; the accepted
ones in ``panics``, ``locations``, ``notes``).

Fault knobs for tests, each for the next n requests to an endpoint (``endpoint="upload"``, the
default, is both upload paths; or ``"panic"``, ``"location"``, ``"current_call"``, ``"note"``):
``fail_next`` (answer so, after reading the body), ``reset_next`` (read some bytes, then RST),
``stall_next`` (the request is judged and recorded at once, the answer is held back); ``down``/``up``
stop and resume listening on the same port (``down`` also cuts open connections, so kept-alive
ones cannot bypass it).

Runnable as a process (for a network namespace):
``python tests/contract/sonoran_server.py --host H --port P [--store-dir D] [--key K=plan ...]``
prints ``READY http://H:P`` once listening and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from email.utils import collapse_rfc2231_value
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edged.core import limits

EBML_MAGIC = b"\x1a\x45\xdf\xa3"
V2_PATH = "/v2/general/bodycam-recordings"
LEGACY_PATH = "/upload"
FILES_PREFIX = "/files/"
OWNER_FIELDS = ("accountUuid", "communityUserId", "roblox", "discord")
PROBLEM_TITLE = "Unable to upload bodycam recording"

_BLOCK = 65536
#: Guards against broken clients; far above anything the contract lets through.
_MAX_FIELD_BYTES = 64 * 1024
_MAX_PART_HEADER_BYTES = 16 * 1024
_MAX_PARTS = 64
#: A body larger than this is not read to its end: answered, then the connection is closed.
_MAX_BODY_BYTES = 4 * limits.MAX_UPLOAD_BYTES
_INT = re.compile(r"[0-9]+")
_STORED = re.compile(r"/files/([0-9a-f]{64})\.webm")


@dataclass
class Upload:
    """One accepted upload."""

    api: str  # "v2" | "legacy"
    key: str  # v2: the bearer key; legacy: the community id
    fields: dict[str, str]  # every non-file form field as received
    filename: str
    size: int
    sha256: str
    duration_ms: int
    at: float  # server clock time of acceptance


@dataclass
class UnitRequest:
    """One request to a unit endpoint, as received (``body``: the parsed JSON, or None)."""

    endpoint: str  # "panic" | "location" | "current_call" | "note"
    params: dict[str, str]  # the path's parameters, as sent
    key: str
    body: object
    status: int
    at: float


@dataclass
class Request:
    """Every request that reached a handler, accepted or not (status 0: no answer was sent)."""

    api: str
    key: str
    status: int
    detail: str
    at: float


# --- request bodies -----------------------------------------------------------------------------------


class _ClientGone(ConnectionError):
    """The connection ended before the body did."""


class _BadFraming(Exception):
    """The body cannot be delimited (bad Content-Length or chunked framing): answer 400 and close."""


class _Body:
    """The request body as a stream: Content-Length or chunked, never read past its end."""

    def __init__(self, rfile, headers) -> None:
        self.rfile = rfile
        self.total = 0
        te = headers.get("Transfer-Encoding")
        cl = headers.get("Content-Length")
        self.chunked = False
        self.left = 0  # Content-Length: bytes still to come; chunked: of the current chunk
        self.done = False
        if te is not None:
            if cl is not None:
                raise _BadFraming("Both Content-Length and Transfer-Encoding given.")
            codings = [c.strip().lower() for c in te.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise _BadFraming(f"Unsupported Transfer-Encoding: {te}.")
            self.chunked = True
        elif cl is not None:
            if not _INT.fullmatch(cl.strip()):
                raise _BadFraming(f"Bad Content-Length: {cl!r}.")
            self.left = int(cl.strip())
            self.done = self.left == 0
        else:
            self.done = True  # no body

    def _next_chunk(self) -> None:
        line = self.rfile.readline(1024)
        if not line:
            raise _ClientGone("connection closed in the chunked body")
        if not line.endswith(b"\n"):
            raise _BadFraming("Chunk size line too long.")
        size = line.split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9a-fA-F]{1,15}", size):
            raise _BadFraming(f"Bad chunk size {size!r}.")
        self.left = int(size, 16)
        if self.left == 0:
            for _ in range(100):  # trailer fields, then the blank line
                line = self.rfile.readline(8192)
                if not line:
                    raise _ClientGone("connection closed in the chunked trailer")
                if line in (b"\r\n", b"\n"):
                    self.done = True
                    return
            raise _BadFraming("Too many trailer lines.")

    def read(self, n: int = _BLOCK) -> bytes:
        """Up to ``n`` bytes; b"" at the end of the body."""
        if self.done:
            return b""
        if self.chunked and self.left == 0:
            self._next_chunk()
            if self.done:
                return b""
        data = self.rfile.read(min(n, self.left))
        if not data:
            raise _ClientGone(f"connection closed after {self.total} bytes of the body")
        self.left -= len(data)
        self.total += len(data)
        if self.left == 0:
            if self.chunked:
                if self.rfile.read(2) != b"\r\n":
                    raise _BadFraming("Chunk not followed by CRLF.")
            else:
                self.done = True
        return data

    def drain(self) -> bool:
        """Read to the end (True), or stop at the body cap (False: the connection must close)."""
        try:
            while self.total <= _MAX_BODY_BYTES:
                if not self.read():
                    return True
        except _BadFraming:
            pass
        return False


# --- multipart/form-data ----------------------------------------------------------------------------


class _Refuse(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


@dataclass
class _FilePart:
    name: str
    filename: str
    spool: object = field(default_factory=lambda: tempfile.TemporaryFile(prefix="sonoran-upload-"))
    size: int = 0
    head: bytes = b""
    hasher: object = field(default_factory=hashlib.sha256)

    def write(self, data: bytes) -> None:
        if len(self.head) < len(EBML_MAGIC):
            self.head += bytes(data[: len(EBML_MAGIC) - len(self.head)])
        if self.size + len(data) <= limits.MAX_UPLOAD_BYTES:  # past the cap only the size matters
            self.spool.write(data)
            self.hasher.update(data)
        self.size += len(data)

    @property
    def too_large(self) -> bool:
        return self.size > limits.MAX_UPLOAD_BYTES

    def close(self) -> None:
        self.spool.close()


class _FieldPart:
    def __init__(self, name: str) -> None:
        self.name, self.data = name, bytearray()

    def write(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > _MAX_FIELD_BYTES:
            raise _Refuse(400, f"Form field {self.name} is too large.")

    def close(self) -> None:
        pass


@dataclass
class _Form:
    fields: list[tuple[str, str]] = field(default_factory=list)
    files: list[_FilePart] = field(default_factory=list)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name]


def _boundary(content_type: str) -> bytes | None:
    m = Message()
    m["Content-Type"] = content_type
    if not content_type or m.get_content_type() != "multipart/form-data":
        return None
    b = m.get_boundary()
    if not b or len(b) > 70:
        return None
    return b.encode("latin-1", "replace")


def _part_head(raw: bytes) -> tuple[str, str | None]:
    """(name, filename or None) from a part's header block."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    msg = HeaderParser().parsestr(text + "\r\n\r\n")
    disp = msg.get("Content-Disposition")
    if disp is None or msg.get_content_disposition() != "form-data":
        raise _Refuse(400, "Malformed multipart body: a part without Content-Disposition: form-data.")
    name = msg.get_param("name", header="content-disposition")
    if isinstance(name, tuple):  # RFC 2231
        name = collapse_rfc2231_value(name)
    if not name:
        raise _Refuse(400, "Malformed multipart body: a part without a name.")
    return name, msg.get_filename()


def _parse_form(body: _Body, boundary: bytes) -> _Form:
    """Parse as the bytes arrive (RFC 7578 / RFC 2046); file contents go to temporary files."""
    delim = b"\r\n--" + boundary
    buf = bytearray(b"\r\n")  # so the first delimiter looks like the others
    form = _Form()

    def fill() -> None:
        data = body.read(_BLOCK)
        if not data:
            raise _Refuse(400, "Malformed multipart body: it ends before the closing boundary.")
        buf.extend(data)

    try:
        # preamble
        while (i := buf.find(delim)) < 0:
            del buf[: max(0, len(buf) - len(delim) + 1)]
            fill()
        del buf[: i + len(delim)]
        while True:
            while len(buf) < 2:
                fill()
            if buf[:2] == b"--":
                break  # the closing delimiter; the epilogue is drained by the caller
            while (j := buf.find(b"\r\n")) < 0:  # transport padding, then CRLF
                if len(buf) > 1024:
                    raise _Refuse(400, "Malformed multipart body: junk after a boundary.")
                fill()
            if buf[:j].strip(b" \t"):
                raise _Refuse(400, "Malformed multipart body: junk after a boundary.")
            del buf[: j + 2]
            if len(form.fields) + len(form.files) >= _MAX_PARTS:
                raise _Refuse(400, "Too many form parts.")
            # the part's header block ends at the first blank line (possibly at once: no headers)
            while (k := (b"\r\n" + buf).find(b"\r\n\r\n")) < 0:
                if len(buf) > _MAX_PART_HEADER_BYTES:
                    raise _Refuse(400, "Malformed multipart body: part headers too long.")
                fill()
            head = bytes(buf[: k - 2]) if k >= 2 else b""
            del buf[: k + 2]
            name, filename = _part_head(head)
            sink: _FilePart | _FieldPart
            if filename is not None:
                sink = _FilePart(name, filename)
                form.files.append(sink)
            else:
                sink = _FieldPart(name)
            keep = len(delim) - 1
            while (i := buf.find(delim)) < 0:
                if len(buf) > keep:
                    with memoryview(buf) as view, view[:-keep] as data:
                        sink.write(data)
                    del buf[:-keep]
                fill()
            with memoryview(buf) as view, view[:i] as data:
                sink.write(data)
            del buf[: i + len(delim)]
            if isinstance(sink, _FieldPart):
                form.fields.append((name, sink.data.decode("utf-8", "replace")))
        return form
    except BaseException:
        form.close()
        raise


# --- the server -------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # down() must not wait for stalled handlers
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, handler, app: SonoranServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no getfqdn(): a reverse lookup can be slow
        self.server_name, self.server_port = self.server_address[:2]


class SonoranServer:
    """The contract server. ``keys``: v2 API key → plan (default ``{"test-key": "free"}``);
    ``communities``: v2 API key → its community (keys of one community share its allowance);
    ``accounts``: the known accountUuid/communityUserId values (None: any); ``legacy``: community id →
    ``{"plan": ..., "accounts": {account: {"session": sid, "username": name}}}``; ``clock`` drives the
    rate window and the 24 h allowance; ``store_dir`` keeps accepted files as ``<sha256>.webm``."""

    def __init__(
        self,
        *,
        keys: dict[str, str] | None = None,
        accounts: set[str] | None = None,
        legacy: dict[str, dict] | None = None,
        clock: Callable[[], float] = time.monotonic,
        store_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        servers: set[int] | None = None,
        units: set[str] | None = None,
        calls: dict[str, int | None] | None = None,
        no_call: str = "null",
        communities: dict[str, str] | None = None,
    ) -> None:
        self.keys = dict(keys if keys is not None else {"test-key": "free"})
        self.communities = dict(communities or {})
        self.accounts = set(accounts) if accounts is not None else None
        self.legacy = dict(legacy or {})
        for plan in [*self.keys.values(), *(c.get("plan", "free") for c in self.legacy.values())]:
            if plan not in limits.PLAN_MINUTES:
                raise ValueError(f"unknown plan {plan!r} (one of {', '.join(limits.PLAN_MINUTES)})")
        self.clock = clock
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.host, self.port = host, port
        self.uploads: list[Upload] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self._used: dict[str, list[tuple[float, int]]] = {}
        self._faults: dict[str, deque[tuple[str, dict]]] = {}
        #: The unit operations' world: configured server ids, the units signed on (communityUserId →
        #: their panic), each account's current call (None: none) and the calls open.
        self.servers = set(servers if servers is not None else {1})
        self.units: dict[str, bool] = dict.fromkeys(units if units is not None else {"player-1234"}, False)
        self.calls: dict[str, int | None] = dict(calls or {})
        self.open_calls: set[int] = {c for c in self.calls.values() if c is not None}
        if no_call not in ("null", "404"):
            raise ValueError("no_call: 'null' or '404'")
        self.no_call = no_call
        self.unit_requests: list[UnitRequest] = []
        self.panics: list[dict] = []
        self.locations: list[dict] = []
        self.notes: list[tuple[int, dict]] = []
        self._conns: set[socket.socket] = set()
        self._wake = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> SonoranServer:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again) on the same port."""
        if self._httpd is not None:
            return
        httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self.port = httpd.server_address[1]
        self._wake = threading.Event()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sonoran-{self.port}", daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening (connects are refused) and cut every open connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        self._wake.set()  # stalled answers are abandoned
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.down()

    def __enter__(self) -> SonoranServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- fault knobs ------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 503,
        body: str = "",
        headers: dict[str, str] | None = None,
        endpoint: str = "upload",
    ) -> None:
        """The next ``n`` requests to ``endpoint`` are answered ``status``/``body``/``headers`` (body read first)."""
        fault = ("fail", {"status": status, "body": body, "headers": dict(headers or {})})
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend([fault] * n)

    def reset_next(self, n: int, after_bytes: int = 0, endpoint: str = "upload") -> None:
        """The next ``n`` requests to ``endpoint``: read ``after_bytes`` of the body, then reset the connection."""
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend([("reset", {"after": after_bytes})] * n)

    def stall_next(self, n: int, seconds: float, endpoint: str = "upload") -> None:
        """The next ``n`` requests to ``endpoint`` are judged (and recorded) at once, answered ``seconds`` later."""
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend([("stall", {"seconds": seconds})] * n)

    def clear_faults(self, endpoint: str = "upload") -> None:
        """Forget the faults still queued for ``endpoint``."""
        with self._lock:
            self._faults.pop(endpoint, None)

    def _take_fault(self, endpoint: str = "upload") -> tuple[str, dict] | None:
        with self._lock:
            faults = self._faults.get(endpoint)
            return faults.popleft() if faults else None

    def in_window(self, key: str = "test-key") -> int:
        """Requests of ``key`` in the server's rate window now (uploads and unit operations alike)."""
        with self._lock:
            now = self.clock()
            return sum(1 for t in self._windows.get(key, ()) if t > now - limits.RATE_WINDOW_S)

    def count(self, status: int | None = None, api: str | None = None) -> int:
        with self._lock:
            return sum(
                1 for r in self.requests if (status is None or r.status == status) and (api is None or r.api == api)
            )

    def _record(self, api: str, key: str, status: int, detail: str) -> None:
        with self._lock:
            self.requests.append(Request(api, key, status, detail, self.clock()))

    def _unit_record(self, endpoint: str, params: dict[str, str], ctx: dict, status: int, detail: str) -> None:
        with self._lock:
            now = self.clock()
            self.requests.append(Request(endpoint, ctx["key"], status, detail, now))
            self.unit_requests.append(UnitRequest(endpoint, dict(params), ctx["key"], ctx.get("body"), status, now))

    # --- the rules --------------------------------------------------------------------------------

    def _rate(self, key: str, prefix: str) -> None:
        """30 per rolling 60 s per key; every request counts, the refused ones too."""
        with self._lock:
            now = self.clock()
            w = self._windows.setdefault(key, deque())
            while w and w[0] <= now - limits.RATE_WINDOW_S:
                w.popleft()
            w.append(now)
            if len(w) > limits.REQUESTS_PER_MINUTE:
                # a request is let through once no more than N-1 of these are in its window
                free_at = w[len(w) - limits.REQUESTS_PER_MINUTE] + limits.RATE_WINDOW_S
                retry = max(1, math.ceil(free_at - now))
                raise _Refuse(
                    429,
                    f"{prefix}Too many requests: {limits.REQUESTS_PER_MINUTE} per "
                    f"{limits.RATE_WINDOW_S} s. Try again in {retry} s.",
                    {"Retry-After": str(retry)},
                )

    @staticmethod
    def _file(form: _Form, prefix: str) -> _FilePart:
        if len(form.files) != 1 or form.files[0].name != "file":
            raise _Refuse(400, f"{prefix}Exactly one file, in a form field named 'file', is required.")
        f = form.files[0]
        if f.too_large:
            raise _Refuse(400, f"{prefix}File exceeds {limits.MAX_UPLOAD_BYTES} bytes.")
        if not f.filename.lower().endswith(limits.UPLOAD_EXTENSION) or f.head != EBML_MAGIC:
            raise _Refuse(400, f"{prefix}Bodycam uploads must be webm files.")
        return f

    @staticmethod
    def _duration(form: _Form, prefix: str) -> int:
        values = form.get("durationMs")
        raw = values[0].strip() if len(values) == 1 else ""
        ms = int(raw) if _INT.fullmatch(raw) else 0
        if not limits.MIN_DURATION_MS <= ms <= limits.MAX_DURATION_MS:
            raise _Refuse(
                400, f"{prefix}Bodycam clips must be between {limits.MIN_DURATION_MS}ms and {limits.MAX_DURATION_MS}ms."
            )
        return ms

    def _accept(
        self, api: str, key: str, allowance_key: str, plan: str, form: _Form, f: _FilePart, ms: int, prefix: str
    ) -> list[str]:
        """The plan's rolling 24 h allowance, then keep the upload (one at a time: no race past it)."""
        digest = f.hasher.hexdigest()
        with self._lock:
            now = self.clock()
            used = [(t, d) for t, d in self._used.get(allowance_key, []) if t > now - limits.ALLOWANCE_WINDOW_S]
            self._used[allowance_key] = used
            minutes = limits.PLAN_MINUTES[plan]
            if sum(d for _, d in used) + ms > minutes * 60_000:
                raise _Refuse(
                    400,
                    f"{prefix}Bodycam uploads are limited to {minutes} minutes per 24 hours "
                    f"for the {plan.upper()} plan.",
                )
            if self.store_dir is not None:
                self.store_dir.mkdir(parents=True, exist_ok=True)
                f.spool.seek(0)
                tmp = self.store_dir / f".{digest}.{threading.get_ident()}.partial"
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(f.spool, out, _BLOCK)
                os.replace(tmp, self.store_dir / f"{digest}.webm")
            used.append((now, ms))
            self.uploads.append(Upload(api, key, dict(form.fields), f.filename, f.size, digest, ms, now))
        return [f"{self.url}/files/{digest}.webm"]

    def _form(self, headers, body: _Body, prefix: str) -> _Form:
        boundary = _boundary(headers.get("Content-Type", ""))
        if boundary is None:
            raise _Refuse(400, f"{prefix}Request must be multipart/form-data with a boundary.")
        return _parse_form(body, boundary)

    def judge_v2(self, headers, body: _Body, ctx: dict) -> list[str]:
        key = ctx["key"] = _bearer(headers)
        if key not in self.keys:
            raise _Refuse(401, "Missing or invalid API key.", {"WWW-Authenticate": "Bearer"})
        self._rate(key, "")
        form = self._form(headers, body, "")
        try:
            f = self._file(form, "")
            owners = [(k, v) for k, v in form.fields if k in OWNER_FIELDS]
            if len(owners) != 1 or not owners[0][1].strip():
                raise _Refuse(400, "Provide exactly one of accountUuid, communityUserId, roblox, or discord.")
            owner, who = owners[0]
            if owner == "roblox" and not _INT.fullmatch(who.strip()):
                raise _Refuse(400, "roblox must be an integer.")
            if self.accounts is not None and owner in ("accountUuid", "communityUserId") and who not in self.accounts:
                raise _Refuse(400, f"Account {who} was not found in this community.")
            ms = self._duration(form, "")
            ident = form.get("identId")
            if ident and (len(ident) > 1 or not _INT.fullmatch(ident[0].strip())):
                raise _Refuse(400, "identId must be an integer.")
            community = "community:" + self.communities.get(key, "key:" + key)
            return self._accept("v2", key, community, self.keys[key], form, f, ms, "")
        finally:
            form.close()

    def judge_legacy(self, headers, body: _Body, ctx: dict) -> list[str]:
        p = "Error: "
        form = self._form(headers, body, p)
        try:
            one = {k: (form.get(k) or [""])[-1] for k in ("community", "account", "sessionId", "username", "type")}
            community = ctx["key"] = one["community"]
            comm = self.legacy.get(community)
            if comm is None:
                raise _Refuse(400, p + "Invalid account ID.")
            self._rate("community:" + community, p)
            acct = comm.get("accounts", {}).get(one["account"])
            if acct is None:
                raise _Refuse(400, p + "Invalid account ID.")
            if one["sessionId"] != acct.get("session"):
                raise _Refuse(400, p + "Invalid session ID.")
            if one["type"] != "bodycam" or ("username" in acct and one["username"] != acct["username"]):
                raise _Refuse(400, p + "Unable to validate bodycam upload session.")
            f = self._file(form, p)
            ms = self._duration(form, p)
            return self._accept("legacy", community, "community:" + community, comm.get("plan", "free"), form, f, ms, p)
        finally:
            form.close()

    # --- the unit operations (sonoran-v2-openapi.md) ------------------------------------------------

    def judge_unit(self, endpoint: str, params: dict[str, str], headers, body: _Body, ctx: dict) -> dict:
        """One unit request: auth, the key's window, the path, the JSON body; the answer's document."""
        key = ctx["key"] = _bearer(headers)
        if key not in self.keys:
            raise _Refuse(401, "Missing or invalid API key.", {"WWW-Authenticate": "Bearer"})
        self._rate(key, "")
        for name in ("serverId", "callId"):
            if name in params and not _INT.fullmatch(params[name]):
                raise _Refuse(400, f"{name} must be an integer.")
        if "serverId" in params and int(params["serverId"]) not in self.servers:
            raise _Refuse(404, f"Server {params['serverId']} is not configured for this community.")
        doc = None
        if endpoint != "current_call":
            doc = ctx["body"] = _json_body(headers, body)
        judge = {
            "panic": self._panic,
            "location": self._locations,
            "current_call": self._current_call,
            "note": self._note,
        }[endpoint]
        return judge(params, doc)

    def _panic(self, params: dict[str, str], doc: dict) -> dict:
        ids = doc.get("communityUserIds")
        names = [ids] if isinstance(ids, str) else ids
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise _Refuse(400, "communityUserIds must name at least one community user.")
        if not isinstance(doc.get("isPanic"), bool):
            raise _Refuse(400, "isPanic must be true or false.")
        with self._lock:
            updated = [n for n in names if n in self.units]
            for n in updated:
                self.units[n] = doc["isPanic"]
            self.panics.append(doc)
        return {"updated": len(updated), "isPanic": doc["isPanic"]}

    def _locations(self, params: dict[str, str], doc: dict) -> dict:
        updates = doc.get("updates")
        if not isinstance(updates, list) or not updates:
            raise _Refuse(400, "updates must be a non-empty list.")
        for u in updates:
            if not isinstance(u, dict) or not isinstance(u.get("communityUserId"), str) or not u["communityUserId"]:
                raise _Refuse(400, "Each update needs a communityUserId.")
            if "location" in u and not isinstance(u["location"], str):
                raise _Refuse(400, "location must be a string.")
            c = u.get("coordinates")
            if c is not None:
                numbers = isinstance(c, dict) and all(
                    isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool)
                    for k in ("x", "y", "z", "w")
                    if k in c or k in ("x", "y")
                )
                if not numbers:
                    raise _Refuse(400, "coordinates must have numbers x and y (and z, w if given).")
        with self._lock:
            self.locations.append(doc)
            updated = sum(1 for u in updates if u["communityUserId"] in self.units)
        return {"updated": updated}

    def _current_call(self, params: dict[str, str], doc: None) -> dict:
        account = params["accountUuid"]
        with self._lock:
            if account not in self.calls:
                raise _Refuse(400, f"Account {account} was not found in this community.")
            call = self.calls[account]
        if call is None and self.no_call == "404":
            raise _Refuse(404, "The account has no current call.")
        return {"IdentId": 12, "CallId": call}

    def _note(self, params: dict[str, str], doc: dict) -> dict:
        note = doc.get("note")
        if not isinstance(note, str) or not note.strip():
            raise _Refuse(400, "note must be a non-empty string.")
        for name in ("noteType", "label"):
            if name in doc and not isinstance(doc[name], str):
                raise _Refuse(400, f"{name} must be a string.")
        call = int(params["callId"])
        with self._lock:
            if call not in self.open_calls:
                raise _Refuse(404, f"Call {call} was not found.")
            self.notes.append((call, doc))
        return {"callId": call, "note": note}


#: The unit endpoints: (method, path pattern, name); the path's groups are its parameters.
UNIT_ROUTES = (
    ("PATCH", re.compile(r"/v2/emergency/servers/(?P<serverId>[^/]+)/units/panic"), "panic"),
    ("PATCH", re.compile(r"/v2/emergency/servers/(?P<serverId>[^/]+)/unit-locations"), "location"),
    ("GET", re.compile(r"/v2/emergency/accounts/(?P<accountUuid>[^/]+)/current-call"), "current_call"),
    (
        "POST",
        re.compile(r"/v2/emergency/servers/(?P<serverId>[^/]+)/dispatch-calls/(?P<callId>[^/]+)/notes"),
        "note",
    ),
)
UNIT_TITLES = {
    "panic": "Unable to set unit panic",
    "location": "Unable to update unit locations",
    "current_call": "Unable to get current call",
    "note": "Unable to add call note",
}
_MAX_JSON_BYTES = 64 * 1024


def _json_body(headers, body: _Body) -> dict:
    """The request's JSON object (the document's request bodies are all objects), bounded."""
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    data = bytearray()
    while len(data) <= _MAX_JSON_BYTES and (chunk := body.read()):
        data += chunk
    if len(data) > _MAX_JSON_BYTES:
        raise _Refuse(413, f"Request body over {_MAX_JSON_BYTES} bytes.")
    if ctype != "application/json":
        raise _Refuse(400, "Request body must be application/json.")
    try:
        doc = json.loads(bytes(data))
    except (ValueError, RecursionError):
        raise _Refuse(400, "Request body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise _Refuse(400, "Request body must be a JSON object.")
    return doc


def _unit_route(method: str, path: str) -> tuple[str, dict[str, str]] | None | str:
    """(endpoint, path parameters) for a unit request; the endpoint's name alone when the path is
    one but the method is not (405); None for any other path."""
    for want, pattern, name in UNIT_ROUTES:
        m = pattern.fullmatch(path)
        if m:
            return (name, m.groupdict()) if method == want else name
    return None


def _bearer(headers) -> str:
    scheme, _, key = (headers.get("Authorization") or "").strip().partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 300  # a client that stops sending mid-request does not hold a thread forever

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.app._lock:
            self.server.app._conns.add(self.connection)

    def finish(self) -> None:
        with self.server.app._lock:
            self.server.app._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # --- routing ----------------------------------------------------------------------------------

    def do_POST(self) -> None:
        try:
            self._post()
        except _ClientGone as exc:
            self.close_connection = True
            api = {V2_PATH: "v2", LEGACY_PATH: "legacy"}.get(urlsplit(self.path).path, "")
            self.server.app._record(api, _bearer(self.headers) if api == "v2" else "", 0, f"client went away: {exc}")
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a bug here: say so to both sides rather than hang up silently
            traceback.print_exc()
            self.close_connection = True
            try:
                self._send(500, "text/plain", traceback.format_exc().encode())
            except OSError:
                pass

    def _other(self) -> None:
        app = self.server.app
        path = urlsplit(self.path).path
        route = _unit_route(self.command, path)
        if isinstance(route, tuple):
            return self._unit(*route)
        try:
            body = _Body(self.rfile, self.headers)
            self.close_connection = self.close_connection or not body.drain()
        except _BadFraming:
            self.close_connection = True
        except _ClientGone:
            self.close_connection = True
            return
        stored = _STORED.fullmatch(path)
        if (
            self.command in ("GET", "HEAD")
            and stored
            and app.store_dir is not None
            and (app.store_dir / f"{stored[1]}.webm").is_file()
        ):
            data = (app.store_dir / f"{stored[1]}.webm").read_bytes()
            return self._send(200, "video/webm", data)
        if path in (V2_PATH, LEGACY_PATH):
            api = "v2" if path == V2_PATH else "legacy"
            app._record(api, "", 405, f"{self.command} not allowed")
            return self._send(405, "text/plain", b"Method not allowed", {"Allow": "POST"})
        if isinstance(route, str):
            allow = next(m for m, _, n in UNIT_ROUTES if n == route)
            app._record(route, "", 405, f"{self.command} not allowed")
            return self._send(405, "text/plain", b"Method not allowed", {"Allow": allow})
        app._record("", "", 404, f"{self.command} {path}")
        self._send(404, "text/plain", b"Not found")

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other  # noqa: N815

    def _unit(self, endpoint: str, params: dict[str, str]) -> None:
        """A unit operation: faults, then judged; what it received recorded, refused or not."""
        app = self.server.app
        try:
            body = _Body(self.rfile, self.headers)
        except _BadFraming as exc:
            self.close_connection = True
            return self._unit_answer(endpoint, _Refuse(400, str(exc)))
        ctx: dict = {"key": _bearer(self.headers), "body": None}
        fault = app._take_fault(endpoint)
        if fault and fault[0] == "reset":
            app._unit_record(endpoint, params, ctx, 0, "connection reset")
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if fault and fault[0] == "fail":
            self.close_connection = self.close_connection or not body.drain()
            f = fault[1]
            app._unit_record(endpoint, params, ctx, f["status"], f["body"])
            headers = dict(f["headers"])
            ctype = next((headers.pop(k) for k in list(headers) if k.lower() == "content-type"), "text/plain")
            return self._send(f["status"], ctype, f["body"].encode(), headers)
        doc: dict = {}
        refusal: _Refuse | None = None
        try:
            doc = app.judge_unit(endpoint, params, self.headers, body, ctx)
        except _ClientGone as exc:
            self.close_connection = True
            return app._unit_record(endpoint, params, ctx, 0, f"client went away: {exc}")
        except _BadFraming as exc:
            self.close_connection = True
            refusal = _Refuse(400, str(exc))
        except _Refuse as r:
            refusal = r
        self.close_connection = self.close_connection or not body.drain()
        status = 200 if refusal is None else refusal.status
        app._unit_record(endpoint, params, ctx, status, "" if refusal is None else refusal.detail)
        if fault and fault[0] == "stall":
            if app._wake.wait(fault[1]["seconds"]):
                self.close_connection = True
                return
        if refusal is not None:
            return self._unit_answer(endpoint, refusal)
        self._send(200, "application/json", json.dumps(doc).encode())

    def _unit_answer(self, endpoint: str, r: _Refuse) -> None:
        doc = {"title": UNIT_TITLES[endpoint], "status": r.status, "detail": r.detail}
        self._send(r.status, "application/problem+json", json.dumps(doc).encode(), r.headers)

    def _post(self) -> None:
        app = self.server.app
        path = urlsplit(self.path).path
        route = _unit_route("POST", path)
        if isinstance(route, tuple):
            return self._unit(*route)
        api = {V2_PATH: "v2", LEGACY_PATH: "legacy"}.get(path)
        if api is None:
            return self._other()
        prefix = "Error: " if api == "legacy" else ""
        try:
            body = _Body(self.rfile, self.headers)
        except _BadFraming as exc:
            self.close_connection = True
            app._record(api, "", 400, str(exc))
            return self._refuse(api, _Refuse(400, prefix + str(exc)))
        ctx = {"key": _bearer(self.headers) if api == "v2" else ""}
        fault = app._take_fault()
        if fault and fault[0] == "reset":
            left = fault[1]["after"]
            try:
                while left > 0 and (chunk := body.read(min(_BLOCK, left))):
                    left -= len(chunk)
            except _BadFraming:
                pass
            app._record(api, ctx["key"], 0, "connection reset")
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # with linger 0 the close is an RST (once rfile/wfile let go, in finish())
            return
        if fault and fault[0] == "fail":
            self.close_connection = self.close_connection or not body.drain()
            f = fault[1]
            app._record(api, ctx["key"], f["status"], f["body"])
            headers = dict(f["headers"])
            ctype = next((headers.pop(k) for k in list(headers) if k.lower() == "content-type"), "text/plain")
            return self._send(f["status"], ctype, f["body"].encode(), headers)
        urls: list[str] = []
        refusal: _Refuse | None = None
        try:
            urls = (app.judge_v2 if api == "v2" else app.judge_legacy)(self.headers, body, ctx)
        except _BadFraming as exc:
            self.close_connection = True
            refusal = _Refuse(400, prefix + str(exc))
        except _Refuse as r:
            refusal = r
        self.close_connection = self.close_connection or not body.drain()
        if refusal is None:
            app._record(api, ctx["key"], 200, "")
        else:
            app._record(api, ctx["key"], refusal.status, refusal.detail)
        if fault and fault[0] == "stall":
            if app._wake.wait(fault[1]["seconds"]):  # the server went down meanwhile: no answer
                self.close_connection = True
                return
        if refusal is not None:
            return self._refuse(api, refusal)
        self._send(200, "application/json", json.dumps(urls).encode())

    def _refuse(self, api: str, r: _Refuse) -> None:
        if api == "v2":
            doc = {"title": PROBLEM_TITLE, "status": r.status, "detail": r.detail}
            return self._send(r.status, "application/problem+json", json.dumps(doc).encode(), r.headers)
        self._send(r.status, "text/plain; charset=utf-8", r.detail.encode(), r.headers)

    def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Sonoran CAD bodycam upload contract server (tests)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--store-dir", type=Path)
    ap.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY=PLAN",
        help=f"an API key and its plan ({'|'.join(limits.PLAN_MINUTES)}); repeatable",
    )
    args = ap.parse_args(argv)
    keys = {}
    for item in args.key:
        k, sep, plan = item.partition("=")
        if not sep or not k or plan not in limits.PLAN_MINUTES:
            ap.error(f"--key {item!r}: expected KEY=PLAN with PLAN one of {', '.join(limits.PLAN_MINUTES)}")
        keys[k] = plan
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    srv = SonoranServer(keys=keys or None, host=args.host, port=args.port, store_dir=args.store_dir)
    srv.start()
    print(f"READY {srv.url}", flush=True)
    try:
        stop.wait()
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
