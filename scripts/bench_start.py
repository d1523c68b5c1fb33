#!/usr/bin/env python3
"""Power button to recording: process start to the first frame in a segment and to READY, and the
daemon's steady memory, ``edged run`` on its embedded defaults beside the floor.

Each run starts a fresh ``python -m edged run`` (no config file: the embedded defaults, the state
folder in a new temporary folder through ``$STATE_DIRECTORY`` as systemd's ``StateDirectory=``
gives it) with ``$NOTIFY_SOCKET`` on a datagram socket this script binds, as systemd does, and
times from just before the process is spawned to (its working folder is that new folder too, so no
``configs/edged.toml`` is found there):

  first frame   the first segment file holding a Matroska cluster with a video block (read off
                the file every 10 ms by an EBML reader independent of edged: tests/support/ebml.py)
  READY         ``READY=1`` arriving on the socket: edged says it once the first segment's media
                is fdatasync'd (edged.app.systemd)

Beside it, alternating run by run:

  floor         scripts/floor_start.py: PyAV alone, edged's VP8 options, the same test pattern in
                real time, the same cluster length; it fdatasyncs and says READY=1 once its first
                cluster is in its file (video only: no microphone, no index, no stamp, no threads)
  python        ``python -c pass``: the interpreter's own start and exit

With no camera on this machine, edged's ``auto`` camera and microphone fall back to the synthetic
sources (the log says which); on a Pi the camera's own start-up adds to both edged and a floor.

Python reads its bytecode from a cache all runs share (``$PYTHONPYCACHEPREFIX`` in the work folder,
filled by one unmeasured warm-up run), as an installed package does: ``pip install`` compiles it,
and a source compile on every start would be measured otherwise (this machine's environment sets
``PYTHONDONTWRITEBYTECODE``).

Steady memory: one more ``edged run`` and one floor, each left to record ``--rss-seconds`` (30),
then their resident set (VmRSS, and the peak VmHWM) read from /proc.

    .venv/bin/python scripts/bench_start.py [--runs 7] [--rss-seconds 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.config.schema import Settings
from edged.recording.encode import vp8_options
from edged.recording.segment import CLUSTER_MS
from tests.support.ebml import VIDEO, EbmlError, parse
from tests.support.notify import NotifySocket

#: Process start to READY on this machine (issue 15, part 5).
TARGET_READY_S = 1.5
#: The daemon's steady resident memory on its defaults, for a 512 MB board (issue 15, part 3).
TARGET_RSS_MB = 80.0


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def child_env(work: Path, run: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "PYTHONDONTWRITEBYTECODE")}
    env.update(
        NOTIFY_SOCKET=str(run / "notify"),
        STATE_DIRECTORY=str(run / "state"),
        PYTHONPYCACHEPREFIX=str(work / "pycache"),
        PYTHONPATH=str(REPO),
    )
    return env


def has_video_cluster(path: Path) -> bool:
    try:
        webm = parse(path.read_bytes())
        video = [n for n, t in webm.tracks.items() if t.type == VIDEO]
    except (OSError, EbmlError, KeyError, ValueError):  # not there yet, or a cluster half written
        return False
    return any(b.track in video for c in webm.clusters for b in c.blocks)


class FirstFrame(threading.Thread):
    """Polls for the first WebM file (``pattern`` under ``folder``) holding a cluster with video."""

    def __init__(self, folder: Path, pattern: str) -> None:
        super().__init__(daemon=True)
        self.folder, self.pattern = folder, pattern
        self.at: float | None = None
        self.halt = threading.Event()
        self._sizes: dict[Path, int] = {}

    def run(self) -> None:
        while self.at is None and not self.halt.wait(0.01):
            for path in sorted(self.folder.glob(self.pattern)) if self.folder.is_dir() else []:
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if size == self._sizes.get(path):
                    continue  # read again only once it has grown
                self._sizes[path] = size
                if has_video_cluster(path):
                    self.at = time.monotonic()
                    break


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def floor_argv(run: Path) -> list[str]:
    cam = Settings().camera
    spec = {
        "out": str(run / "floor.webm"),
        "width": cam.width,
        "height": cam.height,
        "fps": cam.fps,
        "bitrate": cam.bitrate,
        "vp8": vp8_options(cam),
        "cluster_ms": CLUSTER_MS,
    }
    return [python(), str(REPO / "scripts" / "floor_start.py"), json.dumps(spec)]


def start_once(kind: str, work: Path, hold_s: float = 0.0) -> dict[str, float]:
    """One start of ``kind`` (edged, floor, python): seconds to its first frame and READY; with
    ``hold_s``, left running that long first and its memory read."""
    run = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    argv = {
        "edged": [python(), "-m", "edged", "run"],
        "floor": floor_argv(run),
        "python": [python(), "-c", "pass"],
    }[kind]
    sock = NotifySocket(run / "notify")
    frame = FirstFrame(run / "state" / "segments", "*.webm*") if kind == "edged" else FirstFrame(run, "floor.webm")
    log = (run / "log").open("wb")
    try:
        frame.start()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, env=child_env(work, run), cwd=run, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            if kind == "python":
                proc.wait(timeout=60)
                return {"exit_s": time.monotonic() - t0}
            ready = sock.wait_for("READY", 60)
            deadline = time.monotonic() + 10
            while frame.at is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            if frame.at is None:
                raise RuntimeError(f"{kind}: READY but no frame in a file; log {run / 'log'}")
            out = {"ready_s": ready - t0, "first_frame_s": frame.at - t0}
            if hold_s:
                while time.monotonic() - t0 < hold_s and proc.poll() is None:
                    time.sleep(0.2)
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} exited {proc.returncode} while held; log {run / 'log'}")
                out["rss_mb"], out["hwm_mb"] = rss_mb(proc.pid)
            return out
        finally:
            stop(proc)
    finally:
        frame.halt.set()
        sock.close()
        log.close()


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="starts of each kind, alternating (median)")
    ap.add_argument("--rss-seconds", type=float, default=30.0, help="how long the memory run records")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_start.json")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-start-"))
    runs: dict[str, list[dict[str, float]]] = {"edged": [], "floor": [], "python": []}
    try:
        for kind in runs:  # warm-up: fills the shared bytecode cache, not measured
            start_once(kind, work)
        for i in range(args.runs):
            for kind in runs:
                runs[kind].append(start_once(kind, work))
            e, f = runs["edged"][-1], runs["floor"][-1]
            print(
                f"run {i + 1}/{args.runs}: edged first frame {e['first_frame_s']:.3f} s, READY {e['ready_s']:.3f} s; "
                f"floor {f['first_frame_s']:.3f} s, READY {f['ready_s']:.3f} s; python -c pass "
                f"{runs['python'][-1]['exit_s']:.3f} s",
                flush=True,
            )
        memory = {kind: start_once(kind, work, hold_s=args.rss_seconds) for kind in ("edged", "floor")}
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc = {
        "runs": args.runs,
        "rss_seconds": args.rss_seconds,
        "target_ready_s": TARGET_READY_S,
        "target_rss_mb": TARGET_RSS_MB,
        "load_1min": os.getloadavg()[0],
        "results": {
            "edged": {
                "ready_s": median(runs["edged"], "ready_s"),
                "first_frame_s": median(runs["edged"], "first_frame_s"),
                "ready_s_max": max(r["ready_s"] for r in runs["edged"]),
                "rss_mb": memory["edged"]["rss_mb"],
                "hwm_mb": memory["edged"]["hwm_mb"],
            },
            "floor": {
                "ready_s": median(runs["floor"], "ready_s"),
                "first_frame_s": median(runs["floor"], "first_frame_s"),
                "rss_mb": memory["floor"]["rss_mb"],
                "hwm_mb": memory["floor"]["hwm_mb"],
            },
            "python": {"exit_s": median(runs["python"], "exit_s")},
        },
        "each": runs,
    }
    e, f = doc["results"]["edged"], doc["results"]["floor"]
    print(f"\nstart-up, median of {args.runs} (s from spawn)      edged    floor")
    print(f"  first frame in a segment file            {e['first_frame_s']:7.3f}  {f['first_frame_s']:7.3f}")
    print(f"  READY (first frame synced)               {e['ready_s']:7.3f}  {f['ready_s']:7.3f}   <= {TARGET_READY_S}")
    print(f"  python -c pass                           {doc['results']['python']['exit_s']:7.3f}")
    print(f"memory after {args.rss_seconds:g} s recording, MB")
    print(f"  RSS                                      {e['rss_mb']:7.1f}  {f['rss_mb']:7.1f}   <= {TARGET_RSS_MB:g}")
    print(f"  peak (VmHWM)                             {e['hwm_mb']:7.1f}  {f['hwm_mb']:7.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
