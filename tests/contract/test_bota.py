"""The bota target end to end: a real clip (recorded by the daemon from synthetic sources, two parts,
two marks), the real uploader and outbox, the Bota API of tests/contract/bota_server.py and a real
S3-compatible store (moto) behind a presigned-URL check, all on 127.0.0.1. What reached storage is
downloaded and decoded with PyAV.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from edged.config import schema as config
from edged.core import limits
from edged.core.paths import StatePaths
from edged.upload.bota import media
from edged.upload.outbox import _SCHEMA, PRIORITY_MARK, Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.targets import build_targets
from edged.upload.uploader import ALARM_FAILED, ALARM_PAUSED, Uploader
from tests.conftest import make_settings
from tests.contract.bota_server import BotaServer
from tests.support import wait_until

REPO = Path(__file__).resolve().parents[2]
TOKEN = "sk_test_3f9c1e7a5b2d4c6e8a0b"
DEVICE = "unit-7"


def bota_settings(state: Path, server: BotaServer, token_file: Path, **sections) -> config.Settings:
    upload = {
        "targets": ["bota"],
        "retry_base_seconds": 0.1,
        "retry_cap_seconds": 1.0,
        "bota": {"base_url": server.url, "token_file": str(token_file)},
    } | sections.pop("upload", {})
    return make_settings(state, device={"id": DEVICE}, upload=upload, **sections)


# --- one real clip, recorded and delivered by the daemon ----------------------------------------------


@dataclass
class Clip:
    server: BotaServer
    state: Path
    clip_id: str
    manifest: dict
    parts: list  # OutboxPart, as the daemon queued them
    deliveries: list


@pytest.fixture(scope="module")
def delivered(tmp_path_factory) -> Clip:
    """The whole daemon: records, takes two marks, builds a two-part clip and delivers it to bota."""
    from tests.support import SMALL, Running, timeline_s

    tmp = tmp_path_factory.mktemp("bota-daemon")
    (tmp / "token").write_text(TOKEN + "\n")
    with BotaServer({TOKEN}) as server:
        # Paced (real time): the second press lands in the first one's post-roll whatever the CPU speed.
        s = bota_settings(
            tmp / "state",
            server,
            tmp / "token",
            camera=SMALL | {"paced": True},
            audio={"source": "synthetic"},
            storage={"segment_seconds": 2.0},
            clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 3.0, "max_duration_ms": 5000},
        )
        with Running(s) as d:
            # (the timeline's anchor is 0 until the first frame: timeline_s means nothing before it)
            wait_until(lambda: d.recorder._mono_anchor_ns > 0 and timeline_s(d) > 4, 30, "footage")
            clip_id = d.mark("cli", "first").event_id
            wait_until(lambda: timeline_s(d) > 5.5, 30, "more footage")
            d.mark("cli", "second")
            wait_until(lambda: Outbox(d.paths.outbox).clip_delivered(clip_id), 120, "clip delivered to bota")
        ob = Outbox(StatePaths(tmp / "state").outbox)
        manifest = json.loads((tmp / "state" / "clips" / clip_id / "manifest.json").read_text())
        assert len(ob.parts(clip_id)) == 2, f"the event spans two parts: {manifest}"
        manifest = json.loads((tmp / "state" / "clips" / clip_id / "manifest.json").read_text())
        yield Clip(server, tmp / "state", clip_id, manifest, ob.parts(clip_id), ob.deliveries())


def test_the_daemon_delivers_an_event_as_one_recording_with_its_media_in_storage(delivered, tmp_path):
    c, server = delivered, delivered.server
    assert len(c.parts) == 2 and len(c.manifest["marks"]) == 2, "the fixture makes a two-part clip with two marks"
    assert [d.state for d in c.deliveries] == ["delivered", "delivered"]
    (rec,) = server.recordings.values()
    assert rec.device_id == DEVICE and rec.completed == 1
    assert server.count("/v1/recordings") == 1 and server.count("/complete") == 1
    assert all(json.loads(d.response)["recording_id"] == rec.id for d in c.deliveries)
    by_type: dict[str, list] = {}
    for m in rec.media.values():
        by_type.setdefault(m.content_type, []).append(m)
    assert sorted((k, len(v)) for k, v in by_type.items()) == [("audio/webm", 2), ("image/jpeg", 2), ("video/mp4", 2)]
    assert all(m.uploaded for m in rec.media.values()), "every media object is in storage with its announced size"
    # Every PUT: exactly the returned Content-Type, a Content-Length equal to the file, never chunked.
    puts = [p for p in server.s3.gate.puts if p.status == 200]
    assert len(puts) == 6 and len(server.s3.gate.puts) == 6
    for m in rec.media.values():
        (put,) = [p for p in puts if p.key.endswith(m.key)]
        assert put.content_type == m.content_type and put.content_length == str(m.size)
        assert put.transfer_encoding is None
    starts = sorted(p["wall_start"] for p in c.manifest["parts"])
    assert sorted(m.captured_at for m in by_type["video/mp4"]) == starts
    assert sorted(m.captured_at for m in by_type["audio/webm"]) == starts
    assert sorted(m.captured_at for m in by_type["image/jpeg"]) == sorted(k["wall"] for k in c.manifest["marks"])
    # The clip itself is untouched, and the media made for Bota are gone once the recording is complete.
    for p in c.parts:
        assert hashlib.sha256(Path(p.path).read_bytes()).hexdigest() == p.sha256
    assert not (c.state / "clips" / c.clip_id / ".bota").exists()


def _part_for(c: Clip, captured_at: str):
    number = next(p["number"] for p in c.manifest["parts"] if p["wall_start"] == captured_at)
    return next(p for p in c.parts if p.number == number)


def _demux(data: bytes, kind: str) -> list[tuple[int, bytes]]:
    with av.open(io.BytesIO(data)) as f:
        streams = f.streams.video if kind == "video" else f.streams.audio
        return [(int(p.pts * p.time_base * 1000), bytes(p)) for p in f.demux(streams[0]) if p.size]


def test_the_mp4_is_real_h264_with_the_parts_frames_and_timing(delivered):
    c = delivered
    videos = [m for m in c.server.media() if m.content_type == "video/mp4"]
    for m in videos:
        data, ctype = c.server.s3.get(m.key)
        assert ctype == "video/mp4" and len(data) == m.size <= limits.MAX_UPLOAD_BYTES
        part = _part_for(c, m.captured_at)
        source = Path(part.path).read_bytes()
        with av.open(io.BytesIO(data)) as f:
            assert f.format.name.startswith("mov,mp4")
            vs = f.streams.video[0]
            assert vs.codec_context.name == ("mpeg4" if media.video_encoder() == "mpeg4" else "h264")
            frames = [fr for fr in f.decode(vs)]
        with av.open(io.BytesIO(source)) as f:
            src_frames = [fr for fr in f.decode(f.streams.video[0])]
        assert len(frames) == len(src_frames)
        assert (frames[0].width, frames[0].height) == (src_frames[0].width, src_frames[0].height)
        # Same frame times (ms) as the part: the video's duration and pace are the part's.
        assert [round(fr.pts * fr.time_base * 1000) for fr in frames] == [
            round(fr.pts * fr.time_base * 1000) for fr in src_frames
        ]
        # The pictures are the part's (re-encoded: close, not identical).
        for a, b in zip(frames[::10], src_frames[::10]):
            diff = np.abs(a.to_ndarray(format="gray").astype(int) - b.to_ndarray(format="gray").astype(int)).mean()
            assert diff < 6, f"MP4 frame differs from the source by {diff:.1f} grey levels on average"
        # AAC audio of the same length as the part's Opus (within one AAC frame and the Opus pre-skip).
        with av.open(io.BytesIO(data)) as f:
            aac = sum(fr.samples for fr in f.decode(f.streams.audio[0]))
            assert f.streams.audio[0].codec_context.name == "aac"
        with av.open(io.BytesIO(source)) as f:
            opus = sum(fr.samples for fr in f.decode(f.streams.audio[0]))
        assert abs(aac - opus) <= 2048, (aac, opus)


def test_the_audio_is_the_parts_opus_packets_copied(delivered):
    c = delivered
    audios = [m for m in c.server.media() if m.content_type == "audio/webm"]
    assert len(audios) == 2
    for m in audios:
        data, _ = c.server.s3.get(m.key)
        with av.open(io.BytesIO(data)) as f:
            assert not f.streams.video and f.streams.audio[0].codec_context.name == "opus"
        assert _demux(data, "audio") == _demux(Path(_part_for(c, m.captured_at).path).read_bytes(), "audio")


def test_a_jpeg_still_at_each_mark(delivered):
    c = delivered
    stills = sorted((m for m in c.server.media() if m.content_type == "image/jpeg"), key=lambda m: m.captured_at)
    marks = sorted(k["wall"] for k in c.manifest["marks"])
    assert [m.captured_at for m in stills] == marks
    starts = {p["number"]: p["wall_start"] for p in c.manifest["parts"]}

    def ns(s: str) -> int:
        from edged.core.timefmt import parse_iso_ns

        return parse_iso_ns(s)

    for m in stills:
        data, _ = c.server.s3.get(m.key)
        assert data[:3] == b"\xff\xd8\xff", "a JPEG file"
        with av.open(io.BytesIO(data)) as f:
            (img,) = list(f.decode(video=0))
        # The frame of the part nearest the mark.
        number = max(n for n, s in starts.items() if ns(s) <= ns(m.captured_at))
        part = next(p for p in c.parts if p.number == number)
        at_ms = (ns(m.captured_at) - ns(starts[number])) / 1e6
        with av.open(part.path) as f:
            frames = list(f.decode(video=0))
        nearest = min(frames, key=lambda fr: abs(fr.pts * fr.time_base * 1000 - at_ms))
        assert (img.width, img.height) == (nearest.width, nearest.height)
        a, b = img.to_ndarray(format="gray").astype(int), nearest.to_ndarray(format="gray").astype(int)
        assert np.abs(a - b).mean() < 4, "the still is the frame at the mark"
        others = [fr for fr in frames if abs(fr.pts * fr.time_base * 1000 - at_ms) > 500]
        if others:  # and not just any frame: frames half a second away look different
            far = others[len(others) // 2].to_ndarray(format="gray").astype(int)
            assert np.abs(a - far).mean() > np.abs(a - b).mean()


# --- a fresh outbox holding a copy of the daemon's clip -------------------------------------------------


class Rig:
    """The daemon's layout (outbox at <state>/outbox.sqlite, clips under <state>/clips) with a copy
    of the recorded clip queued for bota, and the real uploader."""

    def __init__(self, tmp: Path, clip: Clip, server: BotaServer, token: str = TOKEN, **upload) -> None:
        self.tmp, self.server = tmp, server
        self.state = tmp / "state"
        self.token_file = tmp / "token"
        if not self.token_file.exists():
            self.token_file.write_text(token + "\n")
        self.settings = bota_settings(self.state, server, self.token_file, upload=upload)
        self.clip_id = clip.clip_id
        src, dst = clip.state / "clips" / clip.clip_id, self.state / "clips" / clip.clip_id
        if not dst.exists():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*"))
        self.outbox = Outbox(StatePaths(self.state).outbox, targets=["bota"])
        self.outbox.enqueue(
            clip.clip_id,
            [(p.number, dst / Path(p.path).name, p.bytes, p.duration_ms, p.sha256) for p in clip.parts],
            PRIORITY_MARK,
            clip.parts[0].event_wall_ns,
        )
        self.files = {p: p.read_bytes() for p in dst.glob("*.webm")}
        self.alarms: dict[str, bool] = {}
        self.uploader = Uploader(
            self.outbox,
            build_targets(self.settings),
            RetryPolicy.from_settings(self.settings.upload, random.Random(1)),
            on_alarm=self.alarms.__setitem__,
        )

    def states(self) -> list[str]:
        return [d.state for d in self.outbox.deliveries()]

    def settled(self) -> bool:
        return all(s in ("delivered", "failed") for s in self.states())

    def clip_intact(self) -> bool:
        return all(p.exists() and p.read_bytes() == b for p, b in self.files.items())

    def __enter__(self) -> Rig:
        self.uploader.start()
        return self

    def __exit__(self, *exc) -> None:
        self.uploader.stop()


@pytest.fixture
def server():
    with BotaServer({TOKEN}) as srv:
        yield srv


def test_an_expired_upload_url_is_asked_for_again_not_failed(delivered, tmp_path, server, caplog):
    server.expire_next(1)  # the first URL is dead by the time the device uses it
    with caplog.at_level(logging.INFO, logger="edged"), Rig(tmp_path, delivered, server) as rig:
        wait_until(rig.settled, 60, "delivered")
    assert rig.states() == ["delivered", "delivered"]
    expired = [p for p in server.s3.gate.puts if p.code == "AccessDenied"]
    assert len(expired) == 1, "storage refused the expired URL once"
    assert server.count("/upload-url") == 7, "one URL asked for again, for the media whose URL expired"
    (rec,) = server.recordings.values()
    assert rec.completed == 1 and sum(m.uploaded for m in rec.media.values()) == 6
    assert [d.attempts for d in rig.outbox.deliveries()] == [1, 1], "an expired URL is not a failed attempt"
    assert any("expired" in r.getMessage() for r in caplog.records if r.name.startswith("edged"))


def test_server_errors_back_off_and_nothing_is_lost(delivered, tmp_path, server):
    server.fail_next(2, 503, {"error": "unavailable"})  # create recording, twice
    server.s3.gate.fail_next(1, 500)  # one storage PUT
    with Rig(tmp_path, delivered, server) as rig:
        wait_until(rig.settled, 60, "delivered after the errors")
        assert rig.clip_intact()
    assert rig.states() == ["delivered", "delivered"]
    assert server.count("/v1/recordings", 503) == 2 and server.count("/v1/recordings", 201) == 1
    (rec,) = server.recordings.values()
    assert rec.completed == 1 and all(m.uploaded for m in rec.media.values())
    assert len(rec.media) == 6, "the URL of the PUT storage refused with a 500 was still valid and used again"
    # Four attempts carried the event (503, 503, storage 500, done), shared by the two deliveries (each
    # may carry it); the other one then found the recording complete.
    assert sum(d.attempts for d in rig.outbox.deliveries()) == 5


def test_a_refused_media_fails_the_delivery_and_keeps_every_file_then_retry_resumes(delivered, tmp_path, server):
    server.fail_next(
        2, 400, {"error": "bad_request", "message": "content_type not accepted for video"}, path="/upload-url"
    )
    with Rig(tmp_path, delivered, server) as rig:
        # Each of the clip's deliveries may carry the event: both try, both are refused.
        wait_until(lambda: rig.states() == ["failed", "failed"], 30, "the deliveries failed")
        assert all("content_type not accepted for video" in d.reason for d in rig.outbox.deliveries())
        assert server.count("/v1/recordings") == 1, "the second try went on with the same recording"
        assert rig.alarms.get(ALARM_FAILED) is True
        assert rig.clip_intact(), "a refusal deletes nothing"
        rig.uploader.retry(rig.clip_id)  # the operator: edged outbox retry <clip>
        wait_until(lambda: rig.states() == ["delivered", "delivered"], 60, "delivered after the retry")
    assert len(server.recordings) == 1, "the retry resumed the same recording"
    (rec,) = server.recordings.values()
    assert rec.completed == 1


def test_a_refused_token_pauses_the_target_and_a_fixed_one_resumes_it_and_no_token_is_logged(
    delivered, tmp_path, server, caplog
):
    wrong = "sk_test_wrong_0000000000000000"
    (tmp_path / "token").write_text(wrong + "\n")
    caplog.set_level(logging.DEBUG)
    with Rig(tmp_path, delivered, server) as rig:
        wait_until(lambda: rig.alarms.get(ALARM_PAUSED), 20, "paused")
        time.sleep(0.5)
        assert server.count("/v1/recordings", 401) == 1, "one refusal, then the target waits"
        assert "failed" not in rig.states() and rig.clip_intact()
        assert "401" in rig.uploader.status()["bota"]["paused"]
        rig.token_file.write_text(TOKEN + "\n")  # the operator fixes the token
        rig.uploader.wake()
        wait_until(rig.settled, 90, "delivered once the token was fixed")
    assert rig.states() == ["delivered", "delivered"] and rig.alarms[ALARM_PAUSED] is False
    assert caplog.records, "logging was captured"
    for r in caplog.records:
        text = r.getMessage() + (r.exc_text or "")
        assert TOKEN not in text and wrong not in text, f"token logged by {r.name}: {text}"
        if r.name.startswith("edged"):
            assert "X-Amz-Signature" not in text, f"a presigned URL logged by {r.name}"


def test_a_stored_url_about_to_expire_is_not_used_again(delivered, tmp_path, caplog):
    from edged.upload.bota.target import URL_MARGIN_S

    with BotaServer({TOKEN}, url_ttl_s=int(URL_MARGIN_S) - 20) as server:
        server.s3.gate.fail_next(1, 500)  # the first PUT fails; its URL has < URL_MARGIN_S left
        with caplog.at_level(logging.WARNING, logger="edged"), Rig(tmp_path, delivered, server) as rig:
            wait_until(rig.settled, 60, "delivered")
        assert rig.states() == ["delivered", "delivered"]
        assert server.count("/upload-url") == 7, "a new URL rather than one that may expire mid-upload"
        assert not [p for p in server.s3.gate.puts if p.code == "AccessDenied"]
    # Storage's XML error is read into its code and message for the operator.
    assert any("upload part01-video: HTTP 500: InternalError: injected" in r.getMessage() for r in caplog.records)


def test_a_storage_403_that_is_not_expiry_retries_with_a_new_url_and_does_not_pause(delivered, tmp_path, server):
    server.s3.gate.fail_next(1, 403, "SignatureDoesNotMatch")
    with Rig(tmp_path, delivered, server) as rig:
        wait_until(rig.settled, 60, "delivered")
    assert rig.states() == ["delivered", "delivered"] and not rig.alarms.get(ALARM_PAUSED)
    assert server.count("/upload-url") == 7, "the refused URL was replaced"


# --- crash between steps ----------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import random, sys, time
    sys.path.insert(0, {repo!r})
    from edged.config import schema as config
    from edged.upload.outbox import Outbox
    from edged.core.paths import StatePaths
    from edged.upload.policy import RetryPolicy
    from edged.upload.targets import build_targets
    from edged.upload.uploader import Uploader
    s = config.load({cfg!r})
    ob = Outbox(StatePaths(s.state_dir).outbox, targets=s.upload.targets)
    Uploader(ob, build_targets(s), RetryPolicy.from_settings(s.upload, random.Random(1))).start()
    time.sleep(3600)
""")


