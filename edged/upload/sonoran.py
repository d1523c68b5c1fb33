"""Sonoran CAD bodycam upload, v2 and legacy (../shared/reference/sonoran-*.md|txt).

v2: ``POST {base_url}/v2/general/bodycam-recordings``, multipart, ``Authorization: Bearer <key>``,
exactly one owner identifier, ``durationMs``, optional ``identId``, ``unitNumber``,
``unitLocation``; answers a JSON list of URLs, errors as problem+json.
Legacy: ``POST {base_url}/upload`` with ``community``, ``account``, ``sessionId``, ``username``,
``type=bodycam``; errors as plain text ``Error: ...``; answers, like v2, a JSON list of URLs.
Both define ``unitLocation`` as a free-text string and nothing more: it carries the position at the
clip's first mark that had a GPS fix, as ``"<lat>,<lon>"`` in decimal degrees (6 places, about
0.1 m), read from the clip's manifest; a clip with no such mark (GPS off, no fix, a recall) sends
``device.unit_location`` when set, else no ``unitLocation`` at all.
The file is streamed from disk (httpx reads it in 64 KiB blocks), optionally throttled. A 200 is
a delivery only when it is that URL list (``answers.SONORAN_URLS``): a captive portal's page is not.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import httpx

from edged.clips.job import MANIFEST
from edged.config.schema import Settings, SonoranV2Settings, api_key_path
from edged.core.files import read_bounded
from edged.core.journal import register_secret_file
from edged.upload.answers import SONORAN_URLS, Kind, Verdict, classify
from edged.upload.budget import PANIC_RESERVE
from edged.upload.http import HttpTarget, ThrottledFile, endpoint_of
from edged.upload.keyfile import KeyFile
from edged.upload.outbox import OutboxPart
from edged.upload.target import Parcel

#: Room for the multipart framing and form fields around the file, for the request's deadline.
_FORM_OVERHEAD = 4096
#: The largest manifest read for the location (a two-hour track at one fix a second is ~1 MB).
MAX_MANIFEST_BYTES = 4 << 20


def clip_location(clip_dir: Path) -> str | None:
    """The position at the clip's first mark with a fix, as ``unitLocation`` carries it
    (``"51.500700,-0.124600"``); None when no mark had one or the manifest cannot be read."""
    try:
        doc = json.loads(read_bounded(clip_dir / MANIFEST, MAX_MANIFEST_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    marks = doc.get("marks") if isinstance(doc, dict) else None
    for mark in marks if isinstance(marks, list) else []:
        pos = mark.get("position") if isinstance(mark, dict) else None
        if not isinstance(pos, dict):
            continue
        lat, lon = _degrees(pos.get("lat"), 90.0), _degrees(pos.get("lon"), 180.0)
        if lat is not None and lon is not None:
            return f"{lat:.6f},{lon:.6f}"
    return None


def _degrees(value: object, limit: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and -limit <= value <= limit else None


def v2_owner(v2: SonoranV2Settings) -> dict[str, str]:
    """The one owner identifier a v2 upload carries (accountUuid, communityUserId, roblox or discord)."""
    for field, value in (
        ("accountUuid", v2.account_uuid),
        ("communityUserId", v2.community_user_id),
        ("roblox", v2.roblox),
        ("discord", v2.discord),
    ):
        if value:
            return {field: str(value)}
    return {}


def v2_account(v2: SonoranV2Settings) -> str:
    """The plan allowance's identity for v2: the server and the account the clips are filed under
    (the v2 configuration names no community, and the key cannot stand for it: it may be rotated)."""
    owner = "&".join(f"{k}={v}" for k, v in v2_owner(v2).items())
    return "account:" + hashlib.sha256(f"{v2.base_url.rstrip('/')}|{owner}".encode()).hexdigest()[:16]


def panic_reserve(settings: Settings) -> int:
    """Slots of the v2 key's request window kept for the unit's panic (``budget.Claim``)."""
    return PANIC_RESERVE if settings.upload.sonoran_v2.unit.panic else 0


class _SonoranTarget(HttpTarget):
    def __init__(self, settings: Settings, base_url: str) -> None:
        super().__init__(settings)
        self.device = settings.device
        self.base_url = base_url.rstrip("/")
        self.endpoint = endpoint_of(self.base_url)

    def _metadata(self, part: OutboxPart) -> dict[str, str]:
        fields = {}
        if self.device.unit_number:
            fields["unitNumber"] = self.device.unit_number
        location = clip_location(Path(part.path).parent) or self.device.unit_location
        if location:
            fields["unitLocation"] = location
        return fields

    def _post(self, url: str, fields: dict[str, str], part: OutboxPart, headers: dict[str, str]) -> Verdict:
        path = Path(part.path)
        try:
            with open(path, "rb") as f:
                body = ThrottledFile(f, self.bytes_per_s) if self.bytes_per_s else f
                answer = self.exchange(
                    "POST",
                    url,
                    body_bytes=part.bytes + _FORM_OVERHEAD,
                    data=fields,
                    files={"file": (path.name, body, "video/webm")},
                    headers=headers,
                )
        except httpx.HTTPError as exc:
            return self.failed(exc)
        except OSError as exc:
            return Verdict(Kind.RETRY, f"clip file unreadable while sending: {exc.strerror or exc}")
        return classify(answer, SONORAN_URLS, time.time())


class SonoranV2Target(_SonoranTarget):
    name = "sonoran_v2"

    def __init__(self, settings: Settings) -> None:
        v2 = settings.upload.sonoran_v2
        super().__init__(settings, v2.base_url)
        self.settings = v2
        self.url = self.base_url + "/v2/general/bodycam-recordings"
        self.key_path = api_key_path(v2)
        if self.key_path is not None:  # never logged nor stored, even when a server echoes it
            register_secret_file(self.key_path)
        self.plan, self.share = v2.plan, v2.devices_sharing_key
        self.reserve = panic_reserve(settings)
        self.key_file = KeyFile(self.key_path)  # read before every request, again when it changes
        self.allowance_key = v2_account(v2)

    @property
    def budget_key(self) -> str:  # type: ignore[override]
        """The request budget of the key in use now: a key changed in its file counts under the new one."""
        return self.key_file.fingerprint()

    def _key(self) -> str:
        return self.key_file.read()

    def fingerprint(self) -> str:
        return hashlib.sha256(repr((self.settings, self._key())).encode()).hexdigest()

    def send(self, parcel: Parcel) -> Verdict:
        part = parcel.part
        key = self._key()
        if not key:
            return Verdict(Kind.PAUSE, f"no API key in {self.key_path}")
        fields = {**v2_owner(self.settings), "durationMs": str(part.duration_ms), **self._metadata(part)}
        if self.settings.ident_id:
            fields["identId"] = str(self.settings.ident_id)
        return self._post(self.url, fields, part, {"Authorization": f"Bearer {key}"})


class SonoranLegacyTarget(_SonoranTarget):
    name = "sonoran_legacy"

    def __init__(self, settings: Settings) -> None:
        lg = settings.upload.sonoran_legacy
        super().__init__(settings, lg.base_url)
        self.settings = lg
        self.url = self.base_url + "/upload"
        self.plan = lg.plan
        self.budget_key = self.allowance_key = "community:" + lg.community

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self.settings).encode()).hexdigest()

    def send(self, parcel: Parcel) -> Verdict:
        part, lg = parcel.part, self.settings
        fields = {
            "community": lg.community,
            "account": lg.account,
            "sessionId": lg.session_id,
            "username": lg.username,
            "type": "bodycam",
            "durationMs": str(part.duration_ms),
            **self._metadata(part),
        }
        if lg.ident_id:
            fields["identId"] = lg.ident_id
        return self._post(self.url, fields, part, {})
