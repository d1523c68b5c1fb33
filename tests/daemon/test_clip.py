"""The clip builder on real recordings: trimming, splitting within the limits, contiguity, re-encode
fallback, gaps, verification.

Expected values come from the source segments read independently (tests.support, plain PyAV):
every packet is placed on the timeline as ``mono_start_ns + (pts − first video pts)`` and the
parts must hold exactly the packets of the window, each once, at the same timeline positions.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from edged.app.daemon import Daemon
from edged.clips import builder as clip_mod
from edged.clips.builder import ClipError, ClipPart, SourceSegment, build_clip, measure
from edged.core.paths import StatePaths
from edged.footage.index import Index
from tests.conftest import make_settings
from tests.support import decode_all, packets

S = 1_000_000_000
MS = 1_000_000
FRAME = 100 * MS  # 10 fps
OPUS_FRAME_MS = 60
#: The WebM Duration counts the audio blocks' stored times, which run CodecDelay (the Opus
#: pre-skip, 6.5 ms: 7 in ms) ahead of the presentation times the demuxer returns.
OPUS_CODEC_DELAY_MS = 7


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[SourceSegment]:
    """65 s in 5 s segments, a keyframe every 2.5 s (segment starts and mid-segment), 480x270."""
    state = tmp_path_factory.mktemp("clip") / "state"
    s = make_settings(
        state,
        camera={"width": 480, "height": 270, "bitrate": 200_000, "keyframe_seconds": 2.5},
        storage={"segment_seconds": 5.0},
    )
    Daemon(s, stop_after_s=65).run()
    rows = Index(StatePaths(state).index).stored()
    assert len(rows) == 13
    return [SourceSegment(state / "segments" / r.name, r.seq, r.mono_start_ns, r.duration_ns, r.sha256) for r in rows]


@dataclass
class Timeline:
    video: list[int]  # timeline ns of each frame
    keys: list[int]
    audio: list[tuple[int, int]]  # (start, end) ns of each audio packet
    sizes: int = 0  # payload bytes


def source_timeline(sources: list[SourceSegment]) -> Timeline:
    tl = Timeline([], [], [])
    for s in sources:
        v, a = packets(s.path, "video"), packets(s.path, "audio")
        base = s.mono_start_ns - v.pts_ms[0] * MS
        tl.video += [base + ms * MS for ms in v.pts_ms]
        tl.keys += [base + ms * MS for ms in v.keyframes]
        tl.audio += [(base + ms * MS, base + (ms + d) * MS) for ms, d in zip(a.pts_ms, a.durations_ms)]
    return tl


def part_timeline(part: ClipPart) -> Timeline:
    v, a = packets(part.path, "video"), packets(part.path, "audio")
    base = part.start_mono_ns
    return Timeline(
        [base + ms * MS for ms in v.pts_ms],
        [base + ms * MS for ms in v.keyframes],
        [(base + ms * MS, base + (ms + d) * MS) for ms, d in zip(a.pts_ms, a.durations_ms)],
        sum(v.sizes) + sum(a.sizes),
    )


def expected(sources, start: int, end: int) -> tuple[int, list[int], list[tuple[int, int]]]:
    """The keyframe the clip must start at, and the video and audio it must hold."""
    tl = source_timeline(sources)
    k = max(t for t in tl.keys if t <= start)
    return k, [t for t in tl.video if k <= t < end], [a for a in tl.audio if k <= a[0] < end]


def check_parts(parts: list[ClipPart], sources, start: int, end: int, max_bytes: int, max_ms: int) -> None:
    """Every part within the limits, verified facts true, and together exactly the window."""
    k, want_video, want_audio = expected(sources, start, end)
    assert parts[0].start_mono_ns == k
    got_video: list[int] = []
    got_audio: list[tuple[int, int]] = []
    for i, p in enumerate(parts, 1):
        assert p.number == i and p.path.name == f"c-part{i:02d}.webm"
        assert p.bytes == p.path.stat().st_size <= max_bytes
        assert p.sha256 == hashlib.sha256(p.path.read_bytes()).hexdigest()
        assert 1 <= p.duration_ms <= max_ms
        with av.open(str(p.path)) as c:  # what a server reading the file sees
            assert p.duration_ms == round(c.duration / 1000)
        tl = part_timeline(p)
        assert tl.keys[0] == tl.video[0] == p.start_mono_ns, "a part starts on a keyframe"
        frames, _ = decode_all(p.path)
        assert frames == len(tl.video)
        # The measured duration is the video plus at most one Opus frame of audio tail.
        video_ms = (tl.video[-1] - tl.video[0] + FRAME) // MS
        assert video_ms <= p.duration_ms <= video_ms + OPUS_FRAME_MS + OPUS_CODEC_DELAY_MS
        got_video += tl.video
        got_audio += tl.audio
    assert got_video == want_video, "each video packet of the window in exactly one part, in place"
    assert [a[0] // MS for a in got_audio] == [a[0] // MS for a in want_audio], "each audio packet exactly once"
    assert got_video[-1] < end <= got_video[-1] + FRAME or end > max(t for t in source_timeline(sources).video)
    for a, b in zip(parts, parts[1:]):
        assert b.start_mono_ns == part_timeline(a).video[-1] + FRAME, "no gap, no overlap between parts"
        assert abs(b.start_mono_ns - (a.start_mono_ns + a.duration_ms * MS)) <= FRAME
    # Audio continuous across the whole clip (within and between parts): each packet starts where
    # the one before ended, within the 1 ms of WebM timestamps.
    gaps = [(x[0] - y[1]) / MS for x, y in zip(got_audio[1:], got_audio)]
    assert max(abs(g) for g in gaps) <= 1, f"audio holes/overlaps (ms): {[g for g in gaps if abs(g) > 1]}"


def no_leftovers(out: Path) -> None:
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]


def test_window_in_the_middle_is_one_part_from_the_keyframe_at_or_before_the_start(sources, tmp_path):
    t0 = sources[0].mono_start_ns
    start, end = t0 + 21_300 * MS, t0 + 51_300 * MS  # 30 s; keyframes every 2.5 s: starts at 20.0 s
    parts = build_clip(sources, start, end, tmp_path, "c", 6_000_000, 120_000)
    assert len(parts) == 1
    p = parts[0]
    assert p.start_mono_ns == t0 + 20 * S
    check_parts(parts, sources, start, end, 6_000_000, 120_000)
    frames, _ = decode_all(p.path)
    assert frames == 313  # 20.0 s .. 51.2 s at 10 fps
    last = part_timeline(p).video[-1]
    assert end - FRAME <= last < end  # ends at the wanted end (within a frame)
    assert 31_300 <= p.duration_ms <= 31_300 + OPUS_FRAME_MS + OPUS_CODEC_DELAY_MS
    assert p.source_seqs == tuple(s.seq for s in sources[4:11])  # 20 s .. 55 s
    assert not p.reencoded and p.mismatched_seqs == ()
    no_leftovers(tmp_path)


def test_window_longer_than_the_duration_limit_is_split_into_contiguous_parts(sources, tmp_path):
    t0 = sources[0].mono_start_ns
    start, end = t0 + 1_000 * MS, t0 + 64_000 * MS
    parts = build_clip(sources, start, end, tmp_path, "c", 6_000_000, 20_000)
    assert len(parts) >= 4
    assert all(p.duration_ms <= 20_000 - 40 for p in parts), "planned with a margin under the limit"
    assert not any(p.reencoded for p in parts)
    check_parts(parts, sources, start, end, 6_000_000, 20_000)
    assert sum(decode_all(p.path)[0] for p in parts) == 640  # 0.0 s .. 63.9 s


def test_byte_limit_is_respected(sources, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edged.clip")
    t0 = sources[0].mono_start_ns
    start, end = t0, t0 + 65 * S
    parts = build_clip(sources, start, end, tmp_path, "c", 600_000, 120_000)
    assert "cut at an earlier keyframe" not in caplog.text, "the overhead estimate spares a second write"
    assert len(parts) >= 3
    assert not any(p.reencoded for p in parts)
    assert max(p.bytes for p in parts) > 400_000, "parts are filled, not cut needlessly short"
    check_parts(parts, sources, start, end, 600_000, 120_000)


def test_a_part_over_the_cap_once_written_is_cut_at_an_earlier_keyframe(sources, tmp_path, monkeypatch, caplog):
    # The planner ignores the container overhead here, so its first part (two GOPs, the whole of
    # the first segment) comes out a little over a cap set just above their payload.
    monkeypatch.setattr(clip_mod, "OVERHEAD_FIXED_BYTES", 0)
    monkeypatch.setattr(clip_mod, "OVERHEAD_PER_PACKET_BYTES", 0)
    caplog.set_level(logging.INFO, logger="edged.clip")
    t0 = sources[0].mono_start_ns
    first = source_timeline(sources[:1])
    v, a = packets(sources[0].path, "video"), packets(sources[0].path, "audio")
    cap = sum(v.sizes) + sum(a.sizes) + 300
    parts = build_clip(sources, t0, t0 + 10 * S, tmp_path, "c", cap, 120_000)
    assert "cut at an earlier keyframe" in caplog.text
    assert parts[0].start_mono_ns == t0 and parts[1].start_mono_ns == first.keys[1], "cut at the mid-segment key"
    assert not any(p.reencoded for p in parts)
    check_parts(parts, sources, t0, t0 + 10 * S, cap, 120_000)


def test_a_gop_larger_than_the_cap_is_reencoded_flagged_and_logged(sources, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edged.clip")
    t0 = sources[0].mono_start_ns
    cap = 50_000
    tl = source_timeline(sources[:2])
    for s in sources[:2]:
        v = packets(s.path, "video")
        for k in v.keyframes:
            gop = sum(size for ms, size in zip(v.pts_ms, v.sizes) if k <= ms < k + 2_500)
            assert gop > cap, "precondition: each GOP's video alone is over the cap"
    parts = build_clip(sources, t0, t0 + 10 * S, tmp_path, "c", cap, 120_000)
    assert parts and all(p.reencoded for p in parts)
    assert all(p.bytes <= cap for p in parts)
    warnings = [r for r in caplog.records if r.name == "edged.clip" and r.levelno == logging.WARNING]
    assert len(warnings) == len(parts) and all("re-encoding" in r.getMessage() for r in warnings)
    got = [t for p in parts for t in part_timeline(p).video]
    assert got == [t for t in tl.video if t < t0 + 10 * S], "every frame kept, at its time"
    assert sum(decode_all(p.path)[0] for p in parts) == 100
    for p in parts:
        with av.open(str(p.path)) as c:
            vs = c.streams.video[0]
            assert (vs.codec_context.name, vs.width, vs.height) == ("vp8", 480, 270)
            assert c.streams.audio, "audio copied"
    assert [p.start_mono_ns for p in parts] == [k for k in tl.keys if k < t0 + 10 * S]
    check_parts(parts, sources, t0, t0 + 10 * S, cap, 120_000)


def test_keyframes_further_apart_than_the_duration_limit_are_reencoded_into_shorter_parts(sources, tmp_path):
    t0 = sources[0].mono_start_ns
    parts = build_clip(sources, t0, t0 + 10 * S, tmp_path, "c", 6_000_000, 2_000)
    assert len(parts) >= 5 and all(p.reencoded for p in parts)
    assert all(1 <= p.duration_ms <= 2_000 for p in parts)
    got = [t for p in parts for t in part_timeline(p).video]
    assert got == [t for t in source_timeline(sources[:2]).video if t < t0 + 10 * S]
    check_parts(parts, sources, t0, t0 + 10 * S, 6_000_000, 2_000)
    assert sum(decode_all(p.path)[0] for p in parts) == 100


def test_a_gap_between_segments_keeps_true_timing(sources, tmp_path):
    t0 = sources[0].mono_start_ns
    outage = [s for s in sources if s.seq != sources[2].seq]  # 10 s .. 15 s missing
    parts = build_clip(outage, t0 + 2 * S, t0 + 20 * S, tmp_path / "a", "c", 6_000_000, 120_000)
    assert len(parts) == 1
    tl = part_timeline(parts[0])
    steps = [b - a for a, b in zip(tl.video, tl.video[1:])]
    assert steps.count(FRAME) == len(steps) - 1 and max(steps) == 5 * S + FRAME
    assert parts[0].duration_ms >= 20_000
    k, want_video, want_audio = expected(outage, t0 + 2 * S, t0 + 20 * S)
    assert parts[0].start_mono_ns == k == t0 and tl.video == want_video
    assert [a[0] // MS for a in tl.audio] == [a[0] // MS for a in want_audio]
    # A window that opens inside the outage starts at the next recorded keyframe, not before the gap.
    parts = build_clip(outage, t0 + 11 * S, t0 + 20 * S, tmp_path / "b", "c", 6_000_000, 120_000)
    assert parts[0].start_mono_ns == t0 + 15 * S
    assert decode_all(parts[0].path)[0] == 50


def test_nothing_recorded_in_the_window(sources, tmp_path):
    t0 = sources[0].mono_start_ns
    with pytest.raises(ClipError, match="no recorded segment overlaps"):
        build_clip(sources, t0 - 100 * S, t0 - 50 * S, tmp_path, "c", 6_000_000, 120_000)
    with pytest.raises(ClipError, match="no recorded segment overlaps"):
        build_clip(sources, t0 + 100 * S, t0 + 150 * S, tmp_path, "c", 6_000_000, 120_000)
    with pytest.raises(ClipError):
        build_clip(sources, t0 + 10 * S, t0 + 10 * S, tmp_path, "c", 6_000_000, 120_000)
    assert not list(tmp_path.iterdir())


def test_an_undecodable_source_fails_the_clip_and_leaves_no_part(sources, tmp_path, caplog):
    copies = []
    for s in sources[:3]:
        shutil.copy(s.path, tmp_path / s.path.name)
        copies.append(s._replace(path=tmp_path / s.path.name))
    bad = copies[2].path  # corrupt a frame near the end: parts before it are written first
    with av.open(str(bad)) as c:
        block = [p.pos for p in c.demux(c.streams.video[0]) if p.size][40]
    pos = block + 4  # past the SimpleBlock header (track, timecode, flags): the VP8 frame itself
    data = bytearray(bad.read_bytes())
    data[pos : pos + 3] = b"\xff\xff\xff"  # VP8 frame tag: an impossible first-partition size
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    t0 = sources[0].mono_start_ns
    with pytest.raises(ClipError, match="part 2 failed verification: .* does not decode"):
        build_clip(copies, t0, t0 + 15 * S, out, "c", 300_000, 120_000)
    assert list(out.iterdir()) == [], "no part (and no temporary file) is left behind"
    assert "no longer matches its recorded sha256" in caplog.text


def test_a_source_changed_since_indexing_is_reported(sources, tmp_path, caplog):
    t0 = sources[0].mono_start_ns
    changed = [s._replace(sha256="0" * 64) if s.seq == sources[1].seq else s for s in sources]
    parts = build_clip(changed, t0, t0 + 10 * S, tmp_path, "c", 6_000_000, 120_000)
    assert parts[0].mismatched_seqs == (sources[1].seq,)
    assert any(r.levelno == logging.ERROR and "sha256" in r.getMessage() for r in caplog.records)


def test_a_rebuild_replaces_earlier_parts(sources, tmp_path):
    t0 = sources[0].mono_start_ns
    stale = [tmp_path / "c-part07.webm", tmp_path / ".c-part01.webm.0123abcd.tmp"]  # a kill mid-write
    for f in stale:
        f.write_bytes(b"old")
    other = tmp_path / "manifest.json"
    other.write_text("{}")
    parts = build_clip(sources, t0, t0 + 5 * S, tmp_path, "c", 6_000_000, 120_000)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c-part01.webm", "manifest.json"]
    assert len(parts) == 1


def test_measure_rejects_a_file_that_does_not_decode(tmp_path):
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 4000)
    with pytest.raises(ClipError):
        measure(bad)
