"""What edged's WebM files must be for browsers to play them, and how FFmpeg's muxer is fed for it.

Three rules, each kept here once (issue 13: found playing parts and segments in Chromium and
Firefox):

* **CodecDelay.** An Opus track carries ``CodecDelay`` equal to the OpusHead pre-skip (6.5 ms for
  libopus), else Chromium mistimes the audio ("Failed to reconcile encoded audio times" on every
  load and seek). FFmpeg writes it from the stream's ``initial_padding``, which the encoders'
  templates now carry (``edged.recording.encode``) and every remux copies from its input.
* **Blocks in time order.** With ``CodecDelay`` FFmpeg stores each audio block that much *after*
  its packet's pts (Matroska: presentation = block time − CodecDelay), but it interleaves the
  tracks by dts *before* that shift, so an audio block could land up to 7 ms after a video block
  that it precedes in the file. Media Source Extensions parsers reject such a cluster (Chromium:
  "Got a block with a timecode before the previous block"). Every writer hands the muxer its video
  packets through :func:`order_video`, with a dts that much earlier than their pts: the interleaver
  then orders blocks by their stored times. WebM stores no decode time for VP8 (a block's time is
  its pts), so nothing written changes but the order.
* **Clusters at keyframes** in what is written whole (:data:`WHOLE_FILE_MUX_OPTIONS`); ring
  segments keep their short clusters (``edged.recording.segment.CLUSTER_MS``).
"""

from __future__ import annotations

from fractions import Fraction
from typing import BinaryIO

import av

#: FFmpeg's Matroska muxer keeps every track's timestamps in milliseconds.
MKV_TIME_BASE = Fraction(1, 1000)

#: Matroska clusters in what is written whole (clip parts, recall output, timelapses): the muxer
#: starts a cluster at every video keyframe (FFmpeg does once the cluster holds 4 KiB) and, with
#: these limits, nowhere else, so each cluster is a random access point (the first block of each
#: track in it is a keyframe: the WebM byte stream format). Players that feed a file to Media Source
#: Extensions need that: Firefox drops clusters that do not start so (a part cut every 5 s by
#: FFmpeg's default limits stopped playing at 5 s). The time limit is Matroska's own: a block's
#: time relative to its cluster is a signed 16-bit count of ms, so keyframes more than 32.767 s
#: apart still get a cluster between them. No size limit: a cluster is at most a part, and FFmpeg
#: holds the cluster being filled in memory as the builder holds the part's packets.
WHOLE_FILE_MUX_OPTIONS = {"cluster_time_limit": "32767", "cluster_size_limit": str(2**31 - 1)}


def open_whole_webm(f: BinaryIO) -> av.container.OutputContainer:
    """A WebM muxer for a file written whole: one cluster per GOP (``WHOLE_FILE_MUX_OPTIONS``)."""
    return av.open(f, "w", format="webm", options=WHOLE_FILE_MUX_OPTIONS)


def _rescale(value: int, src: Fraction, dst: Fraction) -> int:
    """``value`` from time base ``src`` to ``dst``, rounded as FFmpeg's av_rescale_q rounds
    (to the nearest, halves away from zero). Integers only: it runs for every video packet
    written, and Fraction arithmetic made a dozen objects each time."""
    num, den = value * src.numerator * dst.denominator, src.denominator * dst.numerator
    if den < 0:
        num, den = -num, -den
    return (2 * num + den) // (2 * den) if num >= 0 else -((-2 * num + den) // (2 * den))


def audio_block_lead_ms(audio: av.AudioStream | None) -> int:
    """How much later than its pts the muxer stores an audio block of output stream ``audio``:
    its CodecDelay in ms, rounded as the muxer rounds it (0: no audio, or no CodecDelay)."""
    if audio is None:
        return 0
    ctx = audio.codec_context
    # A stream made from a template has its initial_padding in ``delay`` (avcodec_parameters_to_context).
    if not ctx.delay or not ctx.sample_rate:
        return 0
    return _rescale(ctx.delay, Fraction(1, ctx.sample_rate), MKV_TIME_BASE)


def order_video(packet: av.Packet, lead_ms: int) -> None:
    """Put a video packet in ms with a dts ``lead_ms`` before its pts (see the module docstring).
    The pts becomes exactly what the muxer would have made of it."""
    tb = packet.time_base  # (each read makes a new Fraction)
    assert packet.pts is not None and tb is not None, "packets to mux carry their time"
    pts = _rescale(packet.pts, tb, MKV_TIME_BASE)
    packet.time_base = MKV_TIME_BASE
    packet.pts = pts
    packet.dts = pts - lead_ms
