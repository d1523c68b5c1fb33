"""Clock jumps while recording (issue 7, part 4): the wall clock stepped by ±1 day through the
clock abstraction (``Daemon(clock=...)``, the SteppableClock of tests/daemon/test_clock.py) while the real
daemon records unpaced, marks, delivers and answers recalls.

tests/daemon/test_clock.py shows the index's side (steps recorded, best wall starts continuous). Here:

* **retention** runs on the monotonic timeline: across a step and back, the ring overwrites its
  oldest footage one segment at a time (no mass eviction), marks are built and delivered promptly
  and their footage is released and overwritten in turn (nothing kept forever);
* **clip manifests** place clips, parts and marks by the boot's synchronised offset: a clock set a
  day wrong by hand does not move them (and says the clock was not synchronised);
* **recall by wall time** finds the right footage after a step: when NTP sets a clock that started a
  day off, and when someone sets a synchronised clock a day wrong by hand (the operator asks in
  true time; the device's trusted offset is the synchronised one).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from edged.app.daemon import Daemon
from edged.core.paths import StatePaths
from edged.core.timefmt import iso
from edged.events.store import EventStore
from edged.footage.index import STORED, Index, Segment
from edged.footage.timeline import footage_ranges
from edged.recall.request import parse_time
from tests.conftest import make_settings
from tests.support import Running, SteppableClock, wait_until

DAY_NS = 86_400 * 10**9
S = 10**9
#: How far a wall time computed by edged may be from the expected one (ms rounding, a frame).
CLOSE_NS = 150_000_000


def rows_of(state) -> list[Segment]:
    if not StatePaths(state).index.exists():
        return []  # the daemon is starting
    idx = Index(StatePaths(state).index, read_only=True)
    try:
        return idx.segments()
    except sqlite3.OperationalError as exc:  # the file is there, its tables not yet: still starting
        if "no such table" in str(exc):
            return []
        raise
    finally:
        idx.close()


def steps_of(state) -> list:
    if not StatePaths(state).index.exists():
        return []
    idx = Index(StatePaths(state).index, read_only=True)
    try:
        return idx.clock_steps()
    except sqlite3.OperationalError as exc:  # the file is there, its tables not yet: still starting
        if "no such table" in str(exc):
            return []
        raise
    finally:
        idx.close()


def segments_written(run: Running) -> int:
    return run.recorder.status.segments_written if run.recorder is not None else 0


def record_more(run: Running, n: int, what: str) -> None:
    target = segments_written(run) + n
    wait_until(lambda: segments_written(run) >= target, 60, what)


def step_clock(run: Running, clock: SteppableClock, state, offset_ns: int, synced: bool) -> None:
    """Set the clock and wait until the recorder has seen it (it looks once a second)."""
    before = len(steps_of(state))
    clock.offset_ns, clock.synced = offset_ns, synced
    wait_until(
        lambda: len(steps_of(state)) > before and run.recorder.watch.synchronized is synced,
        15,
        "the recorder to see the clock step",
    )


# --- retention and clip manifests --------------------------------------------------------------------


class RetentionWatch:
    """Looks at the ring while it runs: oldest unheld footage goes first, one segment at a time."""

    def __init__(self, state) -> None:
        self.state = state
        self.stored_before: int | None = None
        self.worst_drop = 0
        self.released: set[int] = set()  # segments of delivered events: older, unheld since their release

    def look(self) -> list[Segment]:
        rows = rows_of(self.state)
        stored = [r for r in rows if r.state in STORED]
        evicted = [r.seq for r in rows if r.state == "evicted"]
        unheld = [r.seq for r in stored if not r.held and r.seq not in self.released]
        if evicted and unheld:
            assert max(evicted) < min(unheld), f"newer footage overwritten before older: {evicted}, {unheld}"
        if self.stored_before is not None:
            self.worst_drop = max(self.worst_drop, self.stored_before - len(stored))
        self.stored_before = len(stored)
        return rows


def check_manifest(state, events: EventStore, event_id: str, true_offset: int, step: str) -> dict:
    manifest = json.loads((StatePaths(state).clips / event_id / "manifest.json").read_text())
    parts = manifest["parts"]
    first = parse_time(parts[0]["wall_start"])
    for a, b in zip(parts, parts[1:]):
        assert abs(parse_time(b["wall_start"]) - parse_time(a["wall_start"]) - a["duration_ms"] * 10**6) < CLOSE_NS
    end = first + sum(p["duration_ms"] for p in parts) * 10**6
    assert abs(parse_time(manifest["wall_end"]) - end) < CLOSE_NS
    assert abs(parse_time(manifest["wall_start"]) - first) < CLOSE_NS
    marks = events.marks(event_id)
    assert len(manifest["marks"]) == len(marks)
    for m, stored in zip(manifest["marks"], marks):
        off_by = parse_time(m["wall"]) - (stored.mono_ns + true_offset)
        assert abs(off_by) < CLOSE_NS, f"{step}: mark placed {off_by / 1e9:+.3f} s off the true time"
    event = events.get(event_id)
    off_by = parse_time(manifest["wall_start"]) - (event.start_mono_ns + true_offset)
    assert abs(off_by) < 2.5 * S, f"{step}: clip starts {off_by / 1e9:+.3f} s off (a keyframe at most)"
    return manifest


@pytest.mark.parametrize("step_ns", [DAY_NS, -DAY_NS], ids=["plus-a-day", "minus-a-day"])
def test_retention_and_clips_follow_the_monotonic_timeline_across_steps(tmp_path, step_ns):
    """A synchronised clock is set a day wrong by hand (the kernel then says unsynchronised), later
    NTP sets it back. Marks before, during and after; a 10 MB ring overwriting all along."""
    clock = SteppableClock(synced=True)
    true_offset = clock.offset_ns
    s = make_settings(
        tmp_path / "state",
        camera={"width": 320, "height": 180, "bitrate": 1_000_000},
        storage={"segment_seconds": 2.0, "max_bytes": 10_000_000},
        clips={"pre_roll_seconds": 4.0, "post_roll_seconds": 4.0},
        upload={"directory": {"path": str(tmp_path / "delivered")}},
    )
    watch = RetentionWatch(s.state_dir)
    run = Running(Daemon(s, clock=clock))
    events: dict[str, str] = {}
    try:
        wait_until(lambda: [r for r in watch.look() if r.state == "evicted"], 60, "the ring to overwrite")

        def mark_and_deliver(step: str) -> None:
            record_more(run, 5, f"footage before the mark ({step})")
            event_id = run.daemon.mark("test", step).event_id
            events[event_id] = step
            # Built within the recording's own time, not a day later (or never).
            wait_until(lambda: run.daemon.events_store.get(event_id).state == "built", 30, f"clip built ({step})")
            manifest = json.loads((StatePaths(s.state_dir).clips / event_id / "manifest.json").read_text())
            watch.released |= {x["seq"] for x in manifest["source_segments"]}
            wait_until(lambda: run.daemon.outbox.clip_delivered(event_id), 30, f"clip delivered ({step})")
            for _ in range(10):
                record_more(run, 1, "footage")
                watch.look()

        mark_and_deliver("before the step")
        step_clock(run, clock, s.state_dir, true_offset + step_ns, synced=False)
        mark_and_deliver("clock a day wrong")
        step_clock(run, clock, s.state_dir, true_offset, synced=True)
        mark_and_deliver("clock set right again")

        # Released footage is overwritten in its turn: every event's segments go, oldest first.
        def all_overwritten() -> bool:
            rows = {r.seq: r for r in watch.look()}
            return all(rows[seq].state == "evicted" for seq in watch.released)

        wait_until(all_overwritten, 60, "the delivered events' footage to be overwritten")
    finally:
        run.stop()
    assert run.error is None and run.rc == 0
    assert watch.worst_drop <= 2, f"{watch.worst_drop} segments evicted at once"
    steps = steps_of(s.state_dir)
    assert [round(st.step_ns / DAY_NS) for st in steps] == [step_ns // DAY_NS, -step_ns // DAY_NS]
    rows = rows_of(s.state_dir)
    stored = [r for r in rows if r.state in STORED]
    assert sum(r.bytes for r in stored) <= s.storage.max_bytes
    assert [r.seq for r in rows if r.state == "evicted"] == list(range(1, len(rows) - len(stored) + 1))
    # The stored footage is one continuous range on the wall clock, placed by the true offset.
    ranges = footage_ranges(rows)
    assert len(ranges) == 1, [r.as_dict() for r in ranges]
    assert abs(ranges[0].start_ns - (stored[0].mono_start_ns + true_offset)) < CLOSE_NS

    store = EventStore(StatePaths(s.state_dir).events, read_only=True)
    try:
        for event_id, step in events.items():
            manifest = check_manifest(s.state_dir, store, event_id, true_offset, step)
            if step == "clock a day wrong":
                assert manifest["clock_synchronized"] is False, "footage of an unsynchronised clock says so"
            elif step == "before the step":
                assert manifest["clock_synchronized"] is True
    finally:
        store.close()


# --- recall by wall time ------------------------------------------------------------------------------

SCENARIOS = {
    # name: (offset at start relative to the true one, synced at start, offset after, synced after)
    "ntp-sets-a-clock-a-day-behind": (-DAY_NS, False, 0, True),
    "synced-clock-set-a-day-ahead": (0, True, DAY_NS, False),
    "synced-clock-set-a-day-behind": (0, True, -DAY_NS, False),
}


def recall(run: Running, rid: str, start_ns: int) -> dict:
    return run.daemon.recall.submit({"start_time": iso(start_ns), "duration": 1}, rid, source="test")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_recall_by_wall_time_finds_the_right_footage_after_a_step(tmp_path, scenario):
    before, synced_before, after, synced_after = SCENARIOS[scenario]
    clock = SteppableClock(synced=synced_before)
    true_offset = clock.offset_ns
    clock.offset_ns = true_offset + before
    s = make_settings(
        tmp_path / "state",
        camera={"width": 320, "height": 180, "bitrate": 150_000},
        storage={"segment_seconds": 2.0},
        upload={"directory": {"path": str(tmp_path / "delivered")}},
    )
    run = Running(Daemon(s, clock=clock))
    try:
        record_more(run, 20, "40 s of footage before the step")
        step_clock(run, clock, s.state_dir, true_offset + after, synced_after)
        record_more(run, 20, "40 s of footage after the step")
        rows = rows_of(s.state_dir)
        first = rows[0]
        # The operator asks in true time: from 10 s into the recording (before the step) ...
        early = first.mono_start_ns + true_offset + 10 * S
        # ... and a minute from 10 s ago, which is mostly still to be recorded.
        now_true = run.recorder.timeline_now_ns() + true_offset
        late = now_true - 10 * S
        answers = {"early": recall(run, "early", early), "late": recall(run, "late", late)}
        for (rid, answer), start in zip(answers.items(), (early, late)):
            assert answer["status"] == "pending", f"{rid}: {answer.get('reason')}"
            # Footage not recorded yet is protected by a range on the monotonic timeline: the right one.
            held = run.daemon.recall.store.get(rid)
            off_by = held.hold_start_mono_ns - (start - true_offset)
            assert abs(off_by) < CLOSE_NS, f"{rid}: protects a range {off_by / 1e9:+.0f} s off the footage asked for"
            assert held.hold_end_mono_ns - held.hold_start_mono_ns == 60 * S
        assert run.recorder.timeline_now_ns() + true_offset < late + 60 * S
        wait_until(
            lambda: all(run.daemon.recall.status(rid)["status"] not in ("pending", "processing") for rid in answers),
            90,
            "both recalls answered",
        )
    finally:
        run.stop()
    assert run.error is None and run.rc == 0
    rows = [r for r in rows_of(s.state_dir) if r.state in STORED]
    for r in rows:
        assert abs(r.best_wall_start_ns - (r.mono_start_ns + true_offset)) < CLOSE_NS, (
            f"segment {r.seq} placed {(r.best_wall_start_ns - r.mono_start_ns - true_offset) / 1e9:+.0f} s off"
        )
    assert len(footage_ranges(rows)) == 1, "one continuous recording on the wall clock"

    for rid, start in (("early", early), ("late", late)):
        doc = json.loads((s.state_dir / "recall-status" / f"recall-{rid}.json").read_text())
        assert doc["status"] == "completed", f"{rid}: {doc['reason']}"
        assert doc["footage"]["missing"] == [], f"{rid}: {doc['footage']['missing']}"
        manifest = json.loads((StatePaths(s.state_dir).clips / f"recall-{rid}" / "manifest.json").read_text())
        start_mono, end_mono = start - true_offset, start + 60 * S - true_offset
        got = {x["seq"] for x in manifest["source_segments"]}

        def overlapping(slack_ns: int, start_mono: int = start_mono, end_mono: int = end_mono) -> set[int]:
            return {
                r.seq
                for r in rows
                if r.mono_start_ns < end_mono + slack_ns and r.mono_start_ns + r.duration_ns > start_mono - slack_ns
            }

        # A segment meeting the window's edge within a rounding error may or may not count.
        assert overlapping(-CLOSE_NS) <= got <= overlapping(CLOSE_NS), (rid, sorted(got))
        parts = manifest["parts"]
        got_start = parse_time(parts[0]["wall_start"])
        assert start - 2 * S - CLOSE_NS <= got_start <= start + CLOSE_NS, (
            f"{rid}: the recall starts {(got_start - start) / 1e9:+.3f} s from the time asked"
        )
        assert sum(p["duration_ms"] for p in parts) >= 60_000
