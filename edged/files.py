"""Durable file copies: the one way edged puts a file somewhere else (export, directory target)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edged.segment import fsync_dir

_BLOCK = 1 << 20


def durable_copy(src: Path, target: Path) -> str:
    """Copy ``src`` to ``target`` atomically (hidden temp file, fsync, rename, directory fsync), in
    blocks, so memory does not grow with the file. Returns the sha256 of the bytes written. On any
    error the temp file is removed and ``target`` is untouched."""
    tmp = target.with_name(f".{target.name}.tmp")
    h = hashlib.sha256()
    try:
        with open(src, "rb") as r, open(tmp, "wb") as w:
            while block := r.read(_BLOCK):
                h.update(block)
                w.write(block)
            w.flush()
            os.fsync(w.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return h.hexdigest()
