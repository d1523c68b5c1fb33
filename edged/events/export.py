"""A built clip as the operator's commands see it: ``edged clips list`` and ``edged clips export``.

Both read what the events store and the outbox know, and the clip folders, never trusting a name
they were given: a clip id from the command line must have a clip id's form and be known; folders
and files are opened without following links (``edged.core.files``); a manifest is read bounded.
Nothing here writes inside the state folder.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from edged.core.files import Folder, Refused
from edged.core.ids import CLIP_ID
from edged.core.timefmt import iso
from edged.events.store import EventStore
from edged.upload.outbox import Outbox, least_advanced


def export_clip(
    clips_dir: Path, clip_id: str, dest: Path, store: EventStore | None = None, outbox: Outbox | None = None
) -> tuple[list[Path], list[str]]:
    """Copy a built clip's parts and manifest into ``dest``; (files written, entries skipped).

    ``clip_id`` comes from the command line, so it is not trusted: it must have the form of an
    event id (``20240501T143000Z-1a2b3c``) or a recall clip id (``recall-<id>``), be known to the
    events store or the outbox, and is opened as one folder name below ``clips_dir`` without
    following a link (``edged.core.files``). Only regular files directly inside are copied, each opened
    without following a link and written atomically and durably into ``dest`` (the operator's
    folder, trusted, made when missing), the manifest last; anything else there (a link, a folder)
    is skipped and named. FileNotFoundError names what is missing; ``files.Refused`` a link."""
    if not CLIP_ID.fullmatch(clip_id):
        raise FileNotFoundError(
            f"{clip_id!r} is not a clip id (an event id such as 20240501T143000Z-1a2b3c, or recall-<request id>)"
        )
    known = (store is not None and store.get(clip_id) is not None) or (
        outbox is not None and bool(outbox.parts(clip_id))
    )
    if not known:
        raise FileNotFoundError(f"no clip {clip_id!r}: not in the events store nor in the outbox")
    if Path(os.path.realpath(dest)).is_relative_to(os.path.realpath(clips_dir)):
        raise Refused(str(dest), "is inside the clips folder; an export never writes over evidence")
    with Folder.open(clips_dir) as clips:
        try:
            src = clips.child(clip_id)
        except FileNotFoundError:
            raise FileNotFoundError(f"clip {clip_id!r} has no folder in {clips_dir} (not built yet?)") from None
        with src:
            manifest = src.lstat("manifest.json")
            if manifest is None or not stat.S_ISREG(manifest.st_mode):
                raise FileNotFoundError(f"clip {clip_id!r} is not built yet (no manifest in {src.path})")
            entries = [(n, st) for n, st in src.entries() if not n.startswith(".")]  # dot files: temporaries
            skipped = [f"{src.path / n}: not a regular file" for n, st in entries if not stat.S_ISREG(st.st_mode)]
            names = sorted(
                (n for n, st in entries if stat.S_ISREG(st.st_mode)), key=lambda n: (n == "manifest.json", n)
            )
            copied: list[Path] = []
            with Folder.open(dest, create=True) as out:
                for name in names:
                    try:
                        fd, _ = src.open_regular(name)
                    except (Refused, FileNotFoundError) as exc:  # swapped or removed since listed
                        skipped.append(str(exc))
                        continue
                    with open(fd, "rb") as r, out.atomic(name) as f:
                        shutil.copyfileobj(r, f.file, 1 << 20)
                    copied.append(out.path / name)
    return copied, skipped


def clip_summaries(store: EventStore, outbox: Outbox, clips_dir: Path) -> list[dict[str, Any]]:
    """Every event with its marks, the span its manifest states and its parts' delivery states.
    Manifests are read bounded and without following a link; one that cannot be read leaves the
    span empty and says why in ``manifest_error`` instead of failing the listing."""

    def manifest_of(clip_id: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            with Folder.open_below(clips_dir, clip_id) as folder:
                doc = json.loads(folder.read("manifest.json", 16 << 20))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, f"manifest unreadable: {exc}"
        return (doc, None) if isinstance(doc, dict) else (None, "manifest unreadable: not a JSON object")

    out = []
    for e in store.events():
        manifest, problem = manifest_of(e.id)
        span = {
            k: manifest.get(k) if manifest and isinstance(manifest.get(k), str) else None
            for k in ("wall_start", "wall_end")
        }
        parts: list[dict[str, Any]] = [
            {
                "number": p.number,
                "path": p.path,
                "bytes": p.bytes,
                "duration_ms": p.duration_ms,
                "sha256": p.sha256,
                "state": outbox.part_state(p.id),
                "deliveries": {d.target: d.state for d in outbox.deliveries(clip_id=e.id) if d.part.id == p.id},
            }
            for p in outbox.parts(e.id)
        ]
        out.append(
            {
                "id": e.id,
                "state": e.state,
                # Where its upload stands: its least advanced part's state (None before it is queued).
                "delivery": least_advanced([p["state"] for p in parts]) if parts else None,
                "reason": e.reason,
                "marks": [m._asdict() | {"wall": iso(m.wall_ns)} for m in store.marks(e.id)],
                **span,
                "parts": parts,
            }
            | ({"manifest_error": problem} if problem else {})
        )
    return out
