"""USB (UVC) cameras through FFmpeg's video4linux2 input.

MJPEG is asked for first: at 720p and up, most USB cameras reach their full frame rate only in
MJPEG, raw YUYV being limited by USB bandwidth. When the camera has no MJPEG mode, the driver's
default (usually YUYV) is taken. Frames are scaled/converted to the recording format.

Time: FFmpeg's ``timestamps`` option is left at ``default``, under which a packet's pts is the
kernel's buffer timestamp as is, in microseconds (stream time base 1/1000000). UVC and most
other capture drivers stamp buffers with CLOCK_MONOTONIC (V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC),
the clock of ``time.monotonic()``. ``abs`` and ``mono2abs`` would turn that into wall-clock
time, which jumps when NTP sets the clock. A driver whose first timestamp is not near
``time.monotonic()`` is stamped with ``time.monotonic()`` at read instead.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from collections.abc import Iterator
from fractions import Fraction

import av

from edged.capture.base import SourceError, SourceUnavailable, VideoSample, to_target

log = logging.getLogger("edged.capture.v4l2")

#: Where cameras are looked for when no device is configured: USB cameras' stable names first
#: (on a Pi, /dev/video0.. may be the CSI receiver and /dev/video1x the codecs and ISP).
DEVICE_GLOBS = ("/dev/v4l/by-id/*-video-index0", "/dev/video*")
#: A first kernel timestamp further than this from time.monotonic() is not CLOCK_MONOTONIC.
CLOCK_TOLERANCE = 5.0
#: Consecutive undecodable frames (USB cameras send a few broken JPEGs) before giving up.
MAX_BAD_FRAMES = 30


class V4L2Video:
    name = "v4l2"

    def __init__(self, device: str | None, width: int, height: int, fps: int) -> None:
        self.device = device
        self.width, self.height, self.fps = width, height, fps
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._time_base: Fraction | None = None
        self._kernel_clock: bool | None = None  # decided on the first frame

    def open(self) -> None:
        if self.device:
            self._container = self._open_device(self.device)
        else:
            self._container = self._open_first(candidate_devices())
        stream = self._container.streams.video[0]
        log.info(
            "v4l2: %s, %s %dx%d",
            self._container.name,
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
        )
        self._frames = self._decoded(self._container)
        self._time_base = stream.time_base  # 1/1000000: pts are the kernel's microseconds
        self._kernel_clock = None

    def _open_first(self, devices: list[str]) -> av.container.InputContainer:
        reasons = []
        for device in devices:
            try:
                return self._open_device(device)
            except SourceUnavailable as exc:
                reasons.append(str(exc))
        if not reasons:
            raise SourceUnavailable("no V4L2 camera: no " + " or ".join(DEVICE_GLOBS) + " exists")
        raise SourceUnavailable("no V4L2 camera could be opened: " + "; ".join(reasons))

    def _open_device(self, device: str) -> av.container.InputContainer:
        options = {"video_size": f"{self.width}x{self.height}", "framerate": str(self.fps)}
        try:
            return av.open(device, format="v4l2", options=options | {"input_format": "mjpeg"})
        except (FileNotFoundError, PermissionError) as exc:
            raise SourceUnavailable(f"{device}: {exc.strerror}") from exc
        except av.FFmpegError as exc:
            mjpeg_error = exc
        try:
            return av.open(device, format="v4l2", options=options)
        except av.FFmpegError as exc:
            raise SourceUnavailable(
                f"{device} is not a usable camera (mjpeg: {mjpeg_error}; default format: {exc})"
            ) from exc

    def _decoded(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        stream = container.streams.video[0]
        bad = 0
        for packet in container.demux(stream):
            if packet.size == 0:  # a buffer the driver flagged as corrupt, or the end
                continue
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                bad += 1
                if bad >= MAX_BAD_FRAMES:
                    raise
                continue
            bad = 0
            yield from frames

    def read(self) -> VideoSample:
        assert self._frames is not None and self._container is not None, "open() first"
        try:
            frame = next(self._frames)
        except (StopIteration, av.FFmpegError) as exc:  # unplugged: ENODEV from VIDIOC_DQBUF
            raise SourceError(f"camera {self._container.name} stopped: {exc!r}") from exc
        now = time.monotonic()
        t = float(frame.pts * self._time_base) if frame.pts is not None and self._time_base else None
        if self._kernel_clock is None:
            self._kernel_clock = t is not None and abs(t - now) < CLOCK_TOLERANCE
            if not self._kernel_clock:
                log.warning(
                    "v4l2: buffer timestamps are not CLOCK_MONOTONIC (%s vs %.3f); using the time of reading", t, now
                )
        frame = to_target(frame, self.width, self.height)
        frame.pict_type = av.video.frame.PictureType.NONE  # MJPEG frames come out as I frames
        frame.pts = None
        return VideoSample(frame, t if self._kernel_clock and t is not None else now)

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
            self._frames = None
        if self._container is not None:
            self._container.close()
            self._container = None


def candidate_devices() -> list[str]:
    """Capture device nodes to try, USB cameras' by-id names first, each device once."""
    seen: set[str] = set()
    devices: list[str] = []
    for pattern in DEVICE_GLOBS:
        for path in sorted(glob.glob(pattern), key=_natural):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                devices.append(path)
    return devices


def _natural(path: str) -> list[object]:
    """/dev/video2 before /dev/video10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]
