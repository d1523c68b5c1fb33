"""The ``edged`` command line.

Its arguments are untrusted input like any other (a typo, a pasted path, a script gone wrong), so:

* **A usage error is one line and exit 2** (``edged outbox retry: error: ...``), checked before
  anything is opened: ids have their known form (a part number in ASCII digits, an event id, a
  recall id), numbers are finite and within range, paths are not empty.
* **A file named on the command line is looked at before it is read**: a config or key that is a
  FIFO, a device, a folder or huge is refused with one line instead of blocking or filling memory.
* **Every other failure is one line too** (``edged: ...``, exit 1, or 78 for a bad
  configuration), never a traceback; an unforeseen error says so in one line.
* **What is printed from the stores and the daemon is scrubbed** (``edged.core.journal.scrub``): a
  server's reason may quote a key or a presigned URL, and the terminal and its scroll-back are
  not a place for them. The key files the configuration names are registered as secrets first.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from edged.app.control import MAX_NOTE, PART_ID
from edged.config import schema as config_mod
from edged.core.ids import CLIP_ID

#: Bytes of a config file or a key file the command line reads.
MAX_CONFIG_BYTES = 1 << 20
MAX_KEY_BYTES = 64 << 10
#: Exit codes.
EX_USAGE, EX_CONFIG, EX_SOFTWARE = 2, 78, 70


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it (``$COLUMNS``, else the
    terminal on stdout, else 80), without importing shutil: see :class:`HelpFormatter`."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no stdout (None, closed), or not a terminal
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, told its width. argparse makes one for every option added (to check
    its metavar), and its own asks ``shutil.get_terminal_size``: importing shutil (zlib, bz2 and
    lzma with it, for archives) cost every ``edged run`` about 3.6 ms."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line (``prog: error: message``), exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)  # the subcommands' parsers are Parsers too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {printable(message)}\n")


# --- argument types: each refuses with one clear reason ---------------------------------------------


def path_arg(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def seconds_arg(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text) if text.isascii() else math.nan
        except ValueError:
            value = math.nan
        if not (lo < value <= hi):  # also false for NaN
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above {lo:g} and at most {hi:g}")
        return value

    parse.__name__ = "seconds"
    return parse


def clip_id_arg(text: str) -> str:
    if not CLIP_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a clip id (an event id such as 20240501T143000Z-1a2b3c, "
            "or recall-<request id>; see edged clips list)"
        )
    return text


def retry_id_arg(text: str) -> str:
    if not (PART_ID.fullmatch(text) or CLIP_ID.fullmatch(text)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a part number (digits 0-9) nor a clip id (see edged outbox list)"
        )
    return text


def serial_arg(text: str) -> int:
    from edged.config.sign import MAX_SERIAL

    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_SERIAL:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to {MAX_SERIAL}")
    return int(text)


def device_arg(text: str) -> str:
    from edged.config.sign import check_devices

    try:
        check_devices([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def note_arg(text: str) -> str:
    if len(text) > MAX_NOTE:
        raise argparse.ArgumentTypeError(f"a note of {len(text)} characters; at most {MAX_NOTE}")
    return text


# --- files named on the command line ------------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def file_problem(path: Path, max_bytes: int) -> str | None:
    """Why ``path`` (links followed: the operator named it) is not a regular file of at most
    ``max_bytes`` to read; None when it is. A look before the read, so a FIFO never blocks it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except ValueError as exc:  # an embedded NUL (only from a caller, argv has none)
        return f"cannot be read: {exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a regular file"
    if st.st_size > max_bytes:
        return f"is {st.st_size} bytes; at most {max_bytes} are read"
    return None


def _load(path: str | Path | None) -> config_mod.Settings:
    if path is not None:
        problem = file_problem(Path(path), MAX_CONFIG_BYTES)
        if problem:
            raise config_mod.ConfigError([("<file>", problem)], str(path))
    settings = config_mod.load_or_defaults(Path(path) if path is not None else None)
    _register_secrets(settings)
    return settings


