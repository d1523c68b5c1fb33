"""Remote configuration by file sync: ``<sync.dir>/edged.toml`` dropped by Syncthing, rsync or a person.

The synced file is overlaid key by key on the local config (``config.from_layers``), validated
whole and held to the trust model of ``config``: unsigned it may only move ``tunable`` keys within
bounds that cannot keep less evidence; ``signed`` keys need the fleet's signature; ``local`` keys
(``sync.*``, ``storage.dir``) it may never set. When ``sync.fleet_public_key`` is set every synced
file must carry a valid in-band Ed25519 signature (``configsign``) whose serial is above the last
one accepted (kept durably in the state folder, so an older signed config cannot be replayed, not
even across a restart) and whose device list, when it has one, names this device's local
``device.id``. What may change while running (the ``live`` keys of ``config``) is handed to
``on_apply``; the rest is reported as needing a restart and takes effect at the next start.

Why so defensive: whoever controls the sync party controls this file, and the file must never
stop the recording. So every failure while reading, parsing, judging or applying a file — a
link, a FIFO, ``/dev/zero``, a huge or deeply nested file, an exception nobody foresaw — is a
rejection of that file with its reason, written once to ``<sync.dir>/status/config.json`` and
logged once (not once per poll); the last good config keeps running, and the last good synced
file is kept in the state folder, so a restart comes up on it even when the synced folder has
since received a bad one. Every read and write in the synced folder goes through
``syncfolder.SyncFolder`` (no link followed, reads bounded, a FIFO never waited on); a name there
edged refuses raises the alarm ``syncfolder.ALARM`` through ``on_alarm``.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.config import schema as config_mod
from edged.config.schema import ConfigError, Settings
from edged.core.files import Refused, read_bounded, write_atomic
from edged.core.journal import Msg, log_event, scrub_doc
from edged.core.syncfolder import ALARM, CONFIG_NAME, SyncFolder
from edged.core.timefmt import iso

if TYPE_CHECKING:
    from edged.config import sign as configsign

log = logging.getLogger("edged.configsync")

FILE_NAME = CONFIG_NAME
STATUS_NAME = "config.json"
#: Where the last good synced file is kept, in the state folder.
SAVED_NAME = "synced-config.toml"
#: Where the serial of the last accepted signed config is kept, in the state folder.
SERIAL_NAME = "synced-config.serial"
#: A config file is small; anything bigger is not one.
MAX_BYTES = config_mod.MAX_FILE_BYTES

SERIAL_KEY = "<serial>"
DEVICES_KEY = "<devices>"

OnApply = Callable[[Settings, list[str], list[str]], None]
OnAlarm = Callable[[str, bool], None]
_Stat = tuple[int, int, int, int, int, int]


def _no_alarm(name: str, active: bool) -> None:
    """The default ``on_alarm``: the daemon passes its own."""


class Rejected(Exception):
    """A synced file that is not taken; ``problems`` lists (key, reason) pairs, each naming a
    config key or one of ``<file>``, ``<syntax>``, ``<signature>``, ``<serial>``, ``<devices>``,
    ``<apply>``, ``<internal>``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {r}" for k, r in config_mod.bounded(problems)))
        self.problems = problems


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_layer(local: Settings) -> dict[str, Any]:
    """The local config file's mapping, the layer a synced file goes over: the file the settings
    were loaded from, none for the embedded defaults. ConfigSync checks that it still describes
    ``local`` (a local file edited since the start is refused, not silently mixed in)."""
    origin = Path(local.origin)
    return config_mod.read_mapping(origin) if origin.is_file() else {}


def _stat_key(s: os.stat_result) -> _Stat:
    return (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_dev, s.st_mode)


def _why(exc: OSError) -> str:
    """An OSError as a reason: a Refused says what and where; others their strerror."""
    if isinstance(exc, Refused):
        return exc.why
    if isinstance(exc, FileNotFoundError):
        return "vanished while being read"
    return f"cannot be read: {exc.strerror or exc}"


