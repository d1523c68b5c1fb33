"""The position source on its own: a real gpsd fed by gpsfake from the NMEA logs in tests/data,
gpsd absent, gpsd going away and coming back, and hostile peers where gpsd should be; plus the
doctor's GPS check, which connects the way the daemon does. Every wait is for a state."""

from __future__ import annotations

import math
import time

import pytest

from edged.capture.gps import (
    MAX_JSON_DEPTH,
    MAX_LINE_BYTES,
    GpsdPosition,
    LineReader,
    SessionRefused,
    fix_of,
    json_too_deep,
    parse_report,
)
from edged.config import schema as config
from edged.core.states import GpsFix
from edged.doctor import OK, WARN, Host
from edged.doctor.devices import check_gps
from tests.support.gpsd_peers import (
    NOFIX,
    WALK,
    WALK_LAT,
    WALK_LON,
    Gpsfake,
    bad_values,
    deep_json,
    flood,
    free_port,
    hostile,
    one_fix_then_silence,
    over_long_line,
    stall,
    tpv,
)

FIXED = (GpsFix.FIX_2D, GpsFix.FIX_3D)
#: 2024-03-15 12:00:30Z .. 12:01:29Z: the walk log's own times.
WALK_TIMES = (1710504030.0, 1710504089.0)


def in_walk(lat: float, lon: float) -> bool:
    return WALK_LAT[0] <= lat <= WALK_LAT[1] and WALK_LON[0] <= lon <= WALK_LON[1]


def source(port: int, **kw) -> GpsdPosition:
    kw.setdefault("stale_s", 5.0)
    kw.setdefault("window_s", 120.0)
    src = GpsdPosition("127.0.0.1", port, **kw)
    src.start()
    return src


# --- the protocol's pieces -------------------------------------------------------------------------


def test_a_tpv_from_gpsd_becomes_a_fix_and_no_fix_is_none():
    line = (
        b'{"class":"TPV","device":"/dev/pts/2","mode":3,"time":"2024-03-15T12:00:31.000Z","ept":0.005,'
        b'"lat":51.503311667,"lon":-0.126693333,"altHAE":67.4,"altMSL":21.5,"alt":21.5,"track":17.0,'
        b'"speed":1.389,"eph":17.1}'
    )
    fix = fix_of(parse_report(line))
    assert fix is not None and fix.mode == 3 and fix.lat == 51.503311667 and fix.lon == -0.126693333
    assert fix.wall_s == 1710504031.0 and fix.alt_m == 21.5 and fix.speed_mps == 1.389 and fix.eph_m == 17.1
    assert fix_of({"class": "TPV", "mode": 1}) is None
    assert fix_of({"class": "TPV", "mode": 0}) is None
    # A 2D fix has no altitude, whatever the report says; a fix without a time yet is not kept.
    assert fix_of({"mode": 2, "lat": 1.0, "lon": 2.0, "time": "2024-03-15T12:00:31Z", "alt": 5}).alt_m is None
    assert fix_of({"mode": 3, "lat": 1.0, "lon": 2.0}) is None
    # Implausible optional values are dropped, the position kept.
    odd = fix_of({"mode": 3, "lat": 1.0, "lon": 2.0, "time": "2024-03-15T12:00:31Z", "speed": -4, "track": 400})
    assert odd is not None and odd.speed_mps is None and odd.track_deg is None


@pytest.mark.parametrize(
    "doc, words",
    [
        ({"mode": True, "lat": 1.0, "lon": 2.0}, "mode"),
        ({"mode": "3", "lat": 1.0, "lon": 2.0}, "mode"),
        ({"mode": 4, "lat": 1.0, "lon": 2.0}, "mode"),
        ({"mode": 3, "lat": math.nan, "lon": 2.0, "time": "2024-03-15T12:00:31Z"}, "position"),
        ({"mode": 3, "lat": math.inf, "lon": 2.0, "time": "2024-03-15T12:00:31Z"}, "position"),
        ({"mode": 3, "lat": 90.01, "lon": 2.0, "time": "2024-03-15T12:00:31Z"}, "position"),
        ({"mode": 3, "lat": 1.0, "lon": -180.01, "time": "2024-03-15T12:00:31Z"}, "position"),
        ({"mode": 3, "lat": "1.0", "lon": 2.0, "time": "2024-03-15T12:00:31Z"}, "position"),
        ({"mode": 3, "lat": 1.0, "lon": 2.0, "time": "noon"}, "time"),
        ({"mode": 3, "lat": 1.0, "lon": 2.0, "time": "2024-03-15T12:00:31"}, "time"),  # no zone
        ({"mode": 3, "lat": 1.0, "lon": 2.0, "time": "1970-01-01T00:00:00Z"}, "time"),  # before GPS
        ({"mode": 3, "lat": 1.0, "lon": 2.0, "time": "2024-03-15T12:00:31Z" + "0" * 50}, "time"),
    ],
)
def test_a_fix_without_a_usable_position_is_refused(doc, words):
    with pytest.raises(ValueError, match=words):
        fix_of(doc)


