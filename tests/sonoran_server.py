"""A contract server for the tests: Sonoran CAD's bodycam upload endpoints on 127.0.0.1, enforcing
what ../shared/reference/ documents (and NOTES.md adds):

v2  ``POST /v2/general/bodycam-recordings``: ``Authorization: Bearer <key>``; 30 requests per rolling
    60 s per key (every request with a valid key counts, refused ones too) → 429 + Retry-After;
    multipart with exactly one ``file`` part, ``.webm`` name and EBML magic, ≤ 6,000,000 bytes;
    exactly one of accountUuid / communityUserId / roblox / discord; durationMs 1..120000; the
    plan's rolling 24 h minutes per key. Errors as application/problem+json. Success: a JSON list
    with one URL.
legacy ``POST /upload``: community, account, sessionId, username, type=bodycam, durationMs; same
    limits per community; errors as text/plain ``Error: ...``.

Fault knobs for tests: ``fail_next``, ``reset_next`` (RST mid-body), ``stall_next``, ``down``/``up``.
Runnable as a process (for a network namespace): ``python tests/sonoran_server.py --host H --port P``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edged import limits  # noqa: E402

EBML_MAGIC = b"\x1a\x45\xdf\xa3"
V2_PATH = "/v2/general/bodycam-recordings"
LEGACY_PATH = "/upload"
OWNER_FIELDS = ("accountUuid", "communityUserId", "roblox", "discord")
_MAX_BODY = limits.MAX_UPLOAD_BYTES + 1_000_000  # room for the other form fields


@dataclass
class Upload:
    api: str
    key: str
    fields: dict[str, str]
    filename: str
    size: int
    sha256: str
    duration_ms: int
    at: float


@dataclass
class Request:
    api: str
    key: str
    status: int
    detail: str
    at: float


class _Refuse(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


@dataclass
class _Part:
    name: str
    filename: str | None
    data: bytes

    @property
    def value(self) -> bytes:
        return self.data if self.filename is None else b""


def _read_all(body, limit: int) -> bytes | None:
    """The whole body, or None (drained) when it is larger than ``limit``."""
    chunks, size = [], 0
    while block := body.readline(65536):
        size += len(block)
        if size <= limit:
            chunks.append(block)
    return b"".join(chunks) if size <= limit else None


def _parse_multipart(raw: bytes, boundary: bytes) -> list[_Part]:
    delim = b"--" + boundary
    if delim not in raw:
        raise _Refuse(400, "Malformed multipart body.")
    parts = []
    for chunk in raw.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise _Refuse(400, "Malformed multipart body.")
        data = data[:-2] if data.endswith(b"\r\n") else data
        params = {}
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-disposition":
                for item in v.split(";")[1:]:
                    pk, _, pv = item.strip().partition("=")
                    params[pk.lower()] = pv.strip('"')
        parts.append(_Part(params.get("name", ""), params.get("filename"), data))
    return parts


class _ChunkedReader:
    """A file-like view of a chunked request body."""

    def __init__(self, rfile) -> None:
        self.rfile, self.buf, self.done = rfile, b"", False

    def _fill(self) -> None:
        size_line = self.rfile.readline()
        n = int(size_line.split(b";")[0].strip() or b"0", 16)
        if n == 0:
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            self.done = True
            return
        self.buf += self.rfile.read(n)
        self.rfile.readline()

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buf and not self.done and (limit < 0 or len(self.buf) < limit):
            self._fill()
        i = self.buf.find(b"\n")
        n = len(self.buf) if i < 0 else i + 1
        if limit >= 0:
            n = min(n, limit)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _Limited:
    """Content-Length body: never reads past it."""

    def __init__(self, rfile, length: int) -> None:
        self.rfile, self.left = rfile, length

    def readline(self, limit: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if limit < 0 else min(limit, self.left)
        line = self.rfile.readline(n)
        self.left -= len(line)
        return line


class SonoranServer:
    def __init__(self, *, keys: dict[str, str] | None = None, accounts: set[str] | None = None,
                 legacy: dict[str, dict] | None = None, clock: Callable[[], float] = time.monotonic,
                 store_dir: Path | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.keys = dict(keys or {"test-key": "free"})
        self.accounts = accounts
        self.legacy = legacy or {}
        self.clock = clock
        self.store_dir = store_dir
        self.host, self.port = host, port
        self.uploads: list[Upload] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self._used: dict[str, list[tuple[float, int]]] = {}
        self._faults: deque[tuple[str, dict]] = deque()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SonoranServer:
        self.up()
        return self

    def up(self) -> None:
        server = self

        class Handler(_Handler):
            srv = server

        httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def stop(self) -> None:
        self.down()

    def __enter__(self) -> SonoranServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- fault knobs ------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, body: str = "", headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._faults.extend([("fail", {"status": status, "body": body, "headers": headers or {}})] * n)

    def reset_next(self, n: int, after_bytes: int = 0) -> None:
        with self._lock:
            self._faults.extend([("reset", {"after": after_bytes})] * n)

    def stall_next(self, n: int, seconds: float) -> None:
        with self._lock:
            self._faults.extend([("stall", {"seconds": seconds})] * n)

    def _take_fault(self) -> tuple[str, dict] | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def count(self, status: int | None = None, api: str | None = None) -> int:
        return sum(1 for r in self.requests if (status is None or r.status == status) and (api is None or r.api == api))

    # --- the rules --------------------------------------------------------------------------------

    def _rate(self, key: str, refuse) -> None:
        """30 per rolling 60 s per key; every request counts."""
        now = self.clock()
        with self._lock:
            w = self._windows.setdefault(key, deque())
            while w and w[0] <= now - limits.RATE_WINDOW_S:
                w.popleft()
            if len(w) >= limits.REQUESTS_PER_MINUTE:
                retry = max(1, math.ceil(w[0] + limits.RATE_WINDOW_S - now))
                w.append(now)
                raise refuse(429, "Too many requests: 30 per minute per API key.", {"Retry-After": str(retry)})
            w.append(now)

    def _allowance(self, key: str, plan: str, duration_ms: int, prefix: str) -> None:
        now = self.clock()
        with self._lock:
            used = [(t, d) for t, d in self._used.get(key, []) if t > now - limits.ALLOWANCE_WINDOW_S]
            self._used[key] = used
            if sum(d for _, d in used) + duration_ms > limits.PLAN_MINUTES[plan] * 60_000:
                raise _Refuse(400, f"{prefix}Bodycam uploads are limited to {limits.PLAN_MINUTES[plan]} minutes "
                                   f"per 24 hours for the {plan.upper()} plan.")

    def _file_rules(self, parts: list[_Part], prefix: str) -> _Part:
        files = [p for p in parts if p.filename is not None]
        if len(files) != 1 or files[0].name != "file":
            raise _Refuse(400, f"{prefix}Exactly one file named 'file' is required.")
        f = files[0]
        if len(f.data) > limits.MAX_UPLOAD_BYTES:
            raise _Refuse(400, f"{prefix}File exceeds {limits.MAX_UPLOAD_BYTES} bytes.")
        if not f.filename.lower().endswith(limits.UPLOAD_EXTENSION) or not f.data.startswith(EBML_MAGIC):
            raise _Refuse(400, f"{prefix}Bodycam uploads must be webm files.")
        return f

    @staticmethod
    def _duration(fields: dict[str, str], prefix: str) -> int:
        raw = fields.get("durationMs", "")
        try:
            ms = int(raw)
        except ValueError:
            ms = 0
        if not limits.MIN_DURATION_MS <= ms <= limits.MAX_DURATION_MS:
            raise _Refuse(400, f"{prefix}Bodycam clips must be between {limits.MIN_DURATION_MS}ms and "
                               f"{limits.MAX_DURATION_MS}ms.")
        return ms

    def _accept(self, api: str, key: str, fields: dict[str, str], f: _Part, ms: int) -> list[str]:
        now = self.clock()
        digest = hashlib.sha256(f.data).hexdigest()
        if self.store_dir:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            (self.store_dir / f"{digest}.webm").write_bytes(f.data)
        with self._lock:
            self._used.setdefault(key, []).append((now, ms))
            self.uploads.append(Upload(api, key, fields, f.filename, len(f.data), digest, ms, now))
        return [f"{self.url}/files/{digest}.webm"]

    def handle_v2(self, headers, parts_reader) -> tuple[str, list[str]]:
        auth = headers.get("Authorization", "")
        key = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if key not in self.keys:
            raise _Refuse(401, "Missing or invalid API key.")
        self._rate(key, _Refuse)
        parts = parts_reader()
        fields = {p.name: p.value.decode() for p in parts if p.filename is None}
        f = self._file_rules(parts, "")
        owners = [k for k in OWNER_FIELDS if fields.get(k)]
        if len(owners) != 1:
            raise _Refuse(400, "Provide exactly one of accountUuid, communityUserId, roblox, or discord.")
        if owners[0] == "roblox" and not fields["roblox"].isdigit():
            raise _Refuse(400, "roblox must be an integer.")
        if self.accounts is not None and owners[0] in ("accountUuid", "communityUserId") \
                and fields[owners[0]] not in self.accounts:
            raise _Refuse(400, f"Account {fields[owners[0]]} was not found in this community.")
        ms = self._duration(fields, "")
        if "identId" in fields and not fields["identId"].isdigit():
            raise _Refuse(400, "identId must be a number.")
        self._allowance(key, self.keys[key], ms, "")
        return key, self._accept("v2", key, fields, f, ms)

    def handle_legacy(self, headers, parts_reader) -> tuple[str, list[str]]:
        parts = parts_reader()
        fields = {p.name: p.value.decode() for p in parts if p.filename is None}
        community = fields.get("community", "")
        if community in self.legacy:
            self._rate("community:" + community, _Refuse)
        comm = self.legacy.get(community)
        acct = (comm or {}).get("accounts", {}).get(fields.get("account", ""))
        if acct is None:
            raise _Refuse(400, "Error: Invalid account ID.")
        if fields.get("sessionId") != acct.get("session"):
            raise _Refuse(400, "Error: Invalid session ID.")
        if fields.get("type") != "bodycam" or fields.get("username") != acct.get("username"):
            raise _Refuse(400, "Error: Unable to validate bodycam upload session.")
        f = self._file_rules(parts, "Error: ")
        ms = self._duration(fields, "Error: ")
        self._allowance("community:" + community, comm.get("plan", "free"), ms, "Error: ")
        return community, self._accept("legacy", community, fields, f, ms)


class _Handler(BaseHTTPRequestHandler):
    srv: SonoranServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _ChunkedReader(self.rfile)
        return _Limited(self.rfile, int(self.headers.get("Content-Length", "0") or 0))

    def _drain(self, body) -> None:
        while body.readline(65536):
            pass

    def do_POST(self) -> None:  # noqa: N802
        srv = self.srv
        if self.path == V2_PATH:
            api, handle = "v2", srv.handle_v2
        elif self.path == LEGACY_PATH:
            api, handle = "legacy", srv.handle_legacy
        else:
            self._drain(self._body())
            return self._send(404, "text/plain", b"Not found")
        body = self._body()
        fault = srv._take_fault()
        if fault and fault[0] == "reset":
            left = fault[1]["after"]
            while left > 0 and (chunk := body.readline(min(65536, left))):
                left -= len(chunk)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            srv.requests.append(Request(api, "", 0, "connection reset", srv.clock()))
            return
        if fault and fault[0] == "stall":
            time.sleep(fault[1]["seconds"])
        if fault and fault[0] == "fail":
            self._drain(body)
            f = fault[1]
            srv.requests.append(Request(api, "", f["status"], f["body"], srv.clock()))
            headers = {"Content-Type": "text/plain"} | f["headers"]
            return self._send(f["status"], headers.pop("Content-Type"), f["body"].encode(), headers)
        boundary = b""
        ctype = self.headers.get("Content-Type", "")
        for item in ctype.split(";")[1:]:
            k, _, v = item.strip().partition("=")
            if k.lower() == "boundary":
                boundary = v.strip('"').encode()
        key = ""
        try:
            if not ctype.startswith("multipart/form-data") or not boundary:
                def reader():
                    raise _Refuse(400, ("Error: " if api == "legacy" else "") + "Expected multipart/form-data.")
            else:
                def reader():
                    raw = _read_all(body, _MAX_BODY)
                    if raw is None:
                        raise _Refuse(400, ("Error: " if api == "legacy" else "")
                                      + f"File exceeds {limits.MAX_UPLOAD_BYTES} bytes.")
                    return _parse_multipart(raw, boundary)
            key, urls = handle(self.headers, reader)
        except _Refuse as r:
            self._drain(body)
            srv.requests.append(Request(api, key, r.status, r.detail, srv.clock()))
            if api == "v2":
                doc = {"title": "Unable to upload bodycam recording", "status": r.status, "detail": r.detail}
                return self._send(r.status, "application/problem+json", json.dumps(doc).encode(), r.headers)
            return self._send(r.status, "text/plain", r.detail.encode(), r.headers)
        srv.requests.append(Request(api, key, 200, "", srv.clock()))
        self._send(200, "application/json", json.dumps(urls).encode())

    def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def main() -> int:
    ap = argparse.ArgumentParser(description="Sonoran bodycam upload contract server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--store-dir", type=Path)
    ap.add_argument("--key", action="append", default=[], help="KEY=plan (repeatable)")
    args = ap.parse_args()
    keys = dict(k.split("=", 1) for k in args.key) or None
    srv = SonoranServer(keys=keys, host=args.host, port=args.port, store_dir=args.store_dir, clock=time.time)
    srv.start()
    print(f"READY {srv.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
