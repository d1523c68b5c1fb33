"""The recorder: capture → encode → segment → ring store, without pause.

One thread per source fills a bounded queue; this loop takes video frames in order, encodes the
audio that belongs before each frame, then the frame, and routes every packet by its timestamp
to the segment it belongs to. A segment starts with a forced keyframe every ``segment_seconds``
of media; the previous one stays open until the audio has caught up with the boundary, so
neighbouring segments join with no lost and no duplicated samples.
"""

from __future__ import annotations

import errno
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av

from edged.capture import AudioSample, VideoSample, audio_factory, video_factory
from edged.capture.position import PositionSource
from edged.capture.thread import LOST, CaptureThread, SampleQueue
from edged.config.schema import Settings, segment_bytes_estimate
from edged.core.alarms import Alarms
from edged.core.clock import Clock, ClockWatch
from edged.core.files import sha256_file
from edged.core.journal import Msg, log_event
from edged.core.states import Alarm
from edged.footage.index import Index
from edged.footage.ring import RingBuffer, Room
from edged.recording.audio_gate import AudioGate, split
from edged.recording.encode import AudioEncoder, VideoEncoder, encoder_settings
from edged.recording.salvage import salvage
from edged.recording.segment import SegmentStart, SegmentWriter, SyncCadence, inspect
from edged.recording.stamp import Stamp

log = logging.getLogger("edged.recorder")

#: What a full, failing or read-only card raises: from the file, from FFmpeg, from SQLite.
STORAGE_ERRORS = (OSError, av.FFmpegError, sqlite3.Error)


