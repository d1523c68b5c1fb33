"""Which upload targets exist: the registry, a name in ``[upload] targets`` → the class that builds it.

Why a registry: the uploader drives every target through one interface (``target.Target``) and
never needs to know which ones exist; the daemon builds the configured ones from their names. This
module is the one place that knows them all, and nothing in ``edged.upload`` imports it back: a
target module imports the interface (``target``) and what lies under it (``http``, ``answers``,
``outbox``), never this module, so the package's imports have no cycle
(``tests/unit/test_upload_targets.py`` checks both).

Adding a target:

1. a module (``edged/upload/<name>.py``, or a package like ``bota/``) with a ``Target`` subclass:
   its ``name``, its ``scope`` if one upload carries a whole clip, ``__init__(settings)`` reading
   its own settings section, and ``send(parcel) -> Verdict`` (``http.HttpTarget`` for HTTP, its
   answers judged by ``answers.classify`` against a ``Contract``, one of ``answers``' or its own);
2. its class in :data:`BUILT_IN` below (its name and a function importing its class: a target's
   module is imported only when it is configured, so a device delivering to a folder never loads
   the HTTP stack the others need);
3. its settings section in ``edged/config/schema.py`` (its name in ``UPLOAD_TARGETS``, its table in
   ``UploadSettings``, what ``_upload_checks`` requires of it when it is configured).

A target that is not part of edged (a test's, a site's own) calls :func:`register` instead of 2.
"""

from __future__ import annotations

from collections.abc import Callable

from edged.config.schema import Settings
from edged.upload.target import Target

#: What builds a target: its class, or any callable taking the settings.
TargetFactory = Callable[[Settings], Target]


def _sonoran_v2() -> type[Target]:
    from edged.upload.sonoran import SonoranV2Target

    return SonoranV2Target


def _sonoran_legacy() -> type[Target]:
    from edged.upload.sonoran import SonoranLegacyTarget

    return SonoranLegacyTarget


def _bota() -> type[Target]:
    from edged.upload.bota.target import BotaTarget

    return BotaTarget


def _directory() -> type[Target]:
    from edged.upload.directory import DirectoryTarget

    return DirectoryTarget


#: The targets edged ships: each class's ``name`` and the function that imports it.
BUILT_IN: dict[str, Callable[[], type[Target]]] = {
    "sonoran_v2": _sonoran_v2,
    "sonoran_legacy": _sonoran_legacy,
    "bota": _bota,
    "directory": _directory,
}


class _BuiltIn:
    """A shipped target's factory: its module imported at the first build."""

    def __init__(self, load: Callable[[], type[Target]]) -> None:
        self.load = load

    def __call__(self, settings: Settings) -> Target:
        return self.load()(settings)

    def __repr__(self) -> str:
        return f"<built-in target {self.load.__name__.lstrip('_')}>"


#: Every known target by name.
REGISTRY: dict[str, TargetFactory] = {name: _BuiltIn(load) for name, load in BUILT_IN.items()}


def register(name: str, factory: TargetFactory) -> TargetFactory:
    """Make ``name`` a target ``build_targets`` can build. A name already taken by another factory
    is refused (two targets sharing a name would share their outbox rows). Returns ``factory``."""
    if not name:
        raise ValueError("a target needs a name")
    known = REGISTRY.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"upload target {name!r} is already registered ({known!r})")
    REGISTRY[name] = factory
    return factory


def build_targets(settings: Settings) -> list[Target]:
    """One target per configured name, in the configured order. A target holds no store: it is
    handed its clip's progress with each send (``target.Parcel``)."""
    made: list[Target] = []
    for name in settings.upload.targets:
        factory = REGISTRY.get(name)
        if factory is None:
            raise KeyError(f"unknown upload target {name!r} (known: {', '.join(sorted(REGISTRY))})")
        target = factory(settings)
        if target.name != name:  # the outbox's rows are keyed by it: a mismatch would deliver nothing
            raise ValueError(f"upload target {name!r} was built as {target.name!r}")
        made.append(target)
    return made
