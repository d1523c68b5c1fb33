"""Devices sharing one API key, as a fleet: the real ``RequestBudget`` of each device on a simulated
clock against the server's rule (tests/support/fleet_sim.py), an hour of a 50-device fleet in a
second. The issue's targets (issue 16, part 3) where they are met; the real uploaders over HTTP are
measured by scripts/bench_upload.py. Deterministic: the seeds fix every random choice."""

from __future__ import annotations

import pytest

from tests.support.fleet_sim import run_fleet


@pytest.mark.parametrize("seed", [1, 2])
def test_fifty_devices_told_their_number_stay_under_five_percent_429s_and_drain_near_the_ideal(seed):
    run = run_fleet(50, 40, share=50, seed=seed)
    assert len(run.accepted) == 50 * 40, "every clip delivered"
    assert run.refused_share < 0.05, f"{run.refused} of {run.requests} refused"
    assert run.drain_vs_ideal <= 1.2, f"{run.drain_s / 60:.1f} min against the ideal {run.ideal_s / 60:.1f}"


def test_fifty_devices_not_told_count_the_fleet_at_first_contact():
    """Each starts at the whole limit; one 429 each at first contact, then the key holds."""
    run = run_fleet(50, 40, seed=1)
    assert len(run.accepted) == 50 * 40
    assert run.refused_share < 0.05, f"{run.refused} of {run.requests} refused"
    assert run.drain_vs_ideal <= 1.4


def test_a_lone_device_drains_at_the_whole_limit():
    run = run_fleet(1, 60, seed=3)
    assert run.refused == 0
    assert run.drain_vs_ideal <= 1.05


def test_a_fleet_is_back_at_its_rate_within_two_minutes_of_another_clients_burst():
    run = run_fleet(50, 40, share=50, seed=4, burst=30, burst_at_s=20 * 60)
    assert len(run.accepted) == 50 * 40
    recovery = run.recovery_s()
    assert recovery is not None and recovery <= 120


@pytest.mark.parametrize("seed", [1, 2])
def test_fifty_devices_not_told_starting_over_twenty_seconds_stop_refusing_after_the_first_minutes(seed):
    """Devices switched on over 20 s read first contact from a window still filling (some count 6,
    some 20). Counting on until a clean window ends the storm within minutes (before: 25-32 % of
    the requests after the first 10 minutes refused, 40 % in all; then 2-4 % and 11-15 %, seeds
    1-12), and reading the count from the device's own share of the key in the storm
    (OWN_SHARE_FROM) halves what it costs: 5.4-8.1 % in all (seeds 1 and 2: 12.9 % without it).
    The counts end 1x-2.7x the fleet and unequal; evened out by AIMD (LADDER_GAIN) the drain is
    1.7-1.9x the ideal. Not the issue's bar (README, "Sharing a key")."""
    run = run_fleet(50, 40, seed=seed, start_spread_s=20.0)
    assert len(run.accepted) == 50 * 40
    after = run.refused_share_after(10 * 60)
    assert after < 0.05, f"{after:.1%} of the requests after the first 10 minutes refused"
    assert run.refused_share < 0.09, f"{run.refused} of {run.requests} refused"
    assert run.drain_vs_ideal <= 2.2, f"{run.drain_s / 60:.1f} min against the ideal {run.ideal_s / 60:.1f}"


def test_fifty_devices_told_their_number_ride_out_another_clients_burst():
    """After a clean window one 429 never counts more devices: a burst of 30 costs the fleet a few
    per cent of refusals, not a count that grows on every device it refused (before: 10.8 %)."""
    run = run_fleet(50, 40, share=50, seed=1, burst=30, burst_at_s=20 * 60)
    assert len(run.accepted) == 50 * 40
    assert run.refused_share < 0.08, f"{run.refused} of {run.requests} refused"
