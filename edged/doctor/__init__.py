"""``edged doctor``: is this machine ready to record and deliver, and if not, what to fix.

Each check gives ``ok``, ``warn`` (works, but not as intended) or ``fail`` (the daemon will not
record or deliver), a one-line summary of what was found and a one-line fix. Nothing is changed,
and no secret is ever printed.

Doctor looks at things as the service sees them: under systemd the unit sets
``$STATE_DIRECTORY`` and ``$CREDENTIALS_DIRECTORY``; run by hand with the service's configuration
(``--config /etc/edged/edged.toml``) and those unset, it takes the unit's folders
(``/var/lib/edged``, ``/etc/edged/credentials``), as the installer lays them out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.config import schema as config_mod

OK, WARN, FAIL = "ok", "warn", "fail"

#: The installed service's paths (scripts/install-pi.sh, systemd/edged.service).
SERVICE_CONFIG = Path("/etc/edged/edged.toml")
SERVICE_STATE_DIR = Path("/var/lib/edged")
SERVICE_CREDENTIALS = Path("/etc/edged/credentials")
SERVICE_UNIT = "edged.service"
SERVICE_USER = "edged"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    summary: str
    fix: str = ""


@dataclass(frozen=True)
class Host:
    """Where doctor looks on this machine; tests point these at prepared files."""

    systemd_dir: Path = Path("/run/systemd/system")  # present when systemd is PID 1 (sd_booted)
    asound_pcm: Path = Path("/proc/asound/pcm")
    snd_dir: Path = Path("/dev/snd")
    video_globs: tuple[str, ...] | None = None  # None: where the v4l2 source looks (v4l2.DEVICE_GLOBS)
    gpiochip_glob: str = "/dev/gpiochip*"
    service_user: str = SERVICE_USER
    timedatectl: str = "timedatectl"
    systemctl: str = "systemctl"
    probe_timeout: float = 2.0
    #: How long the GPS check waits for a fix from gpsd (a receiver reports once a second).
    gps_wait: float = 4.0
    #: Returns the picamera2 module (None: import the real one).
    import_picamera2: Callable[[], Any] | None = None
    #: How long the camera check waits for a Pi camera to open and deliver its first frame.
    camera_wait: float = 10.0
    #: Extra environment the service would have (STATE_DIRECTORY, CREDENTIALS_DIRECTORY).
    service_env: dict[str, str] = field(default_factory=dict)


def service_env(config_path: Path | None) -> dict[str, str]:
    """What systemd sets for the unit, when doctor checks the service's own configuration."""
    if config_path is None or Path(config_path).absolute() != SERVICE_CONFIG:
        return {}
    env = {}
    if "STATE_DIRECTORY" not in os.environ:
        env["STATE_DIRECTORY"] = str(SERVICE_STATE_DIR)
    if "CREDENTIALS_DIRECTORY" not in os.environ:
        env["CREDENTIALS_DIRECTORY"] = str(SERVICE_CREDENTIALS)
    return env


@contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` added, restored afterwards (config defaults read it)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(config_path: Path | None, host: Host | None = None) -> list[Check]:
    """Every check, in the order a person fixes things: configuration, storage, devices, system."""
    from edged.doctor import devices, files, system

    host = host or Host(service_env=service_env(config_path))
    with environ(host.service_env):
        cfg_check, settings, targets = files.check_config(config_path)
        checks = [cfg_check]
        if settings is None:
            needs = "not checked: the configuration does not load"
            checks += [
                Check(name, WARN, needs, "fix the configuration first")
                for name in ("storage", "credentials", "gpio", "gps")
            ]
            defaults = config_mod.Settings()
            checks += [devices.check_camera(defaults.camera, host), devices.check_microphone(defaults.audio, host)]
        else:
            checks.append(files.check_storage(settings, host))
            checks += files.check_credentials(settings, targets, host)
            checks += [
                devices.check_camera(settings.camera, host),
                devices.check_microphone(settings.audio, host),
                devices.check_gpio(settings.gpio, host),
                devices.check_gps(settings.gps, host),
            ]
        checks += [
            system.check_clock(host),
            system.check_network(settings, targets, host),
            system.check_service(host, settings, targets),
        ]
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def as_json(checks: list[Check]) -> str:
    return json.dumps({"ok": not failed(checks), "checks": [asdict(c) for c in checks]}, indent=2)


def as_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:4}  {c.name:{width}}  {c.summary}")
        if c.fix and c.status != OK:
            lines.append(f"{'':4}  {'':{width}}  fix: {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append(
        f"edged doctor: {fails} failed, {warns} warning{'' if warns == 1 else 's'}, {len(checks) - fails - warns} ok"
    )
    return "\n".join(lines)
