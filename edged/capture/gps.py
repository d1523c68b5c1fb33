"""GPS through gpsd: the device's position read from gpsd's JSON socket protocol, in a thread.

Why gpsd: it is the receiver-independent, well-kept way to read a GPS on Debian and Raspberry Pi
OS (NMEA, u-blox, SiRF, ... on serial, USB or I2C), and it already does the receiver's work
(autobauding, driver detection, time). Why its socket protocol spoken here rather than its
Python client (Debian's ``python3-gps``): the client lives in the system's site-packages, not on
PyPI, so the venv would need system packages on every machine; it reads whatever gpsd sends
without a bound; and a session is a few lines: connect, send ``?WATCH={"enable":true,"json":true}``
and read one JSON object per line (gpsd_json(5)). Only ``TPV`` (time-position-velocity) reports
are used; ``mode`` 0 and 1 are no fix, 2 a 2D and 3 a 3D fix. ``VERSION`` is kept for the status.

gpsd is an untrusted peer like any socket (it may be something else on that port, or a gpsd fed
by a hostile receiver), so everything it sends is bounded and checked:

* a line is at most ``MAX_LINE_BYTES`` (gpsd's own longest report is 10240 bytes); a longer one,
  or more than ``MAX_LINES_PER_S`` lines in a second, ends the session: it is refused and
  gpsd is reconnected with back-off;
* JSON nesting deeper than ``MAX_JSON_DEPTH`` is refused before the parser recurses into it;
* a TPV's ``mode`` must be an integer 0-3, latitude and longitude finite and in range, its time
  an ISO 8601 UTC instant; the optional fields (altitude, speed, course, error) are kept only
  when finite and plausible. A TPV that claims a fix without a usable position ends the current
  fix: the receiver's latest word is not a position, so there is none;
* a fix is current for ``stale_s`` after it arrived (on the monotonic clock) and never after:
  ``latest()`` then answers None. A peer that stalls mid-line, or says nothing at all, is
  reconnected after ``IDLE_RECONNECT_S``.

Nobody waits for gpsd: the reader has its own thread, and ``latest()``, ``fix_status()`` and
``track()`` only read what it kept, under a lock it never holds across I/O.

Times. A fix carries the receiver's own UTC time (``Fix.wall_s``) and when this device received
it (``Fix.received_wall_s``). The latter is taken on the recording's timeline (``timeline_ns``,
the recorder's monotonic clock) and placed on the wall clock with the offset the footage is
placed by (``wall_offset_ns``): for ``latest()`` when the fix arrived, for ``track()`` when it is
asked, so a clip's track lines up with the clip's wall times even on a Pi whose clock had no
network yet, or was synchronised after the fix arrived. The track keeps at most one fix a second
(``TRACK_STEP_S``) for ``window_s`` seconds: bounded memory, enough for a clip.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edged.capture.position import Fix
from edged.core.states import GpsFix
from edged.core.timefmt import parse_iso

log = logging.getLogger("edged.gps")

#: gpsd's registered port (gpsd(8): it listens on 127.0.0.1:2947 by default).
GPSD_PORT = 2947
#: What the session asks for: reports as JSON objects, one a line.
WATCH = b'?WATCH={"enable":true,"json":true}\n'
#: The longest line read. gpsd's own bound is GPS_JSON_RESPONSE_MAX = 10240 bytes (gps_json.h).
MAX_LINE_BYTES = 16 * 1024
#: Deepest JSON nesting read (a SKY report, the deepest gpsd sends, nests 3).
MAX_JSON_DEPTH = 8
#: More lines than this in one second is a flood, not a receiver (gpsd sends a few a second).
MAX_LINES_PER_S = 200
#: Longest wait for gpsd to accept a connection.
CONNECT_TIMEOUT_S = 2.0
#: How often the reader looks up from a quiet socket (to stop, or to notice silence).
READ_TICK_S = 0.25
#: No complete line for this long: the peer is stalled or gone; reconnect.
IDLE_RECONNECT_S = 30.0
#: Back-off between connection attempts: doubling from the first to the cap, back to the first
#: once a session has lasted ``BACKOFF_RESET_S``.
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0
BACKOFF_RESET_S = 30.0
#: The track keeps at most one fix per this many seconds (of the recording's timeline).
TRACK_STEP_S = 1.0
#: Longest problem text kept for the status.
MAX_PROBLEM = 200

#: What a fix's optional fields may be: (lowest, highest). Outside: not kept (None).
_ALT_M = (-1_000.0, 100_000.0)
_SPEED_MPS = (0.0, 1_000.0)
_TRACK_DEG = (0.0, 360.0)
_EPH_M = (0.0, 1_000_000.0)
#: A TPV's time is "YYYY-MM-DDTHH:MM:SS[.fff]Z"; anything much longer is not one.
_MAX_TIME_CHARS = 40
#: A fix's own time lies between the GPS epoch (1980-01-06) and 2200 (a receiver's week-rollover
#: bug lands inside; garbage does not).
_GPS_ERA_S = (315_964_800.0, 7_258_118_400.0)

_JSON_TOKEN = re.compile(r'["\[\]{}]')
_JSON_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class SessionRefused(Exception):
    """The peer broke a bound that ends the session (an over-long line, a flood)."""


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` opens more than ``limit`` arrays or objects inside one another
    (strings skipped), checked before ``json.loads`` recurses into them."""
    depth, i = 0, 0
    while (m := _JSON_TOKEN.search(text, i)) is not None:
        c, i = m.group(), m.end()
        if c == '"':
            rest = _JSON_STRING_REST.match(text, i)
            if rest is None:
                return False  # an unterminated string: the parser refuses the line
            i = rest.end()
        elif c in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_report(line: bytes) -> dict[str, Any]:
    """One line from gpsd as a JSON object; ValueError saying why it is not one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a line that is not UTF-8") from None
    if json_too_deep(text):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError and huge integers
        raise ValueError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    return doc


def _number(value: Any) -> float | None:
    """A finite JSON number as a float (true and false are not numbers); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _within(value: Any, bounds: tuple[float, float]) -> float | None:
    x = _number(value)
    return x if x is not None and bounds[0] <= x <= bounds[1] else None


