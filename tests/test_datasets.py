"""The batch runner on the layout the users' pipeline writes (shared/notes/dataset-layout.md), with real audio and
the tiny model: organized folders with Demucs and DrumSep stems and other tools' files, crops/ subfolders, the
cropper's output-dir tree, skip-list folders holding audio, loose files, non-ASCII names. Checks that exactly the
full mixes, crops and loose files are described, that no stem gets a sidecar, that crop sidecars keep their keys,
that the dry run's counts are the run's, and that --only, --stems, the globs, --from-list and --retry-failed take
what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DEFAULT_KEYS, model_args, nothing_changes_outside, write_clip
from conftest import run_cli as cli

T1 = "Artist - Album - Track"
T2 = "Sigur Rós – Ágætis byrjun – Svefn-g-englar"
DEMUCS = ["drums", "bass", "other", "vocals"]
DRUMSEP = ["kick", "snare", "cymbals", "toms", "percussion"]
THEIRS = {"bpm": 128.0, "key": "F# minor", "essentia": {"danceability": 1.234567e-07}, "caption": "Ünïcode — “kept”"}
COPIED = {k: f"copied from the track: {k}" for k in DEFAULT_KEYS}  # the cropper copies the track's descriptions


def build_layout(root: Path, track: np.ndarray) -> dict[str, list[str]]:
    """The tree; returns the paths (relative to root) the default run must describe, and other groups."""
    off = iter(range(5, 200, 3))

    def audio(rel: str, seconds: float) -> str:
        write_clip(root / rel, track, seconds, next(off))
        return rel

    def text(rel: str, content: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content, encoding="utf-8")

    g: dict[str, list[str]] = {
        "full_mix": [],
        "crops": [],
        "loose": [],
        "stem": [],
        "crop_stem": [],
        "done": [],
        "skipped": [],
    }
    # organized folder 1: full mix, Demucs + DrumSep stems, other tools' files, crops/ (cropper without -o)
    g["full_mix"].append(audio(f"{T1}/full_mix.flac", 5))
    g["stem"] += [audio(f"{T1}/{s}.flac", 1) for s in DEMUCS + DRUMSEP]
    text(f"{T1}/{T1}.INFO", json.dumps(THEIRS, indent=4, ensure_ascii=False))
    for ext in ("BEATS_GRID", "ONSETS_GRID", "CHROMA"):
        text(f"{T1}/{T1}.{ext}", "0.5\n1.0\n")
    for i in range(2):
        crop = f"{T1}/crops/{T1}_{i}"
        g["crops"].append(audio(f"{crop}.flac", 4 - i))
        g["crop_stem"] += [audio(f"{crop}_{s}.flac", 1) for s in DEMUCS]
        text(f"{crop}.json", json.dumps({"position": i / 2, "start_time": 47.55 * i, "source": "full_mix.flac"}))
        text(f"{crop}.INFO", json.dumps({"position": i / 2}, indent=2))
    # organized folder 2, non-ASCII, full mix as WAV, its crops in the cropper's --output-dir tree
    g["full_mix"].append(audio(f"{T2}/full_mix.wav", 4))
    g["stem"] += [audio(f"{T2}/{s}.wav", 1) for s in DEMUCS]
    for i in range(2):
        crop = f"training crops/{T2}/{T2}_{i}"
        g["crops"].append(audio(f"{crop}.flac", 3))
        g["crop_stem"] += [audio(f"{crop}_{s}.flac", 1) for s in DEMUCS]
        text(f"{crop}.json", json.dumps({"position": i / 2}))
        text(f"{crop}.INFO", json.dumps({"position": i / 2, **(COPIED if i else {})}, indent=2, ensure_ascii=False))
    g["done"].append(g["crops"].pop())  # crop 1 of T2 already holds the five keys (copied): done
    # loose files, a skip-list folder and a repos/ checkout holding audio, a hidden folder
    g["loose"] += [audio("loose/intro.flac", 4), audio("loose/Café – ☃ demo.ogg", 3)]
    g["skipped"] += [
        audio("bs roformer output/vocals.flac", 1),
        audio("repos/demo/full_mix.flac", 1),
        audio(".venv/lib/x.flac", 1),
    ]
    text("notes.txt", "not audio")
    return g


@pytest.fixture
def layout(tmp_path, track):
    root = tmp_path / "datasets"
    groups = build_layout(root, track)
    return root, groups


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sidecar_of(rel: str) -> str:
    from music_flamingo.sidecar import sidecar_path

    return sidecar_path(Path(rel)).as_posix()


def run(analyzer, root: Path, **kw):
    """run_batch with these options; returns the summary and the tracks described (relative, in order)."""
    from music_flamingo.batch import BatchOptions, run_batch

    described: list[str] = []
    with nothing_changes_outside(root, allow=[kw["jsonl"]] if kw.get("jsonl") else []):
        s = run_batch(
            analyzer,
            root,
            BatchOptions(progress=False, **kw),
            on_result=lambda t, f: described.append(Path(t).relative_to(root).as_posix()),
        )
    return s, described


def test_default_run_describes_exactly_the_mixes_crops_and_loose_files(analyzer, layout):
    root, g = layout
    before = snapshot(root)
    s, described = run(analyzer, root)
    assert s.failed == 0, s.failures
    assert sorted(described) == sorted(g["full_mix"] + g["crops"] + g["loose"])
    assert s.skipped_complete == len(g["done"])
    after = snapshot(root)
    new = sorted(p for p in set(after) - set(before) if not p.startswith(".music-flamingo/"))
    # the only files written: the described tracks' sidecars (T1 and the crops had one); no lock file stays
    assert new == sorted(sidecar_of(t) for t in g["full_mix"][1:] + g["loose"])
    assert not list((root / ".music-flamingo" / "locks").iterdir())  # the track locks remove themselves too
    changed = sorted(p for p in before if after[p] != before[p])  # not the crops' .json, not the grids
    assert changed == sorted(sidecar_of(t) for t in g["full_mix"][:1] + g["crops"])
    for rel in g["stem"] + g["crop_stem"] + g["skipped"]:
        assert not (root / sidecar_of(rel)).exists(), rel
    t1 = json.loads((root / T1 / f"{T1}.INFO").read_text(encoding="utf-8"))
    assert {k: t1[k] for k in THEIRS} == THEIRS and set(DEFAULT_KEYS) <= set(t1)
    assert json.loads((root / T2 / f"{T2}.INFO").read_text(encoding="utf-8"))["music_flamingo_model"]
    for i, rel in enumerate(g["crops"]):
        info = json.loads((root / sidecar_of(rel)).read_text(encoding="utf-8"))
        assert info["position"] == (i % 2) / 2 and set(DEFAULT_KEYS) <= set(info)  # their key kept, ours added
        assert list(info)[0] == "position"
    assert (root / "loose" / "Café – ☃ demo.INFO").is_file()

    again, described = run(analyzer, root)
    assert described == []
    assert again.skipped_complete == again.total == len(g["full_mix"] + g["crops"] + g["loose"] + g["done"])


def dry_counts(out: str) -> dict[str, int]:
    """The table's rows -> counts."""
    rows = {}
    for line in out.splitlines():
        head, _, n = line.rpartition(" ")
        if n.isdigit() and "\t" not in line:
            rows[head.strip()] = int(n)
    return rows


