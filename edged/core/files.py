"""Every file edged writes or reads at a boundary goes through here, and no name here follows a link.

Why one module: the synced folder (``sync.dir``) and a delivery folder are written by someone
else (a sync party, whoever shares a USB stick). A name there may at any moment be a symbolic
link to evidence, a FIFO that blocks a reader forever, ``/dev/zero``, or a folder swapped for a
link between a check and a use. So the rules, in one place:

* **Folders are opened, not named.** ``Folder.open`` opens a root edged was configured with
  (local config: trusted, links in it followed); every name below it is opened one component at
  a time with ``O_DIRECTORY|O_NOFOLLOW`` relative to its parent's descriptor (``Folder.child``).
  A link where a folder should be is refused with :class:`Refused`, naming it.
* **Writes are atomic and cannot follow a link.** The temporary is created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a random name inside the folder's descriptor, written,
  fsynced (``durable``), then renamed over the final name inside the same folder, and the folder
  is fsynced. A link planted at the final name is replaced, never written through; a link planted
  at a temporary name makes the create fail and another name is tried.
* **Reads are bounded and check what they opened.** ``O_RDONLY|O_NOFOLLOW|O_NONBLOCK`` (a FIFO
  opens without blocking), then ``fstat`` on that descriptor: a regular file of at most
  ``max_bytes``, read from the same descriptor (no check-then-open window).

Evidence (segments, clips, stores) lives in the state folder, which the configuration keeps
apart from the synced folder; its writers use the same atomic writer (``Folder.atomic``,
``write_atomic``, ``atomic_path``) so there is one way to put a finished file on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_BLOCK = 1 << 20
#: Mode of files and folders edged makes (owner-only; the process umask narrows it further).
FILE_MODE = 0o600
DIR_MODE = 0o700

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(OSError):
    """A name edged will not use as asked: a link, not a regular file or folder, too big, or not a
    plain name. The message says which and where."""

    def __init__(self, where: str, why: str, err: int = errno.EPERM) -> None:
        super().__init__(err, f"{where}: {why}")
        self.where = where
        self.why = why

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


def check_name(name: str) -> str:
    """``name`` if it is one plain path component (no ``/``, not ``.``/``..``, no NUL); else Refused."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise Refused(repr(name), "not a plain file name")
    return name


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


