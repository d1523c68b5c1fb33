#!/usr/bin/env python3
"""Benchmark: answering recall requests from the ring buffer, edged against the ffmpeg command line.

A ring buffer of the timelapse's length + 2 minutes (62) is recorded once by the real daemon (unpaced, default settings:
960x540, 10 fps, 300 kbps VP8 + 64 kbps Opus, 10 s segments) from shaken real footage
(scripts/shake.py, 120 s of ../shared/footage/vtest.avi looped as the camera) and cached in
``bench-out/``. Then, --repeat times, alternating, each in a child process (CPU = user+sys from
``os.wait4``, peak RSS, wall):

  * **edged timelapse 60 min**: ``RecallService.submit`` + build (``edged.clips.timelapse``: only the GOPs
    holding a wanted frame decoded, up to the last wanted frame; VP8 re-encode, no audio; verify by
    decoding every packet; sha256; manifest; outbox) — the device's answer up to "in the outbox";
  * **edged regular 3 min**: the same through the clip builder (remux, parts within the limits,
    each verified by a full decode);
  * **ffmpeg timelapse**: the same window from the same segment files: ``-f concat`` of the
    segments overlapping it, input ``-ss``/``-t`` to the window, ``framestep`` keeping every Nth frame
    (edged's interval), ``setpts`` to edged's output rate, libvpx with edged's VP8 options at the
    bitrate edged chose (``edged.recording.encode.vp8_options``), ``-an``;
  * **ffmpeg regular**: ``-f concat`` + input ``-ss``/``-t`` + ``-c copy`` (no verification, one file,
    not split to the limits).

Printed: CPU s, wall s, peak RSS, bytes, measured duration, frames (and, for edged, the source
frames decoded out of those read), with the upload limits. Writes JSON.

    .venv/bin/python scripts/bench_recall.py [--repeat 3] [--minutes 60] [--json bench-out/bench_recall.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.clips.builder import measure
from edged.config.schema import CameraSettings, from_mapping
from edged.core import limits
from edged.footage.index import Index
from edged.recording.encode import vp8_options
from scripts.bench_record import as_args, ensure_ffmpeg, run_measured

S = 1_000_000_000
SHAKE_SECONDS = 120


def ring_settings(state: Path, source: Path):
    return from_mapping(
        {
            "camera": {"source": "file", "device": str(source), "paced": False},
            "audio": {"source": "synthetic"},
            "storage": {"dir": str(state), "min_free_bytes": 0, "max_bytes": 10**11},
        },
        origin="bench_recall",
    )


def ring(minutes: int) -> Path:
    """The recorded ring buffer (cached by recipe: footage, length, camera settings)."""
    from scripts.shake import shaken

    source = shaken(SHAKE_SECONDS)
    recipe = f"{source.name}|{minutes}|{dataclasses.asdict(ring_settings(Path('x'), source).camera)}"
    state = REPO / "bench-out" / f"recall-ring-{minutes}min-{hashlib.sha1(recipe.encode()).hexdigest()[:8]}"
    if (state / "complete").exists():
        return state
    shutil.rmtree(state, ignore_errors=True)
    from edged.app.daemon import Daemon

    print(f"recording a {minutes}-minute ring buffer into {state} (once; cached) ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    if Daemon(ring_settings(state, source), stop_after_s=minutes * 60).run() != 0:
        raise RuntimeError("recording the ring buffer failed")
    (state / "complete").write_text(recipe)
    print(f"recorded in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return state


def windows(state: Path, minutes: int) -> tuple[int, int]:
    """Start of the timelapse window (a minute in) and of the regular one (mid-way, 3 s after a keyframe)."""
    rows = Index(state / "index.sqlite", read_only=True).stored()
    first = rows[0].best_wall_start_ns
    assert rows[-1].best_wall_end_ns >= first + (minutes + 1) * 60 * S, "ring too short"
    mid = rows[len(rows) // 2].best_wall_start_ns + 3 * S
    return first + 60 * S, mid


# --- measuring a child ----------------------------------------------------------------------------------

#: A forked child's peak RSS starts at its parent's (Linux keeps the high-water mark across exec), and
#: this benchmark's own process holds the codecs: each measured command is therefore started by a
#: small launcher (Python without site, a few MB) that forks it, waits for it and reports its usage.
_LAUNCH = """
import json, os, sys
report, cmd = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump({"cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], folder: Path) -> dict:
    """CPU (user+sys), peak RSS and wall of ``cmd``; its output goes to ``folder/log.txt``."""
    report = folder / "usage.json"
    run = run_measured([sys.executable, "-S", "-c", _LAUNCH, str(report), *cmd], folder / "log.txt")
    return json.loads(report.read_text()) | {"wall_s": run.wall_s}


# --- the edged half: a child process per run ---------------------------------------------------------


def child(state: Path, work: Path, kind: str, start_ns: int, minutes: int) -> dict:
    """Answer one recall in this process, as the daemon's worker does; print what it made."""
    from edged.clips.job import FootageJobs
    from edged.core.timefmt import iso
    from edged.recall.request import RecallStore
    from edged.recall.service import RecallService
    from edged.recording.clock import RecordingClock
    from edged.upload.outbox import Outbox

    settings = from_mapping({"storage": {"dir": str(work), "min_free_bytes": 0}}, origin="bench_recall")
    shutil.copy(state / "index.sqlite", work / "index.sqlite")  # holds go into a copy
    index = Index(work / "index.sqlite")
    rows = index.stored()
    outbox = Outbox(work / "outbox.sqlite", targets=["directory"])
    clock = RecordingClock(  # a copy of a recording: nothing records now, the footage ends where it ends
        boot_id="",
        timeline_now_ns=lambda: rows[-1].best_wall_end_ns,
        wall_offset_ns=lambda: 0,
        footage_offset_ns=lambda: 0,
        clock_synced=lambda: True,
    )
    service = RecallService(
        settings,
        RecallStore(work / "recall.sqlite"),
        FootageJobs(index, outbox, work / "clips", state / "segments", clock),
        outbox,
        status_folder=work / "status",
        inbox=None,
    )
    c0, w0 = time.process_time(), time.monotonic()
    answer = service.submit({"start_time": iso(start_ns), "duration": minutes, "recall_type": kind}, "bench")
    assert answer["status"] == "pending", answer
    service.process_ready()
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    doc = service.status("bench")
    assert doc["status"] == "processing", doc
    parts = doc["cameras"][0]["parts"]
    manifest = json.loads((work / "clips" / "recall-bench" / "manifest.json").read_text())
    frames = sum(measure(work / "clips" / "recall-bench" / p["file"]).video_frames for p in parts)
    return {
        "build_cpu_s": cpu,
        "build_wall_s": wall,
        "parts": len(parts),
        "bytes": [p["bytes"] for p in parts],
        "duration_ms": [p["duration_ms"] for p in parts],
        "frames": frames,
        "timelapse": manifest["timelapse"],
    }


def run_edged(state: Path, kind: str, start_ns: int, minutes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_recall-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            kind,
            "--state",
            str(state),
            "--start-ns",
            str(start_ns),
            "--minutes",
            str(minutes),
            "--work",
            tmp,
            "--result",
            str(out),
        ]
        usage = measured(cmd, Path(tmp))
        return json.loads(out.read_text()) | usage


# --- the ffmpeg half --------------------------------------------------------------------------------------


def concat_list(state: Path, start_ns: int, end_ns: int, listing: Path) -> float:
    """The segment files overlapping the window; returns the window's offset in the concatenation."""
    rows = [
        r
        for r in Index(state / "index.sqlite", read_only=True).stored()
        if r.best_wall_start_ns < end_ns and r.best_wall_end_ns > start_ns
    ]
    listing.write_text("".join(f"file '{state / 'segments' / r.name}'\n" for r in rows))
    return (start_ns - rows[0].best_wall_start_ns) / S


def run_ffmpeg_timelapse(state: Path, start_ns: int, minutes: int, edged_tl: dict) -> dict:
    fps, step = edged_tl["fps"], round(edged_tl["interval_seconds"] * 10)  # source is 10 fps
    cam = dataclasses.replace(CameraSettings(), fps=fps, bitrate=edged_tl["bitrate"])
    with tempfile.TemporaryDirectory(prefix="bench_recall-") as tmp:
        listing, out = Path(tmp) / "list.txt", Path(tmp) / "timelapse.webm"
        offset = concat_list(state, start_ns, start_ns + minutes * 60 * S, listing)
        cmd = [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-threads",
            "1",
            "-ss",
            f"{offset:.3f}",
            "-t",
            str(minutes * 60),
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-an",
            "-vf",
            f"framestep={step},setpts=N/({fps}*TB)",
            "-r",
            str(fps),
            "-c:v",
            "libvpx",
            "-b:v",
            str(cam.bitrate),
            *as_args(vp8_options(cam)),
            str(out),
        ]
        usage = measured(cmd, Path(tmp))
        m = measure(out)
        return usage | {
            "parts": 1,
            "bytes": [out.stat().st_size],
            "duration_ms": [m.duration_ms],
            "frames": m.video_frames,
            "command": " ".join(cmd),
        }


def run_ffmpeg_regular(state: Path, start_ns: int, minutes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_recall-") as tmp:
        listing, out = Path(tmp) / "list.txt", Path(tmp) / "regular.webm"
        offset = concat_list(state, start_ns, start_ns + minutes * 60 * S, listing)
        cmd = [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-ss",
            f"{offset:.3f}",
            "-t",
            str(minutes * 60),
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            str(out),
        ]
        usage = measured(cmd, Path(tmp))
        m = measure(out)
        return usage | {
            "parts": 1,
            "bytes": [out.stat().st_size],
            "duration_ms": [m.duration_ms],
            "frames": m.video_frames,
            "command": " ".join(cmd),
        }


# --- report -------------------------------------------------------------------------------------------------


def summary(runs: list[dict]) -> dict:
    last = runs[-1]
    out = {k: statistics.median(r[k] for r in runs) for k in ("cpu_s", "wall_s")}
    out |= {
        "rss_mb": max(r["rss_mb"] for r in runs),
        "parts": last["parts"],
        "bytes": last["bytes"],
        "duration_ms": last["duration_ms"],
        "frames": last["frames"],
    }
    if "build_cpu_s" in last:
        out |= {k: statistics.median(r[k] for r in runs) for k in ("build_cpu_s", "build_wall_s")}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--minutes", type=int, default=60, help="timelapse length (a contract duration)")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_recall.json")
    ap.add_argument("--child", choices=("timelapse", "regular"), help=argparse.SUPPRESS)
    ap.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--start-ns", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.result.write_text(json.dumps(child(args.state, args.work, args.child, args.start_ns, args.minutes)))
        return 0

    if not ensure_ffmpeg():
        return 2
    state = ring(args.minutes + 2)
    tl_start, reg_start = windows(state, args.minutes)
    runs: dict[str, list[dict]] = {
        k: [] for k in ("edged timelapse", "ffmpeg timelapse", "edged regular", "ffmpeg regular")
    }
    for r in range(args.repeat):
        print(f"run {r + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
        e = run_edged(state, "timelapse", tl_start, args.minutes)
        runs["edged timelapse"].append(e)
        runs["ffmpeg timelapse"].append(run_ffmpeg_timelapse(state, tl_start, args.minutes, e["timelapse"]))
        runs["edged regular"].append(run_edged(state, "regular", reg_start, 3))
        runs["ffmpeg regular"].append(run_ffmpeg_regular(state, reg_start, 3))
    table = {k: summary(v) for k, v in runs.items()}
    tl = runs["edged timelapse"][-1]["timelapse"]

    print(
        f"\nring: {state.name}; median of {args.repeat} runs; CPU = user+sys of the child process "
        f"(Python start-up and imports included for edged; 'build' = the answer alone, in-process)\n"
    )
    print(
        f"{'':18} {'CPU s':>7} {'build CPU':>9} {'wall s':>7} {'RSS MB':>7} {'parts':>5} {'bytes':>21} "
        f"{'duration ms':>15} {'frames':>6}"
    )
    for name, t in table.items():
        build = f"{t['build_cpu_s']:9.2f}" if "build_cpu_s" in t else f"{'':9}"
        print(
            f"{name:18} {t['cpu_s']:7.2f} {build} {t['wall_s']:7.2f} {t['rss_mb']:7.0f} {t['parts']:5} "
            f"{' + '.join(f'{b:,}' for b in t['bytes']):>21} {' + '.join(map(str, t['duration_ms'])):>15} "
            f"{t['frames']:6}"
        )
    print(
        f"\ntimelapse: {args.minutes} min → a frame every {tl['interval_seconds']} s (x{tl['speed']:.0f}), "
        f"{tl['frames']} frames at {tl['fps']} fps, {tl['bitrate']} bps, no audio; edged decoded "
        f"{tl['decoded_frames']} of {tl['source_frames']} source frames read "
        f"({100 * tl['decoded_frames'] / tl['source_frames']:.0f} %)"
    )
    print(f"limits: {limits.MAX_UPLOAD_BYTES:,} bytes, {limits.MAX_DURATION_MS} ms per part")
    ratio = table["edged timelapse"]["cpu_s"] / table["ffmpeg timelapse"]["cpu_s"]
    print(f"edged timelapse CPU / ffmpeg timelapse CPU: {ratio:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "ring": state.name,
                "minutes": args.minutes,
                "repeat": args.repeat,
                "table": table,
                "timelapse": {k: v for k, v in tl.items() if k != "frame_offsets_ms"},
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
