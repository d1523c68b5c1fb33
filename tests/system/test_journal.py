"""Logging to a REAL systemd-journald, read back with ``journalctl -o json``.

Isolation: each test runs its logging process inside ``unshare --mount --fork`` (a private mount
namespace, propagation private, so nothing leaks to the host). In it a tmpfs is mounted over
``/run`` (so ``/run/systemd/journal/socket`` is our journald's, never the host's) and over
``/var/log/journal`` when that exists; a drop-in in ``/run/systemd/journald.conf.d`` makes
storage volatile, turns off rate limiting and all forwarding. ``/lib/systemd/systemd-journald``
then runs there as an ordinary process (no systemd as PID 1 is needed: it binds its own
sockets), the payload logs, ``journalctl --sync`` waits until journald has written everything,
and ``journalctl -D /run/log/journal -o json`` reads the private journal back. Needs root (for the
namespace and the mounts) and the ``systemd`` package (``scripts/setup --test`` installs it).
Without journald in the box there is no journal socket: that is the stderr fallback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from edged.core import journal
from edged.core.journal import Msg

REPO = Path(__file__).resolve().parents[2]
JOURNALD = Path("/lib/systemd/systemd-journald")

BOX = r"""
set -u
out=$1; shift; with_journald=$1; shift
mount -t tmpfs -o mode=0755 tmpfs /run || exit 90
if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=0755 tmpfs /var/log/journal || exit 90; fi
mkdir -p /run/systemd/journal /run/log/journal /run/systemd/journald.conf.d
printf '%s\n' '[Journal]' Storage=volatile RateLimitIntervalSec=0 RateLimitBurst=0 MaxLevelStore=debug \
    ForwardToSyslog=no ForwardToWall=no ForwardToConsole=no ForwardToKMsg=no ReadKMsg=no Audit=no \
    > /run/systemd/journald.conf.d/zz-edged-test.conf
jpid=
if [ "$with_journald" = 1 ]; then
    "$JOURNALD" 2>"$out/journald.err" & jpid=$!
    i=0
    while [ ! -S /run/systemd/journal/socket ]; do
        i=$((i + 1)); [ $i -gt 400 ] && exit 91
        kill -0 $jpid 2>/dev/null || exit 92
        sleep 0.05
    done
fi
rc=0
"$@" >"$out/stdout" 2>"$out/stderr" || rc=$?
echo $rc >"$out/rc"
if [ -n "$jpid" ]; then
    journalctl --sync || exit 93
    journalctl -D /run/log/journal -o json --no-pager >"$out/journal.json" || exit 94
    kill $jpid; wait $jpid
