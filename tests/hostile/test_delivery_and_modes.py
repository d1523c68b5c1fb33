"""Hostile input, class 1 and 5: links planted in a delivery folder, and files other users can read.

The directory target's folder may be shared with whoever collects the clips (a sync tool, a USB
stick passed around). Whatever is planted there, edged writes only its own files inside real
folders, never through a link into evidence; and everything edged keeps is owner-only, with or
without systemd's ``UMask=``.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.hostile.harness import (
    DaemonUnderTest,
    accessible,
    assert_evidence_kept,
    assert_no_links,
    assert_stores_sound,
    evidence_snapshot,
    sha256_of,
)


def _delivered(d: DaemonUnderTest, share, event_id: str) -> bool:
    folder = share / event_id
    manifest = folder / "manifest.json"
    return folder.is_dir() and not folder.is_symlink() and manifest.is_file() and not manifest.is_symlink()


def test_a_delivery_folder_swapped_for_a_link_is_refused_then_used_once_real(tmp_path):
    share = tmp_path / "share"
    d = DaemonUnderTest(tmp_path, {"upload": {"directory": {"path": str(share)}}})
    with d:
        d.start()
        # The whole delivery folder is a link into the segments: nothing may be written there.
        os.symlink(d.state / "segments", share)
        segments_before = set(os.listdir(d.state / "segments"))
        event = d.mark("link planted at the delivery folder")
        d.wait_built(event)
        d.wait(
            lambda: (
                "delivery folder refused" in d.log()
                or any(
                    "refused" in str(v.get("last_reason", ""))
                    for v in (d.status() or {}).get("uploads", {}).values()
                    if isinstance(v, dict)
                )
            ),
            what="the delivery refused",
        )
        before = evidence_snapshot(d.state)
        d.wait_frames_grow()
        stray = {
            n
            for n in set(os.listdir(d.state / "segments")) - segments_before
            if not n.endswith((".webm", ".webm.part"))
        }
        assert not stray, f"the directory target wrote into the segments folder: {stray}"
        assert not (d.state / "segments" / event).exists()

        # Made a real folder again, with links planted at the names the copy will use.
        share.unlink()
        (share / event).mkdir(parents=True)
        clip = d.state / "clips" / event
        part = sorted(clip.glob("*.webm"))[0]
        victim = sorted((d.state / "segments").glob("*.webm"))[0]
        os.symlink(victim, share / event / part.name)
        os.symlink(d.state / "index.sqlite", share / event / "manifest.json")
        d.wait(lambda: _delivered(d, share, event), what="the clip delivered into the real folder")
        for name in (part.name, "manifest.json"):
            assert not (share / event / name).is_symlink(), f"{name}: the planted link was written through"
        assert sha256_of(share / event / part.name) == sha256_of(part)
        assert d.stop() == 0
    after = evidence_snapshot(d.state)
    assert_evidence_kept(before, after, evicted_ok=True)
    assert_stores_sound(d.state)
    assert_no_links(d.state)


def test_a_clip_folder_planted_as_a_link_is_refused(tmp_path):
    share = tmp_path / "share"
    d = DaemonUnderTest(tmp_path, {"upload": {"directory": {"path": str(share)}}})
    with d:
        d.start()
        os.symlink(d.state / "segments", share)  # hold deliveries while the clip id becomes known
        event = d.mark()
        d.wait_built(event)
        share.unlink()
        share.mkdir()
        os.symlink(d.state / "clips" / event, share / event)  # into the clip's own folder
        clip_before = evidence_snapshot(d.state)
        d.wait(
            lambda: "delivery_folder_refused" in ((d.status() or {}).get("alarms") or []),
            what="the clip folder refused, with its alarm",
        )
        d.wait_frames_grow()
        (share / event).unlink()
        d.wait(lambda: _delivered(d, share, event), what="delivered once the folder is real")
        d.wait(
            lambda: "delivery_folder_refused" not in ((d.status() or {}).get("alarms") or []),
            what="the alarm cleared by the delivery",
        )
        assert d.stop() == 0
    assert_evidence_kept(clip_before, evidence_snapshot(d.state), evicted_ok=True)
    assert_stores_sound(d.state)


def test_everything_kept_is_owner_only_without_systemd(tmp_path):
    """A plain ``edged run`` from a shell whose umask is 022, over a state folder an earlier
    version left 0755/0644: footage, clips, delivered copies, stores and status end owner-only."""
    d = DaemonUnderTest(tmp_path)
    (d.state / "segments").mkdir(parents=True)
    os.chmod(d.state, 0o755)
    os.chmod(d.state / "segments", 0o755)
    (d.state / "old-notes.txt").write_text("left by an earlier version")
    os.chmod(d.state / "old-notes.txt", 0o644)
    with d:
        d.start(umask=0o022)
        event = d.mark()
        d.wait(lambda: _delivered(d, d.state / "delivered", event), what="the clip delivered")
        loose = accessible(d.state, 0o077)
        assert d.stop() == 0
    assert not loose, "readable by other users while running:\n" + "\n".join(loose)
    loose = accessible(d.state, 0o077)
    assert not loose, "readable by other users after the stop:\n" + "\n".join(loose)


@pytest.fixture(autouse=True)
def _cleanup(tmp_path):
    yield
    shutil.rmtree(tmp_path / "share", ignore_errors=True)
