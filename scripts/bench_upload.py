#!/usr/bin/env python3
"""Fleet upload benchmark: N edged uploaders sharing one API key drain their backlogs through the
contract server (tests/contract/sonoran_server.py, 30 requests per rolling minute per key).

Side by side:
  naive     a client without a budget that retries a 429 after Retry-After (what most
            integrations do; Sonoran's own client does not even retry)
  edged     edged's uploader, default settings (each device starts at the full 30/min and
            learns its share from the 429s it gets)
  edged+share  edged with ``devices_sharing_key = N`` (the operator told each device the fleet size)

Figures: clips delivered, requests, 429 answers (% of requests), time to drain in minutes versus
the ideal (clips ÷ 30 per minute). The server and the uploaders share one clock that runs
``--scale`` times faster than real time (the limits are counted on it, so the figures are those of
a real-time run, compressed).

    .venv/bin/python scripts/bench_upload.py [--devices 10] [--clips 12] [--scale 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx

from edged.config import schema as config
from edged.core import limits
from edged.upload.answers import parse_retry_after
from edged.upload.outbox import PRIORITY_MARK, Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.targets import build_targets
from edged.upload.uploader import Uploader
from tests.contract.sonoran_server import SonoranServer
from tests.contract.test_upload import ACCOUNT, ScaledClock, make_webm


def edged_fleet(
    srv: SonoranServer, clock: ScaledClock, work: Path, devices: int, clips: int, share: int, clip_file: Path
) -> None:
    rigs = []
    digest = hashlib.sha256(clip_file.read_bytes()).hexdigest()
    key_file = work / "api.key"
    key_file.write_text("fleet-key\n")
    for i in range(devices):
        d = work / f"dev{i}"
        d.mkdir()
        s = config.from_mapping(
            {
                "storage": {"dir": str(d)},
                "upload": {
                    "targets": ["sonoran_v2"],
                    "sonoran_v2": {
                        "base_url": srv.url,
                        "api_key_file": str(key_file),
                        "account_uuid": ACCOUNT,
                        "plan": "pro",
                        "devices_sharing_key": share,
                    },
                },
            }
        )
        ob = Outbox(d / "outbox.sqlite", targets=s.upload.targets, now_ns=clock.now_ns)
        t0 = clock.now_ns()
        for c in range(clips):
            ob.enqueue(
                f"dev{i}-clip{c:03d}", [(1, clip_file, clip_file.stat().st_size, 30_000, digest)], PRIORITY_MARK, t0 + c
            )
        up = Uploader(
            ob,
            build_targets(s),
            RetryPolicy.from_settings(s.upload, random.Random(i)),
            now_ns=clock.now_ns,
            time_scale=clock.scale,
        )
        rigs.append((ob, up))
    for _, up in rigs:
        up.start()
    last = time.monotonic()
    while not all(all(d.state == "delivered" for d in ob.deliveries()) for ob, _ in rigs):
        time.sleep(0.05)
        if time.monotonic() - last > 5:
            last = time.monotonic()
            rates = [round(up.workers[0].budget.rate(), 1) for _, up in rigs]
            print(
                f"  … {len(srv.uploads)} delivered, {srv.count(429)} refused, rates/min {rates}",
                file=sys.stderr,
                flush=True,
            )
    for ob, up in rigs:
        up.stop()
        ob.close()


def naive_fleet(
    srv: SonoranServer, clock: ScaledClock, devices: int, clips: int, clip_file: Path, deadline: float
) -> None:
    """Gives up at ``deadline`` (clock time): refused requests count against the key too, so a
    fleet retrying blindly can keep the window full for a long time."""

    def device(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            for c in range(clips):
                while clock.now() < deadline:
                    with open(clip_file, "rb") as f:
                        r = client.post(
                            srv.url + "/v2/general/bodycam-recordings",
                            headers={"Authorization": "Bearer fleet-key"},
                            data={"accountUuid": ACCOUNT, "durationMs": "30000"},
                            files={"file": (f"dev{i}-{c}.webm", f, "video/webm")},
                        )
                    if r.status_code == 200:
                        break
                    wait = parse_retry_after(r.headers.get("retry-after"), clock.now()) or 1.0
                    time.sleep(wait / clock.scale)

    threads = [threading.Thread(target=device, args=(i,)) for i in range(devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run(mode: str, args: argparse.Namespace, clip_file: Path) -> dict:
    clock = ScaledClock(args.scale)
    work = Path(tempfile.mkdtemp(prefix=f"bench-upload-{mode}-"))
    try:
        with SonoranServer(keys={"fleet-key": "pro"}, clock=clock.now) as srv:
            t0 = clock.now()
            total = args.devices * args.clips
            if mode == "naive":
                naive_fleet(
                    srv, clock, args.devices, args.clips, clip_file, t0 + 5 * 60 * total / limits.REQUESTS_PER_MINUTE
                )
            else:
                edged_fleet(
                    srv, clock, work, args.devices, args.clips, args.devices if mode == "edged+share" else 1, clip_file
                )
            drain_min = (clock.now() - t0) / 60
            requests = len(srv.requests)
            refused = srv.count(429)
            if mode != "naive":
                assert len(srv.uploads) == total, (mode, len(srv.uploads), total)
            return {
                "mode": mode,
                "clips": len(srv.uploads),
                "requests": requests,
                "429": refused,
                "429_pct": 100 * refused / requests,
                "drain_min": drain_min,
                "ideal_min": total / limits.REQUESTS_PER_MINUTE,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--clips", type=int, default=12, help="backlog per device")
    ap.add_argument("--scale", type=float, default=10.0, help="clock speed-up (1 = real time)")
    ap.add_argument("--modes", default="naive,edged,edged+share")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_upload.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-upload-clip-"))
    clip = make_webm(work / "clip.webm", frames=20, size=96)
    print(
        f"fleet: {args.devices} devices × {args.clips} clips, one API key, limit "
        f"{limits.REQUESTS_PER_MINUTE}/min, clock ×{args.scale:g}"
    )
    print(
        f"{'mode':12} {'delivered':>11} {'requests':>8} {'429s':>5} {'429 %':>6} {'drain min':>9} {'ideal min':>9} "
        f"{'drain/ideal':>11}"
    )
    results = []
    for mode in args.modes.split(","):
        r = run(mode, args, clip)
        results.append(r)
        print(
            f"{r['mode']:12} {r['clips']:5d}/{args.devices * args.clips:<5d} {r['requests']:8d} {r['429']:5d} "
            f"{r['429_pct']:6.1f} "
            f"{r['drain_min']:9.2f} {r['ideal_min']:9.2f} {r['drain_min'] / r['ideal_min']:11.2f}",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "devices": args.devices,
                "clips": args.clips,
                "scale": args.scale,
                "limit_per_min": limits.REQUESTS_PER_MINUTE,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
