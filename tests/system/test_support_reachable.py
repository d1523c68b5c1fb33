"""The copy that lets a test run edged as another user when the checkout is out of that user's
reach (a clone in a 0700 folder): made here whatever the checkout's mode, so the fallback is
known to work before a private clone needs it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import reachable

NOBODY = {"user": 65534, "group": 65534, "extra_groups": []}


@pytest.mark.skipif(os.geteuid() != 0, reason="running a child as nobody needs root")
def test_a_copy_of_edged_and_its_dependencies_runs_as_nobody() -> None:
    base = Path(tempfile.mkdtemp(prefix="edged-reachable-"))
    try:
        base.chmod(0o755)
        env = reachable.python_tree(base / "python")
        names = {d.metadata["Name"].lower() for d in reachable.runtime_distributions()}
        assert {"av", "numpy", "cryptography", "httpx", "pillow"} <= names, names
        assert not (base / "python" / "src" / "edged" / "__pycache__").exists()
        system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        base_python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        results = []
        for python in dict.fromkeys((base_python, system)):
            try:
                out = subprocess.run(
                    [python, "-c", "import edged.app.daemon, av, cryptography; print(edged.__file__)"],
                    env={**os.environ, **env},
                    cwd="/",
                    capture_output=True,
                    text=True,
                    timeout=60,
                    **NOBODY,
                )
            except OSError as exc:  # this interpreter itself is out of reach (a pyenv under /root)
                results.append((python, str(exc)))
                continue
            results.append((python, out.stdout.strip() or out.stderr.strip()[-300:]))
        assert any(r.startswith(str(base / "python" / "src" / "edged")) for _, r in results), results
        # Nothing in the copy may be changed by another user.
        for p in (base / "python").rglob("*"):
            assert not stat.S_IMODE(p.lstat().st_mode) & 0o002, p
    finally:
        shutil.rmtree(base)


def test_a_script_is_copied_with_what_it_reads() -> None:
    base = Path(tempfile.mkdtemp(prefix="edged-reachable-"))
    try:
        script = reachable.script_tree(base, "scripts/picamera2-root", "tests/support/picamera2_root")
        assert script.read_bytes() == (reachable.REPO / "scripts/picamera2-root").read_bytes()
        assert os.access(script, os.X_OK)
        assert (base / "tests/support/picamera2_root/virtual.yaml").is_file()
    finally:
        shutil.rmtree(base)
