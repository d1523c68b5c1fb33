"""SD-card wear of the segment being written (issue 15): no page is synced before it is full, and
nothing written is held back between the muxer's calls (kill -9 loses no more than before).

A real VP8 encode into a real ``SegmentWriter``; ``os.fdatasync`` is wrapped to see the file's
length at each sync. Syncing a partly filled last page made the next cluster write that page again:
9 % more bytes than the footage at the default bitrate, at one sync a second."""

from __future__ import annotations

import os
from pathlib import Path

from edged.recording import segment
from edged.recording.encode import VideoEncoder
from edged.recording.segment import PAGE_BYTES, PageAlignedFile, SegmentStart, SegmentWriter
from tests.conftest import make_settings
from tests.support import decode_all
from tests.support.noise import noisy_frames

FPS = 10


def write_segment(tmp_path: Path, seconds: float, sync_interval: float, monkeypatch) -> tuple[SegmentWriter, list]:
    """Record ``seconds`` of noise into a segment; returns the writer and, per fdatasync of its file,
    (file length, bytes the muxer had written)."""
    settings = make_settings(tmp_path, camera={"width": 320, "height": 180, "bitrate": 300_000, "fps": FPS})
    enc = VideoEncoder(settings.camera)
    start = SegmentStart(1, "boot", 1_000_000_000, 1_700_000_000_000_000_000, True, "dev")
    w = SegmentWriter(tmp_path, start, enc.template, None, None, 0, None, sync_interval)
    syncs: list[tuple[int, int]] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if fd == w._file.fileno():
            syncs.append((os.fstat(fd).st_size, w._file.received))
        real(fd)

    monkeypatch.setattr(segment.os, "fdatasync", fdatasync)
    held: list[tuple[int, int]] = []
    try:
        for n, frame in enumerate(noisy_frames(int(seconds * FPS), 320, 180)):
            for p in enc.encode(frame, n, keyframe=n == 0):
                w.mux_video(p)
                size = os.fstat(w._file.fileno()).st_size
                if size != w._file.received:
                    held.append((size, w._file.received))
            w.sync_if_due()
        for p in enc.flush():
            w.mux_video(p)
    finally:
        enc.close()
    assert not held, f"bytes held back after a mux call returned (a kill -9 would lose them): {held[:3]}"
    return w, syncs


def test_segment_syncs_whole_pages_only(tmp_path, monkeypatch):
    """Every sync of the growing segment ends at a page boundary, though clusters do not."""
    w, syncs = write_segment(tmp_path, 6.0, sync_interval=0.2, monkeypatch=monkeypatch)
    path = w.finish()
    assert len(syncs) >= 6, f"a sync at each cluster written (0.2 s interval): {syncs}"
    partial = [(size, got) for size, got in syncs if size % PAGE_BYTES]
    assert not partial, f"synced with a partly filled last page (written twice): {partial}"
    assert any(got % PAGE_BYTES for _, got in syncs), "the clusters did not end on page boundaries themselves"
    frames, _ = decode_all(path)
    assert frames == 60, frames


def test_segment_syncs_keep_their_cadence(tmp_path, monkeypatch):
    """The power-cut bound: whole-page syncs still come about every ``sync_interval``, each as a
    cluster is written and covering it all but its last partial page. (Clusters of video alone at
    10 fps close every 600 ms, so syncs fall every 1.2 s; the old syncs came every 1.0 s but left
    out the cluster being filled, up to 0.6 s older.)"""
    clock = [0.0]
    monkeypatch.setattr(segment.time, "monotonic", lambda: clock[0])
    settings = make_settings(tmp_path, camera={"width": 320, "height": 180, "bitrate": 300_000, "fps": FPS})
    enc = VideoEncoder(settings.camera)
    start = SegmentStart(1, "boot", 1_000_000_000, 1_700_000_000_000_000_000, True, "dev")
    w = SegmentWriter(tmp_path, start, enc.template, None, None, 0, None, sync_interval=1.0)
    syncs: list[tuple[float, int, int]] = []  # (when, synced length, bytes the muxer wrote)
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncs.append((clock[0], os.fstat(fd).st_size, w._file.received))
        real(fd)

    monkeypatch.setattr(segment.os, "fdatasync", fdatasync)
    try:
        for n, frame in enumerate(noisy_frames(8 * FPS, 320, 180)):
            clock[0] = n / FPS  # paced: the frame's own time
            for p in enc.encode(frame, n, keyframe=n == 0):
                w.mux_video(p)
            w.sync_if_due()
    finally:
        enc.close()
    w.finish()
    when = [s[0] for s in syncs]
    gaps = [b - a for a, b in zip(when, when[1:])]
    assert len(syncs) >= 6 and max(gaps) <= 1.0 + segment.CLUSTER_MS / 1000 + 1 / FPS, f"syncs at {when}"
    stale = [(t, size, got) for t, size, got in syncs if got - size >= PAGE_BYTES]
    assert not stale, f"a sync left out more than the last partial page of what was written: {stale}"


def test_page_aligned_file_rewrites_in_place(tmp_path):
    """The trailer's seek back and rewrite land where the muxer meant, held bytes included."""
    f = PageAlignedFile(tmp_path / "x")
    f.write(b"a" * 5000)
    f.hold()
    f.write(b"b" * 5000)  # 10,000: 8,192 reach the file, 1,808 held
    assert os.fstat(f.fileno()).st_size == 2 * PAGE_BYTES
    f.seek(10)
    f.write(b"HEADER")
    assert os.fstat(f.fileno()).st_size == 10_000, "the held bytes went first"
    f.seek(0, os.SEEK_END)
    f.write(b"c" * 3)
    f.close()
    data = (tmp_path / "x").read_bytes()
    assert data == b"a" * 10 + b"HEADER" + b"a" * (5000 - 16) + b"b" * 5000 + b"ccc"
