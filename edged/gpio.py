"""The wearer's interface: a mark button and a status LED (plus an optional buzzer), via gpiozero.

LED patterns (one at a time; the first that applies wins):

| state                       | LED                                    | buzzer            |
|-----------------------------|----------------------------------------|-------------------|
| fault (storage, camera)     | fast blink, 0.1 s on / 0.1 s off        | short beep every 2 s |
| not recording               | off                                    | -                 |
| clock not synchronised      | double blink every 2 s                 | -                 |
| uploads pending             | long pulse, 0.6 s on every 2 s         | -                 |
| recording, all well         | heartbeat, 0.1 s on every 2 s          | -                 |
| mark acknowledged (once)    | three fast blinks, then the pattern    | one beep          |

Absent pins ("") make every call a no-op, so a dashboard box without a button still runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edged.config import GpioSettings

log = logging.getLogger("edged.gpio")

Pattern = tuple[tuple[float, float], ...]  # (on seconds, off seconds) steps, repeated

FAULT: Pattern = ((0.1, 0.1),)
HEARTBEAT: Pattern = ((0.1, 1.9),)
CLOCK_UNSYNCED: Pattern = ((0.1, 0.2), (0.1, 1.6))
UPLOADS_PENDING: Pattern = ((0.6, 1.4),)
OFF: Pattern = ()
ACK: Pattern = ((0.08, 0.08), (0.08, 0.08), (0.08, 0.3))


class GpioError(Exception):
    """A configured pin cannot be used; the message names the config key."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    recording: bool
    fault: bool
    clock_synced: bool
    uploads_pending: int


def pattern_for(state: DeviceState) -> Pattern:
    if state.fault:
        return FAULT
    if not state.recording:
        return OFF
    if not state.clock_synced:
        return CLOCK_UNSYNCED
    if state.uploads_pending:
        return UPLOADS_PENDING
    return HEARTBEAT


def _device(key: str, make: Callable[[], object]):
    from gpiozero import GPIOZeroError
    try:
        return make()
    except GPIOZeroError as exc:
        raise GpioError(f"{key}: {type(exc).__name__}: {exc}") from exc


class MarkButton:
    """Short press = mark. ``on_press`` runs on gpiozero's callback thread."""

    def __init__(self, pin: str, pull_up: bool, bounce_ms: int, on_press: Callable[[], None],
                 pin_factory=None) -> None:
        from gpiozero import Button
        self._button = _device("gpio.button_pin", lambda: Button(
            pin, pull_up=pull_up, bounce_time=bounce_ms / 1000 if bounce_ms else None, pin_factory=pin_factory))

        def pressed() -> None:
            try:
                on_press()
            except Exception:  # noqa: BLE001 - a failing mark must not kill gpiozero's thread
                log.exception("mark from the button failed")

        self._button.when_pressed = pressed

    def close(self) -> None:
        self._button.close()


class Feedback:
    def __init__(self, led_pin: str, buzzer_pin: str, pin_factory=None) -> None:
        from gpiozero import LED, Buzzer
        self._led = _device("gpio.led_pin", lambda: LED(led_pin, pin_factory=pin_factory)) if led_pin else None
        self._buzzer = (_device("gpio.buzzer_pin", lambda: Buzzer(buzzer_pin, pin_factory=pin_factory))
                        if buzzer_pin else None)
        self._pattern: Pattern = OFF
        self._fault = False
        self._ack = threading.Event()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if self._led is not None:
            self._thread = threading.Thread(target=self._run, name="led", daemon=True)
            self._thread.start()

    def show(self, state: DeviceState) -> None:
        """Set the steady pattern; the same pattern again changes nothing (called every second)."""
        pattern = pattern_for(state)
        if self._buzzer is not None and state.fault != self._fault:
            if state.fault:
                self._buzzer.beep(on_time=0.1, off_time=1.9, background=True)
            else:
                self._buzzer.off()
        self._fault = state.fault
        if pattern != self._pattern:
            self._pattern = pattern
            self._wake.set()

    def acknowledge_mark(self) -> None:
        if self._buzzer is not None and not self._fault:
            self._buzzer.beep(on_time=0.15, off_time=0.1, n=1, background=True)
        self._ack.set()
        self._wake.set()

    def _run(self) -> None:
        led = self._led
        while not self._closed.is_set():
            self._wake.clear()
            steps = ACK if self._ack.is_set() else self._pattern
            self._ack.clear()
            if not steps:
                led.off()
                self._wake.wait()
                continue
            for on, off in steps:
                led.on()
                if self._wake.wait(on):
                    break
                led.off()
                if self._wake.wait(off):
                    break
            else:
                continue
            led.off()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for dev in (self._led, self._buzzer):
            if dev is not None:
                dev.close()


def from_settings(gpio: GpioSettings, on_press: Callable[[], None], pin_factory=None
                  ) -> tuple[MarkButton | None, Feedback]:
    button = (MarkButton(gpio.button_pin, gpio.button_pull_up, gpio.button_bounce_ms, on_press, pin_factory)
              if gpio.button_pin else None)
    return button, Feedback(gpio.led_pin, gpio.buzzer_pin, pin_factory)
