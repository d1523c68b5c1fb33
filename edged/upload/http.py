"""HTTP for the targets that speak it: every request bounded in time and in what it reads.

Why a module of its own: a server's answer is untrusted input, and httpx's defaults trust it more
than a bodycam can afford. What is here keeps any answer from stalling or swamping the daemon, the
same way for every HTTP target (``sonoran``, ``bota``), so a target module only says what it sends
and which contract the answer must meet (``answers``):

- the answer's body is streamed and read only up to ``answers.MAX_ANSWER_BYTES``; the rest is
  never read (the connection is closed), so a 2 GB answer costs 64 KiB (:func:`read_answer`,
  which also inflates a compressed body no further than the cap);
- every request has an overall deadline (:class:`Call`), not only httpx's per-read timeouts
  (which a server sending a byte a second never trips): connect, plus the body at a slow link's
  pace, plus ``timeout_seconds`` for the whole answer once the body is sent (:class:`Deadlines`).
  The network backend (:class:`GuardedBackend`, plugged into httpcore by :class:`GuardedTransport`)
  clamps every socket wait to what is left and ends the request when it is gone;
- :meth:`HttpTarget.cancel` (another thread: the daemon stopping, the operator's retry) shuts the
  request's socket down, so a blocked connect, read or write returns at once;
- redirects are never followed and ``HTTP(S)_PROXY`` is not honoured (:func:`http_client`);
- the optional bandwidth cap paces the body (:class:`ThrottledFile`) without outliving a cancel.

:class:`HttpSession` holds that: :meth:`HttpSession.exchange`, the one way a request is made, and
``arm``/``cancel`` wired to the request in flight. :class:`HttpTarget`, the base of the HTTP
targets, is a session that is also a :class:`~edged.upload.target.Target`; the Sonoran unit
operations (``sonoran_unit``) use sessions of their own.
"""

from __future__ import annotations

import contextvars
import errno
import os
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpcore
import httpx

from edged import __version__
from edged.config.schema import Settings, UploadSettings
from edged.upload.answers import MAX_ANSWER_BYTES, Answer, DeadlineExceeded, RequestCancelled, Verdict, classify_error
from edged.upload.target import Target

#: The slowest link an upload is given time for (bytes/s, ~32 kbit/s: poor 2G) when no
#: ``bandwidth_kbps`` cap says otherwise: a request's deadline grows by its body's size at this pace.
MIN_LINK_BYTES_PER_S = 4000.0

# --- one request: its deadline and its off switch ------------------------------------------------------

_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("edged_upload_call", default=None)


def current_call() -> Call | None:
    """The request this thread is making (inside ``with call:``), if any."""
    return _CURRENT.get()


