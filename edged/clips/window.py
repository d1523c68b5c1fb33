"""The footage a job wants, and how it is protected until its clip is delivered.

Two kinds of window, because footage is found two ways:

* a **boot window** is a range on one boot's monotonic timeline (a marked event: the recording
  that saw the press is the one it wants). A range hold in the index protects every segment of
  that boot overlapping it, recorded or still to come, so nothing is lost between the press and
  the end of the post-roll;
* a **wall window** is a range on the wall clock, across boots (a recall asks for "14:30 to
  14:33" whatever recorded it). Each stored segment overlapping it is held by its number, and the
  same range on the boot recording when it was asked is held as a boot window, for the footage
  still to come.

A window also says when the recording has passed it: its end is behind the recording and no
segment of it is still being written. The two kinds read that on their own clocks, exactly as
marks and recalls always did.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from edged.footage.index import Index, Segment
from edged.recording.clock import RecordingClock


class Window(Protocol):
    def covers(self, seg: Segment) -> bool:
        """A segment holding footage of the window."""
        ...

    def being_written(self, seg: Segment) -> bool:
        """A segment still being written that may hold footage of the window."""
        ...

    def passed(self, clock: RecordingClock) -> bool:
        """The recording is past the window's end (or can never reach it again)."""
        ...

    def hold(self, index: Index, owner: str) -> None: ...

    def release(self, index: Index, owner: str) -> None: ...


class BootWindow(NamedTuple):
    """[start, end) on one boot's monotonic timeline. An empty ``boot_id`` names no boot (a range
    asked of a state folder that is not recording): nothing is held through it."""

    boot_id: str
    start_mono_ns: int
    end_mono_ns: int

    def covers(self, seg: Segment) -> bool:
        return (
            seg.boot_id == self.boot_id
            and seg.mono_start_ns < self.end_mono_ns
            and seg.mono_start_ns + seg.duration_ns > self.start_mono_ns
        )

    def being_written(self, seg: Segment) -> bool:
        # A segment being written has no duration yet: any of this boot that starts before the end.
        return seg.boot_id == self.boot_id and seg.mono_start_ns < self.end_mono_ns

    def passed(self, clock: RecordingClock) -> bool:
        return self.boot_id != clock.boot_id or clock.timeline_now_ns() >= self.end_mono_ns

    def hold(self, index: Index, owner: str) -> None:
        if self.boot_id:
            index.hold_range(owner, self.boot_id, self.start_mono_ns, self.end_mono_ns)

    def release(self, index: Index, owner: str) -> None:
        index.release_range(owner)


class WallWindow(NamedTuple):
    """[start, end) on the wall clock (segments placed by their best wall start), any boot; ``boot``
    is the same range on the boot that was recording when it was asked."""

    start_ns: int
    end_ns: int
    boot: BootWindow

    def covers(self, seg: Segment) -> bool:
        start = seg.best_wall_start_ns
        return start < self.end_ns and start + max(seg.duration_ns, 1) > self.start_ns

    def being_written(self, seg: Segment) -> bool:
        return self.covers(seg)

    def passed(self, clock: RecordingClock) -> bool:
        return clock.wall_now_ns() >= self.end_ns

    def hold(self, index: Index, owner: str) -> None:
        """The range on its boot's timeline (footage still to come included), then every stored
        segment of any boot overlapping it on the wall clock."""
        self.boot.hold(index, owner)
        index.hold(owner, [s.seq for s in index.stored() if self.covers(s)])

    def release(self, index: Index, owner: str) -> None:
        index.release_range(owner)
        index.release(owner)
