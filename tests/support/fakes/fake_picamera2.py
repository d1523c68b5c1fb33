"""A stand-in for the ``picamera2`` package, for machines without a Raspberry Pi camera.

It mirrors the parts of picamera2's API that ``edged.capture.picam`` uses, as the real source
(github.com/raspberrypi/picamera2, read at commit 3e6dff0, and PyPI 0.3.38) defines them: the same
class and method names, signatures, configuration dictionaries, metadata keys, array shapes and
exception chains. Each method names the real function it mirrors. Instead of a sensor it paints a
moving gradient, one frame per frame duration, stamped as a sensor stamps it.

What the real library did against libcamera's virtual camera (tests/system/test_picamera2_real.py
runs edged against it) is reproduced by the knobs below: a camera whose pipeline delivers NV12
only (``FORMATS``), advertises FrameDurationLimits but ignores it (``CONTROLS``,
``IGNORES_FRAME_DURATION``, ``FREE_RUN_FPS``), refuses the Raw stream role picamera2 probes in
``__init__`` (``RAW_ROLE``), or is held by another process (``IN_USE``); ``virtual_camera()``
sets the virtual camera's own.

The fake is a module with state, like the real one (whose camera manager is a class
attribute): tests call ``reset()``, adjust the knobs, and inspect or rig ``instances[-1]``
(``stalled``, ``capture_error``, ``omit_timestamp``, ``released``, ...).
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
#: Raised by ``Picamera2.__init__`` when set, as it is.
OPEN_ERROR: BaseException | None = None
#: The pixel formats the camera's pipeline produces for the main stream; libcamera's
#: ``CameraConfiguration.validate()`` adjusts any other to the first (the virtual camera: NV12).
FORMATS: list[str] = []
#: ``Camera.controls`` as picamera2's ``camera_controls`` shows them: name -> (min, max, default).
IMX708_CONTROLS: dict[str, tuple[Any, Any, Any]] = {
    "FrameDurationLimits": (33333, 120000, None),
    "NoiseReductionMode": (0, 4, 0),
    "ExposureTime": (1, 66666, None),
    "AnalogueGain": (1.0, 16.0, None),
}
CONTROLS: dict[str, tuple[Any, Any, Any]] = {}
#: Frames per second when no FrameDurationLimits is in force (the virtual camera: as fast as it can).
FREE_RUN_FPS = 30.0
#: True: the camera takes FrameDurationLimits without complaint and runs at FREE_RUN_FPS anyway.
IGNORES_FRAME_DURATION = False
#: False: ``generate_configuration([StreamRole.Raw])`` returns None, as libcamera's virtual
#: pipeline does (a camera without a raw sensor mode).
RAW_ROLE = True
#: True: another process holds the camera; ``Camera.acquire()`` fails with EBUSY.
IN_USE = False
instances: list[Picamera2] = []

# picamera2/formats.py: YUV_FORMATS, RGB_FORMATS
YUV_FORMATS = {"NV21", "NV12", "YUV420", "YVU420", "YVYU", "YUYV", "UYVY", "VYUY"}
RGB_FORMATS = {"BGR888", "RGB888", "XBGR8888", "XRGB8888", "RGB161616", "BGR161616"}


def reset() -> None:
    global OPEN_ERROR, FREE_RUN_FPS, RAW_ROLE, IN_USE, IGNORES_FRAME_DURATION
    CAMERAS[:] = [dict(CSI_CAMERA)]
    OPEN_ERROR = None
    FORMATS[:] = ["YUV420", "YVU420", "NV12", "NV21", "XBGR8888", "XRGB8888", "BGR888", "RGB888"]
    CONTROLS.clear()
    CONTROLS.update(IMX708_CONTROLS)
    FREE_RUN_FPS, RAW_ROLE, IN_USE, IGNORES_FRAME_DURATION = 30.0, True, False, False
    instances.clear()


def virtual_camera() -> None:
    """libcamera 0.4.0's virtual pipeline as the real picamera2 met it: NV12 only; it advertises
    FrameDurationLimits (and FaceDetectMode, no NoiseReductionMode) but makes frames as fast as it
    can whatever is asked (300-800 a second measured)."""
    global FREE_RUN_FPS, IGNORES_FRAME_DURATION
    CAMERAS[:] = [{"Location": 1, "Model": "edged-virtual", "Id": "Virtual0", "Num": 0}]
    FORMATS[:] = ["NV12"]
    CONTROLS.clear()
    CONTROLS.update({"FrameDurationLimits": (33333, 100000, None), "FaceDetectMode": (0, 0, 0)})
    FREE_RUN_FPS, IGNORES_FRAME_DURATION = 300.0, True


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


def _stride(width: int) -> int:
    """Row length of a 4:2:0 buffer. picamera2's ``align_stream`` explains the hardware: every
    plane is a multiple of 64 bytes wide (Pi 5), and YUV420's U/V rows are half the Y stride."""
    return -(-width // 128) * 128


def _make_array_shared(buffer: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """request.py: ``Helpers._make_array_shared`` for the 4:2:0 formats - a view, never a copy."""
    fmt, (w, h), stride = config["format"], config["size"], config["stride"]
    if fmt in ("YUV420", "YVU420"):
        return buffer.reshape((h * 3 // 2, stride))  # padding left in
    if fmt in ("NV12", "NV21"):
        return buffer.reshape((h * 3 // 2, stride))[:, :w]  # UV rows as long as Y rows: sliced
    raise NotImplementedError(f"the fake paints 4:2:0 formats only, not {fmt}")


#: Bytes a released buffer is overwritten with, as the camera reuses it for a later frame: a
#: frame that still points into camera memory after ``release()`` shows it.
REUSED = 0xDD


class CompletedRequest:
    """picamera2/request.py: ``CompletedRequest``."""

    def __init__(self, picam2: Picamera2, index: int, timestamp_ns: int) -> None:
        self.picam2 = picam2
        self.ref_count = 1
        self.config = dict(picam2.camera_config)
        self._index = index
        self._timestamp_ns = timestamp_ns
        main = self.config["main"]
        self.buffer = paint(main["format"], *main["size"], main["stride"], index)  # the camera's buffer
        self.mapped = 0  # MappedArray contexts open on it now

    def release(self) -> None:
        """request.py: ``CompletedRequest.release`` (reference counted; negative raises)."""
        self.ref_count -= 1
        if self.ref_count < 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        if self.ref_count == 0:
            if self.mapped:
                raise AssertionError("request released while a MappedArray of it is open")
            self.picam2.released += 1
            self.config = {}
            self.buffer[:] = REUSED  # back to the camera, which fills it with another frame

    def get_metadata(self) -> dict[str, Any]:
        """request.py: ``CompletedRequest.get_metadata`` - libcamera control names as keys;
        SensorTimestamp in ns, ExposureTime and FrameDuration in us."""
        if self.ref_count <= 0:
            raise AssertionError("request used after release")  # real: `assert self.request is not None`
        frame_us = round(self.picam2.frame_interval_s() * 1e6)
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
        """request.py: ``CompletedRequest.make_array`` - a copy of ``_make_array_shared``'s view
        (contiguous: NV12's row padding is gone, YUV420's kept)."""
        config = self.config.get(name)
        if config is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return np.ascontiguousarray(_make_array_shared(self.buffer, config))


class MappedArray:
    """request.py: ``MappedArray`` - the stream's buffer as ``_make_array_shared`` shapes it,
    without a copy, valid inside the ``with`` block only."""

    def __init__(self, request: CompletedRequest, stream: str, reshape: bool = True, write: bool = True) -> None:
        if request.ref_count <= 0:
            raise AssertionError("request used after release")  # _MappedBuffer: `assert request.request`
        self.__request = request
        self.__stream = stream
        self.__write = write
        self.__reshape = reshape
        self.__array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        request = self.__request
        config = request.config[self.__stream]
        array = request.buffer if self.__write else request.buffer.view()
        if not self.__write:
            array.flags.writeable = False  # mmap'ed PROT_READ
        self.__array = _make_array_shared(array, config) if self.__reshape else array
        request.mapped += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self.__array = None
        self.__request.mapped -= 1

    @property
    def array(self) -> np.ndarray | None:
        return self.__array


def paint(fmt: str, width: int, height: int, stride: int, index: int) -> np.ndarray:
    """Frame ``index`` of the test pattern, laid out as libcamera's buffer of ``fmt``.

    Y = x + y + 3 * index, U = 2 * x + index, V = 2 * y + 64 (mod 256; chroma coordinates for
    U and V); padding bytes are 0xEE, so a consumer that keeps them is caught. YUV420: Y rows
    of ``stride``, then U and V rows of ``stride / 2``; NV12: Y, then rows of ``stride`` holding
    U and V interleaved (NV21: V first).
    """
    buffer = np.full(stride * height * 3 // 2, 0xEE, dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    buffer[: height * stride].reshape(height, stride)[:, :width] = (xs + ys + 3 * index) % 256
    c_rows = height // 2
    cys, cxs = np.mgrid[0:c_rows, 0 : width // 2]
    u_values, v_values = (2 * cxs + index) % 256, (2 * cys + 64) % 256
    if fmt in ("YUV420", "YVU420"):
        c_stride, c_size = stride // 2, (stride // 2) * c_rows
        first = buffer[height * stride : height * stride + c_size].reshape(c_rows, c_stride)
        second = buffer[height * stride + c_size : height * stride + 2 * c_size].reshape(c_rows, c_stride)
        u, v = (first, second) if fmt == "YUV420" else (second, first)
        u[:, : width // 2], v[:, : width // 2] = u_values, v_values
    elif fmt in ("NV12", "NV21"):
        uv = buffer[height * stride :].reshape(c_rows, stride)
        u_at, v_at = (0, 1) if fmt == "NV12" else (1, 0)
        uv[:, u_at:width:2], uv[:, v_at:width:2] = u_values, v_values
    else:
        raise NotImplementedError(f"the fake paints 4:2:0 formats only, not {fmt}")
    return buffer


class _CameraConfiguration:
    """libcamera's CameraConfiguration, for the one thing picamera2's ``_get_raw_modes`` reads."""

    def __init__(self, formats: list[str]) -> None:
        self.formats = formats

    def at(self, index: int) -> _CameraConfiguration:
        return self


class Picamera2:
    """picamera2/picamera2.py: ``Picamera2``."""

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        """picamera2.py: ``Picamera2.global_camera_info`` - sorted with USB cameras last."""
        return sorted((dict(c) for c in CAMERAS), key=lambda cam: ("/usb" not in cam["Id"], cam["Id"]), reverse=True)

    def __init__(
        self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None, allocator: Any = None
    ) -> None:
        """picamera2.py: ``Picamera2.__init__`` - ``camera_num`` indexes global_camera_info(); any
        failure while opening is re-raised as "Camera __init__ sequence did not complete." from
        its cause."""
        self.is_open = False
        self.camera_info = self.global_camera_info()[camera_num]  # IndexError, as the real one
        if OPEN_ERROR is not None:
            raise OPEN_ERROR
        self.camera_config: dict[str, Any] = {}
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
        self._next_frame_ns = 0
        instances.append(self)
        try:
            self._open_camera()
        except Exception as e:
            raise RuntimeError("Camera __init__ sequence did not complete.") from e

    def _open_camera(self) -> None:
        """picamera2.py: ``_open_camera`` -> ``_initialize_camera`` (which probes the raw modes)
        then ``self.camera.acquire()``."""
        self._raw_modes = self._get_raw_modes()
        if IN_USE:  # py_main.cpp: std::system_error(-ret, "Failed to acquire camera"), via pybind11
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        self.is_open = True

    def _get_raw_modes(self) -> list[dict[str, Any]]:
        """picamera2.py: ``_get_raw_modes`` - ``generate_configuration([StreamRole.Raw]).at(0)``;
        libcamera returns None for a role the pipeline refuses."""
        raw_config = _CameraConfiguration(["SRGGB10_CSI2P"]) if RAW_ROLE else None
        raw_formats = raw_config.at(0).formats  # type: ignore[union-attr]  # AttributeError, as the real one
        return [{"format": f, "size": (4608, 2592)} for f in raw_formats]

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        """picamera2.py: ``camera_controls`` - what libcamera advertises: name -> (min, max, default)."""
        return dict(CONTROLS)

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
        ``_make_initial_stream_config`` for the main stream); the default controls are added only
        when the camera advertises them."""
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
        if "NoiseReductionMode" in self.camera_controls and "FrameDurationLimits" in self.camera_controls:
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
        validates; libcamera's ``validate()`` adjusts a format the pipeline does not make to one it
        does, and fills in stride and framesize; then the controls are set (``Controls``: one the
        camera does not advertise raises)."""
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
        if fmt not in FORMATS:
            main["format"] = fmt = FORMATS[0]  # CameraConfiguration::Adjusted
        if fmt in ("YUV420", "YVU420", "NV12", "NV21"):
            main["stride"] = _stride(size[0])
            main["framesize"] = main["stride"] * size[1] * 3 // 2
        config["main"] = main
        for name in config["controls"]:
            if name != "FrameRate" and name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        self.camera_config = config

    def frame_interval_s(self) -> float:
        """The sensor's frame period: the FrameDurationLimits in force, if the camera takes them."""
        limits = self.camera_config.get("controls", {}).get("FrameDurationLimits")
        if limits is not None and "FrameDurationLimits" in CONTROLS and not IGNORES_FRAME_DURATION:
            return limits[0] / 1e6
        return 1 / FREE_RUN_FPS

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
        self._next_frame_ns = time.monotonic_ns()

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> CompletedRequest:
        """picamera2.py: ``Picamera2.capture_request`` through ``dispatch_functions`` and
        ``Job.get_result``: a numeric ``wait`` is a timeout, after which
        concurrent.futures.TimeoutError (the builtin TimeoutError) is raised; the job stays
        queued until ``cancel_all_and_flush``. The next frame completes one frame period after the
        last (its SensorTimestamp: when its exposure started); a late caller gets it at once."""
        self.capture_waits.append(wait)
        if not self.started:
            raise RuntimeError("the fake camera was not started")  # real: waits forever
        if self.capture_error is not None:
            raise self.capture_error
        if self.stalled or not self.event_loop_running:
            if wait is None or wait is True:
                raise AssertionError("capture_request without a timeout: the real one waits forever")
            self.pending_jobs += 1
            time.sleep(wait)  # Job.get_result(timeout=wait): the caller waits it out
            raise TimeoutError()
        period_ns = round(self.frame_interval_s() * 1e9)
        now = time.monotonic_ns()
        if self._next_frame_ns < now - 4 * period_ns:
            self._next_frame_ns = now - period_ns  # a slow reader: older frames were dropped by the camera
        timestamp = self._next_frame_ns
        delay = timestamp + period_ns - now  # the frame is complete one period after it started
        if delay > 0:
            time.sleep(delay / 1e9)
        self._next_frame_ns += period_ns
        request = CompletedRequest(self, self.captured, timestamp)
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
