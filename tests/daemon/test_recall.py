"""Video recall requests (issue 5): validation, duplicates, regular and timelapse recalls built from
real recordings, protection until delivered, priority after marks, the synced inbox and its status
files, and `edged recall` / `edged timeline` against a running daemon.

Footage is recorded by the real daemon (unpaced, so minutes take seconds) on a clock set two hours
back, so that it lies in the past as a recall needs; expected values are read back from the source
segments with plain PyAV (tests.support), independent of edged's own readers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from edged.app.daemon import Daemon
from edged.clips.job import FootageJobs
from edged.clips.timelapse import plan
from edged.core import limits
from edged.core.paths import StatePaths
from edged.core.timefmt import iso
from edged.events.manager import EventManager
from edged.events.store import EventStore
from edged.footage.index import Index
from edged.footage.ring import RingBuffer
from edged.footage.timeline import LOST, NOT_RECORDED, OVERWRITTEN, coverage
from edged.recall.inbox import Inbox, is_temporary
from edged.recall.request import DURATIONS, InvalidRequest, RecallStore, parse_request, parse_time
from edged.recall.service import RecallService, inbox_dir, status_dir, store_path
from edged.recording.clock import RecordingClock
from edged.upload.outbox import PRIORITY_MARK, PRIORITY_RECALL, Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.targets import build_targets
from edged.upload.uploader import Uploader
from tests.conftest import FOOTAGE, make_settings
from tests.support import SMALL, SteppableClock, decode_all, packets, wait_until

S = 1_000_000_000
MS = 1_000_000
MIN = 60 * S
HOURS_BACK = 2


def past_clock(boot: str = "recorded-boot") -> SteppableClock:
    """Wall = real time minus two hours: unpaced footage (which runs ahead of real time) is in the past."""
    return SteppableClock(offset_ns=time.time_ns() - time.monotonic_ns() - HOURS_BACK * 3600 * S, boot=boot)


def at(ns: int) -> str:
    """ISO 8601 of an instant, rounded *up* to the microsecond (so it is not before ``ns``)."""
    us = -(-ns // 1000)
    return iso(us * 1000)[:-5] + f".{us % 1_000_000:06d}Z"


def record(state: Path, seconds: float, **sections) -> Path:
    s = make_settings(state, **sections)
    assert Daemon(s, clock=past_clock(), stop_after_s=seconds).run() == 0
    return state


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Six and a half minutes of test pattern and tone in 10 s segments (unpaced, ~10 s of CPU)."""
    return record(tmp_path_factory.mktemp("recall-synthetic") / "state", 390, camera=SMALL)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """90 s of the real camera footage (vtest.avi looped as the camera) with a tone, 10 s segments."""
    if not (FOOTAGE / "vtest.avi").exists():
        pytest.skip(f"shared footage not found at {FOOTAGE}")
    camera = {"source": "file", "device": str(FOOTAGE / "vtest.avi"), "width": 480, "height": 270, "bitrate": 200_000}
    return record(tmp_path_factory.mktemp("recall-real") / "state", 90, camera=camera)


class Rig:
    """A RecallService on a copy of a recorded state folder, with the real index, outbox and stores;
    the uploader (directory target) runs only when a test starts it."""

    def __init__(self, src: Path, tmp: Path, **sections) -> None:
        self.state = tmp / "state"
        shutil.copytree(src, self.state)
        sections.setdefault("sync", {"dir": str(tmp / "sync"), "poll_seconds": 0.2})
        self.settings = make_settings(self.state, camera=SMALL, **sections)
        self.paths = StatePaths(self.state)
        self.index = Index(self.paths.index)
        self.outbox = Outbox(self.paths.outbox, targets=self.settings.upload.targets)
        rows = self.index.stored()
        self.first, self.last = rows[0], rows[-1]
        self.boot = rows[0].boot_id
        self.offset = rows[0].best_wall_start_ns - rows[0].mono_start_ns
        clock = RecordingClock(  # now on the wall clock is the real time: the footage is two hours old
            boot_id=self.boot,
            timeline_now_ns=lambda: time.time_ns() - self.offset,
            wall_offset_ns=lambda: self.offset,
            footage_offset_ns=lambda: self.offset,
            clock_synced=lambda: True,
        )
        self.jobs = FootageJobs(self.index, self.outbox, self.paths.clips, self.paths.segments, clock)
        self.service = RecallService(
            self.settings,
            RecallStore(store_path(self.paths)),
            self.jobs,
            self.outbox,
            status_folder=status_dir(self.settings),
            inbox=Inbox(inbox_dir(self.settings), settle_s=0.0),
        )
        self.uploader: Uploader | None = None

    def upload(self) -> Uploader:
        self.uploader = Uploader(
            self.outbox,
            build_targets(self.settings),
            RetryPolicy.from_settings(self.settings.upload),
            on_delivered=self.service.on_delivered,
        )
        self.uploader.start()
        return self.uploader

    def status_file(self, rid: str) -> dict:
        return json.loads((status_dir(self.settings) / f"recall-{rid}.json").read_text())

    def close(self) -> None:
        if self.uploader is not None:
            self.uploader.stop()
        self.service.stop()
        self.service.close()
        self.outbox.close()
        self.index.close()


