"""The recording's clock, as the stages after the recorder (marks, recall, clips) read it.

Marks and recalls need five things of the recording and nothing else of the daemon: this boot's
id, where the recording is now on its monotonic timeline, the wall − monotonic offset (as the
system clock says it now, and as the index places this boot's footage), whether the clock is
synchronised, and a way to ask for a segment boundary at an instant. They get them as this one
record of the recorder's callables, built once by whoever owns the recorder
(``RecordingClock.of(recorder)``), instead of the daemon itself; a test or a benchmark gives plain
functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the recorder is only read here, never driven
    from edged.recording.recorder import Recorder


def no_boundary(mono_ns: int) -> None:
    """A recording that cannot be asked for a segment boundary (a copy of a state folder)."""


@dataclass(frozen=True, slots=True)
class RecordingClock:
    """The recording's timeline as clips and marks read it."""

    boot_id: str
    #: Now on this boot's monotonic recording timeline (an unpaced run: its last frame's).
    timeline_now_ns: Callable[[], int]
    #: Wall − monotonic as the system clock says now (a mark's wall time).
    wall_offset_ns: Callable[[], int]
    #: Wall − monotonic as the index places this boot's footage (``Segment.best_wall_start_ns``):
    #: the latest synchronised offset, so a clock set wrong by hand does not move the footage.
    footage_offset_ns: Callable[[], int]
    clock_synced: Callable[[], bool]
    #: Start a new segment at the first frame at or after a monotonic instant (a window's end).
    request_boundary: Callable[[int], None] = no_boundary

    def wall_now_ns(self) -> int:
        """The newest wall-clock instant footage can exist for."""
        return self.timeline_now_ns() + self.footage_offset_ns()

    @classmethod
    def of(cls, recorder: Recorder) -> RecordingClock:
        return cls(
            boot_id=recorder.watch.boot_id,
            timeline_now_ns=recorder.timeline_now_ns,
            wall_offset_ns=lambda: recorder.watch.offset_ns,
            footage_offset_ns=recorder.best_offset_ns,
            clock_synced=lambda: recorder.watch.synchronized,
            request_boundary=recorder.request_boundary,
        )
