"""A running daemon takes a synced config: live keys applied (encoders at the next segment, ring
limits, clip rolls, upload targets), restart keys reported, bad files refused with the last good
config still running, and the operator told through <sync_dir>/status/config.json."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.app.daemon import Daemon
from edged.config import sign as configsign
from edged.core.paths import StatePaths
from edged.footage.index import Index
from tests.support import decode_all, wait_until


def _drop(sync_dir: Path, data: bytes) -> None:
    """As Syncthing does: a temporary file, then a rename."""
    tmp = sync_dir / ".syncthing.edged.toml.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, sync_dir / "edged.toml")


def _status(sync_dir: Path) -> dict | None:
    try:
        return json.loads((sync_dir / "status" / "config.json").read_text())
    except (OSError, ValueError):
        return None


def _local(tmp_path: Path, **extra: str) -> Path:
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f"""
[camera]
source = "synthetic"
paced = true
bitrate = 300000
[audio]
source = "synthetic"
[storage]
dir = "{tmp_path / "state"}"
segment_seconds = 2.0
min_free_bytes = 0
[clips]
pre_roll_seconds = 2.0
post_roll_seconds = 1.0
[upload]
targets = ["directory"]
[upload.directory]
path = "{tmp_path / "delivered-a"}"
[sync]
dir = "{sync_dir}"
poll_seconds = 0.2
{extra.get("sync", "")}
""")
    return cfg


def _run(cfg: Path):
    from edged.config import schema as config

    daemon = Daemon(config.load(cfg))
    t = threading.Thread(target=daemon.run)
    t.start()
    wait_until(lambda: daemon.recorder is not None and daemon.recorder.status.segments_written >= 1, 30, "recording")
    return daemon, t


def _stop(daemon, t) -> None:
    daemon.recorder.stop()
    t.join(timeout=30)
    assert not t.is_alive()


def test_live_keys_apply_while_recording_and_a_bad_file_keeps_the_last_good(tmp_path):
    cfg = _local(tmp_path)
    sync_dir = tmp_path / "sync"
    daemon, t = _run(cfg)
    try:
        seq_before = daemon.recorder.status.segments_written
        # Unsigned, so only tunable keys within their synced bounds (config's trust model):
        # a pre-roll of at least 10 s, a ring budget raised, not lowered.
        _drop(
            sync_dir,
            b"[camera]\nbitrate = 150000\nkeyframe_seconds = 5.0\n[audio]\nbitrate = 32000\n"
            b"[clips]\npre_roll_seconds = 12.0\n[storage]\nmax_bytes = 5000000000\n",
        )
        st = wait_until(lambda: (s := _status(sync_dir)) and s["state"] == "applied" and s, 10, "applied")
        assert sorted(st["applied_keys"]) == [
            "audio.bitrate",
            "camera.bitrate",
            "clips.pre_roll_seconds",
            "storage.max_bytes",
        ]
        assert st["restart_needed"] == ["camera.keyframe_seconds"] and st["errors"] == []
        # The encoders change at the next segment start; the keyframe interval waits for a restart.
        wait_until(lambda: daemon.recorder.venc._ctx.bit_rate == 150_000, 10, "new video encoder")
        assert daemon.recorder.aenc._ctx.bit_rate == 32_000
        assert daemon.recorder.settings.camera.keyframe_seconds == 10.0
        assert daemon.ring.max_bytes == 5_000_000_000 and daemon.events.settings.clips.pre_roll_seconds == 12.0
        assert daemon.settings.clips.pre_roll_seconds == 12.0
        wait_until(lambda: daemon.recorder.status.segments_written >= seq_before + 3, 20, "segments after the change")

        # A bad file: refused, naming the key; the last good keeps running.
        _drop(sync_dir, b"[camera]\nbitrate = 5\n")
        st = wait_until(lambda: (s := _status(sync_dir)) and s["state"] == "rejected" and s, 10, "rejected")
        assert st["errors"][0]["key"] == "camera.bitrate"
        time.sleep(1)
        assert daemon.settings.camera.bitrate == 150_000 and daemon.recorder.venc._ctx.bit_rate == 150_000
        # Unsigned, the synced folder cannot redirect evidence.
        _drop(sync_dir, f'[upload.directory]\npath = "{tmp_path / "elsewhere"}"\n'.encode())
        st = wait_until(
            lambda: (s := _status(sync_dir)) and s["errors"] and s["errors"][0]["key"] == "upload.directory.path" and s,
            10,
            "refused redirect",
        )
        assert "signed" in st["errors"][0]["reason"]
        assert daemon.settings.upload.directory.path == str(tmp_path / "delivered-a")
    finally:
        _stop(daemon, t)
    # Every segment, before and after the encoders were replaced, decodes whole with its audio.
    index = Index(StatePaths(tmp_path / "state").index, read_only=True)
    try:
        rows = [r for r in index.segments() if r.state == "final"]
    finally:
        index.close()
    assert len(rows) >= seq_before + 3
    for r in rows:
        video, audio = decode_all(tmp_path / "state" / "segments" / r.name)
        assert video == r.frames and audio > 0, r.name


def test_a_signed_config_moves_uploads_to_a_new_target_folder(tmp_path):
    key = Ed25519PrivateKey.generate()
    cfg = _local(tmp_path, sync=f'fleet_public_key = "{configsign.public_key_b64(key.public_key())}"')
    sync_dir = tmp_path / "sync"
    daemon, t = _run(cfg)
    try:
        new_dir = tmp_path / "delivered-b"
        _drop(sync_dir, configsign.sign(f'[upload.directory]\npath = "{new_dir}"\n'.encode(), key))
        wait_until(lambda: (s := _status(sync_dir)) and s["state"] == "applied", 10, "applied")
        assert daemon.settings.upload.directory.path == str(new_dir)
        result = daemon.mark("test")
        wait_until(lambda: new_dir.exists() and any(new_dir.rglob("*.webm")), 30, "clip delivered to the new folder")
        assert not (tmp_path / "delivered-a").exists() or not any((tmp_path / "delivered-a").rglob("*.webm"))
        assert daemon.outbox.clip_delivered(result.event_id)
        # The same file unsigned would have been refused: the signature is what allowed it.
        _drop(sync_dir, f'[upload.directory]\npath = "{tmp_path / "c"}"\n'.encode())
        st = wait_until(lambda: (s := _status(sync_dir)) and s["state"] == "rejected" and s, 10, "rejected")
        assert st["errors"][0]["key"] == "<signature>"
    finally:
        _stop(daemon, t)
