"""Real Syncthing (Debian's ``syncthing``) on loopback, for the sync-folder tests and the benchmark.

Each instance has its own ``--home`` (keys, config, database), its GUI/REST API on 127.0.0.1 with
an API key set here, its sync protocol listening on 127.0.0.1 only, and every way out of the
machine switched off: global and local discovery, relays, NAT traversal (UPnP/NAT-PMP), STUN,
usage reporting, crash reporting, upgrades. Peers are introduced with explicit
``tcp://127.0.0.1:<port>`` addresses. Everything is configured through the REST API, as an
operator's tooling would, and every wait is for a state the REST API reports (connections,
``/rest/db/status``, ``/rest/db/completion``, ``/rest/db/file``) with a deadline, never a sleep.

The edged folder set-up (README, "Syncthing"): per device two Syncthing folders,

* ``<device>-config``: the fleet's ``send only`` folder, the device's ``receive only`` folder at
  ``sync.dir``, carrying ``edged.toml`` and ``recall/*.json`` from the fleet to the device; the
  device ignores ``/status`` (the other folder) and ``/recall/processed`` (edged's own);
* ``<device>-status``: the device's ``send only`` folder at ``<sync.dir>/status``, the fleet's
  ``receive only`` folder, carrying edged's answers back; the device ignores edged's temporaries.

So each direction has exactly one writer: a device cannot change the fleet's config or requests,
the fleet cannot change what a device reported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import reachable

SYNCTHING = "syncthing"

#: The ``.stignore`` of the device's config folder (``sync.dir``, receive only): the status folder
#: is another Syncthing folder; ``recall/processed/`` is edged's (owner-only: Syncthing running
#: as another user could not even read it).
DEVICE_CONFIG_IGNORES = ("/status", "/recall/processed")
#: The ``.stignore`` of the device's status folder (``<sync.dir>/status``, send only): edged's own
#: temporaries (``edged.core.files``: ``.<final name>.<8 hex digits>.tmp``), which a kill
#: mid-write can leave behind; renamed into place before Syncthing should ever see them.
DEVICE_STATUS_IGNORES = (".*.????????.tmp",)
#: The fleet's config folder holds the device's status folder inside it (the same layout as on
#: the device), so it ignores it; and ``edged config sign -o`` writes through edged's atomic
#: writer, so its temporaries are ignored there too.
FLEET_CONFIG_IGNORES = ("/status", *DEVICE_STATUS_IGNORES)

#: Options that keep an instance on loopback: nothing is announced, relayed, mapped or reported.
LOOPBACK_OPTIONS: dict[str, Any] = {
    "globalAnnounceEnabled": False,
    "localAnnounceEnabled": False,
    "relaysEnabled": False,
    "natEnabled": False,
    "stunServers": [],
    "stunKeepaliveStartS": 0,
    "urAccepted": -1,
    "crashReportingEnabled": False,
    "autoUpgradeIntervalH": 0,
    "startBrowser": False,
    "announceLANAddresses": False,
    "setLowPriority": False,
    "reconnectionIntervalS": 1,
}


def unavailable() -> str:
    """Why real Syncthing cannot run here ('' when it can)."""
    if shutil.which(SYNCTHING) is None:
        return "syncthing is not installed (apt-get install syncthing; scripts/setup --test installs it)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class Folder:
    """A Syncthing folder as the REST API takes it (fields not named keep Syncthing's defaults)."""

    id: str
    path: Path
    type: str  # sendreceive, sendonly, receiveonly
    ignores: Sequence[str] = ()
    watcher_delay_s: int = 1
    rescan_s: int = 60
    ignore_perms: bool = True


@dataclass(frozen=True)
class RunAs:
    """Run a child as another user (root only): its uid, primary gid, supplementary gids, umask."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    umask: int = 0o022

    def popen_kw(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups), "umask": self.umask}


def popen_kw(run_as: RunAs | None) -> dict[str, Any]:
    return {} if run_as is None else run_as.popen_kw()


class Syncthing:
    """One Syncthing instance, its home under ``root``. ``start()`` / ``stop()``; ``api()`` talks REST.
    ``run_as``: the user it runs as (default: this process's)."""

    def __init__(self, root: Path, name: str, run_as: RunAs | None = None) -> None:
        self.name = name
        self.run_as = run_as
        self.home = root / name
        self.home.mkdir(parents=True, exist_ok=True)
        self.gui_port = free_port()
        self.listen_port = free_port()
        self.api_key = f"edged-test-{name}-{os.urandom(8).hex()}"
        self.log_path = self.home / "syncthing.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.device_id = self._generate()

    # --- life ---------------------------------------------------------------------------------

    def _generate(self) -> str:
        out = subprocess.run(
            [SYNCTHING, "generate", f"--home={self.home}", "--no-default-folder", "--skip-port-probing"],
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=60,
            check=True,
        )
        # The GUI address and key go into config.xml before the first start (never a default port).
        cfg = self.home / "config.xml"
        tree = ET.parse(cfg)
        gui = tree.getroot().find("gui")
        assert gui is not None
        gui.find("address").text = f"127.0.0.1:{self.gui_port}"  # type: ignore[union-attr]
        gui.find("apikey").text = self.api_key  # type: ignore[union-attr]
        opts = tree.getroot().find("options")
        assert opts is not None
        for el in opts.findall("listenAddress"):
            el.text = f"tcp://127.0.0.1:{self.listen_port}"
        for key in ("globalAnnounceEnabled", "localAnnounceEnabled", "relaysEnabled", "natEnabled", "startBrowser"):
            opts.find(key).text = "false"  # type: ignore[union-attr]
        opts.find("urAccepted").text = "-1"  # type: ignore[union-attr]
        opts.find("crashReportingEnabled").text = "false"  # type: ignore[union-attr]
        opts.find("autoUpgradeIntervalH").text = "0"  # type: ignore[union-attr]
        tree.write(cfg)
        if self.run_as is not None:  # its home is its own
            for p in (self.home, *self.home.rglob("*")):
                os.chown(p, self.run_as.uid, self.run_as.gid)
        for line in out.stdout.splitlines() + out.stderr.splitlines():
            if line.startswith("Device ID:"):
                return line.split(":", 1)[1].strip()
        me = tree.getroot().find("device")
        assert me is not None
        return str(me.get("id"))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ST")}
        env.update(HOME=str(self.home), STNOUPGRADE="1", STNORESTART="1", STNODEFAULTFOLDER="1")
        return env

    def start(self, timeout: float = 60) -> Syncthing:
        return self.launch().wait_up(timeout)

    def launch(self) -> Syncthing:
        """Start the process (``wait_up`` waits for it: many instances start side by side)."""
        with open(self.log_path, "ab") as log:
            self.proc = self._serve(log)
        return self

    def wait_up(self, timeout: float = 60) -> Syncthing:
        self.wait(self._pings, timeout, "REST API answering")
        self.api("PATCH", "/rest/config/options", LOOPBACK_OPTIONS)
        return self

    def _serve(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                SYNCTHING,
                "serve",
                f"--home={self.home}",
                "--no-browser",
                "--no-restart",
                "--no-upgrade",
                f"--gui-address=http://127.0.0.1:{self.gui_port}",
                f"--gui-apikey={self.api_key}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
            **popen_kw(self.run_as),
        )

    def _pings(self) -> bool:
        try:
            return self.api("GET", "/rest/system/ping", timeout=2).get("ping") == "pong"
        except (OSError, ApiError):
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the monitor and its Syncthing (their own session)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Syncthing:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"syncthing {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """Every process of this instance: ``syncthing serve`` runs a monitor and the Syncthing
        process proper, both in the session it was started in."""
        assert self.proc is not None
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == self.proc.pid:
                        out.append(int(entry))
                except OSError:
                    continue
        return out

    def sockets(self) -> list[tuple[str, str, str]]:
        """(protocol, local address, peer address) of every TCP and UDP socket this instance has
        open (``ss``), to check it keeps to loopback."""
        pids = self.pids()
        out = subprocess.run(["ss", "-H", "-tuanp"], capture_output=True, text=True, check=True).stdout
        mine = []
        for line in out.splitlines():
            if any(f"pid={pid}," in line for pid in pids):
                cols = line.split()
                mine.append((cols[0], cols[4], cols[5]))
        return mine

    # --- REST -----------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 30, **query: str) -> Any:
        """One REST call; the decoded JSON answer (None for an empty one). ApiError on HTTP errors."""
        url = f"http://127.0.0.1:{self.gui_port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"X-API-Key": self.api_key})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(f"{self.name}: {method} {path}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        return json.loads(raw) if raw.strip() else None

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``pred`` until true (a deadline, not a speed claim); fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"syncthing {self.name}: timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.05)

    # --- devices and folders ----------------------------------------------------------------------

    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.listen_port}"

    def add_device(self, other: Syncthing) -> None:
        """Know ``other`` by its id at its explicit loopback address (no discovery)."""
        self.api(
            "POST",
            "/rest/config/devices",
            {"deviceID": other.device_id, "name": other.name, "addresses": [other.address()]},
        )

    def add_folder(self, folder: Folder, devices: Sequence[Syncthing]) -> None:
        """Share ``folder`` with ``devices``; its ``.stignore`` is written first, so the first scan
        already ignores what it should."""
        folder.path.mkdir(parents=True, exist_ok=True)
        if folder.ignores:
            (folder.path / ".stignore").write_text("\n".join(folder.ignores) + "\n")
        self.api(
            "POST",
            "/rest/config/folders",
            {
                "id": folder.id,
                "label": folder.id,
                "path": str(folder.path),
                "type": folder.type,
                "devices": [{"deviceID": d.device_id} for d in (self, *devices)],
                "rescanIntervalS": folder.rescan_s,
                "fsWatcherEnabled": True,
                "fsWatcherDelayS": folder.watcher_delay_s,
                "ignorePerms": folder.ignore_perms,
            },
        )

    def connected(self, other: Syncthing) -> bool:
        conns = self.api("GET", "/rest/system/connections")["connections"]
        return bool(conns.get(other.device_id, {}).get("connected"))

    def wait_connected(self, other: Syncthing, timeout: float = 60) -> None:
        self.wait(lambda: self.connected(other), timeout, f"a connection to {other.name}")

    def db_status(self, folder_id: str) -> dict[str, Any]:
        return dict(self.api("GET", "/rest/db/status", folder=folder_id))

    def idle(self, folder_id: str) -> bool:
        st = self.db_status(folder_id)
        return st.get("state") == "idle" and not st.get("needTotalItems") and not st.get("error")

    def completion(self, folder_id: str, other: Syncthing) -> float:
        return float(self.api("GET", "/rest/db/completion", folder=folder_id, device=other.device_id)["completion"])

    def wait_in_sync(self, folder_id: str, other: Syncthing, timeout: float = 60) -> None:
        """Idle here, and ``other`` has everything this side has (as far as this side knows)."""
        self.wait(
            lambda: self.idle(folder_id) and self.completion(folder_id, other) >= 100.0,
            timeout,
            f"folder {folder_id} idle and in sync with {other.name}",
        )

    def remote_need(self, folder_id: str, other: Syncthing) -> list[str]:
        """The names ``other`` lacks in the global version of the folder, as this side knows."""
        doc = self.api("GET", "/rest/db/remoteneed", folder=folder_id, device=other.device_id)
        return [f["name"] for f in doc.get("files") or []]

    def scan(self, folder_id: str) -> None:
        """Rescan now (returns once the scan is done)."""
        self.api("POST", "/rest/db/scan", folder=folder_id, timeout=120)

    def set_timing(self, folder_id: str, timing: Timing) -> None:
        """Change a folder's watcher delay and rescan interval while running."""
        self.api(
            "PATCH",
            f"/rest/config/folders/{urllib.parse.quote(folder_id)}",
            {"fsWatcherDelayS": timing.watcher_delay_s, "rescanIntervalS": timing.rescan_s},
        )

    def ignores(self, folder_id: str) -> list[str]:
        return list(self.api("GET", "/rest/db/ignores", folder=folder_id).get("ignore") or [])

    def knows(self, folder_id: str, name: str) -> dict[str, Any] | None:
        """What Syncthing's database holds of ``name`` in the folder (global and local), None when
        it has never indexed it."""
        try:
            return dict(self.api("GET", "/rest/db/file", folder=folder_id, file=name))
        except ApiError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise


# --- one device's folders: the fleet side and the device side -------------------------------------


@dataclass(frozen=True)
class Timing:
    """What Syncthing is told about when to look: ``fsWatcherDelayS`` (how long the inotify
    watcher gathers changes before it scans them) and ``rescanIntervalS`` (the full scan that
    catches what the watcher missed)."""

    watcher_delay_s: int = 1
    rescan_s: int = 30


@dataclass(frozen=True)
class DeviceShare:
    """The two folders of one edged device: ``fleet_dir`` is the fleet's copy (``edged.toml``,
    ``recall/``, and ``status/`` coming back), ``sync_dir`` the device's ``sync.dir``."""

    name: str
    fleet_dir: Path
    sync_dir: Path

    @property
    def config_folder(self) -> str:
        return f"{self.name}-config"

    @property
    def status_folder(self) -> str:
        return f"{self.name}-status"

    def folder_ids(self) -> tuple[str, str]:
        return self.config_folder, self.status_folder


def share(
    fleet: Syncthing, device: Syncthing, name: str, fleet_dir: Path, sync_dir: Path, timing: Timing = Timing()
) -> DeviceShare:
    """Introduce the two instances (if not yet) and share one device's two folders between them,
    with the types and ignore patterns of the README's set-up."""
    s = DeviceShare(name, fleet_dir, sync_dir)
    known = {d["deviceID"] for d in fleet.api("GET", "/rest/config/devices")}
    if device.device_id not in known:
        fleet.add_device(device)
    known = {d["deviceID"] for d in device.api("GET", "/rest/config/devices")}
    if fleet.device_id not in known:
        device.add_device(fleet)
    t = {"watcher_delay_s": timing.watcher_delay_s, "rescan_s": timing.rescan_s}
    fleet.add_folder(Folder(s.config_folder, fleet_dir, "sendonly", FLEET_CONFIG_IGNORES, **t), [device])
    fleet.add_folder(Folder(s.status_folder, fleet_dir / "status", "receiveonly", (), **t), [device])
    device.add_folder(Folder(s.config_folder, sync_dir, "receiveonly", DEVICE_CONFIG_IGNORES, **t), [fleet])
    device.add_folder(Folder(s.status_folder, sync_dir / "status", "sendonly", DEVICE_STATUS_IGNORES, **t), [fleet])
    return s


def wait_shared(fleet: Syncthing, device: Syncthing, s: DeviceShare, timeout: float = 120) -> None:
    """Connected, and both folders idle and in sync on both sides."""
    fleet.wait_connected(device, timeout)
    device.wait_connected(fleet, timeout)
    for folder_id in s.folder_ids():
        fleet.wait_in_sync(folder_id, device, timeout)
        device.wait_in_sync(folder_id, fleet, timeout)


# --- edged itself, as a user runs it ---------------------------------------------------------------


class EdgedChild:
    """``python -m edged run --config <root>/edged.toml``: its own process, a small paced synthetic
    recording, its state in ``<root>/state``, ``sync.dir`` the given folder. ``sync_extra``: more
    ``[sync]`` lines (``fleet_public_key = ...``)."""

    def __init__(
        self,
        root: Path,
        device_id: str,
        sync_dir: Path,
        *,
        sync_extra: str = "",
        fps: int = 10,
        run_as: RunAs | None = None,
        python: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.run_as = run_as
        self.python = list(python)
        self.extra_env = env or {}
        self.root = root
        self.state = root / "state"
        self.delivered = root / "delivered"
        self.cfg = root / "edged.toml"
        self.log_path = root / "edged.log"
        root.mkdir(parents=True, exist_ok=True)
        self.cfg.write_text(
            f"""[device]
id = "{device_id}"
[camera]
source = "synthetic"
paced = true
width = 320
height = 180
fps = {fps}
bitrate = 120000
[audio]
source = "synthetic"
[storage]
dir = "{self.state}"
segment_seconds = 2.0
min_free_bytes = 0
[upload]
targets = ["directory"]
[upload.directory]
path = "{self.delivered}"
[sync]
dir = "{sync_dir}"
{sync_extra}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EdgedChild:
        import sys

        repo = Path(__file__).resolve().parents[2]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), self.extra_env.pop("PYTHONPATH", ""),
                                                        env.get("PYTHONPATH", "")) if p)  # fmt: skip
        env.update(self.extra_env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*(self.python or [sys.executable]), "-m", "edged", "run", "--config", str(self.cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=repo,
                env=env,
                **popen_kw(self.run_as),
            )
        return self

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"edged exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def status(self) -> dict[str, Any] | None:
        from edged.app.control import ControlError, request
        from edged.core.paths import StatePaths

        try:
            return dict(request(StatePaths(self.state).control, {"cmd": "status"}, timeout=5)["status"])
        except (ControlError, OSError, ValueError):
            return None

    def recording(self) -> bool:
        st = self.status()
        return bool(st and st.get("state") == "recording" and st.get("segments_written", 0) >= 1)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"edged did not stop within {timeout:g} s of SIGTERM") from None


def read_json(path: Path) -> dict[str, Any] | None:
    """A status file as the fleet reads it (None while absent or not whole)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def python_for(run_as: RunAs, base: Path) -> tuple[list[str], dict[str, str]] | str:
    """An interpreter ``run_as`` can start with edged and its dependencies (see
    ``reachable.python_for``; ``base`` is a world-enterable folder for a copy)."""
    return reachable.python_for(base, "import edged.app.daemon, av, cryptography", run_as.popen_kw())
