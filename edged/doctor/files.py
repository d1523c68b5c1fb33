"""Doctor's checks of what lives in files: the configuration, the state folder, the credentials."""

from __future__ import annotations

import errno
import os
import pwd
import stat
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edged.config import schema as config_mod
from edged.core.paths import StatePaths
from edged.doctor import FAIL, OK, SERVICE_STATE_DIR, WARN, Check, Host
from edged.footage.ring import METADATA_RESERVE_BYTES

#: Config keys whose problem is a credential file: reported by the credentials checks.
CREDENTIAL_KEYS = {"upload.sonoran_v2.api_key_file": "sonoran_v2", "upload.bota.token_file": "bota"}
#: Targets that read a secret: (settings attribute, systemd credential name, path function).
#: target -> (the key's setting, its systemd credential name, where the setting says it is)
KEYED_TARGETS: dict[str, tuple[str, str, Callable[[Any], Path | None]]] = {
    "sonoran_v2": ("api_key_file", "sonoran_api_key", config_mod.api_key_path),
    "bota": ("token_file", "bota_token", config_mod.token_path),
}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# --- configuration -----------------------------------------------------------------------------


def check_config(path: Path | None) -> tuple[Check, config_mod.Settings | None, tuple[str, ...]]:
    """The configuration as ``edged run`` loads it; with problems, the settings the rest of the
    checks can still use (upload targets set aside) and the targets the file asks for."""
    try:
        s = config_mod.load_or_defaults(path)
    except config_mod.ConfigError as exc:
        source = exc.source or str(path)
        settings, targets = _salvage(path)
        other = [(k, r) for k, r in exc.problems if k not in CREDENTIAL_KEYS]
        if settings is not None and not other:
            return (
                Check("config", OK, f"{source} loads; its key files are checked under credentials below"),
                settings,
                targets,
            )
        problems = "; ".join(f"{k}: {r}" for k, r in other or exc.problems)
        if exc.problems[0][0] == "<file>" and path is not None:
            fix = "pass --config with an existing file (the installer puts it at /etc/edged/edged.toml)"
        else:
            fix = f"edit {source}: `edged config check {source}` lists every problem"
        return Check("config", FAIL, f"{source}: {problems}", fix), settings, targets
    c, a = s.camera, s.audio
    audio = "no audio" if a.source == "none" else f"audio {a.source}"
    return (
        Check(
            "config",
            OK,
            f"{s.origin} loads: camera {c.source} {c.width}x{c.height}@{c.fps}, {audio}, "
            f"targets {', '.join(s.upload.targets) or 'none'}",
        ),
        s,
        s.upload.targets,
    )


def _salvage(path: Path | None) -> tuple[config_mod.Settings | None, tuple[str, ...]]:
    """Settings from a file whose only trouble is in its upload targets (a missing key file, an
    identifier left out): load it with the targets set aside, remember what they were."""
    file = Path(path) if path is not None else config_mod.DEFAULT_CONFIG_PATH
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None, ()
    targets: tuple[str, ...] = ("directory",)
    upload = data.get("upload")
    if isinstance(upload, dict):
        raw = upload.pop("targets", list(targets))
        if isinstance(raw, list):
            targets = tuple(t for t in raw if t in config_mod.UPLOAD_TARGETS)
    try:
        return config_mod.from_mapping(data, origin=str(file)), targets
    except config_mod.ConfigError:
        return None, targets


# --- state folder ------------------------------------------------------------------------------


def check_storage(s: config_mod.Settings, host: Host) -> Check:
    root = s.state_dir.absolute()
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != root:  # created at start: by systemd (StateDirectory=) or by the daemon
        if (
            root != SERVICE_STATE_DIR
            and not os.access(existing, os.W_OK | os.X_OK)
            and not _service_user_may(existing, host)
        ):
            return Check(
                "storage",
                FAIL,
                f"storage.dir {root} does not exist and {existing} is not writable by uid {os.geteuid()}",
                f"create it: sudo install -d -o {host.service_user} -g {host.service_user} {root}",
            )
        return _space(s, root, existing, full=False)
    if not root.is_dir():
        return Check("storage", FAIL, f"storage.dir {root} is not a folder", "set storage.dir to a folder")
    full = False
    try:
        _write_probe(root)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            full = True  # the ring may still make room from its own footage: judged by _space
        elif exc.errno == errno.EROFS:
            return Check(
                "storage",
                FAIL,
                f"storage.dir {root} is on a read-only file system",
                "remount it read-write (sudo mount -o remount,rw ...), check the card (dmesg), or set storage.dir",
            )
        elif exc.errno in (errno.EACCES, errno.EPERM) and _service_user_may(root, host):
            return Check(
                "storage",
                WARN,
                f"storage.dir {root} belongs to the service user {host.service_user}: "
                f"uid {os.geteuid()} cannot write it, so it is unverified",
                "run doctor as root: sudo edged doctor ...",
            )
        else:
            return Check(
                "storage",
                FAIL,
                f"storage.dir {root} cannot be written: {exc.strerror}",
                f"sudo chown -R {host.service_user}: {root}, or set storage.dir",
            )
    owner = _service_user_cannot_write(root, host)
    if owner:
        return Check("storage", FAIL, f"storage.dir {root}: {owner}", f"sudo chown -R {host.service_user}: {root}")
    return _space(s, root, root, full)


