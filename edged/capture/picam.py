"""Raspberry Pi camera (CSI) through picamera2 / libcamera.

The main stream is asked for as YUV420 at the recording size. libcamera may adjust the format:
its virtual camera (and other pipelines) deliver NV12 only, so NV12 is read too; each
frame is converted straight from the camera's buffer (picamera2's ``MappedArray``, no copy) into
the recorder's yuv420p by ``edged.capture.yuv``, and the buffer goes back to the camera at once.

Each frame's time is the request's ``SensorTimestamp`` metadata (nanoseconds). libcamera documents
that control as CLOCK_BOOTTIME; the Raspberry Pi pipeline stamps it from the V4L2 buffers, which are
CLOCK_MONOTONIC, and picamera2 itself compares it with ``time.monotonic_ns()``
(``Picamera2.capture_request(flush=True)``); libcamera's virtual camera stamps it from
CLOCK_MONOTONIC too. The two clocks differ only by time spent in suspend, which a running bodycam
never is, so the timestamps share ``time.monotonic()``'s clock.

The frame rate is asked for with ``FrameDurationLimits`` when the camera advertises that control.
A camera that does not, or ignores it (libcamera's virtual camera takes it and runs at hundreds of
frames a second), is thinned here: at most one frame per 1/fps slot of its own timestamps is kept
(``FrameGate``: the recorder's numbering), and the extra frames go back to the camera unread,
before any conversion is paid for. Each kept frame is then the first of its slot, up to half a
period before the slot's nominal time; its timestamp says so, and the recorder places it.

USB cameras, which libcamera lists too, are left to the v4l2 source.
"""

from __future__ import annotations

import errno
import logging
import time
import traceback
from types import ModuleType
from typing import TYPE_CHECKING, Any

from edged.capture.base import SourceError, SourceUnavailable, VideoSample
from edged.capture.pacing import FrameGate

if TYPE_CHECKING:  # imported once picamera2 is (both bring numpy; a machine without it never loads it)
    from edged.capture.yuv import YuvConverter

log = logging.getLogger("edged.capture.picam")

#: How to install what picamera2 imports, by module name (an ImportError's ``name``).
DEPENDENCY_FIX = {
    "pykms": "apt install python3-kms++ (Raspberry Pi OS; picamera2 imports kms++ for its DRM preview)",
    "kms": "apt install python3-kms++ (Raspberry Pi OS; picamera2 imports kms++ for its DRM preview)",
    "libcamera": "apt install python3-libcamera, and make the venv with --system-site-packages so it sees it",
}
#: What picamera2 is doing when libcamera refuses a stream, by the picamera2 function it failed in.
REFUSED_STREAM = {
    "_get_raw_modes": "the Raw stream role picamera2 probes for the sensor's modes whenever it opens a camera",
    "sensor_modes": "the Raw stream role picamera2 probes for the sensor's modes",
}


class CameraInUse(SourceUnavailable):
    """Another process holds the camera (libcamera could not acquire it)."""


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
        self._convert: YuvConverter | None = None
        self._gate = FrameGate(fps)
        self._asked = ""  # the configuration asked for, in words
        self.model = "?"

    def open(self) -> None:
        module = self._module = self._module if self._module is not None else _import_picamera2()
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
        model = self.model = cameras[index].get("Model", "?")
        try:
            camera = picamera2_cls(index)
        except Exception as exc:
            raise _open_failure(model, exc) from exc
        try:
            self._stream = self._configure(module, camera)
            camera.start()  # show_preview=False: picamera2 runs its NullPreview event loop for us
        except Exception as exc:
            _close_quietly(camera)
            if isinstance(exc, SourceUnavailable):
                raise
            raise SourceUnavailable(f"camera {model} refused the configuration ({self._asked}): {exc!r}") from exc
        width, height = self._stream["size"]
        from edged.capture.yuv import YuvConverter

        self._convert = YuvConverter(self._stream["format"], width, height, self.width, self.height)
        self._gate = FrameGate(self.fps)
        self._camera = camera
        self._stalled = False
        log.info("picamera2: %s, main stream %s", model, self._stream)

    def _frame_limits(self, camera: Any) -> dict[str, Any]:
        """``FrameDurationLimits`` for the configured rate, if the camera takes that control."""
        frame_us = int(1_000_000 / self.fps)  # what picamera2's "FrameRate" control expands to
        if "FrameDurationLimits" in camera.camera_controls:
            return {"FrameDurationLimits": (frame_us, frame_us)}
        log.info("picamera2: the camera has no FrameDurationLimits control: edged keeps %d frames a second", self.fps)
        return {}

    def _configure(self, module: Any, camera: Any) -> dict[str, Any]:
        controls = self._frame_limits(camera)
        self._asked = (
            f"main stream YUV420 {self.width}x{self.height}, {self.BUFFER_COUNT} buffers, SMPTE170M"
            + "".join(f", {k} {v}" for k, v in controls.items())
        )
        config = camera.create_video_configuration(
            main={"size": (self.width, self.height), "format": "YUV420"},
            buffer_count=self.BUFFER_COUNT,
            # VP8 knows one colour space, BT.601; picamera2 would pick Rec709 from 1280x720 up.
            colour_space=module.libcamera.ColorSpace.Smpte170m(),
            controls=controls,
        )
        camera.configure(config)
        stream = dict(camera.camera_configuration()["main"])  # as libcamera adjusted it
        from edged.capture.yuv import LAYOUTS

        if stream["format"] not in LAYOUTS:
            raise SourceUnavailable(
                f"camera delivers {stream['format']} where YUV420 was asked for; edged reads {', '.join(LAYOUTS)}"
            )
        return stream

    def read(self) -> VideoSample:
        assert self._camera is not None and self._convert is not None, "open() first"
        deadline = time.monotonic() + self.CAPTURE_TIMEOUT
        while True:
            try:
                request = self._camera.capture_request(wait=self.CAPTURE_TIMEOUT)
            except Exception as exc:  # TimeoutError when no frame came, RuntimeError from libcamera
                self._stalled = True
                raise SourceError(f"camera stopped delivering frames: {exc!r}") from exc
            try:
                timestamp_ns = request.get_metadata().get("SensorTimestamp")
                t = timestamp_ns / 1e9 if timestamp_ns is not None else time.monotonic()
                if self._gate.admit(t):
                    with self._module.MappedArray(request, "main", write=False) as mapped:
                        frame = self._convert(mapped.array)
                    return VideoSample(frame, t)
            except Exception as exc:
                raise SourceError(f"camera frame unreadable: {exc!r}") from exc
            finally:
                request.release()  # the buffer goes back to the camera whatever happened
            if time.monotonic() > deadline:  # frames keep coming, but their times do not advance
                raise SourceError(
                    f"camera frames' SensorTimestamp has not advanced a frame period in {self.CAPTURE_TIMEOUT:g} s"
                )

    @property
    def stream(self) -> dict[str, Any]:
        """The main stream as libcamera configured it (format, size, stride), once open."""
        return dict(self._stream)

    @property
    def frames_skipped(self) -> int:
        """Frames the camera delivered ahead of the configured rate, handed back unread."""
        return self._gate.skipped

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        if self._stalled:
            # A capture job that timed out is still queued and would block stop() forever.
            _call_quietly(camera.cancel_all_and_flush)
        _close_quietly(camera)


