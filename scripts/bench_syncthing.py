#!/usr/bin/env python3
"""Benchmark: a config rolled out through real Syncthing, from saving it on the fleet side to its
``status/config.json`` saying ``applied`` back on the fleet side, for 1 and for N devices.

The set-up is the README's (section "Syncthing"): one fleet Syncthing instance; per device its own
Syncthing instance (as in the field: every device runs Syncthing, the fleet's one instance fans out
to all of them, which is where the number of devices weighs) and its own ``python -m edged run``
(a small paced synthetic recording), all on 127.0.0.1. Per device two Syncthing folders: config
(fleet send only -> device receive only) and status (device send only -> fleet receive only).

Each round saves a new ``edged.toml`` for every device on the fleet side at once and waits, on
the monotonic clock, for each device's answer (the fleet's copy of ``status/config.json`` with
that file's sha256 and ``applied``). Timings, set live through the REST API:

* ``tuned``: ``fsWatcherDelayS`` 1 and ``rescanIntervalS`` 30 on both sides (the README's set-up);
* ``defaults``: Syncthing's own, ``fsWatcherDelayS`` 10 and ``rescanIntervalS`` 3600.

Baseline: the same roll-out as a plain copy into each device's folder (a temporary renamed into
place, as rsync does), timed to ``status/config.json`` on the device: edged's own share of the
time, without any transport. Target: every device's answer back on the fleet within 60 s.

    scripts/bench_syncthing.py [--devices 1,10] [--rounds 3] [--timings tuned,defaults] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.syncthing import (
    DeviceShare,
    EdgedChild,
    Syncthing,
    Timing,
    read_json,
    share,
    unavailable,
    wait_shared,
)

TARGET_S = 60.0
#: edged's ``sync.poll_seconds`` (its default; the daemons here run with it).
POLL_S = 2.0
TIMINGS = {"tuned": Timing(watcher_delay_s=1, rescan_s=30), "defaults": Timing(watcher_delay_s=10, rescan_s=3600)}
#: A deadline for one round (a device that never answers counts as a failure, not a hang).
ROUND_DEADLINE_S = 300.0


@dataclass
class Fleet:
    fleet: Syncthing
    devices: list[Syncthing] = field(default_factory=list)
    shares: list[DeviceShare] = field(default_factory=list)
    edgeds: list[EdgedChild] = field(default_factory=list)

    def alive(self) -> None:
        for st in (self.fleet, *self.devices):
            st.check_alive()
        for e in self.edgeds:
            e.check_alive()

    def stop(self) -> None:
        for e in self.edgeds:
            try:
                e.stop()
            except AssertionError as exc:
                print(f"bench_syncthing: {exc}", file=sys.stderr)
        for st in (*self.devices, self.fleet):
            st.stop()


def wait(fleet: Fleet, pred, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        fleet.alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_syncthing: timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def build(root: Path, n: int, fps: int) -> Fleet:
    """The fleet instance, n device instances (started side by side), their folders, n daemons."""
    f = Fleet(Syncthing(root, "fleet"))
    try:
        f.devices = [Syncthing(root, f"device-{i:02d}") for i in range(n)]
        for st in (f.fleet, *f.devices):
            st.launch()
        for st in (f.fleet, *f.devices):
            st.wait_up(120)
        for i, dev in enumerate(f.devices):
            name = f"unit-{i:02d}"
            f.shares.append(share(f.fleet, dev, name, root / "fleet" / name, root / name / "sync", TIMINGS["tuned"]))
        for dev, s in zip(f.devices, f.shares):
            wait_shared(f.fleet, dev, s, timeout=300)
        f.edgeds = [EdgedChild(root / s.name / "edged", s.name, s.sync_dir, fps=fps) for s in f.shares]
        for e in f.edgeds:
            e.start()
        wait(f, lambda: all(e.recording() for e in f.edgeds), f"{n} daemons recording")
    except BaseException:
        f.stop()
        raise
    return f


def set_timing(f: Fleet, timing: Timing) -> None:
    for dev, s in zip(f.devices, f.shares):
        for folder_id in s.folder_ids():
            f.fleet.set_timing(folder_id, timing)
            dev.set_timing(folder_id, timing)
    pairs = list(zip(f.devices, f.shares))
    wait(f, lambda: all(f.fleet.idle(x) and dev.idle(x) for dev, s in pairs for x in s.folder_ids()), "folders idle")


def config_for(i: int, serial: int) -> bytes:
    # Unsigned, so a tunable key within its synced bounds; a new value every round.
    return f"# roll-out {serial}\n[camera]\nbitrate = {150_000 + 1_000 * serial + i}\n".encode()


def answered(path: Path, version: str) -> bool:
    doc = read_json(path)
    return bool(doc and doc.get("version") == version and doc.get("state") == "applied")


def roll_out(f: Fleet, serial: int, rng: random.Random, *, plain_copy: bool = False) -> list[float | None]:
    """Save a new config for every device; seconds until each answer is seen (None: never).

    It starts at a random moment within one ``sync.poll_seconds``: a round started right after
    the last answer would always meet edged's poll at the same phase."""
    time.sleep(rng.uniform(0, POLL_S))
    saved: list[float] = []
    want: list[tuple[Path, str]] = []
    for i, s in enumerate(f.shares):
        data = config_for(i, serial)
        if plain_copy:  # as rsync: a temporary beside it, renamed into place, straight into sync.dir
            tmp = s.sync_dir / f".edged.toml.{os.getpid()}"
            tmp.write_bytes(data)
            os.replace(tmp, s.sync_dir / "edged.toml")
            answer = s.sync_dir / "status" / "config.json"
        else:  # as an operator saves it on the fleet side
            (s.fleet_dir / "edged.toml").write_bytes(data)
            answer = s.fleet_dir / "status" / "config.json"
        saved.append(time.monotonic())
        want.append((answer, hashlib.sha256(data).hexdigest()))
    got: list[float | None] = [None] * len(want)
    deadline = time.monotonic() + ROUND_DEADLINE_S
    while any(g is None for g in got) and time.monotonic() < deadline:
        for i, (path, version) in enumerate(want):
            if got[i] is None and answered(path, version):
                got[i] = time.monotonic() - saved[i]
        f.alive()
        time.sleep(0.02)
    return got


