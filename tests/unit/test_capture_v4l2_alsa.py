"""USB camera (V4L2) and microphone (ALSA) sources, as far as a machine without them can go.

No /dev/video* or sound card exists on CI, so the V4L2 tests cover finding and refusing
devices, and read what a UVC camera sends (MJPEG packets stamped in microseconds) from a file
in its place; the ALSA tests open ALSA's ``null`` PCM (no hardware needed) when alsa-lib's
configuration is installed, and drive the sample clock with made-up read times.
"""

from __future__ import annotations

import errno
import os
import random
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange

from edged.capture import v4l2
from edged.capture.alsa import AlsaAudio, SampleClock
from edged.capture.base import SourceError, SourceUnavailable
from edged.capture.v4l2 import V4L2Video

RATE = 48_000
BLOCK = 960  # 20 ms


# --- V4L2 -------------------------------------------------------------------------------------


def test_missing_device_is_unavailable(tmp_path: Path) -> None:
    device = str(tmp_path / "video7")
    with pytest.raises(SourceUnavailable, match=f"{device}: No such file or directory"):
        V4L2Video(device, 640, 480, 30).open()


def test_no_devices_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v4l2, "DEVICE_GLOBS", (str(tmp_path / "by-id" / "*-video-index0"), str(tmp_path / "video*")))
    with pytest.raises(SourceUnavailable, match="no V4L2 camera: no .*video\\* exists"):
        V4L2Video(None, 640, 480, 30).open()


def test_a_node_that_is_no_camera_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "video0").write_bytes(b"")  # a regular file: the V4L2 ioctls fail on it
    monkeypatch.setattr(v4l2, "DEVICE_GLOBS", (str(tmp_path / "video*"),))
    with pytest.raises(SourceUnavailable, match="video0 is not a usable camera.*Inappropriate ioctl"):
        V4L2Video(None, 640, 480, 30).open()


def test_candidates_put_usb_names_first_each_device_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in (0, 1, 2, 3, 10):
        (tmp_path / f"video{n}").touch()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    os.symlink(tmp_path / "video2", by_id / "usb-046d_HD_Pro_Webcam_C920-video-index0")
    monkeypatch.setattr(v4l2, "DEVICE_GLOBS", (str(by_id / "*-video-index0"), str(tmp_path / "video*")))
    assert v4l2.candidate_devices() == [
        str(by_id / "usb-046d_HD_Pro_Webcam_C920-video-index0"),
        str(tmp_path / "video0"),
        str(tmp_path / "video1"),
        str(tmp_path / "video3"),
        str(tmp_path / "video10"),
    ]


def mjpeg_recording(path: Path, first_pts_us: int, frames: int = 5, broken_after_first: int = 0) -> Path:
    """MJPEG in a NUT file with a 1/1000000 time base: what FFmpeg's v4l2 input gives; the
    first frame may be followed by ``broken_after_first`` truncated JPEGs."""
    with av.open(str(path), "w", format="nut") as out:
        stream = out.add_stream("mjpeg", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj422p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1_000_000)
        for k in range(frames):
            rgb = np.full((240, 320, 3), 40 * k, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj422p")
            frame.pts, frame.time_base = first_pts_us + k * 33_333, Fraction(1, 1_000_000)
            packets = stream.encode(frame)
            out.mux(packets)
            for n in range(broken_after_first if k == 0 else 0):
                broken = av.Packet(bytes(packets[0])[:40])
                broken.stream, broken.pts, broken.dts = stream, first_pts_us + 1 + n, first_pts_us + 1 + n
                broken.time_base = stream.time_base
                out.mux(broken)
        out.mux(stream.encode(None))
    return path


class FakeOpen:
    """av.open for the v4l2 source: records what was asked, serves a recording instead."""

    def __init__(self, recording: Path, refuse_mjpeg: bool = False) -> None:
        self.recording, self.refuse_mjpeg = recording, refuse_mjpeg
        self._open = av.open  # the real one, before the test patches it
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, device: str, format: str, options: dict[str, str]) -> Any:
        self.calls.append((device, format, dict(options)))
        if self.refuse_mjpeg and options.get("input_format") == "mjpeg":
            av.error.err_check(-errno.EINVAL, device)  # "Cannot find a proper format"
        return self._open(str(self.recording))


def test_asks_for_mjpeg_then_the_default_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_open = FakeOpen(mjpeg_recording(tmp_path / "cam.nut", 0), refuse_mjpeg=True)
    monkeypatch.setattr(v4l2.av, "open", fake_open)
    source = V4L2Video("/dev/video4", 1280, 720, 25)
    source.open()
    source.close()
    wanted = {"video_size": "1280x720", "framerate": "25"}
    assert fake_open.calls == [
        ("/dev/video4", "v4l2", wanted | {"input_format": "mjpeg"}),
        ("/dev/video4", "v4l2", wanted),
    ]


def test_frames_come_out_yuv420p_unmarked_with_kernel_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_us = int(time.monotonic() * 1e6)  # the kernel's CLOCK_MONOTONIC buffer timestamps
    monkeypatch.setattr(v4l2.av, "open", FakeOpen(mjpeg_recording(tmp_path / "cam.nut", first_us)))
    source = V4L2Video("/dev/video4", 160, 120, 30)
    source.open()
    samples = [source.read() for _ in range(5)]
    with pytest.raises(SourceError, match="stopped"):
        source.read()
    source.close()
    source.close()
    for k, s in enumerate(samples):
        assert (s.frame.format.name, s.frame.width, s.frame.height) == ("yuv420p", 160, 120)
        assert s.frame.pict_type == av.video.frame.PictureType.NONE  # decoded MJPEG says I
        assert s.frame.pts is None
        assert s.time == pytest.approx((first_us + k * 33_333) / 1e6, abs=1e-6)
        # Grey 40 * k in full range (JPEG) is 16 + 40 * k * 219 / 255 in VP8's limited range.
        assert abs(int(s.frame.to_ndarray()[60, 80]) - (16 + 40 * k * 219 / 255)) <= 2
        assert s.frame.color_range == ColorRange.MPEG


