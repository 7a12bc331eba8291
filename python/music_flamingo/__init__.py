"""music-flamingo: NVIDIA Music Flamingo resident in one process — music in, rich text descriptions out.

The GGUF backend runs llama.cpp's mtmd in-process (``music_flamingo._core``); see :class:`MusicFlamingoGGUF`.
:class:`MusicFlamingoTransformers` is the same API on Hugging Face transformers (torch is imported only when it loads
a model: ``import music_flamingo`` never imports it).
Data flows one way: path -> PCM (:mod:`.audio`) -> engine -> texts -> T5-safe text (:mod:`.text`) -> sidecar
(:mod:`.sidecar`); :class:`Analyzer` strings it together over a backend (each model class holds one),
:mod:`.discovery` finds a dataset's tracks, :mod:`.batch` runs them, :mod:`.cli` is the command line.
"""

from __future__ import annotations

from typing import Any

from ._logging import logger
from ._version import __version__
from .analyzer import AnalysisOptions, Analyzer, TrackAnalysis
from .audio import load_audio
from .datatypes import FollowUpAnswer, GenerationResult, GenerationStats, Prompt
from .errors import (
    AudioDecodeError,
    EngineError,
    InvalidInputError,
    ModelFileError,
    MusicFlamingoError,
    PromptConfigError,
    SidecarError,
)
from .gguf_backend import MusicFlamingoGGUF
from .native import system_info
from .prompts import load_catalogue
from .text import normalize_music_flamingo_text

__all__ = [
    "AnalysisOptions",
    "Analyzer",
    "AudioDecodeError",
    "EngineError",
    "FollowUpAnswer",
    "GenerationResult",
    "GenerationStats",
    "InvalidInputError",
    "ModelFileError",
    "MusicFlamingoError",
    "MusicFlamingoGGUF",
    "MusicFlamingoTransformers",
    "Prompt",
    "PromptConfigError",
    "SidecarError",
    "TrackAnalysis",
    "load_audio",
    "load_catalogue",
    "logger",
    "normalize_music_flamingo_text",
    "system_info",
    "__version__",
]

_LAZY = {"MusicFlamingoTransformers": ".transformers_backend"}


def __getattr__(name: str) -> Any:
    """Attributes loaded on first use: the transformers backend module (light itself, but kept out of the
    package import)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
