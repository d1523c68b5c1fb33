"""Audio privacy: which captured sound is stored, decided sample by sample before encoding.

Body-worn cameras keep video in their pre-event buffer but record sound only from the press on
(Axon's default), and let the wearer mute during an event. The gate decides this for every audio
sample the recorder takes, on the recording's monotonic timeline:

* ``audio.pre_event`` off: sound is stored only inside an event's window, from the press to the end
  of its post-roll (a press in the post-roll extends it); before and between events the ring keeps
  video with a silent track. On: sound all the time.
* **muted** (``edged mute``, a button gesture): no sound until unmuted. A mute ends by itself when
  an event opens or closes, so no event ever starts, or goes on after a forgotten mute, without
  sound. Outside an event with ``pre_event`` off nothing is recorded anyway: a mute is refused
  there (:meth:`AudioGate.set_muted` says why) instead of lingering into the next event.

**Silenced samples, one continuous encoder** (rather than no audio packets): silenced samples are
replaced *before* the encoder, so nothing of the real sound reaches the disk, and the one Opus
encoder of the recording (``encode.py`` says why it is never restarted) runs on. Every segment
keeps the same unbroken audio track: A/V sync and segment joins stay exact, and players, the clip
builder, the MP4 and audio-only exports need no special case. Opus spends its constant 64 kbps on
the silence; the ring's size does not change. (Without packets, a gap would need the encoder
flushed and restarted, with its priming, at every switch: exactly what ``encode.py`` avoids.)

**What silence is made of.** Not exact zeros: libopus codes exact digital silence at twice the CPU
of real sound (measured here: 160 against 75 µs per 20 ms block), and with ``pre_event`` off the
ring is silent most of the day. Silenced samples are one 16-bit step alternating in sign, a tone at
half the sample rate (24 kHz, -90 dBFS), above the 20 kHz Opus keeps, so
it decodes to silence (measured: at most -90 dBFS, then under -160 dBFS) and costs less than speech.
After a switch to silence, a decoder plays the Opus frame holding the switch fading out the sound
before it, then the codec's own residue below -50 dBFS, then silence below -90 dBFS within
a second: made from what the encoder heard before the switch, never from sound after it.

**Exact instants.** An event's window is known at the press (and at each press extending it), so
the gate opens and closes it at those sample instants itself, instead of whenever the events
worker notices the post-roll is over (a second or more later, sound that should not be kept). The
recorder hands the gate no sample later than the video frame it is encoding (it splits a capture
block there), and a press is taken at or after that frame: a switch lands on the press's sample.

**Durable spans.** The spans without sound, with their reason (``core.states.AudioOff``), go into
the footage index (``audio_gaps``) at each switch only: one small transaction per press or mute,
never per frame (an SD card's writes). A clip built after a restart or a power cut lists them; a
write the card refuses is kept and written again.
"""

from __future__ import annotations

import array
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import av

from edged.core.states import AudioOff
from edged.footage.index import Index

log = logging.getLogger("edged.audio")

#: Look again this often at switches the index could not take.
RETRY_S = 1.0


class MuteResult(NamedTuple):
    muted: bool
    #: why a mute was not taken ("" when it was)
    refused: str = ""


#: One 16-bit step, the amplitude of the silence pattern, in each sample format's own units, and
#: the ``array`` type code of one sample (native byte order, as FFmpeg's formats are).
_STEP = {"s16": 1, "s32": 1 << 16, "flt": 2.0**-15, "dbl": 2.0**-15, "s64": 1 << 48}
_CODE = {"u8": "B", "s16": "h", "s32": "i", "flt": "f", "dbl": "d", "s64": "q"}

# Blocks are handled as bytes, plane by plane (``array`` and slices, no numpy): the gate is on the
# recording's path from its first block (with ``pre_event`` off every block starts silent), and
# numpy would cost start-up and ~11 MB of memory for a few byte copies.


def _sample_bytes(frame: av.AudioFrame) -> tuple[int, int]:
    """(bytes per sample in a plane, samples interleaved in a plane: the channels when packed)."""
    fmt = frame.format
    return fmt.bytes, 1 if fmt.is_planar else frame.layout.nb_channels


