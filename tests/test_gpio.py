"""Button, LED and buzzer through gpiozero's real Button/LED/Buzzer on its MockFactory pins.

MockPin records every state change with the time since the previous one (``pin.states``) and calls
the device's callback synchronously from ``drive_low``/``drive_high``; it stores a bounce time but
does not apply it, which is why GestureButton debounces by itself as well.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import pytest
from gpiozero import Button, Device
from gpiozero.pins.mock import MockFactory

from edged.app.gpio import (
    CLOCK_UNSYNCED,
    FAULT,
    HEARTBEAT,
    OFF,
    UPLOADS_PENDING,
    DeviceState,
    Feedback,
    GestureButton,
    GpioError,
    Timings,
    from_settings,
    mode_for,
)
from edged.config.schema import GpioSettings

# Short patterns; every check below keeps a wide margin against scheduling jitter.
T = Timings(
    period=0.3,
    flash=0.03,
    double_gap=0.05,
    long_flash=0.15,
    fault_flash=0.025,
    ack_flash=0.02,
    ack_pause=0.12,
    reminder=0.25,
    beep=0.03,
)
WELL = DeviceState(recording=True, fault=False, clock_synced=True, uploads_pending=0)
IDLE = DeviceState(recording=False, fault=False, clock_synced=True, uploads_pending=0)
FAULTY = DeviceState(recording=True, fault=True, clock_synced=False, uploads_pending=3)  # fault wins
UNSYNCED = DeviceState(recording=True, fault=False, clock_synced=False, uploads_pending=0)
UPLOADING = DeviceState(recording=True, fault=False, clock_synced=True, uploads_pending=2)


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def no_default_factory(monkeypatch):
    """gpiozero with no global factory and one that cannot be loaded if anything asks for it."""
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-factory")


def changes(pin) -> list[tuple[float, bool]]:
    """(seconds since the history was cleared, new state) of every change the pin recorded."""
    t, out = 0.0, []
    for st in pin.states[1:]:
        t += st.timestamp
        out.append((t, bool(st.state)))
    return out


def rising(pin) -> list[float]:
    return [t for t, on in changes(pin) if on]


def on_times(pin) -> list[float]:
    """How long each completed 'on' lasted."""
    out, since = [], None
    for t, on in changes(pin):
        if on:
            since = t
        elif since is not None:
            out.append(t - since)
            since = None
    return out


def intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def watch(fb: Feedback, pin, state: DeviceState, seconds: float):
    pin.clear_states()
    fb.show(state)
    time.sleep(seconds)


# --- the button -------------------------------------------------------------------------------------


def test_press_marks_once_and_release_does_not(factory):
    presses = []
    button = GestureButton("GPIO17", pull_up=True, bounce_ms=0, on_action=presses.append, pin_factory=factory)
    pin = factory.pin(17)
    assert pin.pull == "up" and presses == []
    pin.drive_low()
    time.sleep(0.02)
    assert presses == ["mark"]
    pin.drive_high()
    time.sleep(0.02)
    assert presses == ["mark"]
    button.close()


def test_pull_down_wiring_presses_on_high(factory):
    presses = []
    button = GestureButton("GPIO22", pull_up=False, bounce_ms=0, on_action=presses.append, pin_factory=factory)
    pin = factory.pin(22)
    assert pin.pull == "down"
    pin.drive_high()
    time.sleep(0.02)
    assert presses == ["mark"]
    pin.drive_low()  # release
    time.sleep(0.02)
    assert presses == ["mark"]
    button.close()


def test_contact_bounce_makes_one_mark(factory):
    presses = []
    button = GestureButton("GPIO17", pull_up=True, bounce_ms=50, on_action=presses.append, pin_factory=factory)
    pin = factory.pin(17)
    assert pin.bounce == pytest.approx(0.05)  # handed to the pin driver as well
    for _ in range(3):  # press, with the contacts chattering
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    assert presses == ["mark"]
    time.sleep(0.1)  # held
    pin.drive_high()  # release, chattering: the low in between is not a press
    pin.drive_low()
    pin.drive_high()
    assert presses == ["mark"]
    time.sleep(0.1)
    pin.drive_low()  # a real second press
    assert presses == ["mark", "mark"]
    button.close()


def test_without_bounce_time_every_edge_is_a_press(factory):
    presses = []
    button = GestureButton("GPIO17", pull_up=True, bounce_ms=0, on_action=presses.append, pin_factory=factory)
    pin = factory.pin(17)
    for _ in range(3):
        pin.drive_low()
        pin.drive_high()
    assert presses == ["mark"] * 3
    button.close()


def test_a_failing_mark_does_not_break_the_button(factory):
    calls = []

    def busy(action: str) -> None:
        calls.append(1)
        raise RuntimeError("daemon busy")

    button = GestureButton("GPIO17", pull_up=True, bounce_ms=0, on_action=busy, pin_factory=factory)
    pin = factory.pin(17)
    for _ in range(2):
        pin.drive_low()
        pin.drive_high()
    assert calls == [1, 1]
    button.close()


def test_board_and_lower_case_pin_names(factory):
    presses = []
    a = GestureButton(
        "BOARD11", pull_up=True, bounce_ms=0, on_action=lambda _: presses.append("a"), pin_factory=factory
    )
    b = GestureButton("gpio22", pull_up=True, bounce_ms=0, on_action=lambda _: presses.append("b"), pin_factory=factory)
    factory.pin(17).drive_low()  # physical pin 11 is GPIO17
    factory.pin(22).drive_low()
    assert presses == ["a", "b"]
    factory.pin(17).drive_high()  # released: closing a held Button waits for its hold thread
    factory.pin(22).drive_high()
    a.close()
    b.close()


def test_close_releases_the_pin(factory):
    button = GestureButton("GPIO17", pull_up=True, bounce_ms=0, on_action=lambda _: None, pin_factory=factory)
    button.close()
    Button("GPIO17", pin_factory=factory).close()  # would raise GPIOPinInUse if still reserved


# --- the LED ----------------------------------------------------------------------------------------


def test_mode_priorities():
    assert mode_for(WELL) == HEARTBEAT
    assert mode_for(UNSYNCED) == CLOCK_UNSYNCED
    assert mode_for(UPLOADING) == UPLOADS_PENDING
    assert mode_for(DeviceState(True, False, False, 3)) == CLOCK_UNSYNCED
    assert mode_for(FAULTY) == FAULT
    assert mode_for(DeviceState(False, True, True, 0)) == FAULT  # a fault shows even when not recording
    assert mode_for(IDLE) == OFF


def test_heartbeat_is_a_short_flash_every_period(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    watch(fb, led, WELL, 3.5 * T.period)
    fb.close()
    ups = rising(led)
    assert len(ups) == 4, changes(led)
    assert ups[0] < 0.05, "the pattern starts at once"
    assert all(abs(i - T.period) < 0.3 * T.period for i in intervals(ups)), intervals(ups)
    assert all(d < 2.5 * T.flash for d in on_times(led)), on_times(led)


def test_fault_flickers_much_faster_than_the_heartbeat(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    watch(fb, led, FAULTY, 2 * T.period)
    fault = intervals(rising(led))
    watch(fb, led, WELL, 2.5 * T.period)
    heartbeat = intervals(rising(led))
    fb.close()
    assert len(fault) >= 8 and heartbeat
    assert statistics.median(fault) == pytest.approx(2 * T.fault_flash, rel=0.4)
    assert max(fault) < min(heartbeat) / 3


def test_clock_not_synchronised_is_a_double_blink(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    watch(fb, led, UNSYNCED, 2.5 * T.period)
    fb.close()
    gaps = intervals(rising(led))  # pair, pause, pair, pause, pair
    assert len(gaps) == 5, changes(led)
    short, long = gaps[0::2], gaps[1::2]
    assert all(abs(g - (T.flash + T.double_gap)) < 0.04 for g in short), gaps
    assert all(g > 2 * max(short) for g in long), gaps
    assert all(d < 2.5 * T.flash for d in on_times(led))


def test_uploads_pending_is_a_long_pulse(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    watch(fb, led, UPLOADING, 2.5 * T.period)
    fb.close()
    assert len(rising(led)) == 3
    assert all(d == pytest.approx(T.long_flash, abs=0.05) for d in on_times(led)), on_times(led)
    assert min(on_times(led)) > 3 * T.flash


def test_not_recording_is_dark(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    watch(fb, led, FAULTY, 0.1)
    watch(fb, led, IDLE, 0.02)
    assert led.state is False or led.state == 0
    watch(fb, led, IDLE, 1.5 * T.period)
    assert rising(led) == []
    fb.close()


@pytest.mark.parametrize(
    "states", [[WELL], [UPLOADING, DeviceState(True, False, True, 7)]], ids=["same state", "same pattern"]
)
def test_show_every_few_ms_does_not_restart_the_pattern(factory, states):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    led.clear_states()
    end = time.monotonic() + 2.5 * T.period
    i = 0
    while time.monotonic() < end:  # a restart would light the LED at each call
        fb.show(dataclasses.replace(states[i % len(states)]))  # an equal state, not the same object
        i += 1
        time.sleep(0.01)
    fb.close()
    ups = rising(led)
    assert len(ups) == 3, changes(led)
    assert all(abs(g - T.period) < 0.3 * T.period for g in intervals(ups)), intervals(ups)


def test_mark_acknowledged_with_three_fast_blinks_then_the_pattern_again(factory):
    fb = Feedback("GPIO27", "GPIO5", pin_factory=factory, timings=T)
    led, buzzer = factory.pin(27), factory.pin(5)
    fb.show(WELL)
    time.sleep(0.2)  # two thirds into the heartbeat's dark phase
    led.clear_states()
    buzzer.clear_states()
    fb.acknowledge_mark()
    time.sleep(5 * T.ack_flash + T.ack_pause + 0.1)
    fb.close()
    ups = rising(led)
    assert len(ups) == 4, changes(led)
    burst, resumed = ups[:3], ups[3]
    assert burst[0] < 0.02 and burst[2] - burst[0] == pytest.approx(4 * T.ack_flash, abs=0.03)
    # a dark pause, then the heartbeat from its start (its old phase would stay dark another 0.18 s)
    assert resumed - burst[0] == pytest.approx(5 * T.ack_flash + T.ack_pause, abs=0.04), ups
    assert on_times(led)[3] == pytest.approx(T.flash, abs=0.02), "a heartbeat flash, not a fourth ack blink"
    assert len(rising(buzzer)) == 1, "one beep"


def test_acknowledge_while_idle_blinks_and_goes_dark_again(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    fb.show(IDLE)
    led.clear_states()
    fb.acknowledge_mark()
    time.sleep(6 * T.ack_flash + T.ack_pause + T.period)
    assert len(rising(led)) == 3 and not led.state
    fb.close()


# --- the buzzer -------------------------------------------------------------------------------------


def test_fault_beeps_once_a_period_and_a_healthy_recording_is_silent(factory):
    fb = Feedback("GPIO27", "GPIO5", pin_factory=factory, timings=T)
    buzzer = factory.pin(5)
    watch(fb, buzzer, FAULTY, 2.5 * T.period)
    beeps = rising(buzzer)
    watch(fb, buzzer, WELL, 2 * T.period)
    silent = rising(buzzer)
    fb.close()
    assert len(beeps) == 3 and all(abs(g - T.period) < 0.3 * T.period for g in intervals(beeps)), beeps
    assert silent == []


def test_periodic_beep_while_an_event_is_open(factory):
    fb = Feedback("", "GPIO5", pin_factory=factory, timings=T)  # vibration motor only, no LED
    buzzer = factory.pin(5)
    fb.show(WELL)
    watch(fb, buzzer, DeviceState(True, False, True, 0, event_open=True), 3.4 * T.reminder)
    beeps = rising(buzzer)
    assert len(beeps) == 3 and beeps[0] == pytest.approx(T.reminder, abs=0.05), beeps
    assert all(d < 2.5 * T.beep for d in on_times(buzzer))
    watch(fb, buzzer, WELL, 1.5 * T.reminder)  # event closed
    assert rising(buzzer) == []
    fb.close()
    assert not buzzer.state


# --- absent and unusable pins -------------------------------------------------------------------------


def test_absent_pins_never_touch_gpiozero(no_default_factory):
    button, fb = from_settings(GpioSettings(), on_action=lambda _: None)
    assert button is None
    fb.show(FAULTY)
    fb.acknowledge_mark()
    fb.close()
    fb.close()
    assert Device.pin_factory is None


def test_bad_pin_names_the_config_key(factory):
    with pytest.raises(GpioError, match=r"^gpio\.button_pin: 'GPIO999' cannot be used: PinInvalidPin"):
        GestureButton("GPIO999", pull_up=True, bounce_ms=0, on_action=lambda _: None, pin_factory=factory)
    with pytest.raises(GpioError, match=r"^gpio\.led_pin: 'NOT_A_PIN'"):
        Feedback("NOT_A_PIN", "", pin_factory=factory)
    with pytest.raises(GpioError, match=r"^gpio\.buzzer_pin: 'BOARD1' .*not a GPIO pin"):  # 3V3
        Feedback("", "BOARD1", pin_factory=factory)


def test_pin_in_use_names_the_key_and_releases_what_was_opened(factory):
    with pytest.raises(GpioError, match=r"^gpio\.led_pin: .*GPIOPinInUse"):
        from_settings(
            GpioSettings(button_pin="GPIO17", led_pin="BOARD11"), on_action=lambda _: None, pin_factory=factory
        )
    with pytest.raises(GpioError, match=r"^gpio\.buzzer_pin: .*in use"):
        Feedback("GPIO27", "GPIO27", pin_factory=factory)
    Button("GPIO17", pin_factory=factory).close()  # the button opened first was closed again
    Feedback("GPIO27", "", pin_factory=factory).close()


def test_no_pin_factory_is_a_clear_error(no_default_factory):
    with pytest.raises(GpioError, match=r"^gpio\.button_pin: 'GPIO17' is configured but no GPIO driver"):
        from_settings(GpioSettings(button_pin="GPIO17"), on_action=lambda _: None)
    with pytest.raises(GpioError, match=r"^gpio\.led_pin: .*no-such-factory"):
        Feedback("GPIO27", "")


def test_off_a_pi_the_error_gives_gpiozeros_reasons(monkeypatch):
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    try:
        button = GestureButton("GPIO17", pull_up=True, bounce_ms=0, on_action=lambda _: None)
    except GpioError as exc:
        assert str(exc).startswith("gpio.button_pin: 'GPIO17' is configured but no GPIO driver")
        assert "BadPinFactory" in str(exc) and "Falling back from lgpio" in str(exc)
    else:  # a real Pi: gpiozero found a driver
        button.close()
        pytest.skip(f"gpiozero loaded {type(Device.pin_factory).__name__} here")
