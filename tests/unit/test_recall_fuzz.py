"""Property-based fuzzing of the recall request parser (issue 12: untrusted inputs).

A request comes from whoever fills the synced folder, so the parser is fed what such a party
could write: arbitrary JSON values, request-shaped objects with garbage in every field (times in
year 1 or 9999, offsets of ±23:59, NaN, huge integers, deep lists), and arbitrary bytes (not
UTF-8, 60 KB of ``[``, truncated or mutated JSON, too big). For every input:

* nothing but ``InvalidRequest`` leaves ``parse_request`` / ``request_from_bytes``;
* a rejection names at least one reason, none empty;
* an accepted request's start and end fit SQLite's int64, lie within 2000..2100, its duration is
  one its type allows, and the store takes it (the real ``RecallStore``, so SQLite says so too).

The inbox's own path (a file on disk → ``Inbox.take``) is fuzzed too: each file is handed over
exactly once, with a body or a reason, and moved.

Examples per property: ``EDGED_FUZZ_EXAMPLES`` (default 1500, about 15 s in all on a shared CI
core; set it to 100000 for a long run).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.clips.window import BootWindow
from edged.recall.inbox import Inbox
from edged.recall.request import (
    DURATIONS,
    MAX_DEPTH,
    MAX_REQUEST_BYTES,
    MAX_TIME_NS,
    MIN_TIME_NS,
    InvalidRequest,
    RecallRequest,
    RecallStore,
    load_request,
    parse_request,
    request_from_bytes,
)

EXAMPLES = int(os.environ.get("EDGED_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
INT64 = 2**63

NOW = 1_750_000_000 * 10**9  # 2025-06-15T15:06:40Z
POSITIONS = ["front"]
NAMES = ["cam-17", "unit 5"]

# --- strategies -------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**40), 10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)

offsets = st.sampled_from(["Z", "+00:00", "+02:00", "-07:00", "+14:00", "-12:00", "+23:59", "-23:59", ""])
any_datetime = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59))
near_datetime = st.datetimes(min_value=dt.datetime(1995, 1, 1), max_value=dt.datetime(2105, 12, 31))
iso_times = st.builds(lambda t, off: t.isoformat() + off, any_datetime | near_datetime, offsets)
edge_times = st.sampled_from(
    [
        "1600-01-01T00:00:00Z",
        "1677-09-21T00:12:43Z",
        "1969-12-31T23:59:59Z",
        "1999-12-31T23:59:59.999999Z",
        "2000-01-01T00:00:00Z",
        "2099-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
        "2262-04-11T23:47:16Z",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "2025-06-15T15:06:40Z",
        "2025-06-15T15:06:40.000001Z",
        " 2024-05-01T14:30:00Z ",
        "2024-05-01",
        "2024-05-01T14:30:00",
        "NaN",
        "",
    ]
)
start_times = iso_times | edge_times | json_values | st.text(max_size=100)
durations = (
    st.sampled_from(sorted({d for ds in DURATIONS.values() for d in ds}))
    | st.sampled_from([0, -1, 4, 61, 2**63, -(2**63) - 1, 10**400, True, 1.0, float("nan"), float("inf"), "3", None])
    | json_values
)
types = st.sampled_from(["regular", "timelapse"]) | json_values
cameras = st.lists(st.sampled_from(["front", "rear", "", "x" * 100]), max_size=20) | json_values
names = st.sampled_from(NAMES + ["V9", 17, 10**30, "x" * 200]) | json_values

request_objects = st.fixed_dictionaries(
    {},
    optional={
        "start_time": start_times,
        "duration": durations,
        "recall_type": types,
        "camera_positions": cameras,
        "vehicle_number": names,
        "asset_name": names,
        "duraton": json_values,
    },
)
past = st.datetimes(min_value=dt.datetime(2000, 1, 2), max_value=dt.datetime(2025, 6, 14))
likely_valid = st.fixed_dictionaries(
    {
        "start_time": st.builds(lambda t, off: t.isoformat() + off, past, offsets.filter(bool)),
        "duration": st.sampled_from([1, 2, 3, 5, 60]),
    },
    optional={"recall_type": st.sampled_from(["regular", "timelapse"]), "camera_positions": st.just(["front"])},
)
bodies = (
    request_objects
    | likely_valid
    | json_values
    | st.dictionaries(
        st.sampled_from(["start_time", "duration", "recall_type", "camera_positions"]) | st.text(max_size=12),
        json_values,
        max_size=5,
    )
)


def _deep(n: int, opener: bytes) -> bytes:
    return opener * n


def _mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[:cut] if cut < len(data) else data)
    for pos, val in flips:
        if out:
            out[pos % len(out)] = val
    return bytes(out)


def _dumps(value) -> bytes:
    try:
        return json.dumps(value).encode()
    except (ValueError, RecursionError):  # an int past the printable limit
        return b"{}"


nested = st.builds(_deep, st.integers(0, 70_000), st.sampled_from([b"[", b'{"a":', b'[{"a":']))
json_bytes = st.builds(_dumps, bodies)
mutated = st.builds(
    _mutate, json_bytes, st.integers(0, 400), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4)
)
encoded = st.builds(
    lambda v, enc: _dumps(v).decode().encode(enc, "replace"),
    bodies,
    st.sampled_from(["utf-16", "latin-1", "utf-8-sig", "cp1252"]),
)
oversized = st.builds(
    lambda extra, body: body + b" " * (MAX_REQUEST_BYTES + 1 - len(body) + extra), st.integers(0, 100), json_bytes
)
request_bytes = st.binary(max_size=600) | nested | json_bytes | mutated | encoded | oversized


# --- properties -------------------------------------------------------------------------------------


def judge(call, *args, now: int = NOW):
    """The parser's answer: a request, or the reasons; anything else raised fails the test."""
    try:
        return call(*args, "fuzz-1", now_ns=now, positions=POSITIONS, device_names=NAMES, source="fuzz")
    except InvalidRequest as exc:
        assert exc.reasons and all(isinstance(r, str) and r.strip() for r in exc.reasons), exc.reasons
        return exc.reasons