@pytest.fixture
def rig_factory(tmp_path):
    rigs: list[Rig] = []

    def make(src: Path, **sections) -> Rig:
        rigs.append(Rig(src, tmp_path / f"rig{len(rigs)}", **sections))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def body(start_ns: int, duration: int, kind: str = "regular", **more) -> dict:
    return {"start_time": at(start_ns), "duration": duration, "recall_type": kind, **more}


def video_payloads(path: Path) -> list[tuple[int, bool, bytes]]:
    """(pts ms, keyframe, bytes) of every video packet."""
    out = []
    with av.open(str(path)) as c:
        for p in c.demux(c.streams.video[0]):
            if p.size:
                out.append((int(p.pts * p.time_base * 1000), p.is_keyframe, bytes(p)))
    return out


def source_video(state: Path) -> list[tuple[int, bool, bytes]]:
    """Every video packet of the recording on the wall clock: (ns, keyframe, bytes)."""
    out = []
    for seg in Index(StatePaths(state).index, read_only=True).stored():
        pk = video_payloads(state / "segments" / seg.name)
        base = seg.best_wall_start_ns - pk[0][0] * MS
        out += [(base + ms * MS, key, data) for ms, key, data in pk]
    return out


# --- validation -------------------------------------------------------------------------------------

NOW = 1_750_000_000 * S  # 2025-06-15T15:06:40Z
POS = ["front"]


def judge(data, **kw):
    return parse_request(
        data,
        kw.pop("rid", "r1"),
        now_ns=kw.pop("now", NOW),
        positions=kw.pop("positions", POS),
        device_names=kw.pop("names", ["cam-17", "unit 5"]),
        **kw,
    )


def test_a_valid_request_is_normalised():
    r = judge({"start_time": "2025-06-15T16:00:00+02:00", "duration": 3})
    assert r.start_ns == NOW - 4000 * S  # 14:00:00Z
    assert (r.duration_min, r.recall_type, r.cameras) == (3, "regular", ("front",))
    assert r.end_ns - r.start_ns == 3 * MIN
    t = judge(
        {
            "start_time": "2025-06-15T14:00:00.250Z",
            "duration": 60,
            "recall_type": "timelapse",
            "camera_positions": ["front"],
            "asset_name": "cam-17",
        }
    )
    assert t.start_ns == r.start_ns + 250 * MS and t.recall_type == "timelapse"
    assert judge({"start_time": iso(NOW), "duration": 1}).start_ns == NOW  # now itself is not the future


@pytest.mark.parametrize(
    "data, reason",
    [
        (
            {"start_time": "2025-06-15T15:07:00Z", "duration": 1},
            "start_time: 2025-06-15T15:07:00.000Z is in the future",
        ),
        (
            {"start_time": "2025-06-15T14:00:00Z", "duration": 5},
            "regular recalls last 1, 2, 3 minutes, got 5 (5 minutes is a timelapse duration)",
        ),
        (
            {"start_time": "2025-06-15T14:00:00Z", "duration": 3, "recall_type": "timelapse"},
            "timelapse recalls last 5, 10, 15, 30, 45, 60 minutes, got 3",
        ),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": 20, "recall_type": "timelapse"}, "got 20"),
        (
            {"start_time": "2025-06-15T14:00:00Z", "duration": 1, "recall_type": "slowmo"},
            "recall_type: 'slowmo' is not one of regular, timelapse",
        ),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": 1, "camera_positions": []}, "camera_positions: empty list"),
        (
            {"start_time": "2025-06-15T14:00:00Z", "duration": 1, "camera_positions": ["front", "rear"]},
            "camera_positions: 'rear' not on this device (it has: front)",
        ),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": 1, "camera_positions": "front"}, "must be a list"),
        ({"duration": 1}, "start_time: missing (required)"),
        ({"start_time": "2025-06-15T14:00:00Z"}, "duration: missing (required)"),
        ({"start_time": "2025-06-15T14:00:00", "duration": 1}, "has no time zone"),
        ({"start_time": "yesterday", "duration": 1}, "is not an ISO 8601 date and time"),
        ({"start_time": 1718000000, "duration": 1}, "must be an ISO 8601 string"),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": "3"}, "duration: must be a whole number of minutes"),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": True}, "must be a whole number of minutes"),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": 1.5}, "must be a whole number of minutes"),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": 1, "duraton": 2}, "unknown field(s) duraton"),
        ({"start_time": "2025-06-15T14:00:00Z", "duration": 1, "vehicle_number": "V9"}, "'V9' is not this device"),
        (["start_time"], "must be a JSON object"),
    ],
)
def test_invalid_requests_are_rejected_with_the_reason(data, reason):
    with pytest.raises(InvalidRequest) as exc:
        judge(data)
    assert any(reason in r for r in exc.value.reasons), exc.value.reasons


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidRequest) as exc:
        judge({"start_time": "2099-01-01T00:00:00Z", "duration": 7, "camera_positions": [], "x": 1})
    assert len(exc.value.reasons) == 4, exc.value.reasons
    with pytest.raises(InvalidRequest, match="not synchronised"):
        judge({"start_time": "2099-01-01T00:00:00Z", "duration": 1}, clock_synchronized=False)
    with pytest.raises(InvalidRequest, match="not a plain name"):
        judge({"start_time": "2025-06-15T14:00:00Z", "duration": 1}, rid="../etc")