def _utc_seconds(value: Any) -> float | None:
    """gpsd's ISO 8601 UTC time ("2024-03-15T12:00:06.000Z") as seconds since the epoch, when it
    is one and falls between the GPS epoch (1980) and 2200."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TIME_CHARS:
        return None
    try:
        t = parse_iso(value).timestamp()
    except (ValueError, OverflowError):
        return None
    return t if _GPS_ERA_S[0] <= t <= _GPS_ERA_S[1] else None


def fix_of(tpv: dict[str, Any]) -> Fix | None:
    """The fix a TPV report gives: None for mode 0 or 1 (no fix) or a fix with no time yet;
    ValueError when the report is not usable (a mode that is not 0-3, a fix without a valid
    position, a time that is not one)."""
    mode = tpv.get("mode")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 3:
        raise ValueError(f"TPV mode must be an integer 0-3, not {_shown(mode)}")
    if mode < 2 or "time" not in tpv:
        # gpsd reports a fix without a time while the receiver has not given the date yet: not a
        # fix to keep (every Fix carries the receiver's time), nor a peer to refuse.
        return None
    lat, lon = _within(tpv.get("lat"), (-90.0, 90.0)), _within(tpv.get("lon"), (-180.0, 180.0))
    if lat is None or lon is None:
        where = f"lat {_shown(tpv.get('lat'))}, lon {_shown(tpv.get('lon'))}"
        raise ValueError(f"TPV fix without a valid position ({where})")
    wall_s = _utc_seconds(tpv.get("time"))
    if wall_s is None:
        raise ValueError(f"TPV fix without a valid time ({_shown(tpv.get('time'))})")
    # gpsd ≥ 3.20 says altMSL (and keeps alt, deprecated, equal to it); only a 3D fix has one.
    alt = _within(tpv.get("altMSL", tpv.get("alt")), _ALT_M) if mode == 3 else None
    return Fix(
        lat=lat,
        lon=lon,
        mode=mode,
        wall_s=wall_s,
        alt_m=alt,
        speed_mps=_within(tpv.get("speed"), _SPEED_MPS),
        track_deg=_within(tpv.get("track"), _TRACK_DEG),
        eph_m=_within(tpv.get("eph"), _EPH_M),
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


class LineReader:
    """Splits a byte stream into lines of at most ``limit`` bytes; a longer one (complete or still
    arriving) raises SessionRefused."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        start = 0
        while (nl := self._buf.find(b"\n", start)) >= 0:
            if nl - start > self.limit:
                break
            lines.append(bytes(self._buf[start:nl]).rstrip(b"\r"))
            start = nl + 1
        del self._buf[:start]
        first = self._buf.find(b"\n")
        if (first if first >= 0 else len(self._buf)) > self.limit:
            raise SessionRefused(f"a line longer than {self.limit} bytes")
        return lines


