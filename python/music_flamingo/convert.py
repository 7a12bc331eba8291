"""``music-flamingo convert SRC OUT_DIR``: a Hugging Face Music Flamingo checkpoint to the GGUF pair the engine loads.

One converter for both architectures (checkpoint.py): the preview (AF3 class) and ``musicflamingo`` (2601, think,
Audio Flamingo Next). It writes one text GGUF (Qwen2) and one mmproj GGUF (the audio encoder and projector) whose
tensor names, shapes, types and the metadata llama.cpp reads are what llama.cpp's own converter writes for the
preview (tests/test_convert.py compares them), plus ``music_flamingo.*`` keys the engine reads: the architecture, the
audio tokens, the trained audio length and, for ``musicflamingo``, the rotary time embedding (RoTE) parameters.

Each file is written under a temporary name in OUT_DIR and renamed when complete, so a full disk or an interrupted
run never leaves a file that looks finished. ``--quant`` also writes quantizations through the compiled llama.cpp
(``llama_model_quantize``) from the unquantized text GGUF; the mmproj stays unquantized (the audio encoder is small
and its numerics matter most).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._logging import logger
from .checkpoint import Checkpoint, TensorRef, load_checkpoint
from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MusicFlamingoError
from .gguf_vocab import add_vocab
from .models import fetch_hub_file, hub_file_url, hub_offline

OUTTYPES = ("f32", "f16", "bf16")
# --reasoning: "auto" tells a think variant by its name, template or tokenizer (Checkpoint.reasoning)
REASONING = ("auto", "think", "none")
# GGUF key prefix of everything this package adds (llama.cpp ignores keys it does not know)
KEY = "music_flamingo"


class ConvertError(MusicFlamingoError):
    """A conversion that cannot be done: unknown architecture, missing file, unmappable tensor, no disk space."""


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: where its data comes from, how it is reshaped, what type it is stored as."""

    name: str
    ref: TensorRef
    qtype: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]

    def data(self) -> np.ndarray:
        return _encode(self.ref.load().reshape(self.shape), self.qtype)


def _gguf():
    try:
        import gguf
    except ImportError as e:  # a dependency; only a broken install lacks it
        raise ConvertError("the 'gguf' package is needed to convert: pip install gguf") from e
    return gguf


