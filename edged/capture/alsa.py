"""Microphones through FFmpeg's ALSA input.

``device`` is an ALSA PCM name: ``default``, ``hw:1,0``, ``plughw:CARD=Device,DEV=0``
(``arecord -L`` lists them). Samples come out in 20 ms blocks, the Opus frame, whatever period
size the card runs at.

Time: FFmpeg stamps ALSA packets with the wall clock (``av_gettime()`` less the samples still
buffered, through a smoothing filter), which jumps when NTP sets the clock of a Pi without a
real-time clock, and the filter then takes many seconds to settle. Those pts are not used;
``SampleClock`` stamps blocks on the monotonic clock instead.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

from edged.capture.base import AudioSample, SourceError, SourceUnavailable

log = logging.getLogger("edged.capture.alsa")

#: PyAV's wheels carry their own alsa-lib, which looks for its configuration (where every
#: device name, even ``hw``, is defined) under the wheel's build prefix, not here.
SYSTEM_ALSA_CONFIG = Path("/usr/share/alsa/alsa.conf")


class AlsaAudio:
    name = "alsa"

    #: 20 ms blocks, the Opus frame size (as SyntheticAudio).
    BLOCK = Fraction(1, 50)

    def __init__(self, device: str, sample_rate: int, channels: int) -> None:
        self.device, self.sample_rate, self.channels = device, sample_rate, channels
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.AudioFrame] | None = None
        self._fifo: av.AudioFifo | None = None
        self._clock: SampleClock | None = None
        self._block = 0

    def open(self) -> None:
        use_system_alsa_config()
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels}c")
        # FFmpeg's alsa indev options: sample_rate, ch_layout (channels is its deprecated form).
        options = {"sample_rate": str(self.sample_rate), "ch_layout": layout}
        try:
            container = av.open(self.device, format="alsa", options=options)
        except av.FFmpegError as exc:
            raise SourceUnavailable(
                f"ALSA capture device {self.device!r} cannot be opened ({exc}); `arecord -L` lists the device names"
            ) from exc
        stream = container.streams.audio[0]
        if stream.channels != self.channels:
            container.close()
            raise SourceUnavailable(
                f"ALSA device {self.device!r} gives {stream.channels} channels, not {self.channels}"
            )
        rate = stream.rate  # the card's nearest rate when it cannot do the one asked for
        if rate != self.sample_rate:
            log.warning("alsa: %s records at %d Hz, not %d", self.device, rate, self.sample_rate)
        self._container = container
        self._frames = container.decode(stream)
        self._fifo = av.AudioFifo()
        self._clock = SampleClock(rate)
        self._block = int(rate * self.BLOCK)

    def read(self) -> AudioSample:
        assert self._frames is not None and self._fifo is not None and self._clock is not None, "open() first"
        try:
            while self._fifo.samples < self._block:
                frame = next(self._frames)
                frame.pts = None  # wall-clock based, see the module docstring
                self._fifo.write(frame)
        except (StopIteration, av.FFmpegError) as exc:  # unplugged: EIO from snd_pcm_readi
            raise SourceError(f"ALSA device {self.device!r} stopped: {exc!r}") from exc
        block = self._fifo.read(self._block)
        assert block is not None
        block.pts = None
        return AudioSample(block, self._clock.stamp(block.samples, time.monotonic()))

    def close(self) -> None:
        self._frames = None
        self._fifo = None
        if self._container is not None:
            self._container.close()
            self._container = None


class SampleClock:
    """Capture times of consecutive blocks of samples, on the monotonic clock.

    Counting samples gives evenly spaced times, which the time of reading does not: reads
    bunch up when the reader falls behind and catches up. The count is kept honest by the
    time of reading: a block whose last sample was read at ``now`` began no later than
    ``latest = now - duration``. A count running ahead of that (a card faster than its
    nominal rate) is pulled back at once. A count lagging behind it by more than
    ``TOLERANCE`` for all of a ``WINDOW`` (samples lost in an overrun, a card slower than
    nominal) is moved forward by the smallest lag of that window; a reader stalled for a while
    does not do that, as the blocks read once it has caught up show no lag. Times are thus
    within ``TOLERANCE`` (plus two windows' drift: under 0.5 ms for a card 100 ppm off) of the
    capture, well inside lip-sync limits.
    """

    WINDOW = 2.0
    TOLERANCE = 0.01

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._origin: float | None = None  # time of sample 0 of the count
        self._count = 0
        self._window_end = 0.0
        self._min_lag = math.inf

    def stamp(self, samples: int, now: float) -> float:
        """Time of the first sample of a block of ``samples`` whose reading ended at ``now``."""
        latest = now - samples / self.sample_rate
        if self._origin is None:
            self._origin, self._window_end = latest, now + self.WINDOW
        t = self._origin + self._count / self.sample_rate
        if t > latest:
            self._origin -= t - latest
            t = latest
        self._min_lag = min(self._min_lag, latest - t)
        if now >= self._window_end:
            if self._min_lag > self.TOLERANCE:
                log.info("alsa: %.3f s of samples missing, audio clock moved forward", self._min_lag)
                self._origin += self._min_lag
                t += self._min_lag
            self._min_lag, self._window_end = math.inf, now + self.WINDOW
        self._count += samples
        return t


def use_system_alsa_config() -> None:
    """Point alsa-lib at the system's configuration unless told otherwise (ALSA_CONFIG_PATH), and
    take its error lines into our log (``route_alsa_errors``)."""
    if "ALSA_CONFIG_PATH" not in os.environ and SYSTEM_ALSA_CONFIG.is_file():
        os.environ["ALSA_CONFIG_PATH"] = str(SYSTEM_ALSA_CONFIG)
    route_alsa_errors()


# alsa-lib prints its own errors to stderr ("ALSA lib pcm.c:2722:(snd_pcm_open_noupdate) Unknown
# PCM default") unless a handler is set: raw lines in the journal beside ours, and on a box with no
# sound card at every retry. The failure itself reaches the recorder as an exception and is said
# there once; alsa-lib's detail goes to the debug log. The handler is declared without alsa-lib's
# trailing "..." (ctypes cannot declare a variadic callback): the fixed arguments arrive as they
# are on Linux's calling conventions, and the format is logged unexpanded.
_ALSA_ERROR_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)


def _alsa_error(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
    def text(b: bytes | None) -> str:
        return b.decode(errors="replace") if b else "?"

    log.debug("alsa-lib: %s (%s:%d, %s)", text(fmt), text(file).rsplit("/", 1)[-1], line, text(function))


_alsa_handler = _ALSA_ERROR_HANDLER(_alsa_error)  # kept referenced for the process's life
_routed: set[str] = set()


def route_alsa_errors() -> None:
    """Set the error handler of every alsa-lib loaded in this process (PyAV's wheel carries its own
    copy; a Pi's Debian FFmpeg uses the system's). Loaded libraries are found in /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {f[-1] for f in (line.split() for line in maps) if len(f) >= 6 and "/libasound" in f[-1]}
    except OSError:
        return
    for path in sorted(p for p in paths if p.startswith("/") and p not in _routed):
        try:
            ctypes.CDLL(path).snd_lib_error_set_handler(_alsa_handler)
        except (OSError, AttributeError) as exc:
            log.debug("alsa-lib at %s: its errors stay on stderr (%s)", path, exc)
        _routed.add(path)
