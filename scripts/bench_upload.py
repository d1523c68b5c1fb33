#!/usr/bin/env python3
"""Fleet upload benchmark: N edged uploaders sharing one API key (and one plan allowance) drain their
backlogs through the contract server (tests/contract/sonoran_server.py: 30 requests per rolling
minute per key, refused requests counted too, Retry-After on a 429).

Side by side:
  naive        a client without a budget that retries a 429 after Retry-After (what most
               integrations do; Sonoran's own client does not even retry)
  edged        edged's uploader, default settings (each device starts at the full 30/min and
               learns its share from the 429s it gets: first contact included)
  edged+share  edged with ``devices_sharing_key = N`` (the operator told each device the fleet size)
  +burst       the same, and another client on the key sends ``--burst`` requests at once when a
               third of the ideal drain has passed: how long until the fleet delivers at 90 % of
               its rate of the minute before the burst again (accepted uploads, trailing 30 s)

Each device is a real ``Uploader`` with its own outbox (SQLite) and its own target and HTTP client,
all in this process as threads (one worker thread each), with the server in the same process: the
work per request is small (a 2 KB clip), so the GIL is not what paces them (the figures match a
discrete simulation of the same rules). Figures: clips delivered, requests, the fleet's 429 answers
(% of its requests, first contact included), time to drain in minutes versus the ideal (clips ÷ 30
per minute), and the recovery after the burst. The server and the uploaders share one clock that
runs ``--scale`` times faster than real time (the limits are counted on it, so the figures are
those of a real-time run, compressed).

    .venv/bin/python scripts/bench_upload.py [--devices 50] [--clips 40] [--scale 20] [--json PATH]

The README's figures: ``--devices 50 --clips 40 --modes edged+share,edged,naive --naive-gives-up 2``
(told, not told, the naive client), and a lone device meeting another client's burst,
``--devices 1 --clips 300 --modes edged+burst,naive+burst`` (the burst after 5 minutes: the
complaint that started this was one such 429 leaving a device at 1 request/min for an hour).
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
from tests.support.fleet_sim import RECOVERY_SHARE, RECOVERY_WINDOW_S, recovery_s
from tests.support.upload import ACCOUNT, ScaledClock, make_webm

KEY = "fleet-key"
#: Each clip's duration: 50 devices × 40 clips fit the pro plan's 1000 minutes a day, the burst too.
CLIP_MS = 20_000
URL_PATH = "/v2/general/bodycam-recordings"


def edged_fleet(
    srv: SonoranServer, clock: ScaledClock, work: Path, devices: int, clips: int, share: int, clip_file: Path
) -> None:
    rigs = []
    digest = hashlib.sha256(clip_file.read_bytes()).hexdigest()
    key_file = work / "api.key"
    key_file.write_text(KEY + "\n")
    done = threading.Semaphore(0)
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
                f"dev{i}-clip{c:03d}",
                [(1, clip_file, clip_file.stat().st_size, CLIP_MS, digest)],
                PRIORITY_MARK,
                t0 + c,
            )
        up = Uploader(
            ob,
            build_targets(s),
            RetryPolicy.from_settings(s.upload, random.Random(i)),
            now_ns=clock.now_ns,
            time_scale=clock.scale,
            on_delivered=lambda clip_id: done.release(),
        )
        rigs.append((ob, up))
    for _, up in rigs:
        up.start()
    last = time.monotonic()
    for n in range(devices * clips):
        while not done.acquire(timeout=5):
            pass
        if time.monotonic() - last > 10:
            last = time.monotonic()
            rates = [up.workers[0].budget.rate() for _, up in rigs]
            print(
                f"  … {n + 1} delivered, {srv.count(429)} refused, fleet rate {sum(rates):.1f}/min "
                f"({min(rates):.2f}..{max(rates):.2f} per device)",
                file=sys.stderr,
                flush=True,
            )
    for ob, up in rigs:
        up.stop()
        ob.close()


def post(client: httpx.Client, srv: SonoranServer, clip_file: Path, name: str) -> httpx.Response:
    with open(clip_file, "rb") as f:
        return client.post(
            srv.url + URL_PATH,
            headers={"Authorization": f"Bearer {KEY}"},
            data={"accountUuid": ACCOUNT, "durationMs": str(CLIP_MS)},
            files={"file": (name, f, "video/webm")},
        )


def naive_fleet(
    srv: SonoranServer, clock: ScaledClock, devices: int, clips: int, clip_file: Path, deadline: float
) -> None:
    """Gives up at ``deadline`` (clock time): refused requests count against the key too, so a
    fleet retrying blindly can keep the window full for a long time."""

    def device(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            for c in range(clips):
                while clock.now() < deadline:
                    r = post(client, srv, clip_file, f"dev{i}-{c}.webm")
                    if r.status_code == 200:
                        break
                    wait = parse_retry_after(r.headers.get("retry-after"), clock.now()) or 1.0
                    time.sleep(wait / clock.scale)

    threads = [threading.Thread(target=device, args=(i,)) for i in range(devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def burst_client(srv: SonoranServer, clock: ScaledClock, at: float, n: int, clip_file: Path, fired: list) -> None:
    """Another client on the key: ``n`` requests at once at clock time ``at`` (each on a connection
    opened beforehand, released together)."""
    clients = [httpx.Client(timeout=30) for _ in range(n)]
    for c in clients:  # connect now, so the burst is the requests alone
        c.get(srv.url + "/")
    gate = threading.Barrier(n + 1)

    def one(k: int) -> None:
        gate.wait()
        post(clients[k], srv, clip_file, f"burst-{k}.webm")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    while clock.now() < at:
        time.sleep(0.01)
    fired.append(clock.now())
    gate.wait()
    for t in threads:
        t.join()
    for c in clients:
        c.close()


def run(mode: str, args: argparse.Namespace, clip_file: Path) -> dict:
    clock = ScaledClock(args.scale)
    work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    base, _, burst = mode.partition("+burst")
    try:
        with SonoranServer(keys={KEY: "pro"}, clock=clock.now) as srv:
            t0 = clock.now()
            total = args.devices * args.clips
            ideal_s = total / limits.REQUESTS_PER_MINUTE * 60
            fired: list[float] = []
            burster = None
            if mode.endswith("+burst"):
                at = t0 + max(args.burst_after_min * 60, ideal_s / 3)
                burster = threading.Thread(target=burst_client, args=(srv, clock, at, args.burst, clip_file, fired))
                burster.start()
            if base == "naive":
                naive_fleet(srv, clock, args.devices, args.clips, clip_file, t0 + args.naive_gives_up * ideal_s)
            else:
                share = args.devices if base == "edged+share" else 1
                edged_fleet(srv, clock, work, args.devices, args.clips, share, clip_file)
            drain_min = (clock.now() - t0) / 60
            if burster is not None:
                burster.join()
            fleet = [r for r in srv.requests if r.api == "v2"]
            burst_names = {u.at for u in srv.uploads if u.filename.startswith("burst-")}
            accepted = sorted(u.at for u in srv.uploads if not u.filename.startswith("burst-"))
            delivered = len(accepted)
            requests = len(fleet) - (args.burst if fired else 0)
            refused = sum(1 for r in fleet if r.status == 429) - (
                args.burst - len(burst_names) if fired else 0
            )  # the burst's own refusals are not the fleet's
            if base != "naive":
                assert delivered == total, (mode, delivered, total)
            out = {
                "mode": mode,
                "clips": delivered,
                "requests": requests,
                "429": refused,
                "429_pct": 100 * refused / max(1, requests),
                "drain_min": drain_min,
                "ideal_min": ideal_s / 60,
            }
            if fired:
                out["burst_at_min"] = (fired[0] - t0) / 60
                out["recovery_s"] = recovery_s(accepted, fired[0])
                out["recovery_lower_s"] = (accepted[-1] if accepted else fired[0]) - fired[0]
                out["429_after_burst"] = sum(1 for r in fleet if r.status == 429 and r.at >= fired[0]) - (
                    args.burst - len(burst_names)
                )
            return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_json(args: argparse.Namespace, results: list[dict]) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "devices": args.devices,
                "clips": args.clips,
                "scale": args.scale,
                "burst": args.burst,
                "limit_per_min": limits.REQUESTS_PER_MINUTE,
                "naive_gives_up_x_ideal": args.naive_gives_up,
                "recovery_window_s": RECOVERY_WINDOW_S,
                "recovery_share": RECOVERY_SHARE,
                "results": results,
            },
            indent=2,
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--clips", type=int, default=40, help="backlog per device")
    ap.add_argument("--scale", type=float, default=20.0, help="clock speed-up (1 = real time)")
    ap.add_argument("--modes", default="naive,edged,edged+share,naive+burst,edged+burst")
    ap.add_argument("--burst", type=int, default=30, help="requests the other client sends at once")
    ap.add_argument("--burst-after-min", type=float, default=5.0, help="at least this long after the start")
    ap.add_argument("--naive-gives-up", type=float, default=5.0, help="after this many times the ideal drain")
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_upload.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-upload-clip-"))
    clip = make_webm(work / "clip.webm", frames=20, size=96)
    print(
        f"fleet: {args.devices} devices × {args.clips} clips, one API key and one plan allowance, limit "
        f"{limits.REQUESTS_PER_MINUTE}/min, clock ×{args.scale:g}; devices are threads of one process"
    )
    print(
        f"{'mode':18} {'delivered':>11} {'requests':>8} {'429s':>5} {'429 %':>6} {'drain min':>9} {'ideal min':>9} "
        f"{'drain/ideal':>11} {'recovery s':>10}"
    )
    results: list[dict] = []
    for mode in args.modes.split(","):
        r = run(mode, args, clip)
        results.append(r)
        rec = r.get("recovery_s")
        print(
            f"{r['mode']:18} {r['clips']:5d}/{args.devices * args.clips:<5d} {r['requests']:8d} {r['429']:5d} "
            f"{r['429_pct']:6.1f} {r['drain_min']:9.2f} {r['ideal_min']:9.2f} {r['drain_min'] / r['ideal_min']:11.2f} "
            f"{'-' if 'recovery_s' not in r else ('never' if rec is None else f'{rec:.0f}'):>10}",
            flush=True,
        )
        write_json(args, results)  # after each mode: a long run's figures survive an interruption
    shutil.rmtree(work, ignore_errors=True)
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
