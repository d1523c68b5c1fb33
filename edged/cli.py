"""The ``edged`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edged import config as config_mod


def _setup_logging(verbose: bool) -> None:
    """The journal (structured fields) when there is one, else stderr; secrets scrubbed."""
    from edged.journal import setup_logging
    setup_logging(verbose)


def _load(path: str | None) -> config_mod.Settings:
    return config_mod.load_or_defaults(Path(path) if path else None)


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        settings = _load(args.config)
    except config_mod.ConfigError as exc:
        from edged.journal import Msg, log_event
        log_event(logging.getLogger("edged"), Msg.CONFIG_REJECTED, "bad configuration, not starting:\n%s", exc,
                  level=logging.CRITICAL, config=exc.source, key=",".join(k for k, _ in exc.problems),
                  reason="; ".join(f"{k}: {r}" for k, r in exc.problems))
        return 78  # EX_CONFIG
    from edged.daemon import run
    return run(settings, stop_after_s=args.for_seconds)


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        settings = config_mod.load(args.path)
    except config_mod.ConfigError as exc:
        print(f"edged: bad configuration:\n{exc}", file=sys.stderr)
        return 1
    print(f"{args.path}: ok (state folder {settings.state_dir}, camera {settings.camera.source}, "
          f"{settings.camera.width}x{settings.camera.height}@{settings.camera.fps} {settings.camera.bitrate} bps)")
    return 0


def cmd_config_keygen(args: argparse.Namespace) -> int:
    from edged import configsign
    try:
        private, public, b64 = configsign.generate(args.dir)
    except FileExistsError as exc:
        print(f"edged: {exc.filename} exists; a fleet key is never overwritten", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edged: cannot write the key pair into {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"private key {private} (owner-only; keep it off the devices)\npublic key  {public}\n"
          f"devices: [sync] fleet_public_key = \"{b64}\"")
    return 0


def cmd_config_sign(args: argparse.Namespace) -> int:
    from edged import configsign
    from edged.files import write_atomic
    try:
        key = configsign.load_private_key(args.key)
        data = args.file.read_bytes()
    except (configsign.KeyLoadError, OSError) as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    out = args.output or args.file
    try:  # atomic: a sync tool watching the folder never sees half a file
        write_atomic(out, configsign.sign(data, key))
    except OSError as exc:
        print(f"edged: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"signed {out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edged.paths import StatePaths
    from edged.status import read_status
    try:
        settings = _load(args.config)
    except config_mod.ConfigError as exc:
        print(f"edged: bad configuration:\n{exc}", file=sys.stderr)
        return 78
    status = read_status(StatePaths(settings.state_dir))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for k, v in status.items():
            print(f"{k:20} {v}")
    return 0


def _settings_or_exit(path: str | None) -> config_mod.Settings:
    try:
        return _load(path)
    except config_mod.ConfigError as exc:
        print(f"edged: bad configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(78) from None


def cmd_mark(args: argparse.Namespace) -> int:
    from edged.control import ControlError, request
    from edged.paths import StatePaths
    settings = _settings_or_exit(args.config)
    try:
        answer = request(StatePaths(settings.state_dir).control, {"cmd": "mark", "note": args.note or ""})
    except ControlError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    what = "extended event" if answer.get("extended") else "marked: event"
    print(f"{what} {answer['event_id']}")
    return 0


def _open_clip_stores(settings: config_mod.Settings):
    from edged.events import EventStore
    from edged.outbox import Outbox
    from edged.paths import StatePaths
    paths = StatePaths(settings.state_dir)
    store = EventStore(paths.events, read_only=True) if paths.events.exists() else None
    outbox = Outbox(paths.outbox, read_only=True) if paths.outbox.exists() else None
    return paths, store, outbox


def cmd_clips_list(args: argparse.Namespace) -> int:
    from edged.events import clip_summaries
    settings = _settings_or_exit(args.config)
    paths, store, outbox = _open_clip_stores(settings)
    clips = clip_summaries(store, outbox, paths.clips) if store and outbox else []
    if args.json:
        print(json.dumps(clips, indent=2))
    else:
        for c in clips:
            parts = c["parts"]
            print(f"{c['id']}  {c['state']:7} {len(c['marks'])} mark(s)  {len(parts)} part(s)  "
                  f"{c['wall_start'] or '-'} .. {c['wall_end'] or '-'}  {c['reason']}")
    return 0


def cmd_clips_export(args: argparse.Namespace) -> int:
    from edged.events import export_clip
    settings = _settings_or_exit(args.config)
    from edged.paths import StatePaths
    try:
        files = export_clip(StatePaths(settings.state_dir).clips, args.id, args.dir)
    except FileNotFoundError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    for f in files:
        print(f)
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from edged.status import iso
    settings = _settings_or_exit(args.config)
    _, _, outbox = _open_clip_stores(settings)
    rows = []
    if outbox is not None:
        for d in outbox.deliveries(states=[args.state] if args.state else None):
            row = d.as_dict()
            row["next_try"] = iso(d.next_try_ns) if d.state == "deferred" else None
            row["delivered"] = iso(d.delivered_ns) if d.delivered_ns else None
            del row["next_try_ns"], row["delivered_ns"]
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            when = r["next_try"] or r["delivered"] or ""
            print(f"{r['id']:5} {r['clip_id']} part {r['part']:<2} {r['target']:15} {r['state']:9} "
                  f"attempts {r['attempts']:<3} {when}  {r['reason']}")
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from edged.control import ControlError, request
    from edged.outbox import Outbox
    from edged.paths import StatePaths
    settings = _settings_or_exit(args.config)
    paths = StatePaths(settings.state_dir)
    try:
        n = request(paths.control, {"cmd": "outbox_retry", "id": args.id})["retried"]
        where = "now"
    except ControlError:  # no daemon running: the next start sends them
        if not paths.outbox.exists():
            print("edged: no outbox in " + str(paths.root), file=sys.stderr)
            return 1
        n = Outbox(paths.outbox).retry(args.id)
        where = "when the daemon next runs"
    if not n:
        print(f"edged: nothing to retry for {args.id!r} (unknown, or already delivered)", file=sys.stderr)
        return 1
    print(f"{n} deliver{'y' if n == 1 else 'ies'} of {args.id} will be sent {where}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from edged import doctor
    checks = doctor.run(Path(args.config) if args.config else None)
    print(doctor.as_json(checks) if args.json else doctor.as_text(checks))
    return 1 if doctor.failed(checks) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="Bodycam daemon: record, mark, deliver.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (records until stopped)")
    run.add_argument("--config", help=f"TOML file (default {config_mod.DEFAULT_CONFIG_PATH} if present,"
                                      " else embedded defaults)")
    run.add_argument("--for", dest="for_seconds", type=float, default=None, metavar="SECONDS",
                     help="stop after this many seconds of footage (tests, benchmarks)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file; non-zero exit if bad")
    check.add_argument("path", type=Path)
    check.set_defaults(func=cmd_config_check)
    kg = cfg_sub.add_parser("keygen", help="new fleet signing key pair (private PEM, owner-only; public base64)")
    kg.add_argument("dir", type=Path)
    kg.set_defaults(func=cmd_config_keygen)
    sg = cfg_sub.add_parser("sign", help="sign a config for devices with sync.fleet_public_key set")
    sg.add_argument("--key", required=True, type=Path, help="the fleet private key (PEM)")
    sg.add_argument("file", type=Path)
    sg.add_argument("-o", "--output", type=Path, help="write here (default: replace FILE)")
    sg.set_defaults(func=cmd_config_sign)

    dr = sub.add_parser("doctor", help="check camera, microphone, storage, clock, network, keys, service; "
                                       "say what to fix (exit 1 if anything fails)")
    dr.add_argument("--config")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_doctor)

    st = sub.add_parser("status", help="recording state, footage held, errors")
    st.add_argument("--config")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    mk = sub.add_parser("mark", help="mark an event now (pre-roll before, post-roll after)")
    mk.add_argument("--config")
    mk.add_argument("--note", help="free text stored with the mark")
    mk.set_defaults(func=cmd_mark)

    clips = sub.add_parser("clips", help="clips built from marked events")
    clips_sub = clips.add_subparsers(dest="clips_command", required=True)
    cl = clips_sub.add_parser("list", help="events, their clips and parts")
    cl.add_argument("--config")
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_clips_list)
    ce = clips_sub.add_parser("export", help="copy a clip's parts and manifest into a folder")
    ce.add_argument("--config")
    ce.add_argument("id")
    ce.add_argument("dir", type=Path)
    ce.set_defaults(func=cmd_clips_export)

    ob = sub.add_parser("outbox", help="uploads waiting, sent, refused")
    ob_sub = ob.add_subparsers(dest="outbox_command", required=True)
    ol = ob_sub.add_parser("list", help="every delivery: state, attempts, next try, last reason")
    ol.add_argument("--config")
    ol.add_argument("--json", action="store_true")
    ol.add_argument("--state", choices=("queued", "sending", "delivered", "deferred", "failed"))
    ol.set_defaults(func=cmd_outbox_list)
    orr = ob_sub.add_parser("retry", help="send a part (numeric id) or a whole clip (clip id) again now")
    orr.add_argument("--config")
    orr.add_argument("id")
    orr.set_defaults(func=cmd_outbox_retry)

    from edged.recall_cli import add_parsers as add_recall_parsers
    add_recall_parsers(sub, _settings_or_exit)  # edged recall, edged timeline
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
