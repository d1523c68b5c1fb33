"""Reading back what the LED and the buzzer did: gpiozero's mock pins keep each state change with
the time since the previous one; a pattern is compared by its shape (how many pulses, each short,
medium, long or very long), never by milliseconds, so a loaded machine reads the same."""

from __future__ import annotations


def pulse_lengths(pin) -> list[float]:
    """How long each completed 'on' of the pin's recorded history lasted, in order."""
    t, since, out = 0.0, None, []
    for st in pin.states[1:]:
        t += st.timestamp
        if st.state:
            since = t
        elif since is not None:
            out.append(t - since)
            since = None
    return out


def classify(seconds: float) -> str:
    """S (0.05-0.16 s), M (0.3 s), L (0.8 s), XL (2 s): boundaries at the geometric means."""
    for limit, name in ((0.22, "S"), (0.49, "M"), (1.26, "L")):
        if seconds < limit:
            return name
    return "XL"


def shape(pin) -> list[str]:
    return [classify(d) for d in pulse_lengths(pin)]
