"""Segments: standalone WebM files written crash-safely.

A segment is written as ``NAME.webm.part``: the muxer closes a Matroska cluster every half
second and it reaches the file at once (FFmpeg holds the cluster being filled in memory and writes
it whole when it closes), and the file is fsynced every ``sync_interval``; so a crash or power cut
leaves a ``.part`` that salvage can cut back to its last complete frames.
On finish: the muxer writes its trailer (duration, cues), the file is fsynced, renamed to
``NAME.webm`` and the directory fsynced.

Each file carries its own timeline in Matroska tags (boot id, monotonic and wall start, clock
sync state, sequence number), so the index can be rebuilt from the folder alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av

from edged.core.files import fsync_dir, sha256_file
from edged.core.timefmt import compact
from edged.recording.webm import audio_block_lead_ms, order_video

PART_SUFFIX = ".part"
SUFFIX = ".webm"

#: Matroska cluster length. A cluster reaches the file only when it closes, so this bounds what
#: kill -9 loses of the segment being written (a power cut: this plus up to ``sync_interval``).
#: scripts/crash_matrix.py measured at 1000 ms: kill -9 lost up to 1.20 s, a power cut 2.07 s
#: (over the 2 s requirement); at 500 ms: 0.57 s and 1.28 s. A cluster costs ~11 bytes more (30 s: +329).
CLUSTER_MS = 500

TAG_SEQ = "EDGED_SEQ"
TAG_BOOT = "EDGED_BOOT_ID"
TAG_MONO = "EDGED_MONO_START_NS"
TAG_WALL = "EDGED_WALL_START_NS"
TAG_SYNCED = "EDGED_CLOCK_SYNCED"
TAG_DEVICE = "EDGED_DEVICE_ID"


@dataclass(frozen=True, slots=True)
class SegmentStart:
    """What is known of a segment when it starts."""

    seq: int
    boot_id: str
    mono_start_ns: int
    wall_start_ns: int
    clock_synced: bool
    device_id: str

    @property
    def name(self) -> str:
        utc = compact(self.wall_start_ns)
        return f"{self.seq:09d}_{utc}{SUFFIX}"

    def tags(self) -> dict[str, str]:
        return {
            TAG_SEQ: str(self.seq),
            TAG_BOOT: self.boot_id,
            TAG_MONO: str(self.mono_start_ns),
            TAG_WALL: str(self.wall_start_ns),
            TAG_SYNCED: "1" if self.clock_synced else "0",
            TAG_DEVICE: self.device_id,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> SegmentStart:
        lower = {k.upper(): v for k, v in tags.items()}
        return cls(
            seq=int(lower[TAG_SEQ]),
            boot_id=lower[TAG_BOOT],
            mono_start_ns=int(lower[TAG_MONO]),
            wall_start_ns=int(lower[TAG_WALL]),
            clock_synced=lower.get(TAG_SYNCED) == "1",
            device_id=lower.get(TAG_DEVICE, ""),
        )


@dataclass(frozen=True, slots=True)
class SegmentFacts:
    """What is measured of a finished (or salvaged) segment file."""

    duration_ns: int
    bytes: int
    video_frames: int
    audio_packets: int
    sha256: str


class SegmentWriter:
    """One segment being written. Packets arrive with recording-wide timestamps."""

    def __init__(
        self,
        directory: Path,
        start: SegmentStart,
        video_template: av.VideoStream,
        audio_template: av.AudioStream | None,
        audio_extradata: bytes | None,
        video_origin_pts: int,
        audio_origin_pts: int | None,
        sync_interval: float,
    ) -> None:
        self.directory = directory
        self.start = start
        self.final_path = directory / start.name
        self.part_path = directory / (start.name + PART_SUFFIX)
        self._file: BinaryIO = open(self.part_path, "wb")
        try:
            self._mux: av.container.OutputContainer | None = av.open(
                self._file, "w", format="webm", options={"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"}
            )
            mux = self._mux
            mux.metadata.update(start.tags())
            # The template's stream parameters were taken before its encoder was configured:
            # copy what the header must say from the encoder itself.
            venc = video_template.codec_context
            self._video = mux.add_stream_from_template(video_template)
            vctx = self._video.codec_context
            vctx.width, vctx.height, vctx.pix_fmt = venc.width, venc.height, venc.pix_fmt
            self._video.time_base = Fraction(1, 1000)
            self._audio = None
            if audio_template is not None:
                aenc = audio_template.codec_context
                self._audio = mux.add_stream_from_template(audio_template)
                actx = self._audio.codec_context
                actx.sample_rate, actx.layout = aenc.sample_rate, aenc.layout
                actx.extradata = audio_extradata
                self._audio.time_base = Fraction(1, 1000)
            self._lead_ms = audio_block_lead_ms(self._audio)
        except BaseException:
            self._file.close()
            raise
        self._video_origin = video_origin_pts
        self._audio_origin = audio_origin_pts
        self._sync_interval = sync_interval
        self._last_sync = time.monotonic()
        self.synced = False  # some media of this segment has reached the disk (fdatasync'd)
        self._header_end: int | None = None  # where the media starts: the header goes out with the first packet
        self.video_frames = 0
        self.audio_packets = 0
        self.last_video_pts: int | None = None

    def _open_mux(self) -> av.container.OutputContainer:
        if self._mux is None:  # muxing into a closed FFmpeg context would crash the process
            raise OSError(f"segment {self.start.name} is closed")
        return self._mux

    def mux_video(self, packet: av.Packet) -> None:
        mux = self._open_mux()
        assert packet.pts is not None, "encoded packets carry their pts"
        self.last_video_pts = packet.pts
        packet.pts -= self._video_origin
        order_video(packet, self._lead_ms)
        packet.stream = self._video
        mux.mux(packet)
        self._header_written()
        self.video_frames += 1

    def mux_audio(self, packet: av.Packet) -> None:
        mux = self._open_mux()
        if self._audio is None or self._audio_origin is None:
            return
        assert packet.pts is not None, "encoded packets carry their pts"
        packet.pts -= self._audio_origin
        packet.dts = packet.pts
        packet.stream = self._audio
        mux.mux(packet)
        self._header_written()
        self.audio_packets += 1

    def _header_written(self) -> None:
        if self._header_end is None:
            self._header_end = self._file.tell()

    def media_in_file(self) -> bool:
        """A cluster has reached the file (the muxer writes each one whole, when it closes)."""
        return self._header_end is not None and self._file.tell() > self._header_end

    def sync_if_due(self, first_media: bool = False) -> None:
        """Make what the muxer has flushed durable, at most every ``sync_interval`` seconds; with
        ``first_media``, also as soon as this segment's first video is in the file (the daemon is
        ready once footage is on disk, and the run's first segment should not keep it waiting for
        the interval)."""
        now = time.monotonic()
        first = first_media and not self.synced and self.video_frames > 0 and self.media_in_file()
        if first or now - self._last_sync >= self._sync_interval:
            self._file.flush()
            os.fdatasync(self._file.fileno())
            self._last_sync = now
            self.synced = self.synced or self.video_frames > 0

    def finish(self) -> Path:
        """Write the trailer, make the file durable under its final name; return that path."""
        self._open_mux().close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.part_path, self.final_path)
        fsync_dir(self.directory)
        return self.final_path

    def abandon(self) -> None:
        """Close after a write error, leaving the ``.part`` for salvage."""
        mux, self._mux = self._mux, None
        for close in ((mux.close if mux is not None else None), self._file.close):
            try:
                if close is not None:
                    close()
            except Exception:  # noqa: BLE001 - the error that brought us here is what matters
                pass


def inspect(path: Path) -> tuple[SegmentStart | None, SegmentFacts]:
    """Read a segment back: its tags and measured facts. Raises av.FFmpegError if undecodable."""
    frames = audio = 0
    first: int | None = None
    last: int | None = None
    with av.open(str(path)) as c:
        tags = dict(c.metadata)
        for packet in c.demux():
            if packet.size == 0 or packet.pts is None:
                continue
            if packet.stream.type == "video":
                t = int(packet.pts * packet.time_base * 1_000_000_000)
                frames += 1
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
            elif packet.stream.type == "audio":
                audio += 1
    duration = 0
    if first is not None and last is not None and frames > 1:
        # Frames are evenly spaced: the last one lasts one average frame interval.
        duration = (last - first) * frames // (frames - 1)
    start = None
    try:
        start = SegmentStart.from_tags(tags)
    except (KeyError, ValueError):
        start = None
    facts = SegmentFacts(
        duration_ns=duration,
        bytes=path.stat().st_size,
        video_frames=frames,
        audio_packets=audio,
        sha256=sha256_file(path),
    )
    return start, facts
