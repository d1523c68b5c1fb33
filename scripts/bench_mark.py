#!/usr/bin/env python3
"""Benchmark: time from the end of a post-roll to the clip's parts being in the outbox.

Runs the real daemon in real time (paced synthetic camera and tone at the recommended target),
marks a few events, and measures, on the monotonic clock, how long after each event's end its
parts were queued. Target: within 2 s.

    .venv/bin/python scripts/bench_mark.py [--events 3] [--pre 5] [--post 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edged.app.daemon import Daemon
from edged.config.schema import from_mapping
from edged.events.store import EventStore
from edged.upload.outbox import Outbox

TARGET_S = 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("--pre", type=float, default=5.0)
    ap.add_argument("--post", type=float, default=5.0)
    ap.add_argument("--json", type=Path, default=Path("bench-out/bench_mark.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = from_mapping(
            {
                "camera": {"source": "synthetic", "paced": True},
                "audio": {"source": "synthetic"},
                "storage": {"dir": tmp, "min_free_bytes": 0},
                "clips": {"pre_roll_seconds": args.pre, "post_roll_seconds": args.post},
            },
            origin="bench_mark",
        )
        daemon = Daemon(settings)
        thread = threading.Thread(target=daemon.run)
        thread.start()
        latencies: list[float] = []
        try:
            if not daemon.wait_ready(60):
                raise SystemExit("bench_mark: the daemon did not become ready within 60 s")
            time.sleep(args.pre + 1)
            for _ in range(args.events):
                result = daemon.mark("bench")
                outbox = Outbox(daemon.paths.outbox)
                while not outbox.parts(result.event_id):
                    time.sleep(0.01)
                queued_at = time.monotonic_ns()
                outbox.close()
                latencies.append((queued_at - result.end_mono_ns) / 1e9)
                store = EventStore(daemon.paths.events)
                while store.get(result.event_id).state == "open":  # queued just before it is marked built
                    time.sleep(0.01)
                assert store.get(result.event_id).state == "built"
                store.close()
                time.sleep(1.0)
        finally:
            daemon.stop()
            thread.join()

    figures = {
        "events": len(latencies),
        "latency_s_min": min(latencies),
        "latency_s_median": statistics.median(latencies),
        "latency_s_max": max(latencies),
        "target_s": TARGET_S,
        "pass": max(latencies) <= TARGET_S,
    }
    print(f"{'post-roll end -> parts in outbox':34} {'min':>7} {'median':>7} {'max':>7}   target")
    print(
        f"{'edged (paced, 960x540 10 fps)':34} {figures['latency_s_min']:7.2f} {figures['latency_s_median']:7.2f}"
        f" {figures['latency_s_max']:7.2f}   <= {TARGET_S} s  {'PASS' if figures['pass'] else 'FAIL'}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
