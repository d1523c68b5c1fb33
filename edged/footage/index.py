"""The segment index: SQLite in WAL mode, one row per segment, plus holds and clock records.

States of a segment row:
  writing   the ``.part`` file is being written (after a crash: salvage it)
  final     finished normally
  salvaged  recovered from a ``.part`` cut off by a crash or power cut
  evicted   deleted by the ring buffer to make room (the row stays: "footage overwritten")
  lost      the file vanished or could not be recovered

*Audio gaps* are the spans of a boot's timeline whose sound was not recorded (``recording.audio_gate``:
no event open with ``audio.pre_event`` off, or muted), one row per span, written only when the
gate switches; an open span has no end yet. *Audio kept* says from when a boot's gaps are known
(footage before it, of an older edged or an index rebuilt from the folder, is "unknown").

A *hold* protects a segment from eviction; several owners may hold the same segment (a marked
clip, an upload waiting, a recall). A *range hold* protects every segment of a boot that overlaps
a monotonic time range, including segments not yet recorded (an event's post-roll). Holds are
owned by the modules that set them, which re-assert them on start, so an index rebuilt from the
folder does not stay unprotected.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from edged.core.clock import ClockStep
from edged.core.db import Store

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    seq            INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    state          TEXT NOT NULL CHECK (state IN ('writing','final','salvaged','evicted','lost')),
    boot_id        TEXT NOT NULL,
    mono_start_ns  INTEGER NOT NULL,
    wall_start_ns  INTEGER NOT NULL,
    clock_synced   INTEGER NOT NULL,
    duration_ns    INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    frames         INTEGER NOT NULL DEFAULT 0,
    audio_packets  INTEGER NOT NULL DEFAULT 0,
    sha256         TEXT,
    note           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS segments_state ON segments(state, seq);
CREATE TABLE IF NOT EXISTS holds (
    owner TEXT NOT NULL,
    seq   INTEGER NOT NULL REFERENCES segments(seq),
    PRIMARY KEY (owner, seq)
);
CREATE INDEX IF NOT EXISTS holds_seq ON holds(seq);
CREATE TABLE IF NOT EXISTS range_holds (
    owner         TEXT PRIMARY KEY,
    boot_id       TEXT NOT NULL,
    start_mono_ns INTEGER NOT NULL,
    end_mono_ns   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS boot_clock (
    boot_id        TEXT PRIMARY KEY,
    offset_ns      INTEGER NOT NULL,
    synced         INTEGER NOT NULL,
    updated_mono_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audio_gaps (
    id            INTEGER PRIMARY KEY,
    boot_id       TEXT NOT NULL,
    start_mono_ns INTEGER NOT NULL,
    end_mono_ns   INTEGER,
    reason        TEXT NOT NULL CHECK (reason IN ('pre-event','muted'))
);
CREATE INDEX IF NOT EXISTS audio_gaps_boot ON audio_gaps(boot_id, start_mono_ns);
CREATE TABLE IF NOT EXISTS audio_kept (
    boot_id      TEXT PRIMARY KEY,
    from_mono_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clock_steps (
    id               INTEGER PRIMARY KEY,
    boot_id          TEXT NOT NULL,
    mono_ns          INTEGER NOT NULL,
    before_offset_ns INTEGER NOT NULL,
    after_offset_ns  INTEGER NOT NULL,
    synced           INTEGER NOT NULL
);
"""

STORED = ("final", "salvaged")  # states whose file is on disk and usable


class IndexCorrupt(Exception):
    """The index file is not a usable database."""


class IndexUnavailable(Exception):
    """A sound index cannot be opened now (disk full, read-only, I/O error, locked): it must be left
    where it is, not moved aside and rebuilt."""


def is_corruption(exc: sqlite3.Error) -> bool:
    """Does SQLite say the file itself is damaged? Only SQLITE_CORRUPT and SQLITE_NOTADB do (their
    extended codes included); a full disk or an I/O error is no reason to give up an index."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class Segment(NamedTuple):
    seq: int
    name: str
    state: str
    boot_id: str
    mono_start_ns: int
    wall_start_ns: int
    clock_synced: bool
    duration_ns: int
    bytes: int
    frames: int
    audio_packets: int
    sha256: str | None
    note: str
    #: Best wall-clock start: monotonic start + the boot's latest synchronised offset
    #: (corrects footage recorded before NTP set the clock); else the observed wall start.
    best_wall_start_ns: int
    held: bool

    @property
    def best_wall_end_ns(self) -> int:
        return self.best_wall_start_ns + self.duration_ns


class AudioGap(NamedTuple):
    """A span of one boot's timeline recorded without sound, and why (``core.states.AudioOff``)."""

    boot_id: str
    start_mono_ns: int
    #: None: still open (being recorded, or the run ended within it)
    end_mono_ns: int | None
    reason: str


