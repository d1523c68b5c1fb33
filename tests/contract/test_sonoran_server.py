"""The contract server (tests/contract/sonoran_server.py) enforces the documented Sonoran bodycam upload rules:
each rule refuses what it should, with the documented message, and a valid upload goes through.
Driven with plain httpx (and raw sockets where the framing itself is the point)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from edged.core import limits
from tests.contract.sonoran_server import EBML_MAGIC, LEGACY_PATH, V2_PATH, SonoranServer

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "5f0c8a2e-1b7d-4c3e-9a61-2d4b8f7e0c11"
LEGACY = {"comm-1": {"plan": "free", "accounts": {ACCOUNT: {"session": "sess-1", "username": "Officer"}}}}
LEGACY_FIELDS = {
    "community": "comm-1",
    "account": ACCOUNT,
    "sessionId": "sess-1",
    "username": "Officer",
    "type": "bodycam",
    "durationMs": "1000",
}


class Clock:
    """The server's clock, advanced by the test."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def webm(tmp_path_factory) -> bytes:
    """A tiny real WebM: 10 frames of 64x64 VP8."""
    path = tmp_path_factory.mktemp("webm") / "clip.webm"
    with av.open(str(path), "w", format="webm") as c:
        s = c.add_stream("libvpx", rate=10)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(10):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 10)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    assert data.startswith(EBML_MAGIC)
    return data


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def srv(clock, tmp_path):
    with SonoranServer(
        keys={"test-key": "free", "pro-key": "pro", "std-key": "standard"},
        accounts={ACCOUNT},
        legacy=LEGACY,
        clock=clock,
        store_dir=tmp_path / "store",
    ) as s:
        yield s


def v2(
    srv: SonoranServer,
    webm: bytes | None,
    key: str | None = "test-key",
    filename: str = "clip.webm",
    client: httpx.Client | httpx.Client | None = None,
    **fields,
) -> httpx.Response:
    data = {"accountUuid": ACCOUNT, "durationMs": "1000"} | fields
    data = {k: v for k, v in data.items() if v is not None}
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    files = {"file": (filename, webm, "video/webm")} if webm is not None else None
    return (client or httpx).post(srv.url + V2_PATH, headers=headers, data=data, files=files, timeout=10)


def legacy(srv: SonoranServer, webm: bytes | None, filename: str = "clip.webm", **fields) -> httpx.Response:
    data = {k: v for k, v in (LEGACY_FIELDS | fields).items() if v is not None}
    files = {"file": (filename, webm, "video/webm")} if webm is not None else None
    return httpx.post(srv.url + LEGACY_PATH, data=data, files=files, timeout=10)


