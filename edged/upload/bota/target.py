"""Bota: presigned-URL uploads (../shared/reference/bota-recording-upload-url.txt).

One Bota *recording* per event (clip), holding several media files:

- per clip part: its video as ``video/mp4`` and its audio track as ``audio/webm`` (Opus copied),
  each with ``captured_at`` = the part's wall-clock start (the manifest's ``wall_start``);
- per mark: a JPEG still of the frame nearest the press, ``captured_at`` = the mark's wall time.

A 60 s event is one part, so one video and one audio; a longer event is split by the clip builder
into parts within ``limits`` and its media follow the parts, each well under the upload limits.
The media are made by :mod:`edged.upload.bota.media` in a low-priority child process, into ``clips/<id>/.bota/``
(removed once the recording is complete).

Steps, each committed to the clip's progress (``target.Progress``: the outbox's ``progress`` table)
before the next one:

1. ``POST {base_url}/v1/recordings`` ``{"device_id"}`` → ``recording``;
2. per media: ``POST /v1/recordings/{id}/upload-url`` ``{type, content_type, file_size_bytes,
   captured_at}`` → ``url:<media>`` (media id, URL, headers, when it expires); ``PUT`` the file to
   the URL with exactly the returned headers and a Content-Length (presigned PUTs refuse chunked
   bodies) → ``done:<media>``. An expired URL (storage's 403 "Request has expired", or its
   ``expires_at`` passed) is asked for again, not counted as a failure;
3. ``POST /v1/recordings/{id}/complete`` (the reference names a "Complete Upload endpoint" without
   its path; this is the assumed one) → ``completing`` before the request, ``completed`` after.

Mapping onto the outbox, whose deliveries are per part: the target's scope is ``Scope.CLIP``, so
the uploader hands each of the clip's bota deliveries every part of the clip and the clip's
progress (``target.Parcel``). Whichever delivery runs first carries the whole event; the clip's
other deliveries find the recording complete and are delivered without a request. A kill between
steps resumes at the first step not recorded: the recording is created once and completed once; a
media whose PUT may have landed is PUT again to the same URL while it is valid (an idempotent
overwrite). A kill *during* the create or upload-url request can leave an empty recording or media
record behind on the server (the API has no idempotency key): at-least-once, like the outbox
itself. A 409 to ``complete`` after a ``completing`` was recorded means an earlier request got
through: the recording is complete.

Every answer of the Bota API goes through :mod:`edged.upload.answers` (401/403 pause the target,
5xx back off, other 4xx fail the clip's delivery, which keeps every file), and a 2xx counts only
with the documented shape (``BOTA_RECORDING``, ``BOTA_UPLOAD_URL``, ``BOTA_COMPLETE``): a captive
portal's page is tried again later, never taken for a step done. Storage's answers to the
presigned PUT too (``STORAGE_PUT``: an ETag, no body), except 403, which there is about the URL,
never about the token: expired → a new URL; anything else → try again later with a new URL.

Secrets in the progress: the outbox scrubs what it stores, which blanks a presigned URL's
signature. This target keeps the URL as issued in memory for the run (``BotaTarget._secret_steps``);
after a restart a stored URL without its signature is not used, a new one is asked for (the
media record of the first stays empty on the server, as after a kill during upload-url).
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from edged.config.schema import Settings, read_secret, token_path
from edged.core.journal import MASK, register_secret_file, scrub
from edged.core.timefmt import iso, parse_iso_ns
from edged.upload.answers import (
    BOTA_COMPLETE,
    BOTA_RECORDING,
    BOTA_UPLOAD_URL,
    STORAGE_PUT,
    Answer,
    Contract,
    Kind,
    Verdict,
    classify,
    message,
)
from edged.upload.bota import media
from edged.upload.http import HttpTarget, ThrottledFile, endpoint_of
from edged.upload.outbox import OutboxPart
from edged.upload.target import Parcel, Progress, Scope, check_part

log = logging.getLogger("edged.upload.bota")

NAME = "bota"
#: A stored URL with less validity left than this is not used; a new one is asked for.
URL_MARGIN_S = 60.0
#: Times one media may get a new URL because the last one expired, within one attempt.
MAX_URL_REQUESTS = 2
#: Storage's answer to a presigned request past its expiry (S3: 403 AccessDenied "Request has expired").
_EXPIRED = re.compile(r"request has expired|<Code>ExpiredToken</Code>", re.I)
_BLOCK = 1 << 16
MEDIA_DIR = ".bota"


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One file of the recording."""

    key: str  # stable across restarts: "part01-video", "part01-audio", "mark02-still"
    type: str  # the API's media type: video | audio | image
    content_type: str
    captured_at: str  # ISO 8601, UTC
    part: OutboxPart
    still_ms: int | None = None  # image: ms into the part


