"""The transformers backend: Music Flamingo through Hugging Face transformers' own classes, resident in this process.

The fallback and reference next to the GGUF backend, with the same API: a backend of
:class:`~music_flamingo.analyzer.Analyzer` (``generate``) that holds one (``mf.analyzer``) for ``mf.analyze(path)``.
The checkpoint's ``model_type`` picks the class: ``audioflamingo3`` (``nvidia/music-flamingo-hf``) ->
``AudioFlamingo3ForConditionalGeneration``, ``musicflamingo`` (``nvidia/music-flamingo-2601-hf``, rotary time
embeddings) -> ``MusicFlamingoForConditionalGeneration``. Each track's audio goes through the audio encoder once;
all prompts of a sampling group are answered by one batched ``generate`` on left-padded input embeddings.

torch and transformers are imported only when a model is loaded, so ``import music_flamingo`` never needs them.
"""

from __future__ import annotations

import gc
import inspect
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._logging import logger
from .analyzer import AnalysisOptions, Analyzer, AnalyzerCalls
from .audio import TARGET_SAMPLE_RATE, as_engine_audio
from .chat_template import (
    ANSWER_SLOT,
    AUDIO_TEXT_SEPARATOR,
    FOLLOWUP_SLOT,
    TEXT_SLOT,
    ChatPieces,
    next_turn,
    split_rendered,
)
from .datatypes import DEFAULT_MAX_TOKENS, FollowUpAnswer, GenerationResult, GenerationStats, Prompt, as_prompts
from .errors import EngineError, InvalidInputError, ModelFileError
from .reasoning import CLOSE as THINK_CLOSE
from .reasoning import OPEN as THINK_OPEN
from .reasoning import THINK_NAME

PromptLike = Prompt | str
THINK_TAGS = [THINK_OPEN, THINK_CLOSE]

# model_type -> (transformers class, first transformers release that has it, seconds the model was trained for)
MODEL_TYPES: dict[str, tuple[str, str, float]] = {
    "audioflamingo3": ("AudioFlamingo3ForConditionalGeneration", "5.0.0", 600.0),
    "musicflamingo": ("MusicFlamingoForConditionalGeneration", "5.5.0", 1200.0),
}
_DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
_WINDOW_SECONDS = 30


def _import_torch_transformers():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ModelFileError(
            f"the transformers backend needs torch and transformers ({e}); install them with "
            "pip install 'music-flamingo[transformers]'"
        ) from e
    return torch, transformers


def _resolve_dtype(torch, dtype):
    """``'bfloat16'``/``'float16'``/``'float32'`` (or short names), a ``torch.dtype``, or ``'auto'`` (the
    checkpoint's own)."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"dtype must be one of bfloat16, float16, float32 or 'auto', got {dtype!r}")
    return getattr(torch, name)


def _target_device(torch, device_map) -> Any:
    """The device the text model will mostly live on, as from_pretrained's ``device_map`` will place it."""
    if device_map in (None, "auto", "balanced", "balanced_low_0", "sequential"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if device_map is not None and mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device_map, dict):
        first = next(iter(device_map.values()), "cpu")
        return torch.device(f"cuda:{first}" if isinstance(first, int) else first)
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


def _flash_attn_importable() -> tuple[bool, str]:
    try:
        import flash_attn  # noqa: F401
    except Exception as e:  # ImportError, or an ABI mismatch surfacing as OSError/RuntimeError
        return False, f"the flash_attn package does not import ({type(e).__name__}: {e})"
    return True, ""


def _choose_attention(torch, use_flash_attention: bool, device, dtype) -> str:
    """``flash_attention_2`` when asked for and possible, else ``sdpa``, with one log line saying why."""
    if not use_flash_attention:
        logger.info("attention: SDPA (flash attention not requested)")
        return "sdpa"
    if device.type != "cuda":
        logger.info("attention: SDPA (FlashAttention-2 needs a CUDA or ROCm device; the model runs on %s)", device.type)
        return "sdpa"
    if dtype not in (torch.float16, torch.bfloat16, "auto"):
        logger.info(
            "attention: SDPA (FlashAttention-2 needs float16 or bfloat16, not %s)", str(dtype).removeprefix("torch.")
        )
        return "sdpa"
    ok, why = _flash_attn_importable()
    if not ok:
        logger.warning("attention: SDPA, not FlashAttention-2: %s", why)
        return "sdpa"
    logger.info("attention: FlashAttention-2")
    return "flash_attention_2"


