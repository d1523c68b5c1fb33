"""The stamp on the picture: date, time and zone, unit and position burned into every frame.

Body-worn video guidance (UK CAST) asks for a date and time stamp on all footage, so it is part
of the picture itself, not only of the metadata: a frame grabbed from a clip still says when and
by whom it was recorded. PyAV's FFmpeg has no ``drawtext`` filter, so the stamp is drawn here,
before the encoder, at a cost the recording does not notice:

* the text changes once a second, so it is rendered once a second (Pillow, FreeType) into a small
  *tile*: white text on an opaque dark box, as the Y (luma) bytes to put on the picture;
* every frame then gets that tile copied into its Y plane and the tile's 4:2:0 chroma rectangle
  set to neutral grey, row by row through the frame's own plane buffers (their line strides
  honoured): no full-frame copy, no colour conversion, only the tile's bytes move. Plain bytes and
  memoryviews, not numpy: the stamp is on the recording's path from its first frame, and numpy
  would cost start-up time and ~11 MB of a small board's memory for a few row copies. Pillow is
  imported at the first tile, so a device with the stamp off never loads it.

Why an opaque box and not a translucent one: it is legible on any background (a white wall,
headlights at night), and stamping is idempotent: a source that hands over the same frame twice
(the file source repeats frames to reach the configured rate) still shows one clean stamp, where
a blend would darken the box twice and show the previous second through the new one. The box is
as small as the text: about 3 % of a 960x540 picture in a corner.

Why Pillow's own font (``ImageFont.load_default(size=...)``: Aileron, inside Pillow since 10.1,
drawn by the FreeType inside its wheel and in Raspberry Pi OS's ``python3-pil``): it exists on a
bare machine with no font package installed, and it is the same file everywhere, so the stamp
looks the same on every device and a test can render the tile a frame must show. Digits are
measured at the widest digit's width, so the box does not change size from second to second.

The wall time of a frame is its place on the recording timeline mapped through the recorder's
wall − monotonic offset (the recorder passes it in: the same mapping its segments' wall starts
use), not the clock read when the frame happens to be encoded. A clock that is not synchronised
is said on the picture: ``UNSYNCED`` after the time.

The stage never stops the recording: a failure to render or draw is logged once and the frame is
recorded without a stamp. A position source that fails or gives an impossible fix reads NO FIX.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import av

from edged.capture.base import PIX_FMT
from edged.capture.position import Fix, PositionSource
from edged.config.schema import MIN_STAMP_TEXT_PX, DeviceSettings, Settings
from edged.core.timefmt import local_with_offset

if TYPE_CHECKING:
    import numpy as np
    from PIL import ImageFont

log = logging.getLogger("edged.stamp")

NS = 1_000_000_000
#: Limited-range ("TV") luma black and white, and neutral chroma: what VP8 and players expect.
BLACK_Y, WHITE_Y, NEUTRAL_C = 16, 235, 128
UNSYNCED = "UNSYNCED"
NO_FIX = "NO FIX"
#: The unit (or device id) is a config value: only this much of it goes on the picture.
MAX_UNIT_CHARS = 32
#: Automatic text size: this fraction of the picture's height (18 px at 540).
AUTO_TEXT_FRACTION = 1 / 30


# --- the text ---------------------------------------------------------------------------------


def time_text(wall_s: int, synced: bool) -> str:
    """The first line: local date and time with the UTC offset, and the mark of an unsynchronised
    clock."""
    try:
        text = local_with_offset(wall_s)
    except (OverflowError, OSError, ValueError):  # a wall clock beyond what the C library shows
        text = "TIME UNKNOWN"
    return text if synced else f"{text}  {UNSYNCED}"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_UNIT_CHARS])


def unit_text(device: DeviceSettings) -> str:
    """Whose footage: the unit (callsign), else the device id."""
    if device.unit_number:
        return f"UNIT {_printable(device.unit_number)}"
    return f"DEVICE {_printable(device.id)}"


def position_text(fix: Fix | None) -> str:
    """Degrees to 5 decimals (about a metre) with hemispheres; NO FIX for none, never a guess
    (nor for a fix no receiver could give: out of range or not a number)."""
    if fix is None:
        return NO_FIX
    try:
        lat, lon = float(fix.lat), float(fix.lon)
    except (TypeError, ValueError):
        return NO_FIX
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return NO_FIX
    return f"{abs(lat):.5f}{'N' if lat >= 0 else 'S'} {abs(lon):.5f}{'E' if lon >= 0 else 'W'}"


def stamp_lines(wall_s: int, synced: bool, unit: str, position: str | None) -> tuple[str, ...]:
    """The stamp's text: time (and UNSYNCED), then the unit and, when shown, the position."""
    second = unit if position is None else f"{unit}   {position}"
    return (time_text(wall_s, synced), second)


