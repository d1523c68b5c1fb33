"""Status: what ``edged status --json`` prints.

The daemon writes ``status.json`` in the state folder every second (atomically); the command
reads it, adds what the index says about the footage, and says ``stopped`` when the daemon that
wrote it is gone.
"""

from __future__ import annotations

import json
import os
from typing import Any

from edged.core.files import read_bounded
from edged.core.paths import StatePaths
from edged.core.timefmt import iso
from edged.footage.index import Index

#: status.json is a few KB; anything bigger is not one.
MAX_STATUS_BYTES = 1 << 20


def footage_summary(index: Index) -> dict[str, Any]:
    stored = index.stored()
    out: dict[str, Any] = {
        "segments": len(stored),
        "bytes_used": sum(s.bytes for s in stored),
        "bytes_protected": index.held_bytes(),
        "oldest_footage": iso(stored[0].best_wall_start_ns) if stored else None,
        "newest_footage": iso(stored[-1].best_wall_end_ns) if stored else None,
        "segments_salvaged": sum(1 for s in stored if s.state == "salvaged"),
        "segments_evicted": len(index.segments(["evicted"])),
        "segments_lost": len(index.segments(["lost"])),
    }
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(paths: StatePaths) -> dict[str, Any]:
    """Everything the operator asks for, whether or not the daemon runs."""
    daemon: dict[str, Any] = {}
    try:
        daemon = json.loads(read_bounded(paths.status, MAX_STATUS_BYTES))
    except (OSError, ValueError):
        daemon = {}
    running = bool(daemon.get("pid")) and _alive(int(daemon["pid"])) and daemon.get("state") != "stopped"
    out: dict[str, Any] = {
        "state": daemon.get("state", "stopped") if running else "stopped",
        "pid": daemon.get("pid") if running else None,
        "video_source": daemon.get("video_source"),
        "audio_source": daemon.get("audio_source"),
        "frames_encoded": daemon.get("frames_encoded", 0),
        "frames_dropped": daemon.get("frames_dropped", 0),
        "frames_not_stored": daemon.get("frames_not_stored", 0),
        "current_segment": daemon.get("current_segment") if running else None,
        "alarms": daemon.get("alarms", []) if running else [],
        "last_error": daemon.get("last_error"),
        "clock_synchronized": daemon.get("clock_synchronized"),
        "updated": daemon.get("updated"),
        "state_dir": str(paths.root),
    }
    if paths.outbox.exists():
        from edged.upload.outbox import Outbox

        ob = Outbox(paths.outbox, read_only=True)
        try:
            out["outbox"] = ob.counts()
        finally:
            ob.close()
    else:
        out["outbox"] = {}
    out["events_open"] = daemon.get("events_open", 0)
    if paths.index.exists():
        idx = Index(paths.index, read_only=True)
        try:
            out.update(footage_summary(idx))
        finally:
            idx.close()
    else:
        out.update({"segments": 0, "bytes_used": 0, "oldest_footage": None, "newest_footage": None})
    return out
