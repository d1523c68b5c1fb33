"""What an operator sees from the command line tells the truth (issue 16, part 4).

Without ``--config`` a command shows the running daemon's state (or the installed service's), says
on stderr which configuration it shows, and says so when there is nothing to show rather than
printing nothing; a delivery waiting on a paused target is shown paused, not due; a clip delivered
everywhere is listed as delivered, not merely built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edged.config import schema as config
from edged.upload.outbox import Outbox
from tests.conftest import REPO
from tests.support import Running, wait_until

BASE = """
[camera]
source = "synthetic"
paced = false
width = 320
height = 180
bitrate = 120000
[audio]
source = "synthetic"
[storage]
dir = "{state}"
min_free_bytes = 0
"""


def edged(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "edged", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_without_config_a_command_shows_the_running_daemon_and_says_which(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "edged.toml"
    cfg.write_text(BASE.format(state=tmp_path / "state"))
    with Running(config.load(cfg)) as d:
        out = edged(tmp_path, "status", "--json")
        assert out.returncode == 0, out.stderr
        assert "showing configs/edged.toml" in out.stderr and "its daemon is running" in out.stderr, out.stderr

        def shown() -> dict | None:
            status = json.loads(edged(tmp_path, "status", "--json").stdout)
            return status if status["pid"] is not None else None

        status = wait_until(shown, 30, "edged status without --config showing the running daemon")
        assert status["pid"] == os.getpid() and status["state"] != "stopped", status
        listing = edged(tmp_path, "outbox", "list")
        assert listing.returncode == 0 and str(d.paths.root) in listing.stderr, listing.stderr
    after = edged(tmp_path, "status", "--json")
    assert "no daemon is running with it" in after.stderr, after.stderr


def test_with_nothing_to_show_outbox_list_says_so(tmp_path: Path) -> None:
    out = edged(tmp_path, "outbox", "list")
    assert out.returncode == 1, out
    assert "the embedded defaults" in out.stderr and "no outbox in" in out.stderr, out.stderr
    assert out.stdout == ""


def test_a_delivery_waiting_on_a_paused_target_is_shown_paused_and_a_past_time_as_due(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(BASE.format(state=state))
    state.mkdir(mode=0o700)
    part = tmp_path / "p1.webm"
    part.write_bytes(b"\x1a\x45\xdf\xa3")
    now = time.time_ns()
    ob = Outbox(state / "outbox.sqlite", targets=["sonoran_v2", "directory"])
    ob.enqueue("20261207T040000Z-0a1b2c", [(1, part, 4, 1000, "0" * 64)], 10, now)
    with ob.tx() as db:
        db.execute("UPDATE deliveries SET state='deferred', next_try_ns=?, reason='earlier'", (now - 60_000_000_000,))
        db.execute(
            "INSERT INTO target_state VALUES ('sonoran_v2', 'key refused (401)', ?, 'fp')",
            (now + 3600_000_000_000,),
        )
    ob.close()
    listing = {
        r["target"]: r for r in json.loads(edged(tmp_path, "outbox", "list", "--json", "--config", str(cfg)).stdout)
    }
    assert listing["sonoran_v2"]["paused"] == "key refused (401)" and listing["sonoran_v2"]["next_try"], listing
    assert listing["directory"]["paused"] is None and listing["directory"]["next_try"] is None, listing
    text = edged(tmp_path, "outbox", "list", "--config", str(cfg)).stdout.splitlines()
    (paused,) = [line for line in text if "sonoran_v2" in line]
    (due,) = [line for line in text if "directory" in line]
    assert " paused " in paused and "key refused (401)" in paused, paused
    assert " deferred " in due and "due now" in due, due
