"""The uploader's rules, one at a time: answers classified, back-off, request budget, plan allowance.

These are the pieces the end-to-end uploader tests (tests/contract/test_upload.py) rely on; each test here
feeds one rule the documented inputs (../shared/reference/) and checks the decision.
"""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest

from edged.core import limits
from edged.upload import key_share as share_rules
from edged.upload.answers import Kind, classify_error, classify_response, parse_retry_after
from edged.upload.budget import PlanAllowance, RequestBudget, key_fingerprint
from edged.upload.outbox import Outbox
from edged.upload.policy import RetryPolicy

PROBLEM = {"content-type": "application/problem+json"}
TEXT = {"content-type": "text/plain"}


def problem(detail: str, status: int = 400) -> str:
    return f'{{"title": "Unable to upload bodycam recording", "status": {status}, "detail": "{detail}"}}'


# --- answers ---------------------------------------------------------------------------------------


def test_success_keeps_the_url_list():
    v = classify_response(200, {"content-type": "application/json"}, '["https://files.example.com/a.webm"]', 0)
    assert v.kind is Kind.DELIVERED and v.urls == ["https://files.example.com/a.webm"]
    assert "files.example.com" in v.response


@pytest.mark.parametrize(
    "status,headers,body,kind",
    [
        (429, {"retry-after": "17"}, problem("Too many requests", 429), Kind.RATE_LIMITED),
        (
            400,
            PROBLEM,
            problem("Bodycam uploads are limited to 10 minutes per 24 hours for the FREE plan."),
            Kind.ALLOWANCE,
        ),
        (
            400,
            TEXT,
            "Error: Bodycam uploads are limited to 100 minutes per 24 hours for the STANDARD plan.",
            Kind.ALLOWANCE,
        ),
        (401, PROBLEM, problem("Invalid API key", 401), Kind.PAUSE),
        (403, PROBLEM, problem("Forbidden", 403), Kind.PAUSE),
        (400, PROBLEM, problem("Account 0000-1 was not found in this community."), Kind.PAUSE),
        (400, PROBLEM, problem("Provide exactly one of accountUuid, communityUserId, roblox, or discord."), Kind.PAUSE),
        (400, TEXT, "Error: Invalid account ID.", Kind.PAUSE),
        (400, TEXT, "Error: Invalid session ID.", Kind.PAUSE),
        (400, TEXT, "Error: Unable to validate bodycam upload session.", Kind.PAUSE),
        (400, PROBLEM, problem("Bodycam uploads must be webm files."), Kind.FAILED),
        (400, PROBLEM, problem("File exceeds 6000000 bytes."), Kind.FAILED),
        (400, TEXT, "Error: Bodycam clips must be between 1ms and 120000ms.", Kind.FAILED),
        (413, TEXT, "too large", Kind.FAILED),
        (400, PROBLEM, problem("Uploaded bodycam clip but failed to save recording metadata."), Kind.RETRY),
        (500, TEXT, "oops", Kind.RETRY),
        (502, TEXT, "<html>bad gateway</html>", Kind.RETRY),
        (503, {"retry-after": "5"}, "", Kind.RETRY),
        (408, TEXT, "", Kind.RETRY),
    ],
)
def test_every_documented_answer_is_classified(status, headers, body, kind):
    v = classify_response(status, headers, body, 0)
    assert v.kind is kind, v
    assert str(status) in v.reason


def test_the_reason_is_the_servers_own_words():
    v = classify_response(400, PROBLEM, problem("Bodycam uploads must be webm files."), 0)
    assert v.reason == "HTTP 400: Bodycam uploads must be webm files."
    v = classify_response(400, TEXT, "Error: Invalid session ID.", 0)
    assert v.reason == "HTTP 400: Error: Invalid session ID."


def test_retry_after_in_seconds_and_as_an_http_date():
    assert parse_retry_after("120", 1000.0) == 120.0
    date = email.utils.formatdate(1000.0 + 90, usegmt=True)
    assert parse_retry_after(date, 1000.0) == pytest.approx(90, abs=1)
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None
    assert (
        parse_retry_after("²", 0) is None and parse_retry_after("٣٠", 0) is None
    )  # digits, not ASCII: found by fuzzing
    v = classify_response(429, {"retry-after": date}, "", 1000.0)
    assert v.retry_after_s == pytest.approx(90, abs=1)


