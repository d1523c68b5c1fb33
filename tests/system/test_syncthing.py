"""Remote config and recall through real Syncthing (issue 16): a fleet instance and a device
instance on loopback, the device's folder being a running daemon's ``sync.dir``.

The set-up is the README's ("Syncthing"): per device a config folder (fleet send only, device
receive only: ``edged.toml``, ``recall/``) and a status folder (device send only, fleet receive
only: ``status/``). What is checked is what the fleet operator sees on the fleet's disk: the
answer in ``status/`` for a config or a request saved on the fleet side, and never one of edged's
temporaries. The daemon is ``python -m edged run`` in its own process.
"""

from __future__ import annotations

import datetime as dt
import grp
import hashlib
import json
import os
import pwd
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.core.files import is_temporary
from tests.support.syncthing import (
    DEVICE_STATUS_IGNORES,
    DeviceShare,
    EdgedChild,
    RunAs,
    Syncthing,
    python_for,
    read_json,
    share,
    unavailable,
    wait_shared,
)

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "syncthing available")

REPO = Path(__file__).resolve().parents[2]
#: A deadline for a state to be reached (never a speed claim: scripts/bench_syncthing.py measures).
WAIT_S = 120.0
DEVICE_ID = "unit-7"


class Rig:
    """A fleet Syncthing, a device Syncthing, the device's two shared folders and its edged."""

    def __init__(self, root: Path, sync_extra: str = "") -> None:
        self.fleet = Syncthing(root, "fleet")
        self.device = Syncthing(root, "device")
        self.edged = EdgedChild(root / "edged", DEVICE_ID, root / "sync", sync_extra=sync_extra)
        try:
            self.fleet.start()
            self.device.start()
            self.share: DeviceShare = share(
                self.fleet, self.device, DEVICE_ID, root / "fleet" / DEVICE_ID, root / "sync"
            )
            wait_shared(self.fleet, self.device, self.share)
            self.edged.start()
            self.wait(self.edged.recording, "edged recording")
        except BaseException:
            self.close()
            raise

    def alive(self) -> None:
        self.fleet.check_alive()
        self.device.check_alive()
        self.edged.check_alive()

    def wait(self, pred, what: str, timeout: float = WAIT_S):
        deadline = time.monotonic() + timeout
        while True:
            self.alive()
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}\n{self.edged.log()[-2000:]}")
            time.sleep(0.05)

    def fleet_status(self, name: str) -> dict | None:
        return read_json(self.share.fleet_dir / "status" / name)

    def answer(self, name: str, **want: object) -> dict:
        """Until the fleet's copy of ``status/<name>`` says what ``want`` says."""
        return self.wait(
            lambda: (doc := self.fleet_status(name)) and all(doc.get(k) == v for k, v in want.items()) and doc,
            f"the fleet's status/{name} with {want}",
        )

    def close(self) -> None:
        try:
            if self.edged.proc is not None:
                assert self.edged.stop() == 0, self.edged.log()[-3000:]
        finally:
            self.fleet.stop()
            self.device.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def save(path: Path, data: bytes) -> None:
    """As an operator saves a file on the fleet side (in place: Syncthing waits for it to settle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def every_name(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")]


def test_a_config_saved_on_the_fleet_is_applied_and_the_answer_comes_back(rig: Rig) -> None:
    fleet_dir = rig.share.fleet_dir
    # Both instances keep to loopback: every socket they have is on 127.0.0.1 (nothing announced,
    # no discovery socket, no relay or STUN connection).
    for st in (rig.fleet, rig.device):
        outside = [
            s for s in st.sockets() if not all(a.startswith("127.0.0.1:") or a in ("*:*", "0.0.0.0:*") for a in s[1:])
        ]
        assert st.sockets() and not outside, f"{st.name}: sockets beyond loopback: {outside}"
    good = b"[camera]\nbitrate = 150000\n[storage]\nmax_bytes = 5000000000\n"
    save(fleet_dir / "edged.toml", good)
    st = rig.answer("config.json", state="applied", version=sha256(good))
    assert st["device"] == DEVICE_ID and st["errors"] == []
    assert sorted(st["applied_keys"]) == ["camera.bitrate", "storage.max_bytes"]
    # It went through the device's folder, written by Syncthing (not by this test).
    assert (rig.share.sync_dir / "edged.toml").read_bytes() == good

    # A bad file: refused with the key, the answer comes back, the last good keeps running.
    bad = b"[camera]\nbitrate = 5\n"
    save(fleet_dir / "edged.toml", bad)
    st = rig.answer("config.json", state="rejected", version=sha256(bad))
    assert st["applied_version"] == sha256(good)
    assert [e["key"] for e in st["errors"]] == ["camera.bitrate"]
    frames = (rig.edged.status() or {}).get("frames_encoded", 0)
    rig.wait(lambda: (rig.edged.status() or {}).get("frames_encoded", 0) >= frames + 10, "recording goes on")

    # The device cannot write the fleet's config: its edged.toml changed on the device stays there
    # (receive only), and the fleet's copy (send only) is what it was.
    (rig.share.sync_dir / "edged.toml").write_bytes(b"[camera]\nbitrate = 200000\n")
    rig.device.scan(rig.share.config_folder)
    rig.wait(
        lambda: rig.device.db_status(rig.share.config_folder).get("receiveOnlyChangedFiles", 0) >= 1,
        "the device's own change held back as a local change",
    )
    rig.wait(
        lambda: "edged.toml" in rig.fleet.remote_need(rig.share.config_folder, rig.device),
        "the fleet told of the device's differing copy, which it does not take",
    )
    assert rig.fleet.idle(rig.share.config_folder)
    assert (fleet_dir / "edged.toml").read_bytes() == bad


def test_edgeds_temporaries_never_travel(rig: Rig) -> None:
    fleet_dir, sync_dir = rig.share.fleet_dir, rig.share.sync_dir
    status = sync_dir / "status"
    save(fleet_dir / "edged.toml", b"[camera]\nbitrate = 151000\n")
    rig.answer("config.json", state="applied")
    assert rig.device.ignores(rig.share.status_folder) == list(DEVICE_STATUS_IGNORES)
    # What a kill mid-write leaves (edged.core.files' own name for its temporaries), beside a file
    # that is not ignored, so the check below can fail.
    leftover = ".config.json.0123abcd.tmp"
    assert is_temporary(leftover)
    (status / leftover).write_bytes(b'{"state": "half')
    (status / "operator-note.txt").write_bytes(b"not edged's\n")
    rig.device.scan(rig.share.status_folder)
    assert rig.device.knows(rig.share.status_folder, "operator-note.txt") is not None
    assert rig.device.knows(rig.share.status_folder, leftover) is None, "Syncthing indexed edged's temporary"
    rig.wait(lambda: (fleet_dir / "status" / "operator-note.txt").exists(), "the plain file reaches the fleet")
    # Every status write edged made while running went through a temporary; none reached the fleet.
    for i in range(3):
        data = f"[camera]\nbitrate = {160000 + i * 1000}\n".encode()
        save(fleet_dir / "edged.toml", data)
        rig.answer("config.json", state="applied", version=sha256(data))
    rig.fleet.wait_in_sync(rig.share.status_folder, rig.device)
    names = every_name(fleet_dir)
    assert not [n for n in names if is_temporary(Path(n).name)], names
    assert not [n for n in names if ".syncthing." in n or "~syncthing~" in n], names


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_signed_config_and_a_recall_request_from_the_fleet(tmp_path: Path) -> None:
    keys = tmp_path / "fleet-keys"  # the fleet's private key: never in a synced folder
    out = subprocess.run(
        [sys.executable, "-m", "edged", "config", "keygen", str(keys)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    public = next(line for line in out.stdout.splitlines() if "fleet_public_key" in line).split("=", 1)[1].strip()
    rig = Rig(tmp_path, sync_extra=f"fleet_public_key = {public}")
    try:
        fleet_dir = rig.share.fleet_dir
        draft = tmp_path / "draft.toml"
        draft.write_bytes(b"[camera]\nbitrate = 150000\n")
        subprocess.run(
            [sys.executable, "-m", "edged", "config", "sign", "--key", str(keys / "fleet-key.pem"), "--device",
             DEVICE_ID, "-o", str(fleet_dir / "edged.toml"), str(draft)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )  # fmt: skip
        signed = (fleet_dir / "edged.toml").read_bytes()
        st = rig.answer("config.json", state="applied", version=sha256(signed))
        assert st["applied_keys"] == ["camera.bitrate"] and isinstance(st["serial"], int)
        # The same change unsigned is refused (the signature is what let it in).
        save(fleet_dir / "edged.toml", draft.read_bytes())
        st = rig.answer("config.json", state="rejected", version=sha256(draft.read_bytes()))
        assert st["errors"][0]["key"] == "<signature>"

        # A recall request for a window that ended a moment ago, partly recorded: delivered as it
        # is, and the whole answer comes back to the fleet.
        rid = "fleet-r1"
        request = {"start_time": _iso(time.time() - 62), "duration": 1}
        save(fleet_dir / "recall" / f"{rid}.json", json.dumps(request).encode())
        doc = rig.answer(f"recall-{rid}.json", status="completed")
        assert doc["id"] == rid and doc["device_id"] == DEVICE_ID and doc["source"]
        delivered = [p for p in rig.edged.delivered.rglob("*.webm")]
        assert delivered, "the recall's parts were delivered"
        recall = rig.share.sync_dir / "recall"
        assert not (recall / f"{rid}.json").exists() and (recall / "processed" / f"{rid}.json").exists()
        # The move is the device's local change in a receive-only folder: held back, the request
        # not pulled again, the fleet's copy left for the operator to remove.
        rig.device.scan(rig.share.config_folder)
        rig.wait(
            lambda: rig.device.db_status(rig.share.config_folder).get("receiveOnlyChangedDeletes", 0) >= 1,
            "the taken request held back as a local deletion",
        )
        assert rig.device.idle(rig.share.config_folder) and not (recall / f"{rid}.json").exists()
        assert rig.device.knows(rig.share.config_folder, "recall/processed") is None  # ignored there
        assert (fleet_dir / "recall" / f"{rid}.json").exists()
        # The operator removes it on the fleet: the deletion reaches the device, nothing is taken again.
        os.unlink(fleet_dir / "recall" / f"{rid}.json")
        rig.device.scan(rig.share.config_folder)
        rig.fleet.wait_in_sync(rig.share.config_folder, rig.device)
        assert rig.fleet_status(f"recall-{rid}.json")["status"] == "completed"
    finally:
        rig.close()


# --- the README's users: Syncthing and edged each their own, sharing only the sync group ------------


def _unused_id() -> int:
    while True:
        n = random.randrange(61000, 65000)
        try:
            pwd.getpwuid(n)
        except KeyError:
            try:
                grp.getgrgid(n)
            except KeyError:
                return n


@pytest.fixture
def sync_group() -> Iterator[tuple[str, int]]:
    """A real, named group for the test (``sync.status_group`` names a group), removed after."""
    if os.geteuid() != 0:
        pytest.skip("running Syncthing and edged as two other users needs root")
    name = f"edst{os.urandom(3).hex()}"
    subprocess.run(["groupadd", "--gid", str(_unused_id()), name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], capture_output=True)


def _owned(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _looks(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_syncthing_and_edged_as_their_own_users_sharing_only_the_sync_group(sync_group: tuple[str, int]) -> None:
    group, gid = sync_group
    # As on a device: Syncthing's user has the sync group as its own and runs with UMask=0007;
    # edged's user has its own group, the sync group beside it, and edged's UMask=0077.
    syncthing_user = RunAs(uid=_unused_id(), gid=gid, umask=0o007)
    edged_uid = _unused_id()
    edged_user = RunAs(uid=edged_uid, gid=edged_uid, groups=(gid,), umask=0o077)
    base = Path(tempfile.mkdtemp(prefix="edged-syncthing-users-"))
    os.chmod(base, 0o755)  # pytest's tmp_path is root's alone
    python = python_for(edged_user, base)
    if isinstance(python, str):
        shutil.rmtree(base)
        pytest.skip(python)
    fleet = Syncthing(base, "fleet")
    device = Syncthing(base, "device", run_as=syncthing_user)
    sync = base / "sync"
    edged = EdgedChild(
        base / "edged",
        DEVICE_ID,
        sync,
        sync_extra=f'status_group = "{group}"',
        run_as=edged_user,
        python=python[0],
        env=python[1],
    )
    try:
        # The README's folder set-up: sync.dir the Syncthing user's (setgid: what it makes there
        # belongs to the sync group), status/ edged's, readable by the group; the marker and the
        # ignore patterns put there once, as the installer does (Syncthing cannot write there).
        sync.mkdir()
        _owned(sync, syncthing_user.uid, gid, 0o2770)
        (sync / "status" / ".stfolder").mkdir(parents=True)
        (sync / "status" / ".stignore").write_text("\n".join(DEVICE_STATUS_IGNORES) + "\n")
        _owned(sync / "status", edged_uid, gid, 0o750)
        _owned(sync / "status" / ".stfolder", edged_uid, gid, 0o750)
        _owned(sync / "status" / ".stignore", edged_uid, gid, 0o640)
        _owned(base / "edged", edged_uid, edged_uid, 0o700)

        fleet.start()
        device.start()
        s = share(fleet, device, DEVICE_ID, base / "fleet" / DEVICE_ID, sync)
        wait_shared(fleet, device, s)
        edged.start()

        def wait(pred, what: str):
            deadline = time.monotonic() + WAIT_S
            while not (value := pred()):
                for p in (fleet, device, edged):
                    p.check_alive()
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}\n{edged.log()[-2000:]}\n{device.log()[-2000:]}")
                time.sleep(0.05)
            return value

        wait(edged.recording, "edged recording as its own user")
        data = b"[camera]\nbitrate = 150000\n"
        save(s.fleet_dir / "edged.toml", data)
        wait(
            lambda: (d := read_json(s.fleet_dir / "status" / "config.json")) and d["version"] == sha256(data)
            and d["state"] == "applied",
            "the fleet's status/config.json saying applied",
        )  # fmt: skip
        rid = "users-r1"
        save(
            s.fleet_dir / "recall" / f"{rid}.json",
            json.dumps({"start_time": _iso(time.time() - 62), "duration": 1}).encode(),
        )
        wait(
            lambda: (d := read_json(s.fleet_dir / "status" / f"recall-{rid}.json")) and d["status"] == "completed",
            "the fleet's status/recall-users-r1.json saying completed",
        )
        # Who owns what, and nothing is world-readable.
        a = syncthing_user.uid
        assert _looks(sync / "edged.toml") == (a, gid, 0o660)  # 0666 less UMask=0007: never world-readable
        assert _looks(sync / "recall") == (a, gid, 0o2770)
        assert _looks(sync / "recall" / "processed" / f"{rid}.json")[:2] == (a, gid)
        assert _looks(sync / "recall" / "processed")[0::2] == (edged_uid, 0o2700)
        assert _looks(sync / "status") == (edged_uid, gid, 0o750)
        assert _looks(sync / "status" / "config.json") == (edged_uid, gid, 0o640)
        assert _looks(sync / "status" / f"recall-{rid}.json") == (edged_uid, gid, 0o640)
        for folder_id in s.folder_ids():
            st = device.db_status(folder_id)
            assert st["state"] == "idle" and not st.get("errors") and not st.get("pullErrors"), (folder_id, st)
    finally:
        try:
            if edged.proc is not None:
                assert edged.stop() == 0, edged.log()[-3000:]
        finally:
            fleet.stop()
            device.stop()
            shutil.rmtree(base, ignore_errors=True)
