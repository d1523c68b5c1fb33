"""The clip builder: joins ring-buffer segments into upload-ready parts by remuxing, within the limits.

Stage "clip" of capture → encode → segment → ring store → mark/recall → **clip** → outbox → target.

How a clip is made
  1. *Read* the segments that overlap the window, one at a time, oldest first (each file is read
     once: its bytes are hashed against the index's sha256 and demuxed from memory; no decoding).
     Every packet is placed on the recording's monotonic timeline:
     ``segment.mono_start_ns + (packet time − the segment's first video packet time)``.
     Gaps between segments (camera outage) stay gaps: timing is never compressed.
  2. *Trim*: start at the video keyframe at or before ``start_mono_ns`` (a keyframe whose footage
     ends before the window, i.e. the window starts in a gap, is skipped); drop every packet at or
     after ``end_mono_ns`` and the audio before the first kept keyframe.
  3. *Group* into GOPs (a keyframe and the packets up to the next one; audio goes by timestamp)
     and *plan* parts greedily as runs of whole GOPs within the duration and byte limits. Each
     video packet lands in exactly one part, each audio packet too (by its start time), so
     consecutive parts meet at a keyframe with no gap and no overlap. Memory holds the segment
     being read and the part being planned, never the whole event.
  4. *Write* each part under a temporary name (packets copied, timestamps rebased to 0 at the
     part's first keyframe; nothing re-encoded), fsync it, *verify* it, rename it atomically and
     fsync the folder. A part that comes out over a limit (the container overhead is estimated
     when planning) is cut again at an earlier keyframe; a single GOP that cannot fit (footage
     pathological for the cap, or keyframes further apart than the duration limit) is
     re-encoded with :func:`edged.recording.encode.vp8_options` at a bitrate computed to fit, its Opus
     audio copied, and that is logged (warning) and flagged ``reencoded``.

Verification (:func:`measure`) decodes every packet of the written file, checks the packet
counts against what was written, that the first video packet is a keyframe, the byte size, and
the duration.

Duration: ``duration_ms`` is what a server reading the file sees. WebM stores the Segment
``Duration`` (what ffprobe reports as the format duration and what a browser's ``video.duration``
shows); FFmpeg's muxer sets it to the end of the last packet of *any* track, so it includes the
audio's last Opus frame, which may run up to one Opus frame (60 ms) past the last video frame,
and the audio's stored block times, which run the track's CodecDelay (the Opus pre-skip, 6.5 ms)
ahead of the presentation times (the demuxer subtracts it; the Duration does not).
The video-only figure (last video pts − first + one frame) would therefore under-state what the
server measures. We take the larger of the container Duration and the packet span (earliest
packet start to latest packet end, all tracks), rounded up to whole milliseconds. Parts start
at 0 (their first keyframe) so the two agree but for the CodecDelay; the max guards against a
muxer that disagrees.

Margins: parts are planned ``DURATION_MARGIN_MS`` (100 ms) under ``max_duration_ms`` including
the audio's tail, and with the container overhead estimated per packet; the written file is
measured and must satisfy ``1 <= duration_ms <= max_duration_ms`` and ``bytes <= max_bytes``
(the upload contract's own bounds) or it is cut again. A 120 s event of 10 s segments therefore
becomes two parts (110 s + 10 s): 120 s of footage measures 120.0x s, over 120000 ms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from edged.clips.parts import ClipError, ClipPart, SourceSegment
from edged.config.schema import CameraSettings
from edged.core.files import Folder, remove_temporaries, sha256_file
from edged.recording.encode import VideoEncoder
from edged.recording.webm import audio_block_lead_ms, open_whole_webm, order_video

log = logging.getLogger("edged.clip")

MS = 1_000_000

#: Parts are planned this far under the duration limit (their audio tail included): WebM rounds
#: to milliseconds and ENCODING.md saw 12 x 10 s measure 120.008 s.
DURATION_MARGIN_MS = 100
#: Container overhead estimate used when planning (EBML header, tracks, tags, cues; then per
#: packet a SimpleBlock header and a share of cluster headers: measured ~9-14 bytes a packet).
#: The written file is measured anyway; this only makes a second cut rare.
OVERHEAD_FIXED_BYTES = 4096
OVERHEAD_PER_PACKET_BYTES = 14
#: A re-encoded part aims at this fraction of the byte cap (CBR with a 1 s buffer holds its rate;
#: the first keyframe and the container take the rest).
REENCODE_FILL = 0.90
#: Re-encode attempts, each at a lower bitrate, before giving up.
REENCODE_ATTEMPTS = 4
#: Lowest video bitrate a re-encode may use (the camera's own lower bound); below it a GOP is
#: re-encoded as several shorter parts instead.
MIN_REENCODE_BITRATE = 50_000
#: Fallback frame interval when a stream does not say its rate.
DEFAULT_FRAME_NS = 100 * MS

#: Matroska tags written into every part (forensic cross-reference; segments use other names).
TAG_CLIP = "EDGED_CLIP"
TAG_PART = "EDGED_PART"
TAG_PART_MONO_START = "EDGED_PART_MONO_START_NS"
TAG_SOURCE_SEQS = "EDGED_SOURCE_SEQS"
TAG_REENCODED = "EDGED_REENCODED"


@dataclass(frozen=True, slots=True)
class Measurement:
    """What :func:`measure` reads from a written file (every packet decoded)."""

    video_packets: int
    video_frames: int
    audio_packets: int
    audio_frames: int
    first_video_key: bool
    container_ms: float  # the WebM Segment Duration
    span_ms: float  # earliest packet start to latest packet end, all tracks
    duration_ms: int  # max of the two, rounded up: what a server measuring the file sees


# --- reading the sources ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Format:
    """Stream parameters that must agree within one part (one header describes the whole file)."""

    video: tuple
    audio: tuple | None


@dataclass(slots=True)
class _Pkt:
    t_ns: int  # timeline position
    end_ns: int  # t_ns + its duration
    video: bool
    key: bool
    size: int
    seq: int
    packet: av.Packet


@dataclass(slots=True)
class _Gop:
    """A keyframe, the video up to the next keyframe, and the audio that starts in that span."""

    fmt: _Format
    frame_ns: int
    start_ns: int
    packets: list[_Pkt] = field(default_factory=list)
    bytes: int = 0
    end_ns: int = 0  # end of its last packet, audio included
    video_end_ns: int = 0  # end of its last video frame
    frames: int = 0
    audio_ns: int = 0  # longest audio packet

    def add(self, p: _Pkt) -> None:
        self.packets.append(p)
        self.bytes += p.size
        self.end_ns = max(self.end_ns, p.end_ns)
        if p.video:
            self.frames += 1
            self.video_end_ns = max(self.video_end_ns, p.end_ns)
        else:
            self.audio_ns = max(self.audio_ns, p.end_ns - p.t_ns)


def video_decoder(codec: str) -> av.VideoCodecContext:
    """A single-threaded decoder for a segment's video codec."""
    ctx = av.CodecContext.create(codec, "r")
    if not isinstance(ctx, av.VideoCodecContext):
        raise ClipError(f"{codec} is not a video codec")
    ctx.thread_count = 1
    return ctx


