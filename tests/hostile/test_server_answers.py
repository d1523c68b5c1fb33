"""Hostile input: what a server (or whatever answers in its place) sends back.

Nothing from a server may destroy, redirect, leak or stall evidence. Each case runs the real
uploader with its real Sonoran target and outbox against ``hostile_server`` on 127.0.0.1 (real
sockets), and the ones that matter most also through a real ``edged run`` (``harness``). In every
case: the delivery is not counted delivered, the clip file and its sha256 are unchanged, the hold
on the footage is not released (no delivery callback; at the daemon, the event's range hold stays
in the index), and an alarm names the likely cause.

Tests wait for states (a request ended, a row deferred, an alarm raised) with generous limits;
the limits are far below what the unfixed behaviour would take (a 2 GB body, a drip of 10,000 s,
a 600 s read), so each can fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edged.core.journal import MASK
from edged.core.paths import StatePaths
from edged.upload.answers import (
    ALARM_FAILED,
    ALARM_PAUSED,
    ALARM_PORTAL,
    ALARM_REDIRECTED,
    ALARM_STALLED,
    MAX_ANSWER_BYTES,
)
from edged.upload.outbox import Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.targets import build_targets
from edged.upload.uploader import Uploader
from tests.hostile.harness import DaemonUnderTest, assert_evidence_kept, evidence_snapshot
from tests.hostile.hostile_server import BlackHole, HostileServer, Mode
from tests.support import wait_until
from tests.support.upload import ACCOUNT, enqueue, settings

REPO = Path(__file__).resolve().parents[2]
#: The API key the hostile server echoes back. Long and unusual: found only where it leaked.
KEY = "sk_live_hostile_7Qm2ZrT9vK4pX8sL"
WAIT_S = 60.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Rig:
    """The real uploader, its Sonoran v2 target and an outbox in the state folder (where
    ``edged outbox list`` reads it), against a hostile server."""

    def __init__(self, tmp_path: Path, server: HostileServer, **upload) -> None:
        # Short deadlines for the test (the validator's minimums): connect 1 s, the answer 5 s.
        upload = {"connect_timeout_seconds": 1.0, "timeout_seconds": 5.0} | upload
        self.settings = settings(tmp_path, ["sonoran_v2"], server, key=KEY, **upload)
        self.tmp = tmp_path
        self.state = self.settings.state_dir
        self.state.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(StatePaths(self.state).outbox, targets=["sonoran_v2"])
        self.released: list[str] = []
        self.alarms: dict[str, bool] = {}
        self.targets = build_targets(self.settings)
        self.uploader = Uploader(
            self.outbox,
            self.targets,
            RetryPolicy.from_settings(self.settings.upload, random.Random(1)),
            on_delivered=self.released.append,
            on_alarm=self.alarms.__setitem__,
        )

    @property
    def target(self):
        return self.targets[0]

    def add(self, clip_id: str) -> Path:
        (path,) = enqueue(self.outbox, self.tmp / "clips", clip_id)
        return path

    def delivery(self):
        return self.outbox.deliveries()[0]

    def attempted(self) -> bool:
        """The first attempt's verdict is stored (the row left 'sending' with a reason)."""
        d = self.delivery()
        return d.attempts >= 1 and d.state not in ("queued", "sending") and bool(d.reason)

    def __enter__(self) -> Rig:
        self.uploader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uploader.stop()


def assert_kept(rig: Rig, path: Path, digest: str, clip_id: str) -> None:
    """Not delivered, the file as it was, the hold not released."""
    d = rig.delivery()
    assert d.state != "delivered", d
    assert path.exists() and sha256(path) == digest, "the clip file changed"
    assert rig.released == [], "the delivery callback ran: the footage's hold would be released"
    assert not rig.outbox.clip_delivered(clip_id)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- bounded answers ------------------------------------------------------------------------------------


