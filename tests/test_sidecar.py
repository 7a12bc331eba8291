"""Sidecar files hold weeks of other tools' results: updates must keep them exactly, refuse damaged files without
touching them, survive failures mid-write and concurrent writers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from music_flamingo import sidecar as sc
from music_flamingo.errors import MusicFlamingoError, SidecarError
from music_flamingo.sidecar import has_keys, read_sidecar, sidecar_path, update_sidecar

PYTHON_DIR = Path(sc.__file__).resolve().parents[1]


def leftovers(folder: Path, sidecar: Path) -> list[str]:
    """Files in ``folder`` besides the sidecar (temporary files, and lock files, which remove themselves, would show
    up here)."""
    return sorted(p.name for p in folder.iterdir() if p.name != sidecar.name)


# --- path rules -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audio, expected",
    [
        ("/data/Artist - Song/full_mix.flac", "/data/Artist - Song/Artist - Song.INFO"),
        ("/data/Artist - Song/full_mix.mp3", "/data/Artist - Song/Artist - Song.INFO"),
        (
            "/data/Björk, Sigur Rós – Ágætis.byrjun (1999)/full_mix.wav",
            "/data/Björk, Sigur Rós – Ágætis.byrjun (1999)/Björk, Sigur Rós – Ágætis.byrjun (1999).INFO",
        ),
        ("/data/v1.2.3/full_mix.opus", "/data/v1.2.3/v1.2.3.INFO"),
        ("/data/loose/song.flac", "/data/loose/song.INFO"),
        ("/data/loose/song_crop_03.flac", "/data/loose/song_crop_03.INFO"),
        ("/data/Artist - Song/full_mix_crop_03.flac", "/data/Artist - Song/full_mix_crop_03.INFO"),
        ("/data/loose/a.b.c, d.flac", "/data/loose/a.b.c, d.INFO"),
        ("/data/loose/日本語の曲 🎵.ogg", "/data/loose/日本語の曲 🎵.INFO"),
        ("/data/loose/full_mix.backup.flac", "/data/loose/full_mix.backup.INFO"),
        ("/data/loose/no_suffix", "/data/loose/no_suffix.INFO"),
    ],
)
def test_sidecar_path_rules(audio: str, expected: str) -> None:
    assert sidecar_path(Path(audio)) == Path(expected)
    assert sidecar_path(audio) == Path(expected)  # str accepted too


def test_sidecar_path_relative_full_mix_uses_real_folder_name(tmp_path: Path, monkeypatch) -> None:
    track = tmp_path / "My Track, 2024"
    (track / "sub").mkdir(parents=True)
    monkeypatch.chdir(track)
    assert sidecar_path(Path("full_mix.flac")) == Path("My Track, 2024.INFO")
    monkeypatch.chdir(track / "sub")
    assert sidecar_path(Path("../full_mix.flac")) == Path("../My Track, 2024.INFO")


# --- reading -----------------------------------------------------------------------------------------------------


def test_missing_sidecar_reads_empty(tmp_path: Path) -> None:
    p = tmp_path / "x.INFO"
    assert read_sidecar(p) == {}
    assert has_keys(p, []) and not has_keys(p, ["a"])
    assert update_sidecar(p, {}) == {} and not p.exists()  # an empty update creates nothing


def test_has_keys(tmp_path: Path) -> None:
    p = tmp_path / "x.INFO"
    p.write_text('{"a": 1, "b": null}\n')
    assert has_keys(p, ["a", "b"]) and has_keys(p, "a") and not has_keys(p, ["a", "c"])


def test_update_creates_sidecar(tmp_path: Path) -> None:
    p = tmp_path / "new.INFO"
    assert update_sidecar(p, {"music_flamingo": {"caption": "Träumerei", "n": 1}}) == {
        "music_flamingo": {"caption": "Träumerei", "n": 1}
    }
    assert (
        p.read_text(encoding="utf-8")
        == json.dumps({"music_flamingo": {"caption": "Träumerei", "n": 1}}, indent=2, ensure_ascii=False) + "\n"
    )
    assert leftovers(tmp_path, p) == []


# --- merging keeps other tools' data -----------------------------------------------------------------------------

# Written as json.dump(indent=2, ensure_ascii=False) would, except for number spellings a float round trip changes
# (1e-7 -> 1e-07, 1.50 -> 1.5, 3.14159265358979323846 -> 3.141592653589793, 1E400 -> Infinity) and an escaped string.
ORIGINAL = """\
{
  "bpm": 120.50,
  "tiny": 1e-7,
  "pi": 3.14159265358979323846,
  "huge_float": 1E400,
  "big_int": 123456789012345678901234567890,
  "neg_zero": -0.0,
  "caption": "old caption",
  "nested": {
    "genre": [
      "électro",
      "日本",
      "🎵"
    ],
    "deep": {
      "x": null,
      "y": true,
      "z": [
        1.0,
        2e10
      ]
    }
  },
  "escaped": "caf\\u00e9 \\/ \\"quoted\\"",
  "empty_obj": {},
  "empty_list": []
}
"""


def test_merge_keeps_other_keys_byte_for_byte(tmp_path: Path) -> None:
    p = tmp_path / "track.INFO"
    p.write_bytes(ORIGINAL.encode("utf-8"))
    merged = update_sidecar(p, {"caption": "new caption", "music_flamingo": {"model": "Q6_K", "score": 0.25}})
    expected = ORIGINAL.replace('"caption": "old caption"', '"caption": "new caption"').replace(
        '  "empty_list": []\n}\n',
        '  "empty_list": [],\n  "music_flamingo": {\n    "model": "Q6_K",\n    "score": 0.25\n  }\n}\n',
    )
    assert p.read_text(encoding="utf-8") == expected
    assert list(merged) == [
        "bpm",
        "tiny",
        "pi",
        "huge_float",
        "big_int",
        "neg_zero",
        "caption",
        "nested",
        "escaped",
        "empty_obj",
        "empty_list",
        "music_flamingo",
    ]
    assert merged["big_int"] == 123456789012345678901234567890 and merged["tiny"] == 1e-7
    assert merged["escaped"] == 'café / "quoted"'
    assert read_sidecar(p) == merged


def test_merge_of_json_dump_output_equals_json_dump_of_merge(tmp_path: Path) -> None:
    old = {"z": 1, "a": {"k": [1, 2.5, "ü"], "n": None}, "m": "x" * 3, "big": 2**80, "f": 0.1}
    p = tmp_path / "t.INFO"
    p.write_text(json.dumps(old, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    update_sidecar(p, {"a": [], "new": {"deep": {"x": "ÿ"}}})
    assert (
        p.read_text(encoding="utf-8")
        == json.dumps({**old, "a": [], "new": {"deep": {"x": "ÿ"}}}, indent=2, ensure_ascii=False) + "\n"
    )


def test_merge_keeps_values_of_foreign_formatting_verbatim(tmp_path: Path) -> None:
    """A compact or 4-space file from another tool: its values are copied as they are, only the top level is
    laid out again."""
    p = tmp_path / "t.INFO"
    p.write_bytes('\ufeff{"a":1.10,"b":{"x":[1,2],  "y":"ü"}}'.encode("utf-8"))
    update_sidecar(p, {"c": True})
    assert p.read_text(encoding="utf-8") == '{\n  "a": 1.10,\n  "b": {"x":[1,2],  "y":"ü"},\n  "c": true\n}\n'


def test_repeated_updates_are_stable(tmp_path: Path) -> None:
    p = tmp_path / "t.INFO"
    p.write_bytes(ORIGINAL.encode("utf-8"))
    update_sidecar(p, {"caption": "same"})
    first = p.read_bytes()
    mtime = p.stat().st_mtime_ns
    time.sleep(0.01)
    update_sidecar(p, {"caption": "same"})
    assert p.read_bytes() == first and p.stat().st_mtime_ns == mtime  # unchanged content is not rewritten


# --- damaged sidecars are refused and left alone -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"a": 1, "b": ',  # truncated
        b"{not json}",
        b"",  # empty file
        b"[1, 2, 3]\n",  # JSON, but an array
        b'"just a string"',
        b"null",
        b'{"a": 1, "a": 2}',  # duplicate key: a rewrite would silently drop one value
        b'{"a": 1} {"b": 2}',  # trailing data
        b'{"a": "\xff\xfe"}',  # not UTF-8
    ],
    ids=["truncated", "garbage", "empty", "array", "string", "null", "duplicate", "trailing", "not-utf8"],
)
def test_invalid_sidecar_raises_and_is_untouched(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.INFO"
    p.write_bytes(content)
    os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    with pytest.raises(SidecarError) as excinfo:
        update_sidecar(p, {"music_flamingo": {"caption": "x"}})
    assert str(p) in str(excinfo.value) and "untouched" in str(excinfo.value)
    assert isinstance(excinfo.value, MusicFlamingoError)
    assert p.read_bytes() == content
    assert p.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert leftovers(tmp_path, p) == []
    with pytest.raises(SidecarError):
        read_sidecar(p)
    with pytest.raises(SidecarError):
        has_keys(p, ["a"])


def test_sidecar_that_is_a_directory_raises(tmp_path: Path) -> None:
    p = tmp_path / "dir.INFO"
    p.mkdir()
    with pytest.raises(SidecarError, match="untouched"):
        read_sidecar(p)
    with pytest.raises(SidecarError, match="untouched"):
        update_sidecar(p, {"a": 1})
    assert p.is_dir() and list(p.iterdir()) == []


# --- failures while writing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{1, 2}, float("nan"), object(), {"k": {3, 4}}], ids=["set", "nan", "object", "nested-set"]
)
def test_unserializable_update_leaves_file_intact(tmp_path: Path, bad: object) -> None:
    p = tmp_path / "t.INFO"
    p.write_bytes(ORIGINAL.encode("utf-8"))
    with pytest.raises(SidecarError, match="untouched"):
        update_sidecar(p, {"caption": "changed", "bad": bad})
    assert p.read_bytes() == ORIGINAL.encode("utf-8")
    assert leftovers(tmp_path, p) == []


def test_non_string_key_rejected(tmp_path: Path) -> None:
    p = tmp_path / "t.INFO"
    p.write_text('{"a": 1}')
    with pytest.raises(SidecarError):
        update_sidecar(p, {1: "x"})  # type: ignore[dict-item]
    assert p.read_text() == '{"a": 1}'


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failure_after_temp_file_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch, step: str) -> None:
    p = tmp_path / "t.INFO"
    p.write_bytes(ORIGINAL.encode("utf-8"))
    seen: list[str] = []

    def boom(*args: object, **kwargs: object) -> None:
        seen.extend(n for n in os.listdir(tmp_path) if n.endswith(".tmp"))  # the temp file existed at this point
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sc.os, step, boom)
    with pytest.raises(SidecarError, match="No space left") as excinfo:
        update_sidecar(p, {"caption": "changed"})
    monkeypatch.undo()
    assert "untouched" in str(excinfo.value)
    assert seen, "the failure was meant to hit while the temporary file existed"
    assert p.read_bytes() == ORIGINAL.encode("utf-8")
    assert leftovers(tmp_path, p) == []


# --- permissions, symlinks ---------------------------------------------------------------------------------------


def test_permissions_are_kept(tmp_path: Path) -> None:
    p = tmp_path / "t.INFO"
    p.write_text('{"a": 1}')
    for mode in (0o640, 0o604, 0o600):
        os.chmod(p, mode)
        update_sidecar(p, {"b": mode})
        assert stat.S_IMODE(p.stat().st_mode) == mode
    assert read_sidecar(p) == {"a": 1, "b": 0o600}


def test_new_sidecar_gets_umask_mode_not_private(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        update_sidecar(tmp_path / "n.INFO", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "n.INFO").stat().st_mode) == 0o640


def test_symlinked_sidecar_updates_target_and_keeps_link(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "real.INFO"
    target.write_text('{"a": 1}')
    link = tmp_path / "link.INFO"
    link.symlink_to(target)
    update_sidecar(link, {"b": 2})
    assert link.is_symlink()
    assert json.loads(target.read_text()) == {"a": 1, "b": 2}


# --- concurrent writers ------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, sys, time
    from music_flamingo.sidecar import update_sidecar
    path, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(20):
        update_sidecar(path, {f"{name}_{i}": {"i": i, "who": name, "text": "é" * 50}})
""")


def test_two_processes_writing_different_keys(tmp_path: Path) -> None:
    p = tmp_path / "shared.INFO"
    p.write_bytes(ORIGINAL.encode("utf-8"))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PYTHON_DIR), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(p), name, str(go)], env=env, stderr=subprocess.PIPE, text=True
        )
        for name in ("alpha", "beta")
    ]
    time.sleep(0.5)  # let both import and reach the start line
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    data = read_sidecar(p)
    assert {f"{n}_{i}" for n in ("alpha", "beta") for i in range(20)} <= set(data)
    assert data["alpha_7"] == {"i": 7, "who": "alpha", "text": "é" * 50}
    text = p.read_text(encoding="utf-8")
    assert text.startswith(ORIGINAL[: ORIGINAL.index('  "empty_list": []')])  # the old entries are untouched
    assert len(data) == 11 + 40
    assert leftovers(tmp_path, p) == ["go"]


def test_threads_writing_different_keys(tmp_path: Path) -> None:
    p = tmp_path / "shared.INFO"
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(10):
                update_sidecar(p, {f"t{t}_{i}": i})
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert read_sidecar(p) == {f"t{t}_{i}": i for t in range(4) for i in range(10)}  # all 40 present
    assert len(read_sidecar(p)) == 40
