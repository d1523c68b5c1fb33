"""How devices sharing one API key pace themselves: the rules, as pure functions.

Sonoran counts 30 requests per rolling minute per API key, for every client using it, refused
requests too. Devices sharing a key know nothing of each other; the server's 429 and its
Retry-After are all they hear, and a 429 costs the key a slot for a minute. ``RequestBudget``
(``edged.upload.budget``) keeps what a device has learned in its store and paces its requests
by these rules. What makes a fleet work (measured: ``tests/support/fleet_sim.py``,
``scripts/bench_upload.py``):

- **One pace for all.** A device does not learn a rate of its own: it counts the devices on the
  key, and each of ``n`` devices takes ``TARGET_LOAD / n`` of the limit (:func:`ladder`). Devices
  counting the same fleet have exactly the same pace, so their phases do not drift apart.
- **Phases spread by the 429s, then kept.** Slots keep their phase (no jitter, a late request does
  not move the next). A device refused with the key just full (*crowded*) does not retry: the
  refused request took its turn, and the next goes one spacing after the moment Retry-After names,
  when the key's window has room: its phase moves to the end of the crowd it met. Left at random
  phases, devices at 90 % of the limit see about one request in four refused (the window is
  crowded now and then, and each refusal takes a slot); phases moved this way settle in minutes.
- **Counting the fleet from Retry-After.** Retry-After is when the oldest of the key's last 30
  requests leaves the server's window, so those 30 took ``window - Retry-After``: the key is
  offered ``window / span`` times its limit (:func:`overload`). At first contact (devices starting
  together, each at the whole limit) that counts the devices sending at that moment in one step.
- **Counting until a clean window.** Devices switched on over some seconds meet the key while its
  window is still filling: 50 devices started over 20 s each count 6 to 20, then come back at
  that pace and storm the key (every refusal holding a slot for a minute). So a device not told
  its number (``share`` 1) keeps counting until its count has held through a clean window (a
  window since an accepted request with no 429): until then each 429 counts up to
  ``COUNTING_STEP`` times the devices at once (from Retry-After, as above), never taken for a
  crowded moment or a burst. In such a storm a device sends about one request per Retry-After,
  whatever it counts, so its pace reads the storm as a few devices: its own share of the window
  (its requests there, refused ones too, against what the key was offered) reads it as it is,
  and is taken where it reads ``OWN_SHARE_FROM`` devices or more. Then the count is *settled*
  (kept in the store like the rest) and only moves as below. A count given in the configuration
  is settled from the start.
- **A settled count moves slowly.** After a clean window a 429, and every 429 within a window of
  it (one event: a burst still arriving reads as a crowded moment first), never counts more
  devices: with the key offered twice its limit or more it is someone else's burst (the count and
  the phase are kept, only the wait is the burst's), else a crowded moment (the phase moves).
  Refused again after that event with no clean window since, a device counts more: at most
  ``MAX_STEP`` more with the key well over its limit (``OVERSHOOT_AT``), else one more within
  ``REPEAT_S``. After a 429 that changed the count it comes back at a random phase of its new pace.
- **Probing for room.** Every ``PROBE_STEP_S`` without a 429 the device counts one fewer (devices
  that finished or went offline leave their share), down to the configured share.
- **A count climbed while counting is evened out (AIMD).** A count stepped up while counting (a
  window still filling, ``laddered``) ends 1x to 2.7x the fleet and unequal (how many 429s a device
  met in the storm, each doubling it): over-counted devices are slow, and one counting 135 keeps
  the drain going long after the rest (one fewer per ``PROBE_STEP_S`` is hours from 135). Such a
  device's rate gains ``LADDER_GAIN`` every ``LADDER_GAIN_S`` without a 429 (the same for every
  device, so a slow one gains the most of its count; the probe still goes on where it is faster,
  at fewer than about 27 devices), and a 429 after a clean window that is not
  a burst counts ``LADDER_BACKOFF`` times the devices (its rate falls in proportion, so a fast one
  gives up the most): additive increase and multiplicative decrease, which even out shares where
  steps in proportion (the ladder's, the probe's) keep them as unequal as they started. A count
  read in one step at first contact, or told, is left as it is.

What is learned is kept in the store (a restart does not pay the first contact again) and decays
by the probe, back to the configured share. The rate never goes below ``MIN_RATE`` (one request
every five minutes).

**Tried and not taken** (a fleet not told its number; scripts/sim_fleet.py, 12 seeds, 50 devices
switched on over 20 s, the rules before the own share was read: 13.2 % 429s mean, 14.5 % worst,
drain 1.83x mean; with it 6.2 %, 8.1 %, 1.79x). A device
learns only from its own 429s, so each costs a 429 at first contact (2.5 % of 50 x 40) and each
further fleet-wide correction about one more: the start has to leave the fleet near its share.
Starting a device with nothing learned as one of 10 and climbing 3x per clean minute does that
(Retry-After then reads every device at one pace: 54 429s at contact, counts 46-53, their rates
summing to 0.92 of the limit), but the counts differ by Retry-After's whole seconds, so the paces
drift apart and crowds come back every few minutes, and a device at 0.55 a minute loses a spacing
(about 2 min) per 429: 19.4 % mean, drain 1.69x. Counts rounded up to a grid of 2^(1/4) with the
probe off: 5.7 % mean (10.9 % worst), drain 1.57x (no device speeds up as the others finish).
Probe steps on the clock's whole 10 minutes (equal counts keep equal paces): 15.9 %, the fleet
crossing the limit at once. And a lone device pays the climb: 60 clips at 2.19x the ideal (now
1.01x), 300 with a burst at 1.37x (now 1.13x). With the own share read: turns put on a grid of
slots common to the fleet (one slot a device at 95 % of the limit, so devices never drift apart):
told fleets went from 0.9 % to 12.8 % refused (a turn moved to where the window frees lands in a
slot another device holds); a stronger AIMD gain trades the refusals for the drain one for one
(0.008: 9.8 %, 1.65x; 0.015: 15.9 %, 1.56x; 0.03: 27.7 %, 1.62x).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import NamedTuple

#: Our clock and the server's see a request a little apart (latency): count our window this much longer.
WINDOW_MARGIN_S = 1.0
#: The lowest rate ever learned, requests per window (one every five minutes).
MIN_RATE = 0.2
#: Devices sharing a key aim at this fraction of its limit together: room for their phases to
#: settle (a lone device, which sees the whole window itself, uses all of it). Simulated, 50 told
#: devices, seeds 1-4: 0.90 gives 0.1-0.9 % refused and 1.13-1.16x the ideal drain; 0.95 gives
#: 0.3-1.4 % and 1.09-1.12x (3.6-4.4 % with another client's burst); 0.97 gives 4-6 % with one.
TARGET_LOAD = 0.95
#: Without Retry-After, a 429 is taken to mean the key is offered twice what it allows.
UNKNOWN_OVERLOAD = 2.0
#: A 429 saying the key is offered at least this many times its limit, met after a clean window, is
#: someone else's burst: the count is kept (only the wait is the burst's).
BURST_OVERLOAD = 2.0
#: A 429 saying the key is offered at least this many times its limit counts more devices on it ...
OVERSHOOT_AT = 1.5
#: ... by at most this fraction at once after the first contact (a crowded moment is not a rate).
MAX_STEP = 0.1
#: A second 429 within this long (s) of the last one's wait counts one more device on the key,
#: even with the key only just over its limit.
REPEAT_S = 600.0
#: While a device not told its number is still counting (its count has not yet held through a
#: clean window since first contact), each 429 counts up to this many times the devices at once.
COUNTING_STEP = 2.0
#: While counting, a 429 reads the devices from this device's own share of what the key was offered
#: (``own``) where that reads at least this many. Simulated, 50 devices not told, seeds 1-12: switched on
#: over 20 s, 6.2 % refused (13.2 % from the pace alone), over 60 s 9.9 % (16.4 %), the drain as
#: before. Read for every count, 10 devices over 20 s drained at 1.66x (1.41x): their own shares
#: read them high.
OWN_SHARE_FROM = 20
#: Without a 429 for this long (s), one device fewer is counted on the key (the probe for room:
#: devices that finished or went offline leave theirs), down to the configured share.
PROBE_STEP_S = 600.0
#: A count stepped up while counting gains this much rate (requests per window) every ``LADDER_GAIN_S``
#: without a 429 (where that is more than the probe: about 27 devices or more), and a 429 after a clean
#: window that is not a burst counts ``LADDER_BACKOFF`` times the devices (once an event). Simulated
#: (tests/support/fleet_sim.py), 50 devices not told, seeds 1-12: started over 20 s, drain 1.62-2.14x
#: the ideal (was 2.23-2.94x) at 11.5-14.5 % refused (was 10.8-16.6 %; mean 13.2, was 12.5); over
#: 60 s, 1.72-1.95x (was 2.49-3.04x) at 15.9-17.0 % (was 14.1-19.8 %); together, 1.22-1.33x (was
#: 1.22-1.52x) at 2.4-5.0 % (was 2.4-6.3 %). Told fleets, a lone device and 3-20 devices not told are
#: as before. A gain of 0.003 leaves one seed started together at 1.69x; 0.005 refuses 13-16 % of
#: those started over 20 s, 0.01 16-18 %.
LADDER_GAIN = 0.004
LADDER_GAIN_S = 60.0
LADDER_BACKOFF = 1.25


def ladder(devices: int, limit: float) -> float:
    """The rate (requests per window) of each of ``devices`` sharing a key: all of it for one, else
    an equal part of TARGET_LOAD of it. Every device counting the same fleet has exactly the same
    pace, so once their phases have spread they stay spread."""
    return float(limit) if devices <= 1 else TARGET_LOAD * limit / devices


class Learned(NamedTuple):
    """What a key's budget has learned (one ``rate_state`` row)."""

    devices: int  # the devices counted on the key at the last 429; 0: never refused (the share holds)
    set_ns: int  # when the last 429's wait ended
    run_ns: int  # the first request accepted since then; 0: none yet
    probe_ns: int  # when the count starts going down again (the end of the last 429's wait)
    settled: int = 0  # 1: the count has held through a clean window since first contact
    event_ns: int = 0  # until then a 429 belongs to the event the first 429 after a clean window began
    laddered: int = 0  # 1: the count was stepped up while counting (evened out by AIMD)


