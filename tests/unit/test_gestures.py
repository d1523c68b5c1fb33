"""Button gestures and their acknowledgements, at real timings on gpiozero's MockFactory pins.

The rules are tested twice: ``GestureReader`` with explicit times (exact, instant), then the real
``GestureButton`` driven like a thumb would (presses of ~0.1 s, a double press inside the window, a
long press past the hold time), with the default ``[gpio]`` timings. A test waits for an action, never
sleeps and asserts; "exactly once" is shown by a different gesture afterwards: any late duplicate of
the first would be decided before the second's edges, so the whole list is compared.

Feedback patterns are read back from the mock pins' state history and compared by shape (how many
pulses, each short / medium / long, in order), not by milliseconds, so a loaded machine passes.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

from edged.app.gpio import (
    Ack,
    Feedback,
    GestureButton,
    GestureReader,
    Timings,
    ack_pattern,
    perform,
    reader_of,
    toggle_ack,
)
from edged.config.schema import ConfigError, GpioSettings, from_mapping
from tests.support import wait_until
from tests.support.gpio import classify, pulse_lengths, shape

DEFAULTS = GpioSettings()
WINDOW = DEFAULTS.double_press_ms / 1000
HOLD = DEFAULTS.long_press_ms / 1000
SHORT = 0.1  # a thumb's short press


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


# --- shapes on the pins -------------------------------------------------------------------------------


def planned_shape(steps, output: int) -> list[str]:
    """The shape an acknowledgement's steps give on one output (0: LED, 1: buzzer)."""
    out, run = [], 0.0
    for step in steps:
        if step[output]:
            run += step[2]
        elif run:
            out.append(classify(run))
            run = 0.0
    return out + ([classify(run)] if run else [])


STROBES = ["S"] * round(Timings().panic / (2 * Timings().strobe))
EXPECTED = {  # (LED, buzzer), the docstring's table
    Ack.MARK: (["S", "S", "S"], ["S"]),
    Ack.MUTE_ON: (["M", "M"], ["M", "M"]),
    Ack.MUTE_OFF: (["M", "M", "M"], ["M", "M", "M"]),
    Ack.PANIC_ON: (STROBES, ["XL"]),
    Ack.PANIC_OFF: (["L", "L"], ["L", "L"]),
    Ack.REFUSED: (["L"], ["L"]),
}


def played(fb: Feedback, led, buzzer, ack: Ack | None = None, act=None, timeout: float = 10):
    """Clear the histories, start an acknowledgement (or ``act()``), wait for it to end: the shapes."""
    led.clear_states()
    buzzer.clear_states()
    if ack is not None:
        fb.acknowledge(ack)
    if act is not None:
        act()
    wait_until(lambda: not fb.acknowledging, timeout, "the acknowledgement to end")
    return shape(led), shape(buzzer)


# --- the rules, with explicit times -------------------------------------------------------------------


def test_reader_decides_each_gesture_at_the_right_time():
    r = GestureReader("panic", "mute", double_window_s=0.4, hold_s=2.0)
    # short press: decided only when the window after the release has passed
    assert r.press(0.0) == [] and r.release(0.1) == []
    assert r.due() == pytest.approx(0.5)
    assert r.advance(0.49) == [] and r.advance(0.5) == ["mark"] and r.due() is None
    # double press: the second press acts at once, its release does nothing
    assert r.press(1.0) == [] and r.release(1.1) == [] and r.press(1.3) == ["panic"]
    assert r.advance(10.0) == [] and r.release(10.0) == []
    # long press: acts at the hold time while held; the release does nothing
    assert r.press(20.0) == [] and r.advance(21.99) == [] and r.advance(22.0) == ["mute"]
    assert r.release(23.0) == [] and r.advance(30.0) == []
    # a press after the window is a new gesture, even when the timer was late: the edge decides first
    assert r.press(40.0) == [] and r.release(40.1) == []
    assert r.press(40.6) == ["mark"] and r.release(40.7) == [] and r.advance(41.1) == ["mark"]


