"""The four Sonoran CAD v2 requests of a unit, as ../shared/reference/sonoran-v2-openapi.md has them.

- ``PATCH /v2/emergency/servers/{serverId}/units/panic`` ``{"communityUserIds": "<id>",
  "isPanic": true|false}`` → ``{"updated": 1, "isPanic": true}`` (setUnitPanic);
- ``PATCH /v2/emergency/servers/{serverId}/unit-locations`` ``{"updates": [{"communityUserId",
  "location", "coordinates": {"x", "y", "z", "w"}}]}`` → ``{"updated": 1}`` (updateUnitLocations);
- ``GET /v2/emergency/accounts/{accountUuid}/current-call`` → ``{"IdentId": 12, "CallId": 501}``
  (getCurrentCall);
- ``POST /v2/emergency/servers/{serverId}/dispatch-calls/{callId}/notes`` ``{"note", "noteType":
  "text", "label"}`` → ``{"callId": 501, "note": "..."}`` (addCallNote).

Every one with the v2 bearer key (read at each use, as the upload target reads it: a key rotated
in its file takes effect at once; registered as a secret, so it is never logged nor stored), as
JSON, through an :class:`~edged.upload.http.HttpSession` (bounded, cancellable, no redirects),
and every answer judged by ``answers.classify`` against its contract: the same verdicts, for the
same reasons, as an upload's. The document gives the panic's ``communityUserIds`` as one string
(its example), so one string is sent.

Coordinates: the document's ``x, y, z, w`` are a map's (its example is a game world's, ``w`` a
heading). A real device sends ``x`` = longitude and ``y`` = latitude in degrees (WGS84, east and
north positive), ``z`` = altitude in metres and ``w`` = course over ground in degrees when the
receiver gives them; ``location`` says the same in words ("51.50070, -0.12460 ±5 m").
"""

from __future__ import annotations

import json
import math
import time
from typing import Any
from urllib.parse import quote

import httpx

from edged.capture.position import Fix
from edged.config.schema import Settings, api_key_path
from edged.core.journal import register_secret_file
from edged.upload.answers import (
    SONORAN_CALL_NOTE,
    SONORAN_CURRENT_CALL,
    SONORAN_UNIT_UPDATE,
    Contract,
    Kind,
    Verdict,
    classify,
)
from edged.upload.http import HttpSession, endpoint_of
from edged.upload.keyfile import KeyFile
from edged.upload.sonoran import panic_reserve

#: The longest note sent (the document gives no limit; a clip of several parts fits easily).
MAX_NOTE_CHARS = 4000


def valid_fix(fix: Fix) -> bool:
    """A position worth sending: finite, on the globe (a source's fix is a reading from outside)."""
    numbers = [fix.lat, fix.lon, *(v for v in (fix.alt_m, fix.track_deg, fix.eph_m) if v is not None)]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
        return False
    return -90.0 <= fix.lat <= 90.0 and -180.0 <= fix.lon <= 180.0


def location_text(fix: Fix) -> str:
    text = f"{fix.lat:.5f}, {fix.lon:.5f}"
    return text + (f" ±{fix.eph_m:.0f} m" if fix.eph_m is not None else "")


class UnitApi(HttpSession):
    """The unit's requests on the v2 account of ``settings`` (its URL, key and budget identity)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.upload)
        v2 = settings.upload.sonoran_v2
        unit = v2.unit
        self.base_url = v2.base_url.rstrip("/")
        self.endpoint = endpoint_of(self.base_url)
        self.key_path = api_key_path(v2)
        if self.key_path is not None:  # never logged nor stored, even when a server echoes it
            register_secret_file(self.key_path)
        self.server_id = unit.server_id
        self.community_user_id = unit.community_user_id or v2.community_user_id
        self.account_uuid = unit.account_uuid or v2.account_uuid
        self.label = unit.note_label
        self.key_file = KeyFile(self.key_path)
        self.share = v2.devices_sharing_key
        self.reserve = panic_reserve(settings)

    @property
    def budget_key(self) -> str:
        """The budget this key shares with the uploads (``budget.RequestBudget``'s key): the key
        in use now, so a key changed in its file counts under the new one."""
        return self.key_file.fingerprint()

    def _server(self, path: str) -> str:
        return f"{self.base_url}/v2/emergency/servers/{self.server_id}/{path}"

    def set_panic(self, on: bool) -> Verdict:
        body = {"communityUserIds": self.community_user_id, "isPanic": on}
        return self._request("PATCH", self._server("units/panic"), SONORAN_UNIT_UPDATE, body)

    def update_location(self, fix: Fix) -> Verdict:
        coordinates: dict[str, float] = {"x": fix.lon, "y": fix.lat}
        if fix.alt_m is not None:
            coordinates["z"] = fix.alt_m
        if fix.track_deg is not None:
            coordinates["w"] = fix.track_deg
        update = {"communityUserId": self.community_user_id, "location": location_text(fix), "coordinates": coordinates}
        return self._request("PATCH", self._server("unit-locations"), SONORAN_UNIT_UPDATE, {"updates": [update]})

    def current_call(self) -> Verdict:
        url = f"{self.base_url}/v2/emergency/accounts/{quote(self.account_uuid, safe='')}/current-call"
        return self._request("GET", url, SONORAN_CURRENT_CALL)

    def add_note(self, call_id: int, note: str) -> Verdict:
        body = {"note": note[:MAX_NOTE_CHARS], "noteType": "text", "label": self.label}
        return self._request("POST", self._server(f"dispatch-calls/{call_id}/notes"), SONORAN_CALL_NOTE, body)

    def _request(self, method: str, url: str, contract: Contract, body: dict[str, Any] | None = None) -> Verdict:
        key = self.key_file.read()
        if not key:
            return Verdict(Kind.PAUSE, f"no API key in {self.key_path}")
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        content = b""
        if body is not None:
            content = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        try:
            answer = self.exchange(
                method, url, body_bytes=len(content), content=content if body is not None else None, headers=headers
            )
        except httpx.HTTPError as exc:
            return self.failed(exc)
        return classify(answer, contract, time.time())


def positive_call_id(doc: Any) -> int | None:
    """The call id of a current-call answer (``CallId``), or None when it names no call."""
    value = doc.get("CallId") if isinstance(doc, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