def problem(r: httpx.Response, status: int) -> str:
    """The detail of a v2 problem+json refusal, after checking its shape."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["title"] == "Unable to upload bodycam recording" and doc["status"] == status
    return doc["detail"]


def plain(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


# --- v2: a valid upload ------------------------------------------------------------------------------


def test_v2_accepts_a_valid_upload_answers_one_url_and_records_it(srv, clock, webm, tmp_path):
    clock.t = 1234.5
    r = v2(srv, webm, durationMs="4321", identId="7", unitNumber="1A-12", unitLocation="Senora Fwy / Route 68")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    digest = hashlib.sha256(webm).hexdigest()
    assert r.json() == [f"{srv.url}/files/{digest}.webm"]
    [up] = srv.uploads
    assert (up.api, up.key, up.filename, up.size, up.sha256, up.duration_ms, up.at) == (
        "v2",
        "test-key",
        "clip.webm",
        len(webm),
        digest,
        4321,
        1234.5,
    )
    assert up.fields == {
        "accountUuid": ACCOUNT,
        "durationMs": "4321",
        "identId": "7",
        "unitNumber": "1A-12",
        "unitLocation": "Senora Fwy / Route 68",
    }
    assert (tmp_path / "store" / f"{digest}.webm").read_bytes() == webm
    assert httpx.get(r.json()[0]).content == webm
    assert [(q.api, q.key, q.status) for q in srv.requests] == [("v2", "test-key", 200)]
    assert srv.count(200) == 1 and srv.count(200, api="legacy") == 0 and srv.count(400) == 0


def test_unknown_paths_are_404_and_other_methods_405(srv, webm):
    r = httpx.post(
        srv.url + "/v2/general/bodycam-recording",
        headers={"Authorization": "Bearer test-key"},
        files={"file": ("clip.webm", webm)},
    )
    assert r.status_code == 404
    assert httpx.get(srv.url + "/").status_code == 404
    assert httpx.get(srv.url + "/files/" + "0" * 64 + ".webm").status_code == 404
    assert httpx.get(srv.url + V2_PATH).status_code == 405
    assert srv.uploads == [] and srv.count(404) == 3


# --- v2: authentication and the rate limit -----------------------------------------------------------


@pytest.mark.parametrize(
    "auth", [None, "Bearer", "Bearer wrong-key", "Bearer test-key-but-longer", "test-key", "Basic test-key"]
)
def test_v2_refuses_a_missing_or_unknown_key(srv, webm, auth):
    headers = {} if auth is None else {"Authorization": auth}
    r = httpx.post(
        srv.url + V2_PATH,
        headers=headers,
        data={"accountUuid": ACCOUNT, "durationMs": "1000"},
        files={"file": ("clip.webm", webm)},
    )
    assert "API key" in problem(r, 401)
    assert srv.uploads == [] and srv.count(401) == 1


def test_v2_bearer_scheme_is_case_insensitive(srv, webm):
    r = httpx.post(
        srv.url + V2_PATH,
        headers={"Authorization": "bearer test-key"},
        data={"accountUuid": ACCOUNT, "durationMs": "1000"},
        files={"file": ("clip.webm", webm)},
    )
    assert r.status_code == 200, r.text


def test_rate_limit_30_per_rolling_minute_per_key_counts_refusals_and_comes_before_the_body(srv, clock, webm):
    for _ in range(10):  # t=1000: refused for their body, counted all the same
        problem(v2(srv, webm, durationMs="0"), 400)
    clock.t = 1030.0
    for _ in range(19):
        problem(v2(srv, webm, durationMs="0"), 400)
    assert v2(srv, webm).status_code == 200  # the 30th in the window
    clock.t = 1040.0
    r = v2(srv, webm)  # the 31st: valid, but over the limit
    assert "Too many requests" in problem(r, 429)
    assert r.headers["retry-after"] == "20", "the t=1000 requests leave the window at 1060"
    r = v2(srv, None)  # a body that breaks every rule: the limit answers first
    problem(r, 429)
    assert len(srv.uploads) == 1
    assert v2(srv, webm, key="pro-key").status_code == 200, "another key has its own window"
    clock.t = 1059.0
    r = v2(srv, webm)
    problem(r, 429)
    assert r.headers["retry-after"] == "1"
    clock.t = 1060.0  # the ten from t=1000 have left; 20 + the three 429s remain
    assert v2(srv, webm).status_code == 200
    assert srv.count(429) == 3 and srv.count(429, api="v2") == 3


def test_retry_after_is_enough_even_for_a_client_that_kept_knocking(srv, clock, webm):
    clock.t = 0.0
    for _ in range(limits.REQUESTS_PER_MINUTE):
        problem(v2(srv, webm, durationMs="0"), 400)
    retry = None
    for t in range(1, 6):  # refused requests count too: knocking pushes nothing forward here...
        clock.t = float(t)
        r = v2(srv, webm)
        problem(r, 429)
        retry = int(r.headers["retry-after"])
    assert retry == 55
    clock.t = 5.0 + retry - 1
    problem(v2(srv, webm), 429)
    clock.t = 5.0 + retry + 1  # ... but Retry-After is honest once the client waits
    assert v2(srv, webm).status_code == 200


def test_unknown_keys_do_not_use_up_a_known_keys_window(srv, webm):
    for _ in range(limits.REQUESTS_PER_MINUTE + 5):
        problem(v2(srv, webm, key="nope"), 401)
    assert v2(srv, webm).status_code == 200


# --- v2: the body rules ------------------------------------------------------------------------------


def test_v2_accepts_only_multipart_form_data(srv, webm):
    auth = {"Authorization": "Bearer test-key"}
    r = httpx.post(srv.url + V2_PATH, headers=auth, json={"accountUuid": ACCOUNT, "durationMs": 1000})
    assert "multipart/form-data" in problem(r, 400)
    r = httpx.post(srv.url + V2_PATH, headers=auth, data={"accountUuid": ACCOUNT, "durationMs": "1000"})
    assert "multipart/form-data" in problem(r, 400)
    r = httpx.post(srv.url + V2_PATH, headers=auth | {"Content-Type": "multipart/form-data"}, content=webm)
    assert "multipart/form-data" in problem(r, 400), "no boundary"
    r = httpx.post(
        srv.url + V2_PATH,
        headers=auth | {"Content-Type": "multipart/form-data; boundary=xyz"},
        content=b'--xyz\r\nContent-Disposition: form-data; name="durationMs"\r\n\r\n1000',
    )
    assert "Malformed" in problem(r, 400), "no closing boundary"
    assert srv.uploads == []


def test_v2_wants_exactly_one_file_part_named_file(srv, webm):
    auth = {"Authorization": "Bearer test-key"}
    fields = {"accountUuid": ACCOUNT, "durationMs": "1000"}
    r = httpx.post(srv.url + V2_PATH, headers=auth, data=fields, files={"foo": ("x", b"")})  # none named file
    assert "Exactly one file" in problem(r, 400)
    r = httpx.post(srv.url + V2_PATH, headers=auth, data=fields | {"file": "not a file"}, files={"foo": ("x", b"")})
    assert "Exactly one file" in problem(r, 400)
    r = httpx.post(srv.url + V2_PATH, headers=auth, data=fields, files={"video": ("clip.webm", webm)})
    assert "Exactly one file" in problem(r, 400)
    r = httpx.post(
        srv.url + V2_PATH, headers=auth, data=fields, files=[("file", ("a.webm", webm)), ("file", ("b.webm", webm))]
    )
    assert "Exactly one file" in problem(r, 400)
    assert srv.uploads == []


def test_v2_accepts_only_webm_by_name_and_by_content(srv, webm):
    assert problem(v2(srv, webm, filename="clip.mp4"), 400) == "Bodycam uploads must be webm files."
    assert problem(v2(srv, webm, filename="clip.webm.txt"), 400) == "Bodycam uploads must be webm files."
    assert problem(v2(srv, b"RIFF" + webm[4:], filename="clip.webm"), 400) == "Bodycam uploads must be webm files."
    assert problem(v2(srv, b"", filename="clip.webm"), 400) == "Bodycam uploads must be webm files."
    assert problem(v2(srv, webm[:3], filename="clip.webm"), 400) == "Bodycam uploads must be webm files."
    assert srv.uploads == []
    assert v2(srv, webm, filename="CLIP.WEBM").status_code == 200


def test_v2_file_size_limit_is_inclusive(srv, webm):
    at_limit = webm + b"\0" * (limits.MAX_UPLOAD_BYTES - len(webm))
    r = v2(srv, at_limit + b"\0")
    assert problem(r, 400) == "File exceeds 6000000 bytes."
    assert srv.uploads == []
    assert v2(srv, at_limit).status_code == 200
    assert srv.uploads[0].size == limits.MAX_UPLOAD_BYTES
    assert srv.uploads[0].sha256 == hashlib.sha256(at_limit).hexdigest()


ONE_OF = "Provide exactly one of accountUuid, communityUserId, roblox, or discord."


@pytest.mark.parametrize(
    "owner",
    [
        {"accountUuid": None},
        {"accountUuid": ""},
        {"accountUuid": ACCOUNT, "discord": "1234"},
        {"accountUuid": None, "communityUserId": ACCOUNT, "roblox": "55"},
        {"accountUuid": None, "roblox": "55", "discord": "abc"},
    ],
)
def test_v2_wants_exactly_one_identifier(srv, webm, owner):
    assert problem(v2(srv, webm, **owner), 400) == ONE_OF
    assert srv.uploads == []


def test_v2_refuses_the_same_identifier_twice(srv, webm):
    r = httpx.post(
        srv.url + V2_PATH,
        headers={"Authorization": "Bearer test-key"},
        data={"accountUuid": [ACCOUNT, ACCOUNT], "durationMs": "1000"},
        files={"file": ("c.webm", webm)},
    )
    assert problem(r, 400) == ONE_OF


@pytest.mark.parametrize(
    "owner", [{"accountUuid": ACCOUNT}, {"communityUserId": ACCOUNT}, {"roblox": "123456"}, {"discord": "officer#0001"}]
)
def test_v2_accepts_each_kind_of_identifier(srv, webm, owner):
    r = v2(srv, webm, **({"accountUuid": None} | owner))
    assert r.status_code == 200, r.text
    assert srv.uploads[0].fields == owner | {"durationMs": "1000"}


def test_v2_roblox_must_be_an_integer(srv, webm):
    assert "integer" in problem(v2(srv, webm, accountUuid=None, roblox="builderman"), 400)


def test_v2_unknown_account_is_named(srv, webm):
    r = v2(srv, webm, accountUuid="00000000-0000-0000-0000-000000000000")
    assert problem(r, 400) == "Account 00000000-0000-0000-0000-000000000000 was not found in this community."
    r = v2(srv, webm, accountUuid=None, communityUserId="nobody")
    assert problem(r, 400) == "Account nobody was not found in this community."
    assert srv.uploads == []


def test_any_account_is_known_without_an_account_list(webm):
    with SonoranServer() as s:
        assert v2(s, webm, accountUuid="whoever").status_code == 200


@pytest.mark.parametrize("duration", [None, "", "0", "-5", "120001", "1.5", "1e3", "abc", "1_000", "٣"])
def test_v2_duration_must_be_an_integer_from_1_to_120000(srv, webm, duration):
    r = v2(srv, webm, key="pro-key", durationMs=duration)
    assert problem(r, 400) == "Bodycam clips must be between 1ms and 120000ms."
    assert srv.uploads == []


@pytest.mark.parametrize("duration", ["1", "120000"])
def test_v2_duration_bounds_are_accepted(srv, webm, duration):
    assert v2(srv, webm, key="pro-key", durationMs=duration).status_code == 200
    assert srv.uploads[0].duration_ms == int(duration)


def test_v2_ident_id_must_be_an_integer_if_given(srv, webm):
    assert "identId" in problem(v2(srv, webm, identId="seven"), 400)
    assert v2(srv, webm, identId="7").status_code == 200


# --- v2: the plan's rolling 24 h allowance -----------------------------------------------------------


def test_free_plan_allowance_is_10_minutes_per_rolling_24_hours_per_key(srv, clock, webm):
    clock.t = 0.0
    assert v2(srv, webm, durationMs="120000").status_code == 200
    clock.t = 1000.0
    for _ in range(4):
        assert v2(srv, webm, durationMs="120000").status_code == 200  # exactly 10 minutes now
    r = v2(srv, webm, durationMs="1")
    assert problem(r, 400) == "Bodycam uploads are limited to 10 minutes per 24 hours for the FREE plan."
    assert v2(srv, webm, key="pro-key", durationMs="120000").status_code == 200, "per key"
    clock.t = limits.ALLOWANCE_WINDOW_S - 0.5
    problem(v2(srv, webm, durationMs="1"), 400)
    clock.t = float(limits.ALLOWANCE_WINDOW_S)  # the t=0 clip has just left the window: two minutes free
    assert v2(srv, webm, durationMs="60000").status_code == 200
    problem(v2(srv, webm, durationMs="60001"), 400)
    assert v2(srv, webm, durationMs="60000").status_code == 200
    assert len([u for u in srv.uploads if u.key == "test-key"]) == 7


def test_standard_plan_allowance_names_its_minutes_and_plan(srv, clock, webm):
    clock.t = 0.0
    for i in range(50):  # 100 minutes, paced under the rate limit
        clock.t = i * 3.0
        assert v2(srv, webm, key="std-key", durationMs="120000").status_code == 200
    clock.t += 3.0
    r = v2(srv, webm, key="std-key", durationMs="1")
    assert problem(r, 400) == "Bodycam uploads are limited to 100 minutes per 24 hours for the STANDARD plan."


def test_refusals_do_not_use_up_the_allowance(srv, clock, webm):
    for _ in range(5):
        problem(v2(srv, webm, filename="clip.mp4", durationMs="120000"), 400)
    for _ in range(5):
        assert v2(srv, webm, durationMs="120000").status_code == 200


# --- legacy ------------------------------------------------------------------------------------------


def test_legacy_accepts_a_valid_upload(srv, clock, webm):
    r = legacy(srv, webm, identId="abc-7", unitNumber="1A-12")
    assert r.status_code == 200, r.text
    digest = hashlib.sha256(webm).hexdigest()
    assert r.json() == [f"{srv.url}/files/{digest}.webm"]
    [up] = srv.uploads
    assert (up.api, up.key, up.sha256, up.duration_ms) == ("legacy", "comm-1", digest, 1000)
    assert up.fields == LEGACY_FIELDS | {"identId": "abc-7", "unitNumber": "1A-12"}
    assert srv.count(200, api="legacy") == 1 and srv.count(api="v2") == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"community": "comm-2"}, "Error: Invalid account ID."),
        ({"community": None}, "Error: Invalid account ID."),
        ({"account": "someone-else"}, "Error: Invalid account ID."),
        ({"sessionId": "sess-2"}, "Error: Invalid session ID."),
        ({"sessionId": None}, "Error: Invalid session ID."),
        ({"type": "dashcam"}, "Error: Unable to validate bodycam upload session."),
        ({"type": None}, "Error: Unable to validate bodycam upload session."),
        ({"durationMs": "0"}, "Error: Bodycam clips must be between 1ms and 120000ms."),
        ({"durationMs": "120001"}, "Error: Bodycam clips must be between 1ms and 120000ms."),
        ({"durationMs": None}, "Error: Bodycam clips must be between 1ms and 120000ms."),
    ],
)
def test_legacy_refusals_are_plain_text(srv, webm, fields, message):
    assert plain(legacy(srv, webm, **fields)) == message
    assert srv.uploads == []


def test_legacy_file_rules(srv, webm):
    assert plain(legacy(srv, webm, filename="clip.mkv")) == "Error: Bodycam uploads must be webm files."
    assert plain(legacy(srv, b"\0" + webm)) == "Error: Bodycam uploads must be webm files."
    big = webm + b"\0" * (limits.MAX_UPLOAD_BYTES + 1 - len(webm))
    assert plain(legacy(srv, big)) == "Error: File exceeds 6000000 bytes."
    r = httpx.post(srv.url + LEGACY_PATH, data=LEGACY_FIELDS)
    assert plain(r).startswith("Error: ")
    assert srv.uploads == []


def test_legacy_allowance_is_per_community(srv, clock, webm):
    for _ in range(5):
        assert legacy(srv, webm, durationMs="120000").status_code == 200
    assert (
        plain(legacy(srv, webm, durationMs="1"))
        == "Error: Bodycam uploads are limited to 10 minutes per 24 hours for the FREE plan."
    )
    assert v2(srv, webm, durationMs="120000").status_code == 200, "the v2 key has its own allowance"
    clock.t += limits.ALLOWANCE_WINDOW_S
    assert legacy(srv, webm, durationMs="120000").status_code == 200


def test_legacy_rate_limit_is_per_community(srv, clock, webm):
    for _ in range(limits.REQUESTS_PER_MINUTE):
        plain(legacy(srv, webm, sessionId="wrong"))  # refused, counted
    r = legacy(srv, webm)
    assert plain(r, 429).startswith("Error: ")
    assert r.headers["retry-after"] == "60"
    assert v2(srv, webm).status_code == 200, "the v2 key is not the community's window"
    clock.t += limits.RATE_WINDOW_S
    assert legacy(srv, webm).status_code == 200


# --- framing: chunked bodies, the boundary, keep-alive, memory ---------------------------------------


def multipart(boundary: bytes, fields: dict[str, str], filename: str, content: bytes) -> bytes:
    out = [b"preamble to be ignored\r\n"]
    for k, v in fields.items():
        out.append(
            b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (boundary, k.encode(), v.encode())
        )
    out.append(
        b'--%s  \r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: video/webm\r\n\r\n" % (boundary, filename.encode())
    )
    out.append(content)
    out.append(b"\r\n--%s--\r\nepilogue to be ignored" % boundary)
    return b"".join(out)


def test_chunked_body_with_boundary_lookalikes_in_the_file_arrives_byte_for_byte(srv, webm):
    boundary = b"edged-b0undary"
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    # a delimiter is CRLF--boundary; these come close without being one
    lookalikes = b"\r\n--" + boundary[:-1] + b"\r\n-" + b"--" + boundary + b"\r\nx\r\n\r\n"
    content = webm + lookalikes + noise + lookalikes * 3 + b"\r\n"
    body = multipart(boundary, {"accountUuid": ACCOUNT, "durationMs": "2500"}, "clip.webm", content)

    def chunks():  # odd sizes, so delimiters straddle reads
        for i in range(0, len(body), 7919):
            yield body[i : i + 7919]

    r = httpx.post(
        srv.url + V2_PATH,
        content=chunks(),
        timeout=10,
        headers={
            "Authorization": "Bearer test-key",
            "Content-Type": f'multipart/form-data; boundary="{boundary.decode()}"',
        },
    )
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 200, r.text
    [up] = srv.uploads
    assert (up.size, up.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert up.fields == {"accountUuid": ACCOUNT, "durationMs": "2500"}


def test_content_length_body_parsed_with_the_header_boundary(srv, webm):
    boundary = b"Zz9"
    content = webm + b"\r\n--Zz" + b"\n--Zz9--\r\n" + b"\r--Zz9\r\n"  # a delimiter needs CRLF before --Zz9
    body = multipart(boundary, {"accountUuid": ACCOUNT, "durationMs": "10"}, "clip.webm", content)
    r = httpx.post(
        srv.url + V2_PATH,
        content=body,
        headers={"Authorization": "Bearer test-key", "Content-Type": "multipart/form-data; boundary=Zz9"},
    )
    assert r.request.headers["content-length"] == str(len(body))
    assert r.status_code == 200, r.text
    assert srv.uploads[0].sha256 == hashlib.sha256(content).hexdigest()


def raw_request(path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def read_response(f) -> tuple[int, bytes]:
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
    return status, f.read(length)


def test_keep_alive_connection_stays_in_step_after_refused_bodies(srv, webm):
    """A refused request's body is read to its end, even when the refusal came before the body was
    looked at, so the next request on the connection is parsed from its first byte (all three are
    sent at once, pipelined)."""
    ctype = {"Content-Type": "multipart/form-data; boundary=bb"}
    padded = multipart(b"bb", {"accountUuid": ACCOUNT, "durationMs": "0"}, "clip.webm", webm + b"\0" * 200_000)
    good = multipart(b"bb", {"accountUuid": ACCOUNT, "durationMs": "5"}, "clip.webm", webm)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(
            raw_request(V2_PATH, ctype | {"Authorization": "Bearer nope"}, padded)
            + raw_request(V2_PATH, ctype | {"Authorization": "Bearer test-key"}, padded)
            + raw_request(V2_PATH, ctype | {"Authorization": "Bearer test-key"}, good)
        )
        f = s.makefile("rb")
        answers = [read_response(f) for _ in range(3)]
    assert [status for status, _ in answers] == [401, 400, 200]
    assert json.loads(answers[1][1])["detail"].startswith("Bodycam clips must be")
    assert json.loads(answers[2][1])[0].endswith(".webm")
    assert [u.duration_ms for u in srv.uploads] == [5]


def test_bad_chunked_framing_is_a_400_and_the_connection_closes(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(
            b"POST " + V2_PATH.encode() + b" HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-key\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nhello\r\n0\r\n\r\n"
        )
        f = s.makefile("rb")
        status, _ = read_response(f)
        assert status == 400
        assert f.read() == b"", "closed after an unreadable body"


def test_a_6_mb_upload_is_spooled_not_held_in_memory(srv, tmp_path, webm):
    big = tmp_path / "big.webm"
    with open(big, "wb") as f:
        f.write(webm)
        f.write(os.urandom(limits.MAX_UPLOAD_BYTES - len(webm)))
    with httpx.Client(timeout=30) as client:  # made first: its TLS context is not the server's doing
        tracemalloc.start()
        try:
            with open(big, "rb") as f:  # httpx streams a file in 64 KiB reads
                r = client.post(
                    srv.url + V2_PATH,
                    headers={"Authorization": "Bearer pro-key"},
                    data={"accountUuid": ACCOUNT, "durationMs": "1000"},
                    files={"file": ("big.webm", f, "video/webm")},
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert srv.uploads[0].sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert peak < 1_000_000, f"server and client together peaked at {peak} bytes for a 6 MB body"


def test_concurrent_uploads_are_all_received_intact(srv, webm):
    bodies = [webm + bytes([i]) * (1000 * i) for i in range(8)]
    results = [None] * 8

    def send(i):
        results[i] = v2(srv, bodies[i], key="pro-key", durationMs=str(100 + i)).status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    assert sorted(u.sha256 for u in srv.uploads) == sorted(hashlib.sha256(b).hexdigest() for b in bodies)


# --- fault knobs -------------------------------------------------------------------------------------


def test_fail_next_answers_as_told_after_reading_the_body_then_serves_normally(srv, webm):
    srv.fail_next(2, 503, "upstream down", {"Retry-After": "7"})
    big = webm + b"\0" * 500_000  # a client still sending would see a broken pipe, not the answer
    for _ in range(2):
        r = v2(srv, big)
        assert (r.status_code, r.text, r.headers["retry-after"]) == (503, "upstream down", "7")
    srv.fail_next(1, 429, '{"status": 429}', {"Content-Type": "application/problem+json"})
    r = v2(srv, webm)
    assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
    assert v2(srv, webm).status_code == 200
    assert srv.count(503) == 2 and srv.count(429) == 1 and len(srv.uploads) == 1


def test_reset_next_cuts_the_connection_mid_body(srv, webm):
    srv.reset_next(1, after_bytes=20_000)
    with pytest.raises(httpx.TransportError):
        v2(srv, webm + b"\0" * 300_000)
    srv.reset_next(1)
    with pytest.raises(httpx.TransportError):
        v2(srv, webm)
    assert srv.uploads == [] and [q.status for q in srv.requests] == [0, 0]
    assert v2(srv, webm).status_code == 200


def test_stall_next_holds_the_answer_past_a_client_timeout(srv, webm):
    srv.stall_next(1, 3.0)
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            srv.url + V2_PATH,
            headers={"Authorization": "Bearer test-key"},
            data={"accountUuid": ACCOUNT, "durationMs": "1000"},
            files={"file": ("clip.webm", webm)},
            timeout=httpx.Timeout(10, read=0.5),
        )
    assert time.monotonic() - t0 < 2.5
    assert len(srv.uploads) == 1, "judged and kept at once: only the answer was lost"
    t0 = time.monotonic()
    assert v2(srv, webm).status_code == 200
    assert time.monotonic() - t0 < 1.0, "only the next request stalls"


def test_down_refuses_connects_and_cuts_kept_alive_ones_up_listens_on_the_same_port(srv, webm):
    port, url = srv.port, srv.url
    with httpx.Client(timeout=5) as client:
        assert v2(srv, webm, client=client).status_code == 200  # leaves a kept-alive connection
        srv.down()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/")
        with pytest.raises(httpx.TransportError):
            v2(srv, webm, client=client)
        srv.up()
        assert srv.port == port and srv.url == url
        assert v2(srv, webm, client=client).status_code == 200
    assert len(srv.uploads) == 2


def test_down_during_a_stall_abandons_the_answer(srv, webm):
    srv.stall_next(1, 30.0)
    errors = []

    def send():
        try:
            v2(srv, webm)
        except httpx.TransportError as exc:
            errors.append(exc)

    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + 5
    while not srv.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.down()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1


# --- as a process --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_as_a_process_prints_ready_serves_and_stops_on_sigterm(tmp_path, webm):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "contract" / "sonoran_server.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--store-dir",
            str(tmp_path / "got"),
            "--key",
            "k1=pro",
            "--key",
            "k2=free",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line == f"READY http://127.0.0.1:{port}\n"
        url = line.split()[1]
        fields = {"accountUuid": ACCOUNT, "durationMs": "1000"}
        r = httpx.post(
            url + V2_PATH, headers={"Authorization": "Bearer k1"}, data=fields, files={"file": ("clip.webm", webm)}
        )
        assert r.status_code == 200, r.text
        digest = hashlib.sha256(webm).hexdigest()
        assert (tmp_path / "got" / f"{digest}.webm").read_bytes() == webm
        assert (
            httpx.post(
                url + V2_PATH,
                headers={"Authorization": "Bearer test-key"},
                data=fields,
                files={"file": ("clip.webm", webm)},
            ).status_code
            == 401
        ), "only the given keys"
        r = httpx.post(
            url + V2_PATH,
            headers={"Authorization": "Bearer k2"},
            data=fields | {"durationMs": "0"},
            files={"file": ("clip.webm", webm)},
        )
        assert r.status_code == 400
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/")
    finally:
        proc.kill()
        proc.wait()


def test_process_refuses_a_bad_key_option():
    r = subprocess.run(
        [sys.executable, str(REPO / "tests" / "contract" / "sonoran_server.py"), "--key", "k1=gold"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "k1=gold" in r.stderr and r.stdout == ""
