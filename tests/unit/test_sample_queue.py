"""The capture hand-off (``edged.capture.thread.SampleQueue``): bounded, never losing an unpaced
sample, dropping a live one when full, and never leaving a blocked producer asleep.

A producer blocked on a full queue is woken only once half of it is taken (one wake-up per half
queue): these tests drive a real producer thread through that, and wait for states, not times.
"""

from __future__ import annotations

import queue
import threading

import pytest

from edged.capture import thread
from edged.capture.thread import SampleQueue
from tests.support import wait_until


@pytest.fixture
def no_timeout_rescue(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blocked ``put`` looks again every ``FULL_WAIT_S`` anyway: made an hour here, so a wake-up
    the consumer forgets leaves the producer asleep and the test fails at its deadline."""
    monkeypatch.setattr(thread, "FULL_WAIT_S", 3600.0)


def test_offer_drops_when_full_and_keeps_the_order() -> None:
    q = SampleQueue(3)
    assert [q.offer(i) for i in range(4)] == [True, True, True, False]
    assert q.qsize() == 3
    assert [q.get_nowait() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


@pytest.mark.usefixtures("no_timeout_rescue")
def test_a_blocked_producer_goes_on_once_half_the_queue_is_taken_and_loses_nothing() -> None:
    q, halt = SampleQueue(4), threading.Event()
    put: list[int] = []

    def produce() -> None:
        for i in range(200):
            assert q.put(i, halt)
            put.append(i)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    wait_until(lambda: len(put) == 4, 10, "the queue filled")
    assert q.qsize() == 4  # full: the fifth put waits
    assert q.get() == 0 and q.get() == 1  # down to half: the producer is woken and refills
    wait_until(lambda: len(put) >= 6 and q.qsize() == 4, 10, "the producer refilled the queue")
    got = [0, 1] + [q.get(timeout=10) for _ in range(198)]
    producer.join(timeout=10)
    assert got == list(range(200))  # every sample, in order: an unpaced source loses nothing
    assert not producer.is_alive()


@pytest.mark.usefixtures("no_timeout_rescue")
@pytest.mark.parametrize("size", [1, 2, 3, 30])
def test_a_consumer_taking_one_at_a_time_never_stalls_the_producer(size: int) -> None:
    """Sizes where the low mark is 0 or 1 (the smallest queue the recorder makes holds 2), and the
    camera's at 10 fps."""
    q, halt = SampleQueue(size), threading.Event()
    producer = threading.Thread(target=lambda: [q.put(i, halt) for i in range(300)], daemon=True)
    producer.start()
    assert [q.get(timeout=30) for _ in range(300)] == list(range(300))
    producer.join(timeout=10)
    assert not producer.is_alive()


def test_a_producer_blocked_on_a_full_queue_stops_when_told() -> None:
    q, halt = SampleQueue(2), threading.Event()
    assert q.offer("a") and q.offer("b")
    result: list[bool] = []
    producer = threading.Thread(target=lambda: result.append(q.put("c", halt)), daemon=True)
    producer.start()
    halt.set()
    wait_until(lambda: result, 10, "the blocked put gave up")
    assert result == [False] and q.qsize() == 2
