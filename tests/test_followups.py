"""Follow-up questions (issue 20, item 3): asked in the same conversation after an answer, continuing its KV cells.
Greedy with flash attention off, a follow-up equals a fresh conversation that holds the same answer; batched with
other tracks it equals alone; the catch-up pass feeds a known answer (text only, no audio)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SR, batch_cli, child_env, exact_engine, run_cli, write_clip

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


def test_followups_with_a_stream_per_sequence_equal_the_unified_cache(engine, tiny, clips):
    """Without a unified KV cache the answer's stream is copied to the follow-up's (its cells sized for the chain)."""

    prompts = [asked(max_tokens=5), Prompt("Which instruments?", max_tokens=4)]
    unified = engine.generate_many([(clips["5s"], prompts), (clips["30s"], prompts)], tracks_in_flight=2)
    with exact_engine(tiny, kv_unified=False) as streams:
        split = streams.generate_many([(clips["5s"], prompts), (clips["30s"], prompts)], tracks_in_flight=2)
    assert [r.tokens for r in split] == [r.tokens for r in unified]
    assert [[f.tokens for f in r.followups[0]] for r in split] == [[f.tokens for f in r.followups[0]] for r in unified]


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
    from testkit.tiny_model import read_gguf_metadata

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


# --- through the Analyzer, the batch runner and the command line ----------------------------------------------------

PIPELINE = """\
music_flamingo:
  prompts:
    full: "Describe the track in detail."
  max_tokens:
    full: 6
  revision:
    max_tokens: 4
    prompts:
      short_technical: "A brief technical description of production and mixing (20-30 words)"
      short_mood: "The mood and emotional character (10-20 words)"
