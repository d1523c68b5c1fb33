"""A capture thread: keeps one source open, feeds its samples into a bounded queue.

If the source fails (camera unplugged, file gone) it logs, puts ``LOST`` in the queue, and keeps
trying to open a new source with back-off until it returns. Live (paced) sources never block:
when the queue is full the sample is dropped (the recorder counts the gap). Unpaced sources
block instead, so a benchmark loses nothing.

The queue (:class:`SampleQueue`) is the cheapest hand-off found: every sample crosses a thread
boundary, and ``queue.Queue`` does it in Python (a lock, a condition and, for each blocked
waiter, a new lock), waking the blocked producer of an unpaced source at every sample taken:
measured, the futex wake-ups alone cost 0.13 CPU s per two recorded minutes, about 1 % of the
encoders' work. Here samples go through a C ``SimpleQueue``, and a producer blocked on a full
queue is woken once the consumer has taken half of it, so it refills in one burst.
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

#: How long a producer blocked on a full queue sleeps before it looks at the stop flag again.
FULL_WAIT_S = 0.2


class SampleQueue:
    """A bounded queue from one capture thread to the recorder.

    ``offer`` never blocks (a live source: a full queue drops the sample), ``put`` blocks while the
    queue is full (an unpaced source: nothing is lost). ``get`` and ``get_nowait`` raise
    ``queue.Empty`` as ``queue.Queue``'s do. A ``put`` blocked on a full queue goes on once the
    queue has drained to half its size (one wake-up per half queue, not one per sample)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._low = maxsize // 2
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._space = threading.Event()  # cleared by a producer about to wait for room
        self._space.set()

    def qsize(self) -> int:
        return self._q.qsize()

    def offer(self, item: Any) -> bool:
        """Add ``item`` unless the queue is full; False when it was dropped."""
        if self._q.qsize() >= self.maxsize:
            return False
        self._q.put(item)
        return True

    def put(self, item: Any, halt: threading.Event) -> bool:
        """Add ``item``, waiting while the queue is full; False if ``halt`` was set first."""
        q = self._q
        while q.qsize() >= self.maxsize:
            if halt.is_set():
                return False
            self._space.clear()
            # Looked at again after the clear: a consumer that drained the queue before it saw
            # the flag cleared would never set it (it sets it at the low mark, on its way down).
            if q.qsize() > self._low:
                self._space.wait(FULL_WAIT_S)
        q.put(item)
        return True

    def _taken(self) -> None:
        if not self._space.is_set() and self._q.qsize() <= self._low:
            self._space.set()

    def get(self, timeout: float | None = None) -> Any:
        item = self._q.get(timeout=timeout)
        self._taken()
        return item

    def get_nowait(self) -> Any:
        item = self._q.get_nowait()
        self._taken()
        return item


class CaptureThread(threading.Thread):
    def __init__(
        self, what: str, factory: Callable[[], Any], q: SampleQueue, paced: bool, period: float, stop: threading.Event
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
            if not self._q.offer(item):
                self.queue_drops += 1
            return
        self._q.put(item, self._halt)

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
