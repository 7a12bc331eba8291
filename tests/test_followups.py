"""Follow-up questions (issue 20, item 3): asked in the same conversation after an answer, continuing its KV cells.
Greedy with flash attention off, a follow-up equals a fresh conversation that holds the same answer; batched with
other tracks it equals alone; the catch-up pass feeds a known answer (text only, no audio)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SR

from music_flamingo import InvalidInputError, Prompt
from music_flamingo.chat_template import CHATML_TEMPLATE, _compile, render_pieces

QUESTION = "Describe this track in detail."
SUMMARIES = (
    Prompt(
        "A brief technical description of production and mixing (20-30 words)", max_tokens=7, name="short_technical"
    ),
    Prompt("The mood and emotional character (10-20 words)", max_tokens=5, name="short_mood"),
)


def asked(max_tokens: int = 9, followups=SUMMARIES, **kw) -> Prompt:
    return Prompt(QUESTION, max_tokens=max_tokens, followups=followups, **kw)


def test_followup_equals_a_fresh_conversation_holding_the_same_answer(engine, clips):
    pcm = clips["5s"]
    cont = engine.generate(pcm, [asked()])
    assert cont.stop_reasons[0] == "max_tokens" and len(cont.tokens[0]) == 9  # the cut answer: its last token fed
    assert [len(f) for f in cont.followups] == [2]
    # fresh: one prefill of audio, question, the same answer tokens and the follow-up question; nothing continued
    fresh = engine.generate(pcm, [asked(answer=tuple(cont.tokens[0]))])
    assert fresh.stop_reasons == ["answer"] and fresh.tokens == cont.tokens
    for mine, theirs in zip(cont.followups[0], fresh.followups[0]):
        assert mine.tokens and mine.tokens == theirs.tokens and mine.text == theirs.text
    # each follow-up alone (its own conversation) equals it asked beside the other
    for k, f in enumerate(SUMMARIES):
        alone = engine.generate(pcm, [asked(answer=tuple(cont.tokens[0]), followups=(f,))])
        assert alone.followups[0][0].tokens == cont.followups[0][k].tokens
    # the answer itself is the same as without follow-ups
    assert engine.generate(pcm, [Prompt(QUESTION, max_tokens=9)]).tokens == cont.tokens


def test_followup_of_an_answer_that_ended_on_its_own(engine, clips):
    """An answer ended at end-of-generation (its end token never decoded): the turn's own end token follows it."""
    pcm = clips["5s"]
    cont = engine.generate(pcm, [asked(max_tokens=1), Prompt("Name the genre.", max_tokens=3)])
    fresh = engine.generate(pcm, [asked(answer=tuple(cont.tokens[0])), Prompt("Name the genre.", max_tokens=3)])
    assert [f.tokens for f in cont.followups[0]] == [f.tokens for f in fresh.followups[0]]
    assert cont.followups[1] == [] and cont.tokens[1] == fresh.tokens[1]


def test_followups_batched_with_other_tracks_equal_each_alone(engine, track):
    tracks = [np.ascontiguousarray(track[SR * (5 + 9 * i) : SR * (9 + 9 * i + 3 * i)]) for i in range(4)]
    prompts = [asked(max_tokens=4 + 3 * i) for i in range(2)] + [Prompt("Which instruments?", max_tokens=5)]
    alone = [engine.generate(t, prompts) for t in tracks]
    for in_flight in (2, 4):
        together = engine.generate_many([(t, prompts) for t in tracks], tracks_in_flight=in_flight)
        assert [r.tokens for r in together] == [r.tokens for r in alone]
        assert [[[f.tokens for f in fs] for fs in r.followups] for r in together] == [
            [[f.tokens for f in fs] for fs in r.followups] for r in alone
        ]


def test_catch_up_is_text_only(engine):
    """A sidecar's answer fed as text, no audio: only the follow-ups are generated, reproducibly."""
    answer = "A calm ambient piece with soft synth pads, slow tempo and a warm, dreamy mood."
    one = engine.generate(None, [asked(answer=answer)])
    assert one.stop_reasons == ["answer"] and one.stats.audio_tokens == 0
    assert all(f.tokens for f in one.followups[0])
    again = engine.generate_many([(None, [asked(answer=answer)]), (None, [asked(answer=answer + " Slow.")])])
    assert [f.tokens for f in again[0].followups[0]] == [f.tokens for f in one.followups[0]]


def test_audio_is_needed_unless_every_answer_is_known(engine):
    with pytest.raises(InvalidInputError, match="known answer"):
        engine.generate(None, [asked()])
    with pytest.raises(InvalidInputError, match="only used with follow-ups"):
        Prompt(QUESTION, answer="x")


def test_followups_are_refused_with_the_llamacpp_framing(engine, clips):
    with pytest.raises(InvalidInputError, match="next-turn"):
        engine.generate(clips["5s"], [asked()], framing="llamacpp")


def test_next_turn_pieces_render_the_model_template(tiny):
    """head <audio> mid question tail answer next_turn follow-up tail is the template's own two-turn chat."""
    from tiny_model import read_gguf_metadata

    template = read_gguf_metadata(tiny.model_gguf).get("tokenizer.chat_template")
    for tmpl in (template, None):
        p = render_pieces(tmpl)
        assert p.next_turn
        messages = [
            {"role": "user", "content": "AUDIO\nQ"},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "F"},
        ]
        rendered = _compile(tmpl or CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=True)
        assert rendered == p.head + "AUDIO" + p.mid + "Q" + p.tail + "A" + p.next_turn + "F" + p.tail
