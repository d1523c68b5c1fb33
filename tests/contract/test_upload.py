"""Store-and-forward upload against the contract server (tests/contract/sonoran_server.py) on 127.0.0.1.

Real WebM parts made with PyAV, a real HTTP server enforcing the documented Sonoran contract,
the real uploader with its real outbox. Time-dependent rules (30 requests per rolling minute,
24 h allowance) run on one accelerated clock shared by server and uploader.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from edged.config import schema as config
from edged.core import limits
from edged.upload.outbox import PRIORITY_MARK, PRIORITY_RECALL, Outbox
from edged.upload.uploader import ALARM_PAUSED
from tests.contract.sonoran_server import SonoranServer
from tests.support import wait_until
from tests.support.upload import ACCOUNT, Rig, ScaledClock, enqueue, make_webm, settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path):
    clock = ScaledClock()
    with SonoranServer(
        keys={"test-key": "free"},
        accounts={ACCOUNT},
        clock=clock.now,
        legacy={"comm-1": {"plan": "free", "accounts": {ACCOUNT: {"session": "sess-1", "username": "Officer"}}}},
    ) as srv:
        srv.test_clock = clock
        yield srv


# --- delivery --------------------------------------------------------------------------------------


def test_v2_delivers_each_part_with_the_documented_fields_and_keeps_the_url_list(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    with Rig(tmp_path, s, server.test_clock) as rig:
        files = rig.add("20261122T100000Z-aaaaaa", n_parts=2, duration_ms=4321)
        wait_until(rig.settled, 20, "both parts delivered")
    assert rig.states() == ["delivered", "delivered"]
    assert [u.sha256 for u in server.uploads] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    up = server.uploads[0]
    assert up.api == "v2" and up.key == "test-key" and up.filename == files[0].name
    assert up.fields == {
        "accountUuid": ACCOUNT,
        "durationMs": "4321",
        "identId": "7",
        "unitNumber": "1A-12",
        "unitLocation": "Senora Fwy / Route 68",
    }
    d = rig.outbox.deliveries()[0]
    assert json.loads(d.response)[0].startswith(server.url), "the server's URL list is kept with the part"
    assert rig.delivered == ["20261122T100000Z-aaaaaa"], "the clip is reported delivered once, when complete"
    assert all(f.exists() for f in files), "delivered files are not deleted by the uploader"


def test_legacy_delivers_with_its_session_fields(tmp_path, server):
    s = settings(tmp_path, ["sonoran_legacy"], server)
    with Rig(tmp_path, s, server.test_clock) as rig:
        rig.add("clip-legacy", duration_ms=900)
        wait_until(rig.settled, 20, "delivered")
    assert rig.states() == ["delivered"]
    up = server.uploads[0]
    assert up.api == "legacy" and up.key == "comm-1"
    assert up.fields == {
        "community": "comm-1",
        "account": ACCOUNT,
        "sessionId": "sess-1",
        "username": "Officer",
        "type": "bodycam",
        "durationMs": "900",
        "unitNumber": "1A-12",
        "unitLocation": "Senora Fwy / Route 68",
    }


def test_every_target_gets_every_clip(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2", "sonoran_legacy", "directory"], server)
    with Rig(tmp_path, s, server.test_clock) as rig:
        files = rig.add("clip-all", n_parts=2)
        wait_until(rig.settled, 20, "delivered everywhere")
    assert sorted((d.target, d.state) for d in rig.outbox.deliveries()) == sorted(
        [(t, "delivered") for t in ("sonoran_v2", "sonoran_legacy", "directory") for _ in files]
    )
    assert server.count(200, api="v2") == 2 and server.count(200, api="legacy") == 2
    for f in files:
        assert (tmp_path / "delivered" / "clip-all" / f.name).read_bytes() == f.read_bytes()


def test_marked_clips_go_before_recalls_and_older_events_first(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    rig = Rig(tmp_path, s, server.test_clock)
    t = time.time_ns()
    rig.add("recall-old", priority=PRIORITY_RECALL, event_wall_ns=t - 10**12)
    rig.add("mark-new", priority=PRIORITY_MARK, event_wall_ns=t)
    rig.add("mark-old", priority=PRIORITY_MARK, event_wall_ns=t - 10**11, n_parts=2)
    with rig:
        wait_until(rig.settled, 30, "all delivered")
    order = [u.filename.rsplit("-part", 1)[0] for u in server.uploads]
    assert order == ["mark-old", "mark-old", "mark-new", "recall-old"]


# --- nothing lost ------------------------------------------------------------------------------------


def test_server_down_then_up(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    server.down()
    with Rig(tmp_path, s, server.test_clock) as rig:
        rig.add("clip-down", n_parts=2)
        wait_until(
            lambda: rig.outbox.deliveries()[0].attempts >= 1 and rig.states()[0] == "deferred",
            10,
            "first attempt refused",
        )
        d = rig.outbox.deliveries()[0]
        assert "cannot connect" in d.reason and d.next_try_ns > 0
        server.up()
        wait_until(rig.settled, 30, "delivered once the server is back")
    assert rig.states() == ["delivered", "delivered"] and len(server.uploads) == 2


def test_connection_reset_mid_upload_is_retried(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    server.reset_next(2, after_bytes=20_000)
    with Rig(tmp_path, s, server.test_clock) as rig:
        files = rig.add("clip-reset", noise_bytes=200_000, frames=3, size=320)
        assert files[0].stat().st_size > 60_000
        wait_until(rig.settled, 30, "delivered after two resets")
    d = rig.outbox.deliveries()[0]
    assert d.state == "delivered" and d.attempts == 3
    assert len(server.uploads) == 1 and server.uploads[0].sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()


def test_server_errors_back_off_then_deliver(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    server.fail_next(3, 503, "upstream down")
    with Rig(tmp_path, s, server.test_clock) as rig:
        rig.add("clip-503")
        wait_until(rig.settled, 30, "delivered after three 503s")
    d = rig.outbox.deliveries()[0]
    assert d.state == "delivered" and d.attempts == 4
    times = [r.at for r in server.requests]
    assert len(times) == 4


def test_a_refused_clip_fails_with_the_servers_reason_and_is_kept(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    rig = Rig(tmp_path, s, server.test_clock)
    bad = tmp_path / "clips" / "20240501T143000Z-0bad00" / "20240501T143000Z-0bad00-part01.webm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a webm at all" * 100)
    rig.outbox.enqueue(
        "20240501T143000Z-0bad00",
        [(1, bad, bad.stat().st_size, 1000, hashlib.sha256(bad.read_bytes()).hexdigest())],
        PRIORITY_MARK,
        time.time_ns(),
    )
    rig.add("clip-good")
    with rig:
        wait_until(rig.settled, 20, "both settled")
    by_clip = {d.part.clip_id: d for d in rig.outbox.deliveries()}
    assert (
        by_clip["20240501T143000Z-0bad00"].state == "failed"
        and "must be webm" in by_clip["20240501T143000Z-0bad00"].reason
    )
    assert by_clip["clip-good"].state == "delivered", "one refused clip does not stop the queue"
    assert bad.exists(), "a refused clip is kept"
    assert rig.alarms.get("upload_failed") is True
    # The operator asks for it again (no daemon running: recorded for the next start).
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    rig.outbox.close()  # the last connection checkpoints the WAL into the file
    (tmp_path / "outbox.sqlite").rename(state / "outbox.sqlite")
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[storage]\ndir = "{state}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "edged", "outbox", "retry", "20240501T143000Z-0bad00", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "when the daemon next runs" in out.stdout, out.stderr
    again = Outbox(state / "outbox.sqlite").deliveries(clip_id="20240501T143000Z-0bad00")[0]
    assert again.state == "queued" and again.reason == "retry requested"


def test_a_part_outside_the_contract_is_refused_locally_without_a_request(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    rig = Rig(tmp_path, s, server.test_clock)
    big = tmp_path / "big.webm"
    make_webm(big, frames=1)
    with open(big, "ab") as f:
        f.write(os.urandom(limits.MAX_UPLOAD_BYTES))
    changed = rig.add("clip-changed")[0]
    rig.outbox.enqueue(
        "clip-big",
        [(1, big, big.stat().st_size, 1000, hashlib.sha256(big.read_bytes()).hexdigest())],
        PRIORITY_MARK,
        time.time_ns(),
    )
    changed.write_bytes(changed.read_bytes()[:-10])
    with rig:
        wait_until(rig.settled, 20, "both refused")
    reasons = {d.part.clip_id: d.reason for d in rig.outbox.deliveries()}
    assert "6000000-byte upload limit" in reasons["clip-big"]
    assert "changed on disk" in reasons["clip-changed"]
    assert server.requests == [], "nothing the server would refuse was sent"


# --- paused targets ----------------------------------------------------------------------------------


def test_a_refused_key_pauses_the_target_instead_of_failing_every_clip(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server, key="wrong-key")
    with Rig(tmp_path, s, server.test_clock) as rig:
        rig.add("c1")
        rig.add("c2")
        rig.add("c3")
        wait_until(lambda: rig.alarms.get(ALARM_PAUSED), 10, "paused alarm")
        time.sleep(1.0)
        assert server.count(401) == 1, "one refusal, not one per clip"
        assert "failed" not in rig.states()
        status = rig.uploader.status()["sonoran_v2"]
        assert "401" in status["paused"]
        (tmp_path / "api.key").write_text("test-key\n")  # the operator fixes the key file
        rig.uploader.wake()
        wait_until(rig.settled, 90, "delivered after the key was fixed")
    assert rig.states() == ["delivered"] * 3 and rig.alarms[ALARM_PAUSED] is False


def test_an_unknown_account_pauses_the_target_and_the_pause_survives_a_restart(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    s = config.from_mapping(
        {
            "storage": {"dir": str(tmp_path / "state")},
            "upload": {
                "targets": ["sonoran_v2"],
                "sonoran_v2": {
                    "base_url": server.url,
                    "api_key_file": str(tmp_path / "api.key"),
                    "account_uuid": "00000000-0000-0000-0000-000000000000",
                },
            },
        }
    )
    with Rig(tmp_path, s, server.test_clock) as rig:
        rig.add("c1")
        rig.add("c2")
        wait_until(lambda: rig.alarms.get(ALARM_PAUSED), 10, "paused")
    assert server.count(400) == 1
    with Rig(tmp_path, s, server.test_clock) as rig:  # restarted with the same bad account
        assert rig.alarms.get(ALARM_PAUSED) is True
        time.sleep(0.5)
    assert server.count(400) == 1, "still paused after a restart: no new request"


# --- limits ------------------------------------------------------------------------------------------


def test_never_more_than_30_requests_per_minute_and_no_429(tmp_path):
    clock = ScaledClock(scale=20.0)  # a minute in 3 s
    with SonoranServer(keys={"test-key": "pro"}, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv)
        rig = Rig(tmp_path, s, clock)
        for i in range(40):
            rig.add(f"c{i:02d}", duration_ms=100)
        t0 = clock.now()
        with rig:
            wait_until(rig.settled, 60, "40 delivered")
        took = clock.now() - t0
    assert srv.count(429) == 0 and len(srv.uploads) == 40
    times = sorted(r.at for r in srv.requests)
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 60) <= limits.REQUESTS_PER_MINUTE
    assert took >= 60, f"40 requests at ≤30/min take over a minute (took {took:.0f} s)"


def test_a_429_storm_is_ridden_out_honouring_retry_after(tmp_path):
    clock = ScaledClock(scale=10.0)
    with SonoranServer(keys={"test-key": "free"}, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv)
        srv.fail_next(
            4,
            429,
            '{"title": "Too Many Requests", "status": 429}',
            {"Retry-After": "20", "Content-Type": "application/problem+json"},
        )
        with Rig(tmp_path, s, clock) as rig:
            rig.add("c1")
            rig.add("c2")
            wait_until(rig.settled, 60, "delivered after the storm")
        assert rig.states() == ["delivered", "delivered"]
        times = [r.at for r in srv.requests]
        assert len(times) == 6, "each 429 costs one request, no more"
        for a, b in zip(times[:4], times[1:5]):
            assert b - a >= 20.0, "the next request waits for Retry-After"
        assert rig.uploader.status()["sonoran_v2"]["requests_per_min"] < 10, "slowed down on this key (from 30)"


def test_the_plan_allowance_is_kept_locally_and_parts_wait_for_the_window(tmp_path):
    clock = ScaledClock()
    with SonoranServer(keys={"test-key": "free"}, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv)
        with Rig(tmp_path, s, clock) as rig:
            for i in range(6):  # 6 × 110 s > the free plan's 10 minutes
                rig.add(f"c{i}", duration_ms=110_000)
            wait_until(lambda: rig.states().count("delivered") == 5 and "deferred" in rig.states(), 20, "5 delivered")
            time.sleep(0.5)
            last = rig.outbox.deliveries()[-1]
            assert last.state == "deferred" and "allowance" in last.reason
            assert len(srv.requests) == 5, "the sixth was not sent to be refused"
            clock.jump(24 * 3600)  # a day later the first upload has aged out
            rig.uploader.wake()
            wait_until(rig.settled, 20, "sixth delivered")
        assert srv.count(400) == 0 and len(srv.uploads) == 6


def test_the_servers_allowance_answer_defers_and_does_not_fail(tmp_path):
    clock = ScaledClock()
    with SonoranServer(keys={"test-key": "free"}, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv)
        (tmp_path / "other").mkdir()
        other = Rig(tmp_path / "other", settings(tmp_path / "other", ["sonoran_v2"], srv), clock)
        with other:  # another device of the community uses the allowance up
            for i in range(5):
                other.add(f"o{i}", duration_ms=120_000)
            wait_until(other.settled, 20, "other device's uploads")
        with Rig(tmp_path, s, clock) as rig:
            rig.add("mine", duration_ms=5000)
            wait_until(lambda: rig.states() == ["deferred"] and srv.count(400) == 1, 10, "allowance refusal")
            d = rig.outbox.deliveries()[0]
            assert "limited to 10 minutes per 24 hours" in d.reason
            assert d.next_try_ns - clock.now_ns() > 10 * 60 * 1e9, "waits, not retried at once"


# --- crash safety -------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import random, sys, time
    sys.path.insert(0, {repo!r})
    from edged.config import schema as config
    from edged.upload.outbox import Outbox
    from edged.upload.policy import RetryPolicy
    from edged.upload.targets import build_targets
    from edged.upload.uploader import Uploader
    s = config.load({cfg!r})
    ob = Outbox({outbox!r}, targets=s.upload.targets)
    up = Uploader(ob, build_targets(s), RetryPolicy.from_settings(s.upload, random.Random(1)))
    up.start()
    print("STARTED", flush=True)
    time.sleep(3600)
""")