def summary(label: str, n: int, latencies: list[float | None]) -> dict:
    seen = [x for x in latencies if x is not None]
    return {
        "label": label,
        "devices": n,
        "latencies_s": [None if x is None else round(x, 3) for x in latencies],
        "answered": len(seen),
        "expected": len(latencies),
        "median_s": round(statistics.median(seen), 3) if seen else None,
        "max_s": round(max(seen), 3) if seen else None,
        "pass": len(seen) == len(latencies) and max(seen) <= TARGET_S,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,10", help="comma-separated device counts")
    ap.add_argument("--rounds", type=int, default=3, help="roll-outs per timing and device count")
    ap.add_argument("--timings", default="tuned,defaults", help=f"of: {', '.join(TIMINGS)}")
    ap.add_argument("--fps", type=int, default=5, help="each daemon's synthetic camera rate (CPU: n daemons record)")
    ap.add_argument("--seed", type=int, default=2026, help="the random start of each round within a poll")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_syncthing.json")
    args = ap.parse_args()
    if why := unavailable():
        raise SystemExit(f"bench_syncthing: {why}")
    counts = [int(x) for x in args.devices.split(",") if x.strip()]
    timings = [t.strip() for t in args.timings.split(",") if t.strip()]
    runs, baselines = [], []
    serial = 0
    rng = random.Random(args.seed)
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="bench-syncthing-") as tmp:
            t0 = time.monotonic()
            f = build(Path(tmp), n, args.fps)
            print(f"{n} device(s): set up in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            try:
                for label in timings:
                    set_timing(f, TIMINGS[label])
                    lat: list[float | None] = []
                    for _ in range(args.rounds):
                        serial += 1
                        lat += roll_out(f, serial, rng)
                    runs.append(summary(label, n, lat) | {"timing": vars(TIMINGS[label])})
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
                # The baseline last: a plain copy is a local change in the device's receive-only folder.
                lat = []
                for _ in range(args.rounds):
                    serial += 1
                    lat += roll_out(f, serial, rng, plain_copy=True)
                baselines.append(summary("plain copy into sync.dir (as rsync), answer on the device", n, lat))
                print(json.dumps(baselines[-1]), file=sys.stderr, flush=True)
            finally:
                f.stop()

    doc = {
        "target_s": TARGET_S,
        "rounds": args.rounds,
        "fps": args.fps,
        "poll_seconds": POLL_S,
        "seed": args.seed,
        "topology": "one fleet Syncthing, one Syncthing and one edged per device, on 127.0.0.1",
        "runs": runs,
        "baselines": baselines,
        "pass": all(r["pass"] for r in runs if r["label"] == "tuned"),
    }
    print(f"\n{'fleet save -> applied back on the fleet':44} {'devices':>7} {'median':>7} {'max':>7}   target")
    for r in runs:
        t = r["timing"]
        label = f"syncthing {r['label']} (watcher {t['watcher_delay_s']} s, rescan {t['rescan_s']} s)"
        print(
            f"{label:44} {r['devices']:7d} {r['median_s'] or float('nan'):7.2f} {r['max_s'] or float('nan'):7.2f}"
            f"   <= {TARGET_S:g} s  {'PASS' if r['pass'] else 'FAIL'}  ({r['answered']}/{r['expected']} answered)"
        )
    for b in baselines:
        label = "baseline: plain copy, answer on the device"
        print(f"{label:44} {b['devices']:7d} {b['median_s']:7.2f} {b['max_s']:7.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
