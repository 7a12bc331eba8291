#!/usr/bin/env python3
"""A random-weight Music Flamingo as a transformers checkpoint (AudioFlamingo3ForConditionalGeneration), for timing
the transformers backend where the real weights cannot be downloaded (the GPU machine has no network).

``shape="full"``: the real model's sizes (Qwen2.5-7B text model, Whisper-large-v3 encoder), built on the GPU in
bf16 by transformers' own classes and initialisation (≈16.5 GB; seconds on the GPU, then the disk's time to save
it); ``shape="tiny"``: the sizes of the small checkpoint it starts from (the CPU rehearsal). The tokenizer,
processor and chat template are copied from that small checkpoint (the tests' tiny model: the real Qwen2 vocabulary
and Music Flamingo's audio tokens), so prompts, audio placeholders and ids are the real ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# the sizes make_model.SHAPES["full"] writes as GGUF, in transformers' names
FULL_TEXT = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4
)
FULL_AUDIO = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20)


def build(meta_dir: Path, out_dir: Path, shape: str = "full", device: str = "cpu") -> Path:
    """Writes OUT_DIR (config, safetensors, processor files); returns it. Reused when already complete."""
    import torch
    import transformers

    done = out_dir / f".{shape}.done"
    if done.exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = transformers.AutoConfig.from_pretrained(meta_dir, local_files_only=True)
    if shape == "full":
        for k, v in FULL_TEXT.items():
            setattr(cfg.text_config, k, v)
        for k, v in FULL_AUDIO.items():
            setattr(cfg.audio_config, k, v)
    cls = getattr(transformers, cfg.architectures[0])
    dtype = torch.bfloat16 if shape == "full" else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    model.save_pretrained(out_dir)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    for f in meta_dir.iterdir():  # tokenizer, processor, chat template, generation config
        if f.is_file() and not f.name.startswith("model") and f.name != "config.json":
            shutil.copy2(f, out_dir / f.name)
    done.touch()
    return out_dir


def strip(hf_dir: Path, out_dir: Path) -> None:
    """The small checkpoint without its weights (what build() needs of it; a few MB, carried to the GPU)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        if f.is_file() and not f.name.startswith("model"):
            shutil.copy2(f, out_dir / f.name)
