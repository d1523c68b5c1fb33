#!/usr/bin/env python3
"""Benchmark: recording high-motion footage, edged against the ffmpeg command line.

Both record the same shaken real footage (scripts/shake.py) plus the same tone, unpaced, into
10 s VP8/Opus WebM segments at 960x540, 10 fps, 300 kbps, with the same libvpx settings
(edged/encode.py is the one place they live; the ffmpeg flags below mirror it). Printed side by
side: CPU seconds per recorded minute, peak RSS, video and audio bitrate, the largest 120 s span
(12 consecutive segments) in bytes, frames dropped, SSIM-Y against the source.

    .venv/bin/python scripts/bench_record.py [--seconds 180] [--noise 6] [--json PATH]
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
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged import limits  # noqa: E402
from edged.config import CameraSettings  # noqa: E402
from edged.encode import OPUS_FRAME_MS, vp8_options  # noqa: E402
from scripts.shake import shaken  # noqa: E402

SEGMENT_S = 10
SPAN_SEGMENTS = 12  # 120 s


@dataclass
class Figures:
    cpu_s_per_min: float
    peak_rss_mb: float
    video_kbps: float
    audio_kbps: float
    max_120s_bytes: int
    frames: int
    frames_dropped: int
    ssim_y: float
    segments: int
    wall_s: float


def run_measured(cmd: list[str]) -> tuple[float, float, float]:
    """Run a child; return (CPU seconds user+sys, peak RSS MB, wall seconds)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{err[-3000:]}")
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, wall


def run_edged(source: Path, seconds: float, out: Path) -> tuple[float, float, float, Path]:
    cfg = out / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "file"