def test_durations_are_the_contracts():
    assert DURATIONS == {"regular": (1, 2, 3), "timelapse": (5, 10, 15, 30, 45, 60)}


def test_timelapse_plan_fits_the_upload_limits():
    for minutes in DURATIONS["timelapse"]:
        p = plan(0, minutes * MIN, 100 * MS, limits.MAX_DURATION_MS)
        assert p.fps == limits.TARGET_FPS and p.interval_ns % (100 * MS) == 0
        assert p.slots * 1000 // p.fps <= limits.MAX_DURATION_MS - 100  # the clip builder's margin
        assert p.slots * p.interval_ns >= minutes * MIN > (p.slots - 1) * p.interval_ns  # spans the window
    sixty = plan(0, 60 * MIN, 100 * MS, limits.MAX_DURATION_MS)
    assert (sixty.interval_ns, sixty.slots) == (3100 * MS, 1162)  # 116.2 s at 10 fps, x31
    five = plan(0, 5 * MIN, 100 * MS, limits.MAX_DURATION_MS)
    assert (five.interval_ns, five.slots) == (300 * MS, 1000)
    fast = plan(0, 5 * MIN, round(S / 30), limits.MAX_DURATION_MS)  # a 30 fps camera: played at 10 fps
    assert fast.fps == 10 and fast.interval_ns % round(S / 30) == 0


# --- timeline and gaps --------------------------------------------------------------------------------


def test_coverage_names_why_footage_is_missing(synthetic, tmp_path):
    idx = Index(shutil.copytree(synthetic, tmp_path / "s") / "index.sqlite")
    rows = idx.stored()
    idx.set_state(rows[2].seq, "evicted")
    idx.set_state(rows[5].seq, "lost")
    segs = idx.segments()
    start, end = rows[0].best_wall_start_ns - 30 * S, rows[7].best_wall_start_ns
    available, gaps = coverage(segs, start, end)

    # A gap is what the stored neighbours leave: it starts where the previous one ends and ends where
    # the next one starts, which may be a few hundred ns inside the missing segment's own span either
    # way (segment times are measured, not laid end to end).
    def end_of(k: int) -> int:  # a segment covers its start plus its measured duration
        return rows[k].best_wall_start_ns + rows[k].duration_ns

    def between(k: int) -> tuple[int, int]:
        return max(rows[k].best_wall_start_ns, end_of(k - 1)), min(end_of(k), rows[k + 1].best_wall_start_ns)

    assert [(g.reason, g.start_ns, g.end_ns) for g in gaps] == [
        (NOT_RECORDED, start, rows[0].best_wall_start_ns),
        (OVERWRITTEN, *between(2)),
        (LOST, *between(5)),
    ]
    assert available[0] == (rows[0].best_wall_start_ns, end_of(1))
    assert available[-1] == (rows[6].best_wall_start_ns, end)


# --- regular recall from real footage -----------------------------------------------------------------