def test_transport_errors_are_retried_and_connect_failures_mean_offline():
    req = httpx.Request("POST", "http://127.0.0.1:9/")
    assert classify_error(httpx.ConnectError("[Errno 111] Connection refused", request=req)).offline
    assert classify_error(httpx.ConnectTimeout("timed out", request=req)).offline
    v = classify_error(httpx.ReadTimeout("timed out", request=req))
    assert v.kind is Kind.RETRY and not v.offline and "timed out" in v.reason
    v = classify_error(httpx.RemoteProtocolError("Server disconnected", request=req))
    assert v.kind is Kind.RETRY and not v.offline
    v = classify_error(httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate is not yet valid", request=req))
    assert v.kind is Kind.RETRY and "clock" in v.reason and not v.offline


# --- back-off ---------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_up_to_the_cap():
    p = RetryPolicy(base_s=2, cap_s=60, rng=random.Random(1))
    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (30, 60)]:
        draws = [p.backoff_s(attempts) for _ in range(400)]
        assert 0 <= min(draws) and max(draws) <= ceiling
        assert max(draws) > 0.9 * ceiling and min(draws) < 0.1 * ceiling, "full jitter spans [0, ceiling]"


def test_retry_after_is_honoured_never_shortened():
    p = RetryPolicy(rng=random.Random(2))
    waits = [p.retry_after_s(30) for _ in range(200)]
    assert min(waits) >= 30 and max(waits) <= 36
    assert p.retry_after_s(None) >= limits.RATE_WINDOW_S


# --- request budget ----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = Outbox(tmp_path / "outbox.sqlite")
    yield s
    s.close()


def take_all(budget: RequestBudget, start_ns: int, seconds: float, step_s: float = 0.1) -> list[int]:
    """Ask every ``step_s`` for ``seconds``; return the times (ns) a request was granted."""
    granted, t = [], start_ns
    while t < start_ns + seconds * 1e9:
        if budget.try_take(t) == 0:
            granted.append(t)
        t += int(step_s * 1e9)
    return granted


def test_budget_never_exceeds_30_per_rolling_minute_and_paces_them(store):
    b = RequestBudget(store, key_fingerprint("k"), rng=random.Random(3))
    granted = take_all(b, 10**12, 180)
    for i, t in enumerate(granted):  # any 60 s window holds at most 30
        assert sum(1 for u in granted[i:] if u < t + 60e9) <= limits.REQUESTS_PER_MINUTE
    assert len(granted) >= 80, "about 30 a minute over three minutes"
    gaps = [(b2 - a) / 1e9 for a, b2 in zip(granted, granted[1:])]
    assert min(gaps) >= 1.4, "paced about 2 s apart, not in a burst"


def test_budget_is_shared_by_every_target_using_the_key_and_survives_a_restart(tmp_path):
    path = tmp_path / "outbox.sqlite"
    t = 10**12
    s1 = Outbox(path)
    a = RequestBudget(s1, key_fingerprint("shared"), rng=random.Random(4))
    b = RequestBudget(s1, key_fingerprint("shared"), rng=random.Random(5))
    granted = []
    for i in range(300):  # 30 s: two targets asking every 0.1 s
        now = t + i * int(0.1e9)
        granted += [now] * ((a.try_take(now) == 0) + (b.try_take(now) == 0))
    assert 12 <= len(granted) <= 17, "two targets with one key share its pace (one request every ~2 s)"
    s1.close()
    s2 = Outbox(path)  # restarted: the requests and the pace of the last minute still count
    c = RequestBudget(s2, key_fingerprint("shared"), rng=random.Random(6))
    after = take_all(c, t + 30 * 10**9, 30)
    assert len(granted) + len(after) <= limits.REQUESTS_PER_MINUTE
    assert len(after) >= 12
    other = RequestBudget(s2, key_fingerprint("another key"))
    first = take_all(other, t + 60 * 10**9, 3)  # a new key's first slot: a random phase of its pace
    assert first and first[0] - (t + 60 * 10**9) <= 2.1e9, "a different key has its own budget"
    s2.close()


S = 10**9


def run_clean(b: RequestBudget, start_ns: int, seconds: float) -> int:
    """Take every request the pace allows for ``seconds``, each accepted; return the time after."""
    t = start_ns
    while t < start_ns + seconds * S:
        if b.try_take(t) == 0:
            b.accepted()
        t += S // 10
    return t


def first_grant(b: RequestBudget, start_ns: int) -> int:
    t = start_ns
    while b.try_take(t) > 0:
        t += S // 10
    return t


