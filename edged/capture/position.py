"""Where the device is: the one record a position travels in, and what a position source offers.

A position is a sensor reading like a frame or a sample, so it lives with capture. Its readers are
the stamp on the picture, the marks (a position at the press, a track in each clip's manifest), the
Sonoran unit location and the status. They take a ``PositionSource`` and never a GPS library.

"No fix" is always said, never guessed: ``latest()`` returns None when there is no current fix
(no receiver, no gpsd, no satellites, or a fix older than the source's own staleness bound), and
``fix_status()`` says which of those it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Fix:
    """One position fix, as the receiver reported it (gpsd's TPV report)."""

    lat: float  # degrees, WGS84, north positive
    lon: float  # degrees, WGS84, east positive
    mode: int  # 2 = 2D fix, 3 = 3D fix (gpsd's TPV ``mode``); no fix is never a Fix
    wall_s: float  # the fix's own UTC time, seconds since the epoch
    alt_m: float | None = None  # metres above mean sea level, 3D fixes only
    speed_mps: float | None = None  # ground speed
    track_deg: float | None = None  # course over ground, degrees from true north
    eph_m: float | None = None  # estimated horizontal error (95 %), when the receiver gives one


class PositionSource(Protocol):
    def latest(self) -> Fix | None:
        """The current fix, or None when there is none (never a stale or guessed one)."""
        ...

    def fix_status(self) -> str:
        """One word for the status and doctor: "3d", "2d", "no-fix", "no-gpsd" or "off"."""
        ...

    def track(self, start_wall_s: float, end_wall_s: float) -> list[Fix]:
        """The fixes kept between two wall times, oldest first (bounded memory: a rolling window)."""
        ...
