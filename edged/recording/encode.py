"""Encoders: one VP8 and one Opus encoder that run for the whole recording.

They are never restarted at segment boundaries (a new Opus encoder per segment adds its own
priming and overlaps its neighbour; a restarted CBR undershoots: ../shared/reference/ENCODING.md).
Each encoder lives in a *template* stream of a throw-away WebM container; every segment's muxer
copies its stream parameters from that template (``add_stream_from_template``), so segments are
standalone files whose packets all come from the same continuous encoder.

Rate control is libvpx CBR with a one-second buffer (minrate = maxrate = bitrate, bufsize = one
second): measured here it holds the rate on shaky and low-light footage, where VBR drifts up.
Keyframes are forced at each segment start and otherwise come at most ``keyframe_seconds`` apart.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
from av.video.frame import PictureType

from edged.config.schema import AudioSettings, CameraSettings


class EncoderError(Exception):
    """The encoder could not be set up as configured."""


def vp8_options(cam: CameraSettings) -> dict[str, str]:
    """libvpx options for the configured camera: the single place these settings live."""
    rate = str(cam.bitrate)
    return {
        "deadline": "realtime",
        "cpu-used": str(cam.cpu_used),
        "lag-in-frames": "0",
        "threads": str(cam.threads),
        "minrate": rate,
        "maxrate": rate,
        "bufsize": rate,  # one second of buffer
        "rc_init_occupancy": str(cam.bitrate * 2 // 3),
        "g": str(max(1, round(cam.keyframe_seconds * cam.fps))),
        "auto-alt-ref": "0",
    }


#: Opus frame length. 60 ms instead of the usual 20 ms: a third of the packets to write, remux and
#: upload (each WebM block costs ~10 bytes: 20 ms frames spend 4 kbps on block headers alone).
OPUS_FRAME_MS = 60


def opus_options(aud: AudioSettings) -> dict[str, str]:
    return {"vbr": "off", "application": "audio", "frame_duration": str(OPUS_FRAME_MS)}


def encoder_settings(aud: AudioSettings) -> tuple[int, int, int]:
    """What the Opus encoder is built from: a change of anything else (``pre_event``) keeps it."""
    return (aud.bitrate, aud.sample_rate, aud.channels)


def _open_checked(ctx: av.CodecContext, options: dict[str, str]) -> None:
    ctx.options = dict(options)
    ctx.open()
    # FFmpeg silently ignores options it does not know; PyAV leaves them in ctx.options.
    if ctx.options:
        raise EncoderError(f"{ctx.name} ignored options {sorted(ctx.options)}")


def _publish_parameters(holder: av.container.OutputContainer) -> None:
    """Copy each opened encoder's parameters into its template stream.

    ``add_stream`` fills a stream's parameters when the stream is made, before its encoder is
    opened; an encoder sets some only when it opens, among them libopus's pre-skip
    (``initial_padding``), from which FFmpeg's WebM muxer writes the track's ``CodecDelay``.
    ``add_stream_from_template`` copies the template's parameters, so without this every segment
    lacked ``CodecDelay`` (browsers then mistime Opus; Chromium logs "Failed to reconcile encoded
    audio times"). PyAV copies an open encoder's parameters into its stream
    (``avcodec_parameters_from_context``) when the container's header is written: the holder's
    header is written, into memory, and never used. Remuxes copy these parameters on from the
    files' own tracks (the demuxer reads ``CodecDelay`` back into ``initial_padding``).
    """
    holder.start_encoding()


class _HeldEncoder:
    """An encoder whose codec context lives in a template stream of an in-memory container (so
    each segment's stream can copy its parameters): what both encoders share."""

    _ctx: av.VideoCodecContext | av.AudioCodecContext
    _holder: av.container.OutputContainer
    _holder_closed: bool

    def flush(self) -> list[av.Packet]:
        return self._ctx.encode(None)

    def close(self) -> None:
        """Release the encoder (after its last ``flush``). Closing the template's container frees
        the codec context in order; left to the garbage collector inside a reference cycle, PyAV
        14 (Debian 13's python3-av) frees the Opus resampler wrongly and the process dies with
        SIGSEGV at exit. Idempotent."""
        if not self._holder_closed:
            self._holder_closed = True
            self._holder.close()


class VideoEncoder(_HeldEncoder):
    _ctx: av.VideoCodecContext

    def __init__(self, cam: CameraSettings) -> None:
        self.fps = cam.fps
        self.time_base = Fraction(1, cam.fps)
        self._holder = av.open(io.BytesIO(), "w", format="webm")
        self.template = self._holder.add_stream("libvpx", rate=cam.fps)
        ctx = self.template.codec_context
        ctx.width, ctx.height = cam.width, cam.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = self.time_base
        ctx.bit_rate = cam.bitrate
        self.template.time_base = self.time_base
        _open_checked(ctx, vp8_options(cam))
        _publish_parameters(self._holder)
        self._ctx = ctx
        self._holder_closed = False

    def encode(self, frame: av.VideoFrame, pts: int, keyframe: bool) -> list[av.Packet]:
        frame.pts = pts
        frame.time_base = self.time_base
        # A frame keeps the picture type its decoder gave it (MJPEG: every frame I):
        # set it every time, so only segment starts are forced keyframes.
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        return self._ctx.encode(frame)


class AudioEncoder(_HeldEncoder):
    _ctx: av.AudioCodecContext

    def __init__(self, aud: AudioSettings) -> None:
        self.sample_rate = 48_000  # Opus always runs at 48 kHz; PyAV resamples the input
        self.time_base = Fraction(1, self.sample_rate)  # its packets' time base: pts counts samples
        self._input_time_base = self.time_base  # the time base of the input frames' rate (one per rate)
        self._holder = av.open(io.BytesIO(), "w", format="webm")
        self.template = self._holder.add_stream("libopus", rate=self.sample_rate)
        ctx = self.template.codec_context
        ctx.layout = "mono" if aud.channels == 1 else "stereo"
        ctx.format = "flt"
        ctx.bit_rate = aud.bitrate
        ctx.time_base = self.time_base
        self.template.time_base = self.time_base
        _open_checked(ctx, opus_options(aud))
        _publish_parameters(self._holder)
        self._ctx = ctx
        self._holder_closed = False

    @property
    def extradata(self) -> bytes | None:
        return self._ctx.extradata

    def encode(self, frame: av.AudioFrame, pts: int) -> list[av.Packet]:
        """``pts`` counts samples at the frame's own rate from the recording origin."""
        frame.pts = pts
        if self._input_time_base.denominator != frame.sample_rate:
            self._input_time_base = Fraction(1, frame.sample_rate)
        frame.time_base = self._input_time_base
        return self._ctx.encode(frame)