def test_first_contact_counts_the_fleet_from_retry_after(tmp_path):
    """Devices starting together, each at the whole limit: Retry-After says how long the key's last
    30 requests took, so how many devices like this one offered them (counted at the most)."""
    stores = [Outbox(tmp_path / f"{n}.sqlite") for n in "ab"]
    ten = RequestBudget(stores[0], key_fingerprint("k"), rng=random.Random(7))
    t0 = first_grant(ten, 10**12)
    rate = ten.refused(t0 + 6 * S, 54.5, retry_after_s=54.0)  # 30 requests in 6 s: ten devices at 30/min
    assert rate == pytest.approx(share_rules.TARGET_LOAD * limits.REQUESTS_PER_MINUTE / 10)
    assert ten.try_take(t0 + 7 * S) == pytest.approx(53.5, abs=0.01), "silent until Retry-After"
    back = first_grant(ten, t0 + 60 * S)
    assert t0 + 60.5 * S <= back <= t0 + 60.5 * S + 61 * S / rate, "then at a random phase of the new pace"
    crowd = RequestBudget(stores[1], key_fingerprint("k"), rng=random.Random(8))
    t1 = first_grant(crowd, 10**12)
    rate = crowd.refused(t1, 60.5, retry_after_s=59.0)  # the window filled within a second or two
    assert rate == pytest.approx(share_rules.TARGET_LOAD * limits.REQUESTS_PER_MINUTE / 60)
    assert crowd.rate(t1 + 5 * 60 * S) == pytest.approx(rate), "held, not regained at once"
    for s in stores:
        s.close()


def test_a_device_not_told_its_number_keeps_counting_until_a_clean_window_then_holds(store):
    """Switched on with the fleet, a device reads its first 429 from a window still filling (it
    counts too few): until its count has held a clean window, a 429 counts up to twice as many at
    once, not one step; after one, a single 429 is a crowded moment or a burst and the count holds
    (a count so climbed backs off by LADDER_BACKOFF at a crowded moment, once an event: AIMD)."""
    b = RequestBudget(store, key_fingerprint("k"), rng=random.Random(12))
    per = share_rules.TARGET_LOAD * limits.REQUESTS_PER_MINUTE
    t0 = first_grant(b, 10**12)
    assert b.refused(t0 + 25 * S, 36.0, retry_after_s=35.0) == pytest.approx(per / 3), "first contact: 3"
    back = first_grant(b, t0 + 61 * S)
    t = run_clean(b, back, 57)  # at its pace (9.5/min) for 57 s: 9 requests, no clean window yet
    # Refused again, the key offered 4x its limit: 13 devices at its pace, 14 by its share of the
    # window (9 of 120): a small fleet, read from its pace and at most doubled.
    assert b.refused(t, 46.0, retry_after_s=45.0) == pytest.approx(per / 6), "still counting: doubled"
    t = run_clean(b, t + 47 * S, 200)  # then a clean window and more at 6 devices' pace
    assert b.refused(t, 3.0, retry_after_s=2.0) == pytest.approx(per / 8), "settled: crowded, backed off 1.25x"
    t = run_clean(b, t + 4 * S, 200)
    assert b.refused(t, 41.0, retry_after_s=40.0) == pytest.approx(per / 8), "settled: a burst, not counted"
    assert b.refused(t + 42 * S, 26.0, retry_after_s=25.0) == pytest.approx(per / 8), "the same burst: held"
    again = t + 70 * S  # refused again after the burst's minute, with no clean window since: backed off
    assert b.refused(again, 26.0, retry_after_s=25.0) == pytest.approx(per / 10)


def test_in_a_storm_a_counting_device_reads_the_fleet_from_its_share_of_the_key(store):
    """In a storm each device sends about one request per Retry-After, whatever it counts, so its
    pace reads the storm as a few devices (simulated, 50 devices switched on over 20 s: 13 % of the
    requests refused); what share of the key's window was its own reads it as it is (6 %)."""
    b = RequestBudget(store, key_fingerprint("k"), rng=random.Random(12))
    per = share_rules.TARGET_LOAD * limits.REQUESTS_PER_MINUTE
    t0 = first_grant(b, 10**12)
    assert b.refused(t0 + 6 * S, 54.5, retry_after_s=54.0) == pytest.approx(per / 10), "first contact: 10"
    back = first_grant(b, t0 + 61 * S)
    # Back from its wait and refused at once, the key offered 4x its limit: 42 devices at its pace
    # (2.85/min), but 1 of the 120 requests in the window was its own.
    assert b.refused(back, 46.0, retry_after_s=45.0) == pytest.approx(per / 120)


