"""Track discovery as a table: which file of the users' layout (shared/notes/dataset-layout.md) is a track, and what
the selection options take. Names only (empty files): the real-audio runs are in test_datasets.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from music_flamingo.discovery import (
    CROP,
    CROP_STEM,
    EXTRA,
    FULL_MIX,
    LOOSE,
    SKIP_FOLDER,
    STEM,
    Selection,
    classify_folder,
    discover_tracks,
    glob_matches,
    read_path_list,
)

T = "Artist - Album - Track"

# (folder name, audio files in it, expected kind of each file)
FOLDERS = [
    (
        "organized: full mix, Demucs and DrumSep stems",
        T,
        {
            "full_mix.flac": FULL_MIX,
            "drums.flac": STEM,
            "bass.flac": STEM,
            "other.flac": STEM,
            "vocals.flac": STEM,
            "kick.flac": STEM,
            "snare.flac": STEM,
            "cymbals.flac": STEM,
            "toms.flac": STEM,
            "percussion.flac": STEM,
        },
    ),
    ("organized, any audio extension", "x", {"full_mix.m4a": FULL_MIX, "vocals.aiff": STEM}),
    (
        "organized: other audio is not a track (the old 'crop in the name' rule)",
        "x",
        {
            "full_mix.wav": FULL_MIX,
            "full_mix_crop_01.flac": EXTRA,
            "Artist - Album - Track.mp3": EXTRA,
            "x_0.flac": EXTRA,
        },
    ),
    ("organized: two full mixes, one track (one sidecar)", "x", {"full_mix.wav": EXTRA, "full_mix.flac": FULL_MIX}),
    (
        "crops/: crops and their stems",
        "crops",
        {
            f"{T}_0.flac": CROP,
            f"{T}_1.flac": CROP,
            f"{T}_0_drums.flac": CROP_STEM,
            f"{T}_0_bass.flac": CROP_STEM,
            f"{T}_0_other.flac": CROP_STEM,
            f"{T}_0_vocals.flac": CROP_STEM,
            f"{T}_12_vocals.flac": CROP_STEM,
        },
    ),
    ("_crops/ likewise, even without a crop left", "_crops", {f"{T}_3_bass.flac": CROP_STEM}),
    (
        "output-dir crops folder (<out>/<Track Name>/), non-ASCII",
        "Björk – Jóga",
        {"Björk – Jóga_0.flac": CROP, "Björk – Jóga_0_Vocals.flac": CROP_STEM, "Björk – Jóga_10.wav": CROP},
    ),
    ("crop stems of DrumSep names too", "crops", {f"{T}_0_kick.flac": CROP_STEM}),
    ("a crops folder's other audio is loose", "crops", {"notes.flac": LOOSE, f"{T}_0.flac": CROP}),
    (
        "loose folder: stem-like names are tracks there",
        "Album",
        {"01 Intro.flac": LOOSE, "vocals.flac": LOOSE, "drums_mix.wav": LOOSE, "Song_2_bass.flac": LOOSE},
    ),
    ("'_<n>' needs a name before it and ASCII digits", "Album", {"_1.flac": LOOSE, "Take_٣.flac": LOOSE}),
]


@pytest.mark.parametrize("folder,files", [(f, files) for _, f, files in FOLDERS], ids=[c for c, _, _ in FOLDERS])
def test_the_rule_per_folder(folder, files):
    got = {name: kind for name, kind, _ in classify_folder(folder, files)}
    assert got == files


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    touch(
        root,
        f"{T}/full_mix.flac",
        f"{T}/drums.flac",
        f"{T}/kick.flac",
        f"{T}/{T}.INFO",
        f"{T}/crops/{T}_0.flac",
        f"{T}/crops/{T}_0_bass.flac",
        f"{T}/crops/{T}_0.json",
        "out/Live Set/Live Set_0.wav",
        "out/Live Set/Live Set_0_vocals.wav",
        "loose/intro.mp3",
        "loose/._intro.mp3",
        "loose/readme.txt",
        "bs roformer output/x.flac",
        "build/y.flac",
        "test data/z.flac",
        "repos/r/full_mix.flac",
        "deep/er/crops/ok_1.flac",
        ".venv/v.flac",
        ".hidden/h.flac",
        "node_modules/n.flac",
    )
    return root


def rels(tracks, selected=True):
    return sorted(t.rel for t in tracks if t.selected == selected and t.kind != SKIP_FOLDER)


def test_walk_takes_mixes_crops_and_loose_files_and_reports_the_rest(tree):
    found = discover_tracks(tree)
    assert rels(found) == [
        f"{T}/crops/{T}_0.flac",
        f"{T}/full_mix.flac",
        "deep/er/crops/ok_1.flac",
        "loose/intro.mp3",
        "out/Live Set/Live Set_0.wav",
    ]
    assert rels(found, selected=False) == [
        f"{T}/crops/{T}_0_bass.flac",
        f"{T}/drums.flac",
        f"{T}/kick.flac",
        "out/Live Set/Live Set_0_vocals.wav",
    ]
    skipped = sorted(t.rel for t in found if t.kind == SKIP_FOLDER)
    assert skipped == ["bs roformer output", "build", "node_modules", "repos", "test data"]  # hidden: silent
    assert all(t.reason for t in found)
    assert {t.excluded_as for t in found if not t.selected} == {"stem", "crop stem", "skip folder"}


def test_root_is_never_skipped_and_a_crops_root_is_a_crops_folder(tree):
    assert rels(discover_tracks(tree / "build")) == ["y.flac"]
    assert rels(discover_tracks(tree / T / "crops")) == [f"{T}_0.flac"]


@pytest.mark.parametrize(
    "sel,expected",
    [
        (Selection(only={"full_mix"}), [f"{T}/full_mix.flac"]),
        (
            Selection(only={"crops"}),
            [f"{T}/crops/{T}_0.flac", "deep/er/crops/ok_1.flac", "out/Live Set/Live Set_0.wav"],
        ),
        (Selection(only={"loose", "full_mix"}), [f"{T}/full_mix.flac", "loose/intro.mp3"]),
        (Selection(only={"full_mix"}, stems=True), [f"{T}/drums.flac", f"{T}/full_mix.flac", f"{T}/kick.flac"]),
        (
            Selection(only={"crops"}, stems=True, include=("out",)),
            ["out/Live Set/Live Set_0.wav", "out/Live Set/Live Set_0_vocals.wav"],
        ),
        (Selection(include=("*.mp3", "Live*")), ["loose/intro.mp3", "out/Live Set/Live Set_0.wav"]),
        (Selection(exclude=("crops",)), [f"{T}/full_mix.flac", "loose/intro.mp3", "out/Live Set/Live Set_0.wav"]),
        (Selection(include=("deep/er",)), ["deep/er/crops/ok_1.flac"]),
        (Selection(include=("**/crops/*",), exclude=("deep/*",)), [f"{T}/crops/{T}_0.flac"]),
        (Selection(include=("*Track/full_mix.*",)), [f"{T}/full_mix.flac"]),
        (Selection(include=("LOOSE",)), []),  # case-sensitive, like the shell
    ],
    ids=[
        "only-full_mix",
        "only-crops",
        "only-two",
        "stems",
        "crops-stems-include",
        "include-any",
        "exclude-folder",
        "include-folder-path",
        "doublestar",
        "path-glob",
        "case",
    ],
)
def test_selection(tree, sel, expected):
    assert rels(discover_tracks(tree, sel)) == expected


def test_selection_rejects_unknown_groups():
    with pytest.raises(ValueError, match="full_mix, crops, loose"):
        Selection(only={"stems"})


@pytest.mark.parametrize(
    "rel,pattern,hit",
    [
        ("a/b/c.flac", "*.flac", True),
        ("a/b/c.flac", "b", True),
        ("a/b/c.flac", "a/b", True),
        ("a/b/c.flac", "a/*", True),
        ("a/b/c.flac", "b/*", False),
        ("a/b/c.flac", "**/b/*", True),
        ("a/b/c.flac", "./a/b/", True),
        ("a/b/c.flac", "c", False),
        ("a/b/c.flac", "", False),
    ],
)
def test_glob_matches(rel, pattern, hit):
    assert glob_matches(rel, pattern) is hit


def test_listed_paths_follow_the_same_rule(tree, tmp_path, monkeypatch):
    listed = [
        f"{T}/full_mix.flac",
        str(tree / f"{T}/drums.flac"),
        "loose/intro.mp3",
        "loose/intro.mp3",
        "loose/readme.txt",
        "missing.flac",
        str(tmp_path / "elsewhere.flac"),
        "bs roformer output/x.flac",
        ".venv/v.flac",
    ]
    touch(tmp_path, "elsewhere.flac")
    found = discover_tracks(tree, Selection(paths=listed))
    assert [(t.rel, t.kind, t.selected) for t in found][:3] == [
        (f"{T}/full_mix.flac", FULL_MIX, True),
        (f"{T}/drums.flac", STEM, False),
        ("loose/intro.mp3", LOOSE, True),
    ]
    assert [t.excluded_as for t in found[3:]] == [
        "listed, not audio",
        "listed, not found",
        "listed, outside the root",
        "skip folder",
        "skip folder",
    ]
    assert rels(discover_tracks(tree, Selection(paths=listed, stems=True, exclude=("*.mp3",)))) == [
        f"{T}/drums.flac",
        f"{T}/full_mix.flac",
    ]
    monkeypatch.chdir(tree.parent)  # a path relative to the current folder, as `find data ...` writes it
    assert rels(discover_tracks(tree, Selection(paths=["data/loose/intro.mp3"]))) == ["loose/intro.mp3"]


def test_path_list_reads_any_file_name(tmp_path):
    odd = "Sigur Rós – Ágætis byrjun.flac"
    f = tmp_path / "list.txt"
    f.write_bytes(b"a.flac\r\n\n" + odd.encode() + b"\n" + os.fsencode("bad\udcff.flac") + b"\n  \n")
    assert read_path_list(f) == ["a.flac", odd, "bad\udcff.flac"]
