"""A camera that vanishes: the recorder keeps retrying, says so, and recovers when it returns."""

from __future__ import annotations

import json
import shutil
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from edged.app.daemon import Daemon
from edged.capture import SourceUnavailable, open_video
from edged.core.paths import StatePaths
from edged.footage.index import Index
from tests.support import decode_all, wait_until


def _short_clip(path: Path, seconds: float = 1.0, fps: int = 10) -> Path:
    with av.open(str(path), "w", format="matroska") as out:
        st = out.add_stream("ffv1", rate=fps)
        st.width, st.height, st.pix_fmt = 320, 180, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.zeros((180, 320, 3), np.uint8)
            img[:, (i * 30) % 320 :] = 200
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path


def test_camera_that_vanishes_is_retried_and_recording_recovers(tmp_path, settings_factory):
    clip = _short_clip(tmp_path / "camera.mkv")
    aside = tmp_path / "unplugged.mkv"
    s = settings_factory(
        camera={"source": "file", "device": str(clip), "paced": True},
        audio={"source": "none"},
        storage={"segment_seconds": 2.0},
    )
    daemon = Daemon(s)
    t = threading.Thread(target=daemon.run)
    t.start()
    try:
        wait_until(lambda: daemon.recorder is not None and daemon.recorder.status.frames_encoded >= 15, 10, "frames")
        shutil.move(clip, aside)  # unplugged: the source fails at its next reopen
        wait_until(lambda: daemon.recorder.status.state == "camera_lost", 10, "camera_lost state")
        status_file = daemon.paths.status  # in the runtime folder the running daemon made
        wait_until(
            lambda: status_file.exists() and json.loads(status_file.read_text())["state"] == "camera_lost",
            5,
            "status.json to say camera_lost",
        )
        st = json.loads(status_file.read_text())
        assert "camera_lost" in st["alarms"] and "camera lost" in st["last_error"]
        frames_during_outage = daemon.recorder.status.frames_encoded
        time.sleep(1.5)
        assert daemon.recorder.status.frames_encoded == frames_during_outage
        shutil.move(aside, clip)  # plugged back in
        wait_until(lambda: daemon.recorder.status.frames_encoded >= frames_during_outage + 25, 15, "recovery")
        assert daemon.recorder.status.state == "recording"
    finally:
        daemon.recorder.stop()
        t.join(timeout=20)
    rows = Index(StatePaths(s.state_dir).index).stored()
    for r in rows:
        assert decode_all(s.state_dir / "segments" / r.name)[0] == r.frames
    # The outage is a gap in the monotonic timeline between two segments.
    gaps = [(b.mono_start_ns - (a.mono_start_ns + a.duration_ns)) / 1e9 for a, b in zip(rows, rows[1:])]
    assert max(gaps) >= 1.0, gaps
    assert "camera_lost" not in daemon.recorder.status.alarms


def test_auto_falls_back_to_synthetic_when_no_camera_exists(settings_factory, caplog):
    s = settings_factory(camera={"source": "auto"})
    caplog.set_level("INFO", logger="edged.capture")
    src = open_video(s.camera)
    try:
        assert src.name == "synthetic"
    finally:
        src.close()
    assert "using synthetic source" in caplog.text
    assert "picamera2:" in caplog.text and "v4l2:" in caplog.text  # why the others were passed over


def test_explicit_missing_camera_is_a_clear_error(settings_factory, tmp_path):
    s = settings_factory(camera={"source": "file", "device": str(tmp_path / "nope.mp4")})
    try:
        open_video(s.camera)
    except SourceUnavailable as exc:
        assert "nope.mp4" in str(exc) and "not found" in str(exc)
    else:
        raise AssertionError("no error for a missing camera file")
