"""The Sonoran CAD unit operations: panic, location and call notes, on the v2 key's request budget.

Why a package beside ``sonoran`` (the upload target) and not more targets: these are not a clip
part delivered to a destination, which is all the uploader drives. Each is the unit's own request
with its own timing: the panic as soon as the wearer asks (and again until acknowledged), the
position while the unit moves, a note after a clip is delivered. What they share with the uploads
is what matters: the v2 URL and key (``keyfile.KeyFile``), the per-key request budget
(``budget.RequestBudget`` on the same outbox file, asked as a ``budget.Claim``: panic first, then
uploads and notes, then location), the classification of every answer (``answers``), the retry
policy (``policy``) and bounded, cancellable HTTP (``http.HttpSession``).

- ``api``: the four requests, as the OpenAPI document has them;
- ``store``: what survives a restart (the panic wanted and acknowledged, each clip's note);
- ``panic``, ``location``, ``notes``: one worker thread each (``loop``), so none waits behind
  another's request;
- :class:`SonoranUnit` (here): builds what the configuration turns on; the daemon wires it (the
  gesture, deliveries, links appearing, the status). It knows no event and no daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edged.capture.position import PositionSource
from edged.config.schema import Settings
from edged.core.db import Store
from edged.core.timefmt import iso
from edged.upload.budget import RequestBudget
from edged.upload.policy import RetryPolicy
from edged.upload.sonoran_unit.store import UnitStore, read_notes

if TYPE_CHECKING:  # imported when the configuration turns a worker on: they bring httpx (~11 MB)
    from edged.upload.sonoran_unit.api import UnitApi
    from edged.upload.sonoran_unit.location import LocationWorker
    from edged.upload.sonoran_unit.notes import NoteWorker
    from edged.upload.sonoran_unit.panic import PanicWorker

__all__ = ["SonoranUnit", "UnitStore", "read_notes"]

log = logging.getLogger("edged.unit")


class SonoranUnit:
    """The unit operations the configuration turns on (``[upload.sonoran_v2.unit]``), each on a
    thread of its own. The panic state is kept whether or not CAD is told (:meth:`set_panic`)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        position: PositionSource | None = None,
        on_alarm: Callable[[str, bool], None] | None = None,
        policy: RetryPolicy | None = None,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        cfg = settings.upload.sonoran_v2.unit
        self.store = UnitStore(store)
        self.now_ns = now_ns
        self.stopping = threading.Event()
        self.policy = policy or RetryPolicy.from_settings(settings.upload)
        alarm = on_alarm or (lambda name, active: None)
        auth_retry_s = self.policy.auth_retry_s
        self.panic: PanicWorker | None = None
        self.location: LocationWorker | None = None
        self.notes: NoteWorker | None = None
        self._apis: list[UnitApi] = []
        if cfg.panic:
            from edged.upload.sonoran_unit.panic import PanicWorker

            api = self._api(settings)
            self.panic = PanicWorker(api, self.store, self._budget(store, api), self.policy, self.stopping, alarm)
        if cfg.location and position is not None:
            from edged.upload.sonoran_unit.location import LocationPacer, LocationWorker

            api = self._api(settings)
            pacer = LocationPacer(
                cfg.location_interval_seconds, cfg.location_min_distance_m, cfg.location_min_speed_mps
            )
            self.location = LocationWorker(
                api, position, pacer, self._budget(store, api), self.policy, self.stopping, auth_retry_s, now_ns
            )
        elif cfg.location:
            log.error("upload.sonoran_v2.unit.location is on but this daemon has no position source: nothing sent")
        if cfg.call_notes:
            from edged.upload.sonoran_unit.notes import NoteWorker

            api = self._api(settings)
            self.notes = NoteWorker(
                api,
                self.store,
                self._budget(store, api),
                self.policy,
                self.stopping,
                unit_number=settings.device.unit_number,
                max_age_s=cfg.call_note_max_age_minutes * 60,
                auth_retry_s=auth_retry_s,
                now_ns=now_ns,
            )

    def _api(self, settings: Settings) -> UnitApi:
        from edged.upload.sonoran_unit.api import UnitApi

        api = UnitApi(settings)  # a session (connections) per worker: none waits behind another
        self._apis.append(api)
        return api

    def _budget(self, store: Store, api: UnitApi) -> RequestBudget:
        return RequestBudget(
            store, lambda: api.budget_key, share=api.share, rng=self.policy.rng, reserve=api.reserve, now_ns=self.now_ns
        )

    def _workers(self) -> list[Any]:
        return [w for w in (self.panic, self.notes, self.location) if w is not None]

    def start(self) -> None:
        resent = self.store.recover_notes(self.now_ns())
        if resent:
            log.warning("%d call note(s) were cut off while sending; sending them again", resent)
        for w in self._workers():
            w.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        for api in self._apis:
            api.cancel("the daemon is stopping")
        for w in self._workers():
            w.poke()
        for w in self._workers():
            if w.is_alive():
                w.join(timeout)
        for api in self._apis:
            api.close()

    # --- what the daemon calls ----------------------------------------------------------------------

    def set_panic(self, on: bool | None) -> bool:
        """The wearer's gesture (``on`` None: toggle). Committed, then sent at once if CAD is told.
        Returns the panic now wanted."""
        record = self.store.want_panic(on, self.now_ns())
        if self.panic is not None:
            self.panic.gesture()
        return record.wanted

    @property
    def panic_wanted(self) -> bool:
        record = self.store.panic()
        return record is not None and record.wanted

    def on_part_delivered(self, target: str, clip_id: str) -> None:
        if self.notes is not None and target == self.notes.target:
            self.notes.delivered()

    def on_link_change(self) -> None:
        for w in self._workers():
            w.link_up()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        record = self.store.panic()
        out["panic"] = {
            "on": bool(record and record.wanted),
            "sent_to_cad": self.panic is not None,
            "acknowledged": bool(record and record.generation == record.acked_generation),
            "since": iso(record.wanted_ns) if record else None,
            "attempts": record.attempts if record else 0,
            "given_up": bool(record and record.given_up),
            "reason": record.reason if record else "",
            "last_ack_s": round(self.panic.last_ack_s, 3) if self.panic and self.panic.last_ack_s is not None else None,
        }
        if self.location is not None:
            loc = self.location
            out["location"] = {
                "fix": loc.fix,
                "asked": loc.asked,
                "sent": loc.sent,
                "last_sent": iso(loc.last_sent_ns) if loc.last_sent_ns else None,
                "reason": loc.last_reason,
            }
        if self.notes is not None:
            out["call_notes"] = self.store.note_counts()
        return out
