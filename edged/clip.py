"""The clip builder: joins segments into upload-ready parts by remuxing, within the limits.

1. *Scan* the source segments' packets (no decoding) and place each on the recording timeline:
   ``segment.mono_start_ns + (packet time − the segment's first video packet time)``.
2. *Trim* to the video keyframe at or before the wanted start; drop what is at or after the end.
3. *Plan* parts as runs of whole GOPs (keyframe to keyframe), each within the duration and byte
   limits (with a margin for the container); consecutive parts share their boundary keyframe
   time, so they cover the event with no gap and no overlap.
4. *Write* each part (packets copied, timestamps rebased; atomic rename) and *verify* it: every
   packet decodes, its measured duration is its ``durationMs``, its size is under the cap.
   A GOP too large for the cap on its own (pathological footage) is re-encoded at a bitrate
   that fits, and that is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from edged.config import CameraSettings
from edged.encode import VideoEncoder
from edged.segment import fsync_dir, sha256_file

log = logging.getLogger("edged.clip")

#: Room left under the duration limit: WebM rounds to milliseconds and the audio of a part may
#: end a few ms after its video (ENCODING.md: 12 x 10 s measure 120.008 s).
DURATION_MARGIN_MS = 150
#: Room left under the byte limit for the container (header, cues, cluster and block headers).
BYTES_OVERHEAD = 48_000
#: Re-encoded parts aim this far under the byte cap.
REENCODE_FILL = 0.85


class ClipError(Exception):
    """A clip could not be built or a part failed verification."""


@dataclass(frozen=True, slots=True)
class SourceSegment:
    path: Path
    seq: int
    mono_start_ns: int
    duration_ns: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ClipPart:
    number: int
    path: Path
    start_mono_ns: int
    duration_ms: int
    bytes: int
    sha256: str
    source_seqs: tuple[int, ...]
    reencoded: bool


@dataclass(frozen=True, slots=True)
class _Packet:
    src: int
    video: bool
    t_ns: int
    size: int
    key: bool
    packet: av.Packet  # kept from the scan: the event is read from disk once


@dataclass(slots=True)
class _Gop:
    start_ns: int
    end_ns: int
    bytes: int
    srcs: set[int]


@dataclass(slots=True)
class _Plan:
    start_ns: int
    end_ns: int
    bytes: int
    srcs: set[int]
    reencode: bool = False


def _ns(pts: int, tb: Fraction) -> int:
    return int(pts * tb * 1_000_000_000)


def _scan(sources: Sequence[SourceSegment]) -> tuple[list[_Packet], int, dict]:
    """Every packet of every source on the timeline, the frame interval (ns), and the first source's
    stream parameters. Memory: the event's packets (a 12-minute event at the target rate: ~33 MB)."""
    packets: list[_Packet] = []
    frame_ns = 0
    params: dict = {}
    for i, src in enumerate(sources):
        try:
            with av.open(str(src.path)) as c:
                if not c.streams.video:
                    raise ClipError(f"segment {src.path.name} has no video")
                vs = c.streams.video[0]
                if not params:
                    params = _stream_params(c)
                if vs.average_rate:
                    frame_ns = frame_ns or int(1_000_000_000 / vs.average_rate)
                raw = [(p.stream.type == "video", _ns(p.pts, p.time_base), p) for p in c.demux()
                       if p.size and p.pts is not None and p.stream.type in ("video", "audio")]
        except av.FFmpegError as exc:
            raise ClipError(f"segment {src.path.name} unreadable: {exc}") from exc
        first_video = min((t for v, t, _ in raw if v), default=None)
        if first_video is None:
            continue
        base = src.mono_start_ns - first_video
        packets.extend(_Packet(i, v, base + t, p.size, p.is_keyframe, p) for v, t, p in raw)
    if not frame_ns:
        frame_ns = 100_000_000
    packets.sort(key=lambda p: p.t_ns)
    return packets, frame_ns, params


def _stream_params(c: av.container.InputContainer) -> dict:
    vcc = c.streams.video[0].codec_context
    return {"width": vcc.width, "height": vcc.height, "fps": int(c.streams.video[0].average_rate or 10),
            "video_codec": vcc.name}


