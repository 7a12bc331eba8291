#!/usr/bin/env python3
"""A random-weight Music Flamingo as GGUF files, written directly (no transformers, converter or quantizer), for
timing runs where the real weights cannot be downloaded (the GPU machine has no network).

Shapes: ``--shape full`` is the real model's (Qwen2.5-7B text model, Whisper-large-v3 audio encoder + projector);
``--shape tiny`` is a small model of the same architecture for rehearsing the benchmark on a CPU. Answers are noise;
for ``full`` the shapes, types, kernels and memory traffic are those of the real files.

Metadata (tokenizer, chat template, ``clip.*`` keys) is copied from a small GGUF pair of the same architecture —
the tests' tiny model, or the tensor-less copies ``--strip`` makes of it (a few MB, small enough to carry) — and
only the size keys change.

Weights are random bytes tiled from one 64 MB pool (scales set to small finite values, so every weight is finite
and ~1e-2): writing a 7B Q6_K model is then bound by the disk, not by the random number generator.

usage: make_model.py SMALL_MODEL.gguf SMALL_MMPROJ.gguf OUT_DIR [--shape full|tiny] [--type Q6_K|Q8_0|F16|BF16]
       make_model.py --strip SMALL_MODEL.gguf SMALL_MMPROJ.gguf OUT_DIR      (metadata-only copies)
needs: numpy and the llama.cpp tree's gguf-py on PYTHONPATH (PYTHONPATH=<tree>/gguf-py)
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter

SHAPES = {
    # Qwen2.5-7B + Whisper-large-v3 encoder (n_pos and n_mel are fixed by the audio framing: 1500 and 128)
    "full": dict(
        text=dict(n_embd=3584, n_ff=18944, n_head=28, n_head_kv=4, n_layer=28),
        audio=dict(n_embd=1280, n_ff=5120, n_head=20, n_layer=32),
    ),
    # the smallest that keeps Q6_K rows whole (multiples of 256) and the real 152k vocabulary
    "tiny": dict(
        text=dict(n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=2),
        audio=dict(n_embd=64, n_ff=128, n_head=4, n_layer=2),
    ),
}
AUDIO_POS, N_MEL = 1500, 128
FILE_TYPE = {Q.Q6_K: 18, Q.Q8_0: 7, Q.F16: 1, Q.BF16: 32}
TYPES = ["Q6_K", "Q8_0", "F16", "BF16"]
rng = np.random.default_rng(0)
POOL = rng.integers(0, 256, size=64 << 20, dtype=np.uint8)


def random_bytes(n: int, pool: np.ndarray = POOL) -> np.ndarray:
    """n random-looking bytes: the pool, from a random (even) offset, repeated as needed."""
    start = int(rng.integers(0, pool.size // 2)) * 2
    return np.resize(np.roll(pool, -start) if n > pool.size - start else pool[start : start + n], n)


HALF_POOLS: dict = {}


def half_bits(n: int, qtype: Q) -> np.ndarray:
    """n random 16-bit floats as bytes (2n), magnitudes 2^-7..2^-4: random sign and mantissa, exponent set, made
    once as a pool of the same size as the byte pool and tiled like it (a 15 GB F16 model is then bound by the
    disk like the quantized ones)."""
    if qtype not in HALF_POOLS:
        r = POOL.view("<u2")
        if qtype == Q.F16:  # 1 sign, 5 exponent (bias 15), 10 mantissa
            r = (r & 0x83FF) | ((8 + ((r >> 10) & 3)) << 10)
        else:  # BF16: 1 sign, 8 exponent (bias 127), 7 mantissa
            r = (r & 0x807F) | ((120 + ((r >> 7) & 3)) << 7)
        HALF_POOLS[qtype] = r.astype("<u2").view(np.uint8)
    return random_bytes(2 * n, HALF_POOLS[qtype])


@functools.lru_cache(maxsize=4)
def read_kv(path: Path) -> tuple:
    """Every key of a small GGUF as (key, value, type, sub_type), read once per process: parsing the 150k-token
    vocabulary with gguf-py's reader takes tens of seconds, and each weight type's model needs it."""
    out = []
    for key, f in GGUFReader(path).fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype, sub = f.types[0], None
        if vtype == GGUFValueType.ARRAY:
            sub = f.types[1] if len(f.types) > 1 else None
            if sub == GGUFValueType.STRING:
                val = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
        elif vtype == GGUFValueType.STRING:
            val = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            val = f.parts[f.data[0]].tolist()[0]
        out.append((key, val, vtype, sub))
    return tuple(out)


def copy_kv(small: Path, writer: GGUFWriter, override: dict) -> None:
    """Every key of the small file, with `override` replacing values (same key type)."""
    for key, val, vtype, sub in read_kv(small):
        if key in override:
            writer.add_key_value(key, override[key], vtype)
        elif sub is not None:
            writer.add_key_value(key, val, vtype, sub_type=sub)
        else:
            writer.add_key_value(key, val, vtype)


def quantized(rows: int, cols: int, qtype: Q) -> np.ndarray:
    """Random blocks with small finite scales: weights of magnitude ~1e-2, no inf/NaN anywhere."""
    if qtype in (Q.F16, Q.BF16):
        return half_bits(rows * cols, qtype).reshape(rows, 2 * cols)
    if qtype == Q.Q6_K:  # block of 256: ql[128] qh[64] scales int8[16] d f16 -> 210 bytes
        nb, bsz = cols // 256, 210
        b = random_bytes(rows * nb * bsz).reshape(rows * nb, bsz)
        b[:, 192:208] = (b[:, 192:208] % 17).astype(np.int8) - 8  # sub-block scales in [-8, 8]
        b[:, 208:210] = np.frombuffer(np.float16(6.2e-5).tobytes(), dtype=np.uint8)
    elif qtype == Q.Q8_0:  # block of 32: d f16, qs int8[32] -> 34 bytes
        nb, bsz = cols // 32, 34
        b = random_bytes(rows * nb * bsz).reshape(rows * nb, bsz)
        b[:, 0:2] = np.frombuffer(np.float16(1e-4).tobytes(), dtype=np.uint8)
    else:
        raise ValueError(qtype)
    return b.reshape(rows, nb * bsz)


def add(writer: GGUFWriter, name: str, arr: np.ndarray, qtype: Q | None = None) -> None:
    if qtype in (Q.Q6_K, Q.Q8_0, Q.F16, Q.BF16):
        writer.add_tensor(name, arr, raw_dtype=qtype)
    else:
        writer.add_tensor(name, arr)


def text_model(small: Path, out: Path, qtype: Q, t: dict) -> None:
    n_vocab = len(next(v for k, v, _, _ in read_kv(small) if k == "tokenizer.ggml.tokens"))
    w = GGUFWriter(out, "qwen2")
    e, ff, n_layer = t["n_embd"], t["n_ff"], t["n_layer"]
    kv = t["n_head_kv"] * (e // t["n_head"])
    copy_kv(
        small,
        w,
        {
            "qwen2.block_count": n_layer,
            "qwen2.embedding_length": e,
            "qwen2.feed_forward_length": ff,
            "qwen2.attention.head_count": t["n_head"],
            "qwen2.attention.head_count_kv": t["n_head_kv"],
            "general.file_type": FILE_TYPE[qtype],
            "general.name": "random",
        },
    )
    ones, zeros = (lambda n: np.ones(n, np.float32)), (lambda n: np.zeros(n, np.float32))
    add(w, "token_embd.weight", quantized(n_vocab, e, qtype), qtype)
    add(w, "output.weight", quantized(n_vocab, e, qtype), qtype)
    add(w, "output_norm.weight", ones(e))
    for i in range(n_layer):
        p = f"blk.{i}."
        add(w, p + "attn_norm.weight", ones(e))
        add(w, p + "ffn_norm.weight", ones(e))
        add(w, p + "attn_q.weight", quantized(e, e, qtype), qtype)
        add(w, p + "attn_q.bias", zeros(e))
        add(w, p + "attn_k.weight", quantized(kv, e, qtype), qtype)
        add(w, p + "attn_k.bias", zeros(kv))
        add(w, p + "attn_v.weight", quantized(kv, e, qtype), qtype)
        add(w, p + "attn_v.bias", zeros(kv))
        add(w, p + "attn_output.weight", quantized(e, e, qtype), qtype)
        add(w, p + "ffn_gate.weight", quantized(ff, e, qtype), qtype)
        add(w, p + "ffn_up.weight", quantized(ff, e, qtype), qtype)
        add(w, p + "ffn_down.weight", quantized(e, ff, qtype), qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def mmproj(small: Path, out: Path, a: dict, n_embd_text: int) -> None:
    w = GGUFWriter(out, "clip")
    copy_kv(
        small,
        w,
        {
            "clip.audio.projection_dim": n_embd_text,
            "clip.audio.embedding_length": a["n_embd"],
            "clip.audio.feed_forward_length": a["n_ff"],
            "clip.audio.block_count": a["n_layer"],
            "clip.audio.attention.head_count": a["n_head"],
            "general.name": "random",
        },
    )
    f16 = lambda *s: (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16)  # noqa: E731
    f32 = lambda *s: rng.standard_normal(s, dtype=np.float32) * 0.02  # noqa: E731
    e, ff = a["n_embd"], a["n_ff"]
    add(w, "a.conv1d.1.weight", f32(e, N_MEL, 3))
    add(w, "a.conv1d.1.bias", f32(e, 1))
    add(w, "a.conv1d.2.weight", f32(e, e, 3))
    add(w, "a.conv1d.2.bias", f32(e, 1))
    add(w, "a.position_embd.weight", f32(AUDIO_POS, e))
    add(w, "a.post_ln.weight", np.ones(e, np.float32))
    add(w, "a.post_ln.bias", np.zeros(e, np.float32))
    for i in range(a["n_layer"]):
        p = f"a.blk.{i}."
        for n in ("ln1", "ln2"):
            add(w, p + n + ".weight", np.ones(e, np.float32))
            add(w, p + n + ".bias", np.zeros(e, np.float32))
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            add(w, p + n + ".weight", f16(e, e))
            if n != "attn_k":
                add(w, p + n + ".bias", f32(e))
        add(w, p + "ffn_up.weight", f16(ff, e))
        add(w, p + "ffn_up.bias", f32(ff))
        add(w, p + "ffn_down.weight", f16(e, ff))
        add(w, p + "ffn_down.bias", f32(e))
    add(w, "mm.a.mlp.1.weight", f16(n_embd_text, e))
    add(w, "mm.a.mlp.1.bias", f32(n_embd_text))
    add(w, "mm.a.mlp.2.weight", f16(n_embd_text, n_embd_text))
    add(w, "mm.a.mlp.2.bias", f32(n_embd_text))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def strip(src: Path, out: Path, arch: str) -> None:
    """A copy of src's metadata without tensors (the part make_model needs of it)."""
    w = GGUFWriter(out, arch)
    copy_kv(src, w, {})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


