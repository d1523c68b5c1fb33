"""The audio gate on its own (no daemon): which samples it zeroes, its mute rules, its durable
spans in a real index, the manifest's ``audio`` section, and the control command's arguments."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from edged.app.control import answer
from edged.clips.audio import audio_manifest
from edged.clips.builder import ClipPart
from edged.clips.job import PlacedPart
from edged.footage.index import Index, Segment
from edged.recording.audio_gate import AudioGate, silence, split

S = 1_000_000_000
RATE = 48_000


class Now:
    def __init__(self, t: int = 0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def block(n: int = 4800, value: int = 1000, fmt: str = "s16", layout: str = "mono") -> av.AudioFrame:
    channels = 2 if layout == "stereo" else 1
    dtype = np.float32 if fmt.startswith("flt") else np.int16
    if fmt.endswith("p"):
        arr = np.full((channels, n), value, dtype)
    else:
        arr = np.full((1, n * channels), value, dtype)
    f = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
    f.sample_rate = RATE
    return f


def loud(frame: av.AudioFrame) -> np.ndarray:
    """Per sample: is any channel louder than the silence pattern (one 16-bit step)."""
    step = 2.0**-15 if frame.format.name.startswith("flt") else 1
    arr = np.abs(frame.to_ndarray().astype(np.float64)) > step
    if frame.format.is_planar:
        return arr.any(axis=0)
    return arr.reshape(-1, frame.layout.nb_channels).any(axis=1)


def feed(gate: AudioGate, start: int, seconds: float, n: int = 4800) -> np.ndarray:
    """Admit blocks of a constant signal from ``start``; the loudness of every sample."""
    out = []
    for i in range(round(seconds * RATE / n)):
        out.append(loud(gate.admit(block(n), start + i * n * S // RATE)))
    return np.concatenate(out)


def test_silent_until_the_press_then_sound_from_its_sample_to_the_end():
    now = Now(0)
    gate = AudioGate(pre_event=False, boot_id="b", now_ns=now)
    gate.begin(0)
    press = 1 * S + 12_345_678  # inside a block
    gate.open_event(press, press + 2 * S)
    x = feed(gate, 0, 4.0)
    first = -(-press * RATE // S)  # the first sample at or after the press
    last = -(-(press + 2 * S) * RATE // S)
    assert not x[:first].any() and x[first:last].all() and not x[last:].any()


@pytest.mark.parametrize("fmt,layout", [("s16", "stereo"), ("fltp", "stereo"), ("flt", "mono"), ("s16p", "mono")])
def test_silence_and_split_keep_every_format(fmt, layout):
    f = block(1000, 1000, fmt, layout)
    z = silence(f, [(10, 20), (990, 1000)])
    x = loud(z)
    assert not x[10:20].any() and not x[990:].any() and x[:10].all() and x[20:990].all()
    assert (z.format.name, z.layout.name, z.sample_rate, z.samples) == (fmt, layout, RATE, 1000)
    head, tail = split(f, 300)
    assert (head.samples, tail.samples) == (300, 700) and loud(head).all() and loud(tail).all()


def test_a_press_in_the_post_roll_extends_and_a_new_event_is_a_boundary():
    gate = AudioGate(pre_event=False, boot_id="b", now_ns=Now(0))
    gate.open_event(1 * S, 3 * S)
    gate.open_event(2 * S, 4 * S)  # within: one event to 4 s
    gate.open_event(6 * S, 7 * S)
    assert gate._windows == [(1 * S, 4 * S), (6 * S, 7 * S)]


def test_mute_rules():
    now = Now(0)
    gate = AudioGate(pre_event=False, boot_id="b", now_ns=now)
    gate.begin(0)
    # Outside an event with pre_event off: refused (nothing is recorded; it must not reach the next event).
    refused = gate.set_muted(True)
    assert not refused.muted and "no event is open" in refused.refused and not gate.muted()
    gate.open_event(1 * S, 5 * S)
    now.t = 2 * S
    assert gate.set_muted(True).muted and gate.muted() and gate.off_now() == "muted"
    now.t = 3 * S
    gate.set_muted(False)
    now.t = 3 * S + S // 2
    gate.set_muted(True)  # muted again, and forgotten: the event's end clears it
    x = feed(gate, 0, 8.0)
    t = np.arange(len(x)) * S // RATE
    expected = ((t >= 1 * S) & (t < 2 * S)) | ((t >= 3 * S) & (t < 3 * S + S // 2))
    assert (x == expected).all()
    now.t = 8 * S
    assert not gate.muted() and gate.off_now() == "pre-event"


def test_with_pre_event_a_mute_outside_an_event_holds_until_the_next_event_opens():
    now = Now(0)
    gate = AudioGate(pre_event=True, boot_id="b", now_ns=now)
    gate.begin(0)
    now.t = S
    assert gate.set_muted(True).muted
    gate.open_event(2 * S, 3 * S)  # a press: the event starts with sound
    x = feed(gate, 0, 4.0)
    t = np.arange(len(x)) * S // RATE
    assert (x == ~((t >= S) & (t < 2 * S))).all()


def test_spans_are_written_at_switches_only_and_survive_a_restart(tmp_path: Path):
    idx = Index(tmp_path / "index.sqlite")
    now = Now(0)
    gate = AudioGate(pre_event=False, boot_id="b", now_ns=now, index=idx)
    gate.begin(0)
    gate.open_event(1 * S, 2 * S)
    feed(gate, 0, 1.5)
    assert [(g.start_mono_ns, g.end_mono_ns, g.reason) for g in idx.audio_gaps("b", 0, 10 * S)] == [
        (0, 1 * S, "pre-event")
    ]
    feed(gate, 3 * S // 2, 1.0)
    assert idx.audio_gaps("b", 0, 10 * S)[-1].end_mono_ns is None  # open: still being recorded
    # A restart in the same boot: the open span ends where the new run starts.
    again = AudioGate(pre_event=True, boot_id="b", now_ns=now, index=idx)
    again.begin(5 * S)
    spans = [(g.start_mono_ns, g.end_mono_ns, g.reason) for g in idx.audio_gaps("b", 0, 10 * S)]
    assert spans == [(0, 1 * S, "pre-event"), (2 * S, 5 * S, "pre-event")]
    assert idx.audio_known_from("b") == 0 and idx.audio_known_from("other") is None
    assert gate.switches == 2


def seg(seq: int, boot: str, start: int, audio_packets: int = 100) -> Segment:
    return Segment(
        seq, f"{seq}.webm", "final", boot, start, start, True, 10 * S, 1, 100, audio_packets, "x", "", start, False
    )


def part(number: int, start: int, seconds: int, seqs: tuple[int, ...], wall_offset: int = 0) -> PlacedPart:
    p = ClipPart(number, Path(f"p{number}.webm"), start, seconds * 1000, 1, "x", seqs, False)
    return PlacedPart(p, start + wall_offset)


def test_manifest_audio_section(tmp_path: Path):
    idx = Index(tmp_path / "index.sqlite")
    idx.audio_kept_from("b", 0)
    idx.audio_switch("b", 0, "pre-event")
    idx.audio_switch("b", 5 * S, None)
    idx.audio_switch("b", 12 * S, "muted")  # across the part boundary at 10 s
    idx.audio_switch("b", 14 * S, None)
    segs = [seg(1, "b", 0), seg(2, "b", 10 * S)]
    parts = [part(1, 2 * S, 8, (1,)), part(2, 10 * S, 10, (2,))]
    audio = audio_manifest(idx, parts, segs)
    assert audio["recorded"] == "partial" and audio["not_recorded_ms"] == 5_000
    assert [(s["reason"], s["start_ms"], s["end_ms"]) for s in audio["not_recorded"]] == [
        ("pre-event", 0, 3_000),
        ("muted", 10_000, 12_000),
    ]
    # A span across two parts is listed once.
    idx.audio_switch("b", 9 * S, "muted")
    idx.audio_switch("b", 11 * S, None)
    spans = audio_manifest(idx, parts, segs)["not_recorded"]
    assert ("muted", 7_000, 9_000) in [(s["reason"], s["start_ms"], s["end_ms"]) for s in spans]
    # Footage of a boot whose spans were never kept: unknown, not "recorded".
    assert audio_manifest(idx, [part(1, 0, 8, (3,))], [seg(3, "old", 0)])["recorded"] == "unknown"
    # No audio track at all.
    assert audio_manifest(idx, parts, [seg(1, "b", 0, 0), seg(2, "b", 10 * S, 0)])["recorded"] == "none"


def test_mute_command_arguments_are_checked():
    calls = []
    handlers = {"mute": lambda req: calls.append(req) or {"muted": True}}
    assert answer(b'{"cmd": "mute"}', handlers)["ok"]
    assert answer(b'{"cmd": "mute", "set": "on"}', handlers)["ok"]
    for bad in (b'{"cmd": "mute", "set": "maybe"}', b'{"cmd": "mute", "set": 1}', b'{"cmd": "mute", "x": "on"}'):
        out = answer(bad, handlers)
        assert not out["ok"] and "mute" in out["error"], out
    assert len(calls) == 2


@pytest.mark.parametrize("fmt,layout", [("s16", "stereo"), ("fltp", "stereo"), ("s16p", "mono")])
def test_silence_is_one_step_alternating_the_same_on_every_channel(fmt, layout):
    """Not exact zeros (libopus codes those at twice the CPU of sound): +1, -1, ... 16-bit steps."""
    z = silence(block(8, 1, fmt, layout), [(0, 8)])
    step = 2.0**-15 if fmt.startswith("flt") else 1
    arr = z.to_ndarray().astype(np.float64)
    per_channel = arr if z.format.is_planar else arr.reshape(-1, z.layout.nb_channels).T
    for channel in per_channel:
        assert list(channel) == [step, -step] * 4


ALL_FORMATS = [
    (f, layout) for f in ("u8", "s16", "s32", "flt", "dbl") for f in (f, f + "p") for layout in ("mono", "stereo")
]


@pytest.mark.parametrize("fmt,layout", ALL_FORMATS)
def test_silence_and_split_are_exact_in_every_sample_format(fmt, layout):
    """The gate works on bytes (no numpy on the recording's path): checked here against numpy, sample
    by sample, for every format PyAV's arrays take (all but s64): samples outside the ranges untouched, inside them the
    alternating step counted from sample 0 (u8: its zero, 128), and a split that loses nothing."""
    n, channels = 101, 2 if layout == "stereo" else 1
    dtype = av.AudioFormat(fmt).packed.name
    numpy_dtype = {
        "u8": np.uint8,
        "s16": np.int16,
        "s32": np.int32,
        "flt": np.float32,
        "dbl": np.float64,
        "s64": np.int64,
    }[dtype]
    rng = np.random.default_rng(7)
    rows, width = (channels, n) if fmt.endswith("p") else (1, n * channels)
    arr = rng.integers(1, 100, (rows, width)).astype(numpy_dtype)
    f = av.AudioFrame.from_ndarray(arr, format=fmt, layout=layout)
    f.sample_rate = RATE
    ranges = [(3, 8), (50, 51), (97, 101)]  # odd and even starts, one sample, to the end
    got = silence(f, ranges).to_ndarray()
    want = arr.copy()
    per_sample = want if fmt.endswith("p") else want.reshape(1, n, channels)
    step = {"u8": 0, "s16": 1, "s32": 1 << 16, "flt": 2.0**-15, "dbl": 2.0**-15, "s64": 1 << 48}[dtype]
    for start, stop in ranges:
        for i in range(start, stop):
            per_sample[:, i, ...] = 128 if dtype == "u8" else (step if i % 2 == 0 else -step)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(silence(f, []).to_ndarray(), arr), "no range: the frame as it is"
    whole = silence(f, [(0, n)])
    assert whole is silence(f, [(0, n)]), "a wholly silent block is made once and shared"
    head, tail = split(f, 40)
    assert (head.samples, tail.samples, head.sample_rate, tail.format.name) == (40, n - 40, RATE, fmt)
    joined = np.concatenate([head.to_ndarray(), tail.to_ndarray()], axis=1)
    assert np.array_equal(joined, arr)
