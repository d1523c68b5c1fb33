"""A recorded video file played in a loop as if it were the camera.

For demos, tests and benchmarks on real footage (../shared/footage/). Frames are resampled to
the configured rate (each output instant shows the newest source frame at or before it, as
FFmpeg's fps filter does) and scaled to the configured size. The file is reopened at every
loop, so a file that disappears behaves like an unplugged camera.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av

from edged.capture.base import SourceError, SourceUnavailable, VideoSample, to_target
from edged.capture.pacing import Pacer


class FileVideo:
    name = "file"

    def __init__(self, path: str | Path, width: int, height: int, fps: int, paced: bool = True) -> None:
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self._pacer = Pacer(1.0 / fps, paced)
        self._frames: Iterator[av.VideoFrame] | None = None

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceUnavailable(f"video file {self.path} not found")
        try:
            with av.open(str(self.path)) as probe:
                if not probe.streams.video:
                    raise SourceUnavailable(f"{self.path} has no video stream")
        except av.FFmpegError as exc:
            raise SourceUnavailable(f"{self.path}: {exc}") from exc
        self._frames = self._resampled()

    def _decode_once(self) -> Iterator[tuple[float, av.VideoFrame]]:
        try:
            container = av.open(str(self.path))
        except (OSError, av.FFmpegError) as exc:
            raise SourceError(f"video file {self.path} cannot be opened: {exc}") from exc
        with container:
            stream = container.streams.video[0]
            if stream.time_base is None:
                raise SourceError(f"video file {self.path} has no time base")
            # in integers, then one division (correctly rounded, as float(Fraction)): no Fraction per frame
            num, den = stream.time_base.numerator, stream.time_base.denominator
            t_first: float | None = None
            try:
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = frame.pts * num / den
                    if t_first is None:
                        t_first = t
                    yield t - t_first, frame
            except av.FFmpegError as exc:
                raise SourceError(f"video file {self.path} unreadable: {exc}") from exc

    def _resampled(self) -> Iterator[av.VideoFrame]:
        # Output frame k is due at k / fps; counted in integers so 1.8 k frames do not drift.
        eps = 1e-6
        k = 0
        offset = 0.0
        while True:
            prev: av.VideoFrame | None = None
            last_t = 0.0
            for t, frame in self._decode_once():
                t += offset
                while prev is not None and k / self.fps < t - eps:
                    yield prev
                    k += 1
                prev = to_target(frame, self.width, self.height)
                last_t = t
            if prev is None:
                raise SourceError(f"video file {self.path} has no frames")
            # The last source frame lasts one output period, then the loop starts again.
            end = last_t + 1.0 / self.fps
            while k / self.fps < end - eps:
                yield prev
                k += 1
            offset = k / self.fps

    def read(self) -> VideoSample:
        assert self._frames is not None, "open() first"
        try:
            frame = next(self._frames)
        except StopIteration as exc:  # pragma: no cover - the loop never ends by itself
            raise SourceError("file source ended") from exc
        return VideoSample(frame, self._pacer.next_time())

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
            self._frames = None
