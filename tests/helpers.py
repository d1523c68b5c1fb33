"""Helpers for reading back what edged wrote, with PyAV (independent of edged's own readers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av


@dataclass
class StreamPackets:
    pts_ms: list[int]
    keyframes: list[int]
    sizes: list[int]
    durations_ms: list[int]


def packets(path: Path, kind: str) -> StreamPackets:
    out = StreamPackets([], [], [], [])
    with av.open(str(path)) as c:
        streams = c.streams.video if kind == "video" else c.streams.audio
        if not streams:
            return out
        for p in c.demux(streams[0]):
            if p.size == 0:
                continue
            ms = int(p.pts * p.time_base * 1000)
            out.pts_ms.append(ms)
            out.sizes.append(p.size)
            out.durations_ms.append(int((p.duration or 0) * p.time_base * 1000))
            if p.is_keyframe:
                out.keyframes.append(ms)
    return out


def decode_all(path: Path) -> tuple[int, int]:
    """Decode every frame; return (video frames, audio samples). Raises on any decode error."""
    frames = samples = 0
    with av.open(str(path)) as c:
        for f in c.decode(*c.streams):
            if isinstance(f, av.VideoFrame):
                frames += 1
            else:
                samples += f.samples
    return frames, samples


def segment_files(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "segments").glob("*.webm"))
