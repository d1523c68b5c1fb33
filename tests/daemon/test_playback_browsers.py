"""Playback in real browsers (issue 13 item 6): what edged writes plays whole in Chromium, as
``<video src>`` and through Media Source Extensions.

Two properties of the written files, read back from their bytes (tests/ebml.py, not FFmpeg):
  * every WebM with audio carries the Opus ``CodecDelay`` equal to the OpusHead pre-skip
    (without it Chromium logs "Failed to reconcile encoded audio times" on every load and seek);
  * in what is written whole (clip parts, timelapses) each cluster starts at a video keyframe
    (the first video block of every cluster is a keyframe, so each cluster is a random access
    point: Firefox's MSE drops clusters that are not), while ring segments keep their short
    clusters (they bound what a kill -9 loses).
Then a clip part is played in headless Chromium and Firefox, as ``<video src>`` and through MSE:
duration, a seek to the middle, playback advancing to the end, and Chromium's player log free of
the reconcile warning (which a file with its CodecDelay voided does produce, so the check can fail).

The recording has keyframes only at segment starts, 10 s apart: longer than FFmpeg's default
5 s clusters, the case that broke MSE players.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edged.app.daemon import Daemon
from edged.clips.builder import ClipPart, SourceSegment, build_clip
from edged.clips.timelapse import render
from edged.config.schema import AudioSettings, Settings
from edged.core.paths import StatePaths
from edged.footage.index import Index
from edged.recording.encode import opus_options
from edged.recording.salvage import salvage
from edged.recording.segment import CLUSTER_MS, PART_SUFFIX
from edged.upload.bota.media import audio_webm
from tests.conftest import make_settings
from tests.support.browsers import Chromium, play
from tests.support.ebml import AUDIO, VIDEO, WebM, opus_pre_skip, parse, read_webm, void_element

S = 1_000_000_000
MS = 1_000_000
SEGMENT_SECONDS = 10.0
FPS = 10
OPUS_RATE = 48_000
RECONCILE = "Failed to reconcile encoded audio times"


@dataclass
class Recorded:
    settings: Settings
    sources: list[SourceSegment]
    parts: list[ClipPart]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Recorded:
    """32 s recorded in 10 s segments (keyframes at segment starts only); a 30 s clip of it."""
    state = tmp_path_factory.mktemp("playback") / "state"
    settings = make_settings(
        state,
        camera={"width": 320, "height": 180, "fps": FPS, "bitrate": 150_000},
        storage={"segment_seconds": SEGMENT_SECONDS},
    )
    Daemon(settings, stop_after_s=32).run()
    rows = Index(StatePaths(state).index).stored()
    sources = [
        SourceSegment(state / "segments" / r.name, r.seq, r.mono_start_ns, r.duration_ns, r.sha256) for r in rows
    ]
    t0 = sources[0].mono_start_ns
    parts = build_clip(sources, t0, t0 + 30 * S, state.parent / "clips", "play", 6_000_000, 120_000)
    assert len(parts) == 1
    return Recorded(settings, sources, parts)


def expected_codec_delay_ns(w: WebM) -> int:
    pre_skip = opus_pre_skip(w.track(AUDIO).codec_private)
    assert pre_skip > 0, "libopus always primes its decoder"
    return pre_skip * S // OPUS_RATE  # 312 samples: 6,500,000 ns exactly


def check_codec_delay(path: Path) -> None:
    w = read_webm(path)
    audio = w.track(AUDIO)
    assert audio.codec_id == "A_OPUS"
    assert audio.codec_delay_ns is not None, f"{path.name} has no CodecDelay"
    assert audio.codec_delay_ns == expected_codec_delay_ns(w), path.name
    assert audio.seek_pre_roll_ns == 80 * MS, path.name


def reference_opus_webm(path: Path, aud: AudioSettings) -> Path:
    """Opus muxed straight from an opened encoder, as the ffmpeg CLI muxes (the reference)."""
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=OPUS_RATE)
        ctx = stream.codec_context
        ctx.layout = "mono" if aud.channels == 1 else "stereo"
        ctx.format = "flt"
        ctx.bit_rate = aud.bitrate
        ctx.options = opus_options(aud)
        samples = np.zeros((1, OPUS_RATE // 10), dtype=np.float32)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=ctx.layout.name)
            frame.sample_rate = OPUS_RATE
            frame.pts, frame.time_base = i * samples.shape[1], Fraction(1, OPUS_RATE)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


# --- CodecDelay --------------------------------------------------------------------------------------


def test_ring_segments_and_clip_parts_carry_codec_delay(recorded: Recorded, tmp_path: Path) -> None:
    for src in recorded.sources:
        check_codec_delay(src.path)
    for part in recorded.parts:
        check_codec_delay(part.path)
    # The same element and value as a file muxed the ffmpeg CLI's way, from the same encoder settings.
    ref = read_webm(reference_opus_webm(tmp_path / "ref.webm", recorded.settings.audio)).track(AUDIO)
    ours = read_webm(recorded.parts[0].path).track(AUDIO)
    assert ref.codec_delay_ns == ours.codec_delay_ns
    assert opus_pre_skip(ref.codec_private) == opus_pre_skip(ours.codec_private)


def test_salvaged_segments_and_audio_copies_carry_codec_delay(recorded: Recorded, tmp_path: Path) -> None:
    data = recorded.sources[1].path.read_bytes()
    cut = tmp_path / (recorded.sources[1].path.name + PART_SUFFIX)
    cut.write_bytes(data[: len(data) * 2 // 3])  # a segment cut off mid-write
    result = salvage(cut)
    assert result.path is not None and result.video_frames > 0
    check_codec_delay(result.path)
    copied = audio_webm(recorded.parts[0].path, tmp_path / "audio.webm")
    assert copied is not None
    check_codec_delay(copied)


def check_blocks_in_time_order(path: Path) -> None:
    """Within each cluster, block times never go back (MSE parsers reject a cluster that does:
    Chromium's "Got a block with a timecode before the previous block"), and clusters follow each other."""
    w = read_webm(path)
    last = -1
    for c in w.clusters:
        assert c.time_ms >= last, f"{path.name}: cluster at {c.time_ms} ms starts before {last} ms"
        times = [b.time_ms for b in c.blocks]
        assert times == sorted(times), f"{path.name}: cluster at {c.time_ms} ms: {times}"
        last = max(times, default=c.time_ms)


def test_blocks_are_stored_in_time_order(recorded: Recorded, tmp_path: Path) -> None:
    """FFmpeg stores audio blocks CodecDelay after their pts but interleaves by dts: edged feeds it
    so that the stored order is the time order, in segments, parts, salvaged segments and timelapses."""
    files = [s.path for s in recorded.sources] + [p.path for p in recorded.parts]
    data = recorded.sources[0].path.read_bytes()
    cut = tmp_path / (recorded.sources[0].path.name + PART_SUFFIX)
    cut.write_bytes(data[: len(data) // 2])
    salvaged = salvage(cut).path
    assert salvaged is not None
    t0 = recorded.sources[0].mono_start_ns
    tl = render(recorded.sources, t0, t0 + 12 * S, tmp_path, "tl", 6_000_000, 120_000, recorded.settings.camera)
    for path in [*files, salvaged, tl.path]:
        check_blocks_in_time_order(path)
    # Audio and video blocks do interleave closely (within one Opus frame of each other): the
    # check above had something to find.
    w = read_webm(recorded.parts[0].path)
    video, audio = w.track(VIDEO).number, w.track(AUDIO).number
    pairs = [(a, b) for c in w.clusters for a, b in zip(c.blocks, c.blocks[1:]) if {a.track, b.track} == {video, audio}]
    assert any(0 <= b.time_ms - a.time_ms <= 7 for a, b in pairs)


# --- clusters -----------------------------------------------------------------------------------------


def check_clusters_start_at_keyframes(path: Path) -> int:
    """Each cluster's first video block is a keyframe, and every keyframe starts a cluster; the
    blocks before it are audio that starts at or before it (FFmpeg's WebM muxer keeps the Opus
    frame that spans the keyframe's time with it). Returns the number of clusters."""
    w = read_webm(path)
    video = w.track(VIDEO).number
    keyframes = 0
    for c in w.clusters:
        blocks = c.blocks
        first_video = next((i for i, b in enumerate(blocks) if b.track == video), None)
        assert first_video is not None, f"{path.name}: cluster at {c.time_ms} ms holds no video"
        key = blocks[first_video]
        assert key.keyframe, f"{path.name}: cluster at {c.time_ms} ms starts with a non-key video frame"
        assert all(b.track != video and b.time_ms <= key.time_ms for b in blocks[:first_video])
        keyframes += sum(1 for b in blocks if b.track == video and b.keyframe)
    assert keyframes == len(w.clusters), f"{path.name}: {keyframes} keyframes in {len(w.clusters)} clusters"
    return len(w.clusters)


def test_clip_parts_cluster_at_video_keyframes(recorded: Recorded) -> None:
    for part in recorded.parts:
        # 30 s from a segment start, keyframes every 10 s: three clusters (FFmpeg's defaults made six).
        assert check_clusters_start_at_keyframes(part.path) == 3


def test_timelapse_clusters_at_video_keyframes(recorded: Recorded, tmp_path: Path) -> None:
    t0 = recorded.sources[0].mono_start_ns
    tl = render(recorded.sources, t0, t0 + 30 * S, tmp_path, "tl", 6_000_000, 120_000, recorded.settings.camera)
    # Every source frame kept (30 s fit the duration limit): keyframes every keyframe_seconds (10 s).
    assert check_clusters_start_at_keyframes(tl.path) == 3


def test_ring_segments_keep_their_short_clusters(recorded: Recorded) -> None:
    for src in recorded.sources:
        w = read_webm(src.path)
        starts = [c.time_ms for c in w.clusters]
        last = max(b.time_ms for c in w.clusters for b in c.blocks)
        # A cluster closes at the first packet more than CLUSTER_MS after its start; the longest
        # packet interval is a video frame (100 ms).
        spans = [b - a for a, b in zip(starts, starts[1:] + [last])]
        assert max(spans) <= CLUSTER_MS + 1000 // FPS, (src.path.name, spans)
        assert len(starts) >= (last - starts[0]) // (CLUSTER_MS + 1000 // FPS), (src.path.name, starts)


# --- Chromium -----------------------------------------------------------------------------------------


def container_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        return (c.duration or 0) / 1_000_000


def check_played(report: dict, path: Path, mode: str) -> None:
    assert "error" not in report, report
    duration = container_seconds(path)
    assert report["duration"] == pytest.approx(duration, abs=0.05), report
    assert report["seeked_to"] == pytest.approx(report["seek_target"], abs=0.05), report
    start, now = report["advanced"]
    assert start == pytest.approx(report["seek_target"], abs=0.5) and now >= start + 1.0, report
    assert report["ended_at"] == pytest.approx(duration, abs=0.1), "played to the end"
    if mode == "mse":
        # The whole file appended at once: one buffered range from the start to the end (no
        # cluster dropped). Firefox's range starts where both tracks have data: the part's audio
        # starts up to one Opus frame (60 ms, stored 7 ms later) after its first keyframe.
        (begin, end), *rest = report["buffered"]
        assert not rest and 0 <= begin <= 0.07, report
        assert end == pytest.approx(duration, abs=0.1), report


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["src", "mse"])
def test_clip_part_plays_in_chromium(recorded: Recorded, tmp_path: Path, mode: str) -> None:
    part = recorded.parts[0]
    with play(tmp_path, {part.path.name: part.path}, part.path.name, mode) as (report, browser):
        assert isinstance(browser, Chromium)
        warnings = browser.media_messages("warning")
        errors = browser.media_messages("error")
    check_played(report, part.path, mode)
    assert not errors, errors
    assert not [m for m in warnings if RECONCILE in m], warnings


@pytest.mark.slow
def test_chromium_warns_about_a_part_without_codec_delay(recorded: Recorded, tmp_path: Path) -> None:
    """The control: the same part with its CodecDelay element voided (every offset unchanged)."""
    part = recorded.parts[0]
    data = part.path.read_bytes()
    element = parse(data).track(AUDIO).codec_delay_element
    assert element is not None
    bare = tmp_path / "bare.webm"
    bare.write_bytes(void_element(data, element))
    assert read_webm(bare).track(AUDIO).codec_delay_ns is None
    with play(tmp_path, {"bare.webm": bare}, "bare.webm", "src") as (report, browser):
        assert isinstance(browser, Chromium)
        warnings = browser.media_messages("warning")
    assert "error" not in report, report
    assert [m for m in warnings if RECONCILE in m], warnings


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["src", "mse"])
def test_clip_part_plays_in_firefox(recorded: Recorded, tmp_path: Path, mode: str) -> None:
    """Firefox's MSE drops clusters whose first video frame is not a keyframe: with FFmpeg's
    default 5 s clusters this part buffered as [0.06, 5.1], [10, 15], [20, 25] (it stopped at 5 s)."""
    part = recorded.parts[0]
    with play(tmp_path, {part.path.name: part.path}, part.path.name, mode, browser="firefox") as (report, _):
        pass
    check_played(report, part.path, mode)


@pytest.mark.slow
@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_ring_segment_plays_as_video_src(recorded: Recorded, tmp_path: Path, browser: str) -> None:
    """A segment as it lies in the ring (short clusters, started mid-recording) plays on its own."""
    seg = recorded.sources[1].path
    with play(tmp_path, {seg.name: seg}, seg.name, "src", browser=browser) as (report, running):
        warnings = running.media_messages("warning") if isinstance(running, Chromium) else []
    check_played(report, seg, "src")
    assert not [m for m in warnings if RECONCILE in m], warnings
