"""The wearer's interface: a mark button, a status LED and an optional buzzer or vibration motor.

Everything goes through gpiozero's ``Button``, ``LED`` and ``Buzzer``; tests pass its ``MockFactory``.

Steady patterns (``Feedback.show``), first matching row wins; default timings, every pattern repeats
every 2 s so a wearer compares like with like:

| state                                 | LED                                         | buzzer / vibration    |
|---------------------------------------|---------------------------------------------|-----------------------|
| fault (storage full/error, camera)    | fast flicker: 0.1 s on / 0.1 s off, always  | 0.1 s beep every 2 s  |
| not recording                         | off                                         | -                     |
| recording, clock not synchronised     | double blink: 0.1 on, 0.2 off, 0.1 on, rest | -                     |
| recording, uploads pending            | long pulse: 0.6 s on every 2 s              | -                     |
| recording, all well                   | heartbeat: 0.1 s on every 2 s               | -                     |
| recording, an event open (post-roll)  | as above                                    | 0.1 s beep every 120 s|
| mark acknowledged (one-shot, from     | three fast blinks (0.08 s on / 0.08 s off), | one 0.16 s beep       |
| ``acknowledge_mark``)                 | 0.6 s dark, then the steady pattern afresh  |                       |

The periodic beep follows the body-worn-video convention (a beep or buzz while recording); the ring
buffer records all day, so here it sounds only while an event is open (``DeviceState.event_open``).
Why one thread of our own rather than ``LED.blink``: gpiozero's blink is a single on/off pair, so a
double blink, and a fault beep in step with the LED, need a sequencer; it is also the only writer of
both outputs, so calls from the daemon loop and from the button thread never race on a pin.

Debouncing: ``button_bounce_ms`` goes to the pin driver as gpiozero's ``bounce_time`` (its lgpio pin
calls ``lgpio.gpio_set_debounce_micros``), and ``MarkButton`` also ignores a press that comes within
that time of the previous edge, press or release, so contact bounce never makes two marks whatever
the driver does (gpiozero's mock pin stores the bounce time but does not apply it).

Absent pins ("") make every call a no-op and never touch gpiozero, so a box without a button runs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edged.config.schema import GpioSettings

log = logging.getLogger("edged.gpio")


class GpioError(Exception):
    """A configured pin cannot be used; the message starts with the config key (``gpio.button_pin: ...``)."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    recording: bool
    fault: bool  # storage full / storage error / camera lost
    clock_synced: bool
    uploads_pending: int
    event_open: bool = False  # a mark's post-roll is still being recorded: periodic beep


@dataclass(frozen=True)
class Timings:
    """Pattern timings in seconds (tests shrink them)."""

    period: float = 2.0  # every steady pattern repeats this often
    flash: float = 0.1  # heartbeat and double-blink flash
    double_gap: float = 0.2  # dark between the two flashes of a double blink
    long_flash: float = 0.6  # uploads pending
    fault_flash: float = 0.1  # fault: on and off times of the flicker
    ack_flash: float = 0.08  # mark acknowledged: on and off times of the three blinks
    ack_pause: float = 0.6  # dark after the three blinks, before the steady pattern again
    reminder: float = 120.0  # beep interval while an event is open; 0: never
    beep: float = 0.1  # length of that beep

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0 or (f.name != "reminder" and getattr(self, f.name) == 0):
                raise ValueError(f"Timings.{f.name} must be positive (reminder: 0 turns it off)")
        if self.flash * 2 + self.double_gap >= self.period or self.long_flash >= self.period:
            raise ValueError("flashes must fit in the period")


# Modes of the steady pattern. Recording modes are the ones the reminder beep can sound in.
OFF, FAULT, CLOCK_UNSYNCED = "off", "fault", "clock_unsynced"
UPLOADS_PENDING, HEARTBEAT = "uploads_pending", "heartbeat"
_RECORDING_MODES = (CLOCK_UNSYNCED, UPLOADS_PENDING, HEARTBEAT)

Step = tuple[bool, bool, float]  # (LED on, buzzer on, seconds)
Pattern = tuple[Step, ...]


def mode_for(state: DeviceState) -> str:
    """Which steady pattern a state shows: fault, off, clock, uploads, heartbeat, first match wins."""
    if state.fault:
        return FAULT
    if not state.recording:
        return OFF
    if not state.clock_synced:
        return CLOCK_UNSYNCED
    if state.uploads_pending > 0:
        return UPLOADS_PENDING
    return HEARTBEAT


