"""The status document, typed once: what the daemon reports and what ``edged status`` shows.

:class:`DaemonStatus` is what the running daemon knows about itself. It is looked at every second
and written to ``status.json`` in the runtime folder (in memory, see :mod:`edged.core.paths`) when
it says something new (:class:`StatusFile`), answered on the control socket, and summed up in
systemd's ``STATUS=`` line (:meth:`DaemonStatus.summary`). When the daemon stops, its last status
is left in the state folder. :class:`Report` is what the operator
asks for with ``edged status``: the daemon's status when it runs (read back from ``status.json``,
a file any process may have left behind, so read bounded and tolerantly), plus what the stores
say whether it runs or not: footage on disk and the outbox.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.core.files import read_bounded, write_atomic
from edged.core.paths import StatePaths
from edged.core.states import DeliveryState, RecorderState, SegmentState
from edged.core.timefmt import iso
from edged.footage.index import Index

#: status.json is a few KB; anything bigger is not one.
MAX_STATUS_BYTES = 1 << 20


@dataclass
class DaemonStatus:
    """The running daemon's account of itself: what status.json holds."""

    pid: int = 0
    state: str = RecorderState.STOPPED.value
    video_source: str | None = None
    audio_source: str | None = None
    frames_encoded: int = 0
    frames_dropped: int = 0
    frames_dropped_behind: int = 0  # of those, dropped for lack of CPU (alarm cpu_starved)
    frames_not_stored: int = 0
    segments_written: int = 0
    current_segment: str | None = None
    alarms: list[str] = field(default_factory=list)
    last_error: str | None = None
    clock_synchronized: bool | None = None
    #: wall time (s since the epoch) it was taken
    updated: float = 0.0
    #: where the settings in force came from
    config: str = ""
    events_open: int = 0
    #: sound now: "recording", "pre-event" (no event, audio.pre_event off), "muted"; None: no microphone
    audio: str | None = None
    #: deliveries per state
    outbox: dict[str, int] = field(default_factory=dict)
    outbox_resends: int = 0
    #: per target: paused, deferred, alarms, ... (the uploader's own account)
    uploads: dict[str, Any] = field(default_factory=dict)
    #: what became of the last synced config (status/config.json), None without a synced folder
    synced_config: dict[str, Any] | None = None
    #: the position source's account (``edged.capture.gps.GpsStatus``: fix, position, age, gpsd,
    #: problem); None with GPS off
    gps: dict[str, Any] | None = None
    #: the Sonoran unit: panic (wanted, acknowledged), location, call notes per state
    unit: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> DaemonStatus | None:
        """A status read back from ``status.json``: known keys of the right type are taken, anything
        else is left at its default (a file without a pid is a run that is over); None when it is
        not a JSON object at all."""
        if not isinstance(doc, dict):
            return None
        kept: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in doc and _fits(doc[f.name], f.type):
                kept[f.name] = doc[f.name]
        return cls(**kept)

    def summary(self) -> str:
        """The one-line ``STATUS=`` text systemd shows (``systemctl status edged``)."""
        waiting = sum(
            n for state, n in self.outbox.items() if state not in (DeliveryState.DELIVERED, DeliveryState.FAILED)
        )
        parts = [self.state]
        if self.video_source:
            parts.append(f"camera {self.video_source}")
        parts.append(f"{self.segments_written} segments")
        if self.current_segment:
            parts.append(f"writing {self.current_segment}")
        if self.events_open:
            parts.append(f"{self.events_open} event(s) open")
        parts.append(f"{waiting} upload(s) waiting")
        if self.outbox.get(DeliveryState.FAILED):
            parts.append(f"{self.outbox[DeliveryState.FAILED]} failed")
        if self.gps is not None:
            parts.append(f"gps {self.gps.get('fix')}")
        parts.append("alarms: " + (", ".join(self.alarms) if self.alarms else "none"))
        return "; ".join(parts)


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "float": (int, float),
    "str | None": (str, type(None)),
    "bool | None": (bool, type(None)),
    "list[str]": (list,),
    "dict[str, int]": (dict,),
    "dict[str, Any]": (dict,),
    "dict[str, Any] | None": (dict, type(None)),
}


def _fits(value: Any, annotation: Any) -> bool:
    want = _TYPES.get(str(annotation), (object,))
    if isinstance(value, bool) and bool not in want and object not in want:
        return False  # JSON true is not a count
    return isinstance(value, want)


#: Fields that change with every look and say nothing new by themselves: when the time it was taken
#: and the age of the GPS fix are all that changed, the file is not rewritten.
VOLATILE_FIELDS = ("updated",)
VOLATILE_GPS_FIELDS = ("age_s",)


