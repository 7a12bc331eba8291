"""Issue 18 items 2 and 3 on a tiny random Music Flamingo (flash attention off): a track's prefix prefilled in a second
context beside the decode steps gives the same tokens as the decode thread's own prefill (greedy, seeded sampling,
follow-ups, tracks admitted mid-run), falls back when it cannot, stops cleanly; admission by live answers admits a
waiting track as soon as a running track's short answers end."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SR, child_env, exact_engine

from music_flamingo import InvalidInputError, Prompt

QUESTION = "Describe this track: genre, tempo, key, instruments and mood."
MIXED = [
    Prompt(QUESTION, max_tokens=12),
    Prompt("Which instruments do you hear?", max_tokens=9, temperature=0.8, top_p=0.9, top_k=40, seed=11),
    Prompt("Name the genre and the mood.", max_tokens=7, temperature=1.1, seed=3),
]
SUMMARY = Prompt("Say it in three words.", max_tokens=5)


@pytest.fixture(scope="module")
def beside(tiny):
    """An engine that prefills beside the steps on a CPU too (its default there is off)."""
    eng = exact_engine(tiny, prefill_beside=True)
    yield eng
    eng.close()


def pieces(track: np.ndarray, n: int) -> list[np.ndarray]:
    """n tracks of different lengths (4 to 4 + 5(n-1) s) from the corpus piece."""
    return [np.ascontiguousarray(track[SR * (10 + 9 * i) : SR * (10 + 9 * i + 4 + 5 * i)]) for i in range(n)]


def stream(eng, tracks, prompts, **kw) -> tuple[dict, dict]:
    out: dict = {}
    stats = eng.generate_stream(iter(tracks), prompts, lambda i, r: out.__setitem__(i, r), **kw)
    return out, stats


def test_prefill_beside_gives_the_decode_threads_tokens_alone_and_among_others(engine, beside, track):
    """Greedy and seeded-sampled prompts: a track alone, and five tracks at two in flight (admitted as others
    finish), equal the engine that prefills on the decode thread; the stats say which path ran."""
    tracks = pieces(track, 5)
    got, st = stream(beside, [tracks[0]], MIXED)  # a stream of one: generate() alone has no steps to overlap
    assert got[0].tokens == engine.generate(tracks[0], MIXED).tokens
    assert st["prefill_beside"] == 1
    beside.generate(tracks[0], MIXED)
    assert beside.last_run_stats()["prefill_beside"] == 0
    stream(engine, [tracks[0]], MIXED)
    assert engine.last_run_stats()["prefill_beside"] == 0  # a CPU's default: off
    assert (engine.info["prefill_beside"], beside.info["prefill_beside"]) == ("off", "on")
    alone = [engine.generate(t, MIXED).tokens for t in tracks]
    together = beside.generate_many([(t, MIXED) for t in tracks], tracks_in_flight=2)
    assert [r.tokens for r in together] == alone
    st = beside.last_run_stats()
    assert st["prefill_beside"] == 5 and st["prefill_fallbacks"] == 0 and st["prefill_beside_ms"] > 0
    # per track, prefill_ms is the decode thread's part only; the prefix itself ran on the helper thread
    assert all(r.stats.prefill_ms > 0 and r.stats.prefix_tokens > 0 for r in together)


def test_prefill_beside_keeps_follow_ups_and_a_bad_track_fails_alone(engine, beside, track):
    """A follow-up continues its answer's sequence, whose prefix came from the second context: the same answers
    and follow-ups as the decode thread's prefill; a track refused before encoding fails alone, the others go on."""
    tracks = pieces(track, 3)
    prompts = [Prompt(QUESTION, max_tokens=8, followups=(SUMMARY,)), MIXED[1]]
    want = [engine.generate(t, prompts) for t in tracks]
    got, st = stream(beside, [tracks[0], np.zeros(5, np.float32), tracks[1], tracks[2]], prompts, tracks_in_flight=2)
    assert isinstance(got[1], InvalidInputError)
    for k, w in zip((0, 2, 3), want):
        assert got[k].tokens == w.tokens
        assert [[f.tokens for f in fs] for fs in got[k].followups] == [[f.tokens for f in fs] for fs in w.followups]
    assert st["prefill_beside"] == 3 and st["tracks_failed"] == 1


def test_a_prefix_too_long_for_the_prefill_context_is_prefilled_at_admission(engine, tiny, track):
    """The prefill context is sized for max_audio_seconds (a new engine: it only grows): a longer track (that the
    main context still holds) is prefilled on the decode thread as before, with the same tokens."""
    short, long = np.ascontiguousarray(track[SR * 20 : SR * 25]), np.ascontiguousarray(track[SR * 20 : SR * 95])
    prompts = [Prompt(QUESTION, max_tokens=6)]
    fresh = exact_engine(tiny, prefill_beside=True)
    try:
        got, st = stream(fresh, [short, long], prompts, tracks_in_flight=2, max_audio_seconds=5)
    finally:
        fresh.close()
    assert [got[0].tokens, got[1].tokens] == [engine.generate(t, prompts).tokens for t in (short, long)]
    assert st["prefill_beside"] == 1 and st["prefill_fallbacks"] == 1


