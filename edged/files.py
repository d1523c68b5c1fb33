"""Durable file writes: a file appears under its final name only complete and on disk.

``atomic_path`` is the one way edged writes a finished file (media made from clips, copies);
``durable_copy`` puts a file somewhere else (export, directory target).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edged.segment import fsync_dir

_BLOCK = 1 << 20


@contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """A hidden temporary path that becomes ``dst`` (fsynced, renamed, folder fsynced) when the
    block ends normally; on any error it is removed and ``dst`` is untouched."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def durable_copy(src: Path, target: Path) -> str:
    """Copy ``src`` to ``target`` atomically (hidden temp file, fsync, rename, directory fsync), in
    blocks, so memory does not grow with the file. Returns the sha256 of the bytes written. On any
    error the temp file is removed and ``target`` is untouched."""
    h = hashlib.sha256()
    with atomic_path(target) as tmp, open(src, "rb") as r, open(tmp, "wb") as w:
        while block := r.read(_BLOCK):
            h.update(block)
            w.write(block)
    return h.hexdigest()
