"""The clip builder on real recordings: trimming, splitting within the limits, contiguity, fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edged.clip import ClipError, SourceSegment, build_clip, measure
from edged.daemon import Daemon
from edged.index import Index
from edged.paths import StatePaths
from tests.conftest import make_settings
from tests.helpers import decode_all, packets

S = 1_000_000_000


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[SourceSegment]:
    """65 s in 5 s segments with a keyframe every 2.5 s."""
    state = tmp_path_factory.mktemp("clip") / "state"
    s = make_settings(state, camera={"width": 480, "height": 270, "bitrate": 200_000, "keyframe_seconds": 2.5},
                      storage={"segment_seconds": 5.0})
    Daemon(s, stop_after_s=65).run()
    return [SourceSegment(state / "segments" / r.name, r.seq, r.mono_start_ns, r.duration_ns, r.sha256)
            for r in Index(StatePaths(state).index).stored()]


def t0(sources) -> int:
    return sources[0].mono_start_ns


def test_window_trims_to_the_keyframe_at_or_before_the_start(sources, tmp_path):
    start = t0(sources) + 21 * S + 300_000_000  # 21.3 s: keyframes every 2.5 s -> 20.0 s
    end = t0(sources) + 51 * S
    parts = build_clip(sources, start, end, tmp_path, "c", 6_000_000, 120_000)
    assert len(parts) == 1
    p = parts[0]
    assert p.start_mono_ns == t0(sources) + 20 * S
    frames, _ = decode_all(p.path)
    assert frames == 310  # 20.0 s .. 51.0 s at 10 fps
    v = packets(p.path, "video")
    assert v.keyframes[0] == v.pts_ms[0] == 0
    assert abs(p.duration_ms - 31_000) <= 100
    assert p.source_seqs == tuple(x.seq for x in sources[4:11])
    assert p.bytes == p.path.stat().st_size and not p.reencoded


def test_long_window_is_split_on_keyframes_without_gap_or_overlap(sources, tmp_path):
    parts = build_clip(sources, t0(sources), t0(sources) + 65 * S, tmp_path, "c", 6_000_000, 20_000)
    assert len(parts) >= 4
    total = 0
    for a, b in zip(parts, parts[1:]):
        gap = b.start_mono_ns - (a.start_mono_ns + decode_all(a.path)[0] * 100_000_000)
        assert gap == 0, f"parts {a.number} and {b.number} are {gap / 1e6} ms apart"
    for p in parts:
        assert 1 <= p.duration_ms <= 20_000
        v = packets(p.path, "video")
        assert v.keyframes[0] == v.pts_ms[0], "each part starts on a keyframe"
        a = packets(p.path, "audio")
        ends = [x + d for x, d in zip(a.pts_ms, a.durations_ms)]
        assert max(abs(x - e) for x, e in zip(a.pts_ms[1:], ends[:-1])) <= 1, "audio continuous"
        total += decode_all(p.path)[0]
    assert total == 650


def test_byte_limit_is_respected(sources, tmp_path):
    parts = build_clip(sources, t0(sources), t0(sources) + 65 * S, tmp_path, "c", 600_000, 120_000)
    assert len(parts) >= 3
    assert all(p.bytes <= 600_000 for p in parts)
    assert sum(decode_all(p.path)[0] for p in parts) == 650


def test_a_gop_larger_than_the_cap_is_reencoded_and_logged(sources, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edged.clip")
    one_gop = max(s.path.stat().st_size for s in sources) // 2
    cap = max(60_000, one_gop // 2)
    parts = build_clip(sources, t0(sources), t0(sources) + 10 * S, tmp_path, "c", cap, 120_000)
    assert any(p.reencoded for p in parts)
    assert all(p.bytes <= cap for p in parts)
    assert "re-encoding" in caplog.text
    assert sum(decode_all(p.path)[0] for p in parts) == 100


def test_nothing_recorded_in_the_window(sources, tmp_path):
    with pytest.raises(ClipError, match="no recorded segment"):
        build_clip(sources, t0(sources) - 100 * S, t0(sources) - 50 * S, tmp_path, "c", 6_000_000, 120_000)


def test_a_part_that_does_not_decode_is_never_returned(tmp_path):
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 4000)
    with pytest.raises(ClipError):
        measure(bad)