def test_reader_without_double_press_marks_at_release_and_without_gestures_at_press():
    r = GestureReader("none", "mute", 0.4, 2.0)
    assert r.press(0.0) == [] and r.release(0.1) == ["mark"]
    assert r.press(0.2) == [] and r.release(0.3) == ["mark"], "two quick presses are two marks"
    plain = GestureReader("mark", "none", 0.4, 2.0)  # "mark" and "none": the gesture is an ordinary press
    assert plain.press(0.0) == ["mark"] and plain.due() is None
    assert plain.advance(100.0) == [] and plain.release(100.0) == []


def test_a_held_second_press_is_still_the_double_press():
    r = GestureReader("mute", "panic", 0.4, 2.0)
    assert r.press(0.0) == [] and r.release(0.1) == [] and r.press(0.3) == ["mute"]
    assert r.advance(5.0) == [], "no long press on top"


# --- the button at real timings -----------------------------------------------------------------------


class Actions:
    """on_action for the button: each action with the monotonic time it arrived."""

    def __init__(self, fail: str = "") -> None:
        self.got: list[tuple[str, float]] = []
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, action: str) -> None:
        with self._lock:
            self.got.append((action, time.monotonic()))
        if action == self.fail:
            raise RuntimeError(f"{action} failed")

    @property
    def names(self) -> list[str]:
        with self._lock:
            return [a for a, _ in self.got]

    def wait(self, n: int, timeout: float = 10) -> tuple[str, float]:
        wait_until(lambda: len(self.got) >= n, timeout, f"{n} button action(s), got {self.names}")
        return self.got[n - 1]


def press(pin, hold: float) -> tuple[float, float]:
    """A press on a pull-up wired button (low: pressed) held ``hold`` s: (pressed at, released at),
    each taken just before the edge (the mock pin runs the callback inside ``drive_*``)."""
    down = time.monotonic()
    pin.drive_low()
    time.sleep(hold)
    up = time.monotonic()
    pin.drive_high()
    return down, up


def double(pin) -> float:
    """Two short presses 0.15 s apart, well inside the window: when the second press came."""
    press(pin, SHORT)
    time.sleep(0.15)
    second = time.monotonic()
    pin.drive_low()
    time.sleep(SHORT)
    pin.drive_high()
    return second


def button(factory, actions: Actions, **gpio) -> tuple[GestureButton, object]:
    s = GpioSettings(**gpio)
    b = GestureButton("GPIO17", True, s.button_bounce_ms, actions, reader_of(s), pin_factory=factory)
    return b, factory.pin(17)


def test_defaults_short_press_marks_at_release_and_a_long_press_mutes_while_held(factory):
    actions = Actions()
    b, pin = button(factory, actions)
    _, released = press(pin, SHORT)
    action, at = actions.wait(1)
    assert action == "mark" and at >= released, "marked at the release, not at the press"
    down = time.monotonic()
    pin.drive_low()
    action, at = actions.wait(2, timeout=HOLD + 10)  # still held
    pin.drive_high()
    assert action == "mute" and at >= down + HOLD
    press(pin, SHORT)  # a different gesture after: nothing else came in between
    actions.wait(3)
    assert actions.names == ["mark", "mute", "mark"], "one action per gesture, none at a long press's release"
    b.close()


def test_with_a_double_press_the_mark_waits_for_the_window(factory):
    actions = Actions()
    b, pin = button(factory, actions, double_press="panic")
    _, released = press(pin, SHORT)
    action, at = actions.wait(1)
    assert action == "mark" and at >= released + WINDOW
    second = double(pin)
    action, at = actions.wait(2)
    assert action == "panic" and at >= second
    press(pin, HOLD + 0.2)
    actions.wait(3)
    assert actions.names == ["mark", "panic", "mute"]
    b.close()


