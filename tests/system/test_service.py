"""Running as a systemd service: the unit file, and the sd_notify protocol over a real socket.

The unit is checked with systemd's own tools (`systemd-analyze verify`, `security --offline`).
Readiness, watchdog, status and stopping are read off a real AF_UNIX datagram socket the test
binds and hands to the daemon as $NOTIFY_SOCKET, exactly as systemd does. A hung camera is a
capture source whose read() never returns (as a wedged libcamera request does); a blocked disk is
a real ext4 file system frozen with fsfreeze(8), where every write waits until it is thawed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edged.app.daemon import Daemon
from edged.app.status import DaemonStatus
from edged.app.systemd import ServiceNotifier, watchdog_interval_s
from edged.capture.synthetic import SyntheticVideo
from edged.core.paths import StatePaths
from edged.footage.index import Index
from edged.recording.recorder import STALL_S
from tests.conftest import REPO
from tests.support import wait_until
from tests.support.notify import NotifySocket

UNIT = REPO / "systemd" / "edged.service"
#: `systemd-analyze security --offline` exposure the unit must stay under (README, "Hardening").
SECURITY_THRESHOLD = 2.0


# --- the unit file ---------------------------------------------------------------------------


def _verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` in a scratch root holding the host's own units and an executable
    where the unit's ExecStart points (verify checks that the command exists)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    exec_start = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.M).group(1)
    exe = root / exec_start.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit.name], capture_output=True, text=True)


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (scripts/setup --test installs it)"
)


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path):
    r = _verify(UNIT, tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr


@needs_systemd_analyze
def test_verify_reports_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt setting is a warning verify prints."""
    broken = tmp_path / "edged.service"
    broken.write_text(UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    r = _verify(broken, tmp_path)
    assert "WatchdogSecs" in r.stdout + r.stderr


@needs_systemd_analyze
def test_unit_hardening_exposure_stays_under_the_threshold():
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)], capture_output=True, text=True
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    print("exposure", m.group(1))
    assert float(m.group(1)) <= SECURITY_THRESHOLD


def test_unit_is_notify_with_watchdog_and_reaches_the_devices():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=always",
        "DevicePolicy=closed",
        "ProtectSystem=strict",
        "StateDirectory=edged",
        "DeviceAllow=char-video4linux rw",
        "DeviceAllow=char-media rw",
        "DeviceAllow=char-dma_heap rw",
        "DeviceAllow=char-gpiochip rw",
        "DeviceAllow=char-alsa rw",
        "LoadCredential=sonoran_api_key:",
        "SupplementaryGroups=video audio gpio",
    ):
        assert re.search(rf"^{re.escape(line)}", text, re.M), line
    watchdog = int(re.search(r"^WatchdogSec=(\d+)", text, re.M).group(1))
    assert watchdog > 2 * STALL_S, "a healthy recorder must ping well inside the watchdog"


# --- the protocol, on a real datagram socket ---------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path):
    s = NotifySocket(tmp_path / "notify")
    yield s
    s.close()


