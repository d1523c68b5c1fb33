"""Camera YUV buffers to the recorder's yuv420p, in one pass over the pixels.

libcamera hands 4:2:0 frames in one of two layouts, and which one depends on the pipeline, not on
what was asked for: planar YUV420 (Y, then U, then V; the Raspberry Pi ISP's own) or semi-planar
NV12 (Y, then U and V interleaved; libcamera's virtual camera, many USB/ISP pipelines). The
input here is a view of the camera's buffer as picamera2 lays it out (``Helpers._make_array_shared``,
what ``MappedArray`` exposes): ``height * 3 / 2`` rows, each ``stride`` bytes apart; for YUV420 the
chroma rows are ``stride / 2`` apart. The view is read once and the result owns its pixels, so the
camera buffer can be handed back as soon as this returns.

Measured per 960x540 frame (scripts/bench_yuv.py, x86-64, PyAV 18.1 wheel / Debian's PyAV 14.2):

- NV12 -> yuv420p through one kept ``VideoReformatter`` (FFmpeg's swscale, SIMD de-interleave) over
  a zero-copy wrap of the view: 50 / 36 us. numpy (Y copied, UV de-interleaved with strided slices
  into the frame's planes): 97 / 100 us - byte-strided copies do not vectorise. A fresh reformatter
  per frame (``frame.reformat``) costs 800-1300 us: swscale's set-up, so one is kept per stream.
- YUV420 at the target size: the planes are copied row-block by row-block with numpy (memcpy
  speed); swscale would return the very frame it was given, still pointing into the camera buffer.
- A different size (libcamera adjusted it): swscale converts and scales in the same pass.
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