def pattern(mode: str, t: Timings) -> Pattern:
    """The repeating steps of a steady mode; empty: dark."""
    if mode == HEARTBEAT:
        return ((True, False, t.flash), (False, False, t.period - t.flash))
    if mode == CLOCK_UNSYNCED:
        return (
            (True, False, t.flash),
            (False, False, t.double_gap),
            (True, False, t.flash),
            (False, False, t.period - 2 * t.flash - t.double_gap),
        )
    if mode == UPLOADS_PENDING:
        return ((True, False, t.long_flash), (False, False, t.period - t.long_flash))
    if mode == FAULT:
        n = max(1, round(t.period / (2 * t.fault_flash)))
        return ((True, True, t.fault_flash), (False, False, t.fault_flash)) + (
            (True, False, t.fault_flash),
            (False, False, t.fault_flash),
        ) * (n - 1)
    return ()


def ack_pattern(t: Timings) -> Pattern:
    f = t.ack_flash
    return (
        (True, True, f),
        (False, True, f),
        (True, False, f),
        (False, False, f),
        (True, False, f),
        (False, False, t.ack_pause),
    )


def _position(steps: Pattern, elapsed: float, repeat: bool) -> tuple[bool, bool, float] | None:
    """(LED, buzzer, seconds left in the step) at ``elapsed`` into ``steps``; None once a one-shot ended."""
    total = sum(d for _, _, d in steps)
    if total <= 0:
        return None
    if repeat:
        elapsed %= total
    elif elapsed >= total:
        return None
    for led, buzz, d in steps:
        if elapsed < d:
            return led, buzz, d - elapsed
        elapsed -= d
    led, buzz, _ = steps[-1]  # float rounding at the very end of the cycle
    return led, buzz, 1e-3


# --- pins -------------------------------------------------------------------------------------------


def _pin_name(pin: str) -> str:
    # gpiozero's names are upper case ("GPIO17", "BOARD11", "J8:11"); accept "gpio17" too.
    return pin.strip().upper()


def _resolve_factory(key: str, pin: str, pin_factory: Any) -> Any:
    """The pin factory to use: the one given, gpiozero's global one, or gpiozero's default search
    (lgpio, RPi.GPIO, pigpio, native), whose failure is a GpioError with the reasons it gave."""
    if pin_factory is not None:
        return pin_factory
    from gpiozero import Device
    from gpiozero.exc import NativePinFactoryFallback, PinFactoryFallback

    if Device.pin_factory is not None:
        return Device.pin_factory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            Device.ensure_pin_factory()
        except Exception as exc:
            reasons = "; ".join(str(w.message) for w in caught if issubclass(w.category, PinFactoryFallback))
            raise GpioError(
                f"{key}: {pin!r} is configured but no GPIO driver can be used here ({type(exc).__name__}: {exc}"
                f"{'; ' + reasons if reasons else ''}). On a Raspberry Pi install lgpio (python3-lgpio) "
                f'and check access to /dev/gpiochip*; elsewhere set the gpio pins to ""'
            ) from exc
    for w in caught:
        if issubclass(w.category, NativePinFactoryFallback):
            log.warning("gpiozero: %s", w.message)
    return Device.pin_factory