def _config(tmp_path: Path, state: Path, paced: bool = True) -> Path:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "synthetic"
paced = {"true" if paced else "false"}
[audio]
source = "synthetic"
[storage]
dir = "{state}"
segment_seconds = 4.0
min_free_bytes = 0
max_bytes = 50000000
""")
    return cfg


def _spawn(cfg: Path, notify: Path, watchdog_s: float = 2.0) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC=str(int(watchdog_s * 1e6)))
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_ready_only_with_footage_on_disk_then_watchdog_status_and_stopping(tmp_path, notify_socket):
    state = tmp_path / "state"
    proc = _spawn(_config(tmp_path, state), notify_socket.path)
    try:
        notify_socket.wait_for("READY", 30)
        # READY=1 came once the camera delivered and the first segment's media was synced to disk.
        parts = list((state / "segments").glob("*.part")) + list((state / "segments").glob("*.webm"))
        assert parts and max(p.stat().st_size for p in parts) > 0
        assert notify_socket.first("READY")["READY"] == "1"
        assert "recording" in notify_socket.first("READY")["STATUS"]
        wait_until(lambda: len(notify_socket.times("WATCHDOG")) >= 5, 30, "five watchdog pings")
        pings = notify_socket.times("WATCHDOG")
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        # Two pings a second when idle; inside WatchdogSec=2 with room for a loaded machine.
        assert max(gaps) < 1.5, gaps
        assert len(notify_socket.times("READY")) == 1
        statuses = [f["STATUS"] for _, f in notify_socket.messages if "STATUS" in f]
        assert any("segments" in s and "alarms: none" in s for s in statuses), statuses
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, proc.stderr.read().decode()[-2000:]
    assert notify_socket.first("STOPPING")["STOPPING"] == "1"
    # The open segment was finalised: nothing left as .part, every row final.
    assert not list((state / "segments").glob("*.part"))
    index = Index(StatePaths(state).index, read_only=True)
    try:
        rows = index.segments()
    finally:
        index.close()
    assert rows and all(r.state == "final" for r in rows), [r.state for r in rows]


def test_no_readiness_and_no_pings_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sent: list[str] = []
    n = ServiceNotifier(send=sent.append, env={"WATCHDOG_USEC": "2000000"})
    n.ready("x"), n.watchdog(), n.status("y"), n.stopping()
    assert sent == [] and not n.enabled


def test_watchdog_interval_follows_systemds_variables():
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None


def test_status_line_summarises_the_daemon():
    line = DaemonStatus(
        pid=1,
        state="recording",
        video_source="picamera2",
        segments_written=12,
        current_segment="000013",
        events_open=1,
        outbox={"queued": 2, "deferred": 1, "delivered": 5, "failed": 1},
        alarms=["storage_full"],
    ).summary()
    assert line == (
        "recording; camera picamera2; 12 segments; writing 000013; 1 event(s) open; "
        "3 upload(s) waiting; 1 failed; alarms: storage_full"
    )


def test_a_hung_camera_stops_the_watchdog_pings(tmp_path, notify_socket, monkeypatch, settings_factory):
    """The camera's read() blocks (a wedged capture request): the recorder stops making progress,
    and the pings stop, so systemd's watchdog restarts the service. They resume if it unwedges."""
    hang = threading.Event()
    release = threading.Event()
    real_read = SyntheticVideo.read

    def read(self):
        if hang.is_set():
            release.wait()
        return real_read(self)

    monkeypatch.setattr(SyntheticVideo, "read", read)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    s = settings_factory(camera={"paced": True}, storage={"segment_seconds": 4.0})
    daemon = Daemon(s)
    t = threading.Thread(target=daemon.run)
    t.start()
    try:
        notify_socket.wait_for("READY", 30)
        wait_until(lambda: notify_socket.times("WATCHDOG"), 30, "a watchdog ping")
        hang.set()
        # Frames already queued are still recorded; once none has come for STALL_S the recorder
        # says the camera stalled, and from then on (one main-loop tick) no ping may go out.
        wait_until(lambda: "camera_stalled" in daemon.recorder.status.alarms, 20, "camera_stalled")
        t_stalled = time.monotonic()
        time.sleep(4)
        late = [p for p in notify_socket.times("WATCHDOG") if p > t_stalled + 1.0]
        assert late == [], f"{len(late)} pings while the camera was hung"
        release.set()
        t_release = time.monotonic()
        deadline = time.monotonic() + 10
        while not [p for p in notify_socket.times("WATCHDOG") if p > t_release] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in notify_socket.times("WATCHDOG") if p > t_release], "pings did not resume"
    finally:
        release.set()
        daemon.recorder.stop()
        t.join(timeout=30)


def _can_freeze() -> bool:
    return os.geteuid() == 0 and all(shutil.which(c) for c in ("fsfreeze", "mkfs.ext4", "mount", "losetup"))


@pytest.mark.skipif(not _can_freeze(), reason="needs root, loop devices and fsfreeze")
def test_a_blocked_disk_stops_the_watchdog_pings(tmp_path, notify_socket):
    """The state folder sits on a real ext4 file system that is frozen: writes block in the
    kernel. The recorder cannot write, so the pings stop; thawed, they come back."""
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(96 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    proc = None
    frozen = False
    try:
        proc = _spawn(_config(tmp_path, mnt / "state"), notify_socket.path)
        notify_socket.wait_for("READY", 30)
        wait_until(lambda: notify_socket.times("WATCHDOG"), 30, "a watchdog ping")
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
        frozen = True
        t_freeze = time.monotonic()
        time.sleep(STALL_S + 5)
        late = [p for p in notify_socket.times("WATCHDOG") if p > t_freeze + STALL_S + 2]
        assert late == [], f"{len(late)} pings while the disk was blocked"
        subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
        frozen = False
        t_thaw = time.monotonic()
        deadline = time.monotonic() + 15
        while not [p for p in notify_socket.times("WATCHDOG") if p > t_thaw] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in notify_socket.times("WATCHDOG") if p > t_thaw], "pings did not resume after the thaw"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if frozen:  # never leave a frozen file system behind: its writers could not even be killed
            subprocess.run(["fsfreeze", "-u", str(mnt)])
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(mnt)])
