"""Dataclasses that cross the package's API: what to ask (Prompt) and what comes back (GenerationResult)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from . import validation as v
from .errors import InvalidInputError

if TYPE_CHECKING:
    from . import _core


# A bare-string prompt's token limit: the engine's own default (cpp/types.h, kDefaultMaxTokens;
# tests/test_core_stub.py compares the two), the one place Python states it.
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class Prompt:
    """One question about a track, with its own token limit and sampling settings.

    ``temperature == 0`` decodes greedily. Sampling applies temperature before top-k/top-p, as transformers does,
    so the same numbers mean the same thing on both backends. Every field is range-checked here
    (:mod:`.validation`): a bad value is an :class:`~music_flamingo.errors.InvalidInputError` (a ``ValueError``)
    before anything reaches an engine.
    """

    text: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int = 0
    name: str = ""
    ignore_eos: bool = False  # never stop at end-of-generation: every answer runs to max_tokens (benchmarks)
    # Tokens the repeat penalty looks back over (0: the whole penalty is off); the GGUF backend's only (transformers'
    # penalty covers the whole sequence). Last, so positional arguments keep their meaning; default as the engine's.
    repeat_last_n: int = 64
    # Questions asked after this prompt's answer, in the same conversation (each a Prompt: text, token limit,
    # sampling; their own follow-ups are not asked). The answers come back in GenerationResult.followups.
    followups: tuple[Prompt, ...] = ()
    # A known answer: fed as the model's turn instead of generated, so only the follow-ups are generated (the
    # catch-up pass). Text (e.g. read back from a sidecar) or token ids (exact: FollowUpAnswer/GenerationResult
    # tokens). With every prompt answered a track needs no audio (an empty array: a text-only conversation).
    answer: str | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "followups", tuple(self.followups))  # a list given is kept as a tuple (hashable)
        if not all(isinstance(f, Prompt) for f in self.followups):
            raise TypeError("Prompt.followups must be Prompt objects")
        if isinstance(self.answer, (list, tuple)):
            object.__setattr__(self, "answer", tuple(int(t) for t in self.answer))
            if not self.answer:
                raise InvalidInputError("Prompt.answer has no tokens")
        elif self.answer is not None and not isinstance(self.answer, str):
            raise TypeError(f"Prompt.answer must be a str, token ids or None, got {type(self.answer).__name__}")
        if self.answer is not None and not self.followups:
            raise InvalidInputError("Prompt.answer is only used with follow-ups (it is not generated)")
        if not isinstance(self.text, str):
            raise TypeError(f"Prompt.text must be a str, got {type(self.text).__name__}")
        if not self.text.strip():
            raise InvalidInputError("Prompt.text is empty")
        # max_tokens is bounded here by what C++ can hold; the model's trained context bounds it per call.
        for name, problem in (
            ("max_tokens", v.max_tokens(self.max_tokens, v.INT32_MAX)),
            ("temperature", v.temperature(self.temperature)),
            ("top_p", v.top_p(self.top_p)),
            ("top_k", v.top_k(self.top_k)),
            ("min_p", v.min_p(self.min_p)),
            ("repeat_penalty", v.repeat_penalty(self.repeat_penalty)),
            ("repeat_last_n", v.repeat_last_n(self.repeat_last_n)),
            ("seed", v.seed(self.seed)),
        ):
            v.require(f"Prompt.{name}", problem)

    def to_native(self) -> _core.PromptRequest:
        """The engine's request. Every field but text, max_tokens and name is a sampling setting and goes to
        ``_core.SamplingParams`` by name: a field the engine does not know is a TypeError there, not ignored."""
        from . import _core

        return _core.PromptRequest(
            self.text,
            max_tokens=self.max_tokens,
            sampling=self._sampling(),
            followups=[
                _core.FollowUpRequest(f.text, max_tokens=f.max_tokens, sampling=f._sampling()) for f in self.followups
            ],
            answer=self.answer if isinstance(self.answer, str) else None,
            answer_tokens=list(self.answer) if isinstance(self.answer, tuple) else [],
        )

    def _sampling(self) -> _core.SamplingParams:
        from . import _core

        return _core.SamplingParams(
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_SAMPLING}
        )


_NOT_SAMPLING = frozenset({"text", "max_tokens", "name", "followups", "answer"})


@dataclass
class GenerationStats:
    """Where the time of one call went. ``devices`` says which device ran the text model and the audio encoder."""

    audio_seconds: float
    audio_chunks: int
    audio_tokens: int
    prefix_tokens: int
    prompt_tokens: int
    n_ctx: int
    encode_ms: float
    prefill_ms: float
    decode_ms: float
    tokens_generated: int
    decode_tokens_per_s: float
    total_ms: float
    mel_ms: float = 0.0  # log-mel, where the backend times it apart from the encoder (GGUF)
    devices: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_native(cls, stats: _core.GenerateStats, devices: dict[str, str]) -> GenerationStats:
        """From the engine's stats: every field but ``devices`` by name (tests/test_core_stub.py checks that the
        two classes have the same fields)."""
        return cls(**{f.name: getattr(stats, f.name) for f in fields(cls) if f.name != "devices"}, devices=devices)


@dataclass
class FollowUpAnswer:
    """The answer to one follow-up question (:attr:`Prompt.followups`)."""

    text: str
    stop_reason: str
    tokens: list[int]


@dataclass
class GenerationResult:
    """Texts in the order of the prompts, with why each stopped ("eog", "max_tokens", or "answer" for a known
    answer fed, not generated) and the stats; ``followups[i]``: the answers to prompt i's follow-ups, in order."""

    texts: list[str]
    stop_reasons: list[str]
    tokens: list[list[int]]
    stats: GenerationStats
    debug: dict[str, Any] | None = None
    followups: list[list[FollowUpAnswer]] = field(default_factory=list)


def as_prompts(prompts: Sequence[Prompt | str] | Prompt | str, max_tokens: int) -> list[Prompt]:
    """One prompt or several, as Prompt objects; a bare string gets ``max_tokens`` and greedy decoding."""
    if isinstance(prompts, (str, Prompt)):
        prompts = [prompts]
    plist = [p if isinstance(p, Prompt) else Prompt(text=p, max_tokens=max_tokens) for p in prompts]
    if not plist:
        raise InvalidInputError("no prompts given")
    return plist
