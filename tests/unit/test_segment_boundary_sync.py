"""A power cut at a segment boundary loses no more than anywhere else (README: at most 2 s).

At a boundary the recorder keeps the previous segment open for late audio (up to
``AUDIO_GRACE_S``) while the new one is written. The new segment used to time its first sync from
its own creation, and the one kept open was durable only up to its last sync until it finished: a
cut at the end of the grace lost the old segment's tail and the new one's first second, 2 s at
the default 1 s sync interval, where everywhere else it is at most ``sync_interval`` plus a
cluster.

Deterministic: a fake monotonic clock at the frames' media times (no capture latency), real VP8
into two real ``SegmentWriter`` s driven as the recorder drives them, every fdatasync/fsync logged
with the file's length at that moment. A power cut just before each sync keeps, of each file, the
length of its last sync: the footage lost is from the first hole in the recording's timeline
(what was kept decoded back, frame by frame, from the finished files) to the cut."""

from __future__ import annotations

import os
from pathlib import Path

import av

from edged.recording import recorder, segment
from edged.recording.encode import VideoEncoder
from edged.recording.segment import CLUSTER_MS, SegmentStart, SegmentWriter, SyncCadence
from tests.conftest import make_settings
from tests.support.noise import noisy_frames

FPS = 10
SYNC_INTERVAL = 1.0
SEGMENT_FRAMES = 2 * FPS  # 2 s segments, as in the crash matrix
FRAME_S = 1 / FPS


class FakeTime:
    """``segment.time``, with ``monotonic()`` set by the test."""

    now = 0.0

    @classmethod
    def monotonic(cls) -> float:
        return cls.now


def test_power_cut_in_a_boundary_grace_loses_no_more_than_elsewhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(segment, "time", FakeTime)
    settings = make_settings(tmp_path, camera={"width": 320, "height": 180, "bitrate": 300_000, "fps": FPS})
    enc = VideoEncoder(settings.camera)
    cadence = SyncCadence()
    syncs: list[tuple[float, str, int]] = []  # (when, file, its length then)
    for name in ("fdatasync", "fsync"):
        real = getattr(os, name)

        def logged(fd: int, real=real) -> None:
            real(fd)
            name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            if name.endswith((segment.SUFFIX, segment.PART_SUFFIX)):  # not the folder's fsync
                syncs.append((FakeTime.now, name, os.fstat(fd).st_size))

        monkeypatch.setattr(segment.os, name, logged)

    def writer(seq: int, first: int) -> SegmentWriter:
        start = SegmentStart(seq, "boot", round(first * FRAME_S * 1e9), 1_700_000_000_000_000_000, True, "dev")
        return SegmentWriter(tmp_path, start, enc.template, None, None, first, None, SYNC_INTERVAL, cadence)

    frames = noisy_frames(3 * SEGMENT_FRAMES, 320, 180)
    grace_frames = round(recorder.AUDIO_GRACE_S * FPS)
    cur, closing = writer(1, 0), None
    writers = [cur]
    for n, frame in enumerate(frames):
        FakeTime.now = n * FRAME_S
        if n and n % SEGMENT_FRAMES == 0:
            closing, cur = cur, writer(len(writers) + 1, n)
            writers.append(cur)
        for p in enc.encode(frame, n, keyframe=n % SEGMENT_FRAMES == 0):
            cur.mux_video(p)
        if closing is not None and n % SEGMENT_FRAMES == grace_frames:  # the late audio came at last
            closing.finish()
            closing = None
        cur.sync_if_due()  # as the recorder, each frame
        if closing is not None:
            closing.sync_with_recording()
    FakeTime.now = len(frames) * FRAME_S
    for p in enc.flush():
        cur.mux_video(p)
    cur.finish()
    enc.close()

    # Per segment: where its footage starts, and the end of each video frame with the byte it ends at.
    footage: list[tuple[float, list[tuple[float, int]]]] = []
    for w in writers:
        start_s = w.start.mono_start_ns / 1e9
        with av.open(str(w.final_path)) as c:
            ends = [
                (start_s + (p.pts + 1000 / FPS) / 1000, p.pos + p.size)
                for p in c.demux(video=0)
                if p.size and p.pts is not None
            ]
        footage.append((start_s, ends))

    def kept_until(durable: dict[int, int]) -> float:
        """The recording's footage is whole from its start to here (its first hole), of what was synced."""
        until = 0.0
        for seq, (start_s, ends) in enumerate(footage, 1):
            if start_s > until + 1e-6:
                break
            until = max([until, *(end for end, at in ends if at <= durable.get(seq, 0))])
        return until

    durable: dict[int, int] = {}  # seq: bytes synced
    lost = []
    for when, name, length in syncs:
        lost.append((round(when - kept_until(durable), 3), when))  # cut just before this sync
        seq = int(name.split("_", 1)[0])
        durable[seq] = max(durable.get(seq, 0), length)
    worst = max(lost)
    bound = SYNC_INTERVAL + CLUSTER_MS / 1000 + FRAME_S / 2
    assert worst[0] <= bound, f"a power cut at {worst[1]:.1f} s loses {worst[0]:.2f} s (at most {bound:.2f}): {lost}"
    # Not vacuous: syncs were made all along, in both segments of each boundary.
    assert {int(n.split("_", 1)[0]) for _w, n, _l in syncs} == {1, 2, 3}