fi
exit 0
"""


@dataclass
class Boxed:
    rc: int
    stdout: str
    stderr: str
    raw: str  # journalctl -o json, as printed
    entries: list[dict]

    def ours(self) -> list[dict]:
        return [e for e in self.entries if e.get("SYSLOG_IDENTIFIER") == "edged"]

    def by_id(self, msg: Msg) -> list[dict]:
        return [e for e in self.ours() if e.get("MESSAGE_ID") == msg.value]

    def one(self, message: str) -> dict:
        found = [e for e in self.ours() if e.get("MESSAGE") == message]
        assert len(found) == 1, f"{message!r}: {len(found)} entries; have {[e.get('MESSAGE') for e in self.ours()]}"
        return found[0]

    def everything(self) -> str:
        """Every text this run left: the journal (raw and decoded), stdout and stderr."""
        decoded = "\n".join(f"{k}={v}" for e in self.entries for k, v in e.items())
        return "\n".join((self.raw, decoded, self.stdout, self.stderr))


def boxed(tmp_path: Path, argv: list[str], *, journald: bool = True, timeout: float = 120) -> Boxed:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace with its own journald")
    if journald and not JOURNALD.exists():
        pytest.fail(f"{JOURNALD} is missing: install the systemd package (scripts/setup --test)")
    out = tmp_path / f"box{len(list(tmp_path.glob('box*')))}"
    out.mkdir()
    env = {**os.environ, "JOURNALD": str(JOURNALD), "PYTHONPATH": str(REPO)}
    env.pop("JOURNAL_STREAM", None)
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "sh",
            "-c",
            BOX,
            "box",
            str(out),
            "1" if journald else "0",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    if r.returncode == 90 or "unshare failed" in r.stderr:
        pytest.skip(f"cannot make a private mount namespace with a tmpfs here: {r.stderr.strip()}")
    err = (out / "journald.err").read_text() if (out / "journald.err").exists() else ""
    assert r.returncode == 0, f"box failed ({r.returncode}): {r.stderr}\njournald: {err}"
    raw = (out / "journal.json").read_text() if journald else ""
    return Boxed(
        int((out / "rc").read_text()),
        (out / "stdout").read_text(),
        (out / "stderr").read_text(),
        raw,
        [json.loads(line) for line in raw.splitlines() if line.strip()],
    )


def payload(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


# --- the API, in process -------------------------------------------------------------------------


def test_message_ids_are_fixed_distinct_128_bit_ids():
    ids = [m.value for m in Msg]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    for name in (
        "RECORDING_STARTED",
        "RECORDING_STOPPED",
        "SEGMENT_SALVAGED",
        "STORAGE_ALARM",
        "MARK",
        "CLIP_BUILT",
        "UPLOAD_DELIVERED",
        "UPLOAD_DEFERRED",
        "UPLOAD_FAILED",
        "CONFIG_APPLIED",
        "CONFIG_REJECTED",
        "WATCHDOG",
        "CAMERA_LOST",
        "RECALL_COMPLETED",
        "RECALL_FAILED",
    ):
        assert Msg[name].value in journal.__doc__, f"{name} missing from the module's table"


def test_catalog_explains_every_message_id(tmp_path):
    """journalctl itself compiles systemd/edged.catalog (into a scratch root) and lists every id."""
    if shutil.which("journalctl") is None:
        pytest.fail("journalctl is missing: install the systemd package (scripts/setup --test)")
    catalog = tmp_path / "usr/lib/systemd/catalog"
    catalog.mkdir(parents=True)
    (tmp_path / "var/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(REPO / "systemd" / "edged.catalog", catalog)
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True, timeout=60)
    listed = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--list-catalog"], check=True, timeout=60, capture_output=True, text=True
    ).stdout
    subjects = dict(line.split(" ", 1) for line in listed.splitlines())
    assert set(subjects) == {m.value for m in Msg}, "one entry per MESSAGE_ID, no stale ones"
    assert all(v.startswith("edged: ") for v in subjects.values())


def test_bad_input_is_refused_clearly():
    log = logging.getLogger("edged.test")
    with pytest.raises(ValueError, match="log field 'Clip-Id'"):
        journal.log_event(log, Msg.MARK, "x", **{"Clip-Id": "1"})
    with pytest.raises(TypeError, match="must be an edged.core.journal.Msg"):
        journal.log_event(log, "e7884386447342ac945d558a5f2d7569", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str"):
        journal.register_secret(b"bytes-secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 4 characters"):
        journal.register_secret("  ab ")


def test_scrub_patterns():
    s = journal.scrub
    assert s("Authorization: Bearer eyJhbGciOi.J9-x_y") == "Authorization: Bearer ***"
    assert (
        s("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc123&x=1")
        == "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1"
    )
    assert s("GET /v1?api_key=abc&key=def&page=2") == "GET /v1?api_key=***&key=***&page=2"
    assert s('{"key": "abc\\"d", "n": 1}') == '{"key": "***", "n": 1}'
    assert s("{'api_key': 'abc', 'n': 1}") == "{'api_key': '***', 'n': 1}"
    assert s("the key was lost, a monkey=3") == "the key was lost, a monkey=3", "ordinary words stay"


def test_a_document_scrubbed_before_a_secret_is_known_is_scrubbed_of_it_after(tmp_path):
    """scrub_doc remembers short strings it scrubbed; a secret learned later (a key file
    rotated) still comes out of the same strings, in keys and values, nested."""
    key_file = tmp_path / "key"
    key_file.write_text("old-key-0001")
    journal.register_secret_file(key_file)
    doc = {"reason": "401 for new-key-0002", "new-key-0002": [{"why": "new-key-0002 refused"}], "n": 3}
    assert journal.scrub_doc(doc) == doc, "not a secret yet: left as it is"
    key_file.write_text("new-key-0002")
    os.utime(key_file, ns=(1, 1))  # a different mtime, whatever the clock's grain
    assert journal.scrub_doc(doc) == {"reason": "401 for ***", "***": [{"why": "*** refused"}], "n": 3}
    assert journal.scrub_doc({"k": "old-key-0001 " * 40}) == {"k": "*** " * 40}, "long strings too"


# --- a real journald ------------------------------------------------------------------------------

FIELDS = """
    import json, logging, os, sys
    from edged.core.journal import Msg, log_event, setup_logging

    if sys.argv[1:] == ["journal-stream"]:   # what systemd does for a service: stderr is the journal
        st = os.fstat(2)
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    kinds = [setup_logging(), setup_logging()]
    root = logging.getLogger()
    print(json.dumps({"kinds": kinds, "handlers": len(root.handlers)}))
    log = logging.getLogger("edged.test")

    def emit():
        log_event(log, Msg.CLIP_BUILT, "clip %s built in %d part(s)", "clip-1", 3,
                  clip_id="clip-1", parts=3, segment="00000007_boot.webm", note=None)

    emit()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log_event(log, Msg.STORAGE_ALARM, "level %s", logging.getLevelName(level), level=level, alarm="x")
    for m in Msg:
        log_event(log, m, "kind %s", m.name)
    log.warning("plain %s line", "old-style")
    setup_logging(verbose=True)
    log_event(log, Msg.WATCHDOG, "verbose debug", level=logging.DEBUG, stall="disk")