def test_kill_9_mid_upload_resends_and_counts_it(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server)
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        [storage]
        dir = "{tmp_path / "state"}"
        [upload]
        targets = ["sonoran_v2"]
        retry_base_seconds = 0.2
        [upload.sonoran_v2]
        base_url = "{server.url}"
        api_key_file = "{tmp_path / "api.key"}"
        account_uuid = "{ACCOUNT}"
    """)
    )
    outbox_path = tmp_path / "outbox.sqlite"
    ob = Outbox(outbox_path, targets=s.upload.targets)
    enqueue(ob, tmp_path / "clips", "clip-kill")
    ob.close()
    server.stall_next(1, 30.0)  # the server holds the answer: the child is killed while 'sending'
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(repo=str(REPO), cfg=str(cfg), outbox=str(outbox_path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: Outbox(outbox_path).deliveries()[0].state == "sending", 20, "upload under way")
        time.sleep(0.5)
        assert Outbox(outbox_path).deliveries()[0].state == "sending"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    with Rig(tmp_path, s, server.test_clock) as rig:
        wait_until(rig.settled, 40, "delivered after the restart")
        d = rig.outbox.deliveries()[0]
    assert d.state == "delivered" and d.resends == 1, "the interrupted send is counted as a possible duplicate"
    assert rig.uploader.interrupted == 1


# --- streaming ----------------------------------------------------------------------------------------


def test_memory_does_not_grow_with_the_file_size(tmp_path):
    # The server runs as its own process, so this process's allocations are the uploader's.
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "contract" / "sonoran_server.py"), "--key", "test-key=pro"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().split()[1]

        class Remote:
            pass

        remote = Remote()
        remote.url = url
        s = settings(tmp_path, ["sonoran_v2"], remote)
        rig = Rig(tmp_path, s, ScaledClock())
        big = tmp_path / "clips" / "big" / "big-part01.webm"
        big.parent.mkdir(parents=True)
        make_webm(big, frames=1)
        with open(big, "ab") as f:
            f.write(os.urandom(5_800_000))
        rig.outbox.enqueue(
            "big",
            [(1, big, big.stat().st_size, 1000, hashlib.sha256(big.read_bytes()).hexdigest())],
            PRIORITY_MARK,
            time.time_ns(),
        )
        tracemalloc.start()
        try:
            with rig:
                wait_until(rig.settled, 30, "big part delivered")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        proc.terminate()
        proc.wait(10)
    assert rig.states() == ["delivered"]
    assert peak < 1_000_000, f"peak Python allocations {peak} bytes while sending a 5.8 MB file"


def test_bandwidth_cap(tmp_path, server):
    s = settings(tmp_path, ["sonoran_v2"], server, bandwidth_kbps=1600)  # 200 kB/s
    rig = Rig(tmp_path, s, server.test_clock)
    f = rig.add("slow", noise_bytes=400_000, frames=3, size=480)[0]
    size = f.stat().st_size
    assert size > 300_000
    with rig:
        t0 = time.monotonic()
        wait_until(rig.settled, 30, "delivered")
        took = time.monotonic() - t0
    assert took >= size / 200_000 * 0.9, f"{size} bytes at 200 kB/s took only {took:.2f} s"


def test_a_target_added_later_gets_the_backlog_and_a_removed_one_stops_counting(tmp_path, server):
    s1 = settings(tmp_path, ["directory"], server)
    with Rig(tmp_path, s1, server.test_clock) as rig:
        rig.add("old-clip")
        wait_until(rig.settled, 10, "delivered to the directory")
    s2 = settings(tmp_path, ["sonoran_v2"], server)
    server.down()  # the new target cannot deliver yet
    rig2 = Rig(tmp_path, s2, server.test_clock)
    rig2.add("new-clip")
    states = {(d.part.clip_id, d.target): d.state for d in rig2.outbox.deliveries()}
    assert states == {("old-clip", "directory"): "delivered", ("new-clip", "sonoran_v2"): "queued"}, (
        "a settled clip is not sent again to a new target; new clips go to it"
    )
    s3 = settings(tmp_path, ["directory"], server)
    ob3 = Outbox(tmp_path / "outbox.sqlite", targets=s3.upload.targets)
    d = {x.target: (x.state, x.reason) for x in ob3.deliveries(clip_id="new-clip")}
    assert d == {"sonoran_v2": ("failed", "target removed from the configuration"), "directory": ("queued", "")}, (
        "the configured target receives it instead"
    )
    assert not ob3.clip_delivered("new-clip")


# --- the whole daemon ---------------------------------------------------------------------------------


def test_daemon_marks_and_delivers_to_sonoran_v2_and_the_operator_sees_it(tmp_path, server):
    from tests.support import SMALL, Running, timeline_s

    (tmp_path / "api.key").write_text("test-key\n")
    s = config.from_mapping(
        {
            "camera": {"source": "synthetic", "paced": False} | SMALL,
            "audio": {"source": "synthetic"},
            "storage": {"dir": str(tmp_path / "state"), "min_free_bytes": 0, "segment_seconds": 2.0},
            "clips": {"pre_roll_seconds": 2.0, "post_roll_seconds": 2.0},
            "upload": {
                "targets": ["sonoran_v2", "directory"],
                "retry_base_seconds": 0.2,
                "sonoran_v2": {
                    "base_url": server.url,
                    "api_key_file": str(tmp_path / "api.key"),
                    "account_uuid": ACCOUNT,
                },
            },
        },
        origin="<test>",
    )
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[storage]\ndir = "{tmp_path / "state"}"\n')
    server.fail_next(1, 502, "bad gateway")
    with Running(s) as d:
        wait_until(lambda: timeline_s(d) > 5, 30, "footage")
        event_id = d.mark("cli", "upload me").event_id
        wait_until(lambda: Outbox(d.paths.outbox).clip_delivered(event_id), 60, "delivered to both targets")
        wait_until(
            lambda: json.loads(d.paths.status.read_text())["outbox"].get("delivered", 0) == 2, 5, "status written"
        )
        status = json.loads(d.paths.status.read_text())
    assert status["uploads"]["sonoran_v2"]["paused"] is None
    assert status["uploads"]["sonoran_v2"]["last_delivered"]
    assert server.uploads[0].fields["durationMs"] == str(
        Outbox(tmp_path / "state" / "outbox.sqlite").parts()[0].duration_ms
    )
    listing = json.loads(
        subprocess.run(
            [sys.executable, "-m", "edged", "outbox", "list", "--json", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    by_target = {r["target"]: r for r in listing}
    assert by_target["sonoran_v2"]["state"] == "delivered" and by_target["sonoran_v2"]["attempts"] == 2
    assert json.loads(by_target["sonoran_v2"]["response"])[0].startswith(server.url)
    assert by_target["directory"]["state"] == "delivered"
    retry = subprocess.run(
        [sys.executable, "-m", "edged", "outbox", "retry", "999", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert retry.returncode == 1 and "nothing to retry" in retry.stderr
