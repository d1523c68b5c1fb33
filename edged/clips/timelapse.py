"""Timelapse recalls: a long window of the ring buffer rendered into one upload-ready part.

A ``timelapse`` recall (5 to 60 minutes) must fit the upload limits of one part (``clips.max_duration_ms``
and ``clips.max_bytes``: 120 s and 6,000,000 bytes by default). It keeps frames at an even interval
of the source timeline and plays them at the output frame rate.

The plan (:func:`plan`)
  * output frame rate: the source's, at most ``limits.TARGET_FPS`` (10): more frames per second
    would only thin out the bits each frame gets;
  * ``slots``: at most ``(max_duration_ms − margin) × fps`` frames, the margin being the clip
    builder's ``DURATION_MARGIN_MS``;
  * ``interval``: the window divided by that many slots, rounded *up to a whole number of source
    frames*, so the kept frames are exactly evenly spaced on the source's frame grid (60 min at
    10 fps: a frame every 3.1 s, 1,162 frames, 116.2 s; 5 min: every 0.3 s, 1,000 frames, 100 s).
    Slot ``k`` shows the source frame nearest to ``start + k × interval`` (within half a frame).

Rendering
  * the segments are read one at a time through the clip builder's reader (bytes hashed against
    the index, packets placed on the wall-clock timeline by the caller's ``SourceSegment`` starts);
  * **only the frames needed are decoded**: VP8 inter frames need their GOP from its keyframe, so
    a GOP holding no wanted frame is skipped whole, and a GOP is decoded from its keyframe up to
    its last wanted frame and no further;
  * the kept frames are re-encoded with the recording's VP8 settings (``edged.recording.encode``, CBR with a
    one-second buffer) at the bitrate that fills ``REENCODE_FILL`` of the byte cap over the
    planned duration, one keyframe every ``camera.keyframe_seconds`` of output;
  * **no audio track**: sound sped up 10 to 30 times carries nothing a reviewer can use, and the
    bytes go to the picture;
  * gaps in the footage stay gaps (slots with no footage are left empty: the output's timing keeps
    mapping linearly to the source's, as the clip builder never compresses time); the output starts
    at its first kept frame;
  * the file is written under a temporary name, fsynced, verified by decoding every packet
    (:func:`edged.clips.builder.measure`: frame count, first keyframe, duration, size) and renamed; a file
    over the byte cap is rendered again at a lower bitrate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from edged.clips.builder import (
    DURATION_MARGIN_MS,
    MIN_REENCODE_BITRATE,
    MS,
    OVERHEAD_FIXED_BYTES,
    OVERHEAD_PER_PACKET_BYTES,
    REENCODE_ATTEMPTS,
    REENCODE_FILL,
    TAG_CLIP,
    TAG_PART,
    Measurement,
    _Pkt,
    _select,
    _Sources,
    measure,
    video_decoder,
)
from edged.clips.parts import ClipError, ClipPart, Interrupted, SourceSegment
from edged.config.schema import CameraSettings
from edged.core import limits
from edged.core.files import Folder, sha256_file
from edged.recording.encode import VideoEncoder
from edged.recording.webm import open_whole_webm

log = logging.getLogger("edged.timelapse")

#: The output's frame rate is the source's, at most this.
MAX_OUTPUT_FPS = limits.TARGET_FPS

TAG_INTERVAL_MS = "EDGED_TIMELAPSE_INTERVAL_MS"
TAG_FIRST_FRAME_NS = "EDGED_TIMELAPSE_FIRST_FRAME_NS"


@dataclass(frozen=True, slots=True)
class Plan:
    start_ns: int
    end_ns: int
    frame_ns: int  # the source's frame interval
    fps: int  # output frames per second
    interval_ns: int  # source time between kept frames: a whole number of source frames
    slots: int  # kept frames at most

    def slot(self, t_ns: int) -> int | None:
        """The slot whose instant the source frame at ``t_ns`` is nearest to (within half a frame:
        segments join with sub-millisecond jitter on the frame grid), if any."""
        k = round((t_ns - self.start_ns) / self.interval_ns)
        at = self.start_ns + k * self.interval_ns
        half = self.frame_ns // 2
        return k if 0 <= k < self.slots and -half <= t_ns - at < half else None

    @property
    def speed(self) -> float:
        return self.interval_ns * self.fps / 1e9


def plan(start_ns: int, end_ns: int, frame_ns: int, max_duration_ms: int) -> Plan:
    if end_ns <= start_ns:
        raise ClipError("the timelapse's end is not after its start")
    fps = max(1, min(round(1e9 / frame_ns), MAX_OUTPUT_FPS))
    margin = min(DURATION_MARGIN_MS, max_duration_ms // 10)
    max_slots = (max_duration_ms - margin) * fps // 1000
    if max_slots < 1:
        raise ClipError(f"max_duration_ms {max_duration_ms} cannot hold one frame at {fps} fps")
    frames = math.ceil((end_ns - start_ns) / max_slots / frame_ns)
    interval = max(1, frames) * frame_ns
    return Plan(start_ns, end_ns, frame_ns, fps, interval, math.ceil((end_ns - start_ns) / interval))


@dataclass(frozen=True, slots=True)
class Timelapse:
    path: Path
    duration_ms: int  # measured from the written file
    bytes: int
    sha256: str
    frames: int  # frames in the output
    fps: int
    interval_ns: int  # source time between kept frames
    bitrate: int
    first_frame_ns: int  # source timeline position of the first kept frame
    frame_times_ns: tuple[int, ...]  # source timeline position of every kept frame
    slots: int  # planned frames; slots − frames were in gaps
    source_frames: int  # video frames in the segments read
    decoded_frames: int  # of which decoded
    source_seqs: tuple[int, ...]
    mismatched_seqs: tuple[int, ...]  # sources whose bytes no longer match the index's sha256

    @property
    def speed(self) -> float:
        return self.interval_ns * self.fps / 1e9

    def as_part(self) -> ClipPart:
        """The rendered file as the one part of its clip (re-encoded; its start on the timeline its
        sources were placed on)."""
        return ClipPart(
            number=1,
            path=self.path,
            start_mono_ns=self.first_frame_ns,
            duration_ms=self.duration_ms,
            bytes=self.bytes,
            sha256=self.sha256,
            source_seqs=self.source_seqs,
            reencoded=True,
            mismatched_seqs=self.mismatched_seqs,
        )


@dataclass
class _Pass:
    """One rendering pass at one bitrate."""

    plan: Plan | None = None
    encoder: VideoEncoder | None = None
    out: av.container.OutputContainer | None = None
    stream: av.stream.Stream | None = None
    size: tuple[int, int] = (0, 0)
    first_slot: int | None = None
    last_slot: int = -1
    times: list[int] = dataclasses.field(default_factory=list)
    source_frames: int = 0
    decoded: int = 0
    muxed: int = 0
    seqs: set[int] = dataclasses.field(default_factory=set)
    mismatched: set[int] = dataclasses.field(default_factory=set)


def render(
    segments: Sequence[SourceSegment],
    start_ns: int,
    end_ns: int,
    out_dir: Path,
    name: str,
    max_bytes: int,
    max_duration_ms: int,
    camera: CameraSettings | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Timelapse:
    """Render [start_ns, end_ns) of ``segments`` (one timeline: the caller places each segment by its
    ``mono_start_ns``, e.g. its best wall start) into ``out_dir/NAME-timelapse.webm``.
    ``cancelled`` is asked between segments; if it says so, Interrupted is raised.
    Raises ClipError (no footage, undecodable source, cannot fit) or OSError."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ClipError(f"clip name {name!r} is not a plain file name")
    sources = _select(segments, start_ns, end_ns)
    if not sources:
        raise ClipError("no recorded segment overlaps the requested time range")
    camera = camera or CameraSettings()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}-timelapse.webm"
    bitrate: int | None = None
    t0 = time.monotonic()
    for _ in range(REENCODE_ATTEMPTS):
        # Rendered into a temporary, verified, and only then renamed to ``final`` (edged.core.files);
        # one over the byte cap is discarded and rendered again lower.
        with Folder.open(out_dir) as folder, folder.atomic(final.name) as tmp:
            p, bitrate = _render_once(
                sources,
                start_ns,
                end_ns,
                tmp.file,
                name,
                max_duration_ms,
                max_bytes,
                camera,
                bitrate,
                cancelled or (lambda: False),
            )
            size = os.fstat(tmp.file.fileno()).st_size
            m = _verify(tmp.path, p, name, max_duration_ms)
            if size > max_bytes:
                tmp.discard()
        if size <= max_bytes:
            assert p.plan is not None
            result = Timelapse(
                final,
                m.duration_ms,
                size,
                sha256_file(final),
                p.muxed,
                p.plan.fps,
                p.plan.interval_ns,
                bitrate,
                p.times[0],
                tuple(p.times),
                p.plan.slots,
                p.source_frames,
                p.decoded,
                tuple(sorted(p.seqs)),
                tuple(sorted(p.seqs & p.mismatched)),
            )
            log.info(
                "timelapse %s: %d frames every %.1f s (x%.0f), %.1f s, %d bytes at %d bps; decoded %d of %d "
                "source frames in %.1f s",
                name,
                result.frames,
                result.interval_ns / 1e9,
                result.speed,
                m.duration_ms / 1000,
                size,
                bitrate,
                result.decoded_frames,
                result.source_frames,
                time.monotonic() - t0,
            )
            return result
        log.warning("timelapse %s: %d bytes at %d bps, over %d; rendering again lower", name, size, bitrate, max_bytes)
        bitrate = int(bitrate * min(0.85, 0.95 * max_bytes / size))
        if bitrate < MIN_REENCODE_BITRATE // 2:
            break
    raise ClipError(f"timelapse {name} does not fit {max_bytes} bytes")