"""


def test_message_id_fields_and_priorities_reach_the_journal(tmp_path):
    script = payload(tmp_path, "fields.py", FIELDS)
    box = boxed(tmp_path, [sys.executable, str(script)])
    assert box.rc == 0, box.stderr
    assert json.loads(box.stdout) == {"kinds": ["journal", "journal"], "handlers": 2}, (
        "journal + a stderr copy (stderr is not the journal here), never doubled"
    )

    e = box.one("clip clip-1 built in 3 part(s)")
    assert e["MESSAGE_ID"] == Msg.CLIP_BUILT.value == "a7758b3eb80f40d2b385fb8d77e2f70a"
    assert (e["EDGED_CLIP_ID"], e["EDGED_PARTS"], e["EDGED_SEGMENT"]) == ("clip-1", "3", "00000007_boot.webm")
    assert (e["PRIORITY"], e["LOGGER"], e["SYSLOG_IDENTIFIER"]) == ("6", "edged.test", "edged")
    assert (e["CODE_FILE"], e["CODE_FUNC"]) == (str(script), "emit"), "the caller, not log_event"
    sent = {k for k in e if not k.startswith("_")}
    assert sent == {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "LOGGER",
        "THREAD_NAME",
        "PROCESS_NAME",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "EDGED_CLIP_ID",
        "EDGED_PARTS",
        "EDGED_SEGMENT",
    }, "no junk fields (CODE_ARGS, EDGED_NOTE=None…)"

    assert "level DEBUG" not in [x.get("MESSAGE") for x in box.ours()], "DEBUG only when verbose"
    for name, prio in (("INFO", "6"), ("WARNING", "4"), ("ERROR", "3"), ("CRITICAL", "2")):
        x = box.one(f"level {name}")
        assert (x["PRIORITY"], x["MESSAGE_ID"], x["EDGED_ALARM"]) == (prio, Msg.STORAGE_ALARM.value, "x")
    debug = box.one("verbose debug")
    assert (debug["PRIORITY"], debug["EDGED_STALL"], debug["MESSAGE_ID"]) == ("7", "disk", Msg.WATCHDOG.value)
    for m in Msg:
        assert box.one(f"kind {m.name}")["MESSAGE_ID"] == m.value
    plain = box.one("plain old-style line")
    assert "MESSAGE_ID" not in plain and plain["PRIORITY"] == "4"
    assert (
        "INFO edged.test: clip clip-1 built in 3 part(s) [clip_built clip_id=clip-1 parts=3 "
        "segment=00000007_boot.webm]" in box.stderr
    )


def test_a_service_whose_stderr_is_the_journal_logs_once(tmp_path):
    box = boxed(tmp_path, [sys.executable, str(payload(tmp_path, "fields.py", FIELDS)), "journal-stream"])
    assert box.rc == 0, box.stderr
    assert json.loads(box.stdout) == {"kinds": ["journal", "journal"], "handlers": 1}
    assert box.one("clip clip-1 built in 3 part(s)")["EDGED_CLIP_ID"] == "clip-1"
    assert "clip-1" not in box.stderr, "no second copy through stderr into the journal"


SECRETS = """
    import json, logging, sys, urllib.parse
    from pathlib import Path
    from edged.core.journal import Msg, log_event, register_secret, register_secret_file, setup_logging

    key_file = Path(sys.argv[1])
    print(setup_logging())
    log = logging.getLogger("edged.test")
    register_secret("hunter2-registered")
    register_secret_file(key_file)
    log.info("1 key %s in args", "hunter2-registered")
    log.info("2 literal hunter2-registered in the text")
    log_event(log, Msg.UPLOAD_FAILED, "3 upload refused", target="sonoran_v2",
              reason="server said: bad key hunter2-registered")
    log.warning("4 header Authorization: Bearer %s", "tok-unregistered-123456")
    log.warning("5 PUT https://b.s3.amazonaws.com/x.webm?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                "&X-Amz-Credential=AKIAEXAMPLECRED%%2F20260101&X-Amz-Signature=deadbeefsig0123456789")
    log.warning("6 body %s", json.dumps({"key": "json-secret-value", "n": 1}))
    log.warning("7 url %s", "https://api.example/v1?api_key=query-secret-value&x=1")
    log.info("8 dict %r", {"api_key": "dict-secret-value"})
    try:
        try:
            raise OSError("hunter2-registered rejected")
        except OSError as inner:
            raise RuntimeError("request with Bearer exc-token-987 failed") from inner
    except RuntimeError:
        log.exception("9 send failed for %s", "file-key-one")
    log.info("10 file key %s", key_file.read_text().strip())
    key_file.write_text("rotated-file-key-number-two\\n")
    log.info("11 rotated key rotated-file-key-number-two here")
    register_secret("p@ss/w0rd+x y")
    log.info("12 encoded %s", urllib.parse.quote("p@ss/w0rd+x y", safe=""))
    log.info("13 bad args %d", "file-key-one")
    log.info("14 done")
"""
SECRET_VALUES = (
    "hunter2-registered",
    "tok-unregistered-123456",
    "deadbeefsig0123456789",
    "AKIAEXAMPLECRED",
    "json-secret-value",
    "query-secret-value",
    "dict-secret-value",
    "exc-token-987",
    "file-key-one",
    "rotated-file-key-number-two",
    "p@ss/w0rd+x y",
    "p%40ss%2Fw0rd%2Bx%20y",
)


def _assert_secrets_scrubbed(text: str) -> None:
    for secret in SECRET_VALUES:
        assert secret not in text, f"secret {secret!r} leaked"


def test_secrets_never_reach_the_journal_nor_stderr(tmp_path):
    key_file = tmp_path / "api.key"
    key_file.write_text("file-key-one\n")
    box = boxed(tmp_path, [sys.executable, str(payload(tmp_path, "secrets.py", SECRETS)), str(key_file)])
    assert box.rc == 0 and box.stdout.strip() == "journal", box.stderr
    _assert_secrets_scrubbed(box.everything())
    messages = {e["MESSAGE"].split(" ", 1)[0]: e for e in box.ours()}
    assert set(messages) == {str(i) for i in range(1, 15)}, "every line arrived (scrubbed, not dropped)"
    assert messages["1"]["MESSAGE"] == "1 key *** in args"
    assert messages["3"]["EDGED_REASON"] == "server said: bad key ***"
    assert messages["4"]["MESSAGE"] == "4 header Authorization: Bearer ***"
    assert "X-Amz-Credential=***&X-Amz-Signature=***" in messages["5"]["MESSAGE"]
    assert messages["6"]["MESSAGE"] == '6 body {"key": "***", "n": 1}'
    assert messages["7"]["MESSAGE"] == "7 url https://api.example/v1?api_key=***&x=1"
    assert messages["8"]["MESSAGE"] == "8 dict {'api_key': '***'}"
    exc = messages["9"]
    assert exc["MESSAGE"].startswith("9 send failed for ***\nTraceback") and exc["PRIORITY"] == "3"
    assert "RuntimeError: request with Bearer *** failed" in exc["EXCEPTION_TEXT"]
    assert "OSError: *** rejected" in exc["EXCEPTION_TEXT"], "the chained cause is scrubbed too"
    assert messages["10"]["MESSAGE"] == "10 file key ***"
    assert messages["11"]["MESSAGE"] == "11 rotated key *** here", "a key rotated in its file"
    assert messages["12"]["MESSAGE"] == "12 encoded ***", "the URL-encoded form of a secret"
    assert messages["13"]["MESSAGE"].startswith("13 bad args %d (args ('***',))")
    assert "--- Logging error ---" not in box.stderr


FALLBACK = """
    import logging, os, socket, sys
    from edged.core.journal import Msg, log_event, register_secret, setup_logging

    log = logging.getLogger("edged.test")
    register_secret("fallback-secret-42")
    print(setup_logging())
    log_event(log, Msg.UPLOAD_DEFERRED, "upload deferred: %s", "connection refused", clip_id="c-9", part=2,
              target="sonoran_v2", reason="connection refused", level=logging.WARNING)
    # A socket file left behind by a journald that is gone is no journal either.
    os.makedirs("/run/systemd/journal", exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("/run/systemd/journal/socket")
    s.close()
    print(setup_logging())
    log.error("key fallback-secret-42 and Bearer abc.def")
"""


def test_without_a_journal_logging_falls_back_to_stderr(tmp_path):
    box = boxed(tmp_path, [sys.executable, str(payload(tmp_path, "fallback.py", FALLBACK))], journald=False)
    assert box.rc == 0, box.stderr
    assert box.stdout.split() == ["stderr", "stderr"], "no socket, then a stale socket: stderr both times"
    assert (
        "WARNING edged.test: upload deferred: connection refused [upload_deferred clip_id=c-9 part=2 "
        'target=sonoran_v2 reason="connection refused"]'
    ) in box.stderr
    assert "ERROR edged.test: key *** and Bearer ***" in box.stderr
    assert "fallback-secret-42" not in box.stderr and "abc.def" not in box.stderr
    assert box.stderr.count("upload deferred") == 1 and "Logging error" not in box.stderr


def test_is_journal_reachable_refuses_a_stale_socket(tmp_path):
    path = tmp_path / "socket"
    assert not journal._journal_reachable(str(path))
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(path))
    try:
        assert journal._journal_reachable(str(path))
    finally:
        live.close()
    assert path.exists() and not journal._journal_reachable(str(path)), "nobody listens any more"


# --- the real daemon ----------------------------------------------------------------------------

DAEMON = """
    import subprocess, sys, time
    from pathlib import Path
    from edged.app.control import ControlError, request
    from edged.core.paths import StatePaths

    cfg, state, key_file = sys.argv[1:4]
    daemon = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", cfg, "--for", "8"])
    key = Path(key_file).read_text().strip()   # not on any command line: journald records those
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = request(StatePaths(Path(state)).control, {"cmd": "mark", "note": f"badge reads {key}"})
            break
        except ControlError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise
            time.sleep(0.1)
    print(answer["event_id"], flush=True)
    sys.exit(daemon.wait(timeout=120))
"""


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_daemon_logs_its_events_to_the_journal_and_never_its_key(tmp_path):
    secret = "sk-live-7f3a9c1e5b2d4f60"
    key_file = tmp_path / "api.key"
    key_file.write_text(secret + "\n")
    state = tmp_path / "state"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        [camera]
        source = "synthetic"
        paced = true
        [audio]
        source = "synthetic"
        [storage]
        dir = "{state}"
        min_free_bytes = 0
        [clips]
        pre_roll_seconds = 1
        post_roll_seconds = 1
        [upload]
        targets = ["directory", "sonoran_v2"]
        [upload.sonoran_v2]
        base_url = "http://127.0.0.1:{_dead_port()}"
        api_key_file = "{key_file}"
        account_uuid = "3f0c5a8e-1b2d-4c3e-9f4a-5b6c7d8e9f01"
    """)
    )
    script = payload(tmp_path, "daemon.py", DAEMON)
    box = boxed(tmp_path, [sys.executable, str(script), str(cfg), str(state), str(key_file)], timeout=180)
    assert box.rc == 0, box.stderr
    event_id = box.stdout.strip()

    started, stopped = box.by_id(Msg.RECORDING_STARTED), box.by_id(Msg.RECORDING_STOPPED)
    assert len(started) == 1 and len(stopped) == 1, [e["MESSAGE"] for e in box.ours()]
    assert started[0]["EDGED_SOURCE"] == "synthetic" and started[0]["EDGED_STORAGE_DIR"] == str(state / "segments")
    assert stopped[0]["EDGED_REASON"] == "8 s of footage recorded" and int(stopped[0]["EDGED_SEGMENTS"]) >= 1
    assert int(started[0]["__MONOTONIC_TIMESTAMP"]) < int(stopped[0]["__MONOTONIC_TIMESTAMP"])
    assert started[0]["_PID"] == stopped[0]["_PID"] and started[0]["LOGGER"] == "edged.recorder"

    [mark] = box.by_id(Msg.MARK)
    assert mark["EDGED_EVENT_ID"] == event_id and mark["EDGED_NOTE"] == "badge reads ***", (
        "the key file named in the config is registered as a secret by the daemon"
    )
    [clip] = box.by_id(Msg.CLIP_BUILT)
    assert clip["EDGED_CLIP_ID"] == event_id and int(clip["EDGED_PARTS"]) >= 1
    delivered = [e for e in box.by_id(Msg.UPLOAD_DELIVERED) if e["EDGED_TARGET"] == "directory"]
    assert delivered and delivered[0]["EDGED_CLIP_ID"] == event_id and delivered[0]["EDGED_PART"] == "1"
    deferred = [e for e in box.by_id(Msg.UPLOAD_DEFERRED) if e["EDGED_TARGET"] == "sonoran_v2"]
    assert deferred and deferred[0]["EDGED_CLIP_ID"] == event_id and deferred[0]["EDGED_REASON"]

    assert secret not in box.everything()
    assert "Logging error" not in box.stderr and "Traceback" not in box.stderr