def test_regular_recall_of_real_footage_is_delivered_remuxed_bit_identical(real, rig_factory):
    rig = rig_factory(real)
    seg = rig.index.stored()[2]  # starts with a keyframe
    key = seg.best_wall_start_ns
    start = key + 50 * MS  # half a frame in: the clip starts at the keyframe at or before it
    answer = rig.service.submit(body(start, 1), "r-real")
    assert answer["status"] == "pending" and answer["start_time"] == iso(start)
    rig.upload()
    rig.service.process_ready()
    wait_until(lambda: rig.service.status("r-real")["status"] == "completed", 30, "recall delivered")
    doc = rig.status_file("r-real")
    assert doc["status"] == "completed" and doc["footage"]["missing"] == []
    [cam] = doc["cameras"]
    assert cam["position"] == "front" and len(cam["parts"]) == 1
    part = Path(cam["urls"][0])
    assert part.parent == rig.settings.delivery_dir / "recall-r-real" and part.exists()
    assert (rig.paths.clips / "recall-r-real" / part.name).read_bytes() == part.read_bytes()
    # From the keyframe 50 ms before the start to the end: 601 frames at 10 fps, 60.1 s (+ audio
    # tail: up to one 60 ms Opus frame, and the 7 ms CodecDelay the stored audio times carry).
    assert 60_100 <= cam["parts"][0]["duration_ms"] <= 60_100 + 60 + 7
    frames, samples = decode_all(part)
    assert frames == 601 and samples > 0
    # Remux: the part's video packets are the source's, byte for byte, in order, none missing.
    src = [(t, k, d) for t, k, d in source_video(rig.state) if key - MS < t < start + MIN]
    assert src[0][0] == key and src[0][1]
    got = video_payloads(part)
    assert [d for _, _, d in got] == [d for _, _, d in src]
    assert [ms for ms, _, _ in got] == [round((t - key) / MS) for t, _, _ in src]
    manifest = json.loads((part.parent / "manifest.json").read_text())
    assert manifest["request"]["duration"] == 1 and manifest["recall_id"] == "r-real"
    assert manifest["parts"][0]["sha256"] == cam["parts"][0]["sha256"]
    # Delivered everywhere: the footage is free for the ring buffer again.
    assert not any(s.held for s in rig.index.stored())


def test_three_minute_regular_recall_is_split_into_contiguous_parts_within_the_limits(synthetic, rig_factory):
    rig = rig_factory(synthetic)
    key = rig.index.stored()[4].best_wall_start_ns
    start = key + 3 * S + 50 * MS  # mid-GOP, between two frames: from the keyframe 3.05 s before
    rig.service.submit(body(start, 3), "three")
    rig.upload()
    rig.service.process_ready()
    wait_until(lambda: rig.service.status("three")["status"] == "completed", 30, "3-minute recall delivered")
    doc = rig.status_file("three")
    parts = doc["cameras"][0]["parts"]
    assert len(parts) == 2 and [p["number"] for p in parts] == [1, 2]
    for p in parts:
        assert 1 <= p["duration_ms"] <= limits.MAX_DURATION_MS and p["bytes"] <= limits.MAX_UPLOAD_BYTES
        assert [d["state"] for d in p["deliveries"]] == ["delivered"]
    files = [rig.settings.delivery_dir / "recall-three" / p["file"] for p in parts]
    assert len(doc["urls"]) == 2 and sorted(map(Path, doc["urls"])) == sorted(files)
    # Together: every source frame from the keyframe to the end, once, in order, byte for byte.
    src = [d for t, _, d in source_video(rig.state) if key - MS < t < start + 3 * MIN]
    assert [d for f in files for _, _, d in video_payloads(f)] == src
    assert sum(p["duration_ms"] for p in parts) in range(183_100, 183_100 + 2 * 60 + 1)
    manifest = json.loads((files[0].parent / "manifest.json").read_text())
    first, second = manifest["parts"]
    assert parse_time(second["wall_start"]) - parse_time(first["wall_start"]) in range(
        first["duration_ms"] * MS - 100 * MS, first["duration_ms"] * MS + 1
    )  # no gap, no overlap


# --- timelapse ----------------------------------------------------------------------------------------


def luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="gray").astype(np.float32)


def source_frames_at(state: Path, times: list[int]) -> dict[int, np.ndarray]:
    """Decoded luma of the source frames at the given wall times (exact frame instants)."""
    want, out = set(times), {}
    for seg in Index(StatePaths(state).index, read_only=True).stored():
        if not any(seg.best_wall_start_ns - S <= t < seg.best_wall_end_ns + S for t in want):
            continue
        with av.open(str(state / "segments" / seg.name)) as c:
            base = None
            for f in c.decode(video=0):
                ms = int(f.pts * f.time_base * 1000)
                base = seg.best_wall_start_ns - ms * MS if base is None else base
                t = base + ms * MS
                hit = next((w for w in want if abs(w - t) < MS), None)
                if hit is not None:
                    out[hit] = luma(f)
    return out


