"""The ``directory`` target: an atomic, verified copy into a folder (a USB stick, a synced folder).

The embedded default, so edged delivers somewhere with no account. Each clip gets a folder
``<path>/<clip id>/`` with its parts and, once copied, its manifest.

The delivery folder may be shared with whoever picks the clips up (a sync tool, a person with
the stick), so it is written like the synced folder: the folder itself and each clip's folder
are opened without following links (a link there is refused, and the part waits), and every file
is written through ``edged.core.files``: a temporary that cannot follow a link, renamed inside the
clip folder's descriptor. A link planted at a part's name is replaced, never written through.
"""

from __future__ import annotations

import os
from pathlib import Path

from edged.config.schema import Settings
from edged.core.files import Folder, Refused
from edged.core.states import Alarm
from edged.upload.target import Parcel, Target
from edged.upload.verdict import Kind, Verdict


class DirectoryTarget(Target):
    name = "directory"
    contract = False

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.root = settings.delivery_dir

    def fingerprint(self) -> str:
        return str(self.root)

    def _clip_folder(self, clip_id: str) -> Folder:
        """``<root>/<clip id>``: the root's parent is trusted (configured); the root and the clip
        folder are opened without following links."""
        root = Path(os.path.abspath(self.root))  # made absolute without resolving any link
        return Folder.open_below(root.parent, root.name, clip_id, create=True)

    def send(self, parcel: Parcel) -> Verdict:
        part = parcel.part
        src = Path(part.path)
        dest = self.root / part.clip_id / src.name
        try:
            with self._clip_folder(part.clip_id) as folder:
                digest = folder.copy_in(src, src.name)
                if digest != part.sha256:
                    folder.unlink(src.name)
                    return Verdict(
                        Kind.RETRY, f"copy of {src.name} did not match the clip's sha256; removed, will copy again"
                    )
                manifest = src.parent / "manifest.json"
                if manifest.exists():
                    folder.copy_in(manifest, manifest.name)
        except Refused as exc:  # a link or a file where a folder belongs: never written through
            return Verdict(
                Kind.RETRY, f"delivery folder refused: {exc}; the clip waits", alarm=Alarm.DELIVERY_FOLDER_REFUSED
            )
        except OSError as exc:  # full, read-only or missing medium: it may come back
            return Verdict(Kind.RETRY, f"copy to {dest.parent} failed: {exc.strerror or exc}")
        return Verdict(Kind.DELIVERED, "copied", response=str(dest))
