"""A hostile HTTP server on 127.0.0.1 for the upload tests: real sockets, one thread per connection,
every answer what a broken or malicious server (or a captive portal in front of one) would send.

It reads each request whole (Content-Length or chunked; the body is counted and discarded), then
answers in the current :class:`Mode`; every request is recorded (:class:`Seen`). Answers are
written by hand, byte by byte where it matters, so nothing here is polite on the client's behalf:

- ``OK``: what the Sonoran contract says (200, a JSON list of one URL) — the control case;
- ``HUGE``: 200 with a Content-Length of ``huge_bytes`` (2 GB), streamed lazily from one block
  until the client goes away; ``sent`` counts what left this side;
- ``DRIP_BODY``: 200 headers at once, then the body one byte every ``drip_s``;
- ``DRIP_HEADERS``: the status line and headers themselves one byte every ``drip_s``;
- ``PORTAL``: 200 text/html, a captive portal's login page; ``PORTAL_NO_TYPE``: that page with
  no Content-Type at all;
- ``BAD_JSON``: 200 application/json that is not JSON; ``WRONG_SHAPE``: valid JSON, not a list
  of URLs (``wrong_doc``);
- ``REDIRECT``: 302 to the same path (a loop, if anyone followed it);
- ``ECHO_KEY``: ``echo_status`` (401) problem+json whose detail repeats the request's
  Authorization header, its bearer key and its query string, plus a header echoing the key;
- ``STALL``: the request is read, no answer is ever sent (until the client or ``stop`` ends it).
"""

from __future__ import annotations

import enum
import json
import socket
import threading
import time
from dataclasses import dataclass, field

_BLOCK = b"x" * 65536
_PORTAL_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sign in to FreeCityWiFi</title></head><body>"
    b"<form action='/login'><input name='email'><button>Connect</button></form></body></html>"
)


class Mode(enum.Enum):
    OK = "ok"
    HUGE = "huge"
    DRIP_BODY = "drip_body"
    DRIP_HEADERS = "drip_headers"
    PORTAL = "portal"
    PORTAL_NO_TYPE = "portal_no_type"
    BAD_JSON = "bad_json"
    WRONG_SHAPE = "wrong_shape"
    REDIRECT = "redirect"
    ECHO_KEY = "echo_key"
    STALL = "stall"


@dataclass
class Seen:
    """One request as received, and how its answer went."""

    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int
    mode: Mode
    sent: int = 0  # answer bytes that left this side (the kernel took them)
    ended: str = ""  # "" while answering; "done", or why it stopped ("client gone")
    at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None