def test_five_minute_timelapse_keeps_frames_at_an_even_interval_within_the_limits(synthetic, rig_factory):
    rig = rig_factory(synthetic)
    start = rig.first.best_wall_start_ns + 20 * S + 30 * MS  # between two frames
    answer = rig.service.submit(body(start, 5, "timelapse"), "tl5")
    assert answer["status"] == "pending"
    rig.upload()
    rig.service.process_ready()
    wait_until(lambda: rig.service.status("tl5")["status"] == "completed", 60, "timelapse delivered")
    doc = rig.status_file("tl5")
    part = Path(doc["urls"][0])
    meta = doc["cameras"][0]["parts"][0]
    assert meta["bytes"] == part.stat().st_size <= limits.MAX_UPLOAD_BYTES
    assert 1 <= meta["duration_ms"] <= limits.MAX_DURATION_MS
    with av.open(str(part)) as c:
        assert len(c.streams.video) == 1 and not c.streams.audio  # no audio track, as documented
    v = packets(part, "video")
    assert len(v.pts_ms) == 1000 and v.keyframes[0] == v.pts_ms[0] == 0
    assert set(np.diff(v.pts_ms)) == {100}  # played at 10 fps, no frame missing
    assert meta["duration_ms"] == 100_000
    assert decode_all(part)[0] == 1000
    # Source frames kept every 0.3 s exactly (segment joins jitter by less than a millisecond).
    manifest = json.loads((part.parent / "manifest.json").read_text())
    tl = manifest["timelapse"]
    assert tl["interval_seconds"] == 0.3 and tl["speed"] == 3.0 and tl["audio"] is False
    offsets = np.array(tl["frame_offsets_ms"])
    assert len(offsets) == 1000 and np.all(np.abs(np.diff(offsets) - 300) <= 1)
    first = tl["first_frame"]
    assert first >= iso(start - 50 * MS) and first <= iso(start + 50 * MS)
    assert tl["decoded_frames"] < tl["source_frames"]  # GOP tails after the last wanted frame skipped
    # The pictures are those source frames: each sampled output frame is closest to the source frame
    # at its instant, not to the frame before or after it.
    first_ns = next(t for t, _, _ in source_video(rig.state) if abs(t - start) < 50 * MS)
    picks = [0, 1, 137, 500, 667, 999]
    want = [first_ns + (offsets[k] * MS) + d for k in picks for d in (-100 * MS, 0, 100 * MS)]
    src = source_frames_at(rig.state, want)
    with av.open(str(part)) as c:
        out = [luma(f) for i, f in enumerate(c.decode(video=0)) if i in picks]
    for k, frame in zip(picks, out):
        t = first_ns + offsets[k] * MS
        err = {d: float(np.mean((frame - src[t + d]) ** 2)) for d in (-100 * MS, 0, 100 * MS) if t + d in src}
        assert min(err, key=err.get) == 0, (k, err)


# --- footage overwritten, partly available, protected ----------------------------------------------------


