"""Configuration: one TOML file validated into typed, frozen settings, and who may set what.

Each section is a dataclass; each field's metadata carries its rule (range, choices, length) and
its **trust class**, so the schema, the defaults, the validation and the trust model live
together and nowhere else. Every error names the dotted key and the reason, and all errors of a
file are reported at once.

Why a trust class per key: a config may also arrive through a synced folder (``configsync``),
written by whoever controls the sync party. Such a file must never stop the recording, send the
evidence elsewhere or keep less of it. So every key is one of

* ``tunable``: an unsigned synced file may set it, within the key's rule and, where lowering or
  raising it would keep or deliver less evidence, within tighter *synced bounds*
  (``SyncedBound``: e.g. a pre-roll of at least 10 s, a ring budget not below the local one);
* ``signed``: only a synced file signed with the fleet key (``sync.fleet_public_key``) may set
  it — where evidence goes (targets, URLs, key files), whose it is (every account, community,
  session and device identity), what is recorded (camera and audio source and device, geometry)
  and the wiring (GPIO);
* ``local``: only the local config file may set it — the synced folder itself (``sync.*``) and
  the state folder (``storage.dir``), so the sync party can neither move the footage nor turn
  the signature check off.

A key with no class written down is ``signed`` (a new key is safe until someone decides).
Every synced file, signed or not, also keeps ``storage.min_free_bytes`` to a fraction of the
state folder's file system (``fs_fraction``). Sizes are bounded everywhere: file bytes, nesting
depth, string and list lengths, and every number has both ends, so a hostile file is rejected
with a reason instead of exhausting the parser, the recursion limit or the disk.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import reprlib
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.core import limits

#: Where ``edged run`` looks when no ``--config`` is given (relative to the working directory).
DEFAULT_CONFIG_PATH = Path("configs/edged.toml")

#: The largest config file read (local or synced); the sample is about 4 KB.
MAX_FILE_BYTES = 256 * 1024
#: Deepest nesting of tables and arrays accepted (the schema needs 4: upload.sonoran_v2.unit.key).
MAX_DEPTH = 16
#: Longest list value (``upload.targets`` has four possible entries).
MAX_LIST = 16
#: Longest string value unless a key says otherwise, and the longest path.
MAX_STR = 256
MAX_PATH = 4096
#: Problems shown in a message or a status file (the rest are counted).
MAX_SHOWN = 50

TUNABLE, SIGNED, LOCAL = "tunable", "signed", "local"
TRUST_CLASSES = (TUNABLE, SIGNED, LOCAL)

LOCAL_REASON = "can only be set in the local config"
SIGNED_REASON = (
    "is signed-only: only a signed synced config may set it "
    "(set sync.fleet_public_key in the local config and sign with edged config sign)"
)


class ConfigError(Exception):
    """A configuration file that cannot be used. ``problems`` lists (key, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{key}: {reason}" for key, reason in bounded(problems)]
        super().__init__("\n".join(lines))


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 6
_REPR.maxlevel = 3


def show(value: Any) -> str:
    """A value as an error message quotes it: bounded, however long or deep it is."""
    return _REPR.repr(value)


def short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most MAX_SHOWN problems, keys and reasons shortened, then how many were left out:
    what a log line or a status file carries."""
    out = [(short(k, 120), short(r, 400)) for k, r in problems[:MAX_SHOWN]]
    if len(problems) > MAX_SHOWN:
        out.append(("<more>", f"{len(problems) - MAX_SHOWN} more problems not shown"))
    return out


@dataclass(frozen=True)
class SyncedBound:
    """How far an *unsigned* synced file may move a tunable key, beyond the key's own rule: no
    lower than ``lo`` (except 0, "off", when ``zero_ok``), no higher than ``hi``, and with
    ``not_below_local`` no lower than the local config's value."""

    lo: float | None = None
    hi: float | None = None
    zero_ok: bool = False
    not_below_local: bool = False

    def problem(self, value: Any, local: Any) -> str | None:
        if self.lo is not None and value < self.lo and not (self.zero_ok and value == 0):
            either = "0 (off) or " if self.zero_ok else ""
            return f"an unsigned synced config may set it to {either}at least {self.lo:g}; got {value!r}"
        if self.hi is not None and value > self.hi:
            return f"an unsigned synced config may set it to at most {self.hi:g}; got {value!r}"
        if self.not_below_local and value < local:
            return f"an unsigned synced config may raise it, not lower it below the local {local!r}; got {value!r}"
        return None

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(("0 or " if self.zero_ok else "") + f"≥ {num(self.lo)}")
        if self.hi is not None:
            parts.append(f"≤ {num(self.hi)}")
        if self.not_below_local:
            parts.append("≥ the local value")
        return ", ".join(parts)


def _rule(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = None,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
    even: bool = False,
    doc: str = "",
    live: bool = False,
    trust: str | None = None,
    unsigned: SyncedBound | None = None,
    fs_fraction: float | None = None,
    max_len: int = MAX_STR,
) -> Any:
    # live: the running daemon can take a new value (a synced config) without a restart; a table
    # marked live makes every key below it live. One place for the rule: is_live().
    # trust: who may set it (module docstring); a table's trust is its keys' unless they say.
    # unsigned: the tighter bounds for an unsigned synced file (tunable keys only).
    # fs_fraction: a synced value may be at most this share of the state folder's file system.
    assert trust in (None, *TRUST_CLASSES), trust
    meta = {
        "lo": lo,
        "hi": hi,
        "choices": choices,
        "even": even,
        "doc": doc,
        "live": live,
        "trust": trust,
        "unsigned": unsigned,
        "fs_fraction": fs_fraction,
        "max_len": max_len,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceSettings:
    """``[device]``: who this bodycam is."""

    # The id and the unit decide whose evidence a clip is (manifests, Sonoran's unitNumber):
    # signed. The location is free text beside them.
    id: str = _rule(factory=socket.gethostname, doc="device identifier written into every manifest", trust=SIGNED)
    unit_number: str = _rule("", doc="unit / callsign sent with uploads", trust=SIGNED)
    unit_location: str = _rule("", doc="free-text location sent with uploads", trust=TUNABLE)


@dataclass(frozen=True)
class CameraSettings:
    """``[camera]``: what is recorded, at what geometry and bitrate."""

    # What is recorded and at what geometry is signed: a sync party could otherwise make the
    # bodycam loop its own video (source "file") or starve the encoder (too many pixels) or the
    # footage (too few). The bitrate is tunable above a floor.
    source: str = _rule("auto", choices=("auto", "picamera2", "v4l2", "synthetic", "file"), trust=SIGNED)
    position: str = _rule(
        "front", doc="this camera's position name, as recall requests' camera_positions name it", trust=SIGNED
    )
    device: str = _rule(
        "", doc="v4l2: /dev/videoN (empty: first found); file: path of the video", trust=SIGNED, max_len=MAX_PATH
    )
    width: int = _rule(limits.TARGET_WIDTH, lo=64, hi=3840, even=True, trust=SIGNED)
    height: int = _rule(limits.TARGET_HEIGHT, lo=64, hi=2160, even=True, trust=SIGNED)
    fps: int = _rule(limits.TARGET_FPS, lo=1, hi=60, trust=SIGNED)
    bitrate: int = _rule(
        limits.TARGET_VIDEO_BITRATE, lo=50_000, hi=8_000_000, live=True, trust=TUNABLE, unsigned=SyncedBound(lo=150_000)
    )
    keyframe_seconds: float = _rule(
        10.0, lo=0.5, hi=60.0, trust=TUNABLE, doc="longest gap between keyframes (segment starts are keyframes too)"
    )
    paced: bool = _rule(True, doc="false: synthetic/file sources run as fast as the encoder can", trust=SIGNED)
    cpu_used: int = _rule(8, lo=-16, hi=16, doc="libvpx speed; negative fixes the speed", trust=SIGNED)
    threads: int = _rule(1, lo=1, hi=8, trust=TUNABLE)


@dataclass(frozen=True)
class AudioSettings:
    """``[audio]``: the microphone and how its sound is encoded."""

    source: str = _rule("auto", choices=("auto", "alsa", "synthetic", "none"), trust=SIGNED)
    device: str = _rule("default", doc="ALSA device name", trust=SIGNED)
    bitrate: int = _rule(
        limits.TARGET_AUDIO_BITRATE, lo=6_000, hi=256_000, live=True, trust=TUNABLE, unsigned=SyncedBound(lo=16_000)
    )
    sample_rate: int = _rule(48_000, choices=None, lo=8_000, hi=48_000, trust=TUNABLE, unsigned=SyncedBound(lo=16_000))
    channels: int = _rule(1, lo=1, hi=2, trust=TUNABLE)
    # Signed both ways: on, it keeps bystanders' sound; off, it keeps less evidence.
    pre_event: bool = _rule(
        False,
        live=True,
        trust=SIGNED,
        doc="record sound while no event is open (off: video only until a press, as Axon's default)",
    )


def _default_storage_dir() -> str:
    # systemd's StateDirectory= sets this; elsewhere a folder under the working directory.
    return os.environ.get("STATE_DIRECTORY", "edged-state").split(":")[0]


#: The largest ring budget or free-space floor that makes sense (1 PB).
MAX_STORAGE_BYTES = 1_000_000_000_000_000
#: A synced config keeps at most this share of the state folder's file system free (signed too).
MIN_FREE_FS_FRACTION = 0.10


@dataclass(frozen=True)
class StorageSettings:
    """``[storage]``: the state folder, the ring's size and segments."""

    dir: str = _rule(
        factory=_default_storage_dir, doc="state folder: segments, index, status", trust=LOCAL, max_len=MAX_PATH
    )
    segment_seconds: float = _rule(10.0, lo=2.0, hi=60.0, trust=TUNABLE)
    max_bytes: int = _rule(
        4_000_000_000,
        lo=10_000_000,
        hi=MAX_STORAGE_BYTES,
        live=True,
        trust=TUNABLE,
        doc="ring buffer budget (about 24 h at the target rate)",
        unsigned=SyncedBound(not_below_local=True),
    )
    min_free_bytes: int = _rule(
        500_000_000,
        lo=0,
        hi=MAX_STORAGE_BYTES,
        doc="never fill the file system past this",
        live=True,
        trust=TUNABLE,
        fs_fraction=MIN_FREE_FS_FRACTION,
    )
    sync_interval_seconds: float = _rule(
        1.0,
        lo=0.2,
        hi=10.0,
        trust=TUNABLE,
        unsigned=SyncedBound(hi=1.0),
        doc="how often the segment being written is flushed and fsynced",
    )


#: Unsigned, a pre- or post-roll is at least this long.
MIN_SYNCED_ROLL_SECONDS = 10.0


@dataclass(frozen=True)
class ClipSettings:
    """``[clips]``: what a mark's clip holds around it."""

    pre_roll_seconds: float = _rule(
        30.0,
        lo=0.0,
        hi=120.0,
        doc="footage kept from before the press",
        trust=TUNABLE,
        unsigned=SyncedBound(lo=MIN_SYNCED_ROLL_SECONDS),
    )
    post_roll_seconds: float = _rule(
        30.0,
        lo=0.0,
        hi=600.0,
        doc="footage kept after the last press",
        trust=TUNABLE,
        unsigned=SyncedBound(lo=MIN_SYNCED_ROLL_SECONDS),
    )
    max_bytes: int = _rule(
        limits.MAX_UPLOAD_BYTES,
        lo=500_000,
        hi=limits.MAX_UPLOAD_BYTES,
        trust=TUNABLE,
        doc="largest part; the upload limit",
    )
    max_duration_ms: int = _rule(
        limits.MAX_DURATION_MS, lo=5_000, hi=limits.MAX_DURATION_MS, trust=TUNABLE, doc="longest part; the upload limit"
    )


#: What a button gesture may do (gpio.double_press, gpio.long_press); a short press always marks.
GESTURE_ACTIONS = ("mark", "panic", "mute", "none")


@dataclass(frozen=True)
class GpioSettings:
    """``[gpio]``: the button and the feedback pins."""

    # The whole table is signed (Settings.gpio): a wrong button pin silently ends marking.
    button_pin: str = _rule("", doc='mark button, e.g. "GPIO17" or "BOARD11" (empty: none)')
    button_pull_up: bool = _rule(True, doc="button wired to ground with the internal pull-up")
    button_bounce_ms: int = _rule(50, lo=0, hi=1000)
    led_pin: str = _rule("", doc="status LED (empty: none)")
    buzzer_pin: str = _rule("", doc="buzzer or vibration motor (empty: none)")
    # Button gestures (edged.app.gpio; the README's "Button gestures" says why these defaults).
    double_press: str = _rule(
        "none", choices=GESTURE_ACTIONS, doc="two presses within double_press_ms (none, mark: each press marks)"
    )
    long_press: str = _rule(
        "mute", choices=GESTURE_ACTIONS, doc="a press held long_press_ms (none, mark: a held press marks)"
    )
    double_press_ms: int = _rule(400, lo=150, hi=1000, doc="longest release-to-press gap of a double press")
    long_press_ms: int = _rule(2000, lo=500, hi=10_000, doc="hold time of a long press")


UPLOAD_TARGETS = ("sonoran_v2", "sonoran_legacy", "bota", "directory")


@dataclass(frozen=True)
class SonoranUnitSettings:
    """``[upload.sonoran_v2.unit]``: the unit operations (panic, location, call notes)."""

    # Signed with its table (the unit's identity, where its panic goes, what is linked to calls);
    # how often the position is sent is tunable. Requests share the v2 key's budget.
    server_id: int = _rule(1, lo=1, hi=2**31 - 1, doc="the Sonoran CAD server ID (serverId) of the unit operations")
    community_user_id: str = _rule(
        "", doc="the unit in panic and location requests (empty: upload.sonoran_v2.community_user_id)"
    )
    account_uuid: str = _rule(
        "", doc="the account whose current call gets the clip notes (empty: upload.sonoran_v2.account_uuid)"
    )
    panic: bool = _rule(False, doc="a panic gesture or `edged panic` sets and clears the unit's panic in CAD")
    location: bool = _rule(False, doc="send the unit's position to CAD while it moves")
    location_interval_seconds: float = _rule(
        30.0, lo=5.0, hi=3600.0, trust=TUNABLE, doc="at most one position per this long (and as the budget allows)"
    )
    location_min_distance_m: float = _rule(
        25.0, lo=0.0, hi=100_000.0, trust=TUNABLE, doc="moving: this far from the last position sent..."
    )
    location_min_speed_mps: float = _rule(
        1.0, lo=0.0, hi=100.0, trust=TUNABLE, doc="...or at least this ground speed (0 and 0: every interval)"
    )
    call_notes: bool = _rule(False, doc="a clip delivered to sonoran_v2 is noted, with its URLs, on the current call")
    call_note_max_age_minutes: float = _rule(
        60.0, lo=1.0, hi=1440.0, trust=TUNABLE, doc="a clip older than this when delivered is not linked"
    )
    note_label: str = _rule("Bodycam", max_len=64, doc="the label of the call notes")


@dataclass(frozen=True)
class SonoranV2Settings:
    """``[upload.sonoran_v2]``: the Sonoran v2 target."""

    # Signed as a table (UploadSettings.sonoran_v2): URL, key file, account identity, plan.
    base_url: str = _rule("https://api.sonorancad.com", max_len=2048)
    api_key_file: str = _rule(
        "", doc="file holding the API key (empty: $CREDENTIALS_DIRECTORY/sonoran_api_key)", max_len=MAX_PATH
    )
    account_uuid: str = _rule("", doc="exactly one of account_uuid, community_user_id, roblox, discord")
    community_user_id: str = _rule("")
    roblox: int = _rule(0, lo=0, hi=10**12, doc="Roblox user id (0: not used)")
    discord: str = _rule("")
    plan: str = _rule("free", choices=tuple(limits.PLAN_MINUTES), doc="the community's plan: its 24 h minute allowance")
    ident_id: int = _rule(0, lo=0, hi=10**12, doc="identifier id sent with each clip (0: not sent)")
    devices_sharing_key: int = _rule(
        1, lo=1, hi=1000, doc="devices uploading with this API key; each keeps to its share of the rate"
    )
    unit: SonoranUnitSettings = _rule(factory=SonoranUnitSettings)


@dataclass(frozen=True)
class SonoranLegacySettings:
    """``[upload.sonoran_legacy]``: the Sonoran legacy target."""

    base_url: str = _rule("https://api.sonorancad.com", max_len=2048)
    community: str = _rule("", doc="community id")
    account: str = _rule("", doc="the user's account UUID")
    session_id: str = _rule("", doc="the user's active session UUID")
    username: str = _rule("", doc="the user's Sonoran CAD username")
    plan: str = _rule("free", choices=tuple(limits.PLAN_MINUTES))
    ident_id: str = _rule("", doc="identifier id sent with each clip (empty: not sent)")


@dataclass(frozen=True)
class BotaSettings:
    """``[upload.bota]``: the Bota target."""

    base_url: str = _rule(
        "https://api.bota.dev", doc="the presigned-URL backend; paths /v1/recordings... below it", max_len=2048
    )
    token_file: str = _rule(
        "", doc="file holding the API key or device token (empty: $CREDENTIALS_DIRECTORY/bota_token)", max_len=MAX_PATH
    )
    device_id: str = _rule("", doc="device id sent when a recording is created (empty: device.id)")


@dataclass(frozen=True)
class DirectorySettings:
    """``[upload.directory]``: the folder target."""

    path: str = _rule("", doc="folder clips are copied into (empty: <storage.dir>/delivered)", max_len=MAX_PATH)


#: Unsigned, a bandwidth cap is off (0) or at least this many kbit/s (the recording makes ~364).
MIN_SYNCED_BANDWIDTH_KBPS = 512


@dataclass(frozen=True)
class UploadSettings:
    """``[upload]``: where clips go and how delivery is paced."""

    # Timings are tunable, but an unsigned file may not stretch them so far that delivery stalls.
    targets: tuple[str, ...] = _rule(
        ("directory",), choices=UPLOAD_TARGETS, trust=SIGNED, doc="where every clip goes, each target independently"
    )
    retry_base_seconds: float = _rule(
        2.0,
        lo=0.1,
        hi=600.0,
        doc="first back-off after a network or server error",
        trust=TUNABLE,
        unsigned=SyncedBound(hi=60.0),
    )
    retry_cap_seconds: float = _rule(
        600.0,
        lo=1.0,
        hi=86400.0,
        doc="longest back-off (full jitter below it)",
        trust=TUNABLE,
        unsigned=SyncedBound(hi=3600.0),
    )
    auth_retry_minutes: float = _rule(
        30.0,
        lo=1.0,
        hi=1440.0,
        trust=TUNABLE,
        unsigned=SyncedBound(hi=120.0),
        doc="a target paused by a refused key or account tries again after this",
    )
    connect_timeout_seconds: float = _rule(15.0, lo=1.0, hi=120.0, trust=TUNABLE, unsigned=SyncedBound(lo=5.0))
    timeout_seconds: float = _rule(
        60.0,
        lo=5.0,
        hi=600.0,
        doc="longest wait for the server to read or answer",
        trust=TUNABLE,
        unsigned=SyncedBound(lo=30.0),
    )
    bandwidth_kbps: int = _rule(
        0,
        lo=0,
        hi=10_000_000,
        doc="upload bandwidth cap in kbit/s (0: none)",
        trust=TUNABLE,
        unsigned=SyncedBound(lo=MIN_SYNCED_BANDWIDTH_KBPS, zero_ok=True),
    )
    sonoran_v2: SonoranV2Settings = _rule(factory=SonoranV2Settings, trust=SIGNED)
    sonoran_legacy: SonoranLegacySettings = _rule(factory=SonoranLegacySettings, trust=SIGNED)
    bota: BotaSettings = _rule(factory=BotaSettings, trust=SIGNED)
    directory: DirectorySettings = _rule(factory=DirectorySettings, trust=SIGNED)


@dataclass(frozen=True)
class SyncSettings:
    """``[sync]``: the synced folder (config in, status out)."""

    # Local as a table (Settings.sync).
    dir: str = _rule(
        "",
        max_len=MAX_PATH,
        doc="folder a sync tool (Syncthing, rsync) fills: edged.toml, recall/; edged writes status/ (empty: off)",
    )
    fleet_public_key: str = _rule(
        "", max_len=MAX_PATH, doc="Ed25519 public key (base64, or a file path): a synced config must be signed by it"
    )
    poll_seconds: float = _rule(2.0, lo=0.2, hi=60.0, doc="how often the synced folder is looked at")
    status_group: str = _rule(
        "",
        doc="group a sync tool running as another user reads status/ as "
        "(status/ 0750, its files 0640; empty: owner-only)",
    )


#: Where on the picture the time stamp sits.
STAMP_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: Smallest stamp text that stays legible after VP8 at the target bitrate (0 is "auto").
MIN_STAMP_TEXT_PX = 8


@dataclass(frozen=True)
class StampSettings:
    """``[stamp]``: the date and time burned into the picture."""

    # Signed as a table (Settings.stamp): the stamp is part of the evidence (a date and time on all
    # footage); an unsigned synced file may neither turn it off nor grow it over the picture.
    enabled: bool = _rule(True, doc="burn date, time and zone, unit and position into every frame")
    corner: str = _rule("top-left", choices=STAMP_CORNERS, doc="where the stamp sits on the picture")
    text_size: int = _rule(0, lo=0, hi=200, doc="text height in pixels (0: a 30th of camera.height, 18 at 540)")
    show_position: bool = _rule(True, doc="a GPS position after the unit (NO FIX when there is none)")


@dataclass(frozen=True)
class GpsSettings:
    """``[gps]``: where positions come from."""

    # Signed as a table (Settings.gps): where positions come from is part of the evidence (the
    # marks' positions, the clips' tracks, the uploads' unitLocation), and a sync party pointing
    # gps.host at its own server could place the wearer anywhere.
    enabled: bool = _rule(False, doc="read the position from gpsd: marks, clip tracks, status, uploads' unitLocation")
    host: str = _rule("127.0.0.1", doc="gpsd's address (gpsd listens on 127.0.0.1:2947)", max_len=253)
    port: int = _rule(2947, lo=1, hi=65535, doc="gpsd's TCP port")
    stale_seconds: float = _rule(5.0, lo=1.0, hi=60.0, doc="a fix older than this is no fix")
    track_seconds: int = _rule(
        1800,
        lo=60,
        hi=7200,
        doc="track kept in memory (one fix a second); at least pre-roll + post-roll + 60 s",
    )


@dataclass(frozen=True)
class Settings:
    """The whole configuration, one table per field."""

    device: DeviceSettings = field(default_factory=DeviceSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    clips: ClipSettings = _rule(factory=ClipSettings, live=True)
    gpio: GpioSettings = _rule(factory=GpioSettings, trust=SIGNED)
    upload: UploadSettings = _rule(factory=UploadSettings, live=True)
    sync: SyncSettings = _rule(factory=SyncSettings, trust=LOCAL)
    gps: GpsSettings = _rule(factory=GpsSettings, trust=SIGNED)
    stamp: StampSettings = _rule(factory=StampSettings, live=True, trust=SIGNED)
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
    """A field's type: its annotation evaluated (the module uses postponed annotations)."""
    return _resolve_annotation(t) if isinstance(t, str) else t


@functools.cache
def _resolve_annotation(t: str) -> Any:
    return eval(t, vars(typing) | vars(types) | globals())


@functools.cache
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.name != "origin"}


# --- one value against its rule -------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_str(key: str, value: str, meta: Any, problems: list[tuple[str, str]]) -> bool:
    limit = meta.get("max_len") or MAX_STR
    if len(value) > limit:
        problems.append((key, f"must be at most {limit} characters; got {len(value)}"))
        return False
    if _CONTROL.search(value):
        problems.append((key, f"must not hold control characters; got {show(value)}"))
        return False
    return True


def _check_list(key: str, value: Any, meta: Any, problems: list[tuple[str, str]]) -> tuple[str, ...] | None:
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(isinstance(v, str) for v in value):
        problems.append((key, f"must be a list of at most {MAX_LIST} strings, not {show(value)}"))
        return None
    if not all(_check_str(key, v, meta, problems) for v in value):
        return None
    if len(set(value)) != len(value):
        problems.append((key, f"lists an entry twice: {show(value)}"))
        return None
    bad = [v for v in value if meta.get("choices") and v not in meta["choices"]]
    if bad:
        problems.append((key, f"entries must be among {', '.join(meta['choices'])}; got {', '.join(map(show, bad))}"))
        return None
    return tuple(value)


def _check_type(key: str, want: Any, value: Any, problems: list[tuple[str, str]]) -> Any:
    """``value`` as ``want`` (an int is a float too), or None with the problem added."""
    if want is bool:
        if isinstance(value, bool):
            return value
        problems.append((key, f"must be true or false, not {show(value)}"))
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append((key, f"must be an integer, not {type(value).__name__} {show(value)}"))
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                problems.append((key, f"must be a finite number; got {value!r}"))
                return None
            try:
                return float(value)
            except OverflowError:
                problems.append((key, f"is out of range; got {show(value)}"))
                return None
        problems.append((key, f"must be a number, not {type(value).__name__} {show(value)}"))
    elif want is str:
        if isinstance(value, str):
            return value
        problems.append((key, f"must be a string, not {type(value).__name__} {show(value)}"))
    else:  # pragma: no cover - the schema has no other types
        problems.append((key, f"has an unsupported type {want!r}"))
    return None


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def key_part(name: Any) -> str:
    """One component of a key as TOML writes it: bare when it can be, else quoted (an empty
    name, a dot or a space in a name still shows which key is meant)."""
    name = str(name)
    return name if _BARE.fullmatch(name) else json.dumps(name)


def key_name(path: tuple[str, ...]) -> str:
    """A key path as the dotted name errors use."""
    return ".".join(key_part(p) for p in path)


def _check_value(key: str, f: dataclasses.Field, value: Any, problems: list[tuple[str, str]]) -> Any:
    want = _resolve_type(f.type)
    meta = f.metadata
    if typing.get_origin(want) is tuple:
        return _check_list(key, value, meta, problems)
    value = _check_type(key, want, value, problems)
    if value is None:
        return None
    if want is str and not _check_str(key, value, meta, problems):
        return None
    if meta.get("choices") and value not in meta["choices"]:
        problems.append((key, f"must be one of {', '.join(meta['choices'])}; got {show(value)}"))
        return None
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo:
        problems.append((key, f"must be at least {lo}; got {show(value)}"))
        return None
    if hi is not None and value > hi:
        problems.append((key, f"must be at most {hi}; got {show(value)}"))
        return None
    if meta.get("even") and value % 2:
        problems.append((key, f"must be even (4:2:0 video); got {value!r}"))
        return None
    return value


# --- checks across keys ---------------------------------------------------------------------------


def _cross_checks(s: Settings, problems: list[tuple[str, str]]) -> None:
    # An edge within the bounce time is contact bounce: a gesture timed below it could never happen.
    for key in ("double_press_ms", "long_press_ms"):
        if getattr(s.gpio, key) <= s.gpio.button_bounce_ms:
            problems.append((f"gpio.{key}", f"must be longer than gpio.button_bounce_ms ({s.gpio.button_bounce_ms})"))
    if s.camera.source == "file" and not s.camera.device:
        problems.append(("camera.device", 'must name the video file when camera.source = "file"'))
    # A clip is built from whole segments: a segment must fit the upload duration limit.
    if s.storage.segment_seconds * 1000 > limits.MAX_DURATION_MS:
        problems.append(("storage.segment_seconds", "must not exceed the upload duration limit"))
    # Clips are cut on keyframes: a part can be no shorter than a keyframe interval (nor than a
    # segment, whose start is a keyframe), or every clip would have to be re-encoded.
    gop_ms = min(s.camera.keyframe_seconds, s.storage.segment_seconds) * 1000
    if gop_ms > s.clips.max_duration_ms - 100:
        problems.append(
            (
                "camera.keyframe_seconds",
                f"keyframes {gop_ms / 1000:g} s apart do not fit clip parts "
                f"of clips.max_duration_ms = {s.clips.max_duration_ms}",
            )
        )
    if s.storage.max_bytes < 3 * segment_bytes_estimate(s):
        problems.append(("storage.max_bytes", "must hold at least three segments at the configured bitrate"))
    # An event is [press - pre, last press + post]: with both 0 there is nothing to clip.
    if s.clips.pre_roll_seconds + s.clips.post_roll_seconds < 1.0:
        problems.append(
            (
                "clips.post_roll_seconds",
                "pre_roll_seconds + post_roll_seconds must be at least 1 s (an event needs footage)",
            )
        )
    if 0 < s.stamp.text_size < MIN_STAMP_TEXT_PX:
        reason = f"must be 0 (auto) or at least {MIN_STAMP_TEXT_PX}; got {s.stamp.text_size}"
        problems.append(("stamp.text_size", reason))
    _upload_checks(s.upload, problems)
    _gps_checks(s, problems)
    _folder_checks(s, problems)
    if s.sync.fleet_public_key:
        from edged.config.sign import KeyLoadError, load_public_key

        try:
            load_public_key(s.sync.fleet_public_key)
        except KeyLoadError as exc:
            problems.append(("sync.fleet_public_key", str(exc)))
    if s.sync.status_group:
        import grp

        try:
            grp.getgrnam(s.sync.status_group)
        except KeyError:
            problems.append(("sync.status_group", f"no such group: {show(s.sync.status_group)}"))


#: Room in the GPS track beyond an event's pre- and post-roll: the wait for the clip to be built.
GPS_TRACK_SLACK_SECONDS = 60


def _gps_checks(s: Settings, problems: list[tuple[str, str]]) -> None:
    if not s.gps.enabled:
        return
    if not s.gps.host or any(c.isspace() for c in s.gps.host):
        problems.append(("gps.host", f"must be a host name or address without spaces; got {show(s.gps.host)}"))
    need = s.clips.pre_roll_seconds + s.clips.post_roll_seconds + GPS_TRACK_SLACK_SECONDS
    if s.gps.track_seconds < need:
        problems.append(
            (
                "gps.track_seconds",
                f"must hold a clip's track: at least clips.pre_roll_seconds + clips.post_roll_seconds + "
                f"{GPS_TRACK_SLACK_SECONDS} = {need:g}; got {s.gps.track_seconds}",
            )
        )


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return os.path.abspath(path)


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (links resolved as they are now)."""
    p, f = _real(path), _real(folder)
    return p == f or p.startswith(f.rstrip("/") + "/")


def _folder_checks(s: Settings, problems: list[tuple[str, str]]) -> None:
    """Evidence is never reachable through a name the sync party controls, and nothing edged
    trusts (a key, a camera, the fleet key) is read from there: the synced folder, the state
    folder and the delivery folder are apart, and no read path points into the synced folder."""
    state, sync, delivery = s.storage.dir, s.sync.dir, s.upload.directory.path
    if sync and (_inside(state, sync) or _inside(sync, state)):
        problems.append(
            ("sync.dir", "must not contain storage.dir nor be inside it (the sync party would reach the evidence)")
        )
    if delivery and (_inside(delivery, state) or _inside(state, delivery)):
        problems.append(
            ("upload.directory.path", "must not contain storage.dir nor be inside it (empty: <storage.dir>/delivered)")
        )
    elif delivery and sync and (_inside(delivery, sync) or _inside(sync, delivery)):
        problems.append(
            (
                "upload.directory.path",
                "must not contain sync.dir nor be inside it (the sync party would reach the clips)",
            )
        )
    if not sync:
        return
    reads = {
        "camera.device": s.camera.device,
        "upload.sonoran_v2.api_key_file": s.upload.sonoran_v2.api_key_file,
        "upload.bota.token_file": s.upload.bota.token_file,
    }
    key_file = s.sync.fleet_public_key
    if key_file.startswith(("/", "./", "../")) or os.path.exists(key_file):  # a path, not base64
        reads["sync.fleet_public_key"] = key_file
    for key, path in reads.items():
        if path and _inside(path, sync):
            problems.append((key, "must not be inside sync.dir (the sync party would choose what is read)"))


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


#: A key or token file is small; a bigger "key" is not one (and a FIFO or device is refused).
MAX_SECRET_BYTES = 64 * 1024


def read_secret(path: Path) -> bytes:
    """A key or token file's bytes, by the one rule for secrets: the named link followed (an
    administrator may point it at a credential store), the file itself a regular one of at most
    ``MAX_SECRET_BYTES`` (a FIFO, a device or a huge file is refused with OSError, never waited on)."""
    from edged.core.files import read_bounded

    return read_bounded(_real(str(path)), MAX_SECRET_BYTES)


def _check_credential(key: str, path: Path | None, credential: str, what: str, problems: list[tuple[str, str]]) -> None:
    """A secret's file must be named (or be a systemd credential), a readable regular file and not empty."""
    if path is None:
        problems.append(
            (key, f"must name the file holding the {what} (or run under systemd with a {credential} credential)")
        )
        return
    try:
        if not read_secret(path).strip():
            problems.append((key, f"{path} is empty"))
    except OSError as exc:
        problems.append((key, f"{path} cannot be read: {exc.strerror or exc}"))


def _upload_checks(u: UploadSettings, problems: list[tuple[str, str]]) -> None:
    if u.retry_cap_seconds < u.retry_base_seconds:
        problems.append(("upload.retry_cap_seconds", "must not be below upload.retry_base_seconds"))
    v2, unit = u.sonoran_v2, u.sonoran_v2.unit
    if "sonoran_v2" in u.targets or unit.panic or unit.location or unit.call_notes:
        _check_url("upload.sonoran_v2.base_url", v2.base_url, problems)
        _check_credential("upload.sonoran_v2.api_key_file", api_key_path(v2), "sonoran_api_key", "API key", problems)
    _unit_checks(u, problems)
    if "sonoran_v2" in u.targets:
        ids = {
            "account_uuid": v2.account_uuid,
            "community_user_id": v2.community_user_id,
            "roblox": v2.roblox,
            "discord": v2.discord,
        }
        given = [k for k, v in ids.items() if v]
        if len(given) != 1:
            problems.append(
                (
                    "upload.sonoran_v2.account_uuid",
                    "set exactly one of account_uuid, community_user_id, roblox, discord"
                    + (f" (got {', '.join(given)})" if given else ""),
                )
            )
    if "sonoran_legacy" in u.targets:
        lg = u.sonoran_legacy
        _check_url("upload.sonoran_legacy.base_url", lg.base_url, problems)
        for name in ("community", "account", "session_id", "username"):
            if not getattr(lg, name):
                problems.append((f"upload.sonoran_legacy.{name}", "is required by the sonoran_legacy target"))
    if "bota" in u.targets:
        _check_url("upload.bota.base_url", u.bota.base_url, problems)
        _check_credential(
            "upload.bota.token_file", token_path(u.bota), "bota_token", "API key or device token", problems
        )


def _unit_checks(u: UploadSettings, problems: list[tuple[str, str]]) -> None:
    """What each Sonoran unit operation needs: its identity (the OpenAPI names the unit by
    communityUserId, the current call by accountUuid) and, for notes, clips delivered to v2."""
    v2, unit = u.sonoran_v2, u.sonoran_v2.unit
    key = "upload.sonoran_v2.unit."
    if (unit.panic or unit.location) and not (unit.community_user_id or v2.community_user_id):
        problems.append(
            (
                key + "community_user_id",
                "panic and location name the unit by its communityUserId: set it "
                "(or upload.sonoran_v2.community_user_id)",
            )
        )
    if unit.call_notes and not (unit.account_uuid or v2.account_uuid):
        problems.append(
            (
                key + "account_uuid",
                "call notes look up the current call of an accountUuid: set it (or upload.sonoran_v2.account_uuid)",
            )
        )
    if unit.call_notes and "sonoran_v2" not in u.targets:
        problems.append((key + "call_notes", "notes link clips delivered to sonoran_v2: add it to upload.targets"))


def _check_url(key: str, url: str, problems: list[tuple[str, str]]) -> None:
    if not (url.startswith("https://") or url.startswith("http://")) or "://" == url[-3:]:
        problems.append((key, f"must be an http(s) URL; got {show(url)}"))


def segment_bytes_estimate(s: Settings) -> int:
    """A generous size of one segment at the configured bitrates (one place: config, ring, recorder)."""
    audio = s.audio.bitrate if s.audio.source != "none" else 0
    return int((s.camera.bitrate + audio) / 8 * s.storage.segment_seconds * 1.3)


# --- a mapping into settings ----------------------------------------------------------------------


def _build(cls: type, table: dict[str, Any], prefix: str, problems: list[tuple[str, str]]) -> Any:
    """One section (or sub-section) from its TOML table; bad or unknown keys are reported and
    left at their defaults, so cross-checks still see a whole object."""
    fields = _fields(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = prefix + key_part(key)
        if key not in fields:
            problems.append((short(dotted, 120), f"unknown key (known: {', '.join(fields)})"))
            continue
        want = _resolve_type(fields[key].type)
        if isinstance(want, type) and dataclasses.is_dataclass(want):
            if not isinstance(value, dict):
                problems.append((dotted, f"must be a table, e.g. [{dotted}]"))
            else:
                values[key] = _build(want, value, dotted + ".", problems)
            continue
        checked = _check_value(dotted, fields[key], value, problems)
        if checked is not None:
            values[key] = checked
    return cls(**values)


def check_shape(data: Any, limit: int = MAX_DEPTH) -> str | None:
    """Where ``data`` nests tables and arrays deeper than ``limit`` (the dotted path), else None.
    Iterative: a deep document cannot exhaust the recursion limit here."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > limit:
            return path or "<file>"
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{key_part(k)}" if path else key_part(k), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, path, depth + 1) for v in node)
    return None


def _shape_problem(data: Any) -> tuple[str, str] | None:
    where = check_shape(data)
    if where is None:
        return None
    return short(where, 120), f"nested deeper than {MAX_DEPTH} tables or arrays"


def _validate(data: dict[str, Any], origin: str) -> tuple[Settings, list[tuple[str, str]]]:
    """Settings from ``data`` (bad keys left at their defaults) and every problem found."""
    problems: list[tuple[str, str]] = []
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in _SECTIONS:
            problems.append((short(key_part(name), 120), f"unknown section (known: {', '.join(_SECTIONS)})"))
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
    return settings, problems


def from_mapping(data: dict[str, Any], origin: str = "<mapping>") -> Settings:
    """Validate a parsed TOML document into Settings; raise ConfigError listing every problem,
    value errors and cross-checks together."""
    if not isinstance(data, dict):
        raise ConfigError([("<file>", f"must be a TOML document (a table), not {type(data).__name__}")], origin)
    deep = _shape_problem(data)
    if deep is not None:
        raise ConfigError([deep], origin)
    try:
        settings, problems = _validate(data, origin)
    except RecursionError:  # check_shape bounds the depth; this is the belt to its braces
        raise ConfigError([("<file>", "nested too deeply")], origin) from None
    if problems:
        raise ConfigError(problems, origin)
    return settings


# --- a file into a mapping ------------------------------------------------------------------------

_SCAN = re.compile(r"""[\[\]{}#"']""")


def _skip_string(text: str, i: int) -> int:
    """The index after the TOML string starting at ``i`` (basic, literal, multi-line)."""
    q = text[i]
    if text.startswith(q * 3, i):
        end = text.find(q * 3, i + 3) if q == "'" else _find_unescaped(text, q * 3, i + 3)
        if end < 0:
            return len(text)
        end += 3
        while end < len(text) and text[end] == q:  # up to two quotes may close the content
            end += 1
        return end
    if q == "'":
        end = text.find("'", i + 1)
        return len(text) if end < 0 else end + 1
    end = _find_unescaped(text, '"', i + 1)
    return len(text) if end < 0 else end + 1


def _find_unescaped(text: str, needle: str, i: int) -> int:
    while True:
        j = text.find(needle, i)
        if j < 0:
            return -1
        backslashes = 0
        while j - backslashes - 1 >= i and text[j - backslashes - 1] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return j
        i = j + 1


def bracket_depth_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether TOML ``text`` opens more than ``limit`` arrays or inline tables inside one another
    (strings and comments skipped), checked before the parser recurses into them."""
    depth, i = 0, 0
    while (m := _SCAN.search(text, i)) is not None:
        c, i = m.group(), m.start()
        if c == "#":
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl + 1
            continue
        if c in "\"'":
            i = _skip_string(text, i)
            continue
        depth = depth + 1 if c in "[{" else max(0, depth - 1)
        if depth > limit:
            return True
        i += 1
    return False


def parse_toml(raw: bytes, origin: str = "") -> dict[str, Any]:
    """One TOML document from bytes, every failure a ConfigError naming ``<file>`` or
    ``<syntax>``: not UTF-8, too deep (refused before the parser recurses), a syntax error, an
    integer too long to convert, and whatever else the parser raises."""
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([("<file>", f"is larger than {MAX_FILE_BYTES} bytes")], origin)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([("<file>", "is not UTF-8 text")], origin) from None
    if bracket_depth_exceeds(text):
        raise ConfigError([("<file>", f"nests arrays or inline tables deeper than {MAX_DEPTH}")], origin)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("<syntax>", short(str(exc), 300))], origin) from None
    except RecursionError:
        raise ConfigError([("<file>", "nested too deeply")], origin) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer of 5,000 digits
        raise ConfigError([("<syntax>", short(f"{type(exc).__name__}: {exc}", 300))], origin) from None
    deep = _shape_problem(data)
    if deep is not None:
        raise ConfigError([deep], origin)
    return data


def load(path: Path | str) -> Settings:
    """Read and validate one TOML file. Errors (missing, unreadable, syntax, values) raise ConfigError."""
    return from_mapping(read_mapping(path), origin=str(path))


def read_mapping(path: Path | str) -> dict[str, Any]:
    """One TOML file parsed but not validated (the local layer under a synced config). Read
    bounded from what was opened: a FIFO, a device or a huge file is refused, never waited on.
    The local config is trusted, so a link to a regular file is followed."""
    from edged.core.files import read_bounded

    path = Path(path)
    try:
        raw = read_bounded(_real(str(path)), MAX_FILE_BYTES)
    except FileNotFoundError:
        raise ConfigError([("<file>", "not found")], str(path)) from None
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot be read: {exc.strerror or exc}")], str(path)) from None
    return parse_toml(raw, str(path))


# --- trust: who may set a key ---------------------------------------------------------------------


def _node(path: tuple[str, ...]) -> tuple[dataclasses.Field | None, str | None, bool]:
    """(the schema field at ``path`` or None, its trust class inherited down the tables, whether
    ``path`` reaches a leaf exactly). Unknown names keep what was found above them."""
    cls: Any = Settings
    trust: str | None = None
    found: dataclasses.Field | None = None
    for i, name in enumerate(path):
        fields = _fields(cls) if cls is not None else {}
        f = fields.get(name)
        if f is None:
            return None, trust, False
        found, trust = f, f.metadata.get("trust") or trust
        want = _resolve_type(f.type)
        if not dataclasses.is_dataclass(want):
            return found, trust or SIGNED, i == len(path) - 1
        cls = want
    return found, trust, False


def trust_of(key: str | tuple[str, ...]) -> str | None:
    """The trust class of a dotted key (or path): ``tunable``, ``signed`` or ``local``; None for
    a name the schema does not know (left to validation, which calls it unknown)."""
    path = tuple(key.split(".")) if isinstance(key, str) else key
    if not path or path[0] not in _SECTIONS:
        return None
    return _node(path)[1]


def keys_of(trust: str) -> list[str]:
    """Every key of that trust class, in schema order."""
    return [key for key, _, _ in _leaves(Settings()) if trust_of(key) == trust]


def _field_of(key: str | tuple[str, ...]) -> dataclasses.Field | None:
    """The schema field of a leaf key, None for a table or an unknown name."""
    f, _, leaf = _node(tuple(key.split(".")) if isinstance(key, str) else key)
    return f if leaf else None


def _leaf_field(key: str) -> dataclasses.Field:
    """The schema field of a key known to be a leaf (the docs walk only those)."""
    f = _field_of(key)
    if f is None:
        raise KeyError(f"{key} is not a key of the schema")
    return f


# --- layers: a synced config over the local one, and what may change while running ---------------


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def _leaf_paths(data: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """The path of every value set in ``data`` (an empty table sets nothing). Paths, not dotted
    strings: a TOML key may itself hold a dot (``"sync.dir" = 1``)."""
    stack: list[tuple[dict[str, Any], tuple[str, ...]]] = [(data, ())]
    while stack:
        table, prefix = stack.pop()
        for key, value in table.items():
            if isinstance(value, dict):
                stack.append((value, (*prefix, str(key))))
            else:
                yield (*prefix, str(key))


def _without(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    head, *rest = path
    if not rest:
        return {k: v for k, v in data.items() if k != head}
    return {**data, head: _without(data[head], tuple(rest))}


def fs_size(folder: str) -> int:
    """Bytes of the file system ``folder`` is on (its nearest existing ancestor if it is not made
    yet). OSError when none can be looked at."""
    path = Path(_real(folder))
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except FileNotFoundError:
            continue
        return st.f_blocks * st.f_frsize
    raise FileNotFoundError(folder)


def _synced_problem(
    key: str, f: dataclasses.Field, value: Any, local: Any, signed: bool, state_dir: str, size_of: Callable[[str], int]
) -> str | None:
    """What a synced file may not do with ``key`` beyond the key's own rule."""
    bound: SyncedBound | None = f.metadata.get("unsigned")
    if not signed and bound is not None:
        reason = bound.problem(value, local)
        if reason:
            return reason + " (it would keep or deliver less evidence; sign it or set it locally)"
    fraction = f.metadata.get("fs_fraction")
    if fraction is not None and value:
        try:
            cap = int(size_of(state_dir) * fraction)
        except OSError as exc:
            return f"cannot be checked against the file system of storage.dir: {exc.strerror or exc}"
        if value > cap:
            return (
                f"a synced config may keep at most {fraction:.0%} of the state folder's file system free "
                f"({cap:,} bytes); got {value:,}"
            )
    return None


def from_layers(
    local_data: dict[str, Any],
    synced_data: dict[str, Any],
    origin: str = "<synced>",
    signed: bool = False,
    *,
    size_of: Callable[[str], int] = fs_size,
) -> Settings:
    """The synced document overlaid table by table, key by key, on the local one (lists replace),
    validated whole. A synced ``local`` key, or unsigned a ``signed`` key, is an error naming it,
    as is a tunable value outside its synced bounds (``SyncedBound``, ``fs_fraction``);
    ConfigError lists all. ``size_of``: the file-system size of a folder (tests pass their own)."""
    if not isinstance(synced_data, dict):
        raise ConfigError([("<file>", f"must be a TOML document (a table), not {type(synced_data).__name__}")], origin)
    deep = _shape_problem(synced_data)
    if deep is not None:
        raise ConfigError([deep], origin)
    problems: list[tuple[str, str]] = []
    allowed, kept = synced_data, []
    for path in _leaf_paths(synced_data):
        trust = trust_of(path)
        reason = LOCAL_REASON if trust == LOCAL else SIGNED_REASON if trust == SIGNED and not signed else None
        if reason is None:
            kept.append(path)
            continue
        problems.append((short(key_name(path), 120), reason))
        allowed = _without(allowed, path)  # dropped: reported once, and nothing else follows from it
    settings, found = _validate(_overlay(local_data, allowed), origin)
    problems += found
    local, _ = _validate(local_data, "<local>")
    reported = {key for key, _ in problems}
    for path in kept:
        key = key_name(path)
        f = _field_of(path)
        if f is None or key in reported:
            continue
        reason = _synced_problem(key, f, _get(settings, path), _get(local, path), signed, settings.storage.dir, size_of)
        if reason:
            problems.append((key, reason))
    if problems:
        raise ConfigError(problems, origin)
    return settings


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


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
        section = dataclasses.is_dataclass(b) and not isinstance(b, type)
        if not section:
            return b
        changes = {
            f.name: merge(getattr(b, f.name), getattr(n, f.name), bool(f.metadata.get("live")))
            for f in dataclasses.fields(b)
            if f.name != "origin"
        }
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


# --- documentation: the sample config and the README's table --------------------------------------


def describe() -> list[tuple[str, Any, str]]:
    """Every key with its embedded default and its doc line (for the sample config and README)."""
    return [(key, value, _leaf_field(key).metadata.get("doc", "")) for key, value, _ in _leaves(Settings())]


def num(x: float) -> str:
    """A bound as the docs print it: 4,000,000,000 rather than 4e+09."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,g}"


def _range(key: str, meta: Any) -> str:
    if meta.get("choices"):
        return " \\| ".join(meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return f"≤ {num(meta['max_len'])} chars" if _resolve_type(_leaf_field(key).type) is str else ""
    text = (
        f"{num(lo)} – {num(hi)}"
        if lo is not None and hi is not None
        else f"≥ {num(lo)}"
        if lo is not None
        else f"≤ {num(hi)}"
    )
    return text + (", even" if meta.get("even") else "")


def _synced_note(meta: Any) -> str:
    notes = []
    bound = meta.get("unsigned")
    if bound is not None:
        notes.append("unsigned: " + bound.describe())
    if meta.get("fs_fraction") is not None:
        notes.append(f"synced: ≤ {meta['fs_fraction']:.0%} of the file system")
    return "; ".join(notes)


def _default_text(key: str, value: Any) -> str:
    if key == "device.id":
        return "host name"
    if key == "storage.dir":
        return "`$STATE_DIRECTORY` or `edged-state`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else "empty"
    return f"`{value:,}`" if isinstance(value, int) else f"`{value:g}`"


def markdown_table() -> str:
    """The README's config table: every key, its default, rule, trust class, synced bounds, whether
    it applies live, and its doc line. ``python -m edged.config.schema`` prints it."""
    rows = ["| key | default | range | class | synced bounds | live | what |", "|---|---|---|---|---|---|---|"]
    for key, value, live in _leaves(Settings()):
        meta = _leaf_field(key).metadata
        doc = meta.get("doc", "").replace("<", "&lt;")
        rows.append(
            f"| `{key}` | {_default_text(key, value)} | {_range(key, meta)} | {trust_of(key)} | "
            f"{_synced_note(meta)} | {'live' if live else ''} | {doc} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
