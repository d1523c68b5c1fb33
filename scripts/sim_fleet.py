#!/usr/bin/env python3
"""The fleet simulator (tests/support/fleet_sim.py) over many seeds: the share of 429s, the drain
against the ideal and the recovery after another client's burst, each as a mean and a worst case.

Why: a rule for devices sharing a key (edged/upload/key_share.py) is judged on the issue's cases (issue
16, part 3) and on the fleet sizes around them, and one seed says little (the counts a fleet reaches
at first contact vary from seed to seed). This runs the real ``RequestBudget`` of every device on a
virtual clock, so a 50-device hour takes about a second; scripts/bench_upload.py then measures the
real uploaders over HTTP.

    .venv/bin/python scripts/sim_fleet.py [--cases not-told-20s,told,...] [--seeds 12] [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fleet_sim import run_fleet

#: The cases (``run_fleet`` arguments): the issue's 50 devices not told their number (switched on
#: over 20 s, the realistic start; together; over 60 s), told, told with another client's burst, a
#: lone device alone and meeting a burst, and smaller fleets not told.
CASES: dict[str, dict] = {
    "not-told-20s": {"devices": 50, "clips": 40, "start_spread_s": 20.0},
    "not-told-together": {"devices": 50, "clips": 40},
    "not-told-60s": {"devices": 50, "clips": 40, "start_spread_s": 60.0},
    "told": {"devices": 50, "clips": 40, "share": 50},
    "told+burst": {"devices": 50, "clips": 40, "share": 50, "burst": 30, "burst_at_s": 20 * 60.0},
    "lone": {"devices": 1, "clips": 60},
    "lone+burst": {"devices": 1, "clips": 300, "burst": 30, "burst_at_s": 5 * 60.0},
    "10-not-told-20s": {"devices": 10, "clips": 40, "start_spread_s": 20.0},
    "3-not-told-20s": {"devices": 3, "clips": 40, "start_spread_s": 20.0},
}


def one(case: str, seed: int) -> tuple[float, float, float | None, bool]:
    """The share of 429s (%), drain ÷ ideal, recovery (s, None: no burst or never) and whether every
    clip was delivered, for one seed."""
    kw = CASES[case]
    run = run_fleet(seed=seed, **kw)
    return (
        100 * run.refused_share,
        run.drain_vs_ideal,
        run.recovery_s(),
        len(run.accepted) == kw["devices"] * kw["clips"],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--seeds", type=int, default=12, help="seeds 1..N")
    ap.add_argument("--jobs", type=int, default=2, help="processes")
    args = ap.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {', '.join(unknown)}")
    seeds = range(1, args.seeds + 1)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {c: [pool.submit(one, c, s) for s in seeds] for c in cases}
        print(f"{args.seeds} seeds; mean / worst")
        print(f"{'case':18} {'429 %':>13} {'drain/ideal':>13} {'recovery s':>13}  delivered")
        for c in cases:
            got = [f.result() for f in futures[c]]
            pct, drain = [g[0] for g in got], [g[1] for g in got]
            rec = [g[2] for g in got if g[2] is not None]
            never = sum(1 for g in got if g[2] is None) if "burst" in CASES[c] else 0
            rec_s = f"{statistics.mean(rec):5.0f} / {max(rec):5.0f}" if rec else "-"
            rec_s += f" ({never} never)" if never else ""
            lost = sum(1 for g in got if not g[3])
            print(
                f"{c:18} {statistics.mean(pct):5.2f} / {max(pct):5.2f} {statistics.mean(drain):5.2f} / "
                f"{max(drain):5.2f} {rec_s:>13}  {'all' if not lost else f'{lost} seeds short'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