def test_overwritten_footage_fails_with_the_reason_and_partial_footage_is_delivered_with_the_gap(
    synthetic, rig_factory
):
    rig = rig_factory(synthetic)
    rows = rig.index.stored()
    ring = RingBuffer(rig.index, rig.paths.segments, max_bytes=10**12, min_free_bytes=0)
    keep = sum(r.bytes for r in rows[12:])
    ring.configure(max_bytes=keep, min_free_bytes=0)
    ring.make_room(0)  # the ring overwrites the oldest twelve segments (two minutes)
    assert [r.seq for r in rig.index.stored()] == [r.seq for r in rows[12:]]
    gone = rig.service.submit(body(rows[1].best_wall_start_ns, 1), "gone")
    assert gone["status"] == "pending"
    early = rig.service.submit(body(rows[0].best_wall_start_ns - 10 * MIN, 3), "before")
    part = rig.service.submit(body(rows[11].best_wall_start_ns, 2), "partly")
    rig.upload()
    rig.service.process_ready()
    wait_until(lambda: rig.service.status("partly")["status"] == "completed", 30, "partial recall delivered")
    doc = rig.status_file("gone")
    assert doc["status"] == "failed" and "overwritten by the ring buffer" in doc["reason"], doc
    assert rig.status_file("before")["status"] == "failed"
    assert "not recorded" in rig.status_file("before")["reason"] and early["id"] == "before"
    doc = rig.status_file("partly")
    [gap] = doc["footage"]["missing"]
    assert gap["reason"] == OVERWRITTEN and gap["start"] == iso(-(-rows[11].best_wall_start_ns // 1000) * 1000)
    assert abs(parse_time(gap["end"]) - rows[12].best_wall_start_ns) < 2 * MS  # up to the footage left
    ms = doc["cameras"][0]["parts"][0]["duration_ms"]
    assert 110_000 - 100 <= ms <= 110_000 + 200  # the 110 s that exist
    assert part["status"] == "pending"


def test_recall_footage_is_protected_from_the_ring_until_delivered(synthetic, rig_factory):
    rig = rig_factory(synthetic)
    rows = rig.index.stored()
    ring = RingBuffer(rig.index, rig.paths.segments, max_bytes=1, min_free_bytes=0)
    start = rows[10].best_wall_start_ns + 5 * S  # mid-segment: 2 min touch 13 segments of 10 s
    rig.service.submit(body(start, 2), "keep")
    wanted = [r.seq for r in rows[10:23]]
    # Protected at acceptance, before it is built: the ring overwrites everything else.
    ring.make_room(10**6)
    assert [r.seq for r in rig.index.stored()] == wanted
    rig.service.process_ready()
    assert rig.service.status("keep")["progress"] == "uploading: 0 of 2 deliveries done"  # 125 s: two parts
    ring.make_room(10**6)
    assert [r.seq for r in rig.index.stored()] == wanted  # built, not delivered: still protected
    rig.upload()
    wait_until(lambda: rig.service.status("keep")["status"] == "completed", 30, "delivered")
    ring.make_room(10**6)
    assert rig.index.stored() == [], "delivered: the footage went back to the ring"
    assert rig.status_file("keep")["status"] == "completed"


def test_a_window_reaching_past_the_recording_waits_and_protects_footage_not_recorded_yet(synthetic, rig_factory):
    rig = rig_factory(synthetic)
    end = rig.last.best_wall_end_ns
    now = [end]
    asked: list[int] = []
    rig.jobs.clock = dataclasses.replace(
        rig.jobs.clock, timeline_now_ns=lambda: now[0] - rig.offset, request_boundary=asked.append
    )
    answer = rig.service.submit(body(end - 40 * S, 1), "live")  # 40 s recorded, 20 s still to come
    assert answer["status"] == "pending"
    assert asked == [parse_time(at(end - 40 * S)) + MIN - rig.offset]  # a segment starts at the window's end
    # A segment recorded after the request, inside the window, is protected by the range hold at once.
    seq = rig.index.next_seq()
    rig.index.begin(seq, "later.webm", rig.boot, rig.last.mono_start_ns + rig.last.duration_ns, end, False)
    rig.index.finish(seq, "final", 10 * S, 1000, 100, 10, "0" * 64)
    assert rig.index.get(seq).held
    assert rig.service.process_ready() == []
    assert rig.status_file("live")["progress"].startswith("waiting for the footage up to")
    now[0] = end + 25 * S
    rig.index.set_state(seq, "lost")  # (its file does not exist: the gap is reported as such)
    assert rig.service.process_ready() == ["live"]
    doc = rig.status_file("live")
    # 10 s of the 20 s still to come were recorded (then lost); the last 10 s were never recorded.
    assert doc["status"] == "processing" and [g["reason"] for g in doc["footage"]["missing"]] == [LOST, NOT_RECORDED]
    assert [g["seconds"] for g in doc["footage"]["missing"]] == [10.0, 10.0]


def test_recall_parts_go_after_a_mark_made_at_the_same_time(synthetic, rig_factory):
    rig = rig_factory(synthetic, clips={"pre_roll_seconds": 20.0, "post_roll_seconds": 0.0})
    end_mono = rig.last.mono_start_ns + rig.last.duration_ns
    rig.service.submit(body(rig.first.best_wall_start_ns, 3), "recall-first")
    rig.service.process_ready()  # the recall is in the outbox first
    clock = RecordingClock(
        boot_id=rig.boot,
        timeline_now_ns=lambda: end_mono,
        wall_offset_ns=lambda: rig.offset,
        footage_offset_ns=lambda: rig.offset,
        clock_synced=lambda: False,
    )
    events = EventManager(
        rig.settings,
        EventStore(rig.state / "events.sqlite"),
        FootageJobs(rig.index, rig.outbox, rig.paths.clips, rig.paths.segments, clock),
    )
    mark = events.mark("cli", "same time")
    assert events.finish_ready() == [mark.event_id]
    parts = rig.outbox.parts()
    assert {(p.clip_id, p.priority) for p in parts} == {
        ("recall-recall-first", PRIORITY_RECALL),
        (mark.event_id, PRIORITY_MARK),
    }
    assert PRIORITY_MARK < PRIORITY_RECALL
    assert rig.outbox.next_due("directory").part.clip_id == mark.event_id
    rig.upload()
    wait_until(lambda: rig.service.status("recall-first")["status"] == "completed", 30, "both delivered")
    done = {d.part.clip_id: d.delivered_ns for d in rig.outbox.deliveries()}
    assert done[mark.event_id] < done["recall-recall-first"]
    events.store.close()


# --- duplicates ---------------------------------------------------------------------------------------


def test_duplicates_are_detected(synthetic, rig_factory):
    rig = rig_factory(synthetic)
    start = rig.first.best_wall_start_ns + 30 * S
    first = rig.service.submit(body(start, 2), "a")
    assert first["status"] == "pending"
    # Same footage under another id: refused, pointing at the first.
    dup = rig.service.submit(body(start, 2, camera_positions=["front"]), "b")
    assert dup["status"] == "rejected" and "duplicate of recall 'a'" in dup["reason"]
    assert dup["duplicate_of"]["id"] == "a" and rig.status_file("b")["status"] == "rejected"
    # The same request again (a sync tool delivering the file twice): answered, nothing done twice.
    again = rig.service.submit(body(start, 2), "a")
    assert again["status"] == "pending" and again["duplicate"] is True
    assert len(rig.service.store.recalls()) == 1
    # The same id for other footage: refused without touching the first one's answer.
    other = rig.service.submit(body(start, 3), "a")
    assert other["status"] == "rejected" and "already names another request" in other["reason"]
    assert rig.status_file("a")["status"] == "pending"
    assert json.loads((status_dir(rig.settings) / "recall-a.rejected.json").read_text())["status"] == "rejected"
    # Other footage, or another type, is no duplicate.
    assert rig.service.submit(body(start + S, 2), "c")["status"] == "pending"
    assert rig.service.submit(body(start, 5, "timelapse"), "d")["status"] == "pending"
    # A request like a *failed* one is a new attempt.
    rig.service.store.update("c", "failed", "test")
    assert rig.service.submit(body(start + S, 2), "e")["status"] == "pending"


# --- the synced inbox and the status files --------------------------------------------------------------


def test_inbox_ignores_sync_tools_temporary_files_and_files_being_written(tmp_path):
    folder = tmp_path / "recall"
    folder.mkdir()
    clock = [100.0]  # the inbox's monotonic clock: settling never looks at a file's mtime
    inbox = Inbox(folder, settle_s=1.0, now=lambda: clock[0])
    taken = []

    def look() -> int:
        return inbox.take(taken.append)

    conflict = "r6.sync-conflict-20250101-120000-ABCDEFG.json"  # Syncthing's losing copy of r6.json
    odd = (".r1.json.AbC123", ".syncthing.r2.json.tmp", "~syncthing~r3.json.tmp", "notes.txt", "r5.json.tmp", conflict)
    for name in odd:
        (folder / name).write_text('{"start_time": "2025-01-01T00:00:00Z", "duration": 1}')
        assert is_temporary(name)
    growing = folder / "r4.json"
    growing.write_text('{"start_time": "2025-01-')
    assert look() == 0  # first sight: not yet known to be settled
    with open(growing, "a") as f:
        f.write('01T00:00:00Z", "duration": 1}')
    clock[0] += 5
    assert look() == 0  # changed since the last look: still being written
    clock[0] += 0.5
    assert look() == 0  # unchanged, but for less than settle_s
    clock[0] += 0.5
    assert look() == 1
    [item] = taken
    assert item.request_id == "r4" and item.body == {"start_time": "2025-01-01T00:00:00Z", "duration": 1}
    assert (folder / "processed" / "r4.json").exists() and not growing.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*odd, "processed"])


