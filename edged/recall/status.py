"""What the operator reads of a recall: ``status/recall-<id>.json``, and how it is written.

The status document says where a request is (``pending`` → ``processing`` → ``completed`` or
``failed``; ``rejected`` for one never accepted), the footage found and missing, and per part
every delivery with the URLs (or paths) the targets returned.

Status files go to the synced folder's ``status/`` through ``SyncFolder.write_status`` (else to
the state folder's ``recall-status/`` through ``edged.core.files``): atomic, durable, never
through a link, scrubbed of secrets, and written only when their content changed. One that
cannot be written now (a refused or unwritable ``status/``) is kept, at most ``MAX_UNWRITTEN``,
oldest dropped first, and written once the folder is usable again; the trouble is reported once
(``edged.recall.troubles``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from edged.config.schema import DeviceSettings, Settings
from edged.core.files import DIR_MODE, Folder, Refused
from edged.core.journal import scrubbed_json
from edged.core.states import DeliveryState
from edged.core.syncfolder import STATUS, SyncFolder
from edged.core.timefmt import iso
from edged.recall.request import Recall
from edged.recall.troubles import Troubles
from edged.upload.outbox import Outbox

#: Status files kept to write again while they cannot be written (oldest dropped first).
MAX_UNWRITTEN = 1000


def plain(name: str) -> str:
    """A name from the synced folder as plain printable text (control characters and bytes that are
    not UTF-8 escaped), for logs and status documents."""
    return name if name.isascii() and name.isprintable() else json.dumps(name)[1:-1]


def urls(response: str) -> list[str]:
    """The URL list a server returned (JSON list), or the path a directory target wrote."""
    try:
        doc = json.loads(response)
    except ValueError:
        return [response] if response else []
    if isinstance(doc, list):
        return [u for u in doc if isinstance(u, str)]
    return [response]


def document(rec: Recall, device: DeviceSettings, outbox: Outbox) -> dict[str, Any]:
    """The status document of a stored request (not yet scrubbed)."""
    doc: dict[str, Any] = {
        "id": rec.id,
        "status": rec.status,
        "reason": rec.reason,
        **rec.request.fields(),
        "device_id": device.id,
        "unit_number": device.unit_number,
        "source": rec.request.source,
        "created_at": iso(rec.created_ns),
        "updated_at": iso(rec.updated_ns),
        "progress": rec.detail.get("progress"),
    }
    doc["footage"] = rec.detail.get("footage")
    if rec.detail.get("audio"):  # recorded / partial / none / unknown, and how long without sound
        doc["audio"] = rec.detail["audio"]
    if rec.detail.get("timelapse"):
        doc["timelapse"] = {k: v for k, v in rec.detail["timelapse"].items() if k != "frame_offsets_ms"}
    parts, found = [], []
    if rec.built:
        deliveries = outbox.deliveries(clip_id=rec.request.clip_id)
        for p in outbox.parts(rec.request.clip_id):
            mine = [d for d in deliveries if d.part.id == p.id]
            for d in mine:
                if d.state == DeliveryState.DELIVERED:
                    found += urls(d.response)
            parts.append(
                {
                    "number": p.number,
                    "file": Path(p.path).name,
                    "bytes": p.bytes,
                    "duration_ms": p.duration_ms,
                    "sha256": p.sha256,
                    "deliveries": [
                        {
                            "target": d.target,
                            "state": d.state,
                            "reason": d.reason,
                            "urls": urls(d.response) if d.state == DeliveryState.DELIVERED else [],
                        }
                        for d in mine
                    ],
                }
            )
    doc["cameras"] = [{"position": pos, "parts": parts, "urls": found} for pos in rec.request.cameras]
    doc["urls"] = found
    return doc


def status_dir(settings: Settings) -> Path:
    """Where status files go: the synced folder's ``status/``, else the state folder's ``recall-status/``."""
    return Path(settings.sync.dir) / STATUS if settings.sync.dir else settings.state_dir / "recall-status"


class StatusFiles:
    """Writes status files (see the module's docstring). ``lock``: held by whoever reads a state and
    writes its file, so a status file always shows the store's latest state."""

    def __init__(self, settings: Settings, folder: Path, troubles: Troubles) -> None:
        self.settings = settings
        self.folder = folder
        self.troubles = troubles
        self.lock = threading.Lock()
        self._written: dict[str, str] = {}  # recall id -> digest of the status file last written
        self._unwritten: dict[str, tuple[bytes, str | None, str]] = {}  # name -> (data, recall id, digest)

    def configure(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder

    def put(self, name: str, doc: dict[str, Any], recall_id: str | None) -> None:
        """Write ``status/<name>`` (scrubbed); kept to write again if it cannot be written now."""
        data = scrubbed_json(doc, indent=2).encode()
        digest = hashlib.sha256(data).hexdigest()
        if recall_id is not None and self._written.get(recall_id) == digest and name not in self._unwritten:
            return
        self._unwritten.pop(name, None)
        self._unwritten[name] = (data, recall_id, digest)
        while len(self._unwritten) > MAX_UNWRITTEN:
            self._unwritten.pop(next(iter(self._unwritten)))
        self._write_one(name)

    def flush(self) -> int:
        """Write the status files that could not be written (a refused ``status/``), oldest first;
        stops at the first that still cannot. Returns how many were written."""
        written = 0
        with self.lock:
            for name in list(self._unwritten):
                if not self._write_one(name):
                    break
                written += 1
        return written

    def _write_one(self, name: str) -> bool:
        data, recall_id, digest = self._unwritten[name]
        try:
            self._write_file(name, data)
        except Refused as exc:  # a link or not a folder at status/: nothing is written there
            self.troubles.set("status", f"recall status files not written: {exc}", alarm=self._synced())
            return False
        except (OSError, KeyError) as exc:  # (KeyError: sync.status_group names no group)
            self.troubles.set("status", f"recall status files not written: {exc}", alarm=False)
            return False
        del self._unwritten[name]
        if recall_id is not None:
            self._written[recall_id] = digest
        if not self._unwritten:
            self.troubles.set("status", "", alarm=False)
        return True

    def _synced(self) -> bool:
        sync_dir = self.settings.sync.dir
        return bool(sync_dir) and self.folder == Path(sync_dir) / STATUS

    def _write_file(self, name: str, data: bytes) -> None:
        """``status/<name>`` in the synced folder through its boundary; else in the state folder's
        ``recall-status/`` (trusted, made when missing); atomic and durable either way."""
        if not self._synced():
            with Folder.open(self.folder, create=True) as folder:
                folder.write(name, data, durable=True)
            return
        sync = SyncFolder(Path(self.settings.sync.dir), getattr(self.settings.sync, "status_group", ""))
        try:
            sync.write_status(name, data)
        except FileNotFoundError:  # the synced folder itself is not there yet: it is edged's to make
            sync.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            sync.write_status(name, data)