def test_a_2gb_answer_is_read_only_to_the_cap_and_memory_stays_flat(tmp_path):
    with HostileServer(Mode.OK) as server, Rig(tmp_path, server) as rig:
        # Warm up on a good answer (imports, TLS context, SQLite pages), then measure.
        rig.add("clip-warm")
        wait_until(lambda: rig.released, WAIT_S, "the warm-up clip delivered")
        server.mode = Mode.HUGE
        rig.released.clear()
        base = rss_bytes()
        peak = [base]
        done = threading.Event()

        def sample() -> None:  # a watchdog too: far past the cap, cut the request off and fail
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss_bytes())
                if peak[0] - base > 256 * 2**20:
                    rig.target.cancel("test watchdog: memory grew past 256 MB")
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        path = rig.add("clip-huge")
        digest = sha256(path)
        try:
            wait_until(lambda: server.ended(Mode.HUGE), WAIT_S, "the huge answer ended by the client")
            wait_until(
                lambda: [d for d in rig.outbox.deliveries(clip_id="clip-huge") if d.reason],
                WAIT_S,
                "the verdict stored",
            )
        finally:
            done.set()
            sampler.join()
        (seen,) = server.ended(Mode.HUGE)[:1]
        received = rig.target.last_call.received if rig.target.last_call else 0
    growth = peak[0] - base
    assert seen.ended.startswith("client gone") and seen.sent < 64 * 2**20, "the client stopped reading"
    assert received <= MAX_ANSWER_BYTES + 2 * 65536, f"the client read {received} bytes of the answer"
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB while a 2 GB answer was sent"
    (d,) = rig.outbox.deliveries(clip_id="clip-huge")
    assert d.state == "deferred" and "cut off" in d.reason and "captive portal" in d.reason, d.reason
    assert rig.alarms.get(ALARM_PORTAL) is True
    assert rig.released == [] and sha256(path) == digest


@pytest.mark.parametrize("mode", [Mode.DRIP_BODY, Mode.DRIP_HEADERS])
def test_an_answer_dripped_a_byte_a_second_ends_at_the_deadline(tmp_path, mode):
    with HostileServer(mode, drip_s=1.0) as server, Rig(tmp_path, server) as rig:
        path = rig.add("clip-drip")
        digest = sha256(path)
        # The drip is over 10,000 bytes long: only the request's deadline ends it this early.
        wait_until(lambda: server.ended(mode), WAIT_S, "the client gave up on the dripped answer")
        wait_until(rig.attempted, WAIT_S, "the verdict stored")
        d = rig.delivery()
        assert d.state == "deferred" and "too slowly" in d.reason, d.reason
        assert rig.alarms.get(ALARM_STALLED) is True
        call = rig.target.last_call
        assert call is not None and call.received < 10_000, "not read to the end"
        assert_kept(rig, path, digest, "clip-drip")


@pytest.mark.parametrize(
    "mode,why",
    [
        (Mode.PORTAL, "web page"),
        (Mode.PORTAL_NO_TYPE, "web page"),
        (Mode.BAD_JSON, "invalid JSON"),
        (Mode.WRONG_SHAPE, "wrong shape"),
    ],
)
def test_a_200_that_is_not_the_contracts_answer_is_not_a_delivery(tmp_path, mode, why):
    with HostileServer(mode) as server, Rig(tmp_path, server) as rig:
        path = rig.add("clip-portal")
        digest = sha256(path)
        wait_until(rig.attempted, WAIT_S, "the first answer judged")
        d = rig.delivery()
        assert d.state == "deferred" and why in d.reason and "captive portal or proxy" in d.reason, d.reason
        assert rig.alarms.get(ALARM_PORTAL) is True
        assert not rig.alarms.get(ALARM_PAUSED) and not rig.alarms.get(ALARM_FAILED), "tried again, not refused"
        assert_kept(rig, path, digest, "clip-portal")
        # The network is fixed (the portal signed in): the same delivery goes through, the alarm clears.
        server.mode = Mode.OK
        wait_until(lambda: rig.released, WAIT_S, "delivered once the server answers")
        assert rig.delivery().state == "delivered" and rig.released == ["clip-portal"]
        assert rig.alarms.get(ALARM_PORTAL) is False, "the alarm cleared by the delivery"