def test_inbox_requests_get_status_files_pending_processing_completed(synthetic, rig_factory):
    rig = rig_factory(synthetic)
    folder = inbox_dir(rig.settings)
    folder.mkdir(parents=True)
    start = rig.first.best_wall_start_ns + 60 * S
    (folder / "ask-1.json").write_text(json.dumps(body(start, 1)))
    (folder / "broken.json").write_text('{"start_time": "2025-')
    (folder / "bad-type.json").write_text(json.dumps(body(start, 1, "slowmo")))
    (folder / ".ask-2.json.x7Yz9Q").write_text(json.dumps(body(start, 2)))  # rsync still copying
    written: list[tuple[str, str]] = []
    put = rig.service._put

    def spy(name, doc, rid):
        written.append((name, doc["status"]))
        put(name, doc, rid)

    rig.service._put = spy
    rig.service.poll_inbox()
    assert rig.service.poll_inbox() == 3  # settled at the second look (settle_s = 0 here)
    assert rig.status_file("ask-1")["status"] == "pending"
    assert rig.status_file("ask-1")["source"] == "inbox:ask-1.json"
    assert "not valid JSON" in rig.status_file("broken")["reason"]
    assert "recall_type: 'slowmo'" in rig.status_file("bad-type")["reason"]
    assert sorted(p.name for p in (folder / "processed").iterdir()) == ["ask-1.json", "bad-type.json", "broken.json"]
    assert not (status_dir(rig.settings) / "recall-ask-2.json").exists()
    rig.service.process_ready()
    doc = rig.status_file("ask-1")
    assert doc["status"] == "processing" and doc["progress"] == "uploading: 0 of 1 deliveries done"
    rig.upload()
    wait_until(lambda: rig.status_file("ask-1")["status"] == "completed", 30, "completed in the status file")
    doc = rig.status_file("ask-1")
    assert doc["urls"] and Path(doc["urls"][0]).exists()
    seq = [s for n, s in written if n == "recall-ask-1.json"]
    assert seq[0] == "pending" and seq[1] == "processing" and seq[-1] == "completed"
    assert set(seq) == {"pending", "processing", "completed"}