@dataclass(frozen=True)
class GpsStatus:
    """What the position source says of itself (``edged status``, ``edged doctor``)."""

    fix: GpsFix
    gpsd: str  # host:port
    connected: bool = False
    release: str | None = None  # gpsd's VERSION release, once it said
    lat: float | None = None
    lon: float | None = None
    age_s: float | None = None  # since the current fix arrived
    reports: int = 0  # TPV reports read so far (fix or no fix)
    refused: int = 0  # lines or reports refused so far
    sessions: int = 0  # connections made so far
    problem: str | None = None  # the last thing that went wrong, if any

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fix"] = str(self.fix)
        return out

    def line(self) -> str:
        """One line for people: "3d 51.500700,-0.124600 (0.4 s old)", "no-gpsd: <why>"."""
        if self.lat is not None and self.lon is not None:
            return f"{self.fix} {self.lat:.6f},{self.lon:.6f} ({self.age_s or 0:.1f} s old, gpsd at {self.gpsd})"
        why = f": {self.problem}" if self.problem and self.fix == GpsFix.NO_GPSD else ""
        return f"{self.fix} (gpsd at {self.gpsd}){why}"


def status_line(doc: Any) -> str:
    """A ``gps`` entry of status.json as ``GpsStatus.line`` writes it (read back from a file, so
    anything not of the right type is left out)."""
    if not isinstance(doc, dict):
        return "unknown"
    try:
        fix = GpsFix(str(doc.get("fix")))
    except ValueError:
        return "unknown"
    kept: dict[str, Any] = {}
    for name in ("gpsd", "problem"):
        if isinstance(doc.get(name), str):
            kept[name] = doc[name][:MAX_PROBLEM]
    for name in ("lat", "lon", "age_s"):
        if _number(doc.get(name)) is not None:
            kept[name] = float(doc[name])
    return GpsStatus(fix=fix, **{"gpsd": "?", **kept}).line()


def _real_wall_offset_ns() -> int:
    return time.time_ns() - time.monotonic_ns()


