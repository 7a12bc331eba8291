"""The product on a tiny model and real music: analyze() API, a dataset tree with organized folders, crops and
other people's sidecars, resume, corrupt sidecars, two processes on one dataset, the CLI and its exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import DEFAULT_KEYS, SR, batch_cli, exact_engine, model_args, write_clip
from conftest import run_cli as cli

META_KEYS = {"music_flamingo_model", "music_flamingo_meta"}

OTHER_TOOL = {
    "bpm": 128.0,
    "key": "F# minor",
    "essentia": {"danceability": 1.234567e-07, "n": 12345678901234},
    "caption_blip": "Ünïcode — kept “as is”",
    "music_flamingo_note": "not ours either",
}


@pytest.fixture
def dataset(tmp_path, track, music_dir) -> Path:
    """Organized folders (full_mix + stems + crops), loose files (flac, real ogg, m4a), existing sidecars."""
    root = tmp_path / "data"
    org = root / "Artist - Song"
    write_clip(org / "full_mix.flac", track, 6, 10)
    write_clip(org / "vocals.flac", track, 6, 10)  # a stem: not a track
    write_clip(org / "crops" / "Artist - Song_0.flac", track, 4, 30)  # a crop (shared/notes/dataset-layout.md)
    (org / "Artist - Song.INFO").write_text(json.dumps(OTHER_TOOL, indent=4, ensure_ascii=False))
    loose = root / "loose"
    write_clip(loose / "intro.flac", track, 5, 50)
    ogg = sorted(music_dir.glob("ogg/*.ogg"), key=lambda p: p.stat().st_size)[0]
    shutil.copy(ogg, loose / ogg.name)
    make_m4a(loose / "phone recording, take 2.m4a", track[SR * 60 : SR * 66])
    (root / "notes.txt").write_text("not audio")
    return root


def make_m4a(path: Path, pcm: np.ndarray) -> Path:
    """AAC in MP4, the format llama-mtmd-cli cannot read, encoded by ffmpeg inside PyAV."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = SR
        for pkt in s.encode(frame):
            c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return path


def test_analyze_returns_the_five_keys_and_prompt_type_returns_text(tiny, clips):
    from music_flamingo import MusicFlamingoGGUF

    with MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False) as mf:
        out = mf.analyze(clips["5s"], sample_rate=SR)
        assert list(out) == DEFAULT_KEYS
        assert all(isinstance(v, str) and v and "\n" not in v for v in out.values())
        assert mf.analyze(clips["5s"], sample_rate=SR) == out  # fixed seed: reproducible
        full = mf.analyze(clips["5s"], sample_rate=SR, prompt_type="full")
        assert isinstance(full, str) and full and "\n" not in full


def test_analyze_accepts_any_array_layout(analyzer, clips):
    import soxr

    pcm = clips["5s"]
    stereo44 = soxr.resample(np.stack([pcm, pcm], axis=1), SR, 44100)
    as_int16 = np.clip(stereo44 * 32767, -32768, 32767).astype(np.int16)
    out = analyzer.analyze(as_int16, sample_rate=44100)
    assert list(out) == DEFAULT_KEYS


def test_long_audio_is_cut_with_a_flag(analyzer, track, caplog):
    from music_flamingo import MusicFlamingoGGUF  # noqa: F401

    analyzer.options.max_duration = 12.0
    try:
        res = analyzer.analyze_track(track[: SR * 20], sample_rate=SR)
    finally:
        analyzer.options.max_duration = None
    assert res.meta["truncated"] is True
    assert res.meta["seconds_analysed"] == pytest.approx(12.0)
    assert res.meta["source_seconds"] == pytest.approx(20.0)
    assert res.stats.audio_chunks == 1
    assert any("analysing its first" in r.getMessage() for r in caplog.records)


