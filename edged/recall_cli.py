"""The command line of recalls: ``edged recall`` and ``edged timeline``.

``edged recall --start ISO --duration MIN [--timelapse] [--camera POS ...] [--id ID] [--wait S] [--json]``
sends a recall request to the running daemon through the control socket; the daemon validates it
exactly as it validates inbox files (one place), so the reasons printed are the same. It prints the
request's id and status (``pending``, or ``rejected`` with every reason); ``--wait`` follows it to
``completed`` (printing the URLs or paths) or ``failed`` (printing the reason).

``edged timeline [--json]`` lists the footage ranges the ring buffer holds, per camera, read from
the index read-only: it works with the daemon running or not, and on a read-only card.

Exit codes: 0 accepted (with ``--wait``: completed), 1 rejected, failed, timed out or no daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from edged.config import Settings
from edged.paths import StatePaths

#: How often ``--wait`` asks the daemon.
WAIT_POLL_S = 0.5


def add_parsers(sub: Any, settings_or_exit: Callable[[str | None], Settings]) -> None:
    rc = sub.add_parser("recall", help="ask the running daemon for recorded footage (a video recall request)")
    rc.add_argument("--config")
    rc.add_argument("--start", required=True, metavar="ISO8601",
                    help="start of the footage, with a time zone, e.g. 2024-05-01T14:30:00Z")
    rc.add_argument("--duration", required=True, metavar="MINUTES",
                    help="regular: 1, 2 or 3; timelapse: 5, 10, 15, 30, 45 or 60")
    rc.add_argument("--timelapse", action="store_true", help="a timelapse of the window (at most 120 s)")
    rc.add_argument("--camera", action="append", dest="cameras", metavar="POSITION",
                    help="camera position (repeatable; default every camera)")
    rc.add_argument("--id", help="request id (default: generated)")
    rc.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to this long for completed or failed")
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=lambda args: cmd_recall(args, settings_or_exit(args.config)))

    tl = sub.add_parser("timeline", help="footage ranges available per camera (to aim a recall request)")
    tl.add_argument("--config")
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(func=lambda args: cmd_timeline(args, settings_or_exit(args.config)))


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request as an inbox file would hold it (the daemon judges it)."""
    duration: Any = args.duration
    if isinstance(duration, str) and duration.strip().isdigit():
        duration = int(duration)
    body: dict[str, Any] = {"start_time": args.start, "duration": duration,
                            "recall_type": "timelapse" if args.timelapse else "regular"}
    if args.cameras is not None:
        body["camera_positions"] = args.cameras
    return body


def _print(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    line = f"recall {doc['id']}: {doc['status']}"
    if doc.get("progress") and doc["status"] in ("pending", "processing"):
        line += f" ({doc['progress']})"
    print(line)
    for r in doc.get("reasons") or ([doc["reason"]] if doc.get("reason") else []):
        print(f"  {r}")
    for g in (doc.get("footage") or {}).get("missing", []):
        print(f"  missing {g['start']} to {g['end']}: {g['reason']}")
    for u in doc.get("urls") or []:
        print(f"  {u}")


def cmd_recall(args: argparse.Namespace, settings: Settings) -> int:
    from edged.control import ControlError, request
    sock = StatePaths(settings.state_dir).control
    payload: dict[str, Any] = {"cmd": "recall", "request": request_body(args)}
    if args.id:
        payload["id"] = args.id
    try:
        doc = request(sock, payload)["recall"]
        if args.wait is not None and doc["status"] in ("pending", "processing"):
            deadline = time.monotonic() + args.wait
            while doc["status"] in ("pending", "processing") and time.monotonic() < deadline:
                time.sleep(WAIT_POLL_S)
                doc = request(sock, {"cmd": "recall_status", "id": doc["id"]})["recall"]
    except ControlError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    _print(doc, args.json)
    if doc["status"] in ("rejected", "failed"):
        return 1
    if args.wait is not None and doc["status"] != "completed":
        print(f"edged: recall {doc['id']} still {doc['status']} after {args.wait:g} s", file=sys.stderr)
        return 1
    return 0


def cmd_timeline(args: argparse.Namespace, settings: Settings) -> int:
    from edged.index import Index
    from edged.timeline import timeline
    paths = StatePaths(settings.state_dir)
    segments = []
    if paths.index.exists():
        idx = Index(paths.index, read_only=True)
        try:
            segments = idx.segments()
        finally:
            idx.close()
    doc = timeline(segments, settings.camera.position, settings.device.id)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for cam in doc["cameras"]:
        print(f"camera {cam['position']}: {len(cam['ranges'])} range(s)")
        for r in cam["ranges"]:
            print(f"  {r['start']} .. {r['end']}  {r['seconds']:>9.1f} s  boot {r['boot_id'][:8]}"
                  f"{'' if r['clock_synchronized'] else '  (clock not synchronised)'}")
    return 0
