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

Requests are untrusted (a sync party writes them): ``load_request`` turns bytes into JSON with the
size, the encoding and the nesting depth bounded *before* the parser runs (60 KB of ``[`` would
exhaust Python's recursion); ``parse_request`` bounds every string and list, and range-checks the
time (2000 to 2100) before it becomes nanoseconds, so nothing that reaches SQLite or arithmetic can
overflow an int64. Only ``InvalidRequest`` leaves either; every value echoed in a reason is shown
through a bounded ``repr``. Text stored or written as a status (reasons, details, echoed bodies)
goes through ``edged.core.journal.scrub`` first: a server may echo a key in its error body.

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
import math
import reprlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edged.clips.window import BootWindow
from edged.core.db import Store
from edged.core.ids import RECALL_CLIP_PREFIX, RECALL_ID
from edged.core.journal import scrub, scrubbed_json
from edged.core.states import RecallState
from edged.core.timefmt import iso, parse_iso

#: Allowed durations in minutes, per recall type (the contract's lists).
DURATIONS: dict[str, tuple[int, ...]] = {"regular": (1, 2, 3), "timelapse": (5, 10, 15, 30, 45, 60)}
REQUIRED = ("start_time", "duration")
OPTIONAL = ("recall_type", "camera_positions", "vehicle_number", "asset_name")
DEFAULT_TYPE = "regular"

#: A request id is a plain file name (it names the status file and the clip folder).
ID_PATTERN = RECALL_ID

#: States a new request asking for the same footage is a duplicate of (a *failed* one may be asked
#: again; a ``rejected`` one is answered, never stored).
ACTIVE = (RecallState.PENDING, RecallState.PROCESSING, RecallState.COMPLETED)

#: Range holds in the index are owned by ``recall:<id>``.
HOLD_PREFIX = "recall:"
#: The outbox and clip folder name of a recall's parts.
CLIP_PREFIX = RECALL_CLIP_PREFIX

MINUTE_NS = 60_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Footage can only be from these years: anything else is refused before it becomes nanoseconds
#: (year 1600 or 9999 would not fit SQLite's int64).
MIN_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MAX_TIME = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
MIN_TIME_NS = (MIN_TIME - _EPOCH) // dt.timedelta(microseconds=1) * 1000
MAX_TIME_NS = (MAX_TIME - _EPOCH) // dt.timedelta(microseconds=1) * 1000
#: Longest duration of any recall type (a window ends before ``MAX_TIME_NS`` + this).
MAX_DURATION_MIN = max(max(d) for d in DURATIONS.values())

#: Bounds on what a request may hold (a request is a few hundred bytes).
MAX_REQUEST_BYTES = 64 * 1024
MAX_DEPTH = 8  # a request is one object of lists of strings: depth 2
MAX_TIME_CHARS = 64
MAX_NAME_CHARS = 64
MAX_POSITIONS = 16
#: Reasons name at most this many unknown fields.
_MAX_LISTED = 8

_shown = reprlib.Repr()
_shown.maxstring = 80
_shown.maxother = 80
_shown.maxlevel = 3
_shown.maxlist = _shown.maxtuple = _shown.maxdict = _shown.maxset = 6
_shown.maxlong = 40


class InvalidRequest(Exception):
    """A request that cannot be accepted; ``reasons`` lists every problem found."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


def show(value: Any) -> str:
    """A bounded ``repr`` of an untrusted value, for a reason: never long, never raising (a huge
    int, a deeply nested list)."""
    try:
        return _shown.repr(value)
    except (ValueError, RecursionError):  # an int too long to print, a list nested past the limit
        return f"<{type(value).__name__}>"


def bounded(value: Any, depth: int = 4, items: int = 32, chars: int = 256) -> Any:
    """A copy of an untrusted JSON value small enough to echo in a status document: nesting cut at
    ``depth``, lists and objects at ``items`` entries, strings at ``chars``; numbers JSON cannot
    hold (NaN, infinities, ints past 64 bits) as their bounded ``repr``."""
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + "…"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else show(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else show(value)
    if depth <= 0:
        return show(value)
    if isinstance(value, dict):
        out = {
            bounded(k, 0, items, 64) if isinstance(k, str) else show(k): bounded(v, depth - 1, items, chars)
            for k, v in list(value.items())[:items]
        }
        if len(value) > items:
            out["…"] = f"{len(value) - items} more"
        return out
    if isinstance(value, (list, tuple)):
        out_list = [bounded(v, depth - 1, items, chars) for v in value[:items]]
        if len(value) > items:
            out_list.append(f"… {len(value) - items} more")
        return out_list
    return show(value)


def json_depth(text: str, limit: int) -> int:
    """How deeply ``text``'s arrays and objects nest, counted without parsing (strings skipped);
    stops counting once past ``limit``."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "[" or ch == "{":
            depth += 1
            if depth > limit:
                return depth
        elif ch == "]" or ch == "}":
            depth -= 1
    return max(depth, 0)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def load_request(data: bytes, max_bytes: int = MAX_REQUEST_BYTES) -> Any:
    """The JSON value of a request file's bytes; InvalidRequest (one reason) when it is too big, not
    UTF-8, nested too deeply or not JSON. Never anything else."""
    if len(data) > max_bytes:
        raise InvalidRequest([f"the request is {len(data)} bytes; at most {max_bytes} are read"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest([f"the request is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})"]) from None
    text = text.removeprefix("\ufeff")  # the byte order mark some editors write
    if json_depth(text, MAX_DEPTH) > MAX_DEPTH:
        raise InvalidRequest([f"the request nests arrays or objects more than {MAX_DEPTH} deep"])
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # (json_depth should have caught it)
        raise InvalidRequest([f"the request nests arrays or objects more than {MAX_DEPTH} deep"]) from None
    except ValueError as exc:
        raise InvalidRequest([f"the request is not valid JSON: {str(exc)[:200]}"]) from None


class RecallRequest(NamedTuple):
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
        return {
            "start_time": iso(self.start_ns),
            "end_time": iso(self.end_ns),
            "duration": self.duration_min,
            "recall_type": self.recall_type,
            "camera_positions": list(self.cameras),
        }


def check_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not ID_PATTERN.fullmatch(request_id):
        raise InvalidRequest(
            [
                f"id: {show(request_id)} is not a plain name (letters, digits, '.', '_', '-'; "
                "at most 64, starting with a letter or digit)"
            ]
        )
    return request_id


def parse_time(value: Any) -> int:
    """ISO 8601 with a time zone, from 2000 to 2100 → UTC ns; ValueError saying why not."""
    t = _parse_datetime(value)
    if not _in_range(t):
        raise ValueError(f"{value!r} is not between {MIN_TIME.year} and {MAX_TIME.year}: no footage is from then")
    return _ns(t)


def _parse_datetime(value: Any) -> dt.datetime:
    """ISO 8601 with a time zone → an aware datetime (any year); ValueError saying why not."""
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 string, got {type(value).__name__} {show(value)}")
    if len(value) > MAX_TIME_CHARS:
        raise ValueError(f"{show(value)} is {len(value)} characters; an ISO 8601 time is at most {MAX_TIME_CHARS}")
    return parse_iso(value)


def _in_range(t: dt.datetime) -> bool:
    try:
        return MIN_TIME <= t < MAX_TIME
    except OverflowError:  # (an offset pushing year 1 or 9999 past what datetime holds)
        return False


def _ns(t: dt.datetime) -> int:
    """An aware datetime within [MIN_TIME, MAX_TIME) as UTC ns (fits an int64)."""
    return (t - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _as_name(value: Any) -> str | None:
    """A ``vehicle_number`` / ``asset_name`` as text: a short string or a plain integer; else None."""
    if isinstance(value, str) and len(value) <= MAX_NAME_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and -(10**18) < value < 10**18:
        return str(value)
    return None


def parse_request(
    data: Any,
    request_id: str,
    *,
    now_ns: int,
    positions: Sequence[str],
    device_names: Sequence[str],
    source: str = "",
    clock_synchronized: bool = True,
) -> RecallRequest:
    """Validate a request body (a JSON object) against this device. ``now_ns``: the newest instant
    footage can exist for (wall clock); ``positions``: this device's cameras; ``device_names``:
    names a ``vehicle_number`` / ``asset_name`` may use for this device. Raises InvalidRequest,
    nothing else, whatever ``data`` is."""
    check_id(request_id)
    if not isinstance(data, dict):
        raise InvalidRequest([f"the request must be a JSON object, got {type(data).__name__}"])
    problems: list[str] = []
    known = REQUIRED + OPTIONAL
    unknown = sorted(show(k) if not isinstance(k, str) else show(k)[1:-1] for k in data if k not in known)
    if unknown:
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        problems.append(f"unknown field(s) {', '.join(unknown[:_MAX_LISTED])}{more} (known: {', '.join(known)})")
    for name in REQUIRED:
        if name not in data:
            problems.append(f"{name}: missing (required)")

    start_ns = _start(data, now_ns, clock_synchronized, problems)
    recall_type = _recall_type(data, problems)
    duration = _duration(data, recall_type, problems)
    cameras = _cameras(data, positions, problems)
    _addressee(data, device_names, problems)

    if problems:
        raise InvalidRequest(problems)
    assert start_ns is not None and isinstance(duration, int) and recall_type is not None
    return RecallRequest(request_id, start_ns, duration, recall_type, cameras, source)


def request_from_bytes(data: bytes, request_id: str, **context: Any) -> RecallRequest:
    """A request file's bytes → a request (``load_request`` then ``parse_request``); InvalidRequest."""
    return parse_request(load_request(data), request_id, **context)


def _start(data: dict, now_ns: int, clock_synchronized: bool, problems: list[str]) -> int | None:
    if "start_time" not in data:
        return None
    try:
        t = _parse_datetime(data["start_time"])
    except ValueError as exc:
        problems.append(f"start_time: {exc}")
        return None
    hint = "" if clock_synchronized else " (this device's clock is not synchronised yet)"
    try:
        future = t > _EPOCH + dt.timedelta(microseconds=now_ns // 1000)
    except OverflowError:
        future = t.year > 1970
    if not _in_range(t):
        why = "is in the future" if future else "is before any footage"
        problems.append(
            f"start_time: {data['start_time']!r} {why}: no footage is from outside "
            f"{MIN_TIME.year} to {MAX_TIME.year}{hint if future else ''}"
        )
        return None
    start_ns = _ns(t)
    if start_ns > now_ns:
        problems.append(f"start_time: {iso(start_ns)} is in the future; the newest footage is from {iso(now_ns)}{hint}")
    return start_ns


def _recall_type(data: dict, problems: list[str]) -> str | None:
    recall_type = data.get("recall_type", DEFAULT_TYPE)
    if not isinstance(recall_type, str) or recall_type not in DURATIONS:
        problems.append(f"recall_type: {show(recall_type)} is not one of {', '.join(DURATIONS)}")
        return None
    return recall_type


def _duration(data: dict, recall_type: str | None, problems: list[str]) -> int | None:
    if "duration" not in data:
        return None
    duration = data["duration"]
    if isinstance(duration, bool) or not isinstance(duration, int):
        problems.append(f"duration: must be a whole number of minutes, got {show(duration)}")
        return None
    if recall_type is not None and duration not in DURATIONS[recall_type]:
        allowed = ", ".join(map(str, DURATIONS[recall_type]))
        other = [t for t, ds in DURATIONS.items() if duration in ds]
        hint = f" ({duration} minutes is a {other[0]} duration)" if other else ""
        problems.append(f"duration: {recall_type} recalls last {allowed} minutes, got {show(duration)}{hint}")
    return duration if 0 < duration <= MAX_DURATION_MIN else None


def _cameras(data: dict, positions: Sequence[str], problems: list[str]) -> tuple[str, ...]:
    cameras: tuple[str, ...] = tuple(sorted(positions))
    if "camera_positions" not in data:
        return cameras
    asked = data["camera_positions"]
    if not isinstance(asked, list) or not all(isinstance(p, str) for p in asked):
        problems.append(f"camera_positions: must be a list of position names, got {show(asked)}")
    elif not asked:
        problems.append(
            f"camera_positions: empty list; leave it out for every camera, or name some of: {', '.join(positions)}"
        )
    elif len(asked) > MAX_POSITIONS or any(len(p) > MAX_NAME_CHARS for p in asked):
        problems.append(f"camera_positions: at most {MAX_POSITIONS} names of at most {MAX_NAME_CHARS} characters")
    else:
        unknown_pos = sorted(set(asked) - set(positions))
        if unknown_pos:
            problems.append(
                f"camera_positions: {', '.join(map(show, unknown_pos))} not on this device "
                f"(it has: {', '.join(positions)})"
            )
        cameras = tuple(sorted(set(asked)))
    return cameras


def _addressee(data: dict, device_names: Sequence[str], problems: list[str]) -> None:
    addressed = [k for k in ("vehicle_number", "asset_name") if k in data]
    if len(addressed) > 1:
        problems.append("vehicle_number and asset_name: give at most one of them")
    for k in addressed:
        name = _as_name(data[k])
        if name is None:
            problems.append(f"{k}: must be a name of at most {MAX_NAME_CHARS} characters, got {show(data[k])}")
        elif name not in device_names:
            problems.append(
                f"{k}: {show(data[k])} is not this device (it is {' / '.join(n for n in device_names if n)})"
            )


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
    status: RecallState
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

    @property
    def hold(self) -> BootWindow:
        """The window on the boot that was recording when the request was accepted."""
        return BootWindow(self.hold_boot_id, self.hold_start_mono_ns, self.hold_end_mono_ns)


_COLS = (
    "id, status, start_ns, duration_min, recall_type, cameras, source, reason, built, detail, hold_boot_id, "
    "hold_start_mono_ns, hold_end_mono_ns, created_ns, updated_ns"
)


def _recall(r: tuple) -> Recall:
    req = RecallRequest(r[0], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6])
    return Recall(req, RecallState(r[1]), r[7], bool(r[8]), json.loads(r[9]), r[10], r[11], r[12], r[13], r[14])


class DuplicateRequest(Exception):
    """Asks for the same footage as ``existing`` (or reuses its id for something else: ``conflict``)."""

    def __init__(self, existing: Recall, conflict: bool) -> None:
        self.existing = existing
        self.conflict = conflict
        if conflict:
            msg = (
                f"id {existing.id!r} already names another request ({existing.request.recall_type} "
                f"{existing.request.duration_min} min from {iso(existing.request.start_ns)}); use a new id"
            )
        else:
            msg = f"duplicate of recall {existing.id!r} ({existing.status}), which asks for the same footage"
        super().__init__(msg)


class RecallStore(Store):
    def __init__(self, path: Path, read_only: bool = False) -> None:
        super().__init__(path, _SCHEMA, read_only=read_only)

    def get(self, recall_id: str) -> Recall | None:
        rows = self.query(f"SELECT {_COLS} FROM recalls WHERE id=?", (recall_id,))
        return _recall(rows[0]) if rows else None

    def recalls(self, statuses: Sequence[RecallState] | None = None) -> list[Recall]:
        sql = f"SELECT {_COLS} FROM recalls"
        args: tuple[str, ...] = ()
        if statuses is not None:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args = tuple(str(s) for s in statuses)
        return [_recall(r) for r in self.query(sql + " ORDER BY created_ns, id", args)]

    def add(self, req: RecallRequest, hold: BootWindow, now_ns: int | None = None) -> Recall:
        """Store a new pending request with the window it holds on the recording's boot; raise
        DuplicateRequest (checked in the same transaction), or InvalidRequest for times no parsed
        request has (nothing past int64 reaches SQLite)."""
        check_id(req.id)
        if not (MIN_TIME_NS <= req.start_ns < MAX_TIME_NS and 0 < req.duration_min <= MAX_DURATION_MIN):
            raise InvalidRequest([f"start {req.start_ns} ns, {req.duration_min} min: out of range"])
        now = time.time_ns() if now_ns is None else now_ns
        with self.tx() as db:
            same_id = db.execute(f"SELECT {_COLS} FROM recalls WHERE id=?", (req.id,)).fetchone()
            if same_id:
                existing = _recall(same_id)
                raise DuplicateRequest(existing, conflict=existing.request.key != req.key)
            same = db.execute(
                f"SELECT {_COLS} FROM recalls WHERE start_ns=? AND duration_min=? AND recall_type=?"
                f" AND cameras=? AND status IN ({','.join('?' * len(ACTIVE))}) ORDER BY created_ns"
                " LIMIT 1",
                (req.start_ns, req.duration_min, req.recall_type, json.dumps(list(req.cameras)), *ACTIVE),
            ).fetchone()
            if same:
                raise DuplicateRequest(_recall(same), conflict=False)
            db.execute(
                f"INSERT INTO recalls ({_COLS}) VALUES (?,?,?,?,?,?,?,'',0,'{{}}',?,?,?,?,?)",
                (
                    req.id,
                    RecallState.PENDING,
                    req.start_ns,
                    req.duration_min,
                    req.recall_type,
                    json.dumps(list(req.cameras)),
                    scrub(req.source),
                    hold.boot_id,
                    hold.start_mono_ns,
                    hold.end_mono_ns,
                    now,
                    now,
                ),
            )
        rec = self.get(req.id)
        assert rec is not None
        return rec

    def update(
        self,
        recall_id: str,
        status: RecallState,
        reason: str = "",
        *,
        built: bool | None = None,
        detail: dict | None = None,
        now_ns: int | None = None,
    ) -> Recall:
        """Set a request's status; the reason and the detail are stored scrubbed of secrets (an
        upload refusal may quote a key)."""
        cols: dict[str, object] = {
            "status": RecallState(status),
            "reason": scrub(reason),
            "updated_ns": time.time_ns() if now_ns is None else now_ns,
        }
        if built is not None:
            cols["built"] = int(built)
        if detail is not None:
            cols["detail"] = scrubbed_json(detail)
        with self.tx() as db:
            db.execute(
                f"UPDATE recalls SET {', '.join(f'{k}=?' for k in cols)} WHERE id=?", (*cols.values(), recall_id)
            )
        rec = self.get(recall_id)
        assert rec is not None
        return rec
