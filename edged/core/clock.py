"""Time: a Pi has no real-time clock, so the wall clock may jump when NTP syncs after boot.

The timeline is kept on the monotonic clock (CLOCK_MONOTONIC, per boot, identified by the
kernel's boot id). The wall clock is only an observation: ``offset = wall - monotonic``. When
the offset moves by more than ``STEP_THRESHOLD_NS`` between two looks, that is a clock step,
which the index records; the best wall time of any moment of a boot is its monotonic time plus
the latest offset observed while the clock was synchronised.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import NamedTuple, Protocol

from edged.core.libc import libc as c_library

#: A change of the wall-minus-monotonic offset larger than this is a step, not drift.
STEP_THRESHOLD_NS = 500_000_000


class Clock(Protocol):
    def monotonic_ns(self) -> int: ...

    def wall_ns(self) -> int: ...

    def boot_id(self) -> str: ...

    def synchronized(self) -> bool: ...


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux, glibc); only `status` is read.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5  # adjtimex() return value when the clock is not synchronised (STA_UNSYNC set)


def _kernel_says_synchronized() -> bool:
    """What timedatectl's "System clock synchronized" reads: adjtimex() != TIME_ERROR."""
    libc = c_library()
    if libc is None:
        return False
    tx = _Timex()
    rc = libc.adjtimex(ctypes.byref(tx))
    return rc not in (-1, _TIME_ERROR)


class SystemClock:
    """The machine's clocks."""

    def __init__(self) -> None:
        self._boot_id = _read_boot_id()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()

    def boot_id(self) -> str:
        return self._boot_id

    def synchronized(self) -> bool:
        try:
            return _kernel_says_synchronized()
        except OSError:
            return False


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: one id per process start is the best available
        return f"process-{time.time_ns()}"


class ClockStep(NamedTuple):
    boot_id: str
    mono_ns: int
    before_offset_ns: int
    after_offset_ns: int
    synchronized: bool

    @property
    def step_ns(self) -> int:
        return self.after_offset_ns - self.before_offset_ns


class ClockWatch:
    """Follows the wall-minus-monotonic offset and reports steps."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.boot_id = clock.boot_id()
        self.offset_ns = clock.wall_ns() - clock.monotonic_ns()
        self.synchronized = clock.synchronized()

    def look(self) -> ClockStep | None:
        """Observe the clocks once; return the step if the wall clock jumped since the last look."""
        mono = self.clock.monotonic_ns()
        offset = self.clock.wall_ns() - mono
        synced = self.clock.synchronized()
        step = None
        if abs(offset - self.offset_ns) > STEP_THRESHOLD_NS:
            step = ClockStep(self.boot_id, mono, self.offset_ns, offset, synced)
        self.offset_ns = offset
        self.synchronized = synced
        return step

    def wall_at(self, mono_ns: int) -> int:
        """Wall time of a monotonic instant of this boot, by the current offset."""
        return mono_ns + self.offset_ns
