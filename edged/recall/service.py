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

What is the recall's own lives in this package: the request and its checks (``request``), the
inbox, the status documents and files (``status``, ``troubles``), and how a window becomes parts:
regular or timelapse (``build``). Everything a recall shares with a marked event (hold, wait for
the window to be recorded, build, manifest, outbox, mark built, release, recover at start) is the
footage job (``edged.clips.job.FootageJobs``), run here with the recording's clock
(``edged.recording.clock.RecordingClock``) rather than with the daemon.

The work runs in one background thread at a lower CPU priority (nice +10) than the recording.
A daemon restarted mid-way re-protects the footage of every unfinished request and builds again
what was not in the outbox yet; what was in the outbox is never built again.

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

import logging
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.clips.audio import audio_manifest, timelapse_audio
from edged.clips.job import Clip, FootageJobs, Job, PlacedPart
from edged.clips.parts import ClipError, Interrupted
from edged.clips.window import BootWindow, WallWindow
from edged.config.schema import Settings
from edged.core.ids import timed_id
from edged.core.journal import Msg, log_event, scrub_doc
from edged.core.paths import StatePaths
from edged.core.priority import background_thread
from edged.core.states import DeliveryState, RecallState
from edged.core.timefmt import iso
from edged.footage.index import STORED
from edged.footage.timeline import coverage
from edged.recall import build
from edged.recall.inbox import Inbox, InboxItem
from edged.recall.request import (
    CLIP_PREFIX,
    ID_PATTERN,
    DuplicateRequest,
    InvalidRequest,
    Recall,
    RecallRequest,
    RecallStore,
    bounded,
    parse_request,
    show,
)
from edged.recall.status import StatusFiles, document, plain, status_dir
from edged.recall.troubles import Troubles
from edged.recording.clock import RecordingClock
from edged.upload.outbox import PRIORITY_RECALL, Outbox

if TYPE_CHECKING:
    from edged.clips.timelapse import Timelapse

log = logging.getLogger("edged.recall")

#: How long ``stop`` waits for the worker (a timelapse stops at its next segment; well inside
#: systemd's TimeoutStopSec=20 with the recorder's own stop).
STOP_WAIT_S = 8.0


def store_path(paths: StatePaths) -> Path:
    return paths.root / "recall.sqlite"


def inbox_dir(settings: Settings) -> Path | None:
    return Path(settings.sync.dir) / "recall" if settings.sync.dir else None


def new_id() -> str:
    return timed_id(time.time_ns())


def recall_job(req: RecallRequest, hold: BootWindow) -> Job:
    """A recall's footage job: its window on the wall clock, the same range held on the boot that
    was recording when it was accepted; its parts go after every marked clip."""
    return Job(req.clip_id, req.hold_owner, WallWindow(req.start_ns, req.end_ns, hold), PRIORITY_RECALL)