class Call:
    """One HTTP request's overall deadline and its cancel switch.

    Entered (``with call:``) by the thread making the request, whose socket operations then each
    wait at most what is left (:meth:`clamp`); :meth:`cancel` from any other thread shuts the
    request's sockets down so a blocked wait returns now. ``answer_s``: once the body is sent (the
    first read), the whole answer must come within this long.
    """

    def __init__(
        self, deadline_s: float, answer_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.started = clock()
        self.limit_s = deadline_s
        self.deadline = self.started + deadline_s
        self.answer_s = answer_s
        self.answering = False
        #: Bytes read from and written to the network (headers included).
        self.received = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._cancelled: str | None = None
        self._closed = False
        self._stop = threading.Event()
        self._pipe: tuple[int, int] | None = None
        self._token: contextvars.Token | None = None

    def __enter__(self) -> Call:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        self.close()

    # --- the other thread's side -------------------------------------------------------------------

    def cancel(self, why: str) -> None:
        """End the request now (any thread). Idempotent."""
        with self._lock:
            if self._cancelled is not None or self._closed:
                return
            self._cancelled = why or "cancelled"
            socks = list(self._socks)
            if self._pipe is not None:
                try:
                    os.write(self._pipe[1], b"x")
                except OSError:
                    pass
        self._stop.set()
        for sock in socks:
            _shutdown(sock)

    @property
    def cancelled(self) -> str | None:
        return self._cancelled

    # --- the requesting thread's side ----------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - self._clock()

    def check(self) -> None:
        """Raise if the request was cancelled or its deadline passed."""
        if self._cancelled is not None:
            raise RequestCancelled(self._cancelled)
        if self.remaining() <= 0:
            phase = "for the answer" if self.answering else "for the request"
            limit = self.answer_s if self.answering and self.answer_s is not None else self.limit_s
            raise DeadlineExceeded(
                f"no complete answer within the {limit:g} s allowed {phase} ({self.received} bytes received)"
            )

    def clamp(self, asked: float | None) -> float:
        """``asked`` (a per-operation timeout, None: none) cut to what the deadline leaves."""
        self.check()
        left = max(1e-3, self.remaining())  # never 0: a zero timeout would make the socket non-blocking
        return left if asked is None else min(asked, left)

    def attach(self, sock: socket.socket) -> None:
        """``sock`` carries this request: :meth:`cancel` shuts it down."""
        with self._lock:
            if sock not in self._socks:
                self._socks.add(sock)
            late = self._cancelled is not None
        if late:
            _shutdown(sock)

    def begin_answer(self) -> None:
        """The body is sent, the answer is being read: from now on it has ``answer_s`` at most."""
        if not self.answering:
            self.answering = True
            if self.answer_s is not None:
                self.deadline = min(self.deadline, self._clock() + self.answer_s)

    def sleep(self, seconds: float) -> None:
        """Pace (the bandwidth cap) without outliving a cancel or the deadline."""
        self.check()
        self._stop.wait(max(0.0, min(seconds, self.remaining())))
        self.check()

    def wake_fd(self) -> int:
        """A descriptor that becomes readable on :meth:`cancel` (for waits on ``select``)."""
        with self._lock:
            if self._pipe is None:
                r, w = os.pipe()
                os.set_blocking(w, False)
                self._pipe = (r, w)
                if self._cancelled is not None:
                    os.write(w, b"x")
            return self._pipe[0]

    def close(self) -> None:
        """The request is over: a later cancel touches nothing (its connection may serve another)."""
        with self._lock:
            self._closed = True
            self._socks.clear()
            pipe, self._pipe = self._pipe, None
        if pipe is not None:
            for fd in pipe:
                os.close(fd)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket's own shutdown, not SSLSocket's (which also drops its TLS object while another
    # thread may be reading through it): the blocked recv/send returns, the TLS layer sees EOF.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass  # not connected yet, or already closed


# --- the network backend: httpcore's socket operations, each within the request's deadline --------


class GuardedStream(httpcore.NetworkStream):
    """A TCP (or TLS) connection whose every wait is clamped to the current :class:`Call`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def _timeout(self, asked: float | None, reading: bool) -> tuple[Call | None, float | None]:
        call = _CURRENT.get()
        if call is None:
            return None, asked
        if reading:
            call.begin_answer()
        call.attach(self._sock)
        return call, call.clamp(asked)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        call, wait = self._timeout(timeout, reading=True)
        try:
            self._sock.settimeout(wait)
            data = self._sock.recv(max_bytes)
        except OSError as exc:
            if call is not None:
                call.check()
            if isinstance(exc, TimeoutError):
                raise httpcore.ReadTimeout(str(exc) or "timed out") from exc
            raise httpcore.ReadError(str(exc)) from exc
        if call is not None:
            if not data:  # a cancel's shutdown reads as the end of the stream
                call.check()
            call.received += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            call, wait = self._timeout(timeout, reading=False)
            try:
                self._sock.settimeout(wait)
                n = self._sock.send(view)
            except OSError as exc:
                if call is not None:
                    call.check()
                if isinstance(exc, TimeoutError):
                    raise httpcore.WriteTimeout(str(exc) or "timed out") from exc
                raise httpcore.WriteError(str(exc)) from exc
            if call is not None:
                call.sent += n
            view = view[n:]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        call, wait = self._timeout(timeout, reading=False)
        try:
            self._sock.settimeout(wait)
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except OSError as exc:
            self.close()
            if call is not None:
                call.check()
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout(str(exc) or "timed out") from exc
            raise httpcore.ConnectError(str(exc)) from exc
        return GuardedStream(tls)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "socket":
            return self._sock
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "is_readable":  # an idle kept-alive connection with something to read is dead
            try:
                return bool(select.select([self._sock], [], [], 0)[0])
            except (OSError, ValueError):
                return True
        return None


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend for the upload client: connects without outliving the request's
    deadline or a cancel (a non-blocking connect waited for with ``select``), and hands out
    :class:`GuardedStream` connections."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        call = _CURRENT.get()
        wait = call.clamp(timeout) if call is not None else timeout
        try:
            sock = _connect(host, port, wait, local_address, call)
        except OSError as exc:
            if call is not None:
                call.check()
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout(str(exc) or "timed out") from exc
            raise httpcore.ConnectError(str(exc)) from exc
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return GuardedStream(sock)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for uploads")

    def sleep(self, seconds: float) -> None:
        call = _CURRENT.get()
        if call is not None:
            call.sleep(seconds)
        else:
            time.sleep(seconds)


def _connect(
    host: str, port: int, timeout: float | None, local_address: str | None, call: Call | None
) -> socket.socket:
    """A connected TCP socket, trying each address in turn within one ``timeout``."""
    end = None if timeout is None else time.monotonic() + timeout
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            if call is not None:
                call.attach(sock)
            if local_address:
                sock.bind((local_address, 0))
            sock.setblocking(False)
            rc = sock.connect_ex(address)
            if rc in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                _wait_connected(sock, end, call)
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc:
                raise OSError(rc, os.strerror(rc))
            sock.setblocking(True)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            if call is not None:
                call.check()
            last = exc
    raise last or OSError(errno.EHOSTUNREACH, f"no address for {host}")


def _wait_connected(sock: socket.socket, end: float | None, call: Call | None) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    if call is not None:
        poller.register(call.wake_fd(), select.POLLIN)
    left = None if end is None else end - time.monotonic()
    if left is not None and left <= 0:
        raise TimeoutError("timed out")
    ready = poller.poll(None if left is None else left * 1000)
    if call is not None:
        call.check()
    if not ready:
        raise TimeoutError("timed out")


class GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport (its request/response and exception mapping) over a connection pool
    that uses :class:`GuardedBackend`. ``HTTPTransport`` takes no backend, so its pool is replaced."""

    def __init__(self) -> None:
        ctx = httpx.create_ssl_context()
        super().__init__(verify=ctx)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ctx,
            max_connections=10,
            max_keepalive_connections=4,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(),
        )


# --- reading an answer -----------------------------------------------------------------------------------


def read_answer(r: httpx.Response, cap: int = MAX_ANSWER_BYTES) -> Answer:
    """At most ``cap`` bytes of the (decoded) body; whatever follows is never read."""
    decode = _decoder(r.headers.get("content-encoding", ""))
    body = bytearray()
    truncated = False
    for chunk in r.iter_raw():
        body += decode(chunk, cap + 1 - len(body))
        if len(body) > cap:
            truncated = True
            break
    headers = {k.lower(): v for k, v in r.headers.items()}
    return Answer(r.status_code, headers, bytes(body[:cap]), truncated)


def _decoder(encoding: str) -> Callable[[bytes, int], bytes]:
    """A bounded decoder for the Content-Encoding (we ask for identity; a gzip bomb is cut at the
    cap, never inflated whole). Unknown encodings pass as they are (and fail the contract)."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(47 if encoding != "deflate" else 15)

        def inflate(data: bytes, room: int) -> bytes:
            try:
                return d.decompress(data, max(1, room))
            except zlib.error:
                return data

        return inflate
    return lambda data, room: data[: max(0, room)]


# --- HTTP targets ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long one request may take, all told: connect, the body at a slow link's pace, the answer."""

    connect_s: float
    answer_s: float
    bytes_per_s: float

    @classmethod
    def from_settings(cls, u: UploadSettings) -> Deadlines:
        pace = MIN_LINK_BYTES_PER_S
        if u.bandwidth_kbps:
            pace = min(pace, u.bandwidth_kbps * 1000 / 8 / 1.5)  # the cap's pace, with room
        return cls(u.connect_timeout_seconds, u.timeout_seconds, pace)

    def for_body(self, size: int) -> float:
        return self.connect_s + size / self.bytes_per_s + self.answer_s


class HttpSession:
    """Requests bounded (:meth:`exchange`) and cancellable (:meth:`cancel` from another thread): the
    HTTP targets are built on it, and so is anything else of ``upload`` that speaks HTTP (the
    Sonoran unit operations), each with its own client and connections."""

    def __init__(self, u: UploadSettings) -> None:
        self.client = http_client(u)
        self.deadlines = Deadlines.from_settings(u)
        self.bytes_per_s = u.bandwidth_kbps * 1000 / 8
        self._lock = threading.Lock()
        self._call: Call | None = None
        self._cancelled: str | None = None
        #: The last request made (its byte counts, for diagnostics and tests).
        self.last_call: Call | None = None

    def arm(self) -> None:
        with self._lock:
            self._cancelled = None

    def cancel(self, why: str) -> None:
        with self._lock:
            self._cancelled = why
            call = self._call
        if call is not None:
            call.cancel(why)

    def exchange(self, method: str, url: str, *, body_bytes: int = 0, **kwargs: Any) -> Answer:
        """One request, its answer read within the cap and the deadline. Raises ``httpx.HTTPError``
        (``answers.RequestCancelled``, ``answers.DeadlineExceeded`` among them)."""
        call = Call(self.deadlines.for_body(body_bytes), self.deadlines.answer_s)
        with self._lock:
            if self._cancelled is not None:
                raise RequestCancelled(self._cancelled)
            self._call = call
        try:
            with call, self.client.stream(method, url, **kwargs) as r:
                return read_answer(r)
        finally:
            with self._lock:
                self._call = None
            self.last_call = call

    def failed(self, exc: BaseException) -> Verdict:
        """The verdict on a request of this session that raised ``exc``: ``answers.classify_error``,
        told whether the request had gone out whole (the answer was being read: ``Call.answering``,
        set by the first read, which httpcore makes only once the body is written)."""
        call = self.last_call
        return classify_error(exc, body_sent=call is not None and call.answering)

    def close(self) -> None:
        self.client.close()


class HttpTarget(HttpSession, Target):
    """A target speaking HTTP: its requests bounded (:meth:`exchange`) and cancellable (the
    :class:`~edged.upload.target.Target` hooks ``arm``, ``cancel`` and ``close`` are the session's)."""

    def __init__(self, settings: Settings) -> None:
        Target.__init__(self, settings)
        HttpSession.__init__(self, settings.upload)


class ThrottledFile:
    """A read-only file whose reads keep to ``bytes_per_s`` on average (the optional bandwidth cap).
    It keeps ``fileno`` so httpx still learns the length (Content-Length) without reading it. Its
    pauses end early when the request is cancelled or out of time."""

    def __init__(self, f: BinaryIO, bytes_per_s: float) -> None:
        self._f, self._rate = f, bytes_per_s
        self._start: float | None = None
        self._sent = 0

    def read(self, n: int = -1) -> bytes:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._sent / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            call = _CURRENT.get()
            call.sleep(delay) if call is not None else time.sleep(delay)
        block = self._f.read(n)
        self._sent += len(block)
        return block

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        self._start, self._sent = None, 0
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def endpoint_of(url: str) -> tuple[str, int]:
    """(host, port) of a base URL, for the reachability probe."""
    u = urlsplit(url)
    return u.hostname or "", u.port or (443 if u.scheme == "https" else 80)


def http_client(u: UploadSettings) -> httpx.Client:
    """An HTTP client with the upload timeouts (suited to cellular links), no redirects, answers
    asked for unencoded, over :class:`GuardedTransport` (requests bounded by a :class:`Call`)."""
    return httpx.Client(
        timeout=httpx.Timeout(
            connect=u.connect_timeout_seconds,
            read=u.timeout_seconds,
            write=u.timeout_seconds,
            pool=u.connect_timeout_seconds,
        ),
        follow_redirects=False,
        transport=GuardedTransport(),
        headers={"User-Agent": f"edged/{__version__}", "Accept-Encoding": "identity"},
    )
