"""Fewer malloc arenas: the daemon's many threads need not each keep their own heap.

glibc gives each thread that contends for the heap a new arena, up to eight per CPU, and an arena
keeps the memory it once held. The daemon runs a dozen threads (capture, recorder, events,
uploads, recall, control, status, GPS) that allocate little and rarely at once, so most of those
arenas hold freed memory nobody reuses: a few MB of resident memory that a 512 MB board wants back
(bench_starve's unlimited run, two runs each: 104–106 → 100–101 MB). Two arenas keep the recorder
off the others' lock without that waste. ``MALLOC_ARENA_MAX`` in the environment still wins (the
systemd unit or a user may set it), and outside glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("edged.memory")

#: glibc's ``M_ARENA_MAX`` (malloc.h).
_M_ARENA_MAX = -8
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before the threads start); True when it took effect."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError) as exc:  # not glibc
        log.debug("malloc arenas left as they are: %s", exc)
        return False