def _open(key: str, pin: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except GpioError:
        raise
    except Exception as exc:
        from gpiozero.exc import PinInvalidBounce

        if isinstance(exc, PinInvalidBounce):
            key = "gpio.button_bounce_ms"
        raise GpioError(f"{key}: {pin!r} cannot be used: {type(exc).__name__}: {exc}") from exc


class MarkButton:
    """Short press = mark. Calls on_press() from gpiozero's callback thread (the thread that drives
    the pin for mock pins); an exception from on_press is logged, never raised into gpiozero."""

    def __init__(self, pin: str, pull_up: bool, bounce_ms: int, on_press: Callable[[], None], pin_factory=None) -> None:
        from gpiozero import Button

        name = _pin_name(pin)
        factory = _resolve_factory("gpio.button_pin", pin, pin_factory)
        self._bounce_s = max(0, bounce_ms) / 1000
        self._on_press = on_press
        self._lock = threading.Lock()
        self._last_edge: float | None = None
        self._button = _open(
            "gpio.button_pin",
            pin,
            lambda: Button(name, pull_up=pull_up, bounce_time=self._bounce_s or None, pin_factory=factory),
        )
        self._button.when_pressed = self._pressed
        self._button.when_released = self._released

    def _edge(self) -> bool:
        """Note an edge; True when the line had been quiet for the bounce time before it."""
        now = time.monotonic()
        with self._lock:
            quiet = self._last_edge is None or now - self._last_edge >= self._bounce_s
            self._last_edge = now
        return quiet

    def _pressed(self) -> None:
        if not self._edge():
            log.debug("button: bounce ignored")
            return
        try:
            self._on_press()
        except Exception:
            log.exception("mark from the button failed")

    def _released(self) -> None:
        self._edge()

    def close(self) -> None:
        self._button.close()


class Feedback:
    """Status LED (and optional buzzer/vibration) patterns. Absent pins (""): every method is a no-op.

    Thread-safe: ``show`` (daemon loop) and ``acknowledge_mark`` (button or control thread) only
    change the plan under a lock; one sequencer thread writes both outputs.
    """

    def __init__(self, led_pin: str, buzzer_pin: str, pin_factory=None, timings: Timings | None = None) -> None:
        self._t = timings or Timings()
        self._led = self._buzzer = None
        if led_pin:
            from gpiozero import LED

            factory = _resolve_factory("gpio.led_pin", led_pin, pin_factory)
            self._led = _open("gpio.led_pin", led_pin, lambda: LED(_pin_name(led_pin), pin_factory=factory))
        if buzzer_pin:
            from gpiozero import Buzzer

            try:
                factory = _resolve_factory("gpio.buzzer_pin", buzzer_pin, pin_factory)
                self._buzzer = _open(
                    "gpio.buzzer_pin", buzzer_pin, lambda: Buzzer(_pin_name(buzzer_pin), pin_factory=factory)
                )
            except GpioError:
                if self._led is not None:
                    self._led.close()
                raise
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._mode = OFF
        self._steady: Pattern = ()
        self._start = time.monotonic()  # when the steady pattern (re)started
        self._ack_start: float | None = None  # when the running acknowledgement started
        self._reminder_at: float | None = None  # next reminder beep, while an event is open
        self._thread: threading.Thread | None = None
        if self._led is not None or self._buzzer is not None:
            self._thread = threading.Thread(target=self._run, name="edged-feedback", daemon=True)
            self._thread.start()

    @property
    def mode(self) -> str:
        return self._mode

    def show(self, state: DeviceState) -> None:
        """Steady pattern for the current state. Idempotent: a state that maps to the running
        pattern changes nothing (the daemon calls this every second)."""
        if self._thread is None:
            return
        mode = mode_for(state)
        reminding = state.event_open and mode in _RECORDING_MODES and self._t.reminder > 0
        with self._lock:
            changed = False
            if mode != self._mode:
                self._mode, self._steady, self._start = mode, pattern(mode, self._t), time.monotonic()
                changed = True
            if reminding != (self._reminder_at is not None):
                self._reminder_at = time.monotonic() + self._t.reminder if reminding else None
                changed = True
        if changed:
            self._wake.set()

    def acknowledge_mark(self) -> None:
        """Three fast blinks and a beep, then the steady pattern again from its start."""
        if self._thread is None:
            return
        with self._lock:
            self._ack_start = time.monotonic()
        self._wake.set()

    def _plan(self, now: float) -> tuple[bool, bool, float | None]:
        """(LED, buzzer, seconds until the next change; None: none due) at ``now``. Under the lock."""
        t = self._t
        if self._ack_start is not None:
            at = _position(ack_pattern(t), now - self._ack_start, repeat=False)
            if at is not None:
                return at
            self._ack_start, self._start = None, now  # back to the steady pattern, afresh
        led, buzz, left = _position(self._steady, now - self._start, repeat=True) or (False, False, None)
        if self._reminder_at is not None:
            while now >= self._reminder_at + t.beep:
                self._reminder_at += t.reminder
            if now >= self._reminder_at:
                buzz, until = True, self._reminder_at + t.beep - now
            else:
                until = self._reminder_at - now
            left = until if left is None else min(left, until)
        return led, buzz, left

    def _run(self) -> None:
        written: list[bool | None] = [None, None]
        try:
            while True:
                self._wake.clear()
                with self._lock:
                    if self._closed:
                        break
                    led, buzz, left = self._plan(time.monotonic())
                for i, (dev, want) in enumerate(((self._led, led), (self._buzzer, buzz))):
                    if dev is not None and written[i] != want:
                        dev.on() if want else dev.off()
                        written[i] = want
                self._wake.wait(left)
        except Exception:
            log.exception("status LED / buzzer sequencer stopped")

    def close(self) -> None:
        with self._lock:
            already, self._closed = self._closed, True
        if already:
            return
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for dev in (self._led, self._buzzer):
            if dev is not None:
                try:
                    dev.off()
                finally:
                    dev.close()


def from_settings(
    gpio: GpioSettings, on_press: Callable[[], None], pin_factory=None, timings: Timings | None = None
) -> tuple[MarkButton | None, Feedback]:
    """The button (None without ``gpio.button_pin``) and the feedback outputs of the settings."""
    button = (
        MarkButton(gpio.button_pin, gpio.button_pull_up, gpio.button_bounce_ms, on_press, pin_factory)
        if gpio.button_pin
        else None
    )
    try:
        feedback = Feedback(gpio.led_pin, gpio.buzzer_pin, pin_factory, timings)
    except BaseException:
        if button is not None:
            button.close()
        raise
    return button, feedback
