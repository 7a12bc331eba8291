"""Think variants (``music-flamingo-think-2601-hf``, ``audio-flamingo-next-think-hf``): the converter marks them, the
sidecar's descriptions hold the answer without the reasoning, the reasoning is kept only on request (one
``music_flamingo_reasoning`` object), each prompt gets room for the reasoning, and an answer cut inside its
reasoning fails its track instead of being written as a description.

The tiny random musicflamingo never writes ``<think>`` on its own, so the end-to-end test makes the real engine
emit the tag: one token the model really generates is renamed ``</think>`` in the GGUF's vocabulary (same byte
length, patched in place), and the engine's own output then carries reasoning, tag and answer."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CACHE, SR, clip, run_cli

from music_flamingo.analyzer import REASONING_KEY
from music_flamingo.convert import convert
from music_flamingo.gguf_meta import model_facts, read_metadata
from music_flamingo.reasoning import DEFAULT_REASONING_TOKENS, ReasoningCutError, split_reasoning
from music_flamingo.text import normalize_music_flamingo_text
from testkit.tiny_musicflamingo import ensure_tiny_musicflamingo

ENGINE = dict(flash_attn=False, n_threads=1, kv_cache_type="f32", warmup=False)
USER_DEFINED, CONTROL = 4, 3  # llama.cpp's token types


# --- the split, on texts of the forms think models write --------------------------------------------------------


@pytest.mark.parametrize(
    "text, opened, answer, reasoning",
    [
        # AF-Next-Think's card: reasoning enclosed in <think> ... </think> before the final answer
        (
            "<think>\nSlow tempo, minor key.\n</think>\n\nA melancholic ballad.",
            False,
            "A melancholic ballad.",
            "Slow tempo, minor key.",
        ),
        ("  <think>a</think>b", False, "b", "a"),
        # the template opened the block (its prompt ends with <think>): the text starts inside it
        ("Bass first, then drums.\n</think>\nA funk groove.", True, "A funk groove.", "Bass first, then drums."),
        ("Bass first.</think>A funk groove.", False, "A funk groove.", "Bass first."),
        # no reasoning written: the whole text is the answer, as it is
        ("A calm piano piece. ", False, "A calm piano piece. ", None),
        # an answer that mentions the tag after it opened one of its own is not split there
        ("About <think> tags: </think> closes one.", False, "About <think> tags: </think> closes one.", None),
    ],
)
def test_split_reasoning(text, opened, answer, reasoning):
    s = split_reasoning(text, opened)
    assert (s.answer, s.reasoning) == (answer, reasoning)


@pytest.mark.parametrize("text, opened", [("<think>Listening to the intro, the", False), ("The intro is", True)])
def test_reasoning_cut_by_the_token_limit_is_an_error(text, opened):
    with pytest.raises(ReasoningCutError, match="inside the model's reasoning"):
        split_reasoning(text, opened)


# --- the converter marks a think variant; the engine reads it ---------------------------------------------------


@pytest.fixture(scope="session")
def tiny_mf(llama_cpp_dir):
    return ensure_tiny_musicflamingo(llama_cpp_dir, CACHE / "test-models")


def checkpoint_copy(tiny_mf, folder: Path, name: str) -> Path:
    """The tiny musicflamingo checkpoint under another folder name (the name converted GGUFs carry)."""
    dest = folder / name
    shutil.copytree(tiny_mf.hf_dir, dest)
    return dest


@pytest.fixture(scope="module")
def think_gguf(tiny_mf, tmp_path_factory) -> tuple[Path, Path]:
    """A think variant by name, as NVIDIA names them, converted."""
    tmp = tmp_path_factory.mktemp("think")
    r = convert(checkpoint_copy(tiny_mf, tmp, "music-flamingo-think-2601-hf"), tmp / "out", "f32", progress=False)
    return r.model, r.mmproj


def test_converter_marks_a_think_variant_by_name(think_gguf, tiny_mf):
    assert read_metadata(think_gguf[0])["music_flamingo.reasoning"] == "think"
    assert read_metadata(think_gguf[1])["music_flamingo.reasoning"] == "think"
    assert model_facts(think_gguf[0]).reasoning == "think"
    assert model_facts(tiny_mf.model_gguf).reasoning is None  # the plain 2601 stays plain
    assert "music_flamingo.reasoning" not in read_metadata(tiny_mf.model_gguf)


def test_think_tokens_stay_text_and_mark_the_model(tiny_mf, tmp_path):
    """A tokenizer that knows <think> (flagged special) marks the model, and the tags stay text in the GGUF (not
    control tokens, which the engine's detokenizer drops) so the reasoning can be told from the answer."""
    from tokenizers import AddedToken, Tokenizer

    hf = checkpoint_copy(tiny_mf, tmp_path, "mf-2601-r")
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<think>", special=True), AddedToken("</think>", special=True)])
    tok.save(str(hf / "tokenizer.json"))
    ids = [tok.token_to_id("<think>"), tok.token_to_id("</think>")]
    r = convert(hf, tmp_path / "out", "f32", progress=False)
    meta = read_metadata(r.model)
    assert [meta["tokenizer.ggml.tokens"][i] for i in ids] == ["<think>", "</think>"]
    assert [meta["tokenizer.ggml.token_type"][i] for i in ids] == [USER_DEFINED, USER_DEFINED]
    assert model_facts(r.model).reasoning == "think"
    # --reasoning none overrides what was told
    plain = convert(hf, tmp_path / "plain", "f32", progress=False, reasoning="none")
    assert model_facts(plain.model).reasoning is None


# --- the engine's real output, split -----------------------------------------------------------------------------


def rename_token(gguf: Path, token_id: int, new: str) -> None:
    """Give token ``token_id`` the text ``new`` (same UTF-8 length) in the GGUF's vocabulary, in place."""
    tokens = read_metadata(gguf)["tokenizer.ggml.tokens"]
    old = tokens[token_id].encode()
    assert len(old) == len(new.encode())
    data = bytearray(gguf.read_bytes())
    start = data.index(b"tokenizer.ggml.tokens")
    end = data.index(b"tokenizer.ggml.token_type", start)
    entry = struct.pack("<Q", len(old)) + old
    at = data.index(entry, start, end)
    assert data.count(entry, start, end) == 1
    data[at + 8 : at + 8 + len(old)] = new.encode()
    gguf.write_bytes(bytes(data))
    assert read_metadata(gguf)["tokenizer.ggml.tokens"][token_id] == new


@pytest.fixture(scope="module")
def audio(track, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "song.flac"
    sf.write(path, clip(track, 8), SR)
    return path


def test_engine_output_split_into_answer_and_kept_reasoning(think_gguf, audio, tmp_path):
    from music_flamingo import MusicFlamingoGGUF

    opts = dict(prompts=["genre_mood"], reasoning_tokens=40, keep_reasoning=True)
    with MusicFlamingoGGUF(model_path=think_gguf[0], mmproj_path=think_gguf[1], **ENGINE, **opts) as mf:
        prompts = mf.analyzer.track_prompts({})
        assert prompts[0].max_tokens == 150 + 40  # the answer's own limit plus room for the reasoning
        prepared = mf.analyzer.prepare(audio)
        before = mf.generate(prepared.pcm, prompts)
        # no tag written (a random model): the whole text is the answer; nothing kept as reasoning
        plain = mf.analyze_track(audio)
        assert plain.descriptions["music_flamingo_genre_mood"] == normalize_music_flamingo_text(before.texts[0])
        assert REASONING_KEY not in plain.sidecar_fields()
        assert plain.meta["reasoning"] == "think" and plain.meta["reasoning_tokens"] == 40
    tokens, vocab = before.tokens[0], read_metadata(think_gguf[0])["tokenizer.ggml.tokens"]
    # a token the model generates, first seen mid-answer, as long as the tag: it becomes </think>
    k = next(i for i, t in enumerate(tokens) if 3 <= i < len(tokens) - 3 and len(vocab[t].encode()) == 8)
    patched = tmp_path / "think-tag.gguf"
    shutil.copy(think_gguf[0], patched)
    rename_token(patched, tokens[k], "</think>")
    with MusicFlamingoGGUF(model_path=patched, mmproj_path=think_gguf[1], **ENGINE, **opts) as mf:
        after = mf.generate(prepared.pcm, prompts)
        result = mf.analyze_track(audio)
    assert after.tokens[0] == tokens  # the same tokens: only their text changed
    raw = after.texts[0]
    cut = raw.index("</think>")
    assert result.raw["music_flamingo_genre_mood"] == raw
    answer = result.descriptions["music_flamingo_genre_mood"]
    assert answer == normalize_music_flamingo_text(raw[cut + len("</think>") :].strip())
    assert "think>" not in answer
    fields = result.sidecar_fields()
    assert fields[REASONING_KEY] == {"music_flamingo_genre_mood": raw[:cut].strip()}
    assert fields["music_flamingo_genre_mood"] == answer
    # without keep_reasoning: the answer alone
    with MusicFlamingoGGUF(model_path=patched, mmproj_path=think_gguf[1], **ENGINE, prompts=["genre_mood"]) as mf:
        assert REASONING_KEY not in mf.analyze_track(audio).sidecar_fields()


def test_answer_cut_inside_the_reasoning_fails_the_track(tiny_mf, audio, tmp_path):
    """A think template that opens the block in its prompt: the tiny model never closes it, so its text is
    reasoning cut at the token limit. The CLI counts the track as failed and writes no description."""
    hf = checkpoint_copy(tiny_mf, tmp_path, "mf-2601-opened")
    template = (hf / "chat_template.jinja").read_text()
    opened = template.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")
    assert opened != template
    (hf / "chat_template.jinja").write_text(opened)
    r = convert(hf, tmp_path / "out", "f32", progress=False)
    assert model_facts(r.model).reasoning == "think"  # told by its template
    dataset = tmp_path / "data"
    dataset.mkdir()
    shutil.copy(audio, dataset / "song.flac")
    proc = run_cli(
        str(dataset), "--batch", "--model-path", str(r.model), "--mmproj", str(r.mmproj), "--prompts",
        "genre_mood", "--reasoning-tokens", "20", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    failures = dataset / ".music-flamingo" / "failures.jsonl"
    (record,) = [json.loads(line) for line in failures.read_text().splitlines()]
    assert "inside the model's reasoning" in json.dumps(record)
    info = dataset / "song.INFO"
    assert not info.exists() or not any(k.startswith("music_flamingo_") for k in json.loads(info.read_text()))


def test_default_room_for_the_reasoning(think_gguf):
    from music_flamingo import MusicFlamingoGGUF

    with MusicFlamingoGGUF(model_path=think_gguf[0], mmproj_path=think_gguf[1], **ENGINE) as mf:
        limits = {p.name: p.max_tokens for p in mf.analyzer.track_prompts({})}
        own = {e.name: e.max_tokens for e in mf.analyzer.entries}
    assert limits == {n: min(m + DEFAULT_REASONING_TOKENS, 8192) for n, m in own.items()}
    assert np.all([limits[n] > own[n] for n in own])


@pytest.mark.parametrize("room", [-1, 8193, 1.5, "64"])
def test_reasoning_tokens_out_of_range_are_refused(room):
    from music_flamingo.analyzer import AnalysisOptions
    from music_flamingo.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="reasoning_tokens"):
        AnalysisOptions(reasoning_tokens=room)


def test_transformers_backend_tells_a_think_variant_by_name(tiny_mf, audio, small_prompts, tmp_path):
    """The transformers backend (the checkpoint itself, no GGUF): the same room and the same split."""
    from tokenizers import AddedToken, Tokenizer

    from music_flamingo import MusicFlamingoTransformers

    hf = checkpoint_copy(tiny_mf, tmp_path, "music-flamingo-think-2601-hf")
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))  # think tags flagged special, as a tokenizer may have them
    tok.add_special_tokens([AddedToken("<think>", special=True), AddedToken("</think>", special=True)])
    tok.save(str(hf / "tokenizer.json"))
    opts = dict(prompts=["genre_mood"], prompts_files=[small_prompts], reasoning_tokens=8)
    with MusicFlamingoTransformers(hf, local_files_only=True, dtype="float32", **opts) as mf:
        assert mf.reasoning == "think" and not mf.reasoning_opened
        assert [p.max_tokens for p in mf.analyzer.track_prompts({})] == [6 + 8]
        result = mf.analyze_track(audio)
        # the tags survive decoding (other special tokens do not), so the split can see them
        ids = tok.encode("<think>hmm</think> A waltz.<|im_end|>", add_special_tokens=False).ids
        assert mf._text(ids, render_special=False) == "<think>hmm</think> A waltz."
    assert result.meta["reasoning"] == "think"
    raw = result.raw["music_flamingo_genre_mood"]
    assert result.descriptions["music_flamingo_genre_mood"] == normalize_music_flamingo_text(raw)