def test_batch_writes_sidecars_keeps_other_keys_and_resumes(analyzer, dataset):
    from music_flamingo.batch import BatchOptions, run_batch
    from music_flamingo.discovery import discover_tracks

    tracks = [t.path for t in discover_tracks(dataset) if t.selected]
    names = sorted(p.name for p in tracks)
    assert "vocals.flac" not in names and "notes.txt" not in names
    assert {"full_mix.flac", "Artist - Song_0.flac", "intro.flac", "phone recording, take 2.m4a"} <= set(names)

    s = run_batch(analyzer, dataset, BatchOptions(progress=False))
    assert (s.done, s.failed, s.skipped_complete) == (len(tracks), 0, 0), s.failures
    organized = json.loads((dataset / "Artist - Song" / "Artist - Song.INFO").read_text())
    for k, v in OTHER_TOOL.items():
        assert organized[k] == v  # nothing of theirs changed
    assert set(DEFAULT_KEYS) <= set(organized)
    meta = organized["music_flamingo_meta"]
    assert meta["backend"] == "gguf" and meta["model"] == Path(analyzer.model_path).name
    assert len(meta["model_sha256"]) == 64 and meta["prompts"][0] == "full"
    assert organized["music_flamingo_model"].startswith("gguf_")
    crop = json.loads((dataset / "Artist - Song" / "crops" / "Artist - Song_0.INFO").read_text())
    assert set(DEFAULT_KEYS) <= set(crop)
    assert (dataset / "loose" / "phone recording, take 2.INFO").is_file()

    again = run_batch(analyzer, dataset, BatchOptions(progress=False))
    assert (again.done, again.skipped_complete) == (0, len(tracks))


def test_tracks_in_flight_give_the_same_sidecars_as_one_at_a_time(tiny, dataset, tmp_path):
    """Continuous batching over tracks changes the schedule, not the answers (greedy, flash attention off)."""
    from music_flamingo.batch import BatchOptions, run_batch

    greedy = tmp_path / "greedy.yaml"
    greedy.write_text(
        "defaults: {temperature: 0}\nprompts:\n"
        + "".join(
            f"  {n}: {{max_tokens: {8 + 3 * i}}}\n"
            for i, n in enumerate(["full", "technical", "genre_mood", "instrumentation", "structure"])
        )
    )
    texts = {}
    with exact_engine(tiny, prompts_files=[greedy]) as mf:
        for k in (1, 3):
            got = {}
            s = run_batch(
                mf,
                dataset,
                BatchOptions(progress=False, overwrite=True, write_sidecars=False, tracks_in_flight=k),
                on_result=lambda t, f: got.__setitem__(str(t), {k_: v for k_, v in f.items() if k_ in DEFAULT_KEYS}),
            )
            assert s.done == s.total and s.failed == 0
            texts[k] = got
    assert texts[1] == texts[3]


def test_corrupt_sidecar_is_left_untouched_and_counted(analyzer, dataset):
    from music_flamingo.batch import BatchOptions, run_batch

    bad = dataset / "loose" / "intro.INFO"
    bad.write_bytes(b'{"bpm": 120, "oops": ')
    s = run_batch(analyzer, dataset, BatchOptions(progress=False))
    assert s.failed == 1 and s.exit_code == 1
    assert bad.read_bytes() == b'{"bpm": 120, "oops": '
    failures = [json.loads(line) for line in Path(s.failures_file).read_text().splitlines()]
    assert failures[0]["path"].endswith("intro.flac")


def test_undecodable_track_fails_alone(analyzer, dataset):
    from music_flamingo.batch import BatchOptions, run_batch

    (dataset / "loose" / "broken.mp3").write_bytes(b"\x00" * 5000)
    s = run_batch(analyzer, dataset, BatchOptions(progress=False))
    assert s.failed == 1 and s.done == s.total - 1
    assert s.failures[0]["error"] == "AudioDecodeError"


def test_a_locked_track_gets_a_second_look_after_the_others(analyzer, track, tmp_path):
    """A track another process holds is not waited for, but looked at again after the rest: done if its holder let
    go (a killed process), skipped if still held. The lock is a real flock on the runner's own lock file."""
    from filelock import FileLock

    from music_flamingo.batch import BatchOptions, _lock_path, run_batch, state_dir_of

    root = tmp_path / "data"
    clips = [write_clip(root / f"take {i}.flac", track, 2, 10 + 3 * i) for i in range(6)]
    (state_dir_of(root) / "locks").mkdir(parents=True)
    opts = BatchOptions(progress=False, tracks_in_flight=1, write_sidecars=False, overwrite=True)
    for holder_lets_go in (True, False):
        held = FileLock(str(_lock_path(state_dir_of(root), clips[0])), thread_local=False)
        held.acquire(timeout=0)
        done: list[str] = []

        def on_result(t, fields, let_go=holder_lets_go):
            done.append(Path(t).name)
            if let_go and held.is_locked:
                held.release()  # the holder dies after the run has moved past its track

        s = run_batch(analyzer, root, opts, on_result=on_result)
        if held.is_locked:
            held.release()
        if holder_lets_go:
            assert (s.done, s.skipped_locked) == (6, 0) and done[-1] == "take 0.flac", (s.line(), done)
        else:
            assert (s.done, s.skipped_locked) == (5, 1) and "take 0.flac" not in done, (s.line(), done)


