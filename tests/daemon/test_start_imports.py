"""Power button to recording: what ``edged run`` has imported by the time it says READY.

Start-up time and a small board's memory go to imports: httpx and its stack (~11 MB resident,
~40 ms), numpy (~11 MB, ~80 ms), Pillow. Each stage imports what it needs when it is configured and
used (an HTTP target when one is configured, Pillow when the stamp is on, numpy for a picamera2
camera's arrays), so on the embedded defaults (no camera here: the synthetic one; delivery to a
folder) none of httpx or numpy may be loaded when recording is ready. An eager import anywhere on
the way (``import httpx`` at the top of a module the daemon imports) fails this.

How it looks: the real ``python -m edged`` command line in a child process, started by a small
prologue that wraps ``ServiceNotifier.ready`` (what sends READY=1 to systemd) to write down
``sys.modules`` at that moment, on the main thread, then lets it go on; READY itself is read off a
real notify socket. The control: with the stamp on (the default), Pillow *is* among them, loaded
at the first frame, after start-up, so the snapshot sees what was imported late.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.support.notify import NotifySocket

#: Modules that must not be loaded at READY on the embedded defaults, and why each is heavy.
HEAVY = {
    "httpx": "the HTTP stack: only an HTTP upload target or the Sonoran unit needs it",
    "httpcore": "httpx's transport",
    "h11": "httpx's HTTP/1.1",
    "numpy": "arrays: only a picamera2 camera hands frames as arrays",
    "cryptography": "config signatures: only a synced folder with a fleet key",
    "uuid": "brings platform (~2 ms a start): ids take their random digits from os.urandom",
    "shutil": "brings zlib, bz2, lzma (~3.6 ms): the CLI's HelpFormatter finds the width itself",
}

PROLOGUE = """
import json, sys, runpy
from edged.app import systemd
ready, path = systemd.ServiceNotifier.ready, sys.argv[1]
def snapshot(self, status):
    if not self.is_ready:
        with open(path, "w") as f:
            json.dump(sorted(sys.modules), f)
    ready(self, status)
systemd.ServiceNotifier.ready = snapshot
sys.argv = ["edged", *sys.argv[2:]]
runpy.run_module("edged", run_name="__main__", alter_sys=True)
"""


def modules_at_ready(tmp_path: Path, *edged_args: str) -> set[str]:
    notify = NotifySocket(tmp_path / "notify")
    snapshot = tmp_path / "modules.json"
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), STATE_DIRECTORY=str(tmp_path / "state"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", PROLOGUE, str(snapshot), *edged_args],
        cwd=tmp_path,  # no configs/edged.toml here: the embedded defaults unless --config
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        notify.wait_for("READY", 60)
        modules = set(json.loads(snapshot.read_text()))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return modules


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_on_the_embedded_defaults_nothing_heavy_is_loaded_before_ready(tmp_path):
    modules = modules_at_ready(tmp_path, "run")
    loaded = {m: why for m, why in HEAVY.items() if m in top_level(modules)}
    assert not loaded, f"imported before READY on the embedded defaults: {loaded}"
    # The snapshot is the recording's, taken late enough to see lazy imports: the stamp (on by
    # default) loaded Pillow at the first frame; the directory target was built without HTTP.
    assert "PIL" in top_level(modules) and "edged.recording.stamp" in modules
    assert "edged.upload.directory" in modules and "edged.upload.http" not in modules
    # `edged run` builds its own command's parser alone: not the recall commands' (edged.cli.recall)
    assert "edged.cli.main" in modules and "edged.cli.recall" not in modules


def test_with_the_stamp_off_pillow_is_not_loaded_either(tmp_path):
    cfg = tmp_path / "edged.toml"
    cfg.write_text("[stamp]\nenabled = false\n")
    modules = modules_at_ready(tmp_path, "run", "--config", str(cfg))
    assert "PIL" not in top_level(modules), "Pillow is for the stamp alone"
    assert not {m for m in HEAVY if m in top_level(modules)}