def _register_secrets(settings: config_mod.Settings) -> None:
    """The secrets the configuration names, so scrubbing in this process knows them too (the
    daemon registers the same ones); only regular files are registered (one is read at scrub)."""
    from edged.core.journal import register_secret, register_secret_file

    session = settings.upload.sonoran_legacy.session_id
    if len(session.strip()) >= 4:
        register_secret(session)
    for path in (config_mod.api_key_path(settings.upload.sonoran_v2), config_mod.token_path(settings.upload.bota)):
        if path is not None and file_problem(path, MAX_KEY_BYTES) is None:
            register_secret_file(path)


def _settings_or_exit(path: str | Path | None) -> config_mod.Settings:
    """The settings a command shows: ``--config``'s, or, without it, the running daemon's or the
    installed service's (``edged.cli.which``), said on stderr."""
    from edged.cli import which

    try:
        if path is not None:
            return _load(path)
        chosen = which.choose()
    except config_mod.ConfigError as exc:
        fail(config_problem(exc), EX_CONFIG, newlines=len(exc.problems) > 1)
    _register_secrets(chosen.settings)
    warn(chosen.describe())
    return chosen.settings


def config_problem(exc: config_mod.ConfigError) -> str:
    """One line for one problem (a file that cannot be read); the README's list for several."""
    return f"bad configuration: {exc}" if len(exc.problems) == 1 else f"bad configuration:\n{exc}"


# --- output -------------------------------------------------------------------------------------------


def scrubbed(doc: Any) -> Any:
    """``doc`` with every string (keys too) scrubbed of secrets."""
    from edged.core.journal import _current_secrets, scrub

    secrets = _current_secrets()

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return scrub(v, secrets)
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(doc)


def printable(text: str, newlines: bool = False) -> str:
    """``text`` with every character a terminal would act on (control characters, escape
    sequences, bidi overrides, lone surrogates; newlines unless ``newlines``) written as its
    escape, so what an argument or a server says can neither split a line nor rewrite the screen."""
    keep = "\n\t" if newlines else "\t"
    return "".join(
        c if c.isprintable() or c in keep else c.encode("unicode_escape", "backslashreplace").decode() for c in text
    )


def say(text: str, newlines: bool = False) -> None:
    print(printable(scrubbed(text), newlines))


def print_json(doc: Any) -> None:
    print(json.dumps(scrubbed(doc), indent=2))  # ensure_ascii: every control character escaped


def warn(text: str, newlines: bool = False) -> None:
    print(f"edged: {printable(scrubbed(text), newlines)}", file=sys.stderr)


def fail(text: str, code: int = 1, newlines: bool = False) -> NoReturn:
    warn(text, newlines)
    raise SystemExit(code)


# --- commands -----------------------------------------------------------------------------------------


def _setup_logging(verbose: bool) -> None:
    """The journal (structured fields) when there is one, else stderr; secrets scrubbed."""
    from edged.core.journal import setup_logging

    setup_logging(verbose)


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        settings = _load(args.config)
    except config_mod.ConfigError as exc:
        from edged.core.journal import Msg, log_event

        log_event(
            logging.getLogger("edged"),
            Msg.CONFIG_REJECTED,
            "bad configuration, not starting:%s%s",
            " " if len(exc.problems) == 1 else "\n",
            exc,
            level=logging.CRITICAL,
            config=exc.source,
            key=",".join(k for k, _ in exc.problems),
            reason="; ".join(f"{k}: {r}" for k, r in exc.problems),
        )
        return EX_CONFIG
    # The daemon's imports make most of the process's long-lived objects (about 25,000): the
    # cyclic collector ran about 48 passes over them as they came and found nothing, 13-15 ms of
    # CPU a start. Off while importing; then frozen, so its later passes skip them too.
    gc.disable()
    try:
        from edged.app.daemon import run
    finally:
        gc.freeze()
        gc.enable()
    return run(settings, stop_after_s=args.for_seconds)


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        settings = _load(args.path)
    except config_mod.ConfigError as exc:
        warn(config_problem(exc), newlines=len(exc.problems) > 1)
        return 1
    say(
        f"{args.path}: ok (state folder {settings.state_dir}, camera {settings.camera.source}, "
        f"{settings.camera.width}x{settings.camera.height}@{settings.camera.fps} {settings.camera.bitrate} bps)"
    )
    return 0


