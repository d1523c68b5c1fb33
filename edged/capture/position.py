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
from typing import Any, Protocol

from edged.core.states import GpsFix
from edged.core.timefmt import iso


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
    #: When this device received it, on the recording's wall clock (the clock a clip's and a mark's
    #: wall times are on, which may differ from ``wall_s`` while the system clock is not synchronised);
    #: None when the source does not know.
    received_wall_s: float | None = None


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


def fix_doc(fix: Fix) -> dict[str, Any]:
    """A fix as marks and manifests record it: the fix word ("3d", "2d"), latitude and longitude
    (7 decimals, about a centimetre), the receiver's own time, when this device received it (the
    clip's clock), and the optional fields the receiver gave."""
    doc: dict[str, Any] = {
        "fix": str(GpsFix.FIX_3D if fix.mode == 3 else GpsFix.FIX_2D),
        "lat": round(fix.lat, 7),
        "lon": round(fix.lon, 7),
        "time": iso(round(fix.wall_s * 1e9)),
    }
    if fix.received_wall_s is not None:
        doc["received"] = iso(round(fix.received_wall_s * 1e9))
    for key, value in (
        ("alt_m", fix.alt_m),
        ("speed_mps", fix.speed_mps),
        ("track_deg", fix.track_deg),
        ("eph_m", fix.eph_m),
    ):
        if value is not None:
            doc[key] = round(value, 2)
    return doc


def position_doc(source: PositionSource | None) -> dict[str, Any]:
    """Where the device is now, as a mark records it: the fix (``fix_doc``), or only the word that
    says why there is none ("no-fix", "no-gpsd", "off"); never a stale or guessed position."""
    if source is None:
        return {"fix": str(GpsFix.OFF)}
    fix = source.latest()
    if fix is not None:
        return fix_doc(fix)
    word = str(source.fix_status())
    # A fix that arrived between the two questions is not in hand: say there is none yet.
    return {"fix": word if word not in (GpsFix.FIX_2D, GpsFix.FIX_3D) else str(GpsFix.NO_FIX)}
