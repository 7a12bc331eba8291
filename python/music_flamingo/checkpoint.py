"""A Hugging Face Music Flamingo checkpoint folder, read without torch: its config and its tensors, lazily.

Two architectures are known: ``AudioFlamingo3ForConditionalGeneration`` (``nvidia/music-flamingo-hf``, the preview
the public GGUF quants hold) and ``MusicFlamingoForConditionalGeneration`` (``model_type: musicflamingo``:
``nvidia/music-flamingo-2601-hf``, its think variant, Audio Flamingo Next). Tensors come from the ``*.safetensors``
files by memory map, one at a time, so converting an 8B checkpoint needs about one tensor's memory, not the model's.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFileError
from .reasoning import THINK_NAME

# config.json "architectures" entry -> the name used here (and written to the GGUF as music_flamingo.architecture)
ARCHITECTURES = {
    "AudioFlamingo3ForConditionalGeneration": "audioflamingo3",
    "MusicFlamingoForConditionalGeneration": "musicflamingo",
}
# the transformers class defaults, for a config.json that leaves them out
DEFAULT_AUDIO_TOKENS = {"audio_token_id": 151669, "audio_bos_token_id": 151670, "audio_eos_token_id": 151671}
# longest audio each architecture's processor takes, when the checkpoint's processor config does not say
DEFAULT_MAX_AUDIO_SECONDS = {"audioflamingo3": 600, "musicflamingo": 1200}

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lies in a safetensors file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    def load(self) -> np.ndarray:
        """The tensor as float32 (bf16 widened exactly, f16/f32 as stored)."""
        raw = np.memmap(self.file, dtype=np.uint8, mode="r", offset=self.start, shape=(self.end - self.start,))
        arr = raw.view(_DTYPES[self.dtype]).reshape(self.shape)
        if self.dtype == "BF16":  # shifted in place: one widened copy, not two (the 8B's embedding is 2.2 GB)
            wide = arr.astype(np.uint32)
            wide <<= 16
            return wide.view(np.float32)
        return np.asarray(arr, dtype=np.float32)


@dataclass
class Checkpoint:
    """A checkpoint folder: its config, architecture and tensors (name -> where it lies)."""

    path: Path
    config: dict[str, Any]
    architecture: str  # a value of ARCHITECTURES
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    reasoning_format: str | None = None  # what the converter records: reasoning(), or the user's --reasoning

    @property
    def text_config(self) -> dict[str, Any]:
        return self.config.get("text_config") or {}

    @property
    def audio_config(self) -> dict[str, Any]:
        return self.config.get("audio_config") or {}

    def processor_config(self) -> dict[str, Any]:
        """processor_config.json, or {} when the folder has none."""
        p = self.path / "processor_config.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    def audio_token(self, key: str) -> int:
        """``audio_token_id``/``audio_bos_token_id``/``audio_eos_token_id`` from config.json (the public config may
        differ from the class default), else the class default."""
        return int(self.config.get(key, DEFAULT_AUDIO_TOKENS[key]))

    def max_audio_seconds(self) -> int:
        """The longest audio the checkpoint was made for: the processor's ``max_audio_len``, else the class's."""
        return int(self.processor_config().get("max_audio_len", DEFAULT_MAX_AUDIO_SECONDS[self.architecture]))

    def chat_template(self) -> str:
        """The chat template (``chat_template.jinja``, else tokenizer_config.json's), or ""."""
        p = self.path / "chat_template.jinja"
        if p.is_file():
            return p.read_text(encoding="utf-8")
        cfg = json.loads((self.path / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = cfg.get("chat_template") or ""
        return template if isinstance(template, str) else json.dumps(template)

    def reasoning(self) -> str | None:
        """``"think"`` for a reasoning ("think") variant, whose answers start with a ``<think>`` block
        (reasoning.py); None otherwise. Told by the name NVIDIA gives them (``music-flamingo-think-2601-hf``,
        ``audio-flamingo-next-think-hf``), or a chat template or tokenizer that knows the ``<think>`` tag."""
        if THINK_NAME.search(self.path.name):
            return "think"
        tokenizer = json.loads((self.path / "tokenizer.json").read_text(encoding="utf-8"))
        added = {t.get("content") for t in tokenizer.get("added_tokens") or []}
        return "think" if "<think>" in added or "<think>" in self.chat_template() else None

    def items(self) -> Iterator[tuple[str, TensorRef]]:
        return iter(self.tensors.items())


def _read_header(path: Path) -> dict[str, TensorRef]:
    """The tensor table of one safetensors file (an 8-byte length, a JSON header, then the data)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable safetensors file: {e}") from e
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ModelFileError(f"{path}: tensor {name} has dtype {info['dtype']}, not a float type this converts")
        start, end = info["data_offsets"]
        out[name] = TensorRef(path, info["dtype"], tuple(info["shape"]), base + start, base + end)
    return out


def load_checkpoint(path: Path) -> Checkpoint:
    """Read ``path``'s config.json and safetensors headers; a clear ModelFileError for anything missing or unknown."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not path.is_dir():
        raise ModelFileError(f"{path} is not a folder (a Hugging Face checkpoint folder with config.json)")
    if not cfg_path.is_file():
        raise ModelFileError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if not known:
        raise ModelFileError(
            f"{path}: architecture {archs or config.get('model_type')!r} is not one this converts "
            f"(known: {', '.join(ARCHITECTURES)})"
        )
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{path} has no *.safetensors files (only safetensors checkpoints are converted)")
    ckpt = Checkpoint(path, config, known[0])
    for f in files:
        ckpt.tensors.update(_read_header(f))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not (path / f).is_file():
            raise ModelFileError(f"{path} has no {f}: the tokenizer is needed for the text GGUF")
    return ckpt
