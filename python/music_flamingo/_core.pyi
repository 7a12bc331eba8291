"""The native engine (cpp/bindings.cpp): llama.cpp's mtmd for Music Flamingo. Private; the package wraps it.

Hand-written; tests/test_core_stub.py checks it against the compiled module (every name, every class's attributes,
every function's parameters), so a change to the binding that is not made here fails a test.
"""

from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt

MAX_TRACKS_IN_FLIGHT: int  # llama.cpp's sequences in one context (LLAMA_MAX_SEQ): RunRequest.tracks_in_flight's bound

class SamplingParams:
    """One prompt's sampling settings; a keyword it does not know is a TypeError. Defaults are the engine's."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int
    ignore_eos: bool
    def __init__(
        self,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: int = 0,
        ignore_eos: bool = False,
    ) -> None: ...

class FollowUpRequest:
    """A question asked after a prompt's answer, in the same conversation (its KV cells continued)."""

    text: str
    max_tokens: int  # the follow-up's own token limit
    sampling: SamplingParams
    def __init__(self, text: str, *, max_tokens: int = 64, sampling: SamplingParams = ...) -> None: ...

class PromptRequest:
    """One question about a track: its text, token limit and sampling; its follow-ups; a known answer (``answer``
    text or ``answer_tokens``: fed, not generated, so only the follow-ups are)."""

    text: str
    max_tokens: int
    sampling: SamplingParams
    followups: list[FollowUpRequest]
    @property
    def answered(self) -> bool: ...
    @property
    def answer(self) -> str: ...
    @property
    def answer_tokens(self) -> list[int]: ...
    def __init__(
        self,
        text: str,
        *,
        max_tokens: int = 256,
        sampling: SamplingParams = ...,
        followups: list[FollowUpRequest] = [],
        answer: str | None = None,
        answer_tokens: list[int] = [],
    ) -> None: ...

