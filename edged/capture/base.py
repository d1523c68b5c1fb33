"""The small interface every capture source implements.

A source is opened, read one sample at a time (blocking), and closed. Each sample carries its
capture time in seconds: ``time.monotonic()``'s clock for live and paced sources (V4L2 and
libcamera buffer timestamps are CLOCK_MONOTONIC too), or media time from 0 for unpaced test
sources. The recorder only ever uses differences between times of one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
from av.video.reformatter import ColorRange

#: Every video sample leaves its source in this pixel format, at the configured size.
PIX_FMT = "yuv420p"


class SourceError(Exception):
    """A source failed while open (camera unplugged, device error, file vanished)."""


class SourceUnavailable(SourceError):
    """A source could not be opened at all (no such device, library missing)."""


@dataclass(slots=True)
class VideoSample:
    """A captured picture and its source time (seconds)."""

    frame: av.VideoFrame
    time: float


@dataclass(slots=True)
class AudioSample:
    """A captured block of sound and its source time (seconds)."""

    frame: av.AudioFrame
    time: float


class VideoSource(Protocol):
    name: str

    def open(self) -> None: ...

    def read(self) -> VideoSample: ...

    def close(self) -> None: ...


class AudioSource(Protocol):
    name: str

    def open(self) -> None: ...

    def read(self) -> AudioSample: ...

    def close(self) -> None: ...


def to_target(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """Scale/convert a frame to the recording format; a no-op when it already is.

    Full-range input (MJPEG cameras and files decode to it) is scaled to the limited range VP8
    expects; a plain conversion would keep the levels, crushing blacks and clipping whites.
    """
    if frame.color_range == ColorRange.JPEG or frame.format.name.startswith("yuvj"):
        return frame.reformat(
            width=width, height=height, format=PIX_FMT, src_color_range=ColorRange.JPEG, dst_color_range=ColorRange.MPEG
        )
    if frame.width == width and frame.height == height and frame.format.name == PIX_FMT:
        return frame
    return frame.reformat(width=width, height=height, format=PIX_FMT)


def frame_period(fps: int) -> Fraction:
    return Fraction(1, fps)
