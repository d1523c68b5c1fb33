"""The ``directory`` target: an atomic, verified copy into a folder (a USB stick, a synced folder).

The embedded default, so edged delivers somewhere with no account. Each clip gets a folder
``<path>/<clip id>/`` with its parts and, once copied, its manifest.
"""

from __future__ import annotations

from pathlib import Path

from edged.config import Settings
from edged.files import durable_copy
from edged.outbox import OutboxPart
from edged.upload.answers import Kind, Verdict
from edged.upload.targets import Target


class DirectoryTarget(Target):
    name = "directory"
    contract = False

    def __init__(self, settings: Settings) -> None:
        self.root = settings.delivery_dir

    def fingerprint(self) -> str:
        return str(self.root)

    def send(self, part: OutboxPart) -> Verdict:
        src = Path(part.path)
        dest_dir = self.root / part.clip_id
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            digest = durable_copy(src, dest_dir / src.name)
            manifest = src.parent / "manifest.json"
            if manifest.exists():
                durable_copy(manifest, dest_dir / manifest.name)
        except OSError as exc:  # full, read-only or missing medium: it may come back
            return Verdict(Kind.RETRY, f"copy to {dest_dir} failed: {exc.strerror or exc}")
        if digest != part.sha256:
            (dest_dir / src.name).unlink(missing_ok=True)
            return Verdict(Kind.RETRY, f"copy of {src.name} did not match the clip's sha256; removed, will copy again")
        return Verdict(Kind.DELIVERED, "copied", response=str(dest_dir / src.name))
