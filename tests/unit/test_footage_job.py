"""The footage job marks and recalls share (``edged.clips.job``): its order (build, manifest, outbox,
mark built), its windows (hold, ready, release), and the crash window between queuing a clip's parts
and marking it built, handled once for both users.

No footage is recorded here: the builds are stand-ins that write a file, the index holds rows
only, and the real stores (index, outbox, events, recalls) are SQLite files in a temporary folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edged.clips.builder import ClipPart
from edged.clips.job import MANIFEST, Clip, FootageJobs, Job, PlacedPart
from edged.clips.window import BootWindow, WallWindow
from edged.core.states import EventState, RecallState
from edged.events.manager import EventManager
from edged.events.store import Event, EventStore, Mark
from edged.footage.index import Index
from edged.recall.request import RecallRequest, RecallStore
from edged.recall.service import RecallService
from edged.recording.clock import RecordingClock
from edged.upload.outbox import PRIORITY_MARK, Outbox
from tests.conftest import make_settings

S = 1_000_000_000
BOOT = "boot-a"
OFFSET = 1_750_000_000 * S  # wall − monotonic


class Clock:
    """A recording clock the test moves by hand."""

    def __init__(self, now_mono_ns: int = 100 * S, boot_id: str = BOOT) -> None:
        self.now = now_mono_ns
        self.boundaries: list[int] = []
        self.recording = RecordingClock(
            boot_id=boot_id,
            timeline_now_ns=lambda: self.now,
            wall_offset_ns=lambda: OFFSET,
            footage_offset_ns=lambda: OFFSET,
            clock_synced=lambda: True,
            request_boundary=self.boundaries.append,
        )


class Outboxish:
    """The outbox as the job sees it (``PartQueue``), recording what happened in which order."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.queued: dict[str, list[tuple[int, Path, int, int, str]]] = {}
        self.delivered: set[str] = set()
        self.refuse = False

    def enqueue(self, clip_id: str, parts: list[tuple[int, Path, int, int, str]], priority: int, wall: int) -> None:
        if self.refuse:
            raise OSError("disk full")
        self.journal.append(f"enqueue {clip_id} {[p[0] for p in parts]} priority {priority} at {wall}")
        self.queued[clip_id] = parts

    def parts(self, clip_id: str) -> list[object]:
        return list(self.queued.get(clip_id, []))

    def clip_delivered(self, clip_id: str) -> bool:
        return clip_id in self.delivered


@pytest.fixture
def index(tmp_path):
    idx = Index(tmp_path / "index.sqlite")
    yield idx
    idx.close()


def segment(index: Index, seq: int, start_s: float, seconds: float = 10.0, boot: str = BOOT, writing=False) -> None:
    mono = round(start_s * S)
    index.begin(seq, f"{seq:08d}.webm", boot, mono, mono + OFFSET, True)
    if not writing:
        index.finish(seq, "final", round(seconds * S), 1000, 100, 50, "0" * 64)


def part(folder: Path, number: int, start_mono_ns: int) -> ClipPart:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"clip-part{number:02d}.webm"
    path.write_bytes(b"part %d" % number)
    return ClipPart(number, path, start_mono_ns, 10_000, path.stat().st_size, "ab" * 32, (1, 2), False)


def mark_job(start_s: float = 10, end_s: float = 40, clip_id: str = "clip") -> Job:
    return Job(clip_id, f"event:{clip_id}", BootWindow(BOOT, round(start_s * S), round(end_s * S)), PRIORITY_MARK)


# --- the order of a build -------------------------------------------------------------------------------


def test_a_build_is_manifest_then_outbox_then_built(tmp_path, index):
    journal: list[str] = []
    outbox = Outboxish(journal)
    jobs = FootageJobs(index, outbox, tmp_path / "clips", tmp_path / "segments", Clock().recording)
    job = mark_job()

    def build(folder: Path) -> Clip:
        journal.append(f"build in {folder.name}")
        placed = (PlacedPart(part(folder, 1, 10 * S), 10 * S + OFFSET), PlacedPart(part(folder, 2, 20 * S), 0))
        return Clip(placed, {"clip_id": "clip", "parts": [p.entry() for p in placed]}, 12345)

    def built(clip: Clip | None) -> None:
        assert clip is not None
        manifest = json.loads((tmp_path / "clips" / "clip" / MANIFEST).read_text())
        journal.append(f"built {len(clip.parts)} parts, manifest of {len(manifest['parts'])}")

    assert jobs.run(job, build, built)
    assert journal == [
        "build in clip",
        f"enqueue clip [1, 2] priority {PRIORITY_MARK} at 12345",
        "built 2 parts, manifest of 2",
    ]
    assert [row[1].name for row in outbox.queued["clip"]] == ["clip-part01.webm", "clip-part02.webm"]


