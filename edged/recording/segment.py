"""Segments: standalone WebM files written crash-safely.

A segment is written as ``NAME.webm.part``: the muxer closes a Matroska cluster every half
second and it reaches the file at once (FFmpeg holds the cluster being filled in memory and writes
it whole when it closes), and the file is fdatasynced about every ``sync_interval``, as a cluster
is written; so a crash or power cut leaves a ``.part`` that salvage can cut back to its last
complete frames.

**Whole pages only** (SD-card wear, issue 15). Syncing a growing file writes its last, partly
filled page to the card, and the next cluster dirties that page again: at one sync a second that
was 4 KiB a second written twice, 9 % of the footage at the default bitrate. So the sync is made
as a cluster is written, with the file cut at the last page boundary (:class:`PageAlignedFile`):
the whole pages are fdatasynced, the rest of the cluster (under 4 KiB) follows into the page cache
at once, and no page is synced before it is full. A kill -9 loses what it lost before (nothing
that was written is held back in memory between the muxer's calls); a power cut keeps what was
written up to the page boundary of the newest cluster, instead of the clusters written before the
sync came due: what came after the last sync, about ``sync_interval`` (syncs fall on clusters,
every other one at the default 1 s), and under 4 KiB of the cluster synced, where it was up to
``sync_interval`` plus the cluster being filled.

On finish: the muxer writes its trailer (duration, cues), the file is fsynced, renamed to
``NAME.webm`` and the directory fsynced.

Each file carries its own timeline in Matroska tags (boot id, monotonic and wall start, clock
sync state, sequence number), so the index can be rebuilt from the folder alone.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

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

#: The page cache's unit, and what a file system writes at the least: a sync writes the page
#: holding the file's last byte whole, however little of it is new.
PAGE_BYTES = 4096

TAG_SEQ = "EDGED_SEQ"
TAG_BOOT = "EDGED_BOOT_ID"
TAG_MONO = "EDGED_MONO_START_NS"
TAG_WALL = "EDGED_WALL_START_NS"
TAG_SYNCED = "EDGED_CLOCK_SYNCED"
TAG_DEVICE = "EDGED_DEVICE_ID"


class SegmentStart(NamedTuple):
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


class SegmentFacts(NamedTuple):
    """What is measured of a finished (or salvaged) segment file."""

    duration_ns: int
    bytes: int
    video_frames: int
    audio_packets: int
    sha256: str


class PageAlignedFile(io.RawIOBase):
    """The file a segment's muxer writes into: what it writes reaches the file at once, except
    that a sync (:meth:`sync_whole_pages`) is made with the file cut at a page boundary.

    Between :meth:`hold` and :meth:`release` an append's bytes past the last page boundary are
    kept back in memory; :meth:`sync_whole_pages` fdatasyncs the file (whole pages, once an
    append crossed a boundary) and then writes the held bytes. A write anywhere but the end (the
    trailer rewrites the header) writes the held bytes first. ``received`` counts what the muxer
    wrote in all, ``unsynced`` what reached the file since the last sync.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)  # as open(path, 'wb')
        self._pos = 0  # where the muxer writes next
        self._end = 0  # bytes in the file (the held ones not counted)
        self._tail = b""  # held bytes, to go at offset _end
        self._holding = False
        self.received = 0
        self.unsynced = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        size = self._end + len(self._tail)
        self._pos = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: size}[whence] + offset
        if self._pos < 0:
            raise OSError(f"seek to {self._pos}")
        return self._pos

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self.received += len(data)
        at, self._pos = self._pos, self._pos + len(data)
        if not self._holding or at != self._end + len(self._tail):  # no sync coming, or the muxer went back
            self._write_tail()
            self._put(data, at)
            return len(data)
        data = self._tail + data
        cut = len(data) - (self._end + len(data)) % PAGE_BYTES  # up to the last page boundary
        self._tail = data[max(cut, 0) :]
        if cut > 0:
            self._put(data[:cut], self._end)
        return len(b)

    def _put(self, data: bytes, at: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, at)
            view, at = view[n:], at + n
        self._end = max(self._end, at)
        self.unsynced += len(data)

    def _write_tail(self) -> None:
        tail, self._tail = self._tail, b""
        if tail:
            self._put(tail, self._end)

    def hold(self) -> None:
        """From now, keep an append's bytes past the last page boundary in memory."""
        self._holding = True

    def release(self) -> None:
        """Write what is held; writes go straight to the file again."""
        self._holding = False
        self._write_tail()

    def sync_whole_pages(self) -> None:
        """fdatasync what is in the file, then write the held bytes (unsynced, in the page cache)."""
        os.fdatasync(self._fd)
        self.unsynced = 0
        self.release()

    def sync_all(self, data_only: bool = True) -> None:
        """Everything written, held bytes too, made durable (``data_only=False``: ``fsync``)."""
        self.release()
        (os.fdatasync if data_only else os.fsync)(self._fd)
        self.unsynced = 0

    def close(self) -> None:
        if not self.closed:
            try:
                self.release()
            finally:
                os.close(self._fd)
                super().close()