#: SQL: is segment ``s`` held, by a per-segment hold or by a time range it overlaps?
_HELD = """(EXISTS (SELECT 1 FROM holds h WHERE h.seq = s.seq) OR EXISTS (SELECT 1 FROM range_holds r
    WHERE r.boot_id = s.boot_id AND r.start_mono_ns < s.mono_start_ns + MAX(s.duration_ns, 1)
      AND r.end_mono_ns > s.mono_start_ns))"""

_SELECT = f"""
SELECT s.seq, s.name, s.state, s.boot_id, s.mono_start_ns, s.wall_start_ns, s.clock_synced,
       s.duration_ns, s.bytes, s.frames, s.audio_packets, s.sha256, s.note,
       CASE WHEN b.synced = 1 THEN s.mono_start_ns + b.offset_ns ELSE s.wall_start_ns END,
       {_HELD}
FROM segments s LEFT JOIN boot_clock b ON b.boot_id = s.boot_id
"""


def _row(r: tuple) -> Segment:
    return Segment(
        r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], r[10], r[11], r[12], r[13], bool(r[14])
    )


class Index(Store):
    def __init__(self, path: Path, read_only: bool = False, exclusive: bool = False) -> None:
        self._unmarked_evictions: set[int] = set()
        if read_only:  # the operator's view: no schema, no check, no write
            super().__init__(path, _SCHEMA, read_only=True)
            return
        try:
            super().__init__(path, _SCHEMA, exclusive=exclusive)
            with self.tx() as db:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                raise IndexCorrupt(f"{path}: {exc}") from exc
            raise IndexUnavailable(f"{path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._unmarked_evictions and not self.read_only:
                with contextlib.suppress(sqlite3.Error):  # else the next start finds the files missing: 'lost'
                    self.retry_evictions()
            super().close()

    def _check(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise IndexCorrupt(f"{self.path}: quick_check says {check}")

    _tx = Store.tx

    # --- segments ---------------------------------------------------------------------------

    def next_seq(self) -> int:
        with self._lock:
            return (self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM segments").fetchone()[0]) + 1

    def begin(
        self, seq: int, name: str, boot_id: str, mono_start_ns: int, wall_start_ns: int, clock_synced: bool
    ) -> None:
        """The row of a segment starting to be written, committed without an fsync: it becomes
        durable with the next durable commit (at the latest the segment's own ``finish``). Were
        it lost to a power cut, the next start would find the ``.part`` without a row and
        salvage and adopt it from its tags (``recording.reconcile``), as it does any file
        without a row; one WAL fsync less per segment is one partly filled page less written
        twice (SD-card wear, issue 15)."""
        with self._tx(durable=False) as db:
            db.execute(
                "INSERT INTO segments (seq, name, state, boot_id, mono_start_ns, wall_start_ns, clock_synced)"
                " VALUES (?, ?, 'writing', ?, ?, ?, ?)",
                (seq, name, boot_id, mono_start_ns, wall_start_ns, int(clock_synced)),
            )

    def finish(
        self,
        seq: int,
        state: str,
        duration_ns: int,
        nbytes: int,
        frames: int,
        audio_packets: int,
        sha256: str,
        note: str = "",
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE segments SET state=?, duration_ns=?, bytes=?, frames=?, audio_packets=?, sha256=?,"
                " note=? WHERE seq=?",
                (state, duration_ns, nbytes, frames, audio_packets, sha256, note, seq),
            )

    def adopt(
        self,
        seq: int,
        name: str,
        state: str,
        boot_id: str,
        mono_start_ns: int,
        wall_start_ns: int,
        clock_synced: bool,
        duration_ns: int,
        nbytes: int,
        frames: int,
        audio_packets: int,
        sha256: str,
        note: str,
    ) -> None:
        """Insert a row for a file found on disk (index rebuilt or row missing)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO segments VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    seq,
                    name,
                    state,
                    boot_id,
                    mono_start_ns,
                    wall_start_ns,
                    int(clock_synced),
                    duration_ns,
                    nbytes,
                    frames,
                    audio_packets,
                    sha256,
                    note,
                ),
            )

    def set_state(self, seq: int, state: str, note: str | None = None) -> None:
        with self._tx() as db:
            if note is None:
                db.execute("UPDATE segments SET state=? WHERE seq=?", (state, seq))
            else:
                db.execute("UPDATE segments SET state=?, note=? WHERE seq=?", (state, note, seq))

    def evict_if_unheld(self, seq: int, remove_file: Callable[[], None]) -> bool:
        """Evict a stored, unheld segment: under the index lock (no hold can slip in between),
        check, remove the file, then mark the row. The file goes first because on a full disk
        the row update itself may be refused (SQLite needs room for its journal): then the row is
        remembered and marked by ``retry_evictions`` once there is room."""
        with self._lock:
            held_or_gone = not self._db.execute(
                f"SELECT 1 FROM segments s WHERE s.seq=? AND s.state IN ('final','salvaged') AND NOT {_HELD}", (seq,)
            ).fetchone()
            if held_or_gone:
                return False
            remove_file()
            try:
                self.mark_evicted_if_unheld(seq)
            except sqlite3.OperationalError:
                self._unmarked_evictions.add(seq)
            return True

    def _unmarked(self) -> tuple[str, tuple[int, ...]]:
        """SQL excluding the segments evicted whose rows are not marked yet: their files are gone."""
        seqs = tuple(sorted(self._unmarked_evictions))
        return (f" AND s.seq NOT IN ({','.join('?' * len(seqs))})" if seqs else ""), seqs

    def retry_evictions(self) -> None:
        with self._lock:
            for seq in sorted(self._unmarked_evictions):
                try:
                    with self._tx() as db:
                        db.execute(
                            "UPDATE segments SET state='evicted' WHERE seq=? AND state IN ('final','salvaged')", (seq,)
                        )
                except sqlite3.OperationalError:
                    return
                self._unmarked_evictions.discard(seq)

    def mark_evicted_if_unheld(self, seq: int) -> bool:
        """Atomically mark a stored, unheld segment evicted; False if someone holds it now."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE segments AS s SET state='evicted' WHERE s.seq=? AND s.state IN"
                f" ('final','salvaged') AND NOT {_HELD}",
                (seq,),
            )
            return cur.rowcount == 1

    def get(self, seq: int) -> Segment | None:
        with self._lock:
            r = self._db.execute(_SELECT + " WHERE s.seq=?", (seq,)).fetchone()
        return _row(r) if r else None

    def segments(self, states: Iterable[str] | None = None) -> list[Segment]:
        sql = _SELECT
        args: tuple[str, ...] = ()
        if states is not None:
            states = tuple(states)
            sql += f" WHERE s.state IN ({','.join('?' * len(states))})"
            args = states
        with self._lock:
            return [_row(r) for r in self._db.execute(sql + " ORDER BY s.seq", args)]

    def stored(self) -> list[Segment]:
        return self.segments(STORED)

    def eviction_candidates(self) -> list[Segment]:
        """Stored, unheld segments, oldest first."""
        with self._lock:
            unmarked, args = self._unmarked()
            rows = self._db.execute(
                _SELECT + f" WHERE s.state IN ('final','salvaged') AND NOT {_HELD}" + unmarked + " ORDER BY s.seq", args
            ).fetchall()
        return [_row(r) for r in rows]

    def boot_end_ns(self, boot_id: str) -> int:
        """End of the last footage recorded in a boot (0 if none)."""
        with self._lock:
            return self._db.execute(
                "SELECT COALESCE(MAX(mono_start_ns + duration_ns), 0) FROM segments WHERE boot_id=?", (boot_id,)
            ).fetchone()[0]

    def stored_bytes(self) -> int:
        with self._lock:
            unmarked, args = self._unmarked()
            return self._db.execute(
                "SELECT COALESCE(SUM(s.bytes),0) FROM segments s WHERE s.state IN"
                " ('final','salvaged','writing')" + unmarked,
                args,
            ).fetchone()[0]

    # --- holds ------------------------------------------------------------------------------

    def hold(self, owner: str, seqs: Iterable[int]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO holds VALUES (?, ?)", [(owner, s) for s in seqs])

    def release(self, owner: str, seqs: Iterable[int] | None = None) -> None:
        with self._tx() as db:
            if seqs is None:
                db.execute("DELETE FROM holds WHERE owner=?", (owner,))
            else:
                db.executemany("DELETE FROM holds WHERE owner=? AND seq=?", [(owner, s) for s in seqs])

    def held_bytes(self) -> int:
        with self._lock:
            return self._db.execute(
                f"SELECT COALESCE(SUM(s.bytes),0) FROM segments s WHERE s.state IN ('final','salvaged') AND {_HELD}"
            ).fetchone()[0]

    def hold_range(self, owner: str, boot_id: str, start_mono_ns: int, end_mono_ns: int) -> None:
        """Protect every segment of ``boot_id`` overlapping [start, end), recorded or not yet."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO range_holds VALUES (?,?,?,?) ON CONFLICT(owner) DO UPDATE SET"
                " boot_id=excluded.boot_id, start_mono_ns=excluded.start_mono_ns,"
                " end_mono_ns=excluded.end_mono_ns",
                (owner, boot_id, start_mono_ns, end_mono_ns),
            )

    def release_range(self, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM range_holds WHERE owner=?", (owner,))

    # --- audio gaps ---------------------------------------------------------------------------

    def audio_kept_from(self, boot_id: str, mono_ns: int) -> None:
        """The audio gate of ``boot_id`` runs from ``mono_ns`` (the first run of the boot counts);
        gaps of boots with no footage left are dropped (the table stays as small as the ring)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO audio_kept VALUES (?, ?)", (boot_id, mono_ns))
            live = "SELECT boot_id FROM segments WHERE state IN ('writing','final','salvaged')"
            db.execute(f"DELETE FROM audio_gaps WHERE boot_id != ? AND boot_id NOT IN ({live})", (boot_id,))
            db.execute(f"DELETE FROM audio_kept WHERE boot_id != ? AND boot_id NOT IN ({live})", (boot_id,))

    def audio_switch(self, boot_id: str, mono_ns: int, reason: str | None) -> None:
        """At ``mono_ns`` the open gap of the boot (if any) ends and, with a ``reason``, a new one
        begins: one transaction, written only when the gate switches."""
        with self._tx() as db:
            db.execute(
                "UPDATE audio_gaps SET end_mono_ns = MAX(start_mono_ns, ?) WHERE boot_id=? AND end_mono_ns IS NULL",
                (mono_ns, boot_id),
            )
            if reason is not None:
                db.execute(
                    "INSERT INTO audio_gaps (boot_id, start_mono_ns, end_mono_ns, reason) VALUES (?,?,NULL,?)",
                    (boot_id, mono_ns, reason),
                )

    def audio_gaps(self, boot_id: str, start_mono_ns: int, end_mono_ns: int) -> list[AudioGap]:
        """The boot's gaps overlapping [start, end), in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT boot_id, start_mono_ns, end_mono_ns, reason FROM audio_gaps WHERE boot_id=?"
                " AND start_mono_ns < ? AND (end_mono_ns IS NULL OR end_mono_ns > ?) ORDER BY start_mono_ns, id",
                (boot_id, end_mono_ns, start_mono_ns),
            ).fetchall()
        return [AudioGap(*r) for r in rows]

    def audio_known_from(self, boot_id: str) -> int | None:
        """From when the boot's audio gaps are known (None: not at all)."""
        with self._lock:
            r = self._db.execute("SELECT from_mono_ns FROM audio_kept WHERE boot_id=?", (boot_id,)).fetchone()
        return r[0] if r else None

    # --- clock ------------------------------------------------------------------------------

    def note_clock(self, boot_id: str, offset_ns: int, synced: bool, mono_ns: int) -> None:
        """Remember the boot's wall-minus-monotonic offset; a synchronised one is never replaced
        by an unsynchronised one."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO boot_clock VALUES (?,?,?,?) ON CONFLICT(boot_id) DO UPDATE SET"
                " offset_ns=excluded.offset_ns, synced=excluded.synced, updated_mono_ns=excluded.updated_mono_ns"
                " WHERE excluded.synced >= boot_clock.synced",
                (boot_id, offset_ns, int(synced), mono_ns),
            )

    def synced_offset(self, boot_id: str) -> int | None:
        """The boot's latest synchronised wall-minus-monotonic offset, if it ever had one."""
        with self._lock:
            r = self._db.execute("SELECT offset_ns FROM boot_clock WHERE boot_id=? AND synced=1", (boot_id,)).fetchone()
        return r[0] if r else None

    def note_step(self, step: ClockStep) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO clock_steps (boot_id, mono_ns, before_offset_ns, after_offset_ns, synced)"
                " VALUES (?,?,?,?,?)",
                (step.boot_id, step.mono_ns, step.before_offset_ns, step.after_offset_ns, int(step.synchronized)),
            )

    def clock_steps(self) -> list[ClockStep]:
        with self._lock:
            rows = self._db.execute(
                "SELECT boot_id, mono_ns, before_offset_ns, after_offset_ns, synced FROM clock_steps ORDER BY id"
            ).fetchall()
        return [ClockStep(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]


def open_or_rebuild(path: Path) -> tuple[Index, str | None]:
    """Open the index; if it is corrupt, move it aside and start an empty one.

    Returns the index and, when it was replaced, where the corrupt file was moved (the caller
    rebuilds the rows from the segment files and says so loudly). An index that is sound but
    cannot be opened now raises ``IndexUnavailable`` and is left untouched.
    """
    try:
        return Index(path), None
    except IndexCorrupt:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(path) + suffix)
            if p.exists():
                p.replace(Path(str(aside) + suffix))
        return Index(path), str(aside)
