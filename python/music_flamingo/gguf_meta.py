"""A GGUF file's header read fast: its key/value metadata and, on request, its tensor table (no tensor data).

gguf-py's GGUFReader takes ~18 s on a 152k-token vocabulary; this parser takes well under a second, so the package
can read what it needs (the model's architecture, audio tokens, trained audio length) before loading the model.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

from .errors import ModelFileError
from .reasoning import THINK_NAME

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]  # ggml order (ne0 first), as llama.cpp sees it
    ggml_type: int


class _Cursor:
    def __init__(self, m: mmap.mmap) -> None:
        self.m, self.off = m, 0

    def unpack(self, fmt: str) -> tuple:
        v = struct.unpack_from(fmt, self.m, self.off)
        self.off += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        (n,) = self.unpack("<Q")
        self.off += n
        return self.m[self.off - n : self.off].decode("utf-8")

    def value(self, t: int) -> Any:
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.unpack("<IQ")
            if et in (8, 9):
                return [self.value(et) for _ in range(n)]
            return list(self.unpack(f"<{n}{_SCALARS[et][1]}"))
        return self.unpack(_SCALARS[t])[0]


def read_gguf(path: str | os.PathLike, tensors: bool = False) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """The metadata of ``path`` and (with ``tensors``) its tensor table; ModelFileError if it is no GGUF."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF":
                raise ModelFileError(f"{path} is not a GGUF file")
            c = _Cursor(m)
            c.off = 4
            _version, n_tensors, n_kv = c.unpack("<IQQ")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = c.string()
                (t,) = c.unpack("<I")
                meta[key] = c.value(t)
            table: dict[str, TensorInfo] = {}
            for _ in range(n_tensors if tensors else 0):
                name = c.string()
                (n_dims,) = c.unpack("<I")
                shape = c.unpack(f"<{n_dims}Q")
                ggml_type, _offset = c.unpack("<IQ")
                table[name] = TensorInfo(tuple(shape), ggml_type)
            return meta, table
    except (OSError, ValueError, struct.error, KeyError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{path}: not a readable GGUF file ({e})") from e


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The key/value metadata of a GGUF file."""
    return read_gguf(path)[0]


@dataclass(frozen=True)
class ModelFacts:
    """What the package reads from a text GGUF before running it (``music_flamingo.*`` keys, convert.py)."""

    architecture: str  # "audioflamingo3" (also any GGUF without our keys: llama.cpp's converter) or "musicflamingo"
    checkpoint: str | None  # the Hugging Face folder it was converted from
    quant: str | None  # the file type: F16, Q8_0, Q6_K, ...
    max_audio_seconds: float | None  # the audio length the checkpoint was made for
    audio_wrap: tuple[str, str] = ("", "")  # text right before / after the audio embeddings (sound bos / eos)
    reasoning: str | None = None  # "think": a think variant, its answers start with <think>...</think> (reasoning.py)


def _file_type_name(value: Any) -> str | None:
    if value is None:
        return None
    import gguf

    try:
        name = gguf.LlamaFileType(int(value)).name
    except ValueError:
        return str(value)
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _reasoning(meta: dict[str, Any]) -> str | None:
    """``music_flamingo.reasoning`` as the converter wrote it; for a GGUF without our key (another converter), a
    "think" in its name, as NVIDIA names the think variants."""
    if "music_flamingo.reasoning" in meta:
        return str(meta["music_flamingo.reasoning"]) or None
    names = (meta.get("music_flamingo.checkpoint"), meta.get("general.name"), meta.get("general.basename"))
    return "think" if any(isinstance(n, str) and THINK_NAME.search(n.replace(" ", "-")) for n in names) else None


def model_facts(path: str | os.PathLike) -> ModelFacts:
    """The architecture, origin, quantization, trained audio length and audio boundary tokens of a text GGUF."""
    meta = read_metadata(path)
    arch = meta.get("music_flamingo.architecture", "audioflamingo3")
    wrap = ("", "")
    if "music_flamingo.audio_bos_token_id" in meta:
        tokens = meta.get("tokenizer.ggml.tokens") or []
        ids = (meta["music_flamingo.audio_bos_token_id"], meta["music_flamingo.audio_eos_token_id"])
        if max(ids) >= len(tokens):
            raise ModelFileError(f"{path}: audio boundary token ids {ids} are outside its vocabulary")
        wrap = (tokens[ids[0]], tokens[ids[1]])
    seconds = meta.get("music_flamingo.max_audio_seconds")
    return ModelFacts(
        reasoning=_reasoning(meta),
        architecture=arch,
        checkpoint=meta.get("music_flamingo.checkpoint"),
        quant=_file_type_name(meta.get("general.file_type")),
        max_audio_seconds=float(seconds) if seconds else None,
        audio_wrap=wrap,
    )
