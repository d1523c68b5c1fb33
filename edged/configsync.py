"""Remote configuration by file sync: ``<sync.dir>/edged.toml`` dropped by Syncthing, rsync or a person.

The synced file is overlaid key by key on the local config (``config.from_layers``; it may not set
``sync.*`` nor ``storage.dir``), validated whole and, when ``sync.fleet_public_key`` is set, must
carry a valid in-band Ed25519 signature (``configsign``). What may change while running (the
``live`` keys of ``config``) is handed to ``on_apply``; the rest is reported as needing a restart
and takes effect at the next start. A bad file is rejected with every key and reason, once, and the
last good config keeps running. Every outcome is written to ``<sync.dir>/status/config.json`` for
the fleet operator; the last good synced file is kept in the state folder, so a restart comes up
on it even when the synced folder has since received a bad one.

Only ``edged.toml`` itself is ever read: sync tools write elsewhere first (Syncthing
``.syncthing.edged.toml.tmp``, rsync ``.edged.toml.XXXXXX``) and rename. A file written in place is
read only once its size, times and inode have not changed for one poll; one that then fails is
rejected only after a second unchanged poll (a slow writer may have paused), and a good one read
while it was changing is caught by the re-stat after the read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edged import config as config_mod
from edged import configsign
from edged.config import ConfigError, Settings
from edged.journal import Msg, log_event
from edged.files import write_atomic
from edged.status import iso

log = logging.getLogger("edged.configsync")

FILE_NAME = "edged.toml"
#: Where the last good synced file is kept, in the state folder.
SAVED_NAME = "synced-config.toml"
#: A config file is small; anything bigger is not one.
MAX_BYTES = 1 << 20

OnApply = Callable[[Settings, list[str], list[str]], None]
_Stat = tuple[int, int, int, int, int]


class _Rejected(Exception):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {r}" for k, r in problems))
        self.problems = problems


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_layer(local: Settings) -> dict[str, Any]:
    """The local config file's mapping, the layer a synced file goes over: the file the settings
    were loaded from, none for the embedded defaults. ConfigSync checks that it still describes
    ``local`` (a local file edited since the start is refused, not silently mixed in)."""
    origin = Path(local.origin)
    return config_mod.read_mapping(origin) if origin.is_file() else {}


class ConfigSync:
    """Watches ``<sync.dir>/edged.toml``. Call ``startup()`` before building anything from the
    settings (it returns the settings to start with), then ``start()``; ``stop()`` at the end.

    ``on_apply(settings, live_keys, restart_keys)`` runs on the watcher's thread for every newly
    accepted file: ``settings`` is what now runs (the live keys from the new file, every other key
    as the daemon started), ``live_keys`` the keys that changed in it, ``restart_keys`` the keys
    of the accepted file that wait for a restart. If it raises, the file is rejected with that
    reason and the previous settings are kept (``on_apply`` must then leave them in force)."""

    def __init__(self, local: Settings, local_data: Mapping[str, Any] | None, on_apply: OnApply, *,
                 poll_seconds: float | None = None, wall: Callable[[], float] = time.time) -> None:
        if not local.sync.dir:
            raise ValueError("sync.dir is not set")
        self._local_data = dict(local_data or {})
        if config_mod.from_mapping(self._local_data) != local:
            raise ValueError("local_data is not the mapping the local settings were built from")
        self.local = local
        self.on_apply = on_apply
        self.poll_seconds = poll_seconds if poll_seconds is not None else local.sync.poll_seconds
        self.wall = wall
        self.path = Path(local.sync.dir) / FILE_NAME
        self.status_path = Path(local.sync.dir) / "status" / "config.json"
        self.saved_path = local.state_dir / SAVED_NAME
        self._key = (configsign.load_public_key(local.sync.fleet_public_key)
                     if local.sync.fleet_public_key else None)
        self._boot = local          # what runs for the keys that need a restart
        self._current = local       # what runs
        self._applied_version: str | None = None
        self._restart_needed: list[str] = []
        self._rejected_version: str | None = None
        self._last_stat: _Stat | None = None
        self._stable_polls = 0
        self._evaluated: _Stat | None = None
        self._last_status: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the daemon reads ---------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force (local, or local under the last good synced file)."""
        return self._current

    @property
    def applied_version(self) -> str | None:
        return self._applied_version

    @property
    def last_status(self) -> dict[str, Any] | None:
        return self._last_status

    # --- start, thread, stop -----------------------------------------------------------------

    def startup(self) -> Settings:
        """The settings to start with: the synced file when it is there, complete and good, else
        the last good one kept in the state folder, else the local settings. Synchronous; calls
        no ``on_apply``."""
        try:
            saved = self.saved_path.read_bytes()
        except FileNotFoundError:
            saved = None
        except OSError as exc:
            log.error("last good synced config %s cannot be read: %s", self.saved_path, exc.strerror or exc)
            saved = None
        if saved is not None:
            try:
                self._boot = self._current = self._validate(saved)
                self._applied_version = version_of(saved)
                log.info("starting on the last good synced config %s", self._applied_version[:12])
            except _Rejected as exc:
                log.error("last good synced config %s no longer passes (%s); starting on the local config",
                          self.saved_path, exc)
        st = self._stat()
        # Written in place right now? Leave it to the watcher, which waits until it stops changing.
        if st is not None and self.wall() - st[2] / 1e9 > 2 * self.poll_seconds:
            data = self._read(st)
            if data is not None:
                self._last_stat, self._stable_polls = st, 2
                self._evaluate(data, st, at_start=True)
        return self._current

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="configsync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # the watcher must outlive any surprise; the daemon records on
                log.exception("config sync: unexpected error; watching on")
            if self._stop.wait(self.poll_seconds):
                return

    # --- one look at the folder --------------------------------------------------------------

    def poll(self) -> None:
        st = self._stat()
        if st is None:
            if self._last_stat is not None:
                log.info("%s removed; the config in force stays", self.path)
            self._last_stat, self._stable_polls = None, 0
            return
        if st != self._last_stat:  # new or still changing: look again next poll
            self._last_stat, self._stable_polls = st, 0
            return
        self._stable_polls += 1
        if st == self._evaluated:
            return
        data = self._read(st)
        if data is not None:
            self._evaluate(data, st, at_start=False)

    def _stat(self) -> _Stat | None:
        try:
            s = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s cannot be looked at: %s", self.path, exc.strerror or exc)
            return None
        return (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_dev)

    def _read(self, st: _Stat) -> bytes | OSError | None:
        """The file's bytes (or why it cannot be read); None when it changed while being read
        (looked at again once it is stable)."""
        data: bytes | OSError
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            data = exc
        if self._stat() != st:
            self._last_stat, self._stable_polls = None, 0
            return None
        return data

    # --- judging and applying ----------------------------------------------------------------

    def _validate(self, data: bytes | OSError) -> Settings:
        if isinstance(data, OSError):
            raise _Rejected([("<file>", f"cannot be read: {data.strerror or data}")])
        if len(data) > MAX_BYTES:
            raise _Rejected([("<file>", f"is larger than {MAX_BYTES} bytes")])
        body = data
        if self._key is not None:
            try:
                body = configsign.verify(data, self._key)
            except configsign.SignatureError as exc:
                raise _Rejected([(configsign.SIGNATURE_KEY, str(exc))]) from None
        try:
            parsed = tomllib.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Rejected([("<file>", "is not UTF-8 text")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise _Rejected([("<syntax>", str(exc))]) from None
        origin = f"{self.local.origin} + {self.path} ({version_of(data)[:12]})"
        try:
            new = config_mod.from_layers(self._local_data, parsed, origin, signed=self._key is not None)
        except ConfigError as exc:
            raise _Rejected(exc.problems) from None
        if new.sync != self.local.sync or new.storage.dir != self.local.storage.dir:  # from_layers' promise
            raise _Rejected([("sync", "can only be set in the local config")])
        return new

    def _evaluate(self, data: bytes | OSError, st: _Stat, *, at_start: bool) -> None:
        version = version_of(data) if isinstance(data, bytes) else None
        if version == self._applied_version:
            self._evaluated = st
            self._write_status("unchanged", version, [], [])
            return
        if version is not None and version == self._rejected_version:  # the same bad bytes: reported already
            self._evaluated = st
            return
        try:
            new = self._validate(data)
        except _Rejected as exc:
            if self._stable_polls < 2:  # perhaps a writer that paused mid-file: one more look
                return
            self._reject(version, st, exc.problems)
            return
        assert version is not None and isinstance(data, bytes)  # an unreadable file never validates
        if at_start:
            self._boot = self._current = new
            self._accept(version, st, data, [], [])
            return
        running = config_mod.overlay_live(self._boot, new)
        if config_mod.cross_check(running):
            # The new live values do not fit what runs until a restart (say a clip length against
            # the running keyframe interval): all of the file waits for the restart.
            running = self._current
        live = config_mod.changed_keys(self._current, running)
        restart = config_mod.changed_keys(running, new)  # accepted, not in force until a restart
        try:
            self.on_apply(running, live, restart)
        except Exception as exc:  # noqa: BLE001 - any failure to apply is a rejection with its reason
            log.exception("applying synced config %s failed", version[:12])
            self._reject(version, st, [("<apply>", f"{type(exc).__name__}: {exc}")])
            return
        self._current = running
        self._accept(version, st, data, live, restart)

    def _accept(self, version: str, st: _Stat, data: bytes, live: list[str], restart: list[str]) -> None:
        self._applied_version, self._evaluated, self._rejected_version = version, st, None
        self._restart_needed = restart
        try:
            self.saved_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.saved_path, data, durable=True)
        except OSError as exc:
            log.error("last good synced config not kept in %s: %s (a restart would fall back)",
                      self.saved_path, exc.strerror or exc)
        log_event(log, Msg.CONFIG_APPLIED, "synced config %s applied: %s%s", version[:12],
                  ", ".join(live) or "nothing changed live",
                  f"; needs a restart: {', '.join(restart)}" if restart else "",
                  config=version, keys=",".join(live) or None, restart_needed=",".join(restart) or None)
        self._write_status("applied", version, live, [])

    def _reject(self, version: str | None, st: _Stat, problems: list[tuple[str, str]]) -> None:
        self._rejected_version, self._evaluated = version, st
        log_event(log, Msg.CONFIG_REJECTED, "synced config %s rejected, %s keeps running:\n%s",
                  (version or "(unreadable)")[:12],
                  self._applied_version[:12] if self._applied_version else "the local config",
                  "\n".join(f"  {k}: {r}" for k, r in problems), level=logging.ERROR,
                  config=version, key=",".join(k for k, _ in problems),
                  reason="; ".join(f"{k}: {r}" for k, r in problems))
        self._write_status("rejected", version, [], problems)

    def _write_status(self, state: str, version: str | None, live: list[str], problems: list[tuple[str, str]]) -> None:
        status = {
            "state": state,
            "version": version,
            "applied_version": self._applied_version,
            "at": iso(int(self.wall() * 1e9)),
            "restart_needed": self._restart_needed,
            "applied_keys": live,
            "errors": [{"key": k, "reason": r} for k, r in problems],
            "device": self._current.device.id,
        }
        self._last_status = status
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.status_path, (json.dumps(status, indent=1) + "\n").encode())
        except OSError as exc:
            log.warning("config status not written to %s: %s", self.status_path, exc.strerror or exc)