def cmd_config_keygen(args: argparse.Namespace) -> int:
    from edged.config import sign as configsign

    try:
        private, public, b64 = configsign.generate(args.dir)
    except FileExistsError as exc:
        fail(f"{exc.filename} exists; a fleet key is never overwritten")
    except OSError as exc:
        fail(f"cannot write the key pair into {args.dir}: {exc.strerror or exc}")
    print(
        f"private key {private} (owner-only; keep it off the devices)\npublic key  {public}\n"
        f'devices: [sync] fleet_public_key = "{b64}"'
    )
    return 0


def cmd_config_sign(args: argparse.Namespace) -> int:
    from edged.config import sign as configsign
    from edged.core.files import Refused, read_bounded, write_atomic

    problem = file_problem(args.key, MAX_KEY_BYTES)
    if problem:
        fail(f"{args.key}: {problem}")
    try:
        key = configsign.load_private_key(args.key)
        data = read_bounded(args.file, MAX_CONFIG_BYTES)
    except (configsign.KeyLoadError, Refused) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{args.file}: {exc.strerror or exc}")
    out = args.output or args.file
    try:
        signed = configsign.sign(data, key, serial=args.serial, devices=args.devices or ())
    except ValueError as exc:
        fail(str(exc))
    try:  # atomic: a sync tool watching the folder never sees half a file
        write_atomic(out, signed)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    header, _ = configsign.split(signed)
    serial = header.serial if header is not None else args.serial
    previous = _serial_in(data)
    if previous is not None and serial is not None and serial <= previous:
        warn(
            f"serial {serial} is not above {previous}, the serial {args.file} had: a device that took that "
            "config refuses this one"
        )
    devices = ", ".join(header.devices) if header is not None and header.devices else "every device of the fleet"
    say(f"signed {out} (serial {serial}; for {devices})")
    return 0


def _serial_in(data: bytes) -> int | None:
    """The serial of an already signed file (None when unsigned or unreadable)."""
    from edged.config import sign as configsign

    try:
        header, _ = configsign.split(data)
    except ValueError:
        return None
    return header.serial if header is not None else None


def cmd_status(args: argparse.Namespace) -> int:
    from edged.app.status import read_status
    from edged.core.paths import StatePaths

    settings = _settings_or_exit(args.config)
    status = read_status(StatePaths(settings.state_dir))
    if args.json:
        print_json(status)
    else:
        from edged.capture.gps import status_line

        for k, v in status.items():
            say(f"{k:20} {status_line(v) if k == 'gps' and v is not None else v}")
    return 0


def cmd_mark(args: argparse.Namespace) -> int:
    from edged.app.control import ControlError, request
    from edged.core.paths import StatePaths

    settings = _settings_or_exit(args.config)
    try:
        answer = request(StatePaths(settings.state_dir).control, {"cmd": "mark", "note": args.note or ""})
        event_id = str(answer["event_id"])
    except ControlError as exc:
        fail(str(exc))
    except KeyError:
        fail("edged answered without an event id")
    what = "extended event" if answer.get("extended") else "marked: event"
    say(f"{what} {event_id}")
    return 0


def cmd_mute(args: argparse.Namespace) -> int:
    from edged.app.control import ControlError, request
    from edged.core.paths import StatePaths

    settings = _settings_or_exit(args.config)
    try:
        answer = request(StatePaths(settings.state_dir).control, {"cmd": "mute", "set": args.state or "toggle"})
    except ControlError as exc:
        fail(str(exc))
    if answer.get("refused"):
        fail(f"not muted: {answer['refused']}")
    say(f"audio {'muted' if answer.get('muted') else 'unmuted'} (sound now: {answer.get('audio')})")
    return 0


