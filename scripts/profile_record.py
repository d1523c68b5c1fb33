#!/usr/bin/env python3
"""Where edged's recording CPU goes beyond the encoders: a profile of one ``edged run``.

Runs ``python -m edged ARGS...`` in this process with (1) each thread's CPU sampled from
/proc/self/task every 0.2 s (the last reading per thread is printed at exit, named by its Python
thread) and (2) cProfile on the recorder and capture threads with a per-thread CPU clock
(``time.thread_time``: a wall-clock profile would charge GIL waits to whoever waits). Compare
with the floor (scripts/floor_encode.py) from scripts/bench_record.py: what is not
``CodecContext.encode`` nor the file decode is edged's own overhead. cProfile's own cost inflates
the Python figures (about 1 us per call): read them as shares, the thread CPU as absolute.

    python scripts/profile_record.py run --config CFG --for 120 [--top 25] [--plain]

``--plain``: no cProfile (its ~1 us per call inflates the Python share); instead each
``VideoEncoder.encode`` / ``AudioEncoder.encode`` call is timed with ``time.thread_time``, so the
recorder thread's CPU splits into the encoders' and everything else, unskewed. Measured so (60 s of
the shaken footage, stamp off) the encode calls cost what the floor's own encode calls cost
(4.81 against 4.79 CPU s): edged's overhead over the floor is all outside them.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import pstats
import runpy
import sys
import threading
import time

TOP = 25
PLAIN = "--plain" in sys.argv
if PLAIN:
    sys.argv.remove("--plain")
if "--top" in sys.argv:
    i = sys.argv.index("--top")
    TOP = int(sys.argv[i + 1])
    del sys.argv[i : i + 2]

names: dict[int, str] = {threading.get_native_id(): "MainThread"}
profiles: dict[str, cProfile.Profile] = {}
last_cpu: dict[int, float] = {}
encode_cpu: dict[str, float] = {"video": 0.0, "audio": 0.0}


def _wrap(cls: type, profiled: bool) -> None:
    original = cls.run

    def run(self: threading.Thread) -> None:
        names[threading.get_native_id()] = self.name
        if not profiled:
            return original(self)
        prof = profiles[self.name] = cProfile.Profile(time.thread_time)
        prof.enable()
        try:
            return original(self)
        finally:
            prof.disable()

    cls.run = run  # type: ignore[method-assign]


def _sample() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    while True:
        for tid in os.listdir("/proc/self/task"):
            try:
                fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            last_cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        time.sleep(0.2)


def _report() -> None:
    for prof in profiles.values():
        prof.disable()
    print(f"\nCPU s by thread (process total {time.process_time():.2f}):")
    if PLAIN:
        print(f"  encode calls (recorder): video {encode_cpu['video']:.2f}, audio {encode_cpu['audio']:.2f}")
    for cpu, name in sorted(((c, names.get(t, f"tid {t}")) for t, c in last_cpu.items()), reverse=True)[:12]:
        print(f"  {cpu:7.2f}  {name}")
    for name, prof in profiles.items():
        print(f"\n--- {name}: top {TOP} by own CPU time ---")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(TOP)


def _time_encoders() -> None:
    """Add each encoder's ``encode`` calls' thread CPU to ``encode_cpu`` (``--plain``)."""
    from edged.recording import encode

    for cls, key in ((encode.VideoEncoder, "video"), (encode.AudioEncoder, "audio")):

        def timed(self: object, *args: object, _original: object = cls.encode, _key: str = key) -> object:
            t0 = time.thread_time()
            try:
                return _original(self, *args)  # type: ignore[operator]
            finally:
                encode_cpu[_key] += time.thread_time() - t0

        cls.encode = timed  # type: ignore[method-assign,assignment]


def main() -> None:
    sys.path.insert(0, os.getcwd())
    import edged.capture.thread as capture_thread

    if PLAIN:
        _time_encoders()

    _wrap(threading.Thread, profiled=False)
    _wrap(capture_thread.CaptureThread, profiled=not PLAIN)
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:  # the recorder thread is a plain Thread named "recorder"
        if self.name != "recorder" or PLAIN:  # (``original`` names the thread)
            return original(self)
        names[threading.get_native_id()] = self.name
        prof = profiles[self.name] = cProfile.Profile(time.thread_time)
        prof.enable()
        try:
            return original(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    threading.Thread(target=_sample, daemon=True, name="profile-sampler").start()
    atexit.register(_report)
    sys.argv = ["edged", *sys.argv[1:]]
    runpy.run_module("edged", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