def make(
    small_model: Path, small_mmproj: Path, out_dir: Path, shape: str = "full", qtype: str = "Q6_K"
) -> tuple[Path, Path]:
    """Writes OUT_DIR/model-<type>.gguf and OUT_DIR/mmproj-f16.gguf (once for all types); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    s = SHAPES[shape]
    model, proj = out_dir / f"model-{qtype}.gguf", out_dir / "mmproj-f16.gguf"
    # each file's marker is written last: a killed run leaves no half model behind
    proj_done, done = out_dir / f".{shape}-mmproj.done", out_dir / f".{shape}-{qtype}.done"
    if not (proj_done.exists() and proj.exists()):
        mmproj(small_mmproj, proj, s["audio"], s["text"]["n_embd"])
        proj_done.touch()
    if not (done.exists() and model.exists()):
        text_model(small_model, model, Q[qtype], s["text"])
        done.touch()
    return model, proj


def remove(out_dir: Path, shape: str, qtype: str) -> None:
    """Deletes one type's text model (the GPU machine's 64 GB disk holds Q6_K + Q8_0 + F16 only just)."""
    (out_dir / f".{shape}-{qtype}.done").unlink(missing_ok=True)
    (out_dir / f"model-{qtype}.gguf").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("small_model", type=Path)
    ap.add_argument("small_mmproj", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shape", default="full", choices=sorted(SHAPES))
    ap.add_argument("--type", default="Q6_K", choices=TYPES)
    ap.add_argument("--strip", action="store_true", help="write metadata-only copies of the small pair instead")
    a = ap.parse_args()
    t0 = time.time()
    if a.strip:
        a.out_dir.mkdir(parents=True, exist_ok=True)
        strip(a.small_model, a.out_dir / "meta-model.gguf", "qwen2")
        strip(a.small_mmproj, a.out_dir / "meta-mmproj.gguf", "clip")
    else:
        make(a.small_model, a.small_mmproj, a.out_dir, a.shape, a.type)
    print(f"wrote {a.out_dir} in {time.time() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