class SyncCadence:
    """When the recording's footage last reached the disk: shared by the segments of a recording.

    The sync cadence is the recording's, not a segment's: a segment started at a boundary syncs
    its first cluster once a sync is due since the previous segment's last one, not a whole
    interval after its own creation, and the previous segment, kept open for late audio, is synced
    with it (``SegmentWriter.sync_with_recording``). Timed per segment, a power cut at the end of
    the audio grace lost the old segment's tail and the new one's first second: 2.0 s at the
    default 1 s interval where elsewhere 1.2 s (tests/unit/test_segment_boundary_sync.py)."""

    def __init__(self) -> None:
        self.last_sync = time.monotonic()

    def synced(self) -> None:
        self.last_sync = time.monotonic()


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
        cadence: SyncCadence | None = None,
    ) -> None:
        self.directory = directory
        self.start = start
        self.final_path = directory / start.name
        self.part_path = directory / (start.name + PART_SUFFIX)
        self._file = PageAlignedFile(self.part_path)
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
        # Syncs are made as clusters are written (every CLUSTER_MS): from this long after the
        # recording's last one (``cadence``, whichever segment made it), so that they fall on
        # every other cluster at the default 1 s, not late by one.
        self._sync_after = max(0.0, sync_interval - CLUSTER_MS / 2000)
        self._cadence = cadence if cadence is not None else SyncCadence()
        self._own_sync = self._cadence.last_sync  # when this writer last synced (or was created)
        self.synced = False  # some media of this segment has reached the disk (fdatasync'd)
        self._sync_first = False  # sync the first cluster with video at once (see sync_if_due)
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
        self._mux_synced(mux, packet)
        self.video_frames += 1

    def mux_audio(self, packet: av.Packet) -> None:
        mux = self._open_mux()
        if self._audio is None or self._audio_origin is None:
            return
        assert packet.pts is not None, "encoded packets carry their pts"
        packet.pts -= self._audio_origin
        packet.dts = packet.pts
        packet.stream = self._audio
        self._mux_synced(mux, packet)
        self.audio_packets += 1

    def _mux_synced(self, mux: av.container.OutputContainer, packet: av.Packet) -> None:
        """Mux a packet; if that wrote a cluster and a sync is due, sync at the cluster's last
        page boundary (the module docstring: whole pages only). The first packet writes the
        header alone, not a cluster: no sync there (with the recording's cadence already due at a
        boundary, it would sync an empty file and put the new segment's first cluster off by one
        interval)."""
        due = self._file.received > 0 and (
            time.monotonic() - self._cadence.last_sync >= self._sync_after
            or (self._sync_first and not self.synced and self.video_frames > 0)
        )
        if due:
            self._file.hold()
        received = self._file.received
        mux.mux(packet)  # on an error, what is held is written when the writer is abandoned
        if due and self._file.received != received:
            self._sync(self._file.sync_whole_pages)
        else:
            self._file.release()

    def sync_if_due(self, first_media: bool = False) -> None:
        """The fallback when clusters stop coming (no packets): make what the muxer wrote durable,
        partial last page and all, once a cluster later than a sync at a cluster would have been.

        ``first_media``: the daemon has no footage on disk yet (it says READY once it has), so the
        first cluster with video is synced as soon as it is written, not at the interval."""
        self._sync_first = first_media
        if (
            self._file.unsynced
            and time.monotonic() - self._cadence.last_sync >= self._sync_interval + CLUSTER_MS / 1000
        ):
            self._sync(self._file.sync_all)

    def sync_with_recording(self) -> None:
        """For a segment no longer the current one but still open (the recorder's ``_closing``,
        waiting for late audio after a boundary): make what it wrote durable, partial last page and
        all, once a sync of the recording is due or the new segment synced, not only when it
        finishes. So a power cut in the grace keeps its tail with the new segment's head, and the
        new segment's first sync is not put off by a boundary (the old segment's clusters since its
        last sync counted as synced). Only its last cluster, still in its muxer, waits for
        ``finish``. Costs a partly filled page written twice at most once per boundary."""
        due = time.monotonic() - self._cadence.last_sync >= self._sync_after
        if self._file.unsynced and (due or self._own_sync < self._cadence.last_sync):
            self._sync(self._file.sync_all)

    def _sync(self, sync: Callable[[], None]) -> None:
        sync()
        self._cadence.synced()
        self._own_sync = self._cadence.last_sync
        self.synced = self.synced or self.video_frames > 0

    def finish(self) -> Path:
        """Write the trailer, make the file durable under its final name; return that path."""
        self._open_mux().close()
        self._file.sync_all(data_only=False)
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
