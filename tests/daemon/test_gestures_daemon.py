"""Button gestures through the real in-process daemon: gpiozero's MockFactory pins, real press timings.

A short press makes a button mark in the events store, acknowledged by the mark's beep; a long press
calls the daemon's mute action and a double press its panic action, each acknowledged on the
buzzer by what the action answered. The mute is the real one (the recorder's audio gate, during
the event the short press opened); ``toggle_panic`` is a stand-in set on the daemon that refuses, so
the refused path is seen end to end (the Sonoran panic itself is tested with its contract server).
"""

from __future__ import annotations

import logging
import time

from gpiozero.pins.mock import MockFactory

from edged.app.daemon import Daemon
from edged.events.store import EventStore
from tests.support import Running, wait_until
from tests.support.gpio import pulse_lengths, shape

SHORT = 0.1


def test_short_press_marks_a_long_press_mutes_and_a_double_press_asks_for_panic(settings_factory, caplog):
    factory = MockFactory()
    s = settings_factory(
        camera={"width": 320, "height": 180, "bitrate": 120_000, "paced": True},
        clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 30.0},
        gpio={
            "button_pin": "GPIO17",
            "led_pin": "GPIO27",
            "buzzer_pin": "GPIO5",
            "double_press": "panic",
            "long_press": "mute",
        },
    )
    d = Daemon(s, pin_factory=factory)
    run = Running(d)
    try:
        assert d.wait_ready(20), "the daemon did not become ready"
        pin, buzzer = factory.pin(17), factory.pin(5)
        feedback = d.stages.feedback
        calls: list[str] = []
        gate = d.stages.recorder.gate

        def toggle_panic() -> bool:  # stand-in: refuses as the Sonoran branch's does without a unit
            calls.append("panic")
            raise RuntimeError("no Sonoran unit configured")

        d.toggle_panic = toggle_panic  # type: ignore[attr-defined]
        store = EventStore(d.paths.events)

        def gesture(drive) -> list[str]:
            """Do a gesture, wait for its acknowledgement to start and end: the buzzer's shape."""
            buzzer.clear_states()
            drive()
            wait_until(lambda: feedback.acknowledging, 10, "an acknowledgement")
            wait_until(lambda: not feedback.acknowledging, 10, "the acknowledgement to end")
            return shape(buzzer)

        def short() -> None:
            pin.drive_low()
            time.sleep(SHORT)
            pin.drive_high()

        def long() -> None:
            before = gate.muted()
            pin.drive_low()
            wait_until(lambda: gate.muted() != before, 10, "the long press to act while held")
            pin.drive_high()

        def double() -> None:
            short()
            time.sleep(0.15)
            short()

        assert gesture(short) == ["S"], pulse_lengths(buzzer)  # the mark's own beep
        events = store.events()
        assert len(events) == 1 and [m.source for m in store.marks(events[0].id)] == ["button"]

        assert gesture(long) == ["M", "M"], pulse_lengths(buzzer)  # mute on
        assert gate.muted()
        assert gesture(long) == ["M", "M", "M"], pulse_lengths(buzzer)  # mute off
        assert not gate.muted()
        with caplog.at_level(logging.WARNING, logger="edged.gpio"):
            assert gesture(double) == ["L"], pulse_lengths(buzzer)  # refused
        assert "panic refused: RuntimeError: no Sonoran unit configured" in caplog.text
        assert calls == ["panic"]
        assert len(store.marks(events[0].id)) == 1, "neither the long nor the double press marked"
        store.close()
    finally:
        run.stop()
    assert run.error is None and not run.thread.is_alive()