def cmd_panic(args: argparse.Namespace) -> int:
    from edged.app.control import ControlError, request
    from edged.core.paths import StatePaths

    settings = _settings_or_exit(args.config)
    try:
        answer = request(StatePaths(settings.state_dir).control, {"cmd": "panic", "state": args.state or "toggle"})
    except ControlError as exc:
        fail(str(exc))
    if not isinstance(answer.get("panic"), bool):
        fail("edged answered without the panic's state")
    say(f"panic {'ON' if answer['panic'] else 'off'}")
    return 0


def _open_clip_stores(settings: config_mod.Settings):
    from edged.core.paths import StatePaths
    from edged.events.store import EventStore
    from edged.upload.outbox import Outbox

    paths = StatePaths(settings.state_dir)
    store = EventStore(paths.events, read_only=True) if paths.events.exists() else None
    outbox = Outbox(paths.outbox, read_only=True) if paths.outbox.exists() else None
    return paths, store, outbox


def cmd_clips_list(args: argparse.Namespace) -> int:
    from edged.events.export import clip_summaries

    settings = _settings_or_exit(args.config)
    paths, store, outbox = _open_clip_stores(settings)
    clips = clip_summaries(store, outbox, paths.clips) if store and outbox else []
    if args.json:
        print_json(clips)
    else:
        for c in clips:
            parts = c["parts"]
            # A built clip is shown by where its upload stands (delivered, sending, failed...).
            state = c["delivery"] if c["state"] == "built" and c["delivery"] else c["state"]
            say(
                f"{c['id']}  {state:9} {len(c['marks'])} mark(s)  {len(parts)} part(s)  "
                f"{c['wall_start'] or '-'} .. {c['wall_end'] or '-'}  {c['reason']}"
                + (f"  ({c['manifest_error']})" if c.get("manifest_error") else "")
            )
    return 0