def _encode(arr: np.ndarray, qtype) -> np.ndarray:
    """``arr`` (float32) stored as ``qtype`` (F32, F16 or BF16; BF16 rounds to nearest even, as llama.cpp's)."""
    gguf = _gguf()
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(arr.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(arr), qtype)


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    gguf = _gguf()
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def _ftype(outtype: str):
    gguf = _gguf()
    return {
        "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
        "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    }[outtype]


def _text_name(hf_name: str) -> str | None:
    """The Qwen2 name of a text-model tensor (``language_model.`` dropped, as llama.cpp's converter does), or None
    for the audio tower and projector."""
    if "audio_tower." in hf_name or "multi_modal_projector." in hf_name or "pos_emb." in hf_name:
        return None
    name = hf_name.replace("language_model.", "")
    return name[len("model.") :] if name.startswith("model.lm_head") else name


def _mmproj_name(hf_name: str) -> str | None:
    """The name llama.cpp's audio tensor map knows (``audio.`` before the projector, as its converter does), or None
    for the text model."""
    if "language_model." in hf_name or hf_name.endswith("lm_head.weight") or "pos_emb." in hf_name:
        return None
    name = hf_name[len("model.") :] if hf_name.startswith("model.") else hf_name
    return "audio." + name if name.startswith("multi_modal_projector") else name


def plan_tensors(ckpt: Checkpoint, outtype: str, mmproj: bool) -> list[PlannedTensor]:
    """Every tensor of one output file with its GGUF name, shape and type, by the rules of llama.cpp's converter:
    1-D tensors, norms and biases in F32; for the mmproj also the convolution weights (trained in bf16, kept F32)
    and the position embedding; everything else in ``outtype``."""
    gguf = _gguf()
    F32 = gguf.GGMLQuantizationType.F32
    _, qdefault = _ftype(outtype)
    if mmproj:
        n_layers = max(int(ckpt.audio_config["num_hidden_layers"]), 3)  # conv1/conv2 map through block ids 1, 2
        tmap, rename = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, n_layers), _mmproj_name
    else:
        n_layers = int(ckpt.text_config["num_hidden_layers"])
        tmap, rename = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers), _text_name
    out = []
    for hf_name, ref in ckpt.items():
        src = rename(hf_name)
        if src is None or src.endswith((".rotary_emb.inv_freq", ".attention.masked_bias")):
            continue
        name = tmap.get_name(src, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConvertError(f"{ckpt.path}: tensor {hf_name!r} has no GGUF name (an unexpected checkpoint layout)")
        shape = ref.shape + (1,) if mmproj and hf_name.endswith(("conv1.bias", "conv2.bias")) else ref.shape
        qtype = qdefault
        if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
            qtype = F32
        elif mmproj and (".conv" in hf_name or name.startswith("a.position_embd")):
            qtype = F32
        out.append(PlannedTensor(name, ref, qtype, shape))
    return out


def text_metadata(writer, ckpt: Checkpoint, outtype: str) -> None:
    """The Qwen2 keys llama.cpp's converter writes (from the text config alone: the top level of a musicflamingo
    config holds the RoTE's ``rope_parameters`` and the audio width as ``head_dim``), the tokenizer, and ours."""
    gguf = _gguf()
    t = ckpt.text_config
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_block_count(int(t["num_hidden_layers"]))
    writer.add_context_length(int(t["max_position_embeddings"]))
    writer.add_embedding_length(int(t["hidden_size"]))
    writer.add_feed_forward_length(int(t["intermediate_size"]))
    writer.add_head_count(int(t["num_attention_heads"]))
    writer.add_head_count_kv(int(t.get("num_key_value_heads", t["num_attention_heads"])))
    rope = t.get("rope_parameters") or {"rope_theta": t.get("rope_theta", 10000.0)}
    factor = rope.get("factor")
    if rope.get("rope_type") == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope.get("rope_type") == "yarn" and factor is not None:  # long-context text models (AF-Next: 131k)
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope.get("rope_type") not in (None, "default"):
        raise ConvertError(f"{ckpt.path}: text rope_type {rope.get('rope_type')!r} is not one this converts")
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(t["rms_norm_eps"]))
    if t.get("head_dim") is not None:
        writer.add_key_length(int(t["head_dim"]))
        writer.add_value_length(int(t["head_dim"]))
    writer.add_file_type(_ftype(outtype)[0])
    try:
        add_vocab(writer, ckpt.path, int(t["vocab_size"]))
    except ValueError as e:
        raise ConvertError(str(e)) from e
    _our_metadata(writer, ckpt)


def _our_metadata(writer, ckpt: Checkpoint) -> None:
    """What the engine reads beyond llama.cpp's keys (both files carry it, so either one tells the model apart);
    ``reasoning`` ("think") only for a think variant: its answers start with a reasoning block (reasoning.py)."""
    writer.add_string(f"{KEY}.architecture", ckpt.architecture)
    writer.add_string(f"{KEY}.checkpoint", ckpt.path.name)
    if ckpt.reasoning_format:
        writer.add_string(f"{KEY}.reasoning", ckpt.reasoning_format)
    writer.add_uint32(f"{KEY}.max_audio_seconds", ckpt.max_audio_seconds())
    writer.add_uint32(f"{KEY}.audio_token_id", ckpt.audio_token("audio_token_id"))
    if ckpt.architecture == "musicflamingo":
        writer.add_uint32(f"{KEY}.audio_bos_token_id", ckpt.audio_token("audio_bos_token_id"))
        writer.add_uint32(f"{KEY}.audio_eos_token_id", ckpt.audio_token("audio_eos_token_id"))


