"""Real-time pacing for generated and file sources.

Paced: sample *n* is released at ``t0 + n * period`` on the monotonic clock and stamped with
that time, as a camera would. Unpaced: released at once, stamped with media time ``n * period``.
"""

from __future__ import annotations

import time


class Pacer:
    def __init__(self, period: float, paced: bool) -> None:
        self.period = period
        self.paced = paced
        self._t0: float | None = None
        self._n = 0

    def next_time(self) -> float:
        """Wait (when paced) until the next sample is due and return its timestamp."""
        n = self._n
        self._n += 1
        if not self.paced:
            return n * self.period
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + n * self.period
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return due
