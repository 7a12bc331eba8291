"""The package's modules stand in layers, and an import only ever points down: a module never imports one that stands
above it (issue 13), at module level or inside a function. A new module gets its place in LAYERS."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "music_flamingo"

# Lowest first. A module may import any module listed before it.
LAYERS = [
    "_core",  # the compiled engine
    "errors", "_raywatch", "_version", "fsutil", "chat_template", "text", "reasoning",
    "_logging", "validation", "lifecycle", "models", "sidecar", "native",
    "gguf_meta", "checkpoint", "gguf_vocab", "convert",
    "datatypes", "audio", "provenance", "discovery", "failures", "manifest", "templates", "prompts",
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


# --- above the package: testkit/ (what tests and benchmarks share), then bench/ and tests/ ----------------------------

REPO = PACKAGE.parents[1]
TEST_MODULES = {p.stem for p in (REPO / "tests").glob("*.py")} | {"tests"}  # conftest, crash_harness, test_*, ...


def absolute_imports(path: Path) -> set[str]:
    """The top-level names ``path`` imports (``import a.b``, ``from a.b import c``), at module level or inside a
    function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def path_edits(path: Path) -> list[str]:
    """The ``sys.path.insert(...)``/``sys.path.append(...)`` calls in ``path``, as written."""
    source = path.read_text(encoding="utf-8")
    return [
        ast.get_source_segment(source, node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("insert", "append")
        and ast.unparse(node.func.value) == "sys.path"
    ]


SCRIPTS = sorted(p.relative_to(REPO) for d in ("bench", "testkit") for p in (REPO / d).rglob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=str)
def test_benchmarks_and_testkit_stand_on_the_package_not_on_the_tests(script):
    imported = absolute_imports(REPO / script) & TEST_MODULES
    assert not imported, f"{script} imports {sorted(imported)} from tests/"
    into_tests = [e for e in path_edits(REPO / script) if "tests" in e]
    assert not into_tests, f"{script} puts tests/ on the import path: {into_tests}"


def test_the_script_check_sees_imports_and_path_edits_into_tests(tmp_path):
    src = tmp_path / "b.py"
    src.write_text(
        "import sys\nsys.path.insert(0, str(REPO / 'tests'))\n"
        "def f():\n    from conftest import CACHE\n    import tiny_model.x\n"
    )
    assert absolute_imports(src) >= {"conftest", "tiny_model", "sys"}
    assert path_edits(src) == ["sys.path.insert(0, str(REPO / 'tests'))"]


# --- cpp/: the engine's files stand in layers too ---------------------------------------------------------------------

CPP = REPO / "cpp"

# Lowest first; files in one row may not include each other (a row's .cpp may include its own header). A header
# includes only what stands below it: the shared vocabulary (types.h) never includes the Engine (engine.h), the
# runner never includes the engine. followup.cpp stands with the runner: it holds BatchRun's follow-up steps, while
# followup.h (what the plan needs) stands low.
CPP_LAYERS = [
    ["errors.h"],
    ["log_bridge.h", "log_bridge.cpp", "quantize.h", "quantize.cpp", "gguf_check.h", "gguf_check.cpp",
     "kv_layout.h", "kv_layout.cpp",
     "rote.h", "rote.cpp"],
    ["types.h"],
    ["audio_window.h", "audio_window.cpp", "sampling.h", "sampling.cpp", "device_sampling.h", "device_sampling.cpp",
     "prefix.h", "followup.h", "plan.h"],
    ["prefix.cpp", "plan.cpp", "prefill_context.h", "prefill_context.cpp"],
    ["resources.h"],
    ["batch_run.h"],
    ["batch_run.cpp", "followup.cpp"],
    ["engine.h"],
    ["engine.cpp"],
    ["bindings.cpp"],
]  # fmt: skip


def cpp_includes(path: Path) -> set[str]:
    """The files of ``path``'s folder that it includes with ``#include "..."`` (llama.cpp's headers are not)."""
    names = {p.name for p in path.parent.iterdir()}
    found = re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(encoding="utf-8"), re.M)
    return {n for n in found if n in names}


def cpp_upward_includes(folder: Path, layers: list[list[str]]) -> list[str]:
    """Every include in ``folder`` of a file at or above the includer's layer (its own header excepted)."""
    rank = {name: i for i, row in enumerate(layers) for name in row}
    wrong = []
    for path in sorted(folder.glob("*.[ch]*")):
        own = path.with_suffix(".h").name
        for inc in sorted(cpp_includes(path) - {own}):
            if rank.get(inc, len(layers)) >= rank.get(path.name, -1):
                wrong.append(f"{path.name} includes {inc}")
    return wrong


def test_every_cpp_file_has_a_layer():
    files = {p.name for p in CPP.glob("*.[ch]*")}
    placed = {name for row in CPP_LAYERS for name in row}
    assert files == placed, f"not placed: {files - placed}; gone: {placed - files}"


def test_cpp_includes_point_down():
    assert cpp_upward_includes(CPP, CPP_LAYERS) == []


def test_the_cpp_check_sees_an_upward_include(tmp_path):
    """The layout issue 17 found: shared types in engine.h, included by the headers that need only the types, and
    the engine's resources in the runner's header."""
    (tmp_path / "engine.h").write_text('#include "types.h"\n')
    (tmp_path / "types.h").write_text("struct T {};\n")
    (tmp_path / "prefix.h").write_text('#include "engine.h"  // for the types\n')
    (tmp_path / "batch_run.h").write_text('#include "prefix.h"\n')
    (tmp_path / "engine.cpp").write_text('#include "engine.h"\n#include "batch_run.h"\n')
    layers = [["types.h"], ["prefix.h"], ["batch_run.h"], ["engine.h"], ["engine.cpp"]]
    assert cpp_upward_includes(tmp_path, layers) == ["prefix.h includes engine.h"]


def layout_table_names(readme: str) -> set[str]:
    """The names in backticks in the first column of README's Layout table."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def test_the_readme_layout_table_names_every_engine_file_and_module():
    named = layout_table_names((REPO / "README.md").read_text(encoding="utf-8"))
    bare = {Path(n).name for n in named}
    globs = {n[: -len(".*")] for n in bare if n.endswith(".*")}  # `cpp/gguf_check.*`: the header and its source
    files = [p for d in (CPP, PACKAGE) for p in d.iterdir() if p.is_file() and p.suffix not in (".so", ".pyd")]
    missing = sorted(p.name for p in files if p.name not in bare and p.stem not in globs)
    assert not missing, f"README's Layout table does not name {missing}"


def test_the_layout_check_sees_a_missing_file():
    readme = "# x\n## Layout\n\n| path | what |\n|---|---|\n| `cpp/a.h`, `a.cpp` | a |\n| `b.*` | b |\n## Next\n"
    assert layout_table_names(readme) == {"cpp/a.h", "a.cpp", "b.*"}
