"""The GGUF backend: llama.cpp's mtmd in this process, model and audio encoder loaded once.

``MusicFlamingoGGUF`` keeps one native engine resident; each :meth:`~MusicFlamingoGGUF.generate` call encodes the
audio once and answers all prompts from one shared prefix, decoded together.
"""
from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar, Union

import numpy as np

from . import lifecycle, validation
from ._logging import logger, set_native_log_level
from .analyzer import AnalysisOptions, Analyzer
from .audio import TARGET_SAMPLE_RATE, as_engine_audio
from .datatypes import GenerationResult, GenerationStats, Prompt, as_prompts
from .errors import InvalidInputError, ModelFileError
from .fsutil import require_regular_file
from .models import resolve_model_files

PromptLike = Union[Prompt, str]
_T = TypeVar("_T")


def _one_call_at_a_time(method: Callable[..., _T]) -> Callable[..., _T]:
    """Engine calls and :meth:`MusicFlamingoGGUF.close` take turns: ``close()`` waits for a call in progress, and a
    call after it gets "engine is closed" rather than racing the engine's destruction. Once the interpreter is
    exiting (:mod:`.lifecycle`), calls stop as on Ctrl-C."""
    @functools.wraps(method)
    def wrapper(self: "MusicFlamingoGGUF", *args: Any, **kwargs: Any) -> _T:
        with self._call_lock:
            lifecycle.raise_if_exiting()
            return method(self, *args, **kwargs)
    return wrapper


# The audio encoder's rate (100 mel frames/s, /2 by the convolutions, /2 by the pooling); every framing pads or
# trims windows around it, never below it.
AUDIO_TOKENS_PER_S = 25
# How audio is put in front of the LLM (see cpp/engine.h, enum Framing, and bench/FIDELITY.md). The default is the
# framing whose answers came closest to transformers' in bench/fidelity.py (bench/fidelity.json, best_framing).
FRAMINGS = {"llamacpp": 0, "reference_trim": 1, "reference_tail": 2}
DEFAULT_FRAMING = "reference_tail"


def _flash_attn_code(flash_attn: bool | str | None) -> int:
    if flash_attn in (None, "auto"):
        return -1
    if isinstance(flash_attn, bool):
        return int(flash_attn)
    raise ValueError(f"flash_attn must be True, False or 'auto', got {flash_attn!r}")


