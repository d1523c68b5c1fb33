"""Property-based fuzzing of the answer classifier (``edged.upload.answers``, hypothesis).

Whatever a server — or a captive portal, a proxy, a broken load balancer — answers: any status
(in range or not), any headers (content types, Retry-After, Location, ETag, encodings, the API
key echoed), any body (bytes, JSON of any shape, HTML pages, S3 XML, problem+json, deep nesting,
answers cut off at the cap), judged against every contract:

- no exception escapes ``classify`` (nor ``classify_error``);
- a verdict other than *delivered* has a non-empty, one-line reason;
- *delivered* only for a 2xx, whole answer of the contract's documented shape (checked here by an
  oracle written from the reference documents, not from the classifier);
- and every answer of that shape *is* delivered (so the first property is not won by refusing all);
- the API key (registered as a secret, as the targets do) never appears in a reason or response.

Case counts: ``EDGED_FUZZ_EXAMPLES`` (default 1500 per property, about 20 s in all on CI).
"""

from __future__ import annotations

import email.utils
import json
import os
import re
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.core.journal import register_secret
from edged.upload.answers import (
    BOTA_COMPLETE,
    BOTA_RECORDING,
    BOTA_UPLOAD_URL,
    MAX_ANSWER_BYTES,
    SONORAN_URLS,
    STORAGE_PUT,
    Answer,
    Contract,
    DeadlineExceeded,
    Kind,
    RequestCancelled,
    classify,
    classify_error,
    classify_response,
)

EXAMPLES = int(os.environ.get("EDGED_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEY = "sk_live_fuzz_Hq3Vb8Nw2Lc6"
register_secret(KEY)

CONTRACTS = [SONORAN_URLS, BOTA_RECORDING, BOTA_UPLOAD_URL, BOTA_COMPLETE, STORAGE_PUT]
_URL = re.compile(r"https?://[^\s/?#]+\S*", re.I)


# --- the oracle: the contracts as the reference documents state them ---------------------------------


def _is_url(v: Any) -> bool:
    return isinstance(v, str) and bool(_URL.fullmatch(v))


def _nonempty_str(doc: dict, name: str) -> bool:
    return isinstance(doc.get(name), str) and bool(doc[name].strip())


def contract_shaped(a: Answer, c: Contract) -> bool:
    """The documented success answer: 2xx, whole, not a web page, and the endpoint's shape."""
    if not 200 <= a.status < 300 or a.truncated:
        return False
    if a.body.strip() and "html" in (a.headers.get("content-type") or "").lower():
        return False
    if c is STORAGE_PUT:  # S3 PutObject: no body, an ETag
        return not a.body.strip() and bool(a.headers.get("etag"))
    if c is BOTA_COMPLETE and a.status == 204 and not a.body.strip():
        return True
    try:
        doc = json.loads(a.body)
    except (ValueError, RecursionError):
        return False
    if c is SONORAN_URLS:  # "a JSON list of URL strings" (OpenAPI: array of string; the example: URLs)
        return isinstance(doc, list) and bool(doc) and all(_is_url(u) for u in doc)
    if not isinstance(doc, dict):
        return False
    if c is BOTA_RECORDING:
        return _nonempty_str(doc, "id")
    if c is BOTA_UPLOAD_URL:
        headers = doc.get("headers")
        return (
            _nonempty_str(doc, "media_id")
            and _nonempty_str(doc, "upload_url")
            and _is_url(doc["upload_url"])
            and (headers is None or isinstance(headers, dict))
        )
    return True  # BOTA_COMPLETE: an object


def check(v: Any, a: Answer, c: Contract) -> None:
    assert v.kind in Kind
    assert KEY not in v.reason and KEY not in v.response, v
    if v.kind is not Kind.DELIVERED:
        assert v.reason.strip(), v
        assert "\n" not in v.reason and len(v.reason) <= 320, v.reason
    else:
        assert contract_shaped(a, c), f"delivered, but not {c.wanted}: {a}"


# --- strategies ---------------------------------------------------------------------------------------

texts = (
    st.text(max_size=40)
    | st.just(KEY)
    | st.builds(lambda a, b: f"{a}{KEY}{b}", st.text(max_size=10), st.text(max_size=10))
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=25
)
hosts = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}(:[0-9]{1,5})?", fullmatch=True)
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https", "HTTPS"]),
    hosts,
    st.from_regex(r"[A-Za-z0-9._~/%-]{0,30}", fullmatch=True) | st.just(f"clip.webm?api_key={KEY}"),
)
url_lists = st.lists(urls, min_size=1, max_size=4)
recordings = st.fixed_dictionaries(
    {"id": st.from_regex(r"rec_[0-9a-f]{6,12}", fullmatch=True)}, optional={"status": texts, "device_id": texts}
)
upload_urls = st.fixed_dictionaries(
    {"media_id": st.from_regex(r"med_[0-9a-f]{3,8}", fullmatch=True), "upload_url": urls},
    optional={
        "headers": st.dictionaries(st.sampled_from(["Content-Type", "x-amz-acl"]), st.text(max_size=20), max_size=2),
        "expires_at": st.just("2025-01-15T12:00:00Z"),
    },
)
contract_docs = url_lists | recordings | upload_urls | st.dictionaries(texts, json_values, max_size=3)
pages = st.builds(
    lambda pre, t: f"{pre}<html><head><title>{t}</title></head><body>{t}</body></html>".encode(),
    st.sampled_from(["", "<!DOCTYPE html>", "\n  ", "<!-- portal -->"]),
    texts,
)
problems = st.builds(
    lambda status, detail: json.dumps({"title": "Unable", "status": status, "detail": detail}),
    st.integers(100, 599),
    texts,
).map(str.encode)
s3_errors = st.builds(
    lambda code, msg: f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{msg}</Message></Error>".encode(),
    texts,
    texts,
)
bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda d: json.dumps(d).encode()),
    contract_docs.map(lambda d: json.dumps(d).encode()),
    pages,
    problems,
    s3_errors,
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b'["https://a.b/c"', b"\xff\xfe[\x00", '["\u2028"]'.encode()]),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),  # nesting deep enough to hit recursion limits
    st.text(max_size=300).map(lambda t: f"Error: {t}".encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/problem+json",
        "text/html; charset=utf-8",
        "text/plain",
        "application/xml",
        "application/xhtml+xml",
        "",
        "TEXT/HTML",
        "application/json; charset=utf-16",
    ]
) | st.text(max_size=20)
retry_afters = (
    st.integers(-10, 10**12).map(str) | texts | st.floats(0, 4e9).map(lambda t: email.utils.formatdate(t, usegmt=True))
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "content-type": content_types,
        "retry-after": retry_afters,
        "location": urls | texts,
        "etag": st.just('"abc123"') | texts,
        "content-encoding": st.sampled_from(["gzip", "br", "identity", ""]),
        "x-echo": texts,
    },
)
statuses = st.sampled_from(
    [200, 201, 204, 206, 301, 302, 307, 308, 400, 401, 403, 404, 408, 409, 413, 425, 429, 500, 502, 503, 504, 511]
) | st.integers(-1, 1200)
answers = st.builds(Answer, statuses, headers, bodies, st.booleans())


