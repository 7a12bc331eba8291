"""What the tests and the benchmarks share, kept out of the installed package: a tiny random Music Flamingo
(``tiny_model``), the reference ``llama-mtmd-cli`` (``mtmd_cli``) and real music (``corpus``), each made once and
cached in the project's cache (``CACHE``, ``~/.cache/music-flamingo``).

Imported from the repository root: pytest puts it on the path (``pythonpath`` in pyproject.toml), and the
benchmarks run as modules from there (``python -m bench.benchmark``). It stands below both: it imports neither.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build_resolver():
    """cmake/fetch_llama_cpp.py, the build's own resolver of the llama.cpp tree (a script, not a package), loaded
    once under its own name: the tests use the tree the package was built from."""
    name = "fetch_llama_cpp"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "cmake" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fetch_llama_cpp = _build_resolver()
CACHE = fetch_llama_cpp.cache_root()
