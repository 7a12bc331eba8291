"""The engine's throughput machinery on the tiny model: the sampling fast path gives llama.cpp's tokens, the stream
API reports a bad track alone, the helper thread that encodes audio changes no token, automatic tracks in flight
stay inside a memory budget, and sizes are checked before anything is allocated."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SR, child_env

from music_flamingo import InvalidInputError, MusicFlamingoGGUF, Prompt, _core

SAMPLED = [
    Prompt("Describe this track.", max_tokens=24, temperature=0.7, top_p=0.9, top_k=50, seed=42 + i) for i in range(3)
]
GREEDY = [Prompt("Describe this track.", max_tokens=10 + 4 * i) for i in range(3)]


def pieces(track: np.ndarray, n: int, seconds: float = 4.0) -> list[np.ndarray]:
    return [np.ascontiguousarray(track[SR * (10 + 7 * i) : SR * (10 + 7 * i) + int(seconds * SR)]) for i in range(n)]


def test_fast_sampling_path_gives_the_tokens_of_llamacpps_sampler(engine, track):
    """Top-k candidates from one scan vs all 152k candidates through the same chain: the same seeded tokens."""
    tracks = pieces(track, 3)
    fast = [r.tokens for r in engine.generate_many([(t, SAMPLED) for t in tracks], tracks_in_flight=2)]
    _core.set_force_full_sampling(True)
    try:
        full = [r.tokens for r in engine.generate_many([(t, SAMPLED) for t in tracks], tracks_in_flight=2)]
    finally:
        _core.set_force_full_sampling(False)
    assert fast == full
    assert len({tuple(t) for r in fast for t in r}) > 1, "the seeds should give different answers"
    greedy_fast = engine.generate(tracks[0], GREEDY).tokens
    _core.set_force_full_sampling(True)
    try:
        assert engine.generate(tracks[0], GREEDY).tokens == greedy_fast
    finally:
        _core.set_force_full_sampling(False)


def test_stream_reports_a_bad_track_alone_and_the_others_equal_generate(engine, track):
    tracks = pieces(track, 3)
    alone = [engine.generate(t, GREEDY).tokens for t in tracks]
    stream = [tracks[0], np.zeros(3, np.float32), tracks[1], tracks[2]]
    got: dict[int, object] = {}
    stats = engine.generate_stream(iter(stream), GREEDY, got.__setitem__, tracks_in_flight=2, profile=True)
    assert sorted(got) == [0, 1, 2, 3]
    assert isinstance(got[1], InvalidInputError) and "too short" in str(got[1])
    assert [got[i].tokens for i in (0, 2, 3)] == alone
    assert stats["tracks"] == 4 and stats["tracks_failed"] == 1
    assert stats["steps"] == len(stats["step_batch"]) == len(stats["step_host_ms"]) > 0
    assert max(stats["step_batch"]) <= 2 * len(GREEDY)


def test_encoding_on_the_helper_thread_changes_no_token(engine, track):
    tracks = pieces(track, 4, seconds=6)
    runs = []
    for ahead in (True, False):
        got: dict[int, object] = {}
        engine.generate_stream(iter(tracks), GREEDY, got.__setitem__, tracks_in_flight=3, prepare_ahead=ahead)
        runs.append([got[i].tokens for i in range(len(tracks))])
    assert runs[0] == runs[1]


def test_ignore_eos_runs_every_answer_to_its_limit(engine, track):
    prompts = [Prompt("Say nothing.", max_tokens=n, ignore_eos=True) for n in (3, 17, 40)]
    res = engine.generate(pieces(track, 1)[0], prompts)
    assert [len(t) for t in res.tokens] == [3, 17, 40]
    assert res.stop_reasons == ["max_tokens"] * 3


def test_auto_tracks_in_flight_stay_inside_a_small_memory_budget(tiny, track):
    """The budget decides the context; the KV cells actually free decide admissions; nothing is lost.
    Tracks of 35 s (~900 cells each), so the context's 256-cell granularity cannot fit a second one by rounding."""
    tracks = pieces(track, 3, seconds=35)
    kw = dict(
        model_path=tiny.model_gguf,
        mmproj_path=tiny.mmproj_gguf,
        flash_attn=False,
        n_threads=1,
        warmup=False,
        prepare_ahead=False,
    )
    with MusicFlamingoGGUF(**kw) as mf:
        reference = [r.tokens for r in mf.generate_many([(t, GREEDY) for t in tracks], tracks_in_flight=1)]
        one = mf.generate(tracks[0], GREEDY).stats
        cell_bytes = int(mf.info["kv_cell_bytes"])
    need = one.prefix_tokens + one.prompt_tokens + sum(p.max_tokens for p in GREEDY)  # cells of one track
    outcomes = {}
    for tracks_fitting in (1.5, 20):
        budget_mb = tracks_fitting * need * cell_bytes / 2**20
        with MusicFlamingoGGUF(memory_budget_mb=budget_mb, **kw) as mf:
            got = mf.generate_many([(t, GREEDY) for t in tracks])  # tracks_in_flight="auto"
            st = mf.last_run_stats()
        assert [r.tokens for r in got] == reference
        assert st["kv_budget_mb"] == pytest.approx(budget_mb)
        assert st["n_ctx"] * cell_bytes <= max(budget_mb * 2**20, 256 * cell_bytes) + 255 * cell_bytes
        outcomes[tracks_fitting] = st["peak_in_flight"]
    assert outcomes[1.5] == 1
    assert outcomes[20] == 2  # the CPU's automatic cap


