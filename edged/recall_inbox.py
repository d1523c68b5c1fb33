"""The recall inbox: request files a sync tool (Syncthing, rsync) drops into ``<sync.dir>/recall/``.

A request is ``recall/<id>.json``, the id being the file's name without ``.json`` (the operator
picks it and finds the answer in ``status/recall-<id>.json``). The inbox is looked at every
``sync.poll_seconds``; a file is taken only once it is *settled*:

* sync tools' temporary files are never read: anything starting with ``.`` (rsync writes
  ``.name.XXXXXX``, Syncthing ``.syncthing.name.tmp``), Syncthing's ``~syncthing~name.tmp``, any
  ``*.tmp``, and names not ending in ``.json``;
* a file still being written is left alone: its size and modification time must be the same at two
  looks and at least ``settle_s`` old.

A taken file is moved to ``recall/processed/`` (replacing an older one of the same name), so the
folder shows what is still to be read. A sync tool pushing the same file again is harmless: the
same id with the same fields is answered with the state already reached.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.files import fsync_dir

log = logging.getLogger("edged.recall")

PROCESSED = "processed"
#: Largest request file read (a request is a few hundred bytes).
MAX_REQUEST_BYTES = 64 * 1024


def is_temporary(name: str) -> bool:
    """A sync tool's file in transit, or anything that is not a request."""
    return (name.startswith(".") or name.startswith("~") or name.endswith(".tmp") or not name.endswith(".json")
            or name == ".json")


@dataclass(frozen=True, slots=True)
class InboxItem:
    path: Path
    request_id: str  # the file name without .json
    body: Any  # the parsed JSON (None when ``error``)
    error: str  # why the file is not a request ('' if it parsed)


class Inbox:
    def __init__(self, folder: Path, settle_s: float = 1.0, now: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.settle_s = settle_s
        self._now = now
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last look
        self._kept: dict[str, tuple[int, int]] = {}  # taken but not movable (read-only share): skip as is

    def scan(self) -> list[InboxItem]:
        """The settled request files, oldest first."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        ready: list[tuple[int, InboxItem]] = []
        seen: dict[str, tuple[int, int]] = {}
        now_ns = int(self._now() * 1e9)
        for e in entries:
            if is_temporary(e.name):
                continue
            try:
                if not e.is_file(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed or removed under us
                continue
            mark = (st.st_size, st.st_mtime_ns)
            if self._kept.get(e.name) == mark:
                continue
            seen[e.name] = mark
            if self._seen.get(e.name) != mark or now_ns - st.st_mtime_ns < self.settle_s * 1e9:
                continue  # new, changed since the last look, or too fresh: maybe still being written
            ready.append((st.st_mtime_ns, self._read(Path(e.path), st.st_size)))
        self._seen = seen
        return [item for _, item in sorted(ready, key=lambda r: (r[0], r[1].path.name))]

    def _read(self, path: Path, size: int) -> InboxItem:
        rid = path.name[:-len(".json")]
        if size > MAX_REQUEST_BYTES:
            return InboxItem(path, rid, None, f"{path.name} is {size} bytes; a request is at most {MAX_REQUEST_BYTES}")
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return InboxItem(path, rid, None, f"{path.name} cannot be read as UTF-8 text: {exc}")
        try:
            return InboxItem(path, rid, json.loads(text), "")
        except ValueError as exc:
            return InboxItem(path, rid, None, f"{path.name} is not valid JSON: {exc}")

    def done(self, item: InboxItem) -> None:
        """Move a taken file to ``processed/`` (the same name replaces an older copy)."""
        dest = self.folder / PROCESSED
        try:
            dest.mkdir(exist_ok=True)
            os.replace(item.path, dest / item.path.name)
            fsync_dir(self.folder)
        except FileNotFoundError:
            pass  # the sync tool removed it meanwhile
        except OSError as exc:  # a read-only share: remember it instead, so it is not taken twice
            log.warning("recall inbox: %s not moved to %s/: %s", item.path.name, PROCESSED, exc)
            mark = self._seen.get(item.path.name)
            if mark is not None:
                self._kept[item.path.name] = mark
        self._seen.pop(item.path.name, None)