def test_a_list_of_things_that_are_not_urls_is_not_a_delivery(tmp_path):
    with HostileServer(Mode.WRONG_SHAPE, wrong_doc=["ok", 1, None]) as server, Rig(tmp_path, server) as rig:
        path = rig.add("clip-shape")
        digest = sha256(path)
        wait_until(rig.attempted, WAIT_S, "the first answer judged")
        assert "wrong shape" in rig.delivery().reason and rig.alarms.get(ALARM_PORTAL) is True
        assert_kept(rig, path, digest, "clip-shape")


def test_redirects_are_never_followed_and_repeated_ones_raise_an_alarm(tmp_path):
    with HostileServer(Mode.REDIRECT) as server, Rig(tmp_path, server) as rig:
        path = rig.add("clip-redirect")
        digest = sha256(path)
        wait_until(lambda: rig.alarms.get(ALARM_REDIRECTED), WAIT_S, "the redirect alarm")
        rig.uploader.stop()
        d = rig.delivery()
        assert "redirected" in d.reason and "not followed" in d.reason, d.reason
        assert len(server.requests()) == d.attempts >= 2, "one request per attempt: no redirect was followed"
        assert {s.path for s in server.requests()} == {"/v2/general/bodycam-recordings"}
        assert_kept(rig, path, digest, "clip-redirect")


# --- secrets ---------------------------------------------------------------------------------------------


def _outbox_files_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.glob("outbox.sqlite*"))