def test_contact_bounce_is_never_a_double_press(factory):
    actions = Actions()
    b, pin = button(factory, actions, double_press="panic", button_bounce_ms=50)
    for _ in range(3):  # press, the contacts chattering
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    time.sleep(SHORT)
    pin.drive_high()  # release, chattering
    pin.drive_low()
    pin.drive_high()
    assert actions.wait(1)[0] == "mark"
    press(pin, HOLD + 0.2)
    actions.wait(2)
    assert actions.names == ["mark", "mute"], "one mark, no panic"
    b.close()


def test_a_tap_shorter_than_the_bounce_time_is_a_short_press_not_a_long_one(factory):
    actions = Actions()
    b, pin = button(factory, actions, double_press="panic", button_bounce_ms=50)
    pin.drive_low()
    pin.drive_high()  # within the bounce time: ignored as an edge, taken when the line is read after it
    assert actions.wait(1)[0] == "mark"
    double(pin)
    actions.wait(2)
    assert actions.names == ["mark", "panic"], "not a mute after the hold time"
    b.close()


def test_no_gestures_marks_at_the_press_itself(factory):
    actions = Actions()
    b, pin = button(factory, actions, long_press="none")
    pin.drive_low()
    assert actions.names == ["mark"], "decided in the press's own callback"
    time.sleep(HOLD)  # held past the long-press time: nothing more
    pin.drive_high()
    press(pin, SHORT)
    actions.wait(2)
    assert actions.names == ["mark", "mark"]
    b.close()


def test_a_failing_timed_action_does_not_stop_the_button(factory, caplog):
    actions = Actions(fail="mute")
    b, pin = button(factory, actions, long_press_ms=500)
    with caplog.at_level(logging.ERROR, logger="edged.gpio"):
        press(pin, 0.7)
        actions.wait(1)
        press(pin, SHORT)
        actions.wait(2)
    assert actions.names == ["mute", "mark"]
    assert "button action mute failed" in caplog.text
    b.close()


# --- acknowledgements ---------------------------------------------------------------------------------


def test_every_acknowledgement_is_told_apart_by_the_led_alone_and_by_the_buzzer_alone():
    t = Timings()
    for output in (0, 1):
        shapes = {ack: tuple(planned_shape(ack_pattern(ack, t), output)) for ack in Ack}
        assert len(set(shapes.values())) == len(Ack), shapes
        assert shapes == {ack: tuple(EXPECTED[ack][output]) for ack in Ack}


@pytest.mark.parametrize("ack", list(Ack))
def test_acknowledgement_pattern_on_the_pins(factory, ack):
    fb = Feedback("GPIO27", "GPIO5", pin_factory=factory)
    led, buzzer = factory.pin(27), factory.pin(5)
    got_led, got_buzzer = played(fb, led, buzzer, ack)
    fb.close()
    want_led, want_buzzer = EXPECTED[ack]
    assert got_buzzer == want_buzzer, pulse_lengths(buzzer)
    if ack is Ack.PANIC_ON:  # a late wake-up may merge two 0.05 s strobes: count loosely
        assert len(got_led) >= len(STROBES) // 2 and set(got_led) == {"S"}, pulse_lengths(led)
    else:
        assert got_led == want_led, pulse_lengths(led)
    assert not led.state and not buzzer.state


def test_acknowledgements_play_in_order_each_whole(factory):
    fb = Feedback("GPIO27", "GPIO5", pin_factory=factory)
    led, buzzer = factory.pin(27), factory.pin(5)

    def two() -> None:
        fb.acknowledge(Ack.MUTE_ON)
        fb.acknowledge(Ack.REFUSED)

    got_led, got_buzzer = played(fb, led, buzzer, act=two)
    fb.close()
    assert got_led == ["M", "M", "L"] and got_buzzer == ["M", "M", "L"], pulse_lengths(led)


