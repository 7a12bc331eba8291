"""The reasoning of "think" checkpoints, split from their answer.

The think variants (``nvidia/music-flamingo-think-2601-hf``, ``nvidia/audio-flamingo-next-think-hf``) write their
reasoning before the answer, enclosed in ``<think> ... </think>`` (AF-Next-Think's model card: "may emit reasoning
traces enclosed in <think> ... </think> before giving the final answer"). A sidecar's description must be the answer
alone: :func:`split_reasoning` cuts one text into reasoning and answer.

Forms handled (each seen in reasoning models of this family or their Qwen base):

* ``<think>R</think>A`` — reasoning R, answer A (leading whitespace ignored);
* ``R</think>A`` — the chat template opened the block in the prompt (``...assistant\\n<think>\\n``), so the text the
  model writes starts inside it;
* no tag at all — the model answered directly (a think model may skip reasoning): the whole text is the answer,
  unless the template opened the block, in which case the whole text is reasoning cut short;
* ``<think>R`` with no ``</think>`` — the token limit (or an end-of-turn) came inside the reasoning: no answer.
  :class:`ReasoningCutError` says so; the caller fails the track rather than writing reasoning as a description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MusicFlamingoError

OPEN, CLOSE = "<think>", "</think>"
# the think variants' names: "think" as one dash/underscore/dot-separated part (music-flamingo-think-2601-hf)
THINK_NAME = re.compile(r"(^|[-_.])think([-_.]|$)", re.IGNORECASE)
# Tokens the engine gives a think model's prompt beyond the prompt's own max_tokens (the answer's budget), so the
# reasoning does not eat the answer. No published limit for the think checkpoints was found; the catalogue's longest
# answer (``full``) is 500, and 1536 more makes 2048, what an AF3 think-mode endpoint template decodes with.
DEFAULT_REASONING_TOKENS = 1536


class ReasoningCutError(MusicFlamingoError):
    """A think model's text ended inside its reasoning (the token limit came first): it holds no answer, so nothing
    is written for the track; raise ``--reasoning-tokens`` and run again (the track is listed as failed)."""


@dataclass(frozen=True)
class Split:
    answer: str
    reasoning: str | None  # None: the text held no reasoning block


def split_reasoning(text: str, opened: bool = False) -> Split:
    """``text`` (a think model's output) as its answer and its reasoning; ``opened``: the chat template's
    generation prompt ends with ``<think>`` (the output starts inside the block). ReasoningCutError when the
    reasoning never ends."""
    s = text.lstrip()
    if s.startswith(OPEN):
        s, opened = s[len(OPEN) :], True
    end = s.find(CLOSE)
    if end >= 0 and (opened or OPEN not in s[:end]):
        return Split(s[end + len(CLOSE) :].strip(), s[:end].strip())
    if opened:
        raise ReasoningCutError(
            f"the answer ended inside the model's reasoning ({len(text)} characters, no {CLOSE}): "
            "no answer to write; raise the token limit (--reasoning-tokens)"
        )
    return Split(text, None)
