"""A cgroup of its own for a test or a benchmark: a CPU quota or a memory limit, as a small board has.

The kernel's own controls simulate a Pi Zero's limits on a bigger machine. Both hierarchies are
handled: cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``memory.limit_in_bytes``,
``memory.oom_control``) and v2 (``cpu.max``, ``memory.max``, ``memory.events``). Root only.

A process joins at its start (``preexec``, before it allocates anything), so every child it starts
(the media child) is in the group too, and the limit covers the whole daemon.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def unavailable() -> str | None:
    """Why no cgroup can be made here, or None."""
    if os.geteuid() != 0:
        return "cgroups need root"
    if v2():
        controllers = (ROOT / "cgroup.controllers").read_text().split()
        missing = {"cpu", "memory"} - set(controllers)
        return f"cgroup v2 without the {', '.join(sorted(missing))} controller(s)" if missing else None
    for ctl in ("cpu", "memory"):
        if not (ROOT / ctl / "cgroup.procs").exists():
            return f"cgroup v1 without the {ctl} controller mounted at {ROOT / ctl}"
    return None


def own_path(controller: str) -> str:
    """This process's cgroup for ``controller`` ("" for v2's single hierarchy), from /proc/self/cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if (controller == "" and names == "") or controller in names.split(","):
            return path.lstrip("/")
    return ""


class Cgroup:
    """``Cgroup(name, cpu=0.05)``: 5 % of one CPU; ``Cgroup(name, memory_bytes=256 << 20)``.

    Made inside this process's own cgroup (a machine's limits on us stay limits on it). A CPU-limited
    group also gets the largest scheduling weight, so what it runs on is its quota, not what other
    work on a busy test machine leaves over: the condition simulated is the quota alone."""

    def __init__(self, name: str, cpu: float | None = None, memory_bytes: int | None = None) -> None:
        name = f"{name}-{os.getpid()}"
        self.dirs: list[Path] = []
        self.memory_dir: Path | None = None
        if v2():
            d = ROOT / own_path("") / name
            d.mkdir(exist_ok=True)
            self.dirs.append(d)
            if cpu is not None:
                (d / "cpu.max").write_text(f"{max(1000, int(cpu * PERIOD_US))} {PERIOD_US}")
                (d / "cpu.weight").write_text("10000")
            if memory_bytes is not None:
                (d / "memory.max").write_text(str(memory_bytes))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
                self.memory_dir = d
            return
        if cpu is not None:
            d = ROOT / "cpu" / own_path("cpu") / name
            d.mkdir(exist_ok=True)
            (d / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (d / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpu * PERIOD_US))))
            (d / "cpu.shares").write_text("262144")
            self.dirs.append(d)
        if memory_bytes is not None:
            d = ROOT / "memory" / own_path("memory") / name
            d.mkdir(exist_ok=True)
            (d / "memory.limit_in_bytes").write_text(str(memory_bytes))
            if (d / "memory.memsw.limit_in_bytes").exists():  # no swapping out of the limit either
                try:
                    (d / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                except OSError:
                    pass
            self.dirs.append(d)
            self.memory_dir = d

    def join(self) -> None:
        """Move the calling process into the group (for ``subprocess.Popen(preexec_fn=...)``)."""
        self.add(os.getpid())

    def add(self, pid: int) -> None:
        """Move a running process, all its threads, into the group (its later children start there)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def remove(self, pid: int) -> None:
        """Move it back to the group it came from (this process's own)."""
        for d in self.dirs:
            (d.parent / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        """Processes the kernel killed for this group's memory limit."""
        d = self.memory_dir
        if d is None:
            return 0
        text = (d / ("memory.events" if v2() else "memory.oom_control")).read_text()
        fields = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(fields.get("oom_kill", 0))

    def memory_peak_bytes(self) -> int | None:
        """The most memory the group used (page cache included), if the kernel keeps it."""
        d = self.memory_dir
        if d is None:
            return None
        f = d / ("memory.peak" if v2() else "memory.max_usage_in_bytes")
        return int(f.read_text()) if f.exists() else None

    def close(self) -> None:
        """Remove the group once its processes are gone (waits a moment for them to leave)."""
        for d in self.dirs:
            deadline = time.monotonic() + 10
            while True:
                try:
                    d.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
