"""Real-time pacing for generated and file sources.

Paced: sample *n* is released at ``t0 + n * period`` on the monotonic clock and stamped with
that time, as a camera would. Unpaced: released at once, stamped with media time ``n * period``.

A paced source read more than ``MAX_LATE_S`` late (a CPU starved or throttled by a quota) skips
the slots it missed, as a camera or a sound card does when its buffers overrun: otherwise it would
hand out ever older samples, a backlog that grows without end, and the recording would fall
further behind the present.
"""

from __future__ import annotations

import time

#: How late a paced sample may be released before the missed slots are skipped (about what a
#: camera's buffers hold: picamera2's four to six at 10 fps). A sound card holds more: see
#: ``edged.capture.synthetic.SOUND_CARD_BUFFER_FRAMES``.
MAX_LATE_S = 0.5


class Pacer:
    def __init__(self, period: float, paced: bool, max_late_s: float = MAX_LATE_S) -> None:
        self.period = period
        self.paced = paced
        self.max_late_s = max_late_s
        self._t0: float | None = None
        self._n = 0
        self.skipped = 0  # slots missed by a late reader (paced only)

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
        elif -delay > self.max_late_s:
            missed = int(-delay / self.period)  # the slot now due is kept: its time is not in the future
            self._n += missed
            self.skipped += missed
            due += missed * self.period
        return due


class FrameGate:
    """Keeps at most one frame per ``1 / fps`` slot of a live camera's own timestamps.

    Frame *n* of a recording is the one whose time rounds to ``origin + n / fps`` (the recorder
    numbers frames so, and skips a second frame in a slot). A camera that runs faster than asked
    (one that ignores or does not advertise ``FrameDurationLimits``) is thinned here by the same
    rule, so the extra frames are dropped before they are converted or queued. A frame at the
    configured rate, give or take jitter under half a period, always passes.
    """

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self._origin: float | None = None
        self._last = 0
        self.skipped = 0

    def admit(self, t: float) -> bool:
        if self._origin is None:
            self._origin = t
            return True
        n = round((t - self._origin) * self.fps)
        if n <= self._last:
            self.skipped += 1
            return False
        self._last = n
        return True
