"""Property-based fuzzing of the synced-config validator (issue 12).

Whoever controls the sync party writes ``edged.toml``; whatever it writes, the validator must
answer with settings or with the documented rejection (``ConfigError`` from ``from_layers``,
``configsync.Rejected`` from the bytes path), every rejection naming a key and a reason, and
nothing accepted unsigned may change a signed-only or local-only key or leave a tunable key
outside its synced bounds. Three sources of input: TOML-shaped mappings (schema keys mixed with
noise, every TOML value type including huge integers, NaN, control characters and nesting),
arbitrary bytes, and TOML text assembled from hostile fragments; plus signed files, mutated.

``EDGED_FUZZ_EXAMPLES`` sets the examples per property: 1,200 by default (4,800 cases, about 20 s
on one core), e.g. 20000 for a longer hunt.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edged.config import schema as config
from edged.config import sign as configsign
from edged.config.sync import ConfigSync, Rejected

EXAMPLES = int(os.environ.get("EDGED_FUZZ_EXAMPLES", "1200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: The local layer every synced document goes over (what the device's owner wrote).
LOCAL: dict[str, Any] = {
    "device": {"id": "fuzz-cam", "unit_number": "U-1"},
    "camera": {"source": "synthetic", "bitrate": 300_000},
    "audio": {"source": "synthetic"},
    "storage": {"dir": "/tmp/edged-fuzz/state", "min_free_bytes": 0, "max_bytes": 4_000_000_000},
    "clips": {"pre_roll_seconds": 30.0, "post_roll_seconds": 30.0},
}
LOCAL_SETTINGS = config.from_mapping(LOCAL)
PROTECTED = config.keys_of(config.SIGNED) + config.keys_of(config.LOCAL)
SIXTY_FOUR_GIB = 64 << 30


def _size_of(_: str) -> int:
    return SIXTY_FOUR_GIB


# --- strategies --------------------------------------------------------------------------------

SCHEMA_KEYS = [key for key, _, _ in config.describe()]
SECTIONS = sorted({k.split(".")[0] for k in SCHEMA_KEYS})
NAMES = sorted({part for k in SCHEMA_KEYS for part in k.split(".")})

names = st.one_of(st.sampled_from(NAMES), st.text(max_size=12), st.sampled_from(["sync.dir", "a.b", "", " "]))
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, -1, 10**18, 2**63 - 1, 10**15, 10**15 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 9.99, 10.0, 0.1, 1e308, -0.0, math.nan, math.inf]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=300),
    st.sampled_from(
        ["", "/", "..", "/dev/zero", "/tmp/edged-fuzz/state/x", "file", "none", "directory", "a\x00b", "x" * 300]
    ),
    st.datetimes(),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def schema_value(draw: st.DrawFn, key: str) -> Any:
    """A value for ``key``: usually of its type near its bounds, sometimes anything."""
    default = {k: v for k, v, _ in config.describe()}[key]
    meta = config._field_of(key).metadata
    if draw(st.integers(0, 4)) == 0:
        return draw(values)
    if isinstance(default, bool):
        return draw(st.booleans())
    if isinstance(default, (int, float)):
        lo, hi = meta["lo"], meta["hi"]
        edges = [v for v in (lo, hi) if v is not None]
        near = [e + d for e in edges for d in (-1, 0, 1)] + edges
        number = st.one_of(
            st.sampled_from(near or [0]),
            st.floats(min_value=lo, max_value=hi) if lo is not None else st.floats(),
            st.integers(min_value=int(lo), max_value=int(hi)) if lo is not None else st.integers(),
        )
        got = draw(number)
        return int(got) if isinstance(default, int) and not isinstance(got, float) else got
    if isinstance(default, tuple):
        return draw(st.lists(st.sampled_from(list(meta["choices"]) + ["ftp"]), max_size=5))
    if meta.get("choices"):
        return draw(st.sampled_from(list(meta["choices"]) + ["other"]))
    return draw(st.one_of(st.text(max_size=20), st.just(default)))


@st.composite
def synced_mappings(draw: st.DrawFn) -> dict[str, Any]:
    """A TOML-shaped document: schema keys with plausible or hostile values, plus noise."""
    doc: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(SCHEMA_KEYS), max_size=8, unique=True)):
        *parents, last = key.split(".")
        table = doc
        for p in parents:
            if not isinstance(table.get(p), dict):
                table[p] = {}
            table = table[p]
        table[last] = draw(schema_value(key))
    for _ in range(draw(st.integers(0, 2))):
        section = draw(st.sampled_from(SECTIONS + ["camra", "sync.dir"]))
        target = doc.setdefault(section, {}) if isinstance(doc.get(section, {}), dict) else {}
        target[draw(names)] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        doc[draw(names)] = draw(values)
    return doc


@st.composite
def plausible_value(draw: st.DrawFn, key: str) -> Any:
    """A value of the key's type inside its own rule (the synced bounds are what is tested)."""
    default = {k: v for k, v, _ in config.describe()}[key]
    meta = config._field_of(key).metadata
    if isinstance(default, bool):
        return draw(st.booleans())
    if isinstance(default, int):
        value = draw(st.integers(min_value=int(meta["lo"]), max_value=int(meta["hi"])))
        return value - value % 2 if meta.get("even") else value
    if isinstance(default, float):
        return draw(st.floats(min_value=meta["lo"], max_value=meta["hi"]))
    if isinstance(default, tuple):
        return draw(st.lists(st.sampled_from(list(meta["choices"])), unique=True, max_size=4))
    if meta.get("choices"):
        return draw(st.sampled_from(list(meta["choices"])))
    return draw(st.text(alphabet="abcdefghij-_/.", max_size=16))


