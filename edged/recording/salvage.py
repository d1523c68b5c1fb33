"""Salvage: recover a segment cut off mid-write up to its last complete frames.

The ``.part`` file's header and every closed cluster reached the disk (see ``segment``); the
tail may be a half-written cluster. Packets are copied (no re-encode) into a new file until the
demuxer fails or a packet does not decode; the result is a normal standalone segment.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import av

from edged.core.files import Folder, fsync_dir
from edged.recording.segment import PART_SUFFIX
from edged.recording.webm import audio_block_lead_ms, order_video

#: What salvage's temporary was called before edged.core.files made every temporary (still cleaned up).
LEGACY_SALVAGE_SUFFIX = ".salvage"


class SalvageResult(NamedTuple):
    path: Path | None  # the recovered segment, or None when nothing was recoverable
    video_frames: int
    audio_packets: int
    reason: str  # why copying stopped


def salvage(part: Path) -> SalvageResult:
    """Recover ``NAME.webm.part`` into ``NAME.webm``; remove the ``.part``."""
    assert part.name.endswith(PART_SUFFIX), part
    final = part.with_name(part.name[: -len(PART_SUFFIX)])
    with open(part, "rb") as f:  # a real I/O error propagates here, and nothing is deleted
        f.read(4096)
    try:
        src = av.open(str(part))
    except av.FFmpegError as exc:  # readable, but cut off before its header was complete: nothing to keep
        part.unlink(missing_ok=True)
        return SalvageResult(None, 0, 0, f"header unreadable: {exc}")
    # Copied into a temporary that takes the final name only whole and on disk (edged.core.files).
    with Folder.open(part.parent) as folder, folder.atomic(final.name) as tmp:
        frames, audio, reason = _copy_until_broken(src, tmp.file)
        if frames == 0:
            tmp.discard()
    if frames == 0:
        part.unlink(missing_ok=True)
        return SalvageResult(None, 0, audio, f"no complete video frame ({reason})")
    part.unlink(missing_ok=True)
    fsync_dir(final.parent)
    return SalvageResult(final, frames, audio, reason)


def _copy_until_broken(src: av.container.InputContainer, out_file: BinaryIO) -> tuple[int, int, str]:
    frames = audio = 0
    reason = "end of file"
    with src:
        out = av.open(out_file, "w", format="webm")
        out.metadata.update(src.metadata)
        mapping = {}
        decoders: dict[int, Any] = {}  # PyAV types CodecContext.create as the base class, without decode
        for s in src.streams:
            if s.type in ("video", "audio"):
                o = out.add_stream_from_template(s)
                o.time_base = Fraction(1, 1000)
                mapping[s.index] = o
                decoders[s.index] = av.CodecContext.create(s.codec_context.name, "r")
                if s.codec_context.extradata:
                    decoders[s.index].extradata = s.codec_context.extradata
        lead_ms = audio_block_lead_ms(next((o for o in mapping.values() if isinstance(o, av.AudioStream)), None))
        try:
            for packet in src.demux():
                if packet.size == 0 or packet.stream.index not in mapping:
                    continue
                if packet.is_corrupt:
                    reason = "corrupt packet"
                    break
                try:
                    decoders[packet.stream.index].decode(packet)
                except av.FFmpegError as exc:
                    reason = f"undecodable packet: {exc}"
                    break
                if packet.stream.type == "video":
                    frames += 1
                else:
                    audio += 1
                if packet.stream.type == "video":
                    order_video(packet, lead_ms)
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)
        except av.FFmpegError as exc:
            reason = f"cut off: {exc}"
        if frames:
            out.close()
        else:
            try:
                out.close()
            except av.FFmpegError:
                pass
        out_file.flush()
    return frames, audio, reason
