#!/usr/bin/env python3
"""The patch queue: third_party/patches/*.patch applied, in name order, to a copy of the resolved llama.cpp tree.

The resolved tree itself is never changed: the pinned one in the cache is shared by every build on the machine
(and by builds of other versions of this package), a user's LLAMA_CPP_DIR is theirs. The copy lives in the cache
next to it, named by the tree and the hash of the patches, so a rebuild reuses it and another patch set gets its own:

  <cache>/<tree name>-p<hash of the patches>/          for the pinned tree (made once);
  <cache>/patched/<tree name>-<hash of its path>-p<hash>/ for a LLAMA_CPP_DIR tree (refreshed on every configure,
                                                          so edits to it are picked up).

A tree that already holds every patch (``git apply --reverse --check`` passes) is used as it is. A patch that neither
applies nor is already applied stops the configure with its name and git's message: update the patch (or drop it,
as its header says when) or use the pinned tree. Prints the tree to build.

Usage: python patch_llama_cpp.py --tree DIR --patches DIR [--cache-dir DIR] [--user-tree]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_llama_cpp  # noqa: E402

# at the tree's top level only, not needed to build and possibly large (a user's checkout): left out of the copy
TOP_LEVEL_SKIP = {".git", "build", "models"}


def _skip(tree: Path):
    return lambda d, names: [n for n in names if Path(d) == tree and (n in TOP_LEVEL_SKIP or n.startswith("build-"))]


def patch_files(patches_dir: Path) -> list[Path]:
    return sorted(p.resolve() for p in patches_dir.glob("*.patch"))


def patches_hash(patches: list[Path]) -> str:
    h = hashlib.sha256()
    for p in patches:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _git_apply(tree: Path, patches: list[Path], *flags: str) -> subprocess.CompletedProcess:
    # GIT_CEILING_DIRECTORIES: never treat an enclosing repository as the tree's (paths would be taken from its root)
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
    cmd = ["git", "apply", *flags, *map(str, patches)]
    return subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)


def is_applied(tree: Path, patch: Path) -> bool:
    return _git_apply(tree, [patch], "--reverse", "--check").returncode == 0


def touched(patches: list[Path]) -> set[str]:
    """The tree-relative paths the patches change."""
    return {ln[6:].strip() for p in patches for ln in p.read_text().splitlines() if ln.startswith("+++ b/")}


def queue_applied(tree: Path, patches: list[Path]) -> bool:
    """Whether ``tree`` holds the whole queue: the files the patches touch, copied aside, can be undone patch by
    patch, last to first (a later patch may change a line an earlier one added, so one by one on the tree itself
    would not tell)."""
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d) / "t"
        for rel in touched(patches):
            if not (tree / rel).is_file():
                return False
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(tree / rel, scratch / rel)
        return all(_git_apply(scratch, [p], "--reverse").returncode == 0 for p in reversed(patches))


def apply_all(tree: Path, patches: list[Path]) -> None:
    """Apply each patch not already in ``tree``; SystemExit naming the first one that does not apply."""
    for p in patches:
        if is_applied(tree, p):
            print(f"-- llama.cpp patch {p.name}: already applied", file=sys.stderr)
            continue
        r = _git_apply(tree, [p])
        if r.returncode != 0:
            raise SystemExit(
                f"llama.cpp patch {p.name} does not apply to {tree}:\n{r.stderr.strip()}\n"
                "The tree differs from the one the patch was written for: update the patch (its header says why it "
                "exists and when it can go), or build against the pinned tree (unset LLAMA_CPP_DIR)."
            )
        print(f"-- llama.cpp patch {p.name}: applied", file=sys.stderr)


def patched_tree(tree: Path, patches_dir: Path, cache: Path, user_tree: bool) -> Path:
    patches = patch_files(patches_dir)
    if not patches or queue_applied(tree, patches):
        return tree
    key = patches_hash(patches)
    if user_tree:
        where = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:8]
        dest = cache / "patched" / f"{tree.name}-{where}-p{key}"
    else:
        dest = cache / f"{tree.name}-p{key}"
    marker = dest / ".music-flamingo-patched"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fetch_llama_cpp.locked(dest.parent / f"{dest.name}.lock"):
        if marker.is_file() and not user_tree:
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=dest.parent))
        try:
            shutil.copytree(tree, tmp / "t", ignore=_skip(tree), symlinks=True)
            apply_all(tmp / "t", patches)
            (tmp / "t" / marker.name).write_text("\n".join(p.name for p in patches) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp / "t", dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, required=True)
    ap.add_argument("--patches", type=Path, required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--user-tree", action="store_true", help="a LLAMA_CPP_DIR tree (copy refreshed every time)")
    a = ap.parse_args()
    print(patched_tree(a.tree, a.patches, fetch_llama_cpp.cache_root(a.cache_dir), a.user_tree))


if __name__ == "__main__":
    main()