CRASH = """
    import signal, subprocess, sys, time
    from pathlib import Path

    cfg, state = sys.argv[1:3]
    run = [sys.executable, "-m", "edged", "run", "--config", cfg]
    daemon = subprocess.Popen(run)
    deadline = time.monotonic() + 30
    while not list(Path(state, "segments").glob("*.part")):
        assert time.monotonic() < deadline and daemon.poll() is None, "no segment started"
        time.sleep(0.05)
    [part] = Path(state, "segments").glob("*.part")
    while part.stat().st_size < 40_000:      # a few clusters of the first segment are on disk
        assert time.monotonic() < deadline + 30 and daemon.poll() is None, "the segment did not grow"
        time.sleep(0.05)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    print(part.name.removesuffix(".part"), daemon.pid, flush=True)
    sys.exit(subprocess.run(run + ["--for", "1"]).returncode)
"""


def test_a_crash_shows_as_a_start_without_a_stop_then_the_salvage(tmp_path):
    state = tmp_path / "state"
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        [camera]
        source = "synthetic"
        paced = true
        [audio]
        source = "synthetic"
        [storage]
        dir = "{state}"
        min_free_bytes = 0
    """)
    )
    box = boxed(
        tmp_path, [sys.executable, str(payload(tmp_path, "crash.py", CRASH)), str(cfg), str(state)], timeout=180
    )
    assert box.rc == 0, box.stderr
    segment, killed_pid = box.stdout.split()
    started, stopped = box.by_id(Msg.RECORDING_STARTED), box.by_id(Msg.RECORDING_STOPPED)
    assert [e["_PID"] for e in started][0] == killed_pid and len(started) == 2
    assert [e["_PID"] for e in stopped] == [started[1]["_PID"]], "the killed daemon never said it stopped"
    [salvaged] = box.by_id(Msg.SEGMENT_SALVAGED)
    assert (salvaged["EDGED_SEGMENT"], salvaged["EDGED_CAUSE"], salvaged["LOGGER"]) == (
        segment,
        "crash",
        "edged.reconcile",
    )
    assert salvaged["PRIORITY"] == "4" and salvaged["_PID"] == started[1]["_PID"]
    assert int(salvaged["__MONOTONIC_TIMESTAMP"]) < int(started[1]["__MONOTONIC_TIMESTAMP"]), (
        "salvaged at start, before recording resumes"
    )
