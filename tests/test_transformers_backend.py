"""The transformers backend on tiny random checkpoints (AF3 and Music Flamingo 2601 architectures) and real music:
the Analyzer API, bf16 on CPU, audio encoded once per track, batched == alone, seeded sampling, the attention
fallback, sidecar parity with the GGUF backend, the CLI, and the errors a user meets first."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch  # noqa: F401  (the test extra installs it; a missing one must fail, not skip)
import transformers
from conftest import DEFAULT_KEYS, SR, run_cli


@pytest.fixture(scope="module")
def mf_hf_dir(tiny, tmp_path_factory) -> Path:
    """A tiny random ``musicflamingo`` checkpoint (rotary time embeddings, <|sound_bos|>/<|sound_eos|> framing).

    Same dimensions and weights as ``tiny.hf_dir``: the two classes have the same parameters (RoTE has only
    computed buffers), so the AF3 safetensors is linked rather than copied; config and processor are rewritten."""
    from transformers import AutoConfig, AutoProcessor, GenerationConfig, MusicFlamingoConfig, MusicFlamingoProcessor

    out = tmp_path_factory.mktemp("tiny-musicflamingo")
    af3 = AutoConfig.from_pretrained(tiny.hf_dir)
    cfg = MusicFlamingoConfig(
        audio_config=af3.audio_config.to_dict(),
        text_config=af3.text_config.to_dict(),
        audio_token_id=af3.audio_token_id,
    )
    cfg.architectures = ["MusicFlamingoForConditionalGeneration"]
    cfg.save_pretrained(out)
    GenerationConfig.from_pretrained(tiny.hf_dir).save_pretrained(out)
    os.symlink(Path(tiny.hf_dir).resolve() / "model.safetensors", out / "model.safetensors")
    proc = AutoProcessor.from_pretrained(tiny.hf_dir)
    MusicFlamingoProcessor(
        feature_extractor=proc.feature_extractor,
        tokenizer=proc.tokenizer,
        chat_template=proc.chat_template,
        max_audio_len=1200,
    ).save_pretrained(out)
    return out


def load(model_dir, **kw):
    from music_flamingo import MusicFlamingoTransformers

    kw.setdefault("dtype", "float32")
    return MusicFlamingoTransformers(model_dir, local_files_only=True, **kw)


@pytest.fixture(scope="module")
def af3(tiny, small_prompts):
    mf = load(tiny.hf_dir, prompts_files=[small_prompts])
    yield mf
    mf.close()


@pytest.fixture(scope="module")
def mflam(mf_hf_dir, small_prompts):
    mf = load(mf_hf_dir, prompts_files=[small_prompts])
    yield mf
    mf.close()


@pytest.fixture(params=["af3", "musicflamingo"])
def analyzer(request):
    return request.getfixturevalue("af3" if request.param == "af3" else "mflam")


def greedy(mf, names, max_tokens):
    from music_flamingo import Prompt

    return [Prompt(text=e.text, max_tokens=m, name=e.name) for e, m in zip(mf.catalogue.select(names), max_tokens)]


def test_analyze_returns_the_five_keys_and_prompt_type_returns_text(analyzer, clips):
    out = analyzer.analyze(clips["5s"], sample_rate=SR)
    assert list(out) == DEFAULT_KEYS
    assert all(isinstance(v, str) for v in out.values())
    full = analyzer.analyze(clips["5s"], sample_rate=SR, prompt_type="full")
    assert isinstance(full, str)
    assert analyzer.analyze(clips["5s"], sample_rate=SR) == out  # seeded sampling: reproducible


def test_model_type_picks_class_limit_and_label(af3, mflam, tiny, mf_hf_dir):
    assert type(af3._model).__name__ == "AudioFlamingo3ForConditionalGeneration"
    assert type(mflam._model).__name__ == "MusicFlamingoForConditionalGeneration"
    assert (af3.max_duration_default, mflam.max_duration_default) == (600.0, 1200.0)
    assert af3.model_label == "transformers_" + Path(tiny.hf_dir).name
    assert mflam.model_label == "transformers_" + Path(mf_hf_dir).name
    prov = mflam.provenance()
    assert prov["backend"] == "transformers" and prov["model_type"] == "musicflamingo"
    assert prov["transformers_version"] == transformers.__version__ and prov["torch_version"]
    assert prov["dtype"] == "float32" and prov["attn_implementation"] == "sdpa" and prov["device"] == "cpu"
    assert "model_commit" in prov
    assert af3.torch_compile is False and not hasattr(af3._model.forward, "_torchdynamo_orig_callable")
    # Music Flamingo frames the audio as <|sound_bos|> <sound> x n <|sound_eos|>: two more shared tokens
    a, m = (x.generate(np.zeros(SR, np.float32), "Describe this track.", max_tokens=1).stats for x in (af3, mflam))
    assert a.audio_tokens == m.audio_tokens == 25 and m.prefix_tokens == a.prefix_tokens + 2


def test_attention_choice_logs_why(caplog):

    from music_flamingo.transformers_backend import _choose_attention

    caplog.set_level(logging.INFO, logger="music_flamingo")
    cuda = torch.device("cuda", 0)
    assert _choose_attention(torch, False, cuda, torch.bfloat16) == "sdpa"
    assert _choose_attention(torch, True, cuda, torch.float32) == "sdpa"
    try:
        import flash_attn  # noqa: F401
    except Exception:
        assert _choose_attention(torch, True, cuda, torch.bfloat16) == "sdpa"
        assert caplog.records[-1].levelno == logging.WARNING and "flash_attn" in caplog.records[-1].getMessage()
    msgs = [r.getMessage() for r in caplog.records]
    assert "not requested" in msgs[0] and "float16 or bfloat16" in msgs[1]


def test_audio_is_encoded_once_per_track(analyzer, clips):
    calls = {"tower": 0, "mel": 0}
    hook = analyzer._model.model.audio_tower.register_forward_hook(
        lambda *a: calls.__setitem__("tower", calls["tower"] + 1)
    )
    fe = analyzer._processor.feature_extractor
    real = type(fe).__call__

    def counting(self, *a, **kw):
        calls["mel"] += 1
        return real(self, *a, **kw)

    type(fe).__call__ = counting
    try:
        res = analyzer.analyze_track(clips["5s"], sample_rate=SR)
    finally:
        type(fe).__call__ = real
        hook.remove()
    assert len(res.descriptions) == 5
    assert calls == {"tower": 1, "mel": 1}
    assert res.stats.audio_chunks == 1 and res.stats.audio_tokens == 125  # 5 s: (500-1)//2+1 -> (250-2)//2+1
    assert res.stats.prefix_tokens >= res.stats.audio_tokens


def test_greedy_batched_answers_equal_each_prompt_alone(analyzer, clips):
    pcm = clips["5s"]
    prompts = greedy(analyzer, ["full", "instrumentation", "technical", "structure"], [8, 3, 8, 5])
    together = analyzer.generate(pcm, prompts)
    for p, tokens, text in zip(prompts, together.tokens, together.texts):
        alone = analyzer.generate(pcm, [p])
        assert alone.tokens[0] == tokens, p.name
        assert alone.texts[0] == text
        assert 0 < len(tokens) <= p.max_tokens
    assert together.stop_reasons[1] == "max_tokens" and len(together.tokens[1]) == 3


def test_sampling_with_a_fixed_seed_is_reproducible(af3, clips):
    from music_flamingo import Prompt

    pcm = clips["5s"]
    prompts = [
        Prompt(text=t, max_tokens=8, temperature=1.0, top_p=0.95, top_k=0, seed=7)
        for t in ("Describe this track.", "What instruments do you hear?")
    ]
    a, b = af3.generate(pcm, prompts), af3.generate(pcm, prompts)
    assert a.tokens == b.tokens and a.texts == b.texts
    other = af3.generate(pcm, [Prompt(text=p.text, max_tokens=8, temperature=1.0, top_p=0.95, seed=8) for p in prompts])
    assert other.tokens != a.tokens
    seen = []
    real = af3._model.generate
    af3._model.generate = lambda **kw: seen.append(kw["generation_config"]) or real(**kw)
    try:
        af3.generate(pcm, prompts[:1])
    finally:
        del af3._model.generate
    assert seen[0].do_sample and seen[0].top_k == 0 and seen[0].top_p == 0.95  # top_k 0: off, not 50
    # two sampling groups and a greedy one in one call: answers come back in the prompts' order
    mixed = af3.generate(pcm, [prompts[0], Prompt(text="Describe this track.", max_tokens=4), prompts[1]])
    assert [mixed.tokens[0], mixed.tokens[2]] == a.tokens
    assert mixed.tokens[1] == af3.generate(pcm, [Prompt(text="Describe this track.", max_tokens=4)]).tokens[0]


def test_bfloat16_on_cpu_with_one_sdpa_line(tiny, small_prompts, clips, caplog):
    caplog.set_level(logging.DEBUG, logger="music_flamingo")
    with load(tiny.hf_dir, dtype="bfloat16", prompts_files=[small_prompts], prompts=["full", "technical"]) as mf:
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("music_flamingo")
            and ("sdpa" in r.getMessage().lower() or "flash" in r.getMessage().lower())
        ]
        assert len(lines) == 1 and "SDPA" in lines[0] and "CUDA" in lines[0], lines
        assert str(mf._model.dtype) == "torch.bfloat16" and mf.provenance()["dtype"] == "bfloat16"
        res = mf.analyze_track(clips["5s"], sample_rate=SR)
        assert list(res.descriptions) == DEFAULT_KEYS[:2]
        assert all(len(t) > 0 for t in res.raw.values())
    assert mf._model is None
    from music_flamingo import EngineError

    with pytest.raises(EngineError, match="closed"):
        mf.generate(clips["5s"], "Describe this track.")


def test_sidecar_fields_match_the_gguf_backend(af3, tiny, small_prompts, clips, tmp_path):
    from music_flamingo import MusicFlamingoGGUF

    wav = tmp_path / "clip.wav"
    sf.write(str(wav), clips["5s"], SR)
    ours = af3.analyze_track(wav).sidecar_fields()
    with MusicFlamingoGGUF(
        model_path=tiny.model_gguf,
        mmproj_path=tiny.mmproj_gguf,
        n_threads=1,
        warmup=False,
        prompts_files=[small_prompts],
    ) as g:
        theirs = g.analyze_track(wav).sidecar_fields()
    assert ours.keys() == theirs.keys()
    assert ours["music_flamingo_model"].startswith("transformers_")
    meta = ours["music_flamingo_meta"]
    for k in ("prompts", "prompts_hash", "sampling", "seconds_analysed", "truncated", "package_version"):
        assert meta[k] == theirs["music_flamingo_meta"][k], k
    json.dumps(ours)  # a sidecar must serialise


def test_both_backends_refuse_the_same_bad_arrays_with_the_same_words(af3, engine, clips):
    """Audio is validated once, in music_flamingo.audio, for both backends' generate()."""
    from music_flamingo import InvalidInputError

    pcm = clips["5s"]
    bad = {
        "float64": (pcm.astype(np.float64), SR),
        "big-endian": (pcm.astype(">f4"), SR),
        "stereo": (np.stack([pcm, pcm], axis=1), SR),
        "NaN": (np.where(np.arange(len(pcm)) == 7, np.nan, pcm).astype(np.float32), SR),
        "10 samples": (pcm[:10], SR),
        "44.1 kHz": (pcm, 44100),
    }
    for what, (audio, rate) in bad.items():
        said = []
        for backend in (af3, engine):
            with pytest.raises(InvalidInputError) as e:
                backend.generate(audio, "Describe this track.", sample_rate=rate)
            said.append(str(e.value))
        assert said[0] == said[1], what