def climb(b: RequestBudget, retry_after_s: float) -> int:
    """First contact counting 10, then one more 429 while still counting, back from the wait (its own
    share of the window: 1 of ``60 / (60 - retry_after_s)`` times the limit)."""
    t = first_grant(b, 10**12)
    b.refused(t + 6 * S, 54.5, retry_after_s=54.0)
    t = first_grant(b, t + 61 * S)
    b.refused(t, retry_after_s + 1, retry_after_s=retry_after_s)
    return t + int((retry_after_s + 1) * S)


def test_counts_climbed_while_counting_regain_the_same_rate_so_the_slow_catch_up(tmp_path):
    """Devices switched on over some seconds end their counting at unequal counts (measured: 0.2 to
    3.9 requests a minute in one 50-device fleet). One fewer device per PROBE_STEP_S leaves a device
    at 0.36/min there for hours; the rate of such a count gains LADDER_GAIN a minute whatever it
    is, so the slowest gains most of its count (AIMD's additive increase; at fewer than about 27
    devices the probe is the faster and goes on)."""
    stores = [Outbox(tmp_path / f"{n}.sqlite") for n in "ab"]
    fast, slow = (RequestBudget(s, key_fingerprint("k"), rng=random.Random(14)) for s in stores)
    per = share_rules.TARGET_LOAD * limits.REQUESTS_PER_MINUTE
    t = max(climb(fast, 15.0), climb(slow, 38.0))
    assert (fast.rate(t), slow.rate(t)) == pytest.approx((per / 40, per / 82))
    later = t + 20 * 60 * S
    assert slow.rate(later) == pytest.approx(per / 67), "82 devices counted: 67 twenty minutes on"
    gain = 20 * share_rules.LADDER_GAIN
    assert fast.rate(later) - fast.rate(t) == pytest.approx(gain, abs=0.1 * gain)
    assert slow.rate(later) - slow.rate(t) == pytest.approx(gain, abs=0.1 * gain)
    for s in stores:
        s.close()


def test_another_clients_burst_keeps_the_rate(store):
    """The issue's case: one 429 caused by another client must not leave a lone device at
    1 request/min climbing by one every 10 minutes (it took 147 s for what takes 34)."""
    b = RequestBudget(store, key_fingerprint("k"), rng=random.Random(8))
    t = run_clean(b, 10**12, 90)  # alone on the key at 30/min for a minute and a half
    assert b.rate(t) == limits.REQUESTS_PER_MINUTE
    b.refused(t, 41.0, retry_after_s=40.0)  # someone filled the window 20 s ago: offered 3x its limit
    assert b.try_take(t + S) == pytest.approx(40.0), "the burst's wait is waited"
    assert [b.rate(t + k * S) for k in range(0, 160, 5)] == [limits.REQUESTS_PER_MINUTE] * 32
    after = take_all(b, t + 42 * S, 60)
    assert len(after) >= limits.REQUESTS_PER_MINUTE - 1, "back at the whole limit the moment the wait ends"


def test_another_clients_burst_met_while_it_arrives_is_one_event(store):
    """Measured (scripts/bench_upload.py): a lone device asked while the burst was still arriving
    (Retry-After 7 s), then again after its wait (38 s); the second counted a second device and the
    device stayed at 13.5/min for ten minutes. The 429s within a window of the first after a clean
    window are one event: the count holds."""
    b = RequestBudget(store, key_fingerprint("k"), rng=random.Random(13))
    t = run_clean(b, 10**12, 90)
    b.refused(t, 8.0, retry_after_s=7.0)
    assert b.refused(t + 8 * S, 40.0, retry_after_s=38.0) == limits.REQUESTS_PER_MINUTE
    after = take_all(b, t + 49 * S, 60)
    assert len(after) >= limits.REQUESTS_PER_MINUTE - 1, "back at the whole limit when the wait ends"


