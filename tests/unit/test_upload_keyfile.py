"""keyfile.KeyFile: the key re-read when its file changes (stat), what the budget and a paused
target follow; on real files in a temporary folder."""

from __future__ import annotations

import os

from edged.upload import keyfile
from edged.upload.budget import key_fingerprint
from edged.upload.keyfile import KeyFile


def test_the_key_is_read_again_when_its_file_changes_and_not_otherwise(tmp_path, monkeypatch):
    path = tmp_path / "api.key"
    path.write_text("first-key\n")
    k = KeyFile(path)
    assert k.read() == "first-key" and k.fingerprint() == key_fingerprint("first-key")
    reads = []
    real = keyfile._read
    monkeypatch.setattr(keyfile, "_read", lambda p: reads.append(p) or real(p))
    for _ in range(5):
        assert k.read() == "first-key"
    assert reads == [], "unchanged: a stat, no read"
    new = tmp_path / "api.key.tmp"
    new.write_text("second-key\n")
    new.rename(path)  # replaced by rename, as editors and `install` do
    assert k.read() == "second-key" and len(reads) == 1
    path.write_text("third--key\n")  # rewritten in place
    assert k.read() == "third--key"


def test_a_same_size_rewrite_within_the_clock_tick_is_seen_within_the_reread_interval(tmp_path, monkeypatch):
    path = tmp_path / "api.key"
    path.write_text("aaaa-key\n")
    k = KeyFile(path)
    assert k.read() == "aaaa-key"
    st = os.stat(path)
    path.write_text("bbbb-key\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and mtime (a coarse clock)
    monkeypatch.setattr(keyfile, "_signature", lambda p: ("same",))
    k._seen = ("same",)
    monkeypatch.setattr(keyfile, "REREAD_S", 0.0)
    assert k.read() == "bbbb-key"


def test_a_missing_or_unreadable_key_file_is_no_key(tmp_path):
    assert KeyFile(None).read() == ""
    k = KeyFile(tmp_path / "absent")
    assert k.read() == "" and k.fingerprint() == key_fingerprint("")
    (tmp_path / "absent").mkdir()  # a folder where the key should be
    assert k.read() == ""


def test_a_key_file_that_is_a_fifo_or_huge_is_no_key_and_never_blocks(tmp_path):
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)  # nobody writes: a plain open would wait for ever
    assert KeyFile(fifo).read() == ""
    huge = tmp_path / "key.huge"
    huge.write_bytes(b"k" * (1 << 20))
    assert KeyFile(huge).read() == ""
    link = tmp_path / "key.link"  # an administrator's link to the real file is followed
    (tmp_path / "key.real").write_text("real-key\n")
    link.symlink_to(tmp_path / "key.real")
    assert KeyFile(link).read() == "real-key"
