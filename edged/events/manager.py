"""Marked events: a press opens an event [press − pre-roll, last press + post-roll].

The event and its marks are stored durably at the press, and every segment overlapping its
window is protected at once through a range hold in the index, including the post-roll that is
not recorded yet. A press during the post-roll extends the event. When the recording timeline
passes the event's end and no segment of the window is still being written, the clip builder
joins the segments into upload-ready parts, a manifest is written, and the parts go to the
outbox. A daemon restarted during a post-roll finds the open event in the store and finishes it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edged.clips.builder import ClipError, ClipPart, SourceSegment, build_clip
from edged.config.schema import Settings
from edged.core.db import Store
from edged.core.files import write_atomic
from edged.core.ids import CLIP_ID, timed_id
from edged.core.journal import Msg, log_event
from edged.core.timefmt import iso
from edged.footage.index import Index
from edged.upload.outbox import PRIORITY_MARK, Outbox

log = logging.getLogger("edged.events")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id             TEXT PRIMARY KEY,
    boot_id        TEXT NOT NULL,
    start_mono_ns  INTEGER NOT NULL,
    end_mono_ns    INTEGER NOT NULL,
    pre_roll_ns    INTEGER NOT NULL,
    post_roll_ns   INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('open','built','failed')),
    reason         TEXT NOT NULL DEFAULT '',
    created_wall_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    event_id  TEXT NOT NULL REFERENCES events(id),
    mono_ns   INTEGER NOT NULL,
    wall_ns   INTEGER NOT NULL,
    clock_synced INTEGER NOT NULL,
    source    TEXT NOT NULL,
    note      TEXT NOT NULL DEFAULT ''
);
"""

HOLD_PREFIX = "event:"


@dataclass(frozen=True, slots=True)
class Mark:
    mono_ns: int
    wall_ns: int
    clock_synced: bool
    source: str
    note: str


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    boot_id: str
    start_mono_ns: int
    end_mono_ns: int
    pre_roll_ns: int
    post_roll_ns: int
    state: str
    reason: str
    created_wall_ns: int

    @property
    def hold_owner(self) -> str:
        return HOLD_PREFIX + self.id


