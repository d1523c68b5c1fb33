"""Time without a real-time clock: steps of the wall clock while recording keep the timeline right."""

from __future__ import annotations

import json
import threading
import time

import pytest

from edged.clock import ClockWatch
from edged.daemon import Daemon
from edged.index import Index
from edged.paths import StatePaths

DAY_NS = 86_400 * 10**9


class SteppableClock:
    """The Clock protocol with a wall clock the test can step, as NTP does after boot."""

    def __init__(self, offset_ns: int = 0, synced: bool = False) -> None:
        self.extra_ns = offset_ns
        self.synced = synced

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns() + self.extra_ns

    def boot_id(self) -> str:
        return "test-boot"

    def synchronized(self) -> bool:
        return self.synced


def test_watch_reports_steps_not_drift():
    clock = SteppableClock()
    watch = ClockWatch(clock)
    assert watch.look() is None
    clock.extra_ns += 200_000_000  # 0.2 s: drift/slew, not a step
    assert watch.look() is None
    clock.extra_ns += DAY_NS
    clock.synced = True
    step = watch.look()
    assert step is not None and abs(step.step_ns - DAY_NS) < 10**9 and step.synchronized
    clock.extra_ns -= 2 * DAY_NS
    step = watch.look()
    assert step is not None and abs(step.step_ns + 2 * DAY_NS) < 10**9


@pytest.mark.parametrize("step_ns", [DAY_NS, -DAY_NS])
def test_timeline_survives_a_clock_step_while_recording(settings_factory, step_ns):
    # The clock starts wrong (no RTC), NTP then steps it by a day and says it is synchronised.
    clock = SteppableClock(offset_ns=-step_ns, synced=False)
    s = settings_factory(camera={"width": 320, "height": 180, "paced": True}, storage={"segment_seconds": 2.0})
    daemon = Daemon(s, clock=clock, stop_after_s=6.5)
    t = threading.Thread(target=daemon.run)
    t.start()
    time.sleep(3.2)
    clock.extra_ns = 0
    clock.synced = True
    t.join(timeout=30)
    idx = Index(StatePaths(s.state_dir).index)
    steps = idx.clock_steps()
    assert len(steps) == 1 and abs(steps[0].step_ns - step_ns) < 10**9 and steps[0].synchronized
    rows = idx.stored()
    assert len(rows) >= 3
    raw = [r.wall_start_ns for r in rows]
    jumps = [b - a for a, b in zip(raw, raw[1:])]
    assert any(abs(j - step_ns) < 10**10 for j in jumps), "the raw wall starts jump with the clock"
    best = [r.best_wall_start_ns for r in rows]
    for a, b in zip(rows, rows[1:]):
        gap = b.best_wall_start_ns - (a.best_wall_start_ns + a.duration_ns)
        assert abs(gap) < 300_000_000, f"timeline not continuous: {gap / 1e9:.3f} s"
    # Footage recorded before the step is placed by the synchronised offset: near the true time.
    assert abs(best[0] - (time.time_ns() - 7 * 10**9)) < 5 * 10**9
    assert rows[-1].clock_synced and not rows[0].clock_synced


def test_status_reports_clock_sync(settings_factory):
    clock = SteppableClock(synced=True)
    s = settings_factory(camera={"width": 320, "height": 180})
    daemon = Daemon(s, clock=clock, stop_after_s=2)
    daemon.run()
    assert json.loads(StatePaths(s.state_dir).status.read_text())["clock_synchronized"] is True
