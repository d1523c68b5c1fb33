"""Which index commits are fsynced (issue 15, SD-card wear): a segment's ``begin`` row is not (it
becomes durable with the next durable commit; reconcile adopts a ``.part`` without a row), every
other commit is, and the connection is back to ``synchronous=FULL`` after a non-durable one, even
one that failed: a hold written after it must survive a power cut."""

from __future__ import annotations

import sqlite3

import pytest

from edged.footage.index import Index

FULL, NORMAL = 2, 1


def synchronous_of_each_commit(idx: Index, action) -> list[int]:
    """``PRAGMA synchronous`` in force at each COMMIT ``action`` makes (read by a trace callback)."""
    seen: list[int] = []
    db = idx._db

    def trace(sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            seen.append(current[0])
        elif sql.strip().upper().startswith("PRAGMA SYNCHRONOUS="):
            current[0] = {"FULL": FULL, "NORMAL": NORMAL}[sql.split("=", 1)[1].strip().upper()]

    current = [db.execute("PRAGMA synchronous").fetchone()[0]]
    db.set_trace_callback(trace)
    try:
        action()
    finally:
        db.set_trace_callback(None)
    return seen


def test_begin_is_the_one_commit_without_an_fsync(tmp_path):
    idx = Index(tmp_path / "index.sqlite")
    try:
        assert synchronous_of_each_commit(idx, lambda: idx.begin(1, "a.webm", "boot", 1, 2, True)) == [NORMAL]
        assert idx._db.execute("PRAGMA synchronous").fetchone()[0] == FULL
        assert synchronous_of_each_commit(idx, lambda: idx.finish(1, "final", 10, 100, 5, 9, "ab")) == [FULL]
        assert synchronous_of_each_commit(idx, lambda: idx.hold("clip", [1])) == [FULL]
        assert idx.get(1).state == "final"
    finally:
        idx.close()


def test_a_failed_begin_leaves_commits_durable(tmp_path):
    idx = Index(tmp_path / "index.sqlite")
    try:
        idx.begin(1, "a.webm", "boot", 1, 2, True)
        with pytest.raises(sqlite3.IntegrityError):
            idx.begin(1, "a.webm", "boot", 1, 2, True)  # the same row again
        assert idx._db.execute("PRAGMA synchronous").fetchone()[0] == FULL
        assert synchronous_of_each_commit(idx, lambda: idx.hold("clip", [1])) == [FULL]
    finally:
        idx.close()
