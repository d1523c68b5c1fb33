"""The command line of recalls: ``edged recall`` and ``edged timeline``.

``edged recall --start ISO --duration MIN [--timelapse] [--camera POS ...] [--id ID] [--wait S] [--json]``
sends a recall request to the running daemon through the control socket; the daemon validates it
exactly as it validates inbox files (one place), so the reasons printed are the same. It prints the
request's id and status (``pending``, or ``rejected`` with every reason); ``--wait`` follows it to
``completed`` (printing the URLs or paths) or ``failed`` (printing the reason).

``edged timeline [--json]`` lists the footage ranges the ring buffer holds, per camera, read from
the index read-only: it works with the daemon running or not, and on a read-only card.

Exit codes: 0 accepted (with ``--wait``: completed), 1 rejected, failed, timed out or no daemon,
2 a usage error (one line: a duration that is not a whole number, a wait that is not finite, an id
that is not a plain name). What the daemon answers is printed scrubbed of secrets.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable
from typing import Any

from edged.config.schema import Settings
from edged.core.paths import StatePaths

#: How often ``--wait`` asks the daemon.
WAIT_POLL_S = 0.5
#: The longest ``--wait`` (a day).
MAX_WAIT_S = 86_400.0


def minutes_arg(text: str) -> int:
    """A whole number of minutes in ASCII digits (the daemon judges which ones a recall allows)."""
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of minutes")
    return int(text)


def wait_arg(text: str) -> float:
    try:
        value = float(text) if text.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT_S:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to {MAX_WAIT_S:g}")
    return value


def id_arg(text: str) -> str:
    from edged.recall.request import ID_PATTERN

    if not ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain name (letters, digits, '.', '_', '-'; "
            "at most 64, starting with a letter or digit)"
        )
    return text


def add_parsers(sub: Any, settings_or_exit: Callable[[str | None], Settings]) -> None:
    from edged.cli.main import path_arg

    rc = sub.add_parser("recall", help="ask the running daemon for recorded footage (a video recall request)")
    rc.add_argument("--config", type=path_arg)
    rc.add_argument(
        "--start",
        required=True,
        metavar="ISO8601",
        help="start of the footage, with a time zone, e.g. 2024-05-01T14:30:00Z",
    )
    rc.add_argument(
        "--duration",
        required=True,
        metavar="MINUTES",
        type=minutes_arg,
        help="regular: 1, 2 or 3; timelapse: 5, 10, 15, 30, 45 or 60",
    )
    rc.add_argument("--timelapse", action="store_true", help="a timelapse of the window (at most 120 s)")
    rc.add_argument(
        "--camera",
        action="append",
        dest="cameras",
        metavar="POSITION",
        help="camera position (repeatable; default every camera)",
    )
    rc.add_argument("--id", type=id_arg, help="request id (default: generated)")
    rc.add_argument(
        "--wait",
        type=wait_arg,
        metavar="SECONDS",
        help=f"wait up to this long for completed or failed (at most {MAX_WAIT_S:g})",
    )
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=lambda args: cmd_recall(args, settings_or_exit(args.config)))

    tl = sub.add_parser("timeline", help="footage ranges available per camera (to aim a recall request)")
    tl.add_argument("--config", type=path_arg)
    tl.add_argument("--json", action="store_true")
    tl.set_defaults(func=lambda args: cmd_timeline(args, settings_or_exit(args.config)))


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request as an inbox file would hold it (the daemon judges it)."""
    body: dict[str, Any] = {
        "start_time": args.start,
        "duration": args.duration,
        "recall_type": "timelapse" if args.timelapse else "regular",
    }
    if args.cameras is not None:
        body["camera_positions"] = args.cameras
    return body


def _print(doc: dict[str, Any], as_json: bool) -> None:
    from edged.cli.main import print_json, say

    if as_json:
        print_json(doc)
        return
    line = f"recall {doc.get('id')}: {doc.get('status')}"
    if doc.get("progress") and doc.get("status") in ("pending", "processing"):
        line += f" ({doc['progress']})"
    say(line)
    for r in doc.get("reasons") or ([doc["reason"]] if doc.get("reason") else []):
        say(f"  {r}")
    for g in (doc.get("footage") or {}).get("missing", []):
        say(f"  missing {g.get('start')} to {g.get('end')}: {g.get('reason')}")
    for u in doc.get("urls") or []:
        say(f"  {u}")


def _recall_doc(answer: dict[str, Any]) -> dict[str, Any]:
    from edged.app.control import ControlError

    doc = answer.get("recall")
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("status"), str):
        raise ControlError("edged answered without a recall status")
    return doc


def cmd_recall(args: argparse.Namespace, settings: Settings) -> int:
    from edged.app.control import ControlError, request

    sock = StatePaths(settings.state_dir).control
    payload: dict[str, Any] = {"cmd": "recall", "request": request_body(args)}
    if args.id:
        payload["id"] = args.id
    try:
        doc = _recall_doc(request(sock, payload))
        if args.wait is not None and doc["status"] in ("pending", "processing"):
            deadline = time.monotonic() + args.wait
            while doc["status"] in ("pending", "processing") and time.monotonic() < deadline:
                time.sleep(WAIT_POLL_S)
                doc = _recall_doc(request(sock, {"cmd": "recall_status", "id": doc["id"]}))
    except ControlError as exc:
        from edged.cli.main import warn

        warn(str(exc))
        return 1
    _print(doc, args.json)
    if doc["status"] in ("rejected", "failed"):
        return 1
    if args.wait is not None and doc["status"] != "completed":
        from edged.cli.main import warn

        warn(f"recall {doc['id']} still {doc['status']} after {args.wait:g} s")
        return 1
    return 0


def cmd_timeline(args: argparse.Namespace, settings: Settings) -> int:
    from edged.footage.index import Index
    from edged.footage.timeline import timeline

    paths = StatePaths(settings.state_dir)
    segments = []
    if paths.index.exists():
        idx = Index(paths.index, read_only=True)
        try:
            segments = idx.segments()
        finally:
            idx.close()
    doc = timeline(segments, settings.camera.position, settings.device.id)
    from edged.cli.main import print_json

    if args.json:
        print_json(doc)
        return 0
    for cam in doc["cameras"]:
        print(f"camera {cam['position']}: {len(cam['ranges'])} range(s)")
        for r in cam["ranges"]:
            print(
                f"  {r['start']} .. {r['end']}  {r['seconds']:>9.1f} s  boot {r['boot_id'][:8]}"
                f"{'' if r['clock_synchronized'] else '  (clock not synchronised)'}"
            )
    return 0