def test_dry_run_writes_nothing_loads_no_model_and_its_counts_are_the_runs(analyzer, layout, tmp_path):
    root, g = layout
    (root / "loose" / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 4000)  # fails in the run
    before = snapshot(root)
    # no --model-path and an empty model dir: a dry run must not need (or download) any model
    r = cli(str(root), "--batch", "--dry-run", "--model-dir", str(tmp_path / "no-models"), "--offline")
    assert r.returncode == 0, r.stderr
    assert snapshot(root) == before and not (root / ".music-flamingo").exists()
    rows = dry_counts(r.stdout)
    todo = len(g["full_mix"] + g["crops"] + g["loose"]) + 1
    assert rows == {
        "done": 1,
        "pending": todo,
        "failed last time": 0,
        "locked": 0,
        "sidecar unreadable": 0,
        "excluded: stem": len(g["stem"]),
        "excluded: crop stem": len(g["crop_stem"]),
        "excluded: skip folder": 2,
    }
    lines = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
    assert sorted(p for row, p, _ in lines if row == "pending") == sorted(
        g["full_mix"] + g["crops"] + g["loose"] + ["loose/broken.flac"]
    )
    assert any(row == "excluded: crop stem" and p == g["crop_stem"][0] and "crop" in why for row, p, why in lines)
    seconds = sum([5, 4, 4, 3, 3, 4, 3])  # what build_layout wrote for the tracks to describe
    assert r.stdout.strip().splitlines()[-1] == (
        f"to describe: {todo} tracks, {seconds / 3600:.2f} h of audio (1 of unknown length)"
    )
    from music_flamingo.batch import dry_run

    report = dry_run(root, DEFAULT_KEYS)
    assert report.seconds_to_describe == pytest.approx(seconds, abs=0.01) and report.unknown_duration == 1
    assert {k: v for k, v in report.counts.items() if v or not k.startswith("excluded")} == rows

    s, described = run(analyzer, root)
    assert s.done + s.failed == rows["pending"] and s.failed == 1
    assert s.skipped_complete == rows["done"]
    assert s.excluded == {
        "stem": rows["excluded: stem"],
        "crop stem": rows["excluded: crop stem"],
        "skip folder": rows["excluded: skip folder"],
    }

    r2 = cli(str(root), "--batch", "--dry-run")
    assert dry_counts(r2.stdout)["failed last time"] == 1 and dry_counts(r2.stdout)["pending"] == 0
    assert "failed last time\tloose/broken.flac\t" in r2.stdout


