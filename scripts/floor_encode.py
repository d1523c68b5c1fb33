#!/usr/bin/env python3
"""The floor of the record benchmark: the least any PyAV program can spend recording the footage.

One loop, one file, nothing else: the shaken footage (raw y4m, decoded in the loop by FFmpeg's
demuxer, as edged's file camera and the ffmpeg command line decode it: all three pay the same
read) and the same tone (lavfi ``sine``, 100 ms blocks, as edged's synthetic microphone makes it)
encoded with edged's own libvpx and Opus options (``edged.recording.encode.vp8_options`` /
``opus_options``, handed over by scripts/bench_record.py as JSON so this process imports PyAV
alone), a keyframe forced every segment length as edged forces one at each segment start, and
muxed into one WebM file. No segments, no fsync, no index, no stamp, no gate, no threads.

    python scripts/floor_encode.py SETTINGS_JSON

SETTINGS_JSON: {"source", "out", "seconds", "width", "height", "fps", "bitrate", "vp8": {...},
"audio_bitrate", "channels", "opus": {...}, "keyframe_every"}.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import av
from av.video.frame import PictureType


def main() -> int:
    s = json.loads(sys.argv[1])
    fps, frames = s["fps"], round(s["seconds"] * s["fps"])
    layout = "mono" if s["channels"] == 1 else "stereo"
    tone = f"sine=frequency=440:beep_factor=4:sample_rate=48000:samples_per_frame=4800,aformat=channel_layouts={layout}"
    with av.open(s["source"]) as src, av.open(tone, format="lavfi") as mic, av.open(s["out"], "w", "webm") as out:
        video = out.add_stream("libvpx", rate=fps)
        vctx = video.codec_context
        vctx.width, vctx.height, vctx.pix_fmt = s["width"], s["height"], "yuv420p"
        vctx.time_base = video.time_base = Fraction(1, fps)
        vctx.bit_rate = s["bitrate"]
        vctx.options = s["vp8"]
        audio = out.add_stream("libopus", rate=48_000)
        actx = audio.codec_context
        actx.layout, actx.format, actx.bit_rate = layout, "flt", s["audio_bitrate"]
        actx.time_base = audio.time_base = Fraction(1, 48_000)
        actx.options = s["opus"]
        blocks = mic.decode(audio=0)
        audio_pts = 0
        n = 0
        for frame in src.decode(video=0):
            if n == frames:
                break
            while audio_pts * fps <= n * 48_000:  # the sound up to this frame goes first
                block = next(blocks)
                block.pts, block.time_base = audio_pts, Fraction(1, 48_000)
                audio_pts += block.samples
                out.mux(audio.encode(block))
            frame.pts, frame.time_base = n, vctx.time_base
            frame.pict_type = PictureType.I if n % s["keyframe_every"] == 0 else PictureType.NONE
            out.mux(video.encode(frame))
            n += 1
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return 0 if n == frames else 1


if __name__ == "__main__":
    sys.exit(main())