def _verify(path: Path, p: _Pass, name: str, max_duration_ms: int) -> Measurement:
    """Every packet decodes, every frame written is there, it starts with a keyframe, its duration fits."""
    m = measure(path)
    problems = []
    if m.video_packets != p.muxed or m.video_frames != p.muxed:
        problems.append(f"{m.video_frames} frames decoded of {m.video_packets} packets, {p.muxed} written")
    if m.audio_packets:
        problems.append(f"holds {m.audio_packets} audio packets")
    if not m.first_video_key:
        problems.append("does not start with a keyframe")
    if not 1 <= m.duration_ms <= max_duration_ms:
        problems.append(f"measures {m.duration_ms} ms (limit {max_duration_ms})")
    if problems:
        raise ClipError(f"timelapse {name} failed verification: " + "; ".join(problems))
    return m


def _render_once(
    sources: Sequence[SourceSegment],
    start_ns: int,
    end_ns: int,
    f: BinaryIO,
    name: str,
    max_duration_ms: int,
    max_bytes: int,
    camera: CameraSettings,
    bitrate: int | None,
    cancelled: Callable[[], bool],
) -> tuple[_Pass, int]:
    reader = _Sources()
    p = _Pass()
    decoder: av.VideoCodecContext | None = None
    decoder_fmt = None
    try:
        for src in sources:
            if cancelled():
                raise Interrupted(f"timelapse {name}: interrupted")
            packets, fmt, frame_ns = reader.read(src)
            video = [q for q in packets if q.video]
            p.source_frames += len(video)
            if not video:
                continue
            if p.plan is None:
                p.plan = plan(start_ns, end_ns, frame_ns, max_duration_ms)
                if bitrate is None:
                    budget = max_bytes * REENCODE_FILL - OVERHEAD_FIXED_BYTES - OVERHEAD_PER_PACKET_BYTES * p.plan.slots
                    bitrate = max(MIN_REENCODE_BITRATE, int(budget * 8 * p.plan.fps / p.plan.slots))
                p.size = (fmt.video[1], fmt.video[2])
                cam = dataclasses.replace(camera, width=p.size[0], height=p.size[1], fps=p.plan.fps, bitrate=bitrate)
                p.encoder = VideoEncoder(cam)
                p.out = open_whole_webm(f)
                p.out.metadata.update({TAG_CLIP: name, TAG_PART: "1", TAG_INTERVAL_MS: str(p.plan.interval_ns // MS)})
                p.stream = p.out.add_stream_from_template(p.encoder.template)
                p.stream.codec_context.width, p.stream.codec_context.height = p.size
                p.stream.codec_context.pix_fmt = "yuv420p"
                p.stream.time_base = Fraction(1, 1000)
            if fmt != decoder_fmt:
                decoder = video_decoder(fmt.video[0])
                decoder_fmt = fmt
            assert decoder is not None
            _render_segment(p, decoder, video, src.seq)
        if p.encoder is None or p.out is None:
            raise ClipError("the segments overlapping the requested time range hold no video")
        _mux(p, p.encoder.flush())
        if p.muxed == 0:
            raise ClipError("no frame of the requested time range could be decoded")
        p.out.metadata[TAG_FIRST_FRAME_NS] = str(p.times[0])
        p.out.close()
        p.out = None
        f.flush()
    except av.FFmpegError as exc:
        raise ClipError(f"timelapse {name}: {exc}") from exc
    finally:
        if p.out is not None:
            try:
                p.out.close()
            except av.FFmpegError:
                pass
        p.mismatched = set(reader.mismatched)
        reader.close()
    assert bitrate is not None
    return p, bitrate


def _render_segment(p: _Pass, decoder: av.VideoCodecContext, video: list[_Pkt], seq: int) -> None:
    """Decode what the wanted frames of one segment need; encode the wanted frames."""
    assert p.plan is not None and p.encoder is not None
    wanted: dict[int, int] = {}  # index in ``video`` -> slot
    last = p.last_slot
    for i, q in enumerate(video):
        k = p.plan.slot(q.t_ns)
        if k is not None and k > last:
            wanted[i] = k
            last = k
    if not wanted:
        return
    keys = [i for i, q in enumerate(video) if q.key]
    # GOPs: [keyframe, next keyframe); frames before the segment's first keyframe cannot be decoded.
    bounds = list(zip(keys, keys[1:] + [len(video)]))
    for g0, g1 in bounds:
        inside = [i for i in wanted if g0 <= i < g1]
        if not inside:
            continue
        stop = max(inside)
        for i in range(g0, stop + 1):
            frames = decoder.decode(video[i].packet)
            p.decoded += 1
            if i in wanted and frames:
                _encode(p, frames[-1], wanted[i], video[i].t_ns, seq)


def _encode(p: _Pass, frame: av.VideoFrame, slot: int, t_ns: int, seq: int) -> None:
    assert p.encoder is not None
    if (frame.width, frame.height) != p.size or frame.format.name != "yuv420p":
        frame = frame.reformat(width=p.size[0], height=p.size[1], format="yuv420p")
    if p.first_slot is None:
        p.first_slot = slot
    p.last_slot = slot
    p.times.append(t_ns)
    p.seqs.add(seq)
    _mux(p, p.encoder.encode(frame, slot - p.first_slot, keyframe=len(p.times) == 1))


def _mux(p: _Pass, packets: list[av.Packet]) -> None:
    assert p.out is not None and p.stream is not None and p.plan is not None
    for q in packets:
        assert q.pts is not None  # (an encoder's packet)
        ms = q.pts * 1000 // p.plan.fps
        q.stream = p.stream
        q.time_base = Fraction(1, 1000)
        q.pts = q.dts = ms
        p.out.mux(q)
        p.muxed += 1
