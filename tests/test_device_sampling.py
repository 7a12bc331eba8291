"""Sampling on the device (llama.cpp's backend samplers, cpp/device_sampling.h) against the host fast path, both on
the CPU backend of the tiny random model: the same seed gives the same tokens, greedy and sampled, for a track alone
and for tracks in flight together; follow-ups and ignore_eos sample on the device too; a prompt whose settings the
device cannot reproduce samples on the host beside the others; chains are attached once per sequence id and reused.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import exact_engine

from music_flamingo import InvalidInputError, Prompt

QUESTION = "Describe this track: genre, tempo, key, instruments and mood."
# The catalogue's defaults (temperature 0.7, top-k 50, top-p 0.9, seed 42), greedy, wide and hot top-k/top-p (the
# tiny random model's flat distributions make a draw's boundaries close), and a sampled answer that must run to its
# limit (ignore_eos: end-of-generation masked first).
PROMPTS = [
    Prompt(QUESTION, max_tokens=24, temperature=0.7, top_p=0.9, top_k=50, seed=42),
    Prompt("Which instruments do you hear?", max_tokens=16),
    Prompt("What is the tempo in BPM?", max_tokens=16, temperature=1.3, top_k=200, top_p=0.95, seed=7),
    Prompt("Name the genre and the mood.", max_tokens=16, temperature=2.0, top_k=1000, top_p=0.99, seed=3),
    Prompt("Describe the structure.", max_tokens=20, temperature=1.2, top_k=20, top_p=0.8, seed=5, ignore_eos=True),
]


@pytest.fixture(scope="module")
def on_device(tiny):
    """An engine that samples on the device (the CPU backend here), numerics as the session's `engine`."""
    eng = exact_engine(tiny, sampling_on_device="on")
    yield eng
    eng.close()


def sampled_rows(result) -> int:
    """How many tokens a result's answers sampled (an answer that ended at end-of-generation sampled one more)."""
    return sum(len(t) + (s == "eog") for t, s in zip(result.tokens, result.stop_reasons))


def test_a_track_alone_samples_the_same_tokens_on_the_device(engine, on_device, clips):
    assert (engine.info["sampling_on_device"], on_device.info["sampling_on_device"]) == ("off", "on")  # auto on a CPU
    host = engine.generate(clips["5s"], PROMPTS)
    assert engine.last_run_stats()["device_sampled"] == 0  # "auto" on a CPU: the host fast path
    dev = on_device.generate(clips["5s"], PROMPTS)
    stats = on_device.last_run_stats()
    assert stats["device_sampled"] == sampled_rows(dev) > 0  # every token chosen by the device's chains
    assert dev.tokens == host.tokens
    assert dev.stop_reasons == host.stop_reasons
    assert dev.stop_reasons[4] == "max_tokens" and len(dev.tokens[4]) == 20  # ignore_eos kept on the device
    assert len({tuple(t) for t in dev.tokens}) == len(PROMPTS)


def test_tracks_in_flight_sample_the_same_tokens_on_the_device(tiny, track):
    """Both engines admit at the same steps (no helper thread: admission does not depend on its timing), so every
    track's cells lie in the same places and the attention sums in the same order: only the sampling differs."""
    sr = 16000
    tracks = [(np.ascontiguousarray(track[i * 7 * sr : (i * 7 + 5) * sr]), PROMPTS) for i in range(4)]
    with exact_engine(tiny, prepare_ahead=False, sampling_on_device="off") as engine:
        host = engine.generate_many(tracks, tracks_in_flight=3)
    with exact_engine(tiny, prepare_ahead=False, sampling_on_device="on") as on_device:
        dev = on_device.generate_many(tracks, tracks_in_flight=3)
        stats = on_device.last_run_stats()
    assert stats["peak_in_flight"] == 3
    assert stats["device_sampled"] == sum(sampled_rows(r) for r in dev)
    assert [r.tokens for r in dev] == [r.tokens for r in host]


def test_follow_ups_sample_on_the_device_too(engine, on_device, clips):
    fu = Prompt("Say it in five words.", max_tokens=10, temperature=0.8, top_k=40, top_p=0.9, seed=11)
    prompts = [Prompt(QUESTION, max_tokens=12, temperature=0.7, top_p=0.9, top_k=50, seed=42, followups=(fu,))]
    host = engine.generate(clips["5s"], prompts)
    dev = on_device.generate(clips["5s"], prompts)
    assert dev.tokens == host.tokens
    assert [f.tokens for f in dev.followups[0]] == [f.tokens for f in host.followups[0]]
    assert on_device.last_run_stats()["device_sampled"] == sampled_rows(dev) + len(dev.followups[0][0].tokens) + (
        dev.followups[0][0].stop_reason == "eog"
    )


def test_chains_are_attached_once_per_sequence_and_reused(on_device, clips):
    """Attaching a chain re-reserves llama.cpp's graphs: a run whose sequences ask for the settings their ids
    already carry attaches none."""
    on_device.generate(clips["5s"], PROMPTS)
    again = on_device.generate(clips["5s"], PROMPTS)
    assert on_device.last_run_stats()["sampler_attaches"] == 0
    changed = [Prompt(QUESTION, max_tokens=4, temperature=0.9, top_k=30, top_p=0.5, seed=1)] + PROMPTS[1:]
    on_device.generate(clips["5s"], changed)
    assert on_device.last_run_stats()["sampler_attaches"] == 1
    assert on_device.generate(clips["5s"], PROMPTS).tokens == again.tokens  # reset chains draw afresh