def _gops(packets: list[_Packet], start_ns: int, end_ns: int, frame_ns: int) -> list[_Gop]:
    video = sorted((p for p in packets if p.video and p.t_ns < end_ns), key=lambda p: p.t_ns)
    keys = [p for p in video if p.key]
    if not keys:
        raise ClipError("no keyframe in the selected footage")
    first = max((k for k in keys if k.t_ns <= start_ns), default=keys[0], key=lambda k: k.t_ns)
    video = [p for p in video if p.t_ns >= first.t_ns]
    gops: list[_Gop] = []
    for p in video:
        if p.key or not gops:
            if gops:
                gops[-1].end_ns = p.t_ns
            gops.append(_Gop(p.t_ns, p.t_ns + frame_ns, 0, set()))
        g = gops[-1]
        g.end_ns = max(g.end_ns, p.t_ns + frame_ns)
        g.bytes += p.size
        g.srcs.add(p.src)
    clip_end = gops[-1].end_ns
    for p in packets:  # audio follows the video's span
        if not p.video and gops[0].start_ns <= p.t_ns < clip_end:
            g = gops[_gop_of(gops, p.t_ns)]
            g.bytes += p.size
            g.srcs.add(p.src)
    return gops


def _gop_of(gops: list[_Gop], t: int) -> int:
    lo, hi = 0, len(gops) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if gops[mid].start_ns <= t:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _plan(gops: list[_Gop], max_bytes: int, max_duration_ms: int) -> list[_Plan]:
    limit_ns = (max_duration_ms - DURATION_MARGIN_MS) * 1_000_000
    budget = max_bytes - BYTES_OVERHEAD
    plans: list[_Plan] = []
    cur: _Plan | None = None
    for g in gops:
        alone_too_big = g.bytes > budget or g.end_ns - g.start_ns > limit_ns
        if cur is not None and not alone_too_big and not cur.reencode and \
                g.end_ns - cur.start_ns <= limit_ns and cur.bytes + g.bytes <= budget:
            cur.end_ns, cur.bytes = g.end_ns, cur.bytes + g.bytes
            cur.srcs |= g.srcs
            continue
        cur = _Plan(g.start_ns, g.end_ns, g.bytes, set(g.srcs), reencode=alone_too_big)
        plans.append(cur)
    for a, b in zip(plans, plans[1:]):
        a.end_ns = b.start_ns  # contiguous by construction; make it exact
    return plans


def _open_streams(out: av.container.OutputContainer, template: av.container.InputContainer,
                  video_template: av.stream.Stream | None = None):
    """Output streams copying a source segment's parameters (as the segment writer makes them);
    ``video_template`` replaces the video codec (a re-encode)."""
    vs_in = template.streams.video[0]
    vs = out.add_stream_from_template(video_template or vs_in)
    vs.codec_context.width, vs.codec_context.height = vs_in.codec_context.width, vs_in.codec_context.height
    vs.codec_context.pix_fmt = vs_in.codec_context.pix_fmt or "yuv420p"
    vs.time_base = Fraction(1, 1000)
    aus = None
    if template.streams.audio:
        as_in = template.streams.audio[0]
        aus = out.add_stream_from_template(as_in)
        aus.codec_context.sample_rate = as_in.codec_context.sample_rate
        aus.codec_context.layout = as_in.codec_context.layout
        aus.codec_context.extradata = as_in.codec_context.extradata
        aus.time_base = Fraction(1, 1000)
    return vs, aus


def _reencoder(params: dict, bitrate: int) -> VideoEncoder:
    return VideoEncoder(dataclasses.replace(
        CameraSettings(), width=params["width"], height=params["height"], fps=params["fps"], bitrate=bitrate,
        keyframe_seconds=60.0))


def _write_part(packets: list[_Packet], params: dict, template: Path, plan: _Plan, tmp: Path,
                bitrate: int | None) -> None:
    """Copy (or, with ``bitrate``, re-encode the video of) the plan's span into ``tmp``."""
    span = [p for p in packets if plan.start_ns <= p.t_ns < plan.end_ns]
    with open(tmp, "wb") as f:
        with av.open(str(template)) as tpl, av.open(f, "w", format="webm") as out:
            encoder = _reencoder(params, bitrate) if bitrate is not None else None
            vs, aus = _open_streams(out, tpl, encoder.template if encoder else None)
            if encoder is None:
                _copy(span, plan, out, vs, aus)
            else:
                _reencode(span, plan, out, vs, aus, encoder, params)
        f.flush()
        os.fsync(f.fileno())


def _rebased(p: _Packet, plan: _Plan, stream) -> av.Packet:
    pkt = p.packet
    pkt.stream = stream
    pkt.time_base = Fraction(1, 1000)
    pkt.pts = pkt.dts = (p.t_ns - plan.start_ns) // 1_000_000
    return pkt


def _copy(span: list[_Packet], plan: _Plan, out, vs, aus) -> None:
    for p in span:
        target = vs if p.video else aus
        if target is not None:
            out.mux(_rebased(p, plan, target))


