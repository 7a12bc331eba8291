"""A full-size random ``musicflamingo`` checkpoint on disk (the shapes of Music Flamingo 2601: Qwen2.5-7B text model,
Whisper-large-v3-shaped encoder, 1280 -> 3584 -> 3584 projector), written as bf16 safetensors shards, for measuring
what ``music-flamingo convert`` takes on the real 8B without downloading it.

Weights are a 1 MiB block of small random bf16 values tiled over each tensor (no transformers random init: that
would take the model's memory and many minutes); norms are 1, biases 0. The tokenizer, chat template and processor
config come from a small checkpoint of the same architecture (testkit's tiny musicflamingo), the config keeps its
keys with the real sizes.

    python -m bench.full_size_checkpoint SMALL_HF_DIR OUT_DIR [--layers 28]
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np

TEXT = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)
AUDIO = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32)
N_MEL, N_POS = 128, 1500
SHARD_BYTES = 4_000_000_000  # about what the published checkpoints use per shard
COPIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json")


def tensor_shapes(n_layers: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint and its shape, in the names transformers saves."""
    e, ff, v = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["vocab_size"]
    kv = TEXT["num_key_value_heads"] * e // TEXT["num_attention_heads"]
    a, aff = AUDIO["hidden_size"], AUDIO["intermediate_size"]
    s = {"language_model.lm_head.weight": (v, e), "language_model.model.embed_tokens.weight": (v, e)}
    s["language_model.model.norm.weight"] = (e,)
    for i in range(n_layers):
        p = f"language_model.model.layers.{i}."
        s |= {p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,)}
        s |= {
            p + "mlp.down_proj.weight": (e, ff),
            p + "mlp.gate_proj.weight": (ff, e),
            p + "mlp.up_proj.weight": (ff, e),
        }
        for n, rows in (("q", e), ("k", kv), ("v", kv)):
            s |= {p + f"self_attn.{n}_proj.weight": (rows, e), p + f"self_attn.{n}_proj.bias": (rows,)}
        s[p + "self_attn.o_proj.weight"] = (e, e)
    s |= {"audio_tower.conv1.weight": (a, N_MEL, 3), "audio_tower.conv1.bias": (a,)}
    s |= {"audio_tower.conv2.weight": (a, a, 3), "audio_tower.conv2.bias": (a,)}
    s |= {"audio_tower.embed_positions.weight": (N_POS, a)}
    s |= {"audio_tower.layer_norm.weight": (a,), "audio_tower.layer_norm.bias": (a,)}
    for i in range(AUDIO["num_hidden_layers"]):
        p = f"audio_tower.layers.{i}."
        s |= {p + "fc1.weight": (aff, a), p + "fc1.bias": (aff,), p + "fc2.weight": (a, aff), p + "fc2.bias": (a,)}
        for n in ("final_layer_norm", "self_attn_layer_norm"):
            s |= {p + n + ".weight": (a,), p + n + ".bias": (a,)}
        for n in ("q", "k", "v", "out"):
            s[p + f"self_attn.{n}_proj.weight"] = (a, a)
            if n != "k":
                s[p + f"self_attn.{n}_proj.bias"] = (a,)
    s |= {"multi_modal_projector.linear_1.weight": (e, a), "multi_modal_projector.linear_1.bias": (e,)}
    s |= {"multi_modal_projector.linear_2.weight": (e, e), "multi_modal_projector.linear_2.bias": (e,)}
    return s


def _fill(name: str, n: int, block: np.ndarray) -> np.ndarray:
    """``n`` bf16 values (as uint16): 1 for norm weights, 0 for biases, the random block tiled otherwise."""
    if name.endswith(".bias"):
        return np.zeros(n, np.uint16)
    if "norm" in name:
        return np.full(n, 0x3F80, np.uint16)  # bf16 1.0
    return np.resize(block, n)


def write_shards(out: Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """The tensors in bf16 safetensors shards of about SHARD_BYTES each, plus the index transformers writes."""
    block = (np.random.default_rng(0).standard_normal(1 << 19, dtype=np.float32) * 0.02).view(np.uint32) >> 16
    block = block.astype(np.uint16)
    shards, cur, size = [], {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        if cur and size + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[name], size = shape, size + nbytes
    shards.append(cur)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard.items():
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape in shard.items():
                f.write(_fill(name, int(np.prod(shape)), block).tobytes())
        total += off
        print(f"{fname}: {off / 1e9:.2f} GB", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def write_config(small: Path, out: Path, n_layers: int) -> None:
    cfg = json.loads((small / "config.json").read_text())
    cfg["text_config"] |= TEXT | {"num_hidden_layers": n_layers, "layer_types": ["full_attention"] * n_layers}
    cfg["audio_config"] |= AUDIO
    cfg["head_dim"] = AUDIO["hidden_size"]  # MusicFlamingoConfig: the RoTE's width is the encoder's
    cfg["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in COPIED:
        if (small / name).is_file():
            shutil.copy(small / name, out / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("small", type=Path, help="a small musicflamingo checkpoint folder (tokenizer, template, config)")
    ap.add_argument("out", type=Path, help="folder to write (created)")
    ap.add_argument("--layers", type=int, default=28, help="text layers (28 = Qwen2.5-7B)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    write_config(a.small, a.out, a.layers)
    total = write_shards(a.out, tensor_shapes(a.layers))
    print(f"{total / 1e9:.2f} GB of bf16 in {time.monotonic() - t0:.0f} s -> {a.out}")


if __name__ == "__main__":
    main()
