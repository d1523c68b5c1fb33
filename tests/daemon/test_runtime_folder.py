"""Volatile state off the SD card (issue 15, part 4): the status file and the control socket live in
a runtime folder in memory, the CLI finds them there, nothing planted there is followed, and the
status file is rewritten only when it says something new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.app.status import StatusFile
from edged.core.files import Refused
from edged.core.paths import StatePaths, default_runtime, recorded_runtime
from edged.core.runtime import make_runtime
from tests.conftest import REPO, make_settings
from tests.support import Running, wait_until


def edged_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it: no systemd folders in its environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY", "XDG_RUNTIME_DIR")
    }
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "edged", *args], env=env, capture_output=True, text=True, timeout=60)


def config_file(tmp_path: Path, state: Path) -> Path:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        f'[camera]\nsource = "synthetic"\npaced = true\nwidth = 320\nheight = 180\nbitrate = 120000\n'
        f'[audio]\nsource = "synthetic"\n[storage]\ndir = "{state}"\nmin_free_bytes = 0\n'
    )
    return cfg


def test_status_and_socket_live_in_the_runtime_folder_and_the_cli_finds_them(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    state = tmp_path / "state"
    cfg = config_file(tmp_path, state)
    with Running(make_settings(state, camera={"paced": True, "width": 320, "height": 180, "bitrate": 120000})) as d:
        runtime, _ = default_runtime(state)
        assert runtime.parent == run / "edged"
        assert recorded_runtime(StatePaths(state).runtime_pointer) == runtime, "readers are told where it is"
        wait_until(lambda: (runtime / "status.json").exists() and (runtime / "control.sock").exists(), 20, "files")
        assert not (state / "status.json").exists() and not (state / "control.sock").exists()
        assert (runtime.stat().st_mode & 0o777) == 0o700
        assert StatePaths(state).status == runtime / "status.json" == d.paths.status

        def shown() -> dict | None:
            status = json.loads(edged_cli("status", "--json", "--config", str(cfg)).stdout)
            return status if status["pid"] == os.getpid() and status["segments_written"] >= 1 else None

        wait_until(shown, 30, "edged status reading the runtime folder's status.json")
        marked = edged_cli("mark", "--config", str(cfg), "--note", "runtime folder")
        assert marked.returncode == 0, marked.stderr
        wait_until(lambda: d.events_store.events(), 10, "the mark through the runtime folder's socket")
    assert not runtime.exists(), "the folder edged made is removed when it stops"
    last = json.loads((state / "status.json").read_text())
    assert last["state"] == "stopped" and last["segments_written"] >= 1, "the last status is kept on disk"
    after = json.loads(edged_cli("status", "--json", "--config", str(cfg)).stdout)
    assert after["state"] == "stopped" and after["segments_written"] == last["segments_written"]


def test_a_link_planted_where_the_runtime_folder_goes_is_refused(tmp_path, monkeypatch):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir(mode=0o700)
    elsewhere.mkdir()
    (run / "edged").symlink_to(elsewhere)
    with pytest.raises(Refused, match="symbolic link"):
        make_runtime(run / "edged" / "key", given=False)
    assert list(elsewhere.iterdir()) == []

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    state = tmp_path / "state"
    with Running(make_settings(state, camera={"paced": True})) as d:
        wait_until(lambda: d.paths.status.exists() and d.paths.control.exists(), 20, "status and socket")
        assert d.paths.runtime == state, "refused: the state folder is used, recording goes on"
        assert list(elsewhere.iterdir()) == [], "nothing written through the link"
        wait_until(lambda: d.recorder.status.segments_written >= 1, 30, "recording going on")


@pytest.mark.skipif(os.geteuid() != 0, reason="a folder of another user needs root to make")
def test_a_runtime_folder_of_another_user_is_refused_and_ours_made_owner_only(tmp_path):
    base = tmp_path / "run"
    base.mkdir()
    (base / "theirs").mkdir()
    os.chown(base / "theirs", 65534, 65534)
    with pytest.raises(Refused, match="belongs to uid 65534"):
        make_runtime(base / "theirs" / "key", given=False)
    (base / "ours").mkdir(mode=0o755)
    os.chmod(base / "ours", 0o755)
    made = make_runtime(base / "ours" / "key", given=False)
    assert (base / "ours").stat().st_mode & 0o777 == 0o700 and made.stat().st_mode & 0o777 == 0o700


def test_status_is_written_only_when_it_says_something_new(tmp_path):
    f = StatusFile(tmp_path / "status.json")
    doc = {"state": "recording", "frames_encoded": 10, "updated": 1.0, "gps": {"fix": "3d", "age_s": 0.2}}
    assert f.write(doc) and f.writes == 1
    assert not f.write(doc | {"updated": 2.0}), "only the time it was taken changed"
    assert not f.write(doc | {"updated": 3.0, "gps": {"fix": "3d", "age_s": 1.2}}), "only the fix's age changed"
    assert f.writes == 1
    assert f.write(doc | {"frames_encoded": 11, "updated": 4.0}) and f.writes == 2
    assert json.loads((tmp_path / "status.json").read_text())["frames_encoded"] == 11
    assert f.write(doc | {"frames_encoded": 11, "gps": {"fix": "2d", "age_s": 0.1}}) and f.writes == 3