@pytest.mark.parametrize("cut", ["after two media", "during complete"])
def test_kill_9_between_steps_resumes_and_completes_once(delivered, tmp_path, server, cut):
    rig = Rig(tmp_path, delivered, server)  # queues the clip; its uploader is not started
    rig.outbox.close()
    cfg = tmp_path / "edged.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        [device]
        id = "{DEVICE}"
        [storage]
        dir = "{rig.state}"
        [upload]
        targets = ["bota"]
        retry_base_seconds = 0.1
        [upload.bota]
        base_url = "{server.url}"
        token_file = "{rig.token_file}"
    """)
    )
    if cut == "after two media":  # the third upload-url request is answered never: killed mid-step
        server.stall_next(1, 60, path="/upload-url", skip=2)
        reached = lambda: server.count("/upload-url") == 3  # noqa: E731
    else:  # the server completes the recording, the answer never arrives
        server.stall_next(1, 60, path="/complete")
        reached = lambda: server.count("/complete") == 1  # noqa: E731
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(repo=str(REPO), cfg=str(cfg))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(reached, 60, f"the child reached the cut ({cut})")
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        _, err = child.communicate(timeout=10)
    assert TOKEN not in err
    puts_before = [p.key for p in server.s3.gate.puts if p.status == 200]
    with Rig(tmp_path, delivered, server) as again:  # a fresh Outbox object on the same file
        wait_until(again.settled, 60, "delivered after the restart")
    assert again.states() == ["delivered", "delivered"]
    assert again.outbox.deliveries()[0].resends == 1, "the cut-off delivery is counted as resent"
    assert server.count("/v1/recordings") == 1, "the recording was created once"
    (rec,) = server.recordings.values()
    assert rec.completed == 1, "and completed once"
    uploaded = [p.key for p in server.s3.gate.puts if p.status == 200]
    assert sorted(uploaded) == sorted(set(uploaded)), "no media PUT twice"
    assert set(puts_before) <= set(uploaded) and len(set(uploaded)) == 6
    if cut == "after two media":
        assert len(puts_before) == 2 and server.count("/upload-url") == 7
        assert server.count("/complete") == 1
        orphan = [m for m in rec.media.values() if not m.uploaded]
        assert len(orphan) == 1, "the media record whose answer was lost stays empty (at-least-once)"
    else:
        assert server.count("/complete") == 2 and server.count("/complete", 409) == 1, (
            "the repeated complete is answered 409 and taken as done"
        )
        assert server.count("/upload-url") == 6


# --- pieces -------------------------------------------------------------------------------------------


def test_an_outbox_from_before_the_progress_table_gains_it(tmp_path):
    old_schema = _SCHEMA.split("-- A multi-step target's progress")[0]
    assert "progress" not in old_schema.lower().replace("-- a multi-step", "")
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute("INSERT INTO parts VALUES (1, 'c1', 1, '/x.webm', 10, 1000, 'ab', 10, 0, 0)")
    db.execute("INSERT INTO deliveries (part_id, target) VALUES (1, 'bota')")
    db.commit()
    db.close()
    ob = Outbox(path, targets=["bota"])
    assert [d.state for d in ob.deliveries()] == ["queued"]
    ob.record_progress("c1", "bota", "recording", "rec_1")
    ob.close()
    assert Outbox(path).progress("c1", "bota") == {"recording": "rec_1"}


def test_config_requires_a_readable_token(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    base = {"storage": {"dir": str(tmp_path)}, "upload": {"targets": ["bota"]}}
    with pytest.raises(config.ConfigError) as e:
        config.from_mapping(base)
    assert (
        "upload.bota.token_file",
        "must name the file holding the API key or device token (or run under systemd with a bota_token credential)",
    ) in e.value.problems
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(config.ConfigError) as e:
        config.from_mapping(
            base
            | {"upload": {"targets": ["bota"], "bota": {"token_file": str(tmp_path / "empty"), "base_url": "ftp://x"}}}
        )
    keys = dict(e.value.problems)
    assert "is empty" in keys["upload.bota.token_file"] and "http(s) URL" in keys["upload.bota.base_url"]
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "bota_token").write_text("tok_1234\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    s = config.from_mapping(base)
    assert config.token_path(s.upload.bota) == tmp_path / "creds" / "bota_token"


def test_an_mp4_over_the_byte_limit_is_encoded_again_smaller(delivered, tmp_path):
    part = Path(max(delivered.parts, key=lambda p: p.bytes).path)
    first = tmp_path / "full.mp4"
    media.to_mp4(part, first)
    limit = int(first.stat().st_size * 0.8)
    small = tmp_path / "small.mp4"
    media.to_mp4(part, small, max_bytes=limit)
    assert small.stat().st_size <= limit
    with av.open(str(small)) as f:
        assert sum(1 for _ in f.decode(video=0)) == sum(1 for _ in av.open(str(part)).decode(video=0))
    with pytest.raises(media.MediaError):
        media.to_mp4(part, tmp_path / "never.mp4", max_bytes=2000)
    assert not (tmp_path / "never.mp4").exists() and not list(tmp_path.glob(".*.tmp"))


def test_media_are_made_in_a_low_priority_child_and_not_again(delivered, tmp_path):
    part = Path(delivered.parts[0].path)
    out = tmp_path / "m"
    probe = tmp_path / "probe.py"
    # The child's own scheduling, as it sets it before doing any work.
    probe.write_text(
        "import os, sys\nsys.argv=['x']\nfrom edged.upload.bota.media import _lower_priority\n_lower_priority()\n"
        "print(os.sched_getscheduler(0) == getattr(os, 'SCHED_IDLE', -1) or os.nice(0) == 19)\n"
    )
    out_run = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, cwd=str(REPO))
    assert out_run.stdout.strip() == "True", out_run.stderr
    d = media.derive(part, out, [0, 1500])
    assert d.encoder in ("libx264", "libopenh264", "mpeg4") and d.audio is not None and len(d.stills) == 2
    stamp = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = media.derive(part, out, [0, 1500])
    assert again.encoder == "" and {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamp, "nothing made twice"


def test_the_storage_in_front_of_moto_checks_presigned_urls_as_s3_does(server):
    import httpx

    s3 = server.s3
    url = s3.presign_put("k/one.mp4", "video/mp4", 5, 3600)
    with httpx.Client() as c:
        ok_headers = {"Content-Type": "video/mp4", "Content-Length": "5"}
        assert c.put(url, content=b"hello", headers={"Content-Type": "text/plain"}).status_code == 403
        assert c.put(url, content=iter([b"hello"]), headers={"Content-Type": "video/mp4"}).status_code == 501
        assert c.put(url, content=b"hello!", headers={"Content-Type": "video/mp4"}).status_code == 403
        bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert c.put(bad, content=b"hello", headers=ok_headers).status_code == 403
        assert s3.size("k/one.mp4") is None, "nothing stored by a refused PUT"
        assert c.put(url, content=iter([b"hello"]), headers=ok_headers).status_code == 200
        assert s3.get("k/one.mp4") == (b"hello", "video/mp4")
        short = s3.presign_put("k/two.mp4", "video/mp4", 5, 1)
        time.sleep(2.1)
        r = c.put(short, content=b"hello", headers=ok_headers)
        assert r.status_code == 403 and "Request has expired" in r.text
    codes = [p.code for p in s3.gate.puts]
    assert codes == [
        "SignatureDoesNotMatch",
        "NotImplemented",
        "SignatureDoesNotMatch",
        "SignatureDoesNotMatch",
        "",
        "AccessDenied",
    ]