class Folder:
    """An open folder: every name inside is resolved against its descriptor, never through a link.
    A context manager; ``close()`` when done."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, create: bool = False, mode: int = DIR_MODE) -> Folder:
        """A configured root (trusted: local config names it; links in its path are followed).
        ``create``: made (with its parents) when missing."""
        path = Path(path)
        if create:
            path.mkdir(mode=mode, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(fd, path)

    @classmethod
    def open_below(cls, root: Path | str, *names: str, create: bool = False, mode: int = DIR_MODE) -> Folder:
        """``root`` (trusted) then each of ``names`` as an untrusted component (see ``child``)."""
        folder = cls.open(root, create=create, mode=mode)
        for name in names:
            try:
                sub = folder.child(name, create=create, mode=mode)
            finally:
                folder.close()
            folder = sub
        return folder

    def child(self, name: str, *, create: bool = False, mode: int = DIR_MODE) -> Folder:
        """The folder ``name`` inside this one, opened ``O_DIRECTORY|O_NOFOLLOW``: a link (or
        anything not a folder) there is refused. ``create``: made when missing."""
        check_name(name)
        where = str(self.path / name)
        for _ in range(2):
            try:
                return Folder(os.open(name, _NOFOLLOW_DIR, dir_fd=self.fd), self.path / name)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, mode, dir_fd=self.fd)
                except FileExistsError:
                    pass  # made meanwhile (or a link planted meanwhile: the open says which)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(where, self._what(name) + "; only a real folder is used here", exc.errno) from None
                raise
        return Folder(os.open(name, _NOFOLLOW_DIR, dir_fd=self.fd), self.path / name)

    def _what(self, name: str) -> str:
        st = self.lstat(name)
        return "missing" if st is None else f"is {_kind(st.st_mode)}"

    # --- looking ------------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry itself (a link is not followed); None when there is none."""
        try:
            return os.stat(check_name(name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def entries(self) -> list[tuple[str, os.stat_result]]:
        """(name, lstat) of every entry; entries that vanish while listed are left out."""
        out = []
        for name in os.listdir(self.fd):
            st = self.lstat(name)
            if st is not None:
                out.append((name, st))
        return out

    # --- reading ------------------------------------------------------------------------------

    def open_regular(self, name: str, max_bytes: int | None = None) -> tuple[int, os.stat_result]:
        """A descriptor of ``name``, proven (``fstat`` on it) to be a regular file of at most
        ``max_bytes``. The caller closes it. Refused otherwise; FileNotFoundError when missing."""
        where = str(self.path / check_name(name))
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused(where, "is a symbolic link; only a regular file is read here", exc.errno) from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(where, f"is {_kind(st.st_mode)}; only a regular file is read here")
            if max_bytes is not None and st.st_size > max_bytes:
                raise Refused(where, f"is {st.st_size} bytes; at most {max_bytes} are read here", errno.EFBIG)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def read(self, name: str, max_bytes: int) -> bytes:
        """The bytes of the regular file ``name`` (at most ``max_bytes``: a file that grows past it
        while read is refused)."""
        return self.read_with_stat(name, max_bytes)[0]

    def read_with_stat(self, name: str, max_bytes: int) -> tuple[bytes, os.stat_result]:
        """``read``, and the ``fstat`` of what was read (to tell whether it changed since)."""
        fd, st = self.open_regular(name, max_bytes)
        try:
            chunks, total = [], 0
            while block := os.read(fd, min(_BLOCK, max_bytes + 1 - total)):
                chunks.append(block)
                total += len(block)
                if total > max_bytes:
                    raise Refused(str(self.path / name), f"grew past {max_bytes} bytes while read", errno.EFBIG)
            return b"".join(chunks), st
        finally:
            os.close(fd)

    # --- writing ------------------------------------------------------------------------------

    @contextmanager
    def atomic(self, name: str, *, durable: bool = True, mode: int = FILE_MODE) -> Iterator[AtomicFile]:
        """A new file that replaces ``name`` when the block ends normally (see the module's rules);
        on any error it is removed and ``name`` is untouched."""
        f = AtomicFile(self, check_name(name), durable=durable, mode=mode)
        try:
            yield f
            f.commit()
        finally:
            f.discard()

    def write(self, name: str, data: bytes, *, durable: bool = True, mode: int = FILE_MODE) -> None:
        """Replace ``name`` with ``data``, whole or not at all."""
        with self.atomic(name, durable=durable, mode=mode) as f:
            f.file.write(data)

    def copy_in(self, src: Path | str, name: str, *, max_bytes: int | None = None) -> str:
        """A durable, atomic copy of the regular file ``src`` as ``name``; streamed in blocks.
        Returns the sha256 of the bytes written."""
        h = hashlib.sha256()
        src = Path(src)
        with Folder.open(src.parent) as source:
            fd, _ = source.open_regular(src.name, max_bytes)
        with os.fdopen(fd, "rb") as r, self.atomic(name) as f:
            while block := r.read(_BLOCK):
                h.update(block)
                f.file.write(block)
        return h.hexdigest()

    # --- moving, removing, syncing ------------------------------------------------------------

    def move(self, name: str, dest: Folder, new_name: str | None = None) -> None:
        """Rename the entry ``name`` (itself, never what a link points at) into ``dest``."""
        os.rename(check_name(name), check_name(new_name or name), src_dir_fd=self.fd, dst_dir_fd=dest.fd)

    def unlink(self, name: str, *, missing_ok: bool = True) -> None:
        try:
            os.unlink(check_name(name), dir_fd=self.fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not leak a descriptor per call
        try:
            self.close()
        except OSError:
            pass


#: The name of a temporary AtomicFile makes: ``.<final name>.<8 hex>.tmp``.
_TEMP = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def is_temporary(name: str) -> bool:
    """A temporary of this module's (left behind by a kill mid-write)."""
    return bool(_TEMP.fullmatch(name))


def remove_temporaries(path: Path) -> int:
    """Remove what kills mid-write left in ``path`` (a folder edged owns); how many."""
    removed = 0
    try:
        folder = Folder.open(path)
    except FileNotFoundError:
        return 0
    with folder:
        for name, st in folder.entries():
            if is_temporary(name) and stat.S_ISREG(st.st_mode):
                folder.unlink(name)
                removed += 1
    return removed


class AtomicFile:
    """A temporary being written in a Folder (see ``Folder.atomic``). ``file`` is its binary file
    object; ``path`` names it for readers that need a path (the folder must be trusted for that:
    the state folder). ``commit()`` fsyncs (durable), renames it over its final name and fsyncs
    the folder; ``discard()`` removes it if not committed."""

    def __init__(self, folder: Folder, name: str, *, durable: bool, mode: int) -> None:
        self.folder = folder
        self.name = name
        self.durable = durable
        for _ in range(16):
            tmp = f".{name}.{os.urandom(4).hex()}.tmp"
            try:
                fd = os.open(tmp, _CREATE, mode, dir_fd=folder.fd)
                break
            except FileExistsError:  # taken, or a planted link: never followed, pick another
                continue
        else:
            raise Refused(str(folder.path / name), "no free temporary name (the folder is full of planted names)")
        self.tmp_name = tmp
        self.path = folder.path / tmp
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self._done = False

    def commit(self) -> None:
        if self._done:
            return
        if not self.file.closed:
            self.file.flush()
            if self.durable:
                os.fsync(self.file.fileno())
            self.file.close()
        elif self.durable:  # written through ``path`` by another writer (atomic_path)
            fd = os.open(self.tmp_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.folder.fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(self.tmp_name, self.name, src_dir_fd=self.folder.fd, dst_dir_fd=self.folder.fd)
        self._done = True
        if self.durable:
            self.folder.fsync()

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.file.close()
        except OSError:
            pass
        try:
            self.folder.unlink(self.tmp_name)
        except OSError:  # the write's own error is the one to report
            pass


# --- conveniences for one file in a folder edged owns ---------------------------------------------


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` whole or not at all (its folder opened as a trusted root).
    ``durable``: also survive a power cut (fsync of the file before the rename, of the folder
    after) — for records such as a clip's manifest, not for the status file rewritten every second."""
    with Folder.open(path.parent) as folder:
        folder.write(path.name, data, durable=durable)


@contextmanager
def atomic_path(dst: Path, *, durable: bool = True) -> Iterator[Path]:
    """A hidden temporary path (created empty, owner-only) that becomes ``dst`` when the block ends
    normally; on any error it is removed and ``dst`` is untouched. For writers that need a path
    (PyAV muxers); ``dst``'s folder is trusted (the state folder)."""
    with Folder.open(dst.parent) as folder, folder.atomic(dst.name, durable=durable) as f:
        f.file.close()  # the writer opens the path itself
        yield f.path


def durable_copy(src: Path, target: Path) -> str:
    """Copy ``src`` to ``target`` atomically in blocks; returns the sha256 of the bytes written."""
    with Folder.open(target.parent) as folder:
        return folder.copy_in(src, target.name)


def read_bounded(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (its last component not followed; see Folder.read)."""
    path = Path(path)
    with Folder.open(path.parent) as folder:
        return folder.read(path.name, max_bytes)


def owner_only(root: Path) -> int:
    """Take group and world access away from ``root`` and everything below it that this user owns
    (links are not followed, sockets and FIFOs left alone): what an earlier run, another umask or a
    copy left readable. Returns how many entries were changed."""
    changed = 0
    uid = os.getuid()

    def tighten(fd: int | None, path: str, st: os.stat_result) -> None:
        nonlocal changed
        if st.st_uid != uid or not st.st_mode & 0o077:
            return
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return
        os.chmod(
            path, stat.S_IMODE(st.st_mode) & 0o700, dir_fd=fd, follow_symlinks=False
        ) if fd is not None else os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
        changed += 1

    try:
        tighten(None, str(root), os.stat(root))
    except FileNotFoundError:
        return 0
    for _top, dirs, files, dfd in os.fwalk(root, follow_symlinks=False):
        for name in dirs + files:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    tighten(dfd, name, st)
            except (FileNotFoundError, NotImplementedError):
                continue
    return changed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()