def test_from_list_on_stdin_takes_the_listed_tracks_only(tiny, small_prompts, layout, tmp_path):
    root, g = layout
    listed = [g["crops"][0], str(root / g["loose"][1]), g["stem"][0], "loose/missing.flac"]
    manifest = tmp_path / "m.jsonl"
    r = cli(
        str(root),
        "--batch",
        "--from-list",
        "-",
        *model_args(tiny, small_prompts),
        "--prompts",
        "full",
        "--no-progress",
        "--jsonl",
        str(manifest),
        stdin="\n".join(listed) + "\n",
    )
    assert r.returncode == 0, r.stderr
    done = [Path(json.loads(line)["path"]).relative_to(root).as_posix() for line in manifest.read_text().splitlines()]
    assert sorted(done) == sorted([g["crops"][0], g["loose"][1]])
    assert not (root / sidecar_of(g["stem"][0])).exists()
    assert "1 stem" in r.stderr and "1 listed, not found" in r.stderr  # the summary says what it left out


def test_only_stems_and_globs_select_what_they_say(analyzer, layout):
    from music_flamingo.discovery import Selection

    root, g = layout
    s, described = run(analyzer, root, selection=Selection(only={"full_mix"}, stems=True, include=(f"{T2}/*",)))
    assert sorted(described) == sorted([g["full_mix"][1]] + [r for r in g["stem"] if r.startswith(T2)])
    for rel in described:
        assert set(DEFAULT_KEYS) <= set(json.loads((root / sidecar_of(rel)).read_text(encoding="utf-8")))

    s, described = run(
        analyzer, root, selection=Selection(stems=True, include=("*_0_*", "loose"), exclude=("training crops", "*.ogg"))
    )
    assert sorted(described) == sorted(
        [r for r in g["crop_stem"] if r.startswith(f"{T1}/crops/{T1}_0_")] + ["loose/intro.flac"]
    )
    s, described = run(analyzer, root, selection=Selection(only={"crops"}, exclude=("*_1.*",)))
    assert sorted(described) == sorted(r for r in g["crops"] if r.endswith("_0.flac"))
    assert json.loads((root / T1 / f"{T1}.INFO").read_text(encoding="utf-8")) == THEIRS  # never selected


