"""The users' pipeline as it runs today (issue 20): prompts filled from each track's sidecar, the pipeline's config as
a prompts file, --sample, --trim-frac, augmentation variants left alone. Real audio from the corpus, sidecars in the
pipeline's shapes, the tiny model through the command line where users meet it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SR, batch_cli, child_env, run_cli, write_clip

from music_flamingo.audio import FADE_SHARE, excerpt, prepare_audio
from music_flamingo.discovery import Selection, discover_tracks, sample_draw
from music_flamingo.errors import PromptConfigError
from music_flamingo.prompts import load_catalogue
from music_flamingo.templates import genres_fragment, metadata_fragment

# The pipeline's current config (Taikakim/mir-feature-extraction, config/master_pipeline.yaml, music_flamingo:),
# other sections included as they are there; max_tokens lowered so the tiny model answers in a moment.
FULL_TEXT = (
    "{genres} {metadata} Describe the track in detail: the mood, timbre, genre, instrumentation, production "
    "aesthetics and techniques, construction. Do not use filler words, be professional, do not hallucinate. "
    "It's better to say nothing than stretch the truth."
)
PIPELINE_YAML = f"""\
paths:
  input: null
  output: null
demucs:
  model: htdemucs
music_flamingo:
  enabled: true
  model: Q8_0
  context_size: 16384
  sample_probability: 0.005
  prompts:
    full: "{FULL_TEXT}"
  max_tokens:
    full: {{MAX}}
  revision:
    enabled: true
    model: models/LMM/granite-4.0-h-tiny-GGUF/granite-4.0-h-tiny-Q8_0.gguf
    max_tokens: {{RMAX}}
    temperature: 0.7
    n_ctx: 4096
    prompts:
      short_technical: "A brief technical description of production and mixing (20-30 words)"
      short_mood: "The mood and emotional character (10-20 words)"
      short_genre: "A general description of the track (5-15 words)"
processing:
  device: cuda