# --- properties -----------------------------------------------------------------------------------------


@FUZZ
@given(answers, st.sampled_from(CONTRACTS), st.floats(0, 4e9))
def test_any_answer_gets_a_verdict_with_a_reason_and_no_key(a: Answer, contract: Contract, now: float) -> None:
    check(classify(a, contract, now), a, contract)


@FUZZ
@given(statuses, headers, st.binary(max_size=3000) | bodies, st.sampled_from(CONTRACTS))
def test_the_text_entry_point_agrees(status: int, hdrs: dict, body: bytes, contract: Contract) -> None:
    """``classify_response`` (status, headers, text) is ``classify`` on the same answer, cut at the cap."""
    v = classify_response(status, hdrs, body, 0.0, contract)
    check(v, Answer(status, hdrs, body[:MAX_ANSWER_BYTES], len(body) > MAX_ANSWER_BYTES), contract)
    text = body.decode("utf-8", "replace")
    check(
        classify_response(status, hdrs, text, 0.0, contract),
        Answer(status, hdrs, text.encode("utf-8", "surrogateescape")),
        contract,
    )


@FUZZ
@given(
    st.sampled_from([200, 201, 202]),
    st.sampled_from(["application/json", "application/json; charset=utf-8", "", "text/plain"]),
    st.data(),
)
def test_every_contract_shaped_answer_is_delivered(status: int, ctype: str, data: st.DataObject) -> None:
    contract = data.draw(st.sampled_from([SONORAN_URLS, BOTA_RECORDING, BOTA_UPLOAD_URL, BOTA_COMPLETE]))
    doc = data.draw(
        {
            SONORAN_URLS: url_lists,
            BOTA_RECORDING: recordings,
            BOTA_UPLOAD_URL: upload_urls,
            BOTA_COMPLETE: st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        }[contract]
    )
    a = Answer(status, {"content-type": ctype} if ctype else {}, json.dumps(doc).encode())
    v = classify(a, contract, 0.0)
    assert v.kind is Kind.DELIVERED, (v, a)
    assert v.document == doc and KEY not in v.response
    put = Answer(200, {"etag": '"e"', "content-type": data.draw(content_types)}, b"")
    assert classify(put, STORAGE_PUT, 0.0).kind is Kind.DELIVERED


errors = st.one_of(
    st.builds(httpx.ConnectError, texts),
    st.builds(httpx.ConnectTimeout, texts),
    st.builds(httpx.ReadTimeout, texts),
    st.builds(httpx.WriteTimeout, texts),
    st.builds(httpx.RemoteProtocolError, texts),
    st.builds(httpx.ReadError, texts),
    st.builds(RequestCancelled, texts),
    st.builds(DeadlineExceeded, texts),
    st.builds(OSError, st.integers(0, 200), texts),
    st.builds(ValueError, texts),
)


@FUZZ
@given(errors)
def test_any_transport_error_gets_a_verdict_without_the_key(exc: BaseException) -> None:
    v = classify_error(exc)
    assert v.kind in (Kind.RETRY, Kind.CANCELLED) and v.reason.strip() and KEY not in v.reason, v