def test_a_crowded_key_moves_the_phase_and_a_second_429_counts_one_device_more(store):
    b = RequestBudget(store, key_fingerprint("k"), share=10, rng=random.Random(9))  # 10 devices: 2.7/min
    pace = share_rules.TARGET_LOAD * limits.REQUESTS_PER_MINUTE / 10
    t = run_clean(b, 10**12, 120)
    b.refused(t, 3.0, retry_after_s=2.0)  # the key just full: its last 30 took 58 s
    assert b.rate(t + 10 * S) == pytest.approx(pace), "a crowded moment is not a rate: the pace holds"
    spacing = 61 / pace
    nxt = first_grant(b, t + S)
    assert nxt == pytest.approx(t + (2.0 + spacing) * S, abs=0.2 * S), "one spacing after the window frees"
    b.refused(nxt, 3.0, retry_after_s=2.0)  # within a window of the first: the same crowded moment
    assert b.rate(nxt + 10 * S) == pytest.approx(pace)
    nxt = first_grant(b, t + 62 * S)
    b.refused(nxt, 3.0, retry_after_s=2.0)  # refused again within REPEAT_S: one device more than counted
    assert b.rate(nxt + 10 * S) == pytest.approx(share_rules.TARGET_LOAD * limits.REQUESTS_PER_MINUTE / 11)
    probe = [b.rate(nxt + int((k + 0.5) * share_rules.PROBE_STEP_S * S)) for k in range(3)]
    assert probe == pytest.approx([pace * 10 / 11, pace, pace]), "then one fewer per probe step, to the share"


def test_slots_keep_their_phase_however_late_a_request_goes(store):
    """Phases spread by the 429s must stay spread: a request sent late does not move the next slot."""
    b = RequestBudget(store, key_fingerprint("k"), share=10, rng=random.Random(2))
    spacing = int(61 / (share_rules.TARGET_LOAD * 3) * S)
    t = first_grant(b, 10**12)
    late = first_grant(b, t + spacing + 7 * S)  # asked 7 s after its slot: it goes at once
    assert late == t + spacing + 7 * S
    on_time = first_grant(b, late + S)
    assert on_time == pytest.approx(t + 2 * spacing, abs=S // 10), "and the next keeps the phase it had"


def test_what_is_learned_survives_a_restart_and_decays_back_to_the_share(tmp_path):
    path = tmp_path / "outbox.sqlite"
    s1 = Outbox(path)
    b = RequestBudget(s1, key_fingerprint("k"), rng=random.Random(10))
    t = take_all(b, 10**12, 3)[-1]
    rate = b.refused(t, 58.5, retry_after_s=58.0)  # 30 devices counted
    s1.close()
    s2 = Outbox(path)
    again = RequestBudget(s2, key_fingerprint("k"))
    assert again.rate(t + 60 * S) == pytest.approx(rate), "kept across a restart"
    hours = [again.rate(t + h * 3600 * S) for h in (1, 2, 5)]
    assert rate < hours[0] < hours[1] < hours[2] == limits.REQUESTS_PER_MINUTE, "decays back within hours"
    s2.close()


def test_a_storm_without_retry_after_still_keeps_a_floor(store):
    b = RequestBudget(store, key_fingerprint("k"), rng=random.Random(11))
    t = 10**12
    rates = []
    for _ in range(60):
        rates.append(b.refused(t, 1.0))
        t += S
    assert rates == sorted(rates, reverse=True) and rates[1] < rates[0], "never taken for a burst"
    assert b.rate(t) == pytest.approx(share_rules.MIN_RATE), "one request every five minutes at the least"


def test_devices_sharing_a_key_each_keep_to_their_share(store):
    b = RequestBudget(store, key_fingerprint("fleet"), share=10, rng=random.Random(9))
    granted = take_all(b, 10**12, 60)
    assert len(granted) <= 3


# --- plan allowance ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", sorted(limits.PLAN_MINUTES))
def test_allowance_waits_for_the_rolling_24h_window(store, plan):
    a = PlanAllowance(store, "key:x", plan)
    cap_ms = limits.PLAN_MINUTES[plan] * 60_000
    t0 = 10**15
    n = cap_ms // 120_000
    for i in range(n):
        assert a.wait_s(120_000, t0 + i * 10**9) == 0
        a.record(120_000, t0 + i * 10**9)
    assert a.used_ms(t0 + n * 10**9) == cap_ms
    wait = a.wait_s(60_000, t0 + n * 10**9)
    assert wait == pytest.approx(limits.ALLOWANCE_WINDOW_S - n, abs=1), "the first upload ages out in 24 h"
    assert a.wait_s(1, t0 + limits.ALLOWANCE_WINDOW_S * 10**9 + 1) == 0


def test_allowance_is_per_community(store):
    a = PlanAllowance(store, "key:a", "free")
    b = PlanAllowance(store, "key:b", "free")
    for i in range(5):
        a.record(120_000, 10**15 + i)
    assert a.wait_s(1000, 10**15 + 10) > 0 and b.wait_s(1000, 10**15 + 10) == 0
