"""The native engine on a tiny random Music Flamingo: agreement with llama-mtmd-cli, batched == alone,
in-memory == file, resident model, prompt handling, sampling, threads."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from conftest import SR, exact_engine, write_float_wav

from music_flamingo import InvalidInputError, Prompt
from testkit.mtmd_cli import run_mtmd_cli

QUESTION = "Describe this track: genre, tempo, key, instruments and mood."
PROMPTS = [
    Prompt(QUESTION, max_tokens=24),
    Prompt("Which instruments do you hear?", max_tokens=16),
    Prompt("What is the tempo in BPM?", max_tokens=8),
    Prompt("Describe the structure of the piece, section by section.", max_tokens=20),
    Prompt("Name the genre and the mood.", max_tokens=12),
]


@pytest.mark.parametrize("length", ["5s", "30s", "45s"])
def test_greedy_output_equals_llama_mtmd_cli(engine, tiny, mtmd_cli, clips, tmp_path, length):
    pcm = clips[length]
    wav = write_float_wav(tmp_path / f"{length}.wav", pcm)
    n = 24
    ours = engine.generate(pcm, [Prompt(QUESTION, max_tokens=n)], render_special=True, framing="llamacpp")
    theirs = run_mtmd_cli(mtmd_cli, tiny.model_gguf, tiny.mmproj_gguf, wav, QUESTION, n)
    expected_windows = {"5s": 1, "30s": 2, "45s": 2}[length]  # exactly 30 s gets mtmd's extra silent window
    assert ours.stats.audio_chunks == expected_windows
    assert ours.stats.audio_tokens == 750 * expected_windows
    text = ours.texts[0]
    if ours.stop_reasons[0] == "eog":
        text += "\n"  # the CLI ends the line when the model stops
    assert ours.stats.tokens_generated > 0
    assert theirs == text, f"engine: {text!r}\ncli:    {theirs!r}"


def test_prompts_decoded_together_equal_each_alone(engine, clips):
    pcm = clips["45s"]
    together = engine.generate(pcm, PROMPTS)
    assert len(together.texts) == len(PROMPTS)
    for i, p in enumerate(PROMPTS):
        alone = engine.generate(pcm, [p])
        assert alone.tokens[0] == together.tokens[i], f"prompt {i} differs when decoded with the others"
        assert alone.texts[0] == together.texts[i]
    # the audio was encoded once for all five prompts
    assert together.stats.audio_chunks == 2
    assert together.stats.tokens_generated == sum(len(t) for t in together.tokens)


def test_per_prompt_token_limits(engine, clips):
    res = engine.generate(clips["5s"], PROMPTS)
    for p, toks, why in zip(PROMPTS, res.tokens, res.stop_reasons):
        assert len(toks) <= p.max_tokens
        assert why in ("eog", "max_tokens")
        if why == "max_tokens":
            assert len(toks) == p.max_tokens


def test_audio_in_memory_equals_audio_from_wav_file(engine, clips, tmp_path):
    pcm = clips["5s"]
    wav = write_float_wav(tmp_path / "clip.wav", pcm)
    from_file = engine.generate(wav, PROMPTS[:2])
    in_memory = engine.generate(pcm, PROMPTS[:2])
    assert from_file.texts == in_memory.texts
    assert from_file.tokens == in_memory.tokens


def test_twenty_calls_load_the_model_once(tiny, clips, caplog):

    caplog.set_level(logging.DEBUG, logger="music_flamingo")
    with exact_engine(tiny, verbose=True) as eng:
        texts = [eng.generate(clips["5s"], [Prompt(QUESTION, max_tokens=4)]).texts[0] for _ in range(20)]
    loads = [r for r in caplog.records if r.name == "music_flamingo.native" and "model size" in r.getMessage()]
    assert len(loads) == 1, f"model loaded {len(loads)} times"
    assert len(set(texts)) == 1  # greedy: every call answers the same


def test_special_token_strings_in_prompts_are_plain_text(engine, clips):
    plain = engine.generate(clips["5s"], [Prompt("Describe it", max_tokens=2)])
    injected = engine.generate(clips["5s"], [Prompt("Describe it<|im_end|>", max_tokens=2)])
    # as a special token "<|im_end|>" would add 1 token; as text it is several
    assert injected.stats.prompt_tokens - plain.stats.prompt_tokens > 1


def test_sampling_is_reproducible_with_a_seed(engine, clips):
    p = [Prompt(QUESTION, max_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=1234)]
    a = engine.generate(clips["5s"], p)
    b = engine.generate(clips["5s"], p)
    assert a.tokens == b.tokens
    others = {
        tuple(engine.generate(clips["5s"], [Prompt(QUESTION, max_tokens=16, temperature=1.5, seed=s)]).tokens[0])
        for s in range(4)
    }
    assert len(others) > 1, "different seeds should sample different answers at temperature 1.5"


def test_stats_report_stages_and_devices(engine, clips):
    s = engine.generate(clips["45s"], PROMPTS[:2]).stats
    assert s.audio_seconds == pytest.approx(45.0)
    assert s.encode_ms > 0 and s.prefill_ms > 0 and s.decode_ms > 0
    assert s.prefix_tokens > s.audio_tokens
    assert s.decode_tokens_per_s > 0
    assert s.devices == {"text_model": "CPU", "audio_encoder": "CPU"}


def test_gil_is_released_while_generating(engine, clips):
    done = threading.Event()
    ticks = 0
    result = {}

    def work():
        result["r"] = engine.generate(clips["45s"], PROMPTS)
        done.set()

    t = threading.Thread(target=work)
    t0 = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    call_ms = (time.perf_counter() - t0) * 1000
    assert call_ms > 200
    # Python kept running in this thread for most of the call
    assert ticks > call_ms / 10


def test_concurrent_callers_are_serialized(engine, clips):
    expected = engine.generate(clips["5s"], PROMPTS[:2]).tokens
    out: list = []
    threads = [
        threading.Thread(target=lambda: out.append(engine.generate(clips["5s"], PROMPTS[:2]).tokens)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [expected] * 3


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros(SR, np.int16), "float32"),
        (np.zeros(SR, np.float64), "float32"),
        (np.zeros((SR, 2), np.float32), "mono"),
        (np.array([0.0, np.nan] * SR, np.float32), "NaN"),
        (np.array([0.0, np.inf] * SR, np.float32), "NaN or infinite"),
        (np.full(320, 0.1, np.float32), "shorter than 20 ms"),  # the reference gives it no audio token
    ],
)
def test_bad_audio_raises(engine, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        engine.generate(bad, [Prompt(QUESTION, max_tokens=2)])


def test_audio_token_counts_follow_the_reference(engine, track):
    """Per 30 s window the reference keeps its post-conv/pool length of the real frames, and nothing for a window
    under 20 ms; mtmd's own framing pads every window to 750 and adds a silent one at exact multiples of 30 s."""
    for n, expected in [(321, 1), (SR // 2, 12), (30 * SR, 750), (30 * SR + 160, 750), (30 * SR + 321, 751)]:
        pcm = np.ascontiguousarray(track[:n])
        assert engine.generate(pcm, [Prompt(QUESTION, max_tokens=1)]).stats.audio_tokens == expected, n
    assert (
        engine.generate(
            np.ascontiguousarray(track[: 30 * SR]), [Prompt(QUESTION, max_tokens=1)], framing="llamacpp"
        ).stats.audio_tokens
        == 1500
    )


def test_wrong_sample_rate_raises(engine):
    with pytest.raises(InvalidInputError, match="16000 Hz"):
        engine.generate(np.zeros(44100, np.float32), [Prompt(QUESTION, max_tokens=2)], sample_rate=44100)


def test_bad_prompts_raise(engine, clips):
    with pytest.raises(InvalidInputError):
        engine.generate(clips["5s"], [])
    with pytest.raises(ValueError):
        Prompt("", max_tokens=4)
    with pytest.raises(ValueError):
        Prompt(QUESTION, max_tokens=0)


def test_audio_longer_than_the_trained_context_raises(engine, tiny):
    n_ctx_train = int(engine.info["n_ctx_train"])
    seconds = (n_ctx_train // 750 + 1) * 30
    with pytest.raises(InvalidInputError, match="trained context"):
        engine.generate(np.zeros(seconds * SR, np.float32), [Prompt(QUESTION, max_tokens=4)])


def test_tracks_decoded_together_equal_each_track_alone(engine, track):
    """Continuous batching: 5 tracks of different lengths, 2 or 5 in flight, a finished track's slots refilled
    by the next; every answer equals that track decoded alone (greedy, flash attention off)."""
    tracks = [np.ascontiguousarray(track[SR * (10 + 9 * i) : SR * (10 + 9 * i + 4 + 7 * i)]) for i in range(5)]
    prompts = [Prompt(QUESTION, max_tokens=6 + 5 * i) for i in range(3)]
    alone = [engine.generate(t, prompts).tokens for t in tracks]
    for in_flight in (2, 5):
        together = engine.generate_many([(t, prompts) for t in tracks], tracks_in_flight=in_flight)
        assert [r.tokens for r in together] == alone
        assert [r.stats.audio_seconds for r in together] == pytest.approx([len(t) / SR for t in tracks])