device = "{source}"
paced = false
[audio]
source = "synthetic"
[storage]
dir = "{out / 'state'}"
max_bytes = 100000000000
min_free_bytes = 0
""")
    cpu, rss, wall = run_measured([sys.executable, "-m", "edged", "run", "--config", str(cfg), "--for", str(seconds)])
    return cpu, rss, wall, out / "state" / "segments"


def ffmpeg_cmd(source: Path, seconds: float, out: Path) -> list[str]:
    cam = CameraSettings()
    o = vp8_options(cam)  # the same libvpx settings edged uses
    return ["ffmpeg", "-loglevel", "error", "-nostdin", "-y", "-i", str(source),
            "-f", "lavfi", "-i", "sine=frequency=440:beep_factor=4:sample_rate=48000",
            "-t", str(seconds), "-map", "0:v", "-map", "1:a",
            "-c:v", "libvpx", "-deadline", o["deadline"], "-cpu-used", o["cpu-used"],
            "-lag-in-frames", o["lag-in-frames"], "-threads", o["threads"], "-auto-alt-ref", o["auto-alt-ref"],
            "-b:v", str(cam.bitrate), "-minrate", o["minrate"], "-maxrate", o["maxrate"], "-bufsize", o["bufsize"],
            "-rc_init_occupancy", o["rc_init_occupancy"], "-g", o["g"],
            "-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT_S})",
            "-c:a", "libopus", "-b:a", "64k", "-vbr", "off", "-ac", "1", "-frame_duration", str(OPUS_FRAME_MS),
            "-f", "segment", "-segment_time", str(SEGMENT_S), "-segment_format", "webm",
            "-reset_timestamps", "1", str(out / "seg%05d.webm")]


def run_ffmpeg(source: Path, seconds: float, out: Path) -> tuple[float, float, float, Path]:
    seg_dir = out / "segments"
    seg_dir.mkdir(parents=True)
    cpu, rss, wall = run_measured(ffmpeg_cmd(source, seconds, seg_dir))
    return cpu, rss, wall, seg_dir


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two luma planes with a uniform 8x8 window (integral images)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    c1, c2, w = (0.01 * 255) ** 2, (0.03 * 255) ** 2, 8

    def box(x: np.ndarray) -> np.ndarray:
        s = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return (s[w:, w:] - s[:-w, w:] - s[w:, :-w] + s[:-w, :-w]) / (w * w)

    ma, mb = box(a), box(b)
    va, vb, cov = box(a * a) - ma * ma, box(b * b) - mb * mb, box(a * b) - ma * mb
    ssim = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(ssim.mean())


def source_luma(source: Path, every: int):
    with av.open(str(source)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every == 0:
                yield i, f.to_ndarray(format="gray")


def measure(seg_dir: Path, source: Path, seconds: float, fps: int, ssim_every: int) -> dict:
    files = sorted(seg_dir.glob("*.webm"))
    vbytes = abytes = frames = 0
    sizes = [f.stat().st_size for f in files]
    out_luma: dict[int, np.ndarray] = {}
    n = 0
    for f in files:
        with av.open(str(f)) as c:
            for p in c.demux():
                if not p.size:
                    continue
                if p.stream.type == "video":
                    vbytes += p.size
                    for frame in p.decode():
                        if n % ssim_every == 0:
                            out_luma[n] = frame.to_ndarray(format="gray")
                        n += 1
                elif p.stream.type == "audio":
                    abytes += p.size
    frames = n
    scores = [_ssim(ref, out_luma[i]) for i, ref in source_luma(source, ssim_every) if i in out_luma]
    spans = [sum(sizes[i:i + SPAN_SEGMENTS]) for i in range(max(1, len(sizes) - SPAN_SEGMENTS + 1))]
    return {"video_kbps": vbytes * 8 / seconds / 1000, "audio_kbps": abytes * 8 / seconds / 1000,
            "max_120s_bytes": max(spans), "frames": frames, "frames_dropped": max(0, round(seconds * fps) - frames),
            "ssim_y": float(np.mean(scores)) if scores else float("nan"), "segments": len(files)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--noise", type=int, default=6, help="sensor noise: 6 shaky daylight, 20 low light")
    ap.add_argument("--footage", default="vtest.avi")
    ap.add_argument("--ssim-every", type=int, default=10, help="compare every Nth frame")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; CPU and wall are medians")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_record.json")
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        print("bench_record: the ffmpeg command line is needed (apt-get install ffmpeg)", file=sys.stderr)
        return 2
    source = shaken(args.seconds, args.noise, args.footage)
    cam = CameraSettings()
    results: dict[str, Figures] = {}
    runs: dict[str, list[tuple[float, float, float]]] = {"edged": [], "ffmpeg": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):  # alternate, so machine noise hits both alike
            for name, runner in (("edged", run_edged), ("ffmpeg", run_ffmpeg)):
                out = Path(tmp) / f"{name}-{r}"
                out.mkdir()
                cpu, rss, wall, seg_dir = runner(source, args.seconds, out)
                runs[name].append((cpu, rss, wall))
                if r == args.repeat - 1:  # the output is deterministic: measure it once
                    m = measure(seg_dir, source, args.seconds, cam.fps, args.ssim_every)
                    cpu_med = statistics.median(c for c, _, _ in runs[name])
                    results[name] = Figures(cpu_s_per_min=cpu_med / (args.seconds / 60),
                                            peak_rss_mb=max(x for _, x, _ in runs[name]),
                                            wall_s=statistics.median(w for _, _, w in runs[name]), **m)
                shutil.rmtree(out)

    e, f = results["edged"], results["ffmpeg"]
    target_kbps = cam.bitrate / 1000
    checks = {
        "cpu_vs_ffmpeg": (e.cpu_s_per_min / f.cpu_s_per_min, e.cpu_s_per_min <= f.cpu_s_per_min * 1.0),
        "video_bitrate_within_10pct": (e.video_kbps / target_kbps, abs(e.video_kbps / target_kbps - 1) <= 0.10),
        "max_120s_span_under_budget": (e.max_120s_bytes, e.max_120s_bytes <= limits.SPAN_120S_BUDGET_BYTES),
        "zero_frames_dropped": (e.frames_dropped, e.frames_dropped == 0),
    }
    rows = [("CPU s per recorded minute", "cpu_s_per_min", "{:.2f}", "<= 1.0x ffmpeg"),
            ("peak RSS MB", "peak_rss_mb", "{:.0f}", ""),
            ("video kbps", "video_kbps", "{:.1f}", f"{target_kbps:.0f} ±10 %"),
            ("audio kbps", "audio_kbps", "{:.1f}", "64"),
            ("largest 120 s span, bytes", "max_120s_bytes", "{:,}", f"<= {limits.SPAN_120S_BUDGET_BYTES:,}"),
            ("frames", "frames", "{}", f"{round(args.seconds * cam.fps)}"),
            ("frames dropped", "frames_dropped", "{}", "0"),
            ("SSIM-Y vs source", "ssim_y", "{:.3f}", ""),
            ("segments", "segments", "{}", ""),
            ("wall s", "wall_s", "{:.1f}", "")]
    print(f"\n{args.seconds:.0f} s of shaken {args.footage} (noise {args.noise}), 960x540 10 fps, unpaced;"
          f" CPU and wall: median of {args.repeat} alternating runs\n")
    print(f"{'':28} {'edged':>14} {'ffmpeg CLI':>14}   target")
    for label, key, fmt, target in rows:
        print(f"{label:28} {fmt.format(getattr(e, key)):>14} {fmt.format(getattr(f, key)):>14}   {target}")
    print()
    for name, (value, ok) in checks.items():
        print(f"{name:28} {value:>14.3f}   {'PASS' if ok else 'FAIL'}" if isinstance(value, float)
              else f"{name:28} {value:>14}   {'PASS' if ok else 'FAIL'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": args.seconds, "noise": args.noise, "footage": args.footage,
                                     "cpu_runs": {k: [c for c, _, _ in v] for k, v in runs.items()},
                                     "edged": asdict(e), "ffmpeg": asdict(f),
                                     "checks": {k: {"value": v, "pass": ok} for k, (v, ok) in checks.items()}},
                                    indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
