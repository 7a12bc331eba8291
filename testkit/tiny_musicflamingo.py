#!/usr/bin/env python
"""A tiny random ``musicflamingo`` checkpoint (Music Flamingo 2601 / Audio Flamingo Next architecture) for tests,
made offline with transformers' own classes and converted to GGUF by ``music-flamingo convert``.

Same recipe as testkit/tiny_model.py (the real Qwen2 vocabulary re-packed with Qwen2.5 specials and the audio tokens
``<sound>``, ``<|sound_bos|>``, ``<|sound_eos|>`` at the ids the real config uses; text 64 x 2 layers, encoder 64 x 3
layers; initializer 0.2 so logits are decisive), but ``MusicFlamingoForConditionalGeneration`` with its rotary time
embeddings, ``MusicFlamingoProcessor`` (bos/eos around the audio, 20 minutes) and a chat template whose default
system message is not the AF3 one, as the real checkpoints have their own.

Script use: ``python -m testkit.tiny_musicflamingo --cache-dir DIR``
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from testkit import tiny_model

# The real checkpoints' system prompt is their own; this one stands in for it (a default that is not AF3's, so a
# backend that drops or replaces it is caught).
SYSTEM = "You are Music Flamingo, a multimodal assistant for music understanding."
CHAT_TEMPLATE = tiny_model.CHAT_TEMPLATE.replace("You are a helpful assistant.", SYSTEM)
MAX_AUDIO_LEN = 1200  # seconds: 40 windows, as music-flamingo-2601-hf's processor
REPO = Path(__file__).resolve().parents[1]
# the converter's sources: a change to them makes a new cached model
CONVERTER = ["checkpoint.py", "convert.py", "gguf_vocab.py"]


@dataclasses.dataclass(frozen=True)
class TinyMusicFlamingo:
    hf_dir: Path
    model_gguf: Path
    mmproj_gguf: Path


def build_hf_checkpoint(out_dir: Path, vocab_gguf: Path) -> None:
    """Save a random MusicFlamingoForConditionalGeneration plus its processor into ``out_dir``."""
    import torch
    from transformers import (
        AudioFlamingo3EncoderConfig,
        GenerationConfig,
        MusicFlamingoConfig,
        MusicFlamingoForConditionalGeneration,
        MusicFlamingoProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    tok = tiny_model._build_tokenizer(vocab_gguf)
    tok.chat_template = CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<sound>", "<|sound_bos|>", "<|sound_eos|>", "<|endoftext|>")}
    text_cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=False,
        initializer_range=tiny_model.INIT_STD,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    audio_cfg = AudioFlamingo3EncoderConfig(
        num_mel_bins=128,
        num_hidden_layers=tiny_model.AUDIO_LAYERS,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_size=64,
        max_source_positions=1500,
        initializer_range=tiny_model.INIT_STD,
    )
    cfg = MusicFlamingoConfig(
        audio_config=audio_cfg,
        text_config=text_cfg,
        audio_token_id=ids["<sound>"],
        audio_bos_token_id=ids["<|sound_bos|>"],
        audio_eos_token_id=ids["<|sound_eos|>"],
    )
    torch.manual_seed(tiny_model.SEED)
    model = MusicFlamingoForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial norms/biases, so a backend that drops them is caught
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * tiny_model.INIT_STD)
    model.generation_config = GenerationConfig(
        bos_token_id=text_cfg.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(out_dir)
    MusicFlamingoProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        max_audio_len=MAX_AUDIO_LEN,
    ).save_pretrained(out_dir)


def cache_key(llama_cpp_dir: Path) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes() + Path(tiny_model.__file__).read_bytes())
    for name in CONVERTER:
        h.update((REPO / "python" / "music_flamingo" / name).read_bytes())
    h.update(llama_cpp_dir.name.encode())  # the vocabulary comes from the tree
    return h.hexdigest()[:12]


def ensure_tiny_musicflamingo(llama_cpp_dir: Path, cache_dir: Path) -> TinyMusicFlamingo:
    """The cached tiny musicflamingo (HF folder + f32 GGUF pair), built once across processes."""
    from music_flamingo.convert import convert

    llama_cpp_dir, cache_dir = Path(llama_cpp_dir).resolve(), Path(cache_dir)
    final = cache_dir / f"tiny-musicflamingo-{cache_key(llama_cpp_dir)}"
    result = TinyMusicFlamingo(final / "hf", final / "hf.F32.gguf", final / "hf.mmproj-f32.gguf")
    if result.model_gguf.is_file() and result.mmproj_gguf.is_file():
        return result
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.model_gguf.is_file() and result.mmproj_gguf.is_file():
            return result
        shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=cache_dir))
        tmp.chmod(0o755)
        try:
            build_hf_checkpoint(tmp / "hf", llama_cpp_dir / "models" / "ggml-vocab-qwen2.gguf")
            convert(tmp / "hf", tmp, outtype="f32", progress=False)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def default_tiny_musicflamingo() -> TinyMusicFlamingo:
    import fetch_llama_cpp

    return ensure_tiny_musicflamingo(fetch_llama_cpp.resolve(), fetch_llama_cpp.cache_root() / "test-models")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp-dir", type=Path, default=None, help="llama.cpp source tree (its vocabulary)")
    ap.add_argument("--cache-dir", type=Path, required=True)
    a = ap.parse_args()
    import fetch_llama_cpp

    t0 = time.monotonic()
    tiny = ensure_tiny_musicflamingo(a.llama_cpp_dir or fetch_llama_cpp.resolve(), a.cache_dir)
    for f in dataclasses.fields(tiny):
        print(f"{f.name}: {getattr(tiny, f.name)}")
    print(f"done in {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