def _pattern(fmt: av.AudioFormat, start: int, stop: int, per_sample: int) -> bytes:
    """Samples [start, stop) of silence as a plane holds them: +1, -1, +1, ... 16-bit steps counted
    from sample 0 (see the module's docstring), the same on every channel; u8, whose step is far
    louder, gets its true zero, 128."""
    name = fmt.name.rstrip("p")
    code = _CODE[name]
    if name == "u8":
        return array.array(code, [128]).tobytes() * ((stop - start) * per_sample)
    step = _STEP[name]
    even, odd = array.array(code, [step] * per_sample).tobytes(), array.array(code, [-step] * per_sample).tobytes()
    pair = even + odd if start % 2 == 0 else odd + even
    return (pair * ((stop - start + 1) // 2))[: (stop - start) * len(even)]


def _planes(frame: av.AudioFrame, start: int, stop: int) -> list[bytes]:
    """Samples [start, stop) of each plane of ``frame``, as bytes."""
    size, per_sample = _sample_bytes(frame)
    width = size * per_sample
    return [bytes(memoryview(p)[start * width : stop * width]) for p in frame.planes]


def _frame_of(frame: av.AudioFrame, planes: Sequence[bytes], samples: int) -> av.AudioFrame:
    """A new frame of ``frame``'s format, layout and rate, holding ``planes``."""
    out = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=samples)
    for plane, data in zip(out.planes, planes):
        plane.update(data.ljust(plane.buffer_size, b"\0"))  # (a buffer may be padded past the samples)
    out.sample_rate = frame.sample_rate
    return out


#: Whole silent blocks by (format, layout, samples, rate): before a press every block is silence,
#: and a silent block made once is handed to the encoder again and again (it copies what it is
#: given and never writes into it), instead of a copy and a new frame per block.
_SILENT_BLOCKS: dict[tuple[str, str, int, int], av.AudioFrame] = {}


def _silent_block(frame: av.AudioFrame) -> av.AudioFrame:
    key = (frame.format.name, frame.layout.name, frame.samples, frame.sample_rate)
    block = _SILENT_BLOCKS.get(key)
    if block is None:
        if len(_SILENT_BLOCKS) > 16:  # a source whose block size wanders: keep only the latest
            _SILENT_BLOCKS.clear()
        quiet = _pattern(frame.format, 0, frame.samples, _sample_bytes(frame)[1])
        block = _SILENT_BLOCKS[key] = _frame_of(frame, [quiet] * len(frame.planes), frame.samples)
    return block


def silence(frame: av.AudioFrame, ranges: Sequence[tuple[int, int]]) -> av.AudioFrame:
    """``frame`` with the samples in each [start, stop) range set to silence (a new frame; the
    captured one is never written into). A block silent from end to end is a shared silent block."""
    if not ranges:
        return frame
    if ranges[0][0] <= 0 and ranges[-1][1] >= frame.samples and len(ranges) == 1:
        return _silent_block(frame)
    size, per_sample = _sample_bytes(frame)
    width = size * per_sample
    planes = [bytearray(p) for p in _planes(frame, 0, frame.samples)]
    for start, stop in ranges:
        start, stop = max(0, start), min(frame.samples, stop)
        if start < stop:
            quiet = _pattern(frame.format, start, stop, per_sample)
            for plane in planes:
                plane[start * width : stop * width] = quiet
    return _frame_of(frame, [bytes(p) for p in planes], frame.samples)


def split(frame: av.AudioFrame, k: int) -> tuple[av.AudioFrame, av.AudioFrame]:
    """The first ``k`` samples of ``frame`` and the rest, as two frames (0 < k < samples)."""
    n = frame.samples
    return _frame_of(frame, _planes(frame, 0, k), k), _frame_of(frame, _planes(frame, k, n), n - k)


class AudioGate:
    """Owned by the recorder, which asks it about every audio block (:meth:`admit`); told about
    events by the events manager (:meth:`open_event`) and about mutes by the daemon
    (:meth:`set_muted`). Thread-safe; the index writes happen in the recorder's thread."""

    def __init__(self, pre_event: bool, boot_id: str, now_ns: Callable[[], int], index: Index | None = None) -> None:
        self.boot_id = boot_id
        self._now_ns = now_ns
        self._index = index
        self._lock = threading.Lock()
        self._pre_event = pre_event
        #: events' windows [press, end of post-roll) on the recording's timeline, merged, in order
        self._windows: list[tuple[int, int]] = []
        #: mute commands (instant, on) not yet passed by the samples
        self._commands: list[tuple[int, bool]] = []
        self._latched = False  # the mute latch as of the horizon
        self._horizon_ns: int | None = None  # end of the last sample decided
        self._state: str | None = None  # the reason at the horizon (None: sound)
        self._started = False
        self._pending: list[tuple[int, str | None]] = []  # switches the index has not taken yet
        self._retry_at = 0.0
        #: switches so far (tests, status)
        self.switches = 0

    # --- told by the events stage and the daemon ------------------------------------------------

    def open_event(self, press_ns: int, end_ns: int) -> None:
        """Sound from a press to the end of its post-roll. A press within an event's window extends
        it (as the events manager does), so this is called first thing at a press, before the
        events store is even read: the switch lands on the press's own sample."""
        with self._lock:
            start, end = press_ns, end_ns
            kept = []
            for a, b in self._windows:
                if a <= end and start <= b:  # overlapping or touching: one event
                    start, end = min(a, start), max(b, end)
                else:
                    kept.append((a, b))
            self._windows = sorted([*kept, (start, end)])

    def set_pre_event(self, on: bool) -> None:
        """A new ``audio.pre_event`` (a synced config), in force from the next samples."""
        with self._lock:
            self._pre_event = on

    def set_muted(self, on: bool) -> MuteResult:
        """Mute or unmute now. A mute outside an event with ``pre_event`` off is refused: no sound
        is being recorded, and a mute must never carry into the next event."""
        with self._lock:
            now = self._now_ns()
            if on and not (self._pre_event or self._in_event(now)):
                return MuteResult(False, "no event is open and audio.pre_event is off: no sound is being recorded")
            at = now if self._horizon_ns is None else max(now, self._horizon_ns)
            self._commands.append((at, on))
            self._commands.sort(key=lambda c: c[0])
        return MuteResult(on)

    def muted(self) -> bool:
        """Is a mute in force now?"""
        with self._lock:
            now = self._now_ns()
            a = now if self._horizon_ns is None else min(self._horizon_ns, now)
            _, latch = self._walk(a, now + 1, self._latched)
            return latch

    def off_now(self) -> str | None:
        """Why no sound is being stored now (``core.states.AudioOff``); None: sound is."""
        with self._lock:
            now = self._now_ns()
            a = now if self._horizon_ns is None else min(self._horizon_ns, now)
            pieces, _ = self._walk(a, now + 1, self._latched)
            return pieces[-1][1]

    # --- asked by the recorder ------------------------------------------------------------------

    def begin(self, at_ns: int) -> None:
        """The recording starts at ``at_ns`` (its first frame): spans are known from here."""
        with self._lock:
            if self._started:
                return
            pieces, self._latched = self._walk(at_ns, at_ns + 1, self._latched)
            self._horizon_ns = at_ns
            self._state, self._started = pieces[0][1], True
            self._pending.append((at_ns, self._state))
        self._write_pending()

    def admit(self, frame: av.AudioFrame, first_ns: int) -> av.AudioFrame:
        """The block as it may be stored: its samples outside sound's spans zeroed. ``first_ns``
        is the recording-timeline instant of its first sample."""
        rate, n = frame.sample_rate, frame.samples
        end_ns = first_ns + n * 1_000_000_000 // rate
        steady = self._steady_through(first_ns, end_ns)
        if steady is not None:
            self._write_pending()
            return _silent_block(frame) if steady else frame
        with self._lock:
            a = first_ns if self._horizon_ns is None else max(first_ns, self._horizon_ns)
            pieces, latch = self._walk(a, max(end_ns, a + 1), self._latched)
            self._latched = latch
            self._horizon_ns = max(end_ns, a)
            self._commands = [c for c in self._commands if c[0] >= self._horizon_ns]
            self._windows = [w for w in self._windows if w[1] >= self._horizon_ns]
            ranges: list[tuple[int, int]] = []
            for i, (t, reason) in enumerate(pieces):
                if not self._started or reason != self._state:
                    self._pending.append((t, reason))
                    self.switches += self._started
                    self._state, self._started = reason, True
                if reason is None:
                    continue
                start = 0 if i == 0 else _sample_at(t, first_ns, rate)
                stop = n if i + 1 == len(pieces) else _sample_at(pieces[i + 1][0], first_ns, rate)
                if stop > start:
                    ranges.append((start, stop))
        self._write_pending()
        return silence(frame, ranges)

    def flush(self) -> None:
        """Write what the index has not taken yet (at stop)."""
        self._retry_at = 0.0
        self._write_pending()

    # --- inside ------------------------------------------------------------------------------------

    def _steady_through(self, first_ns: int, end_ns: int) -> bool | None:
        """The common case, without a walk per block: nothing is scheduled (no event window, no
        mute command) and the state is the one in force, so it holds over the whole block, as
        :meth:`_walk` would find. Then the horizon moves past the block and the answer is whether
        the block is silenced; None: not so, walk."""
        with self._lock:
            if not self._started or self._windows or self._commands:
                return None
            a = first_ns if self._horizon_ns is None else max(first_ns, self._horizon_ns)
            reason = self._reason(a, self._latched)
            if reason != self._state:
                return None
            self._horizon_ns = max(end_ns, a)
            return reason is not None

    def _in_event(self, t: int) -> bool:
        return any(start <= t < end for start, end in self._windows)

    def _reason(self, t: int, latch: bool) -> str | None:
        if not (self._pre_event or self._in_event(t)):
            return AudioOff.PRE_EVENT
        return AudioOff.MUTED if latch else None

    def _walk(self, a: int, b: int, latch: bool) -> tuple[list[tuple[int, str | None]], bool]:
        """The states over [a, b) as (from, reason) pieces, merged, starting at ``a``; and the mute
        latch once every event boundary and mute command before ``b`` is applied. An event's start
        or end clears the latch; a command sets it."""
        items: list[tuple[int, int, bool]] = []
        for start, end in self._windows:
            items += [(t, 0, False) for t in (start, end) if a <= t < b]
        items += [(t, 1, on) for t, on in self._commands if t < b]  # a late command counts from a
        items.sort()
        pieces: list[tuple[int, str | None]] = []
        instants = sorted({a} | {max(t, a) for t, _, _ in items})
        i = 0
        for at in instants:
            while i < len(items) and max(items[i][0], a) <= at:
                latch = items[i][2]  # a boundary clears, a command sets
                i += 1
            reason = self._reason(at, latch)
            if not pieces or pieces[-1][1] != reason:
                pieces.append((at, reason))
        return pieces, latch

    def _write_pending(self) -> None:
        if not self._pending or self._index is None or time.monotonic() < self._retry_at:
            if self._index is None:
                self._pending.clear()
            return
        try:
            while self._pending:
                at, reason = self._pending[0]
                if self._index.audio_known_from(self.boot_id) is None:
                    self._index.audio_kept_from(self.boot_id, at)
                self._index.audio_switch(self.boot_id, at, reason)
                self._pending.pop(0)
                log.info("audio %s at %d", f"off ({reason})" if reason else "on", at)
        except (sqlite3.Error, OSError) as exc:
            self._retry_at = time.monotonic() + RETRY_S
            log.error("audio span not written to the index now (%s); kept to write again", exc)


def _sample_at(t: int, first_ns: int, rate: int) -> int:
    """The first sample at or after instant ``t`` of a block starting at ``first_ns``."""
    return max(0, -((first_ns - t) * rate // 1_000_000_000))