class Framing:
    """How the audio is put in front of the LLM (cpp/types.h, enum Framing)."""

    Mtmd: ClassVar[Framing]
    ReferenceTrim: ClassVar[Framing]
    ReferenceTail: ClassVar[Framing]
    Reference: ClassVar[Framing]
    __members__: ClassVar[dict[str, Framing]]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class FlashAttn:
    """Flash attention for the text model and the audio encoder."""

    Auto: ClassVar[FlashAttn]
    Off: ClassVar[FlashAttn]
    On: ClassVar[FlashAttn]
    __members__: ClassVar[dict[str, FlashAttn]]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class GenerateStats:
    """Where the time of one track went (read-only)."""

    @property
    def audio_seconds(self) -> float: ...
    @property
    def audio_chunks(self) -> int: ...
    @property
    def audio_tokens(self) -> int: ...
    @property
    def prefix_tokens(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def mel_ms(self) -> float: ...
    @property
    def encode_ms(self) -> float: ...
    @property
    def prefill_ms(self) -> float: ...
    @property
    def decode_ms(self) -> float: ...
    @property
    def tokens_generated(self) -> int: ...
    @property
    def decode_tokens_per_s(self) -> float: ...
    @property
    def total_ms(self) -> float: ...

class PromptOutput:
    """One prompt's answer (read-only). ``text`` is raw UTF-8: a cut at max_tokens may split a character."""

    @property
    def text(self) -> bytes: ...
    @property
    def tokens(self) -> list[int]: ...
    @property
    def stop_reason(self) -> str: ...
    @property
    def followups(self) -> list[PromptOutput]: ...

class GenerateResult:
    """One track's answers and stats (read-only); the debug fields are empty unless ``debug`` was asked for."""

    @property
    def outputs(self) -> list[PromptOutput]: ...
    @property
    def stats(self) -> GenerateStats: ...
    @property
    def audio_embd(self) -> npt.NDArray[np.float32]: ...
    @property
    def first_logits(self) -> npt.NDArray[np.float32]: ...
    @property
    def prompt_tokens(self) -> list[int]: ...

class ChatPieces:
    """The chat around the audio and the question: head <audio> mid <question> tail (music_flamingo.chat_template);
    next_turn (between an answer and the next question): without it follow-ups are refused."""

    head: str
    mid: str
    tail: str
    next_turn: str
    def __init__(self, *, head: str = "", mid: str = "", tail: str = "", next_turn: str = "") -> None: ...

class RunRequest:
    """One run's settings; a keyword it does not know is a TypeError. Defaults are the engine's."""

    system_prompt: str
    chat: ChatPieces | None
    render_special: bool
    framing: Framing
    tracks_in_flight: int | str  # 'auto' or 1..MAX_TRACKS_IN_FLIGHT, checked where it is set
    max_audio_seconds: float  # 0 (10 minutes) or seconds up to 1e7, checked where it is set
    profile: bool
    prepare_ahead: bool | None
    prefill_beside: bool | None
    live_answers: int
    debug: bool
    sampling_on_device: str | None
    def __init__(
        self,
        *,
        system_prompt: str = "",
        chat: ChatPieces | None = None,
        render_special: bool = False,
        framing: Framing = ...,
        tracks_in_flight: int | str = "auto",
        max_audio_seconds: float = 0.0,
        profile: bool = False,
        prepare_ahead: bool | None = None,
        prefill_beside: bool | None = None,
        live_answers: int = 0,
        debug: bool = False,
        sampling_on_device: str | None = None,
    ) -> None: ...

class RunStats:
    """Where the time of one run went, for benchmarks (read-only)."""

    @property
    def tracks(self) -> int: ...
    @property
    def tracks_failed(self) -> int: ...
    @property
    def tracks_in_flight(self) -> int: ...
    @property
    def peak_in_flight(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_seq(self) -> int: ...
    @property
    def kv_budget_mb(self) -> float: ...
    @property
    def steps(self) -> int: ...
    @property
    def step_tokens(self) -> int: ...
    @property
    def decode_ms(self) -> float: ...
    @property
    def sample_ms(self) -> float: ...
    @property
    def host_ms(self) -> float: ...
    @property
    def admit_ms(self) -> float: ...
    @property
    def prefill_beside(self) -> int: ...
    @property
    def prefill_beside_ms(self) -> float: ...
    @property
    def prefill_fallbacks(self) -> int: ...
    @property
    def live_answers(self) -> int: ...
    @property
    def wait_ms(self) -> float: ...
    @property
    def prepare_ms(self) -> float: ...
    @property
    def wall_ms(self) -> float: ...
    @property
    def sampling_threads(self) -> int: ...
    @property
    def device_sampled(self) -> int: ...
    @property
    def sampler_attaches(self) -> int: ...
    @property
    def step_batch(self) -> list[int]: ...
    @property
    def step_host_ms(self) -> list[float]: ...
    @property
    def step_decode_ms(self) -> list[float]: ...

class Engine:
    """The resident engine: model and audio encoder loaded once. Every call releases the GIL while it runs."""

    def __init__(
        self,
        model_path: str,
        mmproj_path: str,
        *,
        n_gpu_layers: int = -1,
        mmproj_use_gpu: bool = True,
        n_threads: int = 0,
        flash_attn: FlashAttn = ...,
        n_ctx: int = 0,
        n_batch: int = 2048,
        n_ubatch: int = 1024,
        n_seq_max: int = 8,
        kv_type: str = "f16",
        warmup: bool = True,
        n_sampling_threads: int = 0,
        memory_budget_mb: float = 0.0,
        prepare_ahead: bool = True,
        kv_layout: str = "unified",
        sampling_on_device: str = "auto",
        prefill_beside: bool | None = None,
    ) -> None: ...
    def generate(
        self,
        audio: npt.NDArray[np.float32],
        sample_rate: int,
        prompts: Sequence[PromptRequest],
        *,
        request: RunRequest = ...,
    ) -> GenerateResult: ...
    def generate_many(
        self,
        tracks: list[tuple[npt.NDArray[np.float32], Sequence[PromptRequest]]],
        sample_rate: int,
        *,
        request: RunRequest = ...,
    ) -> list[GenerateResult]: ...
    def run_stream(
        self,
        next_audio: Callable[
            [], npt.NDArray[np.float32] | tuple[npt.NDArray[np.float32], Sequence[PromptRequest]] | None
        ],
        on_result: Callable[[int, GenerateResult | Exception], None],
        prompts: Sequence[PromptRequest],
        sample_rate: int,
        *,
        request: RunRequest = ...,
    ) -> RunStats: ...
    def check(self, prompts: Sequence[PromptRequest], n_samples: int, *, request: RunRequest = ...) -> None: ...
    def last_run_stats(self) -> RunStats: ...
    def info(self) -> dict[str, str]: ...
    @property
    def sample_rate(self) -> int: ...
    def close(self) -> None: ...

def set_force_full_sampling(on: bool) -> None: ...
def build_info() -> dict[str, str]: ...
def list_devices() -> list[dict[str, str]]: ...
def set_log_callback(callback: Callable[[int, bytes], None] | None) -> None: ...
def set_log_level(level: int) -> None: ...
def quantize_model(
    src: str, dst: str, ftype: int, n_threads: int = 0, imatrix: list[tuple[str, list[float]]] = []
) -> None: ...