def lasting(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without its volatile fields: what tells whether the status changed."""
    out = {k: v for k, v in doc.items() if k not in VOLATILE_FIELDS}
    if isinstance(out.get("gps"), dict):
        out["gps"] = {k: v for k, v in out["gps"].items() if k not in VOLATILE_GPS_FIELDS}
    return out


class StatusFile:
    """``status.json``, written (atomically, not fsynced: it is in memory) only when the document
    differs from the last one written in more than its volatile fields (:func:`lasting`). While
    frames are being encoded the counters move, so a recording daemon still writes it about once a
    second, to the runtime folder's tmpfs; an idle or stopped one does not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0
        self._last: str | None = None

    def write(self, doc: dict[str, Any]) -> bool:
        """Write ``doc`` if it says something new; whether it was written. OSError propagates."""
        key = json.dumps(lasting(doc), sort_keys=True, default=str)
        if key == self._last:
            return False
        write_atomic(self.path, json.dumps(doc, indent=1).encode())
        self._last = key
        self.writes += 1
        return True


@dataclass
class Footage:
    """What the index says about the footage on disk."""

    segments: int = 0
    bytes_used: int = 0
    bytes_protected: int = 0
    oldest_footage: str | None = None
    newest_footage: str | None = None
    segments_salvaged: int = 0
    segments_evicted: int = 0
    segments_lost: int = 0

    @classmethod
    def of(cls, index: Index) -> Footage:
        stored = index.stored()
        return cls(
            segments=len(stored),
            bytes_used=sum(s.bytes for s in stored),
            bytes_protected=index.held_bytes(),
            oldest_footage=iso(stored[0].best_wall_start_ns) if stored else None,
            newest_footage=iso(stored[-1].best_wall_end_ns) if stored else None,
            segments_salvaged=sum(1 for s in stored if s.state == SegmentState.SALVAGED),
            segments_evicted=len(index.segments([SegmentState.EVICTED])),
            segments_lost=len(index.segments([SegmentState.LOST])),
        )


def footage_summary(index: Index) -> dict[str, Any]:
    return dataclasses.asdict(Footage.of(index))


@dataclass
class Report:
    """``edged status``: the daemon's own status while it runs (or what its last run counted), and
    the stores' account always."""

    state_dir: str
    #: the last status.json (None: none, or not one)
    daemon: DaemonStatus | None
    #: whether the daemon that wrote it still runs
    running: bool
    footage: Footage
    outbox: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """One flat document (``edged status --json``): the daemon's fields (``stopped`` when it is not
        running, the counters of its last run kept, nothing live), the outbox as the store counts it
        now, the footage as the index says."""
        last = self.daemon
        out: dict[str, Any] = last.to_dict() if last is not None else {}
        out["state"] = last.state if last is not None and self.running else RecorderState.STOPPED.value
        out["pid"] = last.pid if last is not None and self.running else None
        if not self.running:
            out["current_segment"], out["alarms"] = None, []
            out["gps"] = None  # a position is only ever current
        out |= {"state_dir": self.state_dir, "outbox": self.outbox}
        out |= dataclasses.asdict(self.footage)
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_daemon_status(paths: StatePaths) -> tuple[DaemonStatus | None, bool]:
    """The running daemon's ``status.json`` (in its runtime folder), else the one the last run left
    in the state folder (None when neither is there or is one), and whether the daemon that wrote
    it still runs."""
    last = None
    for where in (paths.status, paths.last_status):
        try:
            last = DaemonStatus.from_dict(json.loads(read_bounded(where, MAX_STATUS_BYTES)))
        except (OSError, ValueError):
            continue
        break
    if last is None:
        return None, False
    return last, last.pid > 0 and _alive(last.pid) and last.state != RecorderState.STOPPED


def read_report(paths: StatePaths) -> Report:
    """Everything the operator asks for, whether or not the daemon runs."""
    last, running = read_daemon_status(paths)
    outbox: dict[str, int] = {}
    if paths.outbox.exists():
        from edged.upload.outbox import Outbox

        ob = Outbox(paths.outbox, read_only=True)
        try:
            outbox = ob.counts()
        finally:
            ob.close()
    footage = Footage()
    if paths.index.exists():
        idx = Index(paths.index, read_only=True)
        try:
            footage = Footage.of(idx)
        finally:
            idx.close()
    return Report(str(paths.root), last, running, footage, outbox)


def read_status(paths: StatePaths) -> dict[str, Any]:
    """``edged status --json``."""
    return read_report(paths).to_dict()
