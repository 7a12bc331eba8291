"""The model's own chat template, rendered as transformers renders it, cut into the pieces around the audio.

The reference (NVIDIA's code, transformers) formats every question with the checkpoint's Jinja chat template. The
Music Flamingo / AF3 templates insert a default system message (``You are a helpful assistant.``) when the
conversation has none, so a backend that formats ChatML by hand conditions the model on a different prompt. Both
backends therefore render the template here and only tokenize the pieces:

    head  <audio>  mid  <user text>  tail

``head``, ``mid`` and ``tail`` are template text (special tokens count as control tokens); the user's text is plain
text (a ``<|im_end|>`` typed in a prompt stays text). The user's message is the audio, a newline, then the
question: the layout NVIDIA trained with (``"<sound>" * n + "\\n" + question``), so ``mid`` starts with ``"\\n"``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

# Plain letters stand in for the audio and the user's text while the template is rendered: they survive templates
# that trim, escape or title-case content, and cannot collide with a real prompt's special tokens.
AUDIO_SLOT = "MUSICFLAMINGOAUDIOSLOT"
TEXT_SLOT = "MUSICFLAMINGOPROMPTSLOT"
ANSWER_SLOT = "MUSICFLAMINGOANSWERSLOT"
FOLLOWUP_SLOT = "MUSICFLAMINGOFOLLOWUPSLOT"
# Between the audio and the question (NVIDIA's training layout; see /work/shared/notes/audio-framing.md).
AUDIO_TEXT_SEPARATOR = "\n"
# What llama.cpp assumes for a GGUF without a template: ChatML, no default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatPieces:
    """A rendered chat cut at the audio and at the user's text: ``head <audio> mid <text> tail``; a follow-up
    question after the answer is ``<answer> next_turn <question> tail`` (empty ``next_turn``: the template does not
    continue a conversation that way, and follow-ups are refused)."""

    head: str
    mid: str
    tail: str
    next_turn: str = ""

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.head, self.mid, self.tail, self.next_turn)


@lru_cache(maxsize=8)
def _compile(template: str):
    """The template compiled in the environment transformers uses (``apply_chat_template``): sandboxed, blocks
    trimmed, loop controls, its ``tojson``, ``raise_exception`` and ``strftime_now``."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def split_rendered(rendered: str, audio_slot: str = AUDIO_SLOT, text_slot: str = TEXT_SLOT) -> ChatPieces:
    """Cut a rendered chat at the audio placeholder and the text placeholder (each exactly once, audio first)."""
    if rendered.count(audio_slot) != 1 or rendered.count(text_slot) != 1:
        raise ValueError("the chat template dropped or repeated the audio or the prompt")
    if rendered.index(text_slot) < rendered.index(audio_slot):
        raise ValueError("the chat template put the prompt before the audio")
    head, rest = rendered.split(audio_slot)
    mid, tail = rest.split(text_slot)
    return ChatPieces(head, mid, tail)


def render_pieces(
    template: str | None,
    system_prompt: str = "",
    special_tokens: dict[str, str] | None = None,
    audio_wrap: tuple[str, str] = ("", ""),
) -> ChatPieces:
    """Render ``template`` (a GGUF's ``tokenizer.chat_template``; ChatML when absent) for one user turn of audio
    and a question, with ``system_prompt`` as the system message when given (else the template's default), and
    cut it into :class:`ChatPieces`. ``special_tokens`` (``bos_token``, ``eos_token``) are visible to the template,
    as transformers passes the tokenizer's. ``audio_wrap``: text around the audio (``<|sound_bos|>``,
    ``<|sound_eos|>`` for musicflamingo checkpoints, whose processor writes them around the audio tokens)."""
    import jinja2

    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    audio = audio_wrap[0] + AUDIO_SLOT + audio_wrap[1]
    messages.append({"role": "user", "content": audio + AUDIO_TEXT_SEPARATOR + TEXT_SLOT})
    compiled = _compile(template or CHATML_TEMPLATE)
    rendered = compiled.render(messages=messages, add_generation_prompt=True, **(special_tokens or {}))
    pieces = split_rendered(rendered)
    # The same chat one turn on: the answer, then a follow-up question (:attr:`ChatPieces.next_turn`).
    turns = [*messages, {"role": "assistant", "content": ANSWER_SLOT}, {"role": "user", "content": FOLLOWUP_SLOT}]
    try:
        longer = compiled.render(messages=turns, add_generation_prompt=True, **(special_tokens or {}))
    except jinja2.exceptions.TemplateError:  # a template for one turn only: no follow-ups
        return pieces
    return dataclasses.replace(pieces, next_turn=next_turn(rendered, longer, pieces.tail))


def next_turn(first: str, longer: str, tail: str) -> str:
    """What the template puts between the answer and a follow-up question, when the longer chat (answer and
    follow-up) renders the first chat unchanged, the answer, this piece, the question and the same ``tail``;
    "" otherwise (a template that rewrites earlier turns cannot be continued in the KV cache)."""
    start = first + ANSWER_SLOT
    if not longer.startswith(start) or longer.count(FOLLOWUP_SLOT) != 1:
        return ""
    between, after = longer[len(start) :].split(FOLLOWUP_SLOT)
    return between if after == tail and between else ""
