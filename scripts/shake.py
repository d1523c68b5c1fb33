#!/usr/bin/env python3
"""Make high-motion test footage: real camera footage shaken like a walking wearer's bodycam.

The footage (../shared/footage/) is looped, resampled to 10 fps, a moving crop of 80 % of the
picture (two sines per axis, 1.3 + 7.1 Hz horizontally, 1.9 + 4.3 Hz vertically: body sway and
steps) is scaled to 960x540 and temporal sensor noise is added (strength 6; 20 is the low-light
"stress" case). It is all done in one PyAV filter graph (FFmpeg's fps, crop, scale and noise
filters: no ffmpeg command line needed), deterministically (the noise filter has a fixed seed,
the decoder runs one thread): the same parameters give the same bytes.

The result is written once and cached, so every encoder under test reads identical frames:
raw YUV (y4m, the default: reading it costs next to nothing, where decoding a compressed source
would weigh in the CPU figures) or lossless FFV1 in Matroska (``--format ffv1``: about half the
disk space, but decoding it costs CPU in every recorder that reads it). The cache name carries
every parameter and a hash of the filter recipe, so a changed recipe never reuses an old file.

    python scripts/shake.py --seconds 120 --noise 6 [--footage vtest.avi] [--format y4m] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = REPO.parent / "shared" / "footage"

#: The walking wearer: x and y of an 80 % window swing around the centre, t in seconds.
CROP = (
    "w=iw*0.8:h=ih*0.8:"
    "x=(iw-ow)/2*(1+0.6*sin(2*PI*1.3*t)+0.3*sin(2*PI*7.1*t)):"
    "y=(ih-oh)/2*(1+0.6*sin(2*PI*1.9*t)+0.3*sin(2*PI*4.3*t))"
)

#: Output containers: format name -> (file suffix, muxer, codec).
FORMATS = {"y4m": (".y4m", "yuv4mpegpipe", "wrapped_avframe"), "ffv1": (".mkv", "matroska", "ffv1")}


def recipe(noise: int, width: int, height: int, fps: int) -> list[tuple[str, str]]:
    """The filter chain, in order, as (filter, arguments)."""
    return [
        ("fps", str(fps)),
        ("crop", CROP),
        ("scale", f"{width}:{height}"),
        ("noise", f"alls={noise}:allf=t"),
        ("format", "yuv420p"),
    ]


def cache_path(
    out_dir: Path, footage: str, seconds: float, noise: int, width: int, height: int, fps: int, fmt: str
) -> Path:
    steps = ",".join(f"{name}={args}" for name, args in recipe(noise, width, height, fps))
    tag = hashlib.sha1(f"pyav-loop|{steps}".encode()).hexdigest()[:8]
    suffix = FORMATS[fmt][0]
    return out_dir / f"shake-{Path(footage).stem}-{seconds:g}s-n{noise}-{width}x{height}@{fps}-{tag}{suffix}"


def looped(src: Path) -> Iterator[tuple[av.VideoFrame, av.video.stream.VideoStream]]:
    """Decoded frames of ``src`` forever, timestamps continuing across loops."""
    offset = 0
    while True:
        with av.open(str(src)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # one thread: identical frames on every machine
            frame_ticks = max(1, round(1 / (stream.average_rate * stream.time_base)))
            end = offset
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                frame.pts += offset
                end = frame.pts + frame_ticks
                yield frame, stream
        if end == offset:
            raise RuntimeError(f"{src} has no video frames")
        offset = end


def _build_graph(stream: av.video.stream.VideoStream, steps: list[tuple[str, str]]) -> av.filter.Graph:
    graph = av.filter.Graph()
    graph.threads = 1
    nodes = [graph.add_buffer(template=stream)]
    nodes += [graph.add(name, args) for name, args in steps]
    nodes.append(graph.add("buffersink"))
    graph.link_nodes(*nodes).configure()
    return graph


def shaken_frames(
    src: Path, seconds: float, noise: int = 6, width: int = 960, height: int = 540, fps: int = 10
) -> Iterator[av.VideoFrame]:
    """The shaken footage, frame by frame: exactly ``seconds * fps`` frames, pts counted in 1/fps."""
    wanted = round(seconds * fps)
    steps = recipe(noise, width, height, fps)
    graph: av.filter.Graph | None = None
    made = 0
    for frame, stream in looped(src):
        if graph is None:
            graph = _build_graph(stream, steps)
        graph.vpush(frame)
        while True:
            try:
                out = graph.vpull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            out.pts = made
            out.time_base = Fraction(1, fps)
            yield out
            made += 1
            if made == wanted:
                return


def write(frames: Iterator[av.VideoFrame], path: Path, fmt: str, width: int, height: int, fps: int) -> int:
    """Write frames losslessly; return how many."""
    _, muxer, codec = FORMATS[fmt]
    n = 0
    # bitexact: no random Matroska UIDs, so the same recipe gives the same bytes
    with av.open(str(path), "w", format=muxer, container_options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "ffv1":
            stream.codec_context.options = {"level": "3", "slices": "4", "threads": "1"}
        for frame in frames:
            out.mux(stream.encode(frame))
            n += 1
        out.mux(stream.encode(None))
    return n


def shaken(
    seconds: float,
    noise: int = 6,
    footage: str = "vtest.avi",
    out_dir: Path = REPO / "bench-out",
    width: int = 960,
    height: int = 540,
    fps: int = 10,
    fmt: str = "y4m",
) -> Path:
    """Path of the shaken footage, made on first use."""
    src = FOOTAGE / footage
    if not src.exists():
        raise FileNotFoundError(f"footage {src} not found (see ../shared/footage/README.md)")
    out = cache_path(out_dir, footage, seconds, noise, width, height, fps, fmt)
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    write(shaken_frames(src, seconds, noise, width, height, fps), tmp, fmt, width, height, fps)
    tmp.rename(out)  # only complete files get the cache name
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--noise", type=int, default=6, help="temporal noise strength: 6 daylight, 20 low light")
    ap.add_argument("--footage", default="vtest.avi", help="a file in ../shared/footage/ (vtest.avi, bikes.mp4)")
    ap.add_argument("--format", dest="fmt", choices=sorted(FORMATS), default="y4m")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    print(shaken(args.seconds, args.noise, args.footage, args.out, fmt=args.fmt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
