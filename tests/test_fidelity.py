"""The fidelity table in bench/ is real and current: recomputed here on the same tiny weights and real music, it
matches the committed numbers, and the engine's default framing is the one those numbers favour."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import fidelity  # noqa: E402


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads((BENCH / "fidelity.json").read_text())


@pytest.fixture(scope="module")
def fresh(tiny, music_dir) -> dict:
    return fidelity.measure([5, 30, 45], n_tokens=16)


def test_text_model_fed_the_engines_embeddings_agrees_to_1e5(fresh):
    for r in fresh["rows"]:
        assert r["a_logits_max_abs_diff"] < 5e-5, r
        assert r["a_greedy_agree"] == r["n_tokens"], r


def test_reference_framing_reproduces_the_reference_on_whole_windows(fresh):
    row = {(r["seconds"], r["framing"]): r for r in fresh["rows"]}
    for fr in ("reference_trim", "reference_tail"):
        assert row[(30, fr)]["audio_tokens"] == row[(30, fr)]["reference_audio_tokens"] == 750
        assert row[(30, fr)]["b_logits_max_abs_diff"] < 1e-2
        assert row[(30, fr)]["b_greedy_agree"] == 16
    # llama.cpp's own framing adds a silent window at exactly 30 s and answers differently
    assert row[(30, "llamacpp")]["audio_tokens"] == 1500
    assert row[(30, "llamacpp")]["b_logits_max_abs_diff"] > 0.5
    # past 30 s the tail window (final 30 s of real audio) beats padding the last window
    assert row[(45, "reference_tail")]["b_logits_max_abs_diff"] < row[(45, "reference_trim")]["b_logits_max_abs_diff"]


def test_committed_table_matches_a_fresh_run(fresh, committed):
    old = {(r["seconds"], r["framing"]): r for r in committed["rows"]}
    for r in fresh["rows"]:
        c = old[(r["seconds"], r["framing"])]
        assert (r["audio_tokens"], r["b_greedy_agree"]) == (c["audio_tokens"], c["b_greedy_agree"])
        assert r["b_logits_max_abs_diff"] == pytest.approx(c["b_logits_max_abs_diff"], rel=1e-3, abs=1e-5)


def test_default_framing_is_the_one_the_numbers_favour(committed):
    from music_flamingo.gguf_backend import DEFAULT_FRAMING

    assert fidelity.best_framing(committed) == committed["best_framing"] == DEFAULT_FRAMING
    assert {95} <= {r["seconds"] for r in committed["rows"]}
