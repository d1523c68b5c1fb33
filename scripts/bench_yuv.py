#!/usr/bin/env python3
"""Benchmark: a camera's 4:2:0 buffer to the recorder's yuv420p, per frame (edged.capture.yuv).

libcamera hands NV12 (the virtual camera, many pipelines) or planar YUV420 (the Pi ISP). edged
converts straight from picamera2's MappedArray view of the camera buffer, so the only copy is the
conversion itself. Side by side, CPU microseconds per frame (process CPU time, median; each way
n frames in a row, 3 rounds), from a buffer laid out as picamera2 lays it out:

  NV12    edged (one kept swscale context over a zero-copy wrap) | numpy (Y copied, UV
          de-interleaved by slices into the frame's planes) | frame.reformat (a new swscale context
          per frame) | from_ndarray + reformat (the obvious PyAV way: a copy, then a conversion)
  YUV420  edged (numpy plane copy) | from_ndarray of a packed copy (what edged did before)
  copy    np.copy of the buffer: what picamera2's make_array adds, and the mapped view saves

The same figures from real libcamera buffers (Debian's PyAV 14 in the picamera2 test root):
``scripts/picamera2-root run python /project/tests/support/picamera2_root/probe.py convert 960 540 300``.

    .venv/bin/python scripts/bench_yuv.py [--width 960] [--height 540] [--frames 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.capture.yuv import YuvConverter


def nv12_ways(w: int, h: int) -> dict[str, Callable[[np.ndarray], av.VideoFrame]]:
    ours = YuvConverter("NV12", w, h, w, h)

    def numpy_planes(view: np.ndarray) -> av.VideoFrame:
        frame = av.VideoFrame(w, h, "yuv420p")
        dst = [np.frombuffer(memoryview(p), np.uint8).reshape(-1, p.line_size) for p in frame.planes]
        dst[0][:h, :w] = view[:h]
        dst[1][:, : w // 2] = view[h:, 0::2]
        dst[2][:, : w // 2] = view[h:, 1::2]
        return frame

    return {
        "edged: one kept swscale context": ours,
        "numpy: Y copied, UV de-interleaved": numpy_planes,
        "frame.reformat: new swscale context per frame": lambda v: av.VideoFrame.from_numpy_buffer(
            v, format="nv12"
        ).reformat(format="yuv420p"),
        "from_ndarray + reformat": lambda v: av.VideoFrame.from_ndarray(v, format="nv12").reformat(format="yuv420p"),
    }


def yuv420_ways(w: int, h: int) -> dict[str, Callable[[np.ndarray], av.VideoFrame]]:
    ours = YuvConverter("YUV420", w, h, w, h)

    def packed(view: np.ndarray) -> av.VideoFrame:  # edged before: slice, concatenate, from_ndarray
        flat = view.reshape(-1)
        stride = view.shape[1]
        y = flat[: h * stride].reshape(h, stride)[:, :w]
        c = (h // 2) * (stride // 2)
        u = flat[h * stride : h * stride + c].reshape(h // 2, stride // 2)[:, : w // 2]
        v = flat[h * stride + c : h * stride + 2 * c].reshape(h // 2, stride // 2)[:, : w // 2]
        return av.VideoFrame.from_ndarray(
            np.concatenate((y.ravel(), u.ravel(), v.ravel())).reshape(h * 3 // 2, w), format="yuv420p"
        )

    return {"edged: plane copy into the frame": ours, "concatenate + from_ndarray (edged before)": packed}


def measure(
    ways: dict[str, Callable[[np.ndarray], object]], buf: np.ndarray, n: int, rounds: int = 3
) -> dict[str, float]:
    """Median CPU per frame of each way, run as a daemon runs one: ``n`` frames in a row (ways
    interleaved frame by frame disturb each other's memory reuse: a new 777 kB frame is then
    page-faulted in every time). ``rounds`` rounds, the order reversed each round."""
    names = list(ways)
    pictures = [
        np.asarray(r.to_ndarray() if isinstance(r, av.VideoFrame) else r) for r in (ways[k](buf) for k in names)
    ]
    assert all(np.array_equal(pictures[0], p) for p in pictures[1:]), "the ways disagree"
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            way = ways[name]
            for _ in range(n):
                t = time.process_time()
                way(buf)
                cpu[name].append(time.process_time() - t)
    return {k: round(statistics.median(v) * 1e6, 1) for k, v in cpu.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=540)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    w, h = args.width, args.height
    rng = np.random.default_rng(1)
    nv12 = rng.integers(16, 236, (h * 3 // 2, w), dtype=np.uint8)
    stride = -(-w // 128) * 128  # the Pi's YUV420 rows
    yuv420 = rng.integers(16, 236, (h * 3 // 2, stride), dtype=np.uint8)
    copy_us = measure({"np.copy (make_array)": lambda b: np.copy(b)}, nv12, args.frames)
    out = {
        "size": [w, h],
        "frames": args.frames,
        "av": av.__version__,
        "numpy": np.__version__,
        "nv12_cpu_us": measure(nv12_ways(w, h), nv12, args.frames),
        "yuv420_cpu_us": measure(yuv420_ways(w, h), yuv420, args.frames),
        "copy_cpu_us": copy_us,
    }
    for section in ("nv12_cpu_us", "yuv420_cpu_us", "copy_cpu_us"):
        print(section)
        for name, us in out[section].items():
            print(f"  {us:8.1f} us  {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
