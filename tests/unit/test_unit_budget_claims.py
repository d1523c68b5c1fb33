"""The key's request budget shared by uploads and the unit operations (budget.Claim), and the
location pacer's rule: on the real SQLite store, with times the test chooses."""

from __future__ import annotations

import random

import pytest

from edged.capture.position import Fix
from edged.core import limits
from edged.upload.budget import PANIC_RESERVE, Claim, RequestBudget, key_fingerprint
from edged.upload.outbox import Outbox
from edged.upload.sonoran_unit.api import location_text, valid_fix
from edged.upload.sonoran_unit.location import LocationPacer, distance_m

T0 = 10**12
S = 10**9


@pytest.fixture
def store(tmp_path):
    s = Outbox(tmp_path / "outbox.sqlite")
    yield s
    s.close()


def budget(store, seed: int = 1, reserve: int = PANIC_RESERVE) -> RequestBudget:
    return RequestBudget(store, key_fingerprint("k"), rng=random.Random(seed), reserve=reserve)


def first_slot(b: RequestBudget, start: int) -> int:
    """When the first delivery request is granted, asking every 0.1 s from ``start``."""
    t = start
    while b.try_take(t, Claim.DELIVERY) > 0:
        t += S // 10
    return t


def fill(b: RequestBudget, claim: Claim, start: int, seconds: float, step_s: float = 0.1) -> list[int]:
    granted, t = [], start
    while t < start + seconds * S:
        if b.try_take(t, claim) == 0:
            granted.append(t)
        t += int(step_s * S)
    return granted


def test_uploads_never_take_the_panics_slot_and_a_panic_goes_at_once_when_they_filled_the_rest(store):
    uploads = budget(store)
    granted = fill(uploads, Claim.DELIVERY, T0, 61)
    assert len(granted) == limits.REQUESTS_PER_MINUTE - PANIC_RESERVE, "uploads stop one short of the window"
    now = granted[-1] + S // 2
    assert uploads.try_take(now, Claim.DELIVERY) > 0, "the reserve is not an upload's"
    panic = budget(store, seed=2)  # another instance on the same key (the panic worker's)
    assert panic.try_take(now, Claim.PANIC) == 0, "the panic takes the reserved slot, unpaced"
    wait = panic.try_take(now + S // 10, Claim.PANIC)
    assert wait > 0, "a second panic in the same window waits: the window holds 30, the server's limit"
    assert wait == pytest.approx((granted[0] + int(61 * S) - now - S // 10) / S, abs=0.01)


def test_without_a_reserve_uploads_use_the_whole_window(store):
    b = budget(store, reserve=0)
    assert len(fill(b, Claim.DELIVERY, T0, 61)) == limits.REQUESTS_PER_MINUTE


def test_a_panic_is_not_paced_but_is_held_by_the_servers_retry_after(store):
    b = budget(store)
    t0 = first_slot(b, T0)  # a new key's first slot comes at a random phase of the pace
    assert b.try_take(t0 + 1, Claim.DELIVERY) > 1.0, "uploads are paced about 2 s apart"
    assert b.try_take(t0 + 2, Claim.PANIC) == 0, "a panic does not wait for the pace"
    assert b.try_take(t0 + S // 2, Claim.DELIVERY) > 1.0, "and did not move the uploads' pace"
    b.refused(t0 + S, 20.0)
    assert b.try_take(t0 + 2 * S, Claim.PANIC) == pytest.approx(19.0), "the server said wait: a panic waits too"


def test_location_only_takes_half_of_what_uploads_leave_and_never_paces_them(store):
    b = budget(store)
    granted = fill(b, Claim.BACKGROUND, T0, 30)
    assert len(granted) == (limits.REQUESTS_PER_MINUTE - PANIC_RESERVE) // 2
    assert b.try_take(T0 + 30 * S, Claim.DELIVERY) == 0, "an upload still goes at once"
    shared = budget(store, seed=5)
    small = RequestBudget(store, key_fingerprint("fleet"), share=15, reserve=PANIC_RESERVE)  # 2 a minute each
    assert small.try_take(T0, Claim.BACKGROUND) > 0, "at 2 a minute less the reserve there is no room for location"
    assert shared.try_take(T0 + 31 * S, Claim.PANIC) == 0


def test_the_pacer_sends_the_first_fix_then_only_while_moving_and_once_an_interval():
    p = LocationPacer(interval_s=30, min_distance_m=25, min_speed_mps=1.0)
    here = Fix(51.5007, -0.1246, 3, 1000.0, speed_mps=0.0)
    assert p.wait_s(here, 0.0) == 0.0
    p.sent(here, 0.0)
    moved = Fix(51.5010, -0.1246, 3, 1010.0, speed_mps=0.0)  # ~33 m north
    assert p.wait_s(moved, 10.0) == pytest.approx(20.0), "not before the interval"
    still = Fix(51.50071, -0.1246, 3, 1040.0, speed_mps=0.2)  # ~1 m, slow
    assert p.wait_s(still, 40.0) > 0, "standing still: nothing to send"
    assert p.wait_s(moved, 40.0) == 0.0, "moved 25 m or more"
    fast = Fix(51.50071, -0.1246, 3, 1041.0, speed_mps=5.0)
    assert p.wait_s(fast, 41.0) == 0.0, "moving fast enough, even if close"
    same = Fix(51.5007, -0.1246, 3, 1000.0, speed_mps=9.0)
    assert p.wait_s(same, 41.0) > 0, "the fix already sent is not sent again"


def test_distance_and_what_a_fix_must_be_to_be_sent():
    assert distance_m(Fix(0.0, 0.0, 2, 0), Fix(0.0, 1.0, 2, 0)) == pytest.approx(111_195, rel=1e-3)
    assert valid_fix(Fix(51.5, -0.12, 3, 0, alt_m=20.0))
    assert not valid_fix(Fix(91.0, 0.0, 2, 0))
    assert not valid_fix(Fix(10.0, float("nan"), 2, 0))
    assert not valid_fix(Fix(10.0, 10.0, 3, 0, alt_m=float("inf")))
    assert location_text(Fix(51.50070, -0.12460, 3, 0, eph_m=4.6)) == "51.50070, -0.12460 ±5 m"
