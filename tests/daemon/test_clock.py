"""Time without a real-time clock: steps of the wall clock while recording keep the timeline right."""

from __future__ import annotations

import json

import pytest

from edged.app.daemon import Daemon
from edged.core.clock import STEP_THRESHOLD_NS, ClockWatch
from edged.core.paths import StatePaths
from edged.footage.index import Index
from tests.support import Running, SteppableClock, wait_until

DAY_NS = 86_400 * 10**9
#: Two reads of the same clock are this close (the test clock's wall is exact: monotonic + offset).
EXACT_NS = 50_000_000
SMALL = {"width": 320, "height": 180, "bitrate": 150_000}


def test_watch_reports_steps_not_drift():
    clock = SteppableClock(synced=False)
    watch = ClockWatch(clock)
    start = clock.offset_ns
    assert watch.boot_id == "test-boot" and watch.synchronized is False
    assert abs(watch.offset_ns - start) < EXACT_NS
    assert watch.look() is None
    clock.offset_ns += 200_000_000  # 0.2 s: drift/slew, not a step
    assert watch.look() is None
    clock.offset_ns += STEP_THRESHOLD_NS - 50_000_000  # just under the threshold
    assert watch.look() is None
    clock.offset_ns += DAY_NS
    clock.synced = True
    step = watch.look()
    assert step is not None and abs(step.step_ns - DAY_NS) < EXACT_NS and step.synchronized
    assert step.boot_id == "test-boot" and abs(step.after_offset_ns - clock.offset_ns) < EXACT_NS
    assert abs(step.before_offset_ns - (clock.offset_ns - DAY_NS)) < EXACT_NS
    assert watch.synchronized is True and abs(watch.offset_ns - clock.offset_ns) < EXACT_NS
    assert watch.look() is None, "a step is reported once"
    clock.offset_ns -= 2 * DAY_NS
    step = watch.look()
    assert step is not None and abs(step.step_ns + 2 * DAY_NS) < EXACT_NS
    clock.offset_ns += STEP_THRESHOLD_NS + 50_000_000  # just over the threshold
    step = watch.look()
    assert step is not None and abs(step.step_ns - (STEP_THRESHOLD_NS + 50_000_000)) < EXACT_NS


def test_watch_places_monotonic_instants_by_the_current_offset():
    clock = SteppableClock(offset_ns=10**18)
    watch = ClockWatch(clock)
    mono = clock.monotonic_ns()
    assert abs(watch.wall_at(mono) - (mono + 10**18)) < EXACT_NS
    clock.offset_ns = 2 * 10**18
    watch.look()
    assert abs(watch.wall_at(mono) - (mono + 2 * 10**18)) < EXACT_NS


def status_json(state) -> dict:
    """The running daemon's status (its runtime folder), else the one its last run left behind."""
    paths = StatePaths(state)
    for path in (paths.status, paths.last_status):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return {}


@pytest.mark.parametrize("step_ns", [DAY_NS, -DAY_NS], ids=["plus-a-day", "minus-a-day"])
def test_timeline_survives_a_clock_step_while_recording(settings_factory, step_ns):
    # The clock starts wrong (no RTC); during the second segment NTP steps it by a day and says it
    # is synchronised.
    clock = SteppableClock(synced=False)
    true_offset = clock.offset_ns
    clock.offset_ns = true_offset - step_ns
    s = settings_factory(camera=SMALL | {"paced": True}, storage={"segment_seconds": 2.0})
    run = Running(Daemon(s, clock=clock, stop_after_s=6))
    try:
        wait_until(
            lambda: run.recorder is not None and (run.recorder.status.current_segment or "").startswith("000000002_"),
            15,
            "the second segment",
        )
        wait_until(lambda: "clock_synchronized" in status_json(s.state_dir), 5, "status.json")
        assert status_json(s.state_dir)["clock_synchronized"] is False
        clock.offset_ns = true_offset
        clock.synced = True
        run.thread.join(timeout=30)
    finally:
        run.stop()
    assert run.error is None and run.rc == 0
    assert status_json(s.state_dir)["clock_synchronized"] is True

    idx = Index(StatePaths(s.state_dir).index)
    try:
        steps = idx.clock_steps()
        rows = idx.stored()
    finally:
        idx.close()
    assert len(steps) == 1
    step = steps[0]
    assert abs(step.step_ns - step_ns) < EXACT_NS and step.synchronized and step.boot_id == "test-boot"
    assert abs(step.after_offset_ns - true_offset) < EXACT_NS

    assert [r.seq for r in rows] == [1, 2, 3], "6 s of media in 2 s segments"
    assert [r.clock_synced for r in rows] == [False, False, True]
    # The raw wall starts are what the clock said at the time: they jump by the step.
    for r in rows[:2]:
        assert abs(r.wall_start_ns - (r.mono_start_ns + true_offset - step_ns)) < EXACT_NS
    assert abs(rows[2].wall_start_ns - (rows[2].mono_start_ns + true_offset)) < EXACT_NS
    jump = rows[2].wall_start_ns - (rows[1].wall_start_ns + rows[1].duration_ns)
    assert abs(jump - step_ns) < 300_000_000, "the raw wall starts jump with the clock"
    # The best wall starts form one continuous timeline ...
    for a, b in zip(rows, rows[1:]):
        gap = b.best_wall_start_ns - (a.best_wall_start_ns + a.duration_ns)
        assert abs(gap) < 300_000_000, f"timeline not continuous between {a.seq} and {b.seq}: {gap / 1e9:.3f} s"
    # ... placed by the synchronised offset, also for footage recorded before the step.
    for r in rows:
        assert abs(r.best_wall_start_ns - (r.mono_start_ns + true_offset)) < EXACT_NS, f"segment {r.seq}"


def test_a_step_without_synchronisation_is_recorded_but_not_trusted(settings_factory):
    """Someone sets the clock by hand (not synchronised): the step is recorded, and footage keeps
    the wall times observed when it was recorded (there is no trusted offset to correct it by)."""
    clock = SteppableClock(synced=False)
    s = settings_factory(camera=SMALL | {"paced": True}, storage={"segment_seconds": 2.0})
    run = Running(Daemon(s, clock=clock, stop_after_s=4))
    try:
        wait_until(
            lambda: run.recorder is not None and (run.recorder.status.current_segment or "").startswith("000000002_"),
            15,
            "the second segment",
        )
        clock.offset_ns += DAY_NS
        run.thread.join(timeout=30)
    finally:
        run.stop()
    assert run.error is None and run.rc == 0
    idx = Index(StatePaths(s.state_dir).index)
    try:
        steps = idx.clock_steps()
        rows = idx.stored()
    finally:
        idx.close()
    assert len(steps) == 1 and not steps[0].synchronized and abs(steps[0].step_ns - DAY_NS) < EXACT_NS
    assert [r.best_wall_start_ns for r in rows] == [r.wall_start_ns for r in rows]
    assert status_json(s.state_dir)["clock_synchronized"] is False


@pytest.mark.parametrize("synced", [True, False])
def test_status_reports_clock_sync(settings_factory, synced):
    clock = SteppableClock(synced=synced)
    s = settings_factory(camera=SMALL)
    assert Daemon(s, clock=clock, stop_after_s=2).run() == 0
    assert status_json(s.state_dir)["clock_synchronized"] is synced
