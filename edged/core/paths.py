"""Where each file of a daemon lives, in one place: the state folder, and its runtime folder.

The state folder (``storage.dir``) is on the SD card and holds what must survive: segments, clips,
the stores, the lock. What is rewritten all the time and means nothing after a reboot, the status
file and the control socket, lives in a *runtime folder* in memory instead (an SD card wears by
what is written to it):

* under systemd, the unit's ``RuntimeDirectory=edged`` (``$RUNTIME_DIRECTORY``, ``/run/edged``);
* otherwise a folder on tmpfs named after the state folder (so two daemons never share one):
  ``$XDG_RUNTIME_DIR/edged/<key>`` when the session has one, else ``/dev/shm/edged-<uid>/<key>``,
  ``<key>`` the first 16 hex digits of the sha256 of the state folder's resolved path;
* the state folder itself when none of these can be used (see :mod:`edged.core.runtime`).

Readers (``edged status``, ``edged mark``, ``edged which``) cannot know which of these a daemon
chose (the CLI has no ``$RUNTIME_DIRECTORY``), so the daemon records it once at start in the state
folder (``runtime.path``, rewritten only when it changes) and :attr:`StatePaths.runtime` reads it
back. The last status of a run is left in the state folder when the daemon stops
(:attr:`StatePaths.last_status`, one write per run), so ``edged status`` still shows what a
stopped daemon counted after a reboot.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edged.core.files import read_bounded

#: The longest runtime path read back from ``runtime.path``.
MAX_RUNTIME_PATH = 1024


@dataclass(frozen=True)
class StatePaths:
    """Where everything lives in a state folder (``root``) and in the runtime folder."""

    root: Path
    #: The runtime folder, when the caller knows it (the daemon passes the one it made); None:
    #: the one the running (or last) daemon recorded in ``runtime.path``.
    run: Path | None = None

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def index(self) -> Path:
        return self.root / "index.sqlite"

    @property
    def runtime_pointer(self) -> Path:
        """Where the daemon records its runtime folder (one line: an absolute path)."""
        return self.root / "runtime.path"

    @property
    def runtime(self) -> Path:
        """The runtime folder: the one given, else the one recorded, else the state folder."""
        if self.run is not None:
            return self.run
        return recorded_runtime(self.runtime_pointer) or self.root

    @property
    def status(self) -> Path:
        """The running daemon's status document (in memory, rewritten when it changes)."""
        return self.runtime / "status.json"

    @property
    def last_status(self) -> Path:
        """The status a daemon left when it stopped (in the state folder: survives a reboot)."""
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        return self.root / "edged.lock"

    @property
    def clips(self) -> Path:
        return self.root / "clips"

    @property
    def events(self) -> Path:
        return self.root / "events.sqlite"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.sqlite"

    @property
    def control(self) -> Path:
        return self.runtime / "control.sock"


def recorded_runtime(pointer: Path) -> Path | None:
    """The runtime folder recorded in ``pointer``, None when there is none or it is not one (a
    bounded read, no link followed: an absolute path on one line)."""
    try:
        text = read_bounded(pointer, MAX_RUNTIME_PATH).decode()
    except (OSError, UnicodeDecodeError):
        return None
    line = text.strip()
    if not line or "\n" in line or "\0" in line or not line.startswith("/"):
        return None
    return Path(line)


def default_runtime(root: Path, env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The runtime folder a daemon of state folder ``root`` uses, and whether it is given (systemd
    made it and removes it) rather than made by edged. See the module's docstring."""
    env = os.environ if env is None else env
    given = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if given.startswith("/"):
        return Path(given), True
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/") and os.path.isdir(xdg):
        return Path(xdg) / "edged" / key, False
    return Path("/dev/shm") / f"edged-{os.getuid()}" / key, False
