"""The wearer's interface: one button, a status LED and an optional buzzer or vibration motor.

Everything goes through gpiozero's ``Button``, ``LED`` and ``Buzzer``; tests pass its ``MockFactory``.

Gestures (``GestureReader``, timings from ``[gpio]``): a short press marks; a double press (a second
press within ``double_press_ms`` of the first release) and a long press (held ``long_press_ms``) each
do what ``gpio.double_press`` / ``gpio.long_press`` say: ``mark``, ``panic``, ``mute`` or ``none``.
``none`` and ``mark`` make the gesture an ordinary press (each press marks), so nothing waits for it:

| double press | long press     | a short press marks                                      |
|--------------|----------------|----------------------------------------------------------|
| none / mark  | none / mark    | at the press                                             |
| none / mark  | panic / mute   | at the release (a held press must not also mark)         |
| panic / mute | any            | ``double_press_ms`` after the release (no second press)  |

A long press acts when the hold time is reached, while still held (the wearer feels it and lets go);
the second press of a double press acts at once. Actions are names handed to ``on_action``; the daemon
runs them and acknowledges them through ``perform`` (a toggle: its new state; an error: refused).

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

Acknowledgements (``Feedback.acknowledge``), one-shot, each followed by 0.6 s dark and then the
steady pattern afresh. Each is told apart by the LED alone and by the buzzer alone (a box may have
either): short = 0.08 s, medium = 0.3 s, long = 0.8 s; pulses 0.2 s apart.

| ``Ack``     | LED                                       | buzzer / vibration                       |
|-------------|-------------------------------------------|------------------------------------------|
| mark        | three short blinks (0.08 on / 0.08 off)   | one 0.16 s beep                          |
| mute_on     | two medium pulses                         | the same two, in step                    |
| mute_off    | three medium pulses                       | the same three, in step                  |
| panic_on    | 2 s strobe, 0.05 s on / 0.05 s off        | 2 s continuous: the longest, loudest one |
| panic_off   | two long pulses                           | the same two, in step                    |
| refused     | one long pulse                            | the same, in step (the "no" buzz)        |

A second acknowledgement waits for the running one to end (at most ``MAX_QUEUED_ACKS`` wait, so a
wearer sees every press answered), except panic_on, which starts at once and drops what waits; a
mark acknowledged while panic_on plays is not shown (the panic's own event: its blink would blur it).

The periodic beep follows the body-worn-video convention (a beep or buzz while recording); the ring
buffer records all day, so here it sounds only while an event is open (``DeviceState.event_open``).
Why one thread of our own rather than ``LED.blink``: gpiozero's blink is a single on/off pair, so a
double blink, and a fault beep in step with the LED, need a sequencer; it is also the only writer of
both outputs, so calls from the daemon loop and from the button thread never race on a pin.

Debouncing: ``button_bounce_ms`` goes to the pin driver as gpiozero's ``bounce_time`` (its lgpio pin
calls ``lgpio.gpio_set_debounce_micros``), and ``GestureButton`` also ignores an edge that comes
within that time of the previous edge, then reads the line once it has been quiet that long and
takes a press or release it missed, so contact bounce never makes two presses (nor a short tap a long
press) whatever the driver does (gpiozero's mock pin stores the bounce time but does not apply it).

Absent pins ("") make every call a no-op and never touch gpiozero, so a box without a button runs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edged.config.schema import GpioSettings

log = logging.getLogger("edged.gpio")


class GpioError(Exception):
    """A configured pin cannot be used; the message starts with the config key (``gpio.button_pin: ...``)."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the feedback pins show."""

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
    ack_pause: float = 0.6  # dark after any acknowledgement, before the steady pattern again
    pulse: float = 0.3  # medium pulse of mute on / off
    long_pulse: float = 0.8  # long pulse of panic off and refused
    pulse_gap: float = 0.2  # dark between two medium or long pulses
    strobe: float = 0.05  # panic on: on and off times of the LED strobe
    panic: float = 2.0  # panic on: how long the strobe and the continuous buzz last
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


