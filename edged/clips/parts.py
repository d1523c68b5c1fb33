"""What a clip build takes and makes, without the builders: the segments it reads, the parts it
writes, and how it fails.

The job runner, the events and the recall service hold these types from the start; the builders
themselves (``edged.clips.builder``, ``edged.clips.timelapse``) are imported when a clip is first
built. A device that records all day and is never pressed does not pay for them (their import was
about a tenth of edged's own start-up, and its memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class ClipError(Exception):
    """A clip could not be built, or a part failed verification (no part is ever returned bad)."""


class Interrupted(ClipError):
    """Rendering was asked to stop (the daemon is stopping); nothing was left behind."""


class SourceSegment(NamedTuple):
    """What the builder needs of one stored segment."""

    path: Path
    seq: int
    mono_start_ns: int  # start of the segment on the recording's monotonic timeline
    duration_ns: int
    sha256: str  # from the index; empty: not checked


class ClipPart(NamedTuple):
    number: int  # 1-based
    path: Path
    start_mono_ns: int  # timeline position of its first frame
    duration_ms: int  # measured from the written file: the upload's durationMs
    bytes: int
    sha256: str
    source_seqs: tuple[int, ...]
    reencoded: bool
    #: Source segments in this part whose bytes no longer match the index's sha256 (logged as
    #: errors; the footage is still used: it decoded, and it is the only copy).
    mismatched_seqs: tuple[int, ...] = ()

    def renumbered(self, number: int) -> ClipPart:
        """This part as part ``number`` of a clip joined from several builds (a recall across boots)."""
        return self._replace(number=number)
