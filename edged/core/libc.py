"""The C library, loaded once and without a child process.

``ctypes.util.find_library("c")`` runs ``/sbin/ldconfig -p`` in a child process at every call: a
start of the daemon ran it three times (the malloc arenas, the clock's ``adjtimex``), each a fork
of the whole interpreter and an exec, CPU that counts in the daemon's own usage (issue 15: start-up
cost). glibc's C library has one fixed name, ``libc.so.6``; only where that does not load (another
C library) is ``find_library`` asked.
"""

from __future__ import annotations

import ctypes
import functools

GLIBC_SONAME = "libc.so.6"


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library (``use_errno``), or None where none can be found."""
    try:
        return ctypes.CDLL(GLIBC_SONAME, use_errno=True)
    except OSError:
        from ctypes.util import find_library  # runs ldconfig: only off glibc

        name = find_library("c")
        try:
            return ctypes.CDLL(name, use_errno=True) if name else None
        except OSError:
            return None
