"""Button gestures through the real in-process daemon: gpiozero's MockFactory pins, real press timings.

A short press makes a button mark in the events store, acknowledged by the mark's beep; a long press
calls the daemon's mute action and a double press its panic action, each acknowledged on the
buzzer by what the action answered. ``toggle_mute`` and ``toggle_panic`` are other parts of issue 13
(audio privacy, Sonoran panic): here they are stand-ins set on the daemon, so that this test checks
the dispatch and holds whichever build they come from; the absent-method path (refused, "not
available") is tested in tests/unit/test_gestures.py.
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

        def toggle_mute() -> bool:  # stand-in: the audio-privacy branch's, which mutes an open event
            calls.append("mute")
            return True

        def toggle_panic() -> bool:  # stand-in: refuses as the Sonoran branch's does without a unit
            calls.append("panic")
            raise RuntimeError("no Sonoran unit configured")

        d.toggle_mute = toggle_mute  # type: ignore[attr-defined]
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
            pin.drive_low()
            wait_until(lambda: calls, 10, "the long press to act while held")
            pin.drive_high()

        def double() -> None:
            short()
            time.sleep(0.15)
            short()

        assert gesture(short) == ["S"], pulse_lengths(buzzer)  # the mark's own beep
        events = store.events()
        assert len(events) == 1 and [m.source for m in store.marks(events[0].id)] == ["button"]

        assert gesture(long) == ["M", "M"], pulse_lengths(buzzer)  # mute on
        with caplog.at_level(logging.WARNING, logger="edged.gpio"):
            assert gesture(double) == ["L"], pulse_lengths(buzzer)  # refused
        assert "panic refused: RuntimeError: no Sonoran unit configured" in caplog.text
        assert calls == ["mute", "panic"]
        assert len(store.marks(events[0].id)) == 1, "neither the long nor the double press marked"
        store.close()
    finally:
        run.stop()
    assert run.error is None and not run.thread.is_alive()
