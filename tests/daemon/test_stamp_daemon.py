"""The stamp through the real daemon: record with the real recorder and encoder, decode the written
segments with PyAV, and read the stamp back off the picture.

A frame's expected time comes from the segment's own tags (its wall start, independent of the
stamp) plus the frame's timestamp. The decoded stamp region must match the tile for that second
better than the tile of any neighbouring second or of the other clock state: the picture says
its own time, and whether the clock was synchronised. The synthetic camera is deterministic
(tests/unit/test_stamp_tile.py checks it), so a recording with the stamp off is the picture the
stamp may change only inside its box.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.app.daemon import Daemon
from edged.capture.synthetic import SyntheticVideo
from edged.config import schema as config
from edged.config import sign as configsign
from edged.recording.stamp import NO_FIX, Tile, render_tile, stamp_lines, text_size_for
from tests.conftest import make_settings
from tests.support import SteppableClock, segment_files, wait_until

WINTER = 1796617565  # 2026-12-07 04:26:05 UTC
UNIT = "4-ADAM-12"
W, H = 960, 540


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """The device's zone for these recordings (a POSIX zone string: no tzdata needed)."""
    monkeypatch.setenv("TZ", "UTC0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@dataclass
class Frame:
    wall_ns: int  # from the segment's tags and the frame's timestamp
    synced: bool
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    image: av.VideoFrame


def record(state: Path, synced: bool = True, seconds: float = 2.0, size=(W, H), **stamp) -> list[Frame]:
    clock = SteppableClock(offset_ns=WINTER * 10**9 - time.monotonic_ns(), synced=synced)
    s = make_settings(
        state,
        camera={"width": size[0], "height": size[1]},
        storage={"segment_seconds": 2.0},
        device={"unit_number": UNIT},
        stamp=stamp,
    )
    assert Daemon(s, clock=clock, stop_after_s=seconds).run() == 0
    return decoded(state)


def decoded(state: Path) -> list[Frame]:
    frames = []
    for path in segment_files(state):
        with av.open(str(path)) as c:
            tags = {k.upper(): v for k, v in c.metadata.items()}
            wall0, synced = int(tags["EDGED_WALL_START_NS"]), tags["EDGED_CLOCK_SYNCED"] == "1"
            first_pts = None
            for f in c.decode(video=0):
                # A segment starts at its first video frame (the muxer may shift all timestamps
                # a few ms to make room for Opus's pre-skip): the frame's wall time counts from it.
                first_pts = f.pts if first_pts is None else first_pts
                yuv = f.to_ndarray()  # yuv420p: Y rows, then U and V rows
                h, w = f.height, f.width
                u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
                v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
                wall = wall0 + round(float((f.pts - first_pts) * f.time_base) * 1e9)
                frames.append(Frame(wall, synced, yuv[:h], u, v, f))
    assert frames, f"nothing recorded in {state}"
    return frames


def region(plane: np.ndarray, tile: Tile, scale: int = 1) -> np.ndarray:
    return plane[tile.y // scale : (tile.y + tile.height) // scale, tile.x // scale : (tile.x + tile.width) // scale]


def inside(shape: tuple[int, ...], tile: Tile, scale: int = 1) -> np.ndarray:
    """The tile's area on a plane (chroma planes: ``scale`` 2)."""
    mask = np.zeros(shape, bool)
    mask[tile.y // scale : (tile.y + tile.height) // scale, tile.x // scale : (tile.x + tile.width) // scale] = True
    return mask


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@dataclass
class Reading:
    second: int
    synced: bool
    digits: dict  # (second, synced) -> mean difference where the candidate seconds' tiles differ
    whole: dict  # (second, synced) -> mean difference over the whole stamp area


def reading(
    frame: Frame, background: Frame | None, corner="top-left", text_size=0, position: str | None = NO_FIX
) -> Reading:
    """What the stamp on ``frame`` says, among candidates two seconds either side of its own
    second, synchronised or not. Each candidate tile is put on ``background`` (the same camera
    frame recorded with the stamp off) and compared over the area any candidate covers: that
    reads the clock state (its UNSYNCED mark makes a wider box). The second is then read only
    where the candidate seconds' tiles differ (the digits that change), so the rest of the text
    does not dilute it. Without a background only a synchronised clock is considered."""
    size = text_size_for(text_size, frame.y.shape[0])
    height, width = frame.y.shape
    second = frame.wall_ns // 10**9
    states = (True, False) if background is not None else (True,)
    tiles = {
        (s, synced): render_tile(stamp_lines(s, synced, f"UNIT {UNIT}", position), size, corner, width, height)
        for s in range(second - 2, second + 3)
        for synced in states
    }
    if background is not None:
        x0, y0 = min(t.x for t in tiles.values()), min(t.y for t in tiles.values())
        x1, y1 = max(t.x + t.width for t in tiles.values()), max(t.y + t.height for t in tiles.values())
        whole = {}
        for k, t in tiles.items():
            expected = background.y[y0:y1, x0:x1].copy()
            expected[t.y - y0 : t.y - y0 + t.height, t.x - x0 : t.x - x0 + t.width] = t.luma
            whole[k] = mae(frame.y[y0:y1, x0:x1], expected)
    else:
        whole = {k: mae(region(frame.y, t), t.luma) for k, t in tiles.items()}
    synced = min(whole, key=whole.__getitem__)[1]
    same = [t.luma for (s, sy), t in tiles.items() if sy == synced]
    changing = np.any([t != same[0] for t in same], axis=0)
    digits = {k: mae(region(frame.y, t)[changing], t.luma[changing]) for k, t in tiles.items() if k[1] == synced}
    best = min(digits, key=digits.__getitem__)
    return Reading(best[0], synced, digits, whole)


def reads_plainly(r: Reading, want: tuple[int, bool]) -> None:
    """The stamp reads ``want``, each part by a clear margin over the next best candidate."""
    assert (r.second, r.synced) == want, f"reads {(r.second, r.synced)}, not {want}: {r}"
    runner_up = min(v for k, v in r.digits.items() if k != want)
    assert r.digits[want] * 1.5 < runner_up, f"the digits read plainly: {r.digits}"
    other_state = [v for k, v in r.whole.items() if k[1] != want[1]]
    if other_state:
        assert r.whole[want] * 1.5 < min(other_state), f"the clock state reads plainly: {r.whole}"


def away_from_a_second_boundary(frame: Frame) -> bool:
    return 1_000_000 < frame.wall_ns % 10**9 < 999_000_000


@pytest.fixture(scope="module")
def stamp_off(tmp_path_factory) -> list[Frame]:
    """The same deterministic camera recorded with the stamp off: the background of every stamp."""
    return record(tmp_path_factory.mktemp("stamp-off") / "state", seconds=3.0, enabled=False)


def test_every_frame_shows_its_own_time_unit_and_a_synchronised_clock(tmp_path, stamp_off):
    frames = record(tmp_path / "on", synced=True, seconds=3.0)
    # Looked at by a person too: a decoded 960x540 frame (tmp_path/stamped-960x540.png).
    png = tmp_path / "stamped-960x540.png"
    frames[len(frames) // 2].image.to_image().save(png)
    assert png.stat().st_size > 10_000
    assert len(frames) == len(stamp_off) == 30
    seconds = set()
    for f, off in zip(frames, stamp_off):
        if away_from_a_second_boundary(f):
            r = reading(f, off)
            reads_plainly(r, (f.wall_ns // 10**9, True))
            assert r.whole[(r.second, True)] < 20, r.whole  # the tile itself, less what VP8 at 300 kbps blurs
            seconds.add(r.second)
    assert len(seconds) >= 3, "the stamp moved on with the seconds"


def test_an_unsynchronised_clock_is_marked_on_the_picture(tmp_path, stamp_off):
    frames = record(tmp_path / "unsynced", synced=False)
    assert not frames[0].synced, "the segment says so in its tags too"
    checked = 0
    for f, off in zip(frames, stamp_off):
        if away_from_a_second_boundary(f):
            reads_plainly(reading(f, off), (f.wall_ns // 10**9, False))
            checked += 1
    assert checked >= 15


def test_corner_size_and_lines_follow_the_config(tmp_path, stamp_off):
    frames = record(tmp_path / "corner", corner="bottom-right", text_size=30, show_position=False)
    assert len(frames) == 20
    default_place = render_tile(stamp_lines(WINTER, True, f"UNIT {UNIT}", NO_FIX), 18, "top-left", W, H)
    for f, off in zip(frames, stamp_off):
        if away_from_a_second_boundary(f):
            r = reading(f, off, corner="bottom-right", text_size=30, position=None)
            reads_plainly(r, (f.wall_ns // 10**9, True))
        # Nothing is drawn where the default corner would be: it is the stamp-off picture there.
        assert mae(region(f.y, default_place), region(off.y, default_place)) < 10  # a box differs by > 30
    tile = render_tile(stamp_lines(WINTER, True, f"UNIT {UNIT}", None), 30, "bottom-right", W, H)
    assert tile.x + tile.width == W - 14 and tile.y + tile.height == H - 14 and tile.height > 60


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * math.log10(255**2 / mse) if mse else math.inf


def test_outside_the_stamp_the_picture_is_the_cameras(tmp_path, stamp_off):
    """Against the camera's own frames (the synthetic camera again: deterministic), the stamped
    recording outside the box is as good as the unstamped one: VP8's rate control spends its
    bits a little differently, and that is all (exactly nothing changes before the encoder: the
    next test)."""
    frames = record(tmp_path / "on", seconds=3.0)
    assert len(frames) == len(stamp_off) == 30
    tile = render_tile(stamp_lines(WINTER, True, f"UNIT {UNIT}", NO_FIX), 18, "top-left", W, H)
    camera = SyntheticVideo(W, H, 10, paced=False)
    camera.open()
    gaps = []
    try:
        for n, (on, off) in enumerate(zip(frames, stamp_off)):
            assert on.wall_ns - frames[0].wall_ns == off.wall_ns - stamp_off[0].wall_ns == n * 100_000_000
            raw = camera.read().frame.to_ndarray()
            source = {"y": raw[:H], "u": raw[H : H + H // 4].reshape(H // 2, W // 2)}
            source["v"] = raw[H + H // 4 :].reshape(H // 2, W // 2)
            for plane, scale in (("y", 1), ("u", 2), ("v", 2)):
                outside = ~inside(source[plane].shape, tile, scale)
                with_stamp = psnr(getattr(on, plane)[outside], source[plane][outside])
                without = psnr(getattr(off, plane)[outside], source[plane][outside])
                assert with_stamp > 30 and with_stamp > without - 1.5, (n, plane, with_stamp, without)
                gaps.append(without - with_stamp)
            assert mae(region(on.y, tile), region(off.y, tile)) > 30, "inside, the box replaced the picture"
            for chroma in (on.u, on.v):  # a neutral box: no colour inside (VP8 bleeds a little at its edges)
                assert np.abs(region(chroma, tile, 2)[4:-4, 4:-4].astype(int) - 128).mean() < 4
    finally:
        camera.close()
    assert float(np.mean(gaps)) < 0.5, f"on average the stamp costs the rest of the picture {np.mean(gaps):.2f} dB"


class Tapped:
    """The real synthetic camera, keeping a copy of each frame as it left the camera and the
    frame itself (which the recorder then stamps in place before encoding)."""

    def __init__(self, kept: list) -> None:
        self.src = SyntheticVideo(W, H, 10, paced=False)
        self.name = self.src.name
        self.kept = kept

        self.src.open()  # a source factory hands over an open source

    def read(self):
        sample = self.src.read()
        as_given = [np.array(p, copy=True).reshape(p.height, p.line_size)[:, : p.width] for p in sample.frame.planes]
        self.kept.append((as_given, sample.frame))
        return sample

    def close(self) -> None:
        self.src.close()


def test_the_recorder_changes_nothing_but_the_box_before_encoding(tmp_path):
    from edged.core.paths import StatePaths
    from edged.footage.index import Index
    from edged.footage.ring import RingBuffer
    from edged.recording.recorder import Recorder

    s = make_settings(tmp_path / "state", storage={"segment_seconds": 2.0}, device={"unit_number": UNIT})
    paths = StatePaths(s.state_dir)
    paths.segments.mkdir(parents=True)
    index = Index(paths.index)
    kept: list = []
    rec = Recorder(
        s,
        index,
        RingBuffer(index, paths.segments, s.storage.max_bytes, 0),
        SteppableClock(offset_ns=WINTER * 10**9 - time.monotonic_ns(), synced=True),
        paths.segments,
        stop_after_s=1.0,
        video_source_factory=lambda: Tapped(kept),
    )
    run = threading.Thread(target=rec.run, name="recorder-under-test", daemon=True)
    run.start()
    try:
        run.join(timeout=60)
        assert not run.is_alive(), "the recorder did not record its second of footage"
    finally:
        rec.stop()
        run.join(timeout=10)
        index.close()
    assert rec.status.frames_encoded == 10
    tile = render_tile(stamp_lines(WINTER, True, f"UNIT {UNIT}", NO_FIX), 18, "top-left", W, H)
    encoded = [(given, frame) for given, frame in kept if frame.pts is not None]  # the encoder set its pts
    assert len(encoded) == 10
    for given, frame in encoded:
        for i, (before, p) in enumerate(zip(given, frame.planes)):
            after = np.frombuffer(bytes(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width]
            scale = 1 if i == 0 else 2
            box = inside(after.shape, tile, scale)
            assert np.array_equal(after[~box], before[~box]), f"plane {i} changed outside the stamp"
            assert not np.array_equal(after[box], before[box])


def test_a_signed_synced_config_moves_the_stamp_while_recording(tmp_path):
    key = Ed25519PrivateKey.generate()
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "synthetic"
width = 320
height = 180
[audio]
source = "synthetic"
[device]
unit_number = "{UNIT}"
[storage]
dir = "{tmp_path / "state"}"
segment_seconds = 2.0
min_free_bytes = 0
[sync]
dir = "{sync_dir}"
poll_seconds = 0.2
fleet_public_key = "{configsign.public_key_b64(key.public_key())}"
""")
    daemon = Daemon(config.load(cfg), clock=SteppableClock(offset_ns=WINTER * 10**9 - time.monotonic_ns(), synced=True))
    t = threading.Thread(target=daemon.run)
    t.start()
    try:
        wait_until(lambda: daemon.recorder is not None and daemon.recorder.status.frames_encoded >= 5, 30, "recording")
        stamp = daemon.recorder.stamp

        def drop(data: bytes) -> None:
            tmp = sync_dir / ".tmp.edged.toml"
            tmp.write_bytes(data)
            os.replace(tmp, sync_dir / "edged.toml")

        drop(configsign.sign(b'[stamp]\ncorner = "bottom-right"\ntext_size = 12\n', key))
        wait_until(lambda: daemon.settings.stamp.corner == "bottom-right", 10, "the signed config applied")
        assert stamp._next.stamp.corner == "bottom-right" and stamp._next.stamp.text_size == 12
        moved_at = daemon.recorder.status.frames_encoded
        wait_until(lambda: daemon.recorder.status.segments_written >= 2, 30, "more footage")
    finally:
        daemon.stop()
        t.join(timeout=30)
    assert not t.is_alive()
    frames = decoded(tmp_path / "state")
    last = frames[-1]
    assert len(frames) > moved_at + 5
    reads_plainly(reading(last, None, corner="bottom-right", text_size=12), (last.wall_ns // 10**9, True))
    first = reading(frames[0], None)  # where the local config put it
    reads_plainly(first, (frames[0].wall_ns // 10**9, True))
