"""The picamera2 source, run against tests/support/fakes/fake_picamera2.py (no camera here). The
same source against the real picamera2 and libcamera: tests/system/test_picamera2_real.py."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from edged.capture.base import SourceError, SourceUnavailable
from edged.capture.pacing import FrameGate
from edged.capture.picam import CameraInUse, PicameraVideo
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
    # SensorTimestamp: when the frame's exposure started, up to a frame period before it arrived
    assert before - 1 / 30 <= times[0] and times[-1] <= after
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

    def broken(self):
        raise RuntimeError("failed to find buffer")  # request.py: _MappedBuffer.__enter__

    monkeypatch.setattr(fake.MappedArray, "__enter__", broken)
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
    with pytest.raises(
        SourceUnavailable, match=r"refused the configuration \(main stream YUV420 640x480.*Invalid camera"
    ):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    assert "close" in fake.instances[-1].calls
    assert not fake.instances[-1].is_open


def test_a_stream_libcamera_changed_to_another_format_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    configure = fake.Picamera2.configure

    def to_yuyv(self, camera_config):  # libcamera's validate() adjusts, picamera2 reports it back
        configure(self, camera_config)
        self.camera_config["main"]["format"] = "YUYV"

    monkeypatch.setattr(fake.Picamera2, "configure", to_yuyv)
    with pytest.raises(SourceUnavailable, match="delivers YUYV where YUV420 was asked for; edged reads YUV420, NV12"):
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


def test_a_vanished_camera_times_out_and_still_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PicameraVideo, "CAPTURE_TIMEOUT", 0.2)
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


# --- NV12, as libcamera's virtual camera (and other pipelines) deliver it ------------------------


@pytest.mark.parametrize("size", [(640, 480), (200, 120)])  # 200 wide: rows of 256 bytes, 56 of padding
def test_nv12_frames_become_yuv420p(size: tuple[int, int]) -> None:
    fake.FORMATS[:] = ["NV12"]  # libcamera adjusts the YUV420 edged asks for to what the pipeline makes
    width, height = size
    source, cam = opened(width, height)
    assert (
        cam.camera_config["main"]["format"] == "NV12" and cam.camera_config["main"]["stride"] == -(-width // 128) * 128
    )
    first = source.read().frame
    second = source.read().frame  # the first one's camera buffer is reused (overwritten) by now
    source.close()
    ys, xs = np.mgrid[0:height, 0:width]
    cys, cxs = np.mgrid[0 : height // 2, 0 : width // 2]
    for n, frame in enumerate((first, second)):
        assert (frame.format.name, frame.width, frame.height) == ("yuv420p", width, height)
        y, u, v = planes(frame)
        assert np.array_equal(y, (xs + ys + 3 * n) % 256)
        assert np.array_equal(u, (2 * cxs + n) % 256)
        assert np.array_equal(v, (2 * cys + 64) % 256)
    assert (cam.captured, cam.released) == (2, 2)


def test_nv12_at_a_size_libcamera_adjusted_is_scaled_in_the_same_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    fake.FORMATS[:] = ["NV12"]
    configure = fake.Picamera2.configure

    def to_vga(self, camera_config):
        configure(self, dict(camera_config, main=dict(camera_config["main"], size=(640, 480))))

    monkeypatch.setattr(fake.Picamera2, "configure", to_vga)
    source, _ = opened(320, 240)
    frame = source.read().frame
    source.close()
    assert (frame.format.name, frame.width, frame.height) == ("yuv420p", 320, 240)
    y, _, v = planes(frame)
    assert abs(int(y[10, 10]) - (20 + 20) % 256) <= 3  # luma at (20, 20) of the 640x480 frame
    assert abs(int(v[5, 0]) - (2 * 10 + 64)) <= 3


def test_a_format_edged_cannot_read_is_unavailable_and_releases_the_camera() -> None:
    fake.FORMATS[:] = ["XBGR8888"]
    with pytest.raises(SourceUnavailable, match="delivers XBGR8888 where YUV420 was asked for"):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    assert not fake.instances[-1].is_open


# --- the frame rate: asked for where the camera takes it, kept by edged where it does not --------


def test_a_camera_without_frame_duration_limits_is_configured_without_them() -> None:
    fake.CONTROLS.pop("FrameDurationLimits")  # a camera that does not advertise it (the real library would refuse it)
    fake.FREE_RUN_FPS = 60.0
    source, cam = opened(320, 240, 30)
    assert "FrameDurationLimits" not in cam.camera_config["controls"]
    samples = [source.read() for _ in range(4)]
    source.close()
    assert source.frames_skipped >= 2  # the 60 frames a second are thinned to 30
    assert all(b.time - a.time > 1 / 60 for a, b in zip(samples[1:], samples[2:]))


def test_the_virtual_camera_takes_the_frame_rate_it_then_ignores() -> None:
    fake.virtual_camera()
    source, cam = opened(640, 480, 10)
    assert cam.camera_config["controls"] == {"FrameDurationLimits": (100000, 100000)}
    assert cam.camera_config["main"]["format"] == "NV12"
    source.close()


def test_a_camera_faster_than_asked_is_thinned_to_the_configured_rate() -> None:
    fake.virtual_camera()  # about 300 frames a second whatever is asked
    source, cam = opened(320, 240, 10)
    samples = [source.read() for _ in range(6)]
    source.close()
    # Frame n is the first of the camera's frames whose time rounds to n / 10 s after the first
    # (the recorder's numbering): from n = 1 on, half a period before its nominal time.
    offsets = [(s.time - samples[0].time) * 10 - n for n, s in enumerate(samples)]
    assert offsets[0] == 0 and all(-0.5 <= o <= -0.5 + 10 / 300 + 1e-6 for o in offsets[1:]), offsets
    assert source.frames_skipped >= 5 * 25  # the ~29 extra frames per kept one went back unread
    assert cam.captured == cam.released == source.frames_skipped + 6


def test_frames_at_the_configured_rate_all_pass() -> None:
    gate = FrameGate(30)
    jitter = [0.0, 0.004, -0.006, 0.012, -0.015, 0.0]
    assert all(gate.admit(100.0 + n / 30 + j) for n, j in enumerate(jitter))
    assert not gate.admit(100.0 + 5 / 30 + 0.01) and gate.skipped == 1  # a second frame in slot 5
    assert not gate.admit(99.0)  # time going back is never a new frame


def test_timestamps_that_stop_advancing_are_a_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    source, cam = opened(320, 240, 30)
    stuck = int(source.read().time * 1e9)
    monkeypatch.setattr(PicameraVideo, "CAPTURE_TIMEOUT", 0.3)
    get_metadata = fake.CompletedRequest.get_metadata
    monkeypatch.setattr(
        fake.CompletedRequest, "get_metadata", lambda self: get_metadata(self) | {"SensorTimestamp": stuck}
    )
    with pytest.raises(SourceError, match="SensorTimestamp has not advanced"):
        source.read()
    assert cam.captured == cam.released
    source.close()


# --- why a camera cannot be opened, in words that say it --------------------------------------


def test_a_camera_held_by_another_process_is_said_to_be_in_use() -> None:
    fake.IN_USE = True
    with pytest.raises(CameraInUse, match=r"imx708 is in use by another process \(Failed to acquire camera: Device"):
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()


def test_a_refused_raw_stream_is_named_not_called_busy() -> None:
    fake.virtual_camera()
    fake.RAW_ROLE = False  # libcamera's virtual pipeline: generate_configuration([Raw]) is None
    with pytest.raises(SourceUnavailable) as info:
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    said = str(info.value)
    assert not isinstance(info.value, CameraInUse) and "busy" not in said
    assert "edged-virtual cannot be opened: libcamera refused the Raw stream role picamera2 probes" in said
    assert "'NoneType' object has no attribute 'at'" in said


def test_another_open_failure_names_its_cause_and_where(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self):
        raise ValueError("tuning file unreadable")

    monkeypatch.setattr(fake.Picamera2, "_get_raw_modes", broken)
    with pytest.raises(SourceUnavailable) as info:
        PicameraVideo(640, 480, 30, picamera2_module=fake).open()
    said = str(info.value)
    assert "did not complete.: ValueError('tuning file unreadable') in picamera2's _open_camera" in said
    assert "busy" not in said


def test_a_missing_dependency_of_picamera2_is_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed picamera2 whose import of kms++ fails, as the real one's does without python3-kms++.
    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text("import pykms  # previews/drm_preview.py\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    monkeypatch.setitem(sys.modules, "pykms", None)
    with pytest.raises(SourceUnavailable) as info:
        PicameraVideo(640, 480, 30).open()
    said = str(info.value)
    assert "not installed" not in said
    assert "picamera2 is installed but cannot be imported: its dependency pykms is missing" in said
    assert "apt install python3-kms++" in said
