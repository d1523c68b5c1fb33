"""What is wrong with the recall service's folders, told once while it lasts.

The inbox and the status folder live in a folder a sync party writes: either may be refused (a
link where a folder belongs) or unwritable for a long while, and the worker looks at them every
poll. Each area's problem is logged once per reason while it lasts and its end once; a refused
folder raises the alarm ``sync_folder_refused`` (``on_alarm``) while any such problem lasts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edged.core.syncfolder import ALARM

log = logging.getLogger("edged.recall")

#: Reasons logged per area while it is in trouble (a folder renamed on every poll is not a flood).
MAX_LOGGED = 100


class Troubles:
    def __init__(self, on_alarm: Callable[[str, bool], None]) -> None:
        self._on_alarm = on_alarm
        self._lock = threading.Lock()
        self._troubles: dict[str, tuple[str, bool]] = {}  # area -> (why, alarm) while it lasts
        self._logged: dict[str, set[str]] = {}  # area -> reasons logged while it lasts (once each)

    def set(self, area: str, why: str, *, alarm: bool) -> None:
        """``area`` ("inbox", "status") has a problem (``why``) or none (''): each reason is logged once
        while the area is in trouble, its end once; ``ALARM`` is active while any ``alarm`` one lasts."""
        with self._lock:
            before = self._troubles.get(area)
            was_alarm = any(a for _, a in self._troubles.values())
            if why:
                self._troubles[area] = (why, alarm)
                logged = self._logged.setdefault(area, set())
                new = why not in logged and len(logged) < MAX_LOGGED
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
    def now(self) -> dict[str, str]:
        """What is wrong now, per area."""
        with self._lock:
            return {area: why for area, (why, _) in self._troubles.items()}