def _reencode(span: list[_Packet], plan: _Plan, out, vs, aus, encoder: VideoEncoder, params: dict) -> None:
    decoder = av.CodecContext.create(params["video_codec"], "r")
    frame_ms: dict[int, int] = {}  # frame number -> its place on the part's timeline

    def mux_encoded(packets: list[av.Packet]) -> None:
        for q in packets:
            q.stream = vs
            q.time_base = Fraction(1, 1000)
            q.pts = q.dts = frame_ms[int(q.pts)]
            out.mux(q)

    for p in span:
        if not p.video:
            if aus is not None:
                out.mux(_rebased(p, plan, aus))
            continue
        for frame in decoder.decode(p.packet):
            n = len(frame_ms)
            frame_ms[n] = (p.t_ns - plan.start_ns) // 1_000_000
            mux_encoded(encoder.encode(frame, n, keyframe=(n == 0)))
    mux_encoded(encoder.flush())


def measure(path: Path) -> tuple[int, int, int]:
    """Decode every packet; return (video frames, audio frames, duration in ms as a server reading
    the file sees it: from the earliest packet start to the latest packet end, rounded up)."""
    frames = audio = 0
    first: int | None = None
    last_end = 0
    try:
        with av.open(str(path)) as c:
            for p in c.demux():
                if p.pts is None or p.size == 0:
                    continue
                start = _ns(p.pts, p.time_base)
                end = start + _ns(p.duration or 0, p.time_base)
                first = start if first is None else min(first, start)
                last_end = max(last_end, end, start)
                for _ in p.decode():
                    if p.stream.type == "video":
                        frames += 1
                    else:
                        audio += 1
    except av.FFmpegError as exc:
        raise ClipError(f"{path.name} does not decode: {exc}") from exc
    duration_ms = math.ceil((last_end - (first or 0)) / 1_000_000)
    return frames, audio, duration_ms


def build_clip(segments: Sequence[SourceSegment], start_mono_ns: int, end_mono_ns: int, out_dir: Path,
               name: str, max_bytes: int, max_duration_ms: int) -> list[ClipPart]:
    if end_mono_ns <= start_mono_ns:
        raise ClipError("the clip's end is not after its start")
    sources = sorted((s for s in segments if s.mono_start_ns < end_mono_ns
                      and s.mono_start_ns + s.duration_ns > start_mono_ns), key=lambda s: s.mono_start_ns)
    if not sources:
        raise ClipError("no recorded segment overlaps the requested time range")
    packets, frame_ns, params = _scan(sources)
    plans = _plan(_gops(packets, start_mono_ns, end_mono_ns, frame_ns), max_bytes, max_duration_ms)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts: list[ClipPart] = []
    queue = list(plans)
    while queue:
        plan = queue.pop(0)
        number = len(parts) + 1
        final = out_dir / f"{name}-part{number:02d}.webm"
        tmp = out_dir / f".{final.name}.tmp"
        bitrate = None
        if plan.reencode:
            seconds = max((plan.end_ns - plan.start_ns) / 1e9, 0.1)
            bitrate = max(20_000, int((max_bytes - BYTES_OVERHEAD) * REENCODE_FILL * 8 / seconds) - 64_000)
            log.warning("clip %s part %d: %.1f s of footage cannot fit %d bytes between keyframes; "
                        "re-encoding it at %d bps", name, number, seconds, max_bytes, bitrate)
        _write_part(packets, params, sources[min(plan.srcs)].path, plan, tmp, bitrate)
        size = tmp.stat().st_size
        if size > max_bytes and not plan.reencode:
            split = _split(plan, packets, frame_ns)
            tmp.unlink()
            queue[:0] = split
            continue
        frames, _, duration_ms = measure(tmp)
        if frames == 0 or not 1 <= duration_ms <= max_duration_ms or size > max_bytes:
            tmp.unlink(missing_ok=True)
            raise ClipError(f"part {number} failed verification: {frames} frames, {duration_ms} ms, {size} bytes")
        os.replace(tmp, final)
        fsync_dir(out_dir)
        parts.append(ClipPart(number, final, plan.start_ns, duration_ms, size, sha256_file(final),
                              tuple(sources[i].seq for i in sorted(plan.srcs)), plan.reencode))
    return parts


def _split(plan: _Plan, packets: list[_Packet], frame_ns: int) -> list[_Plan]:
    """A written part came out over the cap (container overhead underestimated): cut it at its
    last inner keyframe, or re-encode it if it has none."""
    keys = sorted(p.t_ns for p in packets if p.video and p.key and plan.start_ns < p.t_ns < plan.end_ns)
    if not keys:
        return [dataclasses.replace(plan, reencode=True)]
    cut = keys[-1]
    a = _Plan(plan.start_ns, cut, 0, {p.src for p in packets if plan.start_ns <= p.t_ns < cut})
    b = _Plan(cut, plan.end_ns, 0, {p.src for p in packets if cut <= p.t_ns < plan.end_ns})
    return [a, b]
