"""A small, independent WebM (EBML) reader for tests: what a browser's demuxer sees in a file.

It reads the elements edged's playback depends on straight from the bytes, without FFmpeg (whose
demuxer would hide them: it folds ``CodecDelay`` into the timestamps it returns): each track's
codec, CodecPrivate, CodecDelay and SeekPreRoll, and each cluster's timestamp and blocks (track,
absolute time in ms, keyframe flag), with the byte offsets of the elements so a test can alter a
file surgically (``void_element``).

EBML: an element is an ID (a variable-length integer kept with its length marker), a size (a
variable-length integer without it; all ones: unknown, which only a Segment being written has
here) and the payload. Matroska's TimestampScale is 1 ms in every file FFmpeg writes; the reader
checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SEGMENT = 0x18538067
INFO = 0x1549A966
TIMESTAMP_SCALE = 0x2AD7B1
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
CODEC_DELAY = 0x56AA
SEEK_PRE_ROLL = 0x56BB
CLUSTER = 0x1F43B675
CLUSTER_TIMESTAMP = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
REFERENCE_BLOCK = 0xFB
VOID = 0xEC

VIDEO, AUDIO = 1, 2  # TrackType values


class EbmlError(ValueError):
    """The bytes are not the WebM this reader understands."""


@dataclass
class Element:
    id: int
    start: int  # offset of the ID
    data: int  # offset of the payload
    end: int  # offset just past the payload


@dataclass
class Track:
    number: int
    type: int
    codec_id: str
    codec_private: bytes = b""
    codec_delay_ns: int | None = None
    seek_pre_roll_ns: int | None = None
    codec_delay_element: Element | None = None


@dataclass(frozen=True)
class Block:
    track: int
    time_ms: int  # cluster timestamp + the block's relative timestamp
    keyframe: bool  # SimpleBlock flag 0x80; a BlockGroup's Block: no ReferenceBlock


@dataclass
class Cluster:
    time_ms: int
    offset: int
    blocks: list[Block] = field(default_factory=list)


@dataclass
class WebM:
    tracks: dict[int, Track]
    clusters: list[Cluster]

    def track(self, kind: int) -> Track:
        found = [t for t in self.tracks.values() if t.type == kind]
        if len(found) != 1:
            raise EbmlError(f"{len(found)} tracks of type {kind}")
        return found[0]


def _vint(buf: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """(value, next position, all value bits set) of the variable-length integer at ``pos``."""
    if pos >= len(buf):
        raise EbmlError(f"truncated at {pos}")
    first = buf[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or pos + length > len(buf):
        raise EbmlError(f"bad variable-length integer at {pos}")
    value = first if keep_marker else first & (0xFF >> length)
    for b in buf[pos + 1 : pos + length]:
        value = value << 8 | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, pos + length, unknown


def _children(buf: bytes, start: int, end: int) -> list[Element]:
    out = []
    pos = start
    while pos < end:
        eid, p, _ = _vint(buf, pos, keep_marker=True)
        size, data, unknown = _vint(buf, p, keep_marker=False)
        if unknown:
            if eid != SEGMENT:
                raise EbmlError(f"element {eid:#x} at {pos} has an unknown size")
            size = end - data
        if data + size > end:
            raise EbmlError(f"element {eid:#x} at {pos} runs past its parent")
        out.append(Element(eid, pos, data, data + size))
        pos = data + size
    return out


def _uint(buf: bytes, e: Element) -> int:
    return int.from_bytes(buf[e.data : e.end], "big")


def _block(buf: bytes, start: int, cluster_ms: int) -> tuple[int, int, int]:
    """(track, absolute ms, flags) of the Block or SimpleBlock whose payload starts at ``start``."""
    track, p, _ = _vint(buf, start, keep_marker=False)
    relative = int.from_bytes(buf[p : p + 2], "big", signed=True)
    return track, cluster_ms + relative, buf[p + 2]


def parse(buf: bytes) -> WebM:
    top = _children(buf, 0, len(buf))
    segments = [e for e in top if e.id == SEGMENT]
    if not segments:
        raise EbmlError("no Segment")
    tracks: dict[int, Track] = {}
    clusters: list[Cluster] = []
    for e in _children(buf, segments[0].data, segments[0].end):
        if e.id == INFO:
            for c in _children(buf, e.data, e.end):
                if c.id == TIMESTAMP_SCALE and _uint(buf, c) != 1_000_000:
                    raise EbmlError(f"TimestampScale {_uint(buf, c)}, not 1 ms")
        elif e.id == TRACKS:
            for t in _children(buf, e.data, e.end):
                if t.id != TRACK_ENTRY:
                    continue
                fields = {c.id: c for c in _children(buf, t.data, t.end)}
                track = Track(
                    number=_uint(buf, fields[TRACK_NUMBER]),
                    type=_uint(buf, fields[TRACK_TYPE]),
                    codec_id=buf[fields[CODEC_ID].data : fields[CODEC_ID].end].decode("ascii"),
                )
                if CODEC_PRIVATE in fields:
                    track.codec_private = buf[fields[CODEC_PRIVATE].data : fields[CODEC_PRIVATE].end]
                if CODEC_DELAY in fields:
                    track.codec_delay_ns = _uint(buf, fields[CODEC_DELAY])
                    track.codec_delay_element = fields[CODEC_DELAY]
                if SEEK_PRE_ROLL in fields:
                    track.seek_pre_roll_ns = _uint(buf, fields[SEEK_PRE_ROLL])
                tracks[track.number] = track
        elif e.id == CLUSTER:
            children = _children(buf, e.data, e.end)
            stamps = [c for c in children if c.id == CLUSTER_TIMESTAMP]
            if not stamps:
                raise EbmlError(f"cluster at {e.start} has no timestamp")
            cluster = Cluster(_uint(buf, stamps[0]), e.start)
            for c in children:
                if c.id == SIMPLE_BLOCK:
                    track, ms, flags = _block(buf, c.data, cluster.time_ms)
                    cluster.blocks.append(Block(track, ms, bool(flags & 0x80)))
                elif c.id == BLOCK_GROUP:
                    inner = _children(buf, c.data, c.end)
                    block = next(b for b in inner if b.id == BLOCK)
                    track, ms, _ = _block(buf, block.data, cluster.time_ms)
                    cluster.blocks.append(Block(track, ms, not any(b.id == REFERENCE_BLOCK for b in inner)))
            clusters.append(cluster)
    return WebM(tracks, clusters)


def read_webm(path: Path) -> WebM:
    return parse(path.read_bytes())


def opus_pre_skip(codec_private: bytes) -> int:
    """The pre-skip (samples at 48 kHz) of an OpusHead (RFC 7845 section 5.1)."""
    if len(codec_private) < 19 or codec_private[:8] != b"OpusHead":
        raise EbmlError("CodecPrivate is not an OpusHead")
    return int.from_bytes(codec_private[10:12], "little")


def void_element(buf: bytes, e: Element) -> bytes:
    """``buf`` with element ``e`` replaced by an EBML Void of the same length: every offset in
    the file (SeekHead, Cues) stays valid, and readers skip the Void."""
    length = e.end - e.start
    if not 2 <= length <= 0x7F + 1:
        raise EbmlError(f"cannot void an element of {length} bytes")
    return buf[: e.start] + bytes([VOID, 0x80 | (length - 2)]) + bytes(length - 2) + buf[e.end :]