class MusicFlamingoGGUF(Analyzer):
    """Music Flamingo from GGUF files, resident in this process.

    Either ``model_name`` (``'Q8_0'``, ``'Q6_K'``, ``'IQ3_M'``: looked up in ``model_dir``, downloaded there when
    missing unless ``offline``) or explicit ``model_path`` + ``mmproj_path``. :meth:`analyze` describes a track with
    the prompt catalogue; :meth:`generate` asks any prompts. ``prompts``, ``prompts_files``, ``temperature``,
    ``top_p``, ``seed`` and ``max_duration`` are the :class:`~music_flamingo.analyzer.AnalysisOptions`. ``n_gpu_layers=-1`` offloads every layer when a GPU backend was compiled in;
    the audio encoder goes to the GPU too unless ``mmproj_use_gpu=False``. ``flash_attn``: ``'auto'`` (fastest),
    or ``True``/``False`` to pin the numerics (``False`` makes batched decoding bit-identical to decoding alone).
    ``framing``: ``'reference_tail'`` (default; closest to the reference implementation, see bench/FIDELITY.md),
    ``'reference_trim'``, or ``'llamacpp'`` (exactly what llama-mtmd-cli feeds the model).
    ``n_ctx=0`` sizes the context per call from the audio length and the prompts' token limits.
    """

    backend = "gguf"

    def __init__(
        self,
        model_name: str | None = "Q6_K",
        *,
        model_path: str | os.PathLike | None = None,
        mmproj_path: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
        offline: bool = False,
        prompts: Sequence[str] | None = None,
        prompts_files: Sequence[str | os.PathLike] = (),
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        max_duration: float | None = None,
        options: AnalysisOptions | None = None,
        n_gpu_layers: int = -1,
        mmproj_use_gpu: bool = True,
        n_threads: int | None = None,
        flash_attn: bool | str | None = "auto",
        n_ctx: int = 0,
        n_batch: int = 2048,
        n_ubatch: int = 1024,
        n_seq_max: int = 8,
        kv_cache_type: str = "f16",
        system_prompt: str = "",
        framing: str = DEFAULT_FRAMING,
        warmup: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__(options or AnalysisOptions(
            prompts=prompts, prompts_files=tuple(prompts_files), temperature=temperature, top_p=top_p, seed=seed,
            max_duration=max_duration))
        if model_path is None or mmproj_path is None:
            if model_name is None:
                raise ModelFileError("give model_name (e.g. 'Q6_K') or both model_path and mmproj_path")
            found_model, found_mmproj = resolve_model_files(model_name, model_dir, offline=offline)
            model_path = model_path or found_model
            mmproj_path = mmproj_path or found_mmproj
        else:
            model_name = None  # explicit files: the label comes from the file name
        self.model_name = model_name
        self.model_path = Path(model_path)
        self.mmproj_path = Path(mmproj_path)
        for path in (self.model_path, self.mmproj_path):
            try:
                require_regular_file(path)  # llama.cpp would wait forever on a FIFO
            except FileNotFoundError:
                raise ModelFileError(f"model file not found: {path}") from None
            except OSError as e:
                raise ModelFileError(f"cannot read model file: {e}") from None
        self.system_prompt = system_prompt
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {sorted(FRAMINGS)}, got {framing!r}")
        self.framing = framing
        set_native_log_level(verbose)
        from . import _core

        self._call_lock = threading.Lock()
        logger.info("loading %s + %s", self.model_path.name, self.mmproj_path.name)
        self._engine = _core.Engine(
            str(self.model_path), str(self.mmproj_path), n_gpu_layers=n_gpu_layers, mmproj_use_gpu=mmproj_use_gpu,
            n_threads=n_threads or 0, flash_attn=_flash_attn_code(flash_attn), n_ctx=n_ctx, n_batch=n_batch,
            n_ubatch=n_ubatch, n_seq_max=n_seq_max, kv_type=kv_cache_type, warmup=warmup)
        lifecycle.track(self)  # closed before the interpreter finalizes, even if a thread is still using it
        self.info = dict(self._engine.info())
        logger.info("loaded: text model on %s, audio encoder on %s",
                    self.info["text_model_device"], self.info["audio_encoder_device"])
        self.model_label = "gguf_" + (model_name or self.model_path.stem.removeprefix("music-flamingo-hf."))

    # --- Analyzer hooks -----------------------------------------------------------------------------------
    def max_analysed_seconds(self) -> float:
        # mtmd frames audio in 30 s windows and adds a silent one at exact multiples of 30 s: stay 10 ms short
        # of a multiple so 10 minutes are 20 windows, as the model was trained, not 21.
        limit = self.max_duration
        return limit - 0.01 if limit % 30 == 0 else limit

    def _generate(self, pcm, prompts):
        res = self.generate(pcm, prompts)
        return res.texts, res.stats

    def _generate_many(self, pcms, prompts, tracks_in_flight):
        results = self.generate_many([(pcm, prompts) for pcm in pcms], tracks_in_flight=tracks_in_flight)
        return [(r.texts, r.stats) for r in results]

    def _provenance(self) -> dict:
        from .sidecar import FileHashCache

        hashes = FileHashCache()
        return {
            "backend": self.backend,
            "model": self.model_path.name,
            "model_sha256": hashes.sha256(self.model_path),
            "mmproj": self.mmproj_path.name,
            "mmproj_sha256": hashes.sha256(self.mmproj_path),
            "llama_cpp_commit": self._build_commit(),
            "text_model_device": self.info["text_model_device"],
            "audio_encoder_device": self.info["audio_encoder_device"],
        }

    @staticmethod
    def _build_commit() -> str:
        from . import _core

        return dict(_core.build_info())["llama_cpp_commit"]

    @_one_call_at_a_time
    def generate(
        self,
        audio: str | os.PathLike | np.ndarray,
        prompts: Sequence[PromptLike] | PromptLike,
        *,
        sample_rate: int = TARGET_SAMPLE_RATE,
        max_tokens: int = 256,
        render_special: bool = False,
        framing: str | None = None,
        debug: bool = False,
    ) -> GenerationResult:
        """Answer every prompt about one track; the audio is encoded once.

        ``audio`` is a path (decoded and resampled here) or a float32 mono array at 16 kHz — the engine's only
        format; convert other arrays with :func:`music_flamingo.audio.load_audio`. A bare string prompt gets
        ``max_tokens`` and greedy decoding. ``render_special`` keeps the text of special tokens the model emits
        (llama-mtmd-cli prints them); by default they are dropped from the texts. ``framing`` overrides the
        engine's (``'llamacpp'``: as llama-mtmd-cli; ``'reference_trim'``/``'reference_tail'``: as the model was
        trained, see bench/FIDELITY.md). ``debug`` also returns the audio embeddings fed to the LLM and the first
        step's logits of prompt 0 (``result.debug``), for fidelity measurements.
        """
        audio, plist = as_engine_audio(audio), as_prompts(prompts, max_tokens)
        self._check_context(audio, plist)
        raw = self._engine.generate(audio, int(sample_rate), [p.to_native() for p in plist], self.system_prompt,
                                     render_special, self._framing_code(framing), debug)
        result = self._result(raw)
        if debug:
            result.debug = {"audio_embd": raw["audio_embd"], "first_logits": raw["first_logits"]}
        return result

    @_one_call_at_a_time
    def generate_many(
        self,
        tracks: Sequence[tuple[str | os.PathLike | np.ndarray, Sequence[PromptLike] | PromptLike]],
        *,
        tracks_in_flight: int = 4,
        sample_rate: int = TARGET_SAMPLE_RATE,
        max_tokens: int = 256,
        framing: str | None = None,
    ) -> list[GenerationResult]:
        """Several tracks at once with continuous batching: up to ``tracks_in_flight`` tracks decode in the same
        batch steps, and a finished track's slots go to the next one. Results in the order of ``tracks``; with
        greedy decoding and ``flash_attn=False`` each equals :meth:`generate` of that track alone."""
        validation.require("tracks_in_flight", validation.tracks_in_flight(tracks_in_flight))
        decoded = [(as_engine_audio(a), as_prompts(ps, max_tokens)) for a, ps in tracks]
        for audio, plist in decoded:
            self._check_context(audio, plist)
        native = [(audio, [p.to_native() for p in plist]) for audio, plist in decoded]
        raws = self._engine.generate_many(native, int(sample_rate), self.system_prompt, False,
                                          self._framing_code(framing), max(1, int(tracks_in_flight)))
        return [self._result(r) for r in raws]

    def _check_context(self, audio: np.ndarray, prompts: Sequence[Prompt]) -> None:
        """Refuse a prompt whose answer cannot fit the model's trained context, before the engine sizes (and
        allocates) a context for it: ``max_tokens=10**9`` once took 19.7 GB before failing. The audio's share is a
        lower bound (every framing gives at least 25 tokens per second), so nothing that fits is refused; the engine
        checks the exact count."""
        n_ctx_train = int(self.info["n_ctx_train"])
        audio_positions = int(np.size(audio)) // (TARGET_SAMPLE_RATE // AUDIO_TOKENS_PER_S)
        for i, p in enumerate(prompts):
            if audio_positions + p.max_tokens > n_ctx_train:
                raise InvalidInputError(
                    f"prompt {i} ({p.name or p.text[:40]!r}): at least {audio_positions} audio positions + "
                    f"max_tokens {p.max_tokens} exceed the model's trained context of {n_ctx_train} "
                    "(lower max_tokens or shorten the audio)")

    def _framing_code(self, framing: str | None) -> int:
        framing = self.framing if framing is None else framing  # "" is a wrong name, not the default
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {sorted(FRAMINGS)}, got {framing!r}")
        return FRAMINGS[framing]

    def _result(self, raw: dict) -> GenerationResult:
        stats = GenerationStats(**raw["stats"], devices={
            "text_model": self.info["text_model_device"], "audio_encoder": self.info["audio_encoder_device"]})
        outs = raw["outputs"]
        return GenerationResult(
            texts=[o["text"].decode("utf-8", errors="replace") for o in outs],
            stop_reasons=[o["stop_reason"] for o in outs],
            tokens=[list(o["tokens"]) for o in outs],
            stats=stats,
        )

    def close(self) -> None:
        """Free the model, audio encoder and context now rather than at garbage collection."""
        engine = getattr(self, "_engine", None)
        if engine is not None:
            with self._call_lock:  # after a call in progress, never during it
                engine.close()

    def __enter__(self) -> "MusicFlamingoGGUF":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
