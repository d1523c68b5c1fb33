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
from pathlib import Path

from edged.app.status import DaemonStatus
from edged.app.systemd import ServiceNotifier
from edged.config.schema import Settings, segment_bytes_estimate
from edged.core.alarms import Alarms
from edged.core.clock import Clock, SystemClock
from edged.core.files import owner_only, write_atomic
from edged.core.journal import Msg, log_event, register_secret, scrub, scrub_doc
from edged.core.paths import StatePaths
from edged.core.states import FAULT_ALARMS, EventState
from edged.footage.index import IndexUnavailable
from edged.footage.ring import RingBuffer, open_index_making_room
from edged.recording.reconcile import reconcile
from edged.recording.recorder import STALL_S, Recorder

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


class Daemon:
    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        stop_after_s: float | None = None,
        pin_factory=None,
        notifier: ServiceNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.notifier = notifier or ServiceNotifier()  # systemd's readiness / watchdog / status
        self.pin_factory = pin_factory  # gpiozero's; tests pass a MockFactory
        self.clock = clock or SystemClock()
        self.paths = StatePaths(settings.state_dir)
        self.stop_after_s = stop_after_s
        self.recorder: Recorder | None = None
        self._lock_fd: int | None = None
        self._config_lock = threading.Lock()
        self.recall = None
        self.alarms = Alarms()  # every part's alarms, one guarded set (status, LED, systemd)

    def _take_lock(self) -> None:
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        self._lock_fd = fd

    # --- the event stage: marks, clips, outbox, control socket, button and LED ---------------------

    def _start_event_stage(self, index) -> None:
        from edged.app.control import ControlServer
        from edged.app.gpio import Feedback, GpioError, from_settings
        from edged.clips.clock import RecordingClock
        from edged.clips.job import FootageJobs
        from edged.events.manager import EventManager, EventStore, EventWorker
        from edged.upload.outbox import Outbox

        r = self.recorder
        self.events_store = EventStore(self.paths.events)
        self.outbox = Outbox(self.paths.outbox, targets=self.settings.upload.targets)
        # One footage job runner for marks and recalls, on the recording's clock.
        jobs = FootageJobs(index, self.outbox, self.paths.clips, self.paths.segments, RecordingClock.of(r))
        self.events = EventManager(self.settings, self.events_store, jobs)
        held = self.events.recover()
        if held:
            log.info("%d event(s) not yet delivered keep their footage protected", held)
        self._stage_stop = threading.Event()
        self._event_worker = EventWorker(self.events, self._stage_stop)
        self._event_worker.start()
        try:
            self.button, self.feedback = from_settings(
                self.settings.gpio, lambda: self.mark("button"), pin_factory=self.pin_factory
            )
        except GpioError as exc:  # recording matters more than the button: run without it, loudly
            log.critical("GPIO unusable, running without button and LED: %s", exc)
            r.status.alarms.add("gpio_error")
            r.status.last_error = str(exc)
            self.button, self.feedback = None, Feedback("", "")
        self.events.on_mark = self.feedback.acknowledge_mark
        self._start_uploader()
        from edged.recall.service import RecallService

        # recall requests: inbox, status files, worker
        self.recall = RecallService.open(self.settings, self.paths, jobs, self.outbox, self._alarm_setter("recall"))
        self.recall.start()
        self.control = ControlServer(
            self.paths.control,
            {
                "mark": lambda req: self._mark_answer(self.mark("cli", str(req.get("note", "")))),
                "status": lambda req: {"status": scrub_doc(self.status().to_dict())},
                "outbox_retry": lambda req: {"retried": self.uploader.retry(str(req.get("id", "")))},
                **self.recall.control_handlers(),
            },
        )
        self.control.start()
        if self.config_sync is not None:
            self.config_sync.start()

    def _register_secrets(self) -> None:
        """Secrets that live in the config itself (key files are registered by their targets)."""
        session = self.settings.upload.sonoran_legacy.session_id
        if len(session) >= 4:
            register_secret(session)

    def _new_uploader(self, settings: Settings, targets: list):
        from edged.upload.policy import RetryPolicy
        from edged.upload.uploader import Uploader

        return Uploader(
            self.outbox,
            targets,
            RetryPolicy.from_settings(settings.upload),
            on_delivered=self._on_delivered,
            on_alarm=self._set_alarm,
        )

    def _on_delivered(self, clip_id: str) -> None:
        """A clip delivered to every target: the event or recall that holds its footage lets go."""
        self.events.release_delivered(clip_id)
        if self.recall is not None:  # started after the uploader; its worker catches up on its own
            self.recall.on_delivered(clip_id)

    def _start_uploader(self) -> None:
        from edged.upload.network import LinkWatch
        from edged.upload.targets import build_targets

        self._register_secrets()
        self.uploader = self._new_uploader(self.settings, build_targets(self.settings, self.outbox))
        self.uploader.start()
        self.link_watch = LinkWatch(on_change=lambda what="": self.uploader.on_link_change(what))
        self.link_watch.start()
        log.info(
            "uploading to %s (link events from %s)",
            ", ".join(self.settings.upload.targets) or "nowhere",
            self.link_watch.source,
        )

    # --- a synced config, applied while running ----------------------------------------------------

    def _start_config_sync(self) -> None:
        """With ``[sync] dir``: the settings to start with (the last good synced config over the
        local one), then a watcher that applies what can change live."""
        self.config_sync = None
        if not self.settings.sync.dir:
            return
        from edged.config.sync import ConfigSync, local_layer

        try:
            sync = ConfigSync(
                self.settings, local_layer(self.settings), self._apply_config, on_alarm=self._alarm_setter("configsync")
            )
            self.settings = sync.startup()
        except Exception as exc:  # noqa: BLE001 - a synced folder never stops the recording
            log.error("synced config is off for this run: %s: %s", type(exc).__name__, exc)
            return
        self.config_sync = sync

    def _apply_config(self, running: Settings, live: list[str], restart: list[str]) -> None:
        """All or nothing (ConfigSync rejects the file if this raises): targets first, as the only
        part that can fail, then the recorder (at its next segment), the ring, clips and recall."""
        from edged.upload.targets import build_targets

        with self._config_lock:
            old = self.settings
            if running.upload != old.upload:
                targets = build_targets(running, self.outbox)  # a bad key file raises here, before anything changed
                self.uploader.stop()
                self.outbox.set_targets(running.upload.targets)
                self.uploader = self._new_uploader(running, targets)
                self.uploader.start()
            self.recorder.reconfigure(running)
            self.ring.configure(running.storage.max_bytes, running.storage.min_free_bytes)
            self.events.configure(running)
            self.recall.configure(running)
            self.settings = running
            self._register_secrets()
        if restart:
            log.warning("synced config: %s take effect at the next start", ", ".join(restart))

    def _set_alarm(self, name: str, active: bool, owner: str = "uploader") -> None:
        self.alarms.set(name, active, owner)

    def _alarm_setter(self, owner: str):
        """An ``on_alarm(name, active)`` for one part of the daemon: the alarm stays up while any
        owner holds it (the config watcher and the recall inbox both refuse a linked status/)."""
        return lambda name, active: self.alarms.set(name, active, owner)

    def _stop_event_stage(self) -> None:
        if self.config_sync is not None:
            self.config_sync.stop()
        self.control.stop()
        self.recall.stop()
        self.link_watch.stop()
        self.uploader.stop()
        if self.button is not None:
            self.button.close()
        self.feedback.close()
        self._stage_stop.set()
        self._event_worker.join(timeout=10)
        self.events.finish_ready()  # whatever became ready while stopping

    def _close_stores(self) -> None:
        self.recall.close()
        self.events_store.close()
        self.outbox.close()

    def mark(self, source: str, note: str = ""):
        result = self.events.mark(source, note)
        if "storage_full" in self.recorder.status.alarms:
            log_event(
                log,
                Msg.STORAGE_ALARM,
                "MARK %s taken while storage is FULL of protected footage: its "
                "post-roll cannot be recorded until space is freed; the footage already held is kept",
                result.event_id,
                level=logging.CRITICAL,
                alarm="storage_full",
                event_id=result.event_id,
            )
        return result

    @staticmethod
    def _mark_answer(result) -> dict:
        return {"event_id": result.event_id, "extended": result.extended}

    def _show_feedback(self) -> None:
        from edged.app.gpio import DeviceState

        st = self.recorder.status
        counts = self.outbox.counts()
        self.feedback.show(
            DeviceState(
                recording=st.state == "recording",
                fault=bool(st.alarms & FAULT_ALARMS),
                clock_synced=self.recorder.watch.synchronized,
                uploads_pending=sum(n for state, n in counts.items() if state not in ("delivered", "failed")),
                event_open=bool(self.events_store.events("open")),
            )
        )

    def status(self) -> DaemonStatus:
        """What the daemon knows about itself now (``edged.app.status``)."""
        r = self.recorder
        st = r.status
        return DaemonStatus(
            pid=os.getpid(),
            state=st.state,
            video_source=st.video_source,
            audio_source=st.audio_source,
            frames_encoded=st.frames_encoded,
            frames_dropped=st.frames_dropped,
            frames_not_stored=st.frames_not_stored,
            segments_written=st.segments_written,
            current_segment=st.current_segment,
            alarms=list(st.alarms),
            last_error=st.last_error,
            clock_synchronized=r.watch.synchronized,
            updated=time.time(),
            config=self.settings.origin,
            events_open=len(self.events_store.events(EventState.OPEN)),
            outbox=self.outbox.counts(),
            outbox_resends=self.outbox.resends(),
            uploads=self.uploader.status(),
            synced_config=self.config_sync.last_status if self.config_sync is not None else None,
        )

    def write_status(self) -> DaemonStatus:
        status = self.status()
        try:  # scrubbed: a server's reason may echo a key, and status.json is never to hold one
            write_atomic(self.paths.status, json.dumps(scrub_doc(status.to_dict()), indent=1).encode())
        except OSError as exc:
            log.debug("status not written: %s", exc)
        return status

    def _tell_systemd(self, status: DaemonStatus) -> None:
        """Readiness once footage is on disk; a watchdog ping only while frames go through the
        recorder (a hung camera or a blocked disk stops them); the status line."""
        st = self.recorder.status
        line = scrub(status.summary())
        if st.on_disk:
            self.notifier.ready(line)
        if (
            st.progress_mono is not None
            and time.monotonic() - st.progress_mono <= STALL_S
            and not self.recorder.stopping
        ):
            self.notifier.watchdog()
        if self.notifier.is_ready:
            self.notifier.status(line)

    def run(self) -> int:
        # Owner-only, with or without systemd's UMask=: footage, clips, copies and stores are
        # evidence and may hold personal data; no other local user reads them.
        umask = os.umask(0o077)
        try:
            return self._run()
        finally:
            os.umask(umask)  # a daemon run in-process (tests) leaves the caller's umask as it was

    def _run(self) -> int:
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

        self._start_config_sync()
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
            os.close(self._lock_fd)
            self._lock_fd = None
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
        ring = self.ring = RingBuffer(index, self.paths.segments, st.max_bytes, st.min_free_bytes)
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
        self.recorder = Recorder(
            self.settings,
            index,
            ring,
            self.clock,
            self.paths.segments,
            stop_after_s=self.stop_after_s,
            alarms=self.alarms,
        )
        rec_thread = threading.Thread(target=self.recorder.run, name="recorder")
        self._start_event_stage(index)

        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            self.notifier.stopping()
            self.recorder.stop()

        old = {}
        if threading.current_thread() is threading.main_thread():  # tests run daemons in threads
            old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        log.debug("recording to %s (config: %s)", self.paths.segments, self.settings.origin)
        rec_thread.start()
        # The main loop also carries the watchdog: it ticks at least four times per WatchdogSec.
        tick = min(1.0, self.notifier.watchdog_s / 4) if self.notifier.watchdog_s else 1.0
        try:
            while rec_thread.is_alive():
                self._tell_systemd(self.write_status())
                self._show_feedback()
                rec_thread.join(timeout=tick)
        finally:
            self.recorder.stop()
            rec_thread.join()
            self._stop_event_stage()
            self.write_status()
            self._close_stores()
            for s, h in old.items():
                signal.signal(s, h)
            index.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
        if self.recorder.crashed is not None:
            return EXIT_SOFTWARE  # let systemd restart us; reconcile salvages what was being written
        log.debug("stopped: %d segments written", self.recorder.status.segments_written)
        return 0


def run(settings: Settings, stop_after_s: float | None = None) -> int:
    return Daemon(settings, stop_after_s=stop_after_s).run()


def state_paths(settings: Settings) -> StatePaths:
    return StatePaths(Path(settings.storage.dir))
