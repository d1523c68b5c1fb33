"""The recall inbox: request files a sync tool (Syncthing, rsync) drops into ``<sync.dir>/recall/``.

A request is ``recall/<id>.json``, the id being the file's name without ``.json`` (the operator
picks it and finds the answer in ``status/recall-<id>.json``). The inbox is looked at every
``sync.poll_seconds``; a file is taken only once it is *settled*:

* sync tools' temporary files are never read: anything starting with ``.`` (rsync writes
  ``.name.XXXXXX``, Syncthing ``.syncthing.name.tmp``), Syncthing's ``~syncthing~name.tmp``, any
  ``*.tmp``, and names not ending in ``.json``; nor Syncthing's conflict copies
  (``<id>.sync-conflict-<date>-<time>-<device>.json``: the copy that lost when two parties
  changed ``<id>.json`` at once; the winner is ``<id>.json`` itself, and the copy taken as a
  request of its own would be answered as a duplicate or a conflicting id, under a made-up id);
* a file still being written is left alone: it must look the same (inode, size, modification and
  change times) at ``settle_looks`` looks in a row, spanning at least ``settle_s`` of this
  process's monotonic clock. The file's mtime is never compared with the wall clock: a Pi that
  has not reached NTP yet, or a sync tool preserving a sender's mtime, gives mtimes far in the
  future or the past, and such a request must be taken like any other.

Everything in the folder is untrusted (whoever syncs it may plant links, FIFOs, devices, or swap
a folder for a link between two looks), so every name goes through ``edged.core.syncfolder`` /
``edged.core.files``: ``recall/`` and ``recall/processed/`` are opened without following links (a
link there refuses the whole inbox — ``refused`` says why, and the service raises the alarm —
and nothing is read or moved); the folder is listed through its descriptor; a request is read
from a descriptor opened ``O_NOFOLLOW|O_NONBLOCK`` and proven by ``fstat`` to be a regular file
of at most ``MAX_REQUEST_BYTES`` (a FIFO swapped in after the listing cannot block the thread);
a taken file is renamed between the two folder descriptors into ``processed/`` (replacing an
older one of the same name), so the folder shows what is still to be read.

A file is taken once: whatever its content — a link, a FIFO, 60 KB of ``[``, bytes that are
not UTF-8 — it is handed over once (with the reason it is not a request) and moved; one that
cannot be moved (a read-only share) is remembered by its inode, size and times and not taken
again unless it changes (until the next start: then it is answered once more; the same id with
the same fields is answered with the state already reached). A sync tool pushing the same file
again is harmless for the same reason.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from edged.core.files import Folder, Refused
from edged.core.syncfolder import RECALL, SyncFolder
from edged.recall.request import MAX_REQUEST_BYTES, InvalidRequest, load_request

log = logging.getLogger("edged.recall")

PROCESSED = "processed"
#: At most this many files are taken per look (the rest at the next: a stop never waits long).
MAX_PER_LOOK = 64
SUFFIX = ".json"

#: What identifies a version of a file between looks: inode, size, mtime, ctime, mode.
Mark = tuple[int, int, int, int, int]


#: Syncthing's name for the losing copy of a file changed on two sides at once.
SYNCTHING_CONFLICT = re.compile(r"\.sync-conflict-\d{8}-\d{6}-[A-Z0-9]{7}(\.|$)")


def is_temporary(name: str) -> bool:
    """A sync tool's file in transit or its conflict copy, or anything that is not a request."""
    return (
        name.startswith(".")
        or name.startswith("~")
        or name.endswith(".tmp")
        or not name.endswith(SUFFIX)
        or name == SUFFIX
        or SYNCTHING_CONFLICT.search(name) is not None
    )


class InboxItem(NamedTuple):
    name: str  # the file's name in recall/
    request_id: str  # the file name without .json
    body: Any  # the parsed JSON (None when ``error``)
    error: str  # why the file is not a request ('' if it parsed)


@dataclass(slots=True)
class _Seen:
    """A request file's version as last seen, and how long it has held still."""

    mark: Mark
    since: float  # monotonic time this version was first seen
    looks: int  # looks in a row it was seen unchanged


def _mark(st: Any) -> Mark:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode


