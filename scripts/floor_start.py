#!/usr/bin/env python3
"""The floor of the start-up benchmark: the least any PyAV program spends from process start to its
first frame on disk.

One process, one loop, one file, nothing else: PyAV imported, a libvpx encoder opened with edged's
own options (``edged.recording.encode.vp8_options``, handed over by scripts/bench_start.py as JSON
so this process imports PyAV alone), FFmpeg's test pattern (``testsrc2`` with noise, as edged's
synthetic camera makes it) released in real time, muxed into a WebM with edged's cluster length
and flushing, and the file fdatasync'd as soon as its first cluster is in it; then ``READY=1`` on
``$NOTIFY_SOCKET``, as edged says it. No audio, no index, no stamp, no threads. It then records on
(paced) until killed, so the benchmark can read its steady memory.

    python scripts/floor_start.py SETTINGS_JSON

SETTINGS_JSON: {"out", "width", "height", "fps", "bitrate", "vp8": {...}, "cluster_ms"}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from fractions import Fraction

import av
from av.video.frame import PictureType


def notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), path)


def main() -> int:
    s = json.loads(sys.argv[1])
    fps = s["fps"]
    graph = f"testsrc2=size={s['width']}x{s['height']}:rate={fps},noise=alls=4:allf=t,format=yuv420p"
    with open(s["out"], "wb") as f, av.open(graph, format="lavfi") as src:
        out = av.open(f, "w", format="webm", options={"cluster_time_limit": str(s["cluster_ms"]), "flush_packets": "1"})
        video = out.add_stream("libvpx", rate=fps)
        ctx = video.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = s["width"], s["height"], "yuv420p"
        ctx.time_base = video.time_base = Fraction(1, fps)
        ctx.bit_rate = s["bitrate"]
        ctx.options = s["vp8"]
        header_end: int | None = None
        t0: float | None = None
        for n, frame in enumerate(src.decode(video=0)):
            now = time.monotonic()
            t0 = now if t0 is None else t0
            if t0 + n / fps > now:
                time.sleep(t0 + n / fps - now)  # a camera delivers in real time
            frame.pts, frame.time_base = n, ctx.time_base
            frame.pict_type = PictureType.I if n == 0 else PictureType.NONE
            packets = video.encode(frame)
            out.mux(packets)
            if header_end is None:
                header_end = f.tell() if packets else None  # the header goes out with the first packet
            elif f.tell() > header_end:  # a cluster has reached the file: make it durable, say so
                f.flush()
                os.fdatasync(f.fileno())
                notify("READY=1")
                header_end = sys.maxsize
    return 0


if __name__ == "__main__":
    sys.exit(main())