TUNABLE_KEYS = config.keys_of(config.TUNABLE)


@st.composite
def plausible_mappings(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly tunable keys with values their own rule accepts: the documents that get through,
    so the trust checks on what was accepted run often."""
    keys = draw(st.lists(st.sampled_from(TUNABLE_KEYS), max_size=6, unique=True))
    keys += draw(st.lists(st.sampled_from(SCHEMA_KEYS), max_size=1))
    doc: dict[str, Any] = {}
    for key in keys:
        *parents, last = key.split(".")
        table = doc
        for p in parents:
            table = table.setdefault(p, {})
        table[last] = draw(plausible_value(key))
    return doc


def _toml_key(k: str) -> str:
    return json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> bytes:
    """One line per top-level key, tables inline (every shape a mapping can take)."""
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in doc.items()).encode("utf-8", "surrogatepass")


FRAGMENTS = [
    b"[camera]\n",
    b"[clips]\n",
    b"[storage]\n",
    b"[upload.sonoran_v2]\n",
    b"[sync]\n",
    b"[[camera]]\n",
    b"bitrate = 400000\n",
    b"pre_roll_seconds = 0.0\n",
    b"min_free_bytes = 1000000000000000000\n",
    b'dir = "/tmp/x"\n',
    b'account_uuid = "other"\n',
    b"a = " + b"[" * 40,
    b"]" * 40 + b"\n",
    b"b = {c = {d = {e = 1}}}\n",
    b"x." * 40 + b"y = 1\n",
    b"fps = 1" + b"0" * 5000 + b"\n",
    b's = "\\u0000"\n',
    b"t = '''\n[[[[\n'''\n",
    b"# [[[[[[[[[[[[[[[[[[[[\n",
    b'"quoted.key" = 3\n',
    b"nan_ = nan\n",
    b"\xff\xfe",
    b"pre_roll_seconds = nan\n",
    b"v = 1979-05-27T07:32:00Z\n",
    b"\r\n",
    b"=",
    b"[",
    b'"',
]
toml_texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20)), max_size=12).map(b"".join)
any_bytes = st.one_of(
    st.binary(max_size=300), toml_texts, synced_mappings().map(to_toml), plausible_mappings().map(to_toml)
)


# --- the checks every answer must pass ---------------------------------------------------------


def assert_named(problems: list[tuple[str, str]]) -> None:
    assert problems, "a rejection without a reason"
    for key, reason in problems:
        assert isinstance(key, str) and key.strip(), f"a rejection without a key: {problems!r}"
        assert isinstance(reason, str) and reason.strip(), f"a rejection without a reason: {problems!r}"


def assert_trusted(new: config.Settings, signed: bool, base: config.Settings = LOCAL_SETTINGS) -> None:
    """Local keys never move; unsigned, signed keys neither, and tunable keys stay in bounds."""
    for key in PROTECTED if not signed else config.keys_of(config.LOCAL):
        assert config._get(new, tuple(key.split("."))) == config._get(base, tuple(key.split("."))), key
    if signed:
        return
    for key in config.keys_of(config.TUNABLE):
        path = tuple(key.split("."))
        value, local = config._get(new, path), config._get(base, path)
        bound = config._field_of(key).metadata.get("unsigned")
        if bound is not None and value != local:
            assert bound.problem(value, local) is None, (key, value)


# --- properties --------------------------------------------------------------------------------


def check_layers(doc: dict[str, Any], signed: bool) -> None:
    """from_layers answers settings that keep to the trust model, or problems each naming a key."""
    try:
        new = config.from_layers(LOCAL, doc, signed=signed, size_of=_size_of)
    except config.ConfigError as exc:
        assert_named(exc.problems)
        assert len(str(exc)) < 64_000
        event("rejected")
        return
    event("accepted " + ("signed" if signed else "unsigned"))
    assert_trusted(new, signed)


@FUZZ
@given(doc=synced_mappings(), signed=st.booleans())
def test_from_layers_answers_settings_or_named_problems(doc: dict[str, Any], signed: bool) -> None:
    check_layers(doc, signed)


@FUZZ
@given(doc=plausible_mappings(), signed=st.booleans())
def test_plausible_documents_keep_to_the_trust_model(doc: dict[str, Any], signed: bool) -> None:
    check_layers(doc, signed)


@pytest.fixture(scope="module")
def watchers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    key = Ed25519PrivateKey.generate()
    made = {}
    for name, sync in (("unsigned", {}), ("signed", {"fleet_public_key": configsign.public_key_b64(key.public_key())})):
        (root / name / "sync").mkdir(parents=True)
        data = {
            **LOCAL,
            "storage": {**LOCAL["storage"], "dir": str(root / name / "state")},
            "sync": {"dir": str(root / name / "sync"), **sync},
        }
        made[name] = ConfigSync(config.from_mapping(data), data, lambda *a: None)
    made["key"] = key
    return made


def _judge(cs: ConfigSync, data: bytes) -> config.Settings | None:
    try:
        new = cs.judge(data)
    except Rejected as exc:
        assert_named(exc.problems)
        event("rejected: " + exc.problems[0][0][:12])
        return None
    event("accepted")
    return new


@FUZZ
@given(data=any_bytes)
def test_bytes_unsigned_answer_settings_or_a_named_rejection(watchers: dict[str, Any], data: bytes) -> None:
    new = _judge(watchers["unsigned"], data)
    if new is not None:
        assert_trusted(new, signed=False, base=watchers["unsigned"].local)


@FUZZ
@given(
    body=any_bytes,
    serial=st.integers(1, 2**63 - 1),
    devices=st.lists(st.sampled_from(["fuzz-cam", "cam-1", "cam-2"]), max_size=3),
    flip=st.integers(0, 2**16),
)
def test_signed_bytes_and_their_mutations(
    watchers: dict[str, Any], body: bytes, serial: int, devices: list[str], flip: int
) -> None:
    cs = watchers["signed"]
    signed = configsign.sign(body, watchers["key"], serial=serial, devices=devices)
    new = _judge(cs, signed)
    if new is not None:
        assert not devices or "fuzz-cam" in devices, "a config for other devices was taken"
        assert_trusted(new, signed=True, base=cs.local)
    # Any change to the signed body, or to the serial, is refused.
    head, _, rest = signed.partition(b"\n")
    if rest:
        i = flip % len(rest)
        mutated = head + b"\n" + rest[:i] + bytes([rest[i] ^ 0x01]) + rest[i + 1 :]
        assert _judge(cs, mutated) is None
    bumped = head.replace(f" serial={serial}".encode(), f" serial={serial + 1}".encode()) + b"\n" + rest
    assert _judge(cs, bumped) is None
    # Unsigned bytes never pass a device that wants signatures.
    if not body.startswith(configsign.PREFIX):
        assert _judge(cs, body) is None
