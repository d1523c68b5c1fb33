"""What the GPS tests talk to: a real gpsd fed by gpsfake from an NMEA log the tests carry, and
hostile peers on 127.0.0.1 that speak garbage where gpsd should be.

``gpsfake`` (Debian ``gpsd-clients``) starts its own ``gpsd`` (Debian ``gpsd``) on the port given
(``-P``), makes a pty, tells that gpsd to read it and writes the log into it, sentence by sentence
(``-c``: seconds between sentences), from the top again when it ends. ``-n`` makes gpsd read the
pty at once rather than when the first client watches, so a fix is there whoever connects first.
It runs as root without ``-u`` (the pty is world-readable). gpsfake is started in a session of its
own, so ending it (its process group, by the id it was given) ends its gpsd with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
#: A minute's walk along Whitehall, London: GGA + RMC once a second, 3D fix.
WALK = DATA / "gps_walk.nmea"
#: A receiver indoors: GGA quality 0, RMC void.
NOFIX = DATA / "gps_nofix.nmea"
#: Where the walk goes (degrees), with a margin: every fix read from it lies inside.
WALK_LAT = (51.50325, 51.50425)
WALK_LON = (-0.12675, -0.12625)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Gpsfake:
    """gpsfake and its gpsd on ``port``, replaying ``log``."""

    def __init__(self, log: Path, port: int | None = None, cycle: float = 0.1) -> None:
        if shutil.which("gpsfake") is None or shutil.which("gpsd") is None:
            pytest.fail("gpsfake/gpsd not installed: scripts/setup --test installs gpsd and gpsd-clients")
        if not log.is_file():  # gpsfake would start, find nothing to replay and end: say why here
            pytest.fail(f"no NMEA log at {log}")
        self.log, self.port, self.cycle = log, port or free_port(), cycle
        self._err = tempfile.TemporaryFile()
        self._tmp = tempfile.mkdtemp(prefix="gpsfake-")  # its gpsd's control socket goes there
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Gpsfake:
        self.proc = subprocess.Popen(
            ["gpsfake", "-q", "-n", "-P", str(self.port), "-c", str(self.cycle), str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            start_new_session=True,
            env={**os.environ, "TMPDIR": self._tmp},
        )
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"gpsfake exited ({self.proc.returncode}): {self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gpsfake's gpsd did not listen on {self.port} within {timeout:g} s")
            time.sleep(0.05)
        return self

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        """gpsfake and its gpsd (one process group, the one started here) ended, and the port free."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 10
        while listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Gpsfake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._err.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


# --- hostile peers -----------------------------------------------------------------------------------

VERSION = b'{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}\n'


def tpv(
    lat: str = "51.5034", lon: str = "-0.1267", mode: str = "3", time_: str = '"2024-03-15T12:00:30.000Z"'
) -> bytes:
    """A TPV line as gpsd writes it, each value given as the JSON text to put there."""
    return (
        f'{{"class":"TPV","device":"/dev/ttyACM0","mode":{mode},"time":{time_},"lat":{lat},"lon":{lon},"alt":21.5}}\n'
    ).encode()


class HostilePeer:
    """A plain TCP server on 127.0.0.1 where gpsd should be: each connection is handed to
    ``speak(conn, halt)``, in a thread of its own; counts the connections made."""

    def __init__(self, speak: Callable[[socket.socket, threading.Event], None]) -> None:
        self.speak = speak
        self.connections = 0
        self.halt = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, name="hostile-gpsd", daemon=True)
        self._conns: list[socket.socket] = []

    def _serve(self) -> None:
        while not self.halt.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        try:
            self.speak(conn, self.halt)
        except OSError:
            pass  # the reader hung up on us: what it should do

    def __enter__(self) -> HostilePeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self._server.close()
        self._thread.join(5)
        for c in self._conns:
            c.close()


def over_long_line(conn: socket.socket, halt: threading.Event) -> None:
    """A VERSION, then a line that never ends (1 MB of it)."""
    conn.sendall(VERSION)
    chunk = b'{"class":"TPV","junk":"' + b"x" * 65536
    for _ in range(16):
        if halt.is_set():
            return
        conn.sendall(chunk)
    halt.wait()


def deep_json(conn: socket.socket, halt: threading.Event) -> None:
    """TPV-looking lines nested thousands deep (within the line bound), over and over."""
    conn.sendall(VERSION)
    line = b'{"class":"TPV","mode":3,"x":' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    while not halt.wait(0.05):
        conn.sendall(line)


def bad_values(conn: socket.socket, halt: threading.Event) -> None:
    """Fix reports whose values are not a position: NaN, out of range, strings, a bool mode, a
    date that is not one, a huge number, a list for an object."""
    conn.sendall(VERSION)
    lines = [
        tpv(lat="NaN"),
        tpv(lat="91.5"),
        tpv(lon="-180.5"),
        tpv(lat="Infinity"),
        tpv(lat='"51.5"'),
        tpv(mode="true"),
        tpv(mode='"3"'),
        tpv(mode="7"),
        tpv(time_='"yesterday"'),
        tpv(time_='"1970-01-01T00:00:00Z"'),
        tpv(lat="1e999"),
        tpv(lat="9" * 5000),
        b'[{"class":"TPV"}]\n',
        b"\xff\xfe not utf-8\n",
    ]
    while not halt.is_set():
        for line in lines:
            conn.sendall(line)
        if halt.wait(0.1):
            return


def stall(conn: socket.socket, halt: threading.Event) -> None:
    """Half a line, then nothing, the connection held open."""
    conn.sendall(VERSION + b'{"class":"TPV","mode":3,"lat":51.5')
    halt.wait()


def one_fix_then_silence(conn: socket.socket, halt: threading.Event) -> None:
    """A good fix, then nothing more on an open connection (a receiver unplugged behind gpsd)."""
    conn.sendall(VERSION + tpv())
    halt.wait()


def flood(conn: socket.socket, halt: threading.Event) -> None:
    """Good fix reports as fast as the socket takes them."""
    block = VERSION + tpv() * 500
    while not halt.is_set():
        conn.sendall(block)


@contextmanager
def hostile(speak: Callable[[socket.socket, threading.Event], None]) -> Iterator[HostilePeer]:
    with HostilePeer(speak) as peer:
        yield peer
