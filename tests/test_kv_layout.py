"""Issue 18 item 1: the per-track KV layout (one KV stream per track, llama.cpp patch 0003) gives the same tokens as
the unified cache (flash attention off, tiny model, real llama.cpp): greedy and seeded-sampled, a track alone and
tracks admitted and retired mid-run (streams reused), prompts with different answer lengths so the steps' streams
hold different numbers of live sequences (cpp/kv_layout.cpp pads them). A track too big for its stream fails alone.
"""

from __future__ import annotations

import pytest
from conftest import SR, exact_engine

from music_flamingo import InvalidInputError, MusicFlamingoGGUF, Prompt

Q = "Describe this track."


def prompts(sampled: bool) -> list[Prompt]:
    """Four prompts of different limits (answers end at different steps), greedy or seeded-sampled."""
    kw = dict(temperature=0.9, top_k=40, top_p=0.95) if sampled else {}
    return [Prompt(f"{Q} ({i})", max_tokens=3 + 4 * i, seed=11 + i, **kw) for i in range(4)]


@pytest.fixture(scope="module")
def per_track(tiny):
    mf = exact_engine(tiny, kv_layout="per_track")
    yield mf
    mf.close()


def tokens(results) -> list:
    return [r.tokens for r in results]


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_a_track_alone_equals_the_unified_cache(engine, per_track, clips, sampled):
    assert per_track.info["kv_layout"] == "per_track" and engine.info["kv_layout"] == "unified"
    p = prompts(sampled)
    assert per_track.generate(clips["5s"], p).tokens == engine.generate(clips["5s"], p).tokens


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_tracks_in_flight_equal_the_unified_cache(engine, per_track, clips, sampled):
    """Five tracks, two or three in flight: tracks retire mid-run and the next ones take their streams; each track's
    prompts have their own lengths, so the streams of a step hold different numbers of live sequences."""
    p = prompts(sampled)
    order = ["5s", "30s", "5s", "45s", "30s"]
    work = [(clips[k], p[: 2 + i % 3]) for i, k in enumerate(order)]  # 2, 3 or 4 prompts per track
    unified = tokens(engine.generate_many(work, tracks_in_flight=2))
    for in_flight in (2, 3):
        assert tokens(per_track.generate_many(work, tracks_in_flight=in_flight)) == unified


def test_a_track_too_big_for_its_stream_fails_alone(tiny, clips, track):
    """Streams sized for 5 s tracks (a new engine: contexts only grow): a 2-minute track fails with the stream's
    size in its message, the others run."""
    got: dict = {}
    p = [Prompt(Q, max_tokens=4), Prompt(Q + " Briefly.", max_tokens=3)]
    files = dict(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, flash_attn=False, n_threads=1)
    with MusicFlamingoGGUF(**files, warmup=False, kv_layout="per_track") as mf:
        stats = mf.generate_stream(
            iter([clips["5s"], track[: 120 * SR], clips["5s"]]),
            p,
            got.__setitem__,
            tracks_in_flight=2,
            max_audio_seconds=5,
        )
    assert isinstance(got[1], InvalidInputError) and "each track's stream holds" in str(got[1])
    assert not isinstance(got[0], Exception) and not isinstance(got[2], Exception)
    assert got[0].tokens == got[2].tokens
    assert (stats["tracks"], stats["tracks_failed"]) == (3, 1)


def test_the_layout_is_one_setting_checked_before_loading(tiny):
    files = dict(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, warmup=False)
    with pytest.raises(ValueError, match="kv_layout"):
        MusicFlamingoGGUF(**files, kv_layout="per_stream")
    with pytest.raises(ValueError, match="not both"):
        MusicFlamingoGGUF(**files, kv_layout="per_track", kv_unified=False)
    with MusicFlamingoGGUF(**files, kv_unified=False) as old_switch:  # the earlier form still works
        assert old_switch.info["kv_layout"] == "per_sequence"


def test_followups_stay_in_their_tracks_stream(engine, per_track, clips):
    """A follow-up's sequence is a copy of its answer's (llama_memory_seq_cp): inside the track's stream, metadata
    only, and its tokens are the unified cache's."""
    follow = (Prompt("Which instruments?", max_tokens=4), Prompt("Which mood?", max_tokens=6))
    p = [Prompt(Q, max_tokens=5, followups=follow), Prompt(Q + " Briefly.", max_tokens=3)]
    work = [(clips["5s"], p), (clips["30s"], p), (clips["5s"], p[:1])]
    unified = engine.generate_many(work, tracks_in_flight=2)
    split = per_track.generate_many(work, tracks_in_flight=2)
    assert tokens(split) == tokens(unified)
    assert [[[f.tokens for f in fs] for fs in r.followups] for r in split] == [
        [[f.tokens for f in fs] for fs in r.followups] for r in unified
    ]
    assert all(f.tokens for r in split for f in r.followups[0])


@pytest.mark.parametrize(("budget_mb", "chosen"), [(0.001, 1), (10**5, 2)])
def test_automatic_tracks_in_flight_count_whole_streams(tiny, clips, budget_mb, chosen):
    """Automatic sizing divides the KV budget by a track's whole stream: a budget below one stream still runs one
    track at a time; a large one takes the CPU cap (2)."""
    p = [Prompt(Q, max_tokens=3), Prompt(Q + " Briefly.", max_tokens=2)]
    files = dict(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False)
    with MusicFlamingoGGUF(**files, kv_layout="per_track", memory_budget_mb=budget_mb) as mf:
        got: dict = {}
        st = mf.generate_stream(iter([clips["5s"]] * 3), p, got.__setitem__, max_audio_seconds=5)
    assert len(got) == 3 and not any(isinstance(r, Exception) for r in got.values())
    assert st["tracks_in_flight"] == chosen