def _to_ns(tb: Fraction | None) -> tuple[int, int]:
    if tb is None:
        raise ClipError("a stream has no time base")
    return tb.numerator * 1_000_000_000, tb.denominator


class _Sources:
    """Reads the selected segments one at a time; keeps one open container per stream format as
    the template for the parts' streams."""

    def __init__(self) -> None:
        self.templates: dict[_Format, av.container.InputContainer] = {}
        self.mismatched: set[int] = set()

    def close(self) -> None:
        for c in self.templates.values():
            c.close()
        self.templates.clear()

    def read(self, src: SourceSegment) -> tuple[list[_Pkt], _Format, int]:
        """The segment's packets on the timeline (sorted), its format and frame interval."""
        try:
            data = src.path.read_bytes()
        except OSError as exc:
            raise ClipError(f"segment {src.seq} ({src.path.name}) unreadable: {exc}") from exc
        if src.sha256 and hashlib.sha256(data).hexdigest() != src.sha256:
            self.mismatched.add(src.seq)
            log.error(
                "segment %d (%s) no longer matches its recorded sha256; using it as it is now", src.seq, src.path.name
            )
        try:
            c = av.open(io.BytesIO(data), mode="r")
        except av.FFmpegError as exc:
            raise ClipError(f"segment {src.seq} ({src.path.name}) does not open: {exc}") from exc
        keep = False
        try:
            if not c.streams.video:
                raise ClipError(f"segment {src.seq} ({src.path.name}) has no video")
            vs = c.streams.video[0]
            aus = c.streams.audio[0] if c.streams.audio else None
            fmt = _format(c)
            rate = vs.average_rate or vs.guessed_rate
            frame_ns = round(1_000_000_000 / rate) if rate else DEFAULT_FRAME_NS
            raw: list[tuple[int, int, bool, bool, int, av.Packet]] = []
            scale = {vs.index: _to_ns(vs.time_base)}
            if aus is not None:
                scale[aus.index] = _to_ns(aus.time_base)
            streams = [vs] + ([aus] if aus is not None else [])
            for p in c.demux(*streams):
                if p.size == 0 or p.pts is None:
                    continue
                num, den = scale[p.stream_index]
                video = p.stream_index == vs.index
                t = p.pts * num // den
                d = p.duration * num // den if p.duration else (frame_ns if video else 0)
                raw.append((t, d, video, video and p.is_keyframe, p.size, p))
        except av.FFmpegError as exc:
            raise ClipError(f"segment {src.seq} ({src.path.name}) unreadable: {exc}") from exc
        else:
            if fmt not in self.templates:
                self.templates[fmt] = c
                keep = True
        finally:
            if not keep:
                c.close()
        firsts = [r[0] for r in raw if r[2]]
        if not firsts:
            log.warning("segment %d (%s) holds no video packet; skipped", src.seq, src.path.name)
            return [], fmt, frame_ns
        base = src.mono_start_ns - min(firsts)
        packets = [_Pkt(base + t, base + t + d, v, k, n, src.seq, p) for t, d, v, k, n, p in raw]
        packets.sort(key=lambda q: (q.t_ns, not q.video))
        return packets, fmt, frame_ns