"""
SHORT_KEYS = ["music_flamingo_short_technical", "music_flamingo_short_mood"]


def pipeline_file(tmp_path) -> Path:
    p = tmp_path / "master_pipeline.yaml"
    p.write_text(PIPELINE, encoding="utf-8")
    return p


def test_a_run_writes_the_answer_and_its_followups_as_one_conversation(engine, tmp_path, clips):
    from music_flamingo import AnalysisOptions, Analyzer

    an = Analyzer(engine, AnalysisOptions(prompts_files=[pipeline_file(tmp_path)], normalize=False))
    assert an.keys() == ["music_flamingo_full", *SHORT_KEYS]
    got = an.analyze_track(clips["5s"], SR)
    (full,) = an.to_prompts(an.entries)  # the catalogue's sampling settings, the follow-ups riding on it
    assert [(f.name, f.text, f.max_tokens) for f in full.followups] == [
        ("short_technical", "A brief technical description of production and mixing (20-30 words)", 4),
        ("short_mood", "The mood and emotional character (10-20 words)", 4),
    ]
    direct = engine.generate(clips["5s"], [full])
    assert got.descriptions == {
        "music_flamingo_full": direct.texts[0],
        **{k: f.text for k, f in zip(SHORT_KEYS, direct.followups[0])},
    }
    assert got.meta["followups"] == ["short_technical", "short_mood"]


def test_catch_up_writes_only_the_followups_and_keeps_every_other_key(engine, tmp_path, track):
    """The catch-up pass on sidecars that already hold the answer: text only (no audio decoded), the follow-ups
    after the sidecar's own answer, only their keys written; a sidecar without the answer is left alone; a
    second run finds everything done."""
    from music_flamingo import AnalysisOptions, Analyzer
    from music_flamingo.batch import run_batch

    data = tmp_path / "data"
    answers = ["A bright synth-pop song with punchy drums.", "Slow ambient drones, dark and spacious."]
    before = {}
    for i, answer in enumerate(answers + [None]):
        f = write_clip(data / f"song_{i}.flac", track, 2.0, 10 + 3 * i)
        info = {"position": i, "essentia_genre": {"Pop---Synth-pop": 0.4}, "music_flamingo_meta": {"run": "old"}}
        if answer is not None:
            info["music_flamingo_full"] = answer
        f.with_suffix(".INFO").write_text(json.dumps(info))
        before[f] = info
    an = Analyzer(engine, AnalysisOptions(prompts_files=[pipeline_file(tmp_path)], catch_up=True, normalize=False))
    assert an.keys() == SHORT_KEYS
    summary = run_batch(an, data)
    assert (summary.done, summary.failed, summary.skipped_complete) == (2, 0, 1)
    (full,) = an.to_prompts(an.entries)
    for f, info in before.items():
        written = json.loads(f.with_suffix(".INFO").read_text())
        if "music_flamingo_full" not in info:
            assert written == info
            continue
        alone = engine.generate(None, [dataclasses.replace(full, answer=info["music_flamingo_full"])])
        assert written == {**info, **{k: a.text for k, a in zip(SHORT_KEYS, alone.followups[0])}}
    again = run_batch(an, data)
    assert (again.done, again.skipped_complete) == (0, 3)


def test_cli_summaries_and_the_catch_up_pass(tiny, tmp_path, track):
    data = tmp_path / "data"
    f = write_clip(data / "song.flac", track, 2.0, 12)
    small = tmp_path / "small.yaml"
    small.write_text("prompts:\n  full: {max_tokens: 5}\n")
    r = run_cli(
        *batch_cli(data, tiny, "--prompts", "full", "--summaries", "--no-progress", prompts=small)[3:], env=child_env()
    )
    assert r.returncode == 0, r.stderr
    written = json.loads(f.with_suffix(".INFO").read_text())
    summaries = ["music_flamingo_short_technical", "music_flamingo_short_mood", "music_flamingo_short_genre"]
    assert all(isinstance(written[k], str) for k in ["music_flamingo_full", *summaries])
    # the catch-up pass after a run without summaries: only the three keys are added
    for k in summaries:
        del written[k]
    f.with_suffix(".INFO").write_text(json.dumps(written))
    r = run_cli(
        *batch_cli(data, tiny, "--summaries", "--summaries-only", "--no-progress", prompts=small)[3:], env=child_env()
    )
    assert r.returncode == 0, r.stderr
    after = json.loads(f.with_suffix(".INFO").read_text())
    assert {k: v for k, v in after.items() if k not in summaries} == written
    assert all(isinstance(after[k], str) for k in summaries)
    bad = run_cli(str(data), "--batch", "--summaries-only", "--dry-run", env=child_env())
    assert bad.returncode != 0 and "follow-up" in bad.stderr


# --- the transformers backend (the conversation evaluated again: generate() cannot continue one row's cache) --------


@pytest.fixture(scope="module")
def hf(tiny):
    from music_flamingo import MusicFlamingoTransformers

    mf = MusicFlamingoTransformers(tiny.hf_dir, local_files_only=True, dtype="float32")
    yield mf
    mf.close()


def test_transformers_followups_equal_a_fresh_conversation(hf, engine, clips):
    pcm = clips["5s"]
    assert hf.chat_pieces(pcm).next_turn == engine.chat_pieces().next_turn  # the same turn on both backends
    cont = hf.generate(pcm, [asked(max_tokens=6), Prompt("Name the genre.", max_tokens=3)])
    assert [len(f) for f in cont.followups] == [2, 0] and cont.followups[0][0].tokens
    fresh = hf.generate(pcm, [asked(answer=tuple(cont.tokens[0]))])
    assert fresh.stop_reasons == ["answer"]
    assert [f.tokens for f in fresh.followups[0]] == [f.tokens for f in cont.followups[0]]
    assert hf.generate(pcm, [Prompt(QUESTION, max_tokens=6)]).tokens[0] == cont.tokens[0]
    text = hf.generate(None, [asked(answer="A calm ambient piece with soft synth pads.")])
    assert text.stats.audio_tokens == 0 and all(f.tokens for f in text.followups[0])