def check_accepted(req: RecallRequest, now: int) -> None:
    for ns in (req.start_ns, req.end_ns):
        assert -INT64 <= ns < INT64
    assert MIN_TIME_NS <= req.start_ns <= now and req.end_ns <= MAX_TIME_NS + 60 * 60 * 10**9
    assert req.duration_min in DURATIONS[req.recall_type]
    assert req.cameras and set(req.cameras) <= set(POSITIONS)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = RecallStore(tmp_path_factory.mktemp("fuzz") / "recall.sqlite")
    yield s
    s.close()


_ids = itertools.count()


def stored(store: RecallStore, req: RecallRequest) -> None:
    """The store takes it (SQLite would raise for an int past 64 bits) and reads it back unchanged."""
    req = RecallRequest(f"fuzz-{next(_ids)}", req.start_ns, req.duration_min, req.recall_type, req.cameras, req.source)
    try:
        store.add(req, BootWindow("boot", 0, 0))
    except Exception as exc:  # noqa: BLE001 - a duplicate of an earlier example is fine: it was stored
        assert type(exc).__name__ == "DuplicateRequest", exc
        return
    got = store.get(req.id)
    assert got is not None and got.request.key == req.key


@FUZZ
@given(body=bodies, late=st.booleans())
def test_any_json_value_is_a_request_or_rejected_with_reasons(body, late, store):
    now = MAX_TIME_NS if late else NOW  # late: start times up to 2100 are not in the future
    answer = judge(parse_request, body, now=now)
    if isinstance(answer, RecallRequest):
        check_accepted(answer, now)
        stored(store, answer)


@FUZZ
@given(data=request_bytes)
def test_any_bytes_are_a_request_or_rejected_with_reasons(data, store):
    answer = judge(request_from_bytes, data)
    if isinstance(answer, RecallRequest):
        check_accepted(answer, NOW)
        stored(store, answer)


def test_the_fuzzer_reaches_both_answers():
    """Not vacuous: the strategies give accepted requests as well as every kind of rejection."""
    accepted = judge(request_from_bytes, json.dumps({"start_time": "2025-06-15T14:00:00Z", "duration": 3}).encode())
    assert isinstance(accepted, RecallRequest)
    for data, words in [
        (b"[" * 60_000, f"more than {MAX_DEPTH} deep"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b" " * (MAX_REQUEST_BYTES + 1), "at most"),
        (b'{"start_time": NaN}', "not valid JSON"),
        (b'{"start_time": "1600-01-01T00:00:00Z", "duration": 1}', "before any footage"),
        (b'{"start_time": "9999-12-31T23:59:59Z", "duration": 1}', "in the future"),
        (b'{"start_time": "2025-01-01T00:00:00Z", "duration": -3}', "got -3"),
        (b'{"start_time": "2025-01-01T00:00:00Z", "duration": 1e999}', "got inf"),
        (b'{"start_time": "2025-01-01T00:00:00Z", "duration": 1, "recall_type": []}', "recall_type: [] is not one of"),
    ]:
        reasons = judge(request_from_bytes, data)
        assert isinstance(reasons, list) and any(words in r for r in reasons), (data[:60], reasons)


@settings(FUZZ, max_examples=max(50, EXAMPLES // 10))
@given(data=request_bytes)
def test_the_inbox_hands_over_every_file_once_with_a_body_or_a_reason(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inbox") / "recall"
    folder.mkdir()
    (folder / "fuzz-1.json").write_bytes(data)
    inbox = Inbox(folder, settle_s=0.0)
    taken = []
    assert inbox.take(taken.append) == 0  # first sight
    assert inbox.take(taken.append) == 1
    assert inbox.take(taken.append) == 0  # once
    [item] = taken
    if item.error:
        assert item.body is None
    else:
        assert item.body == load_request(data)  # (JSON null is a body too, refused by the parser)
    assert not (folder / "fuzz-1.json").exists() and (folder / "processed" / "fuzz-1.json").read_bytes() == data
    if len(data) > MAX_REQUEST_BYTES:
        assert "at most" in item.error


def test_the_inbox_path_is_bounded_in_depth_without_parsing(tmp_path):
    """60 KB of '[' is refused by counting, before the parser could recurse."""
    folder = tmp_path / "recall"
    folder.mkdir()
    (folder / "deep.json").write_bytes(b"[" * 60_000)
    inbox = Inbox(folder, settle_s=0.0)
    taken = []
    inbox.take(taken.append)
    inbox.take(taken.append)
    [item] = taken
    assert f"more than {MAX_DEPTH} deep" in item.error
    assert Path(folder / "processed" / "deep.json").exists()