class Ack(StrEnum):
    """What the wearer is told an action did (the acknowledgement table in the module docstring)."""

    MARK = "mark"
    MUTE_ON = "mute_on"
    MUTE_OFF = "mute_off"
    PANIC_ON = "panic_on"
    PANIC_OFF = "panic_off"
    REFUSED = "refused"


#: Acknowledgements waiting behind the one playing; more drop the oldest waiting.
MAX_QUEUED_ACKS = 3


def _pulses(n: int, on: float, gap: float) -> Pattern:
    """``n`` pulses of LED and buzzer together, ``gap`` apart."""
    return ((True, True, on), (False, False, gap)) * (n - 1) + ((True, True, on),)


def ack_pattern(ack: Ack, t: Timings) -> Pattern:
    """The one-shot steps of an acknowledgement, its dark pause included."""
    f = t.ack_flash
    if ack == Ack.MARK:
        steps: Pattern = (
            (True, True, f),
            (False, True, f),
            (True, False, f),
            (False, False, f),
            (True, False, f),
        )
    elif ack == Ack.PANIC_ON:
        steps = ((True, True, t.strobe), (False, True, t.strobe)) * max(1, round(t.panic / (2 * t.strobe)))
    else:
        n, on = {
            Ack.MUTE_ON: (2, t.pulse),
            Ack.MUTE_OFF: (3, t.pulse),
            Ack.PANIC_OFF: (2, t.long_pulse),
            Ack.REFUSED: (1, t.long_pulse),
        }[ack]
        steps = _pulses(n, on, t.pulse_gap)
    return steps + ((False, False, t.ack_pause),)


def toggle_ack(action: str, now_on: bool) -> Ack:
    """The acknowledgement of a toggle ("mute", "panic") that is now on or off."""
    return {
        ("mute", True): Ack.MUTE_ON,
        ("mute", False): Ack.MUTE_OFF,
        ("panic", True): Ack.PANIC_ON,
        ("panic", False): Ack.PANIC_OFF,
    }[(action, now_on)]


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


#: The gesture actions that are more than a press; "mark" and "none" make a gesture an ordinary press.
_OWN_ACTIONS = ("panic", "mute")
_IDLE, _DOWN, _WINDOW, _SETTLED = "idle", "down", "window", "settled"


class GestureReader:
    """Turns presses and releases into action names: "mark" for a short press, ``double_press`` and
    ``long_press`` for those gestures. Pure: every call carries its time (monotonic seconds), so the
    timing rules are tested without pins or threads; the caller holds a lock around it.

    States: idle; down (a first press, not yet decided); window (released, a second press may
    follow); settled (this press is decided, waiting for its release)."""

    def __init__(
        self, double_press: str = "none", long_press: str = "none", double_window_s: float = 0.4, hold_s: float = 2.0
    ) -> None:
        self.double_action = double_press if double_press in _OWN_ACTIONS else None
        self.long_action = long_press if long_press in _OWN_ACTIONS else None
        self.double_window_s = double_window_s
        self.hold_s = hold_s
        self._state = _IDLE
        self._since = 0.0  # when the press (down) or the release (window) happened

    def due(self) -> float | None:
        """When ``advance`` next has something to decide (None: only an edge changes anything)."""
        if self._state == _DOWN and self.long_action:
            return self._since + self.hold_s
        if self._state == _WINDOW:
            return self._since + self.double_window_s
        return None

    def advance(self, now: float) -> list[str]:
        """Actions whose time has come by ``now``: a long press reached, a double-press window over."""
        due = self.due()
        if due is None or now < due:
            return []
        if self._state == _DOWN:
            self._state = _SETTLED
            return [self.long_action] if self.long_action else []
        self._state = _IDLE  # the window passed without a second press: it was a short press
        return ["mark"]

    def press(self, now: float) -> list[str]:
        out = self.advance(now)
        if self._state == _IDLE:
            if self.double_action or self.long_action:
                self._state, self._since = _DOWN, now
            else:
                self._state = _SETTLED
                out.append("mark")
        elif self._state == _WINDOW:
            self._state = _SETTLED
            out.append(self.double_action or "mark")
        return out

    def release(self, now: float) -> list[str]:
        out = self.advance(now)
        if self._state == _DOWN:
            if self.double_action:
                self._state, self._since = _WINDOW, now
            else:
                self._state = _IDLE
                out.append("mark")
        elif self._state == _SETTLED:
            self._state = _IDLE
        return out