def counted(s: Learned, now_ns: int, share: int, limit: float) -> int:
    """The devices counted on the key now: the configured share until a 429; after one, what it
    counted (counting or settled alike), one fewer every PROBE_STEP_S without another (a count
    climbed while counting: LADDER_GAIN more rate every LADDER_GAIN_S where that is more), never
    fewer than the share."""
    if not s.devices:
        return share
    if now_ns < s.set_ns - 2 * PROBE_STEP_S * 1e9:  # the clock was stepped back: what was learned is from the future
        return share
    since = max(0, now_ns - s.probe_ns)
    probed = s.devices - int(since // int(PROBE_STEP_S * 1e9))
    if s.laddered and share <= 1:  # the probe, or the rate's gain where that is faster (many devices)
        gained = since // int(LADDER_GAIN_S * 1e9) * LADDER_GAIN
        probed = min(probed, math.ceil(TARGET_LOAD * limit / (ladder(s.devices, limit) + gained) - 1e-9))
    return max(share, probed)


class Refusal(StrEnum):
    """What a 429 was taken to mean (``after_refusal``)."""

    BURST = "burst"  # someone else's burst after a clean window: wait it out, keep the rate
    CROWDED = "crowded"  # the key just full where this device's turn fell: move its phase
    OVERSHOOT = "overshoot"  # the key offered more than it allows: more devices on it than counted


def overload(retry_after_s: float | None, window_s: float) -> float:
    """How many times its limit the key is offered, read from a 429's Retry-After: the key's last
    ``limit`` requests (refused ones too) leave the server's window then, so they took ``window -
    Retry-After``. Retry-After is rounded up to whole seconds, so this is the most it can mean: at
    first contact a fleet counted too large starts below the limit and gains; one counted too
    small would be over it and lose slots to its own refusals."""
    if retry_after_s is None:
        return UNKNOWN_OVERLOAD
    span = min(window_s, max(1.0, window_s - retry_after_s))
    return window_s / span


class Counted(NamedTuple):
    """What a 429 was taken to mean (``after_refusal``) and what the device counts from then."""

    meaning: Refusal
    devices: int
    settled: bool
    event_ns: int  # until then further 429s belong to this one's event (0: none)
    laddered: bool = False  # the count was stepped up while counting (evened out by AIMD)


def after_refusal(
    s: Learned,
    now_ns: int,
    devices: int,
    limit: float,
    retry_after_s: float | None,
    window_s: float,
    share: int = 1,
    own: int = 0,
) -> Counted:
    """What a 429 means, for a device counting ``devices`` on the key (``share``: as configured;
    ``own``: its requests in the window, refused ones too), and what it counts from now (module
    docstring)."""
    over = overload(retry_after_s, window_s)
    clean = s.run_ns > 0 and now_ns - s.run_ns >= (window_s + WINDOW_MARGIN_S) * 1e9
    # Told its number, a device's count is a fact from the start; else once it held a clean window.
    settled = share > 1 or bool(s.settled) or clean
    most = math.ceil(TARGET_LOAD * limit / MIN_RATE)
    # Every device at this pace: the key's load is ``over`` limits of them.
    need = math.ceil(over * limit / ladder(devices, limit) - 1e-9)
    laddered = bool(s.laddered)
    if settled and (clean or now_ns < s.event_ns):
        # The count held a clean window: a 429 then, and those within a window of it, are someone
        # else's burst (the key offered twice its limit or more) or a crowded moment; the count
        # holds (a count climbed while counting backs off at a crowded moment: ``backed_off``).
        event = now_ns + int((window_s + WINDOW_MARGIN_S) * 1e9) if clean else s.event_ns
        if retry_after_s is not None and over >= BURST_OVERLOAD:
            return Counted(Refusal.BURST, devices, True, event, laddered)
        return Counted(Refusal.CROWDED, backed_off(s, devices, most) if clean else devices, True, event, laddered)
    if not s.devices:  # first contact: the count from Retry-After, in one step
        if over >= OVERSHOOT_AT:
            return Counted(Refusal.OVERSHOOT, min(most, max(devices + 1, need)), settled, 0)
        return Counted(Refusal.CROWDED, devices, settled, 0)
    if not settled:  # still counting: what a window still filling said is only a floor
        step = min(need, math.ceil(devices * COUNTING_STEP))
        # In a storm a device sends about one request per Retry-After, whatever it counts, so its pace
        # reads the storm as a few devices; its share of what the key was offered reads it as it is.
        by_share = math.ceil(over * limit / own - 1e-9) if own else 0
        if by_share >= OWN_SHARE_FROM:
            step = by_share
        return Counted(Refusal.OVERSHOOT, min(most, max(devices + 1, step)), False, 0, True)
    backed = backed_off(s, devices, most)
    if over >= OVERSHOOT_AT:
        step = min(need, math.ceil(devices * (1 + MAX_STEP)))
        return Counted(Refusal.OVERSHOOT, max(backed, min(most, max(devices + 1, step))), True, 0, laddered)
    if now_ns - s.set_ns < REPEAT_S * 1e9:
        return Counted(Refusal.OVERSHOOT, max(backed, min(most, devices + 1)), True, 0, laddered)
    return Counted(Refusal.CROWDED, backed, True, 0, laddered)


def backed_off(s: Learned, devices: int, most: int) -> int:
    """What a settled 429 that is not a burst leaves a count at: a count climbed while counting
    counts LADDER_BACKOFF times the devices (AIMD's decrease), any other holds."""
    return min(most, max(devices, math.ceil(devices * LADDER_BACKOFF - 1e-9))) if s.laddered else devices