def test_a_track_larger_than_the_budget_fails_alone_with_a_clear_error(tiny, track):
    with MusicFlamingoGGUF(
        model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False, memory_budget_mb=0.001
    ) as mf:
        got: dict[int, object] = {}
        mf.generate_stream(iter(pieces(track, 2, seconds=40)), GREEDY, got.__setitem__)
    assert all(isinstance(got[i], InvalidInputError) and "KV cells" in str(got[i]) for i in (0, 1))


def test_huge_max_tokens_fails_before_anything_is_allocated(engine, track):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidInputError, match="trained context"):
        engine.generate(pieces(track, 1)[0], [Prompt("Describe.", max_tokens=10**9)])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def _run_isolated(code: str, tiny) -> subprocess.CompletedProcess:
    """Risky calls run in a child process (the same interpreter and import path): an abort there fails the test
    instead of killing the suite."""
    env = child_env(MODEL=str(tiny.model_gguf), MMPROJ=str(tiny.mmproj_gguf))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_engine_refuses_audio_too_short_for_the_mel_without_aborting(tiny):
    r = _run_isolated(
        """
        import os, numpy as np
        from music_flamingo import _core, InvalidInputError
        e = _core.Engine(os.environ["MODEL"], os.environ["MMPROJ"], n_threads=1, warmup=False)
        chat = _core.ChatPieces(head="<|im_start|>user\\n", mid="\\n", tail="<|im_end|>\\n<|im_start|>assistant\\n")
        hi = [_core.PromptRequest("hi", max_tokens=2)]
        for n in (1, 2, 3, 4, 100, 320):
            for framing in _core.Framing.__members__.values():
                try:
                    request = _core.RunRequest(framing=framing, chat=None if framing == _core.Framing.Mtmd else chat)
                    e.generate(np.zeros(n, np.float32), 16000, hi, request=request)
                    print("accepted", n)
                except InvalidInputError as x:
                    assert "too short" in str(x), x
        # a sliver after a whole window (one token's worth) is padded for mtmd's mel, not refused
        for framing in (_core.Framing.ReferenceTrim, _core.Framing.ReferenceTail, _core.Framing.Reference):
            r = e.generate(np.zeros(30 * 16000 + 400, np.float32), 16000, hi,
                           request=_core.RunRequest(framing=framing, chat=chat))
            print("ok", r.stats.audio_chunks)
    """,
        tiny,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "accepted" not in r.stdout and r.stdout.count("ok 2") == 3


def test_close_racing_a_running_call_neither_crashes_nor_hangs(tiny):
    r = _run_isolated(
        """
        import os, threading, time, numpy as np
        from music_flamingo import _core, EngineError
        for delay in (0.0, 0.001, 0.005, 0.02, 0.1):
            e = _core.Engine(os.environ["MODEL"], os.environ["MMPROJ"], n_threads=1, warmup=False)
            out = []
            def call():
                try:
                    out.append(e.generate(np.zeros(16000, np.float32), 16000, [_core.PromptRequest("hi", max_tokens=8)]))
                except EngineError as x:
                    out.append(x)
            t = threading.Thread(target=call)
            t.start()
            time.sleep(delay)
            e.close()
            t.join(60)
            assert not t.is_alive() and len(out) == 1, out
            try:
                e.generate(np.zeros(16000, np.float32), 16000, [_core.PromptRequest("hi", max_tokens=2)])
                raise SystemExit("use after close was accepted")
            except EngineError:
                pass
        print("ok")
    """,
        tiny,
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_bad_tracks_in_generate_many_fail_the_call_after_the_rest_ran(engine, track):
    tracks = pieces(track, 2)
    with pytest.raises(InvalidInputError, match="too short"):
        engine.generate_many([(tracks[0], GREEDY), (np.zeros(5, np.float32), GREEDY), (tracks[1], GREEDY)])
    with pytest.raises(ValueError):
        engine.generate_many([(tracks[0], GREEDY)], tracks_in_flight=0.5)
