"""The stamp on the picture, without a daemon: its text, its tile, and drawing it into real frames.

Frames come from the real synthetic camera (FFmpeg's lavfi, deterministic: checked here) and from
decoding a real VP8 recording, so the planes have FFmpeg's own strides and padding and, when
decoded, buffers the decoder still predicts from.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import av
import numpy as np
import pytest

from edged.capture.position import Fix
from edged.capture.synthetic import SyntheticVideo
from edged.config import schema as config
from edged.config.schema import ConfigError, DeviceSettings
from edged.recording.encode import VideoEncoder
from edged.recording.stamp import (
    BLACK_Y,
    NEUTRAL_C,
    NO_FIX,
    UNSYNCED,
    Stamp,
    burn,
    position_text,
    render_tile,
    stamp_lines,
    text_size_for,
    time_text,
    unit_text,
)
from tests.conftest import make_settings

UK = "GMT0BST,M3.5.0/1,M10.5.0"  # a POSIX zone: needs no tzdata files
WINTER = 1796617565  # 2026-12-07 04:26:05 UTC
SUMMER = 1782907200  # 2026-07-01 12:00:00 UTC
W, H = 960, 540


@pytest.fixture
def zone(monkeypatch):
    def use(tz: str) -> None:
        monkeypatch.setenv("TZ", tz)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


def planes(frame: av.VideoFrame, padding: bool = True) -> list[np.ndarray]:
    """Each plane as a copy: its whole buffer, stride padding included (rows of line_size bytes),
    or only the picture."""
    out = []
    for p in frame.planes:
        rows = np.frombuffer(bytes(p), np.uint8).reshape(p.height, p.line_size)
        out.append((rows if padding else rows[:, : p.width]).copy())
    return out


def synthetic_frames(n: int, width: int = W, height: int = H) -> list[av.VideoFrame]:
    src = SyntheticVideo(width, height, 10, paced=False)
    src.open()
    try:
        return [src.read().frame for _ in range(n)]
    finally:
        src.close()


# --- the text -----------------------------------------------------------------------------------


def test_the_time_is_local_with_its_offset_and_an_unsynchronised_clock_is_said(zone):
    zone("UTC0")
    assert time_text(WINTER, True) == "2026-12-07 04:26:05 +00:00"
    assert time_text(WINTER, False) == f"2026-12-07 04:26:05 +00:00  {UNSYNCED}"
    zone(UK)
    assert time_text(WINTER, True) == "2026-12-07 04:26:05 +00:00", "GMT in winter"
    assert time_text(SUMMER, True) == "2026-07-01 13:00:00 +01:00", "BST in summer"
    zone("EST5")
    assert time_text(WINTER, True) == "2026-12-06 23:26:05 -05:00"
    zone("<+0530>-5:30")
    assert time_text(WINTER, True) == "2026-12-07 09:56:05 +05:30"


def test_unit_position_and_lines():
    s = make_settings(Path("/tmp/x"), device={"unit_number": "4-ADAM-12", "id": "pi-7"})
    assert unit_text(s.device) == "UNIT 4-ADAM-12"
    s = make_settings(Path("/tmp/x"), device={"unit_number": "", "id": "pi-7"})
    assert unit_text(s.device) == "DEVICE pi-7", "no unit number: the device id says whose it is"
    # The config refuses control characters already; the picture bounds what it shows anyway.
    raw = DeviceSettings(unit_number="A\x1b[2J" + "7" * 100)
    assert unit_text(raw) == "UNIT A?[2J" + "7" * 27, "control characters replaced, bounded length"

    assert position_text(Fix(51.501423, -0.141886, 3, 0.0)) == "51.50142N 0.14189W"
    assert position_text(Fix(-33.856784, 151.215297, 2, 0.0)) == "33.85678S 151.21530E"
    assert position_text(None) == NO_FIX
    for lat, lon in ((math.nan, 0.0), (91.0, 0.0), (0.0, -180.5), (math.inf, 1.0)):
        assert position_text(Fix(lat, lon, 3, 0.0)) == NO_FIX, (lat, lon)
    assert position_text(Fix("51", None, 3, 0.0)) == NO_FIX  # type: ignore[arg-type]

    assert stamp_lines(WINTER, True, "UNIT 7", None)[1] == "UNIT 7"
    assert stamp_lines(WINTER, True, "UNIT 7", NO_FIX)[1] == "UNIT 7   NO FIX"


def test_only_a_signed_synced_config_may_change_the_stamp_and_it_applies_live(tmp_path):
    local = {"storage": {"dir": str(tmp_path)}}
    for key, value in (("enabled", False), ("corner", "bottom-left"), ("text_size", 200)):
        with pytest.raises(ConfigError, match=rf"stamp\.{key}: is signed-only"):
            config.from_layers(local, {"stamp": {key: value}}, signed=False)
    signed = config.from_layers(local, {"stamp": {"enabled": False}}, signed=True)
    assert signed.stamp.enabled is False
    assert config.is_live("stamp.enabled") and config.is_live("stamp.corner") and config.is_live("stamp.text_size")


def test_text_size_is_validated_and_automatic_by_default(tmp_path):
    assert text_size_for(0, 540) == 18 and text_size_for(0, 1080) == 36 and text_size_for(0, 64) == 8
    assert text_size_for(24, 540) == 24
    with pytest.raises(ConfigError, match=r"stamp\.text_size: must be 0 \(auto\) or at least 8"):
        make_settings(tmp_path, stamp={"text_size": 5})
    with pytest.raises(ConfigError, match=r"stamp\.corner: "):
        make_settings(tmp_path, stamp={"corner": "middle"})
    with pytest.raises(ConfigError, match=r"stamp\.enabled: "):
        make_settings(tmp_path, stamp={"enabled": "yes"})


# --- the tile ------------------------------------------------------------------------------------

LINES = ("2026-12-07 04:26:05 +00:00", "UNIT 4-ADAM-12   51.50142N 0.14189W")


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_the_tile_sits_in_its_corner_on_whole_chroma_samples(corner):
    t = render_tile(LINES, 18, corner, W, H)
    assert t.x % 2 == 0 and t.y % 2 == 0 and t.width % 2 == 0 and t.height % 2 == 0
    margin = 8  # half the text size, even
    left, top = corner.endswith("left"), corner.startswith("top")
    assert (t.x == margin) if left else (t.x + t.width == W - margin)
    assert (t.y == margin) if top else (t.y + t.height == H - margin)
    # Legible and small: two lines of 18 px text, a few percent of the picture.
    assert 2 * 18 <= t.height <= 4 * 18 and 200 <= t.width <= 480
    assert t.width * t.height / (W * H) < 0.05
    # White text on a dark box: mostly box, some pure white where the glyphs are.
    assert (t.luma == BLACK_Y).mean() > 0.6 and (t.luma == 235).sum() > 200 and t.luma.max() == 235


def test_the_size_follows_text_size_and_the_box_keeps_its_width_from_second_to_second():
    small, big = render_tile(LINES, 12, "top-left", W, H), render_tile(LINES, 36, "top-left", W, H)
    assert 2.6 < big.height / small.height < 3.4 and 2.6 < big.width / small.width < 3.4
    widths = {render_tile(stamp_lines(WINTER + s, True, "UNIT 4", NO_FIX), 18, "top-right", W, H).x for s in range(40)}
    assert len(widths) == 1, "digits measured at the widest digit: the box does not jitter"
    # Text too big for the picture is cut to it, never outside it.
    huge = render_tile(LINES, 200, "bottom-right", 320, 180)
    assert huge.x >= 0 and huge.y >= 0 and huge.width <= 320 and huge.height <= 180


# --- drawing into frames ----------------------------------------------------------------------------


def test_the_synthetic_camera_is_deterministic():
    a, b = synthetic_frames(5), synthetic_frames(5)
    for fa, fb in zip(a, b):
        for pa, pb in zip(planes(fa), planes(fb)):
            assert np.array_equal(pa, pb)
    assert not np.array_equal(planes(a[0])[0], planes(a[1])[0]), "and it moves"


def test_burn_changes_the_tile_and_nothing_else():
    tile = render_tile(LINES, 18, "bottom-right", W, H)
    frames, clean = synthetic_frames(3), synthetic_frames(3)
    for f, c in zip(frames, clean):
        burn(f, tile)
        got, want = planes(f), planes(c)
        y0, y1, x0, x1 = tile.y, tile.y + tile.height, tile.x, tile.x + tile.width
        assert np.array_equal(got[0][y0:y1, x0:x1], tile.luma)
        for i in (1, 2):
            assert (got[i][y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] == NEUTRAL_C).all()
        # Everything else, stride padding included, byte for byte as the camera gave it.
        for i, (g, w) in enumerate(zip(got, want)):
            scale = 1 if i == 0 else 2
            outside = np.ones(g.shape, bool)
            outside[y0 // scale : y1 // scale, x0 // scale : x1 // scale] = False
            assert np.array_equal(g[outside], w[outside]), f"plane {i} changed outside the stamp"
        assert f.planes[1].line_size > f.planes[1].width, "the chroma rows here are padded (checked above)"


def test_burning_twice_is_burning_once():
    tile = render_tile(LINES, 18, "top-left", W, H)
    once, twice = synthetic_frames(1)[0], synthetic_frames(1)[0]
    burn(once, tile)
    burn(twice, render_tile(("2026-01-01 00:00:00 +00:00", "X"), 18, "top-left", W, H))
    burn(twice, tile)
    assert all(np.array_equal(a, b) for a, b in zip(planes(once), planes(twice)))


def test_a_decoder_s_reference_pictures_are_never_drawn_on(tmp_path):
    """Frames decoded from VP8 share buffers with the pictures the next frames are predicted
    from; stamping them in place must not change how the rest of the stream decodes."""
    path = tmp_path / "moving.webm"
    settings = make_settings(tmp_path, camera={"width": 320, "height": 180})
    enc = VideoEncoder(settings.camera)
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream_from_template(enc.template)
        stream.time_base = enc.time_base
        for n, frame in enumerate(synthetic_frames(30, 320, 180)):
            for p in enc.encode(frame, n, keyframe=n == 0):
                p.stream = stream
                out.mux(p)
        for p in enc.flush():
            p.stream = stream
            out.mux(p)
    tile = render_tile(LINES, 12, "top-left", 320, 180)

    def decode(stamped: bool) -> list[list[np.ndarray]]:
        out = []
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                if stamped:
                    burn(f, tile)
                out.append(planes(f, padding=False))  # a copied frame may have other strides
        return out

    stamped, clean = decode(True), decode(False)
    assert len(stamped) == len(clean) == 30
    for n, (s, c) in enumerate(zip(stamped, clean)):
        y0, y1, x0, x1 = tile.y, tile.y + tile.height, tile.x, tile.x + tile.width
        outside = np.ones(c[0].shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(s[0][outside], c[0][outside]), f"frame {n} decoded differently"


# --- the stage ------------------------------------------------------------------------------------


class Position:
    def __init__(self) -> None:
        self.fix: Fix | None = None
        self.calls = 0
        self.fail = False

    def latest(self) -> Fix | None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("gpsd went away")
        return self.fix

    def fix_status(self) -> str:
        return "3d" if self.fix else "no-fix"

    def track(self, start_wall_s: float, end_wall_s: float) -> list[Fix]:
        return []


def tile_of(frame: av.VideoFrame, tile_like) -> np.ndarray:
    y = planes(frame)[0]
    return y[tile_like.y : tile_like.y + tile_like.height, tile_like.x : tile_like.x + tile_like.width]


def test_the_stage_renders_once_a_second_reads_the_position_then_and_is_live(tmp_path, zone):
    zone("UTC0")
    s = make_settings(tmp_path, device={"unit_number": "4A12"})
    pos = Position()
    stamp = Stamp(s, pos)
    frames = synthetic_frames(25)
    base = WINTER * 10**9 + 50_000_000
    for n, f in enumerate(frames):  # 10 fps: 2.5 s, three seconds of the wall clock
        stamp.apply(f, base + n * 100_000_000, synced=True)
    assert stamp.renders == 3 and pos.calls == 3
    want = render_tile(stamp_lines(WINTER + 2, True, "UNIT 4A12", NO_FIX), 18, "top-left", W, H)
    assert np.array_equal(tile_of(frames[-1], want), want.luma)

    pos.fix = Fix(51.501423, -0.141886, 3, 0.0)
    f = synthetic_frames(1)[0]
    stamp.apply(f, (WINTER + 3) * 10**9, synced=False)
    want = render_tile(stamp_lines(WINTER + 3, False, "UNIT 4A12", "51.50142N 0.14189W"), 18, "top-left", W, H)
    assert np.array_equal(tile_of(f, want), want.luma)

    pos.fail = True  # someone else's reader failing is NO FIX, never a stopped recording
    f = synthetic_frames(1)[0]
    stamp.apply(f, (WINTER + 4) * 10**9, synced=True)
    want = render_tile(stamp_lines(WINTER + 4, True, "UNIT 4A12", NO_FIX), 18, "top-left", W, H)
    assert np.array_equal(tile_of(f, want), want.luma)

    # Live: a new corner, size and no position line, from the next frame (same second).
    stamp.configure(
        make_settings(
            tmp_path,
            device={"unit_number": "4A12"},
            stamp={"corner": "bottom-right", "text_size": 24, "show_position": False},
        )
    )
    f = synthetic_frames(1)[0]
    stamp.apply(f, (WINTER + 4) * 10**9, synced=True)
    want = render_tile(stamp_lines(WINTER + 4, True, "UNIT 4A12", None), 24, "bottom-right", W, H)
    assert np.array_equal(tile_of(f, want), want.luma)

    stamp.configure(make_settings(tmp_path, stamp={"enabled": False}))
    f, clean = synthetic_frames(1)[0], synthetic_frames(1)[0]
    stamp.apply(f, (WINTER + 5) * 10**9, synced=True)
    assert all(np.array_equal(a, b) for a, b in zip(planes(f), planes(clean))), "off: the frame is untouched"


def test_a_frame_the_stamp_cannot_draw_on_is_recorded_as_it_is(tmp_path, caplog):
    stamp = Stamp(make_settings(tmp_path))
    frame = synthetic_frames(1)[0].reformat(format="rgb24")
    before = bytes(frame.planes[0])
    stamp.apply(frame, WINTER * 10**9, synced=True)  # does not raise
    assert bytes(frame.planes[0]) == before
    assert "time stamp not drawn" in caplog.text