def plan(parts: list[OutboxPart], manifest: dict | None) -> list[MediaItem]:
    """The recording's media, in upload order: each part's video and audio, then a still per mark."""
    parts = sorted(parts, key=lambda p: p.number)
    by_number = {p["number"]: p for p in (manifest or {}).get("parts", [])}
    starts: list[str] = []
    offset_ns = 0
    for p in parts:
        if p.number in by_number and by_number[p.number].get("wall_start"):
            starts.append(by_number[p.number]["wall_start"])
        else:  # no manifest: the event's start and the parts' durations
            starts.append(iso(p.event_wall_ns + offset_ns) or "")
        offset_ns += p.duration_ms * 1_000_000
    items: list[MediaItem] = []
    for p, start in zip(parts, starts):
        items.append(MediaItem(f"part{p.number:02d}-video", "video", media.MP4_TYPE, start, p))
        items.append(MediaItem(f"part{p.number:02d}-audio", "audio", media.AUDIO_TYPE, start, p))
    start_ns = [parse_iso_ns(s) for s in starts]
    for i, mark in enumerate((manifest or {}).get("marks", []), 1):
        at = parse_iso_ns(mark["wall"])
        # The part the press falls in (the last one starting at or before it; the first if none).
        k = max([j for j, s in enumerate(start_ns) if s <= at], default=0)
        ms = min(max(0, (at - start_ns[k]) // 1_000_000), parts[k].duration_ms)
        items.append(MediaItem(f"mark{i:02d}-still", "image", media.STILL_TYPE, mark["wall"], parts[k], int(ms)))
    return items


def _derived_file(d: media.Derived, item: MediaItem) -> Path | None:
    """The file made for ``item`` (None: a part without audio has no audio file)."""
    if item.type == "video":
        return d.video
    if item.type == "audio":
        return d.audio
    return d.stills[item.still_ms] if item.still_ms is not None else None


def _blocks(f: BinaryIO) -> Iterator[bytes]:
    while block := f.read(_BLOCK):
        yield block


def _step(v: Verdict, what: str) -> Verdict:
    return dataclasses.replace(v, reason=f"{what}: {v.reason}")


class _Refused(Exception):
    """A step got an answer that ends this attempt; ``verdict`` says what the uploader does."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


class BotaTarget(HttpTarget):
    name = NAME
    scope = Scope.CLIP  # one recording per clip
    contract = False  # media of our own making, not the WebM contract; parts are checked for sha256

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        b = settings.upload.bota
        self.settings = b
        self.device_id = b.device_id or settings.device.id
        self.base_url = b.base_url.rstrip("/")
        self.endpoint = endpoint_of(self.base_url)
        self.token_path = token_path(b)
        #: clip id → {step: value} for the steps whose stored value the outbox had to scrub.
        self._secret_steps: dict[str, dict[str, str]] = {}
        if self.token_path is not None:
            register_secret_file(self.token_path)

    # --- the Target interface ------------------------------------------------------------------------

    def fingerprint(self) -> str:
        return hashlib.sha256(repr((self.settings, self.device_id, self._token())).encode()).hexdigest()

    def send(self, parcel: Parcel) -> Verdict:
        token = self._token()
        if not token:
            return Verdict(Kind.PAUSE, f"no API key or device token in {self.token_path}")
        job = _Job(self, parcel, token)
        try:
            return job.run()
        except _Refused as r:
            return r.verdict

    # --- helpers -------------------------------------------------------------------------------------

    def _token(self) -> str:
        """Read at every use: a token rotated in its file (or credential) takes effect at once."""
        try:
            return read_secret(self.token_path).decode().strip() if self.token_path else ""
        except (OSError, UnicodeDecodeError):
            return ""


class _Job:
    """One attempt at one clip's recording, resuming from the recorded progress."""

    def __init__(self, target: BotaTarget, parcel: Parcel, token: str) -> None:
        self.t, self.token = target, token
        self.part, self.parts = parcel.part, list(parcel.parts)
        self.clip_id = parcel.part.clip_id
        self.progress: Progress = parcel.progress
        self.done = {**self.progress.steps(), **target._secret_steps.get(self.clip_id, {})}

    def _record(self, step: str, value: str) -> None:
        self.progress.record(step, value)  # scrubbed there
        self.done[step] = value
        secret = self.t._secret_steps.setdefault(self.clip_id, {})
        if scrub(value) != value:
            secret[step] = value
        else:
            secret.pop(step, None)

    # the steps

    def run(self) -> Verdict:
        if "completed" in self.done:
            rec = json.loads(self.done["completed"])["recording_id"]
            return Verdict(
                Kind.DELIVERED,
                f"in recording {rec} (sent with the clip's first delivery)",
                response=self.done["completed"],
            )
        for p in self.parts:
            bad = check_part(p, contract=False)
            if bad is not None:
                return _step(bad, f"part {p.number}")
        clip_dir = Path(self.part.path).parent
        items = plan(self.parts, self._manifest(clip_dir))
        files = self._media(items, clip_dir / MEDIA_DIR)
        recording = self.done.get("recording") or self._create()
        for item in items:
            if f"done:{item.key}" not in self.done and item.key in files:
                self._upload(recording, item, files[item.key])
        return self._complete(recording, items, clip_dir / MEDIA_DIR)

    def _manifest(self, clip_dir: Path) -> dict | None:
        try:
            return json.loads((clip_dir / "manifest.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("clip %s: manifest unreadable (%s); media times from the outbox, no stills", self.clip_id, exc)
            return None

    def _media(self, items: list[MediaItem], out_dir: Path) -> dict[str, Path]:
        """The files still to upload, made if missing."""
        todo = [i for i in items if f"done:{i.key}" not in self.done]
        files: dict[str, Path] = {}
        for part in sorted({i.part for i in todo}, key=lambda p: p.number):
            mine = [i for i in todo if i.part == part]
            still_ms = [i.still_ms for i in mine if i.still_ms is not None]
            try:
                d = media.derive(Path(part.path), out_dir, still_ms)
            except media.MediaError as exc:
                raise _Refused(Verdict(Kind.FAILED, f"part {part.number}: media not made: {exc}")) from exc
            except OSError as exc:
                raise _Refused(Verdict(Kind.RETRY, f"part {part.number}: media not made: {exc}")) from exc
            if d.encoder:
                log.info(
                    "clip %s part %d: MP4 (%s), audio and %d still(s) made",
                    self.clip_id,
                    part.number,
                    d.encoder,
                    len(still_ms),
                )
            for i in mine:
                path = _derived_file(d, i)
                if path is not None:
                    files[i.key] = path
                else:  # no audio track in this part: nothing to upload for it
                    self._record(f"done:{i.key}", "")
        return files

    def _post(self, path: str, body: dict, what: str) -> Answer:
        try:
            return self.t.exchange(
                "POST", self.t.base_url + path, json=body, headers={"Authorization": f"Bearer {self.token}"}
            )
        except httpx.HTTPError as exc:
            raise _Refused(_step(self.t.failed(exc), what)) from exc

    def _api(self, path: str, body: dict, what: str, contract: Contract) -> tuple[Answer, dict]:
        """POST to the API; the answer's document when it is the contract's, else _Refused."""
        answer = self._post(path, body, what)
        v = classify(answer, contract, time.time())
        if v.kind is not Kind.DELIVERED:
            raise _Refused(_step(v, what))
        return answer, v.document

    def _create(self) -> str:
        _, doc = self._api("/v1/recordings", {"device_id": self.t.device_id}, "create recording", BOTA_RECORDING)
        recording = str(doc["id"])
        self._record("recording", recording)
        log.info("clip %s → bota: recording %s created", self.clip_id, recording)
        return recording

    def _new_url(self, recording: str, item: MediaItem, size: int) -> dict:
        what = f"upload URL for {item.key}"
        r, doc = self._api(
            f"/v1/recordings/{recording}/upload-url",
            {
                "type": item.type,
                "content_type": item.content_type,
                "file_size_bytes": size,
                "captured_at": item.captured_at,
            },
            what,
            BOTA_UPLOAD_URL,
        )
        headers = doc.get("headers") or {}
        # How long it is valid, by the server's clock (its Date header): a device clock that is
        # off (no RTC, no NTP yet) then does not make every URL look expired, or never expired.
        now = time.time()
        valid_s = 3600.0
        if doc.get("expires_at"):
            try:
                server_now = (
                    email.utils.parsedate_to_datetime(r.headers["date"]).timestamp() if r.headers.get("date") else now
                )
                valid_s = parse_iso_ns(str(doc["expires_at"])) / 1e9 - server_now
            except (ValueError, TypeError):
                pass
        url = {
            "media_id": str(doc["media_id"]),
            "upload_url": str(doc["upload_url"]),
            "headers": {str(k): str(v) for k, v in headers.items()},
            "size": size,
            "valid_until": now + valid_s,
        }
        self._record(f"url:{item.key}", json.dumps(url))
        return url

    def _upload(self, recording: str, item: MediaItem, path: Path) -> None:
        size = path.stat().st_size
        stored = json.loads(self.done[f"url:{item.key}"]) if f"url:{item.key}" in self.done else None
        # A URL stored without its signature (scrubbed; this run did not issue it) cannot be used.
        url = (
            stored
            if stored
            and stored["size"] == size
            and MASK not in stored["upload_url"]
            and stored["valid_until"] - time.time() > URL_MARGIN_S
            else None
        )
        for _ in range(MAX_URL_REQUESTS):
            if url is None:
                url = self._new_url(recording, item, size)
            if self._put(url, path, item):
                self._record(f"done:{item.key}", url["media_id"])
                log.info(
                    "clip %s → bota: %s uploaded (%s, %d bytes, media %s)",
                    self.clip_id,
                    item.key,
                    item.content_type,
                    size,
                    url["media_id"],
                )
                return
            log.warning(
                "clip %s → bota: the upload URL for %s (media %s) expired; asking for a new one",
                self.clip_id,
                item.key,
                url["media_id"],
            )
            url = None
        raise _Refused(
            Verdict(
                Kind.RETRY,
                f"upload {item.key}: {MAX_URL_REQUESTS} upload URLs in a row expired before use (is the clock right?)",
            )
        )

    def _put(self, url: dict, path: Path, item: MediaItem) -> bool:
        """PUT the file as the URL wants it. True: stored; False: the URL had expired. Raises _Refused."""
        what = f"upload {item.key}"
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                body: BinaryIO = ThrottledFile(f, self.t.bytes_per_s) if self.t.bytes_per_s else f  # type: ignore[assignment]
                # Exactly the returned headers, and a Content-Length: no chunked encoding.
                headers = {**url["headers"], "Content-Length": str(size)}
                r = self.t.exchange("PUT", url["upload_url"], body_bytes=size, content=_blocks(body), headers=headers)
        except httpx.HTTPError as exc:
            raise _Refused(_step(self.t.failed(exc), what)) from exc
        except OSError as exc:
            raise _Refused(Verdict(Kind.RETRY, f"{what}: media file unreadable: {exc.strerror or exc}")) from exc
        if r.status != 403:
            v = classify(r, STORAGE_PUT, time.time())
            if v.kind is Kind.DELIVERED:
                return True
            raise _Refused(_step(v, what))
        # A 403 from storage is about the URL, never the token: this URL is not used again.
        self._record(f"url:{item.key}", json.dumps({**url, "valid_until": 0}))
        if _EXPIRED.search(r.text) or url["valid_until"] <= time.time():
            return False
        detail = message(r.status, r.content_type, r.body)
        raise _Refused(Verdict(Kind.RETRY, f"{what}: storage refused the upload URL: HTTP 403: {detail}", status=403))

    def _complete(self, recording: str, items: list[MediaItem], media_dir: Path) -> Verdict:
        answer = {
            "recording_id": recording,
            "media": {i.key: self.done[f"done:{i.key}"] for i in items if self.done.get(f"done:{i.key}")},
        }
        sent_before = "completing" in self.done
        self._record("completing", recording)
        r = self._post(f"/v1/recordings/{recording}/complete", {}, "complete recording")
        if r.status == 409 and sent_before:
            log.info(
                "clip %s → bota: recording %s was already complete (an earlier request got through)",
                self.clip_id,
                recording,
            )
        else:
            v = classify(r, BOTA_COMPLETE, time.time())
            if v.kind is not Kind.DELIVERED:
                return _step(v, "complete recording")
        response = json.dumps(answer)
        self._record("completed", response)
        self.t._secret_steps.pop(self.clip_id, None)
        shutil.rmtree(media_dir, ignore_errors=True)
        log.info("clip %s → bota: recording %s complete (%d media)", self.clip_id, recording, len(items))
        return Verdict(Kind.DELIVERED, f"recording {recording} complete", response=response, status=r.status)
