"""GPS through the real daemon: a real gpsd fed by gpsfake (tests/data/gps_walk.nmea) gives the
position at a mark, a track in the clip's manifest, ``unitLocation`` on the Sonoran v2 upload (the
contract server on 127.0.0.1) and a fix in ``edged status``; with gpsd absent or a hostile peer
in its place, the daemon records on, says "no fix" and never blocks or crashes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

from edged.app.daemon import Daemon
from edged.core.states import EventState
from edged.events.store import EventStore
from tests.conftest import make_settings
from tests.contract.sonoran_server import SonoranServer
from tests.support import Running, wait_until
from tests.support.gpsd_peers import (
    WALK,
    WALK_LAT,
    WALK_LON,
    Gpsfake,
    bad_values,
    deep_json,
    free_port,
    hostile,
    over_long_line,
    stall,
)

SMALL = {"width": 320, "height": 180, "bitrate": 120_000}
ACCOUNT = "4b1c6f2e-8f9a-4a57-9a43-2d9a3c1b0e11"
NO_FIX_WORDS = ("no-fix", "no-gpsd")


def in_walk(doc: dict) -> bool:
    return WALK_LAT[0] <= doc["lat"] <= WALK_LAT[1] and WALK_LON[0] <= doc["lon"] <= WALK_LON[1]


def built(d: Daemon, event_id: str) -> bool:
    e = EventStore(d.paths.events).get(event_id)
    return e is not None and e.state != EventState.OPEN


def manifest_of(d: Daemon, event_id: str) -> dict:
    e = EventStore(d.paths.events).get(event_id)
    assert e is not None and e.state == EventState.BUILT, e
    return json.loads((d.paths.clips / event_id / "manifest.json").read_text())


def run_daemon(settings) -> Running:
    r = Running(Daemon(settings))
    if not r.daemon.wait_ready(30):
        r.stop()
        raise AssertionError(f"daemon not ready: {r.error!r}")
    return r


def gps_of(d: Daemon) -> dict:
    return d.status().gps or {}


def test_a_mark_has_the_position_its_clip_a_track_and_the_upload_a_unit_location(tmp_path: Path):
    key = tmp_path / "api.key"
    key.write_text("test-key\n")
    with Gpsfake(WALK, cycle=0.1) as gpsd, SonoranServer() as server:
        s = make_settings(
            tmp_path / "state",
            camera={**SMALL, "paced": True},  # a real-time timeline: the track is placed as in the field
            storage={"segment_seconds": 2.0},
            clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 3.0},
            gps={"enabled": True, "port": gpsd.port},
            device={"unit_number": "1A-12", "unit_location": "Senora Fwy / Route 68"},
            upload={
                "targets": ["sonoran_v2"],
                "retry_base_seconds": 0.2,
                "retry_cap_seconds": 2.0,
                "sonoran_v2": {"base_url": server.url, "api_key_file": str(key), "account_uuid": ACCOUNT},
            },
        )
        r = run_daemon(s)
        d = r.daemon
        try:
            wait_until(lambda: gps_of(d).get("fix") == "3d", 30, "a 3D fix from gpsd in the status")
            assert d.position is not None and d.position.fix_status() == "3d"
            assert d.recorder.stamp.position is d.position, "the stamp on the picture reads the same fixes"
            wait_until(lambda: d.recorder.status.frames_encoded >= 40, 30, "4 s recorded (the pre-roll)")
            event_id = d.mark("cli", "with a position").event_id
            wait_until(lambda: built(d, event_id), 60, "the clip built")
            wait_until(lambda: len(server.uploads) >= 1, 60, "the clip uploaded to Sonoran v2")
            # edged status (the CLI, from status.json) says where the device is.
            cfg = tmp_path / "edged.toml"
            cfg.write_text(f'[storage]\ndir = "{s.state_dir}"\n')
            wait_until(lambda: (json.loads(d.paths.status.read_text()).get("gps") or {}).get("fix") == "3d", 10, "")
            out = subprocess.run(
                [sys.executable, "-m", "edged", "status", "--config", str(cfg)], capture_output=True, text=True
            )
            line = next(x for x in out.stdout.splitlines() if x.startswith("gps "))
            assert " 3d 51.503" in line and "s old, gpsd at 127.0.0.1:" in line, out.stdout
            assert "gps 3d" in d.status().summary()
        finally:
            r.stop()
        assert r.rc == 0 and r.error is None
    m = manifest_of(d, event_id)
    mark = m["marks"][0]["position"]
    assert mark["fix"] == "3d" and in_walk(mark), mark
    assert mark["time"].startswith("2024-03-15T12:0") and mark["alt_m"] == 21.5  # the receiver's own time
    assert m["wall_start"] <= mark["received"] <= m["wall_end"]
    track = m["track"]
    assert len(track) >= 3, track  # ≥ 5 s of clip, one fix a second
    assert all(p["fix"] == "3d" and in_walk(p) for p in track)
    assert all(m["wall_start"] <= p["received"] <= m["wall_end"] for p in track), (m["wall_start"], m["wall_end"])
    # At most one a second (the received times are ISO strings with milliseconds).
    from edged.core.timefmt import parse_iso_ns

    received = [parse_iso_ns(p["received"]) for p in track]
    assert all(b - a >= 999_000_000 for a, b in zip(received, received[1:])), received
    # unitLocation: the mark's position, as "lat,lon" (it wins over device.unit_location's text).
    fields = server.uploads[0].fields
    assert fields["unitLocation"] == f"{mark['lat']:.6f},{mark['lon']:.6f}", fields
    assert fields["unitNumber"] == "1A-12"


def test_gpsd_absent_the_daemon_records_and_says_no_gpsd(tmp_path: Path):
    port = free_port()
    s = make_settings(
        tmp_path / "state",
        camera=SMALL,
        storage={"segment_seconds": 2.0},
        clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 2.0},
        gps={"enabled": True, "port": port},
    )
    r = run_daemon(s)
    d = r.daemon
    try:
        wait_until(lambda: "cannot connect" in (gps_of(d).get("problem") or ""), 20, "the failed connect in the status")
        assert gps_of(d)["fix"] == "no-gpsd" and d.position.latest() is None
        wait_until(lambda: d.recorder.status.frames_encoded >= 30, 30, "3 s recorded")
        event_id = d.mark("cli").event_id
        wait_until(lambda: built(d, event_id), 60, "the clip built")
    finally:
        r.stop()
    assert r.rc == 0 and r.error is None
    m = manifest_of(d, event_id)
    assert m["marks"][0]["position"] == {"fix": "no-gpsd"}
    assert m["track"] == []


def test_a_hostile_peer_never_blocks_the_daemon_and_gives_no_fix(tmp_path: Path):
    # One bad behaviour per connection, in turn: the daemon's reader meets them all.
    behaviours = [over_long_line, deep_json, bad_values, stall]
    turn = iter(range(1_000_000))
    lock = threading.Lock()

    def speak(conn: socket.socket, halt: threading.Event) -> None:
        with lock:
            n = next(turn)
        behaviour = behaviours[n % len(behaviours)]
        if behaviour is stall or behaviour is deep_json or behaviour is bad_values:
            # Hold each one a while, then hang up, so the next connection meets the next one.
            ended = threading.Event()
            t = threading.Thread(target=behaviour, args=(conn, ended), daemon=True)
            t.start()
            halt.wait(0.7)
            ended.set()
            conn.close()
        else:
            behaviour(conn, halt)

    with hostile(speak) as peer:
        s = make_settings(
            tmp_path / "state",
            camera=SMALL,
            storage={"segment_seconds": 2.0},
            clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 2.0},
            gps={"enabled": True, "port": peer.port},
        )
        r = run_daemon(s)
        d = r.daemon
        try:
            wait_until(lambda: peer.connections >= 5 and gps_of(d).get("refused", 0) >= 10, 60, "every behaviour met")
            frames = d.recorder.status.frames_encoded
            wait_until(lambda: d.recorder.status.frames_encoded >= frames + 30, 30, "recording goes on")
            assert gps_of(d)["fix"] in NO_FIX_WORDS and d.position.latest() is None
            event_id = d.mark("cli").event_id
            wait_until(lambda: built(d, event_id), 60, "the clip built")
        finally:
            r.stop()
        assert r.rc == 0 and r.error is None and not r.thread.is_alive()
    m = manifest_of(d, event_id)
    assert m["marks"][0]["position"]["fix"] in NO_FIX_WORDS and "lat" not in m["marks"][0]["position"]
    assert m["track"] == []