"""

SHORT = ("short_technical", "short_mood", "short_genre")  # the config's revision prompts, asked as follow-ups

GENRES = {
    "Electronic---Goa Trance": 0.39,
    "Electronic---Psy-Trance": 0.21,
    "Electronic---Techno": 0.12,
    "Electronic---Ambient": 0.08,
    "Rock---Krautrock": 0.05,
    "Jazz---Fusion": 0.01,
}
GENRES_TEXT = (
    "Probabilistic genre analysis reveals: Electronic - Goa Trance (0.39), Electronic - Psy-Trance (0.21), "
    "Electronic - Techno (0.12), Electronic - Ambient (0.08), Rock - Krautrock (0.05). Numbers are softmax weights "
    "(0\u20131); very low probabilities are filtered out."
)
METADATA_TEXT = (
    "According to the actual ID3 metadata, this is the release year, label and genres of the track the clip is "
    "sourced from: release year: 2021; label: DAT Universe; genres: psytrance, trance, acid techno."
)
TAIL = FULL_TEXT.removeprefix("{genres} {metadata} ")

# The sidecar shapes the pipeline writes, and wrong ones: (other keys, the {genres} {metadata} it must give)
SIDECARS = {
    "full": (
        {"essentia_genre": GENRES, "release_year": 2021, "label": "DAT Universe", "bpm": 143.6,
         "genres": ["psytrance", "trance", "acid techno"]},
        f"{GENRES_TEXT} {METADATA_TEXT}",
    ),
    "none": ({"bpm": 120.0}, "Genre unknown. "),
    "wrong": (
        {"essentia_genre": ["Electronic---Techno", 0.4], "release_year": {"y": 1999}, "track_metadata_year": [1999],
         "label": ["a", "b"], "genres": "psytrance"},
        "Genre unknown. ",
    ),
    "track_year": (
        {"essentia_genre": "Electronic---Techno", "track_metadata_year": 1998, "genres": ["house", None, {"x": 1}]},
        "Genre unknown. According to the actual ID3 metadata, this is the release year, label and genres of the "
        "track the clip is sourced from: release year: 1998; genres: house.",
    ),
}  # fmt: skip


def pipeline_config(tmp_path: Path, max_tokens: int = 512, revision_max_tokens: int = 512) -> Path:
    p = tmp_path / "config" / "master_pipeline.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    text = PIPELINE_YAML.replace("{MAX}", str(max_tokens)).replace("{RMAX}", str(revision_max_tokens))
    p.write_text(text, encoding="utf-8")
    return p


# --- the fragments, exactly as the pipeline writes them -----------------------------------------------------------


@pytest.mark.parametrize("shape", list(SIDECARS))
def test_genres_and_metadata_fragments(shape: str) -> None:
    info, expected = SIDECARS[shape]
    assert f"{genres_fragment(info)} {metadata_fragment(info)}" == expected


def test_fragment_edge_cases() -> None:
    assert genres_fragment({}) == "Genre unknown."
    assert genres_fragment({"essentia_genre": {}}) == "Genre unknown."
    assert genres_fragment({"essentia_genre": {"a": "high", "b": None, "c": True}}) == "Genre unknown."
    one = genres_fragment({"essentia_genre": {"Pop---Synthpop": 1, "x": "bad"}})
    assert one.startswith("Probabilistic genre analysis reveals: Pop - Synthpop (1.00). ")
    assert metadata_fragment({"release_year": "2021", "track_metadata_year": 1990}).endswith("release year: 2021.")
    assert metadata_fragment({"release_year": 2000.0}).endswith("release year: 2000.")  # not "2000.0"
    assert metadata_fragment({"release_year": 0, "label": "", "genres": []}) == ""


# --- the pipeline's config as a prompts file ----------------------------------------------------------------------


def test_the_pipelines_config_is_a_prompts_file(tmp_path: Path) -> None:
    cat = load_catalogue([pipeline_config(tmp_path)])
    assert cat.default_set == ["full"]
    full = cat.entries["full"]
    assert (full.key, full.text, full.max_tokens) == ("music_flamingo_full", FULL_TEXT, 512)
    assert full.template is not None
    info, start = SIDECARS["full"]
    assert full.fill(info) == start + " " + TAIL
    assert {n: (f.key, f.max_tokens, f.temperature) for n, f in cat.followups.items()} == {
        "short_technical": ("music_flamingo_short_technical", 512, 0.7),
        "short_mood": ("music_flamingo_short_mood", 512, 0.7),
        "short_genre": ("music_flamingo_short_genre", 512, 0.7),
    }
    assert cat.followups["short_mood"].text == "The mood and emotional character (10-20 words)"


def test_the_pipelines_older_shape_and_new_keys(tmp_path: Path) -> None:
    p = tmp_path / "old.yaml"
    p.write_text(
        "music_flamingo:\n  prompts:\n    full: true\n    technical: false\n    structure: true\n"
        "    vibe: 'Three words for the vibe.'\n  max_tokens: {structure: 77}\n"
    )
    cat = load_catalogue([p])
    assert cat.default_set == ["full", "structure", "vibe"]
    assert cat.entries["structure"].max_tokens == 77
    assert cat.entries["full"].text == load_catalogue().entries["full"].text  # ours, by name
    assert (cat.entries["vibe"].key, cat.entries["vibe"].max_tokens) == ("music_flamingo_vibe", 500)
    assert cat.entries["vibe"].template is None and cat.followups == {}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('"{{ info.bpm }"', 5, "syntax"),
        ('"{% if info.bpm %}fast"', 5, "syntax"),
        ('"Tempo {{ tempo }}."', 5, "unknown template variable(s) tempo"),
        ("|\n      first line\n      second {{ info.x | nofilter }}", 7, "nofilter"),
    ],
)
def test_a_template_error_names_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(f"music_flamingo:\n  max_tokens: {{full: 5}}\n  prompts:\n    other: 'fine'\n    full: {text}\n")
    with pytest.raises(PromptConfigError) as e:
        load_catalogue([p])
    assert str(e.value).startswith(f"{p}:{line}: prompt 'full'") and words in str(e.value)


def test_any_sidecar_key_through_jinja(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text(
        "default_set: [tempo]\nprompts:\n  tempo:\n    key: music_flamingo_tempo\n    max_tokens: 20\n"
        '    text: \'Near {{ info.bpm | default("unknown") }} BPM{% if info.label %} on {{ info.label }}{% endif %}.'
        " {{ info.nested.deeper }}{{ info.__class__ }}{{ file }}'\n"
    )
    e = load_catalogue([p]).entries["tempo"]
    assert e.fill({"bpm": 128, "label": "Iboga"}, "a.flac") == "Near 128 BPM on Iboga. a.flac"
    assert e.fill({}, "a.flac") == "Near unknown BPM. a.flac"  # missing: the documented fallbacks
    assert e.fill(None) == "Near unknown BPM. "
    q = tmp_path / "typed.yaml"
    q.write_text("prompts:\n  t:\n    key: music_flamingo_t\n    max_tokens: 5\n    text: '{{ info.bpm + 1 }}'\n")
    t = load_catalogue([q]).entries["t"]
    assert t.fill({"bpm": 1}) == "2"
    with pytest.raises(PromptConfigError, match=f"{q}: prompt 't': cannot fill"):
        t.fill({"bpm": "fast"})  # the batch runner counts this track as failed


# --- --sample ----------------------------------------------------------------------------------------------------


def sampling_tree(root: Path, n: int = 200) -> None:
    for i in range(n):
        f = root / f"Artist {i % 7}" / f"Track {i}.flac"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")  # discovery reads names only


def taken(root: Path, **sel) -> set[str]:
    return {t.rel for t in discover_tracks(root, Selection(**sel)) if t.selected}


def test_sample_takes_about_half_and_the_same_half_again(tmp_path: Path) -> None:
    sampling_tree(tmp_path)
    half = taken(tmp_path, sample=0.5)
    assert 70 <= len(half) <= 130  # binomial(200, 0.5): 5 sigma
    assert taken(tmp_path, sample=0.5) == half
    assert taken(tmp_path, sample=0.5, sample_seed=0) == half
    other = taken(tmp_path, sample=0.5, sample_seed=7)
    assert other != half and 70 <= len(other) <= 130
    assert taken(tmp_path, sample=0.1) <= half <= taken(tmp_path, sample=0.8)  # a larger share keeps a smaller one's
    assert len(taken(tmp_path, sample=1.0)) == 200
    assert all(sample_draw(rel) < 0.5 for rel in half)


def test_dry_run_shows_what_sample_takes_and_why(tmp_path: Path) -> None:
    sampling_tree(tmp_path, 40)
    r = run_cli(str(tmp_path), "--batch", "--dry-run", "--sample", "0.5", "--sample-seed", "3", env=child_env())
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if "\t" in line]
    pending = {rel for row, rel, _ in rows if row == "pending"}
    skipped = {rel: why for row, rel, why in rows if row == "excluded: not sampled (--sample)"}
    assert pending == taken(tmp_path, sample=0.5, sample_seed=3) and len(pending) + len(skipped) == 40
    assert all("--sample 0.5, --sample-seed 3" in why and ">= 0.5" in why for why in skipped.values())
    count = [line for line in r.stdout.splitlines() if line.startswith("excluded: not sampled") and "\t" not in line]
    assert [int(line.split()[-1]) for line in count] == [len(skipped)]
    bad = run_cli(str(tmp_path), "--batch", "--dry-run", "--sample", "0", env=child_env())
    assert bad.returncode == 2 and "--sample" in bad.stderr


# --- augmentation variants ---------------------------------------------------------------------------------------


def test_augmentation_variants_are_left_alone(tmp_path: Path, track: np.ndarray) -> None:
    song = tmp_path / "Artist - Album - Song"
    write_clip(song / "full_mix.flac", track, 1.0, 10)
    for variant in ("pitch_+2", "tempo_0.9"):
        write_clip(song / "augmentations" / variant / "full_mix.flac", track, 1.0, 10)
        write_clip(song / "augmentations" / variant / "crops" / "Song_0.flac", track, 1.0, 10)
    found = discover_tracks(tmp_path)
    assert [t.rel for t in found if t.selected] == ["Artist - Album - Song/full_mix.flac"]
    aug = [t for t in found if t.excluded_as == "augmentation variant"]
    assert [t.rel for t in aug] == ["Artist - Album - Song/augmentations"]
    listed = Selection(paths=("Artist - Album - Song/augmentations/pitch_+2/full_mix.flac",))
    assert [t.excluded_as for t in discover_tracks(tmp_path, listed)] == ["augmentation variant"]
    r = run_cli(str(tmp_path), "--batch", "--dry-run", env=child_env())
    assert "excluded: augmentation variant\tArtist - Album - Song/augmentations\t" in r.stdout
    assert "pending\tArtist - Album - Song/full_mix.flac" in r.stdout and "pitch_+2" not in r.stdout


# --- --trim-frac -------------------------------------------------------------------------------------------------


def test_excerpt_is_the_first_share_faded_out(track: np.ndarray) -> None:
    pcm = np.ascontiguousarray(track[20 * SR : 30 * SR])  # 10 s of real music
    out, fade = excerpt(pcm, 0.6)
    assert len(out) == 6 * SR and fade == int(10 * SR * FADE_SHARE) == SR // 2
    np.testing.assert_array_equal(out[: len(out) - fade], pcm[: len(out) - fade])
    ramp = np.linspace(1.0, 0.0, fade, dtype=np.float32)
    np.testing.assert_allclose(out[-fade:], pcm[6 * SR - fade : 6 * SR] * ramp, rtol=0, atol=1e-7)
    assert out[-1] == 0.0 and np.abs(pcm[6 * SR - fade : 6 * SR]).max() > 0.01  # real music, faded to silence
    capped, fade2 = excerpt(pcm, 0.6, max_samples=4 * SR)  # within --max-duration: the fade ends at that cut
    assert len(capped) == 4 * SR and fade2 == SR // 2 and capped[-1] == 0.0
    same, none = excerpt(pcm, 1.0)
    assert same is pcm and none == 0


def test_prepare_audio_records_the_span(tmp_path: Path, track: np.ndarray) -> None:
    f = write_clip(tmp_path / "t.flac", track, 10.0, 20)
    p = prepare_audio(f, trim_frac=0.6)
    assert (p.source_seconds, p.analysed_seconds, p.fade_seconds, p.truncated) == (10.0, 6.0, 0.5, False)
    q = prepare_audio(f, max_seconds=4.0, trim_frac=0.6)
    assert (q.analysed_seconds, q.fade_seconds, q.truncated) == (4.0, 0.5, True)
    r = prepare_audio(f, max_seconds=8.0, trim_frac=0.6)  # the share cuts first: the limit did not
    assert (r.analysed_seconds, r.truncated) == (6.0, False)


def test_trim_frac_through_the_engine_and_the_cli(tmp_path: Path, track: np.ndarray, tiny, small_prompts) -> None:
    from music_flamingo import MusicFlamingoGGUF

    f = write_clip(tmp_path / "data" / "Song_0.flac", track, 10.0, 20)
    info = f.with_suffix(".INFO")
    info.write_text(json.dumps({"position": 3, "bpm": 120.0}))
    mf = MusicFlamingoGGUF(
        model_path=tiny.model_gguf,
        mmproj_path=tiny.mmproj_gguf,
        n_threads=1,
        warmup=False,
        prompts_files=[small_prompts],
        trim_frac=0.6,
    )
    with mf:
        result = mf.analyze_track(f)
    assert result.stats.audio_seconds == pytest.approx(6.0)  # what the engine was given
    assert result.meta["span_analysed"] == [0.0, 6.0] and result.meta["fade_out_seconds"] == 0.5

    r = subprocess.run(
        batch_cli(tmp_path / "data", tiny, "--trim-frac", "0.6", "--no-progress", prompts=small_prompts),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    written = json.loads(info.read_text())
    meta = written["music_flamingo_meta"]
    assert (meta["trim_frac"], meta["span_analysed"], meta["fade_out_seconds"]) == (0.6, [0.0, 6.0], 0.5)
    assert (meta["seconds_analysed"], meta["source_seconds"]) == (6.0, 10.0)
    assert written["position"] == 3 and written["bpm"] == 120.0
    bad = run_cli(str(f), "--trim-frac", "1.5", env=child_env())
    assert bad.returncode == 2 and "--trim-frac" in bad.stderr


# --- prompts filled per track, through the command line -----------------------------------------------------------


def test_filled_prompts_through_the_cli(tmp_path: Path, track: np.ndarray, tiny) -> None:
    """A dataset with the pipeline's sidecars: each track asked its own filled `full` prompt, recorded in its
    --jsonl line and its metadata, and the config's three short summaries as follow-ups, all decoded in one run;
    other keys kept."""
    data = tmp_path / "data"
    expected = {}
    for i, (info, start) in enumerate(SIDECARS.values()):
        f = write_clip(data / "crops" / f"Song_{i}.flac", track, 2.0, 10 + 3 * i)
        f.with_suffix(".INFO").write_text(json.dumps({"position": i, **info}))
        expected[f.name] = start + " " + TAIL
    bare = write_clip(data / "loose.flac", track, 2.0, 40)  # no sidecar at all
    expected[bare.name] = "Genre unknown.  " + TAIL
    manifest = tmp_path / "run.jsonl"
    cmd = batch_cli(data, tiny, "--jsonl", str(manifest), "--no-progress", "--tracks-in-flight", "5")
    cmd += ["--prompts-file", str(pipeline_config(tmp_path, max_tokens=6, revision_max_tokens=4))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {Path(x["path"]).name: x["prompts"]["full"] for x in lines} == expected
    for x in lines:
        assert set(x["prompts"]) == {"full", *SHORT} and x["music_flamingo_full"]
        assert all(isinstance(x[f"music_flamingo_{n}"], str) for n in SHORT)
        assert x["music_flamingo_meta"]["prompts_filled"] == {"full": expected[Path(x["path"]).name]}
    for i, (info, _) in enumerate(SIDECARS.values()):
        written = json.loads((data / "crops" / f"Song_{i}.INFO").read_text())
        assert {k: written[k] for k in ("position", *info)} == {"position": i, **info}  # other keys kept
        assert "music_flamingo_full" in written and "music_flamingo_technical" not in written
        assert {f"music_flamingo_{n}" for n in SHORT} <= set(written)
        assert written["music_flamingo_meta"]["prompts_filled"]["full"] == expected[f"Song_{i}.flac"]


def test_a_bad_template_is_refused_before_the_model_loads(tmp_path: Path, track: np.ndarray) -> None:
    f = write_clip(tmp_path / "a.flac", track, 1.0, 10)
    p = tmp_path / "master_pipeline.yaml"
    p.write_text("music_flamingo:\n  prompts:\n    full: '{genres} {{ info.bpm '\n")
    r = run_cli(str(f), "--prompts-file", str(p), "--model-dir", str(tmp_path / "none"), "--offline", env=child_env())
    assert r.returncode == 2 and f"{p}:3: prompt 'full'" in r.stderr and "model files" not in r.stderr


def test_tracks_with_different_prompts_decode_together(engine, clips) -> None:
    """Per-track prompts in one stream: each equals the track alone (greedy, flash attention off), and the tracks
    were in flight together."""
    from music_flamingo.datatypes import Prompt

    audio = [clips["5s"], clips["5s"][::-1].copy(), clips["30s"][: 7 * SR].copy()]
    prompts = [[Prompt(f"Question {i}: {w}", max_tokens=5)] for i, w in enumerate(["tempo?", "mood", "genre"])]
    alone = [engine.generate(a, p).texts for a, p in zip(audio, prompts)]
    got: dict[int, list[str]] = {}
    engine.generate_stream(
        iter(list(zip(audio, prompts))),
        [Prompt("sizing", max_tokens=5 + 256)],
        lambda i, r: got.__setitem__(i, r if isinstance(r, Exception) else r.texts),
        tracks_in_flight=3,
        prepare_ahead=False,  # each track encoded as it is admitted: all three before the first step
    )
    assert [got[i] for i in range(3)] == alone
    assert engine.last_run_stats()["peak_in_flight"] == 3


# --- their model folder ------------------------------------------------------------------------------------------


def test_their_model_folder_through_the_cli(tmp_path: Path, track: np.ndarray, tiny, small_prompts) -> None:
    """models/music_flamingo/ as the pipeline has it (the imatrix Q6_K beside the static Q8_0; here the tiny model
    under those names): --model Q6_K takes the i1 file, says so, downloads nothing, and the sidecar names it."""
    models = tmp_path / "models" / "music_flamingo"
    models.mkdir(parents=True)
    (models / "music-flamingo-hf.i1-Q6_K.gguf").symlink_to(tiny.model_gguf)
    (models / "music-flamingo-hf.Q8_0.gguf").symlink_to(tiny.model_gguf)
    (models / "music-flamingo-hf.mmproj-f16.gguf").symlink_to(tiny.mmproj_gguf)
    f = write_clip(tmp_path / "a.flac", track, 2.0, 10)
    r = run_cli(
        str(f), "--model", "Q6_K", "--model-dir", str(models), "--offline", "--prompts-file", str(small_prompts),
        env=child_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "music-flamingo-hf.i1-Q6_K.gguf" in r.stderr  # said which file was taken
    written = json.loads(f.with_suffix(".INFO").read_text())
    assert written["music_flamingo_model"] == "gguf_Q6_K"  # as the pipeline labels it
    assert written["music_flamingo_meta"]["model"] == "music-flamingo-hf.i1-Q6_K.gguf"
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["music-flamingo-hf.i1-Q6_K.gguf", "music-flamingo-hf.Q8_0.gguf", "music-flamingo-hf.mmproj-f16.gguf"]
    )  # nothing downloaded


def test_the_transformers_backend_fills_and_trims_alike(tmp_path: Path, track: np.ndarray, tiny) -> None:
    """The backend without generate_stream (one track at a time): each track asked its own filled prompt, and
    --trim-frac's excerpt is what it analyses."""
    from music_flamingo import MusicFlamingoTransformers
    from music_flamingo.batch import BatchOptions, TrackOutcome, run_batch

    data = tmp_path / "data"
    expected = {}
    for i, shape in enumerate(("full", "wrong")):
        f = write_clip(data / f"song{i}.flac", track, 10.0, 20 + 10 * i)
        f.with_suffix(".INFO").write_text(json.dumps(SIDECARS[shape][0]))
        expected[f.name] = SIDECARS[shape][1] + " " + TAIL
    outcomes: list[TrackOutcome] = []
    mf = MusicFlamingoTransformers(
        tiny.hf_dir,
        local_files_only=True,
        dtype="float32",
        prompts_files=[pipeline_config(tmp_path, max_tokens=4)],
        trim_frac=0.6,
    )
    with mf:
        s = run_batch(mf, data, BatchOptions(progress=False, jsonl=tmp_path / "m.jsonl"), on_track=outcomes.append)
    assert (s.done, s.failed) == (2, 0), s.line()
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert {Path(x["path"]).name: x["prompts"]["full"] for x in lines} == expected
    assert [o.stats.audio_seconds for o in outcomes] == [pytest.approx(6.0)] * 2
    assert all(x["music_flamingo_meta"]["span_analysed"] == [0.0, 6.0] for x in lines)


