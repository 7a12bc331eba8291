"""Every option value is checked at the boundary, before any model loads (issue 11, defect 7), and audio too short
for the engine is refused in Python (defect 1, the Python side). Fast: no model is loaded here."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from music_flamingo import validation
from music_flamingo.analyzer import AnalysisOptions
from music_flamingo.audio import MIN_SAMPLES, as_engine_audio, load_audio, prepare_audio
from music_flamingo.batch import BatchOptions
from music_flamingo.cli import build_parser
from music_flamingo.datatypes import Prompt
from music_flamingo.errors import InvalidInputError, PromptConfigError
from music_flamingo.prompts import load_catalogue

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    "field, bad",
    [
        ("temperature", NAN),
        ("temperature", INF),
        ("temperature", -0.1),
        ("temperature", 1e39),
        ("temperature", "0.7"),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", NAN),
        ("top_p", -INF),
        ("top_k", -1),
        ("top_k", 2**31),
        ("top_k", 1.5),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("min_p", NAN),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", -1.0),
        ("repeat_penalty", INF),
        ("seed", -1),
        ("seed", 2**32),
        ("seed", 1.0),
        ("seed", True),
        ("repeat_last_n", -1),
        ("repeat_last_n", validation.REPEAT_LAST_N_MAX + 1),
        ("repeat_last_n", 2.0),
        ("repeat_last_n", True),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", 2**31),
        ("max_tokens", True),
        ("max_tokens", 3.0),
    ],
)
def test_prompt_refuses_every_out_of_range_field(field, bad):
    with pytest.raises(InvalidInputError, match=field):
        Prompt("Describe the music.", **{field: bad})


def test_prompt_accepts_the_edges():
    Prompt(
        "x",
        max_tokens=1,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=1.0,
        repeat_penalty=1e-3,
        seed=2**32 - 1,
        repeat_last_n=0,
    )
    Prompt("x", repeat_last_n=validation.REPEAT_LAST_N_MAX)
    Prompt("x", max_tokens=2**31 - 1, top_p=1e-9, seed=np.uint32(7), temperature=np.float32(0.5))


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": NAN},
        {"top_p": 2.0},
        {"seed": -1},
        {"max_duration": 0},
        {"max_duration": -1.0},
        {"max_duration": NAN},
        {"max_duration": INF},
        {"max_duration": 1e-5},
    ],
)
def test_analysis_options_refuse_bad_values(kw):
    with pytest.raises(InvalidInputError):
        AnalysisOptions(**kw)


@pytest.mark.parametrize("n", [0, -1, 257, 10**9])
def test_batch_options_refuse_bad_tracks_in_flight(n):
    with pytest.raises(InvalidInputError, match="tracks_in_flight"):
        BatchOptions(tracks_in_flight=n)


@pytest.mark.parametrize("n", [0, 257, "8"])
def test_tracks_in_flight_is_refused_with_the_engines_message_at_every_boundary(n, capsys):
    """One rule, stated in C++ where the value enters the request: the CLI and BatchOptions build a request early
    (before any model loads) and say what the engine says."""
    from music_flamingo import _core

    with pytest.raises(InvalidInputError) as engine:
        _core.RunRequest(tracks_in_flight=n)
    with pytest.raises(InvalidInputError) as options:
        BatchOptions(tracks_in_flight=n)
    assert str(options.value) == str(engine.value)
    if isinstance(n, int):
        with pytest.raises(SystemExit) as ei:
            build_parser().parse_args(["track.flac", "--tracks-in-flight", str(n)])
        assert ei.value.code == 2
        assert str(engine.value) in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--temperature", "nan"],
        ["--temperature", "-1"],
        ["--temperature", "inf"],
        ["--top-p", "2"],
        ["--top-p", "0"],
        ["--seed", "-1"],
        ["--seed", str(2**32)],
        ["--max-duration", "0"],
        ["--max-duration", "nan"],
        ["--max-duration", "1e-5"],
        ["--tracks-in-flight", "0"],
        ["--tracks-in-flight", "300"],
        ["--top-p", "abc"],
    ],
)
def test_cli_refuses_bad_values_as_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["track.flac", *argv])
    assert ei.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_cli_accepts_good_values():
    a = build_parser().parse_args(
        [
            "t.flac",
            "--temperature",
            "0",
            "--top-p",
            "1",
            "--seed",
            str(2**32 - 1),
            "--max-duration",
            "0.1",
            "--tracks-in-flight",
            "256",
        ]
    )
    assert (a.temperature, a.top_p, a.seed, a.max_duration, a.tracks_in_flight) == (0, 1, 2**32 - 1, 0.1, 256)


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("defaults: {temperature: .nan}\n", "temperature"),
        ("defaults: {top_p: .inf}\n", "top_p"),
        ("prompts:\n  full: {temperature: -.inf}\n", "temperature"),
        ('prompts:\n  full: {text: "a\\0b"}\n', "text"),
    ],
)
def test_prompt_files_refuse_nan_inf_and_nul(tmp_path, yaml_text, field):
    p = tmp_path / "p.yaml"
    p.write_text(yaml_text)
    with pytest.raises(PromptConfigError, match=field):
        load_catalogue([p])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 100, MIN_SAMPLES - 1])
def test_audio_shorter_than_the_minimum_is_refused_in_python(n):
    with pytest.raises(InvalidInputError, match="too short"):
        load_audio(np.ones(n, np.float32) * 0.1, sample_rate=16000)
    with pytest.raises(InvalidInputError, match="too short"):
        as_engine_audio(np.ones(n, np.float32) * 0.1)


def test_three_samples_at_48k_are_one_after_resampling_and_refused():
    with pytest.raises(InvalidInputError, match="too short"):
        load_audio(np.ones(3, np.float32) * 0.1, sample_rate=48000)


def test_the_minimum_itself_is_accepted():
    assert len(load_audio(np.ones(MIN_SAMPLES, np.float32) * 0.1, sample_rate=16000)) == MIN_SAMPLES


def test_truncation_never_cuts_below_the_minimum():
    with pytest.raises(InvalidInputError, match="empty|too short"):  # 1e-5 s is 0 samples
        prepare_audio(np.ones(16000, np.float32), 16000, max_seconds=1e-5)
    with pytest.raises(InvalidInputError, match="too short"):
        prepare_audio(np.ones(16000, np.float32), 16000, max_seconds=0.015)
    ok = prepare_audio(np.ones(16000, np.float32), 16000, max_seconds=validation.MIN_AUDIO_SECONDS)
    assert len(ok.pcm) == MIN_SAMPLES and ok.truncated


def test_an_array_that_crossed_a_process_boundary_gets_the_canonical_dtype():
    a = pickle.loads(pickle.dumps(np.zeros(MIN_SAMPLES, np.float32)))
    assert a.dtype is not np.dtype(np.float32)  # what the native module's identity check refused
    assert as_engine_audio(a).dtype is np.dtype(np.float32)