def test_a_failed_build_queues_nothing_and_a_failed_outbox_marks_nothing(tmp_path, index):
    journal: list[str] = []
    outbox = Outboxish(journal)
    jobs = FootageJobs(index, outbox, tmp_path / "clips", tmp_path / "segments", Clock().recording)
    assert not jobs.run(mark_job(), lambda folder: None, lambda clip: journal.append("built"))
    assert journal == [] and outbox.queued == {}

    outbox.refuse = True
    clip = Clip((PlacedPart(part(tmp_path / "clips" / "clip", 1, 0), 0),), {"parts": []}, 0)
    with pytest.raises(OSError):
        jobs.run(mark_job(), lambda folder: clip, lambda clip: journal.append("built"))
    assert journal == [], "not marked built: built again (or adopted) later"
    assert (tmp_path / "clips" / "clip" / MANIFEST).exists(), "the manifest goes before the parts"


# --- the crash window, handled once ----------------------------------------------------------------------


def test_parts_queued_before_a_cut_are_the_clip_never_built_again(tmp_path, index):
    journal: list[str] = []
    outbox = Outboxish(journal)
    outbox.queued["clip"] = [(1, tmp_path / "clip-part01.webm", 1, 1, "0" * 64)]  # queued, then killed
    jobs = FootageJobs(index, outbox, tmp_path / "clips", tmp_path / "segments", Clock().recording)
    marked: list[Clip | None] = []

    def build(folder: Path) -> Clip:
        raise AssertionError("built again: other bytes under the rows already queued")

    assert jobs.run(mark_job(), build, marked.append)
    assert marked == [None] and journal == []
    # At start: the footage is held again and the job adopted; a job already built is held only.
    marked.clear()
    assert jobs.recover(mark_job(), marked.append) and marked == [None]
    assert not jobs.recover(mark_job(clip_id="other"), marked.append) and marked == [None]
    assert not jobs.recover(mark_job()) and marked == [None]


# --- windows ---------------------------------------------------------------------------------------------


def test_a_boot_window_is_ready_once_recorded_past_its_end_and_nothing_of_it_is_written(tmp_path, index):
    clock = Clock(now_mono_ns=30 * S)
    jobs = FootageJobs(index, Outboxish([]), tmp_path / "clips", tmp_path / "segments", clock.recording)
    job = mark_job(10, 40)
    segment(index, 1, 5)
    segment(index, 2, 15)
    segment(index, 3, 35, writing=True)
    jobs.hold(job)
    assert [s.seq for s in index.stored() if s.held] == [1, 2]
    segment(index, 4, 45)  # recorded after the hold, outside the window
    assert not index.get(4).held
    assert not jobs.ready(job), "the recording has not reached the end"
    clock.now = 41 * S
    assert not jobs.ready(job), "a segment of the window is still being written"
    index.finish(3, "final", 10 * S, 1000, 100, 50, "0" * 64)
    assert jobs.ready(job) and index.get(3).held
    assert [s.seq for s in jobs.covered(job)] == [1, 2, 3]
    # Another boot recording now: the event's boot is over, whatever its timeline says.
    other = FootageJobs(index, Outboxish([]), tmp_path, tmp_path, Clock(0, boot_id="boot-b").recording)
    assert other.ready(mark_job(10, 10_000))
    jobs.release(job)
    assert not any(s.held for s in index.stored())


def test_a_wall_window_holds_every_boot_and_the_footage_to_come(tmp_path, index):
    clock = Clock(now_mono_ns=30 * S)
    outbox = Outboxish([])
    jobs = FootageJobs(index, outbox, tmp_path / "clips", tmp_path / "segments", clock.recording)
    segment(index, 1, 10, boot="earlier-boot")  # (same offset here: both on the wall clock side by side)
    segment(index, 2, 20)
    start, end = 15 * S + OFFSET, 75 * S + OFFSET
    job = Job("recall-r", "recall:r", WallWindow(start, end, BootWindow(BOOT, start - OFFSET, end - OFFSET)), 20)
    jobs.hold(job)
    segment(index, 3, 60)  # still to come, inside the window on this boot
    assert [s.seq for s in index.stored() if s.held] == [1, 2, 3]
    assert not jobs.ready(job)
    clock.now = 75 * S
    assert jobs.ready(job)
    assert not jobs.release_if_delivered(job) and index.get(1).held
    outbox.delivered.add("recall-r")
    assert jobs.release_if_delivered(job)
    assert not any(s.held for s in index.stored())


