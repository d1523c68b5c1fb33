"""The Sonoran unit operations against the contract server (tests/sonoran_server.py, written from
sonoran-v2-openapi.md) on 127.0.0.1: the requests as the document has them, the server refusing
what it does not allow, every answer classified as an upload's, and call notes through the real
outbox and uploader: once per clip across a restart, none without a current call."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from edged.capture.position import Fix
from edged.config import schema as config
from edged.core.states import Alarm, CallNoteState
from edged.upload.answers import Kind
from edged.upload.budget import RequestBudget
from edged.upload.outbox import PRIORITY_MARK, Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.sonoran_unit import SonoranUnit, read_notes
from edged.upload.sonoran_unit.api import UnitApi, positive_call_id
from edged.upload.sonoran_unit.panic import PanicWorker
from edged.upload.sonoran_unit.store import NOTE_SETTLED, UnitStore
from edged.upload.targets import build_targets
from edged.upload.uploader import Uploader
from tests.contract.sonoran_server import SonoranServer
from tests.support import wait_until
from tests.support.upload import ACCOUNT, make_webm

UNIT = "player-1234"
KEY = "test-key-0123456789"


@pytest.fixture
def server():
    with SonoranServer(keys={KEY: "pro"}, accounts={ACCOUNT}, units={UNIT}, calls={ACCOUNT: 501}) as srv:
        yield srv


def unit_settings(tmp_path: Path, server: SonoranServer, key: str = KEY, **unit) -> config.Settings:
    key_file = tmp_path / "api.key"
    key_file.write_text(key + "\n")
    return config.from_mapping(
        {
            "device": {"unit_number": "1A-12"},
            "storage": {"dir": str(tmp_path / "state")},
            "upload": {
                "targets": ["sonoran_v2"],
                "retry_base_seconds": 0.1,
                "retry_cap_seconds": 1.0,
                "sonoran_v2": {
                    "base_url": server.url,
                    "api_key_file": str(key_file),
                    "account_uuid": ACCOUNT,
                    "unit": {"community_user_id": UNIT, "panic": True, "call_notes": True} | unit,
                },
            },
        },
        origin="<test>",
    )


# --- the requests, as the document has them ------------------------------------------------------------


def test_panic_location_current_call_and_note_are_sent_as_the_document_has_them(tmp_path, server):
    api = UnitApi(unit_settings(tmp_path, server))
    try:
        v = api.set_panic(True)
        assert v.kind is Kind.DELIVERED and v.document == {"updated": 1, "isPanic": True}
        r = server.unit_requests[-1]
        assert (r.endpoint, r.params, r.key) == ("panic", {"serverId": "1"}, KEY)
        assert r.body == {"communityUserIds": UNIT, "isPanic": True}
        assert server.units[UNIT] is True
        assert api.set_panic(False).kind is Kind.DELIVERED and server.units[UNIT] is False

        fix = Fix(51.50070, -0.12460, 3, time.time(), alt_m=21.5, speed_mps=3.0, track_deg=90.0, eph_m=5.0)
        assert api.update_location(fix).kind is Kind.DELIVERED
        assert server.locations[-1] == {
            "updates": [
                {
                    "communityUserId": UNIT,
                    "location": "51.50070, -0.12460 ±5 m",
                    "coordinates": {"x": -0.1246, "y": 51.5007, "z": 21.5, "w": 90.0},
                }
            ]
        }
        v = api.current_call()
        assert v.kind is Kind.DELIVERED and positive_call_id(v.document) == 501
        assert server.unit_requests[-1].params == {"accountUuid": ACCOUNT}
        assert api.add_note(501, "clip at https://x.example/a.webm").kind is Kind.DELIVERED
        assert server.notes[-1] == (
            501,
            {"note": "clip at https://x.example/a.webm", "noteType": "text", "label": "Bodycam"},
        )
    finally:
        api.close()


@pytest.mark.parametrize("no_call", ["null", "404"])
def test_no_current_call_is_told_apart_from_a_call(tmp_path, no_call):
    with SonoranServer(keys={KEY: "free"}, calls={ACCOUNT: None}, no_call=no_call) as srv:
        api = UnitApi(unit_settings(tmp_path, srv))
        v = api.current_call()
        api.close()
    if no_call == "null":
        assert v.kind is Kind.DELIVERED and positive_call_id(v.document) is None
    else:
        assert v.kind is Kind.FAILED and v.status == 404 and "no current call" in v.reason


def test_the_server_refuses_what_the_document_does_not_allow(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    base = server.url + "/v2/emergency"
    with httpx.Client() as c:
        assert (
            c.patch(f"{base}/servers/1/units/panic", json={"communityUserIds": UNIT, "isPanic": True}).status_code
            == 401
        )
        cases = [
            ("PATCH", "/servers/x/units/panic", {"communityUserIds": UNIT, "isPanic": True}, 400),
            ("PATCH", "/servers/7/units/panic", {"communityUserIds": UNIT, "isPanic": True}, 404),
            ("PATCH", "/servers/1/units/panic", {"communityUserIds": UNIT, "isPanic": "yes"}, 400),
            ("PATCH", "/servers/1/units/panic", {"isPanic": True}, 400),
            ("PATCH", "/servers/1/units/panic", [1, 2], 400),
            ("PATCH", "/servers/1/unit-locations", {"updates": []}, 400),
            (
                "PATCH",
                "/servers/1/unit-locations",
                {"updates": [{"communityUserId": UNIT, "coordinates": {"x": "1"}}]},
                400,
            ),
            ("POST", "/servers/1/dispatch-calls/501/notes", {"note": ""}, 400),
            ("POST", "/servers/1/dispatch-calls/999/notes", {"note": "n"}, 404),
            ("GET", "/accounts/someone-else/current-call", None, 400),
            ("POST", "/servers/1/units/panic", {"communityUserIds": UNIT, "isPanic": True}, 405),
        ]
        for method, path, body, status in cases:
            r = c.request(method, base + path, json=body, headers=auth)
            assert r.status_code == status, (method, path, body, r.text)
            if status != 405:
                assert r.headers["content-type"] == "application/problem+json" and r.json()["status"] == status
        r = c.patch(f"{base}/servers/1/units/panic", content=b"isPanic=true", headers=auth)
        assert r.status_code == 400 and "application/json" in r.json()["detail"]
    assert not server.panics and not server.notes, "nothing refused was kept"


def test_unit_requests_count_in_the_keys_window_with_the_uploads(server):
    for _ in range(30):
        httpx.get(
            f"{server.url}/v2/emergency/accounts/{ACCOUNT}/current-call", headers={"Authorization": f"Bearer {KEY}"}
        )
    r = httpx.patch(
        f"{server.url}/v2/emergency/servers/1/units/panic",
        json={"communityUserIds": UNIT, "isPanic": True},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


# --- every answer classified as an upload's ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind"),
    [
        (503, "upstream down", {}, Kind.RETRY),
        (
            429,
            '{"detail": "slow down"}',
            {"Retry-After": "7", "Content-Type": "application/problem+json"},
            Kind.RATE_LIMITED,
        ),
        (403, '{"detail": "API key not allowed"}', {"Content-Type": "application/problem+json"}, Kind.PAUSE),
        (400, '{"detail": "Unit is not signed on."}', {"Content-Type": "application/problem+json"}, Kind.FAILED),
        (200, "<html><body>Welcome to the hotel wifi</body></html>", {"Content-Type": "text/html"}, Kind.RETRY),
        (200, "[1, 2]", {"Content-Type": "application/json"}, Kind.RETRY),
    ],
)
def test_every_unit_answer_is_classified_by_the_uploads_rules(tmp_path, server, status, body, headers, kind):
    api = UnitApi(unit_settings(tmp_path, server))
    try:
        server.fail_next(1, status, body + f" echo {KEY}", headers, endpoint="panic")
        v = api.set_panic(True)
    finally:
        api.close()
    assert v.kind is kind, v
    assert KEY not in v.reason and KEY not in v.response, "a key the server echoes is never kept"
    if kind is Kind.RATE_LIMITED:
        assert v.retry_after_s == 7
    if status == 200:
        assert v.alarm is Alarm.UPLOAD_CAPTIVE_PORTAL


def test_a_refused_key_and_a_server_that_is_gone(tmp_path, server):
    api = UnitApi(unit_settings(tmp_path, server, key="not-the-key-0000"))
    assert api.set_panic(True).kind is Kind.PAUSE
    api.close()
    api = UnitApi(unit_settings(tmp_path, server))
    server.down()
    v = api.set_panic(True)
    api.close()
    assert v.kind is Kind.RETRY and v.offline


# --- the panic worker: until acknowledged -------------------------------------------------------------------


def panic_worker(tmp_path, server, alarms: dict) -> tuple[PanicWorker, UnitStore, Outbox, threading.Event]:
    s = unit_settings(tmp_path, server)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    store = UnitStore(outbox)
    api = UnitApi(s)
    stopping = threading.Event()
    budget = RequestBudget(outbox, api.budget_key, reserve=api.reserve)
    policy = RetryPolicy.from_settings(s.upload, random.Random(1))
    w = PanicWorker(api, store, budget, policy, stopping, alarms.__setitem__)
    return w, store, outbox, stopping


def test_a_panic_is_retried_until_the_server_acknowledges_it_even_when_no_unit_was_updated(tmp_path, server):
    alarms: dict = {}
    w, store, outbox, stopping = panic_worker(tmp_path, server, alarms)
    server.fail_next(2, 502, "bad gateway", endpoint="panic")
    server.units.pop(UNIT)  # not signed on yet: the server answers updated 0
    store.want_panic(True, time.time_ns())
    w.start()
    try:
        wait_until(lambda: len(server.panics) >= 2, 20, "the panic sent again after updated: 0")
        assert not store.panic().acked
        server.units[UNIT] = False  # the unit signs on
        wait_until(lambda: store.panic().acked, 20, "acknowledged")
        assert server.units[UNIT] is True
        assert [r.status for r in server.unit_requests[:2]] == [502, 502]
        assert alarms.get(Alarm.PANIC_NOT_SENT) is False
    finally:
        stopping.set()
        w.api.cancel("stop")
        w.poke()
        w.join(10)
        outbox.close()


def test_a_panic_refused_for_good_is_given_up_with_its_reason_and_an_alarm(tmp_path, server):
    alarms: dict = {}
    w, store, outbox, stopping = panic_worker(tmp_path, server, alarms)
    body = json.dumps({"title": "Unable to set unit panic", "status": 400, "detail": "Unknown community user."})
    server.fail_next(1, 400, body, {"Content-Type": "application/problem+json"}, endpoint="panic")
    store.want_panic(True, time.time_ns())
    w.start()
    try:
        wait_until(lambda: store.panic().given_up, 20, "given up")
        assert "Unknown community user" in store.panic().reason
        assert alarms[Alarm.PANIC_NOT_SENT] is True
        store.want_panic(False, time.time_ns())  # the next gesture tries again
        w.gesture()
        wait_until(lambda: store.panic().acked_generation == store.panic().generation, 20, "the next one sent")
        assert alarms[Alarm.PANIC_NOT_SENT] is False and server.panics[-1]["isPanic"] is False
    finally:
        stopping.set()
        w.poke()
        w.join(10)
        outbox.close()


# --- call notes through the real outbox and uploader ------------------------------------------------------


class Rig:
    """Outbox, uploader (sonoran_v2) and the unit (call notes), wired as the daemon wires them."""

    def __init__(self, tmp_path: Path, s: config.Settings) -> None:
        self.tmp = tmp_path
        self.outbox = Outbox(tmp_path / "outbox.sqlite", targets=s.upload.targets)
        self.unit = SonoranUnit(s, self.outbox, policy=RetryPolicy.from_settings(s.upload, random.Random(2)))
        self.uploader = Uploader(
            self.outbox,
            build_targets(s),
            RetryPolicy.from_settings(s.upload, random.Random(3)),
            on_part_delivered=self.unit.on_part_delivered,
        )

    def add(self, clip_id: str, parts: int = 1, wall_ns: int | None = None) -> None:
        folder = self.tmp / "clips" / clip_id
        folder.mkdir(parents=True, exist_ok=True)
        files = [make_webm(folder / f"{clip_id}-part{n:02d}.webm") for n in range(1, parts + 1)]
        rows = [
            (n, f, f.stat().st_size, 1000, hashlib.sha256(f.read_bytes()).hexdigest()) for n, f in enumerate(files, 1)
        ]
        self.outbox.enqueue(clip_id, rows, PRIORITY_MARK, wall_ns or time.time_ns())

    def note(self, clip_id: str):
        notes = read_notes(self.outbox, clip_id)
        return notes[0] if notes else None

    def __enter__(self) -> Rig:
        self.unit.start()
        self.uploader.start()
        return self

    def __exit__(self, *exc) -> None:
        self.uploader.stop()
        self.unit.stop()
        self.outbox.close()


def test_a_delivered_clip_is_noted_once_with_its_urls_and_never_again_after_a_restart(tmp_path, server):
    s = unit_settings(tmp_path, server, panic=False)
    with Rig(tmp_path, s) as rig:
        rig.add("20260101T000000Z-aaaaaa", parts=2)
        wait_until(lambda: (n := rig.note("20260101T000000Z-aaaaaa")) and n.state == CallNoteState.NOTED, 30, "noted")
        note = rig.note("20260101T000000Z-aaaaaa")
        assert note.call_id == 501 and note.attempts == 2  # the current call, then the note
    assert len(server.notes) == 1
    call, body = server.notes[0]
    urls = [f"{server.url}/files/{u.sha256}.webm" for u in server.uploads]
    assert call == 501 and body["label"] == "Bodycam" and "unit 1A-12" in body["note"]
    assert f"part 1: {urls[0]}" in body["note"] and f"part 2: {urls[1]}" in body["note"]
    with Rig(tmp_path, s) as rig:  # restarted: nothing is noted twice
        rig.add("20260101T000100Z-bbbbbb")
        wait_until(lambda: (n := rig.note("20260101T000100Z-bbbbbb")) and n.state == CallNoteState.NOTED, 30, "second")
    assert len(server.notes) == 2 and "20260101T000100Z-bbbbbb" in server.notes[1][1]["note"]


def deliver_without_notes(tmp_path: Path, s: config.Settings, clip: str) -> None:
    """The clip delivered to sonoran_v2 by an uploader with no unit beside it: a daemon killed
    between the delivery and the note. Notes were on when the clip was queued."""
    outbox = Outbox(tmp_path / "outbox.sqlite", targets=s.upload.targets)
    UnitStore(outbox).notes_since_ns(0)
    uploader = Uploader(outbox, build_targets(s), RetryPolicy.from_settings(s.upload))
    folder = tmp_path / "clips" / clip
    folder.mkdir(parents=True)
    f = make_webm(folder / "p1.webm")
    outbox.enqueue(
        clip, [(1, f, f.stat().st_size, 1000, hashlib.sha256(f.read_bytes()).hexdigest())], 10, time.time_ns()
    )
    uploader.start()
    wait_until(lambda: outbox.clip_delivered(clip), 30, "delivered")
    uploader.stop()
    assert read_notes(outbox) == []
    with outbox.tx() as db:  # as if the key's minute had passed: the test's requests start afresh
        db.execute("DELETE FROM rate_requests")
        db.execute("DELETE FROM rate_state")
    outbox.close()


def test_a_clip_delivered_before_a_kill_is_noted_at_the_next_start(tmp_path, server):
    s = unit_settings(tmp_path, server, panic=False)
    clip = "20260101T000000Z-cccccc"
    deliver_without_notes(tmp_path, s, clip)
    assert server.notes == []
    with Rig(tmp_path, s) as rig:
        wait_until(lambda: (n := rig.note(clip)) and n.state == CallNoteState.NOTED, 30, "noted after the restart")
    assert len(server.notes) == 1


@pytest.mark.parametrize("no_call", ["null", "404"])
def test_no_current_call_sends_no_note_and_says_so(tmp_path, no_call):
    with SonoranServer(keys={KEY: "pro"}, calls={ACCOUNT: None}, no_call=no_call) as srv:
        with Rig(tmp_path, unit_settings(tmp_path, srv, panic=False)) as rig:
            rig.add("20260101T000000Z-dddddd")
            wait_until(
                lambda: (n := rig.note("20260101T000000Z-dddddd")) and n.state == CallNoteState.NO_CALL, 30, "no call"
            )
            assert "no current call" in rig.note("20260101T000000Z-dddddd").reason
            assert rig.unit.status()["call_notes"] == {"no_call": 1}
        assert srv.notes == [] and [r.endpoint for r in srv.unit_requests] == ["current_call"]


def test_note_errors_retry_on_5xx_and_429_and_give_up_on_4xx_keeping_the_reason(tmp_path, server):
    s = unit_settings(tmp_path, server, panic=False)
    clip = "20260101T000000Z-eeeeee"
    deliver_without_notes(tmp_path, s, clip)
    # A 429 first (nothing got through yet: the key's rate is halved, to 15 a minute), then 5xx.
    server.fail_next(
        1, 429, '{"detail": "slow"}', {"Retry-After": "1", "Content-Type": "application/problem+json"}, "current_call"
    )
    server.fail_next(2, 503, "down for maintenance", endpoint="current_call")
    problem = json.dumps({"title": "Unable to add call note", "status": 400, "detail": "Call 501 is closed."})
    server.fail_next(1, 400, problem, {"Content-Type": "application/problem+json"}, endpoint="note")
    with Rig(tmp_path, s) as rig:
        wait_until(lambda: (n := rig.note(clip)) and n.state in NOTE_SETTLED, 60, "the note settled")
        note = rig.note(clip)
    assert note.state == CallNoteState.FAILED and "Call 501 is closed." in note.reason, note
    assert note.call_id == 501 and note.attempts == 5  # 429, 2 x 503, the call, the note
    codes = [(r.endpoint, r.status) for r in server.unit_requests]
    assert codes == [
        ("current_call", 429),
        ("current_call", 503),
        ("current_call", 503),
        ("current_call", 200),
        ("note", 400),
    ]
    assert server.notes == []


def test_a_clip_older_than_the_link_window_is_not_linked(tmp_path, server):
    s = unit_settings(tmp_path, server, panic=False, call_note_max_age_minutes=30)
    with Rig(tmp_path, s) as rig:
        rig.add("20260101T000000Z-999999", wall_ns=time.time_ns() - 2 * 3600 * 10**9)
        wait_until(
            lambda: (n := rig.note("20260101T000000Z-999999")) and n.state == CallNoteState.TOO_OLD, 30, "too old"
        )
    assert server.unit_requests == []