def test_a_few_broken_jpegs_are_skipped_many_stop_the_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    many = mjpeg_recording(tmp_path / "many.nut", 0, broken_after_first=v4l2.MAX_BAD_FRAMES)
    fake_open = FakeOpen(mjpeg_recording(tmp_path / "few.nut", 0, broken_after_first=3))
    monkeypatch.setattr(v4l2.av, "open", fake_open)
    source = V4L2Video("/dev/video4", 320, 240, 30)
    source.open()
    assert len([source.read() for _ in range(5)]) == 5
    source.close()
    fake_open.recording = many
    source.open()
    source.read()
    with pytest.raises(SourceError, match="InvalidDataError"):
        source.read()
    source.close()


def test_timestamps_on_another_clock_are_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v4l2.av, "open", FakeOpen(mjpeg_recording(tmp_path / "cam.nut", 0)))
    source = V4L2Video("/dev/video4", 320, 240, 30)
    source.open()
    before = time.monotonic()
    times = [source.read().time for _ in range(3)]
    source.close()
    assert before <= times[0] <= times[1] <= times[2] <= time.monotonic()


# --- ALSA -------------------------------------------------------------------------------------


def test_missing_alsa_device_is_unavailable_and_alsa_lib_prints_nothing(capfd, caplog) -> None:
    caplog.set_level("DEBUG", logger="edged.capture.alsa")
    with pytest.raises(SourceUnavailable, match="ALSA capture device 'hw:CARD=NoSuchCard' cannot be opened"):
        AlsaAudio("hw:CARD=NoSuchCard", RATE, 1).open()
    # alsa-lib's own complaint goes to our debug log, never raw to stderr (fd 2, the journal's).
    assert "ALSA lib" not in capfd.readouterr().err
    assert "alsa-lib:" in caplog.text


@pytest.mark.skipif(not Path("/usr/share/alsa/alsa.conf").is_file(), reason="alsa-lib configuration not installed")
@pytest.mark.parametrize("channels, layout", [(1, "mono"), (2, "stereo")])
def test_null_device_gives_20ms_blocks(channels: int, layout: str) -> None:
    source = AlsaAudio("null", RATE, channels)
    source.open()
    try:
        samples = [source.read() for _ in range(4)]
    finally:
        source.close()
    for s in samples:
        assert (s.frame.samples, s.frame.sample_rate, s.frame.layout.name) == (BLOCK, RATE, layout)
        assert s.frame.pts is None
    times = [s.time for s in samples]
    assert all(b > a for a, b in zip(times, times[1:]))
    source.close()  # twice is fine


def stamps(clock: SampleClock, reads: list[float]) -> list[float]:
    return [clock.stamp(BLOCK, now) for now in reads]


def test_clock_spaces_blocks_by_their_duration_despite_read_jitter() -> None:
    rng = random.Random(1)
    reads = [100.02 + 0.02 * k + (rng.uniform(0, 0.008) if k else 0) for k in range(500)]
    times = stamps(SampleClock(RATE), reads)
    assert times == pytest.approx([100.0 + 0.02 * k for k in range(500)], abs=1e-9)
    assert all(t <= now - 0.02 + 1e-9 for t, now in zip(times, reads))


def test_clock_does_not_bunch_blocks_read_late() -> None:
    # The reader stalls 0.3 s after block 49, then takes 15 queued blocks at once.
    reads = [100.02 + 0.02 * k for k in range(50)] + [101.3] * 15 + [101.3 + 0.02 * k for k in range(1, 200)]
    times = stamps(SampleClock(RATE), reads)
    assert times == pytest.approx([100.0 + 0.02 * k for k in range(len(reads))], abs=1e-9)


def test_clock_catches_up_with_lost_samples() -> None:
    # After 2 s, an overrun loses 0.5 s of audio: later blocks are 0.5 s later than counted.
    truth = [100.0 + 0.02 * k for k in range(100)] + [100.0 + 0.5 + 0.02 * k for k in range(100, 400)]
    reads = [t + 0.02 + (0.001 if k else 0.0) for k, t in enumerate(truth)]
    times = stamps(SampleClock(RATE), reads)
    assert times[99] == pytest.approx(truth[99], abs=1e-9)
    assert times[100] == pytest.approx(truth[100] - 0.5, abs=1e-9)  # no way to know yet
    assert all(t == pytest.approx(true, abs=0.002) for t, true in zip(times[250:], truth[250:]))


@pytest.mark.parametrize("block_seconds", [0.02002, 0.01998])
def test_clock_follows_a_card_off_its_nominal_rate(block_seconds: float) -> None:
    # 960 samples take 20 ms +- 20 us of real time: counting alone would drift 1 ms a second.
    truth = [100.0 + block_seconds * k for k in range(3000)]  # a minute
    times = stamps(SampleClock(RATE), [t + block_seconds for t in truth])
    errors = [t - true for t, true in zip(times, truth)]
    # A lag is corrected once it has exceeded TOLERANCE for a whole window: 2 windows of drift.
    assert max(abs(e) for e in errors) <= SampleClock.TOLERANCE + 2 * SampleClock.WINDOW * 0.001 + 1e-6
    assert abs(errors[-1]) < 60 * 0.001 / 2  # corrected, not left to drift
    assert all(b > a for a, b in zip(times, times[1:]))
