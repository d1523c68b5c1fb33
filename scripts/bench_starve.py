#!/usr/bin/env python3
"""Benchmark: recording under a CPU quota below what it needs (a starved or throttled small board).

The real daemon (``edged run``) records the synthetic camera and tone, paced in real time, with
sound from the start (``audio.pre_event``). First unconstrained: what it uses per second of
recording is its *need* (a fraction of one CPU). Then, for each fraction of that need (default 60 %
and 35 %), a fresh daemon starts unconstrained, and once recording it is moved into a cgroup the
benchmark creates with that CPU quota (cgroup v1 ``cpu.cfs_quota_us``, or v2 ``cpu.max``; see
tests/support/cgroups.py): start-up is not what is measured, a starved recording is.

Per run, printed as one table:
  * frames kept: frames in the segments / frame instants of the recording's span;
  * longest gap between kept frames (an even drop pattern keeps it near need/quota periods);
  * lag: how far behind real time the recorder is (wall time since the quota minus frames encoded
    and dropped over fps), the most in the last third against the middle third (a backlog that
    grows shows as a difference);
  * sound: the longest gap in the audio, and the A/V offset (how far any whole segment's sound ends
    from its picture's end);
  * RSS: the most, and the last third's median against the middle third's (flat);
  * ``frames_dropped`` and whether the ``cpu_starved`` alarm was raised (and, after the quota is
    lifted at the end, cleared).
Every segment is decoded (valid WebM under any load).

    sudo .venv/bin/python scripts/bench_starve.py [--seconds 60] [--fractions 0.6,0.35]
        [--size 960x540] [--json bench-out/bench_starve.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_soak import PYTHON, proc_figures, read_status
from tests.support import cgroups
from tests.support.media_timeline import figures

FPS = 10


def config(work: Path, size: str, bitrate: int) -> Path:
    width, height = (int(x) for x in size.split("x"))
    cfg = work / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "synthetic"
paced = true
width = {width}
height = {height}
fps = {FPS}
bitrate = {bitrate}
[audio]
source = "synthetic"
pre_event = true
[storage]
dir = "{work / "state"}"
min_free_bytes = 0
""")
    return cfg


