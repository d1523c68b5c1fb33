"""The alarm set: owners hold an alarm together, and readers never see it change under them."""

from __future__ import annotations

import random
import threading
import time

from edged.core.alarms import Alarms


def test_an_alarm_stays_up_while_any_owner_holds_it():
    a = Alarms()
    assert a.set("sync_folder_refused", True, "configsync") is True
    assert a.set("sync_folder_refused", True, "recall") is False  # already up
    assert a.set("sync_folder_refused", False, "configsync") is False
    assert "sync_folder_refused" in a, "the recall inbox still holds it"
    assert a.set("sync_folder_refused", False, "recall") is True
    assert "sync_folder_refused" not in a and not a
    a.discard("never raised")
    assert list(a) == []


def test_set_operations_the_recorder_and_the_status_use():
    a = Alarms()
    a.add("storage_full")
    a.add("camera_lost")
    assert sorted(a) == ["camera_lost", "storage_full"] and len(a) == 2
    assert a & {"storage_full", "upload_paused"} == {"storage_full"}
    a.discard("storage_full")
    assert list(a) == ["camera_lost"]


def test_readers_iterate_while_other_threads_raise_and_clear():
    """The main loop iterates the alarms (status, LED) while the recorder and the uploader raise
    and clear them. A plain set fails this ("Set changed size during iteration")."""
    a = Alarms()
    stop = threading.Event()

    def churn(seed: int) -> None:
        r = random.Random(seed)
        while not stop.is_set():
            a.set(f"alarm{r.randrange(40)}", r.random() < 0.5, f"owner{seed}")

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            for name in a:
                assert name.startswith("alarm")
                time.sleep(0)  # let the other threads run mid-iteration
    finally:
        stop.set()
        for t in threads:
            t.join()
