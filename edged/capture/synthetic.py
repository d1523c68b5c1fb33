"""Synthetic camera and microphone: a moving test pattern and a tone, made by FFmpeg's lavfi.

Used when no camera exists (the README's run command on a laptop or CI), in tests and in
benchmarks. Paced, it delivers frames in real time like a camera; unpaced, as fast as read.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import av

from edged.capture.base import AudioSample, SourceError, SourceUnavailable, VideoSample, to_target
from edged.capture.pacing import Pacer


class SyntheticVideo:
    name = "synthetic"

    def __init__(self, width: int, height: int, fps: int, paced: bool = True) -> None:
        self.width, self.height, self.fps = width, height, fps
        self._pacer = Pacer(1.0 / fps, paced)
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None

    def open(self) -> None:
        # testsrc2 moves every frame; the noise keeps the encoder honestly busy.
        graph = f"testsrc2=size={self.width}x{self.height}:rate={self.fps},noise=alls=4:allf=t,format=yuv420p"
        try:
            self._container = av.open(graph, format="lavfi")
        except av.FFmpegError as exc:  # pragma: no cover - lavfi is part of PyAV's FFmpeg
            raise SourceUnavailable(f"lavfi test pattern: {exc}") from exc
        self._frames = self._container.decode(video=0)

    def read(self) -> VideoSample:
        assert self._frames is not None, "open() first"
        try:
            frame = next(self._frames)
        except (StopIteration, av.FFmpegError) as exc:
            raise SourceError(f"test pattern stopped: {exc!r}") from exc
        frame = to_target(frame, self.width, self.height)
        frame.pts = None
        return VideoSample(frame, self._pacer.next_time())

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


#: The capture buffer FFmpeg's ALSA input asks a sound card for, in sample frames
#: (``ALSA_BUFFER_SIZE_MAX`` in libavdevice/alsa.h): about 1.4 s at 48 kHz. A reader late by less
#: loses nothing; the synthetic microphone overruns where a real one would.
SOUND_CARD_BUFFER_FRAMES = 65536


class SyntheticAudio:
    name = "synthetic"

    #: 100 ms blocks: five Opus frames per call keeps the per-call overhead low.
    BLOCK = Fraction(1, 10)

    def __init__(self, sample_rate: int = 48_000, channels: int = 1, paced: bool = True) -> None:
        self.sample_rate, self.channels = sample_rate, channels
        self._samples_per_block = int(sample_rate * self.BLOCK)
        self._pacer = Pacer(float(self.BLOCK), paced, max_late_s=SOUND_CARD_BUFFER_FRAMES / sample_rate)
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.AudioFrame] | None = None

    def open(self) -> None:
        layout = "mono" if self.channels == 1 else "stereo"
        graph = (
            f"sine=frequency=440:beep_factor=4:sample_rate={self.sample_rate}"
            f":samples_per_frame={self._samples_per_block},aformat=channel_layouts={layout}"
        )
        try:
            self._container = av.open(graph, format="lavfi")
        except av.FFmpegError as exc:  # pragma: no cover
            raise SourceUnavailable(f"lavfi tone: {exc}") from exc
        self._frames = self._container.decode(audio=0)

    def read(self) -> AudioSample:
        assert self._frames is not None, "open() first"
        try:
            frame = next(self._frames)
        except (StopIteration, av.FFmpegError) as exc:
            raise SourceError(f"tone stopped: {exc!r}") from exc
        frame.pts = None
        return AudioSample(frame, self._pacer.next_time())

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