def _import_picamera2() -> ModuleType:
    """picamera2, or why not: not installed, or installed but one of its own imports failed."""
    try:
        import picamera2
    except ImportError as exc:
        missing = exc.name or ""
        if missing == "picamera2" or (not missing and "picamera2" in str(exc)):
            raise SourceUnavailable(
                "picamera2 is not installed (apt install python3-picamera2; a venv must be made with "
                f"--system-site-packages to see it): {exc}"
            ) from exc
        fix = DEPENDENCY_FIX.get(missing.split(".")[0], f"install the Python module {missing or '?'}")
        raise SourceUnavailable(
            f"picamera2 is installed but cannot be imported: its dependency {missing or '?'} is missing ({exc}); {fix}"
        ) from exc
    except Exception as exc:  # libcamera bindings present but broken
        raise SourceUnavailable(f"picamera2 cannot be imported: {exc!r}") from exc
    return picamera2


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (``raise ... from`` and implicit context)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain and len(chain) < 20:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return chain


def _open_failure(model: str, exc: BaseException) -> SourceUnavailable:
    """Why ``Picamera2(n)`` failed, in words. picamera2 wraps every cause in the same
    ``RuntimeError("Camera __init__ sequence did not complete.")``; the cause is in its chain."""
    chain = _causes(exc)
    root = chain[-1]
    busy = [
        e
        for e in chain
        if (isinstance(e, OSError) and e.errno == errno.EBUSY) or "busy" in str(e).lower() or "acquire" in str(e)
    ]
    if busy:
        return CameraInUse(
            f"camera {model} is in use by another process ({busy[-1]}); stop it (the edged service while it "
            "records, rpicam-*, another picamera2 program) or wait for it to finish"
        )
    where = next(
        (f.name for f in reversed(traceback.extract_tb(root.__traceback__)) if "picamera2" in f.filename),
        None,
    )
    if isinstance(root, AttributeError) and "NoneType" in str(root):
        # libcamera's generate_configuration() returns None for a stream role it refuses.
        what = REFUSED_STREAM.get(where or "", f"a stream role (in picamera2's {where or '?'})")
        return SourceUnavailable(
            f"camera {model} cannot be opened: libcamera refused {what} (generate_configuration returned "
            f"nothing: {root!r}); it is not a camera picamera2 supports"
        )
    inner = f"{root!r}" + (f" in picamera2's {where}" if where else "")
    outer = f"{chain[0]}" if len(chain) > 1 else ""
    return SourceUnavailable(f"camera {model} cannot be opened: {outer + ': ' if outer else ''}{inner}")


def _close_quietly(camera: Any) -> None:
    _call_quietly(camera.stop)
    _call_quietly(camera.close)


def _call_quietly(method: Any) -> None:
    try:
        method()
    except Exception as exc:  # noqa: BLE001 - closing a camera: whatever the library raises, go on
        log.warning("picamera2: %s failed: %r", getattr(method, "__name__", method), exc)
