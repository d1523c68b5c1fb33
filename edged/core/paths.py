"""The state folder's layout, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def index(self) -> Path:
        return self.root / "index.sqlite"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        return self.root / "edged.lock"

    @property
    def clips(self) -> Path:
        return self.root / "clips"

    @property
    def events(self) -> Path:
        return self.root / "events.sqlite"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.sqlite"

    @property
    def control(self) -> Path:
        return self.root / "control.sock"