def test_sources_are_placed_on_the_timeline_or_on_the_wall_clock(tmp_path, index):
    jobs = FootageJobs(index, Outboxish([]), tmp_path, tmp_path / "segments", Clock().recording)
    segment(index, 7, 12)
    [row] = index.stored()
    [mono] = jobs.sources([row])
    [wall] = jobs.sources([row], on_wall=True)
    assert mono.path == tmp_path / "segments" / row.name and mono.mono_start_ns == 12 * S
    assert wall.mono_start_ns == 12 * S + OFFSET and wall.sha256 == "0" * 64


# --- the users: marks and recalls, through the same code ---------------------------------------------


def test_an_event_cut_off_between_queuing_and_built_is_built_from_the_outbox(tmp_path, index, monkeypatch):
    """events: a run killed after queuing a clip and before marking its event built (a958a28)."""
    settings = make_settings(tmp_path / "state")
    outbox = Outbox(tmp_path / "outbox.sqlite", targets=["directory"])
    store = EventStore(tmp_path / "events.sqlite")
    clock = Clock(now_mono_ns=500 * S)
    jobs = FootageJobs(index, outbox, tmp_path / "clips", tmp_path / "segments", clock.recording)
    events = EventManager(settings, store, jobs)
    monkeypatch.setattr("edged.clips.builder.build_clip", lambda *a, **k: pytest.fail("built again"))
    cut = Event("20250615T150640Z-aaaaaa", "old-boot", 10 * S, 40 * S, 30 * S, 0, EventState.OPEN, "", 0)
    store.open_event(cut, Mark(20 * S, 20 * S + OFFSET, True, "cli", ""))
    outbox.enqueue(cut.id, [(1, tmp_path / "p1.webm", 10, 30_000, "0" * 64)], PRIORITY_MARK, OFFSET)
    segment(index, 1, 15, boot="old-boot")

    assert events.recover() == 1
    assert store.get(cut.id).state == EventState.BUILT
    assert index.get(1).held, "not delivered: its footage is held again"
    assert len(outbox.parts(cut.id)) == 1

    # Without a restart in between (recover not called), the build adopts it the same way.
    again = Event("20250615T150641Z-bbbbbb", "old-boot", 10 * S, 40 * S, 30 * S, 0, EventState.OPEN, "", 0)
    store.open_event(again, Mark(20 * S, 20 * S + OFFSET, True, "cli", ""))
    outbox.enqueue(again.id, [(1, tmp_path / "p2.webm", 10, 30_000, "0" * 64)], PRIORITY_MARK, OFFSET)
    assert events.finish_ready() == [again.id]
    assert store.get(again.id).state == EventState.BUILT
    store.close()
    outbox.close()


def test_a_recall_cut_off_between_queuing_and_built_is_built_from_the_outbox(tmp_path, index):
    """recall: the same window (449661e), through the same code."""
    settings = make_settings(tmp_path / "state")
    outbox = Outbox(tmp_path / "outbox.sqlite", targets=["directory"])
    store = RecallStore(tmp_path / "recall.sqlite")
    clock = Clock()
    jobs = FootageJobs(index, outbox, tmp_path / "clips", tmp_path / "segments", clock.recording)
    service = RecallService(settings, store, jobs, outbox, status_folder=tmp_path / "status", inbox=None)
    start = time.time_ns() - 3600 * S
    queued = RecallRequest("queued", start, 1, "regular", ("front",), "cli")
    cut = RecallRequest("cut", start + 120 * S, 1, "regular", ("front",), "cli")
    for req in (queued, cut):
        store.add(req, BootWindow(BOOT, req.start_ns - OFFSET, req.end_ns - OFFSET))
        store.update(req.id, RecallState.PROCESSING, detail={"progress": "building"})  # killed while building
    outbox.enqueue(queued.clip_id, [(1, tmp_path / "p1.webm", 10, 60_000, "0" * 64)], 20, start)

    service.recover()
    rec = store.get("queued")
    assert rec.status == RecallState.PROCESSING and rec.built and rec.detail["progress"] == "uploading"
    rec = store.get("cut")
    assert rec.status == RecallState.PENDING and not rec.built, "not queued: built again"
    assert json.loads((tmp_path / "status" / "recall-queued.json").read_text())["status"] == "processing"
    store.close()
    outbox.close()
