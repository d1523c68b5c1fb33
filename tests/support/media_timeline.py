"""Where every frame and every audio packet of a recording sits on its timeline, and what that says.

Segments carry their start on the recording's monotonic timeline (``EDGED_MONO_START_NS``); each
packet's time is that plus its pts. From the whole recording: how many frames were kept of those
due, the longest gap between kept frames (an even drop pattern keeps it short), the longest gap in
the sound (continuity) and how far each segment's sound ends from its picture (sync).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av

from edged.recording.segment import TAG_MONO


@dataclass
class SegmentMedia:
    path: Path
    start_s: float
    video_s: list[float] = field(default_factory=list)  # frame times, timeline seconds
    audio: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each packet


def read_segment(path: Path, origin_ns: int | None = None) -> SegmentMedia:
    """Every packet of one segment; times relative to ``origin_ns`` (default: the segment's start).
    Raises if the file does not decode (a recording must stay valid under any load)."""
    with av.open(str(path)) as c:
        start_ns = int(c.metadata.get(TAG_MONO) or c.metadata.get(TAG_MONO.lower()) or 0)
        seg = SegmentMedia(path, (start_ns - (origin_ns if origin_ns is not None else start_ns)) / 1e9)
        for p in c.demux(*c.streams):
            if p.size == 0 or p.pts is None:
                continue
            t = seg.start_s + float(p.pts * p.time_base)
            if p.stream.type == "video":
                seg.video_s.append(t)
            else:
                seg.audio.append((t, t + float((p.duration or 0) * p.time_base)))
        for frame in c.decode(video=0):  # the picture decodes, frame by frame
            del frame
    return seg


def segment_start_ns(path: Path) -> int:
    with av.open(str(path)) as c:
        return int(c.metadata.get(TAG_MONO) or c.metadata.get(TAG_MONO.lower()) or 0)


@dataclass
class Figures:
    segments: int
    frames: int
    frames_due: int
    kept: float  # frames / frames_due
    longest_gap_s: float  # between consecutive kept frames
    audio_s: float  # sound recorded
    longest_audio_gap_s: float
    av_offset_s: float  # the most a segment's sound starts away from its first frame (after the first)

    def doc(self) -> dict:
        return self.__dict__.copy()


def figures(paths: list[Path], fps: int) -> Figures:
    if not paths:
        raise ValueError("no segments")
    origin = min(segment_start_ns(p) for p in paths)
    segs = sorted((read_segment(p, origin) for p in paths), key=lambda s: s.start_s)
    video = sorted(t for s in segs for t in s.video_s)
    audio = sorted(a for s in segs for a in s.audio)
    span = video[-1] - video[0] + 1 / fps if video else 0.0
    gaps = [b - a for a, b in zip(video, video[1:])]
    audio_gaps = [b[0] - a[1] for a, b in zip(audio, audio[1:])]
    # Where each segment after the first splits the sound from the one before, against where it
    # splits the picture (its first frame, a keyframe at its capture time): the recorder routes
    # both by their own capture timestamps, so a sound that slid against the picture shows here.
    offsets = [abs(s.audio[0][0] - s.video_s[0]) for s in segs[1:] if s.video_s and s.audio]
    due = max(1, round(span * fps))
    return Figures(
        segments=len(segs),
        frames=len(video),
        frames_due=due,
        kept=len(video) / due,
        longest_gap_s=round(max(gaps, default=0.0), 3),  # to the millisecond: WebM's resolution
        audio_s=round(sum(e - b for b, e in audio), 3),
        longest_audio_gap_s=round(max(audio_gaps, default=0.0), 3),
        av_offset_s=round(max(offsets, default=0.0), 3),
    )