def cmd_clips_export(args: argparse.Namespace) -> int:
    from edged.events.export import export_clip

    settings = _settings_or_exit(args.config)
    paths, store, outbox = _open_clip_stores(settings)
    if Path(os.path.realpath(args.dir)).is_relative_to(os.path.realpath(paths.root)):
        fail(
            f"{args.dir} is inside the state folder {paths.root}; export to a folder of your own "
            "(evidence is never written over)"
        )
    try:
        files, skipped = export_clip(paths.clips, args.id, args.dir, store, outbox)
    except OSError as exc:  # not found, a link where the clip's folder is, the destination unwritable
        fail(str(exc) if exc.strerror is None or not exc.filename else f"{exc.filename}: {exc.strerror}")
    for s in skipped:
        warn(f"skipped {s}")
    for f in files:
        say(str(f))
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    import time

    from edged.core.timefmt import iso

    settings = _settings_or_exit(args.config)
    paths, _, outbox = _open_clip_stores(settings)
    if outbox is None:
        fail(f"no outbox in {paths.root}: no daemon has run with this configuration")
    now = time.time_ns()
    paused = outbox.paused_targets()
    rows = []
    for d in outbox.deliveries(states=[args.state] if args.state else None):
        row = d.as_dict()
        waiting = d.state in ("queued", "deferred")
        pause = paused.get(d.target) if waiting else None
        # When it is tried next: a pause outranks the row's own time; a past time means "due now".
        if pause is not None:
            row["next_try"] = iso(pause[1]) if pause[1] > now else None
        else:
            row["next_try"] = iso(d.next_try_ns) if waiting and d.next_try_ns > now else None
        row["paused"] = pause[0] if pause is not None else None
        row["delivered"] = iso(d.delivered_ns) if d.delivered_ns else None
        del row["next_try_ns"], row["delivered_ns"]
        rows.append(row)
    from edged.upload.sonoran_unit import read_notes

    for n in read_notes(outbox):  # each clip's note on the unit's Sonoran call (call notes on)
        if args.state and n.state != args.state:
            continue
        rows.append(
            {
                "id": "-",
                "clip_id": n.clip_id,
                "part": "-",
                "target": "sonoran_v2 note",
                "state": n.state,
                "attempts": n.attempts,
                "next_try": iso(n.next_try_ns) if n.state == "deferred" and n.next_try_ns > now else None,
                "paused": None,
                "delivered": iso(n.noted_ns) if n.noted_ns else None,
                "reason": n.reason,
                "call_id": n.call_id,
                "resends": n.resends,
            }
        )
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            state = "paused" if r["paused"] else r["state"]
            if r["paused"]:
                when = f"paused: {r['paused']}" + (f"; tried again {r['next_try']}" if r["next_try"] else "")
            elif r["state"] in ("queued", "deferred"):
                when = f"next try {r['next_try']}" if r["next_try"] else "due now"
            else:
                when = r["delivered"] or ""
            say(
                f"{r['id']:5} {r['clip_id']} part {r['part']:<2} {r['target']:15} {state:9} "
                f"attempts {r['attempts']:<3} {when}  {r['reason'] if not r['paused'] else ''}".rstrip()
            )
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from edged.app.control import ControlError, NotRunning, request
    from edged.core.paths import StatePaths
    from edged.upload.outbox import Outbox

    settings = _settings_or_exit(args.config)
    paths = StatePaths(settings.state_dir)
    try:
        n = int(request(paths.control, {"cmd": "outbox_retry", "id": args.id}).get("retried", 0))
        where = "now"
    except NotRunning:  # no daemon running: the next start sends them
        if not paths.outbox.exists():
            fail(f"no outbox in {paths.root}")
        n = Outbox(paths.outbox).retry(args.id)
        where = "when the daemon next runs"
    except (ControlError, ValueError, TypeError) as exc:
        fail(str(exc))
    if not n:
        fail(f"nothing to retry for {args.id!r} (unknown, or already delivered)")
    say(f"{n} deliver{'y' if n == 1 else 'ies'} of {args.id} will be sent {where}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from edged import doctor

    if args.config is not None:
        problem = file_problem(args.config, MAX_CONFIG_BYTES)
        if problem:
            fail(f"bad configuration: {args.config}: <file>: {problem}")
    checks = doctor.run(args.config)
    say(doctor.as_json(checks) if args.json else doctor.as_text(checks), newlines=True)
    return 1 if doctor.failed(checks) else 0


# --- the parser -------------------------------------------------------------------------------------------


def _config_option(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--config", type=path_arg, help=help_text)


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run the daemon (records until stopped)")
    _config_option(run, f"TOML file (default {config_mod.DEFAULT_CONFIG_PATH} if present, else embedded defaults)")
    run.add_argument(
        "--for",
        dest="for_seconds",
        type=seconds_arg(0, 1e9),
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds of footage (tests, benchmarks)",
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)


def _add_config(sub: Any) -> None:
    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file; non-zero exit if bad")
    check.add_argument("path", type=path_arg)
    check.set_defaults(func=cmd_config_check)
    kg = cfg_sub.add_parser("keygen", help="new fleet signing key pair (private PEM, owner-only; public base64)")
    kg.add_argument("dir", type=path_arg)
    kg.set_defaults(func=cmd_config_keygen)
    sg = cfg_sub.add_parser("sign", help="sign a config for devices with sync.fleet_public_key set")
    sg.add_argument("--key", required=True, type=path_arg, help="the fleet private key (PEM)")
    sg.add_argument("file", type=path_arg)
    sg.add_argument("-o", "--output", type=path_arg, help="write here (default: replace FILE)")
    sg.add_argument(
        "--serial",
        type=serial_arg,
        metavar="N",
        help="orders the fleet's configs: a device takes only a serial above the last it took "
        "(default: the current Unix time, or one above FILE's own serial)",
    )
    sg.add_argument(
        "--device",
        action="append",
        dest="devices",
        type=device_arg,
        metavar="ID",
        help="a device.id the config is for (repeatable; default: every device of the fleet)",
    )
    sg.set_defaults(func=cmd_config_sign)


def _add_doctor(sub: Any) -> None:
    dr = sub.add_parser(
        "doctor",
        help="check camera, microphone, storage, clock, network, keys, service; "
        "say what to fix (exit 1 if anything fails)",
    )
    _config_option(dr)
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_doctor)


def _add_status(sub: Any) -> None:
    st = sub.add_parser("status", help="recording state, footage held, errors")
    _config_option(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)


def _add_mark(sub: Any) -> None:
    mk = sub.add_parser("mark", help="mark an event now (pre-roll before, post-roll after)")
    _config_option(mk)
    mk.add_argument("--note", type=note_arg, help=f"free text stored with the mark (at most {MAX_NOTE} characters)")
    mk.set_defaults(func=cmd_mark)


def _add_mute(sub: Any) -> None:
    mu = sub.add_parser("mute", help="mute or unmute the sound being recorded (no argument: toggle)")
    _config_option(mu)
    mu.add_argument("state", nargs="?", choices=("on", "off"), help="on: mute; off: unmute (default: toggle)")
    mu.set_defaults(func=cmd_mute)


def _add_panic(sub: Any) -> None:
    pn = sub.add_parser("panic", help="set, clear or (no argument) toggle the unit's panic; on opens an event")
    _config_option(pn)
    pn.add_argument("state", nargs="?", choices=("on", "off"), help="on or off (default: the opposite of now)")
    pn.set_defaults(func=cmd_panic)


def _add_clips(sub: Any) -> None:
    clips = sub.add_parser("clips", help="clips built from marked events")
    clips_sub = clips.add_subparsers(dest="clips_command", required=True)
    cl = clips_sub.add_parser("list", help="events, their clips and parts")
    _config_option(cl)
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_clips_list)
    ce = clips_sub.add_parser("export", help="copy a clip's parts and manifest into a folder")
    _config_option(ce)
    ce.add_argument("id", type=clip_id_arg, help="the clip's id (edged clips list)")
    ce.add_argument("dir", type=path_arg, help="the folder to copy into (made if missing)")
    ce.set_defaults(func=cmd_clips_export)


