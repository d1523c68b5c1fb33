"""A capture thread: keeps one source open, feeds its samples into a bounded queue.

If the source fails (camera unplugged, file gone) it logs, puts ``LOST`` in the queue, and keeps
trying to open a new source with back-off until it returns. Live (paced) sources never block:
when the queue is full the sample is dropped (the recorder counts the gap). Unpaced sources
block instead, so a benchmark loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edged.capture.base import SourceError, SourceUnavailable

log = logging.getLogger("edged.capture")

LOST = object()  # marker: the source failed; samples after it come from a reopened source

RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0


class CaptureThread(threading.Thread):
    def __init__(
        self, what: str, factory: Callable[[], Any], q: queue.Queue, paced: bool, period: float, stop: threading.Event
    ) -> None:
        super().__init__(name=f"capture-{what}", daemon=True)
        self.what = what
        self._factory = factory
        self._q = q
        self._paced = paced
        self._period = period
        self._halt = stop
        self.source_name: str | None = None
        self.state = "opening"
        self.last_error: str | None = None
        self.queue_drops = 0
        self._last_time: float | None = None

    def _put(self, item: Any) -> None:
        if self._paced and item is not LOST:
            try:
                self._q.put_nowait(item)
            except queue.Full:
                self.queue_drops += 1
            return
        while not self._halt.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        delay = RETRY_MIN_S
        while not self._halt.is_set():
            try:
                source = self._factory()
            except (SourceUnavailable, SourceError, OSError) as exc:
                self._failed(f"cannot open: {exc}")
                self._halt.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.source_name = source.name
            if self.state != "streaming":
                log.info("%s: %s source streaming", self.what, source.name)
            self.state = "streaming"
            delay = RETRY_MIN_S
            try:
                self._stream(source)
            except SourceError as exc:
                self._failed(str(exc))
                self._put(LOST)
            finally:
                try:
                    source.close()
                except Exception:
                    log.debug("%s: close failed", self.what, exc_info=True)

    def _stream(self, source: Any) -> None:
        shift: float | None = None
        while not self._halt.is_set():
            sample = source.read()
            if shift is None:
                # A reopened unpaced source starts its media clock at 0 again: continue after the last.
                shift = 0.0
                if self._last_time is not None and sample.time <= self._last_time:
                    shift = self._last_time + self._period - sample.time
            sample.time += shift
            self._last_time = sample.time
            self._put(sample)

    def _failed(self, reason: str) -> None:
        if self.state != "lost" or reason != self.last_error:
            log.error("%s lost: %s (retrying)", self.what, reason)
        self.state = "lost"
        self.last_error = reason
