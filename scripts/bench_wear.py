#!/usr/bin/env python3
"""SD-card wear: bytes written to storage per byte of footage, recording paced in real time.

An SD card wears by what is written to it, not by what is kept. This records the same shaken
footage (scripts/shake.py, as bench_record.py) in real time with ``edged run`` and, beside it, the
ffmpeg CLI (``-re``, the same VP8/Opus settings, segments of the same length), each onto its own
freshly made ext4 image loop-mounted in the work folder (default mount options, as on a Pi: a
journal commit every 5 s). Three figures per recorder, each divided by the footage bytes it kept:

  process   the process's own ``write_bytes`` (``ru_oublock`` x 512 from wait4: the page-cache
            bytes it dirtied, counted when dirtied, rewrites of a page counted again)
  device    sectors the loop device wrote (``/sys/block/loopN/stat``), after a final ``sync``:
            file data, metadata and the journal together, what the card would see
  journal   the ext4 journal's share of it (``/proc/fs/jbd2/loopN-8/info``: transactions x logged
            blocks per transaction x block size)

edged first records ``--warm`` seconds on its image, not measured: its SQLite stores are made once
in a device's life, not per hour (on a fresh state folder they add ~0.2x to a 90 s run).

    .venv/bin/python scripts/bench_wear.py [--seconds 90] [--json PATH]

Needs root (loop devices, mount) and the ffmpeg CLI (installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_record import edged_python, ensure_ffmpeg, ffmpeg_cmd
from scripts.shake import shaken

TARGET = 1.1  # process bytes written per footage byte


class Ext4Image:
    """A fresh ext4 file system in ``work/NAME.img``, loop-mounted at ``work/NAME``."""

    def __init__(self, work: Path, name: str, size_mb: int = 256) -> None:
        self.image = work / f"{name}.img"
        self.mount = work / name
        self.size_mb = size_mb
        self.dev = ""

    def __enter__(self) -> Ext4Image:
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb << 20)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)], check=True
        )
        self.mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], check=True)
        src = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.mount)], capture_output=True, text=True)
        self.dev = Path(src.stdout.strip()).name  # loopN
        os.sync()
        return self

    def __exit__(self, *exc: object) -> None:
        if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
        self.image.unlink(missing_ok=True)

    def sectors_written(self) -> int:
        return int(Path(f"/sys/block/{self.dev}/stat").read_text().split()[6])

    def journal_bytes(self) -> int:
        """Blocks the journal logged since mount (its averages x its transactions) x block size."""
        info = Path(f"/proc/fs/jbd2/{self.dev}-8/info").read_text()
        tx = int(re.search(r"(\d+) transactions", info).group(1))  # type: ignore[union-attr]
        m = re.search(r"(\d+) logged blocks per transaction", info)
        return tx * (int(m.group(1)) if m else 0) * 4096


@dataclass
class Wear:
    footage_bytes: int
    process_bytes: int
    device_bytes: int
    journal_bytes: int
    seconds: float

    @property
    def process_ratio(self) -> float:
        return self.process_bytes / self.footage_bytes

    @property
    def device_ratio(self) -> float:
        return self.device_bytes / self.footage_bytes

    @property
    def journal_ratio(self) -> float:
        return self.journal_bytes / self.footage_bytes


def edged_argv(source: Path, state: Path, seconds: float, work: Path) -> list[str]:
    cfg = work / "edged.toml"
    cfg.write_text(
        f'[camera]\nsource = "file"\ndevice = "{source}"\npaced = true\n'
        f'[audio]\nsource = "synthetic"\n'
        f'[storage]\ndir = "{state}"\nmax_bytes = 10000000000\nmin_free_bytes = 0\n'
    )
    return [edged_python(), "-m", "edged", "run", "--config", str(cfg), "--for", f"{seconds:g}"]


def ffmpeg_argv(source: Path, seg_dir: Path, seconds: float) -> list[str]:
    seg_dir.mkdir(parents=True)
    argv = ffmpeg_cmd(source, seconds, seg_dir)
    out: list[str] = []
    for a in argv:  # paced: each input read at its own rate, as a camera delivers it
        if a == "-i":
            out.append("-re")
        out.append(a)
    return out


def record(name: str, argv: list[str], disk: Ext4Image, segments: Path, log: Path) -> Wear:
    os.sync()
    earlier = set(segments.glob("*.webm"))  # a warm-up's footage is not this run's
    sectors0, journal0 = disk.sectors_written(), disk.journal_bytes()
    t0 = time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=REPO)
        _, status, ru = os.wait4(proc.pid, 0)
    took = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} exited {os.waitstatus_to_exitcode(status)}; log {log}")
    os.sync()  # what the card would get sooner or later
    footage = sum(p.stat().st_size for p in set(segments.glob("*.webm")) - earlier)
    return Wear(
        footage_bytes=footage,
        process_bytes=ru.ru_oublock * 512,
        device_bytes=(disk.sectors_written() - sectors0) * 512,
        journal_bytes=disk.journal_bytes() - journal0,
        seconds=round(took, 1),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--footage", default="vtest.avi", help="a file in ../shared/footage/")
    ap.add_argument("--only", choices=("edged", "ffmpeg"))
    ap.add_argument(
        "--warm", type=float, default=5, help="seconds edged records first, not measured (0: a fresh state folder)"
    )
    ap.add_argument("--json", type=Path, default=REPO / "bench-out" / "bench_wear.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_wear: needs root (loop-mounted ext4 images)", file=sys.stderr)
        return 2
    if args.only != "edged" and not ensure_ffmpeg():
        return 2
    source = shaken(args.seconds, 6, args.footage)
    work = Path(tempfile.mkdtemp(prefix="bench_wear-"))
    results: dict[str, Wear] = {}
    errors: list[str] = []
    try:
        with Ext4Image(work, "edged") as e_disk, Ext4Image(work, "ffmpeg") as f_disk:
            jobs = {
                "edged": (
                    edged_argv(source, e_disk.mount / "state", args.seconds, work),
                    e_disk,
                    e_disk.mount / "state" / "segments",
                ),
                "ffmpeg": (
                    ffmpeg_argv(source, f_disk.mount / "segments", args.seconds),
                    f_disk,
                    f_disk.mount / "segments",
                ),
            }
            if args.only:
                jobs = {args.only: jobs[args.only]}
            if "edged" in jobs and args.warm > 0:  # the stores made once, as on any device after its first run
                argv = edged_argv(source, e_disk.mount / "state", args.warm, work)
                subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd=REPO, check=True)
                edged_argv(source, e_disk.mount / "state", args.seconds, work)  # the measured run's config again

            def one(name: str) -> None:  # side by side: both paced, each on its own image
                argv, disk, seg = jobs[name]
                try:
                    results[name] = record(name, argv, disk, seg, work / f"{name}.log")
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(f"{name}: {exc}")

            threads = [threading.Thread(target=one, args=(n,)) for n in jobs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for e in errors:
        print(f"bench_wear: {e}", file=sys.stderr)
    if "edged" not in results:
        return 1
    print(f"\nwear, {args.seconds:g} s of footage recorded paced (bytes written per footage byte)\n")
    print(f"{'':8} {'footage B':>10} {'process':>8} {'device':>8} {'journal':>8}")
    for name, w in results.items():
        print(
            f"{name:8} {w.footage_bytes:>10,} {w.process_ratio:>7.2f}x {w.device_ratio:>7.2f}x {w.journal_ratio:>7.2f}x"
        )
    e = results["edged"]
    doc = {
        "seconds": args.seconds,
        "target_process_ratio": TARGET,
        "results": {
            n: asdict(w)
            | {"process_ratio": w.process_ratio, "device_ratio": w.device_ratio, "journal_ratio": w.journal_ratio}
            for n, w in results.items()
        },
        "pass": e.process_ratio <= TARGET,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