def test_a_dataset_run_over_the_transformers_backend(af3, clips, tmp_path):
    """The batch runner over a backend without generate_stream: the Analyzer takes one track at a time, and a bad
    track fails alone."""
    from music_flamingo.batch import BatchOptions, run_batch

    for i in range(2):
        sf.write(str(tmp_path / f"song{i}.wav"), clips["5s"][i * SR :], SR)
    (tmp_path / "empty.wav").write_bytes(b"")
    s = run_batch(af3, tmp_path, BatchOptions(progress=False))
    assert (s.total, s.done, s.failed) == (3, 2, 1), s.line()
    for i in range(2):
        info = json.loads((tmp_path / f"song{i}.INFO").read_text())
        assert list(info)[:5] == DEFAULT_KEYS and info["music_flamingo_meta"]["backend"] == "transformers"


def test_a_misspelled_analysis_option_is_refused_before_torch_loads_a_model(tiny):
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        load(tiny.hf_dir, temprature=0.5)


def test_unknown_and_too_new_checkpoints_say_what_is_needed(tiny, tmp_path, monkeypatch):
    from music_flamingo import ModelFileError
    from music_flamingo import transformers_backend as tb

    monkeypatch.setitem(tb.MODEL_TYPES, "audioflamingo3", ("NoSuchForConditionalGeneration", "99.1", 600.0))
    with pytest.raises(ModelFileError, match=r"transformers>=99\.1.*this is transformers"):
        load(tiny.hf_dir)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ModelFileError, match="not a Music Flamingo checkpoint"):
        load(tmp_path)
    with pytest.raises(ModelFileError, match="no checkpoint folder"):
        load(tmp_path / "missing")
    with pytest.raises(ModelFileError, match="no config.json"):
        load(tmp_path.parent)  # a folder without config.json


def test_import_stays_torch_free():
    code = (
        "import sys, music_flamingo as m; c = m.MusicFlamingoTransformers; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print(c.__name__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "MusicFlamingoTransformers", r.stderr


def test_cli_transformers_backend_writes_a_sidecar(tiny, small_prompts, clips, tmp_path):
    wav = tmp_path / "song.wav"
    sf.write(str(wav), clips["5s"], SR)
    hf = ["--backend", "transformers", "--model-id", str(tiny.hf_dir), "--local-files-only"]
    r = run_cli(str(wav), *hf, "--prompts", "full", "--prompts-file", str(small_prompts))
    assert r.returncode == 0, r.stderr
    assert "music_flamingo_full:" in r.stdout
    info = json.loads((tmp_path / "song.INFO").read_text())
    assert info["music_flamingo_meta"]["backend"] == "transformers"
    assert info["music_flamingo_meta"]["dtype"] == "bfloat16"
    assert info["music_flamingo_model"] == "transformers_" + Path(tiny.hf_dir).name
    assert "music_flamingo_technical" not in info
