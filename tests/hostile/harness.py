"""The hostile-input suite's harness: a real ``edged run`` child and the evidence it must keep.

Every hostile test runs the daemon as a user runs it (``python -m edged run --config``, its own
process, its own signals) with a synced folder, does something an attacker or a broken sync
party would do, and then checks the one thing that matters: the evidence is what it was. The
evidence is every finished segment, every clip part and manifest, and the stores (SQLite files
that are sound and agree with the files they describe).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edged.app.control import ControlError, request
from edged.core.paths import StatePaths
from tests.support import wait_until

#: Longest wait for a state the daemon should reach (a deadline, never a speed assertion).
WAIT_S = 60.0

#: The test daemon: small, paced, synthetic sources; a short pre/post-roll so clips come quickly.
BASE_CONFIG: dict[str, dict[str, Any]] = {
    "device": {"id": "hostile-test", "unit_number": "HT-1"},
    "camera": {"source": "synthetic", "paced": True, "width": 320, "height": 180, "fps": 10, "bitrate": 200_000},
    "audio": {"source": "synthetic"},
    "storage": {"segment_seconds": 2.0, "max_bytes": 200_000_000, "min_free_bytes": 0},
    "clips": {"pre_roll_seconds": 2.0, "post_roll_seconds": 2.0},
    "upload": {"targets": ["directory"], "retry_base_seconds": 0.2, "retry_cap_seconds": 2.0},
    "sync": {"poll_seconds": 0.2},
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML document from nested dicts of plain values (what the tests' configs hold)."""
    scalars = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.append(to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


class DaemonUnderTest:
    """``python -m edged run --config <root>/edged.toml`` with its state in ``<root>/state`` and,
    with ``sync``, a synced folder ``<root>/sync``. ``config`` is merged over BASE_CONFIG."""

    def __init__(
        self,
        root: Path,
        config: Mapping[str, Any] | None = None,
        *,
        sync: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.state = root / "state"
        self.sync = root / "sync"
        self.cfg = root / "edged.toml"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        data = merge(BASE_CONFIG, {"storage": {"dir": str(self.state)}})
        if sync:
            self.sync.mkdir(parents=True, exist_ok=True)
            data = merge(data, {"sync": {"dir": str(self.sync)}})
        else:
            data.pop("sync", None)
        self.config = merge(data, config or {})
        self.cfg.write_text(to_toml(self.config))
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")
        }
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = self.logs / "run-00.log"

    # --- life ---------------------------------------------------------------------------------

    def start(self, *, wait_recording: bool = True, umask: int | None = None) -> DaemonUnderTest:
        """Start ``edged run``; ``umask``: the one its shell had (default: the test's)."""
        self.starts += 1
        self.log_path = self.logs / f"run-{self.starts:02d}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edged", "run", "--config", str(self.cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
                preexec_fn=None if umask is None else (lambda: os.umask(umask) and None),
            )
        if wait_recording:
            self.wait_recording()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"edged exited with {self.proc.returncode}:\n{self.log()[-4000:]}")

    def wait(self, pred: Callable[[], object], timeout: float = WAIT_S, what: str = "a state") -> Any:
        return wait_until(pred, timeout, what, alive=self._check_alive)

    def wait_recording(self, segments: int = 1) -> dict[str, Any]:
        """Until the daemon answers, records and has ``segments`` finished segments on disk."""

        def ready() -> dict[str, Any] | None:
            st = self.status()
            if st and st.get("state") == "recording" and st.get("segments_written", 0) >= segments:
                return st
            return None

        return self.wait(ready, what=f"recording with {segments} segment(s) written")

    def frames(self) -> int:
        return int((self.status() or {}).get("frames_encoded", 0))

    def wait_frames_grow(self, by: int = 20) -> None:
        """Recording goes on: the encoded frame count grows by ``by``."""
        start = self.frames()
        self.wait(lambda: self.frames() >= start + by, what=f"{by} more frames encoded")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as systemd stops it; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"edged did not stop within {timeout:g} s of SIGTERM:\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # --- talking to it ------------------------------------------------------------------------

    def request(self, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return request(StatePaths(self.state).control, payload, timeout=timeout)

    def status(self) -> dict[str, Any] | None:
        try:
            return self.request({"cmd": "status"}, timeout=5)["status"]
        except (ControlError, OSError, ValueError):
            return None

    def mark(self, note: str = "") -> str:
        return str(self.request({"cmd": "mark", "note": note})["event_id"])

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``edged ARGS`` as a user types it (``--config`` is the caller's to pass)."""
        return subprocess.run(
            [sys.executable, "-m", "edged", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self.env,
            timeout=timeout,
        )

    def log(self) -> str:
        try:
            return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("run-*.log")))
        except OSError:
            return ""

    def sync_status(self, name: str) -> dict[str, Any] | None:
        """``<sync>/status/<name>`` parsed (None when absent or not yet whole)."""
        try:
            return json.loads((self.sync / "status" / name).read_text())
        except (OSError, ValueError):
            return None

    def wait_built(self, event_id: str) -> Path:
        """Until the event's clip is built (its manifest on disk); the clip folder."""
        folder = self.state / "clips" / event_id
        self.wait(lambda: (folder / "manifest.json").is_file(), what=f"clip {event_id} built")
        return folder

    def __enter__(self) -> DaemonUnderTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# --- evidence --------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evidence_snapshot(state: Path) -> dict[str, str]:
    """relpath → sha256 of every finished segment, clip part and manifest in the state folder
    (regular files only: a link there is itself a finding, reported by ``assert_no_links``)."""
    out: dict[str, str] = {}
    for pattern in ("segments/*.webm", "clips/*/*.webm", "clips/*/manifest.json"):
        for p in sorted(state.glob(pattern)):
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(state))] = sha256_of(p)
    return out