def _add_outbox(sub: Any) -> None:
    ob = sub.add_parser("outbox", help="uploads waiting, sent, refused")
    ob_sub = ob.add_subparsers(dest="outbox_command", required=True)
    ol = ob_sub.add_parser("list", help="every delivery: state, attempts, next try, last reason")
    _config_option(ol)
    ol.add_argument("--json", action="store_true")
    ol.add_argument("--state", choices=("queued", "sending", "delivered", "deferred", "failed"))
    ol.set_defaults(func=cmd_outbox_list)
    orr = ob_sub.add_parser("retry", help="send a part (numeric id) or a whole clip (clip id) again now")
    _config_option(orr)
    orr.add_argument("id", type=retry_id_arg)
    orr.set_defaults(func=cmd_outbox_retry)


def _add_recall(sub: Any) -> None:
    from edged.cli.recall import add_parsers as add_recall_parsers

    add_recall_parsers(sub, _settings_or_exit)  # edged recall, edged timeline


#: Each command's parser, by the names it adds, in the order ``edged --help`` lists them.
_COMMANDS: tuple[tuple[tuple[str, ...], Callable[[Any], None]], ...] = (
    (("run",), _add_run),
    (("config",), _add_config),
    (("doctor",), _add_doctor),
    (("status",), _add_status),
    (("mark",), _add_mark),
    (("mute",), _add_mute),
    (("panic",), _add_panic),
    (("clips",), _add_clips),
    (("outbox",), _add_outbox),
    (("recall", "timeline"), _add_recall),
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Given the arguments, only the parser of the command they name is
    built, when they name one (``edged run``: the daemon's start builds no other command's parser
    and does not import ``edged.cli.recall``, about 4 ms); otherwise every command's (``--help``,
    a typo: the usage lists them all)."""
    p = Parser(prog="edged", description="Bodycam daemon: record, mark, deliver.")
    sub = p.add_subparsers(dest="command", required=True)
    named = argv[0] if argv else None
    chosen = [add for names, add in _COMMANDS if named in names] or [add for _, add in _COMMANDS]
    for add in chosen:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    if args.func is cmd_run:  # the daemon logs its own failures (scrubbed, to the journal)
        return args.func(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edged outbox list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        warn(f"{type(exc).__name__}: {exc}")
        return EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
