#!/usr/bin/env python
"""A tiny random Music Flamingo model for tests, built offline and converted to GGUF.

The real checkpoint is gigabytes; tests only need something with the same architecture
(``AudioFlamingo3ForConditionalGeneration``), the real Qwen2 BPE vocabulary and the Music Flamingo
audio tokens, so both backends can load it and produce non-trivial (peaked) logits. The result is
cached under a key that changes whenever this file or the llama.cpp tree changes.

Script use (from the repository root): ``python -m testkit.tiny_model --llama-cpp-dir DIR --cache-dir DIR``
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEED = 0
# The default 0.02 gives near-flat logits (top-1/top-2 gap ~5e-3), which makes equality tests meaningless.
INIT_STD = 0.2
# convert_hf_to_gguf.py --mmproj maps audio_tower.conv{1,2} through the per-block tensor map, which
# only covers block ids < num_hidden_layers: with 2 encoder layers the conversion fails.
AUDIO_LAYERS = 3
N_BASE_VOCAB = 151643  # BPE tokens in Qwen2; specials start here
# Qwen2.5 added tokens (151643..151664) as (content, special), as in Qwen2.5's tokenizer.json.
QWEN25_ADDED = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
# 151665..151668 are unknown names in the real model; placeholders keep the audio tokens at the ids
# transformers' AudioFlamingo3 config defaults to (<sound>=151669, <|sound_bos|>, <|sound_eos|>).
FILLER = [(f"<|mf_reserved_{i}|>", True) for i in range(4)]
AUDIO = [("<sound>", True), ("<|sound_bos|>", True), ("<|sound_eos|>", True)]
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The template transformers' AudioFlamingo3 conversion writes (convert_audioflamingo3_to_hf.py, the processor's):
# ChatML with a default system message when the conversation has none, as the real checkpoints' templates have,
# string content as is and list content as <sound> then the texts. One template serves tokenizer and processor
# (both write chat_template.jinja), so it is also the GGUF's tokenizer.chat_template.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages if m['content'] is not none %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}"
    "{{ m['content'] }}"
    "{% else %}"
    "{% set audio = namespace(found=False) %}"
    "{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' or 'audio' in c %}"
    "{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}"
    "{% set text_buf.v = text_buf.v + c['text'] %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """Paths of a built tiny model: HF checkpoint folder, text GGUF (f32) and mmproj GGUF (f32)."""

    hf_dir: Path
    model_gguf: Path
    mmproj_gguf: Path


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Read a GGUF file's key/value header (no tensors).

    gguf-py's GGUFReader takes ~18 s on a 152k-token vocabulary; this parser takes well under a second.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, _n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        off = 24

        def string() -> str:
            nonlocal off
            (n,) = struct.unpack_from("<Q", m, off)
            off += 8 + n
            return m[off - n : off].decode("utf-8")

        def value(t: int) -> Any:
            nonlocal off
            if t == 8:
                return string()
            if t == 9:
                et, n = struct.unpack_from("<IQ", m, off)
                off += 12
                if et in (8, 9):
                    return [value(et) for _ in range(n)]
                fmt = _SCALARS[et]
                vals = list(struct.unpack_from(f"<{n}{fmt[1]}", m, off))
                off += n * struct.calcsize(fmt)
                return vals
            (v,) = struct.unpack_from(_SCALARS[t], m, off)
            off += struct.calcsize(_SCALARS[t])
            return v

        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack_from("<I", m, off)
            off += 4
            meta[key] = value(t)
        return meta


def _build_tokenizer(vocab_gguf: Path) -> Any:
    """Real Qwen2 BPE (from llama.cpp's vocab GGUF) re-packed with Qwen2.5 specials and audio tokens.

    The llama.cpp converter hashes a tokenization of a check text to recognise the pre-tokenizer, so
    the vocabulary and merges must be the real ones; the layout mirrors Qwen2.5's tokenizer.json.
    """
    from tokenizers import Tokenizer
    from transformers import Qwen2Tokenizer

    meta = read_gguf_metadata(vocab_gguf)
    tokens, merges = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            dict(
                id=N_BASE_VOCAB + i,
                content=t,
                single_word=False,
                lstrip=False,
                rstrip=False,
                normalized=False,
                special=s,
            )
            for i, (t, s) in enumerate(QWEN25_ADDED + FILLER + AUDIO)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens[:N_BASE_VOCAB])},
            "merges": [mg.split(" ", 1) for mg in merges],
        },
    }
    tok = Qwen2Tokenizer(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=131072,
        extra_special_tokens=None,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _build_hf_checkpoint(out_dir: Path, vocab_gguf: Path) -> None:
    """Save a random AF3 checkpoint (text hidden 64 x 2 layers, encoder 64 x 3 layers) plus processor."""
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3EncoderConfig,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        WhisperFeatureExtractor,
    )

    tok = _build_tokenizer(vocab_gguf)
    text_cfg, audio_cfg = tiny_configs(tok, AudioFlamingo3EncoderConfig)
    cfg = AudioFlamingo3Config(
        audio_config=audio_cfg, text_config=text_cfg, audio_token_id=tok.convert_tokens_to_ids("<sound>")
    )
    processor = AudioFlamingo3Processor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        max_audio_len=1200,
    )
    save_random(AudioFlamingo3ForConditionalGeneration, cfg, processor, out_dir)


def tiny_configs(tok, encoder_config_class):
    """The text model's and the audio encoder's configs of every tiny checkpoint (text hidden 64 x 2 layers, encoder
    64 x ``AUDIO_LAYERS`` layers), the real vocabulary's special tokens."""
    from transformers import Qwen2Config

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
        tie_word_embeddings=False,  # the AF3 class does not tie, so say so
        initializer_range=INIT_STD,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    audio_cfg = encoder_config_class(
        num_mel_bins=128,
        num_hidden_layers=AUDIO_LAYERS,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_size=64,
        max_source_positions=1500,
        initializer_range=INIT_STD,
    )
    return text_cfg, audio_cfg


def save_random(model_class, cfg, processor, out_dir: Path) -> None:
    """A model of ``model_class`` with seeded random weights (norms and biases too) and greedy generation defaults,
    saved with its processor."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(SEED)
    model = model_class(cfg).eval()
    with torch.no_grad():  # non-trivial norms/biases, so a backend that drops them is caught
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * INIT_STD)
    text_cfg, tok = cfg.text_config, processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=text_cfg.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def _convert(llama_cpp_dir: Path, hf_dir: Path, outfile: Path, mmproj: bool) -> None:
    """Run the tree's own converter, so the GGUF matches what that llama.cpp version expects."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(llama_cpp_dir / "gguf-py"), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        str(llama_cpp_dir / "convert_hf_to_gguf.py"),
        str(hf_dir),
        "--outtype",
        "f32",
        "--outfile",
        str(outfile),
    ] + (["--mmproj"] if mmproj else [])
    proc = subprocess.run(cmd, env=env, cwd=outfile.parent, capture_output=True, text=True)
    if proc.returncode != 0 or not outfile.is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _check(model_gguf: Path, mmproj_gguf: Path) -> None:
    """Fail early (not inside a test) if the converter did not produce a Music Flamingo pair."""
    mm = read_gguf_metadata(mmproj_gguf)
    ptype = mm.get("clip.audio.projector_type", mm.get("clip.projector_type"))
    if ptype != "musicflamingo" or mm.get("clip.has_audio_encoder") is not True:
        raise RuntimeError(
            f"{mmproj_gguf}: projector type {ptype!r}, has_audio_encoder "
            f"{mm.get('clip.has_audio_encoder')!r}; expected 'musicflamingo', True"
        )
    log.info("mmproj metadata: %s", {k: v for k, v in mm.items() if k.startswith("clip.")})
    tmpl = read_gguf_metadata(model_gguf).get("tokenizer.chat_template")
    if not tmpl or "<|im_start|>" not in tmpl:
        raise RuntimeError(f"{model_gguf}: unexpected tokenizer.chat_template {tmpl!r}")
    log.info("text model chat template: %r", tmpl)