def _write_probe(folder: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".doctor-", dir=folder)
    try:
        os.write(fd, b"x")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def _service_user_cannot_write(folder: Path, host: Host) -> str:
    """Run as root, doctor's own writes prove nothing for the service user: read the modes.
    (systemd's StateDirectory= gives /var/lib/edged to the user at every start.)"""
    if os.geteuid() != 0 or folder == SERVICE_STATE_DIR:
        return ""
    try:
        user = pwd.getpwnam(host.service_user)
    except KeyError:
        return ""
    if not user_may(folder, user, os.W_OK | os.X_OK):
        st = folder.stat()
        return (
            f"the service user {user.pw_name} cannot write it (mode {stat.S_IMODE(st.st_mode):o}, "
            f"uid {st.st_uid}, gid {st.st_gid})"
        )
    return ""


def _service_user_may(path: Path, host: Host) -> bool:
    try:
        return user_may(path, pwd.getpwnam(host.service_user), os.W_OK | os.X_OK)
    except (KeyError, OSError):
        return False


def user_may(path: Path, user: pwd.struct_passwd, want: int) -> bool:
    """Whether ``user`` has the ``want`` (os.R_OK/W_OK/X_OK) permission bits on ``path``."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if user.pw_uid == 0:
        return True
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    shift = 6 if st.st_uid == user.pw_uid else 3 if st.st_gid in groups else 0
    return (mode >> shift) & want == want


def _footage_bytes(root: Path) -> int:
    try:
        return sum(f.stat().st_size for f in StatePaths(root).segments.glob("*") if f.is_file())
    except OSError:  # not there yet, or not ours to look into
        return 0


def _space(s: config_mod.Settings, root: Path, folder: Path, full: bool) -> Check:
    """Room for the ring on ``folder``'s file system (``root`` itself, or its nearest ancestor)."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    ours = _footage_bytes(root)
    room = free + ours - s.storage.min_free_bytes - METADATA_RESERVE_BYTES  # what the ring can use
    segment = config_mod.segment_bytes_estimate(s)
    rate = (s.camera.bitrate + (s.audio.bitrate if s.audio.source != "none" else 0)) / 8
    created = " (created by systemd at start)" if root == SERVICE_STATE_DIR else " (created at start)"
    where = (
        f"storage.dir {root}"
        + ("" if folder == root else created)
        + f": {_size(free)} free"
        + (" (full)" if full else "")
        + (f", {_size(ours)} in segments" if ours else "")
    )
    if room < 3 * segment:
        return Check(
            "storage",
            FAIL,
            f"{where}: after storage.min_free_bytes ({_size(s.storage.min_free_bytes)}) not even three segments fit",
            "free space on the card, use a larger one, or lower storage.min_free_bytes",
        )
    if room < s.storage.max_bytes:
        return Check(
            "storage",
            WARN,
            f"{where}: the ring holds {_size(room)} (about {room / rate / 3600:.1f} h), "
            f"less than storage.max_bytes {_size(s.storage.max_bytes)}",
            f"use a larger card, or set storage.max_bytes = {max(room, 0)} to say so",
        )
    return Check(
        "storage",
        OK,
        f"{where}: storage.max_bytes {_size(s.storage.max_bytes)} fits "
        f"(about {s.storage.max_bytes / rate / 3600:.1f} h of footage)",
    )


# --- credentials -------------------------------------------------------------------------------


def check_credentials(s: config_mod.Settings, targets: tuple[str, ...], host: Host) -> list[Check]:
    keyed = [t for t in targets if t in KEYED_TARGETS]
    if not keyed:
        return [Check("credentials", OK, f"no configured target needs a key (targets: {', '.join(targets) or 'none'})")]
    return [_check_key(t, s, host) for t in keyed]


def _check_key(target: str, s: config_mod.Settings, host: Host) -> Check:
    attr, credential, path_of = KEYED_TARGETS[target]
    name = f"credentials.{target}"
    key = f"upload.{target}.{attr}"
    path = path_of(getattr(s.upload, target))
    write_it = f"write the key: sudo install -m 600 /dev/stdin {path} (paste it, then Ctrl-D)"
    if path is None:
        return Check(
            name,
            FAIL,
            f"no key file: {key} is empty and there is no $CREDENTIALS_DIRECTORY",
            f"set {key}, or run under systemd with LoadCredential={credential}:...",
        )
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check(name, FAIL, f"{path} does not exist", write_it)
    except PermissionError:
        return Check(
            name,
            WARN,
            f"{path} cannot be looked at by uid {os.geteuid()} (a root-only folder, as it should be)",
            "run doctor as root: sudo edged doctor ...",
        )
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return Check(name, FAIL, f"{path} is not a regular file", write_it)
    if mode & 0o007:
        return Check(name, FAIL, f"{path} is open to everyone (mode {mode:03o})", f"sudo chmod 600 {path}")
    try:
        with open(path, "rb") as f:
            empty = not f.read().strip()
    except PermissionError:
        return Check(
            name,
            WARN,
            f"{path} (mode {mode:03o}, uid {st.st_uid}) cannot be read by uid {os.geteuid()}",
            "run doctor as root: sudo edged doctor ...",
        )
    if empty:
        return Check(name, FAIL, f"{path} is empty", write_it)
    if getattr(getattr(s.upload, target), attr) and os.geteuid() == 0:
        # A configured file is read by the daemon itself (a credential, by systemd as root).
        try:
            user = pwd.getpwnam(host.service_user)
        except KeyError:
            user = None
        if user is not None and not user_may(path, user, os.R_OK):
            return Check(
                name,
                FAIL,
                f"{path} cannot be read by the service user {user.pw_name} "
                f"(mode {mode:03o}, uid {st.st_uid}, gid {st.st_gid})",
                f"sudo chgrp {user.pw_name} {path} && sudo chmod 640 {path}, or use LoadCredential=",
            )
    return Check(name, OK, f"{path}: present, not empty, mode {mode:03o}")
