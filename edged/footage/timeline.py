"""Footage on the wall clock: which ranges the ring buffer holds, and why a requested range is not there.

A fleet operator aims a recall request at wall-clock time; segments live on their boot's monotonic
timeline and carry their *best* wall start (``Segment.best_wall_start_ns``: monotonic start plus
the boot's synchronised offset, else the observed wall start). This module works on those wall
times only:

* :func:`footage_ranges` merges stored segments into continuous ranges (what ``edged timeline``
  prints), one boot per range;
* :func:`coverage` splits a requested window into the footage available and the gaps, each gap
  with its reason, read from the index rows that cover it: ``evicted`` rows were overwritten by the
  ring buffer, ``lost`` rows vanished or could not be recovered, a ``writing`` row is still being
  recorded, and time no row covers was never recorded (device off, camera not recording).

Joins shorter than ``GAP_TOLERANCE_NS`` are not gaps: segments of one recording meet within a
frame, and a window's edge falls between two frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from edged.core.timefmt import iso
from edged.footage.index import STORED, Segment

#: Holes shorter than this are joins, not gaps (a frame is 100 ms at the target rate).
GAP_TOLERANCE_NS = 1_000_000_000

OVERWRITTEN = "overwritten by the ring buffer (older footage is evicted to make room)"
LOST = "lost (the segment file vanished or could not be recovered after a crash)"
RECORDING = "still being recorded"
NOT_RECORDED = "not recorded (the device was off or not recording)"

#: Why a row does not give footage, by its state; time no row covers is NOT_RECORDED.
_CAUSES = (("evicted", OVERWRITTEN), ("lost", LOST), ("writing", RECORDING))

Span = tuple[int, int]


class FootageRange(NamedTuple):
    start_ns: int
    end_ns: int
    boot_id: str
    segments: int
    bytes: int
    clock_synchronized: bool

    def as_dict(self) -> dict:
        return {
            "start": iso(self.start_ns),
            "end": iso(self.end_ns),
            "seconds": round((self.end_ns - self.start_ns) / 1e9, 3),
            "boot_id": self.boot_id,
            "segments": self.segments,
            "bytes": self.bytes,
            "clock_synchronized": self.clock_synchronized,
        }


class Gap(NamedTuple):
    start_ns: int
    end_ns: int
    reason: str

    def as_dict(self) -> dict:
        return {
            "start": iso(self.start_ns),
            "end": iso(self.end_ns),
            "seconds": round((self.end_ns - self.start_ns) / 1e9, 3),
            "reason": self.reason,
        }


def _span(s: Segment) -> Span:
    # A row being written has no duration yet: it covers at least its start.
    return s.best_wall_start_ns, s.best_wall_start_ns + max(s.duration_ns, 1)


def _merge(spans: Iterable[Span], tolerance: int = GAP_TOLERANCE_NS) -> list[Span]:
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a - out[-1][1] <= tolerance:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _minus(spans: Sequence[Span], cut: Sequence[Span]) -> list[Span]:
    """``spans`` with every interval of ``cut`` removed."""
    out: list[Span] = []
    for a, b in spans:
        pieces = [(a, b)]
        for c, d in cut:
            pieces = [p for x, y in pieces for p in ((x, min(y, c)), (max(x, d), y)) if p[1] > p[0]]
        out += pieces
    return out


def _within(spans: Sequence[Span], start: int, end: int) -> list[Span]:
    return [(max(a, start), min(b, end)) for a, b in spans if a < end and b > start]


def footage_ranges(segments: Iterable[Segment], tolerance: int = GAP_TOLERANCE_NS) -> list[FootageRange]:
    """Stored footage as continuous ranges, oldest first; a reboot starts a new range."""
    stored = sorted((s for s in segments if s.state in STORED), key=lambda s: (s.best_wall_start_ns, s.seq))
    out: list[FootageRange] = []
    for s in stored:
        a, b = _span(s)
        last = out[-1] if out else None
        if last is not None and last.boot_id == s.boot_id and a - last.end_ns <= tolerance:
            out[-1] = FootageRange(
                last.start_ns,
                max(last.end_ns, b),
                s.boot_id,
                last.segments + 1,
                last.bytes + s.bytes,
                last.clock_synchronized and s.clock_synced,
            )
        else:
            out.append(FootageRange(a, b, s.boot_id, 1, s.bytes, s.clock_synced))
    return out


def coverage(
    segments: Iterable[Segment], start_ns: int, end_ns: int, tolerance: int = GAP_TOLERANCE_NS
) -> tuple[list[Span], list[Gap]]:
    """The window [start, end) split into available footage and gaps with their reasons (both in
    time order). Holes and gap pieces shorter than ``tolerance`` are ignored."""
    rows = list(segments)
    available = _within(_merge((_span(s) for s in rows if s.state in STORED), tolerance), start_ns, end_ns)
    missing = [g for g in _minus([(start_ns, end_ns)], available) if g[1] - g[0] >= tolerance]
    gaps: list[Gap] = []
    for state, reason in _CAUSES:
        spans = _merge((_span(s) for s in rows if s.state == state), tolerance)
        gaps += [Gap(a, b, reason) for m in missing for a, b in _within(spans, *m)]
        missing = _minus(missing, spans)
    gaps += [Gap(a, b, NOT_RECORDED) for a, b in missing]
    gaps = [g for g in gaps if g.end_ns - g.start_ns >= tolerance]
    return available, sorted(gaps, key=lambda g: g.start_ns)


def timeline(segments: Iterable[Segment], position: str, device_id: str) -> dict:
    """What ``edged timeline --json`` prints: the footage ranges per camera (this device has one)."""
    ranges = footage_ranges(segments)
    return {
        "device_id": device_id,
        "oldest": iso(ranges[0].start_ns) if ranges else None,
        "newest": iso(ranges[-1].end_ns) if ranges else None,
        "cameras": [{"position": position, "ranges": [r.as_dict() for r in ranges]}],
    }
