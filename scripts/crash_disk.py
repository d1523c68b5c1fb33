"""Where the crash matrix keeps the daemon's state folder, and what a crash does to it.

``PlainDisk``: a folder; a crash is ``SIGKILL`` alone (everything the process wrote is in the page
cache and survives, as after a real kill -9).

``LoopDisk``: an ext4 image mounted through a loop device. A *power cut* keeps only what the file
system had handed to its block device: the daemon is killed, the backing image is copied at once
(while still mounted: the copy holds what ext4 wrote to the loop device — fsynced data and journal
commits, plus whatever writeback happened to flush, which is exactly what a power cut keeps), the
original is unmounted and thrown away, and the copy is mounted in its place (ext4 replays its
journal as after a real power cut).

To make the cut harsh, the file system is mounted with ``commit=600`` (no periodic journal commit:
only an fsync commits metadata, so renames and creations nobody synced are lost) and
``noauto_da_alloc`` (ext4 does not flush a file replaced by rename behind the program's back); with
the kernel's 30 s dirty expiry, unsynced file data of the last seconds is not written back either.
No commit happens while the image is copied (the daemon is dead, nothing fsyncs), so the copy is a
consistent instant of the block device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MOUNT_OPTIONS = "loop,noauto_da_alloc,commit=600"


class DiskUnavailable(Exception):
    """Loop devices, mkfs.ext4 or mount cannot be used here (not root, no loop driver)."""


@dataclass
class CutReport:
    """What a power cut took away, compared file by file with what the processes had written."""

    files_lost: int = 0  # files present before the cut, absent after
    files_shortened: int = 0  # files present after the cut but shorter
    bytes_dropped: int = 0  # bytes of file data written but not on the "disk"


def _sizes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                out[str(p.relative_to(root))] = p.stat().st_size
            except OSError:
                pass
    return out


class PlainDisk:
    power_cut = False

    def __init__(self, work: Path) -> None:
        self.root = work / "state"

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def after_kill(self) -> CutReport | None:
        return None

    def teardown(self) -> str | None:
        return None


class LoopDisk:
    power_cut = True

    def __init__(self, work: Path, size_mb: int = 320) -> None:
        self.work = work
        self.mount = work / "mnt"
        self.root = self.mount / "state"
        self.size_mb = size_mb
        self._images = [work / "disk-a.img", work / "disk-b.img"]
        self._cur = 0
        self.cuts = 0

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True)

    def _mount(self, image: Path) -> None:
        out = self._run("mount", "-o", MOUNT_OPTIONS, str(image), str(self.mount))
        if out.returncode != 0:
            raise DiskUnavailable(f"cannot loop-mount {image}: {out.stderr.strip()}")

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise DiskUnavailable("power-cut simulation needs root (loop devices, mount)")
        img = self._images[self._cur]
        with open(img, "wb") as f:
            f.truncate(self.size_mb << 20)
        # Inode tables and journal zeroed now: no lazy-init thread writing behind our back.
        out = self._run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(img))
        if out.returncode != 0:
            raise DiskUnavailable(f"mkfs.ext4: {out.stderr.strip()}")
        self.mount.mkdir(parents=True, exist_ok=True)
        self._mount(img)
        self.root.mkdir()
        os.sync()  # the fresh, empty file system itself is not what is being tested

    def after_kill(self) -> CutReport:
        """The daemon is dead: cut the power (copy the block device as it is), mount the copy."""
        old, new = self._images[self._cur], self._images[1 - self._cur]
        subprocess.run(["cp", "--sparse=always", str(old), str(new)], check=True)
        before = _sizes(self.root)
        umount = self._run("umount", str(self.mount))
        if umount.returncode != 0:  # something still holds it: detach it anyway, it is discarded
            self._run("umount", "-l", str(self.mount))
        old.unlink()
        self._mount(new)
        self._cur = 1 - self._cur
        self.cuts += 1
        after = _sizes(self.root)
        report = CutReport()
        for name, size in before.items():
            if name.endswith("-shm"):  # SQLite's shared memory: never meant to reach the disk
                continue
            if name not in after:
                report.files_lost += 1
                report.bytes_dropped += size
            elif after[name] < size:
                report.files_shortened += 1
                report.bytes_dropped += size - after[name]
        return report

    def teardown(self) -> str | None:
        """Unmount and remove the image; say so if e2fsck finds the file system damaged after the
        cuts (that would make the simulation, not edged, suspect)."""
        problem = None
        if self.mount.is_mount():
            if self._run("umount", str(self.mount)).returncode != 0:
                self._run("umount", "-l", str(self.mount))
            else:
                fsck = self._run("e2fsck", "-fn", str(self._images[self._cur]))
                if fsck.returncode != 0:
                    problem = f"e2fsck after {self.cuts} power cut(s): {fsck.stdout.strip()[-500:]}"
        for img in self._images:
            img.unlink(missing_ok=True)
        return problem


def make_disk(work: Path, power_cut: bool) -> PlainDisk | LoopDisk:
    return LoopDisk(work) if power_cut else PlainDisk(work)


def remove_tree(path: Path) -> None:
    """Remove a work folder, never following a mount point that is still there."""
    for dirpath, dirs, _files in os.walk(path):
        for d in dirs:
            if (Path(dirpath) / d).is_mount():
                subprocess.run(["umount", "-l", str(Path(dirpath) / d)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
