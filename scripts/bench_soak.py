#!/usr/bin/env python3
"""Soak benchmark: an hour of footage (unpaced) with marks and uploads; memory, descriptors, CPU.

The real daemon runs as a child process (``edged run``) on the synthetic camera and tone, unpaced,
with a ring buffer a third of the footage long (so it overwrites for the last two thirds), a mark
every ``--mark-every`` minutes of footage (through the control socket, as ``edged mark`` does), and
every clip delivered to two targets: the directory target and the Sonoran contract server
(tests/contract/sonoran_server.py, run as its own process on 127.0.0.1). Once a second the benchmark reads
from /proc: resident memory, open file descriptors (/proc/PID/fd), threads, and user+system CPU
seconds; and from the daemon's status.json the footage recorded so far.

Printed: the series (one row per step of footage), then the verdict, each figure beside its
baseline, which for a soak is the run's own start:
  * RSS slope: least squares over the last three quarters of the footage, MB per hour of footage;
    and the median RSS of the last quarter against the first;
  * open FDs: the most seen in the last quarter against the most in the first, and what is still
    open at the end (no file deleted by the ring may stay open);
  * CPU s per recorded minute: the last quarter against the first.
The run is measured once warm (from the first delivery on); quarters are of that steady part. Memory
gets a verdict from 30 minutes of footage on (over a few minutes one allocation reads as a slope).

    .venv/bin/python scripts/bench_soak.py [--minutes 60] [--mark-every 3] [--size 960x540]
        [--json bench-out/bench_soak.json]
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.app.control import ControlError, request
from edged.core.paths import StatePaths
from tests.support import live_status

PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY = "soak-key"
ACCOUNT = "4b1c6f2e-8f9a-4a57-9a43-2d9a3c1b0e11"
FPS = 10
#: Verdict thresholds: what "flat" means on a noisy 2-core machine (±10–15 % run to run).
RSS_SLOPE_MB_PER_H = 5.0
FD_GROWTH = 2
CPU_RATIO = 1.15
#: Footage below which memory gets figures but no verdict.
RSS_VERDICT_MIN = 30.0


@dataclass
class Sample:
    wall_s: float
    media_min: float
    rss_mb: float
    fds: int
    threads: int
    cpu_s: float
    segments: int
    delivered: int  # deliveries done (every target counted)


def proc_figures(pid: int) -> tuple[float, int, int, float]:
    """(RSS MB, open FDs, threads, user+system CPU s) of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_mb = int(fields["VmRSS"].split()[0]) / 1024
    threads = int(fields["Threads"])
    stat = Path(f"/proc/{pid}/stat").read_text()
    after = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces; fields resume after ')'
    cpu_s = (int(after[11]) + int(after[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_mb, fds, threads, cpu_s


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return sorted(out)


#: The daemon's live status (status.json is written once a second, several seconds of footage
#: when unpaced): the control socket's answer, {} while it is starting.
read_status = live_status


class ContractServer:
    """tests/contract/sonoran_server.py as its own process (as a server on the network would be)."""

    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen(
            [
                PYTHON,
                str(REPO / "tests" / "contract" / "sonoran_server.py"),
                "--port",
                "0",
                "--key",
                f"{KEY}=pro",
                "--store-dir",
                str(store),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"contract server did not start: {line!r}")
        self.url = line.split(" ", 1)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def daemon_config(
    work: Path, server_url: str, minutes: float, size: str, bitrate: int, pre: float, post: float
) -> Path:
    width, height = (int(x) for x in size.split("x"))
    # A ring a third of the footage long: it overwrites for the last two thirds of the run.
    per_s = (bitrate + 64_000) / 8
    max_bytes = max(10_000_000, int(per_s * minutes * 60 / 3))
    (work / "api.key").write_text(KEY + "\n")
    cfg = work / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "synthetic"
paced = false
width = {width}
height = {height}
bitrate = {bitrate}
[audio]
source = "synthetic"
[storage]
dir = "{work / "state"}"
max_bytes = {max_bytes}
min_free_bytes = 0
[clips]
pre_roll_seconds = {pre}
post_roll_seconds = {post}
[upload]
targets = ["directory", "sonoran_v2"]
retry_base_seconds = 0.5
retry_cap_seconds = 5
[upload.directory]
path = "{work / "delivered"}"
[upload.sonoran_v2]
base_url = "{server_url}"
api_key_file = "{work / "api.key"}"
account_uuid = "{ACCOUNT}"
plan = "pro"
""")
    return cfg


def _at(samples: list[Sample], media_min: float, attr: str) -> float:
    """A figure at a point of the footage, interpolated between the samples around it."""
    before = [s for s in samples if s.media_min <= media_min]
    after = [s for s in samples if s.media_min >= media_min]
    if not before:
        return getattr(after[0], attr)
    if not after:
        return getattr(before[-1], attr)
    a, b = before[-1], after[0]
    if b.media_min == a.media_min:
        return getattr(a, attr)
    f = (media_min - a.media_min) / (b.media_min - a.media_min)
    return getattr(a, attr) + f * (getattr(b, attr) - getattr(a, attr))


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def verdict(samples: list[Sample], minutes: float) -> dict:
    """The figures, each with its baseline (the run's own first quarter), and PASS/FAIL (None: no
    verdict). The run is measured once warm: from the first delivery on (every kind of work has been
    done once: recording, a clip built and verified, both uploads), at the earliest after 1/20 of it.
    Quarters are of that steady part. A memory verdict needs a long run (``RSS_VERDICT_MIN``): over a
    few minutes a single allocation of a few MB reads as a steep slope per hour."""
    minutes = min(minutes, samples[-1].media_min)  # the footage sampled (the last look may fall short)
    delivered = [s.media_min for s in samples if s.delivered > 0]
    t0 = max(minutes / 20, delivered[0] if delivered else 0.0)
    if t0 >= minutes * 0.8:
        t0 = minutes / 20  # nothing delivered in time: measure what there is
    q = (minutes - t0) / 4
    q1, q3 = t0 + q, minutes - q
    first = [s for s in samples if t0 <= s.media_min <= q1] or [min(samples, key=lambda s: abs(s.media_min - q1))]
    last = [s for s in samples if q3 <= s.media_min <= minutes] or [samples[-1]]
    steady = [s for s in samples if t0 <= s.media_min <= minutes]
    slope_h = _slope([s.media_min for s in steady], [s.rss_mb for s in steady]) * 60
    cpu_first = (_at(samples, q1, "cpu_s") - _at(samples, t0, "cpu_s")) / (q1 - t0)
    cpu_last = (_at(samples, minutes, "cpu_s") - _at(samples, q3, "cpu_s")) / (minutes - q3)
    rss_first, rss_last = statistics.median(s.rss_mb for s in first), statistics.median(s.rss_mb for s in last)
    fd_first, fd_last = max(s.fds for s in first), max(s.fds for s in last)
    th_first, th_last = max(s.threads for s in first), max(s.threads for s in last)
    judge_rss = minutes >= RSS_VERDICT_MIN
    no_verdict = f" (verdict from {RSS_VERDICT_MIN:g} min of footage)" if not judge_rss else ""
    return {
        "warm_from_min": {"value": t0, "baseline": 0.0, "pass": None, "target": "first delivery"},
        "rss_slope_mb_per_hour": {
            "value": slope_h,
            "baseline": 0.0,
            "pass": abs(slope_h) <= RSS_SLOPE_MB_PER_H if judge_rss else None,
            "target": f"|slope| <= {RSS_SLOPE_MB_PER_H:g} MB/h{no_verdict}",
        },
        "rss_mb": {
            "value": rss_last,
            "baseline": rss_first,
            "pass": rss_last - rss_first <= RSS_SLOPE_MB_PER_H if judge_rss else None,
            "target": f"last quarter <= first + {RSS_SLOPE_MB_PER_H:g} MB{no_verdict}",
        },
        "open_fds": {
            "value": fd_last,
            "baseline": fd_first,
            "pass": fd_last - fd_first <= FD_GROWTH,
            "target": f"last quarter max <= first + {FD_GROWTH}",
        },
        "threads": {
            "value": th_last,
            "baseline": th_first,
            "pass": th_last <= th_first + 1,
            "target": "last quarter max <= first + 1",
        },
        "cpu_s_per_recorded_min": {
            "value": cpu_last,
            "baseline": cpu_first,
            "pass": cpu_last <= cpu_first * CPU_RATIO,
            "target": f"last quarter <= {CPU_RATIO:g}x first",
        },
    }


def run(
    minutes: float = 60,
    mark_every: float = 3.0,
    size: str = "960x540",
    bitrate: int = 300_000,
    pre: float = 30.0,
    post: float = 30.0,
    sample_s: float = 1.0,
    work: Path | None = None,
    log=print,
) -> dict:
    """Run the soak; return figures, verdicts, the series and the end state (JSON-ready)."""
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="bench_soak-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    server = ContractServer(work / "server-store")
    daemon = None
    samples: list[Sample] = []
    marks = 0
    try:
        cfg = daemon_config(work, server.url, minutes, size, bitrate, pre, post)
        with open(work / "daemon.log", "wb") as err:
            daemon = subprocess.Popen(
                [PYTHON, "-m", "edged", "run", "--config", str(cfg)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        w0 = time.monotonic()
        next_mark = mark_every
        next_log = 0.0
        drained_at = None
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({daemon.returncode}) during the soak; see {work}/daemon.log")
            st = read_status(state)
            media = st.get("frames_encoded", 0) / FPS / 60
            rss, fds, threads, cpu = proc_figures(daemon.pid)
            outbox = st.get("outbox", {})
            if media <= minutes:
                samples.append(
                    Sample(
                        time.monotonic() - w0,
                        media,
                        rss,
                        fds,
                        threads,
                        cpu,
                        st.get("segments_written", 0),
                        outbox.get("delivered", 0),
                    )
                )
            if media >= next_log:
                log(
                    f"  … {media:5.1f} min of footage, RSS {rss:6.1f} MB, {fds} fds, {threads} threads, "
                    f"CPU {cpu:7.1f} s, {marks} marks, outbox {outbox}"
                )
                next_log += max(1.0, minutes / 12)
            if next_mark <= media < minutes and st:
                try:
                    request(StatePaths(state).control, {"cmd": "mark", "note": f"soak {marks}"})
                    marks += 1
                except (ControlError, OSError) as exc:
                    log(f"  mark refused: {exc}")
                while next_mark <= media:
                    next_mark += mark_every
            if media >= minutes:
                pending = sum(n for k, n in outbox.items() if k not in ("delivered", "failed"))
                if pending == 0 and st.get("events_open", 1) == 0:
                    drained_at = drained_at or time.monotonic()
                    if time.monotonic() - drained_at >= 2:  # settled: what is open now stays open
                        break
                elif time.monotonic() - w0 > 600 + minutes * 60:
                    raise RuntimeError(f"uploads did not drain: {outbox}")
            time.sleep(sample_s)
        open_at_end = fd_targets(daemon.pid)
        end_status = read_status(state)
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=60)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        server.stop()
    figures = verdict(samples, minutes)
    deleted_open = [t for t in open_at_end if t.endswith("(deleted)")]
    figures["deleted_files_open"] = {"value": len(deleted_open), "baseline": 0, "pass": not deleted_open, "target": "0"}
    outbox = end_status.get("outbox", {})
    result = {
        "minutes": minutes,
        "mark_every_min": mark_every,
        "size": size,
        "bitrate": bitrate,
        "marks": marks,
        "exit_code": rc,
        "wall_s": samples[-1].wall_s if samples else 0.0,
        "segments_written": end_status.get("segments_written"),
        "frames_dropped": end_status.get("frames_dropped"),
        "outbox": outbox,
        "uploads_delivered": outbox.get("delivered", 0),
        "alarms": end_status.get("alarms"),
        "open_at_end": open_at_end,
        "figures": figures,
        "all_pass": rc == 0 and all(f["pass"] is not False for f in figures.values()) and outbox.get("failed", 0) == 0,
        "samples": [asdict(s) for s in samples],
    }
    if own_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def print_report(r: dict, rows: int = 12) -> None:
    samples = [Sample(**s) for s in r["samples"]]
    step = r["minutes"] / rows
    print(
        f"\nsoak: {r['minutes']:g} min of footage ({r['size']}, {r['bitrate']} bps, unpaced) in "
        f"{r['wall_s']:.0f} s, {r['marks']} marks, uploads {r['outbox']}, exit {r['exit_code']}\n"
    )
    print(
        f"{'footage min':>11} {'wall s':>7} {'RSS MB':>7} {'FDs':>4} {'threads':>7} {'CPU s':>8} "
        f"{'CPU s/min':>9} {'segments':>8} {'delivered':>9}"
    )
    prev = None
    for i in range(rows + 1):
        m = min(i * step, samples[-1].media_min)
        s = min(samples, key=lambda x: abs(x.media_min - m))
        per_min = (
            ""
            if prev is None or s.media_min <= prev.media_min
            else f"{(s.cpu_s - prev.cpu_s) / (s.media_min - prev.media_min):9.2f}"
        )
        print(
            f"{s.media_min:11.1f} {s.wall_s:7.0f} {s.rss_mb:7.1f} {s.fds:4d} {s.threads:7d} {s.cpu_s:8.1f} "
            f"{per_min:>9} {s.segments:8d} {s.delivered:9d}"
        )
        prev = s
    print(f"\n{'figure':34} {'end':>9} {'baseline':>9}   target                              verdict")
    for name, f in r["figures"].items():
        judged = "" if f["pass"] is None else "PASS" if f["pass"] else "FAIL"
        print(f"{name:34} {f['value']:9.2f} {f['baseline']:9.2f}   {f['target']:35} {judged}")
    if r["figures"]["deleted_files_open"]["value"]:
        print(
            "files deleted but still open at the end:", *[t for t in r["open_at_end"] if "(deleted)" in t], sep="\n  "
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60, help="footage to record")
    ap.add_argument("--mark-every", type=float, default=3.0, help="a mark every this many minutes of footage")
    ap.add_argument("--size", default="960x540", help="camera WIDTHxHEIGHT")
    ap.add_argument("--bitrate", type=int, default=300_000)
    ap.add_argument("--pre", type=float, default=30.0, help="pre-roll seconds")
    ap.add_argument("--post", type=float, default=30.0, help="post-roll seconds")
    ap.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--keep", type=Path, help="keep the state folder, logs and server store here")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_soak.json")
    args = ap.parse_args()
    r = run(
        args.minutes,
        args.mark_every,
        args.size,
        args.bitrate,
        args.pre,
        args.post,
        args.sample,
        work=args.keep,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print_report(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=1))
    print(f"\nJSON: {args.json}")
    return 0 if r["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
