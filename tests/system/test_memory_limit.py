"""A 512 MB board's share: the daemon, with marks, uploads and a timelapse recall, inside 256 MB.

The real daemon runs from its start in a cgroup with a 256 MB memory limit (tests/support/cgroups.py:
v1 ``memory.limit_in_bytes`` with swap, or v2 ``memory.max``), everything it starts with it. It
records (unpaced, the default picture size), takes marks whose clips are built, verified and
delivered, and builds a 5-minute timelapse recall, all while recording. It must complete with no
process killed for memory: the kernel's own count (``oom_kill``) stays 0. Waits are for states.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edged.app.control import ControlError, request
from edged.core.paths import StatePaths
from tests.conftest import REPO
from tests.support import cgroups, wait_until
from tests.support import live_status as _status

pytestmark = pytest.mark.skipif(cgroups.unavailable() is not None, reason=str(cgroups.unavailable()))

LIMIT = 256 << 20
FPS = 10


def _ask(state: Path, req: dict) -> dict:
    try:
        return request(StatePaths(state).control, req, timeout=30)
    except (ControlError, OSError):
        return {}


def test_marks_uploads_and_a_timelapse_recall_complete_within_256_mb(tmp_path):
    state = tmp_path / "state"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "synthetic"
paced = false
fps = {FPS}
[audio]
source = "synthetic"
[storage]
dir = "{state}"
min_free_bytes = 0
[clips]
pre_roll_seconds = 5
post_roll_seconds = 5
[upload]
targets = ["directory"]
[upload.directory]
path = "{tmp_path / "delivered"}"
[sync]
dir = "{tmp_path / "sync"}"
poll_seconds = 0.5
""")
    group = cgroups.Cgroup("edged-test-mem", memory_bytes=LIMIT)
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=log,
        stderr=log,
        preexec_fn=group.join,
    )

    def alive() -> None:
        assert group.oom_kills() == 0, "a process was killed for memory"
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]

    try:
        wait_until(lambda: _status(state).get("frames_encoded", 0) > 0, 60, "recording", alive)
        # The unpaced timeline starts about now and runs ahead of the clock: a window from 5 s in is
        # recorded once 30 s of footage are.
        start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
        wait_until(lambda: _status(state).get("frames_encoded", 0) >= 30 * FPS, 120, "30 s of footage", alive)
        answer = _ask(
            state,
            {
                "cmd": "recall",
                "id": "mem-tl",
                "request": {
                    "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "duration": 5,
                    "recall_type": "timelapse",
                },
            },
        )
        assert answer.get("recall", {}).get("status") == "pending", answer
        marks = 0
        for _ in range(3):  # marks at different points of the recording, each waited for
            encoded = _status(state).get("frames_encoded", 0)
            wait_until(lambda e=encoded: _status(state).get("frames_encoded", 0) >= e + 20 * FPS, 120, "footage", alive)
            assert _ask(state, {"cmd": "mark", "note": f"mem {marks}"}).get("ok") is True, "mark refused"
            marks += 1
        wait_until(
            lambda: (
                _ask(state, {"cmd": "recall_status", "id": "mem-tl"}).get("recall", {}).get("status") == "completed"
            ),
            600,
            "the timelapse recall delivered",
            alive,
        )
        wait_until(
            lambda: _status(state).get("outbox", {}).get("delivered", 0) >= marks + 1,
            300,
            "every mark's clip delivered",
            alive,
        )
        st = _status(state)
        assert st.get("outbox", {}).get("failed", 0) == 0, st
        hwm_kb = next(
            int(line.split()[1])
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        print(f"daemon peak RSS {hwm_kb / 1024:.1f} MB; cgroup peak {group.memory_peak_bytes()} bytes")
        alive()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            kills = group.oom_kills()
            group.close()
    assert proc.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    assert kills == 0
    assert list((tmp_path / "delivered").rglob("*.webm")), "nothing delivered"
