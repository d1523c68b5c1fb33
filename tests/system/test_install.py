"""scripts/install-pi.sh, run for real against a scratch root (``--root``).

Everything the script does lands under the scratch root: users and groups through
``useradd/usermod/userdel --root`` (the host's /etc/passwd is never touched), the unit enabled
by ``systemctl --root`` (symlinks only; nothing is started), the catalog compiled by
``journalctl --root``. The venv is real: ``python3 -m venv --system-site-packages`` and pip
installing a copy of this checkout, and the installed ``edged`` is run afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "scripts/install-pi.sh"
SYSTEM_PYTHON = Path("/usr/bin/python3")

CATALOG = """-- 5f3c1e2a9b8d4c7e8f6a1b2c3d4e5f60
Subject: edged test catalog entry
Defined-By: edged

Installed by tests/system/test_install.py.
"""


def _missing_tools() -> str:
    if os.geteuid() != 0:
        return "the installer runs as root"
    for tool in ("useradd", "usermod", "userdel", "groupadd", "systemctl", "journalctl", "bash"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"{tool} not found"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} not found"
    ok = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
        capture_output=True,
    )
    return "" if ok.returncode == 0 else f"{SYSTEM_PYTHON} cannot make a Python >= 3.11 venv"


pytestmark = pytest.mark.skipif(bool(_missing_tools()), reason=_missing_tools() or "-")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A private copy of the checkout (others may edit the working tree meanwhile), with a
    journal catalog if the checkout has none yet."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("edged", "configs", "systemd", "scripts"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    if not (src / "systemd/edged.catalog").exists():
        (src / "systemd/edged.catalog").write_text(CATALOG)
    return src


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch root with the account files useradd --root needs; the gpio group is absent
    (as on a non-Pi Debian), video and audio exist."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (r / "etc/group").write_text("root:x:0:\naudio:x:29:\nvideo:x:44:\n")
    (r / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc/gshadow").write_text("root:*::\naudio:*::\nvideo:*::\n")
    for name in ("shadow", "gshadow"):
        (r / "etc" / name).chmod(0o640)
    (r / "usr/sbin").mkdir(parents=True)
    (r / "usr/sbin/nologin").write_text("#!/bin/sh\nexit 1\n")
    (r / "usr/sbin/nologin").chmod(0o755)
    return r


def run_installer(
    src: Path, root: Path, *args: str, model: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
        EDGED_DEVICE_MODEL_FILE=str(root.parent / "no-device-tree-model"),
    )
    if model is not None:
        model_file = root.parent / "model"
        model_file.write_bytes(model.encode() + b"\0")
        env["EDGED_DEVICE_MODEL_FILE"] = str(model_file)
    proc = subprocess.run(
        ["bash", str(src / SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=root.parent,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"install-pi.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: type, mode, owner, mtime, and content hash or link target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: str = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = "dir"
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, what)
    return out


def account(root: Path, file: str, name: str) -> list[str] | None:
    for line in (root / "etc" / file).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def members(root: Path, group: str) -> list[str]:
    fields = account(root, "group", group)
    assert fields is not None, f"group {group} missing"
    return [m for m in fields[3].split(",") if m]


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.mark.slow
def test_install_twice_update_uninstall_reinstall_purge(source: Path, root: Path, tmp_path: Path) -> None:
    host_passwd = Path("/etc/passwd").read_bytes()

    # --- first install (not a Pi) ---
    first = run_installer(source, root, "--no-apt")
    assert "not a Raspberry Pi" in first.stderr and "python3-picamera2" in first.stderr
    assert "not starting edged.service: --root" in first.stdout

    user = account(root, "passwd", "edged")
    assert user is not None, first.stdout
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000 and user[5] == "/var/lib/edged" and user[6] == "/usr/sbin/nologin"
    assert account(root, "group", "edged")[2] == str(gid)  # type: ignore[index]
    for group in ("video", "audio", "gpio"):  # gpio did not exist: created
        assert "edged" in members(root, group)
    assert Path("/etc/passwd").read_bytes() == host_passwd

    etc = root / "etc/edged"
    assert mode_owner(etc) == (0o755, 0, 0)
    assert mode_owner(etc / "credentials") == (0o700, 0, 0)
    for cred in ("sonoran_api_key", "bota_token"):
        assert mode_owner(etc / "credentials" / cred) == (0o600, 0, 0)
        assert (etc / "credentials" / cred).read_bytes() == b""
    assert mode_owner(etc / "edged.toml") == (0o640, 0, gid)
    assert (etc / "edged.toml").read_bytes() == (source / "configs/edged.toml").read_bytes()
    assert mode_owner(root / "var/lib/edged") == (0o700, uid, gid)

    unit = root / "etc/systemd/system/edged.service"
    assert unit.read_bytes() == (source / "systemd/edged.service").read_bytes()
    assert mode_owner(unit) == (0o644, 0, 0)
    wants = root / "etc/systemd/system/multi-user.target.wants/edged.service"
    assert os.readlink(wants) == "/etc/systemd/system/edged.service"
    catalog = root / "usr/lib/systemd/catalog/edged.catalog"
    assert catalog.read_bytes() == (source / "systemd/edged.catalog").read_bytes()
    listed = subprocess.run(["journalctl", "--root", str(root), "--list-catalog"], capture_output=True, text=True)
    ids = re.findall(r"^-- ([0-9a-f]{32})", catalog.read_text(), re.M)
    assert ids and all(i in listed.stdout for i in ids), listed  # compiled into the scratch root's database

    venv = root / "opt/edged/.venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    checked = subprocess.run(
        [str(venv / "bin/edged"), "config", "check", str(etc / "edged.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )  # not the checkout: the venv's edged
    assert checked.returncode == 0, checked.stderr
    where = subprocess.run(
        [str(venv / "bin/python"), "-I", "-c", "import edged; print(edged.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(venv)), where

    # --- the installed doctor, with the folders the unit gives the service ---
    service_env = dict(
        os.environ, STATE_DIRECTORY=str(root / "var/lib/edged"), CREDENTIALS_DIRECTORY=str(etc / "credentials")
    )
    doc = subprocess.run(
        [str(venv / "bin/edged"), "doctor", "--config", str(etc / "edged.toml"), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=service_env,
    )
    checks = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}
    assert checks["config"]["status"] == "ok" and checks["credentials"]["status"] == "ok", checks
    assert checks["storage"]["status"] != "fail" and str(root / "var/lib/edged") in checks["storage"]["summary"]
    v2 = tmp_path / "v2.toml"  # a Sonoran target before its key is written: the empty placeholder is named
    v2.write_text('[upload]\ntargets = ["sonoran_v2"]\n[upload.sonoran_v2]\naccount_uuid = "6f1c"\n')
    doc = subprocess.run(
        [str(venv / "bin/edged"), "doctor", "--config", str(v2), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=service_env,
    )
    key_check = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}["credentials.sonoran_v2"]
    assert doc.returncode == 1 and key_check["status"] == "fail", key_check
    assert key_check["summary"] == f"{etc / 'credentials/sonoran_api_key'} is empty"

    # --- the administrator configures it ---
    key = etc / "credentials/sonoran_api_key"
    key.write_text("secret-key-123\n")
    with open(etc / "edged.toml", "a") as f:
        f.write("\n# edited by the administrator\n")
    (root / "var/lib/edged/segment-evidence.webm").write_bytes(b"\x1aE\xdf\xa3 footage")

    # --- second run (now as a Pi, so the picamera2 packages are wanted): changes nothing ---
    before = snapshot(root)
    second = run_installer(source, root, "--no-apt", model="Raspberry Pi 5 Model B Rev 1.0")
    assert snapshot(root) == before
    assert "nothing to do: edged is installed and up to date" in second.stdout
    assert "not a Raspberry Pi" not in second.stderr
    if subprocess.run(["dpkg-query", "-W", "python3-picamera2"], capture_output=True).returncode != 0:
        assert "python3-picamera2" in second.stderr  # listed as missing, not installed (--no-apt)
    assert "secret-key-123" not in second.stdout + second.stderr

    # --- new code: edged is installed again, nothing else moves ---
    with open(source / "edged/core/limits.py", "a") as f:
        f.write("\n# update marker\n")
    third = run_installer(source, root, "--no-apt")
    assert "installed edged from" in third.stdout
    installed = list(venv.glob("lib/python3*/site-packages/edged/core/limits.py"))
    assert installed and installed[0].read_text().endswith("# update marker\n")
    assert key.read_text() == "secret-key-123\n" and mode_owner(key) == (0o600, 0, 0)
    assert (etc / "edged.toml").read_text().endswith("# edited by the administrator\n")

    # --- uninstall: the service and the code go, configuration and recordings stay ---
    gone = run_installer(source, root, "--uninstall")
    assert "kept" in gone.stdout and "evidence" in gone.stdout and "--purge" in gone.stdout
    for path in (unit, wants, catalog, root / "opt/edged"):
        assert not os.path.lexists(path), path
    assert key.read_text() == "secret-key-123\n"
    assert (etc / "edged.toml").read_text().endswith("# edited by the administrator\n")
    assert (root / "var/lib/edged/segment-evidence.webm").exists()
    assert account(root, "passwd", "edged") is not None
    again = run_installer(source, root, "--uninstall")
    assert "nothing to remove" in again.stdout

    # --- reinstall over the kept state; a lost group membership is restored ---
    group_file = root / "etc/group"
    group_file.write_text(
        group_file.read_text().replace(
            f"gpio:x:{account(root, 'group', 'gpio')[2]}:edged",  # type: ignore[index]
            f"gpio:x:{account(root, 'group', 'gpio')[2]}:",
        )
    )  # type: ignore[index]
    assert "edged" not in members(root, "gpio")
    back = run_installer(source, root, "--no-apt")
    assert "added user edged to gpio" in back.stdout
    assert "edged" in members(root, "gpio")
    assert account(root, "passwd", "edged")[2] == str(uid)  # type: ignore[index]
    assert key.read_text() == "secret-key-123\n"
    assert "kept" in back.stdout and (etc / "edged.toml").read_text().endswith("# edited by the administrator\n")
    assert os.readlink(wants) == "/etc/systemd/system/edged.service"

    # --- purge: everything of edged goes, the shared groups stay ---
    purged = run_installer(source, root, "--purge")
    assert "deleted" in purged.stdout
    for path in (etc, root / "var/lib/edged", root / "opt/edged", unit, wants, catalog):
        assert not os.path.lexists(path), path
    assert account(root, "passwd", "edged") is None and account(root, "group", "edged") is None
    for group in ("video", "audio", "gpio"):
        assert "edged" not in members(root, group)
    assert Path("/etc/passwd").read_bytes() == host_passwd


def test_refuses_apt_into_a_scratch_root(source: Path, root: Path) -> None:
    proc = run_installer(source, root, check=False)
    assert proc.returncode != 0
    assert "add --no-apt" in proc.stderr
    assert not (root / "opt").exists() and account(root, "passwd", "edged") is None


@pytest.mark.parametrize(
    "args, message",
    [
        (("--frobnicate",), "unknown option --frobnicate"),
        (("--no-apt", "--source", "/nonexistent"), "is not an edged checkout"),
    ],
)
def test_clear_errors(source: Path, root: Path, args: tuple[str, ...], message: str) -> None:
    proc = run_installer(source, root, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (root / "opt").exists() and account(root, "passwd", "edged") is None


def test_relative_root_is_refused(source: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(source / SCRIPT), "--root", "relative/dir", "--no-apt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "must be an absolute path" in proc.stderr


def test_shellcheck_clean() -> None:
    assert shutil.which("shellcheck"), "shellcheck not installed: scripts/setup --test installs it"
    proc = subprocess.run(["shellcheck", str(REPO / SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


REAL_PATHS = r"""
set -eu
T=$1 SRC=$2
for d in etc opt var usr; do  # every system path the installer writes, copy-on-write, this namespace only
  mkdir -p "$T/$d.up" "$T/$d.work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/$d.up,workdir=$T/$d.work" "/$d"