def _checkpoint_location(model_id: str) -> str:
    """A Hub id as given; a local folder (an absolute path, ``./``, ``~`` or more than one ``/``) expanded, refused
    when it is no folder."""
    looks_local = os.path.isabs(model_id) or model_id.startswith((".", "~")) or model_id.count("/") > 1
    if not looks_local:
        return model_id
    if not Path(model_id).expanduser().is_dir():
        raise ModelFileError(
            f"no checkpoint folder at {model_id!r} (give a local folder or a Hub id such as nvidia/music-flamingo-hf)"
        )
    return str(Path(model_id).expanduser())


def _sampling_groups(plist: list[Prompt]) -> dict[tuple, list[int]]:
    """The prompts' indices by sampling settings, in order: each group is decoded in one batch."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(plist):
        key = (
            ("greedy", p.repeat_penalty)
            if p.temperature <= 0
            else ("sample", p.temperature, p.top_p, p.top_k, p.min_p, p.repeat_penalty, p.seed)
        )
        groups.setdefault(key, []).append(i)
    return groups


@dataclass
class _Decoded:
    """What one :meth:`MusicFlamingoTransformers._decode` call produced, with its time."""

    tokens: list[list[int]]
    stops: list[str]
    prefill_s: float = 0.0
    decode_s: float = 0.0
    n_ctx: int = 0


class _FirstStepClock:
    """A no-op logits processor that notes when the first token's logits exist: the end of the prefill."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.t_first: float | None = None

    def __call__(self, input_ids, scores):
        if self.t_first is None:
            self.sync()
            self.t_first = time.perf_counter()
        return scores


