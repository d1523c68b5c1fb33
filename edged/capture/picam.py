"""Raspberry Pi camera (CSI) through picamera2 / libcamera.

The main stream is configured as YUV420 at the recording size, so frames need no colour
conversion, only the removal of the row padding libcamera may add. Each frame's time is the
request's ``SensorTimestamp`` metadata (nanoseconds). libcamera documents that control as
CLOCK_BOOTTIME; the Raspberry Pi pipeline stamps it from the V4L2 buffers, which are
CLOCK_MONOTONIC, and picamera2 itself compares it with ``time.monotonic_ns()``
(``Picamera2.capture_request(flush=True)``). The two clocks differ only by time spent in
suspend, which a running bodycam never is, so the timestamps share ``time.monotonic()``'s clock.

USB cameras, which libcamera lists too, are left to the v4l2 source.
"""

from __future__ import annotations

import logging
import time
from types import ModuleType
from typing import Any

import av
import numpy as np

from edged.capture.base import SourceError, SourceUnavailable, VideoSample, to_target

log = logging.getLogger("edged.capture.picam")


class PicameraVideo:
    name = "picamera2"

    #: picamera2's own default for video configurations (``create_video_configuration``).
    BUFFER_COUNT = 6
    #: How long a frame may take before the camera counts as gone (a camera whose cable is
    #: pulled stops completing requests; without a timeout ``capture_request`` waits forever).
    CAPTURE_TIMEOUT = 5.0

    def __init__(self, width: int, height: int, fps: int, picamera2_module: ModuleType | Any = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self._module = picamera2_module
        self._camera: Any = None
        self._stream: dict[str, Any] = {}
        self._stalled = False

    def open(self) -> None:
        module = self._module if self._module is not None else _import_picamera2()
        picamera2_cls = module.Picamera2
        try:
            cameras = picamera2_cls.global_camera_info()
        except Exception as exc:
            raise SourceUnavailable(f"libcamera cannot list cameras: {exc!r}") from exc
        # Picamera2(n) takes an index into global_camera_info(), which lists USB cameras last.
        index = next((i for i, cam in enumerate(cameras) if "/usb" not in cam.get("Id", "")), None)
        if index is None:
            models = ", ".join(c.get("Model", "?") for c in cameras)
            usb = f" (only USB cameras: {models}; the v4l2 source takes those)" if cameras else ""
            raise SourceUnavailable("libcamera found no Raspberry Pi camera" + usb)
        model = cameras[index].get("Model", "?")
        try:
            camera = picamera2_cls(index)
        except Exception as exc:
            raise SourceUnavailable(f"camera {model} cannot be opened (busy?): {exc!r}") from exc
        try:
            self._stream = self._configure(module, camera)
            camera.start()  # show_preview=False: picamera2 runs its NullPreview event loop for us
        except Exception as exc:
            _close_quietly(camera)
            if isinstance(exc, SourceUnavailable):
                raise
            raise SourceUnavailable(
                f"camera {model} cannot be configured for {self.width}x{self.height}@{self.fps}: {exc!r}"
            ) from exc
        self._camera = camera
        self._stalled = False
        log.info("picamera2: %s, main stream %s", model, self._stream)

    def _configure(self, module: Any, camera: Any) -> dict[str, Any]:
        frame_us = int(1_000_000 / self.fps)  # what picamera2's "FrameRate" control expands to
        config = camera.create_video_configuration(
            main={"size": (self.width, self.height), "format": "YUV420"},
            buffer_count=self.BUFFER_COUNT,
            # VP8 knows one colour space, BT.601; picamera2 would pick Rec709 from 1280x720 up.
            colour_space=module.libcamera.ColorSpace.Smpte170m(),
            controls={"FrameDurationLimits": (frame_us, frame_us)},
        )
        camera.configure(config)
        stream = dict(camera.camera_configuration()["main"])  # as libcamera adjusted it
        if stream["format"] != "YUV420":
            raise SourceUnavailable(f"camera delivers {stream['format']}, not YUV420")
        return stream

    def read(self) -> VideoSample:
        assert self._camera is not None, "open() first"
        try:
            request = self._camera.capture_request(wait=self.CAPTURE_TIMEOUT)
        except Exception as exc:  # TimeoutError when no frame came, RuntimeError from libcamera
            self._stalled = True
            raise SourceError(f"camera stopped delivering frames: {exc!r}") from exc
        try:
            array = request.make_array("main")
            timestamp_ns = request.get_metadata().get("SensorTimestamp")
        except Exception as exc:
            raise SourceError(f"camera frame unreadable: {exc!r}") from exc
        finally:
            request.release()  # the buffer goes back to the camera whatever happened
        width, height = self._stream["size"]
        frame = to_target(yuv420_frame(array, width, height), self.width, self.height)
        t = timestamp_ns / 1e9 if timestamp_ns is not None else time.monotonic()
        return VideoSample(frame, t)

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        if self._stalled:
            # A capture job that timed out is still queued and would block stop() forever.
            _call_quietly(camera.cancel_all_and_flush)
        _close_quietly(camera)


def yuv420_frame(array: np.ndarray, width: int, height: int) -> av.VideoFrame:
    """A frame from picamera2's YUV420 array: ``height * 3 / 2`` rows of ``stride`` bytes.

    The buffer holds Y (``height`` rows of ``stride``), then U and V (``height / 2`` rows of
    ``stride / 2`` each), as picamera2's ``Helpers._make_array_shared`` and
    ``converters.YUV420_to_RGB`` read it; bytes past ``width`` in a row are padding.
    """
    stride = array.shape[1]
    if stride == width:
        return av.VideoFrame.from_ndarray(array, format="yuv420p")
    flat = array.reshape(-1)
    y_size, c_stride, c_rows = height * stride, stride // 2, height // 2
    c_size = c_rows * c_stride
    y = flat[:y_size].reshape(height, stride)[:, :width]
    u = flat[y_size : y_size + c_size].reshape(c_rows, c_stride)[:, : width // 2]
    v = flat[y_size + c_size : y_size + 2 * c_size].reshape(c_rows, c_stride)[:, : width // 2]
    packed = np.concatenate((y.ravel(), u.ravel(), v.ravel())).reshape(height * 3 // 2, width)
    return av.VideoFrame.from_ndarray(packed, format="yuv420p")


def _import_picamera2() -> ModuleType:
    try:
        import picamera2
    except ImportError as exc:
        raise SourceUnavailable(f"picamera2 is not installed (apt install python3-picamera2): {exc}") from exc
    except Exception as exc:  # libcamera bindings present but broken
        raise SourceUnavailable(f"picamera2 cannot be imported: {exc!r}") from exc
    return picamera2


def _close_quietly(camera: Any) -> None:
    _call_quietly(camera.stop)
    _call_quietly(camera.close)


def _call_quietly(method: Any) -> None:
    try:
        method()
    except Exception as exc:  # noqa: BLE001 - closing a camera: whatever the library raises, go on
        log.warning("picamera2: %s failed: %r", getattr(method, "__name__", method), exc)
