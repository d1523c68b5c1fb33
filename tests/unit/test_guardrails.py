"""Guardrails run by the test command: the linter, the formatter and the type checker agree with the tree.

Configured in pyproject.toml ([tool.ruff], [tool.mypy]); run them by hand with ``.venv/bin/ruff
check .``, ``.venv/bin/ruff format .`` and ``.venv/bin/mypy`` (it checks ``edged/``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    out = run(str(BIN / "ruff"), "check", "--output-format", "concise", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_tree_is_formatted():
    out = run(str(BIN / "ruff"), "format", "--check", ".")
    assert out.returncode == 0, "run .venv/bin/ruff format .\n" + out.stdout + out.stderr


def test_mypy_finds_nothing():
    out = run(sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(REPO / ".mypy_cache"))
    assert out.returncode == 0, out.stdout + out.stderr
