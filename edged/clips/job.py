"""One footage job: what a marked event and a recall have in common, from the hold to the release.

Stage "clip" of capture → encode → segment → ring store → mark/recall → **clip** → outbox → target.

A marked event and a recall request want different footage for different reasons, but once they
know their window the work is the same, and it lives here, once:

  1. **hold**: the window is protected in the index at once (``Window.hold``), footage still to
     come included, and again at every start (an index rebuilt from the folder has no holds);
  2. **wait**: the job is ready when the recording has passed the window's end and no segment of
     it is still being written (``ready``);
  3. **build**: the user's build (the clip builder, or the timelapse renderer) writes the parts in
     ``<clips>/<clip id>/`` and says what the manifest holds (a :class:`Clip`); a build that
     cannot be made returns None, its user having recorded why;
  4. **manifest**: ``manifest.json`` written atomically and durably (``edged.core.files``) before
     anything is queued, so a queued part always has its manifest beside it after a power cut;
  5. **queue**: every part into the outbox, for every target, in one transaction;
  6. **mark built**: the user's own store says so (``MarkBuilt``);
  7. **release**: once every target has every part, the holds go and the ring buffer may reuse
     the footage (``release_if_delivered``).

The crash window between 5 and 6. A run killed after a clip's parts were queued and before the
job was marked built leaves outbox rows describing files already on disk. Built again, the parts
would come out with other bytes (a new Matroska segment UID) under the same names and rows: a part
not yet sent fails for good as "changed on disk", and the delivered copies no longer match the
clip folder. So a job found in that state is never built again: its queued parts *are* its clip,
and it is marked built (:meth:`FootageJobs.adopt`). That check runs at start (``recover``) and
before every build (``run``), for marks and recalls alike; it was found and fixed twice when each
had its own copy of this life (commits a958a28 and 449661e).

What stays with each user: marks and their post-roll extension (``edged.events``); request
parsing, status files and the timelapse choice (``edged.recall``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from edged.clips.parts import ClipPart, SourceSegment
from edged.clips.window import Window
from edged.core.files import write_atomic
from edged.core.states import SegmentState
from edged.core.timefmt import iso
from edged.footage.index import Index, Segment
from edged.recording.clock import RecordingClock

log = logging.getLogger("edged.clip")

MANIFEST = "manifest.json"


class PartQueue(Protocol):
    """What a job needs of the outbox (``edged.upload.outbox.Outbox``, a later stage)."""

    def enqueue(
        self, clip_id: str, parts: list[tuple[int, Path, int, int, str]], priority: int, event_wall_ns: int
    ) -> None: ...

    def parts(self, clip_id: str) -> Sequence[object]: ...

    def clip_delivered(self, clip_id: str) -> bool: ...


class Job(NamedTuple):
    """One clip to make from held footage."""

    clip_id: str  # the clip folder's and the outbox's name for it
    owner: str  # owner of its holds in the index
    window: Window
    priority: int  # in the outbox (marks before recalls)


class PlacedPart(NamedTuple):
    """A built part, and the wall-clock instant of its first frame (what its manifest says)."""

    part: ClipPart
    wall_start_ns: int

    def entry(self) -> dict[str, Any]:
        """The part as every manifest describes it."""
        p = self.part
        return {
            "number": p.number,
            "file": p.path.name,
            "bytes": p.bytes,
            "duration_ms": p.duration_ms,
            "sha256": p.sha256,
            "reencoded": p.reencoded,
            "wall_start": iso(self.wall_start_ns),
            "source_seqs": list(p.source_seqs),
            # sources whose bytes no longer match the sha256 recorded when they were written
            "source_seqs_changed_since_recorded": list(p.mismatched_seqs),
        }


class Clip(NamedTuple):
    """What a build made: its parts, in order, and its manifest."""

    parts: tuple[PlacedPart, ...]
    manifest: dict[str, Any]
    #: Orders the clip among those of its priority in the outbox (oldest first).
    order_wall_ns: int

    @property
    def duration_ms(self) -> int:
        return sum(p.part.duration_ms for p in self.parts)

    @property
    def bytes(self) -> int:
        return sum(p.part.bytes for p in self.parts)


#: Makes a job's parts in the folder given (``<clips>/<clip id>``); None when it cannot, the user
#: having recorded why (no footage, the builder refused, interrupted).
Build = Callable[[Path], Clip | None]
#: Records in the user's store that the job's parts are in the outbox: the clip just built, or
#: None when the parts were queued by an earlier run (adopted, not built again).
MarkBuilt = Callable[[Clip | None], None]


class FootageJobs:
    """Runs footage jobs against the index, the outbox and the recording's clock. Holds no state of
    its own: each user keeps its jobs in its own store, so one instance serves marks and recalls."""

    def __init__(
        self, index: Index, outbox: PartQueue, clips_dir: Path, segments_dir: Path, clock: RecordingClock
    ) -> None:
        self.index = index
        self.outbox = outbox
        self.clips_dir = clips_dir
        self.segments_dir = segments_dir
        self.clock = clock

    # --- holding ------------------------------------------------------------------------------------

    def hold(self, job: Job) -> None:
        job.window.hold(self.index, job.owner)

    def release(self, job: Job) -> None:
        job.window.release(self.index, job.owner)

    def release_if_delivered(self, job: Job) -> bool:
        """Every target has every part: the footage is no longer held (the clip's files stay)."""
        if not self.outbox.clip_delivered(job.clip_id):
            return False
        self.release(job)
        return True

    def delivered(self, job: Job) -> bool:
        return self.outbox.clip_delivered(job.clip_id)

    # --- waiting ------------------------------------------------------------------------------------

    def ready(self, job: Job) -> bool:
        """The recording passed the window's end and nothing of it is still being written."""
        if not job.window.passed(self.clock):
            return False
        return not any(job.window.being_written(s) for s in self.index.segments([SegmentState.WRITING]))

    def covered(self, job: Job, segments: Iterable[Segment] | None = None) -> list[Segment]:
        """The stored segments (of ``segments``, else of the index) holding footage of the window."""
        rows = self.index.stored() if segments is None else segments
        return [s for s in rows if job.window.covers(s)]

    def sources(self, segments: Iterable[Segment], *, on_wall: bool = False) -> list[SourceSegment]:
        """Segments as the builders read them: placed on their boot's monotonic timeline, or on the
        wall clock by their best wall start (``on_wall``: footage of several boots lines up)."""
        return [
            SourceSegment(
                self.segments_dir / s.name,
                s.seq,
                s.best_wall_start_ns if on_wall else s.mono_start_ns,
                s.duration_ns,
                s.sha256 or "",
            )
            for s in segments
        ]

    def folder(self, job: Job) -> Path:
        return self.clips_dir / job.clip_id

    # --- building -----------------------------------------------------------------------------------

    def adopt(self, job: Job, mark_built: MarkBuilt) -> bool:
        """The crash window: parts queued by a run cut off before it marked the job built are the
        job's clip. Mark it built and say so; never build it again (see the module's docstring)."""
        if not self.outbox.parts(job.clip_id):
            return False
        mark_built(None)
        log.warning(
            "clip %s: its parts were queued by a run cut off before it was marked built; not built again",
            job.clip_id,
        )
        return True

    def run(self, job: Job, build: Build, mark_built: MarkBuilt) -> bool:
        """Build a ready job into the outbox: build, manifest, queue, mark built (in that order).
        True when its parts are in the outbox. Errors of the manifest or the outbox propagate with
        nothing marked: the job is built again, or adopted, later."""
        if self.adopt(job, mark_built):
            return True
        folder = self.folder(job)
        clip = build(folder)
        if clip is None:
            return False
        folder.mkdir(parents=True, exist_ok=True)  # (the builders made it; a build of no files did not)
        write_atomic(folder / MANIFEST, json.dumps(clip.manifest, indent=2).encode(), durable=True)
        self.outbox.enqueue(
            job.clip_id,
            # The outbox's row shape (edged.upload.outbox); the one place a part becomes a tuple.
            [(p.part.number, p.part.path, p.part.bytes, p.part.duration_ms, p.part.sha256) for p in clip.parts],
            job.priority,
            clip.order_wall_ns,
        )
        mark_built(clip)
        return True

    # --- starting again -----------------------------------------------------------------------------

    def recover(self, job: Job, mark_built: MarkBuilt | None = None) -> bool:
        """At start, for a job not yet delivered: hold its footage again, and, when it had not been
        marked built (``mark_built`` given), adopt the parts an earlier run queued. True if adopted."""
        self.hold(job)
        return mark_built is not None and self.adopt(job, mark_built)
