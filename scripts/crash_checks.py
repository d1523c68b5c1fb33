"""The crash matrix's invariants, read straight from the daemon's files (SQLite read-only, PyAV).

Nothing here uses edged's own readers: the index, events and outbox are read with plain SQL, and
segments are decoded with ``tests.support.decode_all``, so a bug in edged's readers cannot hide a
bug in its writers.

* ``folder_problems``: the index matches the folder (every stored row has its file, of its size and
  sha256, decoding to its frame count; evicted/lost rows have none; every segment file has a
  stored row; no ``.part`` or salvage leftover once reconciled).
* ``footage_lost_s``: the gap in the recorded timeline at a kill.
* ``Ledger``: what was protected and what was queued, remembered across kills, checked later: held
  footage of an undelivered event is never gone, no outbox part ever disappears, every part
  reaches every target intact (server sha256 and the directory copy), every event is delivered.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edged.core.files import sha256_file
from tests.support import decode_all

STORED = ("final", "salvaged")


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """One read-only query on a live store (a fresh connection, closed at once)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    name: str
    state: str
    boot_id: str
    mono_start_ns: int
    duration_ns: int
    bytes: int
    frames: int
    sha256: str | None

    @property
    def end_ns(self) -> int:
        return self.mono_start_ns + self.duration_ns


def segment_rows(state: Path) -> list[Row]:
    return [
        Row(*r)
        for r in query(
            state / "index.sqlite",
            "SELECT seq, name, state, boot_id, mono_start_ns, duration_ns, bytes, frames,"
            " sha256 FROM segments ORDER BY seq",
        )
    ]


def _seq_of(name: str) -> int | None:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


class DecodeCache:
    """Segments already verified (by name and sha256): each is decoded once per trial."""

    def __init__(self) -> None:
        self.ok: set[tuple[str, str]] = set()
        self.decoded = 0


def folder_problems(state: Path, cache: DecodeCache, below_seq: int | None = None) -> list[str]:
    """Index vs folder for every segment with ``seq < below_seq`` (all when None). Empty: consistent."""
    seg_dir = state / "segments"
    rows = [r for r in segment_rows(state) if below_seq is None or r.seq < below_seq]
    by_name = {r.name: r for r in rows}
    problems = []
    for r in rows:
        path = seg_dir / r.name
        if r.state == "writing":
            problems.append(f"{r.name}: still 'writing' after reconcile")
        elif r.state in STORED:
            if not path.exists():
                problems.append(f"{r.name}: row {r.state} but no file")
                continue
            size = path.stat().st_size
            if size != r.bytes:
                problems.append(f"{r.name}: {size} bytes on disk, row says {r.bytes}")
                continue
            digest = sha256_file(path)
            if digest != r.sha256:
                problems.append(f"{r.name}: sha256 differs from its row")
                continue
            if (r.name, digest) not in cache.ok:
                try:
                    frames, _samples = decode_all(path)
                except Exception as exc:  # noqa: BLE001 - any decoder error is the finding
                    problems.append(f"{r.name}: does not decode: {exc}")
                    continue
                if frames != r.frames:
                    problems.append(f"{r.name}: decodes to {frames} frames, row says {r.frames}")
                    continue
                cache.ok.add((r.name, digest))
                cache.decoded += 1
        elif path.exists():
            problems.append(f"{r.name}: row {r.state} but the file is there")
    for path in sorted(seg_dir.iterdir()):
        seq = _seq_of(path.name)
        if seq is None or (below_seq is not None and seq >= below_seq):
            continue
        if path.name.endswith(".webm"):
            row = by_name.get(path.name)
            if row is None or row.state not in STORED:
                problems.append(f"{path.name}: file without a stored row ({row.state if row else 'no row'})")
        else:
            problems.append(f"{path.name}: leftover after reconcile")
    return problems


def settled_folder_problems(state: Path, cache: DecodeCache, below_seq: int | None, tries: int = 4) -> list[str]:
    """``folder_problems`` while the daemon runs: the ring may evict a segment between reading the
    rows and looking at the folder (file first, row after); a discrepancy must persist to count."""
    problems: list[str] = []
    for _attempt in range(tries):
        try:
            problems = folder_problems(state, cache, below_seq)
        except (OSError, sqlite3.Error) as exc:
            problems = [f"reading the state folder: {exc}"]
        if not problems:
            return []
        time.sleep(0.5)
    return problems


def stray_files(state: Path) -> list[str]:
    """Temporary files left behind by interrupted writes (disk leaks, not data loss)."""
    return sorted(str(p.relative_to(state)) for p in state.rglob(".*.tmp") if p.is_file())


def footage_lost_s(rows: list[Row], kill_ns: int, run_start_ns: int) -> float:
    """Footage the kill cost: from the end of what was kept (the run's start at the earliest) to the
    kill. Evicted rows keep their timeline; lost rows have none."""
    kept = [r.end_ns for r in rows if r.state in (*STORED, "evicted") and r.mono_start_ns < kill_ns]
    until = max([run_start_ns, *kept])
    return max(0.0, (kill_ns - until) / 1e9)


def largest_gap_s(rows: list[Row], kills_ns: list[int]) -> float:
    """The largest hole in the timeline between consecutive segments that no kill explains (a
    recording that runs must not lose footage): 0 when the segments join."""
    timeline = sorted((r for r in rows if r.state in (*STORED, "evicted")), key=lambda r: r.mono_start_ns)
    gap = 0
    for prev, nxt in zip(timeline, timeline[1:]):
        if prev.boot_id != nxt.boot_id or any(prev.mono_start_ns <= k <= nxt.mono_start_ns for k in kills_ns):
            continue
        gap = max(gap, nxt.mono_start_ns - prev.end_ns)
    return gap / 1e9


