"""Which device's state a command shows when no ``--config`` is given.

Run by hand on a Pi where edged is installed as a service, ``edged status`` or ``edged outbox list``
must show the running service, not an empty ``./edged-state``: a command that says "stopped" while
the daemon records, or lists nothing and exits 0, tells the operator something false.

So the candidates are looked at in this order: the installed service's configuration
(``/etc/edged/edged.toml``, read with the folders systemd gives the unit), then ``configs/edged.toml``
in the working directory (what ``scripts/run`` uses), then the embedded defaults. The first whose
daemon is running (it holds the lock on its state folder) is chosen; when none runs, the first that
exists. The command says on stderr which one it shows, so JSON on stdout stays clean.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from edged.config import schema as config_mod
from edged.core.paths import StatePaths
from edged.doctor import SERVICE_CONFIG, environ, service_env


@dataclass(frozen=True)
class Chosen:
    settings: config_mod.Settings
    path: Path | None  # None: the embedded defaults
    running: bool

    def describe(self) -> str:
        where = str(self.path) if self.path is not None else "the embedded defaults"
        state = "its daemon is running" if self.running else "no daemon is running with it"
        return f"showing {where} (state in {self.settings.state_dir}; {state})"


def daemon_running(state_dir: Path) -> bool:
    """True when a daemon holds the lock of ``state_dir`` (a shared lock taken and dropped at once
    fails only while the daemon's exclusive one is held). A lock file we may not open, or a link
    where it should be, counts as not running: nothing is followed or created."""
    try:
        fd = os.open(StatePaths(state_dir).lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def candidates() -> list[Path | None]:
    found: list[Path | None] = [p for p in (SERVICE_CONFIG, config_mod.DEFAULT_CONFIG_PATH) if p.is_file()]
    return [*found, None]


def load_as_run(path: Path | None) -> config_mod.Settings:
    """The settings as the daemon using ``path`` sees them (the service's folders for the service's
    configuration). Raises ``ConfigError`` for a bad file."""
    with environ(service_env(path)):
        return config_mod.load(path) if path is not None else config_mod.Settings()


def choose() -> Chosen:
    """The configuration a command without ``--config`` shows (see the module's docstring). A bad
    candidate is skipped when another one works; when every candidate fails, the first error is raised."""
    loaded: list[Chosen] = []
    first_error: config_mod.ConfigError | None = None
    for path in candidates():
        try:
            settings = load_as_run(path)
        except config_mod.ConfigError as exc:
            first_error = first_error or exc
            continue
        chosen = Chosen(settings, path, daemon_running(settings.state_dir))
        if chosen.running:
            return chosen
        loaded.append(chosen)
    if first_error is not None and (not loaded or loaded[0].path is None):
        raise first_error
    return loaded[0]