class MusicFlamingoTransformers(AnalyzerCalls):
    """Music Flamingo from a Hugging Face checkpoint, resident in this process (torch + transformers).

    ``model_id`` is a Hub repository (``nvidia/music-flamingo-hf``, ``nvidia/music-flamingo-2601-hf``) or a local
    folder; ``local_files_only`` never touches the network. ``dtype``: ``'bfloat16'`` (default), ``'float16'``,
    ``'float32'`` or ``'auto'``. ``use_flash_attention`` uses FlashAttention-2 where it can (CUDA/ROCm device,
    ``flash_attn`` installed, half precision) and SDPA otherwise. ``device_map`` goes to ``from_pretrained``.
    ``torch_compile=True`` compiles the model's forward (off by default: it crashes on ROCm). ``system_prompt``:
    the system message (default: the chat template's own, e.g. "You are a helpful assistant."). The analysis
    options (``prompts``, ``prompt``, ``prompts_files``, ``temperature``, ...) are the fields of
    :class:`~music_flamingo.analyzer.AnalysisOptions`, as keywords or ``options=``, as for
    :class:`~music_flamingo.MusicFlamingoGGUF`.
    """

    backend = "transformers"  # the provenance's "backend"

    def __init__(
        self,
        model_id: str | os.PathLike = "nvidia/music-flamingo-hf",
        *,
        use_flash_attention: bool = True,
        dtype: Any = "bfloat16",
        device_map: Any = "auto",
        local_files_only: bool = False,
        torch_compile: bool = False,
        options: AnalysisOptions | None = None,
        system_prompt: str = "",
        **analysis: Any,
    ) -> None:
        # first: a bad option or prompts file is refused before torch is imported and the model loads
        self.analyzer = Analyzer(self, AnalysisOptions.of(type(self).__name__, options, analysis))
        self.system_prompt = system_prompt
        torch, transformers = _import_torch_transformers()
        self._torch = torch
        self.model_label = "transformers_" + Path(str(model_id).rstrip("/\\")).name
        # a think variant by its name (nvidia/music-flamingo-think-2601-hf): answers after a reasoning block
        self.reasoning = "think" if THINK_NAME.search(self.model_label) else None
        self.model_id = _checkpoint_location(str(model_id))
        config_dict, model_cls = self._model_class(transformers, local_files_only)
        self._load(transformers, model_cls, dtype, device_map, use_flash_attention, local_files_only)
        self.commit_hash = getattr(self._model.config, "_commit_hash", None) or config_dict.get("_commit_hash")
        self._read_special_tokens(transformers)
        self.torch_compile = bool(torch_compile)
        if self.torch_compile:
            logger.info("compiling the model's forward with torch.compile")
            self._model.forward = torch.compile(self._model.forward, dynamic=True)

    def _model_class(self, transformers, local_files_only: bool) -> tuple[dict, Any]:
        """The checkpoint's config.json and the transformers class its ``model_type`` names; sets ``model_type`` and
        the trained length. From config.json alone, so an old transformers still says what it lacks."""
        try:
            config_dict, _ = transformers.PretrainedConfig.get_config_dict(
                self.model_id, local_files_only=local_files_only
            )
        except (OSError, ValueError) as e:
            raise ModelFileError(f"could not read the config of {self.model_id!r}: {e}") from e
        self.model_type = str(config_dict.get("model_type", ""))
        if not self.model_type:
            raise ModelFileError(
                f"{self.model_id!r} has no config.json naming a model_type: not a transformers checkpoint"
            )
        if self.model_type not in MODEL_TYPES:
            raise ModelFileError(
                f"{self.model_id!r} is not a Music Flamingo checkpoint: model_type "
                f"{self.model_type!r}, expected one of {sorted(MODEL_TYPES)}"
            )
        cls_name, min_version, trained_seconds = MODEL_TYPES[self.model_type]
        model_cls = getattr(transformers, cls_name, None)
        if model_cls is None:
            raise ModelFileError(
                f"{self.model_id!r} is a {self.model_type!r} checkpoint ({cls_name}), which needs transformers>="
                f"{min_version}; this is transformers {transformers.__version__}. Upgrade with "
                f"pip install -U 'transformers>={min_version}'"
            )
        self.max_duration_default = trained_seconds
        return config_dict, model_cls

    def _load(self, transformers, model_cls, dtype, device_map, use_flash_attention: bool, local_files_only: bool):
        """Processor and model: where, in what precision, with which attention; notes where the parts landed."""
        torch = self._torch
        requested_dtype = _resolve_dtype(torch, dtype)
        device = _target_device(torch, device_map)
        self.attn_implementation = _choose_attention(torch, use_flash_attention, device, requested_dtype)
        load_kw: dict[str, Any] = dict(
            dtype=requested_dtype, attn_implementation=self.attn_implementation, local_files_only=local_files_only
        )
        move_to = None
        if device_map is not None:
            from transformers.utils import is_accelerate_available

            if is_accelerate_available():
                load_kw["device_map"] = device_map
            elif isinstance(device_map, (str, int)) or device_map is None:
                move_to = device  # one device: load, then move (device_map itself needs accelerate)
                logger.info("accelerate is not installed: loading on the CPU, then moving the model to %s", device)
            else:
                raise ModelFileError("a device_map other than one device needs accelerate: pip install accelerate")
        logger.info("loading %s (%s) as %s", self.model_id, self.model_type, model_cls.__name__)
        t0 = time.perf_counter()
        try:
            self._processor = transformers.AutoProcessor.from_pretrained(
                self.model_id, local_files_only=local_files_only
            )
            model = model_cls.from_pretrained(self.model_id, **load_kw)
        except OSError as e:
            raise ModelFileError(f"could not load {self.model_id!r}: {e}") from e
        if move_to is not None:
            model = model.to(move_to)
        self._model = model.eval()
        self._tokenizer = self._processor.tokenizer
        self.dtype = self._model.dtype
        self.device = self._model.get_input_embeddings().weight.device
        audio_tower = next(self._model.model.audio_tower.parameters())
        self.audio_device, self.audio_dtype = audio_tower.device, audio_tower.dtype
        self.audio_token_id = int(self._model.config.audio_token_id)
        self._audio_features_takes_ids = "input_ids" in inspect.signature(self._model.get_audio_features).parameters
        logger.info(
            "loaded in %.1f s: %s on %s", time.perf_counter() - t0, str(self.dtype).removeprefix("torch."), self.device
        )

    def _read_special_tokens(self, transformers) -> None:
        """End-of-sequence, padding and beginning tokens from the checkpoint's generation config and tokenizer."""
        gc_cfg = self._model.generation_config
        eos = gc_cfg.eos_token_id if gc_cfg is not None else None
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if self._tokenizer.eos_token_id is not None and self._tokenizer.eos_token_id not in eos:
            eos.append(self._tokenizer.eos_token_id)
        if not eos:
            raise ModelFileError(
                f"{self.model_id!r}: neither the generation config nor the tokenizer names an end-of-sequence token"
            )
        self.eos_token_ids: list[int] = eos
        pad = self._tokenizer.pad_token_id
        if pad is None:
            pad = gc_cfg.pad_token_id if gc_cfg is not None and gc_cfg.pad_token_id is not None else eos[0]
        self.pad_token_id = int(pad)
        self.bos_token_id = gc_cfg.bos_token_id if gc_cfg is not None else None
        # The prompts' own settings decide how to sample, as in the GGUF backend: nothing is inherited from the
        # checkpoint's generation_config.json but its special tokens.
        self._model.generation_config = transformers.GenerationConfig(
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id
        )

    # --- the backend's side of the Analyzer ---------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """Backend, checkpoint and its commit, library versions, precision, attention and device."""
        import transformers

        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "model_commit": self.commit_hash,
            "model_type": self.model_type,
            "transformers_version": transformers.__version__,
            "torch_version": self._torch.__version__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "attn_implementation": self.attn_implementation,
            "device": str(self.device),
        }

    # --- the work -----------------------------------------------------------------------------------------
    def _require_model(self):
        model = getattr(self, "_model", None)
        if model is None:
            raise EngineError("this MusicFlamingoTransformers was closed")
        return model

    def _text(self, tokens: Sequence[int], render_special: bool) -> str:
        """Tokens as text, special tokens dropped unless ``render_special`` — but a think model's ``<think>`` and
        ``</think>`` kept even where its tokenizer flags them special: the answer is told from the reasoning by them."""
        if render_special or not self.reasoning:
            return self._tokenizer.decode(tokens, skip_special_tokens=not render_special)
        special = {i for i, t in self._tokenizer.added_tokens_decoder.items() if t.special}
        dropped = (special | set(self._tokenizer.all_special_ids)) - set(
            self._tokenizer.convert_tokens_to_ids(THINK_TAGS)
        )
        return self._tokenizer.decode([t for t in tokens if t not in dropped], skip_special_tokens=False)

    @property
    def reasoning_opened(self) -> bool:
        """Whether the chat template opens the reasoning block itself (the text starts inside it)."""
        return self.chat_pieces(np.zeros(TARGET_SAMPLE_RATE, np.float32)).tail.rstrip().endswith(THINK_OPEN)

    def chat_pieces(self, pcm: np.ndarray) -> ChatPieces:
        """The processor's chat template rendered by transformers for one user turn (the audio, a newline, the
        question; the system message is ``system_prompt`` or the template's default), cut at the audio placeholder
        and the question. The same pieces the GGUF backend renders from its GGUF (music_flamingo.chat_template)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": pcm},
                    {"type": "text", "text": AUDIO_TEXT_SEPARATOR + TEXT_SLOT},
                ],
            }
        )
        rendered = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pieces = split_rendered(rendered, audio_slot=self._processor.audio_token)
        # one turn on (an answer, a follow-up question): what goes between them (ChatPieces.next_turn)
        turns = [
            *messages,
            {"role": "assistant", "content": [{"type": "text", "text": ANSWER_SLOT}]},
            {"role": "user", "content": [{"type": "text", "text": FOLLOWUP_SLOT}]},
        ]
        try:
            longer = self._processor.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template for one turn only (jinja2's TemplateError): no follow-ups
            return pieces
        return replace(pieces, next_turn=next_turn(rendered, longer, pieces.tail))

    def prompt_token_ids(self, pcm: np.ndarray, texts: Sequence[str]):
        """Token ids of every prompt with the audio placeholder expanded, the encoder inputs (one track, once),
        and how many leading tokens all prompts share (chat head + audio).

        The processor expands the audio in ``head <audio> mid`` once (AF3: ``<sound>`` x n; Music Flamingo:
        ``<|sound_bos|> <sound> x n <|sound_eos|>``) and computes the mel; each question is then tokenized as plain
        text (special tokens typed in a prompt stay text, as in the GGUF backend) between ``mid`` and ``tail``."""
        torch = self._torch
        pieces = self.chat_pieces(pcm)
        feats = self._processor(
            text=[pieces.head + self._processor.audio_token + pieces.mid], audio=[pcm], return_tensors="pt"
        )
        prefix = feats["input_ids"][0][feats["attention_mask"][0].bool()].tolist()
        tail = self._tokenizer.encode(pieces.tail, add_special_tokens=False)
        ids = [
            prefix + self._tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True) + tail
            for t in texts
        ]
        shared = 0
        for column in zip(*ids):
            if any(c != column[0] for c in column):
                break
            shared += 1
        return ids, feats, torch.tensor([ids[0]], dtype=torch.long), shared

    def _encode_audio(self, feats, ids0):
        """The audio encoder + projector, once: one row of embeddings per audio token of the track."""
        model = self._model
        features = feats["input_features"].to(self.audio_device, self.audio_dtype)
        mask = feats["input_features_mask"].to(self.audio_device)
        kw = {"input_ids": ids0.to(self.audio_device)} if self._audio_features_takes_ids else {}
        out = model.get_audio_features(features, mask, **kw)
        return getattr(out, "pooler_output", out)

    def generate(
        self,
        audio: str | os.PathLike | np.ndarray | None,
        prompts: Sequence[PromptLike] | PromptLike,
        *,
        sample_rate: int = TARGET_SAMPLE_RATE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        render_special: bool = False,
    ) -> GenerationResult:
        """Answer every prompt about one track; the audio is encoded once.

        ``audio`` is a path (decoded and resampled here) or a float32 mono array at 16 kHz. A bare string prompt
        gets ``max_tokens`` and greedy decoding. Prompts with the same sampling settings are decoded together in
        one batch; ``temperature == 0`` is greedy; a sampled batch starts from ``torch.manual_seed(seed)``.
        ``render_special`` keeps the text of special tokens in the answers. A prompt's follow-ups are asked after
        its answer (:attr:`Prompt.followups`): here the whole conversation is evaluated again (transformers'
        generate() does not continue one row's cache while others decode); a known answer (:attr:`Prompt.answer`)
        is fed instead of generated, and with every answer known ``audio`` may be None (text only).
        """
        torch = self._torch
        self._require_model()
        plist = as_prompts(prompts, max_tokens)
        text_only = (audio is None or (isinstance(audio, np.ndarray) and audio.size == 0)) and all(
            p.answer is not None for p in plist
        )
        pcm = np.zeros(0, np.float32) if text_only else np.ascontiguousarray(as_engine_audio(audio, sample_rate))
        # The processor cuts audio at its own max_audio_len; the Analyzer has already cut it where it should.
        windows_s = math.ceil(len(pcm) / TARGET_SAMPLE_RATE / _WINDOW_SECONDS) * _WINDOW_SECONDS
        if windows_s > getattr(self._processor, "max_audio_len", windows_s):
            self._processor.max_audio_len = windows_s

        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t_start = time.perf_counter()
        with torch.inference_mode():
            if text_only:
                ids, rows, n_audio, n_chunks, shared = self._text_rows(plist)
            else:
                ids, rows, n_audio, n_chunks, shared = self._audio_rows(pcm, plist)
            sync()
            t_encoded = time.perf_counter()
            asked = [i for i, p in enumerate(plist) if p.answer is None]
            tokens: list[list[int]] = [self._answer_ids(p) for p in plist]
            stops = ["answer" if p.answer is not None else "max_tokens" for p in plist]
            timing = self._decode([rows[i] for i in asked], [plist[i] for i in asked], sync)
            for k, i in enumerate(asked):
                tokens[i], stops[i] = timing.tokens[k], timing.stops[k]
            followups = self._followups(plist, rows, tokens, sync, render_special)
        t_end = time.perf_counter()

        texts = [self._text(t, render_special) for t in tokens]
        n_gen = sum(len(tokens[i]) + (stops[i] == "eog") for i in asked)
        n_gen += sum(len(f.tokens) + (f.stop_reason == "eog") for fs in followups for f in fs)
        stats = GenerationStats(
            audio_seconds=len(pcm) / TARGET_SAMPLE_RATE,
            audio_chunks=n_chunks,
            audio_tokens=n_audio,
            prefix_tokens=shared,
            prompt_tokens=sum(len(r) - shared for r in ids),
            n_ctx=timing.n_ctx,
            encode_ms=(t_encoded - t_start) * 1e3,
            prefill_ms=timing.prefill_s * 1e3,
            decode_ms=timing.decode_s * 1e3,
            tokens_generated=n_gen,
            decode_tokens_per_s=(n_gen / timing.decode_s) if timing.decode_s > 0 else 0.0,
            total_ms=(t_end - t_start) * 1e3,
            devices={"text_model": str(self.device), "audio_encoder": str(self.audio_device)},
        )
        return GenerationResult(texts=texts, stop_reasons=stops, tokens=tokens, stats=stats, followups=followups)

    def _answer_ids(self, p: Prompt) -> list[int]:
        """A known answer's token ids (as the GGUF engine feeds them: text as plain text); [] when none."""
        if p.answer is None:
            return []
        if isinstance(p.answer, tuple):
            return list(p.answer)
        return self._tokenizer.encode(p.answer, add_special_tokens=False, split_special_tokens=True)

    def _embed_rows(self, ids: Sequence[list[int]], audio_embeds=None) -> list:
        """Input embeddings of token rows, the audio tokens' rows replaced by the encoder's."""
        embed = self._model.get_input_embeddings()
        rows = []
        for row_ids in ids:
            t = self._torch.tensor(row_ids, dtype=self._torch.long, device=self.device)
            e = embed(t)
            if audio_embeds is not None:
                e[t == self.audio_token_id] = audio_embeds
            rows.append(e)
        return rows

    def _audio_rows(self, pcm: np.ndarray, plist: Sequence[Prompt]):
        """Each prompt's row (audio prefix, question, known answer) as embeddings; the audio encoded once."""
        ids, feats, ids0, shared = self.prompt_token_ids(pcm, [p.text for p in plist])
        ids = [row + self._answer_ids(p) for row, p in zip(ids, plist)]
        audio_embeds = self._encode_audio(feats, ids0)
        n_audio = int((ids0 == self.audio_token_id).sum())
        if audio_embeds.shape[0] != n_audio:
            raise EngineError(f"the audio encoder gave {audio_embeds.shape[0]} embeddings for {n_audio} audio tokens")
        audio_embeds = audio_embeds.to(self.device, self._model.get_input_embeddings().weight.dtype)
        return ids, self._embed_rows(ids, audio_embeds), n_audio, int(feats["input_features"].shape[0]), shared

    def _text_rows(self, plist: Sequence[Prompt]):
        """A text-only conversation per prompt (the catch-up pass): head, question, tail, known answer."""
        pieces = self.chat_pieces(np.zeros(TARGET_SAMPLE_RATE, np.float32))
        enc = self._tokenizer.encode
        head, tail = enc(pieces.head, add_special_tokens=False), enc(pieces.tail, add_special_tokens=False)
        ids = [
            head + enc(p.text, add_special_tokens=False, split_special_tokens=True) + tail + self._answer_ids(p)
            for p in plist
        ]
        return ids, self._embed_rows(ids), 0, 0, len(head)

    def _followups(self, plist, rows, answers, sync, render_special: bool) -> list[list[FollowUpAnswer]]:
        """Every prompt's follow-ups: its row, its answer, the next turn, the question, the tail (recomputed)."""
        pieces = self.chat_pieces(np.zeros(TARGET_SAMPLE_RATE, np.float32))
        enc = self._tokenizer.encode
        turn, tail = enc(pieces.next_turn, add_special_tokens=False), enc(pieces.tail, add_special_tokens=False)
        fu_rows, fu_prompts, owner = [], [], []
        for i, p in enumerate(plist):
            if p.followups and not pieces.next_turn:
                raise InvalidInputError("this chat template cannot continue a conversation: no follow-up questions")
            for f in p.followups:
                ids = answers[i][len(self._answer_ids(p)) :] if p.answer is not None else answers[i]
                ids = ids + turn + enc(f.text, add_special_tokens=False, split_special_tokens=True) + tail
                fu_rows.append(self._torch.cat([rows[i], self._embed_rows([ids])[0]]) if ids else rows[i])
                fu_prompts.append(f)
                owner.append(i)
        out: list[list[FollowUpAnswer]] = [[] for _ in plist]
        if fu_rows:
            d = self._decode(fu_rows, fu_prompts, sync)
            for i, toks, stop in zip(owner, d.tokens, d.stops):
                text = self._text(toks, render_special)
                out[i].append(FollowUpAnswer(text, stop, toks))
        return out

    def _decode(self, rows, plist: Sequence[Prompt], sync) -> _Decoded:
        """Generate after each row: rows with the same sampling settings together (left-padded), each to its own
        token limit."""
        torch = self._torch
        embed = self._model.get_input_embeddings()
        pad_embed = embed(torch.tensor([self.pad_token_id], device=self.device))[0]
        groups = _sampling_groups(list(plist))
        d = _Decoded([[] for _ in plist], ["max_tokens"] * len(plist))
        for key, members in groups.items():
            width = max(rows[i].shape[0] for i in members)
            max_new = max(plist[i].max_tokens for i in members)
            d.n_ctx = max(d.n_ctx, width + max_new)
            embeds = pad_embed.expand(len(members), width, -1).clone()
            attention = torch.zeros(len(members), width, dtype=torch.long, device=self.device)
            for b, i in enumerate(members):  # left padding
                n = rows[i].shape[0]
                embeds[b, width - n :] = rows[i]
                attention[b, width - n :] = 1
            seqs = self._generate_group(embeds, attention, plist[members[0]], max_new, key[0] == "sample", sync, d)
            for b, i in enumerate(members):
                row = seqs[b].tolist()[: plist[i].max_tokens]
                for k, tok in enumerate(row):
                    if tok in self.eos_token_ids:
                        row, d.stops[i] = row[:k], "eog"
                        break
                d.tokens[i] = row
        return d

    def _generate_group(self, embeds, attention, p0: Prompt, max_new: int, sampled: bool, sync, d: _Decoded):
        """One model.generate() over a left-padded group sharing ``p0``'s sampling settings; times into ``d``."""
        from transformers import GenerationConfig

        # Every sampling field explicit: generate() fills unset ones from its global defaults (top_k 50).
        # top_k 0 disables top-k there as in llama.cpp; the neutral values keep greedy free of warnings.
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=sampled,
            num_beams=1,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            repetition_penalty=p0.repeat_penalty,
            **(
                dict(temperature=p0.temperature, top_p=p0.top_p, top_k=p0.top_k, min_p=p0.min_p or None)
                if sampled
                else dict(temperature=1.0, top_p=1.0, top_k=50)
            ),
        )
        clock = _FirstStepClock(sync)
        if sampled:
            self._torch.manual_seed(p0.seed)
        t0 = time.perf_counter()
        out = self._model.generate(
            inputs_embeds=embeds, attention_mask=attention, generation_config=gen_cfg, logits_processor=[clock]
        )
        sync()
        t1 = time.perf_counter()
        first = clock.t_first if clock.t_first is not None else t1
        d.prefill_s += first - t0
        d.decode_s += t1 - first
        return out.sequences if hasattr(out, "sequences") else out

    def close(self) -> None:
        """Free the model and processor now (and the GPU memory they held) rather than at garbage collection."""
        if getattr(self, "_model", None) is None:
            return
        on_cuda = self.device.type == "cuda"
        self._model = None
        self._processor = None
        gc.collect()
        if on_cuda:
            self._torch.cuda.empty_cache()