def test_a_restart_protects_unfinished_recalls_again_and_builds_what_was_cut_off(synthetic, rig_factory):
    rig = rig_factory(synthetic)
    rig.service.submit(body(rig.first.best_wall_start_ns + 30 * S, 1), "cut")
    rig.service.store.update("cut", "processing", detail={"progress": "building"})  # killed while building
    rig.index.release("recall:cut")  # as an index rebuilt from the folder would be
    rig.index.release_range("recall:cut")
    assert not any(s.held for s in rig.index.stored())
    rig.service.recover()
    assert rig.service.status("cut")["status"] == "pending"
    assert sum(s.held for s in rig.index.stored()) == 7  # 60 s from +30 s: seven 10 s segments
    rig.service.process_ready()
    assert rig.service.status("cut")["status"] == "processing"


# --- the command line against a running daemon -------------------------------------------------------------


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args, "--config", str(cfg)], capture_output=True, text=True, timeout=120
    )


def test_cli_recall_and_timeline_against_a_running_daemon(synthetic, tmp_path):
    state = shutil.copytree(synthetic, tmp_path / "state")
    sync = tmp_path / "sync"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[storage]\ndir = "{state}"\n[sync]\ndir = "{sync}"\npoll_seconds = 0.2\n')
    # Now a paced daemon records on the real clock, in a new boot; the footage above is two hours old.
    s = make_settings(state, camera=SMALL | {"paced": True}, sync={"dir": str(sync), "poll_seconds": 0.2})
    d = Daemon(s, clock=SteppableClock(boot="live-boot"))
    t = threading.Thread(target=d.run)
    t.start()
    try:
        wait_until(lambda: d.paths.control.exists() and getattr(d, "recall", None) is not None, 20, "daemon")
        wait_until(lambda: d.recorder.status.segments_written >= 1, 30, "a live segment")
        worker = next(th for th in threading.enumerate() if th.name == "recall")
        base = os.getpriority(os.PRIO_PROCESS, 0)  # (the test itself may run niced)
        assert os.getpriority(os.PRIO_PROCESS, worker.native_id) == min(19, base + 10)
        out = cli(cfg, "timeline", "--json")
        assert out.returncode == 0, out.stderr
        tl = json.loads(out.stdout)
        [cam] = tl["cameras"]
        assert cam["position"] == "front" and len(cam["ranges"]) == 2
        old, live = cam["ranges"]
        assert old["boot_id"] == "recorded-boot" and live["boot_id"] == "live-boot"
        assert 389 <= old["seconds"] <= 391
        start = iso(parse_time(old["start"]) + 10 * S)  # aimed by the timeline: 10 s into the old footage
        out = cli(cfg, "recall", "--start", start, "--duration", "1", "--id", "cli-1", "--wait", "60", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert doc["status"] == "completed" and doc["start_time"] == start and Path(doc["urls"][0]).exists()
        assert json.loads((sync / "status" / "recall-cli-1.json").read_text())["status"] == "completed"
        again = cli(cfg, "recall", "--start", start, "--duration", "1")
        assert again.returncode == 1 and "duplicate of recall 'cli-1'" in again.stdout
        bad = cli(cfg, "recall", "--start", start, "--duration", "4")
        assert bad.returncode == 1 and "regular recalls last 1, 2, 3 minutes, got 4" in bad.stdout
        future = cli(cfg, "recall", "--start", "2999-01-01T00:00:00Z", "--duration", "5", "--timelapse")
        assert future.returncode == 1 and "is in the future" in future.stdout
        cam_bad = cli(cfg, "recall", "--start", start, "--duration", "2", "--camera", "rear")
        assert cam_bad.returncode == 1 and "'rear' not on this device (it has: front)" in cam_bad.stdout
        # The synced inbox, read by the daemon's own worker.
        (sync / "recall").mkdir(parents=True, exist_ok=True)
        (sync / "recall" / "ops-7.json").write_text(json.dumps({"start_time": start, "duration": 2}))
        wait_until(
            lambda: (
                (sync / "status" / "recall-ops-7.json").exists()
                and json.loads((sync / "status" / "recall-ops-7.json").read_text())["status"] == "completed"
            ),
            60,
            "inbox recall completed",
        )
    finally:
        d.recorder.stop()
        t.join(timeout=60)
    assert not t.is_alive()
    # The timeline reads the index read-only: it works with the daemon stopped too.
    out = cli(cfg, "timeline")
    assert out.returncode == 0 and "camera front: 2 range(s)" in out.stdout
    assert cli(cfg, "recall", "--start", start, "--duration", "1").returncode == 1  # no daemon: clear error
