"""The fidelity table in bench/ is real and current: recomputed here on the same tiny weights and real music (a
subset of its lengths, to stay quick), it matches the committed numbers; the default framing reproduces the
reference at every length of the table; and the default is the framing those numbers favour."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import fidelity  # noqa: E402

# under 1 s, a partial window alone, one exactly, 10 ms past one (no token from it), the users' 47.55 s crops
FRESH_LENGTHS = [0.5, 5, 30, 30.01, 47.55]


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads((BENCH / "fidelity.json").read_text())


@pytest.fixture(scope="module")
def fresh(tiny, music_dir) -> dict:
    # measure() also checks, on every row, that each framing but llamacpp feeds the reference's prompt tokens
    return fidelity.measure(FRESH_LENGTHS, n_tokens=16)


def rows_by_key(result: dict) -> dict:
    return {(r["seconds"], r["framing"]): r for r in result["rows"]}


def test_text_model_fed_the_engines_embeddings_agrees_to_1e5(fresh):
    for r in fresh["rows"]:
        assert r["a_logits_max_abs_diff"] < 5e-5, r
        assert r["a_greedy_agree"] == r["n_tokens"], r


def test_reference_framing_reproduces_the_reference_at_every_length(fresh, committed):
    for result in (fresh, committed):
        rows = rows_by_key(result)
        for (seconds, framing), r in rows.items():
            if framing != "reference":
                continue
            assert r["audio_tokens"] == r["reference_audio_tokens"], r
            assert r["b_greedy_agree"] == r["n_tokens"], r
            # only float rounding apart, partial windows included (the convolutions read the frames past the real
            # audio that the reference reads, and keep only the real positions: third_party/patches/0002)
            assert r["b_logits_max_abs_diff"] < 1e-2, r
            # and no other framing comes closer
            others = [rows[(seconds, f)]["b_logits_max_abs_diff"] for f in fidelity.FRAMINGS if f != "reference"]
            assert r["b_logits_max_abs_diff"] <= min(others) + 5e-4, r
    row = rows_by_key(fresh)
    assert row[(30.01, "reference")]["audio_tokens"] == 750  # 10 ms past a window: no token, as the reference
    # llama.cpp's own framing adds a silent window at exactly 30 s and answers differently
    assert row[(30, "llamacpp")]["audio_tokens"] == 1500
    assert row[(30, "llamacpp")]["b_logits_max_abs_diff"] > 0.5
    # the padded-window framings cannot reproduce a clip shorter than a window; the real-frames one does
    assert row[(5, "reference_trim")]["b_logits_max_abs_diff"] > 100 * row[(5, "reference")]["b_logits_max_abs_diff"]


def test_committed_table_matches_a_fresh_run(fresh, committed):
    old = rows_by_key(committed)
    for r in fresh["rows"]:
        c = old[(r["seconds"], r["framing"])]
        assert (r["audio_tokens"], r["b_greedy_agree"]) == (c["audio_tokens"], c["b_greedy_agree"])
        assert r["b_logits_max_abs_diff"] == pytest.approx(c["b_logits_max_abs_diff"], rel=1e-3, abs=1e-5)


def test_default_framing_is_the_one_the_numbers_favour(committed):
    from music_flamingo.gguf_backend import DEFAULT_FRAMING

    assert fidelity.best_framing(committed) == committed["best_framing"] == DEFAULT_FRAMING
    assert {r["seconds"] for r in committed["rows"]} == set(fidelity.LENGTHS)
    assert {r["framing"] for r in committed["rows"]} == set(fidelity.FRAMINGS)
