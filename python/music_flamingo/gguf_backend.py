"""The GGUF backend: llama.cpp's mtmd in this process, model and audio encoder loaded once.

``MusicFlamingoGGUF`` keeps one native engine resident; each :meth:`~MusicFlamingoGGUF.generate` call encodes the
audio once and answers all prompts from one shared prefix, decoded together. It is a backend of
:class:`~music_flamingo.analyzer.Analyzer` (``generate``, ``generate_many``, ``generate_stream``) and holds one
(``mf.analyzer``) for the seed's ``mf.analyze(path)``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from . import lifecycle
from ._logging import logger, set_native_log_level
from .analyzer import AnalysisOptions, Analyzer, AnalyzerCalls
from .audio import TARGET_SAMPLE_RATE, as_engine_audio
from .chat_template import ChatPieces, render_pieces
from .datatypes import DEFAULT_MAX_TOKENS, FollowUpAnswer, GenerationResult, GenerationStats, Prompt, as_prompts
from .errors import EngineError, InvalidInputError, ModelFileError, MusicFlamingoError
from .fsutil import require_regular_file
from .gguf_meta import model_facts
from .models import DEFAULT_MODEL, canonical_model_name, resolve_model_files
from .reasoning import OPEN as THINK_OPEN

if TYPE_CHECKING:
    from . import _core

PromptLike = Prompt | str
_T = TypeVar("_T")


def _one_call_at_a_time(method: Callable[..., _T]) -> Callable[..., _T]:
    """Engine calls and :meth:`MusicFlamingoGGUF.close` take turns: ``close()`` waits for a call in progress, and a
    call after it gets "engine is closed" rather than racing the engine's destruction. A call from inside a call
    (a ``generate_stream`` callback, on the caller's thread or the engine's helper thread) could only wait for
    itself: it is refused with :class:`EngineError`. Once the interpreter is exiting (:mod:`.lifecycle`), calls stop
    as on Ctrl-C."""

    @functools.wraps(method)
    def wrapper(self: MusicFlamingoGGUF, *args: Any, **kwargs: Any) -> _T:
        self._refuse_reentry(method.__name__)
        with self._call_lock, self._inside_call():
            lifecycle.raise_if_exiting()
            return method(self, *args, **kwargs)

    return wrapper


# How audio is put in front of the LLM: the package's names for the engine's _core.Framing members (see
# cpp/types.h, enum Framing, and bench/FIDELITY.md). The default is the framing whose answers came closest to
# transformers' in bench/fidelity.py (bench/fidelity.json, best_framing).
FRAMINGS = {
    "llamacpp": "Mtmd",
    "reference_trim": "ReferenceTrim",
    "reference_tail": "ReferenceTail",
    "reference": "Reference",
}
DEFAULT_FRAMING = "reference"


def native_framing(framing: str) -> _core.Framing:
    """The engine's framing for one of :data:`FRAMINGS`' names; another name is a ValueError."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {sorted(FRAMINGS)}, got {framing!r}")
    from . import _core

    return getattr(_core.Framing, FRAMINGS[framing])


def _flash_attn(flash_attn: bool | str | None) -> _core.FlashAttn:
    from . import _core

    if flash_attn in (None, "auto"):
        return _core.FlashAttn.Auto
    if isinstance(flash_attn, bool):
        return _core.FlashAttn.On if flash_attn else _core.FlashAttn.Off
    raise ValueError(f"flash_attn must be True, False or 'auto', got {flash_attn!r}")


KV_LAYOUTS = ("unified", "per_track", "per_sequence")


def _kv_layout(kv_layout: str | None, kv_unified: bool | None) -> str | None:
    """The engine's kv_layout; ``kv_unified`` (the earlier switch) is still taken: True is 'unified', False was
    one stream per sequence."""
    if kv_unified is not None:
        if kv_layout is not None:
            raise ValueError("give kv_layout or kv_unified (its earlier form), not both")
        return "unified" if kv_unified else "per_sequence"
    if kv_layout is not None and kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be one of {', '.join(map(repr, KV_LAYOUTS))}, got {kv_layout!r}")
    return kv_layout