def test_a_template_failing_on_one_tracks_values_fails_that_track(tmp_path: Path, track: np.ndarray, analyzer) -> None:
    """A Jinja expression that cannot take one track's value (a string where a number was meant): that track is a
    logged, counted failure naming the prompt file; the others are described with their own values."""
    from music_flamingo import AnalysisOptions, Analyzer
    from music_flamingo.batch import BatchOptions, read_failed_tracks, run_batch

    p = tmp_path / "tempo.yaml"
    p.write_text(
        "default_set: [tempo]\nprompts:\n  tempo:\n    key: music_flamingo_tempo\n    max_tokens: 4\n"
        "    text: 'Is it near {{ (info.bpm * 2) | round | int }} half-beats per minute?'\n"
    )
    data = tmp_path / "data"
    for name, bpm in (("good", 120.5), ("typo", "fast")):
        f = write_clip(data / f"{name}.flac", track, 2.0, 10)
        f.with_suffix(".INFO").write_text(json.dumps({"bpm": bpm}))
    an = Analyzer(analyzer, AnalysisOptions(prompts_files=[p]))
    s = run_batch(an, data, BatchOptions(progress=False, jsonl=tmp_path / "m.jsonl"))
    assert (s.done, s.failed) == (1, 1), s.line()
    assert s.failures[0]["error"] == "PromptConfigError" and str(p) in s.failures[0]["message"]
    assert read_failed_tracks(data / ".music-flamingo" / "failures.jsonl") == [str(data / "typo.flac")]
    (line,) = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert line["prompts"] == {"tempo": "Is it near 241 half-beats per minute?"}
    assert json.loads((data / "typo.INFO").read_text()) == {"bpm": "fast"}  # untouched
