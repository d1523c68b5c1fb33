"""Wall-clock instants as text, both ways, in one place.

edged keeps time as integer nanoseconds since the epoch (UTC) and writes it as ISO 8601 with a
``Z`` and milliseconds (``2024-05-01T14:30:00.000Z``) in status files, manifests and the outbox;
servers (Bota) and operators (recall requests) answer in ISO 8601 with any offset.
On the picture (the stamp) it is local time with its offset from UTC.
"""

from __future__ import annotations

import datetime as dt
import time


def iso(ns: int | None) -> str | None:
    """``ns`` since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (None stays None)."""
    if ns is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{(ns // 1_000_000) % 1000:03d}Z"


def compact(ns: int) -> str:
    """``YYYYMMDDTHHMMSSZ``: the instant in a file or id name (segments, events, recalls)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns / 1e9))


def local_with_offset(seconds: int) -> str:
    """A whole second as the device's local time with its offset from UTC,
    ``2026-12-07 04:26:05 +00:00``: what a person reads on the picture. Local (the system's zone,
    ``TZ`` or /etc/localtime) because that is the time a witness speaks of; the offset makes it
    unambiguous across a daylight-saving change, which an abbreviation (IST, CST) does not."""
    tm = time.localtime(seconds)
    off = tm.tm_gmtoff
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', tm)} {sign}{off // 3600:02d}:{off % 3600 // 60:02d}"


def parse_iso(text: str) -> dt.datetime:
    """ISO 8601 with a time zone (``Z`` or an offset) → an aware datetime; ValueError saying why
    not (no zone, not a date and time)."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date and time (e.g. 2024-05-01T14:30:00Z)") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{text!r} has no time zone: add Z (UTC) or an offset such as +02:00")
    return t


def parse_iso_ns(text: str) -> int:
    """ISO 8601 with a time zone → ns since the epoch (microsecond precision, as datetime holds)."""
    t = parse_iso(text)
    return (int(t.timestamp()) * 1_000_000 + t.microsecond) * 1000
