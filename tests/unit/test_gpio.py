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
from tests.support import wait_until

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


def watch(fb: Feedback, pin, state: DeviceState, rises: int, timeout: float = 30) -> list[float]:
    """Show ``state`` and wait until ``pin`` has come on ``rises`` times (a state, not a duration:
    a loaded machine only takes longer); the first ``rises`` rising times."""
    pin.clear_states()
    fb.show(state)
    wait_until(lambda: len(rising(pin)) >= rises, timeout, f"{rises} pulses on {pin}")
    return rising(pin)[:rises]


def quiet(fb: Feedback, pin, state: DeviceState, clock_pin, clock_rises: int) -> list[float]:
    """Show ``state``; the rising times ``pin`` had while ``clock_pin`` (another output, or the
    same) came on ``clock_rises`` times: "silent for two periods" measured by the pattern itself."""
    pin.clear_states()
    if clock_pin is not pin:
        clock_pin.clear_states()
    fb.show(state)
    wait_until(lambda: len(rising(clock_pin)) >= clock_rises, 30, f"{clock_rises} pulses on {clock_pin}")
    return rising(pin)


# Scheduling on a loaded machine only ever delays a step: a pattern's intervals are checked
# against generous bounds around the configured time, and patterns against each other by ratio.
def about(seconds: float, nominal: float) -> bool:
    return 0.7 * nominal < seconds < 2.0 * nominal


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
    ups = watch(fb, led, WELL, 4)
    fb.close()
    assert ups[0] < T.period / 2, "the pattern starts at once"
    assert all(about(i, T.period) for i in intervals(ups)), intervals(ups)
    assert all(d < T.period / 3 for d in on_times(led)[:4]), on_times(led)


def test_fault_flickers_much_faster_than_the_heartbeat(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    fault = intervals(watch(fb, led, FAULTY, 9))
    heartbeat = intervals(watch(fb, led, WELL, 3))
    fb.close()
    assert about(statistics.median(fault), 2 * T.fault_flash), fault
    assert statistics.median(fault) < statistics.median(heartbeat) / 3, (fault, heartbeat)


def test_clock_not_synchronised_is_a_double_blink(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    gaps = intervals(watch(fb, led, UNSYNCED, 6))  # pair, pause, pair, pause, pair
    fb.close()
    short, long = gaps[0::2], gaps[1::2]
    assert all(about(g, T.flash + T.double_gap) for g in short), gaps
    assert min(long) > max(short), gaps
    assert all(d < T.period / 3 for d in on_times(led)[:6])


def test_uploads_pending_is_a_long_pulse(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    watch(fb, led, UPLOADING, 3)
    fb.close()
    pulses = on_times(led)[:2]
    assert all(about(d, T.long_flash) for d in pulses), pulses
    assert min(pulses) > 3 * T.flash


def test_not_recording_is_dark(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    watch(fb, led, FAULTY, 2)
    fb.show(IDLE)
    wait_until(lambda: not led.state, 10, "the LED off")
    led.clear_states()
    time.sleep(1.5 * T.period)  # an absence can only be watched for a while
    assert rising(led) == [] and not led.state, changes(led)
    fb.close()


@pytest.mark.parametrize(
    "states", [[WELL], [UPLOADING, DeviceState(True, False, True, 7)]], ids=["same state", "same pattern"]
)
def test_show_every_few_ms_does_not_restart_the_pattern(factory, states):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    led.clear_states()
    i = 0
    while len(rising(led)) < 3:  # a restart would light the LED at each call
        fb.show(dataclasses.replace(states[i % len(states)]))  # an equal state, not the same object
        i += 1
        time.sleep(0.01)
    fb.close()
    ups = rising(led)[:3]
    assert i > 3 * len(ups), "shown many times per pulse"
    assert all(about(g, T.period) for g in intervals(ups)), intervals(ups)


def test_mark_acknowledged_with_three_fast_blinks_then_the_pattern_again(factory):
    fb = Feedback("GPIO27", "GPIO5", pin_factory=factory, timings=T)
    led, buzzer = factory.pin(27), factory.pin(5)
    fb.show(WELL)
    time.sleep(0.2)  # two thirds into the heartbeat's dark phase
    led.clear_states()
    buzzer.clear_states()
    fb.acknowledge_mark()
    wait_until(lambda: len(rising(led)) >= 4, 30, "three blinks and the heartbeat again")
    fb.close()
    ups = rising(led)
    burst, resumed = ups[:3], ups[3]
    assert burst[0] < T.period / 2 and about(burst[2] - burst[0], 4 * T.ack_flash), ups
    # a dark pause, then the heartbeat from its start (a fourth blink would come after 6 x ack_flash;
    # the heartbeat's old phase would stay dark another 0.18 s)
    assert about(resumed - burst[0], 5 * T.ack_flash + T.ack_pause), ups
    assert len(rising(buzzer)) == 1, "one beep"


def test_acknowledge_while_idle_blinks_and_goes_dark_again(factory):
    fb = Feedback("GPIO27", "", pin_factory=factory, timings=T)
    led = factory.pin(27)
    fb.show(IDLE)
    led.clear_states()
    fb.acknowledge_mark()
    wait_until(lambda: len(rising(led)) >= 3, 30, "three blinks")
    time.sleep(T.ack_pause + T.period)  # then dark: an absence, watched for a while
    assert len(rising(led)) == 3 and not led.state, changes(led)
    fb.close()


# --- the buzzer -------------------------------------------------------------------------------------


def test_fault_beeps_once_a_period_and_a_healthy_recording_is_silent(factory):
    fb = Feedback("GPIO27", "GPIO5", pin_factory=factory, timings=T)
    buzzer = factory.pin(5)
    led = factory.pin(27)
    beeps = watch(fb, buzzer, FAULTY, 3)
    silent = quiet(fb, buzzer, WELL, led, 3)  # three heartbeats, no beep
    fb.close()
    assert all(about(g, T.period) for g in intervals(beeps)), beeps
    assert silent == []


def test_periodic_beep_while_an_event_is_open(factory):
    fb = Feedback("", "GPIO5", pin_factory=factory, timings=T)  # vibration motor only, no LED
    buzzer = factory.pin(5)
    fb.show(WELL)
    beeps = watch(fb, buzzer, DeviceState(True, False, True, 0, event_open=True), 3)
    assert about(beeps[0], T.reminder) and all(about(g, T.reminder) for g in intervals(beeps)), beeps
    assert all(d < T.reminder / 3 for d in on_times(buzzer)[:3])
    buzzer.clear_states()
    fb.show(WELL)  # event closed
    time.sleep(1.5 * T.reminder)  # an absence, watched for a while
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