class GestureButton:
    """The button: debounced edges into a ``GestureReader``, its actions handed to ``on_action(name)``.

    An action decided at an edge runs in gpiozero's callback thread (the thread that drives the pin
    for mock pins), as a plain press always did; one decided by time (a hold reached, a double-press
    window over, the line read after bounce) runs in this button's own timer thread. An exception
    from ``on_action`` is logged, never raised into gpiozero."""

    def __init__(
        self,
        pin: str,
        pull_up: bool,
        bounce_ms: int,
        on_action: Callable[[str], None],
        reader: GestureReader | None = None,
        pin_factory=None,
    ) -> None:
        from gpiozero import Button

        name = _pin_name(pin)
        factory = _resolve_factory("gpio.button_pin", pin, pin_factory)
        self._bounce_s = max(0, bounce_ms) / 1000
        self._on_action = on_action
        self._reader = reader or GestureReader()
        self._cond = threading.Condition()
        self._closed = False
        self._down = False  # the press the reader was told of, debounced
        self._last_edge: float | None = None  # the last raw edge, taken or not
        self._settle_at: float | None = None  # read the line once it has been quiet since the last edge
        self._button = _open(
            "gpio.button_pin",
            pin,
            lambda: Button(name, pull_up=pull_up, bounce_time=self._bounce_s or None, pin_factory=factory),
        )
        self._button.when_pressed = self._pressed
        self._button.when_released = self._released
        self._thread = threading.Thread(target=self._timer, name="edged-button", daemon=True)
        self._thread.start()

    def _pressed(self) -> None:
        self._edge(True)

    def _released(self) -> None:
        self._edge(False)

    def _edge(self, pressed: bool) -> None:
        now = time.monotonic()
        with self._cond:
            quiet = self._last_edge is None or now - self._last_edge >= self._bounce_s
            self._last_edge = now
            if self._bounce_s:
                self._settle_at = now + self._bounce_s
            if not quiet or pressed == self._down:
                log.debug("button: bounce ignored")
                self._cond.notify()
                return
            actions = self._take(pressed, now)
        self._run(actions)

    def _take(self, pressed: bool, now: float) -> list[str]:
        """A debounced press or release for the reader. Under the lock."""
        self._down = pressed
        actions = self._reader.press(now) if pressed else self._reader.release(now)
        self._cond.notify()  # the reader's next deadline may have changed
        return actions

    def _timer(self) -> None:
        while True:
            settle = False
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                actions = self._reader.advance(now)
                if not actions:
                    if self._settle_at is not None and now >= self._settle_at:
                        self._settle_at, settle = None, True
                    else:
                        dues = [d for d in (self._reader.due(), self._settle_at) if d is not None]
                        self._cond.wait(min(dues) - now if dues else None)
                        continue
            self._run(actions)
            if settle:
                self._settle()

    def _settle(self) -> None:
        """The line has been quiet for the bounce time: take a press or release that bounce hid
        (a tap shorter than the bounce time would otherwise stay pressed, and become a long press)."""
        level = bool(self._button.is_pressed)  # outside our lock: the pin may be calling back into us
        with self._cond:
            if self._closed or self._settle_at is not None or level == self._down:
                return  # in step, or a newer edge came and its own settle follows
            log.debug("button: %s taken after bounce", "press" if level else "release")
            actions = self._take(level, time.monotonic())
        self._run(actions)

    def _run(self, actions: list[str]) -> None:
        for action in actions:
            try:
                self._on_action(action)
            except Exception:
                log.exception("button action %s failed", action)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._button.close()


