"""A Bota API for the tests on 127.0.0.1, in front of a real S3-compatible store.

Storage: moto's S3 (its WSGI application, served by werkzeug on 127.0.0.1 in a thread) keeps the
objects; the tests read them back with boto3. moto 5 does not check query-string (presigned)
signatures or their expiry, so a WSGI layer in front of it does what S3 does with a presigned
request before anything else (an independent implementation of AWS Signature Version 4, not
botocore's, so the URLs botocore issues are checked by other code):

- ``X-Amz-Date`` + ``X-Amz-Expires`` passed → 403 ``AccessDenied`` "Request has expired";
- unknown access key → 403 ``InvalidAccessKeyId``;
- the signature over method, path, query and the signed headers (here ``content-length``,
  ``content-type``, ``host``: the PUT must carry exactly the returned headers and the announced
  size) does not match → 403 ``SignatureDoesNotMatch``;
- a PUT with ``Transfer-Encoding: chunked`` → 501 ``NotImplemented``; without Content-Length →
  411 ``MissingContentLength`` (what S3 answers a presigned PUT without a length).

API (``Authorization: Bearer <token>``, JSON bodies; unknown token → 401):

``POST /v1/recordings`` ``{"device_id"}`` → 201 ``{"id": "rec_…", ...}``
``POST /v1/recordings/{id}/upload-url`` ``{type, content_type, file_size_bytes, captured_at}`` →
    200 ``{media_id, upload_url, expires_at, headers: {"Content-Type"}}``: a real presigned
    ``put_object`` URL (boto3, SigV4) signing the content type and length, valid ``url_ttl_s``
    (3600, as documented). 400 for a bad type / content type (the documented lists) / size /
    captured_at (required for image and video), 404 unknown recording, 409 completed recording.
``POST /v1/recordings/{id}/complete`` → 200 ``{id, status: "completed", media: [...]}`` (each
    media marked uploaded if its object is in storage with the announced size); 409 if already
    completed; 400 if no media was uploaded. The reference names a "Complete Upload endpoint"
    without its path: this path is an assumption, shared with ``edged.upload.bota.target``.

Fault knobs, each for the next n matching API requests (``path`` a substring of the request path,
empty: any): ``fail_next`` (answer so, without doing anything), ``stall_next`` (do it and record
it, then hold the answer back; ``skip`` lets that many through first), ``expire_next`` (upload-url
only: the URL lives 1 s and the answer is held until it is dead); ``s3_fail_next`` for storage PUTs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import boto3
from botocore.config import Config

ACCESS_KEY = "AKIAEDGEDTEST0000001"
SECRET_KEY = "edged-test-secret-key-0000000000000000000"
REGION = "us-east-1"
CONTENT_TYPES = {  # the reference's lists
    "audio": ("audio/opus", "audio/wav", "audio/mpeg", "audio/mp4", "audio/webm", "audio/ogg", "audio/flac"),
    "image": ("image/jpeg", "image/png"),
    "video": ("video/mp4",),
}
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _xml_error(code: str, msg: str, **extra: str) -> bytes:
    more = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}</Message>{more}'
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_query_signature(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], secret: str
) -> str:
    """AWS Signature Version 4 of a presigned (query-string) S3 request, from the specification:
    canonical request → string to sign → HMAC chain. ``path`` decoded; ``headers`` lower-case names."""
    params = dict(query)
    signed = params["X-Amz-SignedHeaders"].split(";")
    enc = lambda s: quote(s, safe="-_.~")  # noqa: E731
    canonical_query = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(query) if k != "X-Amz-Signature")
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join(
        [method, quote(path, safe="/-_.~"), canonical_query, canonical_headers, ";".join(signed), "UNSIGNED-PAYLOAD"]
    )
    _, day, region, service, term = params["X-Amz-Credential"].split("/")
    scope = f"{day}/{region}/{service}/{term}"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), service), term)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass
class S3Put:
    """A PUT that reached storage, checked or not."""

    key: str
    status: int
    code: str
    content_length: str | None
    transfer_encoding: str | None
    content_type: str | None
    at: float


class PresignGate:
    """WSGI middleware: S3's checks of a presigned request, then moto."""

    def __init__(self, app, clock=time.time) -> None:
        self.app, self.clock = app, clock
        self.puts: list[S3Put] = []
        self._fail: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict, start_response):
        qs = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" not in qs:
            return self.app(environ, start_response)  # the tests' own boto3 calls (header-signed)
        method = environ["REQUEST_METHOD"]
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if "CONTENT_TYPE" in environ:
            headers["content-type"] = environ["CONTENT_TYPE"]
        if environ.get("CONTENT_LENGTH"):
            headers["content-length"] = environ["CONTENT_LENGTH"]
        path = environ.get("PATH_INFO", "")
        status, code, msg, extra = self._check(method, path, parse_qsl(qs, keep_blank_values=True), headers)
        if method == "PUT":
            with self.lock:
                if status == 200 and self._fail:
                    status, code = self._fail.pop(0)
                    msg = "injected"
                self.puts.append(
                    S3Put(
                        path,
                        status,
                        code,
                        headers.get("content-length"),
                        headers.get("transfer-encoding"),
                        headers.get("content-type"),
                        self.clock(),
                    )
                )
        if status != 200:
            body = _xml_error(code, msg, **extra)
            start_response(
                f"{status} {code}",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body))), ("Connection", "close")],
            )
            return [body]
        return self.app(environ, start_response)

    def _check(
        self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[int, str, str, dict[str, str]]:
        p = dict(query)
        try:
            if p.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
                return 400, "AuthorizationQueryParametersError", "X-Amz-Algorithm only supports AWS4-HMAC-SHA256", {}
            signed_at = datetime.strptime(p["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
            expires = int(p["X-Amz-Expires"])
            access_key = p["X-Amz-Credential"].split("/")[0]
            signed = p["X-Amz-SignedHeaders"].split(";")
            given = p["X-Amz-Signature"]
        except (KeyError, ValueError, IndexError):
            return 400, "AuthorizationQueryParametersError", "malformed query-string authentication", {}
        now = self.clock()
        if now > signed_at + expires:
            when = lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
            return (
                403,
                "AccessDenied",
                "Request has expired",
                {"X-Amz-Expires": str(expires), "Expires": when(signed_at + expires), "ServerTime": when(now)},
            )
        if access_key != ACCESS_KEY:
            return 403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.", {}
        if method == "PUT":  # the framing is refused before the signature is looked at
            if "chunked" in headers.get("transfer-encoding", "").lower():
                return (
                    501,
                    "NotImplemented",
                    "A header you provided implies functionality that is not implemented",
                    {"Header": "Transfer-Encoding"},
                )
            if "content-length" not in headers:
                return 411, "MissingContentLength", "You must provide the Content-Length HTTP header.", {}
        if "host" not in signed:
            return 400, "AuthorizationQueryParametersError", "host must be a signed header", {}
        want = sigv4_query_signature(method, unquote(path), query, headers, SECRET_KEY)
        if not hmac.compare_digest(want, given):
            return (
                403,
                "SignatureDoesNotMatch",
                (
                    "The request signature we calculated does not match the "
                    "signature you provided. Check your key and signing method."
                ),
                {},
            )
        return 200, "", "", {}

    def fail_next(self, n: int, status: int, code: str = "InternalError") -> None:
        with self.lock:
            self._fail += [(status, code)] * n


class S3Server:
    """moto's S3 behind :class:`PresignGate`, on 127.0.0.1 (a thread of this process)."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        class Quiet(MotoRequestHandler):
            def log_request(self, *args: Any) -> None:
                pass

        self.gate = PresignGate(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, self.gate, threaded=True, request_handler=Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        self.bucket = f"bota-media-{secrets.token_hex(4)}"
        self.client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def start(self) -> S3Server:
        self._thread.start()
        self.client.create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def presign_put(self, key: str, content_type: str, size: int, ttl_s: int) -> str:
        return self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size},
            ExpiresIn=ttl_s,
        )

    def get(self, key: str) -> tuple[bytes, str]:
        obj = self.client.get_object(Bucket=self.bucket, Key=key)
        return obj["Body"].read(), obj["ContentType"]

    def size(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except self.client.exceptions.ClientError:
            return None


# --- the API ----------------------------------------------------------------------------------------


@dataclass
class Media:
    id: str
    type: str
    content_type: str
    size: int
    captured_at: str | None
    key: str
    uploaded: bool = False


@dataclass
class Recording:
    id: str
    device_id: str
    token: str
    media: dict[str, Media] = field(default_factory=dict)
    completed: int = 0  # times it was completed (must end at 1)


@dataclass
class Call:
    method: str
    path: str
    token: str
    body: Any
    status: int
    at: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Http

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        api: BotaServer = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        status, doc, hold = api.handle(self.path, token, body)
        if hold:
            time.sleep(hold)
        out = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class _Http(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: BotaServer


class BotaServer:
    """The three endpoints on 127.0.0.1 with their own S3 store. Use as a context manager."""

    def __init__(self, tokens: set[str], url_ttl_s: int = 3600, project: str = "proj_edged") -> None:
        self.tokens, self.url_ttl_s, self.project = set(tokens), url_ttl_s, project
        self.s3 = S3Server()
        self.recordings: dict[str, Recording] = {}
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self._faults: list[tuple[str, str, int, Any, float]] = []  # (kind, path part, status, body, hold)
        self._http = _Http(("127.0.0.1", 0), _Handler)
        self._http.api = self
        self.url = f"http://127.0.0.1:{self._http.server_port}"
        self._thread = threading.Thread(target=self._http.serve_forever, name="bota-api", daemon=True)

    def __enter__(self) -> BotaServer:
        self.s3.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.shutdown()
        self._http.server_close()
        self.s3.stop()

    # knobs

    def fail_next(self, n: int, status: int, body: Any = None, path: str = "") -> None:
        with self.lock:
            self._faults += [("fail", path, status, body if body is not None else {"error": "injected"}, 0.0)] * n

    def stall_next(self, n: int, seconds: float, path: str = "", skip: int = 0) -> None:
        """Hold the answers of the next n requests matching ``path``, after letting ``skip`` through."""
        with self.lock:
            self._faults += [("pass", path, 0, None, 0.0)] * skip + [("stall", path, 0, None, seconds)] * n

    def expire_next(self, n: int) -> None:
        with self.lock:
            self._faults += [("expire", "/upload-url", 0, None, 0.0)] * n

    # what happened

    def count(self, endpoint: str, status: int | None = None) -> int:
        return sum(1 for c in self.calls if c.path.endswith(endpoint) and (status is None or c.status == status))

    def media(self) -> list[Media]:
        return [m for r in self.recordings.values() for m in r.media.values()]

    # the endpoints

    def _fault(self, path: str) -> tuple[str, int, Any, float] | None:
        with self.lock:
            for i, (kind, part, status, body, hold) in enumerate(self._faults):
                if part in path and (kind != "expire" or path.endswith("/upload-url")):
                    del self._faults[i]
                    return kind, status, body, hold
        return None

    def handle(self, path: str, token: str, body: Any) -> tuple[int, Any, float]:
        fault = self._fault(path)
        if fault and fault[0] == "fail":
            status, doc, hold = fault[1], fault[2], 0.0
        else:
            ttl = 1 if fault and fault[0] == "expire" else self.url_ttl_s
            status, doc = self._route(path, token, body, ttl)
            hold = fault[3] if fault and fault[0] == "stall" else (2.2 if fault and fault[0] == "expire" else 0.0)
        with self.lock:
            self.calls.append(Call("POST", path, token, body, status, time.time()))
        return status, doc, hold

    def _route(self, path: str, token: str, body: Any, ttl: int) -> tuple[int, Any]:
        if token not in self.tokens:
            return 401, {"error": "unauthorized", "message": "invalid API key or device token"}
        if not isinstance(body, dict):
            return 400, {"error": "bad_request", "message": "body must be a JSON object"}
        m = re.fullmatch(r"/v1/recordings(?:/(rec_[0-9a-f]+)/(upload-url|complete))?", path)
        if not m:
            return 404, {"error": "not_found", "message": f"no such endpoint {path}"}
        rec_id, action = m.groups()
        if rec_id is None:
            device = body.get("device_id")
            if not isinstance(device, str) or not device:
                return 400, {"error": "bad_request", "message": "device_id is required"}
            with self.lock:
                rec = Recording(f"rec_{secrets.token_hex(6)}", device, token)
                self.recordings[rec.id] = rec
            return 201, {"id": rec.id, "device_id": device, "status": "pending"}
        rec = self.recordings.get(rec_id)
        if rec is None or rec.token != token:
            return 404, {"error": "not_found", "message": f"recording {rec_id} not found"}
        if action == "upload-url":
            return self._upload_url(rec, body, ttl)
        return self._complete(rec)

    def _upload_url(self, rec: Recording, body: dict, ttl: int) -> tuple[int, Any]:
        if rec.completed:
            return 409, {"error": "conflict", "message": "recording already completed"}
        kind = body.get("type")
        if kind not in CONTENT_TYPES:
            return 400, {"error": "bad_request", "message": "type must be audio, image or video"}
        ctype = body.get("content_type") or CONTENT_TYPES[kind][0]
        if ctype not in CONTENT_TYPES[kind]:
            return 400, {"error": "bad_request", "message": f"content_type {ctype} not accepted for {kind}"}
        size = body.get("file_size_bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            return 400, {"error": "bad_request", "message": "file_size_bytes must be a positive integer"}
        captured = body.get("captured_at")
        if captured is None and kind != "audio":
            return 400, {"error": "bad_request", "message": "captured_at is required for images and video"}
        if captured is not None and not (isinstance(captured, str) and _ISO.fullmatch(captured)):
            return 400, {"error": "bad_request", "message": "captured_at must be ISO 8601"}
        media_id = f"med_{secrets.token_hex(6)}"
        ext = {"video/mp4": "mp4", "audio/webm": "webm", "image/jpeg": "jpg"}.get(ctype, "bin")
        key = f"{self.project}/{rec.id}/{media_id}/{kind}.{ext}"
        with self.lock:
            rec.media[media_id] = Media(media_id, kind, ctype, size, captured, key)
        url = self.s3.presign_put(key, ctype, size, ttl)
        expires = datetime.fromtimestamp(time.time() + ttl, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 200, {"media_id": media_id, "upload_url": url, "expires_at": expires, "headers": {"Content-Type": ctype}}

    def _complete(self, rec: Recording) -> tuple[int, Any]:
        if rec.completed:
            return 409, {"error": "conflict", "message": "recording already completed"}
        for m in rec.media.values():
            m.uploaded = self.s3.size(m.key) == m.size
        if not any(m.uploaded for m in rec.media.values()):
            return 400, {"error": "bad_request", "message": "no media uploaded"}
        with self.lock:
            rec.completed += 1
        return 200, {
            "id": rec.id,
            "status": "completed",
            "media": [
                {"media_id": m.id, "type": m.type, "status": "uploaded" if m.uploaded else "pending"}
                for m in rec.media.values()
            ],
        }
