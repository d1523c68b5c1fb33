#!/usr/bin/env python3
"""Where edged's recording CPU beyond the floor goes: a fixed cost per run, or a cost per second.

scripts/bench_record.py compares whole runs (120 s of footage), so a cost paid once per run (start-up:
imports, the index, the stages; and stop) and a cost paid per frame look the same there. This splits
them: edged (stamp off) and the floor (scripts/floor_encode.py) record the same shaken footage for a
short and a long span, alternating, ``--repeat`` times each, with the same bytecode set-up as
bench_record (and one unmeasured run first). The medians give a line per recorder:

* slope: CPU s per recorded second (the encoders, and the per-frame work around them);
* intercept: CPU s a run costs whatever its length (start and stop).

and the ratio edged/floor a run of ``--at`` seconds would have from them.

    .venv/bin/python scripts/bench_record_split.py [--short 1] [--long 21] [--repeat 5] [--at 120]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_record import installed_bytecode, run_edged_stamp_off, run_floor
from scripts.shake import shaken


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", type=float, default=1.0)
    ap.add_argument("--long", type=float, default=21.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--at", type=float, default=120.0, help="the run length the ratio is given for")
    args = ap.parse_args()
    source = shaken(args.long + 1)
    runners = {"edged (stamp off)": run_edged_stamp_off, "floor": run_floor}
    work = Path(tempfile.mkdtemp(prefix="bench_record_split-"))
    cpu: dict[tuple[str, float], list[float]] = {}
    try:
        installed_bytecode(work / "pycache")
        for name, runner in runners.items():  # unmeasured: the standard library compiled into the cache
            runner(source, args.short, _fresh(work / f"warm-{name[:5]}"))
        for r in range(args.repeat):
            for seconds in (args.short, args.long):
                for name, runner in runners.items():
                    run, _, _ = runner(source, seconds, _fresh(work / f"{name[:5]}-{seconds:g}-{r}"))
                    cpu.setdefault((name, seconds), []).append(run.cpu_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    line = {}
    print(f"{args.repeat} alternating runs of {args.short:g} s and {args.long:g} s each; CPU s, median")
    print(f"{'recorder':<20} {'short':>8} {'long':>8} {'per s':>8} {'fixed':>8}")
    for name in runners:
        short = statistics.median(cpu[(name, args.short)])
        long = statistics.median(cpu[(name, args.long)])
        slope = (long - short) / (args.long - args.short)
        fixed = short - slope * args.short
        line[name] = (slope, fixed)
        print(f"{name:<20} {short:8.3f} {long:8.3f} {slope:8.4f} {fixed:8.3f}")
    (es, ef), (fs, ff) = line["edged (stamp off)"], line["floor"]
    at = args.at
    print(
        f"edged/floor: per second {es / fs:.3f}x, fixed +{ef - ff:.3f} s a run; "
        f"a {at:g} s run: {(ef + es * at) / (ff + fs * at):.3f}x "
        f"(per-second part alone {es / fs:.3f}x, the fixed part adds {(ef - ff) / (ff + fs * at) * 100:.1f} %)"
    )
    return 0


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