def record(
    label: str, seconds: float, size: str, bitrate: int, cpu: float | None, log=print, keep: bool = False
) -> dict:
    """One run: start, wait for recording, (quota), record ``seconds``, (lift the quota, wait for the
    alarm to clear), stop; the figures."""
    work = Path(tempfile.mkdtemp(prefix=f"bench_starve-{label}-"))
    state = work / "state"
    group = cgroups.Cgroup(f"edged-starve-{label}", cpu=cpu) if cpu is not None else None
    samples: list[tuple[float, float, float]] = []  # (seconds since the quota, RSS MB, CPU s)
    lags: list[tuple[float, float]] = []
    starved_seen = cleared = False
    status: dict = {}
    try:
        with open(work / "daemon.log", "wb") as err:
            daemon = subprocess.Popen(
                [PYTHON, "-m", "edged", "run", "--config", str(config(work, size, bitrate))],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        try:
            deadline = time.monotonic() + 120
            while read_status(state).get("frames_encoded", 0) < FPS:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: the daemon did not start recording; see {work}/daemon.log")
                time.sleep(0.2)
            if group is not None:
                group.add(daemon.pid)
            t0 = time.monotonic()
            first = read_status(state)
            frames0 = first.get("frames_encoded", 0) + first.get("frames_dropped", 0)
            cpu0 = proc_figures(daemon.pid)[3]
            while (now := time.monotonic()) - t0 < seconds:
                rss, _, _, cpu_s = proc_figures(daemon.pid)
                samples.append((now - t0, rss, cpu_s))
                status = read_status(state) or status
                if status:
                    done = status.get("frames_encoded", 0) + status.get("frames_dropped", 0) - frames0
                    lags.append((now - t0, (now - t0) - done / FPS))
                    starved_seen = starved_seen or "cpu_starved" in status.get("alarms", [])
                time.sleep(0.5)
            cpu_used = proc_figures(daemon.pid)[3] - cpu0
            wall = time.monotonic() - t0
            if group is not None:
                group.remove(daemon.pid)  # the CPU comes back: the alarm must clear
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if "cpu_starved" not in read_status(state).get("alarms", ["?"]):
                        cleared = True
                        break
                    time.sleep(0.5)
            status = read_status(state) or status
            daemon.send_signal(signal.SIGTERM)
            rc = daemon.wait(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        segs = sorted((state / "segments").glob("*.webm"))
        f = figures(segs, FPS)
        # Thirds: the first fills the bounded backlog (and the memory it takes); the last must be
        # no worse than the middle (a backlog or memory that grows shows as a difference).
        third = wall / 3
        mid = [(lag, r) for (t, lag), (_, r, _) in zip(lags, samples, strict=True) if third <= t < 2 * third]
        last = [(lag, r) for (t, lag), (_, r, _) in zip(lags, samples, strict=True) if t >= 2 * third]
        result = {
            "label": label,
            "quota_cpu": cpu,
            "seconds": wall,
            "cpu_fraction": cpu_used / wall,
            "exit_code": rc,
            "frames_dropped": status.get("frames_dropped"),
            "frames_dropped_behind": status.get("frames_dropped_behind"),
            "cpu_starved_raised": starved_seen,
            "cpu_starved_cleared": cleared if group is not None else None,
            "lag_s_middle": max(lag for lag, _ in mid),
            "lag_s_last": max(lag for lag, _ in last),
            "rss_mb_max": max(r for _, r, _ in samples),
            "rss_mb_middle": statistics.median(r for _, r in mid),
            "rss_mb_last": statistics.median(r for _, r in last),
            **f.doc(),
        }
        log(f"{label}: {json.dumps(result)}")
        if keep:
            log(f"{label}: kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        return result
    finally:
        if group is not None:
            group.close()


def run(
    seconds: float,
    fractions: list[float],
    size: str,
    bitrate: int,
    log=print,
    keep: bool = False,
    need: float | None = None,
) -> dict:
    why = cgroups.unavailable()
    if why:
        raise SystemExit(f"bench_starve: {why}")
    base = record("unlimited", seconds, size, bitrate, None, log, keep)
    need = need or base["cpu_fraction"]
    runs = [base]
    for frac in fractions:
        runs.append(record(f"{frac:.0%}", seconds, size, bitrate, need * frac, log, keep))
    for r, frac in zip(runs, [None, *fractions]):
        r["fraction_of_need"] = frac
    return {
        "seconds": seconds,
        "size": size,
        "bitrate": bitrate,
        "fps": FPS,
        "need_cpu": need,
        "cgroup": "v2" if cgroups.v2() else "v1",
        "runs": runs,
    }


def print_report(r: dict) -> None:
    print(
        f"\nstarvation: {r['size']} at {r['fps']} fps, {r['seconds']:g} s per run; recording needs "
        f"{r['need_cpu']:.1%} of a CPU (cgroup {r['cgroup']})\n"
    )
    print(
        f"{'quota':>14} {'kept':>6} {'longest gap s':>13} {'lag s (last 3rd)':>16} {'audio gap s':>11} "
        f"{'A/V offset s':>12} {'RSS MB max':>10} {'RSS mid→last 3rd':>17} {'dropped':>7} {'alarm':>15}"
    )
    for x in r["runs"]:
        quota = "none" if x["quota_cpu"] is None else f"{x['fraction_of_need']:.0%} ({x['quota_cpu']:.1%})"
        alarm = ("raised" if x["cpu_starved_raised"] else "-") + (
            "/cleared" if x["cpu_starved_cleared"] else "/NOT cleared" if x["cpu_starved_cleared"] is False else ""
        )
        print(
            f"{quota:>14} {x['kept']:6.1%} {x['longest_gap_s']:13.2f} {x['lag_s_last']:16.2f} "
            f"{x['longest_audio_gap_s']:11.3f} {x['av_offset_s']:12.3f} {x['rss_mb_max']:10.1f} "
            f"{x['rss_mb_middle']:7.1f} → {x['rss_mb_last']:6.1f} {x['frames_dropped']!s:>7} {alarm:>15}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="recording under each quota")
    ap.add_argument("--fractions", default="0.6,0.35", help="quotas, as fractions of the measured need")
    ap.add_argument("--size", default="960x540")
    ap.add_argument("--bitrate", type=int, default=300_000)
    ap.add_argument("--keep", action="store_true", help="keep each run's folder (segments, daemon.log)")
    ap.add_argument("--need", type=float, help="use this need (fraction of a CPU) instead of the measured one")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_starve.json")
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",") if x]
    r = run(
        args.seconds,
        fractions,
        args.size,
        args.bitrate,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        keep=args.keep,
        need=args.need,
    )
    print_report(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=1))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
