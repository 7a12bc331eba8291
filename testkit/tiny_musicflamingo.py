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
import hashlib
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
    from transformers import (
        AudioFlamingo3EncoderConfig,
        MusicFlamingoConfig,
        MusicFlamingoForConditionalGeneration,
        MusicFlamingoProcessor,
        WhisperFeatureExtractor,
    )

    tok = tiny_model._build_tokenizer(vocab_gguf)
    tok.chat_template = CHAT_TEMPLATE
    text_cfg, audio_cfg = tiny_model.tiny_configs(tok, AudioFlamingo3EncoderConfig)
    cfg = MusicFlamingoConfig(
        audio_config=audio_cfg,
        text_config=text_cfg,
        audio_token_id=tok.convert_tokens_to_ids("<sound>"),
        audio_bos_token_id=tok.convert_tokens_to_ids("<|sound_bos|>"),
        audio_eos_token_id=tok.convert_tokens_to_ids("<|sound_eos|>"),
    )
    processor = MusicFlamingoProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        max_audio_len=MAX_AUDIO_LEN,
    )
    tiny_model.save_random(MusicFlamingoForConditionalGeneration, cfg, processor, out_dir)


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

    def build(tmp: Path) -> None:
        build_hf_checkpoint(tmp / "hf", llama_cpp_dir / "models" / "ggml-vocab-qwen2.gguf")
        convert(tmp / "hf", tmp, outtype="f32", progress=False)

    tiny_model.build_once(final, (result.model_gguf, result.mmproj_gguf), build)
    return result


def default_tiny_musicflamingo() -> TinyMusicFlamingo:
    from testkit import CACHE, fetch_llama_cpp

    return ensure_tiny_musicflamingo(fetch_llama_cpp.resolve(), CACHE / "test-models")


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
