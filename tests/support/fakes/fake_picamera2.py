"""A stand-in for the ``picamera2`` package, for machines without a Raspberry Pi camera.

It mirrors the parts of picamera2's API that ``edged.capture.picam`` uses, as the real source
(github.com/raspberrypi/picamera2, read at commit 3e6dff0) defines them: the same class and
method names, signatures, configuration dictionaries, metadata keys and array shapes. Each
method names the real function it mirrors. Instead of a sensor it paints a moving gradient.

The fake is a module with state, like the real one (whose camera manager is a class
attribute): tests call ``reset()``, adjust ``CAMERAS`` / ``OPEN_ERROR``, and inspect or rig
``instances[-1]`` (``stalled``, ``capture_error``, ``omit_timestamp``, ``released``, ...).
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np

# --- what libcamera would report ------------------------------------------------------------

#: ``Picamera2.global_camera_info()`` entries (picamera2.py: ``GlobalCameraInfo``).
CSI_CAMERA: dict[str, Any] = {
    "Model": "imx708",
    "Location": 2,
    "Rotation": 180,
    "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a",
    "Num": 0,
}
USB_CAMERA: dict[str, Any] = {
    "Model": "HD Pro Webcam C920",
    "Location": 2,
    "Rotation": 0,
    "Id": "/base/axi/pcie@120000/rp1/usb@200000-1:1.0-046d:082d",
    "Num": 1,
}

CAMERAS: list[dict[str, Any]] = []
#: Raised by ``Picamera2.__init__`` when set (the real one raises RuntimeError when the camera
#: is busy: "Camera __init__ sequence did not complete.").
OPEN_ERROR: BaseException | None = None
instances: list[Picamera2] = []

# picamera2/formats.py: YUV_FORMATS, RGB_FORMATS
YUV_FORMATS = {"NV21", "NV12", "YUV420", "YVU420", "YVYU", "YUYV", "UYVY", "VYUY"}
RGB_FORMATS = {"BGR888", "RGB888", "XBGR8888", "XRGB8888", "RGB161616", "BGR161616"}


def reset() -> None:
    global OPEN_ERROR
    CAMERAS[:] = [dict(CSI_CAMERA)]
    OPEN_ERROR = None
    instances.clear()


reset()


class _ColorSpace:
    """libcamera.ColorSpace: picamera2 re-exports the ``libcamera`` module it imports."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"

    @staticmethod
    def Sycc() -> _ColorSpace:
        return _ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> _ColorSpace:
        return _ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> _ColorSpace:
        return _ColorSpace("Rec709")


#: ``picamera2.libcamera`` (picamera2/__init__.py: ``import libcamera``).
libcamera = SimpleNamespace(ColorSpace=_ColorSpace)


