"""End-to-end recording: real sources, real VP8/Opus encoding, real WebM segments on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edged.app.daemon import Daemon
from edged.core.paths import StatePaths
from edged.footage.index import Index
from edged.recording.encode import OPUS_FRAME_MS
from tests.support import decode_all, packets, segment_files, wait_until


def record(settings, seconds: float) -> Daemon:
    daemon = Daemon(settings, stop_after_s=seconds)
    assert daemon.run() == 0
    return daemon


def test_segments_are_standalone_keyframe_first_and_continuous(settings_factory):
    s = settings_factory()
    record(s, 25)
    files = segment_files(s.state_dir)
    assert [f.name.split("_")[0] for f in files] == ["000000001", "000000002", "000000003"]
    total_frames = 0
    audio_end_ms = []
    for f in files:
        frames, samples = decode_all(f)  # each decodes on its own
        v = packets(f, "video")
        a = packets(f, "audio")
        assert v.keyframes and v.keyframes[0] == v.pts_ms[0], f"{f.name} does not start with a keyframe"
        steps = np.diff(v.pts_ms)
        assert set(steps.tolist()) == {100}, f"{f.name}: frames not at exact 100 ms steps: {set(steps.tolist())}"
        total_frames += frames
        # Audio covers the segment's video span: starts within one Opus frame of it, ends at or after it.
        assert abs(a.pts_ms[0] - v.pts_ms[0]) <= OPUS_FRAME_MS + 1
        audio_end_ms.append(a.pts_ms[-1] + a.durations_ms[-1] - v.pts_ms[0])
        assert samples > 0
    assert total_frames == 250, "frames lost or duplicated across segment boundaries"
    # Joined, the audio neither gaps nor overlaps: each segment's audio ends within one
    # Opus frame after its 10 s of video, and the next picks up from there.
    assert all(10_000 <= e <= 10_000 + OPUS_FRAME_MS + 1 for e in audio_end_ms[:2]), audio_end_ms


def test_audio_joins_without_gap_or_overlap(settings_factory):
    """On the recording's timeline, each segment's audio starts exactly where the previous ended.

    (Decoded sample counts would not show this: every segment carries the encoder's OpusHead with
    its 312-sample pre-skip, which a decoder applies to each standalone file.)"""
    s = settings_factory()
    record(s, 30)
    rows = Index(StatePaths(s.state_dir).index).stored()
    spans = []
    for row in rows:
        f = s.state_dir / "segments" / row.name
        v, a = packets(f, "video"), packets(f, "audio")
        origin_ms = row.mono_start_ns // 1_000_000 - v.pts_ms[0]  # the file's t=0 on the monotonic clock
        ends = [p + d for p, d in zip(a.pts_ms, a.durations_ms)]
        gaps = [p - e for p, e in zip(a.pts_ms[1:], ends[:-1])]
        assert max(map(abs, gaps)) <= 1, f"{row.name}: audio packets not contiguous (ms rounding aside)"
        spans.append((origin_ms + a.pts_ms[0], origin_ms + ends[-1]))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert abs(start - end) <= 1, f"audio join off by {start - end} ms"
    covered = spans[-1][1] - spans[0][0]
    assert 29_900 <= covered <= 30_100, covered


def test_index_rows_describe_the_files(settings_factory):
    s = settings_factory()
    record(s, 21)
    idx = Index(StatePaths(s.state_dir).index)
    rows = idx.stored()
    files = segment_files(s.state_dir)
    assert [r.name for r in rows] == [f.name for f in files]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for r, f in zip(rows, files):
        assert r.state == "final"
        assert r.bytes == f.stat().st_size
        assert r.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
        assert r.frames == len(packets(f, "video").pts_ms)
        assert r.duration_ns == r.frames * 100_000_000
        assert r.boot_id == boot
    # Monotonic starts are exactly one segment apart; wall starts follow them.
    assert [b.mono_start_ns - a.mono_start_ns for a, b in zip(rows, rows[1:])] == [10_000_000_000] * 2
    assert rows[0].wall_start_ns > 1_600_000_000 * 10**9
    assert list((s.state_dir / "segments").glob("*.part")) == []


def test_keyframes_at_least_every_keyframe_seconds(settings_factory):
    s = settings_factory(camera={"keyframe_seconds": 2.0})
    record(s, 20)
    for f in segment_files(s.state_dir):
        v = packets(f, "video")
        gaps = np.diff(v.keyframes + [v.pts_ms[-1] + 100])
        assert v.keyframes[0] == v.pts_ms[0]
        assert gaps.max() <= 2000, f"{f.name}: keyframe gap {gaps.max()} ms"


def _mjpeg_file(path: Path, seconds: int = 3, fps: int = 10) -> Path:
    with av.open(str(path), "w") as out:
        st = out.add_stream("mjpeg", rate=fps)
        st.width, st.height, st.pix_fmt = 320, 240, "yuvj420p"
        for i in range(seconds * fps):
            img = np.full((240, 320, 3), (i * 7) % 255, np.uint8)
            img[:, (i * 9) % 320 :] = 40
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def test_intra_only_source_does_not_make_every_frame_a_keyframe(settings_factory, tmp_path):
    """MJPEG-decoded frames carry pict_type I; the encoder must not obey it (602 kbps otherwise)."""
    src = _mjpeg_file(tmp_path / "cam.avi")
    s = settings_factory(camera={"source": "file", "device": str(src)})
    record(s, 20)
    for f in segment_files(s.state_dir):
        assert len(packets(f, "video").keyframes) == 1, f.name


def test_file_source_loops_scales_and_resamples(settings_factory, footage):
    """bikes.mp4 is 640x272 at 25 fps for 10 s: recorded at 960x540, 10 fps, looping past its end."""
    s = settings_factory(camera={"source": "file", "device": str(footage / "bikes.mp4")}, audio={"source": "none"})
    record(s, 14)
    files = segment_files(s.state_dir)
    frames = sum(decode_all(f)[0] for f in files)
    assert frames == 140
    with av.open(str(files[0])) as c:
        vs = c.streams.video[0]
        assert (vs.codec_context.width, vs.codec_context.height) == (960, 540)
        assert not c.streams.audio


def test_status_json_reports_the_recording(settings_factory, tmp_path):
    s = settings_factory()
    record(s, 12)
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[storage]\ndir = "{s.state_dir}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "edged", "status", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    st = json.loads(out.stdout)
    assert st["state"] == "stopped"  # the daemon that wrote it has exited
    assert st["video_source"] == "synthetic" and st["audio_source"] == "synthetic"
    assert st["segments"] == 2
    assert st["bytes_used"] == sum(f.stat().st_size for f in segment_files(s.state_dir))
    assert st["frames_dropped"] == 0
    assert st["frames_encoded"] == 120
    assert st["oldest_footage"] < st["newest_footage"]
    assert st["last_error"] is None


@pytest.mark.parametrize("bitrate", [300_000, 600_000])
def test_bitrate_follows_the_setting_on_noisy_motion(settings_factory, bitrate):
    """CBR holds the configured rate on the synthetic pattern (moving, with temporal noise)."""
    s = settings_factory(camera={"bitrate": bitrate}, audio={"source": "none"})
    record(s, 30)
    total = sum(sum(packets(f, "video").sizes) for f in segment_files(s.state_dir))
    kbps = total * 8 / 30
    assert 0.9 * bitrate <= kbps <= 1.1 * bitrate, f"{kbps:.0f} bps for a {bitrate} target"


@pytest.mark.parametrize("paced", [False, True], ids=["unpaced", "paced"])
def test_a_last_segment_cut_just_after_its_first_frame_still_carries_that_frames_sound(settings_factory, paced):
    """A stop 0.1 s into a segment (one frame) keeps the sound of that frame: the samples already
    captured are encoded at stop, not left in the queue, so no segment is picture without sound."""
    s = settings_factory(camera={"paced": paced}, storage={"segment_seconds": 2})
    record(s, 4.1)  # 2 s segments: the third holds the frame at 4.0 s only
    files = segment_files(s.state_dir)
    assert len(files) == 3, files
    last = files[-1]
    v, a = packets(last, "video"), packets(last, "audio")
    assert len(v.pts_ms) == 1, v.pts_ms
    assert a.pts_ms, f"{last.name}: a frame without its sound"
    assert abs(a.pts_ms[0] - v.pts_ms[0]) <= OPUS_FRAME_MS + 1
    assert a.pts_ms[-1] + a.durations_ms[-1] >= v.pts_ms[0] + 100, (a.pts_ms, a.durations_ms)


def test_the_start_line_names_a_microphone_still_opening(settings_factory, monkeypatch, caplog):
    """A first frame before the microphone opened: the journal's start line says so (it said
    "microphone None"), and the sound follows from the microphone's first block."""
    import threading

    import edged.capture as capture

    may_open = threading.Event()
    real = capture._AUDIO["synthetic"]

    def slow(aud, paced):
        source = real(aud, paced)
        opened = source.open

        def open_later() -> None:
            may_open.wait(30)
            opened()

        source.open = open_later
        return source

    monkeypatch.setitem(capture._AUDIO, "synthetic", slow)
    s = settings_factory(camera={"width": 320, "height": 180, "bitrate": 120_000, "paced": True})
    caplog.set_level(logging.INFO, logger="edged")
    d = Daemon(s)
    t = threading.Thread(target=d.run)
    t.start()
    try:
        wait_until(lambda: any("recording started" in r.getMessage() for r in caplog.records), 30, "start line")
        line = next(r.getMessage() for r in caplog.records if "recording started" in r.getMessage())
        assert "microphone still opening" in line and "None" not in line, line
        may_open.set()
        wait_until(lambda: d.recorder is not None and d.recorder.status.audio_source == "synthetic", 30, "microphone")
    finally:
        may_open.set()
        d.stop()
        t.join(60)