def build_once(final: Path, outputs: tuple[Path, ...], build) -> None:
    """Make the cached folder ``final`` (holding ``outputs``) once across processes: ``build(tmp)`` writes into a
    fresh folder beside it, renamed into place when complete, so a reader never sees half a model."""
    if all(p.is_file() for p in outputs):
        return
    cache_dir = final.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second pytest worker waits here, then takes the fast path
        if all(p.is_file() for p in outputs):
            return
        if final.exists():  # only reachable if someone tampered with it; the rename below is atomic
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=cache_dir))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared with other users (CI)
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_tiny_model(llama_cpp_dir: Path, cache_dir: Path) -> TinyModel:
    """Return the cached tiny model, building it (once, across processes) if needed."""
    llama_cpp_dir, cache_dir = Path(llama_cpp_dir).resolve(), Path(cache_dir)
    key = hashlib.sha256(Path(__file__).read_bytes() + llama_cpp_dir.name.encode()).hexdigest()[:12]
    final = cache_dir / f"tiny-music-flamingo-{key}"
    result = TinyModel(final / "hf", final / "model-f32.gguf", final / "mmproj-f32.gguf")

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        _build_hf_checkpoint(tmp / "hf", llama_cpp_dir / "models" / "ggml-vocab-qwen2.gguf")
        log.info("HF checkpoint built in %.1fs", time.monotonic() - t0)
        for name, mmproj in ((result.model_gguf.name, False), (result.mmproj_gguf.name, True)):
            t0 = time.monotonic()
            _convert(llama_cpp_dir, tmp / "hf", tmp / name, mmproj)
            log.info("converted %s in %.1fs", name, time.monotonic() - t0)
        _check(tmp / result.model_gguf.name, tmp / result.mmproj_gguf.name)

    build_once(final, (result.model_gguf, result.mmproj_gguf), build)
    return result


def default_tiny_model() -> TinyModel:
    """The tiny model of the llama.cpp tree this package builds with, in the test cache: what the benchmarks use
    when no model is given (the tests' ``tiny`` fixture also honours ``LLAMA_CPP_DIR``)."""
    from . import fetch_llama_cpp

    return ensure_tiny_model(fetch_llama_cpp.resolve(), fetch_llama_cpp.cache_root() / "test-models")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp-dir", type=Path, required=True, help="llama.cpp source tree")
    ap.add_argument("--cache-dir", type=Path, required=True, help="where built models are kept")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.monotonic()
    tiny = ensure_tiny_model(args.llama_cpp_dir, args.cache_dir)
    for field in dataclasses.fields(tiny):
        print(f"{field.name}: {getattr(tiny, field.name)}")
    print(f"done in {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
