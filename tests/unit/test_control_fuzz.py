"""Property-based fuzzing of the control socket's protocol (hypothesis).

Whatever reaches the socket — arbitrary bytes, arbitrary JSON values, requests of the right shape
with wrong values — the server answers with exactly one JSON line holding ``ok`` and, when not
ok, a non-empty ``error``; no exception escapes it, and it keeps serving. The handlers have the
shapes of the daemon's real ones (``daemon.py``, ``recall_service.control_handlers``), including
their own refusals (ValueError) and a failure that quotes a secret, which must come back scrubbed.

Case counts: ``EDGED_FUZZ_EXAMPLES`` (default 2000) for the protocol function, a tenth of it
through a real socket; each test prints nothing unless it fails (hypothesis then shows the case).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.app.control import COMMANDS, MAX_REQUEST, ControlServer, answer

EXAMPLES = int(os.environ.get("EDGED_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SOCKET_FUZZ = settings(FUZZ, max_examples=max(50, EXAMPLES // 10))
SECRET = "Bearer fuzz-token-9f8e7d6c"


def _outbox_retry(req: dict[str, Any]) -> dict[str, Any]:
    ident = str(req.get("id", ""))
    return {"retried": int(ident) if ident.isdigit() else 0}  # int("²") raises, as Outbox.retry did


def _recall_status(req: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(f"no recall request {req.get('id')!r}")


def _fail(req: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError(f"upstream said 401 with Authorization: {SECRET}")


HANDLERS = {
    "mark": lambda req: {"event_id": "20240501T143000Z-1a2b3c", "extended": False, "note": str(req.get("note", ""))},
    "status": lambda req: {"status": {"state": "recording", "frames_encoded": 1}},
    "outbox_retry": _outbox_retry,
    "recall": lambda req: {
        "recall": {"id": str(req.get("id") or "r1"), "status": "pending", "request": req.get("request")}
    },
    "recall_status": _recall_status,
    "explode": _fail,
}


def check_answer(doc: Any) -> None:
    assert isinstance(doc, dict) and isinstance(doc.get("ok"), bool), doc
    if not doc["ok"]:
        assert isinstance(doc.get("error"), str) and doc["error"].strip(), doc
        assert "fuzz-token" not in doc["error"], doc
    json.dumps(doc)


# --- the protocol function: every input gets an answer ----------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
commands = st.sampled_from(sorted(HANDLERS)) | st.text(max_size=12) | json_values
arguments = st.dictionaries(
    st.sampled_from(["note", "id", "request", "x", ""]) | st.text(max_size=8), json_values, max_size=4
)


@FUZZ
@given(st.binary(max_size=512))
def test_any_bytes_get_an_answer(line: bytes) -> None:
    check_answer(answer(line, HANDLERS))


@FUZZ
@given(json_values)
def test_any_json_value_gets_an_answer(value: Any) -> None:
    doc = answer(json.dumps(value).encode(), HANDLERS)
    check_answer(doc)
    assert not doc["ok"] or (isinstance(value, dict) and value.get("cmd") in HANDLERS)


@FUZZ
@given(commands, arguments)
def test_requests_of_the_right_shape_with_any_values(cmd: Any, args: dict[str, Any]) -> None:
    request = {**args, "cmd": cmd}
    doc = answer(json.dumps(request).encode(), HANDLERS)
    check_answer(doc)
    if doc["ok"]:  # only what the protocol allows reaches a handler, and it answered
        spec = COMMANDS[cmd]
        assert all(k in spec and isinstance(v, spec[k].type) for k, v in args.items()), (request, doc)


@FUZZ
@given(st.integers(min_value=1, max_value=20_000), st.sampled_from(["[", '{"a":', '[{"b":']))
def test_deep_nesting_is_refused_before_parsing(depth: int, opener: str) -> None:
    closer = {"[": "]", '{"a":': "}", '[{"b":': "}]"}[opener]
    line = ('{"cmd":"mark","note":' + opener * depth + "1" + closer * depth + "}").encode()
    doc = answer(line, HANDLERS)
    check_answer(doc)
    assert doc["ok"] is False


def test_known_cases() -> None:
    """The cases issue 12 names, each with its clear reason (the fuzzing above finds the rest)."""
    cases = {
        b"[1, 2]": "got a list",
        b"42": "got a number",
        b'{"cmd": ["mark"]}': '"cmd" must be a string, got a list',
        b'{"cmd": {"a": 1}}': '"cmd" must be a string, got an object',
        b'{"cmd": "mark", "note": ["x"]}': "note must be a string, got a list",
        b'{"cmd": "outbox_retry", "id": "\\u00b2"}': "a part number (digits 0-9) or a clip id",
        b'{"cmd": "outbox_retry", "id": 7}': "id must be a string, got a number",
        b'{"cmd": "nope"}': "unknown command 'nope'",
        b'{"cmd": "mark", "note": "\\u0000"}': "NUL",
        b'{"cmd": "mark", "note": "\\ud800"}': "lone surrogate",
        b"\xff\xfe{}": "not UTF-8",
        b"[" * 50_000: "nested deeper",
        b'{"cmd": "explode"}': "Bearer ***",
    }
    for line, reason in cases.items():
        doc = answer(line, HANDLERS)
        check_answer(doc)
        assert doc["ok"] is False and reason in doc["error"], (line[:40], doc)
    assert answer(b"x" * (MAX_REQUEST + 1), HANDLERS)["error"].startswith("bad request: request too large")


# --- through a real socket -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlServer]:
    path = tmp_path_factory.mktemp("control") / "control.sock"
    srv = ControlServer(path, HANDLERS, deadline_s=2.0)
    srv.start()
    yield srv
    srv.stop()


def exchange(path: Path, data: bytes) -> bytes:
    """Send ``data``, end the request (EOF), read everything the server sends until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):  # refused before all of it was sent
            pass
        out = bytearray()
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # closed with our surplus unread: after its answer
            pass
        return bytes(out)


def one_answer(raw: bytes) -> dict[str, Any]:
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw[:200]
    doc = json.loads(raw)
    check_answer(doc)
    return doc


@SOCKET_FUZZ
@given(st.binary(max_size=2048), st.booleans())
def test_socket_answers_any_bytes_with_one_json_line(server: ControlServer, data: bytes, newline: bool) -> None:
    raw = exchange(server.path, data + (b"\n" if newline else b""))
    if not data and not newline:
        assert raw == b""  # connected and left without a word: closed quietly
    else:
        one_answer(raw)


@SOCKET_FUZZ
@given(commands, arguments)
def test_socket_answers_any_request(server: ControlServer, cmd: Any, args: dict[str, Any]) -> None:
    one_answer(exchange(server.path, json.dumps({**args, "cmd": cmd}).encode() + b"\n"))


def test_socket_survives_concurrent_fuzzing_and_keeps_its_threads(server: ControlServer) -> None:
    """Eight clients at once sending garbage, oversize and valid requests; the server's threads
    stay what they were, and the next request is answered."""
    before = threading.active_count()
    payloads = [
        b"\x00" * 100,
        b"[" * 70_000,
        b"x" * (MAX_REQUEST + 10) + b"\n",
        b'{"cmd": "status"}\n',
        b'{"cmd": "explode"}\n',
        b"{}\n",
        b'{"cmd": "mark", "note": "ok"}\n',
    ]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for n in range(40):
                one_answer(exchange(server.path, payloads[(i + n) % len(payloads)]))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert threading.active_count() == before
    assert one_answer(exchange(server.path, b'{"cmd": "status"}\n'))["ok"] is True