def _outbox_list(rig: Rig) -> str:
    cfg = rig.tmp / "edged.toml"
    cfg.write_text(f'[storage]\ndir = "{rig.state}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "edged", "outbox", "list", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("status,alarm", [(401, ALARM_PAUSED), (400, ALARM_FAILED)])
def test_a_key_echoed_by_the_server_is_stored_and_shown_nowhere(tmp_path, caplog, status, alarm):
    with HostileServer(Mode.ECHO_KEY, echo_status=status) as server, Rig(tmp_path, server) as rig:
        path = rig.add("clip-echo")
        digest = sha256(path)
        wait_until(rig.attempted, WAIT_S, "the refusal stored")
        wait_until(lambda: rig.alarms.get(alarm), WAIT_S, f"the {alarm} alarm")
        status_doc = json.dumps(rig.uploader.status())
        assert_kept(rig, path, digest, "clip-echo")
    assert server.requests()[0].headers["authorization"] == f"Bearer {KEY}", "the key was sent, and echoed"
    d = rig.delivery()
    assert MASK in d.reason and "is not valid for this community" in d.reason, d.reason
    rig.outbox.close()  # checkpointed: every row is in the file
    assert KEY.encode() not in _outbox_files_bytes(rig.state), "the key is in outbox.sqlite"
    listing = _outbox_list(rig)
    assert "is not valid for this community" in listing and KEY not in listing
    assert KEY not in status_doc
    assert not [r for r in caplog.records if KEY in r.getMessage()], "the key reached a log record"


def test_the_store_scrubs_whatever_a_caller_hands_it(tmp_path):
    """The boundary itself: reasons, responses and progress values are scrubbed on the way in."""
    from edged.core.journal import register_secret

    register_secret(KEY)
    ob = Outbox(tmp_path / "outbox.sqlite", targets=["t"])
    clip = tmp_path / "c.webm"
    clip.write_bytes(b"x")
    ob.enqueue("c", [(1, clip, 1, 1000, sha256(clip))], 10, 1)
    d = ob.deliveries()[0]
    ob.defer(d, 0, f"HTTP 401: bad key {KEY}")
    ob.delivered(ob.get(d.part.id, "t"), json.dumps({"echo": f"Authorization: Bearer {KEY}"}))
    ob.record_progress("c", "t", "url:x", "https://s3.example/o?X-Amz-Signature=deadbeefcafe&x=1")
    ob.fail(ob.get(d.part.id, "t"), f"refused {KEY}")
    assert ob.progress("c", "t")["url:x"] == f"https://s3.example/o?X-Amz-Signature={MASK}&x=1"
    assert MASK in ob.deliveries()[0].reason
    ob.close()
    raw = _outbox_files_bytes(tmp_path)
    assert KEY.encode() not in raw and b"deadbeefcafe" not in raw


# --- a stuck send ends when asked -------------------------------------------------------------------------


def test_stop_and_the_operators_retry_cut_a_stuck_send_off(tmp_path):
    # A 600 s deadline: only a cancel ends these requests within the test's waits.
    with HostileServer(Mode.STALL) as server, Rig(tmp_path, server, timeout_seconds=600.0) as rig:
        path = rig.add("clip-stuck")
        digest = sha256(path)
        wait_until(
            lambda: server.requests(Mode.STALL) and rig.delivery().state == "sending",
            WAIT_S,
            "the send stuck waiting for an answer",
        )
        assert rig.uploader.retry("clip-stuck") == 1, "the stuck send counts as retried"
        wait_until(lambda: len(server.requests(Mode.STALL)) >= 2, WAIT_S, "sent again at once")
        wait_until(lambda: rig.delivery().state == "sending", WAIT_S, "stuck again")
        assert rig.delivery().resends == 1, "the cut-off request may have reached the server: counted"
        rig.uploader.stop()
        assert not any(w.is_alive() for w in rig.uploader.workers), "stop waited out the stuck read"
        d = rig.delivery()
        assert d.state == "queued" and d.reason == "cancelled: the daemon is stopping" and d.resends == 2, d
        assert not rig.alarms.get(ALARM_STALLED), "a cancel is not the server's fault"
        assert_kept(rig, path, digest, "clip-stuck")


def test_stop_cuts_off_a_connect_that_never_completes(tmp_path):
    # Connects may take 120 s here (the validator's maximum): only a cancel ends this one.
    with BlackHole() as hole, Rig(tmp_path, hole, connect_timeout_seconds=120.0) as rig:
        path = rig.add("clip-hole")
        digest = sha256(path)
        wait_until(lambda: rig.delivery().state == "sending", WAIT_S, "the send connecting")
        rig.uploader.stop()
        assert not any(w.is_alive() for w in rig.uploader.workers), "stop waited out the connect"
        d = rig.delivery()
        assert d.state == "queued" and d.reason == "cancelled: the daemon is stopping", d
        assert_kept(rig, path, digest, "clip-hole")


# --- through the real daemon ------------------------------------------------------------------------------


def _daemon(tmp_path: Path, server: HostileServer, **upload) -> DaemonUnderTest:
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    return DaemonUnderTest(
        tmp_path / "run",
        {
            "upload": {
                "targets": ["sonoran_v2"],
                "connect_timeout_seconds": 1.0,
                "timeout_seconds": 5.0,
                **upload,
                "sonoran_v2": {"base_url": server.url, "api_key_file": str(key_file), "account_uuid": ACCOUNT},
            }
        },
    )


def _held(d: DaemonUnderTest, event_id: str) -> bool:
    db = sqlite3.connect(f"file:{d.state / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return bool(db.execute("SELECT 1 FROM range_holds WHERE owner=?", (f"event:{event_id}",)).fetchall())
    finally:
        db.close()


def _rows(d: DaemonUnderTest) -> list[tuple]:
    db = sqlite3.connect(f"file:{d.state / 'outbox.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT state, attempts, reason, resends, response FROM deliveries").fetchall()
    finally:
        db.close()


def _alarm(d: DaemonUnderTest, name: str) -> bool:
    return name in ((d.status() or {}).get("alarms") or [])


def test_daemon_a_captive_portal_holds_the_footage_and_an_echoed_key_is_kept_nowhere(tmp_path):
    with HostileServer(Mode.PORTAL) as server, _daemon(tmp_path, server) as d:
        d.start()
        event = d.mark("evidence behind a captive portal")
        clip = d.wait_built(event)
        d.wait(lambda: _alarm(d, ALARM_PORTAL), what="the captive portal alarm")
        before = evidence_snapshot(d.state)
        rows = _rows(d)
        assert rows and all(r[0] != "delivered" and r[1] >= 1 for r in rows), rows
        assert all("captive portal" in r[2] for r in rows if r[0] == "deferred"), rows
        assert _held(d, event), "the portal's 200 released the footage"
        # The portal now echoes the key back in a refusal: paused, and the key stored nowhere.
        server.mode = Mode.ECHO_KEY
        d.wait(lambda: _alarm(d, ALARM_PAUSED), what="the target paused by the echoed refusal")
        status = d.status()
        listing = d.cli("outbox", "list", "--json", "--config", str(d.cfg))
        assert d.stop() == 0
    assert listing.returncode == 0 and "is not valid for this community" in listing.stdout, listing.stderr
    assert KEY not in listing.stdout and KEY not in json.dumps(status)
    assert KEY.encode() not in _outbox_files_bytes(d.state), "the key is in outbox.sqlite"
    for p in (d.root).rglob("*"):  # status files, stores, logs: nothing the daemon wrote holds it
        if p.is_file() and p.name != "api.key":
            assert KEY.encode() not in p.read_bytes(), f"the key leaked into {p}"
    assert _held(d, event) and not [r for r in _rows(d) if r[0] == "delivered"]
    assert_evidence_kept(before, evidence_snapshot(d.state))
    assert all(sha256(p) == before[str(p.relative_to(d.state))] for p in clip.glob("*.webm"))


def test_daemon_a_dripped_answer_ends_at_its_deadline(tmp_path):
    with HostileServer(Mode.DRIP_BODY, drip_s=1.0) as server, _daemon(tmp_path, server) as d:
        d.start()
        event = d.mark("evidence on a dripping server")
        d.wait_built(event)
        d.wait(lambda: _alarm(d, ALARM_STALLED), what="the stalled-answer alarm")
        before = evidence_snapshot(d.state)
        d.wait(lambda: server.ended(Mode.DRIP_BODY), what="the server seeing the dripped answer given up")
        rows = _rows(d)
        assert rows and not [r for r in rows if r[0] == "delivered"], rows
        assert all("too slowly" in r[2] for r in rows if r[0] == "deferred"), rows
        assert _held(d, event)
        d.wait_frames_grow()  # recording went on throughout
        assert d.stop() == 0
    assert _held(d, event)
    assert_evidence_kept(before, evidence_snapshot(d.state))


def test_daemon_the_operators_retry_and_stop_cut_a_stuck_send_off(tmp_path):
    # A 600 s deadline: only a cancel ends these requests within the waits.
    with HostileServer(Mode.STALL) as server, _daemon(tmp_path, server, timeout_seconds=600.0) as d:
        d.start()
        event = d.mark("evidence on a stalled server")
        d.wait_built(event)
        d.wait(
            lambda: server.requests(Mode.STALL) and any(r[0] == "sending" for r in _rows(d)),
            what="a send stuck on the stalled server",
        )
        before = evidence_snapshot(d.state)
        out = d.cli("outbox", "retry", event, "--config", str(d.cfg))
        assert out.returncode == 0, out.stderr
        d.wait(lambda: len(server.requests(Mode.STALL)) >= 2, what="the stuck send started over")
        d.wait(lambda: any(r[0] == "sending" for r in _rows(d)), what="stuck again")
        assert d.stop() == 0
    rows = _rows(d)
    assert not [r for r in rows if r[0] in ("delivered", "sending")], rows
    assert [r for r in rows if r[2] == "cancelled: the daemon is stopping" and r[3] >= 2], (
        f"stop did not cut the send off: {rows}"
    )
    assert "cancelled: retry requested by the operator" in d.log()
    assert _held(d, event)
    assert_evidence_kept(before, evidence_snapshot(d.state))
