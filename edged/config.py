"""Configuration: one TOML file validated into typed, frozen settings.

Each section is a dataclass; each field's metadata carries its rule (range, choices), so the
schema, the defaults and the validation live together and nowhere else. Every error names the
dotted key and the reason, and all errors of a file are reported at once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged import limits

#: Where ``edged run`` looks when no ``--config`` is given (relative to the working directory).
DEFAULT_CONFIG_PATH = Path("configs/edged.toml")


class ConfigError(Exception):
    """A configuration file that cannot be used. ``problems`` lists (key, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{key}: {reason}" for key, reason in problems]
        super().__init__("\n".join(lines))


def _rule(default: Any = dataclasses.MISSING, *, factory: Any = None, lo: float | None = None,
          hi: float | None = None, choices: tuple[str, ...] | None = None, even: bool = False,
          doc: str = "", live: bool = False) -> Any:
    # live: the running daemon can take a new value (a synced config) without a restart; a table
    # marked live makes every key below it live. One place for the rule: is_live().
    meta = {"lo": lo, "hi": hi, "choices": choices, "even": even, "doc": doc, "live": live}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceSettings:
    id: str = _rule(factory=socket.gethostname, doc="device identifier written into every manifest")
    unit_number: str = _rule("", doc="unit / callsign sent with uploads")
    unit_location: str = _rule("", doc="free-text location sent with uploads")


@dataclass(frozen=True)
class CameraSettings:
    source: str = _rule("auto", choices=("auto", "picamera2", "v4l2", "synthetic", "file"))
    position: str = _rule("front", doc="this camera's position name, as recall requests' camera_positions name it")
    device: str = _rule("", doc="v4l2: /dev/videoN (empty: first found); file: path of the video")
    width: int = _rule(limits.TARGET_WIDTH, lo=64, hi=3840, even=True)
    height: int = _rule(limits.TARGET_HEIGHT, lo=64, hi=2160, even=True)
    fps: int = _rule(limits.TARGET_FPS, lo=1, hi=60)
    bitrate: int = _rule(limits.TARGET_VIDEO_BITRATE, lo=50_000, hi=8_000_000, live=True)
    keyframe_seconds: float = _rule(10.0, lo=0.5, hi=60.0,
                                    doc="longest gap between keyframes (segment starts are keyframes too)")
    paced: bool = _rule(True, doc="false: synthetic/file sources run as fast as the encoder can")
    cpu_used: int = _rule(8, lo=-16, hi=16, doc="libvpx speed; negative fixes the speed")
    threads: int = _rule(1, lo=1, hi=8)


@dataclass(frozen=True)
class AudioSettings:
    source: str = _rule("auto", choices=("auto", "alsa", "synthetic", "none"))
    device: str = _rule("default", doc="ALSA device name")
    bitrate: int = _rule(limits.TARGET_AUDIO_BITRATE, lo=6_000, hi=256_000, live=True)
    sample_rate: int = _rule(48_000, choices=None, lo=8_000, hi=48_000)
    channels: int = _rule(1, lo=1, hi=2)


def _default_storage_dir() -> str:
    # systemd's StateDirectory= sets this; elsewhere a folder under the working directory.
    return os.environ.get("STATE_DIRECTORY", "edged-state").split(":")[0]


@dataclass(frozen=True)
class StorageSettings:
    dir: str = _rule(factory=_default_storage_dir, doc="state folder: segments, index, status")
    segment_seconds: float = _rule(10.0, lo=2.0, hi=60.0)
    max_bytes: int = _rule(4_000_000_000, lo=10_000_000, doc="ring buffer budget (about 24 h at the target rate)",
                           live=True)
    min_free_bytes: int = _rule(500_000_000, lo=0, doc="never fill the file system past this", live=True)
    sync_interval_seconds: float = _rule(1.0, lo=0.2, hi=10.0,
                                         doc="how often the segment being written is flushed and fsynced")


@dataclass(frozen=True)
class ClipSettings:
    pre_roll_seconds: float = _rule(30.0, lo=0.0, hi=120.0, doc="footage kept from before the press")
    post_roll_seconds: float = _rule(30.0, lo=0.0, hi=600.0, doc="footage kept after the last press")
    max_bytes: int = _rule(limits.MAX_UPLOAD_BYTES, lo=500_000, hi=limits.MAX_UPLOAD_BYTES,
                           doc="largest part; the upload limit")
    max_duration_ms: int = _rule(limits.MAX_DURATION_MS, lo=5_000, hi=limits.MAX_DURATION_MS,
                                 doc="longest part; the upload limit")


@dataclass(frozen=True)
class GpioSettings:
    button_pin: str = _rule("", doc="mark button, e.g. \"GPIO17\" or \"BOARD11\" (empty: none)")
    button_pull_up: bool = _rule(True, doc="button wired to ground with the internal pull-up")
    button_bounce_ms: int = _rule(50, lo=0, hi=1000)
    led_pin: str = _rule("", doc="status LED (empty: none)")
    buzzer_pin: str = _rule("", doc="buzzer or vibration motor (empty: none)")


UPLOAD_TARGETS = ("sonoran_v2", "sonoran_legacy", "bota", "directory")


@dataclass(frozen=True)
class SonoranV2Settings:
    base_url: str = _rule("https://api.sonorancad.com")
    api_key_file: str = _rule("", doc="file holding the API key (empty: $CREDENTIALS_DIRECTORY/sonoran_api_key)")
    account_uuid: str = _rule("", doc="exactly one of account_uuid, community_user_id, roblox, discord")
    community_user_id: str = _rule("")
    roblox: int = _rule(0, lo=0, doc="Roblox user id (0: not used)")
    discord: str = _rule("")
    plan: str = _rule("free", choices=tuple(limits.PLAN_MINUTES), doc="the community's plan: its 24 h minute allowance")
    ident_id: int = _rule(0, lo=0, doc="identifier id sent with each clip (0: not sent)")
    devices_sharing_key: int = _rule(1, lo=1, hi=1000,
                                     doc="devices uploading with this API key; each keeps to its share of the rate")


@dataclass(frozen=True)
class SonoranLegacySettings:
    base_url: str = _rule("https://api.sonorancad.com")
    community: str = _rule("", doc="community id")
    account: str = _rule("", doc="the user's account UUID")
    session_id: str = _rule("", doc="the user's active session UUID")
    username: str = _rule("", doc="the user's Sonoran CAD username")
    plan: str = _rule("free", choices=tuple(limits.PLAN_MINUTES))
    ident_id: str = _rule("", doc="identifier id sent with each clip (empty: not sent)")


@dataclass(frozen=True)
class BotaSettings:
    base_url: str = _rule("https://api.bota.dev", doc="the presigned-URL backend; paths /v1/recordings... below it")
    token_file: str = _rule("", doc="file holding the API key or device token (empty: $CREDENTIALS_DIRECTORY/bota_token)")
    device_id: str = _rule("", doc="device id sent when a recording is created (empty: device.id)")


@dataclass(frozen=True)
class DirectorySettings:
    path: str = _rule("", doc="folder clips are copied into (empty: <storage.dir>/delivered)")


@dataclass(frozen=True)
class UploadSettings:
    targets: tuple[str, ...] = _rule(("directory",), choices=UPLOAD_TARGETS,
                                     doc="where every clip goes, each target independently")
    retry_base_seconds: float = _rule(2.0, lo=0.1, hi=600.0, doc="first back-off after a network or server error")
    retry_cap_seconds: float = _rule(600.0, lo=1.0, hi=86400.0, doc="longest back-off (full jitter below it)")
    auth_retry_minutes: float = _rule(30.0, lo=1.0, hi=1440.0,
                                      doc="a target paused by a refused key or account tries again after this")
    connect_timeout_seconds: float = _rule(15.0, lo=1.0, hi=120.0)
    timeout_seconds: float = _rule(60.0, lo=5.0, hi=600.0, doc="longest wait for the server to read or answer")
    bandwidth_kbps: int = _rule(0, lo=0, doc="upload bandwidth cap in kbit/s (0: none)")
    sonoran_v2: SonoranV2Settings = field(default_factory=SonoranV2Settings)
    sonoran_legacy: SonoranLegacySettings = field(default_factory=SonoranLegacySettings)
    bota: BotaSettings = field(default_factory=BotaSettings)
    directory: DirectorySettings = field(default_factory=DirectorySettings)


@dataclass(frozen=True)
class SyncSettings:
    dir: str = _rule("", doc="folder a sync tool (Syncthing, rsync) fills: edged.toml, recall/; edged writes status/ (empty: off)")
    fleet_public_key: str = _rule("", doc="Ed25519 public key (base64, or a file path): a synced config must be signed by it")
    poll_seconds: float = _rule(2.0, lo=0.2, hi=60.0, doc="how often the synced folder is looked at")


@dataclass(frozen=True)
class Settings:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    clips: ClipSettings = _rule(factory=ClipSettings, live=True)
    gpio: GpioSettings = field(default_factory=GpioSettings)
    upload: UploadSettings = _rule(factory=UploadSettings, live=True)
    sync: SyncSettings = field(default_factory=SyncSettings)
    #: Where these settings came from ("<embedded defaults>" or a path); not a TOML key.
    origin: str = field(default="<embedded defaults>", compare=False)

    @property
    def state_dir(self) -> Path:
        return Path(self.storage.dir)

    @property
    def delivery_dir(self) -> Path:
        return Path(self.upload.directory.path) if self.upload.directory.path else self.state_dir / "delivered"


_SECTIONS: dict[str, type] = {name: t for name, t in typing.get_type_hints(Settings).items() if name != "origin"}


def _resolve_type(t: Any) -> Any:
    return eval(t, vars(typing) | vars(types) | globals()) if isinstance(t, str) else t  # noqa: S307 - own annotations


def _check_value(key: str, f: dataclasses.Field, value: Any, problems: list[tuple[str, str]]) -> Any:
    want = _resolve_type(f.type)
    meta = f.metadata
    if want is bool:
        if not isinstance(value, bool):
            problems.append((key, f"must be true or false, not {value!r}"))
            return None
    elif want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append((key, f"must be an integer, not {type(value).__name__} {value!r}"))
            return None
    elif want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append((key, f"must be a number, not {type(value).__name__} {value!r}"))
            return None
        value = float(value)
    elif want is str:
        if not isinstance(value, str):
            problems.append((key, f"must be a string, not {type(value).__name__} {value!r}"))
            return None
    elif typing.get_origin(want) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append((key, f"must be a list of strings, not {value!r}"))
            return None
        if len(set(value)) != len(value):
            problems.append((key, f"lists an entry twice: {value!r}"))
            return None
        bad = [v for v in value if meta.get("choices") and v not in meta["choices"]]
        if bad:
            problems.append((key, f"entries must be among {', '.join(meta['choices'])}; got {', '.join(map(repr, bad))}"))
            return None
        return tuple(value)
    if meta.get("choices") and value not in meta["choices"]:
        problems.append((key, f"must be one of {', '.join(meta['choices'])}; got {value!r}"))
        return None
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo:
        problems.append((key, f"must be at least {lo}; got {value!r}"))
        return None
    if hi is not None and value > hi:
        problems.append((key, f"must be at most {hi}; got {value!r}"))
        return None
    if meta.get("even") and value % 2:
        problems.append((key, f"must be even (4:2:0 video); got {value!r}"))
        return None
    return value


def _cross_checks(s: Settings, problems: list[tuple[str, str]]) -> None:
    if s.camera.source == "file" and not s.camera.device:
        problems.append(("camera.device", "must name the video file when camera.source = \"file\""))
    # A clip is built from whole segments: a segment must fit the upload duration limit.
    if s.storage.segment_seconds * 1000 > limits.MAX_DURATION_MS:
        problems.append(("storage.segment_seconds", "must not exceed the upload duration limit"))
    # Clips are cut on keyframes: a part can be no shorter than a keyframe interval (nor than a
    # segment, whose start is a keyframe), or every clip would have to be re-encoded.
    gop_ms = min(s.camera.keyframe_seconds, s.storage.segment_seconds) * 1000
    if gop_ms > s.clips.max_duration_ms - 100:
        problems.append(("camera.keyframe_seconds", f"keyframes {gop_ms / 1000:g} s apart do not fit clip parts "
                                                    f"of clips.max_duration_ms = {s.clips.max_duration_ms}"))
    if s.storage.max_bytes < 3 * segment_bytes_estimate(s):
        problems.append(("storage.max_bytes", "must hold at least three segments at the configured bitrate"))
    _upload_checks(s.upload, problems)
    if s.sync.fleet_public_key:
        from edged.configsign import KeyLoadError, load_public_key
        try:
            load_public_key(s.sync.fleet_public_key)
        except KeyLoadError as exc:
            problems.append(("sync.fleet_public_key", str(exc)))


def _credential_path(configured: str, credential: str) -> Path | None:
    """A secret's file: the configured one, else systemd's credential of that name (LoadCredential=)."""
    if configured:
        return Path(configured)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(creds) / credential if creds else None


def api_key_path(v2: SonoranV2Settings) -> Path | None:
    """Where the Sonoran v2 API key is read from: the configured file, else systemd's credentials."""
    return _credential_path(v2.api_key_file, "sonoran_api_key")


def token_path(bota: BotaSettings) -> Path | None:
    """Where the Bota API key or device token is read from: the configured file, else systemd's credentials."""
    return _credential_path(bota.token_file, "bota_token")


def _check_credential(key: str, path: Path | None, credential: str, what: str,
                      problems: list[tuple[str, str]]) -> None:
    """A secret's file must be named (or be a systemd credential), readable and not empty."""
    if path is None:
        problems.append((key, f"must name the file holding the {what} (or run under systemd with a "
                              f"{credential} credential)"))
        return
    try:
        if not path.read_text().strip():
            problems.append((key, f"{path} is empty"))
    except OSError as exc:
        problems.append((key, f"{path} cannot be read: {exc.strerror or exc}"))


def _upload_checks(u: UploadSettings, problems: list[tuple[str, str]]) -> None:
    if u.retry_cap_seconds < u.retry_base_seconds:
        problems.append(("upload.retry_cap_seconds", "must not be below upload.retry_base_seconds"))
    if "sonoran_v2" in u.targets:
        v2 = u.sonoran_v2
        _check_url("upload.sonoran_v2.base_url", v2.base_url, problems)
        ids = {"account_uuid": v2.account_uuid, "community_user_id": v2.community_user_id,
               "roblox": v2.roblox, "discord": v2.discord}
        given = [k for k, v in ids.items() if v]
        if len(given) != 1:
            problems.append(("upload.sonoran_v2.account_uuid",
                             "set exactly one of account_uuid, community_user_id, roblox, discord"
                             + (f" (got {', '.join(given)})" if given else "")))
        _check_credential("upload.sonoran_v2.api_key_file", api_key_path(v2), "sonoran_api_key", "API key",
                          problems)
    if "sonoran_legacy" in u.targets:
        lg = u.sonoran_legacy
        _check_url("upload.sonoran_legacy.base_url", lg.base_url, problems)
        for name in ("community", "account", "session_id", "username"):
            if not getattr(lg, name):
                problems.append((f"upload.sonoran_legacy.{name}", "is required by the sonoran_legacy target"))
    if "bota" in u.targets:
        _check_url("upload.bota.base_url", u.bota.base_url, problems)
        _check_credential("upload.bota.token_file", token_path(u.bota), "bota_token", "API key or device token",
                          problems)


def _check_url(key: str, url: str, problems: list[tuple[str, str]]) -> None:
    if not (url.startswith("https://") or url.startswith("http://")) or "://" == url[-3:]:
        problems.append((key, f"must be an http(s) URL; got {url!r}"))


def segment_bytes_estimate(s: Settings) -> int:
    """A generous size of one segment at the configured bitrates (one place: config, ring, recorder)."""
    audio = s.audio.bitrate if s.audio.source != "none" else 0
    return int((s.camera.bitrate + audio) / 8 * s.storage.segment_seconds * 1.3)


def _build(cls: type, table: dict[str, Any], prefix: str, problems: list[tuple[str, str]]) -> Any:
    """One section (or sub-section) from its TOML table; bad or unknown keys are reported and
    left at their defaults, so cross-checks still see a whole object."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            problems.append((dotted, f"unknown key (known: {', '.join(fields)})"))
            continue
        want = _resolve_type(fields[key].type)
        if dataclasses.is_dataclass(want):
            if not isinstance(value, dict):
                problems.append((dotted, f"must be a table, e.g. [{dotted}]"))
            else:
                values[key] = _build(want, value, dotted + ".", problems)
            continue
        checked = _check_value(dotted, fields[key], value, problems)
        if checked is not None:
            values[key] = checked
    return cls(**values)


def from_mapping(data: dict[str, Any], origin: str = "<mapping>") -> Settings:
    """Validate a parsed TOML document into Settings; raise ConfigError listing every problem,
    value errors and cross-checks together."""
    problems: list[tuple[str, str]] = []
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in _SECTIONS:
            problems.append((name, f"unknown section (known: {', '.join(_SECTIONS)})"))
            continue
        if not isinstance(table, dict):
            problems.append((name, "must be a table, e.g. [" + name + "]"))
            continue
        sections[name] = _build(_SECTIONS[name], table, name + ".", problems)
    settings = Settings(**sections, origin=origin)
    reported = {key for key, _ in problems}
    cross: list[tuple[str, str]] = []
    _cross_checks(settings, cross)
    problems += [(k, r) for k, r in cross if k not in reported]  # a bad value is reported once
    if problems:
        raise ConfigError(problems, origin)
    return settings


def load(path: Path | str) -> Settings:
    """Read and validate one TOML file. Errors (missing, unreadable, syntax, values) raise ConfigError."""
    return from_mapping(read_mapping(path), origin=str(path))


def read_mapping(path: Path | str) -> dict[str, Any]:
    """One TOML file parsed but not validated (the local layer under a synced config)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([("<file>", "not found")], str(path)) from None
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot be read: {exc.strerror or exc}")], str(path)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([("<file>", "is not UTF-8 text")], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("<syntax>", str(exc))], str(path)) from None
    return data


# --- layers: a synced config over the local one, and what may change while running ---------------

#: Keys only the local config may set: a synced folder must not move the footage or turn off
#: the signature check of what it delivers.
LOCAL_ONLY = ("sync", "storage.dir")


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


#: Keys that decide where evidence goes or which file is read as a key: a synced config may set
#: them only when it is signed (``sync.fleet_public_key``); an unsigned synced folder can tune the
#: recording, never redirect it.
SIGNED_ONLY = ("upload.targets", "upload.*.base_url", "upload.*.api_key_file", "upload.*.token_file",
               "upload.directory.path")


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        if isinstance(value, dict):
            keys += _leaf_keys(value, f"{prefix}{key}.") or [prefix + key]
        else:
            keys.append(prefix + key)
    return keys


def _matching(keys: list[str], patterns: tuple[str, ...]) -> list[str]:
    """Keys equal to, below, or (``*``) matching one of ``patterns``."""
    return [k for k in keys
            if any(fnmatch.fnmatchcase(k, p) or k.startswith(p + ".") for p in patterns)]


def from_layers(local_data: dict[str, Any], synced_data: dict[str, Any], origin: str = "<synced>",
                signed: bool = False) -> Settings:
    """The synced document overlaid table by table, key by key, on the local one (lists replace),
    validated whole. A synced key in LOCAL_ONLY (or, unsigned, in SIGNED_ONLY) is an error naming
    it; ConfigError lists all."""
    leaves = _leaf_keys(synced_data)
    local_only = _matching(leaves, LOCAL_ONLY)
    problems = [(k, "can only be set in the local config") for k in local_only]
    if not signed:
        problems += [(k, "decides where evidence goes: only a signed synced config may set it "
                         "(set sync.fleet_public_key in the local config)")
                     for k in _matching(leaves, SIGNED_ONLY) if k not in local_only]
    allowed = synced_data
    for key, _ in problems:  # dropped, so each refused key is reported once and nothing else follows from it
        *parents, last = key.split(".")
        allowed = _without(allowed, parents, last)
    try:
        settings = from_mapping(_overlay(local_data, allowed), origin)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems, origin)
    return settings


