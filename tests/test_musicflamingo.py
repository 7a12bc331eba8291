"""The newer checkpoints (``musicflamingo``: Music Flamingo 2601, think, Audio Flamingo Next) from GGUF: a tiny random
one made with transformers' own classes, converted by ``music-flamingo convert``, run by the engine with its rotary
time embeddings, sound bos/eos and chat template, against transformers' MusicFlamingoForConditionalGeneration on real
music (bench/fidelity.py --arch musicflamingo; the table in bench/FIDELITY.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CACHE, SR, exact_engine, run_cli

from testkit.tiny_musicflamingo import SYSTEM, ensure_tiny_musicflamingo

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import fidelity  # noqa: E402

# a partial window alone, the users' 47.55 s crops (a whole window and a partial one, window index 1 rotated)
FRESH_LENGTHS = [5, 47.55]


@pytest.fixture(scope="session")
def tiny_mf(llama_cpp_dir):
    return ensure_tiny_musicflamingo(llama_cpp_dir, CACHE / "test-models")


@pytest.fixture(scope="module")
def mf_engine(tiny_mf):
    eng = exact_engine(tiny_mf, kv_cache_type="f32")
    yield eng
    eng.close()


def test_the_models_own_chat_and_audio_tokens(mf_engine):
    pieces = mf_engine.chat_pieces()
    assert SYSTEM in pieces.head  # the template's own default system message
    assert pieces.head.endswith("<|sound_bos|>") and pieces.mid.startswith("<|sound_eos|>\n")
    assert mf_engine.max_duration_default == 1200  # 40 windows, from the GGUF
    assert mf_engine.model_label == "gguf_hf.F32"  # the checkpoint and the file type


def test_only_the_reference_framing_runs_rote(mf_engine, clips):
    from music_flamingo import Prompt
    from music_flamingo.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="rotary time embeddings"):
        mf_engine.generate(clips["5s"], [Prompt("Describe.", max_tokens=4)], framing="llamacpp")


@pytest.fixture(scope="module")
def fresh(tiny_mf, music_dir) -> dict:
    # measure() checks on every row that the engine feeds the reference processor's prompt tokens
    return fidelity.measure(FRESH_LENGTHS, n_tokens=16, arch="musicflamingo")


def test_engine_reproduces_transformers_musicflamingo(fresh):
    committed = json.loads((BENCH / "fidelity_musicflamingo.json").read_text())
    old = {r["seconds"]: r for r in committed["rows"]}
    for r in fresh["rows"]:
        assert r["audio_tokens"] == r["reference_audio_tokens"], r
        assert r["a_logits_max_abs_diff"] < 5e-5 and r["a_greedy_agree"] == r["n_tokens"], r
        assert r["b_greedy_agree"] == r["n_tokens"], r
        assert r["b_logits_max_abs_diff"] < 1e-2, r  # float rounding only, partial windows included
        c = old[r["seconds"]]
        assert r["b_logits_max_abs_diff"] == pytest.approx(c["b_logits_max_abs_diff"], rel=1e-3, abs=1e-5)
    for r in committed["rows"]:  # the committed table holds at every length, past 10 minutes included
        assert r["b_greedy_agree"] == r["n_tokens"] and r["audio_tokens"] == r["reference_audio_tokens"], r
        assert r["b_logits_max_abs_diff"] < 1e-2, r
    assert max(r["seconds"] for r in committed["rows"]) > 600


def test_rote_changes_the_audio_embeddings(mf_engine, tiny_mf, clips):
    """Without the rotation the engine would give transformers' embeddings of the projector alone: they differ."""
    import torch
    from transformers import AutoProcessor, MusicFlamingoForConditionalGeneration

    from music_flamingo import Prompt

    res = mf_engine.generate(clips["30s"], [Prompt("x", max_tokens=1)], debug=True)
    ours = np.asarray(res.debug["audio_embd"])
    model = MusicFlamingoForConditionalGeneration.from_pretrained(tiny_mf.hf_dir, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(tiny_mf.hf_dir)
    feats = proc.feature_extractor([clips["30s"]], sampling_rate=SR, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        enc = model.model.audio_tower(feats["input_features"], input_features_mask=feats["attention_mask"])
        unrotated = model.model.multi_modal_projector(enc.last_hidden_state)[0].numpy()
    assert ours.shape == unrotated.shape
    assert np.abs(ours - unrotated).max() > 1e-2  # the rotation is there (and fidelity shows it is the right one)


def test_cli_describes_twelve_minutes(tiny_mf, music_dir, tmp_path):
    music = fidelity.load_music(720)[: 720 * SR]
    audio = tmp_path / "long.flac"
    sf.write(audio, music, SR)
    proc = run_cli(
        str(audio),
        "--model-path",
        str(tiny_mf.model_gguf),
        "--mmproj",
        str(tiny_mf.mmproj_gguf),
        "--prompts",
        "genre_mood",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "long.INFO").read_text())
    assert info["music_flamingo_model"] == "gguf_hf.F32"
    assert info["music_flamingo_genre_mood"]