def test_two_processes_share_a_dataset_and_do_each_track_once(tiny, dataset, small_prompts, tmp_path):
    from music_flamingo.discovery import discover_tracks

    procs = [
        subprocess.Popen(
            batch_cli(dataset, tiny, "--no-progress", "--jsonl", str(tmp_path / f"p{i}.jsonl"), prompts=small_prompts),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    done = [
        [json.loads(line)["path"] for line in (tmp_path / f"p{i}.jsonl").read_text().splitlines()]
        if (tmp_path / f"p{i}.jsonl").exists()
        else []
        for i in range(2)
    ]
    assert not set(done[0]) & set(done[1]), "a track was analysed twice"
    assert sorted(done[0] + done[1]) == sorted(str(t.path) for t in discover_tracks(dataset) if t.selected)


def test_cli_single_file_prints_and_writes_sidecar(tiny, dataset, small_prompts):
    target = dataset / "loose" / "intro.flac"
    r = cli(str(target), *model_args(tiny, small_prompts), "--prompts", "full,technical")
    assert r.returncode == 0, r.stderr
    assert "music_flamingo_full:" in r.stdout and "music_flamingo_technical:" in r.stdout
    info = json.loads((dataset / "loose" / "intro.INFO").read_text())
    assert {"music_flamingo_full", "music_flamingo_technical"} <= set(info)
    assert "music_flamingo_structure" not in info


def test_cli_single_file_goes_through_the_batch_runner(tiny, dataset, small_prompts, tmp_path):
    """One file: the runner's JSONL line, its failures file (listed on failure, cleared on success), its track lock
    (held by another process: nothing done, exit 1) and its exit codes."""
    from filelock import FileLock

    from music_flamingo.batch import _lock_path, read_failed_tracks, state_dir_of

    target = dataset / "loose" / "intro.flac"
    model = [*model_args(tiny, small_prompts), "--prompts", "full", "--jsonl", str(tmp_path / "m.jsonl")]
    failures = state_dir_of(target) / "failures.jsonl"

    broken = dataset / "loose" / "broken.flac"
    broken.write_bytes(b"fLaC" + bytes(100))
    r = cli(str(broken), *model)
    assert r.returncode == 1 and "AudioDecodeError" in r.stderr, r.stderr
    assert read_failed_tracks(failures) == [str(broken)]

    with FileLock(str(_lock_path(state_dir_of(target), target))):
        r = cli(str(target), *model)
    assert r.returncode == 1 and "another process" in r.stderr and "music_flamingo_full:" not in r.stdout
    assert not (dataset / "loose" / "intro.INFO").exists()

    broken.unlink()
    sf.write(str(broken), np.zeros(SR, np.float32), SR)  # mended: described, and no longer listed
    r = cli(str(broken), *model)
    assert r.returncode == 0 and "music_flamingo_full:" in r.stdout, r.stderr
    assert read_failed_tracks(failures) == []
    (line,) = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert line["path"] == str(broken) and set(line) == {"path", "music_flamingo_full", "prompts", *META_KEYS}
    assert (
        json.loads((dataset / "loose" / "broken.INFO").read_text())["music_flamingo_full"]
        == line["music_flamingo_full"]
    )


def test_an_analyzer_composes_over_a_resident_model(analyzer, small_prompts, dataset, track):
    """Analyzer(backend): a second analyzer over the same resident engine asks its own prompts; run_batch takes
    either the model (its own analyzer) or an analyzer."""
    from music_flamingo.analyzer import AnalysisOptions, Analyzer
    from music_flamingo.batch import BatchOptions, run_batch

    technical = Analyzer(analyzer, AnalysisOptions(prompts=["technical"], prompts_files=[small_prompts]))
    assert list(technical.analyze(track[: SR * 3], sample_rate=SR)) == ["music_flamingo_technical"]
    assert [e.key for e in analyzer.entries] == DEFAULT_KEYS  # the model's own analyzer is unchanged
    s = run_batch(technical, dataset, BatchOptions(progress=False))
    assert s.done == s.total > 0 and s.failed == 0
    info = json.loads((dataset / "loose" / "intro.INFO").read_text())
    assert "music_flamingo_technical" in info and "music_flamingo_full" not in info
    assert info["music_flamingo_meta"]["prompts"] == ["technical"]


def test_analysis_options_are_one_list_for_keywords_and_options(tiny, small_prompts):
    from music_flamingo import MusicFlamingoGGUF
    from music_flamingo.analyzer import AnalysisOptions

    with pytest.raises(TypeError, match="MusicFlamingoGGUF\\(\\) got an unexpected keyword argument 'promts'"):
        MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, promts=["full"])
    base = AnalysisOptions(temperature=0.5, prompts_files=[small_prompts])
    with MusicFlamingoGGUF(
        model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, warmup=False, options=base, seed=3, prompt="Key?"
    ) as mf:
        o = mf.options
        assert (o.temperature, o.seed, o.prompt, o.prompts_files) == (0.5, 3, "Key?", (small_prompts,))
        assert [e.key for e in mf.entries] == ["music_flamingo_custom"]  # the free text alone, as --prompt
    assert base.seed is None  # the caller's options are not changed


def test_cli_free_text_prompt_alone_and_with_named_prompts(tiny, dataset, small_prompts):
    target = dataset / "loose" / "intro.flac"
    model = [*model_args(tiny), "--no-sidecar"]
    alone = cli(str(target), *model, "--prompts-file", str(small_prompts), "--prompt", "What is the tempo?")
    assert alone.returncode == 0, alone.stderr
    assert "music_flamingo_custom:" in alone.stdout and "music_flamingo_full:" not in alone.stdout
    both = cli(str(target), *model, "--prompts-file", str(small_prompts), "--prompts", "technical", "--prompt", "Key?")
    assert both.returncode == 0, both.stderr
    assert "music_flamingo_technical:" in both.stdout and "music_flamingo_custom:" in both.stdout
    assert "music_flamingo_full:" not in both.stdout


def test_cli_usage_errors_exit_2(tiny, tmp_path):
    assert cli(str(tmp_path / "missing.flac")).returncode == 2
    assert cli(str(tmp_path)).returncode == 2  # a folder without --batch
    wav = tmp_path / "x.wav"
    sf.write(str(wav), np.zeros(SR, np.float32), SR)
    r = cli(str(wav), "--model", "Q6_K", "--model-dir", str(tmp_path / "models"), "--offline")
    assert r.returncode == 2 and "music-flamingo-hf.Q6_K.gguf" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts:\n  full: {max_tokens: -3}\n")
    r = cli(str(wav), *model_args(tiny, bad))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "max_tokens" in r.stderr
    assert cli("--help").returncode == 0
    env = dict(os.environ)
    assert subprocess.run(["music-flamingo", "--help"], capture_output=True, env=env).returncode == 0


def test_ctrl_c_stops_cleanly_and_prints_the_summary(tiny, dataset, tmp_path):
    import signal
    import time

    slow = tmp_path / "slow.yaml"  # long answers, so the run is still busy when Ctrl-C comes
    slow.write_text(
        "defaults: {temperature: 0}\nprompts:\n"
        + "".join(
            f"  {n}: {{max_tokens: 60}}\n" for n in ["full", "technical", "genre_mood", "instrumentation", "structure"]
        )
    )
    proc = subprocess.Popen(
        batch_cli(dataset, tiny, "--no-progress", "--tracks-in-flight", "1", prompts=slow),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    sidecars_before = {p: p.read_bytes() for p in dataset.rglob("*.INFO")}
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(dataset.rglob("*.INFO"))) > len(sidecars_before):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "done" in err
    for p in dataset.rglob("*.INFO"):
        assert isinstance(json.loads(p.read_text()), dict)  # no half-written sidecar
    leftovers = [
        p
        for p in dataset.rglob("*")
        if p.is_file() and p.suffix.lower() not in {".flac", ".ogg", ".m4a", ".info", ".lock", ".txt"}
    ]
    assert not leftovers, leftovers
