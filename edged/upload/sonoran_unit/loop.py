"""One worker thread per unit operation: do one thing, then sleep until due or woken.

Each operation gets its own thread and its own HTTP session, so none waits behind another's
request in flight (a panic never queues behind a call note, nor behind an upload: those have
threads and connections of their own too). Waiting never spins: :meth:`Loop.step` says how long
to sleep, and :meth:`Loop.poke` (a gesture, a delivery, a link appearing, stop) ends the sleep.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("edged.unit")

#: Longest sleep with nothing due (a safety net; wake-ups come from events).
IDLE_WAIT_S = 60.0


class Loop(threading.Thread):
    def __init__(self, name: str, stopping: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = stopping
        self._wake = threading.Event()

    def poke(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()  # before the step: a poke during it ends the next sleep at once
            try:
                wait = self.step()
            except Exception:
                log.exception("%s: unexpected error", self.name)
                wait = 5.0
            if wait > 0:
                self._wake.wait(min(wait, IDLE_WAIT_S))

    def step(self) -> float:
        """Do one thing; return how long to sleep (0: go on at once)."""
        raise NotImplementedError
