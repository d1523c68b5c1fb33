"""The target interface: one object per configured destination, ``send(part) -> Verdict``.

A target knows its endpoint and its form fields; it does not retry, wait or count: that is the
uploader's job (``uploader``), with the rules of ``answers``, ``policy`` and ``budget``.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx

from edged import __version__, limits
from edged.config import Settings, UploadSettings
from edged.outbox import OutboxPart
from edged.upload.answers import Kind, Verdict


class Target(ABC):
    #: The name used in config and in the outbox.
    name: str = ""
    #: Identity of the request budget and plan allowance (None: no limits apply).
    budget_key: str | None = None
    plan: str | None = None
    #: Devices sharing this budget key (each keeps to its share of the rate).
    share: int = 1
    #: (host, port) for the reachability probe; None: always reachable (a local folder).
    endpoint: tuple[str, int] | None = None
    #: Enforce the upload contract's limits before sending.
    contract: bool = True

    @abstractmethod
    def send(self, part: OutboxPart) -> Verdict: ...

    def fingerprint(self) -> str:
        """Changes whenever what decides acceptance (settings, credentials) changes: a target paused
        for a refused key or account resumes at once when it does."""
        return ""

    def close(self) -> None:
        pass


def check_part(part: OutboxPart, contract: bool) -> Verdict | None:
    """Refuse locally what no retry can fix: a missing or changed file, or (for contract targets)
    a part outside the documented limits. None: fine to send."""
    path = Path(part.path)
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 16):
                digest.update(block)
    except FileNotFoundError:
        return Verdict(Kind.FAILED, f"clip file missing: {path}")
    except OSError as exc:
        return Verdict(Kind.RETRY, f"clip file unreadable: {exc.strerror or exc}")
    if digest.hexdigest() != part.sha256:
        return Verdict(Kind.FAILED, f"clip file changed on disk (sha256 {digest.hexdigest()[:12]}…, "
                                    f"expected {part.sha256[:12]}…); kept for inspection")
    if contract:
        if path.suffix != limits.UPLOAD_EXTENSION:
            return Verdict(Kind.FAILED, f"not a {limits.UPLOAD_EXTENSION} file: {path.name}")
        if size > limits.MAX_UPLOAD_BYTES:
            return Verdict(Kind.FAILED, f"{size} bytes exceeds the {limits.MAX_UPLOAD_BYTES}-byte upload limit")
        if not limits.MIN_DURATION_MS <= part.duration_ms <= limits.MAX_DURATION_MS:
            return Verdict(Kind.FAILED, f"durationMs {part.duration_ms} outside {limits.MIN_DURATION_MS}.."
                                        f"{limits.MAX_DURATION_MS}")
    return None


class ThrottledFile:
    """A read-only file whose reads keep to ``bytes_per_s`` on average (the optional bandwidth cap).
    It keeps ``fileno`` so httpx still learns the length (Content-Length) without reading it."""

    def __init__(self, f: BinaryIO, bytes_per_s: float) -> None:
        self._f, self._rate = f, bytes_per_s
        self._start: float | None = None
        self._sent = 0

    def read(self, n: int = -1) -> bytes:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._sent / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        block = self._f.read(n)
        self._sent += len(block)
        return block

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        self._start, self._sent = None, 0
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def endpoint_of(url: str) -> tuple[str, int]:
    """(host, port) of a base URL, for the reachability probe."""
    u = urlsplit(url)
    return u.hostname or "", u.port or (443 if u.scheme == "https" else 80)


def http_client(u: UploadSettings) -> httpx.Client:
    """An HTTP client with the upload timeouts (suited to cellular links) and no redirects."""
    return httpx.Client(timeout=httpx.Timeout(connect=u.connect_timeout_seconds, read=u.timeout_seconds,
                                              write=u.timeout_seconds, pool=u.connect_timeout_seconds),
                        follow_redirects=False, headers={"User-Agent": f"edged/{__version__}"})


def build_targets(settings: Settings, outbox=None) -> list[Target]:
    """One target per configured name. ``outbox``: the daemon's, for targets that keep their own
    progress in it (bota); without it such a target opens the state folder's outbox itself."""
    from edged.upload.bota import BotaTarget
    from edged.upload.directory import DirectoryTarget
    from edged.upload.sonoran import SonoranLegacyTarget, SonoranV2Target

    makers = {"sonoran_v2": SonoranV2Target, "sonoran_legacy": SonoranLegacyTarget, "bota": BotaTarget,
              "directory": DirectoryTarget}
    return [BotaTarget(settings, outbox) if name == "bota" else makers[name](settings)
            for name in settings.upload.targets]
