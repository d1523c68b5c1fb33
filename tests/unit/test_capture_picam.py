"""The picamera2 source, run against tests/support/fakes/fake_picamera2.py (no camera on CI)."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from edged.capture.base import SourceError, SourceUnavailable
from edged.capture.picam import PicameraVideo
from tests.support.fakes import fake_picamera2 as fake


@pytest.fixture(autouse=True)
def fresh_fake():
    fake.reset()
    yield
    fake.reset()


def opened(width: int = 640, height: int = 480, fps: int = 30) -> tuple[PicameraVideo, fake.Picamera2]:
    source = PicameraVideo(width, height, fps, picamera2_module=fake)
    source.open()
    return source, fake.instances[-1]


def planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = frame.to_ndarray().reshape(-1)
    w, h = frame.width, frame.height
    y = flat[: w * h].reshape(h, w)
    u = flat[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
    v = flat[w * h * 5 // 4 :].reshape(h // 2, w // 2)
    return y, u, v


def test_asks_picamera2_for_the_configured_stream() -> None:
    source, cam = opened(1280, 720, 25)
    config = cam.camera_config
    assert config["main"]["size"] == (1280, 720)
    assert config["main"]["format"] == "YUV420"
    assert config["controls"]["FrameDurationLimits"] == (40000, 40000)  # 1 / 25 s, in us
    assert config["buffer_count"] == PicameraVideo.BUFFER_COUNT
    assert config["colour_space"].name == "SMPTE170M"  # not the Rec709 picamera2 picks for 720p
    assert cam.calls == ["configure", "start"]
    assert cam.event_loop_running  # start() without show_preview=None: requests complete
    source.close()


def test_frames_are_yuv420p_at_the_configured_size_with_monotonic_times() -> None:
    source, cam = opened(640, 480, 30)
    before = time.monotonic()
    samples = [source.read() for _ in range(5)]
    after = time.monotonic()
    source.close()
    for n, sample in enumerate(samples):
        assert (sample.frame.format.name, sample.frame.width, sample.frame.height) == ("yuv420p", 640, 480)
        y, u, v = planes(sample.frame)
        ys, xs = np.mgrid[0:480, 0:640]
        assert np.array_equal(y, (xs + ys + 3 * n) % 256)
        assert u[0, 5] == (10 + n) % 256 and v[7, 0] == 78
    times = [s.time for s in samples]
    assert before <= times[0] and times[-1] <= after
    assert all(b > a for a, b in zip(times, times[1:]))
    assert all(isinstance(w, (int, float)) and w > 0 for w in cam.capture_waits)


def test_row_padding_is_dropped() -> None:
    # 200 pixels wide: libcamera's YUV420 rows are 256 bytes, so 56 bytes of every row are padding.
    source, cam = opened(200, 120, 30)
    assert cam.camera_config["main"]["stride"] == 256
    frame = source.read().frame
    source.close()
    y, u, v = planes(frame)
    ys, xs = np.mgrid[0:120, 0:200]
    cys, cxs = np.mgrid[0:60, 0:100]
    assert np.array_equal(y, (xs + ys) % 256)
    assert np.array_equal(u, (2 * cxs) % 256)
    assert np.array_equal(v, (2 * cys + 64) % 256)
    assert not (y == 0xEE).all(axis=1).any()


def test_every_request_is_released_once() -> None:
    source, cam = opened()
    for _ in range(7):
        source.read()
    assert (cam.captured, cam.released) == (7, 7)
    cam.omit_timestamp = True
    t = source.read().time  # a frame without SensorTimestamp falls back to the monotonic clock
    assert abs(t - time.monotonic()) < 1.0
    assert (cam.captured, cam.released) == (8, 8)
    source.close()


def test_request_is_released_when_reading_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    source, cam = opened()

    def broken(self, name):
        raise RuntimeError("Stream 'main' is not defined")

    monkeypatch.setattr(fake.CompletedRequest, "make_array", broken)
    with pytest.raises(SourceError, match="unreadable"):
        source.read()
    assert (cam.captured, cam.released) == (1, 1)
    source.close()


def test_missing_module_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` raise ImportError
    with pytest.raises(SourceUnavailable, match="picamera2 is not installed"):
        PicameraVideo(640, 480, 30).open()


def test_no_camera_is_unavailable() -> None:
    fake.CAMERAS.clear()
    with pytest.raises(SourceUnavailable, match="no Raspberry Pi camera"):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    assert fake.instances == []


def test_usb_cameras_are_left_to_v4l2() -> None:
    fake.CAMERAS[:] = [dict(fake.USB_CAMERA)]
    with pytest.raises(SourceUnavailable, match="only USB cameras: HD Pro Webcam C920"):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    fake.CAMERAS[:] = [dict(fake.USB_CAMERA), dict(fake.CSI_CAMERA)]
    source, cam = opened()
    assert cam.camera_info["Model"] == "imx708"
    source.close()


def test_camera_that_cannot_be_opened_is_unavailable() -> None:
    fake.OPEN_ERROR = RuntimeError("Camera __init__ sequence did not complete.")
    with pytest.raises(SourceUnavailable, match="imx708 cannot be opened.*did not complete"):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()


def test_rejected_configuration_is_unavailable_and_releases_the_camera(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, camera_config):
        raise RuntimeError(f"Invalid camera configuration: {camera_config['main']}")

    monkeypatch.setattr(fake.Picamera2, "configure", refuse)
    with pytest.raises(SourceUnavailable, match="cannot be configured for 640x480@30.*Invalid camera"):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    assert "close" in fake.instances[-1].calls
    assert not fake.instances[-1].is_open


def test_a_stream_libcamera_changed_to_another_format_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    configure = fake.Picamera2.configure

    def to_yuyv(self, camera_config):  # libcamera's validate() adjusts, picamera2 reports it back
        configure(self, camera_config)
        self.camera_config["main"]["format"] = "YUYV"

    monkeypatch.setattr(fake.Picamera2, "configure", to_yuyv)
    with pytest.raises(SourceUnavailable, match="delivers YUYV, not YUV420"):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    assert not fake.instances[-1].is_open


def test_a_size_libcamera_adjusted_is_scaled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    configure = fake.Picamera2.configure

    def to_vga(self, camera_config):
        camera_config = dict(camera_config, main=dict(camera_config["main"], size=(640, 480)))
        configure(self, camera_config)

    monkeypatch.setattr(fake.Picamera2, "configure", to_vga)
    source, cam = opened(320, 240)
    assert cam.camera_config["main"]["size"] == (640, 480)
    frame = source.read().frame
    source.close()
    assert (frame.format.name, frame.width, frame.height) == ("yuv420p", 320, 240)


def test_capture_failure_is_a_source_error() -> None:
    source, cam = opened()
    source.read()
    cam.capture_error = RuntimeError("Camera frontend has timed out!")
    with pytest.raises(SourceError, match="stopped delivering frames.*timed out"):
        source.read()
    source.close()
    assert "cancel_all_and_flush" in cam.calls and not cam.is_open


def test_a_vanished_camera_times_out_and_still_closes() -> None:
    source, cam = opened()
    source.read()
    cam.stalled = True  # cable pulled: no request completes any more
    with pytest.raises(SourceError, match="stopped delivering frames.*TimeoutError"):
        source.read()
    assert cam.capture_waits[-1] == PicameraVideo.CAPTURE_TIMEOUT
    source.close()
    assert cam.calls.index("cancel_all_and_flush") < cam.calls.index("stop")
    assert not cam.stop_would_hang and not cam.is_open


def test_close_is_safe_twice_and_before_open() -> None:
    PicameraVideo(640, 480, 30, picamera2_module=fake).close()
    source, cam = opened()
    source.close()
    source.close()
    assert cam.calls[:4] == ["configure", "start", "stop", "close"]
    assert cam.calls.count("close") == 1 and not cam.is_open