def test_lines_are_bounded_and_json_depth_is_checked_before_parsing():
    reader = LineReader(16)
    assert reader.feed(b'{"a":1}\r\n{"b"') == [b'{"a":1}']
    assert reader.feed(b":2}\n") == [b'{"b":2}']
    with pytest.raises(SessionRefused):
        reader.feed(b"x" * 17)  # no newline yet, already too long
    with pytest.raises(SessionRefused):
        LineReader(16).feed(b"y" * 40 + b"\n")
    assert LineReader().feed(b"z" * MAX_LINE_BYTES + b"\n") == [b"z" * MAX_LINE_BYTES]
    assert json_too_deep("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    assert not json_too_deep('{"a":"[[[[[[[[[[[[[[[[\\"[[[[[[[[[","b":[[1]]}')
    with pytest.raises(ValueError, match="deeper"):
        parse_report(b"[" * 100_000)  # refused before json.loads could recurse
    for bad, words in ((b"\xff", "UTF-8"), (b"{", "not JSON"), (b"[1]", "not an object"), (b"1" * 5000, "not JSON")):
        with pytest.raises(ValueError, match=words):
            parse_report(bad)


# --- a real gpsd ---------------------------------------------------------------------------------


def test_a_fix_read_through_gpsd_and_a_track_of_one_fix_a_second():
    with Gpsfake(WALK, cycle=0.1) as gpsd:
        src = source(gpsd.port)
        try:
            st = src.wait_for(lambda s: s.fix == GpsFix.FIX_3D, 30)
            assert st.fix == GpsFix.FIX_3D and st.connected and st.release == "3.22", st
            fix = src.latest()
            assert fix is not None and fix.mode == 3 and in_walk(fix.lat, fix.lon), fix
            assert WALK_TIMES[0] <= fix.wall_s <= WALK_TIMES[1]  # the receiver's time, not ours
            assert fix.alt_m == 21.5 and fix.speed_mps == pytest.approx(1.389, abs=0.01)
            assert fix.received_wall_s is not None and abs(fix.received_wall_s - time.time()) < 5
            assert src.fix_status() == "3d"
            # gpsd reports 5 fixes a second here; the track keeps one a second.
            t0 = time.time()
            src.wait_for(lambda s: s.reports >= 25, 30)
            track = src.track(t0 - 60, time.time() + 1)
            assert len(track) >= 3, track
            received = [f.received_wall_s for f in track]
            assert all(b - a >= 0.999 for a, b in zip(received, received[1:])), received
            assert all(in_walk(f.lat, f.lon) for f in track)
            assert src.track(t0 - 3600, t0 - 600) == []
            assert src.status().refused == 0
        finally:
            src.stop()


def test_a_receiver_without_a_fix_is_said_so():
    with Gpsfake(NOFIX, cycle=0.1) as gpsd:
        src = source(gpsd.port)
        try:
            st = src.wait_for(lambda s: s.reports >= 10, 30)
            assert st.reports >= 10 and st.connected and st.fix == GpsFix.NO_FIX, st
            assert src.latest() is None and src.fix_status() == "no-fix"
            assert src.track(0, time.time() + 1) == [] and st.refused == 0
        finally:
            src.stop()


def test_gpsd_absent_then_there_then_gone():
    port = free_port()
    src = source(port)
    try:
        st = src.wait_for(lambda s: s.problem is not None, 10)
        assert st.fix == GpsFix.NO_GPSD and not st.connected and "cannot connect" in st.problem, st
        assert src.latest() is None
        with Gpsfake(WALK, port=port):
            st = src.wait_for(lambda s: s.fix == GpsFix.FIX_3D, 60)  # found on a later try
            assert st.fix == GpsFix.FIX_3D and src.latest() is not None, st
        # gpsd went away: no fix at once, not the last one kept as current.
        st = src.wait_for(lambda s: s.fix == GpsFix.NO_GPSD, 10)
        assert st.fix == GpsFix.NO_GPSD and src.latest() is None, st
        assert src.track(0, time.time() + 1), "what was received stays in the track"
    finally:
        src.stop()


# --- hostile peers -------------------------------------------------------------------------------


def answers_at_once(src: GpsdPosition) -> None:
    """The caller is never held by the peer: every question is answered from memory (a second is
    far beyond a lock taken for a copy, and far below what the stalled peer would hold us)."""
    for _ in range(50):
        t = time.monotonic()
        assert src.latest() is None and src.fix_status() not in FIXED and src.track(0, 2e9) == []
        assert time.monotonic() - t < 1.0


@pytest.mark.parametrize("speak", [over_long_line, flood], ids=["over-long line", "flood"])
def test_a_peer_breaking_a_bound_is_refused_and_reconnected(speak):
    with hostile(speak) as peer:
        src = source(peer.port)
        try:
            st = src.wait_for(lambda s: s.refused >= 2 and s.sessions >= 2, 30)
            assert st.refused >= 2 and st.sessions >= 2 and peer.connections >= 2, st
            assert "refused" in st.problem
            if speak is over_long_line:
                answers_at_once(src)
            assert src._thread is not None and src._thread.is_alive()
        finally:
            src.stop()
        assert src._thread is None


@pytest.mark.parametrize("speak", [deep_json, bad_values], ids=["deep JSON", "NaN and out of range"])
def test_garbage_reports_are_refused_and_never_a_fix(speak):
    with hostile(speak) as peer:
        src = source(peer.port)
        try:
            st = src.wait_for(lambda s: s.refused >= 20, 30)
            assert st.refused >= 20 and st.connected and st.fix == GpsFix.NO_FIX, st
            answers_at_once(src)
            assert src._thread.is_alive()
        finally:
            src.stop()


def test_a_stalled_peer_is_no_fix_and_is_reconnected():
    with hostile(stall) as peer:
        src = source(peer.port, idle_reconnect_s=1.0)
        try:
            answers_at_once(src)
            st = src.wait_for(lambda s: s.sessions >= 2, 30)
            assert st.sessions >= 2 and "no complete line" in (st.problem or ""), st
            answers_at_once(src)
        finally:
            src.stop()


def test_a_fix_goes_stale_and_a_bad_report_ends_it():
    with hostile(one_fix_then_silence) as peer:
        src = source(peer.port, stale_s=1.0)
        try:
            st = src.wait_for(lambda s: s.reports >= 1, 10)
            # It was current when it came (unless this machine is slower than the bound) and is
            # never current after the bound: latest() says None, not the last fix.
            st = src.wait_for(lambda s: s.fix == GpsFix.NO_FIX, 10)
            assert st.fix == GpsFix.NO_FIX and st.connected and src.latest() is None, st
            assert len(src.track(0, time.time() + 1)) == 1, "a stale fix stays in the track"
        finally:
            src.stop()

    def fix_then_nan(conn, halt):
        conn.sendall(tpv())
        halt.wait(0.5)
        conn.sendall(tpv(lat="NaN"))
        halt.wait()

    with hostile(fix_then_nan) as peer:
        src = source(peer.port, stale_s=60.0)
        try:
            st = src.wait_for(lambda s: s.reports >= 2, 10)
            assert st.reports >= 2 and st.fix == GpsFix.NO_FIX and src.latest() is None, st
        finally:
            src.stop()


# --- edged doctor --------------------------------------------------------------------------------


def gps_settings(port: int, enabled: bool = True) -> config.GpsSettings:
    return config.from_mapping({"gps": {"enabled": enabled, "port": port}}).gps


def test_doctor_says_fix_no_fix_no_gpsd_and_off():
    host = Host(gps_wait=30.0)  # a cap: each case ends as soon as its answer is clear
    with Gpsfake(WALK) as gpsd:
        c = check_gps(gps_settings(gpsd.port), host)
        assert c.status == OK and c.summary.startswith("3d fix at 51.503"), c
        assert "gpsd 3.22" in c.summary
    with Gpsfake(NOFIX) as gpsd:
        c = check_gps(gps_settings(gpsd.port), host)
        assert c.status == WARN and "answers, but no fix" in c.summary and "gpsd 3.22" in c.summary, c
    port = free_port()
    c = check_gps(gps_settings(port), host)
    assert c.status == WARN and f"no gpsd at 127.0.0.1:{port}" in c.summary and "apt install gpsd" in c.fix, c
    c = check_gps(gps_settings(port, enabled=False), host)
    assert c.status == OK and "off" in c.summary
    with hostile(bad_values) as peer:
        c = check_gps(gps_settings(peer.port), host)
        assert c.status == WARN and "refused from gpsd" in c.summary, c


def test_the_track_is_a_bounded_window():
    def steady(conn, halt):
        conn.sendall(tpv())
        while not halt.wait(0.02):
            conn.sendall(tpv())

    ticks = iter(range(0, 10**15, 500_000_000))  # each fix half a second later on the timeline
    with hostile(steady) as peer:
        src = source(peer.port, window_s=10.0, timeline_ns=lambda: next(ticks))
        try:
            st = src.wait_for(lambda s: s.reports >= 100, 30)  # 50 s of timeline
            assert st.reports >= 100, st
            track = src.track(0, 4e9)
            # One a second (every other fix) over the last 10 s, nothing older.
            assert 9 <= len(track) <= 11, len(track)
            received = [f.received_wall_s for f in track]
            assert all(b - a == pytest.approx(1.0) for a, b in zip(received, received[1:])), received
        finally:
            src.stop()