def _disk_full(exc: BaseException) -> bool:
    """A write refused for lack of space: ENOSPC/EDQUOT from the kernel, SQLITE_FULL from SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)
    return False


#: How long the previous segment waits for late audio after the boundary (media seconds).
AUDIO_GRACE_S = 1.0
#: Capture queues hold this much media; beyond it a live source drops (and we count the gap).
QUEUE_SECONDS = 3.0
#: No frame for this long while the camera claims to stream: it is stalled.
STALL_S = 3.0
#: A live camera's frames waiting beyond this much media mean the recorder cannot keep up (the CPU
#: is starved): the oldest waiting frame is dropped instead of encoded, so the backlog, the latency
#: and the memory stay bounded and the frames kept spread evenly (at 60 % of the CPU needed, about
#: every third frame goes, never a run of seconds). Below it a short stall (a slow fsync) is caught
#: up with nothing lost. Unpaced sources block instead: nothing is ever dropped there.
MAX_BEHIND_S = 1.0
#: ``cpu_starved`` is raised when at least ``STARVED_DROPS`` frames were dropped (behind, by a full
#: capture queue, or by the source) within ``STARVED_WINDOW_S``, and cleared after as long without one.
STARVED_WINDOW_S = 5.0
STARVED_DROPS = 3


@dataclass
class RecorderStatus:
    """The recorder's counters and state, read by the daemon's status."""

    state: str = "starting"  # starting | recording | camera_lost | storage_full | stopped
    video_source: str | None = None
    audio_source: str | None = None
    frames_encoded: int = 0
    frames_dropped: int = 0
    #: of those, dropped because recording fell behind the live camera (CPU starved): see MAX_BEHIND_S
    frames_dropped_behind: int = 0
    frames_not_stored: int = 0
    audio_dropped: int = 0
    segments_written: int = 0
    segments_salvaged: int = 0
    alarms: Alarms = field(default_factory=Alarms)  # raised here and by other threads (daemon)
    last_error: str | None = None
    last_frame_mono: float | None = None
    current_segment: str | None = None
    #: When the last frame made it through (encoded and written, or not stored by storage policy):
    #: the service watchdog is pinged only while this keeps moving.
    progress_mono: float | None = None
    #: Footage has reached the disk: the first segment's media is synced (the service is ready).
    on_disk: bool = False


class _Open:
    """A segment being written, with the media time where it starts."""

    def __init__(self, writer: SegmentWriter, start_pts: int, start_s: float) -> None:
        self.writer = writer
        self.start_pts = start_pts
        self.start_s = start_s


class Recorder:
    def __init__(
        self,
        settings: Settings,
        index: Index,
        ring: RingBuffer,
        clock: Clock,
        segments_dir: Path,
        stop_after_s: float | None = None,
        on_segment: Callable[[int], None] | None = None,
        video_source_factory: Callable | None = None,
        audio_source_factory: Callable | None = None,
        alarms: Alarms | None = None,
        position: PositionSource | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.ring = ring
        self.clock = clock
        self.watch = ClockWatch(clock)
        self.dir = segments_dir
        self.stop_after_s = stop_after_s
        self.on_segment = on_segment
        # the daemon's alarms, shared with its other parts (an empty Alarms is falsy: no "or")
        self.status = RecorderStatus(alarms=alarms if alarms is not None else Alarms())
        self.crashed: BaseException | None = None
        cam, aud = settings.camera, settings.audio
        self.fps = cam.fps
        self.paced = cam.paced
        self.seg_frames = max(1, round(settings.storage.segment_seconds * cam.fps))
        self._stop = threading.Event()
        #: set with ``status.on_disk``: the daemon says READY the moment it is (not at its next tick)
        self.footage_on_disk = threading.Event()
        self._vq = SampleQueue(max(2, int(QUEUE_SECONDS * cam.fps)))
        self._max_behind_frames = max(1, round(MAX_BEHIND_S * cam.fps))
        self._recent_drops: deque[float] = deque()  # monotonic times of recent frame drops (cpu_starved)
        self._aq = SampleQueue(int(QUEUE_SECONDS * 50) + 10)
        vfactory = video_source_factory or video_factory(cam)
        afactory = audio_source_factory if audio_source_factory is not None else audio_factory(aud, cam.paced)
        self._video_thread = CaptureThread("camera", vfactory, self._vq, cam.paced, 1.0 / cam.fps, self._stop)
        self._audio_thread = (
            CaptureThread("microphone", afactory, self._aq, cam.paced, 0.02, self._stop) if afactory else None
        )
        self.venc = VideoEncoder(cam)
        self.aenc = AudioEncoder(aud) if afactory else None
        #: audio privacy: what sound may be stored (``audio_gate``); the events stage and the
        #: daemon tell it about events and mutes
        self.gate = AudioGate(aud.pre_event, self.watch.boot_id, self.timeline_now_ns, index)
        self.stamp = Stamp(settings, position)  # date, time, unit (and position) on every frame
        # Media-time state.
        self._origin: float | None = None  # source time of the first frame (media t = 0)
        self._mono_anchor_ns = 0  # monotonic ns of media t = 0
        self._last_n: int | None = None
        self._audio_next: int | None = None  # next audio pts (samples at the source rate)
        self._audio_rate: int | None = None
        self._audio_pending: AudioSample | None = None
        self._cur: _Open | None = None
        self._closing: _Open | None = None
        self._closing_until_s = 0.0
        self._cadence = SyncCadence()  # the recording's sync cadence, across segment boundaries
        self._next_room_check = 0.0
        self._next_clock_look = 0.0
        self._clock_noted = False
        self._pending_steps: list = []
        self._unsalvaged: list[SegmentWriter] = []
        self._pending_rows: list[tuple[str, Callable[[], None]]] = []
        self._next_seq = index.next_seq()
        self._boundaries: list[int] = []
        self._boundary_lock = threading.Lock()
        self._pending_settings: Settings | None = None
        self._last_frame_mono_ns = 0
        self._segment_bytes_estimate = segment_bytes_estimate(settings)
        self._last_segment_bytes = 0  # the size of the last finished segment
        self._stop_reason = "stop requested"

    # --- for the event stage ------------------------------------------------------------------

    def timeline_now_ns(self) -> int:
        """Now, on the recording timeline (monotonic ns of this boot). Unpaced runs are ahead of
        the real clock: their timeline is that of the last frame recorded."""
        if self.paced or self._origin is None:
            return self.clock.monotonic_ns()
        return self._last_frame_mono_ns

    def best_offset_ns(self) -> int:
        """This boot's wall-minus-monotonic offset as the index places its footage
        (``Segment.best_wall_start_ns``): the current one while the clock is synchronised, else the
        latest synchronised one (a clock later set wrong by hand does not move the timeline), else
        the current one."""
        if self.watch.synchronized:
            return self.watch.offset_ns
        synced = self.index.synced_offset(self.watch.boot_id)
        return self.watch.offset_ns if synced is None else synced

    def request_boundary(self, mono_ns: int) -> None:
        """Start a new segment at the first frame at or after ``mono_ns`` (an event's end), so the
        segment holding the end of a post-roll is finalised at once, not a segment later."""
        with self._boundary_lock:
            self._boundaries.append(mono_ns)
            self._boundaries.sort()

    def _boundary_due(self, frame_mono_ns: int) -> bool:
        if not self._boundaries:  # nearly every frame: no lock taken (a boundary requested now is seen next frame)
            return False
        with self._boundary_lock:
            due = [b for b in self._boundaries if b <= frame_mono_ns]
            if not due:
                return False
            self._boundaries = [b for b in self._boundaries if b > frame_mono_ns]
        return self._cur is not None and self._mono_of(self._cur.start_s) < due[-1]

    def _mono_of(self, t: float) -> int:
        return self._mono_anchor_ns + round(t * 1e9)

    # --- life cycle -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Record until ``stop()`` (or ``stop_after_s`` of media); finalises the open segment."""
        self._video_thread.start()
        if self._audio_thread:
            self._audio_thread.start()
        try:
            self._loop()
        except BaseException as exc:
            self.crashed = exc
            self._stop_reason = f"recorder failed: {exc!r}"
            log.critical("recorder failed: %r", exc, exc_info=True)
            raise
        finally:
            self._stop.set()
            self._finish_all()
            self.venc.close()  # in order, now: never to the garbage collector (see VideoEncoder.close)
            if self.aenc is not None:
                self.aenc.close()
            self.status.state = "stopped"
            if self._origin is not None:
                st = self.status
                log_event(
                    log,
                    Msg.RECORDING_STOPPED,
                    "recording stopped (%s): %d segment(s) written",
                    self._stop_reason,
                    st.segments_written,
                    level=logging.ERROR if self.crashed else logging.INFO,
                    reason=self._stop_reason,
                    segments=st.segments_written,
                    salvaged=st.segments_salvaged,
                    frames=st.frames_encoded,
                    dropped=st.frames_dropped,
                )
            self._video_thread.join(timeout=5)
            if self._audio_thread:
                self._audio_thread.join(timeout=5)
            self.gate.flush()

    def _loop(self) -> None:
        st = self.status
        while not self._stop.is_set():
            self._look_at_clock()
            st.video_source = self._video_thread.source_name
            st.audio_source = self._audio_thread.source_name if self._audio_thread else None
            try:
                item = self._vq.get(timeout=0.5)
            except queue.Empty:
                self._no_frame()
                continue
            if item is LOST:
                self._camera_lost()
                continue
            if (
                self.stop_after_s is not None
                and self._origin is not None
                and item.time - self._origin >= self.stop_after_s - 1e-9
            ):
                self._stop_reason = f"{self.stop_after_s:g} s of footage recorded"
                return
            if self.paced and self._last_n is not None and self._vq.qsize() > self._max_behind_frames:
                self._drop_behind()
                continue
            self._frame(item)
            st.progress_mono = time.monotonic()
            if not st.on_disk:
                st.on_disk = st.segments_written > 0 or (self._cur is not None and self._cur.writer.synced)
                if st.on_disk:
                    self.footage_on_disk.set()

    # --- per frame ----------------------------------------------------------------------------

    def _frame(self, v: VideoSample) -> None:
        st = self.status
        if self._origin is None:
            self._origin = v.time
            log_event(
                log,
                Msg.RECORDING_STARTED,
                "recording started: camera %s, microphone %s, into %s",
                self._video_thread.source_name,
                self._microphone_named(),
                self.dir,
                source=self._video_thread.source_name,
                audio=self._microphone_named(),
                storage_dir=self.dir,
                fps=self.fps,
            )
            # Unpaced runs (tests, benchmarks) move faster than the clock: start them after
            # whatever this boot already recorded, so timelines never overlap.
            self._mono_anchor_ns = (
                int(v.time * 1e9)
                if self.paced
                else max(self.clock.monotonic_ns(), self.index.boot_end_ns(self.watch.boot_id))
            )
            if self.aenc is not None:
                self.gate.begin(self._mono_anchor_ns)
        n = round((v.time - self._origin) * self.fps)
        if self._last_n is not None:
            if n <= self._last_n:
                return  # the camera delivered faster than the configured rate: skip the extra frame
            if n > self._last_n + 1:
                st.frames_dropped += n - self._last_n - 1
                now = time.monotonic()
                self._recent_drops.extend([now] * min(n - self._last_n - 1, STARVED_DROPS))
        self._last_n = n
        st.last_frame_mono = time.monotonic()
        st.state = "recording" if st.state != "storage_full" else st.state
        t = n / self.fps
        self._last_frame_mono_ns = self._mono_of(t)
        keyframe = False
        if (
            self._cur is None
            or n - self._cur.start_pts >= self.seg_frames
            or self._boundary_due(self._last_frame_mono_ns)
        ):
            keyframe = self._start_segment(n, t)
        # Audio captured up to this frame goes first (routed by its own timestamps).
        self._pump_audio(v.time, wait=not self.paced)
        if self._cur is None:
            st.frames_not_stored += 1
            return
        # The frame's own wall time: its place on the timeline, through the wall − monotonic offset.
        self.stamp.apply(v.frame, self.watch.wall_at(self._last_frame_mono_ns), self.watch.synchronized)
        try:
            packets = self.venc.encode(v.frame, n, keyframe)
            for p in packets:
                self._route_video(p)
        except STORAGE_ERRORS as exc:
            self._write_failed(exc)
            return
        st.frames_encoded += 1
        if self._closing and t >= self._closing_until_s:
            self._finish(self._closing)
            self._closing = None
        try:
            if self._cur:
                self._cur.writer.sync_if_due(first_media=not st.on_disk)
            if self._closing:  # still open for late audio: durable along with the new segment
                self._closing.writer.sync_with_recording()
        except OSError as exc:
            self._write_failed(exc)

    def _microphone_named(self) -> str:
        """The microphone for the log: its source, ``none`` without one, or ``still opening`` when
        the first frame came before it opened (its sound follows from its first block)."""
        if self._audio_thread is None:
            return "none"
        return self._audio_thread.source_name or "still opening"

    def _target(self, t: float) -> _Open | None:
        """The segment a packet at media time ``t`` belongs to."""
        if self._closing is not None and (self._cur is None or t < self._cur.start_s):
            return self._closing
        return self._cur

    def _route_video(self, p: av.Packet) -> None:
        assert p.pts is not None, "encoded packets carry their pts"
        target = self._target(p.pts / self.fps)
        if target is not None:
            target.writer.mux_video(p)

    def _route_audio(self, p: av.Packet) -> None:
        assert p.pts is not None and self.aenc is not None, "encoded packets carry their pts"
        t = p.pts / self.aenc.sample_rate  # its time base (1 / sample_rate), without a Fraction per packet
        if self._closing is not None and self._cur is not None and t >= self._cur.start_s:
            # Audio reached the boundary: the previous segment is complete.
            self._finish(self._closing)
            self._closing = None
        target = self._target(t)
        if target is not None:
            target.writer.mux_audio(p)

    # --- audio ----------------------------------------------------------------------------------

    def _pump_audio(self, until: float, wait: bool) -> None:
        """Encode the audio captured up to ``until`` (source time); ``wait`` for it to be captured
        (unpaced sources), or take what was captured (a live source, and everything at stop)."""
        if self._audio_thread is None or self.aenc is None:
            return
        deadline = time.monotonic() + 2.0
        while True:
            if self._audio_pending is None:
                try:
                    if not wait:
                        item = self._aq.get_nowait()
                    else:
                        item = self._aq.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    return
                if item is LOST:
                    self._audio_next = None
                    continue
                self._audio_pending = item
            if not self._encode_pending(until):
                return

    def _encode_pending(self, until: float) -> bool:
        """Encode the pending block up to ``until`` (source time); True when all of it went.

        No sample later than the frame being encoded: a press or a mute taken now lands on its own
        sample (``audio_gate``); the rest of the block waits for the next frame."""
        a = self._audio_pending
        assert a is not None, "a block is pending"
        rate = a.frame.sample_rate
        k = round((until - a.time) * rate)
        if k <= 0:
            return False
        if k < a.frame.samples:
            head, tail = split(a.frame, k)
            self._audio_pending = AudioSample(tail, a.time + k / rate)
            self._encode_audio(AudioSample(head, a.time))
            return False
        self._audio_pending = None
        self._encode_audio(a)
        return True

    def _encode_audio(self, a: AudioSample) -> None:
        if self._origin is None or a.time < self._origin:
            return
        rate = a.frame.sample_rate
        by_time = round((a.time - self._origin) * rate)
        if self._audio_next is None or self._audio_rate != rate or by_time - self._audio_next > rate // 5:
            self._audio_next = by_time  # (re)start, or a gap of more than 200 ms: follow the clock
            self._audio_rate = rate
        elif self._audio_next - by_time > rate // 5:
            self.status.audio_dropped += 1  # audio runs ahead of the video clock: drop to resync
            return
        pts = self._audio_next
        self._audio_next += a.frame.samples
        frame = self.gate.admit(a.frame, self._mono_of(pts / rate))
        if self._cur is None and self._closing is None:
            return
        assert self.aenc is not None, "audio samples come only with an audio encoder"
        try:
            for p in self.aenc.encode(frame, pts):
                self._route_audio(p)
        except STORAGE_ERRORS as exc:
            self._write_failed(exc)

    # --- segments -------------------------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        """New live settings (a synced config): bitrates and storage limits take effect at the next
        segment start, where the encoders are replaced (each segment starts on a keyframe anyway);
        ``audio.pre_event`` at once (the audio gate's, not the encoder's), the stamp from the next frame."""
        self.gate.set_pre_event(settings.audio.pre_event)
        self.stamp.configure(settings)
        with self._boundary_lock:
            self._pending_settings = settings

    def _apply_pending_settings(self) -> None:
        with self._boundary_lock:
            new, self._pending_settings = self._pending_settings, None
        if new is None:
            return
        old = self.settings
        if new.camera != old.camera:
            for p in self.venc.flush():  # what the old encoder still holds belongs to the old segment
                self._route_video(p)
            self.venc.close()
            self.venc = VideoEncoder(new.camera)
        if self.aenc is not None and encoder_settings(new.audio) != encoder_settings(old.audio):
            for p in self.aenc.flush():
                self._route_audio(p)
            self.aenc.close()
            self.aenc = AudioEncoder(new.audio)
        self.settings = new
        self.seg_frames = max(1, round(new.storage.segment_seconds * self.fps))
        self._segment_bytes_estimate = segment_bytes_estimate(new)
        log.info(
            "new settings in force from this segment: video %d bps, audio %d bps", new.camera.bitrate, new.audio.bitrate
        )

    def _start_segment(self, n: int, t: float) -> bool:
        st = self.status
        now = time.monotonic()
        self._apply_pending_settings()
        if self._cur is None and now < self._next_room_check:
            return False
        try:
            # The segment being closed is not in the index's stored bytes yet: count it, or the
            # ring would overshoot its budget by about one segment.
            room = self.ring.make_room(self._segment_bytes_estimate + self._open_bytes())
        except STORAGE_ERRORS as exc:
            self._write_failed(exc)
            return False
        if room is Room.FULL:
            st.state = "storage_full"  # before the alarm: whoever sees the alarm sees the state too
        self._set_alarm(
            Room.OVER_BUDGET.value,
            room is Room.OVER_BUDGET,
            "storage over budget: only protected footage is left; recording continues while the disk has room",
        )
        self._set_alarm(
            Room.FULL.value,
            room is Room.FULL,
            "STORAGE FULL of protected footage: recording is paused until space is freed",
        )
        if room is Room.FULL:
            if self._cur is not None:
                self._closing_handoff(None, t)
            self._next_room_check = now + 1.0
            return False
        mono = self._mono_of(t)
        start = SegmentStart(
            seq=self._next_seq,
            boot_id=self.watch.boot_id,
            mono_start_ns=mono,
            wall_start_ns=self.watch.wall_at(mono),
            clock_synced=self.watch.synchronized,
            device_id=self.settings.device.id,
        )
        try:
            self.index.begin(
                start.seq, start.name, start.boot_id, start.mono_start_ns, start.wall_start_ns, start.clock_synced
            )
            writer = SegmentWriter(
                self.dir,
                start,
                self.venc.template,
                self.aenc.template if self.aenc else None,
                self.aenc.extradata if self.aenc else None,
                video_origin_pts=n,
                audio_origin_pts=round(t * 48_000) if self.aenc else None,
                sync_interval=self.settings.storage.sync_interval_seconds,
                cadence=self._cadence,
            )
        except STORAGE_ERRORS as exc:
            try:
                self.index.set_state(start.seq, "lost", f"could not create: {exc}")
            except STORAGE_ERRORS:
                pass
            self._next_seq += 1
            self._write_failed(exc)
            self._next_room_check = now + 1.0
            return False
        self._next_seq += 1
        self._closing_handoff(_Open(writer, n, t), t)
        st.current_segment = start.name
        if st.state == "storage_full":
            st.state = "recording"
        return True

    def _closing_handoff(self, new: _Open | None, t: float) -> None:
        if self._closing is not None:  # a previous boundary still waiting: finish it now
            self._finish(self._closing)
        self._closing = self._cur
        self._closing_until_s = t + AUDIO_GRACE_S
        self._cur = new
        if new is None and self._closing is not None:
            self._finish(self._closing)
            self._closing = None

    def _open_bytes(self) -> int:
        total = 0
        for seg in (self._cur, self._closing):
            if seg is not None:
                try:
                    total += seg.writer.part_path.stat().st_size
                except OSError:
                    pass
        return total

    def _finish(self, seg: _Open) -> None:
        w = seg.writer
        frames = w.video_frames
        last = w.last_video_pts if w.last_video_pts is not None else seg.start_pts
        duration_ns = round((last - seg.start_pts + 1) * 1e9 / self.fps) if frames else 0
        try:
            path = w.finish()
        except STORAGE_ERRORS as exc:
            log.error("segment %s could not be finalised (%s): salvaging", w.start.name, exc)
            w.abandon()
            self._salvage_now(w)
            return
        size = path.stat().st_size
        self._last_segment_bytes = size  # what one more segment will need, when the disk fills
        try:
            self.index.finish(w.start.seq, "final", duration_ns, size, frames, w.audio_packets, sha256_file(path))
        except STORAGE_ERRORS as exc:  # the file is safe; reconcile completes its row at the next start
            log.error("segment %s is on disk but its index row could not be completed: %s", w.start.name, exc)
            return
        self.status.segments_written += 1
        self._set_alarm("storage_error", False, "")
        self._retry_rows()
        for pending in list(self._unsalvaged):  # space is back: recover what a write error cut off
            self._unsalvaged.remove(pending)
            self._salvage_now(pending)
        if self.on_segment:
            self.on_segment(w.start.seq)

    def _salvage_now(self, w: SegmentWriter) -> None:
        try:
            self.ring.make_room(w.part_path.stat().st_size)  # salvage writes a copy
            result = salvage(w.part_path)
        except STORAGE_ERRORS as exc:
            # Keep the .part and its 'writing' row: retried when a segment next finishes, and
            # reconcile salvages it at the next start in any case.
            log.error("segment %s could not be salvaged now (%s); will retry", w.start.name, exc)
            if w not in self._unsalvaged:
                self._unsalvaged.append(w)
            return
        if result.path is None:
            # A 'writing' row left behind would keep marks waiting: retried until it is written.
            self._update_row(w.start.name, functools.partial(self.index.set_state, w.start.seq, "lost", result.reason))
            return
        try:
            _, facts = inspect(result.path)
        except STORAGE_ERRORS as exc:
            log.error("salvaged segment %s could not be read back now (%s); reconcile will", w.start.name, exc)
            return
        self._update_row(
            w.start.name,
            functools.partial(
                self.index.finish,
                w.start.seq,
                "salvaged",
                facts.duration_ns,
                facts.bytes,
                facts.video_frames,
                facts.audio_packets,
                facts.sha256,
                f"salvaged after write error: {result.reason}",
            ),
        )
        self.status.segments_salvaged += 1
        log_event(
            log,
            Msg.SEGMENT_SALVAGED,
            "segment %s salvaged after a write error: %s (%.1f s kept)",
            w.start.name,
            result.reason,
            facts.duration_ns / 1e9,
            level=logging.WARNING,
            segment=w.start.name,
            reason=result.reason,
            duration_ms=facts.duration_ns // 1_000_000,
            cause="write error",
        )

    def _update_row(self, name: str, update: Callable[[], None]) -> None:
        """Write an index row now, or keep it to retry when writing works again (a full disk can
        refuse SQLite too)."""
        try:
            update()
        except STORAGE_ERRORS as exc:
            log.error("index row of segment %s not written now (%s); will retry", name, exc)
            self._pending_rows.append((name, update))

    def _retry_rows(self) -> None:
        pending, self._pending_rows = self._pending_rows, []
        for name, update in pending:
            self._update_row(name, update)

    def _close_segments(self) -> None:
        for seg in (self._closing, self._cur):
            if seg is not None:
                self._finish(seg)
        self._closing = self._cur = None
        self.status.current_segment = None

    def _finish_all(self) -> None:
        """At stop: drain the encoders into the open segments, then finalise them."""
        if self._cur is None and self._closing is None:
            return
        try:
            if self._origin is not None and self._last_n is not None:  # the last frame's share of the sound
                self._pump_audio(self._origin + (self._last_n + 1) / self.fps, wait=False)
            for p in self.venc.flush():
                self._route_video(p)
            if self.aenc:
                for p in self.aenc.flush():
                    self._route_audio(p)
        except STORAGE_ERRORS as exc:
            log.warning("flushing encoders at stop: %s", exc)
        self._close_segments()

    def _write_failed(self, exc: Exception) -> None:
        """A write error (disk full, storage gone read-only): keep what was written, pause a moment."""
        st = self.status
        st.last_error = f"write failed: {exc}"
        log.error("storage write failed: %s", exc)
        broken = [seg for seg in (self._closing, self._cur) if seg is not None]
        self._closing = self._cur = None  # detach first: nothing may write to them again
        st.current_segment = None
        for seg in broken:
            seg.writer.abandon()
            self._salvage_now(seg.writer)
        if _disk_full(exc):
            # The ring's budget and free-space floor may both look fine to it (a segment larger than
            # its estimate, the index's own growth): ask it for room for two segments, or it would
            # free only the cut-off segment's few bytes (the salvage above) and the next write would
            # hit the full disk again, a second later, again and again.
            try:
                self.ring.make_room(2 * max(self._last_segment_bytes, self._segment_bytes_estimate))
            except STORAGE_ERRORS as again:
                log.error("no room could be made on the full disk: %s", again)
        self._set_alarm("storage_error", True, "storage write error")
        self._next_room_check = time.monotonic() + 1.0

    # --- faults and housekeeping ----------------------------------------------------------------

    def _camera_lost(self) -> None:
        st = self.status
        st.state = "camera_lost"
        st.last_error = f"camera lost: {self._video_thread.last_error}"
        self._set_alarm("camera_lost", True, "camera lost")
        self._close_segments()  # the encoders keep running: no flush, they resume with the camera
        self._last_n = None
        self._audio_next = None

    def _no_frame(self) -> None:
        st = self.status
        if self._video_thread.state == "lost":
            st.state = "camera_lost"
            st.last_error = f"camera lost: {self._video_thread.last_error}"
            self._set_alarm("camera_lost", True, "camera lost")
        elif st.last_frame_mono and time.monotonic() - st.last_frame_mono > STALL_S:
            self._set_alarm("camera_stalled", True, f"camera stalled: no frame for {STALL_S:.0f} s")

    def _set_alarm(self, name: str, on: bool, message: str) -> None:
        alarms = self.status.alarms
        if on and name not in alarms:
            alarms.add(name)
            level = logging.CRITICAL if name == Room.FULL.value else logging.WARNING
            if name == "camera_lost":
                log_event(
                    log,
                    Msg.CAMERA_LOST,
                    "%s: %s",
                    message,
                    self._video_thread.last_error,
                    level=level,
                    source=self._video_thread.source_name,
                    reason=self._video_thread.last_error,
                    alarm=name,
                )
            elif name == Alarm.CPU_STARVED:
                log_event(
                    log,
                    Msg.WATCHDOG,
                    "%s (%d frame(s) dropped so far)",
                    message,
                    self.status.frames_dropped_behind,
                    level=level,
                    stall="cpu",
                    dropped=self.status.frames_dropped_behind,
                    alarm=name,
                )
            elif name == "camera_stalled":
                log_event(
                    log,
                    Msg.WATCHDOG,
                    "%s",
                    message,
                    level=level,
                    stall="camera",
                    seconds=STALL_S,
                    source=self._video_thread.source_name,
                    alarm=name,
                )
            else:
                log_event(
                    log,
                    Msg.STORAGE_ALARM,
                    "%s",
                    message,
                    level=level,
                    alarm=name,
                    state="raised",
                    storage_dir=self.dir,
                    reason=self.status.last_error if name == "storage_error" else None,
                )
        elif not on and name in alarms:
            alarms.discard(name)
            if name == Alarm.CPU_STARVED:
                log_event(log, Msg.WATCHDOG, "cleared: %s", name, stall="cpu", alarm=name, state="cleared")
            elif name in ("camera_lost", "camera_stalled"):
                log_event(
                    log, Msg.CAMERA_RESTORED, "cleared: %s", name, source=self._video_thread.source_name, alarm=name
                )
            else:
                log_event(
                    log, Msg.STORAGE_ALARM, "cleared: %s", name, alarm=name, state="cleared", storage_dir=self.dir
                )

    def _drop_behind(self) -> None:
        """Drop the oldest waiting frame: recording is more than ``MAX_BEHIND_S`` behind the camera.
        The next frame kept counts the gap in ``frames_dropped`` (and its audio is encoded then)."""
        self.status.frames_dropped_behind += 1

    def _watch_starvation(self, now: float) -> None:
        """Raise ``cpu_starved`` while frames are being dropped; clear it after a whole window
        without a drop. A live camera streaming with gaps is a recorder (or a capture thread, or a
        camera whose buffers the recorder did not return in time) without the CPU to keep up:
        frames dropped here, by the capture queue or by the source's own pacing all count."""
        while self._recent_drops and self._recent_drops[0] < now - STARVED_WINDOW_S:
            self._recent_drops.popleft()
        if len(self._recent_drops) >= STARVED_DROPS:
            self._set_alarm(Alarm.CPU_STARVED, True, "recording cannot keep up with the camera: dropping frames")
        elif not self._recent_drops:
            self._set_alarm(Alarm.CPU_STARVED, False, "")

    def _look_at_clock(self) -> None:
        now = time.monotonic()
        if now < self._next_clock_look:
            return
        self._next_clock_look = now + 1.0
        self._watch_starvation(now)
        if self.status.state == "recording":
            self._set_alarm("camera_lost", False, "")
            self._set_alarm("camera_stalled", False, "")
        synced_before = self.watch.synchronized
        step = self.watch.look()
        if step is not None:
            log.warning("wall clock stepped by %+.3f s (synchronised: %s)", step.step_ns / 1e9, step.synchronized)
            self._pending_steps.append(step)
        if step is not None or not self._clock_noted or synced_before != self.watch.synchronized:
            self._clock_noted = False
        try:  # kept until the index takes them (a full card may refuse for a while)
            while self._pending_steps:
                self.index.note_step(self._pending_steps[0])
                self._pending_steps.pop(0)
            if not self._clock_noted:
                self.index.note_clock(
                    self.watch.boot_id, self.watch.offset_ns, self.watch.synchronized, self.clock.monotonic_ns()
                )
                self._clock_noted = True
        except STORAGE_ERRORS as exc:
            log.debug("clock record deferred: %s", exc)