def one_in_flight(eng, tracks, prompts, live_answers: int) -> tuple[list, dict]:
    """A stream at one track in flight, each track encoded on the decode thread when it is taken (prepare_ahead
    off): the next track is always ready when the rule asks for it, so admissions do not depend on timing."""
    got, st = stream(
        eng, tracks, prompts, tracks_in_flight=1, prepare_ahead=False, max_audio_seconds=30, live_answers=live_answers
    )
    return [got[i] for i in range(len(tracks))], st


def test_live_answers_admit_a_waiting_track_when_short_answers_end(engine, track):
    """One track in flight, two answers each: one ends on its first token, the other runs 30 (EOS ignored). With a
    target of two live answers the next track is admitted as soon as the short answer ends (two tracks in flight);
    without it, only after the long one. The tokens are the same either way."""
    tracks = pieces(track, 3)
    prompts = [Prompt(QUESTION, max_tokens=1, ignore_eos=True), Prompt(QUESTION, max_tokens=30, ignore_eos=True)]
    plain, st = one_in_flight(engine, tracks, prompts, 0)
    assert st["peak_in_flight"] == 1 and st["steps"] == 3 * 29
    live, st = one_in_flight(engine, tracks, prompts, 2)
    assert st["peak_in_flight"] == 2 and st["live_answers"] == 2
    assert [r.tokens for r in live] == [r.tokens for r in plain]
    # fewer steps: each next track's long answer decodes in the steps of the one before
    assert st["steps"] < 3 * 29


def test_live_answers_with_follow_ups_keep_their_answers(engine, track):
    """A short answer without follow-ups gives its cells back and lets the next track in; an answer with a
    follow-up keeps its sequence for it: every answer and follow-up is what the plain run gives."""
    tracks = pieces(track, 3)
    prompts = [
        Prompt(QUESTION, max_tokens=1, ignore_eos=True),
        Prompt(QUESTION, max_tokens=6, followups=(SUMMARY,)),
        Prompt("Which instruments do you hear?", max_tokens=20, ignore_eos=True),
    ]
    plain, _ = one_in_flight(engine, tracks, prompts, 0)
    live, st = one_in_flight(engine, tracks, prompts, 3)
    assert st["peak_in_flight"] == 2
    assert [r.tokens for r in live] == [r.tokens for r in plain]
    assert [[[f.tokens for f in fs] for fs in r.followups] for r in live] == [
        [[f.tokens for f in fs] for fs in r.followups] for r in plain
    ]


def test_live_answers_is_checked_where_it_enters_the_engine(engine, track):
    for bad in (-1, 257):
        with pytest.raises(InvalidInputError, match="live_answers"):
            engine.generate_many([(pieces(track, 1)[0], [Prompt(QUESTION, max_tokens=2)])], live_answers=bad)


def test_interrupt_and_close_while_prefilling_beside_neither_hang_nor_crash(tiny):
    """Ctrl-C during a run whose helper thread is prefilling in the second context: KeyboardInterrupt, and the
    engine runs again; close() racing a running call: the call ends, nothing hangs."""
    code = """
        import os, signal, threading, time, numpy as np
        from music_flamingo import _core, EngineError
        e = _core.Engine(os.environ["MODEL"], os.environ["MMPROJ"], n_threads=1, warmup=False, prefill_beside=True)
        pcm = (np.random.default_rng(0).standard_normal(16000 * 60) * 0.1).astype(np.float32)
        long = [_core.PromptRequest("hi", max_tokens=400, sampling=_core.SamplingParams(ignore_eos=True))]
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.time()
        try:
            e.generate_many([(pcm, long)] * 6, 16000, request=_core.RunRequest(tracks_in_flight=2))
            raise SystemExit("not interrupted")
        except KeyboardInterrupt:
            pass
        assert time.time() - t0 < 30, time.time() - t0
        r = e.generate(pcm[:16000 * 5], 16000, [_core.PromptRequest("hi", max_tokens=3)])
        assert r.stats.tokens_generated >= 1
        short = [_core.PromptRequest("hi", max_tokens=8)]
        for delay in (0.0, 0.05, 0.3):
            e = _core.Engine(os.environ["MODEL"], os.environ["MMPROJ"], n_threads=1, warmup=False, prefill_beside=True)
            out = []
            def call():
                try:
                    out.append(e.generate_many([(pcm[:16000 * 20], short)] * 3, 16000,
                                               request=_core.RunRequest(tracks_in_flight=1)))
                except EngineError as x:
                    out.append(x)
            t = threading.Thread(target=call)
            t.start()
            time.sleep(delay)
            e.close()
            t.join(120)
            assert not t.is_alive() and len(out) == 1, out
        print("ok")
    """
    env = child_env(MODEL=str(tiny.model_gguf), MMPROJ=str(tiny.mmproj_gguf))
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=400, env=env
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