class RecallService:
    """Accepts recall requests (inbox, control socket), runs them as footage jobs in a worker thread,
    follows their uploads and writes their status files."""

    def __init__(
        self,
        settings: Settings,
        store: RecallStore,
        jobs: FootageJobs,
        outbox: Outbox,
        *,
        status_folder: Path,
        inbox: Inbox | None,
        period_s: float = 0.5,
        on_alarm: Callable[[str, bool], None] = lambda name, active: None,
    ) -> None:
        """``jobs``: the footage jobs on the recording's clock (shared with the marked events);
        ``outbox``: the one ``jobs`` queues into, read for the status documents; ``status_folder``:
        where status files go (``status_dir``); ``on_alarm(name, active)``: raises or clears
        ``sync_folder_refused``. ``start`` recovers and starts the worker."""
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.outbox = outbox
        self.inbox = inbox
        self.period_s = period_s
        self._troubles = Troubles(on_alarm)
        self.status_files = StatusFiles(settings, status_folder, self._troubles)
        self._accept_lock = threading.Lock()  # one request accepted at a time (duplicate check + hold + store)
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_inbox = 0.0

    @classmethod
    def open(
        cls,
        settings: Settings,
        paths: StatePaths,
        jobs: FootageJobs,
        outbox: Outbox,
        on_alarm: Callable[[str, bool], None] = lambda name, active: None,
    ) -> RecallService:
        """The daemon's: its store in the state folder, the synced inbox and status folder the
        settings name (not started)."""
        folder = inbox_dir(settings)
        return cls(
            settings,
            RecallStore(store_path(paths)),
            jobs,
            outbox,
            status_folder=status_dir(settings),
            inbox=Inbox(folder) if folder else None,
            on_alarm=on_alarm,
        )

    @property
    def clock(self) -> RecordingClock:
        return self.jobs.clock

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        folder = inbox_dir(settings)
        if (folder and (self.inbox is None or self.inbox.folder != folder)) or (not folder and self.inbox):
            self.inbox = Inbox(folder) if folder else None
            self._troubles.set("inbox", "", alarm=True)  # looked at afresh at the next poll
        self.status_files.configure(settings, status_dir(settings))

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
        background_thread("recall worker")  # the recording must never wait for a timelapse
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
        """At start: every unfinished request protects its footage again (an index rebuilt from the
        folder has no holds of its own); one cut off while being built is built again, unless its
        parts were queued already (``FootageJobs.adopt``: those parts are the recall)."""
        held = 0
        for rec in self.store.recalls([RecallState.PENDING, RecallState.PROCESSING, RecallState.FAILED]):
            if rec.status == RecallState.FAILED and not rec.built:
                continue
            job = recall_job(rec.request, rec.hold)
            if rec.status == RecallState.PROCESSING and not rec.built:
                if not self.jobs.recover(job, partial(self._adopted, rec)):
                    detail = rec.detail | {"progress": "building again after a restart"}
                    self.store.update(rec.id, RecallState.PENDING, detail=detail)
            else:
                self.jobs.recover(job)
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
        dev, clock = self.settings.device, self.clock
        try:
            req = parse_request(
                body,
                rid,
                now_ns=clock.wall_now_ns(),
                positions=[self.settings.camera.position],
                device_names=[n for n in (dev.id, dev.unit_number) if n],
                source=source,
                clock_synchronized=clock.clock_synced(),
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
            off = clock.footage_offset_ns()
            hold = BootWindow(clock.boot_id, req.start_ns - off, req.end_ns - off)
            try:
                self.store.add(req, hold)
            except DuplicateRequest as dup:
                refused: tuple[list[str], Recall | None, bool] | None = ([str(dup)], dup.existing, dup.conflict)
            except InvalidRequest as exc:
                refused = (exc.reasons, None, False)
            else:
                refused = None
                self.jobs.hold(recall_job(req, hold))
        if refused is not None:
            reasons, existing, conflict = refused
            return self._reject(rid, reasons, body, source, duplicate_of=existing, conflict=conflict)
        clock.request_boundary(req.end_ns - off)  # the segment holding the window's end is finished promptly
        log.warning(
            "RECALL %s accepted (%s): %s %d min from %s, cameras %s",
            req.id,
            source,
            req.recall_type,
            req.duration_min,
            iso(req.start_ns),
            ", ".join(req.cameras),
        )
        # The answer is the state at acceptance (pending), written before the worker is woken: woken
        # first, it may already have moved a request whose footage is all recorded to processing.
        accepted = self._write_status(req.id)
        self._wake.set()
        return accepted

    # --- building -----------------------------------------------------------------------------------

    def ready(self, rec: Recall) -> bool:
        """The recording passed the window's end and no segment of the window is still being written."""
        return self.jobs.ready(recall_job(rec.request, rec.hold))

    def process_ready(self) -> list[str]:
        done = []
        for rec in self.store.recalls([RecallState.PENDING]):
            if self._halt.is_set():
                break
            if self.ready(rec):
                self.process(rec)
                done.append(rec.id)
            elif rec.detail.get("progress") is None:
                self._set(
                    rec,
                    RecallState.PENDING,
                    detail={"progress": f"waiting for the footage up to {iso(rec.request.end_ns)}"},
                )
        return done

    def process(self, rec: Recall) -> None:
        """Build a ready request into the outbox (``FootageJobs.run``), whatever footage of its window
        exists; failed, with every gap and its reason, when none does."""
        req = rec.request
        rec = self._set(rec, RecallState.PROCESSING, detail={"progress": "building"})
        rows = self.jobs.index.segments()
        available, gaps = coverage(rows, req.start_ns, req.end_ns)
        footage = {
            "available": [{"start": iso(a), "end": iso(b)} for a, b in available],
            "missing": [g.as_dict() for g in gaps],
        }
        if not available:
            self._fail(rec, "no footage in the requested range: " + build.describe(gaps), footage)
            return
        stored = [s for s in rows if s.state in STORED]
        job = recall_job(req, rec.hold)
        used = self.jobs.covered(job, stored)
        took: dict[str, float] = {}

        def make(folder: Path) -> Clip | None:
            t0, c0 = time.monotonic(), time.thread_time()
            tl: Timelapse | None = None
            try:
                if req.recall_type == "timelapse":
                    tl = build.timelapse(self.jobs, self.settings, req, used, folder, cancelled=self._halt.is_set)
                    parts = [PlacedPart(tl.as_part(), tl.first_frame_ns)]  # rendered on the wall clock
                else:
                    parts = build.regular(self.jobs, self.settings, req, stored, used, folder)
            except Interrupted:
                self.store.update(rec.id, RecallState.PENDING, detail={"progress": "building again after a restart"})
                log.info("recall %s: interrupted while building; built again at the next start", req.id)
                return None
            except (ClipError, OSError) as exc:
                self._fail(rec, f"recall not built: {exc}", footage)
                return None
            except Exception as exc:
                log.exception("recall %s: building failed", req.id)
                self._fail(rec, f"recall not built: internal error {exc!r}", footage)
                return None
            took.update(wall_s=round(time.monotonic() - t0, 3), thread_cpu_s=round(time.thread_time() - c0, 3))
            audio = timelapse_audio() if tl is not None else audio_manifest(self.jobs.index, parts, used)
            manifest = build.manifest(self.settings, rec, used, parts, footage, tl, audio)
            return Clip(tuple(parts), manifest, rec.created_ns)

        def mark_built(clip: Clip | None) -> None:
            if clip is None:
                self._adopted(rec, clip)
                return
            detail = {
                "progress": "uploading",
                "footage": footage,
                "build": took,
                "timelapse": clip.manifest["timelapse"],
                "audio": {k: v for k, v in clip.manifest["audio"].items() if k != "not_recorded"},
            }
            self._mark_built(rec, detail)
            log.warning(
                "RECALL %s built: %d part(s), %.1f s, %d bytes, in %.2f s%s",
                req.id,
                len(clip.parts),
                clip.duration_ms / 1000,
                clip.bytes,
                took["wall_s"],
                f"; missing: {build.describe(gaps)}" if gaps else "",
            )

        if self.jobs.run(job, make, mark_built):
            self.refresh(rec.id)

    def _mark_built(self, rec: Recall, detail: dict[str, Any]) -> None:
        self.store.update(rec.id, RecallState.PROCESSING, built=True, detail=detail)

    def _adopted(self, rec: Recall, clip: Clip | None) -> None:
        """Its parts were queued by a run cut off before it said built (``FootageJobs.adopt``)."""
        self._mark_built(rec, rec.detail | {"progress": "uploading"})

    # --- delivery -----------------------------------------------------------------------------------

    def on_delivered(self, clip_id: str) -> bool:
        """The uploader delivered a clip everywhere: a recall's completes and releases its footage."""
        if not clip_id.startswith(CLIP_PREFIX):
            return False
        return self.refresh(clip_id[len(CLIP_PREFIX) :])

    def refresh(self, recall_id: str | None = None) -> bool:
        """Follow the uploads of built requests: all delivered → completed (footage released); one
        refused for good → failed (footage kept). True if one completed."""
        recs = (
            [self.store.get(recall_id)]
            if recall_id
            else self.store.recalls([RecallState.PROCESSING, RecallState.FAILED])
        )
        completed = False
        for rec in recs:
            if rec is None or not rec.built or rec.status == RecallState.COMPLETED:
                continue
            clip_id = rec.request.clip_id
            if self.jobs.release_if_delivered(recall_job(rec.request, rec.hold)):
                self._set(rec, RecallState.COMPLETED, detail=rec.detail | {"progress": "delivered"})
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
            refused = [d for d in deliveries if d.state == DeliveryState.FAILED]
            if refused and rec.status != RecallState.FAILED:
                d = refused[0]
                reason = (
                    f"upload of part {d.part.number} to {d.target} refused for good: {d.reason} (the parts are "
                    f"kept; `edged outbox retry {clip_id}` sends them again)"
                )
                self._set(rec, RecallState.FAILED, reason, detail=rec.detail | {"progress": "upload refused"})
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
                done = sum(d.state == DeliveryState.DELIVERED for d in deliveries)
                progress = f"uploading: {done} of {len(deliveries)} deliveries done"
                if rec.status != RecallState.PROCESSING or rec.detail.get("progress") != progress:
                    self._set(rec, RecallState.PROCESSING, detail=rec.detail | {"progress": progress})
        return completed

    def _fail(self, rec: Recall, reason: str, footage: dict[str, Any]) -> None:
        self.jobs.release(recall_job(rec.request, rec.hold))
        self._set(rec, RecallState.FAILED, reason, detail={"progress": "failed", "footage": footage})
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
        self._troubles.set("inbox", f"recall inbox refused: {inbox.refused}" if inbox.refused else "", alarm=True)
        return taken

    def _take(self, item: InboxItem) -> None:
        source = f"inbox:{plain(item.name)}"
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

    def _set(self, rec: Recall, status: RecallState, reason: str = "", detail: dict[str, Any] | None = None) -> Recall:
        rec = self.store.update(rec.id, status, reason, detail=detail)
        self._write_status(rec.id)
        return rec

    def status(self, recall_id: str) -> dict[str, Any] | None:
        if not isinstance(recall_id, str) or not ID_PATTERN.fullmatch(recall_id):
            return None  # no stored request has such an id (and SQLite is not asked about it)
        rec = self.store.get(recall_id)
        return scrub_doc(self._document(rec)) if rec else None

    def _document(self, rec: Recall) -> dict[str, Any]:
        return document(rec, self.settings.device, self.outbox)

    def _write_status(self, recall_id: str) -> dict[str, Any]:
        with self.status_files.lock:
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
        shown = rid if isinstance(rid, str) and ID_PATTERN.fullmatch(rid) else plain(str(rid))[:80]
        reasons = [r for r in reasons if r] or ["rejected"]
        doc: dict[str, Any] = {
            "id": shown,
            "status": RecallState.REJECTED,
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
        with self.status_files.lock:  # the name and the write in one step: an acceptance's write waits
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
        """Write ``status/<name>`` (``StatusFiles.put``: scrubbed, kept to write again if it cannot be
        written now). Every status document goes out through here."""
        self.status_files.put(name, doc, recall_id)

    def flush_status(self) -> int:
        """Write the status files that could not be written yet; how many were."""
        return self.status_files.flush()

    @property
    def troubles(self) -> dict[str, str]:
        """What is wrong now, per area (tests and status)."""
        return self._troubles.now
