"""The target seam: a target is one module's work, registered by name and driven by the uploader.

Two toy targets are defined here, each in a few lines, and registered from this module alone: one
per part (like Sonoran, the directory), one per clip (like Bota: a whole clip per upload, its steps
in the clip's progress). The real uploader drives both over a real outbox with nothing else
changed. Then the registry's own rules, and the package's imports: nothing in edged/upload imports
the registry back, and the package's modules import each other without a cycle.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import random
import time
from pathlib import Path

import pytest

from edged.config import schema
from edged.core.states import DeliveryState
from edged.upload import targets
from edged.upload.answers import Kind, Verdict
from edged.upload.outbox import PRIORITY_MARK, Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.target import Parcel, Scope, Target
from edged.upload.uploader import Uploader
from tests.conftest import REPO, make_settings
from tests.support import wait_until

# --- two toy targets: all a new target is ------------------------------------------------------------


class Notebook(Target):
    """Per part: notes each part's digest (a server that keeps what it is sent)."""

    name = "toy_notebook"
    contract = False  # plain files, not the WebM upload contract

    def __init__(self, settings: schema.Settings) -> None:
        super().__init__(settings)
        self.parcels: list[Parcel] = []

    def send(self, parcel: Parcel) -> Verdict:
        self.parcels.append(parcel)
        return Verdict(Kind.DELIVERED, "noted", response=parcel.part.sha256)


class Album(Target):
    """Per clip: one album per clip, made by whichever of its deliveries comes first; the others
    find it in the clip's progress."""

    name = "toy_album"
    scope = Scope.CLIP
    contract = False

    def __init__(self, settings: schema.Settings) -> None:
        super().__init__(settings)
        self.parcels: list[Parcel] = []
        self.albums: dict[str, list[int]] = {}

    def send(self, parcel: Parcel) -> Verdict:
        self.parcels.append(parcel)
        done = parcel.progress.steps()
        if "album" in done:
            return Verdict(Kind.DELIVERED, "in the clip's album", response=done["album"])
        self.albums[parcel.part.clip_id] = [p.number for p in parcel.parts]
        album = f"album-{parcel.part.clip_id}"
        parcel.progress.record("album", album)
        return Verdict(Kind.DELIVERED, "album made", response=album)


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test (a registration lasts as long as the process)."""
    monkeypatch.setattr(targets, "REGISTRY", dict(targets.REGISTRY))
    return targets


def with_targets(tmp_path: Path, *names: str) -> schema.Settings:
    """Settings naming the toy targets. (A target shipped with edged also gets its name and its
    section in edged/config/schema.py, whose validation refuses a name it does not know.)"""
    s = make_settings(tmp_path / "state")
    return dataclasses.replace(s, upload=dataclasses.replace(s.upload, targets=names))


def queue_clip(outbox: Outbox, folder: Path, clip_id: str, n_parts: int) -> None:
    folder = folder / clip_id
    folder.mkdir(parents=True)
    parts = []
    for n in range(1, n_parts + 1):
        f = folder / f"part{n:02d}.bin"
        f.write_bytes(f"{clip_id} part {n}".encode() * 100)
        parts.append((n, f, f.stat().st_size, 1000, hashlib.sha256(f.read_bytes()).hexdigest()))
    outbox.enqueue(clip_id, parts, PRIORITY_MARK, time.time_ns())


def test_a_target_registered_by_one_module_is_built_and_driven_by_the_uploader(tmp_path, registry):
    registry.register(Notebook.name, Notebook)
    registry.register(Album.name, Album)
    s = with_targets(tmp_path, Notebook.name, Album.name)
    built = registry.build_targets(s)
    notebook, album = built
    assert isinstance(notebook, Notebook) and isinstance(album, Album)

    outbox = Outbox(tmp_path / "outbox.sqlite", targets=s.upload.targets)
    queue_clip(outbox, tmp_path / "clips", "clip-a", 3)
    queue_clip(outbox, tmp_path / "clips", "clip-b", 1)
    delivered: list[str] = []
    up = Uploader(outbox, built, RetryPolicy.from_settings(s.upload, random.Random(0)), on_delivered=delivered.append)
    up.start()
    try:
        wait_until(
            lambda: all(d.state == DeliveryState.DELIVERED for d in outbox.deliveries()), 20, "every delivery made"
        )
    finally:
        up.stop()

    # (Each worker that sees the clip complete says so: two targets finishing together may both.)
    assert set(delivered) == {"clip-a", "clip-b"}, "each clip released once both targets have it"
    # Per part: a parcel per part, carrying that part alone.
    assert sorted((p.part.clip_id, p.part.number) for p in notebook.parcels) == [
        ("clip-a", 1),
        ("clip-a", 2),
        ("clip-a", 3),
        ("clip-b", 1),
    ]
    assert all(p.parts == (p.part,) for p in notebook.parcels)
    # Per clip: every delivery is handed the whole clip and its progress; the first one does the work.
    assert len(album.parcels) == 4
    assert all([q.number for q in p.parts] == ([1, 2, 3] if p.part.clip_id == "clip-a" else [1]) for p in album.parcels)
    assert album.albums == {"clip-a": [1, 2, 3], "clip-b": [1]}
    assert outbox.progress("clip-a", Album.name) == {"album": "album-clip-a"}
    assert {d.response for d in outbox.deliveries(target=Album.name, clip_id="clip-a")} == {"album-clip-a"}
    assert outbox.progress("clip-a", Notebook.name) == {}, "a target's progress is its own"
    outbox.close()


def test_a_name_is_one_target(tmp_path, registry):
    assert registry.register("bota", registry.REGISTRY["bota"]), "registering the same target again is harmless"
    with pytest.raises(ValueError, match="already registered"):
        registry.register("bota", Notebook)
    with pytest.raises(KeyError, match="known: bota, directory, sonoran_legacy, sonoran_v2"):
        registry.build_targets(with_targets(tmp_path, "nope"))
    registry.register("toy_misnamed", Notebook)  # built, it calls itself toy_notebook: its rows would never be sent
    with pytest.raises(ValueError, match="built as 'toy_notebook'"):
        registry.build_targets(with_targets(tmp_path, "toy_misnamed"))


def test_every_target_the_config_knows_is_built_in_and_no_other():
    assert set(targets.BUILT_IN) == set(schema.UPLOAD_TARGETS)
    assert {name: load().name for name, load in targets.BUILT_IN.items()} == {n: n for n in targets.BUILT_IN}


# --- the package's imports -----------------------------------------------------------------------------

UPLOAD = REPO / "edged" / "upload"


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every edged.upload module the file imports, lazy imports included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # ``from edged.upload.bota import media`` imports a module
                sub = f"{node.module}.{alias.name}"
                out.add(sub if _file(sub) else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("edged.upload.")}


def _file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def test_nothing_in_upload_imports_the_registry_and_nothing_imports_in_a_cycle():
    graph = {_module(p): _imports(p) for p in UPLOAD.rglob("*.py")}
    importers = sorted(m for m, deps in graph.items() if "edged.upload.targets" in deps)
    assert importers == [], "the registry imports the targets; nothing in edged/upload imports it back"

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for dep in sorted(graph.get(start, ())):
            if dep in path:
                return path[path.index(dep) :] + [dep]
            found = cycle_from(dep, path + [dep])
            if found:
                return found
        return None

    for module in sorted(graph):
        cycle = cycle_from(module, [module])
        assert cycle is None, "import cycle: " + " → ".join(cycle or [])
