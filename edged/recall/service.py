"""Answering recall requests: accept, protect, wait for the footage, build, deliver, report.

Stage "recall" of capture → encode → segment → ring store → mark/**recall** → clip → outbox → target.

A request (``edged.recall.request``) arrives from the synced inbox (``edged.recall.inbox``) or from
``edged recall`` through the control socket. Its life, as the operator reads it in
``<sync.dir>/status/recall-<id>.json`` (``<storage.dir>/recall-status/`` without a sync folder):

  ``rejected``    invalid (every reason listed) or a duplicate; nothing is stored or held
  ``pending``     accepted and stored; its footage is **protected at once**: a range hold
                  ``recall:<id>`` on this boot's timeline (covering footage not recorded yet) and a
                  hold on every stored segment of the window (any boot); waits until the recording
                  has passed the window's end and no segment of it is still being written (the
                  recorder is asked to start a segment at the window's end, as for a mark)
  ``processing``  being built, then uploading: ``regular`` through the clip builder (remuxed, full
                  quality, split into parts within the upload limits); ``timelapse`` rendered to one
                  part (``edged.clips.timelapse``). A manifest goes with the parts, which go to the outbox
                  at ``PRIORITY_RECALL`` (after every marked clip), once per configured target
  ``completed``   every part delivered to every target; the status lists the URLs (or paths) the
                  targets returned; the footage is released to the ring buffer
  ``failed``      with the reason: no footage in the window (overwritten by the ring buffer, lost,
                  or never recorded: said per gap), the clip could not be built, or an upload was
                  refused for good (the parts are kept, the footage stays protected and
                  ``edged outbox retry recall-<id>`` sends them again)

Partly available footage is delivered as it is and the status names every gap with its reason
(``footage.missing``): what exists is worth more to a fleet operator than nothing.

The work runs in one background thread at a lower CPU priority (nice +10) than the recording.
A daemon restarted mid-way re-protects the footage of every unfinished request and builds again
what was not in the outbox yet.

Untrusted input (issue 12): whatever the synced folder holds, the thread handles each request
file on its own — any error is that file's rejection, never the inbox's end — and never blocks
on it (see ``edged.recall.inbox``). Status files go through ``SyncFolder.write_status`` (the
state folder's ``recall-status/`` through ``edged.core.files`` without a sync folder): atomic, never
through a link. A link or non-folder at ``status/``, ``recall/`` or ``recall/processed/`` is
refused: the alarm ``sync_folder_refused`` (``on_alarm``) is raised and one line logged while it
lasts, nothing is written, read or moved there, and the status files not written are written
once it is a real folder again. Every status document and every stored reason is scrubbed of
secrets. Who owns ``status/recall-<id>.json``: the accepted request with that id, once there is
one; a rejection reusing an accepted id (or a name that is not a plain id) is written beside it
as ``recall-<id>.rejected.json`` (the latest such rejection), so it can never overwrite an
accepted request's answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edged.clips.builder import ClipError, SourceSegment, build_clip
from edged.clips.timelapse import Interrupted, Timelapse, render
from edged.config.schema import Settings
from edged.core.files import DIR_MODE, Folder, Refused, write_atomic
from edged.core.ids import timed_id
from edged.core.journal import Msg, log_event, scrub_doc, scrubbed_json
from edged.core.paths import StatePaths
from edged.core.syncfolder import ALARM, STATUS, SyncFolder
from edged.core.timefmt import iso
from edged.footage.index import STORED, Index, Segment
from edged.footage.timeline import Gap, coverage
from edged.recall.inbox import Inbox, InboxItem
from edged.recall.request import (
    CLIP_PREFIX,
    COMPLETED,
    FAILED,
    ID_PATTERN,
    PENDING,
    PROCESSING,
    REJECTED,
    DuplicateRequest,
    InvalidRequest,
    Recall,
    RecallRequest,
    RecallStore,
    bounded,
    parse_request,
    show,
)
from edged.upload.outbox import PRIORITY_RECALL, Outbox

log = logging.getLogger("edged.recall")

#: The worker's niceness relative to the daemon (the recording must never wait for a timelapse).
WORKER_NICE = 10
#: How long ``stop`` waits for the worker (a timelapse stops at its next segment; well inside
#: systemd's TimeoutStopSec=20 with the recorder's own stop).
STOP_WAIT_S = 8.0
#: Status files kept to write again while they cannot be written (oldest dropped first).
MAX_UNWRITTEN = 1000


def store_path(paths: StatePaths) -> Path:
    return paths.root / "recall.sqlite"


def status_dir(settings: Settings) -> Path:
    """Where status files go: the synced folder's ``status/``, else the state folder's ``recall-status/``."""
    return Path(settings.sync.dir) / "status" if settings.sync.dir else settings.state_dir / "recall-status"


def inbox_dir(settings: Settings) -> Path | None:
    return Path(settings.sync.dir) / "recall" if settings.sync.dir else None


def new_id() -> str:
    return timed_id(time.time_ns())


def _overlaps(s: Segment, start_ns: int, end_ns: int) -> bool:
    return s.best_wall_start_ns < end_ns and s.best_wall_start_ns + max(s.duration_ns, 1) > start_ns


def _urls(response: str) -> list[str]:
    """The URL list a server returned (JSON list), or the path a directory target wrote."""
    try:
        doc = json.loads(response)
    except ValueError:
        return [response] if response else []
    if isinstance(doc, list):
        return [u for u in doc if isinstance(u, str)]
    return [response]


class RecallService:
    def __init__(
        self,
        settings: Settings,
        store: RecallStore,
        index: Index,
        outbox: Outbox,
        *,
        clips_dir: Path,
        segments_dir: Path,
        status_folder: Path,
        inbox: Inbox | None,
        now_wall_ns: Callable[[], int],
        wall_offset_ns: Callable[[], int],
        boot_id: str,
        clock_synced: Callable[[], bool] = lambda: True,
        request_boundary: Callable[[int], None] | None = None,
        period_s: float = 0.5,
        on_alarm: Callable[[str, bool], None] = lambda name, active: None,
    ) -> None:
        """``now_wall_ns``: the newest instant footage can exist for (the recording's timeline on the wall
        clock); ``wall_offset_ns``: this boot's wall − monotonic offset; ``request_boundary``: the
        recorder's (a new segment at a monotonic instant); ``on_alarm(name, active)``: raises or
        clears ``sync_folder_refused``."""
        self.settings = settings
        self.store = store
        self.index = index
        self.outbox = outbox
        self.clips_dir = clips_dir
        self.segments_dir = segments_dir
        self.status_folder = status_folder
        self.inbox = inbox
        self._now = now_wall_ns
        self._offset = wall_offset_ns
        self.boot_id = boot_id
        self._synced = clock_synced
        self._boundary = request_boundary
        self.period_s = period_s
        self._accept_lock = threading.Lock()  # one request accepted at a time (duplicate check + hold + store)
        self._status_lock = threading.Lock()  # a status file always shows the store's latest state
        self._written: dict[str, str] = {}  # id -> digest of the status file last written
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_inbox = 0.0
        self._on_alarm = on_alarm
        self._trouble_lock = threading.Lock()
        self._troubles: dict[str, tuple[str, bool]] = {}  # area -> (why, alarm) while it lasts
        self._logged: dict[str, set[str]] = {}  # area -> reasons logged while it lasts (once each)
        self._unwritten: dict[str, tuple[bytes, str | None, str]] = {}  # status name -> (data, id, digest)

    @classmethod
    def for_daemon(
        cls, daemon: Any, index: Index, on_alarm: Callable[[str, bool], None] = lambda name, active: None
    ) -> RecallService:
        """Built from a running daemon's recorder and outbox; started. The daemon passes the uploader's
        deliveries on to ``on_delivered``."""
        s: Settings = daemon.settings
        r = daemon.recorder
        folder = inbox_dir(s)
        service = cls(
            s,
            RecallStore(store_path(daemon.paths)),
            index,
            daemon.outbox,
            clips_dir=daemon.paths.clips,
            segments_dir=daemon.paths.segments,
            status_folder=status_dir(s),
            inbox=Inbox(folder) if folder else None,
            now_wall_ns=lambda: r.timeline_now_ns() + r.best_offset_ns(),
            wall_offset_ns=r.best_offset_ns,
            boot_id=r.watch.boot_id,
            clock_synced=lambda: r.watch.synchronized,
            request_boundary=r.request_boundary,
            on_alarm=on_alarm,
        )
        service.start()
        return service

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        folder = inbox_dir(settings)
        if (folder and (self.inbox is None or self.inbox.folder != folder)) or (not folder and self.inbox):
            self.inbox = Inbox(folder) if folder else None
            self._trouble("inbox", "", alarm=True)  # looked at afresh at the next poll
        self.status_folder = status_dir(settings)

    def control_handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        def recall(req: dict[str, Any]) -> dict[str, Any]:
            body = req.get("request")
            rid = req.get("id") or None
            return {"recall": self.submit(body, str(rid) if rid is not None else None, source="cli")}

        def recall_status(req: dict[str, Any]) -> dict[str, Any]:
            doc = self.status(str(req.get("id", "")))
            if doc is None:
                raise ValueError(f"no recall request {show(req.get('id'))}")
            return {"recall": doc}

        return {"recall": recall, "recall_status": recall_status}

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="recall", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the worker to stop and wait for it at most ``STOP_WAIT_S``: it never blocks on a file
        (reads are non-blocking, a look takes at most ``MAX_PER_LOOK`` files, a timelapse stops at
        its next segment), so only a regular recall being remuxed can take that long."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning(
                    "recall worker still busy after %.0f s; not waited for (what it was building is "
                    "built again at the next start)",
                    STOP_WAIT_S,
                )

    def close(self) -> None:
        self.store.close()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except OSError as exc:  # pragma: no cover - not Linux, or not allowed
            log.debug("recall worker keeps the daemon's priority: %s", exc)
        while not self._halt.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("recall work failed")
            self._wake.wait(self.period_s)
            self._wake.clear()

    def tick(self) -> None:
        """One round: read the inbox when due, build what is ready, follow the uploads."""
        if time.monotonic() >= self._next_inbox:
            self._next_inbox = time.monotonic() + self.settings.sync.poll_seconds
            self.flush_status()
            if self.inbox is not None:
                self.poll_inbox()
        self.process_ready()
        self.refresh()

    def recover(self) -> None:
        """At start: requests cut off while being built are built again; every unfinished request
        protects its footage again (an index rebuilt from the folder has no holds of its own)."""
        for rec in self.store.recalls([PROCESSING]):
            if rec.built:
                continue
            if self.outbox.parts(rec.request.clip_id):
                # Queued by a run cut off before it said built: those parts are the recall (built
                # again, they would come out with other bytes under the rows describing them).
                self.store.update(rec.id, PROCESSING, built=True, detail=rec.detail | {"progress": "uploading"})
            else:
                self.store.update(rec.id, PENDING, detail=rec.detail | {"progress": "building again after a restart"})
        held = 0
        for rec in self.store.recalls([PENDING, PROCESSING, FAILED]):
            if rec.status == FAILED and not rec.built:
                continue
            self._hold(rec.request, (rec.hold_boot_id, rec.hold_start_mono_ns, rec.hold_end_mono_ns))
            held += 1
        if held:
            log.info("%d recall request(s) not yet delivered keep their footage protected", held)
        for rec in self.store.recalls():
            self._write_status(rec.id)

    # --- accepting ----------------------------------------------------------------------------------

    def submit(self, body: Any, request_id: str | None = None, source: str = "cli") -> dict[str, Any]:
        """Validate and accept a request; answer with its status document (``rejected`` with the
        reasons when it cannot be accepted). Safe from any thread."""
        rid = request_id or new_id()
        dev = self.settings.device
        try:
            req = parse_request(
                body,
                rid,
                now_ns=self._now(),
                positions=[self.settings.camera.position],
                device_names=[n for n in (dev.id, dev.unit_number) if n],
                source=source,
                clock_synchronized=self._synced(),
            )
        except InvalidRequest as exc:
            return self._reject(rid, exc.reasons, body, source)
        except Exception as exc:
            log.exception("recall %s: the request could not be checked", show(rid))
            return self._reject(
                rid, [f"the request could not be checked (internal error {type(exc).__name__})"], body, source
            )
        with self._accept_lock:
            existing = self.store.get(req.id)
            if existing is not None and existing.request.key == req.key:
                log.info("recall %s received again (%s): answered with its state, %s", req.id, source, existing.status)
                return self._write_status(req.id) | {"duplicate": True}
            off = self._offset()
            hold = (self.boot_id, req.start_ns - off, req.end_ns - off)
            try:
                self.store.add(req, hold)
            except DuplicateRequest as dup:
                refused: tuple[list[str], Recall | None, bool] | None = ([str(dup)], dup.existing, dup.conflict)
            except InvalidRequest as exc:
                refused = (exc.reasons, None, False)
            else:
                refused = None
                self._hold(req, hold)
        if refused is not None:
            reasons, existing, conflict = refused
            return self._reject(rid, reasons, body, source, duplicate_of=existing, conflict=conflict)
        if self._boundary is not None:
            self._boundary(req.end_ns - off)  # the segment holding the window's end is finished promptly
        log.warning(
            "RECALL %s accepted (%s): %s %d min from %s, cameras %s",
            req.id,
            source,
            req.recall_type,
            req.duration_min,
            iso(req.start_ns),
            ", ".join(req.cameras),
        )
        self._wake.set()
        return self._write_status(req.id)

    def _hold(self, req: RecallRequest, hold: tuple[str, int, int]) -> None:
        """Protect the window: the range on its boot's timeline (footage still to come included), then
        every stored segment of any boot overlapping it on the wall clock."""
        boot, start_mono, end_mono = hold
        if boot:
            self.index.hold_range(req.hold_owner, boot, start_mono, end_mono)
        seqs = [s.seq for s in self.index.stored() if _overlaps(s, req.start_ns, req.end_ns)]
        self.index.hold(req.hold_owner, seqs)

    def _release(self, req: RecallRequest) -> None:
        self.index.release_range(req.hold_owner)
        self.index.release(req.hold_owner)

    # --- building -----------------------------------------------------------------------------------

    def ready(self, rec: Recall) -> bool:
        """The recording passed the window's end and no segment of the window is still being written."""
        req = rec.request
        if self._now() < req.end_ns:
            return False
        return not any(_overlaps(s, req.start_ns, req.end_ns) for s in self.index.segments(["writing"]))

    def process_ready(self) -> list[str]:
        done = []
        for rec in self.store.recalls([PENDING]):
            if self._halt.is_set():
                break
            if self.ready(rec):
                self.process(rec)
                done.append(rec.id)
            elif rec.detail.get("progress") is None:
                self._set(rec, PENDING, detail={"progress": f"waiting for the footage up to {iso(rec.request.end_ns)}"})
        return done

    def process(self, rec: Recall) -> None:
        req = rec.request
        rec = self._set(rec, PROCESSING, detail={"progress": "building"})
        rows = self.index.segments()
        available, gaps = coverage(rows, req.start_ns, req.end_ns)
        footage = {
            "available": [{"start": iso(a), "end": iso(b)} for a, b in available],
            "missing": [g.as_dict() for g in gaps],
        }
        if not available:
            self._fail(rec, "no footage in the requested range: " + _describe(gaps), footage)
            return
        stored = [s for s in rows if s.state in STORED]
        used = [s for s in stored if _overlaps(s, req.start_ns, req.end_ns)]
        out_dir = self.clips_dir / req.clip_id
        t0, c0 = time.monotonic(), time.thread_time()
        try:
            if req.recall_type == "timelapse":
                tl = self._timelapse(req, used, out_dir)
                parts = [
                    (
                        1,
                        tl.path,
                        tl.bytes,
                        tl.duration_ms,
                        tl.sha256,
                        tl.first_frame_ns,
                        tl.source_seqs,
                        tl.mismatched_seqs,
                        True,
                    )
                ]
            else:
                tl = None
                parts = self._regular(req, stored, used, out_dir)
        except Interrupted:
            self.store.update(rec.id, PENDING, detail={"progress": "building again after a restart"})
            log.info("recall %s: interrupted while building; built again at the next start", req.id)
            return
        except (ClipError, OSError) as exc:
            self._fail(rec, f"recall not built: {exc}", footage)
            return
        except Exception as exc:
            log.exception("recall %s: building failed", req.id)
            self._fail(rec, f"recall not built: internal error {exc!r}", footage)
            return
        took = {"wall_s": round(time.monotonic() - t0, 3), "thread_cpu_s": round(time.thread_time() - c0, 3)}
        manifest = self._manifest(rec, used, parts, footage, tl)
        write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2).encode(), durable=True)
        self.outbox.enqueue(
            req.clip_id,
            [(n, path, size, ms, sha) for n, path, size, ms, sha, *_ in parts],
            PRIORITY_RECALL,
            rec.created_ns,
        )
        detail = {"progress": "uploading", "footage": footage, "build": took, "timelapse": manifest["timelapse"]}
        self.store.update(rec.id, PROCESSING, built=True, detail=detail)
        log.warning(
            "RECALL %s built: %d part(s), %.1f s, %d bytes, in %.2f s%s",
            req.id,
            len(parts),
            sum(p[3] for p in parts) / 1000,
            sum(p[2] for p in parts),
            took["wall_s"],
            f"; missing: {_describe(gaps)}" if gaps else "",
        )
        self.refresh(rec.id)

    def _regular(self, req: RecallRequest, stored: list[Segment], used: list[Segment], out_dir: Path) -> list[tuple]:
        """Remux each boot's share of the window (a window across a reboot gives parts from each)."""
        boots: list[str] = []
        for s in sorted(used, key=lambda s: s.best_wall_start_ns):
            if s.boot_id not in boots:
                boots.append(s.boot_id)
        parts: list[tuple] = []
        clips = self.settings.clips
        for i, boot in enumerate(boots):
            first = next(s for s in used if s.boot_id == boot)
            off = first.best_wall_start_ns - first.mono_start_ns
            sources = [
                SourceSegment(self.segments_dir / s.name, s.seq, s.mono_start_ns, s.duration_ns, s.sha256 or "")
                for s in stored
                if s.boot_id == boot
            ]
            name = req.clip_id if len(boots) == 1 else f"{req.clip_id}-b{i + 1}"
            built = build_clip(
                sources,
                req.start_ns - off,
                req.end_ns - off,
                out_dir,
                name,
                clips.max_bytes,
                clips.max_duration_ms,
                camera=self.settings.camera,
            )
            parts += [
                (
                    len(parts) + n,
                    p.path,
                    p.bytes,
                    p.duration_ms,
                    p.sha256,
                    p.start_mono_ns + off,
                    p.source_seqs,
                    p.mismatched_seqs,
                    p.reencoded,
                )
                for n, p in enumerate(built, 1)
            ]
        return parts

    def _timelapse(self, req: RecallRequest, used: list[Segment], out_dir: Path) -> Timelapse:
        # Placed on the wall clock (best wall start), so footage of several boots lines up.
        sources = [
            SourceSegment(self.segments_dir / s.name, s.seq, s.best_wall_start_ns, s.duration_ns, s.sha256 or "")
            for s in sorted(used, key=lambda s: s.best_wall_start_ns)
        ]
        clips = self.settings.clips
        return render(
            sources,
            req.start_ns,
            req.end_ns,
            out_dir,
            req.clip_id,
            clips.max_bytes,
            clips.max_duration_ms,
            self.settings.camera,
            cancelled=self._halt.is_set,
        )

    def _manifest(
        self, rec: Recall, used: list[Segment], parts: list[tuple], footage: dict, tl: Timelapse | None
    ) -> dict:
        req, dev = rec.request, self.settings.device
        timelapse = None
        if tl is not None:
            timelapse = {
                "interval_seconds": tl.interval_ns / 1e9,
                "fps": tl.fps,
                "speed": round(tl.speed, 3),
                "frames": tl.frames,
                "planned_frames": tl.slots,
                "bitrate": tl.bitrate,
                "audio": False,
                "first_frame": iso(tl.first_frame_ns),
                "source_frames": tl.source_frames,
                "decoded_frames": tl.decoded_frames,
                "frame_offsets_ms": [(t - tl.first_frame_ns) // 1_000_000 for t in tl.frame_times_ns],
            }
        return {
            "clip_id": req.clip_id,
            "recall_id": req.id,
            "device_id": dev.id,
            "unit_number": dev.unit_number,
            "unit_location": dev.unit_location,
            "request": req.fields() | {"source": req.source},
            "camera_position": self.settings.camera.position,
            "clock_synchronized": all(s.clock_synced for s in used),
            "footage": footage,
            "timelapse": timelapse,
            "source_segments": [
                {
                    "name": s.name,
                    "seq": s.seq,
                    "sha256": s.sha256,
                    "state": s.state,
                    "boot_id": s.boot_id,
                    "wall_start": iso(s.best_wall_start_ns),
                }
                for s in used
            ],
            "parts": [
                {
                    "number": n,
                    "file": path.name,
                    "bytes": size,
                    "duration_ms": ms,
                    "sha256": sha,
                    "wall_start": iso(start),
                    "source_seqs": list(seqs),
                    "reencoded": reencoded,
                    "source_seqs_changed_since_recorded": list(mismatched),
                }
                for n, path, size, ms, sha, start, seqs, mismatched, reencoded in parts
            ],
        }

    # --- delivery -----------------------------------------------------------------------------------

    def on_delivered(self, clip_id: str) -> bool:
        """The uploader delivered a clip everywhere: a recall's completes and releases its footage."""
        if not clip_id.startswith(CLIP_PREFIX):
            return False
        return self.refresh(clip_id[len(CLIP_PREFIX) :])

    def refresh(self, recall_id: str | None = None) -> bool:
        """Follow the uploads of built requests: all delivered → completed (footage released); one
        refused for good → failed (footage kept). True if one completed."""
        recs = [self.store.get(recall_id)] if recall_id else self.store.recalls([PROCESSING, FAILED])
        completed = False
        for rec in recs:
            if rec is None or not rec.built or rec.status == COMPLETED:
                continue
            clip_id = rec.request.clip_id
            if self.outbox.clip_delivered(clip_id):
                self._release(rec.request)
                self._set(rec, COMPLETED, detail=rec.detail | {"progress": "delivered"})
                log_event(
                    log,
                    Msg.RECALL_COMPLETED,
                    "RECALL %s completed: delivered everywhere; its footage is no longer held",
                    rec.id,
                    level=logging.WARNING,
                    recall_id=rec.id,
                    clip_id=clip_id,
                )
                completed = True
                continue
            targets = set(self.outbox.targets) or None
            deliveries = [d for d in self.outbox.deliveries(clip_id=clip_id) if targets is None or d.target in targets]
            refused = [d for d in deliveries if d.state == "failed"]
            if refused and rec.status != FAILED:
                d = refused[0]
                reason = (
                    f"upload of part {d.part.number} to {d.target} refused for good: {d.reason} (the parts are "
                    f"kept; `edged outbox retry {clip_id}` sends them again)"
                )
                self._set(rec, FAILED, reason, detail=rec.detail | {"progress": "upload refused"})
                log_event(
                    log,
                    Msg.RECALL_FAILED,
                    "RECALL %s failed: %s",
                    rec.id,
                    reason,
                    level=logging.ERROR,
                    recall_id=rec.id,
                    clip_id=clip_id,
                    target=d.target,
                    reason=reason,
                )
            elif not refused:
                done = sum(d.state == "delivered" for d in deliveries)
                progress = f"uploading: {done} of {len(deliveries)} deliveries done"
                if rec.status != PROCESSING or rec.detail.get("progress") != progress:
                    self._set(rec, PROCESSING, detail=rec.detail | {"progress": progress})
        return completed

    def _fail(self, rec: Recall, reason: str, footage: dict) -> None:
        self._release(rec.request)
        self._set(rec, FAILED, reason, detail={"progress": "failed", "footage": footage})
        log_event(
            log,
            Msg.RECALL_FAILED,
            "RECALL %s failed: %s",
            rec.id,
            reason,
            level=logging.ERROR,
            recall_id=rec.id,
            reason=reason,
        )

    # --- the inbox ----------------------------------------------------------------------------------

    def poll_inbox(self) -> int:
        """One look at the inbox: every settled request file answered (each on its own: an error is
        that file's rejection) and moved. A refused folder raises the alarm instead."""
        inbox = self.inbox
        if inbox is None:
            return 0
        taken = inbox.take(self._take, stop=self._halt.is_set)
        self._trouble("inbox", f"recall inbox refused: {inbox.refused}" if inbox.refused else "", alarm=True)
        return taken

    def _take(self, item: InboxItem) -> None:
        source = f"inbox:{_plain(item.name)}"
        rid = item.request_id
        try:
            if item.error:
                self._reject(rid, [item.error], None, source)
            else:
                self.submit(item.body, rid, source=source)
        except Exception as exc:
            log.exception("recall inbox: %s not handled", source)
            try:
                self._reject(
                    rid,
                    [
                        f"the request could not be handled (internal error {type(exc).__name__}); "
                        "send it again under a new id"
                    ],
                    None,
                    source,
                )
            except Exception:
                log.exception("recall inbox: %s not answered", source)

    # --- status documents ---------------------------------------------------------------------------

    def _set(self, rec: Recall, status: str, reason: str = "", detail: dict | None = None) -> Recall:
        rec = self.store.update(rec.id, status, reason, detail=detail)
        self._write_status(rec.id)
        return rec

    def status(self, recall_id: str) -> dict[str, Any] | None:
        if not isinstance(recall_id, str) or not ID_PATTERN.fullmatch(recall_id):
            return None  # no stored request has such an id (and SQLite is not asked about it)
        rec = self.store.get(recall_id)
        return scrub_doc(self._document(rec)) if rec else None

    def _document(self, rec: Recall) -> dict[str, Any]:
        dev = self.settings.device
        doc: dict[str, Any] = {
            "id": rec.id,
            "status": rec.status,
            "reason": rec.reason,
            **rec.request.fields(),
            "device_id": dev.id,
            "unit_number": dev.unit_number,
            "source": rec.request.source,
            "created_at": iso(rec.created_ns),
            "updated_at": iso(rec.updated_ns),
            "progress": rec.detail.get("progress"),
        }
        doc["footage"] = rec.detail.get("footage")
        if rec.detail.get("timelapse"):
            doc["timelapse"] = {k: v for k, v in rec.detail["timelapse"].items() if k != "frame_offsets_ms"}
        parts, urls = [], []
        if rec.built:
            deliveries = self.outbox.deliveries(clip_id=rec.request.clip_id)
            for p in self.outbox.parts(rec.request.clip_id):
                mine = [d for d in deliveries if d.part.id == p.id]
                for d in mine:
                    if d.state == "delivered":
                        urls += _urls(d.response)
                parts.append(
                    {
                        "number": p.number,
                        "file": Path(p.path).name,
                        "bytes": p.bytes,
                        "duration_ms": p.duration_ms,
                        "sha256": p.sha256,
                        "deliveries": [
                            {
                                "target": d.target,
                                "state": d.state,
                                "reason": d.reason,
                                "urls": _urls(d.response) if d.state == "delivered" else [],
                            }
                            for d in mine
                        ],
                    }
                )
        doc["cameras"] = [{"position": pos, "parts": parts, "urls": urls} for pos in rec.request.cameras]
        doc["urls"] = urls
        return doc

    def _write_status(self, recall_id: str) -> dict[str, Any]:
        with self._status_lock:
            rec = self.store.get(recall_id)
            assert rec is not None
            doc = scrub_doc(self._document(rec))
            self._put(f"recall-{recall_id}.json", doc, recall_id)
        return doc

    def _reject(
        self,
        rid: str,
        reasons: list[str],
        body: Any,
        source: str,
        duplicate_of: Recall | None = None,
        conflict: bool = False,
    ) -> dict[str, Any]:
        """Answer a request that is not accepted: one log line and a status file that never takes the
        place of an accepted request's (see ``_rejection_name``)."""
        shown = rid if isinstance(rid, str) and ID_PATTERN.fullmatch(rid) else _plain(str(rid))[:80]
        reasons = [r for r in reasons if r] or ["rejected"]
        doc: dict[str, Any] = {
            "id": shown,
            "status": REJECTED,
            "reason": "; ".join(reasons),
            "reasons": reasons,
            "request": bounded(body),
            "source": source,
            "updated_at": iso(time.time_ns()),
        }
        if duplicate_of is not None and not conflict:
            doc["duplicate_of"] = self._document(duplicate_of)
        doc = scrub_doc(doc)
        log_event(
            log,
            Msg.RECALL_FAILED,
            "RECALL %s rejected (%s): %s",
            shown,
            source,
            doc["reason"],
            level=logging.ERROR,
            recall_id=shown,
            reason=doc["reason"],
            source=source,
        )
        with self._status_lock:  # the name and the write in one step: an acceptance's write waits
            self._put(self._rejection_name(str(rid)), doc, None)
        return doc

    def _rejection_name(self, rid: str) -> str:
        """``recall-<id>.json`` for a plain id no accepted request has; ``recall-<id>.rejected.json``
        when one has it (its answer stays) or when the name is not a plain id (made plain)."""
        if ID_PATTERN.fullmatch(rid):
            return f"recall-{rid}.rejected.json" if self.store.get(rid) is not None else f"recall-{rid}.json"
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", rid)[:64] or "unnamed"
        return f"recall-{safe}.rejected.json"

    def _put(self, name: str, doc: dict[str, Any], recall_id: str | None) -> None:
        """Write ``status/<name>`` (scrubbed); kept to write again if it cannot be written now."""
        data = scrubbed_json(doc, indent=2).encode()
        digest = hashlib.sha256(data).hexdigest()
        if recall_id is not None and self._written.get(recall_id) == digest and name not in self._unwritten:
            return
        self._unwritten.pop(name, None)
        self._unwritten[name] = (data, recall_id, digest)
        while len(self._unwritten) > MAX_UNWRITTEN:
            self._unwritten.pop(next(iter(self._unwritten)))
        self._write_one(name)

    def flush_status(self) -> int:
        """Write the status files that could not be written (a refused ``status/``), oldest first;
        stops at the first that still cannot. Returns how many were written."""
        written = 0
        with self._status_lock:
            for name in list(self._unwritten):
                if not self._write_one(name):
                    break
                written += 1
        return written

    def _write_one(self, name: str) -> bool:
        data, recall_id, digest = self._unwritten[name]
        try:
            self._write_file(name, data)
        except Refused as exc:  # a link or not a folder at status/: nothing is written there
            self._trouble("status", f"recall status files not written: {exc}", alarm=self._synced_status())
            return False
        except (OSError, KeyError) as exc:  # (KeyError: sync.status_group names no group)
            self._trouble("status", f"recall status files not written: {exc}", alarm=False)
            return False
        del self._unwritten[name]
        if recall_id is not None:
            self._written[recall_id] = digest
        if not self._unwritten:
            self._trouble("status", "", alarm=False)
        return True

    def _synced_status(self) -> bool:
        sync_dir = self.settings.sync.dir
        return bool(sync_dir) and self.status_folder == Path(sync_dir) / STATUS

    def _write_file(self, name: str, data: bytes) -> None:
        """``status/<name>`` in the synced folder through its boundary; else in the state folder's
        ``recall-status/`` (trusted, made when missing); atomic and durable either way."""
        if not self._synced_status():
            with Folder.open(self.status_folder, create=True) as folder:
                folder.write(name, data, durable=True)
            return
        sync = SyncFolder(Path(self.settings.sync.dir), getattr(self.settings.sync, "status_group", ""))
        try:
            sync.write_status(name, data)
        except FileNotFoundError:  # the synced folder itself is not there yet: it is edged's to make
            sync.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            sync.write_status(name, data)

    # --- troubles: logged once while they last; the refused ones raise the alarm -------------------

    def _trouble(self, area: str, why: str, *, alarm: bool) -> None:
        """``area`` ("inbox", "status") has a problem (``why``) or none (''): each reason is logged once
        while the area is in trouble, its end once; ``ALARM`` is active while any ``alarm`` one lasts."""
        with self._trouble_lock:
            before = self._troubles.get(area)
            was_alarm = any(a for _, a in self._troubles.values())
            if why:
                self._troubles[area] = (why, alarm)
                logged = self._logged.setdefault(area, set())
                new = why not in logged and len(logged) < 100
                logged.add(why)
            else:
                self._troubles.pop(area, None)
                self._logged.pop(area, None)
                new = False
            is_alarm = any(a for _, a in self._troubles.values())
        if new:
            log.error(
                "%s%s",
                why,
                f" (alarm {ALARM}: nothing is read, written or moved through it until it is a real folder)"
                if alarm
                else "",
            )
        elif not why and before is not None:
            log.warning(
                "recall %s: usable again (%s)",
                area,
                "alarm " + ALARM + " cleared" if before[1] and not is_alarm else "resolved",
            )
        if is_alarm != was_alarm:
            self._on_alarm(ALARM, is_alarm)

    @property
    def troubles(self) -> dict[str, str]:
        """What is wrong now, per area (tests and status)."""
        with self._trouble_lock:
            return {area: why for area, (why, _) in self._troubles.items()}


def _plain(name: str) -> str:
    """A name from the synced folder as plain printable text (control characters and bytes that are
    not UTF-8 escaped), for logs and status documents."""
    return name if name.isascii() and name.isprintable() else json.dumps(name)[1:-1]


def _describe(gaps: list[Gap]) -> str:
    return "; ".join(f"{iso(g.start_ns)} to {iso(g.end_ns)} {g.reason}" for g in gaps) or "none recorded"
