"""The seam between the package and the native engine (issue 17 items 1-3, issue 21's engine-API defects): one typed
run request, one plan that decides what fits, one failure channel that hands a track's exception on as raised; and
no call that can hang on the engine's own lock or stop a whole stream for one bad item. Tiny model, real llama.cpp.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from conftest import SR

from music_flamingo import EngineError, InvalidInputError, MusicFlamingoGGUF, Prompt, _core

HI = [Prompt("Describe.", max_tokens=2)]


def audio(seconds: float = 1.0) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.1, 0.1, int(seconds * SR)).astype(np.float32)


def _run_with_deadline(fn, seconds: float = 120.0):
    """fn() on a thread; a hang (the defect) fails the test instead of the run."""
    out: dict = {}

    def body() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the call hung"
    return out


# --- one request -------------------------------------------------------------------------------------------------


def test_run_request_defaults_are_the_engines_and_unknown_fields_are_refused():
    r = _core.RunRequest()
    assert (r.tracks_in_flight, r.max_audio_seconds, r.prepare_ahead, r.chat) == ("auto", 0.0, None, None)
    assert r.framing == _core.Framing.Mtmd and not r.debug and not r.profile
    with pytest.raises(TypeError):
        _core.RunRequest(tracks_in_fligth=2)


def test_the_raw_engine_takes_the_request_by_name_only(engine):
    raw = engine._engine
    with pytest.raises(TypeError):
        raw.generate(audio(), SR, [p.to_native() for p in HI], "", False)  # the old positional crossing
    r = raw.generate(audio(), SR, [p.to_native() for p in HI], request=_core.RunRequest(framing=_core.Framing.Mtmd))
    assert len(r.outputs) == 1


# --- one plan ----------------------------------------------------------------------------------------------------


def test_check_refuses_what_cannot_fit_the_trained_context_before_anything_runs(engine):
    n_ctx_train = int(engine.info["n_ctx_train"])
    raw = engine._engine
    ok = [_core.PromptRequest("Describe.", max_tokens=8)]
    raw.check(ok, SR, request=_core.RunRequest())  # fits: no error
    with pytest.raises(InvalidInputError, match="trained context"):
        raw.check([_core.PromptRequest("Describe.", max_tokens=n_ctx_train)], SR, request=_core.RunRequest())
    # the audio's share is the plan's exact count for the reference framing: 750 tokens per 30 s window
    windows = n_ctx_train // 750 + 1
    with pytest.raises(InvalidInputError, match="trained context"):
        raw.check(ok, windows * 30 * SR, request=engine._request("reference"))
    with pytest.raises(InvalidInputError, match="sequences"):
        raw.check(ok * 300, SR, request=_core.RunRequest())


def _bound_positions(engine, n_samples: int, framing: str) -> int:
    """The prefix positions the plan counts before encoding (check's message says them)."""
    n_ctx_train = int(engine.info["n_ctx_train"])
    too_long = [_core.PromptRequest("Describe.", max_tokens=n_ctx_train - 1)]
    with pytest.raises(InvalidInputError, match="trained context") as e:
        engine._engine.check(too_long, n_samples, request=engine._request(framing))
    return int(re.search(r"audio \((\d+) positions\)", str(e.value)).group(1))


@pytest.mark.parametrize("framing", ["llamacpp", "reference", "reference_tail"])
def test_the_plans_prefix_before_encoding_is_a_lower_bound_exact_for_the_reference_framings(engine, framing):
    """A track refused before its audio is encoded would be refused after: the count check() uses never exceeds
    the prefix the track gets (llamacpp: mtmd tokenizes the chat head apart from its audio marker, and pads each
    window to 750 tokens), and is that prefix for the reference framings. Around a window's end: 0.5, 30, 31 s."""
    for seconds in (0.5, 30.0, 31.0):
        pcm = audio(seconds)
        bound = _bound_positions(engine, len(pcm), framing)
        got = engine.generate(pcm, [Prompt("Describe.", max_tokens=1)], framing=framing).stats.prefix_tokens
        assert bound <= got, (seconds, bound, got)
        if framing != "llamacpp":
            assert bound == got, (seconds, bound, got)


@pytest.mark.parametrize("bad", [0, -1, _core.MAX_TRACKS_IN_FLIGHT + 1, 10**30, True, 2.0, "8", None])
def test_tracks_in_flight_is_refused_where_it_enters_the_request(bad):
    """One rule, where the value becomes the C++ field: building or assigning the request refuses it (no model, no
    run), naming the setting. The bound is C++'s (kMaxSequences), exported as _core.MAX_TRACKS_IN_FLIGHT."""
    message = f"tracks_in_flight must be 'auto' or an integer in 1..{_core.MAX_TRACKS_IN_FLIGHT}, got {bad!r}"
    with pytest.raises(InvalidInputError) as built:
        _core.RunRequest(tracks_in_flight=bad)
    assert str(built.value) == message
    r = _core.RunRequest(tracks_in_flight=2)
    with pytest.raises(InvalidInputError, match="tracks_in_flight"):
        r.tracks_in_flight = bad
    assert r.tracks_in_flight == 2


def test_tracks_in_flight_keeps_the_values_users_give_from_the_cli_to_the_engine(engine):
    """'auto' and 1..MAX_TRACKS_IN_FLIGHT, as the CLI and generate_many take them, reach the request unchanged (no
    'auto' -> 0 translation on the way); the engine runs the bound itself."""
    for value in ("auto", 1, np.int64(3), _core.MAX_TRACKS_IN_FLIGHT):
        assert _core.RunRequest(tracks_in_flight=value).tracks_in_flight == value
    raw = engine._engine
    track = [(audio(), [HI[0].to_native()])]
    request = _core.RunRequest(tracks_in_flight=_core.MAX_TRACKS_IN_FLIGHT)
    assert len(raw.generate_many(track, SR, request=request)) == 1


def test_the_python_api_says_what_the_request_says_before_any_audio_is_read(engine, tmp_path):
    with pytest.raises(InvalidInputError) as request:
        _core.RunRequest(tracks_in_flight=0)
    missing = tmp_path / "missing.flac"  # read only after the settings were checked
    with pytest.raises(InvalidInputError) as many:
        engine.generate_many([(missing, HI)], tracks_in_flight=0)
    with pytest.raises(InvalidInputError) as stream:
        engine.generate_stream(iter([missing]), HI, lambda i, r: None, tracks_in_flight=0)
    assert str(many.value) == str(stream.value) == str(request.value)


def test_max_audio_seconds_is_refused_where_it_enters_the_request():
    for bad in (-1.0, float("nan"), float("inf"), 1e8):
        with pytest.raises(InvalidInputError, match="max_audio_seconds"):
            _core.RunRequest(max_audio_seconds=bad)
    assert _core.RunRequest(max_audio_seconds=600).max_audio_seconds == 600.0


# --- one failure channel -----------------------------------------------------------------------------------------


def test_a_failed_track_reaches_the_stream_as_its_exception(engine):
    got: dict = {}
    stats = engine.generate_stream(iter([audio(), np.zeros(5, np.float32), audio(2.0)]), HI, got.__setitem__)
    assert isinstance(got[1], InvalidInputError) and "too short" in str(got[1])
    assert not isinstance(got[0], Exception) and not isinstance(got[2], Exception)
    assert (stats["tracks"], stats["tracks_failed"]) == (3, 1)


def test_the_raw_stream_hands_the_engines_exception_over_as_raised(engine):
    """Past the Python checks: a track the engine refuses comes to on_result as the package's exception."""
    items = iter([np.zeros(5, np.float32), audio()])
    got: dict = {}
    raw = engine._engine
    stats = raw.run_stream(
        lambda: next(items, None),
        got.__setitem__,
        [HI[0].to_native()],
        SR,
        request=engine._request(None),
    )
    assert isinstance(got[0], InvalidInputError) and "too short" in str(got[0])
    assert isinstance(got[1], _core.GenerateResult)
    assert stats.tracks_failed == 1


# --- issue 21: no hang, no whole stream lost, clear messages -----------------------------------------------------


@pytest.mark.parametrize("call", ["generate", "close"])
def test_a_call_inside_a_stream_callback_is_refused_not_a_deadlock(tiny, call):
    mf = MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False)
    seen: list = []

    def on_result(index, result):
        seen.append(result)
        getattr(mf, call)(*((audio(), HI) if call == "generate" else ()))

    out = _run_with_deadline(lambda: mf.generate_stream(iter([audio()]), HI, on_result))
    assert isinstance(out.get("error"), EngineError), out
    assert "inside a call" in str(out["error"])
    assert mf.generate(audio(), HI).texts  # the engine is still usable (and open) afterwards
    mf.close()