def _format(c: av.container.InputContainer) -> _Format:
    v = c.streams.video[0].codec_context
    video = (v.name, v.width, v.height, v.pix_fmt)
    audio = None
    if c.streams.audio:
        a = c.streams.audio[0].codec_context
        audio = (a.name, a.sample_rate, a.layout.name, bytes(a.extradata or b""))
    return _Format(video, audio)


def _select(segments: Sequence[SourceSegment], start_ns: int, end_ns: int) -> list[SourceSegment]:
    """Segments overlapping [start, end), plus the last one starting at or before ``start``
    (its keyframes may be the one at or before the start even if its recorded duration is short)."""
    ordered = sorted(segments, key=lambda s: s.mono_start_ns)
    chosen = [s for s in ordered if s.mono_start_ns < end_ns and s.mono_start_ns + s.duration_ns > start_ns]
    before = [s for s in ordered if s.mono_start_ns <= start_ns]
    if chosen and before and before[-1] not in chosen:
        chosen.insert(0, before[-1])
    return chosen


def _gops(reader: _Sources, sources: Sequence[SourceSegment], start_ns: int, end_ns: int) -> Iterator[_Gop]:
    """The window's GOPs in timeline order, trimmed (see the module docstring)."""
    gop: _Gop | None = None
    last_video: int | None = None
    last_audio: int | None = None
    dropped = 0
    for src in sources:
        packets, fmt, frame_ns = reader.read(src)
        for p in packets:
            if p.t_ns >= end_ns:
                continue
            if p.video:
                if last_video is not None and p.t_ns <= last_video:
                    dropped += 1  # overlapping segments (should not happen): keep the timeline monotonic
                    continue
                if p.key:
                    # The GOP before is kept unless this keyframe is also at or before the start
                    # (a later start point), or it ended before the start (the window opens in a gap).
                    if gop is not None and p.t_ns > start_ns and gop.video_end_ns > start_ns:
                        yield gop
                    gop = _Gop(fmt, frame_ns, p.t_ns)
                elif gop is None or gop.fmt != fmt:
                    dropped += 1  # no keyframe to decode it from
                    continue
                last_video = p.t_ns
                gop.add(p)
            elif (
                gop is not None
                and gop.fmt == fmt
                and gop.start_ns <= p.t_ns
                and (p.t_ns >= src.mono_start_ns or p.t_ns < gop.video_end_ns + gop.frame_ns)
            ):
                # Audio goes with the GOP it starts in. Audio a segment holds from before its first
                # video frame joins the GOP before only if that GOP's video reaches it: audio in a
                # gap between segments (a recording resumed after an outage) is dropped.
                if last_audio is not None and p.t_ns < last_audio:
                    dropped += 1
                    continue
                last_audio = p.t_ns
                gop.add(p)
    if gop is not None and gop.video_end_ns > start_ns:
        yield gop
    if dropped:
        log.warning("%d packets dropped: overlapping timestamps or no keyframe before them", dropped)


