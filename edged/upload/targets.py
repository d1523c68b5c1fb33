"""The target interface: one object per configured destination, ``send(part) -> Verdict``.

A target knows its endpoint and its form fields; it does not retry, wait or count: that is the
uploader's job (``uploader``), with the rules of ``answers``, ``policy`` and ``budget``. A target
speaking HTTP builds on ``http.HttpTarget``, which keeps a server's answer from stalling or
swamping the daemon.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

from edged.config.schema import Settings
from edged.core import limits
from edged.upload.answers import Kind, Verdict
from edged.upload.outbox import OutboxPart


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

    def arm(self) -> None:  # noqa: B027 - a hook: a target without requests needs none
        """A new send begins (the uploader's thread): a cancel asked for before now is forgotten."""

    def cancel(self, why: str) -> None:  # noqa: B027 - a hook: a target without requests needs none
        """Cut off the send in progress, from any thread: its request ends at once and ``send``
        returns a ``Kind.CANCELLED`` verdict; the send's later requests are not made. Until the
        next :meth:`arm`."""

    def close(self) -> None:  # noqa: B027 - a hook: a target holding nothing needs none
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
        return Verdict(
            Kind.FAILED,
            f"clip file changed on disk (sha256 {digest.hexdigest()[:12]}…, "
            f"expected {part.sha256[:12]}…); kept for inspection",
        )
    if contract:
        if path.suffix != limits.UPLOAD_EXTENSION:
            return Verdict(Kind.FAILED, f"not a {limits.UPLOAD_EXTENSION} file: {path.name}")
        if size > limits.MAX_UPLOAD_BYTES:
            return Verdict(Kind.FAILED, f"{size} bytes exceeds the {limits.MAX_UPLOAD_BYTES}-byte upload limit")
        if not limits.MIN_DURATION_MS <= part.duration_ms <= limits.MAX_DURATION_MS:
            return Verdict(
                Kind.FAILED, f"durationMs {part.duration_ms} outside {limits.MIN_DURATION_MS}..{limits.MAX_DURATION_MS}"
            )
    return None


def build_targets(settings: Settings, outbox=None) -> list[Target]:
    """One target per configured name. ``outbox``: the daemon's, for targets that keep their own
    progress in it (bota); without it such a target opens the state folder's outbox itself."""
    from edged.upload.bota.target import BotaTarget
    from edged.upload.directory import DirectoryTarget
    from edged.upload.sonoran import SonoranLegacyTarget, SonoranV2Target

    makers = {
        "sonoran_v2": SonoranV2Target,
        "sonoran_legacy": SonoranLegacyTarget,
        "bota": BotaTarget,
        "directory": DirectoryTarget,
    }
    return [
        BotaTarget(settings, outbox) if name == "bota" else makers[name](settings) for name in settings.upload.targets
    ]
