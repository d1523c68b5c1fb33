"""Doctor's checks of the system around edged: clock, network, the systemd service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from edged.config.schema import Settings
from edged.doctor import FAIL, OK, SERVICE_STATE_DIR, SERVICE_UNIT, WARN, Check, Host

#: Upload targets that talk to a server, and the settings section holding its base_url.
NETWORK_TARGETS = ("sonoran_v2", "sonoran_legacy", "bota")


def _properties(cmd: list[str]) -> dict[str, str] | None:
    """``KEY=value`` lines of a command's output; None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip()
    except OSError:
        return "unknown"


# --- clock -------------------------------------------------------------------------------------

CLOCK_WHY = "until then manifests mark wall-clock times unsynchronised"


def check_clock(host: Host) -> Check:
    props = _properties([host.timedatectl, "show", "-p", "NTP", "-p", "NTPSynchronized"])
    if props is not None and "NTPSynchronized" in props:
        if props["NTPSynchronized"] == "yes":
            return Check("clock", OK, "synchronised (timedatectl: NTPSynchronized=yes)")
        if props.get("NTP") != "yes":
            return Check(
                "clock", WARN, f"not synchronised and NTP is off ({CLOCK_WHY})", "sudo timedatectl set-ntp true"
            )
        return Check(
            "clock",
            WARN,
            f"not synchronised yet: NTP is on but no time server answered ({CLOCK_WHY})",
            "give it network; `timedatectl timesync-status` shows the server tried",
        )
    from edged.core.clock import SystemClock

    if SystemClock().synchronized():
        return Check("clock", OK, "synchronised (kernel adjtimex status; timedatectl unavailable)")
    return Check(
        "clock",
        WARN,
        f"not synchronised (kernel adjtimex status; timedatectl unavailable; {CLOCK_WHY})",
        "run an NTP client (systemd-timesyncd, chrony) or add a real-time clock",
    )


# --- network -----------------------------------------------------------------------------------


def endpoints(settings: Settings | None, targets: tuple[str, ...]) -> list[tuple[str, int]]:
    """(host, port) of each configured upload target that talks to a server."""
    out = []
    for target in targets:
        if settings is None or target not in NETWORK_TARGETS:
            continue
        url = urlsplit(getattr(settings.upload, target).base_url)
        if url.hostname:
            out.append((url.hostname, url.port or (443 if url.scheme == "https" else 80)))
    return sorted(set(out))


def check_network(settings: Settings | None, targets: tuple[str, ...], host: Host) -> Check:
    from edged.upload.network import probe, usable_interfaces

    interfaces = usable_interfaces()
    if not interfaces:
        return Check(
            "network",
            WARN,
            "no network interface is up: clips wait in the outbox until one is",
            "connect Ethernet, Wi-Fi (nmtui, raspi-config) or an LTE modem",
        )
    servers = endpoints(settings, targets)
    unreachable = [f"{h}:{p}" for h, p in servers if not probe(h, p, host.probe_timeout)]
    up = f"up: {', '.join(interfaces)}"
    if unreachable:
        return Check(
            "network",
            WARN,
            f"{up}; no TCP connection to {', '.join(unreachable)}",
            "check DNS, firewall or captive portal (clips wait in the outbox meanwhile)",
        )
    return Check("network", OK, up + (f"; reached {', '.join(f'{h}:{p}' for h, p in servers)}" if servers else ""))


# --- service -----------------------------------------------------------------------------------


def written_folders(settings: Settings, targets: tuple[str, ...]) -> list[Path]:
    """Folders the daemon writes: the state folder, a delivery folder, a synced folder."""
    folders = [settings.state_dir]
    if "directory" in targets:
        folders.append(settings.delivery_dir)
    if settings.sync.dir:
        folders.append(Path(settings.sync.dir))
    return [f.absolute() for f in folders]


def _sandboxed(settings: Settings | None, targets: tuple[str, ...], props: dict[str, str]) -> list[Path]:
    """Folders the unit's ProtectSystem=strict leaves read-only: not under its StateDirectory=
    (/var/lib/edged) nor any ReadWritePaths= (a drop-in)."""
    if settings is None:
        return []
    writable = [SERVICE_STATE_DIR] + [Path(p.lstrip("-+")) for p in props.get("ReadWritePaths", "").split()]
    return [f for f in written_folders(settings, targets) if not any(f == w or w in f.parents for w in writable)]


def check_service(host: Host, settings: Settings | None = None, targets: tuple[str, ...] = ()) -> Check:
    if not host.systemd_dir.is_dir():
        return Check(
            "systemd",
            WARN,
            f"systemd is not running here (PID 1 is {_pid1()}): {SERVICE_UNIT} cannot be checked",
            "on the device, sudo scripts/install-pi.sh installs it",
        )
    props = _properties(
        [
            host.systemctl,
            "show",
            "-p",
            "LoadState",
            "-p",
            "UnitFileState",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            "-p",
            "Result",
            "-p",
            "NRestarts",
            "-p",
            "ReadWritePaths",
            SERVICE_UNIT,
        ]
    )
    if props is None:
        return Check("systemd", WARN, f"`{host.systemctl} show {SERVICE_UNIT}` failed", "run doctor as root")
    if props.get("LoadState") == "not-found":
        return Check("systemd", WARN, f"{SERVICE_UNIT} is not installed", "sudo scripts/install-pi.sh")
    if props.get("LoadState") != "loaded":
        return Check(
            "systemd",
            FAIL,
            f"{SERVICE_UNIT} does not load (LoadState={props.get('LoadState')})",
            f"systemd-analyze verify /etc/systemd/system/{SERVICE_UNIT}",
        )
    blocked = _sandboxed(settings, targets, props)
    if blocked:
        paths = " ".join(map(str, blocked))
        return Check(
            "systemd",
            FAIL,
            f"{SERVICE_UNIT} may not write {paths} (ProtectSystem=strict: only "
            f"{SERVICE_STATE_DIR} and ReadWritePaths= are writable)",
            f"sudo systemctl edit edged: [Service] ReadWritePaths={paths}; then restart it",
        )
    active, sub = props.get("ActiveState", "?"), props.get("SubState", "?")
    restarts = props.get("NRestarts", "0")
    logs = "journalctl -u edged -b -n 50 says why"
    if active == "failed":
        return Check(
            "systemd",
            FAIL,
            f"{SERVICE_UNIT} failed (Result={props.get('Result')})",
            f"{logs}; then sudo systemctl restart edged",
        )
    if active == "activating" and sub == "auto-restart":
        return Check("systemd", FAIL, f"{SERVICE_UNIT} keeps stopping and restarting ({restarts} restarts)", logs)
    enabled = props.get("UnitFileState") == "enabled"
    if active != "active":
        return Check(
            "systemd",
            WARN,
            f"{SERVICE_UNIT} is {active}" + ("" if enabled else " and not enabled"),
            "sudo systemctl enable --now edged",
        )
    if not enabled:
        return Check(
            "systemd",
            WARN,
            f"{SERVICE_UNIT} runs but is not enabled: it will not start at boot",
            "sudo systemctl enable edged",
        )
    return Check("systemd", OK, f"{SERVICE_UNIT} enabled and running ({sub}, {restarts} restarts)")
