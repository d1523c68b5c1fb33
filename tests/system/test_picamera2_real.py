"""edged against the REAL picamera2 (PyPI 0.3.38) on the REAL libcamera (Debian 13's 0.4.0), whose
``virtual`` pipeline handler makes a colour-bar camera without hardware: in a Debian 13 root built
and cached by scripts/picamera2-root and entered with chroot, the project bound in read-only.

What the virtual camera is like (and the fake in tests/support/fakes/fake_picamera2.py copies):
it delivers NV12 only, advertises FrameDurationLimits and ignores it (hundreds of frames a second),
stamps SensorTimestamp on CLOCK_MONOTONIC, and refuses the Raw stream role unmodified picamera2
probes when it opens a camera (tests/support/picamera2_root/virtualcam/sitecustomize.py adapts
that one probe, and the allocator; everything else is the real library).

Skipped only where such a root cannot be built or entered (not root, no mount namespace,
debootstrap missing); a failed build is a failure. The first run builds the root (about 2 min).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import pytest

from edged.core.paths import StatePaths
from tests.conftest import REPO
from tests.support import reachable

ROOT = REPO / "scripts" / "picamera2-root"
PROBE = "/project/tests/support/picamera2_root/probe.py"
W, H, FPS = 960, 540, 10
#: SMPTE colour bars, BT.601 limited range (Y, U, V): white, yellow, cyan, green, magenta, red, blue, black.
BARS = [(235, 128, 128), (210, 16, 146), (170, 166, 16), (145, 54, 34), (106, 202, 222), (81, 90, 240), (41, 240, 110)]
BARS.append((16, 128, 128))


@pytest.fixture(scope="module")
def picamera2_root() -> None:
    check = subprocess.run([ROOT, "check"], capture_output=True, text=True)
    if check.returncode == 3:
        pytest.skip(f"no Debian 13 root for the real picamera2 here: {check.stdout.strip()}")
    assert check.returncode == 0, check.stdout + check.stderr
    built = subprocess.run([ROOT, "build"], capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, f"scripts/picamera2-root build failed:\n{built.stderr[-4000:]}"


def in_root(*argv: str, binds: tuple[Path, ...] = (), env: tuple[str, ...] = (), timeout: float = 180):
    cmd = [str(ROOT), "run", *[a for b in binds for a in ("--bind", str(b))], *env, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def probe(*args: object, env: tuple[str, ...] = ()) -> dict[str, Any]:
    p = in_root("python", PROBE, *map(str, args), env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert "crashed" not in result, (result, p.stderr[-4000:])
    return result


def nearest_bar(yuv: tuple[int, int, int]) -> int:
    return max(abs(a - b) for a, b in zip(yuv, min(BARS, key=lambda bar: sum(abs(a - b) for a, b in zip(yuv, bar)))))


@pytest.mark.usefixtures("picamera2_root")
def test_edgeds_source_reads_the_real_library_nv12_as_yuv420p_at_the_configured_rate() -> None:
    r = probe("frames", W, H, FPS, 30)
    assert r["class"] == "picamera2.picamera2.Picamera2"
    assert r["picamera2_file"].startswith("/opt/venv/lib/") and "site-packages/picamera2/" in r["picamera2_file"]
    # libcamera adjusted the YUV420 asked for: NV12, rows of exactly the width
    assert r["main"] == {
        "format": "NV12",
        "size": [W, H],
        "preserve_ar": True,
        "stride": W,
        "framesize": W * H * 3 // 2,
    }
    assert r["controls"] == {"FrameDurationLimits": [100000, 100000]}  # advertised, taken ... and ignored
    assert r["colour_space"] == "<libcamera.ColorSpace 'SMPTE170M'>"
    assert r["frames"] == [["yuv420p", W, H]] * 30
    # Every colour bar read back where it belongs: chroma de-interleaved, not read as planar (at
    # most one sample per bar edge misses: the bars scroll, and chroma is shared by pixel pairs).
    assert len(r["samples"]) == 3 * W // 8
    off = [nearest_bar(tuple(s)) for s in r["samples"]]
    assert sum(d > 4 for d in off) <= 3 * 8, sorted(off)[-30:]
    # SensorTimestamp on the monotonic clock, and the frames one per 1/FPS slot
    times = r["times"]
    before, after = r["window"]
    assert before - 0.2 <= times[0] and times[-1] <= after
    slots = [(t - times[0]) * FPS for t in times]
    numbers = [round(s) for s in slots]
    assert all(b > a for a, b in zip(numbers, numbers[1:])), numbers
    assert all(abs(s - n) <= 0.5 for s, n in zip(slots, numbers))
    assert sum(b - a == 1 for a, b in zip(numbers, numbers[1:])) >= 0.8 * (len(numbers) - 1), numbers
    assert r["skipped"] > 30, "the virtual camera runs faster than asked; the extra frames are handed back"
    assert r["closed"] and r["reopened"]  # close() released the camera: it opens again at once


@pytest.mark.usefixtures("picamera2_root")
def test_a_camera_held_by_another_process_is_said_to_be_in_use() -> None:
    r = probe("busy")
    assert r["in_use"], r
    assert (
        "edged-virtual is in use by another process (Failed to acquire camera: Device or resource busy)" in r["message"]
    )


@pytest.mark.usefixtures("picamera2_root")
def test_unmodified_picamera2_cannot_open_the_virtual_camera_and_edged_says_why() -> None:
    r = probe("open", env=("EDGED_VIRTUALCAM=0",))  # no adaptation: the Raw stream role is probed
    assert r["error"] == "SourceUnavailable" and "busy" not in r["message"], r
    assert "edged-virtual cannot be opened: libcamera refused the Raw stream role picamera2 probes" in r["message"]


@pytest.mark.usefixtures("picamera2_root")
def test_without_kms_plus_plus_edged_names_the_missing_dependency() -> None:
    support = "/project/tests/support/picamera2_root"
    r = probe("open", env=(f"PYTHONPATH=/project:{support}/virtualcam",))  # no pykms stand-in
    assert r["error"] == "SourceUnavailable", r
    assert "not installed" not in r["message"]
    assert "picamera2 is installed but cannot be imported: its dependency pykms is missing" in r["message"]
    assert "apt install python3-kms++" in r["message"]


@pytest.mark.usefixtures("picamera2_root")
def test_a_stalled_camera_times_out_and_the_source_still_closes() -> None:
    r = probe("stall")
    assert r["held"] >= 3, r  # every buffer the pipeline had
    assert r["read"] == "camera stopped delivering frames: TimeoutError()"
    assert 4.5 < r["waited_s"] < 10
    assert r["close_returned"], "close() hung behind the timed-out capture job"


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        f'[camera]\nsource = "picamera2"\nwidth = {W}\nheight = {H}\nfps = {FPS}\n'
        f'[audio]\nsource = "synthetic"\n'
        f'[storage]\ndir = "{tmp_path / "state"}"\nsegment_seconds = 2.0\nmin_free_bytes = 0\n'
    )
    return cfg


@pytest.mark.usefixtures("picamera2_root")
def test_doctor_opens_the_real_camera_as_the_recorder_does(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    p = in_root("python", "-m", "edged", "doctor", "--config", str(cfg), "--json", binds=(tmp_path,))
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    camera = checks["camera"]
    assert camera["status"] == "ok", camera
    assert (
        "edged-virtual (picamera2): opened as the recorder opens it, NV12 960x540 for 960x540@10" in camera["summary"]
    )
    p = in_root(
        "python",
        "-m",
        "edged",
        "doctor",
        "--config",
        str(cfg),
        "--json",
        binds=(tmp_path,),
        env=("EDGED_VIRTUALCAM=0",),
    )
    camera = {c["name"]: c for c in json.loads(p.stdout)["checks"]}["camera"]
    assert camera["status"] == "fail" and "libcamera refused the Raw stream role" in camera["summary"], camera


@pytest.mark.usefixtures("picamera2_root")
def test_the_daemon_records_the_real_camera_at_the_configured_rate(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    seconds = 6
    t0 = time.monotonic()
    p = in_root("python", "-m", "edged", "run", "--config", str(cfg), "--for", str(seconds), binds=(tmp_path,))
    t1 = time.monotonic()
    # The exit status is test_the_daemon_exits_cleanly_on_debians_pyav's: here, that it stopped as asked.
    assert f"recording stopped ({seconds} s of footage recorded)" in p.stderr, p.stderr[-4000:]
    assert "main stream {'format': 'NV12', 'size': (960, 540)" in p.stderr  # the real camera, not a fallback
    segments = sorted((tmp_path / "state" / "segments").glob("*.webm"))
    assert len(segments) >= 3, segments  # 2 s segments
    frames: list[int] = []  # each frame's monotonic time, ns, from the segment's start tag + its pts
    bars_seen = []
    for seg in segments:
        with av.open(str(seg)) as c:
            start = int(c.metadata["EDGED_MONO_START_NS"])
            v = c.streams.video[0]
            assert (v.codec_context.width, v.codec_context.height) == (W, H)
            for frame in c.decode(v):
                assert (frame.width, frame.height) == (W, H)
                frames.append(start + round(frame.pts * frame.time_base * 1e9))
                if len(bars_seen) < 3:
                    y = frame.to_ndarray()[H // 2]  # yuv420p: the luma rows come first
                    bars_seen.append(sorted(int(y[x]) for x in range(W // 16, W, W // 8)))
    assert all(b > a for a, b in zip(frames, frames[1:])), "timestamps go back or repeat"
    gaps_ms = [(b - a) / 1e6 for a, b in zip(frames, frames[1:])]
    assert min(gaps_ms) >= 1000 / FPS - 1, "more than FPS frames a second: the virtual camera's 300+ were not thinned"
    # frames 0 .. seconds * FPS: the last is taken up to half a period before its slot (FrameGate)
    assert seconds * FPS * 0.9 <= len(frames) <= seconds * FPS + 1, (len(frames), gaps_ms)
    assert t0 * 1e9 < frames[0] and frames[-1] < t1 * 1e9  # on this machine's monotonic clock
    standard = sorted(b[0] for b in BARS)
    for luma in bars_seen:  # the camera's colour bars (VP8 keeps luma within a few levels)
        assert all(abs(a - b) <= 12 for a, b in zip(luma, standard)), luma
    status = json.loads(StatePaths(tmp_path / "state").last_status.read_text())
    assert status["video_source"] == "picamera2", status


@pytest.mark.usefixtures("picamera2_root")
def test_the_daemon_exits_cleanly_on_debians_pyav(tmp_path: Path) -> None:
    """Debian 13's python3-av 14.2 (what a Pi's python3-picamera2 brings) segfaulted at exit when the
    garbage collector freed the Opus encoder inside a reference cycle; the recorder now closes its
    encoders in order at stop (``AudioEncoder.close``)."""
    cfg = write_config(tmp_path)
    p = in_root("python", "-m", "edged", "run", "--config", str(cfg), "--for", "2", binds=(tmp_path,))
    assert "recording stopped (2 s of footage recorded)" in p.stderr, p.stderr[-4000:]
    assert p.returncode == 0, f"exit status {p.returncode} after a clean stop"


def test_the_root_script_says_why_it_cannot_run_here() -> None:
    """What the skip above rests on: `check` names the reason (here: a user who is not root)."""
    # The checkout may sit in a folder only root can enter (a mktemp clone, /root): the script
    # runs from a copy, with the files beside it that it reads as it starts.
    base = Path(tempfile.mkdtemp(prefix="edged-picamera2-root-"))
    try:
        base.chmod(0o755)
        script = reachable.script_tree(base, "scripts/picamera2-root", "tests/support/picamera2_root")
        p = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script), "check"],
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(base)
    assert (p.returncode, p.stdout.strip()) == (3, "not root (debootstrap and chroot need uid 0)"), p


def test_the_root_script_is_shellcheck_clean() -> None:
    assert shutil.which("shellcheck"), "shellcheck not installed: scripts/setup --test installs it"
    p = subprocess.run(["shellcheck", str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
