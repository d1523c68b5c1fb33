"""Video recall requests: the request model, its validation, duplicate detection and the store.

A fleet operator asks the device for footage it already has, with the fields of a fleet dashcam's
video recall request (../shared/reference/motive-video-recall-request.txt):

  ``start_time``        ISO 8601 with a time zone (``Z`` or ``±hh:mm``), not in the future (required)
  ``duration``          whole minutes (required): ``regular`` 1, 2 or 3; ``timelapse`` 5, 10, 15, 30,
                        45 or 60
  ``recall_type``       ``regular`` (default, as in the contract) or ``timelapse``
  ``camera_positions``  optional list of positions; absent means every camera of the device; an empty
                        list or a position this device does not have is refused
  ``vehicle_number`` / ``asset_name``  optional (the contract's addressee); at most one, and it must
                        name this device (``device.id`` or ``device.unit_number``)

Every problem of a request is reported at once, each with its reason, as the configuration does;
an unknown field is refused (a misspelt ``duraton`` would otherwise be silently ignored).

Duplicates: a request with the id of a stored one is the same request if its fields are the same
(answered with the stored state, nothing done twice: a sync tool may deliver a file again), and a
conflict otherwise. A request with another id asking for the same footage (start, duration, type
and cameras) as one that is pending, processing or completed is refused as a duplicate of it; one
identical to a *failed* request is a new attempt and accepted.

The store (``recall.sqlite`` in the state folder, the project's one SQLite store base) keeps
every accepted request with its status and the footage hold it set.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.db import Store
from edged.status import iso

#: Allowed durations in minutes, per recall type (the contract's lists).
DURATIONS: dict[str, tuple[int, ...]] = {"regular": (1, 2, 3), "timelapse": (5, 10, 15, 30, 45, 60)}
REQUIRED = ("start_time", "duration")
OPTIONAL = ("recall_type", "camera_positions", "vehicle_number", "asset_name")
DEFAULT_TYPE = "regular"

#: A request id is a plain file name (it names the status file and the clip folder).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: Status words, as the operator reads them in the status file.
PENDING, PROCESSING, COMPLETED, FAILED, REJECTED = "pending", "processing", "completed", "failed", "rejected"
STATES = (PENDING, PROCESSING, COMPLETED, FAILED)  # stored; REJECTED requests are answered, not stored
#: States a new request asking for the same footage is a duplicate of.
ACTIVE = (PENDING, PROCESSING, COMPLETED)

#: Range holds in the index are owned by ``recall:<id>``.
HOLD_PREFIX = "recall:"
#: The outbox and clip folder name of a recall's parts.
CLIP_PREFIX = "recall-"

MINUTE_NS = 60_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class InvalidRequest(Exception):
    """A request that cannot be accepted; ``reasons`` lists every problem found."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


@dataclass(frozen=True, slots=True)
class RecallRequest:
    id: str
    start_ns: int  # wall clock, UTC ns
    duration_min: int
    recall_type: str
    cameras: tuple[str, ...]  # resolved: the positions the footage comes from, sorted
    source: str = ""  # where it came from: "inbox:<file>", "cli"

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_min * MINUTE_NS

    @property
    def key(self) -> tuple[int, int, str, tuple[str, ...]]:
        """What makes two requests ask for the same footage."""
        return self.start_ns, self.duration_min, self.recall_type, self.cameras

    @property
    def hold_owner(self) -> str:
        return HOLD_PREFIX + self.id

    @property
    def clip_id(self) -> str:
        return CLIP_PREFIX + self.id

    def fields(self) -> dict[str, Any]:
        """The request as the contract names its fields (normalised)."""
        return {"start_time": iso(self.start_ns), "end_time": iso(self.end_ns), "duration": self.duration_min,
                "recall_type": self.recall_type, "camera_positions": list(self.cameras)}


def check_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not ID_PATTERN.fullmatch(request_id):
        raise InvalidRequest([f"id: {request_id!r} is not a plain name (letters, digits, '.', '_', '-'; "
                              "at most 64, starting with a letter or digit)"])
    return request_id


