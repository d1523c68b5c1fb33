"""The key and the answers an operator meets, against the contract server on 127.0.0.1: a corrected
key resumes a paused target at once, the request budget follows the key in use, the plan allowance
follows the community (not the key) across a restart, and a send whose answer was lost after the
request went out counts as a resend.

Each test here fails without its fix (checked by reverting it): the pause looked at the key once a
minute; the budget and the allowance were keyed by the key the daemon started with; a lost answer
left ``resends`` at 0.
"""

from __future__ import annotations

import time

from edged.upload.budget import key_fingerprint
from edged.upload.outbox import Outbox
from edged.upload.uploader import ALARM_PAUSED
from tests.contract.sonoran_server import SonoranServer
from tests.support import wait_until
from tests.support.upload import ACCOUNT, Rig, ScaledClock, settings


def requests_by_key(outbox: Outbox) -> dict[str, int]:
    return dict(outbox.query("SELECT key, COUNT(*) FROM rate_requests GROUP BY key"))


def test_a_corrected_key_resumes_the_paused_target_within_seconds(tmp_path):
    clock = ScaledClock()
    with SonoranServer(keys={"test-key": "free"}, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv, key="wrong-key", auth_retry_minutes=60)
        with Rig(tmp_path, s, clock) as rig:
            rig.add("c1")
            wait_until(lambda: rig.alarms.get(ALARM_PAUSED), 20, "paused on the 401")
            assert srv.count(401) == 1 and rig.states() == ["deferred"]
            (tmp_path / "api.key.new").write_text("test-key\n")
            (tmp_path / "api.key.new").rename(tmp_path / "api.key")  # as an editor or `install` replaces it
            fixed = time.monotonic()
            # No wake-up, no `outbox retry`: the paused target sees the new key by itself.
            wait_until(rig.settled, 10, "delivered after the key file was corrected")
            took = time.monotonic() - fixed
        assert rig.states() == ["delivered"] and rig.alarms[ALARM_PAUSED] is False
        assert srv.count(200) == 1
    print(f"corrected key to delivery: {took:.2f} s")


def test_the_request_budget_follows_the_key_in_use(tmp_path):
    clock = ScaledClock()
    keys = {"key-a": "pro", "key-b": "pro"}
    with SonoranServer(keys=keys, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv, key="key-a")
        with Rig(tmp_path, s, clock) as rig:
            rig.add("c1")
            wait_until(rig.settled, 20, "first clip delivered with key A")
            (tmp_path / "api.key").write_text("key-b\n")  # rotated while running
            rig.add("c2")
            wait_until(rig.settled, 20, "second clip delivered with key B")
            counted = requests_by_key(rig.outbox)
            status = rig.uploader.status()["sonoran_v2"]
    assert [u.key for u in srv.uploads] == ["key-a", "key-b"]
    assert counted == {key_fingerprint("key-a"): 1, key_fingerprint("key-b"): 1}, "each request under its own key"
    assert status["requests_per_min"] == 30.0, "the status shows the budget of the key in use"


def test_the_plan_allowance_is_the_communitys_across_a_restart_with_a_new_key(tmp_path):
    clock = ScaledClock()
    keys = {"key-a": "free", "key-b": "free"}
    community = {"key-a": "comm-1", "key-b": "comm-1"}  # one community, its key rotated
    with SonoranServer(keys=keys, communities=community, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv, key="key-a")
        with Rig(tmp_path, s, clock) as rig:
            for i in range(4):  # 4 × 110 s of the free plan's 10 minutes
                rig.add(f"a{i}", duration_ms=110_000)
            wait_until(rig.settled, 20, "four clips delivered with key A")
        rig.outbox.close()
        s = settings(tmp_path, ["sonoran_v2"], srv, key="key-b")  # the key rotated, the daemon restarted
        with Rig(tmp_path, s, clock) as rig:
            rig.add("b0", duration_ms=60_000)  # fits: 8.33 of 10 minutes
            rig.add("b1", duration_ms=120_000)  # does not: waits for the window, not sent to be refused
            wait_until(lambda: sorted(rig.states()).count("delivered") == 5 and "deferred" in rig.states(), 20, "b0")
            used = rig.uploader.status()["sonoran_v2"]["allowance_used_minutes"]
            last = [d for d in rig.outbox.deliveries() if d.part.clip_id == "b1"][0]
    assert used == 8.33, "the minutes uploaded with the old key still count"
    assert last.state == "deferred" and "allowance" in last.reason
    assert srv.count(400) == 0, "no upload was sent only to be refused for the allowance"


def test_an_answer_lost_after_the_request_went_out_counts_a_resend(tmp_path):
    clock = ScaledClock()
    with SonoranServer(keys={"test-key": "free"}, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv)
        srv.reset_next(1, after_bytes=10**9)  # reads the whole request, then resets: no answer
        with Rig(tmp_path, s, clock) as rig:
            rig.add("lost")
            wait_until(rig.settled, 30, "delivered on the second send")
        d = rig.outbox.deliveries()[0]
        assert d.state == "delivered" and d.attempts == 2
        assert d.resends == 1, "the server may have had the first: a possible duplicate, counted"
        assert rig.outbox.resends() == 1


def test_a_connection_refused_before_anything_was_sent_is_no_resend(tmp_path):
    clock = ScaledClock()
    with SonoranServer(keys={"test-key": "free"}, accounts={ACCOUNT}, clock=clock.now) as srv:
        s = settings(tmp_path, ["sonoran_v2"], srv)
        srv.fail_next(1, 503, "upstream down")  # an answer: nothing lost
        with Rig(tmp_path, s, clock) as rig:
            rig.add("ok")
            wait_until(rig.settled, 30, "delivered")
        d = rig.outbox.deliveries()[0]
    assert d.attempts == 2 and d.resends == 0
