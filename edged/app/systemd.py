"""systemd service protocol: readiness, watchdog, status line, stopping.

The daemon tells systemd (``Type=notify``) through sd_notify(3), by systemd-python's
``systemd.daemon.notify``:

- ``READY=1`` once the camera delivers frames and the first segment is on disk (synced);
- ``WATCHDOG=1`` only while frames go through the recorder: encoded and written (or, when the
  storage is full of protected footage, deliberately not stored, which is policy, not a hang).
  A camera that hangs or a disk that blocks stops the pings, and systemd restarts the service
  after ``WatchdogSec=``;
- ``STATUS=`` a one-line human summary, shown by ``systemctl status edged``;
- ``STOPPING=1`` as soon as a stop is requested, while the open segment is finalised.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger("edged.service")

try:
    from systemd.daemon import notify as _sd_notify
except ImportError:  # pragma: no cover - systemd-python is a dependency; a bare checkout may lack it
    _sd_notify = None


def watchdog_interval_s(env: Mapping[str, str] = os.environ) -> float | None:
    """systemd's ``WatchdogSec=`` for this process (sd_watchdog_enabled(3)): None when off."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (e.g. the one that exec'd us)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class ServiceNotifier:
    """What the daemon says to systemd. ``send`` is sd_notify; tests may pass their own."""

    def __init__(self, send: Callable[[str], bool] | None = None, env: Mapping[str, str] = os.environ) -> None:
        self.enabled = bool(env.get("NOTIFY_SOCKET")) and (send is not None or _sd_notify is not None)
        self._send = send or _sd_notify
        self.watchdog_s = watchdog_interval_s(env) if self.enabled else None
        self.is_ready = False
        self._last_status = ""
        if env.get("NOTIFY_SOCKET") and _sd_notify is None and send is None:
            log.warning(
                "NOTIFY_SOCKET is set but systemd-python is missing: systemd will not hear "
                "readiness or watchdog pings (install python3-systemd)"
            )

    def _notify(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            self._send(message)
        except OSError as exc:  # the manager went away; nothing to do but say it once in a while
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        if not self.is_ready:
            self.is_ready = True
            self._last_status = status
            self._notify(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._notify(f"STATUS={text}")

    def watchdog(self) -> None:
        if self.watchdog_s is not None:
            self._notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping: finalising the open segment") -> None:
        self._last_status = status
        self._notify(f"STOPPING=1\nSTATUS={status}")