def _without(data: dict[str, Any], parents: list[str], last: str) -> dict[str, Any]:
    if not parents:
        return {k: v for k, v in data.items() if k != last}
    head, *rest = parents
    return {**data, head: _without(data[head], rest, last)}


def _leaves(obj: Any, prefix: str = "", live: bool = False) -> list[tuple[str, Any, bool]]:
    """(dotted key, value, live) for every key below ``obj``."""
    rows = []
    for f in dataclasses.fields(obj):
        if f.name == "origin":
            continue
        value = getattr(obj, f.name)
        is_live = live or bool(f.metadata.get("live"))
        if dataclasses.is_dataclass(value):
            rows += _leaves(value, f"{prefix}{f.name}.", is_live)
        else:
            rows.append((prefix + f.name, value, is_live))
    return rows


def live_keys() -> list[str]:
    """Every key the running daemon takes without a restart."""
    return [key for key, _, live in _leaves(Settings()) if live]


@functools.cache
def _live_set() -> frozenset[str]:
    return frozenset(live_keys())


def is_live(key: str) -> bool:
    return key in _live_set()


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose values differ, in schema order."""
    return [key for (key, a, _), (_, b, _) in zip(_leaves(old), _leaves(new)) if a != b]


def needs_restart(keys: list[str]) -> list[str]:
    """Those of ``keys`` the running daemon cannot take: they apply at the next start."""
    return [k for k in keys if not is_live(k)]


def overlay_live(base: Settings, new: Settings) -> Settings:
    """``base`` with every live key taken from ``new``: what runs after a live apply."""
    def merge(b: Any, n: Any, live: bool) -> Any:
        if live:
            return n
        if not dataclasses.is_dataclass(b):
            return b
        changes = {f.name: merge(getattr(b, f.name), getattr(n, f.name), bool(f.metadata.get("live")))
                   for f in dataclasses.fields(b) if f.name != "origin"}
        return dataclasses.replace(b, **changes)
    return merge(base, new, False)


def cross_check(settings: Settings) -> list[tuple[str, str]]:
    """The checks across keys, for settings put together from layers (overlay_live)."""
    problems: list[tuple[str, str]] = []
    _cross_checks(settings, problems)
    return problems


def load_or_defaults(path: Path | str | None) -> Settings:
    """``edged run``'s rule: an explicit path must load; the default path is optional."""
    if path is not None:
        return load(path)
    if DEFAULT_CONFIG_PATH.exists():
        return load(DEFAULT_CONFIG_PATH)
    return Settings()


def describe() -> list[tuple[str, Any, str]]:
    """Every key with its embedded default and its doc line (for the sample config and README)."""
    rows: list[tuple[str, Any, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", value, f.metadata.get("doc", "")))

    defaults = Settings()
    for section in _SECTIONS:
        walk(getattr(defaults, section), section + ".")
    return rows