def test_panic_starts_at_once_and_hides_the_mark_it_brings(factory):
    fb = Feedback("GPIO27", "GPIO5", pin_factory=factory)
    led, buzzer = factory.pin(27), factory.pin(5)

    def panic() -> None:
        fb.acknowledge(Ack.MUTE_OFF)  # playing
        fb.acknowledge(Ack.REFUSED)  # waiting: dropped by the panic
        fb.acknowledge(Ack.PANIC_ON)
        fb.acknowledge(Ack.MARK)  # the panic's own event: not shown

    _, got_buzzer = played(fb, led, buzzer, act=panic)
    fb.close()
    assert got_buzzer[-1:] == ["XL"] and len(got_buzzer) <= 2, pulse_lengths(buzzer)


# --- dispatch -----------------------------------------------------------------------------------------


def refuse() -> bool:
    raise RuntimeError("no event is open")


@pytest.mark.parametrize(
    ("action", "run", "want", "log_text"),
    [
        ("mute", None, ["L"], "mute is not available in this build: refused"),
        ("panic", refuse, ["L"], "panic refused: RuntimeError: no event is open"),
        ("mute", lambda: True, ["M", "M"], ""),
        ("mute", lambda: False, ["M", "M", "M"], ""),
        ("panic", lambda: False, ["L", "L"], ""),
        ("mute", lambda: "muted", ["L"], "not its new on/off state"),
    ],
    ids=["absent", "refused", "mute on", "mute off", "panic off", "not a bool"],
)
def test_perform_acknowledges_what_the_action_did(factory, caplog, action, run, want, log_text):
    fb = Feedback("", "GPIO5", pin_factory=factory)  # a vibration motor only
    buzzer = factory.pin(5)
    buzzer.clear_states()
    with caplog.at_level(logging.WARNING, logger="edged.gpio"):
        perform(action, run, fb)
    wait_until(lambda: not fb.acknowledging, 10, "the acknowledgement to end")
    fb.close()
    assert shape(buzzer) == want, pulse_lengths(buzzer)
    assert log_text in caplog.text


def test_perform_leaves_a_marks_acknowledgement_to_the_mark(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory)
    calls = []
    perform("mark", lambda: calls.append(1), fb)
    assert calls == [1] and not fb.acknowledging  # EventManager.on_mark acknowledges every mark
    fb.close()


def test_toggle_acks():
    assert toggle_ack("mute", True) is Ack.MUTE_ON and toggle_ack("panic", True) is Ack.PANIC_ON
    assert toggle_ack("mute", False) is Ack.MUTE_OFF and toggle_ack("panic", False) is Ack.PANIC_OFF


# --- config -------------------------------------------------------------------------------------------


def test_gesture_defaults():
    assert (DEFAULTS.double_press, DEFAULTS.long_press) == ("none", "mute")
    assert (DEFAULTS.double_press_ms, DEFAULTS.long_press_ms) == (400, 2000)


@pytest.mark.parametrize(
    ("gpio", "key", "reason"),
    [
        ({"double_press": "sos"}, "gpio.double_press", "must be one of mark, panic, mute, none"),
        ({"long_press": 1}, "gpio.long_press", ""),
        ({"double_press_ms": 100}, "gpio.double_press_ms", "at least 150"),
        ({"double_press_ms": 5000}, "gpio.double_press_ms", "at most 1000"),
        ({"long_press_ms": 60_000}, "gpio.long_press_ms", "at most 10000"),
        ({"button_bounce_ms": 400}, "gpio.double_press_ms", "longer than gpio.button_bounce_ms (400)"),
        ({"button_bounce_ms": 900, "double_press_ms": 1000, "long_press_ms": 800}, "gpio.long_press_ms", "longer"),
    ],
)
def test_gesture_config_errors_name_the_key(tmp_path, gpio, key, reason):
    with pytest.raises(ConfigError) as err:
        from_mapping({"storage": {"dir": str(tmp_path)}, "gpio": gpio}, origin="<test>")
    assert any(k == key and reason in r for k, r in err.value.problems), err.value.problems