class ConfigSync:
    """Watches ``<sync.dir>/edged.toml``. Call ``startup()`` before building anything from the
    settings (it returns the settings to start with; it never raises nor blocks on the synced
    folder), then ``start()``; ``stop()`` at the end.

    ``on_apply(settings, live_keys, restart_keys)`` runs on the watcher's thread for every newly
    accepted file: ``settings`` is what now runs (the live keys from the new file, every other key
    as the daemon started), ``live_keys`` the keys that changed in it, ``restart_keys`` the keys
    of the accepted file that wait for a restart. If it raises, the file is rejected with that
    reason and the previous settings are kept (``on_apply`` must then leave them in force).

    ``on_alarm(name, active)`` is told when ``syncfolder.ALARM`` rises (a name in the synced folder
    is refused: ``edged.toml`` a link, a FIFO, a device or too big; ``status/`` a link) and when
    it clears; it must not raise (if it does, that is logged and ignored)."""

    def __init__(
        self,
        local: Settings,
        local_data: Mapping[str, Any] | None,
        on_apply: OnApply,
        *,
        poll_seconds: float | None = None,
        wall: Callable[[], float] = time.time,
        on_alarm: OnAlarm = _no_alarm,
    ) -> None:
        if not local.sync.dir:
            raise ValueError("sync.dir is not set")
        self._local_data = dict(local_data or {})
        if config_mod.from_mapping(self._local_data) != local:
            raise ValueError("local_data is not the mapping the local settings were built from")
        self.local = local
        self.on_apply = on_apply
        self.on_alarm = on_alarm
        self.poll_seconds = poll_seconds if poll_seconds is not None else local.sync.poll_seconds
        self.wall = wall
        self.folder = SyncFolder(Path(local.sync.dir), local.sync.status_group)
        self.path = self.folder.root / FILE_NAME
        self.status_path = self.folder.root / "status" / STATUS_NAME
        self.saved_path = local.state_dir / SAVED_NAME
        self.serial_path = local.state_dir / SERIAL_NAME
        self._key = None
        if local.sync.fleet_public_key:
            # Only with a fleet key: the signature code brings cryptography (~7 MB resident).
            from edged.config import sign as configsign

            self._key = configsign.load_public_key(local.sync.fleet_public_key)
        self._boot = local  # what runs for the keys that need a restart
        self._current = local  # what runs
        self._applied_version: str | None = None
        self._restart_needed: list[str] = []
        self._rejected_version: str | None = None
        self._last_stat: _Stat | None = None
        self._stable_polls = 0
        self._evaluated: _Stat | None = None
        self._last_status: dict[str, Any] | None = None
        self._status_pending: bytes | None = None
        self._serial, self._serial_version = self._load_serial()
        self._refused: set[str] = set()  # what holds the alarm up: "config", "status"
        self._said: dict[str, str] = {}  # topic -> the last thing logged about it (said once)
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

    @property
    def last_serial(self) -> int:
        """The serial of the last signed config accepted (0: none yet)."""
        return self._serial

    # --- start, thread, stop -----------------------------------------------------------------

    def startup(self) -> Settings:
        """The settings to start with: the synced file when it is there, complete and good, else
        the last good one kept in the state folder, else the local settings. Synchronous; calls
        no ``on_apply``; never raises: whatever goes wrong is said, and the daemon records."""
        try:
            self._start_on_saved()
        except Exception as exc:  # noqa: BLE001 - start-up must never die of a synced file
            self._say(
                "saved",
                logging.ERROR,
                "last good synced config not used (%s: %s); starting on the local config",
                type(exc).__name__,
                exc,
            )
            self._boot = self._current = self.local
            self._applied_version = None
        try:
            st = self._stat()
            # Written in place right now? Leave it to the watcher, which waits until it stops changing.
            if st is not None and self.wall() - st[2] / 1e9 > 2 * self.poll_seconds:
                data = self._read(st)
                if data is not None:
                    self._last_stat, self._stable_polls = st, 2
                    self._evaluate(data, st, at_start=True)
        except Exception as exc:  # noqa: BLE001
            self._say(
                "startup",
                logging.ERROR,
                "synced config not looked at during start-up (%s: %s); recording on %s",
                type(exc).__name__,
                exc,
                self._running_name(),
            )
        return self._current

    def _start_on_saved(self) -> None:
        try:
            saved = read_bounded(self.saved_path, MAX_BYTES)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._say(
                "saved", logging.ERROR, "last good synced config %s cannot be read: %s", self.saved_path, _why(exc)
            )
            return
        try:
            # Edged wrote it after accepting it: judged again (the key or the local config may have
            # changed), but its serial is not held against the one recorded with it.
            new, serial = self._validate(saved, version_of(saved), replay_check=False)
        except Rejected as exc:
            self._say(
                "saved",
                logging.ERROR,
                "last good synced config %s no longer passes (%s); starting on the local config",
                self.saved_path,
                exc,
            )
            return
        self._boot = self._current = new
        self._applied_version = version_of(saved)
        if serial is not None and serial > self._serial:
            self._serial, self._serial_version = serial, self._applied_version
        log.info("starting on the last good synced config %s", self._applied_version[:12])

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
            self.poll()
            if self._stop.wait(self.poll_seconds):
                return

    # --- one look at the folder --------------------------------------------------------------

    def poll(self) -> None:
        """One look at the folder. Never raises: the watcher outlives any surprise, and says so once."""
        try:
            self._retry_status()
            self._poll()
        except Exception as exc:  # noqa: BLE001
            self._say("poll", logging.ERROR, "config sync: unexpected %s: %s; watching on", type(exc).__name__, exc)
        else:
            self._said.pop("poll", None)

    def _poll(self) -> None:
        st = self._stat()
        if st is None:
            if self._last_stat is not None:
                log.info("%s removed; the config in force stays", self.path)
            self._last_stat, self._stable_polls = None, 0
            self._set_refused("config", False)
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
        """``edged.toml`` itself (a link is not followed); None when it (or the folder) is absent."""
        try:
            s = self.folder.config_stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._say("stat", logging.WARNING, "%s cannot be looked at: %s", self.path, exc.strerror or exc)
            return None
        self._said.pop("stat", None)
        return None if s is None else _stat_key(s)

    def _read(self, st: _Stat) -> bytes | OSError | None:
        """The file's bytes (or why it cannot be read: a Refused for a link, a FIFO, a device or a
        file too big); None when it changed while being read (looked at again once stable)."""
        data: bytes | OSError
        try:
            data, fst = self.folder.read_config(MAX_BYTES)
        except FileNotFoundError:
            self._last_stat, self._stable_polls = None, 0
            return None
        except OSError as exc:
            data, fst = exc, None
        if (fst is not None and _stat_key(fst) != st) or self._stat() != st:
            self._last_stat, self._stable_polls = None, 0
            return None
        return data

    # --- judging ------------------------------------------------------------------------------

    def judge(self, data: bytes) -> Settings:
        """What ``data`` as ``edged.toml`` would run as (signature, serial, devices, parse, trust
        model, rules); raise Rejected otherwise. No side effects: nothing is applied or kept."""
        return self._validate(data, version_of(data))[0]

    def _validate(
        self, data: bytes | OSError, version: str | None, *, replay_check: bool = True
    ) -> tuple[Settings, int | None]:
        """(the settings ``data`` gives, its serial when signed), or Rejected naming every problem."""
        if isinstance(data, OSError):
            raise Rejected([("<file>", _why(data))])
        if len(data) > MAX_BYTES:
            raise Rejected([("<file>", f"is larger than {MAX_BYTES} bytes")])
        body, serial = data, None
        if self._key is not None:
            signed = self._verify(data)
            if replay_check:
                self._check_serial(signed.serial, version)
            self._check_devices(signed.devices)
            body, serial = signed.body, signed.serial
        origin = f"{self.local.origin} + {self.path} ({(version or '')[:12]})"
        try:
            parsed = config_mod.parse_toml(body, origin)
            new = config_mod.from_layers(self._local_data, parsed, origin, signed=self._key is not None)
        except ConfigError as exc:
            raise Rejected(exc.problems) from None
        except RecursionError:
            raise Rejected([("<file>", "nested too deeply")]) from None
        if new.sync != self.local.sync or new.storage.dir != self.local.storage.dir:  # from_layers' promise
            raise Rejected([("sync", config_mod.LOCAL_REASON)])
        return new, serial

    def _verify(self, data: bytes) -> configsign.Signed:
        from edged.config import sign as configsign

        assert self._key is not None
        try:
            return configsign.verified(data, self._key)
        except configsign.SignatureError as exc:
            raise Rejected([(configsign.SIGNATURE_KEY, str(exc))]) from None

    def _check_serial(self, serial: int, version: str | None) -> None:
        """A serial above the last accepted; the same serial only for the very same bytes."""
        if serial > self._serial or (serial == self._serial and version == self._serial_version):
            return
        raise Rejected(
            [
                (
                    SERIAL_KEY,
                    f"serial {serial} is not above {self._serial}, the last accepted: an older "
                    f"signed config (replayed?); sign it again (the serial defaults to the "
                    f"time of signing)",
                )
            ]
        )

    def _check_devices(self, devices: tuple[str, ...]) -> None:
        me = self.local.device.id
        if devices and me not in devices:
            shown = ", ".join(devices[:10]) + (f" and {len(devices) - 10} more" if len(devices) > 10 else "")
            raise Rejected([(DEVICES_KEY, f"is signed for {shown}, not for this device ({me!r}, the local device.id)")])

    # --- applying -----------------------------------------------------------------------------

    def _evaluate(self, data: bytes | OSError, st: _Stat, *, at_start: bool) -> None:
        version = version_of(data) if isinstance(data, bytes) else None
        try:
            self._evaluate_checked(data, version, st, at_start=at_start)
        except Exception as exc:
            log.exception("judging synced config %s failed", (version or "(unreadable)")[:12])
            self._reject(version, st, [("<internal>", config_mod.short(f"{type(exc).__name__}: {exc}", 300))])

    def _evaluate_checked(self, data: bytes | OSError, version: str | None, st: _Stat, *, at_start: bool) -> None:
        self._set_refused("config", isinstance(data, Refused))
        if version == self._applied_version and version is not None:
            self._evaluated = st
            self._write_status("unchanged", version, [], [])
            return
        if version is not None and version == self._rejected_version:  # the same bad bytes: reported already
            self._evaluated = st
            return
        try:
            new, serial = self._validate(data, version)
        except Rejected as exc:
            if self._stable_polls < 2:  # perhaps a writer that paused mid-file: one more look
                return
            self._reject(version, st, exc.problems)
            return
        assert version is not None and isinstance(data, bytes)  # an unreadable file never validates
        if at_start:
            self._boot = self._current = new
            self._accept(version, serial, st, data, [], [])
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
        except Exception as exc:
            log.exception("applying synced config %s failed", version[:12])
            self._reject(version, st, [("<apply>", config_mod.short(f"{type(exc).__name__}: {exc}", 300))])
            return
        self._current = running
        self._accept(version, serial, st, data, live, restart)

    def _accept(
        self, version: str, serial: int | None, st: _Stat, data: bytes, live: list[str], restart: list[str]
    ) -> None:
        self._applied_version, self._evaluated, self._rejected_version = version, st, None
        self._restart_needed = restart
        try:
            self.saved_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.saved_path, data, durable=True)
        except OSError as exc:
            log.error(
                "last good synced config not kept in %s: %s (a restart would fall back)",
                self.saved_path,
                exc.strerror or exc,
            )
        if serial is not None:
            self._keep_serial(serial, version)
        log_event(
            log,
            Msg.CONFIG_APPLIED,
            "synced config %s applied: %s%s",
            version[:12],
            ", ".join(live) or "nothing changed live",
            f"; needs a restart: {', '.join(restart)}" if restart else "",
            config=version,
            keys=",".join(live) or None,
            restart_needed=",".join(restart) or None,
        )
        self._write_status("applied", version, live, [])

    def _reject(self, version: str | None, st: _Stat, problems: list[tuple[str, str]]) -> None:
        self._rejected_version, self._evaluated = version, st
        shown = config_mod.bounded(problems)
        log_event(
            log,
            Msg.CONFIG_REJECTED,
            "synced config %s rejected, %s keeps running: %s",
            (version or "(unreadable)")[:12],
            self._running_name(),
            "; ".join(f"{k}: {r}" for k, r in shown),
            level=logging.ERROR,
            config=version,
            key=",".join(k for k, _ in shown),
            reason="; ".join(f"{k}: {r}" for k, r in shown),
        )
        self._write_status("rejected", version, [], shown)

    def _running_name(self) -> str:
        return f"synced config {self._applied_version[:12]}" if self._applied_version else "the local config"

    # --- the serial of the last signed config accepted -------------------------------------------

    def _load_serial(self) -> tuple[int, str | None]:
        try:
            doc = json.loads(read_bounded(self.serial_path, 4096))
            serial, version = doc["serial"], doc.get("version")
            if isinstance(serial, bool) or not isinstance(serial, int) or serial < 0:
                raise ValueError(f"serial {serial!r}")
            return serial, version if isinstance(version, str) else None
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Written atomically, so only tampering gets here; the kept config's serial still counts.
            log.error(
                "%s cannot be used (%s); the last good synced config's serial is the floor", self.serial_path, exc
            )
            return 0, None

    def _keep_serial(self, serial: int, version: str) -> None:
        self._serial, self._serial_version = serial, version
        doc = json.dumps({"serial": serial, "version": version}) + "\n"
        try:
            write_atomic(self.serial_path, doc.encode(), durable=True)
        except OSError as exc:
            log.error(
                "serial of the accepted signed config not kept in %s: %s (the kept config's serial "
                "still counts after a restart)",
                self.serial_path,
                exc.strerror or exc,
            )

    # --- telling the fleet: status/config.json, the alarm, the log --------------------------------

    def _write_status(self, state: str, version: str | None, live: list[str], problems: list[tuple[str, str]]) -> None:
        status = {
            "state": state,
            "version": version,
            "applied_version": self._applied_version,
            "serial": self._serial if self._key is not None else None,
            "at": iso(int(self.wall() * 1e9)),
            "restart_needed": self._restart_needed,
            "applied_keys": live,
            "errors": [{"key": k, "reason": r} for k, r in problems],
            "device": self._current.device.id,
        }
        self._last_status = status
        self._status_pending = (json.dumps(scrub_doc(status), indent=1) + "\n").encode()
        self._retry_status()

    def _retry_status(self) -> None:
        """Write the status not yet written (at once, then at every poll until it goes through)."""
        if self._status_pending is None:
            return
        try:
            self.folder.write_status(STATUS_NAME, self._status_pending)
        except Refused as exc:
            self._set_refused("status", True)
            self._say("status", logging.ERROR, "config status not written: %s", exc)
            return
        except (OSError, KeyError) as exc:  # KeyError: sync.status_group names no group (any more)
            self._say(
                "status",
                logging.WARNING,
                "config status not written to %s: %s",
                self.status_path,
                getattr(exc, "strerror", None) or exc,
            )
            return
        self._status_pending = None
        self._said.pop("status", None)
        self._set_refused("status", False)

    def _set_refused(self, what: str, refused: bool) -> None:
        before = bool(self._refused)
        self._refused.add(what) if refused else self._refused.discard(what)
        if bool(self._refused) != before:
            try:
                self.on_alarm(ALARM, bool(self._refused))
            except Exception as exc:  # noqa: BLE001 - the daemon's callback must not stop the watcher
                self._say(
                    "alarm",
                    logging.ERROR,
                    "alarm %s not %s: on_alarm failed: %s: %s",
                    ALARM,
                    "raised" if self._refused else "cleared",
                    type(exc).__name__,
                    exc,
                )

    def _say(self, topic: str, level: int, msg: str, *args: Any) -> None:
        """Log ``msg`` unless the same was last said about ``topic``: once, not once per poll."""
        text = msg % args
        if self._said.get(topic) == text:
            return
        self._said[topic] = text
        log.log(level, "%s", text)