def test_retry_failed_takes_only_the_tracks_that_failed(analyzer, layout, track):
    from music_flamingo.discovery import Selection

    root, g = layout
    broken = root / "loose" / "broken.flac"
    broken.write_bytes(b"\x00" * 4000)
    (root / sidecar_of(g["crops"][0])).write_text('{"position": 0.0, ')  # a damaged sidecar: counted, untouched
    first, _ = run(analyzer, root, selection=Selection(only={"loose", "crops"}))
    assert first.failed == 2
    write_clip(broken, track, 2, 30)  # repaired
    (root / sidecar_of(g["crops"][0])).write_text('{"position": 0.0}')
    s, described = run(analyzer, root, retry_failed=True)
    assert sorted(described) == sorted(["loose/broken.flac", g["crops"][0]]) and s.failed == 0
    assert s.total == 2  # nothing else was looked at, though the full mixes are still pending
    assert json.loads((root / sidecar_of(g["crops"][0])).read_text())["position"] == 0.0


def test_locked_and_damaged_tracks_count_the_same_in_the_dry_run_and_the_run(analyzer, layout):
    from filelock import FileLock

    from music_flamingo.batch import _lock_path, dry_run, state_dir_of

    root, g = layout
    (root / sidecar_of(g["loose"][0])).write_text("[1, 2")  # damaged: never overwritten
    held = root / g["full_mix"][0]
    (state_dir_of(root) / "locks").mkdir(parents=True)
    lock = FileLock(str(_lock_path(state_dir_of(root), held)))
    lock.acquire()  # "another process" is describing this track
    try:
        report = dry_run(root, DEFAULT_KEYS)
        assert [report.counts[k] for k in ("locked", "sidecar unreadable", "pending")] == [1, 1, 5]
        assert [p.path for p in report.plan if p.status == "locked"] == [held]
        s, described = run(analyzer, root)
    finally:
        lock.release()
    assert (s.skipped_locked, s.failed, s.done) == (1, 1, 5)
    assert held.relative_to(root).as_posix() not in described
    assert (root / sidecar_of(g["loose"][0])).read_text() == "[1, 2"


def test_cli_selection_options_and_their_usage_errors(layout, tmp_path):
    root, g = layout

    def pending(*args: str) -> list[str]:
        r = cli(str(root), "--batch", "--dry-run", *args)
        assert r.returncode == 0, r.stderr
        return sorted(line.split("\t")[1] for line in r.stdout.splitlines() if line.startswith("pending\t"))

    assert pending("--only", "crops,loose", "--only", "full_mix") == sorted(g["full_mix"] + g["crops"] + g["loose"])
    assert pending("--only", "full_mix", "--stems", "--include", f"{T1}/*", "--exclude", "*[ks].flac") == sorted(
        [g["full_mix"][0]] + [f"{T1}/{s}.flac" for s in ("other", "snare", "percussion")]
    )
    assert pending("--retry-failed") == []
    for bad in (
        ["--only", "stems"],
        ["--from-list", str(tmp_path / "none.txt")],
        ["--from-list", "-", "--retry-failed"],
    ):
        r = cli(str(root), "--batch", "--dry-run", *bad)
        assert r.returncode == 2 and "error" in r.stderr, bad
    r = cli(str(root / g["loose"][0]), "--stems")
    assert r.returncode == 2 and "only with --batch" in r.stderr
