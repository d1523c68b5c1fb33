"""The device's alarms: one set, raised and cleared from any thread, each alarm held by its owners.

The recorder, the uploader, the config watcher and the recall service each raise alarms from
their own threads while the main loop reads them every second for ``status.json``, systemd's
status line and the LED. A plain ``set`` mutated across threads can fail the reader ("set
changed size during iteration"), and two owners of one name (the config watcher and the recall
inbox both refuse a symlinked ``status/``) would clear each other's alarm. So an alarm is
active while at least one owner holds it, and every read is a snapshot taken under the lock.

It keeps the ``set`` operations the recorder and the tests use (``add``, ``discard``, ``in``,
iteration, ``&``), owned by ``""``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator


class Alarms:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, set[str]] = {}

    def set(self, name: str, active: bool, owner: str = "") -> bool:
        """Raise or clear ``name`` for ``owner``; True when the alarm as a whole changed."""
        with self._lock:
            holders = self._owners.get(name, set())
            was = bool(holders)
            if active:
                self._owners[name] = holders | {owner}
            else:
                holders = holders - {owner}
                if holders:
                    self._owners[name] = holders
                else:
                    self._owners.pop(name, None)
            return was != bool(self._owners.get(name))

    def add(self, name: str) -> None:
        self.set(name, True)

    def discard(self, name: str) -> None:
        self.set(name, False)

    def snapshot(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._owners)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._owners

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.snapshot()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._owners)

    def __and__(self, other: Iterable[str]) -> frozenset[str]:
        return self.snapshot() & frozenset(other)

    def __repr__(self) -> str:
        return f"Alarms({sorted(self.snapshot())})"