class EventStore(Store):
    def __init__(self, path: Path, read_only: bool = False) -> None:
        super().__init__(path, _SCHEMA, read_only=read_only)

    def events(self, state: str | None = None) -> list[Event]:
        sql, args = "SELECT * FROM events", ()
        if state:
            sql, args = sql + " WHERE state=?", (state,)
        return [Event(*r) for r in self.query(sql + " ORDER BY start_mono_ns", args)]

    def get(self, event_id: str) -> Event | None:
        rows = self.query("SELECT * FROM events WHERE id=?", (event_id,))
        return Event(*rows[0]) if rows else None

    def marks(self, event_id: str) -> list[Mark]:
        rows = self.query(
            "SELECT mono_ns, wall_ns, clock_synced, source, note FROM marks WHERE event_id=? ORDER BY mono_ns",
            (event_id,),
        )
        return [Mark(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def set_state(self, event_id: str, state: str, reason: str = "") -> None:
        with self.tx() as db:
            db.execute("UPDATE events SET state=?, reason=? WHERE id=?", (state, reason, event_id))


@dataclass(frozen=True, slots=True)
class MarkResult:
    event_id: str
    extended: bool
    start_mono_ns: int
    end_mono_ns: int


class EventManager:
    """Takes marks, protects footage, and turns finished events into clips in the outbox."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        index: Index,
        outbox: Outbox,
        clips_dir: Path,
        segments_dir: Path,
        timeline_now_ns,
        wall_offset_ns,
        clock_synced,
        boot_id: str,
        request_boundary=None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.outbox = outbox
        self.clips_dir = clips_dir
        self.segments_dir = segments_dir
        self._now = timeline_now_ns
        self._offset = wall_offset_ns
        self._synced = clock_synced
        self.boot_id = boot_id
        self._request_boundary = request_boundary
        self._lock = threading.Lock()
        self.on_mark = None  # feedback hook (LED blink, beep)

    def release_delivered(self, clip_id: str) -> bool:
        """A clip confirmed by every target no longer protects its footage in the ring buffer
        (the clip's own files stay in the clips folder)."""
        event = self.store.get(clip_id)
        if event is None or not self.outbox.clip_delivered(clip_id):
            return False
        self.index.release_range(event.hold_owner)
        log.info("event %s delivered everywhere: its footage is no longer held", clip_id)
        return True

    def configure(self, settings: Settings) -> None:
        self.settings = settings

    def reassert_holds(self) -> int:
        """At start: every event not yet delivered protects its window again (an index rebuilt
        from the folder has no holds of its own)."""
        events = [
            e
            for e in self.store.events()
            if e.state in ("open", "built") and not (e.state == "built" and self.outbox.clip_delivered(e.id))
        ]
        for e in events:
            self.index.hold_range(e.hold_owner, e.boot_id, e.start_mono_ns, e.end_mono_ns)
        return len(events)

    # --- marks ----------------------------------------------------------------------------------

    def mark(self, source: str, note: str = "") -> MarkResult:
        """Record a press now. Safe to call from any thread (button callback, control socket)."""
        clips = self.settings.clips
        with self._lock:
            now = self._now()
            wall = now + self._offset()
            open_events = [e for e in self.store.events("open") if e.boot_id == self.boot_id]
            current = next((e for e in open_events if e.start_mono_ns <= now <= e.end_mono_ns), None)
            post = round(clips.post_roll_seconds * 1e9)
            if current is not None:
                end = max(current.end_mono_ns, now + post)
                with self.store.tx() as db:
                    db.execute("UPDATE events SET end_mono_ns=? WHERE id=?", (end, current.id))
                    db.execute(
                        "INSERT INTO marks VALUES (?,?,?,?,?,?)",
                        (current.id, now, wall, int(self._synced()), source, note),
                    )
                event_id, start, extended = current.id, current.start_mono_ns, True
            else:
                pre = round(clips.pre_roll_seconds * 1e9)
                event_id = timed_id(wall)
                start, end, extended = now - pre, now + post, False
                with self.store.tx() as db:
                    db.execute(
                        "INSERT INTO events VALUES (?,?,?,?,?,?,'open','',?)",
                        (event_id, self.boot_id, start, end, pre, post, time.time_ns()),
                    )
                    db.execute(
                        "INSERT INTO marks VALUES (?,?,?,?,?,?)",
                        (event_id, now, wall, int(self._synced()), source, note),
                    )
            # Protect at once: the range covers footage not recorded yet.
            self.index.hold_range(HOLD_PREFIX + event_id, self.boot_id, start, end)
        if self._request_boundary:
            self._request_boundary(end)
        log_event(
            log,
            Msg.MARK,
            "MARK %s event %s (%s)%s",
            "extends" if extended else "opens",
            event_id,
            source,
            f": {note}" if note else "",
            level=logging.WARNING,
            event_id=event_id,
            clip_id=event_id,
            source=source,
            note=note or None,
            extended=int(extended),
        )
        if self.on_mark:
            self.on_mark()
        return MarkResult(event_id, extended, start, end)

    # --- finishing ------------------------------------------------------------------------------

    def ready(self, event: Event) -> bool:
        """The recording passed the event's end (or its boot is over) and nothing of its window
        is still being written."""
        if event.boot_id == self.boot_id and self._now() < event.end_mono_ns:
            return False
        for seg in self.index.segments(["writing"]):
            if seg.boot_id == event.boot_id and seg.mono_start_ns < event.end_mono_ns:
                return False
        return True

    def finish_ready(self) -> list[str]:
        """Build every open event that is ready; return the ids built."""
        built = []
        for event in self.store.events("open"):
            if self.ready(event):
                if self.build(event):
                    built.append(event.id)
        return built

    def build(self, event: Event) -> bool:
        if self.outbox.parts(event.id):
            # Queued by a run cut off before it marked the event built: the queued parts are the
            # clip (built again, they would come out with other bytes under the rows describing them).
            self.store.set_state(event.id, "built")
            log.warning("event %s: its clip was already queued before a restart; not built again", event.id)
            return True
        clips = self.settings.clips
        segs = [
            s
            for s in self.index.stored()
            if s.boot_id == event.boot_id
            and s.mono_start_ns < event.end_mono_ns
            and s.mono_start_ns + s.duration_ns > event.start_mono_ns
        ]
        if not segs:
            reason = "no footage recorded in the event's window"
            self.store.set_state(event.id, "failed", reason)
            log_event(
                log,
                Msg.CLIP_FAILED,
                "event %s: %s",
                event.id,
                reason,
                level=logging.ERROR,
                event_id=event.id,
                clip_id=event.id,
                reason=reason,
            )
            return False
        out_dir = self.clips_dir / event.id
        out_dir.mkdir(parents=True, exist_ok=True)
        sources = [
            SourceSegment(self.segments_dir / s.name, s.seq, s.mono_start_ns, s.duration_ns, s.sha256 or "")
            for s in segs
        ]
        t0 = time.monotonic()
        try:
            parts = build_clip(
                sources,
                event.start_mono_ns,
                event.end_mono_ns,
                out_dir,
                event.id,
                clips.max_bytes,
                clips.max_duration_ms,
                camera=self.settings.camera,
            )
        except (ClipError, OSError) as exc:
            self.store.set_state(event.id, "failed", f"clip not built: {exc}")
            log_event(
                log,
                Msg.CLIP_FAILED,
                "event %s: clip not built: %s",
                event.id,
                exc,
                level=logging.ERROR,
                event_id=event.id,
                clip_id=event.id,
                reason=exc,
            )
            return False
        offset = self._best_offset(event.boot_id, segs)
        manifest = self._manifest(event, segs, parts, offset)
        write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2).encode(), durable=True)
        self.outbox.enqueue(
            event.id,
            [(p.number, p.path, p.bytes, p.duration_ms, p.sha256) for p in parts],
            PRIORITY_MARK,
            event.start_mono_ns + offset,
        )
        self.store.set_state(event.id, "built")
        duration_ms, size = sum(p.duration_ms for p in parts), sum(p.bytes for p in parts)
        log_event(
            log,
            Msg.CLIP_BUILT,
            "CLIP %s built: %d part(s), %.1f s, %d bytes, in %.2f s",
            event.id,
            len(parts),
            duration_ms / 1000,
            size,
            time.monotonic() - t0,
            level=logging.WARNING,
            clip_id=event.id,
            event_id=event.id,
            parts=len(parts),
            duration_ms=duration_ms,
            bytes=size,
            reencoded=sum(1 for p in parts if p.reencoded),
        )
        return True

    def _best_offset(self, boot_id: str, segs) -> int:
        # The segments' best wall start already applies the boot's synchronised offset.
        s = segs[0]
        return s.best_wall_start_ns - s.mono_start_ns

    def _manifest(self, event: Event, segs, parts: list[ClipPart], offset: int) -> dict:
        marks = self.store.marks(event.id)
        dev = self.settings.device
        first = parts[0].start_mono_ns
        end = parts[-1].start_mono_ns + parts[-1].duration_ms * 1_000_000
        pre_actual = (marks[0].mono_ns - first) / 1e9 if marks else 0.0
        asked = event.pre_roll_ns / 1e9
        return {
            "clip_id": event.id,
            "device_id": dev.id,
            "unit_number": dev.unit_number,
            "unit_location": dev.unit_location,
            "boot_id": event.boot_id,
            "wall_start": iso(first + offset),
            "wall_end": iso(end + offset),
            "clock_synchronized": all(s.clock_synced for s in segs) and all(m.clock_synced for m in marks),
            "pre_roll_seconds": {"asked": asked, "actual": round(pre_actual, 3), "short": pre_actual + 0.05 < asked},
            "post_roll_seconds": event.post_roll_ns / 1e9,
            "marks": [
                {
                    "wall": iso(m.mono_ns + offset),
                    "source": m.source,
                    "note": m.note,
                    "clock_synchronized": m.clock_synced,
                }
                for m in marks
            ],
            "source_segments": [{"name": s.name, "seq": s.seq, "sha256": s.sha256, "state": s.state} for s in segs],
            "parts": [
                {
                    "number": p.number,
                    "file": p.path.name,
                    "bytes": p.bytes,
                    "duration_ms": p.duration_ms,
                    "sha256": p.sha256,
                    "reencoded": p.reencoded,
                    "wall_start": iso(p.start_mono_ns + offset),
                    "source_seqs": list(p.source_seqs),
                    # sources whose bytes no longer match the sha256 recorded when they were written
                    "source_seqs_changed_since_recorded": list(p.mismatched_seqs),
                }
                for p in parts
            ],
        }


class EventWorker(threading.Thread):
    """Finishes events in the background, a few times a second."""

    def __init__(self, manager: EventManager, stop: threading.Event, period: float = 0.2) -> None:
        super().__init__(name="events", daemon=True)
        self.manager = manager
        self._halt = stop
        self.period = period

    def run(self) -> None:
        while not self._halt.wait(self.period):
            try:
                self.manager.finish_ready()
            except Exception:
                log.exception("finishing events failed")


def export_clip(
    clips_dir: Path, clip_id: str, dest: Path, store: EventStore | None = None, outbox: Outbox | None = None
) -> tuple[list[Path], list[str]]:
    """Copy a built clip's parts and manifest into ``dest``; (files written, entries skipped).

    ``clip_id`` comes from the command line, so it is not trusted: it must have the form of an
    event id (``20240501T143000Z-1a2b3c``) or a recall clip id (``recall-<id>``), be known to the
    events store or the outbox, and is opened as one folder name below ``clips_dir`` without
    following a link (``edged.core.files``). Only regular files directly inside are copied, each opened
    without following a link and written atomically and durably into ``dest`` (the operator's
    folder, trusted, made when missing), the manifest last; anything else there (a link, a folder)
    is skipped and named. FileNotFoundError names what is missing; ``files.Refused`` a link."""
    import os
    import shutil
    import stat

    from edged.core.files import Folder, Refused

    if not CLIP_ID.fullmatch(clip_id):
        raise FileNotFoundError(
            f"{clip_id!r} is not a clip id (an event id such as 20240501T143000Z-1a2b3c, or recall-<request id>)"
        )
    known = (store is not None and store.get(clip_id) is not None) or (
        outbox is not None and bool(outbox.parts(clip_id))
    )
    if not known:
        raise FileNotFoundError(f"no clip {clip_id!r}: not in the events store nor in the outbox")
    if Path(os.path.realpath(dest)).is_relative_to(os.path.realpath(clips_dir)):
        raise Refused(str(dest), "is inside the clips folder; an export never writes over evidence")
    with Folder.open(clips_dir) as clips:
        try:
            src = clips.child(clip_id)
        except FileNotFoundError:
            raise FileNotFoundError(f"clip {clip_id!r} has no folder in {clips_dir} (not built yet?)") from None
        with src:
            manifest = src.lstat("manifest.json")
            if manifest is None or not stat.S_ISREG(manifest.st_mode):
                raise FileNotFoundError(f"clip {clip_id!r} is not built yet (no manifest in {src.path})")
            entries = [(n, st) for n, st in src.entries() if not n.startswith(".")]  # dot files: temporaries
            skipped = [f"{src.path / n}: not a regular file" for n, st in entries if not stat.S_ISREG(st.st_mode)]
            names = sorted(
                (n for n, st in entries if stat.S_ISREG(st.st_mode)), key=lambda n: (n == "manifest.json", n)
            )
            copied: list[Path] = []
            with Folder.open(dest, create=True) as out:
                for name in names:
                    try:
                        fd, _ = src.open_regular(name)
                    except (Refused, FileNotFoundError) as exc:  # swapped or removed since listed
                        skipped.append(str(exc))
                        continue
                    with open(fd, "rb") as r, out.atomic(name) as f:
                        shutil.copyfileobj(r, f.file, 1 << 20)
                    copied.append(out.path / name)
    return copied, skipped


def clip_summaries(store: EventStore, outbox: Outbox, clips_dir: Path) -> list[dict]:
    """Every event with its marks, the span its manifest states and its parts' delivery states.
    Manifests are read bounded and without following a link; one that cannot be read leaves the
    span empty and says why in ``manifest_error`` instead of failing the listing."""
    from edged.core.files import Folder

    def manifest_of(clip_id: str) -> tuple[dict | None, str | None]:
        try:
            with Folder.open_below(clips_dir, clip_id) as folder:
                doc = json.loads(folder.read("manifest.json", 16 << 20))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, f"manifest unreadable: {exc}"
        return (doc, None) if isinstance(doc, dict) else (None, "manifest unreadable: not a JSON object")

    out = []
    for e in store.events():
        manifest, problem = manifest_of(e.id)
        span = {
            k: manifest.get(k) if manifest and isinstance(manifest.get(k), str) else None
            for k in ("wall_start", "wall_end")
        }
        out.append(
            {
                "id": e.id,
                "state": e.state,
                "reason": e.reason,
                "marks": [asdict(m) | {"wall": iso(m.wall_ns)} for m in store.marks(e.id)],
                **span,
                "parts": [
                    {
                        "number": p.number,
                        "path": p.path,
                        "bytes": p.bytes,
                        "duration_ms": p.duration_ms,
                        "sha256": p.sha256,
                        "state": outbox.part_state(p.id),
                        "deliveries": {d.target: d.state for d in outbox.deliveries(clip_id=e.id) if d.part.id == p.id},
                    }
                    for p in outbox.parts(e.id)
                ],
            }
            | ({"manifest_error": problem} if problem else {})
        )
    return out
