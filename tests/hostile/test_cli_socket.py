"""Hostile input through the command line and the control socket (issue 12).

Nothing typed on the command line or sent to the control socket may destroy, redirect, leak or
stall evidence. Against a real ``edged run`` child (tests/hostile/harness.py):

* ``edged clips export`` takes only a clip id the stores know, opens the clip's folder and its
  files without following a link, and never writes into the state folder;
* the control socket drops clients that vanish (quietly), that say nothing or drip bytes (after
  its deadline), holds no thread per connection, answers every malformed request with one clear
  JSON error, and a mark gets through while hundreds of idle connections are held open;
* every subcommand, given odd arguments, answers with one line and an exit code: no traceback,
  no hang.

One daemon serves the module (it records on throughout); each test says what it planted and
removes it, and the evidence (segments, clip parts, manifests) is compared before and after.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.cli import main as cli
from edged.core.paths import StatePaths
from tests.hostile.harness import (
    WAIT_S,
    DaemonUnderTest,
    assert_evidence_kept,
    assert_stores_sound,
    evidence_snapshot,
    sha256_of,
)
from tests.support import wait_until

EXAMPLES = int(os.environ.get("EDGED_FUZZ_EXAMPLES", "2000"))


# --- one daemon for the module, with one clip built and delivered ---------------------------------


class Rig:
    def __init__(self, d: DaemonUnderTest, event: str) -> None:
        self.d = d
        self.event = event
        self.clip = d.state / "clips" / event
        self.cfg = str(d.cfg)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.d.cli(*args, "--config", self.cfg)

    def threads(self) -> int:
        assert self.d.proc is not None
        for line in Path(f"/proc/{self.d.proc.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no Threads: line in /proc/PID/status")


def _delivered(rig: DaemonUnderTest, event: str) -> bool:
    out = rig.cli("outbox", "list", "--json", "--config", str(rig.cfg))
    rows = [r for r in json.loads(out.stdout or "[]") if r["clip_id"] == event]
    return bool(rows) and all(r["state"] == "delivered" for r in rows)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    d = DaemonUnderTest(tmp_path_factory.mktemp("cli-socket"))
    with d:
        d.start()
        event = d.mark("the clip the tests export")
        d.wait_built(event)
        # Delivered everywhere first: moving its folder aside later cannot fail a delivery.
        d.wait(lambda: _delivered(d, event), what=f"clip {event} delivered")
        yield Rig(d, event)
        assert d.stop() == 0
    assert_stores_sound(d.state)


@pytest.fixture
def evidence(rig: Rig) -> Iterator[dict[str, str]]:
    """The evidence before the test; after it, the same files with the same bytes."""
    before = evidence_snapshot(rig.d.state)
    yield before
    assert_evidence_kept(before, evidence_snapshot(rig.d.state), evicted_ok=True)


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- clips export --------------------------------------------------------------------------------


def test_export_takes_only_clip_ids_never_paths(rig: Rig, tmp_path: Path, evidence: dict[str, str]) -> None:
    out = tmp_path / "out"
    # A folder with a manifest outside the clips folder, and one inside it that no store knows.
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "manifest.json").write_text("{}")
    (evil / "loot.webm").write_bytes(b"x")
    stranger = rig.d.state / "clips" / "20200101T000000Z-abcdef"
    shutil.copytree(evil, stranger)
    try:
        for bad in [
            "../../evil",
            f"../../../{evil.relative_to(evil.anchor)}",
            str(evil),
            "/etc",
            "..",
            ".",
            "",
            f"{rig.event}/../{rig.event}",
            f"../clips/{rig.event}",
            rig.event + "/",
            "²",
            "20240501T143000Z-ZZZZZZ",
            "recall-../x",
            f"{rig.event}\n",
        ]:
            r = rig.cli("clips", "export", bad, str(out))
            assert r.returncode == 2, (bad, r.stderr)
            assert "not a clip id" in one_error_line(r)
        r = rig.cli("clips", "export", stranger.name, str(out))
        assert r.returncode == 1 and "not in the events store nor in the outbox" in one_error_line(r)
        assert not out.exists(), "nothing may be written for a refused id"
    finally:
        shutil.rmtree(stranger)


def test_export_copies_the_clip_and_skips_what_was_planted_inside(
    rig: Rig, tmp_path: Path, evidence: dict[str, str]
) -> None:
    segment = sorted((rig.d.state / "segments").glob("*.webm"))[0]
    planted = {
        "zz-passwd.webm": Path("/etc/passwd"),
        "zz-segment.webm": segment,
        "zz-index.json": rig.d.state / "index.sqlite",
    }
    real = sorted(p.name for p in rig.clip.iterdir() if p.is_file() and not p.name.startswith("."))
    for name, target in planted.items():
        os.symlink(target, rig.clip / name)
    os.mkfifo(rig.clip / "zz-fifo.webm")
    (rig.clip / "zz-folder").mkdir()
    try:
        out = tmp_path / "out"
        r = rig.cli("clips", "export", rig.event, str(out))  # a FIFO read would hang: the harness times out
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        assert sorted(os.listdir(out)) == real
        for name in real:
            assert not (out / name).is_symlink() and sha256_of(out / name) == sha256_of(rig.clip / name)
        skipped = r.stderr.splitlines()
        assert len(skipped) == 5 and all(line.startswith("edged: skipped ") for line in skipped), r.stderr
    finally:
        for name in [*planted, "zz-fifo.webm"]:
            (rig.clip / name).unlink()
        (rig.clip / "zz-folder").rmdir()


def test_export_of_a_clip_folder_swapped_for_a_link_is_refused(
    rig: Rig, tmp_path: Path, evidence: dict[str, str]
) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "manifest.json").write_text("{}")
    (evil / "loot.webm").write_bytes(b"not evidence")
    aside = rig.clip.with_name("." + rig.event + ".aside")
    out = tmp_path / "out"
    rig.clip.rename(aside)
    try:
        for target in (evil, aside):  # a stranger's folder, or the clip's own behind a link
            os.symlink(target, rig.clip)
            try:
                r = rig.cli("clips", "export", rig.event, str(out))
            finally:
                rig.clip.unlink()
            assert r.returncode == 1 and "symbolic link" in one_error_line(r), r.stderr
            assert not out.exists() or not os.listdir(out)
    finally:
        aside.rename(rig.clip)


def test_export_never_writes_into_the_state_folder(rig: Rig, evidence: dict[str, str]) -> None:
    for dest in (rig.clip, rig.d.state / "segments", rig.d.state, rig.d.state / "clips" / "new"):
        r = rig.cli("clips", "export", rig.event, str(dest))
        assert r.returncode == 1 and "inside the state folder" in one_error_line(r), (dest, r.stderr)
    assert not (rig.d.state / "clips" / "new").exists()


# --- the control socket ------------------------------------------------------------------------------


def _connect(rig: Rig) -> socket.socket:
    """A connection (a blocking connect: it waits for room in the backlog, as a flood would)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(StatePaths(rig.d.state).control))
    s.settimeout(10)
    return s


