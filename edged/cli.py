"""The ``edged`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edged import config as config_mod


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _load(path: str | None) -> config_mod.Settings:
    return config_mod.load_or_defaults(Path(path) if path else None)


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        settings = _load(args.config)
    except config_mod.ConfigError as exc:
        print(f"edged: bad configuration:\n{exc}", file=sys.stderr)
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

    st = sub.add_parser("status", help="recording state, footage held, errors")
    st.add_argument("--config")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