def parse_time(value: Any) -> int:
    """ISO 8601 with a time zone → UTC ns; ValueError saying why not."""
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 string, got {type(value).__name__} {value!r}")
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date and time (e.g. 2024-05-01T14:30:00Z)") from None
    if t.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: add Z (UTC) or an offset such as +02:00")
    return (t - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def parse_request(data: Any, request_id: str, *, now_ns: int, positions: Sequence[str],
                  device_names: Sequence[str], source: str = "", clock_synchronized: bool = True) -> RecallRequest:
    """Validate a request body (a JSON object) against this device. ``now_ns``: the newest instant
    footage can exist for (wall clock); ``positions``: this device's cameras; ``device_names``:
    names a ``vehicle_number`` / ``asset_name`` may use for this device. Raises InvalidRequest."""
    check_id(request_id)
    if not isinstance(data, dict):
        raise InvalidRequest([f"the request must be a JSON object, got {type(data).__name__}"])
    problems: list[str] = []
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(REQUIRED + OPTIONAL)})")
    for name in REQUIRED:
        if name not in data:
            problems.append(f"{name}: missing (required)")

    start_ns: int | None = None
    if "start_time" in data:
        try:
            start_ns = parse_time(data["start_time"])
        except ValueError as exc:
            problems.append(f"start_time: {exc}")
        else:
            if start_ns > now_ns:
                hint = "" if clock_synchronized else " (this device's clock is not synchronised yet)"
                problems.append(f"start_time: {iso(start_ns)} is in the future; the newest footage is from "
                                f"{iso(now_ns)}{hint}")

    recall_type = data.get("recall_type", DEFAULT_TYPE)
    if recall_type not in DURATIONS:
        problems.append(f"recall_type: {recall_type!r} is not one of {', '.join(DURATIONS)}")
        recall_type = None

    duration = data.get("duration")
    if "duration" in data:
        if isinstance(duration, bool) or not isinstance(duration, int):
            problems.append(f"duration: must be a whole number of minutes, got {duration!r}")
            duration = None
        elif recall_type is not None and duration not in DURATIONS[recall_type]:
            allowed = ", ".join(map(str, DURATIONS[recall_type]))
            other = [t for t, ds in DURATIONS.items() if duration in ds]
            hint = f" ({duration} minutes is a {other[0]} duration)" if other else ""
            problems.append(f"duration: {recall_type} recalls last {allowed} minutes, got {duration}{hint}")

    cameras: tuple[str, ...] = tuple(sorted(positions))
    if "camera_positions" in data:
        asked = data["camera_positions"]
        if not isinstance(asked, list) or not all(isinstance(p, str) for p in asked):
            problems.append(f"camera_positions: must be a list of position names, got {asked!r}")
        elif not asked:
            problems.append(f"camera_positions: empty list; leave it out for every camera, or name some of: "
                            f"{', '.join(positions)}")
        else:
            unknown_pos = sorted(set(asked) - set(positions))
            if unknown_pos:
                problems.append(f"camera_positions: {', '.join(map(repr, unknown_pos))} not on this device "
                                f"(it has: {', '.join(positions)})")
            cameras = tuple(sorted(set(asked)))

    addressed = [k for k in ("vehicle_number", "asset_name") if k in data]
    if len(addressed) > 1:
        problems.append("vehicle_number and asset_name: give at most one of them")
    for k in addressed:
        if str(data[k]) not in device_names:
            problems.append(f"{k}: {data[k]!r} is not this device (it is {' / '.join(n for n in device_names if n)})")

    if problems:
        raise InvalidRequest(problems)
    assert start_ns is not None and isinstance(duration, int) and recall_type is not None
    return RecallRequest(request_id, start_ns, duration, recall_type, cameras, source)


# --- the store -------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recalls (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN ('pending','processing','completed','failed')),
    start_ns      INTEGER NOT NULL,
    duration_min  INTEGER NOT NULL,
    recall_type   TEXT NOT NULL,
    cameras       TEXT NOT NULL,
    source        TEXT NOT NULL DEFAULT '',
    reason        TEXT NOT NULL DEFAULT '',
    built         INTEGER NOT NULL DEFAULT 0,
    detail        TEXT NOT NULL DEFAULT '{}',
    hold_boot_id  TEXT NOT NULL DEFAULT '',
    hold_start_mono_ns INTEGER NOT NULL DEFAULT 0,
    hold_end_mono_ns   INTEGER NOT NULL DEFAULT 0,
    created_ns    INTEGER NOT NULL,
    updated_ns    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS recalls_key ON recalls(start_ns, duration_min, recall_type, cameras);
