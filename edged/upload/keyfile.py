"""An API key read from its file (``api_key_file`` or a systemd credential) only when the file changes.

Why: the key decides which request budget a request counts under (``budget.key_fingerprint``) and
whether a target paused for a refused key may try again, so it is asked for before every request
and, while a target is paused, twice a second. Reading the file each time would be cheap enough,
but ``stat`` is cheaper and tells the same: the file is read again only when its identity, size or
times change (an edit in place, a new file renamed over it, a credentials folder mounted anew by a
restart). A stat poll rather than inotify: it needs no ctypes into libc, it sees a file replaced
by rename and a folder remounted, and it runs only where something waits for a change.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from edged.config.schema import read_secret
from edged.upload.budget import key_fingerprint

#: Read again at least this often even when stat shows no change (a same-size rewrite within the
#: file system's time granularity).
REREAD_S = 5.0


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


class KeyFile:
    """The key in ``path`` (stripped; "" when absent or unreadable), re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, ...] | None | bool = False  # False: never looked
        self._read_at = 0.0
        self._key = ""

    def read(self) -> str:
        if self.path is None:
            return ""
        sig = _signature(self.path)
        with self._lock:
            if sig != self._seen or time.monotonic() - self._read_at > REREAD_S:
                self._key = _read(self.path) if sig is not None else ""
                self._seen, self._read_at = sig, time.monotonic()
            return self._key

    def fingerprint(self) -> str:
        """The budget identity of the key now in the file."""
        return key_fingerprint(self.read())


def _read(path: Path) -> str:
    try:
        return read_secret(path).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