def mmproj_metadata(writer, ckpt: Checkpoint, outtype: str) -> None:
    """The audio encoder keys llama.cpp's converter writes for the AF3 class (projector type ``musicflamingo``), and
    for a musicflamingo checkpoint the RoTE parameters (a function of the config: transformers'
    MusicFlamingoRotaryEmbedding)."""
    gguf = _gguf()
    a = ckpt.audio_config
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_file_type(_ftype(outtype)[0])
    writer.add_clip_has_audio_encoder(True)
    writer.add_audio_projection_dim(int(ckpt.text_config["hidden_size"]))
    writer.add_audio_embedding_length(int(a["hidden_size"]))
    writer.add_audio_feed_forward_length(int(a["intermediate_size"]))
    writer.add_audio_block_count(int(a["num_hidden_layers"]))
    writer.add_audio_head_count(int(a["num_attention_heads"]))
    writer.add_clip_projector_type(gguf.VisionProjectorType.MUSIC_FLAMINGO)
    writer.add_audio_num_mel_bins(int(a["num_mel_bins"]))
    writer.add_audio_attention_layernorm_eps(float(a.get("layer_norm_eps", 1e-5)))
    _our_metadata(writer, ckpt)
    if ckpt.architecture == "musicflamingo":
        rope = ckpt.config.get("rope_parameters") or {}
        theta = float(rope.get("rope_theta", 1200.0))
        # MusicFlamingoConfig: head_dim = the encoder width, max_position_embeddings = rope_theta
        writer.add_uint32(f"{KEY}.rote.dim", int(int(a["hidden_size"]) * float(rope.get("partial_rotary_factor", 0.2))))
        writer.add_float32(f"{KEY}.rote.theta", theta)
        writer.add_float32(f"{KEY}.rote.max_positions", float(ckpt.config.get("max_position_embeddings", theta)))
        writer.add_float32(f"{KEY}.rote.frame_step", float(ckpt.config.get("audio_frame_step", 0.01)))
        if rope.get("rope_type", "default") != "default":
            raise ConvertError(f"{ckpt.path}: RoTE rope_type {rope['rope_type']!r} is not one this converts")


def write_gguf(
    path: Path, arch: str, name: str, metadata: Callable, tensors: list[PlannedTensor], progress: bool
) -> Path:
    """Write one GGUF to ``path`` through a temporary file in the same folder, renamed only when complete: a full
    disk or an interruption leaves no file that looks finished."""
    gguf = _gguf()
    need = sum(_nbytes(t.shape, t.qtype) for t in tensors)
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise ConvertError(
            f"not enough disk space for {path.name}: {need / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free"
        )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(None, arch)
        writer.add_name(name)
        writer.add_size_label(gguf.size_label(sum(int(np.prod(t.shape)) for t in tensors), 0, 0, 0))
        metadata(writer)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.float32, _nbytes(t.shape, t.qtype), raw_dtype=t.qtype)
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_data(writer, tensors, path.name, progress)
        writer.close()
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise ConvertError(
                f"the disk filled while writing {path} ({need / 1e9:.2f} GB needed); nothing kept"
            ) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_data(writer, tensors: list[PlannedTensor], label: str, progress: bool) -> None:
    """The tensors' data, one at a time (the memory of one tensor), with a byte progress bar."""
    from tqdm import tqdm

    total = sum(_nbytes(t.shape, t.qtype) for t in tensors)
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress, file=sys.stderr) as bar:
        for t in tensors:
            data = t.data()
            writer.write_tensor_data(data)
            bar.update(data.nbytes)
    writer.fout[0].flush()
    os.fsync(writer.fout[0].fileno())


@dataclass(frozen=True)
class ConvertResult:
    """The files written: the unquantized text GGUF, the mmproj, and one text GGUF per quantization asked for."""

    model: Path
    mmproj: Path
    quants: dict[str, Path]


def output_names(stem: str, outtype: str) -> tuple[str, str]:
    """File names in the published quants' style (``music-flamingo-hf.Q8_0.gguf``, ``….mmproj-f16.gguf``)."""
    return f"{stem}.{outtype.upper()}.gguf", f"{stem}.mmproj-{outtype}.gguf"


