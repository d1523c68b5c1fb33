"""What systemd listens on for sd_notify(3): an AF_UNIX datagram socket, here bound by a test or a
benchmark and handed to the daemon as ``$NOTIFY_SOCKET``, exactly as systemd does.

Every message is kept with the monotonic time it arrived, so a test reads readiness, watchdog pings
and status lines off the real protocol, and a benchmark times process start to ``READY=1``.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.support import load_factor


class NotifySocket:
    """Binds ``path``; collects every message (``KEY=value`` lines) with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str) -> list[float]:
        return [t for t, f in list(self.messages) if key in f]

    def first(self, key: str) -> dict[str, str] | None:
        return next((f for _, f in list(self.messages) if key in f), None)

    def wait_for(self, key: str, timeout: float) -> float:
        """The arrival time of the first message carrying ``key``; fails after ``timeout`` (stretched
        with the machine's load)."""
        deadline = time.monotonic() + timeout * load_factor()
        while time.monotonic() < deadline:
            t = self.times(key)
            if t:
                return t[0]
            time.sleep(0.005)
        raise AssertionError(f"no {key} within {timeout} s; got {[f for _, f in self.messages]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
