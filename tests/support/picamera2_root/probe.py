"""Runs edged's picamera2 source against the REAL picamera2 and libcamera, inside the test root
(scripts/picamera2-root run python /project/tests/support/picamera2_root/probe.py SCENARIO).
Prints one JSON line, the last on stdout, for tests/system/test_picamera2_real.py to judge: the
judging is there, this only does and measures.

    frames W H FPS N   open, read N frames, close; then open again (the camera was released)
    busy               open while another Picamera2 holds the camera
    open               open (whatever the environment makes of it: no kms++, unadapted picamera2)
    stall              hold every buffer: read() must time out and close() must still return
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any


def _failure(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc)}


def frames(width: int, height: int, fps: int, n: int) -> dict[str, Any]:
    from edged.capture.picam import PicameraVideo

    source = PicameraVideo(width, height, fps)
    source.open()
    cam = source._camera
    config = cam.camera_configuration()
    out: dict[str, Any] = {
        "class": f"{type(cam).__module__}.{type(cam).__name__}",
        "picamera2_file": sys.modules[type(cam).__module__].__file__,
        "main": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config["main"].items()},
        "controls": {k: list(v) for k, v in config["controls"].items()},
        "advertised": sorted(cam.camera_controls),
        "colour_space": repr(config["colour_space"]),
    }
    before = time.monotonic()
    samples = [source.read() for _ in range(n)]
    after = time.monotonic()
    out["skipped"] = source.frames_skipped
    source.close()
    out["closed"] = not cam.is_open
    out["window"] = [before, after]
    out["times"] = [s.time for s in samples]
    out["frames"] = [[s.frame.format.name, s.frame.width, s.frame.height] for s in samples]
    # The last picture's (Y, U, V) on a grid (chroma positions), for the test to match to the bars.
    picture = samples[-1].frame.to_ndarray()
    y = picture[:height]
    chroma = picture[height:].reshape(-1)
    quarter = (width // 2) * (height // 2)
    u = chroma[:quarter].reshape(height // 2, width // 2)
    v = chroma[quarter:].reshape(height // 2, width // 2)
    out["samples"] = [
        [int(y[row, x]), int(u[row // 2, x // 2]), int(v[row // 2, x // 2])]
        for row in (height // 6, height // 2, 5 * height // 6)
        for x in range(4, width, 8)
    ]
    again = PicameraVideo(width, height, fps)
    again.open()
    again.read()
    again.close()
    out["reopened"] = True
    return out


def busy() -> dict[str, Any]:
    from picamera2 import Picamera2

    from edged.capture.picam import PicameraVideo

    holder = Picamera2(0)
    try:
        PicameraVideo(640, 480, 10).open()
        return {"opened": True}
    except Exception as exc:  # noqa: BLE001 - reported
        return _failure(exc) | {"in_use": type(exc).__name__ == "CameraInUse"}
    finally:
        holder.close()


def open_only() -> dict[str, Any]:
    from edged.capture.picam import PicameraVideo

    source = PicameraVideo(640, 480, 10)
    try:
        source.open()
    except Exception as exc:  # noqa: BLE001 - reported
        return _failure(exc)
    source.close()
    return {"opened": True}


def stall() -> dict[str, Any]:
    """Every buffer held by someone else (as a wedged pipeline holds them): edged's read() gives up
    after CAPTURE_TIMEOUT and close() returns (it flushes the queued capture job first)."""
    from edged.capture.base import SourceError
    from edged.capture.picam import PicameraVideo

    source = PicameraVideo(640, 480, 10)
    source.open()
    source.read()
    cam = source._camera
    held = []
    for _ in range(12):
        try:
            held.append(cam.capture_request(wait=1.0))
        except TimeoutError:
            break
    cam.cancel_all_and_flush()  # forget this probe's own timed-out job; edged's read comes next
    out: dict[str, Any] = {"held": len(held)}
    t = time.monotonic()
    try:
        source.read()
        out["read"] = "returned"
    except SourceError as exc:
        out["read"] = str(exc)
    out["waited_s"] = time.monotonic() - t
    t = time.monotonic()
    closer = threading.Thread(target=source.close, daemon=True)
    closer.start()
    closer.join(15)
    out["close_returned"] = not closer.is_alive()
    out["close_s"] = time.monotonic() - t
    for r in held:
        r.release()
    return out


def main(argv: list[str]) -> int:
    scenario, args = argv[1], [int(a) for a in argv[2:]]
    try:
        result = {
            "frames": lambda: frames(*args),
            "busy": busy,
            "open": open_only,
            "stall": stall,
        }[scenario]()
    except Exception as exc:  # noqa: BLE001 - reported for the test to show
        result = {"crashed": _failure(exc)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
