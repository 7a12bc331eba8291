"""The allowed range of every value a user sets — sampling, token limits, durations, concurrency — in one place.

Each check returns what is wrong in words, or ``None``, so that every boundary can report it its own way before any
model loads: the prompt catalogue names the file, prompt and field (``PromptConfigError``), the command line prints
a usage error and exits 2, the Python API raises :class:`~music_flamingo.errors.InvalidInputError` (a
``ValueError``). NaN and infinities are refused everywhere: a NaN temperature once turned every token into the
same id and put a bare ``NaN`` (not JSON) into manifests.

The engine's run settings (``tracks_in_flight``, ``max_audio_seconds``) are not stated here: their range is the
engine's own, checked where the value enters C++ (:func:`require_run_setting`).

Numbers cross into C++ as ``float``/``int``/``uint32``, so bounds are those types' ranges where nothing stricter
applies: a value the engine cannot hold is refused here rather than silently becoming ``inf`` or wrapping around.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from .errors import InvalidInputError

# The catalogue's (and the command line's) own cap on answer length; the model's trained context bounds
# generate() calls further (see gguf_backend).
MAX_TOKENS_LIMIT = 8192
SEED_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
# The repeat penalty's window: llama.cpp keeps a ring buffer of that many tokens per sequence, so a huge value would
# allocate gigabytes; longer than any answer fits the model's context. The engine refuses the same in C++
# (cpp/engine.h, kMaxRepeatLastN).
REPEAT_LAST_N_MAX = 65536
# Shorter audio gives the model no audio token (the reference's first token needs 321 samples at 16 kHz: 3 mel
# frames, then the stride-2 conv and pool), and llama.cpp's audio preprocessing asserts (aborts the process) on a
# few samples. Kept here, with the other limits, and used by audio.py for every array and file; the engine refuses
# the same in C++ (cpp/prefix.h, kMinAudioSamples).
MIN_AUDIO_SAMPLES = 321
MIN_AUDIO_SECONDS = MIN_AUDIO_SAMPLES / 16000  # 20.06 ms
# A prompt's length: 10 minutes of audio take about 15,000 of the model's 32,768 tokens of context, which leaves
# room for some 17,000 tokens of text (≈ 68,000 characters); a longer prompt can never be answered, so it is
# refused before any model loads (a 10 MB prompt once failed every track of a run, one at a time).
MAX_PROMPT_CHARS = 65536


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """An int or float (numpy's too), not a bool, finite, and finite as a C float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(f) and abs(f) <= FLOAT32_MAX


def temperature(v: Any) -> str | None:
    if not is_real(v) or v < 0:
        return f"must be a finite number >= 0 (0 decodes greedily), got {v!r}"
    return None


def top_p(v: Any) -> str | None:
    if not is_real(v) or not 0 < v <= 1:
        return f"must be a number in (0, 1], got {v!r}"
    return None


def min_p(v: Any) -> str | None:
    if not is_real(v) or not 0 <= v <= 1:
        return f"must be a number in [0, 1], got {v!r}"
    return None


def top_k(v: Any) -> str | None:
    if not is_int(v) or not 0 <= v <= INT32_MAX:
        return f"must be an integer >= 0 (0 disables top-k), got {v!r}"
    return None


def repeat_penalty(v: Any) -> str | None:
    if not is_real(v) or v <= 0:
        return f"must be a finite number > 0 (1.0 disables it), got {v!r}"
    return None


def repeat_last_n(v: Any) -> str | None:
    if not is_int(v) or not 0 <= v <= REPEAT_LAST_N_MAX:
        return f"must be an integer in 0..{REPEAT_LAST_N_MAX} (0 disables the penalty), got {v!r}"
    return None


def seed(v: Any) -> str | None:
    if not is_int(v) or not 0 <= v <= SEED_MAX:
        return f"must be an integer in 0..{SEED_MAX}, got {v!r}"
    return None


def max_tokens(v: Any, limit: int = MAX_TOKENS_LIMIT) -> str | None:
    if not is_int(v) or not 1 <= v <= limit:
        return f"must be an integer in 1..{limit}, got {v!r}"
    return None


def max_duration(v: Any) -> str | None:
    if not is_real(v) or v < MIN_AUDIO_SECONDS:
        return f"must be a finite number of seconds >= {MIN_AUDIO_SECONDS}, got {v!r}"
    return None


def fraction(v: Any) -> str | None:
    """A share of something (``--trim-frac``, ``--sample``): a number in (0, 1]."""
    if not is_real(v) or not 0 < v <= 1:
        return f"must be a number in (0, 1], got {v!r}"
    return None


trim_frac = sample = fraction


def prompt_text(v: Any) -> str | None:
    if not isinstance(v, str) or not v.strip():
        shown = repr(v) if len(repr(v)) <= 80 else f"{repr(v)[:80]}…"  # never megabytes in a message
        return f"must be a non-empty string, got {shown}"
    if "\x00" in v:  # C strings end there: the model would see half the question
        return "must not contain NUL characters"
    if len(v) > MAX_PROMPT_CHARS:
        return f"is {len(v)} characters long; at most {MAX_PROMPT_CHARS} fit the model's context beside the audio"
    return None


def track_timeout(v: Any) -> str | None:
    # below a second a worker would be killed between two looks of the parent (it looks once a second)
    if not is_real(v) or v < 1:
        return f"must be a finite number of seconds >= 1, got {v!r}"
    return None


def require(field: str, problem: str | None) -> None:
    """Raise :class:`InvalidInputError` naming ``field`` when a check found a problem (the Python API's way)."""
    if problem is not None:
        raise InvalidInputError(f"{field} {problem}")


def require_run_setting(name: str, value: Any) -> None:
    """Raise the engine's :class:`InvalidInputError` for a bad run setting (``tracks_in_flight``,
    ``max_audio_seconds``): a ``_core.RunRequest`` is built with that field alone, which needs no model. The range
    is the engine's, checked where the value enters C++ (the field's rule in cpp/bindings.cpp) and stated nowhere
    else; a boundary that must refuse a bad value before the model loads builds the request early, here."""
    from . import _core

    _core.RunRequest(**{name: value})


def run_setting(name: str) -> Callable[[Any], str | None]:
    """:func:`require_run_setting` as a check that returns what is wrong (for :func:`cli_type`)."""

    def check(value: Any) -> str | None:
        try:
            require_run_setting(name, value)
        except InvalidInputError as e:
            return str(e)
        return None

    check.__name__ = name
    return check


def cli_type(convert: Callable[[str], Any], check: Callable[[Any], str | None]) -> Callable[[str], Any]:
    """An argparse ``type=``: parse with ``convert`` and refuse what ``check`` refuses, so a bad value is a usage
    error (exit 2) before the model loads, not a failure of every track after it."""
    import argparse

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {convert.__name__}: {text!r}") from None
        problem = check(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = check.__name__.replace("_", "-")  # argparse names the type in some messages
    return parse


__all__ = [
    "is_int",
    "is_real",
    "MAX_PROMPT_CHARS",
    "MAX_TOKENS_LIMIT",
    "MIN_AUDIO_SAMPLES",
    "MIN_AUDIO_SECONDS",
    "SEED_MAX",
    "cli_type",
    "fraction",
    "max_duration",
    "max_tokens",
    "min_p",
    "prompt_text",
    "repeat_last_n",
    "REPEAT_LAST_N_MAX",
    "repeat_penalty",
    "run_setting",
    "require",
    "require_run_setting",
    "sample",
    "seed",
    "temperature",
    "top_k",
    "top_p",
    "track_timeout",
    "trim_frac",
]