class Inbox:
    """``folder``: ``<sync.dir>/recall`` (its parent is the synced folder, trusted as configured)."""

    def __init__(
        self,
        folder: Path,
        settle_s: float = 1.0,
        settle_looks: int = 2,
        now: Callable[[], float] = time.monotonic,
        max_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        if folder.name != RECALL:
            raise ValueError(f"the recall inbox is <sync dir>/{RECALL}, not {folder}")
        self.folder = folder
        self.sync = SyncFolder(folder.parent)
        self.settle_s = settle_s
        self.settle_looks = max(2, settle_looks)
        self.max_bytes = max_bytes
        self._now = now
        self._seen: dict[str, _Seen] = {}
        self._kept: dict[str, Mark] = {}  # taken but not movable: skipped while it stays the same
        #: Why the inbox is refused now ('' when it is usable): a link or non-folder at recall/ or
        #: recall/processed/. Nothing is read or moved while it is set.
        self.refused = ""

    # --- a look -------------------------------------------------------------------------------

    def take(
        self, handle: Callable[[InboxItem], None], stop: Callable[[], bool] = lambda: False, limit: int = MAX_PER_LOOK
    ) -> int:
        """One look: every settled file (oldest first, at most ``limit``) is read, handed to
        ``handle`` and moved to ``processed/``. Returns how many were taken. Never raises for
        anything found in the folder."""
        folders = self._open()
        if folders is None:
            return 0
        inbox, processed = folders
        taken = 0
        with inbox, processed:
            for name, mark in self._settled(inbox):
                if stop() or taken >= limit:
                    break
                read = self._read(inbox, name, mark)
                if read is None:
                    continue
                item, mark = read
                try:
                    handle(item)
                except Exception:
                    log.exception("recall inbox: %s not handled", name)
                self._move(inbox, processed, name, mark)
                taken += 1
        return taken

    def _open(self) -> tuple[Folder, Folder] | None:
        """``recall/`` and ``recall/processed/`` opened without following links; None (and
        ``refused`` set) when either is refused, None when there is no inbox yet."""
        try:
            inbox = self.sync.open_inbox()
        except Refused as exc:
            self.refused = str(exc)
            return None
        except OSError as exc:  # the synced folder itself is missing or unreadable: not an inbox yet
            log.debug("recall inbox: %s", exc)
            self.refused = ""
            return None
        if inbox is None:
            self.refused = ""
            return None
        try:
            processed = self.sync.open_processed(inbox)
        except OSError as exc:
            inbox.close()
            self.refused = str(exc) if isinstance(exc, Refused) else f"{self.folder / PROCESSED}: {exc}"
            return None
        self.refused = ""
        return inbox, processed

    def _settled(self, inbox: Folder) -> list[tuple[str, Mark]]:
        """The names that looked the same long enough, first seen first."""
        now = self._now()
        seen: dict[str, _Seen] = {}
        kept: dict[str, Mark] = {}
        ready: list[tuple[float, str, Mark]] = []
        for name, st in inbox.entries():
            if is_temporary(name):
                continue
            mark = _mark(st)
            if self._kept.get(name) == mark:
                kept[name] = mark
                continue
            prev = self._seen.get(name)
            entry = (
                _Seen(mark, now, 1) if prev is None or prev.mark != mark else _Seen(mark, prev.since, prev.looks + 1)
            )
            seen[name] = entry
            if entry.looks >= self.settle_looks and now - entry.since >= self.settle_s:
                ready.append((entry.since, name, mark))
        self._seen, self._kept = seen, kept  # names gone from the folder are forgotten
        return [(name, mark) for _, name, mark in sorted(ready)]

    def _read(self, inbox: Folder, name: str, mark: Mark) -> tuple[InboxItem, Mark] | None:
        """The request in ``name``, or an item with the reason it is not one, and the mark of the
        entry to move; None when it went away or was rewritten since it settled (it settles again)."""
        rid = name[: -len(SUFFIX)]
        where = f"{RECALL}/{name}"
        try:
            data, st = inbox.read_with_stat(name, self.max_bytes)
        except FileNotFoundError:
            self._seen.pop(name, None)
            return None
        except (Refused, OSError) as exc:  # a link, a FIFO, a device, a folder, too big, unreadable
            now = inbox.lstat(name)  # what was refused, even if swapped in after the listing
            if now is None:
                return None
            why = exc.why if isinstance(exc, Refused) else f"cannot be read: {exc.strerror or exc}"
            return InboxItem(name, rid, None, f"{where} {why}"), _mark(now)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != mark[:3]:
            self._seen.pop(name, None)  # rewritten since the last look
            return None
        try:
            return InboxItem(name, rid, load_request(data), ""), mark
        except InvalidRequest as exc:
            return InboxItem(name, rid, None, f"{where}: {exc}"), mark

    def _move(self, inbox: Folder, processed: Folder, name: str, mark: Mark) -> None:
        """Rename ``name`` (the entry itself) into ``processed/``; remember it if that fails."""
        self._seen.pop(name, None)
        try:
            st = inbox.lstat(name)
            if st is None:
                return  # the sync tool removed it meanwhile
            if st.st_ino != mark[0]:
                return  # another file took its name since it was read: it settles on its own
            inbox.move(name, processed)
            processed.fsync()
            inbox.fsync()
        except FileNotFoundError:
            pass
        except OSError as exc:  # a read-only share: remember it instead, so it is not taken twice
            log.warning("recall inbox: %s not moved to %s/: %s", name, PROCESSED, exc)
            self._kept[name] = mark
