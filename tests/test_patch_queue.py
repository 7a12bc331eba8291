"""The llama.cpp patch queue (cmake/patch_llama_cpp.py): third_party/patches applied to a copy of the tree, never to
the tree itself; a tree that already holds them used as is; a patch that no longer applies stops with its name."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from testkit import load_cmake_script

patch_llama_cpp = load_cmake_script("patch_llama_cpp")

REPO = Path(__file__).resolve().parents[1]
PATCHES = REPO / "third_party" / "patches"
# the files the patches touch, read from their "--- a/PATH" lines (a tree of just these is enough to apply them)
TOUCHED = sorted({m for p in PATCHES.glob("*.patch") for m in re.findall(r"^--- a/(\S+)", p.read_text(), re.M)})


@pytest.fixture
def small_tree(llama_cpp_dir, tmp_path) -> Path:
    tree = tmp_path / "llama.cpp-x"
    for f in TOUCHED:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(llama_cpp_dir / f, tree / f)
    return tree


def test_patches_go_to_a_copy_and_are_reused(small_tree, tmp_path):
    before = (small_tree / "tools/mtmd/clip.h").read_text()
    assert "CLIP_HAS_AUDIO_ROTATION" not in before
    out = patch_llama_cpp.patched_tree(small_tree, PATCHES, tmp_path / "cache", user_tree=False)
    assert out != small_tree and out.parent == tmp_path / "cache"
    assert "CLIP_HAS_AUDIO_ROTATION" in (out / "tools/mtmd/clip.h").read_text()
    assert "build_rotation" in (out / "tools/mtmd/models/whisper-enc.cpp").read_text()
    # 0003: several sequences per KV stream, asked for by the context parameters and split by stream
    assert "n_seq_per_stream" in (out / "include/llama.h").read_text()
    assert "split_stream" in (out / "src/llama-batch.cpp").read_text()
    assert (small_tree / "tools/mtmd/clip.h").read_text() == before  # the shared tree is never changed
    stamp = (out / "tools/mtmd/clip.h").stat().st_mtime_ns
    assert patch_llama_cpp.patched_tree(small_tree, PATCHES, tmp_path / "cache", user_tree=False) == out
    assert (out / "tools/mtmd/clip.h").stat().st_mtime_ns == stamp  # reused, not rebuilt
    # a tree that already holds the patches is built as it is
    assert patch_llama_cpp.patched_tree(out, PATCHES, tmp_path / "cache", user_tree=True) == out


def test_a_user_tree_is_copied_without_git_and_build(small_tree, tmp_path):
    (small_tree / ".git").mkdir()
    (small_tree / "build").mkdir()
    out = patch_llama_cpp.patched_tree(small_tree, PATCHES, tmp_path / "cache", user_tree=True)
    assert out.parent == tmp_path / "cache" / "patched"
    assert not (out / ".git").exists() and not (out / "build").exists()
    assert "CLIP_HAS_AUDIO_ROTATION" in (out / "tools/mtmd/clip.h").read_text()


def test_a_patch_that_no_longer_applies_stops_with_its_name(small_tree, tmp_path):
    header = small_tree / "tools/mtmd/clip.h"
    header.write_text(header.read_text().replace("std::vector<uint8_t> *       state_out", "void * state_out"))
    with pytest.raises(SystemExit, match="0001-mtmd-audio-rotation-before-projector.patch does not apply"):
        patch_llama_cpp.patched_tree(small_tree, PATCHES, tmp_path / "cache", user_tree=True)
    left = [p for p in (tmp_path / "cache" / "patched").iterdir() if not p.name.endswith(".lock")]
    assert not left  # nothing half-patched left to be reused


def test_every_patch_says_why_and_when_it_can_go():
    patches = sorted(PATCHES.glob("*.patch"))
    assert patches
    for p in patches:
        head = p.read_text().split("\ndiff ", 1)[0]
        assert "Why it exists" in head and "What would let it go" in head, p.name
