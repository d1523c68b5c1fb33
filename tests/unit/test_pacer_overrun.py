"""A paced source read late: within its buffer nothing is lost, beyond it the missed slots go."""

from __future__ import annotations

import pytest

from edged.capture import pacing
from edged.capture.pacing import Pacer
from edged.capture.synthetic import SOUND_CARD_BUFFER_FRAMES, SyntheticAudio


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(pacing.time, "monotonic", c.monotonic)
    monkeypatch.setattr(pacing.time, "sleep", c.sleep)
    return c


def test_a_reader_late_within_the_buffer_loses_nothing(clock: FakeClock) -> None:
    p = Pacer(0.1, paced=True, max_late_s=1.0)
    assert p.next_time() == 100.0
    clock.now += 0.9  # the reader was away for 0.9 s: every slot is still handed out, in order
    times = [p.next_time() for _ in range(10)]
    assert times == pytest.approx([100.0 + 0.1 * n for n in range(1, 11)])
    assert p.skipped == 0


def test_a_reader_late_beyond_the_buffer_skips_the_missed_slots(clock: FakeClock) -> None:
    p = Pacer(0.1, paced=True, max_late_s=0.5)
    p.next_time()
    clock.now += 2.0
    t = p.next_time()
    assert t == pytest.approx(102.0, abs=0.1)  # the slot now due, not a two-second-old one
    assert p.skipped == 19


def test_the_synthetic_microphone_holds_what_a_sound_card_holds_for_ffmpeg() -> None:
    a = SyntheticAudio(sample_rate=48_000, paced=True)
    assert a._pacer.max_late_s == pytest.approx(SOUND_CARD_BUFFER_FRAMES / 48_000)
    assert a._pacer.max_late_s > pacing.MAX_LATE_S
