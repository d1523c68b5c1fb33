"""Shared fixtures: settings built through the real validator, daemons run in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from edged.config import schema as config

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the repository (the CI clone has it there too).
SHARED = Path(os.environ.get("EDGED_SHARED", REPO.parent / "shared"))
FOOTAGE = SHARED / "footage"

sys.path.insert(0, str(REPO))  # tests.support.fakes, scripts.shake


def make_settings(state_dir: Path, **sections: dict[str, Any]) -> config.Settings:
    """Settings from a TOML-shaped mapping: unpaced synthetic sources and no free-space floor
    unless the test says otherwise."""
    data: dict[str, dict[str, Any]] = {
        "camera": {"source": "synthetic", "paced": False},
        "audio": {"source": "synthetic"},
        "storage": {"dir": str(state_dir), "min_free_bytes": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config.from_mapping(data, origin="<test>")


@pytest.fixture
def settings_factory(tmp_path: Path):
    def factory(**sections: dict[str, Any]) -> config.Settings:
        return make_settings(tmp_path / "state", **sections)

    return factory


@pytest.fixture
def footage() -> Path:
    if not (FOOTAGE / "vtest.avi").exists():
        pytest.skip(f"shared footage not found at {FOOTAGE}")
    return FOOTAGE