done
bash "$SRC/scripts/install-pi.sh" --no-apt >"$T/first.out" 2>&1
bash "$SRC/scripts/install-pi.sh" --no-apt >"$T/second.out" 2>&1
getent passwd edged >"$T/passwd"
id -nG edged >"$T/groups"
readlink /etc/systemd/system/multi-user.target.wants/edged.service >"$T/wants"
(cd / && /opt/edged/.venv/bin/edged doctor --config /etc/edged/edged.toml --json >"$T/doctor.json") || true
bash "$SRC/scripts/install-pi.sh" --purge >"$T/purge.out" 2>&1
if getent passwd edged; then echo "user still there" >&2; exit 1; fi
"""


@pytest.mark.slow
def test_real_paths_in_a_private_mount_namespace(source: Path, tmp_path: Path) -> None:
    """No --root: /etc, /opt, /var and /usr are overlays in a mount namespace of its own, so the
    script's real-system paths (getent, systemctl without --root, /etc/edged) run for real, and
    doctor checks the service's configuration as the unit would see it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed")
    host_passwd = Path("/etc/passwd").read_bytes()
    work = tmp_path / "ns"
    work.mkdir()
    (tmp_path / "real.sh").write_text(REAL_PATHS)
    proc = subprocess.run(
        ["unshare", "--mount", "sh", str(tmp_path / "real.sh"), str(work), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"),
    )
    if proc.returncode != 0 and "overlay" in proc.stderr:
        pytest.skip(f"cannot mount overlays here: {proc.stderr.strip()}")
    logs = "".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(work.glob("*.out")))
    assert proc.returncode == 0, proc.stderr + logs

    first = (work / "first.out").read_text()
    assert "created system user edged" in first
    assert "not starting edged.service: systemd is not PID 1 here" in first or "started edged.service" in first
    assert "nothing to do: edged is installed and up to date" in (work / "second.out").read_text()
    fields = (work / "passwd").read_text().strip().split(":")
    assert fields[0] == "edged" and fields[5] == "/var/lib/edged" and fields[6] == "/usr/sbin/nologin"
    assert {"video", "audio", "gpio"} <= set((work / "groups").read_text().split())
    assert (work / "wants").read_text().strip() == "/etc/systemd/system/edged.service"

    checks = {c["name"]: c for c in json.loads((work / "doctor.json").read_text())["checks"]}
    assert checks["config"]["status"] == "ok" and "/etc/edged/edged.toml" in checks["config"]["summary"]
    assert checks["storage"]["status"] != "fail" and "storage.dir /var/lib/edged" in checks["storage"]["summary"]
    assert checks["credentials"]["status"] == "ok"

    purge = (work / "purge.out").read_text()
    assert "deleted /etc/edged" in purge and "deleted /var/lib/edged" in purge and "deleted user edged" in purge
    assert Path("/etc/passwd").read_bytes() == host_passwd
    assert not Path("/etc/edged").exists() and not Path("/opt/edged").exists()