class GpsdPosition:
    """A :class:`~edged.capture.position.PositionSource` reading gpsd, in its own thread.

    ``timeline_ns`` and ``wall_offset_ns`` place what is received on the recording's clock (the
    recorder's ``timeline_now_ns`` and ``best_offset_ns``); by default the machine's monotonic
    and wall clocks."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = GPSD_PORT,
        stale_s: float = 5.0,
        window_s: float = 1800.0,
        *,
        timeline_ns: Callable[[], int] = time.monotonic_ns,
        wall_offset_ns: Callable[[], int] = _real_wall_offset_ns,
        idle_reconnect_s: float = IDLE_RECONNECT_S,
    ) -> None:
        self.host, self.port = host, port
        self.stale_s = stale_s
        self.window_ns = round(window_s * 1e9)
        self.idle_reconnect_s = idle_reconnect_s
        self._timeline_ns = timeline_ns
        self._wall_offset_ns = wall_offset_ns
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        # What the reader keeps (under the lock):
        self._connected = False
        self._release: str | None = None
        self._fix: Fix | None = None
        self._fix_mono = 0.0  # time.monotonic() when it arrived
        self._track: collections.deque[tuple[int, Fix]] = collections.deque(maxlen=int(window_s / TRACK_STEP_S) + 2)
        self._reports = 0
        self._refused = 0
        self._sessions = 0
        self._problem: str | None = None
        self._said: GpsFix | None = None  # the fix status last logged

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    # --- what readers ask (never blocks on gpsd) -----------------------------------------------------

    def latest(self) -> Fix | None:
        """From memory only (the stamp on the picture asks once a second): ``received_wall_s`` as
        placed when the fix arrived."""
        with self._lock:
            return self._current()

    def fix_status(self) -> str:
        with self._lock:
            return self._status_word()

    def track(self, start_wall_s: float, end_wall_s: float) -> list[Fix]:
        offset = self._wall_offset_ns()
        lo, hi = round(start_wall_s * 1e9) - offset, round(end_wall_s * 1e9) - offset
        with self._lock:
            kept = [(rx, fix) for rx, fix in self._track if lo <= rx <= hi]
        return [dataclasses.replace(fix, received_wall_s=(rx + offset) / 1e9) for rx, fix in kept]

    def status(self) -> GpsStatus:
        with self._lock:
            fix = self._current()
            return GpsStatus(
                fix=self._status_word(),
                gpsd=self.peer,
                connected=self._connected,
                release=self._release,
                lat=round(fix.lat, 7) if fix else None,
                lon=round(fix.lon, 7) if fix else None,
                age_s=round(time.monotonic() - self._fix_mono, 2) if fix else None,
                reports=self._reports,
                refused=self._refused,
                sessions=self._sessions,
                problem=self._problem,
            )

    def wait_for(self, pred: Callable[[GpsStatus], bool], timeout: float) -> GpsStatus:
        """Until ``pred(status)`` holds or ``timeout`` passes; the last status either way (for
        ``edged doctor`` and the tests: states, not durations)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            left = deadline - time.monotonic()
            if pred(status) or left <= 0:
                return status
            with self._changed:  # woken at every change; staleness is time, so look again soon
                self._changed.wait(min(left, 0.2))

    def _current(self) -> Fix | None:
        """The fix if it is still current (lock held)."""
        if self._fix is None or time.monotonic() - self._fix_mono > self.stale_s:
            return None
        return self._fix

    def _status_word(self) -> GpsFix:
        if not self._connected:
            return GpsFix.NO_GPSD
        fix = self._current()
        if fix is None:
            return GpsFix.NO_FIX
        return GpsFix.FIX_3D if fix.mode == 3 else GpsFix.FIX_2D

    # --- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name="gps", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._halt.is_set():
            began = time.monotonic()
            try:
                problem = self._session()
            except Exception as exc:  # a reader bug must not end the position for the run
                log.exception("gps reader failed")
                problem = f"reader error: {type(exc).__name__}"
            lasted = time.monotonic() - began
            self._lost(problem)
            if self._halt.is_set():
                break
            if lasted >= BACKOFF_RESET_S:
                delay = BACKOFF_FIRST_S
            log.debug("gpsd at %s: %s; trying again in %.1f s", self.peer, problem, delay)
            if self._halt.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_CAP_S)

    def _session(self) -> str:
        """One connection to gpsd, until it ends; returns why it ended."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            return f"cannot connect: {exc.strerror or exc}"
        with sock:
            self._sock = sock
            try:
                sock.settimeout(READ_TICK_S)
                sock.sendall(WATCH)
                self._connected_now()
                return self._read(sock)
            except SessionRefused as exc:
                self._note_refused(str(exc))
                return f"refused: {exc}"
            except OSError as exc:
                return f"connection lost: {exc.strerror or exc}"
            finally:
                self._sock = None

    def _read(self, sock: socket.socket) -> str:
        reader = LineReader(MAX_LINE_BYTES)
        last_line = time.monotonic()
        second, in_second = int(last_line), 0
        while not self._halt.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() - last_line > self.idle_reconnect_s:
                    return f"no complete line in {self.idle_reconnect_s:g} s"
                self._notify()  # a fix may have gone stale: waiters look again
                continue
            if not data:
                return "gpsd closed the connection"
            for line in reader.feed(data):
                now = time.monotonic()
                if int(now) != second:
                    second, in_second = int(now), 0
                in_second += 1
                if in_second > MAX_LINES_PER_S:
                    raise SessionRefused(f"more than {MAX_LINES_PER_S} lines in a second")
                last_line = now
                if line:
                    self._line(line)
        return "stopped"

    def _line(self, line: bytes) -> None:
        try:
            doc = parse_report(line)
        except ValueError as exc:
            self._note_refused(str(exc))
            return
        cls = doc.get("class")
        if cls == "VERSION":
            release = doc.get("release")
            with self._changed:
                self._release = release[:32] if isinstance(release, str) else None
                self._changed.notify_all()
        elif cls == "TPV":
            try:
                self._report(fix_of(doc))
            except ValueError as exc:  # not a position: the current fix ends with it
                self._report(None, refused=str(exc))

    # --- what the reader keeps -----------------------------------------------------------------------

    def _report(self, fix: Fix | None, refused: str | None = None) -> None:
        """One TPV report taken: the fix it gives (None: none, or ``refused`` saying why), counted
        in the same step, so whoever waits on the counts sees the fix that came with them."""
        rx = self._timeline_ns()
        if fix is not None:
            try:
                fix = dataclasses.replace(fix, received_wall_s=(rx + self._wall_offset_ns()) / 1e9)
            except Exception:  # the recording's clock unreadable (closing): not placed
                log.debug("gps: the recording's wall offset is unreadable", exc_info=True)
        with self._changed:
            self._reports += 1
            first = refused is not None and self._count_refused(refused)
            self._fix = fix
            if fix is not None:
                self._fix_mono = time.monotonic()
                while self._track and self._track[0][0] < rx - self.window_ns:
                    self._track.popleft()
                if not self._track or rx - self._track[-1][0] >= TRACK_STEP_S * 1e9:
                    self._track.append((rx, fix))
            self._changed.notify_all()
            word = self._status_word()
        if refused is not None:
            self._log_refused(refused, first)
        self._say(word)

    def _connected_now(self) -> None:
        with self._changed:
            self._connected = True
            self._sessions += 1
            self._changed.notify_all()
        log.info("gpsd at %s: connected", self.peer)

    def _lost(self, problem: str) -> None:
        with self._changed:
            was = self._connected
            self._connected = False
            self._fix = None  # no gpsd, no current position
            self._problem = problem[:MAX_PROBLEM]
            self._changed.notify_all()
        if was and not self._halt.is_set():
            log.warning("gpsd at %s: %s; reconnecting (no fix meanwhile)", self.peer, problem)
        self._say(GpsFix.NO_GPSD)

    def _note_refused(self, why: str) -> None:
        with self._changed:
            first = self._count_refused(why)
            self._changed.notify_all()
        self._log_refused(why, first)

    def _count_refused(self, why: str) -> bool:
        """(lock held) One more refusal; whether it is the first."""
        self._refused += 1
        self._problem = f"refused from gpsd: {why}"[:MAX_PROBLEM]
        return self._refused == 1

    def _log_refused(self, why: str, first: bool) -> None:
        """The first refusal is a warning, the rest debug: a hostile peer does not flood the journal."""
        (log.warning if first else log.debug)("gpsd at %s: refused %s", self.peer, why)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _say(self, word: GpsFix) -> None:
        """Log a change of the fix status (once per change, not per report)."""
        if word == self._said:
            return
        self._said = word
        log.info("GPS: %s", word)


#: TPV reports without a fix after which ``probe`` says "no fix" (a receiver reports once a second).
PROBE_NO_FIX_REPORTS = 3


def probe(host: str, port: int, stale_s: float, wait_s: float) -> GpsStatus:
    """Connect to gpsd as the daemon does and wait, at most ``wait_s``, until the answer is clear
    (``edged doctor``): a fix; gpsd answering with reports that have none; or no gpsd (the first
    attempt failed, or the session broke a bound)."""

    def clear(s: GpsStatus) -> bool:
        if s.fix in (GpsFix.FIX_2D, GpsFix.FIX_3D):
            return True
        if s.connected:
            return s.reports >= PROBE_NO_FIX_REPORTS
        return s.problem is not None

    source = GpsdPosition(host, port, stale_s, window_s=60.0)
    source.start()
    try:
        return source.wait_for(clear, wait_s)
    finally:
        source.stop()