def test_a_track_after_another_takes_the_sequences_whose_chains_match(on_device, track):
    """Prompts with five different settings, one track after another: each next track gets its predecessor's
    sequence ids prompt for prompt, so no chain is attached again."""
    sr = 16000
    tracks = [(np.ascontiguousarray(track[i * 7 * sr : (i * 7 + 5) * sr]), PROMPTS) for i in range(3)]
    on_device.generate_many(tracks, tracks_in_flight=1)
    on_device.generate_many(tracks, tracks_in_flight=1)
    assert on_device.last_run_stats()["sampler_attaches"] == 0


@pytest.mark.parametrize(
    "prompt",
    [
        Prompt(QUESTION, max_tokens=6, temperature=0.8, top_k=40, top_p=0.9, repeat_penalty=1.1, seed=1),
        Prompt(QUESTION, max_tokens=6, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, seed=1),
        Prompt(QUESTION, max_tokens=6, temperature=0.8, top_k=40, seed=1),  # top-k without top-p: unordered
        Prompt(QUESTION, max_tokens=6, temperature=1.5, seed=3),  # the whole vocabulary: float vs double sums
        Prompt(QUESTION, max_tokens=6, temperature=1.3, top_p=0.95, seed=7),
        Prompt(QUESTION, max_tokens=6, temperature=1.3, top_k=5000, top_p=0.95, seed=7),  # float sums drift too
    ],
    ids=["repeat_penalty", "min_p", "top_k_alone", "temperature_alone", "top_p_alone", "top_k_5000"],
)
def test_settings_the_device_cannot_reproduce_sample_on_the_host(engine, on_device, clips, prompt):
    """Such a prompt samples on the host beside the others on the device; the chain its sequence id carried
    from the run before is taken off (else llama.cpp would stop copying the raw logits the host path reads)."""
    on_device.generate(clips["5s"], PROMPTS)  # every sequence id carries a chain now
    mixed = [prompt, *PROMPTS[1:]]
    host = engine.generate(clips["5s"], mixed)
    dev = on_device.generate(clips["5s"], mixed)
    assert dev.tokens == host.tokens
    on_host = len(dev.tokens[0]) + (dev.stop_reasons[0] == "eog")
    assert on_device.last_run_stats()["device_sampled"] == sampled_rows(dev) - on_host


def test_the_run_setting_overrides_the_engine_and_is_checked(engine, clips):
    host = engine.generate(clips["5s"], PROMPTS[:2])
    results = {}
    stats = engine.generate_stream(
        iter([clips["5s"]]), PROMPTS[:2], results.__setitem__, sampling_on_device="on", max_audio_seconds=6
    )
    assert stats["device_sampled"] == sampled_rows(results[0]) > 0
    assert results[0].tokens == host.tokens
    with pytest.raises(InvalidInputError, match="sampling_on_device"):
        engine.generate_stream(iter([clips["5s"]]), PROMPTS[:1], results.__setitem__, sampling_on_device="gpu")
    engine.generate(clips["5s"], PROMPTS[:1])  # the engine's "auto" again: back on the host
    assert engine.last_run_stats()["device_sampled"] == 0


@pytest.mark.parametrize(
    "prompt",
    [
        Prompt(QUESTION, max_tokens=8, temperature=0.01, top_k=50, top_p=0.9, seed=1),
        Prompt(QUESTION, max_tokens=8, temperature=50.0, top_k=50, top_p=0.99, seed=2),
        Prompt(QUESTION, max_tokens=8, temperature=0.7, top_k=1, top_p=0.9, seed=3),
        Prompt(QUESTION, max_tokens=8, temperature=0.7, top_k=1024, top_p=0.01, seed=4),
        Prompt(QUESTION, max_tokens=8, top_k=50, top_p=0.5, ignore_eos=True),  # greedy ignores top-k/top-p
    ],
    ids=["cold", "hot", "top_k_1", "top_p_tiny", "greedy_ignore_eos"],
)
def test_edge_settings_sample_the_same_tokens_on_the_device(engine, on_device, clips, prompt):
    host = engine.generate(clips["5s"], [prompt])
    dev = on_device.generate(clips["5s"], [prompt])
    assert on_device.last_run_stats()["device_sampled"] == sampled_rows(dev) > 0
    assert dev.tokens == host.tokens


def test_a_bad_engine_setting_is_refused_before_loading(tiny):
    from music_flamingo import MusicFlamingoGGUF

    with pytest.raises(InvalidInputError, match="sampling_on_device"):
        MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, sampling_on_device="yes")


def test_the_default_is_read_from_the_engine():
    from music_flamingo import _core

    assert _core.RunRequest().sampling_on_device is None  # a run takes the engine's setting
    assert "sampling_on_device: str = 'auto'" in _core.Engine.__init__.__doc__  # EngineParams' default (types.h)
