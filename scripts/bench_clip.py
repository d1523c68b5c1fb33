#!/usr/bin/env python3
"""Benchmark: building a 120 s clip from the ring buffer, edged against ``ffmpeg -f concat -c copy``.

Records 12 x 10 s segments with the real daemon (unpaced; camera source "file" on shaken real
footage from ../shared/footage, or "synthetic"), then times on the same segments, median of
--repeat runs after one warm-up run:

  * edged ``build_clip``: read + hash the sources, remux into parts within the upload limits,
    fsync + rename, verify every part by decoding every packet, hash the parts;
    its verification share is timed separately (``measure`` wrapped, not replaced), so
    "remux only" = the whole build minus verification;
  * the ffmpeg command line: ``ffmpeg -f concat -safe 0 -i list.txt -c copy out.webm``;
  * for a like-for-like check, ffmpeg's concat followed by a decode of its output
    (``ffmpeg -threads 1 -i out.webm -f null -``), the same verification edged does.

CPU is user+sys seconds: ``time.process_time()`` for edged (in-process; nothing else runs),
``os.wait4`` rusage for the ffmpeg child processes. Prints a table and writes JSON.

    .venv/bin/python scripts/bench_clip.py [--source file|synthetic] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.app.daemon import Daemon
from edged.clips import builder as clip_mod
from edged.clips.builder import SourceSegment, build_clip, measure
from edged.config.schema import from_mapping
from edged.core import limits
from edged.core.paths import StatePaths
from edged.footage.index import Index

SECONDS = 120


def record(state: Path, seconds: int, source: str) -> list[SourceSegment]:
    camera: dict = {"source": "synthetic", "paced": False}
    if source == "file":
        from scripts.shake import shaken

        camera = {"source": "file", "device": str(shaken(seconds)), "paced": False}
    settings = from_mapping(
        {
            "camera": camera,
            "audio": {"source": "synthetic"},
            "storage": {"dir": str(state), "min_free_bytes": 0, "max_bytes": 10**11, "segment_seconds": 10.0},
        },
        origin="bench_clip",
    )
    Daemon(settings, stop_after_s=seconds).run()
    rows = Index(StatePaths(state).index).stored()
    return [
        SourceSegment(state / "segments" / r.name, r.seq, r.mono_start_ns, r.duration_ns, r.sha256 or "") for r in rows
    ]


class VerifyTimer:
    """Wraps edged.clips.builder.measure to add up the CPU and wall time verification takes."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0
        self._inner = clip_mod.measure

    def __call__(self, path):
        c, w = time.process_time(), time.monotonic()
        try:
            return self._inner(path)
        finally:
            self.cpu += time.process_time() - c
            self.wall += time.monotonic() - w


def edged_build(sources: list[SourceSegment], out: Path) -> dict:
    start, end = sources[0].mono_start_ns, sources[-1].mono_start_ns + sources[-1].duration_ns
    timer = VerifyTimer()
    clip_mod.measure = timer
    try:
        c0, w0 = time.process_time(), time.monotonic()
        parts = build_clip(sources, start, end, out, "bench", limits.MAX_UPLOAD_BYTES, limits.MAX_DURATION_MS)
        cpu, wall = time.process_time() - c0, time.monotonic() - w0
    finally:
        clip_mod.measure = timer._inner
    result = {
        "cpu_s": cpu,
        "wall_s": wall,
        "verify_cpu_s": timer.cpu,
        "verify_wall_s": timer.wall,
        "bytes": sum(p.bytes for p in parts),
        "parts": len(parts),
        "part_durations_ms": [p.duration_ms for p in parts],
        "part_bytes": [p.bytes for p in parts],
        "reencoded": sum(p.reencoded for p in parts),
    }
    for p in parts:
        p.path.unlink()
    return result


def run_child(cmd: list[str]) -> tuple[float, float]:
    w0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd[0]} failed: {' '.join(cmd)}")
    return ru.ru_utime + ru.ru_stime, time.monotonic() - w0


