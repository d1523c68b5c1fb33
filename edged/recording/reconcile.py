"""Start-up reconciliation of the index with the segment folder.

Runs before recording starts, after any crash, power cut, or a lost or corrupt index:
  * a row still ``writing``: salvage its ``.part`` (or adopt the ``.webm`` if the rename happened)
  * a stored row whose file vanished: ``lost``
  * an ``evicted`` row whose file survived: finish deleting it
  * a file with no row: read its tags and adopt it (salvaging a ``.part`` first)
  * leftovers of an interrupted salvage: removed
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import av

from edged.core.files import remove_temporaries
from edged.core.journal import Msg, log_event
from edged.footage.index import STORED, Index
from edged.recording.salvage import LEGACY_SALVAGE_SUFFIX, salvage
from edged.recording.segment import PART_SUFFIX, SUFFIX, SegmentStart, inspect

log = logging.getLogger("edged.reconcile")


@dataclass
class ReconcileReport:
    """What reconciling the segments folder with the index did, by segment name."""

    salvaged: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return any((self.salvaged, self.adopted, self.lost, self.deleted, self.unreadable))


def _seq_from_name(name: str) -> int | None:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def _record(index: Index, path: Path, state: str, note: str, fallback: SegmentStart | None) -> bool:
    try:
        start, facts = inspect(path)
    except av.FFmpegError as exc:
        log.error("segment %s is unreadable and is left in place: %s", path.name, exc)
        return False
    start = start or fallback
    seq = start.seq if start else _seq_from_name(path.name)
    if seq is None:
        log.error("segment %s has neither tags nor a sequence number; left in place", path.name)
        return False
    index.adopt(
        seq,
        path.name,
        state,
        start.boot_id if start else "",
        start.mono_start_ns if start else 0,
        start.wall_start_ns if start else 0,
        start.clock_synced if start else False,
        facts.duration_ns,
        facts.bytes,
        facts.video_frames,
        facts.audio_packets,
        facts.sha256,
        note,
    )
    return True


def _salvaged(name: str, reason: str, cause: str) -> None:
    log_event(
        log,
        Msg.SEGMENT_SALVAGED,
        "segment %s salvaged after a %s: %s",
        name,
        cause,
        reason,
        level=logging.WARNING,
        segment=name,
        reason=reason,
        cause=cause,
    )


def _start_of(row) -> SegmentStart:
    return SegmentStart(row.seq, row.boot_id, row.mono_start_ns, row.wall_start_ns, row.clock_synced, "")


def _restore_boot_clocks(index: Index) -> None:
    """A rebuilt index has no clock records: each file's tags carry its boot, monotonic and wall
    starts and whether the clock was synchronised, so a boot's synchronised offset (wall − mono
    of its latest synchronised segment) is derived again, and its footage recorded before the
    clock was set is placed right, not by the wrong wall time it was stamped with."""
    known = {b for (b,) in index.query("SELECT boot_id FROM boot_clock WHERE synced=1")}
    latest: dict[str, tuple[int, int]] = {}
    for seg in index.segments():
        if seg.clock_synced and seg.boot_id not in known and seg.wall_start_ns:
            if seg.boot_id not in latest or seg.mono_start_ns > latest[seg.boot_id][0]:
                latest[seg.boot_id] = (seg.mono_start_ns, seg.wall_start_ns - seg.mono_start_ns)
    for boot_id, (mono, offset) in latest.items():
        index.note_clock(boot_id, offset, True, mono)
        log.info("clock offset of boot %s restored from its segments' tags", boot_id)


def reconcile(index: Index, directory: Path) -> ReconcileReport:
    report = ReconcileReport()
    for leftover in directory.glob(f"*{LEGACY_SALVAGE_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    remove_temporaries(directory)  # a salvage cut off by another crash

    known = {s.name: s for s in index.segments()}
    for seg in known.values():
        final = directory / seg.name
        part = directory / (seg.name + PART_SUFFIX)
        if seg.state == "writing":
            if part.exists():
                result = salvage(part)
                if result.path is None:
                    index.set_state(seg.seq, "lost", f"nothing recoverable: {result.reason}")
                    report.lost.append(seg.name)
                    continue
                if _record(index, final, "salvaged", f"salvaged after crash: {result.reason}", _start_of(seg)):
                    _salvaged(seg.name, result.reason, "crash")
                report.salvaged.append(seg.name)
            elif final.exists():
                _record(index, final, "final", "finished before crash", _start_of(seg))
                report.adopted.append(seg.name)
            else:
                index.set_state(seg.seq, "lost", "no file after crash")
                report.lost.append(seg.name)
        elif seg.state in STORED and not final.exists():
            index.set_state(seg.seq, "lost", "file missing")
            report.lost.append(seg.name)
        elif seg.state == "evicted" and final.exists():
            final.unlink()
            report.deleted.append(seg.name)

    for part in sorted(directory.glob(f"*{SUFFIX}{PART_SUFFIX}")):
        name = part.name[: -len(PART_SUFFIX)]
        if name in known:
            continue
        result = salvage(part)
        if result.path and _record(index, result.path, "salvaged", f"salvaged, no index row: {result.reason}", None):
            _salvaged(name, result.reason, "crash, no index row")
            report.salvaged.append(name)
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path.name in known or path.name in report.salvaged:
            continue
        if _record(index, path, "final", "adopted from folder", None):
            report.adopted.append(path.name)
        else:
            report.unreadable.append(path.name)

    _restore_boot_clocks(index)
    if report.any():
        log.warning(
            "reconciled index with folder: salvaged=%d adopted=%d lost=%d deleted=%d unreadable=%d",
            len(report.salvaged),
            len(report.adopted),
            len(report.lost),
            len(report.deleted),
            len(report.unreadable),
        )
    return report
