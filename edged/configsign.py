"""Signed configuration files: an Ed25519 signature carried in-band on the first line.

A signed file is::

    # edged-signature: ed25519:<base64 of the 64-byte signature>
    <the TOML body, byte for byte>

The signature covers every byte after the first line's newline. The first line is a TOML comment,
so a signed file is still a valid config file. Keys: a fleet's private key stays with the operator
(PKCS#8 PEM, written owner-only by ``edged config keygen``); devices hold the public key
(``sync.fleet_public_key``: base64 of the raw 32 bytes, or a file holding PEM, OpenSSH, raw or
base64 bytes). The cryptography is the ``cryptography`` library's, nothing hand-written.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = b"# edged-signature: ed25519:"
#: The key name signature problems are reported under (not a TOML key).
SIGNATURE_KEY = "<signature>"
PRIVATE_KEY_NAME = "fleet-key.pem"
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
        try:
            data = Path(value).read_bytes()
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
        data = Path(path).read_bytes()
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


def split(data: bytes) -> tuple[bytes | None, bytes]:
    """(signature, body) of a file. No signature line: (None, data). A signature line that cannot
    be decoded raises SignatureError."""
    if not data.startswith(PREFIX):
        return None, data
    line, nl, body = data.partition(b"\n")
    if not nl:
        raise SignatureError("the signature line is not followed by a body")
    text = line[len(PREFIX):].rstrip(b"\r").strip()
    try:
        sig = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not valid base64") from None
    if len(sig) != 64:
        raise SignatureError(f"the signature is {len(sig)} bytes, an Ed25519 signature is 64")
    return sig, body


def verify(data: bytes, key: Ed25519PublicKey) -> bytes:
    """The body of a signed file whose signature ``key`` verifies; raise SignatureError otherwise."""
    sig, body = split(data)
    if sig is None:
        raise SignatureError("missing: sync.fleet_public_key is set, so the first line must be "
                             "'# edged-signature: ed25519:<base64>' (edged config sign)")
    try:
        key.verify(sig, body)
    except InvalidSignature:
        raise SignatureError("does not verify with sync.fleet_public_key (wrong key, or the file was "
                             "changed after signing)") from None
    return body


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """``data`` signed: an existing signature line is replaced, the body is kept byte for byte."""
    try:
        _, body = split(data)
    except SignatureError:
        body = data.partition(b"\n")[2]
    return PREFIX + base64.b64encode(key.sign(body)) + b"\n" + body


def generate(folder: Path) -> tuple[Path, Path, str]:
    """A new fleet key pair in ``folder``: the private key (PKCS#8 PEM, created owner-only, never
    overwritten) and the public key (base64 of the raw 32 bytes). Returns (private, public, base64)."""
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / PRIVATE_KEY_NAME, folder / PUBLIC_KEY_NAME
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError: keep the old key
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    b64 = public_key_b64(key.public_key())
    public.write_text(b64 + "\n")
    return private, public, b64
