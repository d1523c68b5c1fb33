"""What a clip says of its sound: the manifest's ``audio`` section, for marks and recalls alike.

The audio gate (``edged.recording.audio_gate``) stores silence where sound may not be kept and
records each span in the footage index. A clip lists the spans that fall in its parts, placed two
ways: ``start_ms``/``end_ms`` on the clip's own playback timeline (the parts one after another, as a
viewer counts), and ``wall_start``/``wall_end`` on the wall clock. ``recorded`` sums it up:

* ``recorded``: sound throughout;
* ``partial``: sound in parts, the spans say where not;
* ``none``: no sound at all (every instant in a span, or footage without an audio track);
* ``unknown``: some footage was recorded before its boot's spans were kept (an older edged, or an
  index rebuilt from the segment files): its sound may or may not be silence, and the clip says so
  rather than claim it was recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edged.clips.job import PlacedPart
from edged.core.states import AudioRecorded
from edged.core.timefmt import iso
from edged.footage.index import Index, Segment


def audio_manifest(index: Index, parts: Sequence[PlacedPart], segments: Sequence[Segment]) -> dict[str, Any]:
    """The ``audio`` section of a clip made of ``parts`` from the source ``segments``."""
    by_seq = {s.seq: s for s in segments}
    if not any(by_seq[q].audio_packets for p in parts for q in p.part.source_seqs if q in by_seq):
        return {"recorded": AudioRecorded.NONE.value, "not_recorded": [], "note": "no audio track (no microphone)"}
    spans: list[dict[str, Any]] = []
    unknown = False
    position_ns = 0  # where the part starts on the clip's playback timeline
    total_ns = silent_ns = 0
    for placed in parts:
        p = placed.part
        start, length = p.start_mono_ns, p.duration_ms * 1_000_000
        end, offset = start + length, placed.wall_start_ns - p.start_mono_ns
        boot = next((by_seq[q].boot_id for q in p.source_seqs if q in by_seq), "")
        known = index.audio_known_from(boot)
        unknown = unknown or known is None or known > start
        for gap in index.audio_gaps(boot, start, end):
            a = max(gap.start_mono_ns, start)
            b = end if gap.end_mono_ns is None else min(gap.end_mono_ns, end)
            if b <= a:
                continue
            silent_ns += b - a
            pa, pb = position_ns + a - start, position_ns + b - start
            last = spans[-1] if spans else None
            if last and last["reason"] == gap.reason and last["_pos_end"] == pa and last["_wall_end"] == a + offset:
                last.update(_pos_end=pb, _wall_end=b + offset)  # one span across a part boundary
                continue
            spans.append(
                {"reason": gap.reason, "_pos": pa, "_pos_end": pb, "_wall": a + offset, "_wall_end": b + offset}
            )
        position_ns += length
        total_ns += length
    if unknown:
        recorded = AudioRecorded.UNKNOWN
    elif silent_ns == 0:
        recorded = AudioRecorded.RECORDED
    elif silent_ns >= total_ns:
        recorded = AudioRecorded.NONE
    else:
        recorded = AudioRecorded.PARTIAL
    return {
        "recorded": recorded.value,
        "not_recorded_ms": silent_ns // 1_000_000,
        "not_recorded": [
            {
                "reason": s["reason"],
                "start_ms": s["_pos"] // 1_000_000,
                "end_ms": s["_pos_end"] // 1_000_000,
                "wall_start": iso(s["_wall"]),
                "wall_end": iso(s["_wall_end"]),
            }
            for s in spans
        ],
    }


def timelapse_audio() -> dict[str, Any]:
    """A timelapse is pictures only."""
    return {"recorded": AudioRecorded.NONE.value, "not_recorded": [], "note": "a timelapse has no audio track"}