def assert_evidence_kept(before: Mapping[str, str], after: Mapping[str, str], evicted_ok: bool = False) -> None:
    """Every file of ``before`` is still there with the same bytes (new files may appear).
    ``evicted_ok``: unprotected segments may have been overwritten by the ring (never altered)."""
    changed = {k: (v, after[k]) for k, v in before.items() if k in after and after[k] != v}
    missing = [k for k in before if k not in after and not (evicted_ok and k.startswith("segments/"))]
    assert not changed, f"evidence altered: {changed}"
    assert not missing, f"evidence gone: {missing}"


def assert_no_links(state: Path) -> None:
    links = [str(p) for p in state.rglob("*") if p.is_symlink()]
    assert not links, f"links inside the state folder: {links}"


def assert_stores_sound(state: Path) -> None:
    """Each SQLite store passes integrity_check, and every segment the index calls stored has the
    sha256 the index holds."""
    for name in ("index.sqlite", "events.sqlite", "outbox.sqlite", "recall.sqlite"):
        path = state / name
        if not path.exists():
            continue
        assert path.is_file() and not path.is_symlink(), f"{name} is not a regular file"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            (result,) = db.execute("PRAGMA integrity_check").fetchone()
            assert result == "ok", f"{name}: {result}"
            if name == "index.sqlite":
                rows = db.execute(
                    "SELECT name, sha256 FROM segments WHERE state IN ('final', 'salvaged') AND sha256 IS NOT NULL"
                ).fetchall()
                for seg, digest in rows:
                    p = state / "segments" / seg
                    if p.exists():
                        assert sha256_of(p) == digest, f"segment {seg} no longer matches the index"
        finally:
            db.close()


def accessible(root: Path, mask: int = 0o007) -> list[str]:
    """Files and folders under ``root`` whose mode grants any bit of ``mask`` (0o007: another
    local user; 0o070: the group). Links and sockets are left out."""
    bad = []
    for p in [root, *root.rglob("*")]:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if p.is_symlink() or p.is_socket():
            continue
        if st.st_mode & mask:
            bad.append(f"{p} {oct(st.st_mode & 0o777)}")
    return bad


def world_accessible(root: Path) -> list[str]:
    return accessible(root, 0o007)
