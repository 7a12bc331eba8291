"""The package's modules stand in layers, and an import only ever points down: a module never imports one that stands
above it (issue 13), at module level or inside a function. A new module gets its place in LAYERS."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "music_flamingo"

# Lowest first. A module may import any module listed before it.
LAYERS = [
    "_core",  # the compiled engine
    "errors", "_version", "fsutil", "chat_template", "text",
    "_logging", "validation", "lifecycle", "models", "sidecar", "native",
    "datatypes", "audio", "provenance", "discovery", "failures", "manifest", "prompts",
    "analyzer",
    "gguf_backend", "transformers_backend",
    "batch", "workers", "distributed",
    "cli",
    "__init__", "__main__",
]  # fmt: skip


def package_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports: ``from .x import ...``, ``from . import x``, ``from .x.y import``;
    ``from . import name`` of something that is not a module imports the package itself (``__init__``)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {"_core"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name if a.name in modules else "__init__" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "music_flamingo":
            parts = node.module.split(".")
            found.update([parts[1]] if len(parts) > 1 else ["__init__"])
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {"_core"}
    assert modules == set(LAYERS), f"not placed: {modules - set(LAYERS)}; gone: {set(LAYERS) - modules}"


@pytest.mark.parametrize("module", [m for m in LAYERS if m != "_core"])
def test_imports_point_down(module):
    rank = {m: i for i, m in enumerate(LAYERS)}
    above = {m for m in package_imports(PACKAGE / f"{module}.py") if m in rank and rank[m] >= rank[module]}
    assert not above, f"{module} imports {sorted(above)}, which stand at or above it"


def test_the_check_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from . import cli\n    from .batch import run_batch\n    from . import __version__\n")
    assert package_imports(src) == {"cli", "batch", "__init__"}