def convert(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    outtype: str = "f16",
    quants: Sequence[str] = (),
    progress: bool = True,
    imatrix: str | os.PathLike | None = None,
    reasoning: str = "auto",
) -> ConvertResult:
    """Convert the checkpoint at ``src`` (a folder, or a Hugging Face id fetched first) into ``out_dir``.
    ``reasoning``: "think" marks a think variant (answers start with ``<think>…</think>``), "none" a plain one,
    "auto" tells them apart (Checkpoint.reasoning)."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    if reasoning not in REASONING:
        raise ConvertError(f"reasoning must be one of {', '.join(REASONING)}, got {reasoning!r}")
    for q in quants:
        _quant_type(q)  # refused before hours of work
    if imatrix:
        load_imatrix(imatrix)
    out = Path(out_dir)
    ckpt = load_checkpoint(_local_checkpoint(src, out))
    ckpt.reasoning_format = ckpt.reasoning() if reasoning == "auto" else {"think": "think"}.get(reasoning)
    out.mkdir(parents=True, exist_ok=True)
    text_name, mmproj_name = output_names(ckpt.path.name, outtype)
    logger.info(
        "converting %s (%s%s) to %s", ckpt.path, ckpt.architecture, ", think" * bool(ckpt.reasoning_format), out
    )
    name = ckpt.path.name.replace("-", " ").title()  # as llama.cpp names it from the folder ("Hf")
    mmproj = write_gguf(
        out / mmproj_name,
        "clip",
        name,
        lambda w: mmproj_metadata(w, ckpt, outtype),
        plan_tensors(ckpt, outtype, True),
        progress,
    )
    model = write_gguf(
        out / text_name,
        "qwen2",
        name,
        lambda w: text_metadata(w, ckpt, outtype),
        plan_tensors(ckpt, outtype, False),
        progress,
    )
    written = {q: quantize(model, out / f"{ckpt.path.name}.{q}.gguf", q, imatrix=imatrix) for q in quants}
    return ConvertResult(model, mmproj, written)


def _local_checkpoint(src: str | os.PathLike, out: Path) -> Path:
    """A local folder as is; ``owner/name`` (not a local path) fetched from the Hugging Face Hub into
    ``out/<name>`` (:func:`fetch_checkpoint`)."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(src)):
        raise ConvertError(f"{src} does not exist (a checkpoint folder, or a Hugging Face id like nvidia/x)")
    return fetch_checkpoint(str(src), out)


# What a conversion reads besides the weights: the config and tokenizer (required), the template and processor
# config (where the checkpoint has them).
HUB_REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json")
HUB_OPTIONAL = ("chat_template.jinja", "processor_config.json", "generation_config.json", "special_tokens_map.json")


def fetch_checkpoint(repo: str, out: Path) -> Path:
    """The files of Hub repository ``repo`` a conversion reads, fetched into ``out/<name>`` with the package's
    downloader (models.fetch_hub_file: resumed across runs, checked against the Hub's sha256; files already there
    are kept): the config first (a missing repository fails before anything large), the tokenizer, then the
    safetensors shards the index names (else ``model.safetensors``)."""
    if hub_offline():
        raise ConvertError(f"{repo} is not a local folder and HF_HUB_OFFLINE is set: download it and pass the folder")
    dest = out / repo.split("/")[1]
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("%s is not a local folder: fetching it from the Hugging Face Hub into %s", repo, dest)
    try:
        for name in HUB_REQUIRED:
            _fetch(repo, name, dest, required=True)
        for name in HUB_OPTIONAL:
            _fetch(repo, name, dest, required=False)
        shards = ["model.safetensors"]
        if _fetch(repo, "model.safetensors.index.json", dest, required=False):
            shards = _shards(dest / "model.safetensors.index.json")
        for name in shards:
            _fetch(repo, name, dest, required=True)
    except BaseException:
        if not any(dest.iterdir()):  # nothing fetched (no such repository): leave no empty folder
            dest.rmdir()
        raise
    return dest


def _shards(index: Path) -> list[str]:
    """The safetensors files a shard index names: plain file names only (an index naming ``../x`` or a folder
    cannot make the download write outside the checkpoint folder); ConvertError for an index that names none."""
    try:
        names = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        shards = sorted({str(n) for n in names if re.fullmatch(r"[\w.-]+\.safetensors", str(n))})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConvertError(f"{index} is not a safetensors index ({e})") from e
    if not shards:
        raise ConvertError(f"{index} names no safetensors file")
    return shards


