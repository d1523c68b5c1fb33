"""The daemon: prepares the state folder, reconciles, records, reports status, stops cleanly."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edged.app.control import ControlServer
from edged.app.gpio import ActionRefused, DeviceState, Feedback, GestureButton, GpioError, from_settings, perform
from edged.app.status import DaemonStatus, StatusFile
from edged.app.systemd import ServiceNotifier
from edged.capture.position import PositionSource
from edged.clips.job import FootageJobs
from edged.config.schema import Settings, segment_bytes_estimate
from edged.config.sync import ConfigSync, local_layer
from edged.core.alarms import Alarms
from edged.core.clock import Clock, SystemClock
from edged.core.files import owner_only, write_atomic
from edged.core.journal import Msg, log_event, register_secret, scrub, scrub_doc
from edged.core.memory import limit_malloc_arenas
from edged.core.paths import StatePaths, default_runtime, recorded_runtime
from edged.core.runtime import make_runtime, remove_runtime
from edged.core.states import FAULT_ALARMS, Alarm, DeliveryState, EventState, RecorderState
from edged.events.manager import PANIC_SOURCE, EventManager, EventWorker, MarkResult
from edged.events.store import EventStore
from edged.footage.index import Index, IndexUnavailable
from edged.footage.ring import RingBuffer, open_index_making_room
from edged.recall.service import RecallService
from edged.recording.audio_gate import MuteResult
from edged.recording.clock import RecordingClock
from edged.recording.reconcile import reconcile
from edged.recording.recorder import STALL_S, Recorder
from edged.upload.network import LinkWatch
from edged.upload.outbox import Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.sonoran_unit import SonoranUnit
from edged.upload.target import Target
from edged.upload.targets import build_targets
from edged.upload.uploader import Uploader

if TYPE_CHECKING:
    from edged.capture.gps import GpsdPosition

log = logging.getLogger("edged.daemon")

EXIT_STORAGE = 73  # EX_CANTCREAT: the state folder cannot be written
EXIT_LOCKED = 75  # EX_TEMPFAIL: another daemon uses this state folder
EXIT_SOFTWARE = 70  # EX_SOFTWARE: the recorder failed unexpectedly


class StorageUnusable(Exception):
    pass


def prepare_state_dir(paths: StatePaths) -> None:
    """Create the folders and prove they can be written; raise StorageUnusable saying why."""
    probe = paths.segments / f".write-test-{os.getpid()}"
    try:
        paths.segments.mkdir(parents=True, exist_ok=True, mode=0o700)
        loosened = owner_only(paths.root)
        if loosened:
            log.warning("%d file(s) or folder(s) in %s were readable by others; now owner-only", loosened, paths.root)
        with open(probe, "wb") as f:
            f.write(b"x")
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            # Full, most likely of our own ring: the ring makes room at start; not a reason to refuse
            # (systemd would restart us forever).
            log_event(
                log,
                Msg.STORAGE_ALARM,
                "storage.dir %s is full: making room by overwriting the oldest unprotected footage",
                paths.root,
                level=logging.WARNING,
                alarm="disk_full_at_start",
            )
            return
        why = "is read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "cannot be written"
        raise StorageUnusable(f"storage.dir {paths.root} {why}: {exc.strerror or exc}") from exc
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


@dataclass
class Stages:
    """Every part of a running daemon, built together in :meth:`Daemon._build` (one place, each
    part given what it needs) and started in :meth:`Daemon._start`; stopped in reverse order."""

    index: Index
    ring: RingBuffer
    recorder: Recorder
    events_store: EventStore
    outbox: Outbox
    jobs: FootageJobs
    events: EventManager
    event_worker: EventWorker
    button: GestureButton | None
    feedback: Feedback
    uploader: Uploader
    link_watch: LinkWatch
    recall: RecallService
    control: ControlServer
    config_sync: ConfigSync | None
    #: tells the event worker to stop
    halt: threading.Event = field(default_factory=threading.Event)
    #: the position from gpsd (``[gps]``); None with GPS off
    position: GpsdPosition | None = None  # gpsd, when [gps] is on and no source was given
    #: the Sonoran unit operations (panic, location, call notes), built by _build
    unit: SonoranUnit | None = None


class Daemon:
    """The process: prepares the state folder, builds the stages once, runs until stopped.

    Everything that exists only while running is in :attr:`stages` (None before :meth:`run` has
    built it); :attr:`ready` is set once every stage is built and started, which is what a caller
    waits for (tests, benchmarks) instead of polling attributes."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        stop_after_s: float | None = None,
        pin_factory: object = None,
        notifier: ServiceNotifier | None = None,
        position: PositionSource | None = None,
    ) -> None:
        self.settings = settings
        #: A position source given by the caller (a test's); None: gpsd when ``[gps]`` is on.
        self._position_given = position
        self.notifier = notifier or ServiceNotifier()  # systemd's readiness / watchdog / status
        self.pin_factory = pin_factory  # gpiozero's; tests pass a MockFactory
        self.clock = clock or SystemClock()
        self.paths = StatePaths(settings.state_dir)
        self.stop_after_s = stop_after_s
        self.alarms = Alarms()  # every part's alarms, one guarded set (status, LED, systemd)
        self.stages: Stages | None = None
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._lock_fd: int | None = None
        self._config_lock = threading.Lock()
        self._status_file = StatusFile(self.paths.status)
        self._runtime_made = False  # the runtime folder is ours to remove at stop (not systemd's)

    # --- what tests and tools read -----------------------------------------------------------------

    def _running(self) -> Stages:
        if self.stages is None:
            raise RuntimeError("the daemon is not running (its stages are built by run())")
        return self.stages

    @property
    def recorder(self) -> Recorder | None:
        return self.stages.recorder if self.stages is not None else None

    @property
    def outbox(self) -> Outbox:
        return self._running().outbox

    @property
    def events_store(self) -> EventStore:
        return self._running().events_store

    @property
    def events(self) -> EventManager:
        return self._running().events

    @property
    def recall(self) -> RecallService:
        return self._running().recall

    @property
    def ring(self) -> RingBuffer:
        return self._running().ring

    @property
    def uploader(self) -> Uploader:
        return self._running().uploader

    @property
    def position(self) -> PositionSource | None:
        """Where the device is, for the stages that want it (None: GPS off, or not running)."""
        if self._position_given is not None:
            return self._position_given
        return self.stages.position if self.stages is not None else None

    def wait_ready(self, timeout: float) -> bool:
        """Until every stage runs (True), or ``timeout`` passes or the run ended first (False)."""
        return self.ready.wait(timeout)

    # --- building and starting ---------------------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _open_config_sync(self) -> ConfigSync | None:
        """With ``[sync] dir``: the watcher of the synced config, and the settings to start with (the
        last good synced config over the local one) put in force; None without a synced folder."""
        if not self.settings.sync.dir:
            return None
        try:
            sync = ConfigSync(
                self.settings, local_layer(self.settings), self._apply_config, on_alarm=self._alarm_setter("configsync")
            )
            self.settings = sync.startup()
        except Exception as exc:  # noqa: BLE001 - a synced folder never stops the recording
            log.error("synced config is off for this run: %s: %s", type(exc).__name__, exc)
            return None
        return sync

    def _build(self, index: Index, ring: RingBuffer, config_sync: ConfigSync | None) -> Stages:
        """Every stage, each handed what it needs: the recorder, the footage jobs on its clock, the
        events and recalls that run them, the outbox and uploader, the control socket, the GPIO."""
        s = self.settings
        recorder = Recorder(
            s,
            index,
            ring,
            self.clock,
            self.paths.segments,
            stop_after_s=self.stop_after_s,
            alarms=self.alarms,
        )
        events_store = EventStore(self.paths.events)
        outbox = Outbox(self.paths.outbox, targets=s.upload.targets)
        # One footage job runner for marks and recalls, on the recording's clock.
        jobs = FootageJobs(index, outbox, self.paths.clips, self.paths.segments, RecordingClock.of(recorder))
        gpsd: GpsdPosition | None = None
        if s.gps.enabled and self._position_given is None:
            from edged.capture.gps import GpsdPosition  # only where [gps] is on (off by default)

            gpsd = GpsdPosition(  # fixes placed on the recording's clock, as a clip's wall times are
                s.gps.host,
                s.gps.port,
                s.gps.stale_seconds,
                s.gps.track_seconds,
                timeline_ns=recorder.timeline_now_ns,
                wall_offset_ns=recorder.best_offset_ns,
            )
        position: PositionSource | None = self._position_given or gpsd
        recorder.stamp.position = position  # (built after the recorder: gpsd places fixes on its clock)
        events = EventManager(s, events_store, jobs, position, recorder.gate)
        try:
            button, feedback = from_settings(s.gpio, self._gesture, pin_factory=self.pin_factory)
        except GpioError as exc:  # recording matters more than the button: run without it, loudly
            log.critical("GPIO unusable, running without button and LED: %s", exc)
            self.alarms.add(Alarm.GPIO_ERROR)
            recorder.status.last_error = str(exc)
            button, feedback = None, Feedback("", "")
        events.on_mark = feedback.acknowledge_mark
        self._register_secrets(s)
        uploader = self._new_uploader(outbox, s, build_targets(s))
        unit = self._new_unit(outbox, s, position)
        link_watch = LinkWatch(on_change=self._link_changed)
        recall = RecallService.open(s, self.paths, jobs, outbox, self._alarm_setter("recall"))
        control = ControlServer(
            self.paths.control,
            {
                "mark": lambda req: self._mark_answer(self.mark("cli", str(req.get("note", "")))),
                "status": lambda req: {"status": scrub_doc(self.status().to_dict())},
                "mute": lambda req: self._mute_answer(str(req.get("set", "toggle"))),
                "outbox_retry": lambda req: {"retried": self.uploader.retry(str(req.get("id", "")))},
                "panic": lambda req: {"panic": self.set_panic({"on": True, "off": False}.get(str(req.get("state"))))},
                **recall.control_handlers(),
            },
        )
        return Stages(
            index=index,
            ring=ring,
            recorder=recorder,
            events_store=events_store,
            outbox=outbox,
            jobs=jobs,
            events=events,
            event_worker=EventWorker(events, halt := threading.Event()),
            button=button,
            feedback=feedback,
            uploader=uploader,
            link_watch=link_watch,
            recall=recall,
            control=control,
            config_sync=config_sync,
            halt=halt,
            position=gpsd,
            unit=unit,
        )

    def _start(self, st: Stages) -> None:
        """The stages' threads, footage first protected again: what a crash left held stays held."""
        if st.position is not None:
            st.position.start()
        held = st.events.recover()
        if held:
            log.info("%d event(s) not yet delivered keep their footage protected", held)
        st.event_worker.start()
        if st.unit is not None:
            st.unit.start()
        st.uploader.start()
        st.link_watch.start()
        log.info(
            "uploading to %s (link events from %s)",
            ", ".join(self.settings.upload.targets) or "nowhere",
            st.link_watch.source,
        )
        st.recall.start()
        st.control.start()
        if st.config_sync is not None:
            st.config_sync.start()

    def _stop(self, st: Stages) -> None:
        if st.config_sync is not None:
            st.config_sync.stop()
        st.control.stop()
        st.recall.stop()
        st.link_watch.stop()
        st.uploader.stop()
        if st.unit is not None:
            st.unit.stop()
        if st.button is not None:
            st.button.close()
        st.feedback.close()
        st.halt.set()
        st.event_worker.join(timeout=10)
        st.events.finish_ready()  # whatever became ready while stopping
        if st.position is not None:
            st.position.stop()

    @staticmethod
    def _close_stores(st: Stages) -> None:
        st.recall.close()
        st.events_store.close()
        st.outbox.close()
        st.index.close()

    def _register_secrets(self, settings: Settings) -> None:
        """Secrets that live in the config itself (key files are registered by their targets)."""
        session = settings.upload.sonoran_legacy.session_id
        if len(session) >= 4:
            register_secret(session)

    def _new_uploader(self, outbox: Outbox, settings: Settings, targets: list[Target]) -> Uploader:
        return Uploader(
            outbox,
            targets,
            RetryPolicy.from_settings(settings.upload),
            on_delivered=self._on_delivered,
            on_alarm=self._alarm_setter("uploader"),
            on_part_delivered=self._on_part_delivered,
        )

    def _new_unit(self, outbox: Outbox, settings: Settings, position: PositionSource | None) -> SonoranUnit:
        return SonoranUnit(settings, outbox, position, on_alarm=self._alarm_setter("sonoran_unit"))

    def _on_part_delivered(self, target: str, clip_id: str) -> None:
        unit = self._running().unit
        if unit is not None:
            unit.on_part_delivered(target, clip_id)

    def _on_delivered(self, clip_id: str) -> None:
        """A clip delivered to every target: the event or recall that holds its footage lets go."""
        st = self._running()
        st.events.release_delivered(clip_id)
        st.recall.on_delivered(clip_id)

    # --- a synced config, applied while running ----------------------------------------------------

    def _apply_config(self, running: Settings, live: list[str], restart: list[str]) -> None:
        """All or nothing (ConfigSync rejects the file if this raises): targets first, as the only
        part that can fail, then the recorder (at its next segment), the ring, clips and recall."""
        st = self._running()
        with self._config_lock:
            old = self.settings
            if running.upload != old.upload:
                targets = build_targets(running)  # a bad key file raises here, before anything changed
                st.uploader.stop()
                st.outbox.set_targets(running.upload.targets)
                st.uploader = self._new_uploader(st.outbox, running, targets)
                st.uploader.start()
                if st.unit is not None:
                    st.unit.stop()
                st.unit = self._new_unit(st.outbox, running, self.position)
                st.unit.start()
            st.recorder.reconfigure(running)  # audio.pre_event at once, the encoders at the next segment
            st.ring.configure(running.storage.max_bytes, running.storage.min_free_bytes)
            st.events.configure(running)
            st.recall.configure(running)
            self.settings = running
            self._register_secrets(running)
        if restart:
            log.warning("synced config: %s take effect at the next start", ", ".join(restart))

    def _alarm_setter(self, owner: str) -> Callable[[str, bool], None]:
        """An ``on_alarm(name, active)`` for one part of the daemon: the alarm stays up while any
        owner holds it (the config watcher and the recall inbox both refuse a linked status/)."""

        def on_alarm(name: str, active: bool) -> None:
            self.alarms.set(name, active, owner)

        return on_alarm

    # --- what the daemon answers -------------------------------------------------------------------

    def mark(self, source: str, note: str = "") -> MarkResult:
        st = self._running()
        result = st.events.mark(source, note)
        if Alarm.STORAGE_FULL in self.alarms:
            log_event(
                log,
                Msg.STORAGE_ALARM,
                "MARK %s taken while storage is FULL of protected footage: its "
                "post-roll cannot be recorded until space is freed; the footage already held is kept",
                result.event_id,
                level=logging.CRITICAL,
                alarm=Alarm.STORAGE_FULL,
                event_id=result.event_id,
            )
        return result

    def set_mute(self, on: bool, source: str = "cli") -> MuteResult:
        """Mute or unmute the sound being recorded now (``edged.recording.audio_gate`` says what a
        mute does and when it ends by itself)."""
        result = self._running().recorder.gate.set_muted(on)
        if result.refused:
            log.warning("AUDIO mute (%s) not taken: %s", source, result.refused)
        else:
            log.warning("AUDIO %s (%s)", "MUTED" if result.muted else "unmuted", source)
        return result

    def toggle_mute(self, source: str = "button") -> MuteResult:
        """Mute if sound is being recorded, else unmute (the button gesture "mute")."""
        return self.set_mute(not self._running().recorder.gate.muted(), source)

    def _mute_answer(self, what: str) -> dict[str, object]:
        result = self.toggle_mute("cli") if what == "toggle" else self.set_mute(what == "on")
        off = self._running().recorder.gate.off_now()
        return {"muted": result.muted, "refused": result.refused, "audio": off or "recording"}

    def _gesture(self, action: str) -> None:
        """A button gesture's action (edged.app.gpio), acknowledged by ``perform``: "mark"; "mute"
        and "panic" return the new state (True: muted / panic set) and raise to refuse."""
        actions: dict[str, Callable[[], object] | None] = {
            "mark": lambda: self.mark("button"),
            "mute": self._mute_by_button,
            "panic": getattr(self, "toggle_panic", None),
        }
        perform(action, actions.get(action), self._running().feedback)

    def _mute_by_button(self) -> bool:
        result = self.toggle_mute("button")
        if result.refused:
            raise ActionRefused(result.refused)
        return result.muted

    def toggle_panic(self) -> bool:
        """The panic gesture: on when off, off when on. Returns the panic now wanted."""
        return self.set_panic(None)

    def set_panic(self, on: bool | None) -> bool:
        """Set (True), clear (False) or toggle (None) the unit's panic: committed and sent to CAD
        first (``[upload.sonoran_v2.unit] panic``), then, when on, an event opened whose clip goes
        before every other. Returns the panic now wanted."""
        st = self._running()
        assert st.unit is not None
        wanted = st.unit.set_panic(on)
        log_event(
            log,
            Msg.MARK,
            "PANIC %s%s",
            "ON" if wanted else "OFF",
            "" if st.unit.panic is not None else " (not sent to CAD: upload.sonoran_v2.unit.panic is off)",
            level=logging.CRITICAL if wanted else logging.WARNING,
            panic=int(wanted),
        )
        if wanted:
            self.mark(PANIC_SOURCE, "panic")
        return wanted

    def _link_changed(self, what: str = "") -> None:
        self.uploader.on_link_change(what)
        unit = self._running().unit
        if unit is not None:
            unit.on_link_change()

    @staticmethod
    def _mark_answer(result: MarkResult) -> dict[str, object]:
        return {"event_id": result.event_id, "extended": result.extended}

    def _show_feedback(self, st: Stages) -> None:
        counts = st.outbox.counts()
        st.feedback.show(
            DeviceState(
                recording=st.recorder.status.state == RecorderState.RECORDING,
                fault=bool(self.alarms & FAULT_ALARMS),
                clock_synced=st.recorder.watch.synchronized,
                uploads_pending=sum(
                    n for state, n in counts.items() if state not in (DeliveryState.DELIVERED, DeliveryState.FAILED)
                ),
                event_open=bool(st.events_store.events(EventState.OPEN)),
            )
        )

    def status(self) -> DaemonStatus:
        """What the daemon knows about itself now (``edged.app.status``)."""
        st = self._running()
        rs = st.recorder.status
        return DaemonStatus(
            pid=os.getpid(),
            state=rs.state,
            video_source=rs.video_source,
            audio_source=rs.audio_source,
            frames_encoded=rs.frames_encoded,
            frames_dropped=rs.frames_dropped,
            frames_dropped_behind=rs.frames_dropped_behind,
            frames_not_stored=rs.frames_not_stored,
            segments_written=rs.segments_written,
            current_segment=rs.current_segment,
            alarms=list(self.alarms),
            last_error=rs.last_error,
            clock_synchronized=st.recorder.watch.synchronized,
            updated=time.time(),
            config=self.settings.origin,
            events_open=len(st.events_store.events(EventState.OPEN)),
            audio=(st.recorder.gate.off_now() or "recording") if rs.audio_source else None,
            outbox=st.outbox.counts(),
            outbox_resends=st.outbox.resends(),
            uploads=st.uploader.status(),
            unit=st.unit.status() if st.unit is not None else None,
            synced_config=st.config_sync.last_status if st.config_sync is not None else None,
            gps=st.position.status().to_dict() if st.position is not None else None,
        )

    def write_status(self) -> DaemonStatus:
        """The status now, written to the runtime folder when it says something new."""
        status = self.status()
        try:  # scrubbed: a server's reason may echo a key, and status.json is never to hold one
            self._status_file.write(scrub_doc(status.to_dict()))
        except OSError as exc:
            log.debug("status not written: %s", exc)
        return status

    def _leave_status(self) -> None:
        """At stop: the last status into the state folder (what ``edged status`` shows of a stopped
        daemon, after a reboot too), the runtime folder emptied and, when edged made it, removed."""
        try:
            doc = scrub_doc(self.status().to_dict())
            write_atomic(self.paths.last_status, json.dumps(doc, indent=1).encode())
            if self.paths.status != self.paths.last_status:
                self.paths.status.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("last status not written: %s", exc)
        if self._runtime_made:
            remove_runtime(self.paths.runtime)

    def _open_runtime(self) -> None:
        """The runtime folder for the status file and the control socket (``edged.core.paths``),
        recorded in the state folder for readers when it differs from what is recorded there. A
        folder that cannot be made safely is refused (said in the log) and the state folder used."""
        root = self.paths.root
        wanted, given = default_runtime(root)
        try:
            runtime = make_runtime(wanted, given)
        except OSError as exc:
            log.warning("runtime folder %s refused (%s): status file and control socket in %s", wanted, exc, root)
            runtime, given = root, True
        self._runtime_made = not given
        pointer = self.paths.runtime_pointer
        if recorded_runtime(pointer) != runtime:
            try:
                write_atomic(pointer, f"{runtime}\n".encode(), durable=True)
            except OSError as exc:  # e.g. a full disk: no pointer then, and readers look in the state folder
                log.warning("runtime folder not recorded in %s (%s): using the state folder", pointer, exc)
                if self._runtime_made:
                    remove_runtime(runtime)
                self._runtime_made, runtime = False, root
                pointer.unlink(missing_ok=True)
        self.paths = StatePaths(root, runtime)
        self._status_file = StatusFile(self.paths.status)

    def _tell_systemd(self, st: Stages, status: DaemonStatus) -> None:
        """Readiness once footage is on disk; a watchdog ping only while frames go through the
        recorder (a hung camera or a blocked disk stops them); the status line."""
        rs = st.recorder.status
        line = scrub(status.summary())
        if rs.on_disk:
            self.notifier.ready(line)
        if rs.progress_mono is not None and time.monotonic() - rs.progress_mono <= STALL_S and not st.recorder.stopping:
            self.notifier.watchdog()
        if self.notifier.is_ready:
            self.notifier.status(line)

    # --- the run -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask a running daemon to stop (any thread): the open segment is finished, then every stage."""
        self._stopping.set()
        if self.stages is not None:
            self.stages.recorder.stop()

    def run(self) -> int:
        # Owner-only, with or without systemd's UMask=: footage, clips, copies and stores are
        # evidence and may hold personal data; no other local user reads them.
        umask = os.umask(0o077)
        try:
            return self._run()
        finally:
            os.umask(umask)  # a daemon run in-process (tests) leaves the caller's umask as it was
            self.ready.clear()

    def _claim_state_dir(self) -> int | None:
        """The state folder made, proven writable and locked for this daemon; an exit code if not."""
        try:
            prepare_state_dir(self.paths)
        except StorageUnusable as exc:
            log_event(log, Msg.STORAGE_ALARM, "%s", exc, level=logging.CRITICAL, alarm="storage_unusable")
            return EXIT_STORAGE
        try:
            self._take_lock()
        except BlockingIOError:
            log.critical("another edged daemon is using %s", self.paths.root)
            return EXIT_LOCKED
        self._open_runtime()
        return None

    def _open_index(self) -> tuple[Index, RingBuffer] | int:
        st = self.settings.storage
        try:  # a disk left full (of our own footage) by the last run: room first, for salvage too
            index, moved = open_index_making_room(
                self.paths.index,
                self.paths.segments,
                st.max_bytes,
                st.min_free_bytes,
                segment_bytes_estimate(self.settings),
            )
        except IndexUnavailable as exc:  # sound but unusable now: kept as it is, never rebuilt
            log_event(
                log,
                Msg.STORAGE_ALARM,
                "segment index cannot be opened: %s",
                exc,
                level=logging.CRITICAL,
                alarm="index_unavailable",
            )
            return EXIT_STORAGE
        if moved:
            log_event(
                log,
                Msg.STORAGE_ALARM,
                "segment index was corrupt: moved to %s, rebuilding from the segment files",
                moved,
                level=logging.CRITICAL,
                alarm="index_corrupt",
            )
        ring = RingBuffer(index, self.paths.segments, st.max_bytes, st.min_free_bytes)
        try:
            ring.make_room(segment_bytes_estimate(self.settings))
        except (OSError, sqlite3.OperationalError) as exc:
            log.error("could not make room at start: %s", exc)
        try:
            report = reconcile(index, self.paths.segments)
        except (OSError, sqlite3.OperationalError) as exc:  # e.g. a salvage copy on a full disk
            log.error("reconciling the segment folder failed: %s; continuing", exc)
        else:
            if report.salvaged:
                log.warning(
                    "salvaged %d segment(s) cut off by a crash or power cut: %s",
                    len(report.salvaged),
                    ", ".join(report.salvaged),
                )
        return index, ring

    def _run(self) -> int:
        try:
            refused = self._claim_state_dir()
            if refused is not None:
                return refused
            # Read once this daemon holds the state folder: the settings it starts on.
            config_sync = self._open_config_sync()
            opened = self._open_index()
            if isinstance(opened, int):
                return opened
            index, ring = opened
            st = self.stages = self._build(index, ring, config_sync)
            return self._record(st)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _record(self, st: Stages) -> int:
        rec_thread = threading.Thread(target=st.recorder.run, name="recorder")

        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.notifier.stopping()
            self.stop()

        old = {}
        if threading.current_thread() is threading.main_thread():  # tests run daemons in threads
            old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        log.debug("recording to %s (config: %s)", self.paths.segments, self.settings.origin)
        try:
            self._start(st)
            rec_thread.start()
            if self._stopping.is_set():  # asked to stop while being built
                st.recorder.stop()
            self.ready.set()
            # The main loop also carries the watchdog: it ticks at least four times per WatchdogSec.
            tick = min(1.0, self.notifier.watchdog_s / 4) if self.notifier.watchdog_s else 1.0
            while rec_thread.is_alive():
                self._tell_systemd(st, self.write_status())
                self._show_feedback(st)
                if self.notifier.is_ready:
                    rec_thread.join(timeout=tick)
                else:  # READY the moment the first footage is on disk
                    st.recorder.footage_on_disk.wait(timeout=tick)
        finally:
            st.recorder.stop()
            if rec_thread.ident is not None:  # started
                rec_thread.join()
            self._stop(st)
            self._leave_status()
            self._close_stores(st)
            for s, h in old.items():
                signal.signal(s, h)
        if st.recorder.crashed is not None:
            return EXIT_SOFTWARE  # let systemd restart us; reconcile salvages what was being written
        log.debug("stopped: %d segments written", st.recorder.status.segments_written)
        return 0


def run(settings: Settings, stop_after_s: float | None = None) -> int:
    limit_malloc_arenas()  # the daemon's own process (``edged run``): before its threads start
    return Daemon(settings, stop_after_s=stop_after_s).run()


def state_paths(settings: Settings) -> StatePaths:
    return StatePaths(Path(settings.storage.dir))