@dataclass(frozen=True, slots=True)
class PartRow:
    clip_id: str
    number: int
    path: str
    sha256: str
    target: str | None
    state: str | None
    resends: int


def outbox_rows(state: Path) -> list[PartRow]:
    db = state / "outbox.sqlite"
    if not db.exists():
        return []
    return [
        PartRow(*r)
        for r in query(
            db,
            "SELECT p.clip_id, p.number, p.path, p.sha256, d.target, d.state,"
            " COALESCE(d.resends, 0) FROM parts p LEFT JOIN deliveries d"
            " ON d.part_id = p.id ORDER BY p.id, d.target",
        )
    ]


def events(state: Path) -> dict[str, tuple[str, int, int, str, str]]:
    """id → (boot id, start, end, state, reason)."""
    db = state / "events.sqlite"
    if not db.exists():
        return {}
    return {
        r[0]: tuple(r[1:])
        for r in query(db, "SELECT id, boot_id, start_mono_ns, end_mono_ns, state, reason FROM events")
    }


def delivered_clips(parts: list[PartRow], targets: tuple[str, ...]) -> set[str]:
    """Clips whose every part is delivered to every target."""
    got: dict[tuple[str, int], set[str]] = {}
    for p in parts:
        reached = got.setdefault((p.clip_id, p.number), set())
        if p.state == "delivered" and p.target is not None:
            reached.add(p.target)
    clips = {clip for clip, _n in got}
    return {c for c in clips if all(set(targets) <= reached for (clip, _n), reached in got.items() if clip == c)}


@dataclass
class Ledger:
    """What a trial has seen, to be checked after every restart and at the end."""

    targets: tuple[str, ...]
    protected: dict[int, tuple[str, set[str]]] = field(default_factory=dict)  # seq → (sha256, events)
    parts: dict[tuple[str, int], str] = field(default_factory=dict)  # (clip, number) → sha256
    marked: set[str] = field(default_factory=set)  # event ids answered

    def observe(self, state: Path) -> tuple[list[Row], dict, list[PartRow]]:
        """Remember held footage of undelivered events and every queued part (daemon running)."""
        rows = segment_rows(state)
        evs = events(state)
        parts = outbox_rows(state)
        done = delivered_clips(parts, self.targets)
        for p in parts:
            self.parts.setdefault((p.clip_id, p.number), p.sha256)
        for ev_id, (boot, start, end, _st, _why) in evs.items():
            if ev_id in done:
                continue
            for r in rows:
                if (
                    r.state in STORED
                    and r.boot_id == boot
                    and r.mono_start_ns < end
                    and r.mono_start_ns + max(r.duration_ns, 1) > start
                ):
                    sha, owners = self.protected.setdefault(r.seq, (r.sha256 or "", set()))
                    owners.add(ev_id)
        return rows, evs, parts

    def protected_lost(self, rows: list[Row], parts: list[PartRow]) -> list[str]:
        """Held footage gone (or changed) while one of its events is still not delivered."""
        by_seq = {r.seq: r for r in rows}
        done = delivered_clips(parts, self.targets)
        lost = []
        for seq, (sha, owners) in sorted(self.protected.items()):
            if owners <= done:
                continue  # released by delivery: the ring may take it now
            r = by_seq.get(seq)
            if r is None or r.state not in STORED or r.sha256 != sha:
                lost.append(f"segment {seq} held by {sorted(owners - done)}: {'no row' if r is None else r.state}")
        return lost

    def parts_missing(self, parts: list[PartRow]) -> list[str]:
        """Parts the outbox once had and no longer has (or has with other bytes)."""
        now = {(p.clip_id, p.number): p.sha256 for p in parts}
        return [
            f"{clip} part {n}: {'gone from the outbox' if (clip, n) not in now else 'sha256 changed'}"
            for (clip, n), sha in sorted(self.parts.items())
            if now.get((clip, n)) != sha
        ]


@dataclass
class Delivery:
    """The end of a trial: did every part reach every target, intact; how many duplicates."""

    lost: list[str]
    duplicates: int
    resends: int
    undelivered_events: list[str]


def check_delivery(ledger: Ledger, state: Path, server_uploads: list, server_store: Path, directory: Path) -> Delivery:
    parts = outbox_rows(state)
    evs = events(state)
    lost = ledger.parts_missing(parts)
    for p in parts:
        ledger.parts.setdefault((p.clip_id, p.number), p.sha256)
    received = Counter(u.sha256 for u in server_uploads)
    for p in parts:
        what = f"{p.clip_id} part {p.number}"
        if p.state != "delivered":
            lost.append(f"{what} → {p.target}: {p.state}")
            continue
        src = Path(p.path)
        if not src.exists() or sha256_file(src) != p.sha256:
            lost.append(f"{what}: the clip's own file is missing or changed")
        if p.target == "sonoran_v2":
            stored = server_store / f"{p.sha256}.webm"
            if received[p.sha256] == 0 or not stored.exists() or sha256_file(stored) != p.sha256:
                lost.append(f"{what}: the server never stored these bytes")
        elif p.target == "directory":
            copy = directory / p.clip_id / src.name
            if not copy.exists() or sha256_file(copy) != p.sha256:
                lost.append(f"{what}: the delivered copy is missing or differs")
    done = delivered_clips(parts, ledger.targets)
    undelivered = sorted(
        ev for ev in set(evs) | ledger.marked if ev not in done or evs.get(ev, ("",) * 5)[3] != "built"
    )
    undelivered = [f"{ev} ({evs[ev][3]}: {evs[ev][4]})" if ev in evs else f"{ev} (no event row)" for ev in undelivered]
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    resends = sum(p.resends for p in parts)
    return Delivery(sorted(set(lost)), duplicates, resends, undelivered)
