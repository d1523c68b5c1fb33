"""What a test runs as another user, copied to a folder that user can enter.

A checkout may sit in a folder only its owner can enter: ``mktemp -d`` makes 0700 folders, and a
clone under ``/root`` sits behind one. A child started as ``nobody`` (or as a device's service
user) then cannot reach the checkout's scripts, its ``edged`` package or the virtual environment's
site-packages, and the test would fail on where the clone lies rather than on what it tests.

So these helpers copy what the child needs into a folder the caller made world-enterable: the
package, the installed distributions edged needs at run time (found from its own requirements,
not listed by hand), or a script with the files beside it that it reads. Files are hard-linked
where the file system allows and the source is already readable by others (a link shares its
source's mode, which must not change); otherwise they are copied and made readable. A script is
always run from its copy; a Python from the checkout when the other user can reach it, else from
the copy (``python_for`` says which interpreters it tried, and why each failed).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: A requirement's name: what comes before a version, an extra, a marker or a space.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _place(src: Path, dst: Path) -> None:
    """``src`` at ``dst``, readable (and, if it is a program, runnable) by every user."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(src.stat().st_mode)
    runnable = bool(mode & stat.S_IXUSR)
    wanted = 0o755 if runnable else 0o644
    if mode & 0o004 and (not runnable or mode & 0o001):
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links refused: a copy
            pass
    shutil.copyfile(src, dst)
    dst.chmod(wanted)


def _open_dirs(top: Path) -> None:
    for d in [top, *(p for p in top.rglob("*") if p.is_dir() and not p.is_symlink())]:
        d.chmod(0o755)


def copy_tree(src: Path, dst: Path) -> Path:
    """The files under ``src`` (no byte-code caches, no links followed) at ``dst``."""
    for path in src.rglob("*"):
        if "__pycache__" in path.parts or path.is_symlink() or not path.is_file():
            continue
        _place(path, dst / path.relative_to(src))
    _open_dirs(dst)
    return dst


def runtime_distributions(root: str = "edged") -> list[metadata.Distribution]:
    """The installed distributions ``root`` needs to run, its own excluded (its requirements,
    theirs, and so on; extras left out, markers taken as true: one copy too many does no harm)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(metadata.requires(root) or [])
    while todo:
        requirement = todo.pop()
        if re.search(r";.*\bextra\s*==", requirement):
            continue
        match = _NAME.match(requirement.strip())
        if match is None:
            continue
        name = _canonical(match.group())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # a marker excluded it here
            continue
        found[name] = dist
        todo.extend(dist.requires or [])
    return list(found.values())


def python_tree(dst: Path) -> dict[str, str]:
    """A copy of ``edged`` and its run-time distributions under ``dst``; the environment that puts
    it first on a Python's path."""
    site = dst / "site-packages"
    for dist in runtime_distributions():
        for rel in dist.files or []:
            if rel.parts and rel.parts[0] == "..":  # scripts installed beside the interpreter
                continue
            src = Path(str(dist.locate_file(rel)))
            if src.is_file():
                _place(src, site / rel)
    copy_tree(REPO / "edged", dst / "src" / "edged")
    _open_dirs(dst)
    return {"PYTHONPATH": f"{dst / 'src'}{os.pathsep}{site}", "PYTHONNOUSERSITE": "1"}


def _candidates(base: Path) -> Iterator[tuple[str, dict[str, str]]]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = f"/usr/bin/python{version}"
    yield sys.executable, {"PYTHONPATH": str(REPO)}
    yield system, {"PYTHONPATH": f"{REPO}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    copied = python_tree(base / "python")  # made only when both failed on the checkout
    for python in dict.fromkeys((os.path.realpath(getattr(sys, "_base_executable", sys.executable)), system)):
        yield python, copied


def python_for(base: Path, probe: str, popen_kw: dict[str, Any]) -> tuple[list[str], dict[str, str]] | str:
    """An interpreter a child started with ``popen_kw`` (another user) can run ``probe`` with, and
    the environment it needs: this one on the checkout when that user can reach it; the system's
    Python of the same version with this environment's site-packages (a pyenv interpreter may
    live under ``/root``); else either interpreter on a copy under ``base`` (world-enterable: the
    checkout itself may sit in a folder only root can enter). A string says why there is none."""
    tried = []
    for python, env in _candidates(base):
        try:
            out = subprocess.run(
                [python, "-c", probe],
                env={**os.environ, **env},
                cwd="/",
                capture_output=True,
                text=True,
                timeout=60,
                **popen_kw,
            )
        except OSError as exc:
            tried.append(f"{python}: {exc}")
            continue
        if out.returncode == 0:
            return [python], env
        tried.append(f"{python}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return f"no Python that {popen_kw} can run {probe!r} with ({'; '.join(tried)})"


def script_tree(dst: Path, script: str, *beside: str) -> Path:
    """The checkout's ``script`` (a path in the repository) and the folders ``beside`` it reads,
    at the same places under ``dst``; the copied script's path."""
    for rel in beside:
        copy_tree(REPO / rel, dst / rel)
    _place(REPO / script, dst / script)
    _open_dirs(dst)
    return dst / script
