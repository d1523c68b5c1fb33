"""What a target is: the one interface the uploader drives, and the checks made before any send.

A *target* is one configured destination (``[upload] targets``). The outbox keeps one delivery per
clip part and target; the uploader (``uploader``) takes the next due delivery, checks its part
here (:func:`check_part`), and hands the target a :class:`Parcel`. The target makes its requests
and answers with a ``Verdict`` (``answers``); it does not retry, wait or count: that is the
uploader's job, with the rules of ``answers``, ``policy`` and ``budget``.

Targets differ in what one upload carries, so each declares its :class:`Scope`:

- :attr:`Scope.PART`: each part is an upload of its own (Sonoran, the directory). The parcel
  carries that one part.
- :attr:`Scope.CLIP`: one upload carries the whole clip, in several steps (Bota: a recording per
  event, its media, then "complete"). The parcel carries every part of the clip, and
  :class:`Progress`, where the target commits each step before the next one so that a kill
  resumes instead of starting over. Whichever of the clip's deliveries runs first does the work;
  the others find it done in the progress.

Both kinds are driven the same way and built the same way: a target class takes the settings and
nothing else (``Target(settings)``); whatever it needs at send time comes in the parcel. Which
targets exist, by name, is ``targets`` (the registry); nothing here knows any of them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

from edged.config.schema import Settings
from edged.core import limits
from edged.upload.outbox import OutboxPart
from edged.upload.verdict import Kind, Verdict


class Scope(StrEnum):
    """What one upload to a target carries."""

    PART = "part"  # one clip part per upload
    CLIP = "clip"  # the whole clip per upload, in steps recorded in its progress


class ProgressStore(Protocol):
    """Where a target's steps on a clip are committed (the outbox's ``progress`` table)."""

    def progress(self, clip_id: str, target: str) -> dict[str, str]: ...

    def record_progress(self, clip_id: str, target: str, step: str, value: str) -> None: ...


class Progress(NamedTuple):
    """One target's recorded steps on one clip. Each :meth:`record` is committed before it returns,
    and its value is scrubbed of secrets on the way in (the store's rule)."""

    store: ProgressStore
    clip_id: str
    target: str

    def steps(self) -> dict[str, str]:
        """Every step recorded so far: {step: value}."""
        return self.store.progress(self.clip_id, self.target)

    def record(self, step: str, value: str) -> None:
        self.store.record_progress(self.clip_id, self.target, step, value)


class Parcel(NamedTuple):
    """What the uploader hands a target for one delivery."""

    #: The part whose delivery this is (its outbox row moves on the verdict).
    part: OutboxPart
    #: What the upload carries: ``(part,)`` for a :attr:`Scope.PART` target; every part of the
    #: clip, in order, for a :attr:`Scope.CLIP` target.
    parts: tuple[OutboxPart, ...]
    #: This target's steps on the part's clip.
    progress: Progress


class Target(ABC):
    """One configured destination. Subclasses set :attr:`name` and, if not per part, :attr:`scope`,
    and are built from the settings alone; the registry (``targets``) maps the name to the class."""

    #: The name used in config (``[upload] targets``) and in the outbox.
    name: ClassVar[str] = ""
    #: What one upload carries (:class:`Scope`).
    scope: ClassVar[Scope] = Scope.PART
    #: Enforce the upload contract's limits before sending (``check_part``).
    contract: ClassVar[bool] = True
    #: Identity of the request budget (None: no limits apply); asked for before each request, so
    #: a target may give the key in use now (a property).
    budget_key: str | None = None
    #: Identity of the plan allowance: the community or account whose minutes they are (never the
    #: API key, which may be rotated); None: the budget's key.
    allowance_key: str | None = None
    plan: str | None = None
    #: Devices sharing this budget key (each keeps to its share of the rate).
    share: int = 1
    #: Slots of the key's window this target leaves for a panic (``budget.Claim``).
    reserve: int = 0
    #: (host, port) for the reachability probe; None: always reachable (a local folder).
    endpoint: tuple[str, int] | None = None

    def __init__(self, settings: Settings) -> None:  # noqa: B027 - the one constructor signature
        """Every target is built this way (``targets.build_targets``): it reads its own section of
        ``settings.upload`` and sets up what it keeps for the run (an HTTP client, its key file
        registered as a secret). What may change while running (a key rotated in its file) is
        read at each send."""

    @abstractmethod
    def send(self, parcel: Parcel) -> Verdict:
        """Upload what the parcel carries; the verdict decides the delivery's next state."""

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