def _fetch(repo: str, name: str, dest: Path, required: bool) -> bool:
    """One file of ``repo`` into ``dest`` (kept if already there); False for a missing optional file."""
    from urllib.error import HTTPError

    if (dest / name).is_file():
        return True
    try:
        fetch_hub_file(repo, name, dest / name)
    except HTTPError as e:
        if e.code == 404 and not required:
            return False
        why = e.headers.get("X-Error-Code") or e.reason
        hint = " (no such repository, or a gated one: set HF_TOKEN)" if e.code in (401, 403, 404) else ""
        raise ConvertError(f"could not fetch {name} of {repo} from {hub_file_url(repo, name)}: {why}{hint}") from e
    return True


def _quant_type(name: str) -> int:
    """llama.cpp's file type number of a quantization name (Q8_0, Q6_K, Q4_K_M, ...)."""
    gguf = _gguf()
    try:
        return int(gguf.LlamaFileType[f"MOSTLY_{name.upper()}"])
    except KeyError:
        known = sorted(t.name[len("MOSTLY_") :] for t in gguf.LlamaFileType if t.name.startswith("MOSTLY_"))
        raise ConvertError(f"unknown quantization {name!r} (known: {', '.join(known)})") from None


def load_imatrix(path: str | os.PathLike) -> list[tuple[str, list[float]]]:
    """An importance matrix as llama.cpp's quantize tool reads it (the GGUF format ``llama-imatrix`` writes:
    ``<tensor>.in_sum2`` and ``<tensor>.counts`` per tensor, normalised per expert by its count; 1 where a count is
    0). The older binary ``.dat`` format is refused with a clear message."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: not an imatrix GGUF ({e}); convert a legacy .dat with llama-imatrix") from e
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    out = []
    for name in sorted(n.removesuffix(".in_sum2") for n in tensors if n.endswith(".in_sum2")):
        sums, counts = tensors[f"{name}.in_sum2"], tensors.get(f"{name}.counts")
        if counts is None or counts.size == 0 or sums.size % counts.size:
            raise ConvertError(f"{path}: tensor {name} has no matching counts")
        per = sums.reshape(counts.size, -1)
        values = np.where(counts[:, None] > 0, per / np.maximum(counts[:, None], 1e-30), 1.0)
        out.append((name, values.astype(np.float32).reshape(-1).tolist()))
    if not out:
        raise ConvertError(f"{path} holds no importance data (*.in_sum2 tensors)")
    return out


def quantize(src: Path, dst: Path, qname: str, n_threads: int = 0, imatrix: str | os.PathLike | None = None) -> Path:
    """``src`` quantized to ``qname`` by the compiled llama.cpp (``llama_model_quantize``), written to ``dst``
    through a temporary name; ``imatrix``: an importance matrix file (load_imatrix)."""
    from . import _core

    matrix = load_imatrix(imatrix) if imatrix else []

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        logger.info("quantizing %s to %s", src.name, qname)
        _core.quantize_model(str(src), str(tmp), _quant_type(qname), int(n_threads), matrix)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="music-flamingo convert",
        description="Convert a Hugging Face Music Flamingo checkpoint (the preview, 2601, think, Audio Flamingo "
        "Next) into the text GGUF and mmproj GGUF the engine loads.",
    )
    p.add_argument("src", help="checkpoint folder, or a Hugging Face id (fetched first)")
    p.add_argument("out_dir", type=Path, help="folder for the GGUF files (created if needed)")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16", help="unquantized type (default: f16)")
    p.add_argument("--quant", default="", help="also write these quantizations, comma-separated (e.g. Q8_0,Q6_K)")
    p.add_argument("--imatrix", default=None, help="importance matrix (llama-imatrix's GGUF) for the quantizations")
    p.add_argument(
        "--reasoning",
        choices=REASONING,
        default="auto",
        help="mark a think variant, whose answers start with <think>...</think> (default auto: by its name, chat "
        "template or tokenizer)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quants = [q.strip() for q in a.quant.split(",") if q.strip()]
    try:
        r = convert(a.src, a.out_dir, a.outtype, quants, progress=not a.quiet, imatrix=a.imatrix, reasoning=a.reasoning)
    except (MusicFlamingoError, OSError) as e:
        print(f"music-flamingo convert: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, MusicFlamingoError) else EXIT_FAILED
    for path in (r.model, r.mmproj, *r.quants.values()):
        print(path)
    return EXIT_OK
