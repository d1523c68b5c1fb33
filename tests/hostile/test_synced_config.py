"""A synced ``edged.toml`` may never stop recording, redirect or reduce evidence (issue 12).

Against a real ``edged run`` child (tests/hostile/harness.py) with a synced folder, each test
plants what a hostile or broken sync party would: a file nested 3,000 deep (at start and while
running), ``edged.toml`` as a FIFO, a link to a FIFO, to ``/dev/zero``, to a segment, a huge or
non-UTF-8 file, an unsigned file that would keep less evidence or send it to another account, a
replayed or foreign signed file, a symlinked ``status/``. Each time: the daemon records on
(frames grow), the file is rejected once with its reason in ``status/config.json`` and one log
line, and the evidence (segments, clips) is what it was.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.config import sign as configsign
from tests.hostile.harness import DaemonUnderTest, assert_evidence_kept, evidence_snapshot

DEEP = b"a = " + b"[" * 3000 + b"]" * 3000 + b"\n"


def plant(d: DaemonUnderTest, make: Callable[[Path], Any], *, old: bool = False) -> None:
    """Replace ``<sync>/edged.toml`` with what ``make`` puts there (the way a sync tool does:
    under a temporary name, then a rename)."""
    tmp = d.sync / ".syncthing.edged.toml.tmp"
    make(tmp)
    if old:  # arrived long ago: judged at start, not left to the watcher
        then = time.time() - 600
        os.utime(tmp, (then, then), follow_symlinks=False)
    os.replace(tmp, d.sync / "edged.toml")


def write(data: bytes) -> Callable[[Path], Any]:
    return lambda p: p.write_bytes(data)


def rejections(d: DaemonUnderTest) -> list[str]:
    return [line for line in d.log().splitlines() if re.search(r"synced config \S+ rejected", line)]


def wait_rejected(d: DaemonUnderTest, key: str, words: str, count_before: int) -> dict[str, Any]:
    """Until status/config.json says rejected naming ``key`` (a prefix) with ``words``; then one
    log line for it, and still one a few polls later."""

    def rejected() -> dict[str, Any] | None:
        st = d.sync_status("config.json")
        if (
            st
            and st["state"] == "rejected"
            and any(e["key"].startswith(key) and words in e["reason"] for e in st["errors"])
        ):
            return st
        return None

    st = d.wait(rejected, what=f"config rejected naming {key} ({words})")
    time.sleep(1.0)  # five polls
    assert len(rejections(d)) == count_before + 1, rejections(d)[count_before:]
    return st


def no_tracebacks(d: DaemonUnderTest) -> None:
    log = d.log()
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]


# --- files that are not configs -----------------------------------------------------------------


def test_deep_nesting_at_start_and_while_running(tmp_path: Path) -> None:
    d = DaemonUnderTest(tmp_path)
    plant(d, write(DEEP), old=True)
    with d:
        d.start()  # records: start-up neither died (a crash loop under Restart=always) nor hung
        st = d.sync_status("config.json")
        assert st and st["state"] == "rejected" and "deeper" in st["errors"][0]["reason"], st
        assert len(rejections(d)) == 1
        d.wait_frames_grow()
        before = evidence_snapshot(d.state)
        plant(d, write(b"x." * 3000 + b"y = 1\n"))  # dotted keys nest without a bracket
        wait_rejected(d, "x.x.x", "nested deeper", 1)
        plant(d, write(DEEP + b"# resynced\n"))
        wait_rejected(d, "<file>", "deeper", 2)
        d.wait_frames_grow()
        assert_evidence_kept(before, evidence_snapshot(d.state))
        no_tracebacks(d)
        assert d.stop() == 0


def test_fifo_links_and_huge_files_neither_block_nor_crash(tmp_path: Path) -> None:
    d = DaemonUnderTest(tmp_path)
    plant(d, lambda p: os.mkfifo(p), old=True)
    with d:
        d.start()  # a FIFO at start: READY all the same
        d.wait(
            lambda: (st := d.sync_status("config.json")) and "FIFO" in st["errors"][0]["reason"],
            what="the FIFO rejected",
        )
        d.wait_recording(segments=2)
        segment = min((d.state / "segments").glob("*.webm"))
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        before = evidence_snapshot(d.state)
        cases = [
            (lambda p: p.symlink_to(fifo), "<file>", "symbolic link"),
            (lambda p: p.symlink_to("/dev/zero"), "<file>", "symbolic link"),
            (lambda p: p.symlink_to(segment), "<file>", "symbolic link"),
            (write(b"#" * (1 << 20)), "<file>", "bytes"),
            (write(b"[camera]\nbitrate = 40000\xff\n"), "<file>", "UTF-8"),
            (lambda p: os.mkfifo(p), "<file>", "FIFO"),
        ]
        for make, key, words in cases:
            n = len(rejections(d))
            plant(d, make)
            wait_rejected(d, key, words, n)
            d.wait_frames_grow(10)
        assert_evidence_kept(before, evidence_snapshot(d.state))
        assert segment.is_file() and not segment.is_symlink()
        no_tracebacks(d)
        assert d.stop() == 0


# --- unsigned files that would keep less or send it elsewhere -----------------------------------

REDUCING = [
    (b"[storage]\nmin_free_bytes = 1000000000000000000\n", "storage.min_free_bytes"),
    (b"[storage]\nmax_bytes = 20000000\n", "storage.max_bytes"),
    (b"[clips]\npre_roll_seconds = 0.0\npost_roll_seconds = 0.0\n", "clips.pre_roll_seconds"),
    (b"[upload]\nbandwidth_kbps = 1\n", "upload.bandwidth_kbps"),
    (
        b'[upload]\ntargets = ["sonoran_v2"]\n[upload.sonoran_v2]\naccount_uuid = "someone-else"\n',
        "upload.sonoran_v2.account_uuid",
    ),
    (
        b'[upload.sonoran_legacy]\ncommunity = "c"\naccount = "a"\nsession_id = "s"\nusername = "u"\n',
        "upload.sonoran_legacy.community",
    ),
]


def test_unsigned_files_that_would_reduce_or_redirect_evidence_are_refused(tmp_path: Path) -> None:
    d = DaemonUnderTest(tmp_path)
    with d:
        d.start()
        d.wait_recording(segments=2)
        before = evidence_snapshot(d.state)
        video = d.sync / "their-video.webm"
        video.write_bytes(b"not ours")
        foreign = (
            f'[camera]\nsource = "file"\ndevice = "{video}"\n[audio]\nsource = "none"\n[device]\nid = "someone-else"\n'
        ).encode()
        for data, key in [*REDUCING, (foreign, "camera.source")]:
            n = len(rejections(d))
            plant(d, write(data))
            st = wait_rejected(d, key, "", n)
            assert st["applied_version"] is None
        # Nothing of them runs: marks still make clips, the ring kept everything.
        event = d.mark("after the hostile files")
        d.wait_built(event)
        d.wait_frames_grow()
        assert_evidence_kept(before, evidence_snapshot(d.state))
        assert d.stop() == 0
        # After a restart, still our camera, our id, our account.
        d.start()
        st = d.status()
        assert st is not None and st["video_source"] != "file" and "their-video" not in str(st)
        assert d.sync_status("config.json")["device"] == "hostile-test"
        d.wait_frames_grow()
        no_tracebacks(d)
        assert d.stop() == 0


# --- signed files: replays and other devices ----------------------------------------------------


def test_a_replayed_or_foreign_signed_config_is_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    d = DaemonUnderTest(tmp_path, {"sync": {"fleet_public_key": configsign.public_key_b64(key.public_key())}})
    good = configsign.sign(b"[clips]\npre_roll_seconds = 12.0\n", key, serial=1000)
    older = configsign.sign(b"[clips]\npre_roll_seconds = 0.0\npost_roll_seconds = 1.0\n", key, serial=999)
    foreign = configsign.sign(b"[clips]\npre_roll_seconds = 11.0\n", key, serial=2000, devices=["cam-9"])
    old_format = configsign.PREFIX + base64.b64encode(key.sign(b"[clips]\n")) + b"\n[clips]\n"
    with d:
        d.start()
        plant(d, write(good))
        d.wait(lambda: (st := d.sync_status("config.json")) and st["state"] == "applied", what="signed applied")
        applied = d.sync_status("config.json")["applied_version"]
        before = evidence_snapshot(d.state)
        for data, key_named, words in (
            (older, "<serial>", "not above 1000"),
            (foreign, "<devices>", "cam-9"),
            (old_format, "<signature>", "sign it again"),
        ):
            n = len(rejections(d))
            plant(d, write(data))
            wait_rejected(d, key_named, words, n)
        assert d.stop() == 0
        # The serial outlives the process: the old file is still a replay after a restart, and the
        # daemon comes up on the last good signed config.
        plant(d, write(older), old=True)
        d.start()
        st = d.sync_status("config.json")
        assert st["state"] == "rejected" and st["errors"][0]["key"] == "<serial>", st
        assert st["applied_version"] == applied
        d.wait_frames_grow()
        assert_evidence_kept(before, evidence_snapshot(d.state))
        no_tracebacks(d)
        assert d.stop() == 0


# --- the status folder ------------------------------------------------------------------------


def test_a_symlinked_status_folder_is_never_written_through(tmp_path: Path) -> None:
    d = DaemonUnderTest(tmp_path)
    elsewhere = tmp_path / "not-status"
    elsewhere.mkdir()
    (d.sync / "status").symlink_to(elsewhere)
    with d:
        d.start()
        before = evidence_snapshot(d.state)
        plant(d, write(b"[camera]\nbitrate = 250000\n"))
        d.wait(
            lambda: (s := d.status()) and (s.get("synced_config") or {}).get("state") == "applied",
            what="the config applied although its status cannot be written",
        )
        time.sleep(1.0)
        assert list(elsewhere.iterdir()) == [], "written through the link"
        assert d.log().count("config status not written") == 1, "said once, not once per poll"
        d.wait_frames_grow()
        assert_evidence_kept(before, evidence_snapshot(d.state))
        no_tracebacks(d)
        assert d.stop() == 0


def test_a_symlinked_status_folder_raises_the_alarm(tmp_path: Path) -> None:
    d = DaemonUnderTest(tmp_path)
    elsewhere = tmp_path / "not-status"
    elsewhere.mkdir()
    (d.sync / "status").symlink_to(elsewhere)
    with d:
        d.start()
        plant(d, write(b"[camera]\nbitrate = 250000\n"))
        d.wait(
            lambda: "sync_folder_refused" in ((d.status() or {}).get("alarms") or []),
            timeout=10,
            what="alarm sync_folder_refused",
        )
        (d.sync / "status").unlink()
        d.wait(
            lambda: "sync_folder_refused" not in ((d.status() or {}).get("alarms") or []),
            timeout=10,
            what="alarm cleared",
        )
        assert d.stop() == 0