def _model_files(
    model_name: str | None,
    model_path: str | os.PathLike | None,
    mmproj_path: str | os.PathLike | None,
    model_dir: str | os.PathLike | None,
    offline: bool,
) -> tuple[str | None, Path, Path]:
    """The model's name (None for explicit files: the label comes from the file name) and its two files, found
    (downloaded unless ``offline``) by name or given, each checked to be a regular file."""
    if model_path is None or mmproj_path is None:
        if model_name is None:
            raise ModelFileError("give model_name (e.g. 'Q6_K') or both model_path and mmproj_path")
        found_model, found_mmproj = resolve_model_files(model_name, model_dir, offline=offline)
        model_path = model_path or found_model
        mmproj_path = mmproj_path or found_mmproj
    else:
        model_name = None  # explicit files: the label comes from the file name
    paths = Path(model_path), Path(mmproj_path)
    for path in paths:
        try:
            require_regular_file(path)  # llama.cpp would wait forever on a FIFO
        except FileNotFoundError:
            raise ModelFileError(f"model file not found: {path}") from None
        except OSError as e:
            raise ModelFileError(f"cannot read model file: {e}") from None
    return (canonical_model_name(model_name) if model_name is not None else None), paths[0], paths[1]  # q6_k: Q6_K


def _system_prompt(value: str | None) -> str:
    """The system message; None, as "", means the chat template's own default. Anything else is refused here, at
    construction, rather than at the first call."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"system_prompt must be a string or None, got {type(value).__name__}")
    return value


def _as_dict(native: Any) -> dict[str, Any]:
    """A read-only engine object (``_core.RunStats``) as the plain dict the public API returns: its public
    attributes, by name."""
    return {k: getattr(native, k) for k in dir(native) if not k.startswith("_")}


class MusicFlamingoGGUF(AnalyzerCalls):
    """Music Flamingo from GGUF files, resident in this process.

    Either ``model_name`` (any published quantization: ``'Q8_0'``, ``'Q6_K'`` (default), ``'IQ3_M'``,
    ``'i1-Q4_K_M'`` ...: looked up in ``model_dir``, static or ``i1-`` file, downloaded there when missing unless
    ``offline``; see :func:`~music_flamingo.models.resolve_model_files`) or explicit ``model_path`` + ``mmproj_path``. :meth:`analyze` describes a track with
    the prompt catalogue (through ``self.analyzer``); :meth:`generate` asks any prompts. The analysis options —
    ``prompts``, ``prompt``, ``prompts_files``, ``temperature``, ``top_p``, ``seed``, ``max_duration``, ``normalize``
    — are the fields of :class:`~music_flamingo.analyzer.AnalysisOptions`, given as keywords or as ``options=``.
    ``n_gpu_layers=-1`` offloads every layer when a GPU backend was compiled in;
    the audio encoder goes to the GPU too unless ``mmproj_use_gpu=False``. ``flash_attn``: ``'auto'`` (fastest),
    or ``True``/``False`` to pin the numerics (``False`` makes batched decoding bit-identical to decoding alone).
    ``framing``: ``'reference'`` (default; closest to the reference implementation at every length: each window
    encoded over its real frames, see bench/FIDELITY.md), ``'reference_tail'``, ``'reference_trim'``, or
    ``'llamacpp'`` (exactly what llama-mtmd-cli feeds the model). ``system_prompt``: the system message; by default
    the GGUF chat template's own (``You are a helpful assistant.`` for Music Flamingo), as transformers renders it.
    ``n_ctx=0`` sizes the context per call from the audio length and the prompts' token limits.
    Throughput (see README, "Throughput knobs"): ``n_sampling_threads`` (0: up to 4) sample the sequences of a step;
    ``memory_budget_mb`` caps the KV cache that automatic tracks in flight may fill (0: the device's free memory);
    ``prepare_ahead`` encodes the next tracks' audio on a helper thread while others decode; ``kv_layout``:
    ``'unified'`` (one KV cache: a track's prompts share its prefix cells, attention reads every track's cells),
    ``'per_track'`` (one KV stream per track: the prefix cells shared, attention and prefill read only the track's
    own) or ``'per_sequence'`` (one stream per sequence: each prompt copies the prefix); ``kv_unified=True/False``
    is the earlier form of ``'unified'``/``'per_sequence'``. ``prefill_beside`` evaluates each track's prefix in a
    second context on a thread of its own, beside the other tracks' decode steps (default: on when the text model
    is on a GPU; unified layout only). ``sampling_on_device``: ``'auto'`` (default: llama.cpp's backend samplers
    pick each token where the logits are, when the output layer is on a GPU), ``'on'`` (also on a CPU) or ``'off'``
    (the host fast path always); a prompt whose settings the device does not reproduce samples on the host; the
    same seed gives the same tokens.
    """

    backend = "gguf"  # the provenance's "backend"
    max_duration_default = 600.0  # AF3 architecture: 20 windows of 30 s
    reasoning: str | None = None  # set from the GGUF (gguf_meta.ModelFacts.reasoning)

    def __init__(
        self,
        model_name: str | None = DEFAULT_MODEL,
        *,
        model_path: str | os.PathLike | None = None,
        mmproj_path: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
        offline: bool = False,
        options: AnalysisOptions | None = None,
        n_gpu_layers: int | None = None,
        mmproj_use_gpu: bool | None = None,
        n_threads: int | None = None,
        flash_attn: bool | str | None = "auto",
        n_ctx: int | None = None,
        n_batch: int | None = None,
        n_ubatch: int | None = None,
        n_seq_max: int | None = None,
        kv_cache_type: str | None = None,
        system_prompt: str | None = "",
        framing: str = DEFAULT_FRAMING,
        warmup: bool | None = None,
        verbose: bool = False,
        n_sampling_threads: int | None = None,
        memory_budget_mb: float | None = None,
        prepare_ahead: bool | None = None,
        kv_layout: str | None = None,
        kv_unified: bool | None = None,
        sampling_on_device: str | None = None,
        prefill_beside: bool | None = None,
        **analysis: Any,
    ) -> None:
        # first: a bad option or prompts file is refused before the model loads
        self.analyzer = Analyzer(self, AnalysisOptions.of(type(self).__name__, options, analysis))
        self.model_name, self.model_path, self.mmproj_path = _model_files(
            model_name, model_path, mmproj_path, model_dir, offline
        )
        self.system_prompt = _system_prompt(system_prompt)
        native_framing(framing)  # refused before the model loads
        self.framing = framing
        set_native_log_level(verbose)
        self._call_lock = threading.Lock()
        self._calling = threading.local()  # .active: this thread is inside a call of this engine
        self._requests: dict[tuple, Any] = {}  # _request's cache
        # An engine setting left None takes the engine's own default (cpp/types.h, EngineParams), stated only there.
        engine = dict(
            n_gpu_layers=n_gpu_layers,
            mmproj_use_gpu=mmproj_use_gpu,
            n_threads=n_threads,
            flash_attn=_flash_attn(flash_attn),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            n_seq_max=n_seq_max,
            kv_type=kv_cache_type,
            warmup=warmup,
            n_sampling_threads=n_sampling_threads,
            memory_budget_mb=memory_budget_mb,
            prepare_ahead=prepare_ahead,
            kv_layout=_kv_layout(kv_layout, kv_unified),
            sampling_on_device=sampling_on_device,
            prefill_beside=prefill_beside,
        )
        self._load_engine({k: v for k, v in engine.items() if v is not None})

    def _load_engine(self, settings: dict[str, Any]) -> None:
        from . import _core

        logger.info("loading %s + %s", self.model_path.name, self.mmproj_path.name)
        self._engine = _core.Engine(str(self.model_path), str(self.mmproj_path), **settings)
        lifecycle.track(self)  # closed before the interpreter finalizes, even if a thread is still using it
        self.info = dict(self._engine.info())
        logger.info(
            "loaded: text model on %s, audio encoder on %s",
            self.info["text_model_device"],
            self.info["audio_encoder_device"],
        )
        self.model_label = "gguf_" + (self.model_name or self.model_path.stem.removeprefix("music-flamingo-hf."))
        # converted checkpoints (music-flamingo convert): their own audio tokens, trained length and label
        self.facts = model_facts(self.model_path)
        if self.facts.max_audio_seconds:
            self.max_duration_default = self.facts.max_audio_seconds
        if self.facts.checkpoint:
            self.model_label = f"gguf_{self.facts.checkpoint}.{self.facts.quant}"
        self.reasoning = self.facts.reasoning  # "think": answers come after a reasoning block (reasoning.py)

    @property
    def reasoning_opened(self) -> bool:
        """Whether the chat template opens the reasoning block itself (its prompt ends with ``<think>``), so the
        model's text starts inside it."""
        return self.chat_pieces().tail.rstrip().endswith(THINK_OPEN)

    def chat_pieces(self, system_prompt: str | None = None) -> ChatPieces:
        """The GGUF's own chat template rendered around the audio and the question, as transformers renders it:
        with ``system_prompt`` (default: this analyzer's) as the system message, else the template's default one.
        What every framing but ``llamacpp`` feeds the model (see music_flamingo.chat_template)."""
        template = self.info.get("chat_template", "")
        special = {k: self.info[k] for k in ("bos_token", "eos_token") if self.info.get(k)}
        # the engine reports "chatml" for a GGUF without a template: llama.cpp's assumption, rendered as such
        return render_pieces(
            None if template in ("", "chatml") else template,
            self.system_prompt if system_prompt is None else system_prompt,
            special,
            self.facts.audio_wrap,
        )

    # --- the backend's side of the Analyzer ---------------------------------------------------------------
    @staticmethod
    def analysed_seconds(limit: float) -> float:
        """Where audio is cut for a limit of ``limit`` seconds. framing="llamacpp" (mtmd) adds a silent window at
        exact multiples of 30 s: stay 10 ms short of a multiple so 10 minutes are 20 windows, as the model was
        trained, not 21. (The reference framings need no margin; 10 ms less gives them the same 750 tokens for the
        last window.)"""
        return limit - 0.01 if limit % 30 == 0 else limit

    def provenance(self) -> dict[str, Any]:
        """Backend, model files and their sha256, the llama.cpp commit and the devices (for every sidecar)."""
        from .provenance import FileHashCache

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
        max_tokens: int = DEFAULT_MAX_TOKENS,
        render_special: bool = False,
        framing: str | None = None,
        debug: bool = False,
    ) -> GenerationResult:
        """Answer every prompt about one track; the audio is encoded once.

        ``audio`` is a path (decoded and resampled here) or a float32 mono array at 16 kHz — the engine's only
        format; convert other arrays with :func:`music_flamingo.audio.load_audio`. A bare string prompt gets
        ``max_tokens`` and greedy decoding. ``render_special`` keeps the text of special tokens the model emits
        (llama-mtmd-cli prints them); by default they are dropped from the texts. ``framing`` overrides the
        engine's (``'llamacpp'``: as llama-mtmd-cli; ``'reference'`` and the older ``'reference_trim'``/
        ``'reference_tail'``: as the model was trained, see bench/FIDELITY.md). ``debug`` also returns the audio
        embeddings fed to the LLM, the first step's logits of prompt 0 and its prompt token ids, -1 per audio
        position (``result.debug``), for fidelity measurements.
        """
        plist = as_prompts(prompts, max_tokens)
        audio = _engine_audio(audio, sample_rate, plist)
        raw = self._engine.generate(
            audio,
            int(sample_rate),
            [p.to_native() for p in plist],
            request=self._request(framing, render_special, debug),
        )
        result = self._result(raw)
        if debug:
            result.debug = {
                "audio_embd": raw.audio_embd,
                "first_logits": raw.first_logits,
                "prompt_tokens": raw.prompt_tokens,
            }
        return result

    @_one_call_at_a_time
    def generate_many(
        self,
        tracks: Sequence[tuple[str | os.PathLike | np.ndarray, Sequence[PromptLike] | PromptLike]],
        *,
        tracks_in_flight: int | str = "auto",
        sample_rate: int = TARGET_SAMPLE_RATE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        framing: str | None = None,
        live_answers: int = 0,
    ) -> list[GenerationResult]:
        """Several tracks at once with continuous batching: up to ``tracks_in_flight`` tracks decode in the same
        batch steps, and a finished track's slots go to the next one. ``'auto'`` (default) sizes it from the
        device's free memory and the tracks' lengths. Results in the order of ``tracks``; with greedy decoding and
        ``flash_attn=False`` each equals :meth:`generate` of that track alone. The first failing track's error is
        raised after all tracks ran. ``live_answers``: admit tracks past ``tracks_in_flight`` (up to twice as many)
        while fewer answers than this are live (0: off; README, "Throughput knobs")."""
        # both checked as they enter the request (cpp/bindings.cpp: the field rules)
        request = self._request(framing, tracks_in_flight=tracks_in_flight, live_answers=live_answers)
        asked = [(a, as_prompts(ps, max_tokens)) for a, ps in tracks]
        decoded = [(_engine_audio(a, sample_rate, plist), plist) for a, plist in asked]
        native = [(audio, [p.to_native() for p in plist]) for audio, plist in decoded]
        raws = self._engine.generate_many(native, int(sample_rate), request=request)
        return [self._result(r) for r in raws]

    @_one_call_at_a_time
    def generate_stream(
        self,
        audio: Iterable[np.ndarray],
        prompts: Sequence[PromptLike] | PromptLike,
        on_result: Callable[[int, GenerationResult | Exception], None],
        *,
        tracks_in_flight: int | str = "auto",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        max_audio_seconds: float = 0.0,
        framing: str | None = None,
        profile: bool = False,
        prepare_ahead: bool | None = None,
        sampling_on_device: str | None = None,
        prefill_beside: bool | None = None,
        live_answers: int = 0,
    ) -> dict[str, Any]:
        """Continuous batching over a stream of tracks that share ``prompts``: the engine takes the next array
        from ``audio`` (float32 mono 16 kHz, on its helper thread) whenever it has room, and calls
        ``on_result(index, result)`` as each track finishes — ``result`` is a :class:`GenerationResult` or, for a
        track that failed alone (too short, too long for the context), the exception; ``index`` counts the items
        of ``audio``. Keep ``on_result`` short: the decode loop waits for it (and audio refused before the engine
        takes it is reported from the engine's helper thread). ``max_audio_seconds`` is the longest track expected (sizes the context; 0:
        10 minutes). An item of ``audio`` may also be ``(array, prompts)``: that track's own prompts (as many as
        ``prompts``, which then only size the run: give them room for the longest texts), decoded in the same batch
        steps as the others. ``prepare_ahead``, ``prefill_beside`` and ``sampling_on_device`` override the engine's
        settings for this run (benchmarks); ``live_answers`` as for :meth:`generate_many`. Returns where the time
        went (steps, host and decode ms, tracks in flight)."""
        plist = [p.to_native() for p in as_prompts(prompts, max_tokens)]
        it = iter(audio)
        taken: list[int] = []  # the stream index of each track the engine took (its own index is the position)
        count = refused = 0

        def next_audio():
            # Audio the engine cannot take (empty, too short, not a float32 array) fails alone, here; a track whose
            # answers cannot fit the trained context fails alone in the engine, before it is encoded.
            nonlocal count, refused
            with self._inside_call():  # this thread is the engine's helper: a call from here could only wait
                for item in it:
                    index, count = count, count + 1
                    try:
                        value = _stream_item(item, max_tokens)
                    except TypeError as e:  # None or another non-array: this item fails, the stream goes on
                        refused += 1
                        on_result(index, InvalidInputError(str(e)))
                        continue
                    except MusicFlamingoError as e:
                        refused += 1
                        on_result(index, e)
                        continue
                    taken.append(index)
                    return value
                return None

        def done(index: int, raw: _core.GenerateResult | Exception) -> None:
            on_result(taken[index], raw if isinstance(raw, Exception) else self._result(raw))

        request = self._request(
            framing,
            tracks_in_flight=tracks_in_flight,
            max_audio_seconds=max_audio_seconds,
            profile=bool(profile),
            prepare_ahead=prepare_ahead,
            sampling_on_device=sampling_on_device,
            prefill_beside=prefill_beside,
            live_answers=live_answers,
        )
        stats = _as_dict(self._engine.run_stream(next_audio, done, plist, TARGET_SAMPLE_RATE, request=request))
        # The stats cover every item of the stream: those refused here never reached the engine's counters.
        stats["tracks"] += refused
        stats["tracks_failed"] += refused
        return stats

    def last_run_stats(self) -> dict[str, Any]:
        """Where the time of the last generate/generate_many/generate_stream went (steps, host, decode, admit)."""
        return _as_dict(self._engine.last_run_stats())

    def _request(self, framing: str | None, render_special: bool = False, debug: bool = False, **run: Any):
        """The engine's request for one call: this analyzer's framing (or ``framing``) with its chat, and ``run``'s
        settings by name (``_core.RunRequest``'s fields); every setting not given is the engine's default. Made
        once per distinct call shape (rendering the chat template is most of a call's Python time)."""
        # by repr: any value hashes, and a bad one reaches the request's own check (1 and True stay apart)
        key = (framing, self.framing, self.system_prompt, render_special, debug, repr(sorted(run.items())))
        request = self._requests.get(key)
        if request is None:
            from . import _core

            fr = self._framing(framing)
            request = _core.RunRequest(
                system_prompt=self.system_prompt,
                chat=self._chat(fr),
                render_special=render_special,
                framing=fr,
                debug=debug,
                **run,
            )
            if len(self._requests) > 64:  # a stream's max_audio_seconds may vary; keep the cache small
                self._requests.clear()
            self._requests[key] = request
        return request

    def _chat(self, framing: _core.Framing) -> _core.ChatPieces | None:
        """The rendered template pieces for the engine; ``llamacpp`` formats its chat as llama-mtmd-cli does."""
        from . import _core

        if framing == native_framing("llamacpp"):
            return None
        head, mid, tail, next_turn = self.chat_pieces().as_tuple()
        return _core.ChatPieces(head=head, mid=mid, tail=tail, next_turn=next_turn)

    def _refuse_reentry(self, name: str) -> None:
        if getattr(self._calling, "active", False):
            raise EngineError(
                f"{name}() was called from inside a call of this engine (a generate_stream callback?): it would "
                "wait for itself. Call it after the stream returns, or on another MusicFlamingoGGUF."
            )

    @contextlib.contextmanager
    def _inside_call(self) -> Iterator[None]:
        """Marks this thread as inside a call of this engine while the block runs (see _one_call_at_a_time)."""
        outer = getattr(self._calling, "active", False)
        self._calling.active = True
        try:
            yield
        finally:
            self._calling.active = outer

    def _framing(self, framing: str | None) -> _core.Framing:
        return native_framing(self.framing if framing is None else framing)  # "" is a wrong name, not the default

    def _result(self, raw: _core.GenerateResult) -> GenerationResult:
        stats = GenerationStats.from_native(
            raw.stats,
            devices={"text_model": self.info["text_model_device"], "audio_encoder": self.info["audio_encoder_device"]},
        )
        outs = raw.outputs
        return GenerationResult(
            texts=[_decoded(o.text) for o in outs],
            stop_reasons=[o.stop_reason for o in outs],
            tokens=[list(o.tokens) for o in outs],
            stats=stats,
            followups=[
                [FollowUpAnswer(_decoded(f.text), f.stop_reason, list(f.tokens)) for f in o.followups] for o in outs
            ],
        )

    def close(self) -> None:
        """Free the model, audio encoder and context now rather than at garbage collection."""
        engine = getattr(self, "_engine", None)
        if engine is not None:
            self._refuse_reentry("close")
            with self._call_lock:  # after a call in progress, never during it
                engine.close()


def _decoded(text: bytes) -> str:
    """The engine's raw bytes as text (a cut at max_tokens may split a UTF-8 character)."""
    return text.decode("utf-8", errors="replace")


def _stream_item(item: Any, max_tokens: int) -> Any:
    """One item of generate_stream's iterable as the engine takes it: the audio, or (audio, its own prompts)."""
    if isinstance(item, tuple):  # (audio, this track's own prompts)
        own = as_prompts(item[1], max_tokens)
        return (_engine_audio(item[0], TARGET_SAMPLE_RATE, own), [p.to_native() for p in own])
    return as_engine_audio(item)


def _engine_audio(audio: Any, sample_rate: int, prompts: Sequence[Prompt]) -> np.ndarray:
    """:func:`as_engine_audio`, or for ``None`` (or an empty array) an empty array: a text-only conversation,
    allowed when every prompt has a known answer (the follow-ups' catch-up pass)."""
    text_only = audio is None or (isinstance(audio, np.ndarray) and audio.size == 0)
    if not text_only:
        return as_engine_audio(audio, sample_rate)
    if not all(p.answer is not None for p in prompts):
        raise InvalidInputError("audio is empty: only prompts with a known answer (follow-ups to ask) go without audio")
    return np.zeros(0, np.float32)
