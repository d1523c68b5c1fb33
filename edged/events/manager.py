"""Marked events: a press opens an event [press − pre-roll, last press + post-roll].

Stage "mark" of capture → encode → segment → ring store → **mark**/recall → clip → outbox → target.

What is the events' own: the marks. A press is stored durably at once (``edged.events.store``)
and opens an event, or extends the open one whose post-roll it falls in; the recorder is asked to
start a segment at the event's end so the clip is built about a second after it, not a segment
later. Everything after the press is the footage job every clip shares
(``edged.clips.job.FootageJobs``): the window is protected at once, post-roll not yet recorded
included; the clip is built by remuxing once the recording has passed the event's end; the
manifest is written, the parts go to the outbox ahead of recalls, and the footage is released
once every target has the clip. A daemon restarted during a post-roll finds the open event in the
store and finishes it; one cut off between queuing a clip and marking it built is never built
again. With GPS on, a mark keeps where the device was at the press and the manifest carries the
clip's track (``edged.capture.position``; "no fix" said, never guessed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from edged.capture.position import PositionSource, fix_doc, position_doc
from edged.clips.audio import audio_manifest
from edged.clips.job import Clip, FootageJobs, Job, PlacedPart
from edged.clips.parts import ClipError
from edged.clips.window import BootWindow
from edged.config.schema import Settings
from edged.core.ids import timed_id
from edged.core.journal import Msg, log_event
from edged.core.priority import background_thread
from edged.core.states import EventState
from edged.core.timefmt import iso
from edged.events.store import HOLD_PREFIX, Event, EventStore, Mark
from edged.footage.index import Segment
from edged.recording.audio_gate import AudioGate
from edged.recording.clock import RecordingClock
from edged.upload.outbox import PRIORITY_MARK, PRIORITY_PANIC

log = logging.getLogger("edged.events")

#: The source of a panic gesture's mark: its event's clip goes before every other (``PRIORITY_PANIC``).
PANIC_SOURCE = "panic"


def job_of(event_id: str, window: BootWindow, priority: int = PRIORITY_MARK) -> Job:
    """An event's footage job: its clip is named after it; marks go before recalls."""
    return Job(event_id, HOLD_PREFIX + event_id, window, priority)


def event_job(event: Event, priority: int = PRIORITY_MARK) -> Job:
    return job_of(event.id, BootWindow(event.boot_id, event.start_mono_ns, event.end_mono_ns), priority)


class MarkResult(NamedTuple):
    event_id: str
    extended: bool
    start_mono_ns: int
    end_mono_ns: int


