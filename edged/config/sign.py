"""Signed configuration files: an Ed25519 signature carried in-band on the first line.

A signed file is::

    # edged-signature: ed25519:<base64 of the 64-byte signature> serial=<n>[ devices=<id,id>]
    <the TOML body, byte for byte>

The signature covers a fixed domain line, the serial, the device list and every byte after the
first line's newline (``message``), so neither the serial nor the devices can be changed without
the key. Why a serial: a signature alone says who wrote a config, not when, so anyone holding an
older signed config (the sync party keeps them all) could bring it back; a device refuses a
serial not above the last it accepted (``configsync`` keeps it in the state folder). Why devices:
a config signed for one device must not be taken by another of the fleet. Both live in the
header, so the TOML body and its schema stay as they are. A file signed in the old format (no
serial) is refused with a message that says to sign it again. The first line is a TOML comment,
so a signed file is still a valid config file. Keys: a fleet's private key stays with the operator
(PKCS#8 PEM, written owner-only by ``edged config keygen``); devices hold the public key
(``sync.fleet_public_key``: base64 of the raw 32 bytes, or a file holding PEM, OpenSSH, raw or
base64 bytes). The cryptography is the ``cryptography`` library's, nothing hand-written.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edged.core.files import read_bounded

PREFIX = b"# edged-signature: ed25519:"
#: The key name signature problems are reported under (not a TOML key).
SIGNATURE_KEY = "<signature>"
PRIVATE_KEY_NAME = "fleet-key.pem"
#: A key file is small; anything bigger is not one.
MAX_KEY_BYTES = 64 * 1024
PUBLIC_KEY_NAME = "fleet-key.pub"


class SignatureError(ValueError):
    """A signature that is missing, malformed or does not verify; the message says which."""


class KeyLoadError(ValueError):
    """A key that cannot be loaded; the message says why."""


def _b64_32(text: str | bytes) -> bytes | None:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def load_public_key(value: str) -> Ed25519PublicKey:
    """``sync.fleet_public_key``: an existing file (PEM, OpenSSH, raw 32 bytes or base64 text), else
    base64 of the raw 32-byte key. Raises KeyLoadError saying what is wrong."""
    if os.path.exists(value):
        try:  # bounded, and a FIFO or a device is refused rather than waited on
            data = read_bounded(os.path.realpath(value), MAX_KEY_BYTES)
        except OSError as exc:
            raise KeyLoadError(f"{value} cannot be read: {exc.strerror or exc}") from None
        key = _public_from_bytes(value, data)
        if not isinstance(key, Ed25519PublicKey):
            raise KeyLoadError(f"{value} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 public key")
        return key
    raw = _b64_32(value)
    if raw is None:
        raise KeyLoadError(f"{value!r} is neither an existing file nor base64 of a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def _public_from_bytes(where: str, data: bytes) -> object:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_public_key(data)
        if data.startswith(b"ssh-ed25519 "):
            return serialization.load_ssh_public_key(data)
        if len(data) == 32:
            return Ed25519PublicKey.from_public_bytes(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyLoadError(f"{where} holds no usable public key: {exc}") from None
    raw = _b64_32(data)
    if raw is None:
        raise KeyLoadError(f"{where} holds no Ed25519 public key (PEM, OpenSSH, 32 raw bytes or base64)")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    try:
        data = read_bounded(os.path.realpath(path), MAX_KEY_BYTES)
    except OSError as exc:
        raise KeyLoadError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyLoadError(f"{path} holds no unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyLoadError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 private key")
    return key


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


@dataclass(frozen=True)
class Signed:
    """A verified signed file: its TOML body, its serial and the devices it is for (empty: any)."""

    body: bytes
    serial: int
    devices: tuple[str, ...]


@dataclass(frozen=True)
class _Header:
    signature: bytes
    serial: int | None
    devices: tuple[str, ...]


#: Signed ahead of the serial, the devices and the body: a signature made for anything else
#: (an old-format file, another program) never verifies as a config.
DOMAIN = b"edged-config-signature v2\n"
#: The largest serial (it is compared as a 63-bit number).
MAX_SERIAL = 2**63 - 1
_DEVICE = re.compile(r"[A-Za-z0-9._:@+-]{1,128}")
MAX_DEVICES = 4096
_RESIGN = "sign it again with `edged config sign`"


def message(serial: int, devices: Sequence[str], body: bytes) -> bytes:
    """The bytes a signature covers: a fixed domain line, the serial, the device list, the body."""
    return DOMAIN + f"serial={serial}\ndevices={','.join(devices)}\n".encode() + body


def check_devices(devices: Sequence[str]) -> tuple[str, ...]:
    """``devices`` sorted, without repeats; ValueError naming a device id that cannot be listed
    in the header (a device is named by its local ``device.id``)."""
    if isinstance(devices, (str, bytes)):
        raise ValueError("devices must be a list of device ids, not one string")
    out = sorted(set(devices))
    bad = [d for d in out if not isinstance(d, str) or not _DEVICE.fullmatch(d)]
    if bad:
        raise ValueError(f"device ids must be 1-128 of A-Z a-z 0-9 . _ : @ + -; got {bad[0]!r}")
    if len(out) > MAX_DEVICES:
        raise ValueError(f"at most {MAX_DEVICES} devices per signed config; got {len(out)}")
    return tuple(out)


def _serial_of(text: bytes) -> int:
    if not text.isdigit() or len(text) > 19 or int(text) > MAX_SERIAL:
        raise SignatureError(f"the serial must be a whole number from 0 to {MAX_SERIAL}")
    return int(text)


def _parse_header(line: bytes) -> _Header:
    """The first line after PREFIX: ``<b64 signature>[ serial=<n>][ devices=<a,b>]``."""
    sig_text, *fields = line.rstrip(b"\r").strip(b" ").split(b" ")
    try:
        sig = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not valid base64") from None
    if len(sig) != 64:
        raise SignatureError(f"the signature is {len(sig)} bytes, an Ed25519 signature is 64")
    values: dict[bytes, bytes] = {}
    for item in fields:
        name, eq, value = item.partition(b"=")
        if not eq or name not in (b"serial", b"devices") or name in values:
            raise SignatureError(f"the signature line has an unknown or repeated field {item[:40]!r}; {_RESIGN}")
        values[name] = value
    serial = _serial_of(values[b"serial"]) if b"serial" in values else None
    devices: tuple[str, ...] = ()
    if b"devices" in values:
        try:
            listed = tuple(values[b"devices"].decode("ascii").split(","))
            devices = check_devices(listed)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SignatureError(f"the device list is malformed: {exc}") from None
        if devices != listed:
            raise SignatureError(f"the device list is not in canonical order; {_RESIGN}")
    return _Header(sig, serial, devices)


def split(data: bytes) -> tuple[_Header | None, bytes]:
    """(header, body) of a file. No signature line: (None, data). A signature line that cannot
    be decoded raises SignatureError."""
    if not data.startswith(PREFIX):
        return None, data
    line, nl, body = data.partition(b"\n")
    if not nl:
        raise SignatureError("the signature line is not followed by a body")
    return _parse_header(line[len(PREFIX) :]), body


def verified(data: bytes, key: Ed25519PublicKey) -> Signed:
    """The body, serial and devices of a signed file whose signature ``key`` verifies; raise
    SignatureError saying why otherwise (missing, malformed, old format without a serial, wrong
    key or changed after signing)."""
    header, body = split(data)
    if header is None:
        raise SignatureError(
            "missing: sync.fleet_public_key is set, so the first line must be "
            "'# edged-signature: ed25519:<base64> serial=<n>' (edged config sign)"
        )
    if header.serial is None:
        raise SignatureError(
            "has no serial (signed by an older edged, so it could be an old config replayed); " + _RESIGN
        )
    try:
        key.verify(header.signature, message(header.serial, header.devices, body))
    except InvalidSignature:
        raise SignatureError(
            "does not verify with sync.fleet_public_key (wrong key, or the file was changed after signing)"
        ) from None
    return Signed(body, header.serial, header.devices)


def verify(data: bytes, key: Ed25519PublicKey) -> bytes:
    """The body of a signed file whose signature ``key`` verifies; raise SignatureError otherwise."""
    return verified(data, key).body


def _previous_serial(data: bytes) -> int | None:
    try:
        header, _ = split(data)
    except SignatureError:
        return None
    return header.serial if header is not None else None


def sign(data: bytes, key: Ed25519PrivateKey, *, serial: int | None = None, devices: Sequence[str] = ()) -> bytes:
    """``data`` signed: an existing signature line is replaced, the body is kept byte for byte.

    ``serial`` orders a fleet's configs (a device refuses one not above the last it took); by
    default the current Unix time, or one above the serial of the file being signed again if
    that is higher, so signing twice within a second still increases it. ``devices``: the
    ``device.id`` values the config is for (empty: every device of the fleet)."""
    body = data.partition(b"\n")[2] if data.startswith(PREFIX) else data
    if serial is None:
        previous = _previous_serial(data)
        serial = int(time.time())
        if previous is not None and previous >= serial:
            serial = previous + 1
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial <= MAX_SERIAL:
        raise ValueError(f"serial must be a whole number from 0 to {MAX_SERIAL}; got {serial!r}")
    listed = check_devices(devices)
    header = PREFIX + base64.b64encode(key.sign(message(serial, listed, body))) + f" serial={serial}".encode()
    if listed:
        header += f" devices={','.join(listed)}".encode()
    return header + b"\n" + body


def generate(folder: Path) -> tuple[Path, Path, str]:
    """A new fleet key pair in ``folder``: the private key (PKCS#8 PEM, created owner-only, never
    overwritten) and the public key (base64 of the raw 32 bytes). Returns (private, public, base64)."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / PRIVATE_KEY_NAME, folder / PUBLIC_KEY_NAME
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError: keep the old key
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    b64 = public_key_b64(key.public_key())
    public.write_text(b64 + "\n")
    return private, public, b64
