"""Issue 21's data-safety, file-argument and traceback defects, each through the command line where a user meets it:
nothing written or deleted outside the dataset (resolved paths), only our own files rewritten or deleted, one path
one role, every file read a regular file with a bound, unreadable records skipped, no traceback.

Every dataset run here is wrapped in :func:`conftest.nothing_changes_outside` (a snapshot of the dataset's parent).
The full disk is real: ``RLIMIT_FSIZE`` in the child (with SIGXFSZ ignored a write past it fails with EFBIG, as on
a full disk), which works unprivileged and in CI's container.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import batch_cli, model_args, nothing_changes_outside, run_cli, write_clip

ONE_PROMPT = "defaults: {temperature: 0}\ndefault_set: [full]\nprompts:\n  full: {max_tokens: 3}\n"


@pytest.fixture
def prompts(tmp_path) -> Path:
    p = tmp_path / "one.yaml"
    p.write_text(ONE_PROMPT)
    return p


def run_batch_cli(root: Path, tiny, prompts: Path, *args: str, allow=(), **kw) -> subprocess.CompletedProcess:
    """The batch command line in a child, checked to change nothing outside ``root`` but ``allow``."""
    with nothing_changes_outside(root, allow=allow):
        return subprocess.run(
            batch_cli(root, tiny, *args, "--no-progress", prompts=prompts),
            capture_output=True,
            text=True,
            **{"timeout": 600, **kw},
        )


def no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


# --- 1. writes outside the dataset ---------------------------------------------------------------------------------


def test_a_sidecar_symlinked_out_of_the_dataset_is_a_counted_failure_and_not_written(tiny, track, tmp_path, prompts):
    root, outside = tmp_path / "data", tmp_path / "outside"
    write_clip(root / "a.wav", track, 2, 20)
    write_clip(root / "b.wav", track, 2, 30)
    outside.mkdir()
    victim = outside / "victim.json"
    victim.write_text('{"precious": 1}\n')
    (root / "b.INFO").symlink_to(victim)
    p = run_batch_cli(root, tiny, prompts)
    no_traceback(p)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "b.INFO" in p.stderr and "outside the dataset" in p.stderr
    assert victim.read_text() == '{"precious": 1}\n' and sorted(os.listdir(outside)) == ["victim.json"]
    assert "music_flamingo_full" in json.loads((root / "a.INFO").read_text())
    (rec,) = [json.loads(x) for x in (root / ".music-flamingo" / "failures.jsonl").read_text().splitlines()]
    assert rec["path"] == str(root / "b.wav") and "b.INFO" in rec["message"]
    dry = run_cli(str(root), "--batch", "--dry-run", "--prompts-file", str(prompts))
    assert "sidecar unreadable\tb.wav" in dry.stdout and "outside the dataset" in dry.stdout


def test_from_list_through_a_symlinked_folder_writes_nothing_outside(tiny, track, tmp_path, prompts):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_clip(root / "a.wav", track, 2, 20)
    write_clip(elsewhere / "x.wav", track, 2, 30)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    listing = tmp_path / "list.txt"
    listing.write_text("linked/x.wav\na.wav\n")
    p = run_batch_cli(root, tiny, prompts, "--from-list", str(listing))
    no_traceback(p)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "1 done" in p.stderr and "1 listed, outside the root" in p.stderr
    assert sorted(os.listdir(elsewhere)) == ["x.wav"] and (root / "a.INFO").is_file()


# --- 2. a user's file deleted ---------------------------------------------------------------------------------------


def test_failures_naming_a_users_file_or_the_manifest_is_refused_and_the_file_kept(tiny, track, tmp_path, prompts):
    root = tmp_path / "data"
    write_clip(root / "a.wav", track, 2, 20)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nline two\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "/old/track.flac", "music_flamingo_full": "from last week"}\n')
    before = (notes.read_bytes(), manifest.read_bytes())
    refused = [
        run_batch_cli(root, tiny, prompts, "--failures", str(notes)),
        run_batch_cli(root, tiny, prompts, "--failures", str(manifest), "--jsonl", str(manifest)),
        run_batch_cli(root, tiny, prompts, "--failures", str(manifest)),  # a manifest is no failures file either
        run_batch_cli(root, tiny, prompts, "--jsonl", str(prompts)),  # an input as an output
    ]
    for p in refused:
        no_traceback(p)
        assert p.returncode == 2, p.stderr[-2000:]
    assert "not a failures file" in refused[0].stderr and "two roles" in refused[1].stderr
    assert "two roles" in refused[3].stderr
    assert (notes.read_bytes(), manifest.read_bytes()) == before and not (root / "a.INFO").exists()


def test_a_failures_file_with_foreign_lines_is_never_rewritten_through_the_api(tmp_path):
    from music_flamingo.failures import FailureLog

    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    log = FailureLog(notes)
    log.start()
    log.record(audio, ValueError("no"))
    log.clear(audio)
    assert notes.read_text() == "my notes\n" and log.unwritten == 1
    assert sorted(os.listdir(tmp_path)) == ["a.wav", "notes.txt"]  # nor a lock file left beside it


# --- 3. a torn manifest; the failures file on a full disk -----------------------------------------------------------


def _full_disk(limit: int):
    def limit_file_size() -> None:  # in the child: a write past `limit` bytes fails with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_file_size


def test_a_full_disk_leaves_no_half_line_and_the_summary_tells_the_truth(tiny, track, tmp_path, prompts):
    root = tmp_path / "data"
    write_clip(root / "a.wav", track, 2, 20)
    (root / "bad.wav").write_bytes(b"")  # fails to decode: a failure to record
    old = json.dumps({"path": str(tmp_path / "old.flac"), "music_flamingo_full": "x" * 200}) + "\n"
    manifest, failures = tmp_path / "m.jsonl", tmp_path / "failures.jsonl"
    manifest.write_text(old * 300)  # 60 KB: the disk is full right there
    rec = {"path": str(prompts), "error": "ValueError", "message": "y" * 200, "time": "t", "host": "h", "pid": 1}
    failures.write_text(json.dumps(rec) + "\n")
    failures.write_text(failures.read_text() * 300)
    before = (manifest.read_bytes(), failures.read_bytes())
    limit = len(before[0]) + 16  # the manifest can take 16 more bytes; the (larger) failures file none
    args = ("--jsonl", str(manifest), "--failures", str(failures))
    p = run_batch_cli(root, tiny, prompts, *args, allow=[manifest, failures], preexec_fn=_full_disk(limit))
    no_traceback(p)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "failed of 2 tracks" in p.stderr and "manifest" in p.stderr and "File too large" in p.stderr
    assert (manifest.read_bytes(), failures.read_bytes()) == before  # no half line in either
    assert "could not be listed in the failures file" in p.stderr and f"failures: {failures}" not in p.stderr

    with open(manifest, "a") as f:
        f.write('{"path": "/killed/in/the/middle", "mus')  # a writer killed half-way through a line
    p = run_batch_cli(root, tiny, prompts, *args, "--overwrite", allow=[manifest, failures])
    no_traceback(p)
    lines = manifest.read_text().splitlines()
    assert lines[300] == '{"path": "/killed/in/the/middle", "mus'  # a line of its own, nothing glued to it
    assert [json.loads(x)["path"] for x in lines[301:]] == [str(root / "a.wav")]


# --- 5, 10. failures files that are FIFOs, folders, or hold unreadable records ---------------------------------------


def test_failures_files_that_are_fifos_folders_or_hold_bad_records_never_stop_a_run(tiny, track, tmp_path, prompts):
    root = tmp_path / "data"
    write_clip(root / "a.wav", track, 2, 20)
    state = root / ".music-flamingo"
    state.mkdir()
    default = state / "failures.jsonl"
    os.mkfifo(default)
    p = run_batch_cli(root, tiny, prompts, "--overwrite", timeout=300)  # once hung for ever (a plain open())
    no_traceback(p)
    assert p.returncode == 0 and "1 done" in p.stderr and "FIFO" in p.stderr, p.stderr[-2000:]
    fifo = tmp_path / "f.fifo"
    os.mkfifo(fifo)
    p = run_cli(str(root), "--batch", "--failures", str(fifo), *model_args(tiny, prompts))
    assert p.returncode == 2 and "FIFO" in p.stderr, p.stderr[-2000:]

    default.unlink()
    default.mkdir()  # a folder named like the failures file
    p = run_batch_cli(root, tiny, prompts, "--overwrite")
    no_traceback(p)
    assert p.returncode == 0 and "1 done" in p.stderr and "directory" in p.stderr, p.stderr[-2000:]
    default.rmdir()
    bad = [
        json.dumps({"path": 5, "error": "X"}),
        json.dumps({"path": ["a"], "error": "X"}),
        "[" * 100_000 + "]" * 100_000,  # nested too deep for json
        "\xff\xfe garbage",
        json.dumps({"path": str(root / "a.wav"), "error": "ValueError", "message": "m"}),
    ]
    default.write_text("\n".join(bad) + "\n", encoding="utf-8", errors="surrogateescape")
    p = run_batch_cli(root, tiny, prompts, "--overwrite")
    no_traceback(p)
    assert p.returncode == 0 and "1 done" in p.stderr and "not a failure record" in p.stderr, p.stderr[-2000:]
    assert not default.exists()  # our own file: its unreadable lines dropped with the cleared record


# --- 7. prompts: an alias bomb, a 10 MB prompt ----------------------------------------------------------------------


def test_a_yaml_alias_bomb_and_huge_prompts_are_refused_before_the_model_loads(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb.write_text("\n".join(levels) + "\nprompts: {full: {text: *a9}}\n")
    assert bomb.stat().st_size < 1100
    big = tmp_path / "big.yaml"
    big.write_text("prompts:\n  full:\n    text: '" + "describe " * 20_000 + "'\n")  # 180 KB of text
    huge = tmp_path / "huge.yaml"
    huge.write_text("prompts:\n  full:\n    text: '" + "x" * (10 << 20) + "'\n")  # 10 MB
    missing = ["--model-path", str(tmp_path / "none.gguf"), "--mmproj", str(tmp_path / "none-mmproj.gguf")]
    audio = write_clip(tmp_path / "a.wav", __import__("numpy").zeros(16000 * 2, "float32"), 1, 0)
    for args in (["--prompts-file", str(bomb)], ["--prompts-file", str(big)], ["--prompts-file", str(huge)]):
        t0 = time.monotonic()
        p = run_cli(str(audio), *args, *missing)
        assert time.monotonic() - t0 < 30
        assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr) < 2000, p.stderr[-2000:]
        assert "none.gguf" not in p.stderr, p.stderr  # refused before the (missing) model is looked for
    p = run_cli(str(audio), "--prompt", "why " * 25_000, *missing)  # 100 KB: under the argv limit
    assert p.returncode == 2 and "characters long" in p.stderr and len(p.stderr) < 2000, p.stderr[-2000:]


# --- 8. --from-list with unusable lines, /dev/zero ------------------------------------------------------------------


def test_from_list_skips_unusable_lines_and_refuses_endless_files(tiny, track, tmp_path, prompts):
    root = tmp_path / "data"
    write_clip(root / "a.wav", track, 2, 20)
    listing = tmp_path / "list.txt"
    listing.write_bytes(
        b"n" * 300 + b".wav\n" + b"\x00\xff\xfe\x01garbage\n" + b"a.wav\n" + b"d/" + b"m" * 5000 + b"\n"
    )
    p = run_batch_cli(root, tiny, prompts, "--from-list", str(listing))
    no_traceback(p)
    assert p.returncode == 0 and "1 done" in p.stderr, p.stderr[-2000:]
    assert "3 listed, not a usable path" in p.stderr
    dry = run_cli(str(root), "--batch", "--dry-run", "--from-list", str(listing))
    assert dry.returncode == 0 and "excluded: listed, not a usable path" in dry.stdout, dry.stderr
    for source in ("/dev/zero", str(tmp_path)):
        p = run_cli(str(root), "--batch", "--dry-run", "--from-list", source)
        assert p.returncode == 2 and "Traceback" not in p.stderr and "not a regular file" in p.stderr, p.stderr


# --- 9. a symlink loop among the tracks -------------------------------------------------------------------------------


def test_a_symlink_loop_is_a_failed_track_and_the_others_are_described(tiny, track, tmp_path, prompts):
    root = tmp_path / "data"
    write_clip(root / "a.wav", track, 2, 20)
    write_clip(root / "z.wav", track, 2, 30)
    (root / "l1.flac").symlink_to("l2.flac")
    (root / "l2.flac").symlink_to("l1.flac")
    dry = run_cli(str(root), "--batch", "--dry-run")
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr
    assert "pending\tl1.flac" in dry.stdout and "pending\tz.wav" in dry.stdout
    p = run_batch_cli(root, tiny, prompts)
    no_traceback(p)
    assert p.returncode == 1 and "2 done" in p.stderr and "2 failed of 4 tracks" in p.stderr, p.stderr[-2000:]
    assert (root / "a.INFO").is_file() and (root / "z.INFO").is_file()


# --- 11. a reader that goes away; single file; Ctrl-C twice -----------------------------------------------------------


def test_dry_run_into_a_reader_that_stops_exits_quietly(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "full_mix.wav").write_bytes(b"")
    for i in range(3000):  # ~200 KB of listing: more than a pipe holds, so the writer meets the closed pipe
        (root / f"take {i}.wav").write_bytes(b"")
    proc = subprocess.Popen(
        [sys.executable, "-m", "music_flamingo", str(root), "--batch", "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_single_file_prints_its_descriptions_even_when_the_sidecar_cannot_be_written(tiny, track, tmp_path, prompts):
    folder = tmp_path / "album"
    audio = write_clip(folder / "a.wav", track, 2, 20)
    (folder / "a.INFO").write_text("{not json")  # the write fails after the work, as in a read-only folder
    with nothing_changes_outside(folder):
        p = run_cli(str(audio), *model_args(tiny, prompts))
    assert p.returncode == 1 and "SidecarError" in p.stderr, p.stderr[-2000:]
    assert p.stdout.startswith("music_flamingo_full:\n") and len(p.stdout.strip()) > len("music_flamingo_full:")
    assert (folder / "a.INFO").read_text() == "{not json"


def test_ctrl_c_pressed_again_and_again_still_exits_130(tiny, track, tmp_path):
    slow = tmp_path / "slow.yaml"
    slow.write_text("defaults: {temperature: 0}\ndefault_set: [full]\nprompts:\n  full: {max_tokens: 200}\n")
    root = tmp_path / "data"
    for i in range(4):
        write_clip(root / f"t{i}.wav", track, 3, 20 + 5 * i)
    manifest = tmp_path / "m.jsonl"
    proc = subprocess.Popen(
        batch_cli(root, tiny, "--jsonl", str(manifest), "--tracks-in-flight", "1", prompts=slow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (manifest.exists() and manifest.stat().st_size) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    for _ in range(200):  # a user hammering Ctrl-C while the first one's stop is under way
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-6000:])


def test_max_duration_minimum_is_the_engines_least_audio_and_the_readme_says_so(tmp_path):
    from music_flamingo.validation import MIN_AUDIO_SECONDS

    root = tmp_path / "data"
    root.mkdir()
    assert run_cli(str(root), "--batch", "--dry-run", "--max-duration", "0.05").returncode == 0
    refused = run_cli(str(root), "--batch", "--dry-run", "--max-duration", "0.02")
    assert refused.returncode == 2 and str(MIN_AUDIO_SECONDS) in refused.stderr
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"`--max-duration` under {MIN_AUDIO_SECONDS:.4f} s" in readme and "under 0.1," not in readme


@pytest.mark.parametrize("option", ["--from-list", "--failures", "--jsonl", "--prompts-file"])
def test_file_arguments_that_are_not_regular_files_are_usage_errors(tmp_path, option):
    """The bad-input corpus for the command line's file arguments: a FIFO (once a hang), a folder, a device
    (``/dev/zero``: once a MemoryError), and for inputs a file over its bound — each exit 2 naming it, at once."""
    root = tmp_path / "data"
    root.mkdir()
    fifo, folder = tmp_path / "fifo", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    cases = {fifo: "FIFO", folder: "directory", Path("/dev/zero"): "device"}
    if option in ("--from-list", "--prompts-file"):
        big = tmp_path / "big"
        with open(big, "wb") as f:
            f.truncate((256 << 20) + 1 if option == "--from-list" else (1 << 20) + 1)  # sparse: costs no disk
        cases[big] = "bytes"
    for path, words in cases.items():
        t0 = time.monotonic()
        p = run_cli(str(root), "--batch", "--dry-run", option, str(path))
        assert time.monotonic() - t0 < 30
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, (option, path, p.stderr)


# --- fuzzing the readers of the command line's files (no model: hundreds of cases a second) ---------------------------

FILE_FUZZ = int(os.environ.get("MUSIC_FLAMINGO_FUZZ_FILES", "150"))


@pytest.fixture(scope="module")
def fuzz_tree(tmp_path_factory):
    """A small dataset with a symlinked folder out of it, a file symlink loop and a symlinked sidecar out."""
    base = tmp_path_factory.mktemp("fuzz")
    root, out = base / "data", base / "out"
    (root / "sub").mkdir(parents=True)
    out.mkdir()
    for p in (root / "a.wav", root / "sub" / "b_1.flac", out / "x.wav", out / "v.INFO"):
        p.write_bytes(b"")
    (root / "linked").symlink_to(out, target_is_directory=True)
    (root / "l1.flac").symlink_to("l2.flac")
    (root / "l2.flac").symlink_to("l1.flac")
    (root / "c.wav").write_bytes(b"")
    (root / "c.INFO").symlink_to(out / "v.INFO")
    return root


def _fuzz_settings():
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=FILE_FUZZ,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


_NAMES = [b"a.wav", b"sub/b_1.flac", b"linked/x.wav", b"l1.flac", b"../out/x.wav", b"c.wav", b"\x00", b"n" * 300]


def test_fuzzed_lists_never_raise_and_never_select_outside_the_dataset(fuzz_tree, tmp_path):
    from hypothesis import given
    from hypothesis import strategies as st

    from music_flamingo.batch import SIDECAR_ERROR, plan_batch
    from music_flamingo.discovery import Selection, read_path_list
    from music_flamingo.fsutil import inside

    parts = st.one_of(st.sampled_from(_NAMES), st.binary(max_size=40))
    listing = tmp_path / "list"

    @_fuzz_settings()
    @given(st.lists(st.lists(parts, max_size=4).map(b"/".join), max_size=8).map(b"\n".join))
    def check(data: bytes) -> None:
        listing.write_bytes(data)
        plan = plan_batch(fuzz_tree, ["k"], Selection(paths=read_path_list(listing)), check_locks=True)
        for item in plan:
            if item.track.selected and item.status != SIDECAR_ERROR:
                assert inside(item.path.parent, fuzz_tree) and inside(item.path.parent / "x.INFO", fuzz_tree)

    check()


def test_fuzzed_failures_files_never_raise_and_are_never_rewritten_unless_ours(fuzz_tree, tmp_path):
    from hypothesis import given
    from hypothesis import strategies as st

    from music_flamingo.batch import read_failed_tracks
    from music_flamingo.failures import FailureLog

    record = st.fixed_dictionaries(
        {"path": st.one_of(st.text(max_size=20), st.integers(), st.none(), st.just(str(fuzz_tree / "a.wav")))},
        optional={"error": st.one_of(st.text(max_size=5), st.integers())},
    ).map(lambda d: json.dumps(d).encode())
    line = st.one_of(record, st.binary(max_size=30), st.just(b"[" * 5000))
    user_file = tmp_path / "notes.jsonl"

    @_fuzz_settings()
    @given(st.lists(line, max_size=6).map(b"\n".join))
    def check(data: bytes) -> None:
        user_file.write_bytes(data)
        read_failed_tracks(user_file)
        log = FailureLog(user_file)
        log.start()
        log.record(fuzz_tree / "a.wav", ValueError("x"))
        log.clear(fuzz_tree / "a.wav")
        log.close()
        after = user_file.read_bytes() if user_file.exists() else b""
        if log.disabled:  # not ours: byte for byte
            assert after == data
        assert not (tmp_path / "notes.jsonl.lock").exists()

    check()


def test_fuzzed_prompts_files_raise_only_prompt_config_errors(tmp_path):
    from hypothesis import given
    from hypothesis import strategies as st

    from music_flamingo.errors import PromptConfigError
    from music_flamingo.prompts import load_catalogue

    f = tmp_path / "p.yaml"
    pieces = st.sampled_from(["prompts:", "  full:", "    text: ", "&a ", "*a ", "[", "]", "{", "}", ", ", "\n", "x"])

    @_fuzz_settings()
    @given(st.one_of(st.lists(pieces, max_size=30).map("".join), st.text(max_size=200)))
    def check(text: str) -> None:
        f.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_catalogue([f])
        except PromptConfigError as e:
            assert len(str(e)) < 2000

    check()