# --- the tile ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]:
    """Pillow's built-in scalable font at ``size`` px, and its widest digit."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=size)
    widest = max("0123456789", key=font.getlength)
    return font, widest


def text_size_for(configured: int, frame_height: int) -> int:
    if configured:
        return configured
    return max(MIN_STAMP_TEXT_PX, round(frame_height * AUTO_TEXT_FRACTION))


def _even(n: int) -> int:
    return n - n % 2


#: Text coverage (0..255, anti-aliased) to limited-range luma, black box to white text.
_COVER_TO_LUMA = [BLACK_Y + (c * (WHITE_Y - BLACK_Y) + 127) // 255 for c in range(256)]


class Tile(NamedTuple):
    """What goes on the picture: ``rows``, ``height`` rows of ``width`` luma bytes each (both even),
    at (x, y), both even so the tile covers whole 2x2 chroma samples."""

    x: int
    y: int
    width: int
    height: int
    rows: tuple[bytes, ...]

    @property
    def luma(self) -> np.ndarray:
        """The tile as a height x width array (for tests and tools; the recorder never asks)."""
        import numpy as np

        return np.frombuffer(b"".join(self.rows), np.uint8).reshape(self.height, self.width)


def render_tile(lines: tuple[str, ...], text_size: int, corner: str, frame_w: int, frame_h: int) -> Tile:
    """The lines as white text on a dark box, placed in ``corner`` of a ``frame_w`` x ``frame_h``
    picture (a margin of half the text size from its edges), cut to fit the picture."""
    font, widest = _font(text_size)
    digits = str.maketrans("0123456789", widest * 10)
    ascent, descent = font.getmetrics()  # type: ignore[union-attr]
    line_h = ascent + descent
    pad = max(2, text_size // 4)
    text_w = max(math.ceil(font.getlength(line.translate(digits))) for line in lines)
    w = min(_even(text_w + 2 * pad + 1), _even(frame_w))
    h = min(_even(line_h * len(lines) + 2 * pad + 1), _even(frame_h))
    margin = _even(text_size // 2)
    x = margin if corner.endswith("left") else frame_w - margin - w
    y = margin if corner.startswith("top") else frame_h - margin - h
    x, y = _even(max(0, min(x, frame_w - w))), _even(max(0, min(y, frame_h - h)))
    from PIL import Image, ImageDraw

    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, font=font, fill=255)
    luma = image.point(_COVER_TO_LUMA).tobytes()
    return Tile(x, y, w, h, tuple(luma[i : i + w] for i in range(0, w * h, w)))


def _fill(plane: av.video.plane.VideoPlane, x: int, y: int, width: int, rows: Sequence[bytes]) -> None:
    """Write ``rows`` (each ``width`` bytes) into ``plane`` from (x, y), its line stride honoured."""
    view, stride = memoryview(plane), plane.line_size
    at = y * stride + x
    for row in rows:
        view[at : at + width] = row
        at += stride


def burn(frame: av.VideoFrame, tile: Tile) -> None:
    """Put the tile on a yuv420p frame in place: its luma into Y, neutral grey into U and V."""
    # FFmpeg's rule: a buffer someone else still holds (a decoder's reference picture, which the
    # next frame is predicted from) is copied first; a frame that is ours alone (picamera2's, a
    # converted one) is written as it is.
    frame.make_writable()
    y_plane, u_plane, v_plane = frame.planes[:3]
    _fill(y_plane, tile.x, tile.y, tile.width, tile.rows)
    grey = [bytes((NEUTRAL_C,)) * (tile.width // 2)] * (tile.height // 2)
    _fill(u_plane, tile.x // 2, tile.y // 2, tile.width // 2, grey)
    _fill(v_plane, tile.x // 2, tile.y // 2, tile.width // 2, grey)


# --- the stage --------------------------------------------------------------------------------


class Stamp:
    """The recorder's stamping stage: ``apply`` each frame before it is encoded (the recorder's
    thread); ``configure`` from any thread, in force from the next frame. The position source's
    ``latest()`` is read on the recorder's thread once a second, when the text is rendered: it
    must answer from memory (the gpsd reader keeps the latest fix), never wait on a socket."""

    def __init__(self, settings: Settings, position: PositionSource | None = None) -> None:
        self.position = position
        self._next = settings
        self._settings: Settings | None = None
        self._key: tuple[int, bool, int, int] | None = None
        self._tile: Tile | None = None
        self._failed: set[str] = set()
        self.renders = 0  # tiles rendered: once a second while recording

    def configure(self, settings: Settings) -> None:
        self._next = settings  # one reference swap: apply() picks it up at its next frame

    def apply(self, frame: av.VideoFrame, wall_ns: int, synced: bool) -> None:
        """Stamp ``frame`` (yuv420p) with the second of ``wall_ns``; never raises."""
        settings = self._next
        if settings is not self._settings:
            self._settings, self._key = settings, None
        if not settings.stamp.enabled:
            return
        try:
            if frame.format.name != PIX_FMT:
                raise ValueError(f"frames are {frame.format.name}, not {PIX_FMT}")
            key = (wall_ns // NS, synced, frame.width, frame.height)
            if key != self._key:
                self._key, self._tile = key, None  # a failed render is not retried until the next second
                self._tile = self._render(settings, key[0], synced, frame.width, frame.height)
                self.renders += 1
            if self._tile is not None:
                burn(frame, self._tile)
        except Exception as exc:  # noqa: BLE001 - a stamp that cannot be drawn never stops the recording
            self._once(f"time stamp not drawn: {type(exc).__name__}: {exc}")

    def _render(self, settings: Settings, wall_s: int, synced: bool, frame_w: int, frame_h: int) -> Tile:
        conf = settings.stamp
        position = position_text(self._fix()) if conf.show_position else None
        lines = stamp_lines(wall_s, synced, unit_text(settings.device), position)
        return render_tile(lines, text_size_for(conf.text_size, frame_h), conf.corner, frame_w, frame_h)

    def _fix(self) -> Fix | None:
        if self.position is None:
            return None
        try:
            return self.position.latest()
        except Exception as exc:  # noqa: BLE001 - someone else's reader: its failure reads as no fix
            self._once(f"position source failed, stamping NO FIX: {type(exc).__name__}: {exc}")
            return None

    def _once(self, message: str) -> None:
        if message not in self._failed and len(self._failed) < 100:
            self._failed.add(message)
            log.error("%s", message)