# --- verification -------------------------------------------------------------------------------------


def measure(path: Path) -> Measurement:
    """Decode every packet of ``path``; raise ClipError if anything does not decode."""
    vp = vf = ap = af = 0
    first_key: bool | None = None
    first: int | None = None
    last_end = 0
    try:
        with av.open(str(path)) as c:
            container_ms = (c.duration or 0) / 1000  # AV_TIME_BASE (µs)
            streams = [s for s in c.streams if isinstance(s, av.VideoStream | av.AudioStream)]
            for s in streams:
                s.codec_context.thread_count = 1  # the least CPU; verification is not urgent
            for p in c.demux(*streams):
                if p.size == 0 or p.pts is None:
                    continue
                num, den = _to_ns(p.time_base)
                t = p.pts * num // den
                first = t if first is None else min(first, t)
                last_end = max(last_end, t + (p.duration or 0) * num // den)
                n = len(p.decode())
                if p.stream.type == "video":
                    if first_key is None:
                        first_key = p.is_keyframe
                    vp += 1
                    vf += n
                else:
                    ap += 1
                    af += n
            for s in streams:  # frames still held by a decoder
                n = len(s.codec_context.decode(None))
                if s.type == "video":
                    vf += n
                else:
                    af += n
    except av.FFmpegError as exc:
        raise ClipError(f"{path.name} does not decode: {exc}") from exc
    span_ms = (last_end - (first or 0)) / MS
    return Measurement(
        vp, vf, ap, af, bool(first_key), container_ms, span_ms, math.ceil(max(container_ms, span_ms) - 1e-9)
    )


# --- writing ------------------------------------------------------------------------------------------


class _Over(Exception):
    """A written part is over a limit (the planner's estimate was short)."""

    def __init__(self, size: int, duration_ms: int) -> None:
        super().__init__(f"{size} bytes, {duration_ms} ms")
        self.size = size
        self.duration_ms = duration_ms


def _add_streams(
    out: av.container.OutputContainer, tpl: av.container.InputContainer, video_template: av.VideoStream | None = None
):
    """Output streams with a source segment's parameters (as SegmentWriter makes them);
    ``video_template`` (an encoder's stream) replaces the video for a re-encode."""
    vin = tpl.streams.video[0].codec_context
    vs = out.add_stream_from_template(video_template or tpl.streams.video[0])
    src = video_template.codec_context if video_template is not None else vin
    vs.codec_context.width, vs.codec_context.height = src.width, src.height
    vs.codec_context.pix_fmt = src.pix_fmt or "yuv420p"
    vs.time_base = Fraction(1, 1000)
    aus = None
    if tpl.streams.audio:
        ain = tpl.streams.audio[0].codec_context
        aus = out.add_stream_from_template(tpl.streams.audio[0])
        aus.codec_context.sample_rate = ain.sample_rate
        aus.codec_context.layout = ain.layout
        aus.codec_context.extradata = ain.extradata
        aus.time_base = Fraction(1, 1000)
    return vs, aus


def _overhead(packets: int) -> int:
    return OVERHEAD_FIXED_BYTES + OVERHEAD_PER_PACKET_BYTES * packets


class _Builder:
    def __init__(
        self,
        reader: _Sources,
        out_dir: Path,
        name: str,
        max_bytes: int,
        max_duration_ms: int,
        camera: CameraSettings | None,
        origin_ns: int,
    ) -> None:
        self.reader = reader
        self.origin_ns = origin_ns  # the clip's requested start (for log messages)
        self.out_dir = out_dir
        self.name = name
        self.max_bytes = max_bytes
        self.max_duration_ms = max_duration_ms
        margin = min(DURATION_MARGIN_MS, max_duration_ms // 10)
        self.limit_ns = (max_duration_ms - margin) * MS
        self.camera = camera or CameraSettings()
        self.parts: list[ClipPart] = []
        self.pending: list[_Gop] = []

    # planning

    def _fits(self, gops: list[_Gop]) -> bool:
        if any(g.fmt != gops[0].fmt for g in gops):
            return False
        end = max(g.end_ns for g in gops)
        if end - gops[0].start_ns > self.limit_ns:
            return False
        n = sum(len(g.packets) for g in gops)
        return sum(g.bytes for g in gops) + _overhead(n) <= self.max_bytes

    def add(self, gop: _Gop) -> None:
        if not self._fits([gop]):
            while self.pending:
                self._flush()
            self._reencode(gop)
            return
        while self.pending and not self._fits(self.pending + [gop]):
            self._flush()
        self.pending.append(gop)

    def finish(self) -> list[ClipPart]:
        while self.pending:
            self._flush()
        return self.parts

    def _flush(self) -> None:
        """Write a leading run of the pending GOPs as one part; cut earlier if it comes out over."""
        n = len(self.pending)
        while True:
            gops = self.pending[:n]
            try:
                self._write_copy(gops)
                del self.pending[:n]
                return
            except _Over as over:
                if n == 1:
                    gop = self.pending.pop(0)
                    log.info(
                        "clip %s: the GOP at +%.1f s came out at %d bytes / %d ms once written; re-encoding it",
                        self.name,
                        (gop.start_ns - self.origin_ns) / 1e9,
                        over.size,
                        over.duration_ms,
                    )
                    self._reencode(gop)
                    return
                # Drop GOPs from the end until the excess (bytes or duration) is gone.
                excess_bytes = over.size - self.max_bytes
                excess_ns = (over.duration_ms - self.max_duration_ms) * MS
                cut = n - 1
                while cut > 1:
                    freed = sum(g.bytes for g in gops[cut:])
                    freed_ns = gops[-1].end_ns - gops[cut].start_ns
                    if freed >= excess_bytes and freed_ns >= excess_ns:
                        break
                    cut -= 1
                log.info(
                    "clip %s part %d: %s once written, over the cap; cut at an earlier keyframe (%d of %d GOPs)",
                    self.name,
                    len(self.parts) + 1,
                    over,
                    cut,
                    n,
                )
                n = cut

    # writing

    def _final(self) -> tuple[int, Path]:
        number = len(self.parts) + 1
        return number, self.out_dir / f"{self.name}-part{number:02d}.webm"

    def _write_copy(self, gops: list[_Gop]) -> None:
        packets = [p for g in gops for p in g.packets]
        self._write(gops[0].fmt, gops[0].start_ns, packets, None, reencoded=False)

    def _write(
        self,
        fmt: _Format,
        start_ns: int,
        packets: list[_Pkt],
        encoded: list[tuple[int, av.Packet]] | None,
        reencoded: bool,
        video_template: av.VideoStream | None = None,
    ) -> ClipPart:
        """Mux, fsync, verify, rename. ``encoded`` (ms, packet) replaces the video for a re-encode."""
        number, final = self._final()
        seqs = tuple(sorted({p.seq for p in packets}))
        tpl = self.reader.templates[fmt]
        video_n = len(encoded) if encoded is not None else sum(1 for p in packets if p.video)
        audio_n = 0
        with Folder.open(self.out_dir) as folder, folder.atomic(final.name) as tmp:
            f = tmp.file  # the muxer writes the temporary; verified before it takes the final name
            with open_whole_webm(f) as out:
                out.metadata.update(
                    {
                        TAG_CLIP: self.name,
                        TAG_PART: str(number),
                        TAG_PART_MONO_START: str(start_ns),
                        TAG_SOURCE_SEQS: ",".join(map(str, seqs)),
                        TAG_REENCODED: "1" if reencoded else "0",
                    }
                )
                vs, aus = _add_streams(out, tpl, video_template)
                # (ms in the part, stream, packet), in time order: the muxer's interleaving
                # queue stays short and the clusters hold both tracks side by side.
                items = [
                    ((p.t_ns - start_ns) // MS, vs if p.video else aus, p.packet)
                    for p in packets
                    if not (p.video and encoded is not None) and (p.video or aus is not None)
                ]
                if encoded is not None:
                    items += [(ms, vs, pkt) for ms, pkt in encoded]
                    items.sort(key=lambda i: (i[0], i[1] is not vs))
                lead_ms = audio_block_lead_ms(aus)
                for ms, stream, pkt in items:
                    pkt.stream = stream
                    pkt.time_base = Fraction(1, 1000)
                    pkt.pts = pkt.dts = ms
                    if stream is vs:
                        order_video(pkt, lead_ms)
                    out.mux(pkt)
                    audio_n += stream is not vs
            f.flush()
            size = os.fstat(f.fileno()).st_size
            try:
                m = measure(tmp.path)
            except ClipError as exc:
                raise ClipError(f"clip {self.name} part {number} failed verification: {exc}") from exc
            problems = []
            if m.video_packets != video_n or m.audio_packets != audio_n:
                problems.append(
                    f"holds {m.video_packets}/{m.audio_packets} video/audio packets, {video_n}/{audio_n} written"
                )
            if m.video_frames != m.video_packets or m.audio_frames != m.audio_packets:
                problems.append(
                    f"{m.video_frames} of {m.video_packets} video and {m.audio_frames} of "
                    f"{m.audio_packets} audio packets decoded to a frame"
                )
            if not m.first_video_key:
                problems.append("does not start with a keyframe")
            if m.duration_ms < 1:
                problems.append(f"measures {m.duration_ms} ms")
            if problems:
                raise ClipError(f"clip {self.name} part {number} failed verification: " + "; ".join(problems))
            if size > self.max_bytes or m.duration_ms > self.max_duration_ms:
                raise _Over(size, m.duration_ms)
            # leaving the block: fsynced, renamed to ``final``, folder fsynced (any raise above: removed)
        # Read back under the final name: what the outbox will upload.
        if final.stat().st_size != size:
            raise ClipError(f"clip {self.name} part {number} changed size after the rename")
        part = ClipPart(
            number,
            final,
            start_ns,
            m.duration_ms,
            size,
            sha256_file(final),
            seqs,
            reencoded,
            tuple(s for s in seqs if s in self.reader.mismatched),
        )
        self.parts.append(part)
        return part

    # re-encoding

    def _reencode(self, gop: _Gop) -> None:
        """Re-encode one GOP that cannot be copied within the limits, as one or more parts."""
        video = [p for p in gop.packets if p.video]
        audio_bytes = sum(p.size for p in gop.packets if not p.video)
        seconds = max(gop.frames, 1) * gop.frame_ns / 1e9
        audio_rate = audio_bytes / seconds  # bytes per second
        # Longest piece whose audio, container and a MIN_REENCODE_BITRATE video fit the byte cap.
        per_second = MIN_REENCODE_BITRATE / 8 + audio_rate + OVERHEAD_PER_PACKET_BYTES * len(gop.packets) / seconds
        room = self.max_bytes * REENCODE_FILL - OVERHEAD_FIXED_BYTES
        max_piece_ns = min(self.limit_ns - gop.audio_ns, int(room / per_second * 1e9)) if room > 0 else 0
        if max_piece_ns < gop.frame_ns:
            raise ClipError(
                f"clip {self.name}: max_bytes {self.max_bytes} / max_duration_ms "
                f"{self.max_duration_ms} cannot hold even one frame with its audio"
            )
        pieces: list[list[_Pkt]] = []
        for p in video:
            if not pieces or p.t_ns + gop.frame_ns - pieces[-1][0].t_ns > max_piece_ns:
                pieces.append([])
            pieces[-1].append(p)
        source_rate = (gop.bytes - audio_bytes) * 8 / seconds
        for i, frames in enumerate(pieces):
            start = frames[0].t_ns
            stop = pieces[i + 1][0].t_ns if i + 1 < len(pieces) else None
            packets = [p for p in gop.packets if p.t_ns >= start and (stop is None or p.t_ns < stop)]
            self._reencode_piece(gop, video, frames, packets, source_rate)

    def _reencode_piece(
        self, gop: _Gop, gop_video: list[_Pkt], frames: list[_Pkt], packets: list[_Pkt], source_rate: float
    ) -> None:
        audio = sum(p.size for p in packets if not p.video)
        seconds = len(frames) * gop.frame_ns / 1e9
        budget = self.max_bytes * REENCODE_FILL - audio - _overhead(len(packets))
        bitrate = int(min(budget * 8 / seconds, max(source_rate, MIN_REENCODE_BITRATE)))
        number = len(self.parts) + 1
        log.warning(
            "clip %s part %d: the footage at +%.1f s (%.1f s between keyframes, %d bytes) cannot be "
            "copied within %d bytes / %d ms; re-encoding %.1f s of it at %d bps",
            self.name,
            number,
            (frames[0].t_ns - self.origin_ns) / 1e9,
            gop.frames * gop.frame_ns / 1e9,
            gop.bytes,
            self.max_bytes,
            self.max_duration_ms,
            seconds,
            bitrate,
        )
        for _ in range(REENCODE_ATTEMPTS):
            if bitrate < MIN_REENCODE_BITRATE // 2:
                break
            encoder, encoded = self._encode(gop, gop_video, frames, bitrate)
            try:
                self._write(gop.fmt, frames[0].t_ns, packets, encoded, reencoded=True, video_template=encoder.template)
                return
            except _Over as over:
                log.warning(
                    "clip %s part %d: re-encoded at %d bps it is %s; trying lower", self.name, number, bitrate, over
                )
                bitrate = int(bitrate * min(0.85, 0.95 * self.max_bytes / over.size))
        raise ClipError(f"clip {self.name} part {number}: re-encoding did not fit {self.max_bytes} bytes")

    def _encode(
        self, gop: _Gop, gop_video: list[_Pkt], frames: list[_Pkt], bitrate: int
    ) -> tuple[VideoEncoder, list[tuple[int, av.Packet]]]:
        """Decode the GOP from its keyframe; encode ``frames`` (a run of it) with a fresh encoder."""
        width, height = gop.fmt.video[1], gop.fmt.video[2]
        fps = max(1, round(1e9 / gop.frame_ns))
        cam = dataclasses.replace(
            self.camera, width=width, height=height, fps=fps, bitrate=bitrate, keyframe_seconds=60.0
        )
        encoder = VideoEncoder(cam)
        decoder = video_decoder(gop.fmt.video[0])
        wanted = {id(p) for p in frames}
        start_ns = frames[0].t_ns
        times: list[int] = []  # encoder frame number -> ms in the part
        encoded: list[tuple[int, av.Packet]] = []

        def collect(out: list[av.Packet]) -> None:
            for q in out:
                assert q.pts is not None  # (an encoder's packet)
                encoded.append((times[q.pts], q))

        try:
            last = frames[-1]
            for p in gop_video:
                decoded = decoder.decode(p.packet)
                if id(p) in wanted:
                    for frame in decoded:
                        n = len(times)
                        times.append((p.t_ns - start_ns) // MS)
                        collect(encoder.encode(frame, n, keyframe=(n == 0)))
                if p is last:
                    break
            collect(encoder.flush())
        except av.FFmpegError as exc:
            raise ClipError(f"clip {self.name}: re-encoding failed: {exc}") from exc
        return encoder, encoded


# --- entry point ----------------------------------------------------------------------------------------


def build_clip(
    segments: Sequence[SourceSegment],
    start_mono_ns: int,
    end_mono_ns: int,
    out_dir: Path,
    name: str,
    max_bytes: int,
    max_duration_ms: int,
    *,
    camera: CameraSettings | None = None,
) -> list[ClipPart]:
    """Build the parts of the clip [start_mono_ns, end_mono_ns) as ``out_dir/NAME-partNN.webm``.

    ``segments`` must share one monotonic timeline (one boot); those outside the window are
    ignored, so the caller may pass more than it needs.

    The builder owns the files named ``NAME-partNN.webm`` in ``out_dir``: earlier ones are
    replaced, and on failure the parts written by this call are removed. ``camera`` supplies the
    encoder speed and threads for a re-encode (default: the default camera settings).
    Raises ClipError (nothing selected, unreadable source, verification failed) or OSError.
    """
    if end_mono_ns <= start_mono_ns:
        raise ClipError("the clip's end is not after its start")
    if max_bytes <= 0 or max_duration_ms < 1:
        raise ClipError(f"impossible limits: {max_bytes} bytes, {max_duration_ms} ms")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ClipError(f"clip name {name!r} is not a plain file name")
    sources = _select(segments, start_mono_ns, end_mono_ns)
    if not sources:
        raise ClipError(
            f"no recorded segment overlaps the requested time range "
            f"({start_mono_ns / 1e9:.3f} s to {end_mono_ns / 1e9:.3f} s on the monotonic timeline)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = re.compile(rf"{re.escape(name)}-part\d+\.webm")
    for old in out_dir.iterdir():
        if stale.fullmatch(old.name):
            old.unlink()
    remove_temporaries(out_dir)
    reader = _Sources()
    builder = _Builder(reader, out_dir, name, max_bytes, max_duration_ms, camera, start_mono_ns)
    try:
        any_gop = False
        for gop in _gops(reader, sources, start_mono_ns, end_mono_ns):
            any_gop = True
            builder.add(gop)
        if not any_gop:
            raise ClipError("the segments overlapping the requested time range hold no video in it")
        parts = builder.finish()
    except BaseException:
        for p in builder.parts:
            p.path.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    return parts
