"""The layout's one rule, checked: every import points down the stack of stages, never up.

ARCHITECTURE.md draws the stack. Each package may import itself and the packages below it; core
imports nothing of edged's. Lazy imports inside functions count too (an upward one is still a
cycle waiting to happen). Read from the source's syntax tree, not by importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EDGED = REPO / "edged"

#: Bottom first. A package may import the packages before it (and itself).
LAYERS: list[set[str]] = [
    {"core"},
    {"config"},
    {"capture"},
    {"footage"},
    {"recording"},
    {"clips"},
    {"upload"},
    {"events", "recall"},
    {"app"},
    {"doctor"},
    {"cli"},
]


def layer_of(package: str) -> int:
    for n, layer in enumerate(LAYERS):
        if package in layer:
            return n
    raise AssertionError(f"edged.{package} is in no layer of tests/unit/test_architecture.py (nor ARCHITECTURE.md)")


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "edged" else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``edged`` import in the file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "edged":
                out += [(node.lineno, f"edged.{a.name}") for a in node.names]
            elif node.module.startswith("edged."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("edged.")]
    return out


def test_every_package_has_a_layer_and_a_docstring():
    for pkg in sorted(p for p in EDGED.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        layer_of(pkg.name)
        init = ast.parse((pkg / "__init__.py").read_text())
        assert ast.get_docstring(init), f"edged/{pkg.name}/__init__.py says nothing of what the package is for"


def test_no_import_points_up_or_sideways():
    wrong = []
    for path in sorted(EDGED.rglob("*.py")):
        rel = path.relative_to(REPO)
        here = package_of(".".join(rel.with_suffix("").parts))
        if here is None or here == "__main__":
            continue
        for line, module in imports_of(path):
            there = package_of(module)
            if there is None or there == here or there == "__version__":
                continue
            if layer_of(there) >= layer_of(here):
                wrong.append(f"{rel}:{line} edged.{here} imports {module} (layer {layer_of(there)} ≥ {layer_of(here)})")
    assert not wrong, "imports against the stack of stages:\n" + "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule above can fail: an import of app from footage is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from edged.app.daemon import Daemon\n")
    ((line, module),) = imports_of(probe)
    assert package_of(module) == "app" and layer_of("app") > layer_of("footage")