class EventManager:
    """Takes marks, protects footage, and turns finished events into clips in the outbox."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        jobs: FootageJobs,
        position: PositionSource | None = None,
        audio_gate: AudioGate | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        #: Where the device is (gpsd): a position at each mark, a track in each manifest. None: GPS off.
        self.position = position
        self._lock = threading.Lock()
        self.on_mark: Callable[[], None] | None = None  # feedback hook (LED blink, beep)
        #: The recorder's audio privacy gate: sound from each press to the end of its post-roll.
        self.audio_gate = audio_gate

    @property
    def clock(self) -> RecordingClock:
        return self.jobs.clock

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    def recover(self) -> int:
        """At start: every event not yet delivered protects its window again (an index rebuilt from
        the folder has no holds of its own); an open one whose clip was queued by a run cut off
        before it marked it built is built (``FootageJobs.adopt``). Returns how many are held."""
        held = 0
        for e in self.store.events():
            job = event_job(e)
            if e.state == EventState.OPEN:
                if self.audio_gate is not None and e.boot_id == self.clock.boot_id:  # its post-roll's sound
                    self.audio_gate.open_event(e.start_mono_ns + e.pre_roll_ns, e.end_mono_ns)
                self.jobs.recover(job, partial(self._built, e))
            elif e.state == EventState.BUILT and not self.jobs.delivered(job):
                self.jobs.recover(job)
            else:
                continue
            held += 1
        return held

    def release_delivered(self, clip_id: str) -> bool:
        """A clip confirmed by every target no longer protects its footage in the ring buffer
        (the clip's own files stay in the clips folder)."""
        event = self.store.get(clip_id)
        if event is None or not self.jobs.release_if_delivered(event_job(event)):
            return False
        log.info("event %s delivered everywhere: its footage is no longer held", clip_id)
        return True

    # --- marks ----------------------------------------------------------------------------------

    def mark(self, source: str, note: str = "") -> MarkResult:
        """Record a press now. Safe to call from any thread (button callback, control socket)."""
        clips, clock = self.settings.clips, self.clock
        with self._lock:
            now = clock.timeline_now_ns()
            if self.audio_gate is not None:  # first: sound from this very sample
                self.audio_gate.open_event(now, now + round(clips.post_roll_seconds * 1e9))
            where = position_doc(self.position)  # never waits: the source answers from memory
            mark = Mark(now, now + clock.wall_offset_ns(), clock.clock_synced(), source, note, where)
            open_events = [e for e in self.store.events(EventState.OPEN) if e.boot_id == clock.boot_id]
            current = next((e for e in open_events if e.start_mono_ns <= now <= e.end_mono_ns), None)
            post = round(clips.post_roll_seconds * 1e9)
            if current is not None:
                end = max(current.end_mono_ns, now + post)
                self.store.extend(current.id, end, mark)
                event_id, start, extended = current.id, current.start_mono_ns, True
            else:
                pre = round(clips.pre_roll_seconds * 1e9)
                event_id = timed_id(mark.wall_ns)
                start, end, extended = now - pre, now + post, False
                event = Event(event_id, clock.boot_id, start, end, pre, post, EventState.OPEN, "", time.time_ns())
                self.store.open_event(event, mark)
            # Protect at once: the range covers footage not recorded yet.
            self.jobs.hold(job_of(event_id, BootWindow(clock.boot_id, start, end)))
        clock.request_boundary(end)
        log_event(
            log,
            Msg.MARK,
            "MARK %s event %s (%s)%s",
            "extends" if extended else "opens",
            event_id,
            source,
            f": {note}" if note else "",
            level=logging.WARNING,
            event_id=event_id,
            clip_id=event_id,
            source=source,
            note=note or None,
            extended=int(extended),
        )
        if self.on_mark:
            self.on_mark()
        return MarkResult(event_id, extended, start, end)

    # --- finishing ------------------------------------------------------------------------------

    def ready(self, event: Event) -> bool:
        """The recording passed the event's end (or its boot is over) and nothing of its window
        is still being written."""
        return self.jobs.ready(event_job(event))

    def finish_ready(self) -> list[str]:
        """Build every open event that is ready; return the ids built."""
        built = []
        for event in self.store.events(EventState.OPEN):
            if self.ready(event) and self.build(event):
                built.append(event.id)
        return built

    def build(self, event: Event) -> bool:
        """Build a ready event's clip into the outbox (``FootageJobs.run``: the manifest written
        durably, then the parts queued, then the event marked built). False when it failed (the
        event is stored as failed, with the reason)."""
        t0 = time.monotonic()
        panic = any(m.source == PANIC_SOURCE for m in self.store.marks(event.id))
        return self.jobs.run(
            event_job(event, PRIORITY_PANIC if panic else PRIORITY_MARK),
            lambda folder: self._build(event, folder),
            lambda clip: self._built(event, clip, time.monotonic() - t0),
        )

    def _build(self, event: Event, folder: Path) -> Clip | None:
        clips = self.settings.clips
        segs = self.jobs.covered(event_job(event))
        if not segs:
            self._failed(event, "no footage recorded in the event's window")
            return None
        from edged.clips.builder import build_clip  # on the first clip (edged.clips.parts)

        try:
            parts = build_clip(
                self.jobs.sources(segs),
                event.start_mono_ns,
                event.end_mono_ns,
                folder,
                event.id,
                clips.max_bytes,
                clips.max_duration_ms,
                camera=self.settings.camera,
            )
        except (ClipError, OSError) as exc:
            self._failed(event, f"clip not built: {exc}")
            return None
        # The segments' best wall start already applies the boot's synchronised offset.
        offset = segs[0].best_wall_start_ns - segs[0].mono_start_ns
        placed = tuple(PlacedPart(p, p.start_mono_ns + offset) for p in parts)
        return Clip(placed, self._manifest(event, segs, placed, offset), event.start_mono_ns + offset)

    def _built(self, event: Event, clip: Clip | None, took_s: float = 0.0) -> None:
        self.store.set_state(event.id, EventState.BUILT)
        if clip is None:  # queued by an earlier run (FootageJobs.adopt said so)
            return
        log_event(
            log,
            Msg.CLIP_BUILT,
            "CLIP %s built: %d part(s), %.1f s, %d bytes, in %.2f s",
            event.id,
            len(clip.parts),
            clip.duration_ms / 1000,
            clip.bytes,
            took_s,
            level=logging.WARNING,
            clip_id=event.id,
            event_id=event.id,
            parts=len(clip.parts),
            duration_ms=clip.duration_ms,
            bytes=clip.bytes,
            reencoded=sum(1 for p in clip.parts if p.part.reencoded),
        )

    def _failed(self, event: Event, reason: str) -> None:
        self.store.set_state(event.id, EventState.FAILED, reason)
        log_event(
            log,
            Msg.CLIP_FAILED,
            "event %s: %s",
            event.id,
            reason,
            level=logging.ERROR,
            event_id=event.id,
            clip_id=event.id,
            reason=reason,
        )

    def _manifest(
        self, event: Event, segs: Sequence[Segment], parts: Sequence[PlacedPart], offset: int
    ) -> dict[str, Any]:
        marks = self.store.marks(event.id)
        dev = self.settings.device
        first = parts[0].part.start_mono_ns
        last = parts[-1].part
        end = last.start_mono_ns + last.duration_ms * 1_000_000
        pre_actual = (marks[0].mono_ns - first) / 1e9 if marks else 0.0
        asked = event.pre_roll_ns / 1e9
        return {
            "clip_id": event.id,
            "device_id": dev.id,
            "unit_number": dev.unit_number,
            "unit_location": dev.unit_location,
            "boot_id": event.boot_id,
            "wall_start": iso(first + offset),
            "wall_end": iso(end + offset),
            "clock_synchronized": all(s.clock_synced for s in segs) and all(m.clock_synced for m in marks),
            "pre_roll_seconds": {"asked": asked, "actual": round(pre_actual, 3), "short": pre_actual + 0.05 < asked},
            "post_roll_seconds": event.post_roll_ns / 1e9,
            "marks": [
                {
                    "wall": iso(m.mono_ns + offset),
                    "source": m.source,
                    "note": m.note,
                    "clock_synchronized": m.clock_synced,
                    **({"position": m.position} if m.position is not None else {}),
                }
                for m in marks
            ],
            **self._track(first + offset, end + offset),
            "source_segments": [{"name": s.name, "seq": s.seq, "sha256": s.sha256, "state": s.state} for s in segs],
            "parts": [p.entry() for p in parts],
            "audio": audio_manifest(self.jobs.index, parts, segs),
        }

    def _track(self, wall_start_ns: int, wall_end_ns: int) -> dict[str, Any]:
        """The clip's GPS track (fixes received between its first and last frame, at most one a
        second, as the position source keeps them); nothing with GPS off. Empty when there was no
        fix, or when the fixes were not seen by this run (the track is kept in memory only)."""
        if self.position is None:
            return {}
        return {"track": [fix_doc(f) for f in self.position.track(wall_start_ns / 1e9, wall_end_ns / 1e9)]}


class EventWorker(threading.Thread):
    """Finishes events in the background, a few times a second."""

    def __init__(self, manager: EventManager, stop: threading.Event, period: float = 0.2) -> None:
        super().__init__(name="events", daemon=True)
        self.manager = manager
        self._halt = stop
        self.period = period

    def run(self) -> None:
        background_thread("clip building")  # a clip built a moment later loses nothing; a frame does
        while not self._halt.wait(self.period):
            try:
                self.manager.finish_ready()
            except Exception:
                log.exception("finishing events failed")
