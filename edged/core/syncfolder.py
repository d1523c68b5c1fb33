"""The synced folder (``sync.dir``): its layout and the one way edged reads and writes there.

A sync tool (Syncthing, rsync) or a person fills this folder; edged trusts nothing in it but the
folder itself, which the local config names. Below it every name goes through ``edged.core.files``:
``status/``, ``recall/`` and ``recall/processed/`` are opened without following links (a link
there is refused, with the alarm ``sync_folder_refused``), files are read bounded from what was
opened, and written atomically through a temporary that cannot follow a link.

Layout::

    <sync.dir>/edged.toml              the fleet's config (read only)
    <sync.dir>/recall/<id>.json        recall requests (read, then moved to processed/)
    <sync.dir>/recall/processed/       requests taken
    <sync.dir>/status/config.json      what became of edged.toml
    <sync.dir>/status/recall-<id>.json what became of each recall request

Modes: owner-only like everything edged makes, except when ``sync.status_group`` names a group
(a sync tool running as another user): then ``status/`` is ``0750`` and its files ``0640``, owned
by that group — never world-readable. The request folder is the sync tool's own.
"""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass
from pathlib import Path

from edged.core.files import DIR_MODE, FILE_MODE, Folder

CONFIG_NAME = "edged.toml"
STATUS = "status"
RECALL = "recall"
PROCESSED = "processed"
#: The alarm raised while a name of the synced folder is refused (a link, a FIFO, ...).
ALARM = "sync_folder_refused"

GROUP_DIR_MODE = 0o750
GROUP_FILE_MODE = 0o640


def group_id(name: str) -> int | None:
    """The gid of ``sync.status_group`` (None: not set); KeyError when no such group exists."""
    if not name:
        return None
    return grp.getgrnam(name).gr_gid


@dataclass(frozen=True)
class SyncFolder:
    """The synced folder: the config and recall requests in, status out."""

    root: Path
    #: ``sync.status_group``: the group a sync tool running as another user reads status/ as.
    status_group: str = ""

    # --- status/: what edged tells the fleet ------------------------------------------------------

    def open_status(self) -> Folder:
        """``status/``, made when missing; a link there is Refused."""
        with Folder.open(self.root) as root:
            folder = root.child(STATUS, create=True, mode=DIR_MODE)
        gid = group_id(self.status_group)
        try:
            st = os.fstat(folder.fd)
            if gid is not None:
                if st.st_gid != gid:
                    os.fchown(folder.fd, -1, gid)
                if st.st_mode & 0o777 != GROUP_DIR_MODE:
                    os.fchmod(folder.fd, GROUP_DIR_MODE)
            elif st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.fchmod(folder.fd, DIR_MODE)
        except BaseException:
            folder.close()
            raise
        return folder

    def write_status(self, name: str, data: bytes, *, durable: bool = True) -> None:
        """Replace ``status/<name>`` atomically (never through a link planted there)."""
        gid = group_id(self.status_group)
        mode = GROUP_FILE_MODE if gid is not None else FILE_MODE
        with self.open_status() as folder, folder.atomic(name, durable=durable, mode=mode) as f:
            if gid is not None:
                os.fchown(f.file.fileno(), -1, gid)
                os.fchmod(f.file.fileno(), mode)  # the umask narrowed the create
            f.file.write(data)

    # --- recall/: requests ----------------------------------------------------------------------

    def open_inbox(self) -> Folder | None:
        """``recall/`` (None when there is none yet); a link there is Refused."""
        with Folder.open(self.root) as root:
            try:
                return root.child(RECALL)
            except FileNotFoundError:
                return None

    @staticmethod
    def open_processed(inbox: Folder) -> Folder:
        """``recall/processed/``, made when missing; a link there is Refused."""
        return inbox.child(PROCESSED, create=True)

    # --- edged.toml -----------------------------------------------------------------------------

    def config_stat(self) -> os.stat_result | None:
        """``edged.toml`` itself (not what a link points at); None when absent."""
        with Folder.open(self.root) as root:
            return root.lstat(CONFIG_NAME)

    def read_config(self, max_bytes: int) -> tuple[bytes, os.stat_result]:
        """The bytes of ``edged.toml`` and the ``fstat`` of what was read; Refused for a link, a
        FIFO, a device or a file over ``max_bytes``."""
        with Folder.open(self.root) as root:
            return root.read_with_stat(CONFIG_NAME, max_bytes)
