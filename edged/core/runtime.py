"""Making the runtime folder (see :mod:`edged.core.paths`) without trusting what is already there.

``/dev/shm`` is shared by every local user, and ``$XDG_RUNTIME_DIR`` by every program of the session:
someone may have put a link, a file, or a folder of their own where ours goes, to catch the status
file or to answer ``edged mark`` in our place. So each component below the (trusted) base is opened
with ``O_NOFOLLOW`` (:meth:`edged.core.files.Folder.child`; a link is refused) and must be a folder
this user owns; one of ours left open to others is made owner-only again, anyone else's is refused.
The daemon then runs with its volatile files in the state folder (more writes, never a lost status).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edged.core.files import DIR_MODE, Folder, Refused


def _owned(folder: Folder) -> None:
    st = os.fstat(folder.fd)
    if st.st_uid != os.getuid():
        raise Refused(str(folder.path), f"belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.fchmod(folder.fd, DIR_MODE)


def make_runtime(path: Path, given: bool) -> Path:
    """``path`` made (owner-only, nothing followed below its base) and proven ours; ``given``: made
    by systemd already (only checked). Raises OSError (Refused: what is wrong there)."""
    if given:
        with Folder.open(path) as folder:
            _owned(folder)
        return path
    base, names = path.parents[1], (path.parent.name, path.name)
    folder = Folder.open(base)
    try:
        for name in names:
            sub = folder.child(name, create=True)
            folder.close()
            folder = sub
            _owned(folder)
    finally:
        folder.close()
    return path


def remove_runtime(path: Path) -> None:
    """The folder edged made, once empty (a daemon that stopped); left alone if anything is in it."""
    try:
        path.rmdir()
    except OSError:
        pass