def _yuv420_stride(width: int) -> int:
    """Row length of a YUV420 buffer. picamera2's ``align_stream`` explains the hardware: every
    plane is a multiple of 64 bytes wide (Pi 5), and U/V rows are half the Y stride."""
    return -(-width // 128) * 128


class CompletedRequest:
    """picamera2/request.py: ``CompletedRequest``."""

    def __init__(self, picam2: Picamera2, index: int) -> None:
        self.picam2 = picam2
        self.ref_count = 1
        self.config = dict(picam2.camera_config)
        self._index = index
        self._timestamp_ns = time.monotonic_ns()

    def release(self) -> None:
        """request.py: ``CompletedRequest.release`` (reference counted; negative raises)."""
        self.ref_count -= 1
        if self.ref_count < 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        if self.ref_count == 0:
            self.picam2.released += 1
            self.config = {}

    def get_metadata(self) -> dict[str, Any]:
        """request.py: ``CompletedRequest.get_metadata`` - libcamera control names as keys;
        SensorTimestamp in ns, ExposureTime and FrameDuration in us."""
        if self.ref_count <= 0:
            raise AssertionError("request used after release")  # real: `assert self.request is not None`
        frame_us = self.picam2.camera_config["controls"]["FrameDurationLimits"][0]
        metadata: dict[str, Any] = {
            "ExposureTime": frame_us // 2,
            "FrameDuration": frame_us,
            "AnalogueGain": 1.0,
            "DigitalGain": 1.0,
            "Lux": 400.0,
        }
        if not self.picam2.omit_timestamp:
            metadata["SensorTimestamp"] = self._timestamp_ns
        return metadata

    def make_array(self, name: str) -> np.ndarray:
        """request.py: ``CompletedRequest.make_array`` via ``Helpers._make_array_shared``:
        YUV420 comes back as one (height * 3 // 2, stride) uint8 array, padding included."""
        config = self.config.get(name)
        if config is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        if config["format"] != "YUV420":
            raise NotImplementedError("the fake paints YUV420 only")
        width, height = config["size"]
        return paint_yuv420(width, height, config["stride"], self._index)


def paint_yuv420(width: int, height: int, stride: int, index: int) -> np.ndarray:
    """Frame ``index`` of the test pattern, laid out as libcamera's YUV420 buffer.

    Y = x + y + 3 * index, U = 2 * x + index, V = 2 * y + 64 (mod 256; chroma coordinates for
    U and V); padding bytes are 0xEE, so a consumer that keeps them is caught.
    """
    buffer = np.full(stride * height * 3 // 2, 0xEE, dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    buffer[: height * stride].reshape(height, stride)[:, :width] = (xs + ys + 3 * index) % 256
    c_stride, c_rows, c_size = stride // 2, height // 2, (stride // 2) * (height // 2)
    cys, cxs = np.mgrid[0:c_rows, 0 : width // 2]
    u = buffer[height * stride : height * stride + c_size].reshape(c_rows, c_stride)
    v = buffer[height * stride + c_size : height * stride + 2 * c_size].reshape(c_rows, c_stride)
    u[:, : width // 2] = (2 * cxs + index) % 256
    v[:, : width // 2] = (2 * cys + 64) % 256
    return buffer.reshape(height * 3 // 2, stride)


class Picamera2:
    """picamera2/picamera2.py: ``Picamera2``."""

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        """picamera2.py: ``Picamera2.global_camera_info`` - sorted with USB cameras last."""
        return sorted((dict(c) for c in CAMERAS), key=lambda cam: ("/usb" not in cam["Id"], cam["Id"]), reverse=True)

    def __init__(
        self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None, allocator: Any = None
    ) -> None:
        """picamera2.py: ``Picamera2.__init__`` - ``camera_num`` indexes global_camera_info()."""
        self.is_open = False
        self.camera_info = self.global_camera_info()[camera_num]  # IndexError, as the real one
        if OPEN_ERROR is not None:
            raise OPEN_ERROR
        self.is_open = True
        self.camera_config: dict[str, Any] = {}
        self.camera_controls = {
            "FrameDurationLimits": (33333, 120000, None),
            "NoiseReductionMode": (0, 4, 0),
            "ExposureTime": (1, 66666, None),
            "AnalogueGain": (1.0, 16.0, None),
        }
        self.started = False
        self.event_loop_running = False
        self.calls: list[str] = []
        self.captured = 0
        self.released = 0
        self.capture_waits: list[Any] = []
        #: The camera stops completing requests, as one whose cable is pulled does.
        self.stalled = False
        #: Raised by the capture job itself (it then leaves the job queue, as in Job.execute).
        self.capture_error: BaseException | None = None
        self.omit_timestamp = False
        self.pending_jobs = 0
        self.stop_would_hang = False
        instances.append(self)

    @staticmethod
    def align_stream(stream_config: dict[str, Any], optimal: bool = True) -> None:
        """picamera2.py: ``Picamera2.align_stream`` (``optimal=False``: even sizes only)."""
        size = stream_config["size"]
        stream_config["size"] = (size[0] - size[0] % 2, size[1] - size[1] % 2)

    def create_video_configuration(
        self,
        main: dict[str, Any] = {},
        lores: Any = None,
        raw: Any = {},
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] = {},
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: Any = {},
        use_case: str = "video",
    ) -> dict[str, Any]:
        """picamera2.py: ``Picamera2.create_video_configuration`` (and
        ``_make_initial_stream_config`` for the main stream)."""
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        stream = {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}
        for key, value in main.items():
            if key not in ("format", "size", "stride", "preserve_ar"):
                raise ValueError(
                    f"Bad key {key!r}: valid stream configuration keys are ('format', 'size', 'stride', 'preserve_ar')"
                )
            stream[key] = value
        self.align_stream(stream, optimal=False)
        if colour_space is None:
            small = stream["size"][0] < 1280 or stream["size"][1] < 720
            colour_space = _ColorSpace.Smpte170m() if small else _ColorSpace.Rec709()
        controls = {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)} | controls
        return {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "lores": lores,
            "raw": raw,
            "controls": controls,
            "sensor": sensor,
            "display": display,
            "encode": encode,
        }

    def configure(self, camera_config: Any = None) -> None:
        """picamera2.py: ``Picamera2.configure`` / ``configure_`` / ``check_stream_config`` -
        validates, then fills in stride and framesize as libcamera does."""
        self.calls.append("configure")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            raise TypeError("the fake takes a configuration dict only")
        config = dict(camera_config)
        main = dict(config["main"])
        fmt, size = main["format"], main["size"]
        if fmt not in YUV_FORMATS and fmt not in RGB_FORMATS and fmt != "MJPEG":
            raise RuntimeError(f"Bad format {fmt} in stream main")
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in main stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")
        for name in config["controls"]:
            if name != "FrameRate" and name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        if fmt == "YUV420":
            main["stride"] = _yuv420_stride(size[0])
            main["framesize"] = main["stride"] * size[1] * 3 // 2
        config["main"] = main
        self.camera_config = config

    def camera_configuration(self) -> dict[str, Any]:
        """picamera2.py: ``Picamera2.camera_configuration``."""
        return self.camera_config

    def start(self, config: Any = None, show_preview: Any = False) -> None:
        """picamera2.py: ``Picamera2.start`` - ``show_preview=None`` starts no event loop, and
        then no request ever completes."""
        self.calls.append("start")
        if not self.camera_config and config is None:
            config = "preview"
        if config is not None:
            self.configure(config)
        if show_preview is not None:
            self.event_loop_running = True
        self.started = True

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> CompletedRequest:
        """picamera2.py: ``Picamera2.capture_request`` through ``dispatch_functions`` and
        ``Job.get_result``: a numeric ``wait`` is a timeout, after which
        concurrent.futures.TimeoutError (the builtin TimeoutError) is raised; the job stays
        queued until ``cancel_all_and_flush``."""
        self.capture_waits.append(wait)
        if not self.started:
            raise RuntimeError("the fake camera was not started")  # real: waits forever
        if self.capture_error is not None:
            raise self.capture_error
        if self.stalled or not self.event_loop_running:
            if wait is None or wait is True:
                raise AssertionError("capture_request without a timeout: the real one waits forever")
            self.pending_jobs += 1
            raise TimeoutError()
        frame_s = self.camera_config["controls"]["FrameDurationLimits"][0] / 1e6
        time.sleep(frame_s / 10)  # a little real time passes between frames
        request = CompletedRequest(self, self.captured)
        self.captured += 1
        return request

    def cancel_all_and_flush(self) -> None:
        """picamera2.py: ``Picamera2.cancel_all_and_flush``."""
        self.calls.append("cancel_all_and_flush")
        self.pending_jobs = 0

    def stop(self) -> None:
        """picamera2.py: ``Picamera2.stop`` / ``stop_`` - stop is dispatched as a job to the event
        loop, behind any job still queued: with one pending it would never return."""
        self.calls.append("stop")
        if not self.started:
            return
        if self.pending_jobs and self.event_loop_running:
            self.stop_would_hang = True
        self.started = False

    def close(self) -> None:
        """picamera2.py: ``Picamera2.close`` - stops, then releases the camera; idempotent."""
        self.calls.append("close")
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.camera_config = {}
