"""Background work yields the CPU to recording: one rule for every thread that is not the recorder.

On a small board (or under a CPU quota) the recorder, clip building, the recall worker and the
uploads share too little CPU. Recording comes first: footage not encoded now is lost, a clip built
or a part uploaded a minute later is not. So the threads doing that later work lower their own
scheduling priority when they start, relative to the daemon's (a daemon started at nice 15 keeps
its workers below itself, never above), capped at the kernel's 19.

Why a niceness and not ``SCHED_IDLE`` for threads: they share the interpreter lock with the
recorder. An idle-class thread holding the lock while the machine is busy is not scheduled again
until the CPU is free, and the recorder waits for the lock meanwhile (a priority inversion). A
niced thread still gets its small share, so it releases the lock within a scheduler slice. Child
processes (``upload.bota.media``) hold no lock of ours and use ``SCHED_IDLE`` (``idle_process``).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("edged.priority")

#: Niceness of a background thread relative to the daemon: weight 1024 → 110 at nice 0 → 10, so a
#: busy worker takes about a tenth of what the recorder would give up to it.
BACKGROUND_NICE = 10


def background_thread(what: str) -> None:
    """Lower the calling thread's priority below the recorder's (call it first in the thread)."""
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:  # pragma: no cover - not Linux, or not allowed
        log.debug("%s keeps the daemon's priority: %s", what, exc)


def idle_process() -> None:
    """The idle scheduling class for this whole (child) process: it runs only on time nobody else wants."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19 - os.nice(0))
    except OSError:
        pass