CREATE INDEX IF NOT EXISTS recalls_status ON recalls(status, created_ns);
"""


@dataclass(frozen=True, slots=True)
class Recall:
    """A stored request and where it is."""

    request: RecallRequest
    status: str
    reason: str
    built: bool  # parts are in the outbox
    detail: dict = field(hash=False, compare=False)  # footage found, gaps, parts (JSON)
    hold_boot_id: str
    hold_start_mono_ns: int
    hold_end_mono_ns: int
    created_ns: int
    updated_ns: int

    @property
    def id(self) -> str:
        return self.request.id


_COLS = ("id, status, start_ns, duration_min, recall_type, cameras, source, reason, built, detail, hold_boot_id, "
         "hold_start_mono_ns, hold_end_mono_ns, created_ns, updated_ns")


def _recall(r: tuple) -> Recall:
    req = RecallRequest(r[0], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6])
    return Recall(req, r[1], r[7], bool(r[8]), json.loads(r[9]), r[10], r[11], r[12], r[13], r[14])


class DuplicateRequest(Exception):
    """Asks for the same footage as ``existing`` (or reuses its id for something else: ``conflict``)."""

    def __init__(self, existing: Recall, conflict: bool) -> None:
        self.existing = existing
        self.conflict = conflict
        if conflict:
            msg = (f"id {existing.id!r} already names another request ({existing.request.recall_type} "
                   f"{existing.request.duration_min} min from {iso(existing.request.start_ns)}); use a new id")
        else:
            msg = f"duplicate of recall {existing.id!r} ({existing.status}), which asks for the same footage"
        super().__init__(msg)


class RecallStore(Store):
    def __init__(self, path: Path, read_only: bool = False) -> None:
        super().__init__(path, _SCHEMA, read_only=read_only)

    def get(self, recall_id: str) -> Recall | None:
        rows = self.query(f"SELECT {_COLS} FROM recalls WHERE id=?", (recall_id,))
        return _recall(rows[0]) if rows else None

    def recalls(self, statuses: Sequence[str] | None = None) -> list[Recall]:
        sql, args = f"SELECT {_COLS} FROM recalls", ()
        if statuses is not None:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args = tuple(statuses)
        return [_recall(r) for r in self.query(sql + " ORDER BY created_ns, id", args)]

    def add(self, req: RecallRequest, hold: tuple[str, int, int], now_ns: int | None = None) -> Recall:
        """Store a new pending request; raise DuplicateRequest (checked in the same transaction)."""
        now = time.time_ns() if now_ns is None else now_ns
        with self.tx() as db:
            same_id = db.execute(f"SELECT {_COLS} FROM recalls WHERE id=?", (req.id,)).fetchone()
            if same_id:
                existing = _recall(same_id)
                raise DuplicateRequest(existing, conflict=existing.request.key != req.key)
            same = db.execute(f"SELECT {_COLS} FROM recalls WHERE start_ns=? AND duration_min=? AND recall_type=?"
                              f" AND cameras=? AND status IN ({','.join('?' * len(ACTIVE))}) ORDER BY created_ns"
                              " LIMIT 1", (req.start_ns, req.duration_min, req.recall_type,
                                           json.dumps(list(req.cameras)), *ACTIVE)).fetchone()
            if same:
                raise DuplicateRequest(_recall(same), conflict=False)
            db.execute(f"INSERT INTO recalls ({_COLS}) VALUES (?,?,?,?,?,?,?,'',0,'{{}}',?,?,?,?,?)",
                       (req.id, PENDING, req.start_ns, req.duration_min, req.recall_type,
                        json.dumps(list(req.cameras)), req.source, *hold, now, now))
        rec = self.get(req.id)
        assert rec is not None
        return rec

    def update(self, recall_id: str, status: str, reason: str = "", *, built: bool | None = None,
               detail: dict | None = None, now_ns: int | None = None) -> Recall:
        cols: dict[str, object] = {"status": status, "reason": reason,
                                   "updated_ns": time.time_ns() if now_ns is None else now_ns}
        if built is not None:
            cols["built"] = int(built)
        if detail is not None:
            cols["detail"] = json.dumps(detail)
        with self.tx() as db:
            db.execute(f"UPDATE recalls SET {', '.join(f'{k}=?' for k in cols)} WHERE id=?",
                       (*cols.values(), recall_id))
        rec = self.get(recall_id)
        assert rec is not None
        return rec