def _abort(s: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the client is gone, mid-request or before the answer."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _closed_by_server(s: socket.socket) -> bool:
    """The server has answered and closed, or dropped the connection (non-blocking look)."""
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_abrupt_disconnects_are_quiet_and_recording_goes_on(rig: Rig) -> None:
    log_before = rig.d.log().splitlines()
    frames = rig.d.frames()
    for i in range(1500):
        s = _connect(rig)
        if i % 3 == 1:
            s.sendall(b'{"cmd": "sta')  # half a request
        elif i % 3 == 2:
            s.sendall(b'{"cmd": "status"}\n')  # a whole one, gone before the answer
        _abort(s)
    assert rig.d.status() is not None, "the control socket still answers"
    rig.d.wait(lambda: rig.d.frames() >= frames + 20, what="recording goes on: 20 more frames")
    new = rig.d.log().splitlines()[len(log_before) :]
    assert "Traceback" not in "\n".join(new)
    noisy = [line for line in new if "control" in line.lower() or "pipe" in line.lower()]
    assert not noisy, noisy[:5]
    assert len(new) < 50, f"{len(new)} log lines for 1,500 disconnects:\n" + "\n".join(new[:20])


def test_idle_connections_hold_no_threads_and_a_mark_gets_through(rig: Rig) -> None:
    threads = rig.threads()
    idle = [_connect(rig) for _ in range(200)]
    drip = _connect(rig)
    drip.sendall(b'{"cmd": ')
    try:
        assert rig.threads() <= threads + 10, "a thread per connection"
        r = rig.cli("mark", "--note", "while 200 connections idle")
        assert r.returncode == 0 and r.stdout.startswith("marked: event"), r.stderr
        # Every idle one and the dripping one are dropped: evicted by newer ones, or at the deadline.
        wait_until(lambda: all(_closed_by_server(s) for s in [*idle, drip]), WAIT_S, "idle connections dropped")
        assert rig.d.status() is not None
    finally:
        for s in [*idle, drip]:
            s.close()


def test_a_client_that_drips_bytes_is_dropped_at_the_deadline(rig: Rig) -> None:
    s = _connect(rig)
    got = bytearray()

    def dripped_until_dropped() -> bool:
        try:
            s.send(b" ")
        except OSError:
            return True
        s.setblocking(False)
        try:
            while chunk := s.recv(65536):
                got.extend(chunk)
            return True
        except BlockingIOError:
            return False
        finally:
            s.setblocking(True)

    try:
        rig.d.wait(dripped_until_dropped, what="the dripping client dropped")
    finally:
        s.close()
    if got:  # the reason, when it arrived before the close
        doc = json.loads(got)
        assert doc["ok"] is False and "no complete request within" in doc["error"]


def _exchange(rig: Rig, data: bytes) -> dict[str, Any]:
    with _connect(rig) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all of it arrived; the answer says why
        raw = bytearray()
        with contextlib.suppress(ConnectionResetError):  # closed with our surplus unread: after the answer
            while chunk := s.recv(65536):
                raw += chunk
    assert raw.count(b"\n") == 1 and raw.endswith(b"\n"), bytes(raw[:200])
    return json.loads(raw)


def test_malformed_requests_get_one_clear_error_each(rig: Rig, evidence: dict[str, str]) -> None:
    events_before = rig.cli("clips", "list", "--json").stdout
    cases = {
        b"x" * (2 << 20): "request too large",
        b"[" * 60_000 + b"\n": "nested deeper",
        b'{"cmd": "mark", "note": ' + b'{"a":' * 30 + b"1" + b"}" * 30 + b"}\n": "nested deeper",
        b"[1, 2, 3]\n": "got a list",
        b"17\n": "got a number",
        b"null\n": "got null",
        b'{"cmd": ["mark"]}\n': '"cmd" must be a string',
        b'{"cmd": {"mark": 1}}\n': '"cmd" must be a string',
        b'{"cmd": 3}\n': '"cmd" must be a string',
        b'{"cmd": "mark", "note": {"$ne": 1}}\n': "note must be a string",
        b'{"cmd": "mark", "note": "\\u0000"}\n': "NUL",
        b'{"cmd": "outbox_retry", "id": "\\u00b2"}\n': "a part number",
        b'{"cmd": "outbox_retry", "id": ["1"]}\n': "id must be a string",
        b'{"cmd": "recall", "request": [1]}\n': "request must be an object",
        b'{"cmd": "recall_status", "id": "../../etc/passwd"}\n': "no recall request",
        b'{"cmd": "shutdown"}\n': "unknown command",
        b"\xff\xfe\xfd\n": "not UTF-8",
        b'{"cmd": "status"\n': "not JSON",
    }
    for data, reason in cases.items():
        doc = _exchange(rig, data)
        assert doc["ok"] is False and reason in doc["error"], (data[:60], doc)
    assert rig.cli("clips", "list", "--json").stdout == events_before, "a refused request marked an event"
    rig.d.wait_frames_grow()


# --- the command line ----------------------------------------------------------------------------------

ODD = [
    "²",
    "٣",
    "𝟙",
    "1e999",
    "-1",
    "nan",
    "inf",
    "9" * 400,
    "",
    " ",
    "\u202e",
    "../../x",
    "/etc/passwd",
    "%s%n",
    "-",
    "0x10",
    "1_000",
    "\t",
    "'; DROP TABLE events; --",
    "a\u0301",
    "\U0001f4a9" * 50,
]


@pytest.fixture(scope="module")
def odd_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("odd-paths")
    os.mkfifo(root / "fifo")
    os.symlink(root / "loop-b", root / "loop-a")
    os.symlink(root / "loop-a", root / "loop-b")
    (root / "dir").mkdir()
    (root / "huge.toml").write_bytes(b"#" * (4 << 20))
    (root / "binary.toml").write_bytes(bytes(range(256)))
    return {
        "fifo": str(root / "fifo"),
        "dir": str(root / "dir"),
        "zero": "/dev/zero",
        "missing": str(root / "nope"),
        "loop": str(root / "loop-a"),
        "huge": str(root / "huge.toml"),
        "binary": str(root / "binary.toml"),
        "null": "/dev/null",
    }


def argvs(rig: Rig, value: str, work: Path, *, fixed: bool = True) -> list[list[str]]:
    """Every subcommand with ``value`` in each of its argument slots. ``fixed``: also the slots
    where a valid value acts (a note marks an event, a folder is made); random text goes only
    where acting is harmless. ``run`` is left to the subprocess tests (it sets up logging)."""
    cfg = ["--config", rig.cfg]
    future = ["--start", "2999-01-01T00:00:00Z", "--duration", "1"]
    key, draft = work / "keys" / "fleet-key.pem", work / "draft.toml"
    out = [
        ["status", *cfg, value],
        ["status", "--json", "--config", value],
        ["clips", "list", *cfg, "--json", value],
        ["clips", "export", value, str(work / "out"), *cfg],
        ["outbox", "list", *cfg, "--state", value],
        ["outbox", "retry", value, *cfg],
        ["recall", "--start", value, "--duration", "1", *cfg],
        ["recall", "--start", "2024-05-01T14:30:00Z", "--duration", value, *cfg],
        ["recall", *future, "--wait", value, *cfg],
        ["recall", *future, "--id", value, *cfg],
        ["recall", *future, "--camera", value, *cfg],
        ["timeline", *cfg, value],
        ["config", "check", value],
        ["config", "sign", "--key", str(key), str(draft), "--serial", value, "-o", str(work / "signed.toml")],
        ["config", "sign", "--key", str(key), str(draft), "--device", value, "-o", str(work / "signed.toml")],
        ["config", "sign", "--key", value, str(draft)],
        [value],
        ["outbox", value],
        ["clips", value],
        ["config", value],
    ]
    if fixed:
        out += [
            ["mark", *cfg, "--note", value],
            ["clips", "export", rig.event, value, *cfg],
            ["doctor", "--config", value],
        ]
    return out


def run_main(argv: list[str], timeout: float = 60.0) -> tuple[int, str, str]:
    """``edged ARGV`` in this process (a thread, so a hang fails the test instead of stalling
    it); (exit code, stdout, stderr). An exception out of main() fails the test."""
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                result["rc"] = cli.main(argv)
        except SystemExit as exc:
            result["rc"] = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - a traceback the user would see
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"edged {argv!r} hangs"
    assert "error" not in result, f"edged {argv!r} raised {result['error']!r}"
    return result["rc"], out.getvalue(), err.getvalue()


def check_outcome(argv: list[str], rc: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err, (argv, err)
    assert rc in (0, 1, 2, 78), (argv, rc, err)
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and ": error: " in err, (argv, err)
    elif rc != 0:
        assert (out + err).strip(), (argv, "failed without saying why")
        assert len(err.strip().splitlines()) <= 1, (argv, err)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder to run commands in, deep enough that ``../../x`` stays inside the test's own
    folder; a key and a draft to sign."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    rc, _, err = run_main(["config", "keygen", str(work / "keys")])
    assert rc == 0, err
    (work / "draft.toml").write_text("[camera]\nfps = 10\n")
    return work


def test_every_subcommand_answers_odd_arguments_in_one_line(
    rig: Rig, work: Path, odd_paths: dict[str, str], evidence: dict[str, str]
) -> None:
    runs = 0
    for value in [*ODD, *odd_paths.values()]:
        for argv in argvs(rig, value, work):
            check_outcome(argv, *run_main(argv))
            runs += 1
    for path in odd_paths.values():  # --config of every subcommand that has one
        for sub in (
            ["status"],
            ["mark"],
            ["clips", "list"],
            ["outbox", "list"],
            ["outbox", "retry", "1"],
            ["timeline"],
            ["recall", "--start", "x", "--duration", "1"],
            ["doctor"],
            ["config", "check"],
        ):
            argv = [*sub, path] if sub == ["config", "check"] else [*sub, "--config", path]
            rc, out, err = run_main(argv)
            check_outcome(argv, rc, out, err)
            assert rc in (1, 2, 78), (argv, rc, err)
            runs += 1
    assert runs > 600


@settings(
    max_examples=max(30, EXAMPLES // 20),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.text(min_size=0, max_size=60).filter(lambda t: "\0" not in t), st.integers(min_value=0))
def test_random_text_in_any_slot_answers_in_one_line(rig: Rig, work: Path, value: str, pick: int) -> None:
    options = argvs(rig, value, work, fixed=False)
    argv = options[pick % len(options)]
    check_outcome(argv, *run_main(argv))


@pytest.mark.parametrize(
    "argv, rc",
    [
        (["status", "--config", "{fifo}"], 78),
        (["mark", "--config", "{zero}"], 78),
        (["config", "check", "{loop}"], 1),
        (["doctor", "--config", "{fifo}"], 1),
        (["run", "--config", "{fifo}"], 78),
        (["status", "--config", "{dir}"], 78),
        (["outbox", "retry", "²", "--config", "{missing}"], 2),
        (["clips", "export", "../../x", "/tmp"], 2),
        (["recall", "--start", "x", "--duration", "²"], 2),
        (["run", "--for", "nan"], 2),
        (["run", "--for", "²", "--config", "{missing}"], 2),
        (["run", "--config", "{loop}"], 78),
        (["run", "--config", "{zero}"], 78),
        (["run", "--config", "{huge}"], 78),
        (["run", "--config", ""], 2),
        (["config", "sign", "--key", "{fifo}", "{fifo}"], 1),
    ],
)
def test_as_a_user_runs_it_no_traceback_no_hang(rig: Rig, odd_paths: dict[str, str], argv: list[str], rc: int) -> None:
    """The same, as separate processes: what a user sees on the terminal."""
    args = [a.format(**odd_paths) for a in argv]
    r = subprocess.run(
        [sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=60, env=rig.d.env
    )
    assert r.returncode == rc, (args, r.returncode, r.stderr)
    assert one_error_line(r)


# --- what the command line prints from the stores is scrubbed ---------------------------------------


def test_reasons_printed_from_the_stores_are_scrubbed(tmp_path: Path) -> None:
    """Reasons written into the stores unscrubbed (by an older edged, or a path that forgot) are
    scrubbed when printed: the configured key file's content, Bearer tokens, presigned signatures.
    Written with sqlite directly, so the stores' own scrubbing plays no part."""
    import sqlite3

    from edged.events.store import EventStore
    from edged.upload.outbox import Outbox

    key = "sk-live-0123456789abcdef"
    (tmp_path / "key").write_text(key + "\n")
    state = tmp_path / "state"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        f'[storage]\ndir = "{state}"\n[upload]\ntargets = ["directory"]\n'
        f'[upload.sonoran_v2]\napi_key_file = "{tmp_path / "key"}"\n'
    )
    state.mkdir()
    part = tmp_path / "p.webm"
    part.write_bytes(b"x")
    outbox = Outbox(state / "outbox.sqlite", targets=["directory"])
    outbox.enqueue("20240501T143000Z-1a2b3c", [(1, part, 1, 1000, "0" * 64)], 0, 0)
    outbox.close()
    EventStore(state / "events.sqlite").close()
    leak = (
        f"server said 401: key {key} rejected; Authorization: Bearer tok-abcdef-987654; "
        "https://s3.example/x?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAXYZ"
    )
    with sqlite3.connect(state / "outbox.sqlite") as db:
        db.execute("UPDATE deliveries SET state='failed', reason=?", (leak,))
    with sqlite3.connect(state / "events.sqlite") as db:
        db.execute("INSERT INTO events VALUES ('20240501T143000Z-1a2b3c', 'b', 0, 1, 0, 0, 'failed', ?, 0)", (leak,))
    StatePaths(state).last_status.write_text(json.dumps({"pid": None, "last_error": leak}))
    secrets = (key, "tok-abcdef-987654", "deadbeefcafe", "AKIAXYZ")
    for argv in (
        ["outbox", "list"],
        ["outbox", "list", "--json"],
        ["clips", "list"],
        ["clips", "list", "--json"],
        ["status"],
        ["status", "--json"],
    ):
        rc, out, err = run_main([*argv, "--config", str(cfg)])
        assert rc == 0, (argv, err)
        assert "***" in out, (argv, out)
        assert not [s for s in secrets if s in out + err], (argv, out)


def test_config_sign_takes_a_serial_and_the_devices(tmp_path: Path) -> None:
    from edged.config import sign as configsign

    rc, _, err = run_main(["config", "keygen", str(tmp_path / "keys")])
    assert rc == 0, err
    key = tmp_path / "keys" / configsign.PRIVATE_KEY_NAME
    public = configsign.load_public_key(str(tmp_path / "keys" / configsign.PUBLIC_KEY_NAME))
    draft = tmp_path / "edged.toml"
    draft.write_text("[camera]\nfps = 10\n")
    rc, out, err = run_main(
        ["config", "sign", "--key", str(key), str(draft), "--serial", "42", "--device", "cam-2", "--device", "cam-1"]
    )
    assert rc == 0 and "serial 42; for cam-1, cam-2" in out, err
    signed = configsign.verified(draft.read_bytes(), public)
    assert (signed.serial, signed.devices, signed.body) == (42, ("cam-1", "cam-2"), b"[camera]\nfps = 10\n")
    rc, out, err = run_main(["config", "sign", "--key", str(key), str(draft)])  # default: now, above 42
    assert rc == 0 and not err, err
    again = configsign.verified(draft.read_bytes(), public)
    assert again.serial > 42 and again.devices == ()
    rc, out, err = run_main(["config", "sign", "--key", str(key), str(draft), "--serial", "7"])
    assert rc == 0 and "serial 7 is not above" in err  # signed as asked, with a warning
    assert configsign.verified(draft.read_bytes(), public).serial == 7
    for bad in (
        ["--serial", "-1"],
        ["--serial", "²"],
        ["--serial", str(2**63)],
        ["--device", "a b"],
        ["--device", ""],
        ["--device", "x" * 129],
    ):
        rc, _, err = run_main(["config", "sign", "--key", str(key), str(draft), *bad])
        assert rc == 2 and len(err.strip().splitlines()) == 1, (bad, err)