def ffmpeg_concat(ffmpeg: str, sources: list[SourceSegment], out: Path) -> dict:
    listing = out / "list.txt"
    listing.write_text("".join(f"file '{s.path}'\n" for s in sources))
    target = out / "concat.webm"
    cpu, wall = run_child(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            str(target),
        ]
    )
    dcpu, dwall = run_child(
        [ffmpeg, "-loglevel", "error", "-nostdin", "-threads", "1", "-i", str(target), "-f", "null", "-"]
    )
    m = measure(target)
    result = {
        "cpu_s": cpu,
        "wall_s": wall,
        "decode_cpu_s": dcpu,
        "decode_wall_s": dwall,
        "bytes": target.stat().st_size,
        "parts": 1,
        "part_durations_ms": [m.duration_ms],
    }
    target.unlink()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--source",
        choices=("file", "synthetic"),
        default="file",
        help="camera source for the recording (file: shaken ../shared/footage)",
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_clip.json")
    args = ap.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("the ffmpeg command line is needed: apt-get install -y ffmpeg", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        w0 = time.monotonic()
        sources = record(tmp_path / "state", SECONDS, args.source)
        print(
            f"recorded {len(sources)} segments ({sum(s.path.stat().st_size for s in sources):,} bytes) "
            f"in {time.monotonic() - w0:.1f} s"
        )
        out = tmp_path / "out"
        out.mkdir()
        edged_build(sources, out)  # warm-up: imports, codec init, page cache
        ffmpeg_concat(ffmpeg, sources, out)
        e_runs, f_runs = [], []
        for _ in range(args.repeat):
            e_runs.append(edged_build(sources, out))
            f_runs.append(ffmpeg_concat(ffmpeg, sources, out))

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    e, f = e_runs[-1], f_runs[-1]
    rows = {
        "edged build_clip (remux+verify+hash)": (med(e_runs, "cpu_s"), med(e_runs, "wall_s"), e["bytes"], e["parts"]),
        "  of which verify (decode all)": (med(e_runs, "verify_cpu_s"), med(e_runs, "verify_wall_s"), None, None),
        "edged without verify": (
            statistics.median(r["cpu_s"] - r["verify_cpu_s"] for r in e_runs),
            statistics.median(r["wall_s"] - r["verify_wall_s"] for r in e_runs),
            e["bytes"],
            e["parts"],
        ),
        "ffmpeg concat -c copy": (med(f_runs, "cpu_s"), med(f_runs, "wall_s"), f["bytes"], f["parts"]),
        "ffmpeg concat + decode": (
            statistics.median(r["cpu_s"] + r["decode_cpu_s"] for r in f_runs),
            statistics.median(r["wall_s"] + r["decode_wall_s"] for r in f_runs),
            f["bytes"],
            f["parts"],
        ),
    }
    print(
        f"\n{len(sources)} segments, {SECONDS} s ({args.source} source); median of {args.repeat} runs; CPU = user+sys\n"
    )
    print(f"{'':38} {'CPU s':>8} {'wall s':>8} {'bytes':>12} {'parts':>6}")
    for name, (cpu, wall, size, parts) in rows.items():
        size_s = f"{size:>12,}" if size is not None else f"{'':>12}"
        parts_s = f"{parts:>6}" if parts is not None else f"{'':>6}"
        print(f"{name:38} {cpu:8.3f} {wall:8.3f} {size_s} {parts_s}")
    ff = rows["ffmpeg concat -c copy"][0]
    ratios = {
        "build_clip_vs_ffmpeg_concat": rows["edged build_clip (remux+verify+hash)"][0] / ff,
        "without_verify_vs_ffmpeg_concat": rows["edged without verify"][0] / ff,
        "build_clip_vs_ffmpeg_concat_plus_decode": rows["edged build_clip (remux+verify+hash)"][0]
        / rows["ffmpeg concat + decode"][0],
    }
    print()
    for k, v in ratios.items():
        print(f"{k:42} {v:6.2f}x")
    print(f"\nedged parts: durations {e['part_durations_ms']} ms, bytes {e['part_bytes']}, re-encoded {e['reencoded']}")
    print(
        f"ffmpeg output: {f['part_durations_ms'][0]} ms, {f['bytes']:,} bytes "
        f"({'over' if f['part_durations_ms'][0] > limits.MAX_DURATION_MS else 'within'} the "
        f"{limits.MAX_DURATION_MS} ms upload limit)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "seconds": SECONDS,
                "segments": len(sources),
                "source": args.source,
                "repeat": args.repeat,
                "table": {k: {"cpu_s": c, "wall_s": w, "bytes": b, "parts": p} for k, (c, w, b, p) in rows.items()},
                "ratios": ratios,
                "edged_runs": e_runs,
                "ffmpeg_runs": f_runs,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