class HostileServer:
    def __init__(
        self,
        mode: Mode = Mode.OK,
        *,
        drip_s: float = 1.0,
        huge_bytes: int = 2 * 1024**3,
        echo_status: int = 401,
        wrong_doc: object = None,
    ) -> None:
        self.mode = mode
        self.drip_s = drip_s
        self.huge_bytes = huge_bytes
        self.echo_status = echo_status
        self.wrong_doc = {"ok": True, "files": "clip.webm"} if wrong_doc is None else wrong_doc
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)

    # --- life -------------------------------------------------------------------------------------

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:  # shutdown wakes the thread blocked in accept (close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self, mode: Mode | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if mode is None or s.mode is mode]

    def ended(self, mode: Mode | None = None) -> list[Seen]:
        """Requests whose answer is over (sent whole, or the client went away)."""
        return [s for s in self.requests(mode) if s.ended]

    # --- serving ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="hostile-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            reader = conn.makefile("rb")
            seen = self._read_request(reader)
            if seen is None:
                return
            with self._lock:
                self.seen.append(seen)
            try:
                self._answer(conn, seen)
                seen.ended = seen.ended or "done"
            except OSError as exc:
                seen.ended = f"client gone: {type(exc).__name__}"
            seen.ended_at = time.monotonic()
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _read_request(self, reader) -> Seen | None:
        line = reader.readline(65536)
        if not line:
            return None
        method, path, _ = (line.decode("latin-1").split(" ", 2) + ["", ""])[:3]
        headers: dict[str, str] = {}
        while True:
            h = reader.readline(65536)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        n = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(reader.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while reader.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                n += len(reader.read(size))
                reader.read(2)
        else:
            left = int(headers.get("content-length", "0") or 0)
            while left > 0:
                chunk = reader.read(min(left, 65536))
                if not chunk:
                    break
                n += len(chunk)
                left -= len(chunk)
        return Seen(method, path, headers, n, self.mode)

    def _send(self, conn: socket.socket, seen: Seen, data: bytes) -> None:
        conn.sendall(data)
        seen.sent += len(data)

    def _head(self, status: str, headers: dict[str, str], length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _whole(
        self,
        conn: socket.socket,
        seen: Seen,
        status: str,
        ctype: str | None,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = ({"Content-Type": ctype} if ctype else {}) | (extra or {})
        self._send(conn, seen, self._head(status, headers, len(body)) + body)

    def _drip(self, conn: socket.socket, seen: Seen, data: bytes) -> None:
        for i in range(len(data)):
            if self._stop.wait(self.drip_s if i else 0):
                return
            self._send(conn, seen, data[i : i + 1])

    def _answer(self, conn: socket.socket, seen: Seen) -> None:
        mode = seen.mode
        url_list = json.dumps([f"{self.url}/files/clip.webm"]).encode()
        if mode is Mode.OK:
            self._whole(conn, seen, "200 OK", "application/json", url_list)
        elif mode is Mode.HUGE:
            self._send(conn, seen, self._head("200 OK", {"Content-Type": "application/json"}, self.huge_bytes))
            left = self.huge_bytes
            while left > 0 and not self._stop.is_set():
                block = _BLOCK if left >= len(_BLOCK) else _BLOCK[:left]
                self._send(conn, seen, block)
                left -= len(block)
        elif mode is Mode.DRIP_BODY:
            body = b"[" + b" " * 10_000 + url_list[1:]  # valid in the end, if anyone waited for it
            self._send(conn, seen, self._head("200 OK", {"Content-Type": "application/json"}, len(body)))
            self._drip(conn, seen, body)
        elif mode is Mode.DRIP_HEADERS:
            head = self._head("200 OK", {"Content-Type": "application/json", "X-Padding": "p" * 10_000}, len(url_list))
            self._drip(conn, seen, head + url_list)
        elif mode is Mode.PORTAL:
            self._whole(conn, seen, "200 OK", "text/html; charset=utf-8", _PORTAL_PAGE)
        elif mode is Mode.PORTAL_NO_TYPE:
            self._whole(conn, seen, "200 OK", None, _PORTAL_PAGE)
        elif mode is Mode.BAD_JSON:
            self._whole(conn, seen, "200 OK", "application/json", b'["https://files.example.com/a.webm",')
        elif mode is Mode.WRONG_SHAPE:
            self._whole(conn, seen, "200 OK", "application/json", json.dumps(self.wrong_doc).encode())
        elif mode is Mode.REDIRECT:
            self._whole(conn, seen, "302 Found", "text/plain", b"moved", {"Location": f"{self.url}{seen.path}"})
        elif mode is Mode.ECHO_KEY:
            auth = seen.headers.get("authorization", "")
            key = auth.split(" ", 1)[-1]
            doc = {
                "title": "Unauthorized",
                "status": self.echo_status,
                "detail": f"API key {key} is not valid for this community (you sent '{auth}', "
                f"path {seen.path}, key={key})",
            }
            self._whole(
                conn,
                seen,
                f"{self.echo_status} Echo",
                "application/problem+json",
                json.dumps(doc).encode(),
                {"X-Your-Key": key, "Location": f"{self.url}/login?api_key={key}"},
            )
        elif mode is Mode.STALL:
            self._stop.wait()


class BlackHole:
    """A port whose connects never complete: a listener with a full accept queue (one connection
    parked in it, never accepted), so the kernel drops every further SYN — what a firewall that
    silently drops packets looks like to the client."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self._filler.close()
        self._listener.close()