class Feedback:
    """Status LED (and optional buzzer/vibration) patterns. Absent pins (""): every method is a no-op.

    Thread-safe: ``show`` (daemon loop) and ``acknowledge`` (button or control thread) only change
    the plan under a lock; one sequencer thread writes both outputs.
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
        self._acks = {ack: ack_pattern(ack, self._t) for ack in Ack}
        self._ack: Ack | None = None  # the acknowledgement playing
        self._ack_start = 0.0  # when it started
        self._waiting: deque[Ack] = deque(maxlen=MAX_QUEUED_ACKS)
        self._reminder_at: float | None = None  # next reminder beep, while an event is open
        self._thread: threading.Thread | None = None
        if self._led is not None or self._buzzer is not None:
            self._thread = threading.Thread(target=self._run, name="edged-feedback", daemon=True)
            self._thread.start()

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def acknowledging(self) -> bool:
        """An acknowledgement is playing or waiting (tests wait for the end of one)."""
        with self._lock:
            return self._ack is not None

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

    def acknowledge(self, ack: Ack) -> None:
        """Play an acknowledgement once (after the one playing, except panic_on: at once), then the
        steady pattern again from its start."""
        if self._thread is None:
            return
        with self._lock:
            if ack == Ack.PANIC_ON:
                self._waiting.clear()
                self._ack, self._ack_start = ack, time.monotonic()
            elif ack == Ack.MARK and self._ack == Ack.PANIC_ON:
                return
            elif self._ack is None:
                self._ack, self._ack_start = ack, time.monotonic()
            else:
                self._waiting.append(ack)
                return
        self._wake.set()

    def acknowledge_mark(self) -> None:
        """Three fast blinks and a beep (``EventManager.on_mark``: every mark, from any source)."""
        self.acknowledge(Ack.MARK)

    def _plan(self, now: float) -> tuple[bool, bool, float | None]:
        """(LED, buzzer, seconds until the next change; None: none due) at ``now``. Under the lock."""
        t = self._t
        while self._ack is not None:
            at = _position(self._acks[self._ack], now - self._ack_start, repeat=False)
            if at is not None:
                return at
            if self._waiting:
                self._ack, self._ack_start = self._waiting.popleft(), now
            else:
                self._ack, self._start = None, now  # back to the steady pattern, afresh
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


class ActionRefused(Exception):
    """The daemon declined a gesture's action (e.g. mute with no event open): the wearer hears "no"."""


def perform(action: str, run: Callable[[], object] | None, feedback: Feedback) -> None:
    """Run one gesture action and acknowledge it. ``run`` is None where this build has no such
    action; for "mark" it marks (the mark acknowledges itself through ``EventManager.on_mark``, as
    a mark from the CLI does); for a toggle ("mute", "panic") it returns the new state (True: now
    muted / panic set). An exception is a refusal (e.g. mute with no event open): logged, refused."""
    if run is None:
        log.warning("button: %s is not available in this build: refused", action)
        feedback.acknowledge(Ack.REFUSED)
        return
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - whatever the daemon refuses with, the wearer is told "no"
        log.warning("button: %s refused: %s: %s", action, type(exc).__name__, exc)
        feedback.acknowledge(Ack.REFUSED)
        return
    if action == "mark":
        return
    if not isinstance(result, bool):
        log.error("button: %s answered %r, not its new on/off state: shown as refused", action, result)
        feedback.acknowledge(Ack.REFUSED)
        return
    feedback.acknowledge(toggle_ack(action, result))


def reader_of(gpio: GpioSettings) -> GestureReader:
    """The gesture rules of the ``[gpio]`` settings."""
    return GestureReader(gpio.double_press, gpio.long_press, gpio.double_press_ms / 1000, gpio.long_press_ms / 1000)


def from_settings(
    gpio: GpioSettings, on_action: Callable[[str], None], pin_factory=None, timings: Timings | None = None
) -> tuple[GestureButton | None, Feedback]:
    """The button (None without ``gpio.button_pin``) and the feedback outputs of the settings."""
    button = (
        GestureButton(
            gpio.button_pin, gpio.button_pull_up, gpio.button_bounce_ms, on_action, reader_of(gpio), pin_factory
        )
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