def test_a_call_from_the_streams_audio_iterator_is_refused_not_a_deadlock(tiny):
    """The iterator runs on the engine's helper thread: a generate() there would wait for the stream for ever."""
    mf = MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False)

    def items():
        yield audio()
        mf.generate(audio(), HI)
        yield audio()

    out = _run_with_deadline(lambda: mf.generate_stream(items(), HI, lambda i, r: None))
    assert isinstance(out.get("error"), EngineError) and "inside a call" in str(out["error"]), out
    mf.close()


def test_one_none_in_a_stream_fails_that_item_only(engine):
    got: dict = {}
    stats = engine.generate_stream(iter([audio(), None, "not audio", audio()]), HI, got.__setitem__)
    assert sorted(got) == [0, 1, 2, 3]
    assert isinstance(got[1], InvalidInputError) and isinstance(got[2], InvalidInputError)
    assert not isinstance(got[0], Exception) and not isinstance(got[3], Exception)
    assert (stats["tracks"], stats["tracks_failed"]) == (4, 2)


def test_system_prompt_none_is_the_templates_default_and_a_non_string_is_refused_at_construction(tiny):
    with pytest.raises(InvalidInputError, match="system_prompt"):
        MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, system_prompt=5, warmup=False)
    mf = MusicFlamingoGGUF(
        model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, system_prompt=None, n_threads=1, warmup=False
    )
    default = MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, n_threads=1, warmup=False)
    try:
        assert mf.generate(audio(), HI).tokens == default.generate(audio(), HI).tokens
    finally:
        mf.close()
        default.close()


@pytest.mark.parametrize(
    "setting", [{"n_threads": 10**6}, {"n_threads": -1}, {"n_sampling_threads": 10**6}, {"n_ubatch": 0}]
)
def test_engine_settings_out_of_range_are_refused_by_name_before_loading(tiny, setting):
    name = next(iter(setting))
    with pytest.raises(InvalidInputError, match=name):
        MusicFlamingoGGUF(model_path=tiny.model_gguf, mmproj_path=tiny.mmproj_gguf, warmup=False, **setting)
