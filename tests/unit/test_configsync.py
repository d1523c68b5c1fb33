"""Remote config by file sync (issue 6): atomic renames and in-place writes, temporary files,
bad files, restart-needed keys, signatures, a failing apply, restart persistence, and the
keygen/sign commands end to end. Real files, the real watcher thread, poll 0.2 s."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.config import schema as config
from edged.config import sign as configsign
from edged.config.sync import ConfigSync, local_layer, version_of
from edged.core.files import Folder
from edged.core.syncfolder import SyncFolder
from tests.conftest import REPO
from tests.support import wait_until

POLL = 0.2
WAIT = 5.0  # a deadline, not a speed claim: "within seconds"

A = b"[camera]\nbitrate = 400000\n"
B = b"[clips]\npre_roll_seconds = 10.0\n"


class Harness:
    def __init__(self, tmp_path: Path, sync: dict[str, Any] | None = None, **sections: dict[str, Any]) -> None:
        self.sync_dir = tmp_path / "sync"
        self.sync_dir.mkdir(exist_ok=True)
        self.file = self.sync_dir / "edged.toml"
        self.data: dict[str, Any] = {
            "camera": {"source": "synthetic"},
            "audio": {"source": "synthetic"},
            "storage": {"dir": str(tmp_path / "state"), "min_free_bytes": 0},
            "sync": {"dir": str(self.sync_dir), "poll_seconds": POLL, **(sync or {})},
        }
        for name, values in sections.items():
            self.data.setdefault(name, {}).update(values)
        self.local = config.from_mapping(self.data, origin="<local>")
        self.calls: list[tuple[config.Settings, list[str], list[str]]] = []
        self.alarms: list[tuple[str, bool]] = []
        self.fail: Exception | None = None
        self.lock = threading.Lock()
        self.cs = ConfigSync(self.local, self.data, self.on_apply, on_alarm=lambda *a: self.alarms.append(a))

    def on_apply(self, settings: config.Settings, live: list[str], restart: list[str]) -> None:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            self.calls.append((settings, live, restart))

    def start(self) -> config.Settings:
        s = self.cs.startup()
        self.cs.start()
        return s

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.sync_dir / "status" / "config.json").read_text())
        except FileNotFoundError:
            return None

    def wait_status(self, data: bytes, state: str) -> dict[str, Any]:
        v = version_of(data)
        wait_until(
            lambda: (st := self.status()) is not None and st["version"] == v and st["state"] == state,
            WAIT,
            f"status {state} for {v[:12]} (now {self.status()})",
        )
        st = self.status()
        assert st is not None
        return st

    def atomic(self, data: bytes, temp_name: str) -> None:
        """What Syncthing and rsync do: the whole file under a temporary name, then a rename."""
        tmp = self.sync_dir / temp_name
        tmp.write_bytes(data)
        os.replace(tmp, self.file)


@pytest.fixture
def make(tmp_path):
    made: list[Harness] = []

    def factory(**kw: Any) -> Harness:
        h = Harness(tmp_path, **kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.cs.stop()


def errors(st: dict[str, Any]) -> dict[str, str]:
    return {e["key"]: e["reason"] for e in st["errors"]}


# --- the config layer ---------------------------------------------------------------------------


def test_live_rule_changed_keys_and_layers():
    assert config.is_live("camera.bitrate") and config.is_live("audio.bitrate")
    assert config.is_live("storage.max_bytes") and config.is_live("storage.min_free_bytes")
    assert config.is_live("clips.pre_roll_seconds") and config.is_live("upload.sonoran_v2.base_url")
    assert config.is_live("upload.targets")
    for key in (
        "camera.width",
        "camera.source",
        "storage.dir",
        "storage.segment_seconds",
        "gpio.button_pin",
        "device.id",
        "sync.dir",
        "audio.source",
    ):
        assert not config.is_live(key), key
    assert config.needs_restart(["camera.width", "camera.bitrate", "gpio.led_pin"]) == ["camera.width", "gpio.led_pin"]

    local = {
        "storage": {"dir": "/var/lib/edged", "min_free_bytes": 0},
        "upload": {"directory": {"path": "/mnt/a"}, "retry_base_seconds": 3.0},
    }
    new = config.from_layers(local, {"upload": {"retry_cap_seconds": 900.0}, "camera": {"keyframe_seconds": 5.0}})
    # overlaid key by key: the local sub-table and sibling key survive
    assert new.upload.directory.path == "/mnt/a" and new.upload.retry_base_seconds == 3.0
    assert new.upload.retry_cap_seconds == 900.0
    base = config.from_mapping(local)
    assert config.changed_keys(base, new) == ["camera.keyframe_seconds", "upload.retry_cap_seconds"]
    running = config.overlay_live(base, new)
    assert running.camera.keyframe_seconds == base.camera.keyframe_seconds
    assert running.upload.retry_cap_seconds == 900.0

    with pytest.raises(config.ConfigError) as exc:
        config.from_layers(
            local, {"storage": {"dir": "/tmp/elsewhere"}, "sync": {"fleet_public_key": ""}, "camera": {"bitrate": 1}}
        )
    assert dict(exc.value.problems) == {
        "storage.dir": "can only be set in the local config",
        "sync.fleet_public_key": "can only be set in the local config",
        "camera.bitrate": "must be at least 50000; got 1",
    }


def test_fleet_public_key_forms(tmp_path):
    key = Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    b64 = base64.b64encode(raw).decode()
    pem = tmp_path / "k.pem"
    pem.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rawf, b64f, ssh = tmp_path / "k.raw", tmp_path / "k.pub", tmp_path / "k.ssh"
    rawf.write_bytes(raw)
    b64f.write_text(b64 + "\n")
    ssh.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    for value in (b64, str(pem), str(rawf), str(b64f), str(ssh)):
        assert (
            configsign.load_public_key(value).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            == raw
        ), value
    for bad in ("not-a-key", base64.b64encode(b"short").decode(), str(tmp_path / "missing.pem")):
        with pytest.raises(config.ConfigError) as exc:
            config.from_mapping({"sync": {"fleet_public_key": bad}})
        assert [k for k, _ in exc.value.problems] == ["sync.fleet_public_key"]


def test_the_local_layer_is_the_file_the_daemon_was_started_with(tmp_path):
    local_file = tmp_path / "local.toml"
    local_file.write_text(
        f'[storage]\ndir = "{tmp_path / "state"}"\nmin_free_bytes = 0\n'
        f'[sync]\ndir = "{tmp_path / "sync"}"\n[upload.directory]\npath = "/mnt/usb"\n'
    )
    local = config.load(local_file)
    data = local_layer(local)
    assert data["upload"] == {"directory": {"path": "/mnt/usb"}}
    ConfigSync(local, data, lambda *a: None)
    assert local_layer(config.Settings()) == {}
    with pytest.raises(ValueError, match="local_data"):  # a mapping that is not the local config
        ConfigSync(local, {"sync": {"dir": str(tmp_path / "sync")}}, lambda *a: None)


# --- how files arrive -------------------------------------------------------------------------


def test_atomic_renames_of_syncthing_and_rsync_are_applied(make):
    h = make()
    h.start()
    h.atomic(A, ".syncthing.edged.toml.tmp")
    st = h.wait_status(A, "applied")
    assert st["applied_version"] == version_of(A) and st["applied_keys"] == ["camera.bitrate"]
    assert st["errors"] == [] and st["restart_needed"] == [] and st["device"] == h.local.device.id
    assert st["at"].endswith("Z")
    assert len(h.calls) == 1
    settings, live, restart = h.calls[0]
    assert settings.camera.bitrate == 400_000 and live == ["camera.bitrate"] and restart == []
    assert h.cs.settings.camera.bitrate == 400_000

    h.atomic(B, ".edged.toml.Ab12Cd")  # rsync's temporary name
    h.wait_status(B, "applied")
    settings, live, restart = h.calls[-1]
    # B is overlaid on the local config, not on A: the bitrate returns to the local value
    assert live == ["camera.bitrate", "clips.pre_roll_seconds"]
    assert settings.camera.bitrate == h.local.camera.bitrate and settings.clips.pre_roll_seconds == 10.0
    assert len(h.calls) == 2


def test_temporary_files_of_sync_tools_are_never_read(make, monkeypatch):
    h = make()
    opened: list[Path] = []
    real_open = Folder.open_regular

    def spy_open(self: Folder, name: str, max_bytes: int | None = None) -> Any:
        opened.append(self.path / name)
        return real_open(self, name, max_bytes)

    monkeypatch.setattr(Folder, "open_regular", spy_open)
    h.start()
    for name in (".syncthing.edged.toml.tmp", ".edged.toml.Ab12Cd", "~syncthing~edged.toml.tmp"):
        (h.sync_dir / name).write_bytes(A)
    time.sleep(6 * POLL)
    assert h.calls == [] and h.status() is None
    assert opened == []
    h.atomic(A, ".edged.toml.Ab12Cd")  # the watcher is alive: the rename is seen
    h.wait_status(A, "applied")


def _chunks(text: bytes, lines_per_chunk: int) -> list[bytes]:
    lines = text.splitlines(keepends=True)
    return [b"".join(lines[i : i + lines_per_chunk]) for i in range(0, len(lines), lines_per_chunk)]


def test_in_place_writes_in_chunks_are_read_only_whole(make, caplog):
    full = (
        b"[clips]\npre_roll_seconds = 10.0\npost_roll_seconds = 20.0\n[camera]\nbitrate = 400000\n"
        b"[audio]\nbitrate = 32000\n[upload]\nretry_base_seconds = 5.0\nretry_cap_seconds = 700.0\n"
    )
    chunks = _chunks(full, 2)
    h = make()
    # Every prefix cut at a line is a valid config that differs from the whole file, so a reader
    # that looked at a half-written file would apply something else.
    whole = config.from_layers(h.data, tomllib.loads(full.decode()))
    for n in range(1, len(chunks)):
        part = config.from_layers(h.data, tomllib.loads(b"".join(chunks[:n]).decode()))
        assert part != whole
    h.file.write_bytes(A)
    h.start()
    h.wait_status(A, "applied")
    del h.calls[:]
    ino = h.file.stat().st_ino
    caplog.set_level(logging.INFO, logger="edged.configsync")
    for _ in range(2):  # twice: truncate-and-rewrite of the applied file, then again
        with open(h.file, "wb") as f:  # in place: same inode, truncated, written in pieces
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(POLL / 4)
        assert h.file.stat().st_ino == ino
        h.wait_status(full, "applied" if _ == 0 else "unchanged")
    assert len(h.calls) == 1, [c[1] for c in h.calls]
    settings, live, _ = h.calls[0]
    assert settings.camera.bitrate == 400_000 and settings.audio.bitrate == 32_000
    assert settings.upload.retry_cap_seconds == 700.0
    assert live == [
        "audio.bitrate",
        "clips.pre_roll_seconds",
        "clips.post_roll_seconds",
        "upload.retry_base_seconds",
        "upload.retry_cap_seconds",
    ]
    assert not [r for r in caplog.records if "rejected" in r.getMessage()]


# The same rules, one poll at a time (no thread): what a poll does is then exact.


def test_a_writer_pausing_for_a_poll_mid_file_is_given_one_more_look(make):
    h = make()
    h.cs.startup()
    with open(h.file, "wb") as f:
        f.write(b"[camera]\nbitrate = 4")  # valid TOML, bad value: a naive reader rejects it
        f.flush()
        h.cs.poll()  # first look
        h.cs.poll()  # unchanged for one poll: read; fails; perhaps a pause, so not judged yet
        assert h.status() is None and h.calls == []
        f.write(b"00000\n")
    h.cs.poll()
    h.cs.poll()
    assert h.status()["state"] == "applied" and h.calls[0][0].camera.bitrate == 400_000

    h.atomic(b"[camera]\nbitrate = 5\n", ".syncthing.edged.toml.tmp")
    h.cs.poll()
    h.cs.poll()
    assert h.status()["state"] == "applied"  # not yet ...
    h.cs.poll()
    assert h.status()["state"] == "rejected"  # ... a bad file unchanged for two polls is


def test_the_same_bad_bytes_again_are_not_judged_again(make, caplog):
    clock = iter(range(1_700_000_000, 1_800_000_000))
    h = make()
    h.cs = ConfigSync(h.local, h.data, h.on_apply, wall=lambda: float(next(clock)))
    h.cs.startup()
    bad = b"[camera]\nbitrate = 5\n"
    caplog.set_level(logging.ERROR, logger="edged.configsync")
    h.atomic(bad, ".syncthing.edged.toml.tmp")
    for _ in range(3):
        h.cs.poll()
    st = h.status()
    assert st["state"] == "rejected"
    h.atomic(bad, ".edged.toml.Ab12Cd")  # re-synced: a new inode, the same bytes
    for _ in range(4):
        h.cs.poll()
    assert h.status() == st  # not rewritten (the clock moved on: "at" would differ)
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1


def test_a_file_that_grows_while_it_is_read_is_read_again(make, monkeypatch):
    h = make()
    h.cs.startup()
    h.file.write_bytes(A)
    real_read = SyncFolder.read_config

    def racing(self: SyncFolder, max_bytes: int) -> Any:
        """The writer appends right after the read: the bytes read are not the file."""
        got = real_read(self, max_bytes)
        with open(h.file, "ab") as w:
            w.write(b"[audio]\nbitrate = 32000\n")
        monkeypatch.undo()
        return got

    h.cs.poll()
    monkeypatch.setattr(SyncFolder, "read_config", racing)
    h.cs.poll()
    assert h.calls == [] and h.status() is None
    h.cs.poll()
    h.cs.poll()
    assert len(h.calls) == 1
    assert (h.calls[0][0].camera.bitrate, h.calls[0][0].audio.bitrate) == (400_000, 32_000)


def test_an_unchanged_file_touched_or_resynced_applies_nothing(make):
    h = make()
    h.file.write_bytes(A)
    old = time.time() - 60
    os.utime(h.file, (old, old))
    assert h.start().camera.bitrate == 400_000  # present at start: started on, not applied
    assert h.calls == []
    h.atomic(A, ".syncthing.edged.toml.tmp")
    h.wait_status(A, "unchanged")
    assert h.calls == []


# --- bad files --------------------------------------------------------------------------------

BAD = [
    (b"[camera]\nbitrate = = 3\n", "<syntax>", "Invalid value"),
    (b"[camera]\nbitrate = 5\n", "camera.bitrate", "must be at least 50000; got 5"),
    (b"[camera]\nbitrate = 400000\nzoom = 2\n", "camera.zoom", "unknown key"),
    (b'[storage]\ndir = "/tmp/elsewhere"\n', "storage.dir", "can only be set in the local config"),
    (b'[sync]\nfleet_public_key = ""\n', "sync.fleet_public_key", "can only be set in the local config"),
    (b'[sync]\ndir = "/tmp/x"\n', "sync.dir", "can only be set in the local config"),
    (b'[upload]\ntargets = ["ftp"]\n', "upload.targets", "only a signed synced config may set it"),
    (b'[upload.directory]\npath = "/tmp/elsewhere"\n', "upload.directory.path", "only a signed synced config"),
    (
        b'[upload.sonoran_v2]\nbase_url = "https://evil.example"\napi_key_file = "/etc/shadow"\n',
        "upload.sonoran_v2.base_url",
        "only a signed synced config",
    ),
    (b"[clips]\npre_roll_seconds = 500.0\n", "clips.pre_roll_seconds", "must be at most"),
    (b"\xff\xfe[camera]\n", "<file>", "not UTF-8"),
]


def test_a_bad_file_is_rejected_once_naming_the_key_and_the_last_good_runs(make, caplog):
    h = make()
    h.start()
    h.atomic(A, ".syncthing.edged.toml.tmp")
    h.wait_status(A, "applied")
    caplog.set_level(logging.ERROR, logger="edged.configsync")
    for bad, key, reason in BAD:
        h.atomic(bad, ".syncthing.edged.toml.tmp")
        st = h.wait_status(bad, "rejected")
        assert key in errors(st) and reason in errors(st)[key], st["errors"]
        assert st["applied_version"] == version_of(A) and st["applied_keys"] == []
        assert len(h.calls) == 1 and h.cs.settings == h.calls[0][0]
        assert h.cs.settings.storage.dir == h.local.storage.dir and h.cs.settings.sync == h.local.sync
    time.sleep(5 * POLL)  # a stable bad file is not judged, logged or written again every poll
    assert h.status() == st
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == len(BAD)
    assert h.cs.saved_path.read_bytes() == A
    h.atomic(B, ".edged.toml.Zz9Yy8")  # a change is judged again
    h.wait_status(B, "applied")
    assert len(h.calls) == 2


def test_restart_needed_keys_are_reported_and_wait_for_the_restart(make):
    h = make()
    h.start()
    text = b"[camera]\nkeyframe_seconds = 5.0\nthreads = 2\nbitrate = 400000\n[storage]\nsegment_seconds = 5.0\n"
    h.atomic(text, ".syncthing.edged.toml.tmp")
    st = h.wait_status(text, "applied")
    restart = ["camera.keyframe_seconds", "camera.threads", "storage.segment_seconds"]
    assert st["restart_needed"] == restart and st["applied_keys"] == ["camera.bitrate"]
    settings, live, r = h.calls[-1]
    assert live == ["camera.bitrate"] and r == restart
    # what runs: the live key from the file, the others as started
    assert (settings.camera.keyframe_seconds, settings.camera.bitrate, settings.storage.segment_seconds) == (
        10.0,
        400_000,
        10.0,
    )

    # Live values that do not fit what runs until the restart: clips of 5 s with the running 10 s
    # segments would break the keyframe rule, so the whole file waits for the restart.
    text2 = b"[storage]\nsegment_seconds = 4.0\n[clips]\nmax_duration_ms = 5000\n"
    h.atomic(text2, ".syncthing.edged.toml.tmp")
    st = h.wait_status(text2, "applied")
    assert st["applied_keys"] == [] and h.calls[-1][1] == []
    assert st["restart_needed"] == ["camera.bitrate", "storage.segment_seconds", "clips.max_duration_ms"]
    assert h.cs.settings.clips.max_duration_ms == h.local.clips.max_duration_ms
    assert h.cs.settings.camera.bitrate == 400_000  # what ran keeps running

    # After the restart the accepted file runs whole, with nothing left waiting.
    h.cs.stop()
    h2 = Harness(h.sync_dir.parent)
    s = h2.cs.startup()
    assert (s.storage.segment_seconds, s.clips.max_duration_ms) == (4.0, 5000)
    assert h2.calls == []


# --- signatures -------------------------------------------------------------------------------


@pytest.fixture
def fleet_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _b64pub(key: Ed25519PrivateKey) -> str:
    return configsign.public_key_b64(key.public_key())


def test_where_evidence_goes_is_changed_only_by_a_signed_config(make, fleet_key):
    """Unsigned, a synced file may tune the recording but never redirect it (targets, URLs, key
    files, the delivery folder); signed by the fleet key, it may."""
    redirect = b'[upload]\ntargets = ["directory"]\n[upload.directory]\npath = "/mnt/usb"\n'
    with pytest.raises(config.ConfigError) as exc:
        config.from_layers({}, tomllib.loads(redirect.decode()))
    assert sorted(k for k, _ in exc.value.problems) == ["upload.directory.path", "upload.targets"]
    assert config.from_layers({}, tomllib.loads(redirect.decode()), signed=True).upload.directory.path == "/mnt/usb"
    h = make(sync={"fleet_public_key": _b64pub(fleet_key)})
    h.start()
    signed = configsign.sign(redirect, fleet_key)
    h.atomic(signed, ".syncthing.edged.toml.tmp")
    h.wait_status(signed, "applied")
    assert h.cs.settings.upload.directory.path == "/mnt/usb"


def test_signed_configs(make, fleet_key):
    h = make(sync={"fleet_public_key": _b64pub(fleet_key)})
    h.start()
    good = configsign.sign(A, fleet_key)
    assert good.endswith(A) and good.startswith(b"# edged-signature: ed25519:")
    h.atomic(good, ".syncthing.edged.toml.tmp")
    h.wait_status(good, "applied")
    assert h.cs.settings.camera.bitrate == 400_000

    cases = {
        "missing": (B, "missing"),
        "wrong key": (configsign.sign(B, Ed25519PrivateKey.generate()), "does not verify"),
        "tampered body": (configsign.sign(B, fleet_key).replace(b"10.0", b"90.0"), "does not verify"),
        "malformed": (b"# edged-signature: ed25519:@@@\n" + B, "not valid base64"),
        "short": (b"# edged-signature: ed25519:" + base64.b64encode(b"x" * 10) + b"\n" + B, "10 bytes"),
    }
    for what, (data, reason) in cases.items():
        h.atomic(data, ".edged.toml.Ab12Cd")
        st = h.wait_status(data, "rejected")
        assert list(errors(st)) == ["<signature>"] and reason in errors(st)["<signature>"], (what, st)
        assert st["applied_version"] == version_of(good), what
    assert len(h.calls) == 1 and h.cs.settings.clips.pre_roll_seconds == 30.0
    # re-signing replaces the old signature line and keeps the body
    resigned = configsign.sign(configsign.sign(B, Ed25519PrivateKey.generate()), fleet_key)
    assert resigned.count(b"edged-signature") == 1
    h.atomic(resigned, ".edged.toml.Ab12Cd")
    h.wait_status(resigned, "applied")
    assert h.cs.settings.clips.pre_roll_seconds == 10.0


def test_the_serial_and_the_devices_are_signed(fleet_key):
    pub = fleet_key.public_key()
    signed = configsign.sign(A, fleet_key, serial=7, devices=["cam-2", "cam-1", "cam-2"])
    assert signed.split(b"\n")[0].endswith(b" serial=7 devices=cam-1,cam-2")
    assert configsign.verified(signed, pub) == configsign.Signed(A, 7, ("cam-1", "cam-2"))
    head, body = signed.split(b"\n", 1)
    for forged in (
        head.replace(b"serial=7", b"serial=9"),
        head.replace(b"cam-1,cam-2", b"cam-1,cam-3"),
        head.replace(b" devices=cam-1,cam-2", b""),
    ):
        with pytest.raises(configsign.SignatureError, match="does not verify"):
            configsign.verified(forged + b"\n" + body, pub)
    # An old-format file (no serial) is refused with what to do about it.
    old = configsign.PREFIX + base64.b64encode(fleet_key.sign(A)) + b"\n" + A
    with pytest.raises(configsign.SignatureError, match="sign it again"):
        configsign.verified(old, pub)
    for bad in (
        b" serial=-1",
        b" serial=x",
        b" serial=1 serial=2",
        b" serial=1 colour=red",
        b" serial=1 devices=b,a",
        b" serial=99999999999999999999",
    ):
        with pytest.raises(configsign.SignatureError):
            configsign.verified(head.split(b" ")[0] + b" " + head.split(b" ")[1] + bad + b"\n" + body, pub)
    with pytest.raises(ValueError):
        configsign.sign(A, fleet_key, devices=["has space"])
    with pytest.raises(ValueError):
        configsign.sign(A, fleet_key, serial=-1)


def test_the_default_serial_is_the_time_and_rises_when_signed_again(fleet_key):
    before = int(time.time())
    first = configsign.verified(configsign.sign(A, fleet_key), fleet_key.public_key()).serial
    assert before <= first <= int(time.time())
    again = configsign.sign(configsign.sign(A, fleet_key, serial=first + 100), fleet_key)
    assert configsign.verified(again, fleet_key.public_key()).serial == first + 101


def test_a_failing_apply_is_a_rejection_with_its_reason(make):
    h = make()
    h.start()
    h.fail = RuntimeError("uploader refused the new targets")
    h.atomic(A, ".syncthing.edged.toml.tmp")
    st = h.wait_status(A, "rejected")
    assert errors(st) == {"<apply>": "RuntimeError: uploader refused the new targets"}
    assert st["applied_version"] is None and h.cs.settings == h.local
    assert not h.cs.saved_path.exists()  # never kept as the last good
    h.fail = None
    h.atomic(B, ".syncthing.edged.toml.tmp")
    h.wait_status(B, "applied")


# --- restarts ---------------------------------------------------------------------------------


def test_a_restart_comes_up_on_the_last_good_even_after_a_bad_file(make, tmp_path):
    h = make()
    h.start()
    h.atomic(A, ".syncthing.edged.toml.tmp")
    h.wait_status(A, "applied")
    h.cs.stop()
    assert h.cs.saved_path.read_bytes() == A

    bad = b"[camera]\nbitrate = 5\n"  # arrived while the daemon was down
    h.file.write_bytes(bad)
    old = time.time() - 60
    os.utime(h.file, (old, old))
    h2 = make()
    s = h2.start()
    assert s.camera.bitrate == 400_000 and h2.calls == []
    st = h2.status()
    assert st is not None and st["state"] == "rejected" and "camera.bitrate" in errors(st)
    assert st["applied_version"] == version_of(A)

    h2.cs.stop()
    h.file.unlink()  # no synced file at all: the kept one still runs
    h3 = make()
    assert h3.start().camera.bitrate == 400_000


def test_a_file_still_being_written_at_start_is_left_to_the_watcher(make):
    h = make()
    h.file.write_bytes(A)  # mtime now: perhaps half written
    s = h.start()
    assert s.camera.bitrate == h.local.camera.bitrate
    h.wait_status(A, "applied")
    assert h.calls[0][1] == ["camera.bitrate"]


def test_a_kept_config_signed_by_an_old_key_is_not_started_on(make, fleet_key):
    h = make(sync={"fleet_public_key": _b64pub(fleet_key)})
    h.start()
    signed = configsign.sign(A, fleet_key)
    h.atomic(signed, ".syncthing.edged.toml.tmp")
    h.wait_status(signed, "applied")
    h.cs.stop()
    h.file.unlink()
    h2 = make(sync={"fleet_public_key": _b64pub(Ed25519PrivateKey.generate())})  # key rotated locally
    assert h2.start().camera.bitrate == h2.local.camera.bitrate


# --- the commands, end to end -----------------------------------------------------------------


def _edged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_keygen_and_sign_commands_end_to_end(make, tmp_path):
    keys = tmp_path / "fleet"
    r = _edged("config", "keygen", str(keys))
    assert r.returncode == 0, r.stderr
    private, public = keys / "fleet-key.pem", keys / "fleet-key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().strip() in r.stdout
    again = _edged("config", "keygen", str(keys))
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert configsign.load_private_key(private)  # untouched, still a key

    h = make(sync={"fleet_public_key": str(public)})  # the key as a file path
    h.start()
    draft = tmp_path / "fleet.toml"
    draft.write_bytes(b"[upload]\nretry_base_seconds = 4.0\n")
    r = _edged("config", "sign", "--key", str(private), str(draft), "-o", str(h.file))
    assert r.returncode == 0, r.stderr
    signed = h.file.read_bytes()
    h.wait_status(signed, "applied")
    assert h.cs.settings.upload.retry_base_seconds == 4.0
    assert _edged("config", "check", str(h.file)).returncode == 0  # the signature line is a comment

    draft.write_bytes(signed.replace(b"4.0", b"8.0"))  # edited after signing: refused ...
    r = _edged("config", "sign", "--key", str(private), str(draft))  # ... until signed again in place
    assert r.returncode == 0, r.stderr
    os.replace(draft, h.file)
    h.wait_status(h.file.read_bytes(), "applied")
    assert h.cs.settings.upload.retry_base_seconds == 8.0

    r = _edged("config", "sign", "--key", str(public), str(draft))
    assert r.returncode == 1 and "private key" in r.stderr


# --- hostile files and folders (issue 12): rejected once with the reason, never a crash or a hang ---


def _settle(h: Harness, polls: int = 4) -> None:
    for _ in range(polls):
        h.cs.poll()


def _rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]


def _hostile_files(tmp_path: Path) -> dict[str, tuple[Any, str, str]]:
    """name -> (how to make <sync>/edged.toml, the key named, words of the reason)."""
    target = tmp_path / "outside.toml"
    target.write_bytes(A)
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    return {
        "fifo": (lambda p: os.mkfifo(p), "<file>", "FIFO"),
        "link to a fifo": (lambda p: p.symlink_to(fifo), "<file>", "symbolic link"),
        "link to /dev/zero": (lambda p: p.symlink_to("/dev/zero"), "<file>", "symbolic link"),
        "link to a regular file": (lambda p: p.symlink_to(target), "<file>", "symbolic link"),
        "huge": (lambda p: p.write_bytes(b"#" * (config.MAX_FILE_BYTES + 1)), "<file>", "bytes"),
        "not UTF-8": (lambda p: p.write_bytes(b"[camera]\nbitrate = 4\xff\n"), "<file>", "UTF-8"),
        "deep arrays": (lambda p: p.write_bytes(b"a = " + b"[" * 3000 + b"]" * 3000), "<file>", "deeper"),
        "deep dotted keys": (lambda p: p.write_bytes(b"a." * 3000 + b"b = 1\n"), "a.a.a", "deeper"),
        "a folder": (lambda p: p.mkdir(), "<file>", "folder"),
    }


def test_hostile_files_are_rejected_once_with_the_reason_and_the_watcher_goes_on(make, tmp_path, caplog):
    h = make()
    h.cs.startup()
    caplog.set_level(logging.INFO, logger="edged.configsync")
    for what, (make_file, key, words) in _hostile_files(tmp_path).items():
        before = len(_rejections(caplog))
        if h.file.is_dir() and not h.file.is_symlink():
            h.file.rmdir()
        else:
            h.file.unlink(missing_ok=True)
        _settle(h, 1)
        t0 = time.monotonic()
        make_file(h.file)
        _settle(h, 6)
        assert time.monotonic() - t0 < 5, f"{what}: a poll must not block"
        st = h.status()
        assert st is not None and st["state"] == "rejected", (what, st)
        named = {k: r for k, r in errors(st).items() if k.startswith(key)}
        assert named and words in next(iter(named.values())), (what, st["errors"])
        assert len(_rejections(caplog)) == before + 1, f"{what}: one log line, not one per poll"
        assert h.calls == [] and h.cs.settings == h.local
    refused = [a for a in h.alarms if a[0] == "sync_folder_refused"]
    assert refused and refused[0] == ("sync_folder_refused", True)
    h.file.rmdir()
    h.atomic(A, ".syncthing.edged.toml.tmp")  # the watcher is alive: a good file is applied
    _settle(h, 3)
    assert h.status()["state"] == "applied" and h.calls[-1][0].camera.bitrate == 400_000
    assert h.alarms[-1] == ("sync_folder_refused", False)


def test_hostile_files_at_start_neither_block_nor_stop_it(make, tmp_path):
    for what, (make_file, key, _) in _hostile_files(tmp_path).items():
        h = make()
        if h.file.is_dir() and not h.file.is_symlink():
            h.file.rmdir()
        else:
            h.file.unlink(missing_ok=True)
        make_file(h.file)
        old = time.time() - 60
        os.utime(h.file, (old, old), follow_symlinks=False)
        t0 = time.monotonic()
        assert h.cs.startup() == h.local, what
        assert time.monotonic() - t0 < 5, what
        st = h.status()
        assert st is not None and st["state"] == "rejected", (what, st)
        assert any(k.startswith(key) for k in errors(st)), (what, st)


def test_any_exception_while_judging_is_a_rejection_once_not_a_crash_loop(make, monkeypatch, caplog):
    h = make()
    h.cs.startup()
    caplog.set_level(logging.INFO, logger="edged.configsync")

    def boom(*a: Any, **kw: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(config, "from_layers", boom)
    h.atomic(A, ".syncthing.edged.toml.tmp")
    _settle(h, 10)
    st = h.status()
    assert st["state"] == "rejected" and "<file>" in errors(st) and "nested too deeply" in errors(st)["<file>"]
    monkeypatch.undo()

    def surprise(*a: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(config, "changed_keys", surprise)  # after validation, before on_apply
    h.atomic(B, ".syncthing.edged.toml.tmp")
    _settle(h, 10)
    st = h.status()
    assert st["state"] == "rejected" and "surprise" in errors(st)["<internal>"], st
    assert len(_rejections(caplog)) == 2
    assert h.calls == []


def test_a_symlinked_status_folder_is_refused_and_raises_the_alarm(make, tmp_path):
    h = make()
    elsewhere = tmp_path / "evidence-like"
    elsewhere.mkdir()
    (h.sync_dir / "status").symlink_to(elsewhere)
    h.cs.startup()
    h.atomic(A, ".syncthing.edged.toml.tmp")
    _settle(h, 3)
    assert list(elsewhere.iterdir()) == [], "nothing written through the link"
    assert h.calls and h.calls[-1][0].camera.bitrate == 400_000, "the config still applies"
    assert h.alarms == [("sync_folder_refused", True)]
    (h.sync_dir / "status").unlink()
    _settle(h, 1)  # the status not written is written at the next poll, and the alarm clears
    assert h.status()["state"] == "applied" and h.alarms[-1] == ("sync_folder_refused", False)


def test_a_replayed_signed_config_is_refused_even_after_a_restart(make, fleet_key):
    sync = {"fleet_public_key": _b64pub(fleet_key)}
    h = make(sync=sync)
    h.cs.startup()
    new = configsign.sign(A, fleet_key, serial=200)
    h.atomic(new, ".syncthing.edged.toml.tmp")
    _settle(h, 3)
    assert h.status()["state"] == "applied" and h.status()["serial"] == 200
    older = configsign.sign(B, fleet_key, serial=100)
    same_serial = configsign.sign(B, fleet_key, serial=200)
    for data in (older, same_serial):
        h.atomic(data, ".syncthing.edged.toml.tmp")
        _settle(h, 3)
        st = h.status()
        assert st["state"] == "rejected" and "not above 200" in errors(st)["<serial>"], st
    h.atomic(new, ".edged.toml.Ab12Cd")  # the very file accepted, synced again: not a replay
    _settle(h, 3)
    assert h.status()["state"] == "unchanged"
    h.cs.stop()
    assert json.loads((h.local.state_dir / "synced-config.serial").read_text())["serial"] == 200

    h.atomic(older, ".syncthing.edged.toml.tmp")  # arrived while the daemon was down
    old = time.time() - 60
    os.utime(h.file, (old, old))
    h2 = make(sync=sync)
    assert h2.cs.startup().camera.bitrate == 400_000, "started on the kept config"
    assert "<serial>" in errors(h2.status())
    h2.atomic(configsign.sign(B, fleet_key, serial=201), ".syncthing.edged.toml.tmp")
    _settle(h2, 3)
    assert h2.status()["state"] == "applied" and h2.cs.last_serial == 201


def test_a_signed_config_for_other_devices_is_refused(make, fleet_key):
    h = make(sync={"fleet_public_key": _b64pub(fleet_key)}, device={"id": "cam-7"})
    h.cs.startup()
    for_others = configsign.sign(A, fleet_key, serial=10, devices=["cam-1", "cam-2"])
    h.atomic(for_others, ".syncthing.edged.toml.tmp")
    _settle(h, 3)
    st = h.status()
    assert (
        st["state"] == "rejected" and "cam-1, cam-2" in errors(st)["<devices>"] and "cam-7" in errors(st)["<devices>"]
    )
    for_me = configsign.sign(A, fleet_key, serial=11, devices=["cam-1", "cam-7"])
    h.atomic(for_me, ".syncthing.edged.toml.tmp")
    _settle(h, 3)
    assert h.status()["state"] == "applied" and h.cs.settings.camera.bitrate == 400_000


def test_an_old_format_signed_config_is_refused_with_what_to_do(make, fleet_key):
    h = make(sync={"fleet_public_key": _b64pub(fleet_key)})
    h.cs.startup()
    old = configsign.PREFIX + base64.b64encode(fleet_key.sign(A)) + b"\n" + A
    h.atomic(old, ".syncthing.edged.toml.tmp")
    _settle(h, 3)
    assert "sign it again" in errors(h.status())["<signature>"]


def test_unsigned_evidence_reducing_values_are_refused_naming_the_key(make):
    h = make()
    h.cs.startup()
    cases = {
        b"[storage]\nmin_free_bytes = 1000000000000000000\n": "storage.min_free_bytes",
        b"[clips]\npre_roll_seconds = 0.0\npost_roll_seconds = 0.0\n": "clips.pre_roll_seconds",
        b"[upload]\nbandwidth_kbps = 1\n": "upload.bandwidth_kbps",
        b'[upload.sonoran_v2]\naccount_uuid = "someone-else"\n': "upload.sonoran_v2.account_uuid",
        b'[upload.sonoran_legacy]\nusername = "x"\n': "upload.sonoran_legacy.username",
        b'[camera]\nsource = "file"\n[audio]\nsource = "none"\n[device]\nid = "x"\n': "camera.source",
    }
    for data, key in cases.items():
        h.atomic(data, ".syncthing.edged.toml.tmp")
        _settle(h, 3)
        st = h.status()
        assert st["state"] == "rejected" and key in errors(st), (key, st)
    assert h.calls == []


def test_startup_never_raises_whatever_the_state_folder_holds(make):
    h = make()
    h.local.state_dir.mkdir(parents=True, exist_ok=True)
    (h.local.state_dir / "synced-config.toml").mkdir()  # not a file
    (h.local.state_dir / "synced-config.serial").write_text("{not json")
    h2 = make()
    assert h2.cs.startup() == h2.local
