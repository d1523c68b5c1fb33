"""What the tests share, in one place: waiting for a state, a daemon run in a thread, and reading
back what edged wrote with PyAV (independent of edged's own readers).

Upload fixtures (a real WebM, an outbox filled with it, settings naming the contract server) are in
``tests.support.upload``; the picamera2 fake in ``tests.support.fakes``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av


@dataclass
class StreamPackets:
    pts_ms: list[int]
    keyframes: list[int]
    sizes: list[int]
    durations_ms: list[int]


def packets(path: Path, kind: str) -> StreamPackets:
    out = StreamPackets([], [], [], [])
    with av.open(str(path)) as c:
        streams = c.streams.video if kind == "video" else c.streams.audio
        if not streams:
            return out
        for p in c.demux(streams[0]):
            if p.size == 0:
                continue
            ms = int(p.pts * p.time_base * 1000)
            out.pts_ms.append(ms)
            out.sizes.append(p.size)
            out.durations_ms.append(int((p.duration or 0) * p.time_base * 1000))
            if p.is_keyframe:
                out.keyframes.append(ms)
    return out


def decode_all(path: Path) -> tuple[int, int]:
    """Decode every frame; return (video frames, audio samples). Raises on any decode error."""
    frames = samples = 0
    with av.open(str(path)) as c:
        for f in c.decode(*c.streams):
            if isinstance(f, av.VideoFrame):
                frames += 1
            else:
                samples += f.samples
    return frames, samples


def segment_files(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "segments").glob("*.webm"))


# --- clocks, real small file systems, waiting (test_clock, test_ring, test_storage_faults) -------


class SteppableClock:
    """The Clock protocol (edged.core.clock.Clock) with a wall clock the test sets, as NTP does after
    boot: monotonic is the machine's; wall = monotonic + ``offset_ns``; ``synced`` is what
    adjtimex would say; the boot id is fixed (a new one is a reboot)."""

    def __init__(self, offset_ns: int | None = None, synced: bool = False, boot: str = "test-boot") -> None:
        self.offset_ns = time.time_ns() - time.monotonic_ns() if offset_ns is None else offset_ns
        self.synced = synced
        self.boot = boot

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.monotonic_ns() + self.offset_ns

    def boot_id(self) -> str:
        return self.boot

    def synchronized(self) -> bool:
        return self.synced


def load_factor() -> float:
    """How much slower than idle this machine is now: the 1-minute load average per core, at least 1."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


def wait_until(pred: Callable[[], object], timeout: float, what: str, alive: Callable[[], None] | None = None) -> Any:
    """Poll ``pred`` until it returns something true, and return that; fail naming ``what``.

    A deadline, not a speed assertion: the timeout only bounds a test that would otherwise hang, so
    it stretches with the machine's load (``timeout`` is what an idle machine needs; on 2 cores with
    a load of 8 the wait may be four times as long). ``alive`` is called on every round (e.g. to
    fail at once when a child process has died)."""
    timeout *= load_factor()
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")
        time.sleep(0.05)


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``path`` (root only); skips the test if it cannot be mounted."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def ext4_loop(path: Path, size_mb: int = 32) -> Iterator[tuple[Path, Path, Path]]:
    """A real ext4 on a loop device, mounted with ``errors=remount-ro`` at ``path``.

    Yields (mount point, sysfs folder of the file system, image file); writing to ``<sysfs>/trigger_fs_error``
    makes the kernel turn the file system read-only under open files, as it does when an SD card
    fails (``mount -o remount,ro`` refuses with EBUSY while files are open for writing). Skips the
    test if loop devices or mkfs.ext4 are unavailable."""
    import pytest

    img = path.with_name(path.name + ".img")
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    mk = subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], capture_output=True, text=True)
    if mk.returncode != 0:
        pytest.skip(f"cannot make an ext4 image: {mk.stderr.strip()}")
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(img), str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image (needs root and loop devices): {out.stderr.strip()}")
    try:
        src = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True, text=True
        ).stdout.strip()
        sysfs = Path("/sys/fs/ext4") / os.path.basename(src)
        if not (sysfs / "trigger_fs_error").exists():
            pytest.skip(f"{sysfs}/trigger_fs_error not available in this kernel")
        yield path, sysfs, img
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


#: A small picture: fast to encode on a loaded machine, through the same pipeline.
SMALL = {"width": 320, "height": 180, "bitrate": 120_000}


class Running:
    """A Daemon run in a thread, keeping what ``run()`` returned or raised.

    ``Running(daemon)`` starts it; ``stop()`` stops and joins it. As a context manager
    (``with Running(settings, **daemon_kw) as d:``) it also waits for the daemon to be ready and
    fails the test if it does not stop."""

    def __init__(self, daemon: Any, **daemon_kw: Any) -> None:
        from edged.app.daemon import Daemon

        self.daemon: Daemon = daemon if isinstance(daemon, Daemon) else Daemon(daemon, **daemon_kw)
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="daemon-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run()
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            self.error = exc

    @property
    def recorder(self):
        return self.daemon.recorder

    def stop(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + 10 * load_factor()
        while not self.daemon.wait_ready(0.05) and self.thread.is_alive() and time.monotonic() < deadline:
            pass
        self.daemon.stop()
        self.thread.join(timeout * load_factor())

    def __enter__(self) -> Any:
        ready_s = 20 * load_factor()
        if not self.daemon.wait_ready(ready_s):
            self.stop()
            raise AssertionError(
                f"the daemon did not become ready within {ready_s:.0f} s (rc={self.rc}, {self.error!r})"
            )
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.stop(timeout=60)
        assert not self.thread.is_alive(), "daemon did not stop"


def timeline_s(d: Any) -> float:
    """Seconds of recording so far; 0 before the first frame (the anchor is set by it: until then
    timeline_now_ns is the machine's monotonic clock and the difference means nothing)."""
    r = d.recorder
    if r is None or r.status.frames_encoded == 0 or not r._mono_anchor_ns:
        return 0.0
    return (r.timeline_now_ns() - r._mono_anchor_ns) / 1e9


def live_status(state: Path) -> dict:
    """A running daemon's live status through its control socket (found through the state folder:
    the socket lives in the runtime folder); {} while it is starting or gone."""
    from edged.app.control import ControlError, request
    from edged.core.paths import StatePaths

    try:
        return dict(request(StatePaths(state).control, {"cmd": "status"}, timeout=30)["status"])
    except (ControlError, OSError, KeyError):
        return {}
