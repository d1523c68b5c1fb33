"""Camera YUV buffers to the recorder's yuv420p, in one pass over the pixels.

libcamera hands 4:2:0 frames in one of two layouts, and which one depends on the pipeline, not on
what was asked for: planar YUV420 (Y, then U, then V; the Raspberry Pi ISP's own) or semi-planar
NV12 (Y, then U and V interleaved; libcamera's virtual camera, many USB/ISP pipelines). The
input here is a view of the camera's buffer as picamera2 lays it out (``Helpers._make_array_shared``,
what ``MappedArray`` exposes): ``height * 3 / 2`` rows, each ``stride`` bytes apart; for YUV420 the
chroma rows are ``stride / 2`` apart. The view is read once and the result owns its pixels, so the
camera buffer can be handed back as soon as this returns.

CPU per 960x540 frame (scripts/bench_yuv.py, x86-64; PyAV 18.1 wheel / Debian 13's PyAV 14.2):

- NV12 through one kept ``VideoReformatter`` (FFmpeg's swscale, a SIMD de-interleave) over a
  zero-copy wrap of the view: 78-84 / 29 us. numpy instead (Y copied, UV de-interleaved with
  strided slices into the frame's planes): 92-97 / 92 us - byte-strided copies do not vectorise.
  A new swscale context per frame (``frame.reformat``): 295-314 / 35 us; ``from_ndarray`` then
  ``reformat``: 1070-1130 / 540 us. So swscale, with its context kept for the stream.
- YUV420 at the target size: the planes are copied into the frame with numpy, 36 / 34 us (the
  ``concatenate`` + ``from_ndarray`` edged used before: 880-910 / 220-234 us). swscale would
  return the very frame it was given, still pointing into the camera buffer.
- A different size (libcamera adjusted it): swscale converts and scales in the same pass.
- picamera2's ``make_array`` would add a copy of the whole buffer first: 17-21 us.
"""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from edged.capture.base import PIX_FMT

#: picamera2 format names this module reads, and FFmpeg's name for each layout.
LAYOUTS = {"YUV420": "yuv420p", "NV12": "nv12"}


class YuvConverter:
    """Converts every frame of one stream (format and size fixed when the camera was configured)."""

    def __init__(self, fmt: str, width: int, height: int, out_width: int, out_height: int) -> None:
        if fmt not in LAYOUTS:
            raise ValueError(f"{fmt} is not a 4:2:0 layout edged reads ({', '.join(LAYOUTS)})")
        self.fmt, self.width, self.height = fmt, width, height
        self.out_width, self.out_height = out_width, out_height
        self._av_format = LAYOUTS[fmt]
        self._copy_planes = fmt == "YUV420" and (width, height) == (out_width, out_height)
        self._reformatter = VideoReformatter()

    def __call__(self, view: np.ndarray) -> av.VideoFrame:
        """``view``: the camera buffer as picamera2 shapes it (see the module docstring)."""
        if self._copy_planes:
            return self._planar_copy(view)
        picture = view[:, : self.width] if view.shape[1] > self.width else view
        # A frame over the camera's own memory (no copy); swscale reads it once into a new frame.
        wrapped = av.VideoFrame.from_numpy_buffer(picture, format=self._av_format)
        return self._reformatter.reformat(wrapped, width=self.out_width, height=self.out_height, format=PIX_FMT)

    def _planar_copy(self, view: np.ndarray) -> av.VideoFrame:
        """YUV420 rows as picamera2 gives them: the whole stride, padding included, so the chroma
        planes (rows of ``stride / 2``) are found by offset in the flat buffer."""
        w, h = self.width, self.height
        stride = view.shape[1]
        flat = view.reshape(-1)  # a view: picamera2 does not slice YUV420 rows
        y_size, c_stride, c_rows = h * stride, stride // 2, h // 2
        c_size = c_rows * c_stride
        sources = (
            flat[:y_size].reshape(h, stride)[:, :w],
            flat[y_size : y_size + c_size].reshape(c_rows, c_stride)[:, : w // 2],
            flat[y_size + c_size : y_size + 2 * c_size].reshape(c_rows, c_stride)[:, : w // 2],
        )
        frame = av.VideoFrame(w, h, PIX_FMT)
        for plane, src in zip(frame.planes, sources):
            rows, cols = src.shape
            np.frombuffer(memoryview(plane), np.uint8).reshape(rows, plane.line_size)[:, :cols] = src
        return frame
