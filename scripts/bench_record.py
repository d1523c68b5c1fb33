#!/usr/bin/env python3
"""Benchmark: recording high-motion footage, edged against the ffmpeg command line.

Both record the same shaken real footage (scripts/shake.py, cached raw YUV) plus the same tone,
unpaced, into 10 s VP8/Opus WebM segments at 960x540, 10 fps, 300 kbps. The ffmpeg flags are
generated from edged's own encoder settings (``edged.recording.encode.vp8_options`` / ``opus_options``), so
both run the same libvpx and Opus configuration; where that differs from the reference command
(ENCODING.md's "CBR + 1 s buffer" row), the difference is printed.

edged runs as configured by default, so with the time stamp burned into every frame
(``[stamp]``); a third recorder, edged with ``stamp.enabled = false``, runs alternating with the
other two, and the stamp's cost is the ratio of the two edged CPU figures (target: at most 3 %
more). As that ratio is within the machine's run-to-run noise, the stamp stage is also timed
alone, in-process, on the same frames (``edged.recording.stamp.Stamp.apply``, once per frame,
with the wall time moving on at the frame rate so the text is rendered once a second).

The *floor* (scripts/floor_encode.py) runs alternating with them too: a bare PyAV encode of the
same y4m frames (decoded in its loop, as edged's file camera and ffmpeg decode them: the same
read for all, and cheap: raw frames) and the same tone, with edged's own libvpx/Opus options,
one loop, one file. edged with the stamp off must come within 3 % of it (the floor has no
stamp: judged against edged without it); edged is shown beside the ffmpeg CLI both ways. edged
runs with ``audio.pre_event = true`` here, so its audio gate passes the tone through and all four
encode the same sound (off, it would encode its cheaper silence pattern until a press).

Printed side by side, with the targets and edged's pass/fail:
  * CPU seconds per recorded minute: user+sys of the child process (``os.wait4`` rusage),
    median of --repeat alternating runs; peak RSS (``ru_maxrss``, the largest run);
  * video and audio bitrate: packet bytes per stream / that stream's duration in the segments;
  * the largest 120 s span: the most bytes in consecutive whole segments lasting at most 120 s;
  * frames dropped: expected frame instants (seconds x fps) with no frame in the segments;
  * SSIM-Y against the source: output frames paired with source frames by timestamp (segment
    start + pts), SSIM of the luma planes as FFmpeg's ssim filter computes it (8x8 windows on a
    4-pixel grid), every --ssim-every'th frame, streamed (two frames in memory at a time).

    .venv/bin/python scripts/bench_record.py [--seconds 120] [--noise 6] [--footage vtest.avi]
        [--repeat 3] [--keep] [--only edged|ffmpeg|stamp|floor|cpu] [--json bench-out/bench_record.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.config.schema import AudioSettings, CameraSettings, StorageSettings
from edged.core import limits
from edged.recording.encode import opus_options, vp8_options
from edged.recording.segment import TAG_MONO
from scripts.shake import shaken

CAM, AUD, STORE = CameraSettings(), AudioSettings(), StorageSettings()
SPAN_S = limits.MAX_DURATION_MS / 1000  # the longest clip part: 120 s
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
TONE = "sine=frequency=440:beep_factor=4:sample_rate=48000"  # what edged's synthetic audio plays
SEGMENT_LIST = "segments.csv"

#: The reference ffmpeg recipe this benchmark was specified with (values in plain units).
REFERENCE_FLAGS = {
    "deadline": "realtime",
    "cpu-used": "8",
    "lag-in-frames": "0",
    "threads": "1",
    "b:v": "300000",
    "minrate": "300000",
    "maxrate": "300000",
    "bufsize": "300000",
    "rc_init_occupancy": "200000",
    "g": "100",
    "keyint_min": "100",
    "b:a": "64000",
    "vbr": "off",
    "ac": "1",
}


# --- running the two recorders ----------------------------------------------------------------


@dataclass
class Run:
    cpu_s: float
    rss_mb: float
    wall_s: float


def ensure_ffmpeg() -> bool:
    """The ffmpeg command line, installed with apt-get when missing and running as root."""
    if shutil.which("ffmpeg"):
        return True
    if os.geteuid() != 0:
        print(
            "bench_record: the ffmpeg command line is missing; install it with\n"
            "    sudo apt-get update && sudo apt-get install -y ffmpeg",
            file=sys.stderr,
        )
        return False
    print("bench_record: installing ffmpeg (apt-get) ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "ffmpeg"], check=True, env=env)
    return shutil.which("ffmpeg") is not None


def edged_python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def installed_bytecode(cache: Path) -> None:
    """The children (this process's environment) read edged's bytecode from ``cache``, compiled
    here once, unmeasured, as an installed package has it (``pip install`` compiles it), as
    scripts/bench_start.py does. This machine's environment sets ``PYTHONDONTWRITEBYTECODE``:
    without this each edged run compiled all its modules from source, 0.09 CPU s a start measured
    (0.045 s per recorded minute at 120 s: about 1 % of the floor, which imports PyAV alone,
    compiled) that no installed daemon pays."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    subprocess.run([edged_python(), "-m", "compileall", "-q", str(REPO / "edged")], check=True, cwd=REPO)


def edged_cli_problem(python: str) -> str | None:
    """Why ``edged run --config CFG --for SECONDS`` cannot be used, or None."""
    try:
        p = subprocess.run(
            [python, "-m", "edged", "run", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{python} -m edged run --help` failed: {exc}"
    if p.returncode != 0:
        return f"`{python} -m edged run --help` exited {p.returncode}: {p.stderr.strip()[-500:]}"
    if "--for" not in p.stdout:
        return "`edged run` has no --for option yet: the edged half cannot run (the CLI is still being written)"
    return None


def run_measured(cmd: list[str], log: Path) -> Run:
    """Run a child to completion; its stderr goes to ``log`` (a pipe could fill up and block it)."""
    t0 = time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=REPO)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}; log {log}:\n{tail}")
    return Run(cpu_s=ru.ru_utime + ru.ru_stime, rss_mb=ru.ru_maxrss / 1024, wall_s=wall)


def edged_config(source: Path, state_dir: Path, stamp: bool = True) -> str:
    # pre_event on: edged's gate passes the tone through, so every recorder encodes the same sound
    # (off, edged would encode its cheaper silence pattern until a press: not the same work)
    return (
        f'[camera]\nsource = "file"\ndevice = "{source}"\npaced = false\n'
        f'[audio]\nsource = "synthetic"\npre_event = true\n'
        f'[storage]\ndir = "{state_dir}"\nmax_bytes = 10000000000\nmin_free_bytes = 0\n'
        + ("" if stamp else "[stamp]\nenabled = false\n")
    )


def edged_cmd(source: Path, seconds: float, out: Path, stamp: bool = True) -> list[str]:
    cfg = out / "edged.toml"
    cfg.write_text(edged_config(source, out / "edged", stamp))
    return [edged_python(), "-m", "edged", "run", "--config", str(cfg), "--for", f"{seconds:g}"]


def run_edged(source: Path, seconds: float, out: Path, stamp: bool = True) -> tuple[Run, Path, list[str]]:
    cmd = edged_cmd(source, seconds, out, stamp)
    return run_measured(cmd, out / "edged.log"), out / "edged" / "segments", cmd


def run_edged_stamp_off(source: Path, seconds: float, out: Path) -> tuple[Run, Path, list[str]]:
    return run_edged(source, seconds, out, stamp=False)


def stamp_stage_cpu(source: Path, frames: int) -> dict[str, float]:
    """The stamp stage alone, in this process, on the benchmark's own frames: CPU seconds per
    recorded minute of ``Stamp.apply`` (the frames read and converted as the file camera does,
    that reading timed apart and taken off), and the tiles it rendered."""
    import resource

    from edged.capture.file import FileVideo
    from edged.config.schema import Settings
    from edged.recording.stamp import Stamp

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    settings = Settings()
    stamp = Stamp(settings)
    camera = FileVideo(source, CAM.width, CAM.height, CAM.fps, paced=False)
    camera.open()
    wall0 = 1_796_617_565 * 10**9  # any instant: the text changes once a second of media
    reading = stamping = 0.0
    try:
        for n in range(frames):
            t0 = cpu()
            frame = camera.read().frame
            t1 = cpu()
            stamp.apply(frame, wall0 + n * 10**9 // CAM.fps, True)
            t2 = cpu()
            reading, stamping = reading + t1 - t0, stamping + t2 - t1
    finally:
        camera.close()
    per_min = frames / (CAM.fps * 60)
    return {
        "frames": frames,
        "renders": stamp.renders,
        "cpu_s_per_min": stamping / per_min,
        "us_per_frame": stamping / frames * 1e6,
    }


def floor_settings(source: Path, seconds: float, out_file: Path) -> dict:
    """What scripts/floor_encode.py is told: edged's own encoder options, computed here so the
    floor's process imports PyAV alone."""
    return {
        "source": str(source),
        "out": str(out_file),
        "seconds": seconds,
        "width": CAM.width,
        "height": CAM.height,
        "fps": CAM.fps,
        "bitrate": CAM.bitrate,
        "vp8": vp8_options(CAM),
        "audio_bitrate": AUD.bitrate,
        "channels": AUD.channels,
        "opus": opus_options(AUD),
        "keyframe_every": max(1, round(STORE.segment_seconds * CAM.fps)),
    }


def run_floor(source: Path, seconds: float, out: Path) -> tuple[Run, Path, list[str]]:
    """The floor: a bare PyAV encode of the same frames and tone with the same options, one loop,
    one file (scripts/floor_encode.py)."""
    seg_dir = out / "floor"
    seg_dir.mkdir(parents=True)
    settings = json.dumps(floor_settings(source, seconds, seg_dir / "floor.webm"))
    cmd = [edged_python(), str(REPO / "scripts" / "floor_encode.py"), settings]
    return run_measured(cmd, out / "floor.log"), seg_dir, cmd


def video_flags() -> dict[str, str]:
    """edged's VP8 settings as ffmpeg flags (name without the dash -> value)."""
    return {"b:v": str(CAM.bitrate), **vp8_options(CAM)}


def audio_flags() -> dict[str, str]:
    """edged's Opus settings as ffmpeg flags."""
    return {"b:a": str(AUD.bitrate), "ac": str(AUD.channels), "ar": "48000", **opus_options(AUD)}


def as_args(flags: dict[str, str]) -> list[str]:
    return [x for k, v in flags.items() for x in (f"-{k}", v)]


def ffmpeg_cmd(source: Path, seconds: float, seg_dir: Path) -> list[str]:
    seg = f"{STORE.segment_seconds:g}"
    return [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(source),
        "-f",
        "lavfi",
        "-i",
        TONE,
        "-t",
        f"{seconds:g}",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libvpx",
        *as_args(video_flags()),
        "-force_key_frames",
        f"expr:gte(t,n_forced*{seg})",
        "-c:a",
        "libopus",
        *as_args(audio_flags()),
        "-f",
        "segment",
        "-segment_time",
        seg,
        "-segment_format",
        "webm",
        "-reset_timestamps",
        "1",
        "-segment_list",
        str(seg_dir / SEGMENT_LIST),
        "-segment_list_type",
        "csv",
        str(seg_dir / "seg%05d.webm"),
    ]


def run_ffmpeg(source: Path, seconds: float, out: Path) -> tuple[Run, Path, list[str]]:
    seg_dir = out / "segments"
    seg_dir.mkdir(parents=True)
    cmd = ffmpeg_cmd(source, seconds, seg_dir)
    return run_measured(cmd, out / "ffmpeg.log"), seg_dir, cmd


def settings_notes() -> list[str]:
    """Where the mirrored command differs from the reference recipe, and the library versions."""
    mine, notes = video_flags() | audio_flags(), []
    for key in sorted(REFERENCE_FLAGS.keys() | mine.keys()):
        ref, got = REFERENCE_FLAGS.get(key), mine.get(key)
        if ref == got or (ref is None and key == "ar"):
            continue
        if got is None:
            notes.append(f"-{key} {ref}: in the reference command, not set by edged (so not passed to ffmpeg)")
        elif ref is None:
            notes.append(f"-{key} {got}: set by edged (passed to ffmpeg too), not in the reference command")
        else:
            notes.append(f"-{key}: edged {got}, reference {ref} (ffmpeg gets edged's value)")
    cli = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    notes.append(
        f"libraries differ: edged runs PyAV {av.__version__} with FFmpeg {av.ffmpeg_version_info} "
        f"(its bundled libvpx/libopus); the command line is {' '.join(cli.split()[:3])} "
        f"(system libvpx/libopus)"
    )
    return notes


# --- measuring the segments -------------------------------------------------------------------


@dataclass
class Segment:
    path: Path
    bytes: int
    start_s: float = 0.0  # on the recording's timeline
    video_frames: int = 0
    video_bytes: int = 0
    audio_bytes: int = 0
    audio_s: float = 0.0
    keyframes: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def video_s(self) -> float:
        return self.video_frames / CAM.fps


def scan_segment(path: Path) -> Segment:
    """One demux pass: bytes per stream, frames, keyframes, audio duration, container tags."""
    seg = Segment(path, path.stat().st_size)
    a_first = a_end = None
    with av.open(str(path)) as c:
        seg.tags = {k.upper(): v for k, v in c.metadata.items()}
        for p in c.demux():
            if not p.size or p.pts is None:
                continue
            if p.stream.type == "video":
                seg.video_bytes += p.size
                seg.video_frames += 1
                seg.keyframes += bool(p.is_keyframe)
            elif p.stream.type == "audio":
                seg.audio_bytes += p.size
                t0 = float(p.pts * p.time_base)
                t1 = t0 + float((p.duration or 0) * p.time_base)
                a_first = t0 if a_first is None else min(a_first, t0)
                a_end = t1 if a_end is None else max(a_end, t1)
    if a_first is not None:
        seg.audio_s = a_end - a_first
    return seg


def place_segments(seg_dir: Path, segments: list[Segment]) -> None:
    """Set each segment's start on the recording timeline, as the recorder itself recorded it:
    ffmpeg's segment list, edged's EDGED_MONO_START_NS tag; else back to back."""
    listed: dict[str, float] = {}
    if (seg_dir / SEGMENT_LIST).exists():
        with (seg_dir / SEGMENT_LIST).open() as f:
            listed = {row[0]: float(row[1]) for row in csv.reader(f) if row}
    if segments and all(s.path.name in listed for s in segments):
        for s in segments:
            s.start_s = listed[s.path.name]
    elif segments and all(TAG_MONO in s.tags for s in segments):
        origin = int(segments[0].tags[TAG_MONO])
        for s in segments:
            s.start_s = (int(s.tags[TAG_MONO]) - origin) / 1e9
    else:
        t = 0.0
        for s in segments:
            s.start_s, t = t, t + s.video_s


def largest_span(segments: list[Segment], span_s: float = SPAN_S) -> int:
    """Most bytes in consecutive whole segments lasting at most ``span_s`` (half a frame of slack)."""
    best = 0
    for i in range(len(segments)):
        total_s = total_b = 0
        for s in segments[i:]:
            total_s += s.video_s
            if total_s > span_s + 0.5 / CAM.fps:
                break
            total_b += s.bytes
        best = max(best, total_b)
    return best


def ssim_y(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two luma planes over 8x8 windows on a 4-pixel grid: x264's and FFmpeg's
    ``ssim`` filter's definition (checked: same figures to 6 digits)."""
    h, w = a.shape[0] // 4 * 4, a.shape[1] // 4 * 4
    a, b = a[:h, :w].astype(np.float64), b[:h, :w].astype(np.float64)

    def sums(x: np.ndarray) -> np.ndarray:  # 4x4 block sums, then 2x2 blocks of them: 8x8 windows
        s = x.reshape(h // 4, 4, w // 4, 4).sum(axis=(1, 3))
        return s[:-1, :-1] + s[1:, :-1] + s[:-1, 1:] + s[1:, 1:]

    s1, s2, ss, s12 = sums(a), sums(b), sums(a * a + b * b), sums(a * b)
    c1, c2 = 0.01**2 * 255**2 * 64, 0.03**2 * 255**2 * 64 * 63
    var = ss * 64 - s1 * s1 - s2 * s2
    cov = s12 * 64 - s1 * s2
    return float((((2 * s1 * s2 + c1) * (2 * cov + c2)) / ((s1 * s1 + s2 * s2 + c1) * (var + c2))).mean())


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane as stored (a conversion to "gray" would stretch limited range to full range)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    return frame.to_ndarray()[: frame.height]


def output_frames(segments: list[Segment]) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoded output frames with their frame index on the recording timeline (by timestamp)."""
    for s in segments:
        with av.open(str(s.path)) as c:
            stream = c.streams.video[0]
            for frame in c.decode(stream):
                yield round((s.start_s + float(frame.pts * stream.time_base)) * CAM.fps), frame


def source_frames(source: Path) -> Iterator[tuple[int, av.VideoFrame]]:
    with av.open(str(source)) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            yield round(float(frame.pts * stream.time_base) * CAM.fps), frame


def timeline_and_ssim(segments: list[Segment], source: Path, expected: int, every: int) -> tuple[int, float, int]:
    """(expected frame instants with no output frame, mean SSIM-Y of every ``every``'th frame,
    frames compared).

    A merge of two time-ordered streams: at most one frame of each is held at a time."""
    src = source_frames(source)
    src_i, src_frame = -1, None
    seen: set[int] = set()
    scores: list[float] = []
    for i, frame in output_frames(segments):
        seen.add(i)
        if i % every:
            continue
        while src_i < i:
            try:
                src_i, src_frame = next(src)
            except StopIteration:
                src_i, src_frame = sys.maxsize, None
        if src_i == i and src_frame is not None:
            scores.append(ssim_y(luma(src_frame), luma(frame)))
    src.close()
    missing = sum(1 for i in range(expected) if i not in seen)
    return missing, float(np.mean(scores)) if scores else float("nan"), len(scores)


@dataclass
class Figures:
    cpu_s_per_min: float
    peak_rss_mb: float
    wall_s: float
    video_kbps: float
    audio_kbps: float
    peak_1s_video_kbps: float
    max_120s_bytes: int
    frames: int
    frames_dropped: int
    keyframes: int
    segments: int
    ssim_y: float
    ssim_frames: int


def peak_1s_kbps(segments: list[Segment]) -> float:
    """Busiest whole second of video on the timeline (one more demux pass)."""
    per_s: dict[int, int] = {}
    for s in segments:
        with av.open(str(s.path)) as c:
            for p in c.demux(video=0):
                if p.size and p.pts is not None:
                    sec = int(s.start_s + float(p.pts * p.time_base) + 1e-6)
                    per_s[sec] = per_s.get(sec, 0) + p.size
    return max(per_s.values(), default=0) * 8 / 1000


def measure(seg_dir: Path, source: Path, seconds: float, runs: list[Run], every: int) -> Figures:
    files = sorted(seg_dir.glob("*.webm"))
    if not files:
        raise RuntimeError(f"no segments in {seg_dir}")
    segments = [scan_segment(f) for f in files]
    place_segments(seg_dir, segments)
    expected = round(seconds * CAM.fps)
    dropped, ssim, compared = timeline_and_ssim(segments, source, expected, every)
    video_s = sum(s.video_s for s in segments)
    audio_s = sum(s.audio_s for s in segments)
    return Figures(
        cpu_s_per_min=statistics.median(r.cpu_s for r in runs) / (seconds / 60),
        peak_rss_mb=max(r.rss_mb for r in runs),
        wall_s=statistics.median(r.wall_s for r in runs),
        video_kbps=sum(s.video_bytes for s in segments) * 8 / video_s / 1000,
        audio_kbps=sum(s.audio_bytes for s in segments) * 8 / audio_s / 1000 if audio_s else 0.0,
        peak_1s_video_kbps=peak_1s_kbps(segments),
        max_120s_bytes=largest_span(segments),
        frames=sum(s.video_frames for s in segments),
        frames_dropped=dropped,
        keyframes=sum(s.keyframes for s in segments),
        segments=len(segments),
        ssim_y=ssim,
        ssim_frames=compared,
    )


# --- report -----------------------------------------------------------------------------------


#: The stamp may cost at most this much more CPU than recording without it.
STAMP_CPU_TARGET = 1.03
#: edged recording with ``stamp.enabled = false``: the stamp's baseline.
STAMP_OFF = "edged-stamp-off"
#: The bare PyAV encode (scripts/floor_encode.py) and how close edged must come to it, stamp off
#: (the floor has no stamp: the stamp's own cost is judged against edged without it).
FLOOR = "floor"
FLOOR_TARGET = 1.03


def checks(
    e: Figures, f: Figures | None, off: Figures | None = None, floor: Figures | None = None
) -> dict[str, tuple[float | int, bool]]:
    """edged's verdicts: key -> (value, pass)."""
    target = CAM.bitrate / 1000
    out: dict[str, tuple[float | int, bool]] = {
        "video_kbps": (e.video_kbps, abs(e.video_kbps / target - 1) <= 0.10),
        "max_120s_bytes": (e.max_120s_bytes, e.max_120s_bytes <= limits.SPAN_120S_BUDGET_BYTES),
        "frames_dropped": (e.frames_dropped, e.frames_dropped == 0),
    }
    if f is not None:
        ratio = e.cpu_s_per_min / f.cpu_s_per_min
        out["cpu_s_per_min"] = (ratio, ratio <= 1.0)
    if off is not None:
        ratio = e.cpu_s_per_min / off.cpu_s_per_min
        out["stamp_cpu_ratio"] = (ratio, ratio <= STAMP_CPU_TARGET)
    if off is not None and f is not None:
        ratio = off.cpu_s_per_min / f.cpu_s_per_min
        out["stamp_off_vs_ffmpeg"] = (ratio, ratio <= 1.0)
    if floor is not None and off is not None:
        ratio = off.cpu_s_per_min / floor.cpu_s_per_min
        out["stamp_off_vs_floor"] = (ratio, ratio <= FLOOR_TARGET)
    if floor is not None:
        ratio = e.cpu_s_per_min / floor.cpu_s_per_min
        out["stamp_on_vs_floor"] = (ratio, ratio <= FLOOR_TARGET + STAMP_CPU_TARGET - 1)
    return out


ROWS = [  # label, Figures field, format, target
    ("CPU s per recorded minute", "cpu_s_per_min", "{:.2f}", "<= 1.0x ffmpeg"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}", ""),
    ("wall s (unpaced)", "wall_s", "{:.1f}", ""),
    ("video kbps", "video_kbps", "{:.1f}", f"{CAM.bitrate / 1000:.0f} ±10 %"),
    ("video kbps, busiest 1 s", "peak_1s_video_kbps", "{:.0f}", ""),
    ("audio kbps", "audio_kbps", "{:.1f}", f"{AUD.bitrate / 1000:.0f}"),
    ("largest 120 s span, bytes", "max_120s_bytes", "{:,}", f"<= {limits.SPAN_120S_BUDGET_BYTES:,}"),
    ("frames in segments", "frames", "{}", ""),
    ("frames dropped", "frames_dropped", "{}", "0"),
    ("keyframes", "keyframes", "{}", "1 per segment"),
    ("segments", "segments", "{}", ""),
    ("SSIM-Y vs source", "ssim_y", "{:.3f}", ""),
]


def table(results: dict[str, Figures], verdicts: dict[str, tuple[float | int, bool]]) -> str:
    e, f, off, fl = results.get("edged"), results.get("ffmpeg"), results.get(STAMP_OFF), results.get(FLOOR)
    lines = [
        f"{'':28} {'edged':>12} {'no stamp':>12} {'ffmpeg CLI':>12} {'floor':>12}   {'target':<18} pass",
        f"{'-' * 28} {'-' * 12} {'-' * 12} {'-' * 12} {'-' * 12}   {'-' * 18} ----",
    ]
    for label, key, fmt, target in ROWS:
        ev = fmt.format(getattr(e, key)) if e else "-"
        ov = fmt.format(getattr(off, key)) if off else "-"
        fv = fmt.format(getattr(f, key)) if f else "-"
        lv = fmt.format(getattr(fl, key)) if fl else "-"
        verdict = ""
        if key in verdicts:
            value, ok = verdicts[key]
            verdict = "PASS" if ok else "FAIL"
            if key == "cpu_s_per_min":
                verdict += f" ({value:.2f}x)"
        if key == "keyframes" and e:
            target = f"{e.segments} (1 per segment)"
        lines.append(f"{label:28} {ev:>12} {ov:>12} {fv:>12} {lv:>12}   {target:<18} {verdict}")
    ratios = (
        ("stamp_cpu_ratio", "CPU, stamp on / off", STAMP_CPU_TARGET),
        ("stamp_off_vs_ffmpeg", "CPU, stamp off / ffmpeg CLI", 1.0),
        ("stamp_off_vs_floor", "CPU, stamp off / floor", FLOOR_TARGET),
        ("stamp_on_vs_floor", "CPU, stamp on / floor", FLOOR_TARGET + STAMP_CPU_TARGET - 1),
    )
    for key, label, limit in ratios:
        if key in verdicts:
            value, ok = verdicts[key]
            lines.append(
                f"{label:28} {value:>11.3f}x {'':>12} {'':>12} {'':>12}   {f'<= {limit:.2f}x':<18} "
                f"{'PASS' if ok else 'FAIL'}"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--footage", default="vtest.avi", help="a file in ../shared/footage/")
    ap.add_argument("--noise", type=int, default=6, help="sensor noise: 6 shaky daylight, 20 low light (stress)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; CPU and wall are medians")
    ap.add_argument("--ssim-every", type=int, default=5, help="compare every Nth frame")
    ap.add_argument(
        "--only",
        choices=("edged", "ffmpeg", "stamp", FLOOR, "cpu"),
        help="run one recorder only (stamp: edged with and without it; cpu: edged both ways and the floor)",
    )
    ap.add_argument("--stamp-frames", type=int, default=600, help="frames the stamp stage alone is timed on")
    ap.add_argument("--keep", action="store_true", help="keep the outputs in bench-out/bench_record-runs/")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_record.json")
    args = ap.parse_args()

    if not ensure_ffmpeg():
        return 2
    names = {
        None: ["edged", STAMP_OFF, "ffmpeg", FLOOR],
        "stamp": ["edged", STAMP_OFF],
        "cpu": ["edged", STAMP_OFF, FLOOR],
    }.get(args.only, [args.only])
    if "edged" in names and (problem := edged_cli_problem(edged_python())):
        print(f"bench_record: {problem}", file=sys.stderr)
        return 1
    source = shaken(args.seconds, args.noise, args.footage)
    runners = {"edged": run_edged, STAMP_OFF: run_edged_stamp_off, "ffmpeg": run_ffmpeg, FLOOR: run_floor}
    work = REPO / "bench-out" / "bench_record-runs" if args.keep else Path(tempfile.mkdtemp(prefix="bench_record-"))
    shutil.rmtree(work, ignore_errors=True)
    installed_bytecode(work / "pycache")
    # One short unmeasured run each first: with the bytecode cache in a folder of its own, the
    # standard library's modules are compiled there by the first run that imports them (an
    # installed system has them compiled); edged imports more of them than the floor, so the
    # first measured run would otherwise carry that compile (about 0.2 CPU s) and the floor less.
    for name in (n for n in names if n != "ffmpeg"):  # the Python recorders
        (work / f"warm-{name}").mkdir(parents=True)
        runners[name](source, 1.0, work / f"warm-{name}")
    runs: dict[str, list[Run]] = {n: [] for n in names}
    results: dict[str, Figures] = {}
    shown: dict[str, list[str]] = {}
    try:
        for r in range(args.repeat):  # alternate, so the machine's noise hits both alike
            for name in names:
                out = work / f"{name}-{r}"
                out.mkdir(parents=True)
                print(f"run {r + 1}/{args.repeat}: {name} ...", file=sys.stderr, flush=True)
                run, seg_dir, cmd = runners[name](source, args.seconds, out)
                runs[name].append(run)
                if r == args.repeat - 1:  # same input, same output: measure the last run's segments
                    results[name] = measure(seg_dir, source, args.seconds, runs[name], args.ssim_every)
                    shown[name] = cmd
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    stage = stamp_stage_cpu(source, args.stamp_frames) if "edged" in names else None
    verdicts = (
        checks(results["edged"], results.get("ffmpeg"), results.get(STAMP_OFF), results.get(FLOOR))
        if "edged" in results
        else {}
    )
    notes = settings_notes()
    print(
        f"\n{args.seconds:g} s of {source.name} ({args.footage} shaken, noise {args.noise}), "
        f"{CAM.width}x{CAM.height} {CAM.fps} fps, unpaced; CPU and wall: median of {args.repeat} alternating runs;"
        f" SSIM-Y on every {args.ssim_every}th frame\n"
    )
    print(table(results, verdicts))
    if stage is not None:
        share = stage["cpu_s_per_min"] / results["edged"].cpu_s_per_min
        print(
            f"\nstamp stage alone (in-process, {stage['frames']} frames, {stage['renders']} renders): "
            f"{stage['cpu_s_per_min']:.3f} CPU s per recorded minute, {stage['us_per_frame']:.0f} us per frame, "
            f"{share:.1%} of edged's recording"
        )
    print("\nSettings (ffmpeg mirrors edged's encoder options):")
    for n in notes:
        print(f"  - {n}")
    for name, cmd in shown.items():
        print(f"\n{name} command:\n  {' '.join(cmd)}")
    if args.keep:
        print(f"\noutputs kept in {work}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "seconds": args.seconds,
                "footage": args.footage,
                "noise": args.noise,
                "source": str(source),
                "repeat": args.repeat,
                "ssim_every": args.ssim_every,
                "runs": {n: [asdict(r) for r in rs] for n, rs in runs.items()},
                "results": {n: asdict(fig) for n, fig in results.items()},
                "checks": {k: {"value": v, "pass": ok} for k, (v, ok) in verdicts.items()},
                "stamp_stage": stage,
                "stamp_cpu_target": STAMP_CPU_TARGET,
                "floor_target": FLOOR_TARGET,
                "all_pass": bool(verdicts) and all(ok for _, ok in verdicts.values()),
                "commands": shown,
                "edged_config": edged_config(source, Path("<tmp>") / "edged"),
                "settings_notes": notes,
            },
            indent=2,
        )
    )
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
