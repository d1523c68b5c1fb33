"""A short soak (issue 7, part 5): four minutes of footage, unpaced, with a mark every 30 s, each clip
delivered to the directory target and to the contract server in its own process; the daemon runs
as ``edged run`` and is watched from /proc by scripts/bench_soak.py (the long run is the benchmark).

Counted, not timed: the file descriptors and threads open in the last quarter of the footage are no
more than in the first (plus a little slack for a delivery or a control connection in flight), no
file the ring or anyone deleted is still open, and what is open at the end is accounted for (the
stores, the segment being written, sockets), none of the many segments, clip parts or delivered
copies made along the way.
"""

from __future__ import annotations

from pathlib import Path

from scripts import bench_soak


def test_file_descriptors_and_threads_do_not_leak_over_minutes_of_footage(tmp_path):
    r = bench_soak.run(
        minutes=4,
        mark_every=0.5,
        size="320x180",
        bitrate=150_000,
        pre=5,
        post=5,
        sample_s=0.2,
        work=tmp_path / "soak",
        log=lambda msg: None,
    )
    assert r["exit_code"] == 0
    assert r["marks"] >= 6 and r["segments_written"] >= 24
    outbox = r["outbox"]
    assert outbox.get("failed", 0) == 0 and outbox["delivered"] == sum(outbox.values())
    assert outbox["delivered"] >= 2 * r["marks"], "every clip reached both targets"

    figures = r["figures"]
    fds = figures["open_fds"]
    assert fds["pass"], f"open FDs grew from {fds['baseline']} to {fds['value']} over the run"
    threads = figures["threads"]
    assert threads["pass"], f"threads grew from {threads['baseline']} to {threads['value']}"
    assert figures["deleted_files_open"]["value"] == 0, [t for t in r["open_at_end"] if "(deleted)" in t]

    state = tmp_path / "soak" / "state"
    files = [Path(t) for t in r["open_at_end"] if t.startswith("/")]
    ours = [f for f in files if state in f.parents or f.parent == state]
    segments = [f for f in ours if f.parent == state / "segments"]
    assert len(segments) <= 2 and all(f.name.endswith(".part") for f in segments), (
        f"only the segments being written stay open: {segments}"
    )
    assert not [f for f in ours if (state / "clips") in f.parents], "no clip part left open"
    assert not [f for f in files if (tmp_path / "soak" / "delivered") in f.parents], "no delivered copy left open"
    stores = {f.name for f in ours if f.parent == state}
    assert stores <= {
        f"{db}{suffix}"
        for db in ("index.sqlite", "events.sqlite", "outbox.sqlite", "recall.sqlite")
        for suffix in ("", "-wal", "-shm")
    } | {"edged.lock"}, stores
