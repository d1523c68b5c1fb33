"""How a recall's footage becomes parts: the recall's share of a footage job's build.

A recall asks for a wall-clock window that may span reboots and gaps, so it builds differently
from a marked event:

* ``regular``: each boot's share of the window is remuxed by the clip builder on that boot's
  timeline (a window across a reboot gives parts from each boot, numbered on), placed back on the
  wall clock;
* ``timelapse``: the window's segments are placed on the wall clock (footage of several boots
  lines up) and rendered to one part (``edged.clips.timelapse``).

The manifest says what was asked, what footage was found and missing (each gap with its reason),
every source segment and every part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.clips.job import FootageJobs, PlacedPart
from edged.config.schema import Settings
from edged.core.timefmt import iso
from edged.footage.index import Segment
from edged.footage.timeline import Gap
from edged.recall.request import Recall, RecallRequest

if TYPE_CHECKING:  # the builders are imported when a recall is first built (edged.clips.parts)
    from edged.clips.timelapse import Timelapse


def regular(
    jobs: FootageJobs,
    settings: Settings,
    req: RecallRequest,
    stored: Sequence[Segment],
    used: Sequence[Segment],
    folder: Path,
) -> list[PlacedPart]:
    """Remux each boot's share of the window (``used``: the stored segments overlapping it)."""
    boots: list[str] = []
    for s in sorted(used, key=lambda s: s.best_wall_start_ns):
        if s.boot_id not in boots:
            boots.append(s.boot_id)
    from edged.clips.builder import build_clip

    parts: list[PlacedPart] = []
    clips = settings.clips
    for i, boot in enumerate(boots):
        first = next(s for s in used if s.boot_id == boot)
        off = first.best_wall_start_ns - first.mono_start_ns
        name = req.clip_id if len(boots) == 1 else f"{req.clip_id}-b{i + 1}"
        built = build_clip(
            jobs.sources(s for s in stored if s.boot_id == boot),
            req.start_ns - off,
            req.end_ns - off,
            folder,
            name,
            clips.max_bytes,
            clips.max_duration_ms,
            camera=settings.camera,
        )
        parts += [PlacedPart(p.renumbered(len(parts) + n), p.start_mono_ns + off) for n, p in enumerate(built, 1)]
    return parts


def timelapse(
    jobs: FootageJobs,
    settings: Settings,
    req: RecallRequest,
    used: Sequence[Segment],
    folder: Path,
    cancelled: Callable[[], bool],
) -> Timelapse:
    """Render the window to one part; raises ``Interrupted`` when ``cancelled`` says so."""
    from edged.clips.timelapse import render

    clips = settings.clips
    return render(
        jobs.sources(sorted(used, key=lambda s: s.best_wall_start_ns), on_wall=True),
        req.start_ns,
        req.end_ns,
        folder,
        req.clip_id,
        clips.max_bytes,
        clips.max_duration_ms,
        settings.camera,
        cancelled=cancelled,
    )


def manifest(
    settings: Settings,
    rec: Recall,
    used: Sequence[Segment],
    parts: Sequence[PlacedPart],
    footage: dict[str, Any],
    tl: Timelapse | None,
    audio: dict[str, Any],
) -> dict[str, Any]:
    """``audio``: the clip's ``audio`` section (``edged.clips.audio``)."""
    req, dev = rec.request, settings.device
    return {
        "clip_id": req.clip_id,
        "recall_id": req.id,
        "device_id": dev.id,
        "unit_number": dev.unit_number,
        "unit_location": dev.unit_location,
        "request": req.fields() | {"source": req.source},
        "camera_position": settings.camera.position,
        "clock_synchronized": all(s.clock_synced for s in used),
        "footage": footage,
        "timelapse": None if tl is None else timelapse_summary(tl),
        "source_segments": [
            {
                "name": s.name,
                "seq": s.seq,
                "sha256": s.sha256,
                "state": s.state,
                "boot_id": s.boot_id,
                "wall_start": iso(s.best_wall_start_ns),
            }
            for s in used
        ],
        "parts": [p.entry() for p in parts],
        "audio": audio,
    }


def timelapse_summary(tl: Timelapse) -> dict[str, Any]:
    return {
        "interval_seconds": tl.interval_ns / 1e9,
        "fps": tl.fps,
        "speed": round(tl.speed, 3),
        "frames": tl.frames,
        "planned_frames": tl.slots,
        "bitrate": tl.bitrate,
        "audio": False,
        "first_frame": iso(tl.first_frame_ns),
        "source_frames": tl.source_frames,
        "decoded_frames": tl.decoded_frames,
        "frame_offsets_ms": [(t - tl.first_frame_ns) // 1_000_000 for t in tl.frame_times_ns],
    }


def describe(gaps: Sequence[Gap]) -> str:
    return "; ".join(f"{iso(g.start_ns)} to {iso(g.end_ns)} {g.reason}" for g in gaps) or "none recorded"
