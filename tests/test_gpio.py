"""Button and LED through gpiozero's real devices on its MockFactory pins (no GPIO hardware here)."""

from __future__ import annotations

import time

import pytest
from gpiozero.pins.mock import MockFactory

from edged.config import GpioSettings
from edged.gpio import (CLOCK_UNSYNCED, FAULT, HEARTBEAT, OFF, UPLOADS_PENDING, DeviceState, Feedback, GpioError,
                        MarkButton, from_settings, pattern_for)

WELL = DeviceState(recording=True, fault=False, clock_synced=True, uploads_pending=0)


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


def rising_edges(pin) -> list[float]:
    """Times (s, from the first state) at which the LED pin went high."""
    t, out = 0.0, []
    for st in pin.states[1:]:
        t += st.timestamp
        if st.state:
            out.append(t)
    return out


def test_press_marks_once_release_does_not(factory):
    presses = []
    button = MarkButton("GPIO17", pull_up=True, bounce_ms=0, on_press=lambda: presses.append(1), pin_factory=factory)
    pin = factory.pin(17)
    pin.drive_low()
    time.sleep(0.05)
    pin.drive_high()
    time.sleep(0.05)
    assert presses == [1]
    button.close()


def test_pull_down_wiring(factory):
    presses = []
    button = MarkButton("GPIO22", pull_up=False, bounce_ms=0, on_press=lambda: presses.append(1), pin_factory=factory)
    factory.pin(22).drive_high()
    time.sleep(0.05)
    assert presses == [1]
    button.close()


def test_bounce_time_reaches_the_pin_driver(factory):
    """Debouncing is the pin driver's job (lgpio on a Pi filters edges in the kernel); gpiozero's
    MockPin stores the bounce time but does not simulate it, so what can be checked here is that
    the configured time arrives at the pin."""
    button = MarkButton("GPIO17", pull_up=True, bounce_ms=200, on_press=lambda: None, pin_factory=factory)
    assert factory.pin(17).bounce == pytest.approx(0.2)
    button.close()


def test_a_failing_mark_does_not_break_the_button(factory):
    calls = []

    def flaky() -> None:
        calls.append(1)
        raise RuntimeError("daemon busy")

    button = MarkButton("GPIO17", pull_up=True, bounce_ms=0, on_press=flaky, pin_factory=factory)
    pin = factory.pin(17)
    for _ in range(2):
        pin.drive_low()
        time.sleep(0.05)
        pin.drive_high()
        time.sleep(0.05)
    assert calls == [1, 1]
    button.close()


def test_pattern_priorities():
    assert pattern_for(WELL) == HEARTBEAT
    assert pattern_for(DeviceState(True, False, False, 0)) == CLOCK_UNSYNCED
    assert pattern_for(DeviceState(True, False, True, 3)) == UPLOADS_PENDING
    assert pattern_for(DeviceState(True, True, False, 3)) == FAULT
    assert pattern_for(DeviceState(False, False, True, 0)) == OFF


def test_led_shows_fault_faster_than_heartbeat_and_acknowledges_marks(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory)
    led = factory.pin(27)
    fb.show(DeviceState(True, True, True, 0))  # fault: 0.1 s on / 0.1 s off
    time.sleep(1.0)
    fault_edges = len(rising_edges(led))
    assert fault_edges >= 4
    led.clear_states()
    fb.show(WELL)  # heartbeat: one short blink every 2 s
    time.sleep(1.0)
    assert len(rising_edges(led)) <= 1 < fault_edges
    led.clear_states()
    for _ in range(5):
        fb.show(WELL)  # the same state again and again does not restart the pattern
    time.sleep(0.05)
    assert len(rising_edges(led)) == 0
    fb.acknowledge_mark()
    time.sleep(0.6)
    edges = rising_edges(led)
    assert len(edges) >= 3 and edges[2] - edges[0] < 0.5, "three fast blinks"
    fb.close()


def test_absent_pins_are_a_no_op():
    button, fb = from_settings(GpioSettings(), on_press=lambda: None)
    assert button is None
    fb.show(WELL)
    fb.acknowledge_mark()
    fb.close()


def test_bad_pin_names_the_config_key(factory):
    with pytest.raises(GpioError, match="gpio.button_pin"):
        MarkButton("GPIO999", pull_up=True, bounce_ms=0, on_press=lambda: None, pin_factory=factory)
    with pytest.raises(GpioError, match="gpio.led_pin"):
        Feedback("NOT_A_PIN", "", pin_factory=factory)
