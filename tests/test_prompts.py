"""The prompt catalogue: packaged defaults, user YAML layered over it, and errors that say where the mistake is."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import DEFAULT_KEYS

from music_flamingo.datatypes import Prompt
from music_flamingo.errors import MusicFlamingoError, PromptConfigError
from music_flamingo.prompts import PACKAGED_SOURCE, Catalogue, PromptEntry, load_catalogue


def write(tmp_path: Path, body: str, name: str = "user_prompts.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return load_catalogue()


# --- packaged catalogue ------------------------------------------------------------------------------------------


def test_packaged_default_set(cat):
    entries = cat.select(None)
    assert [e.name for e in entries] == ["full", "technical", "genre_mood", "instrumentation", "structure"]
    assert [e.key for e in entries] == DEFAULT_KEYS
    assert [e.max_tokens for e in entries] == [500, 200, 150, 100, 300]
    for e in entries:
        assert (e.temperature, e.top_p, e.top_k, e.repeat_penalty, e.seed) == (0.7, 0.9, 50, 1.0, 42)
        assert e.source == PACKAGED_SOURCE
        assert e.text.strip() and "\n" not in e.text  # folded YAML: one line per prompt


def test_packaged_texts_ask_for_plain_prose(cat):
    for e in cat.entries.values():
        assert "markdown" in e.text.lower() or e.name == "very_brief", e.name
    assert "BPM" in cat.entries["full"].text and "key" in cat.entries["technical"].text
    assert "timestamps" in cat.entries["structure"].text


def test_extras_selectable_by_name_or_key(cat):
    extras = cat.select(["brief", "genre_mood_inst", "very_brief"])
    assert [e.key for e in extras] == [
        "music_flamingo_brief",
        "music_flamingo_genre_mood_inst",
        "music_flamingo_very_brief",
    ]
    assert [e.max_tokens for e in extras] == [150, 200, 60]
    assert [e.name for e in cat.select(["music_flamingo_brief", " full "])] == ["brief", "full"]
    assert set(cat.default_set) < set(cat.names())


def test_select_order_duplicates_and_strings(cat):
    assert [e.name for e in cat.select(["structure", "full", "structure", "music_flamingo_full"])] == [
        "structure",
        "full",
    ]
    assert [e.name for e in cat.select("technical")] == ["technical"]
    assert cat.select([]) == []


def test_unknown_name_lists_available(cat):
    with pytest.raises(PromptConfigError) as ei:
        cat.select(["full", "nope"])
    msg = str(ei.value)
    assert "'nope'" in msg and "full" in msg and "very_brief" in msg and "genre_mood_inst" in msg
    assert isinstance(ei.value, MusicFlamingoError) and isinstance(ei.value, ValueError)


def test_to_prompt_and_overrides(cat):
    e = cat.entries["full"]
    p = e.to_prompt()
    assert isinstance(p, Prompt)
    assert (p.name, p.text, p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed) == (
        "full",
        e.text,
        500,
        0.7,
        0.9,
        50,
        42,
    )
    q = e.to_prompt(temperature=0.0, top_p=1.0, seed=7)
    assert (q.temperature, q.top_p, q.seed, q.max_tokens) == (0.0, 1.0, 7, 500)
    assert e.to_prompt(seed=0).seed == 0  # 0 is an override, not "unset"


def test_texts_hash(cat, tmp_path):
    base = cat.select(None)
    h = Catalogue.texts_hash(base)
    assert len(h) == 16 and int(h, 16) >= 0
    assert cat.texts_hash(base) == h == load_catalogue().texts_hash(load_catalogue().select(None))
    assert cat.texts_hash(base[:4]) != h
    assert cat.texts_hash(list(reversed(base))) != h
    edited = load_catalogue([write(tmp_path, "prompts: {full: {text: 'Describe this track.'}}")])
    assert edited.texts_hash(edited.select(None)) != h
    assert edited.texts_hash(edited.select(["technical"])) == cat.texts_hash(cat.select(["technical"]))
    sampled = load_catalogue([write(tmp_path, "defaults: {seed: 1}", "seed.yaml")])
    assert sampled.texts_hash(sampled.select(None)) != h


def test_free_text(cat):
    e = cat.free_text("What instruments play the melody?")
    assert (e.key, e.max_tokens, e.temperature, e.top_p, e.seed) == ("music_flamingo_custom", 300, 0.7, 0.9, 42)
    assert e.to_prompt().text == "What instruments play the melody?"
    assert cat.free_text("Tempo?", key="my_tempo", max_tokens=50).key == "my_tempo"
    with pytest.raises(PromptConfigError, match="text"):
        cat.free_text("   ")
    with pytest.raises(PromptConfigError, match="key"):
        cat.free_text("x", key="has space")
    with pytest.raises(PromptConfigError, match="music_flamingo_full"):
        cat.free_text("x", key="music_flamingo_full")


# --- user files --------------------------------------------------------------------------------------------------


def test_user_file_adds_and_overrides(tmp_path):
    user = write(
        tmp_path,
        """\
        defaults: {temperature: 0.5}
        default_set: [full, lyrics_theme]
        prompts:
          full: {max_tokens: 800}
          technical: {text: "Tempo and key only.", seed: 3}
          lyrics_theme:
            key: music_flamingo_lyrics_theme
            text: What are the lyrics about?
            max_tokens: 120
            top_p: 0.5
        """,
    )
    cat = load_catalogue([user])
    full = cat.entries["full"]
    assert (full.max_tokens, full.key, full.temperature, full.top_p, full.seed) == (
        800,
        "music_flamingo_full",
        0.5,
        0.9,
        42,
    )
    assert full.text == load_catalogue().entries["full"].text  # partial override keeps the other fields
    assert full.source == str(user)
    tech = cat.entries["technical"]
    assert (tech.text, tech.seed, tech.max_tokens, tech.temperature) == ("Tempo and key only.", 3, 200, 0.5)
    assert cat.entries["structure"].source == PACKAGED_SOURCE and cat.entries["structure"].temperature == 0.5
    new = cat.entries["lyrics_theme"]
    assert (new.key, new.max_tokens, new.top_p, new.temperature) == ("music_flamingo_lyrics_theme", 120, 0.5, 0.5)
    assert [e.name for e in cat.select(None)] == ["full", "lyrics_theme"]
    assert cat.sources == [PACKAGED_SOURCE, str(user)]


def test_user_files_apply_in_order(tmp_path):
    a = write(tmp_path, "prompts: {full: {max_tokens: 600, seed: 1}}", "a.yaml")
    b = write(tmp_path, "version: 1\nprompts: {full: {max_tokens: 700}}", "b.yaml")
    full = load_catalogue([a, str(b)]).entries["full"]
    assert (full.max_tokens, full.seed, full.source) == (700, 1, str(b))
    assert load_catalogue(str(a)).entries["full"].max_tokens == 600  # one path, not a sequence of characters


def test_empty_user_file_is_a_no_op(tmp_path):
    cat = load_catalogue([write(tmp_path, "# nothing yet\n")])
    assert [e.key for e in cat.select(None)] == DEFAULT_KEYS


def test_user_file_may_rename_a_key(tmp_path):
    cat = load_catalogue([write(tmp_path, "prompts: {brief: {key: caption_short}}")])
    assert cat.entries["brief"].key == "caption_short"


# --- errors name the file, the entry and the field ---------------------------------------------------------------

BAD = [
    # (yaml, entry, field)
    ("prompts: {full: {max_tokens: 0}}", "full", "max_tokens"),
    ("prompts: {full: {max_tokens: 9000}}", "full", "max_tokens"),
    ("prompts: {full: {max_tokens: '500'}}", "full", "max_tokens"),
    ("prompts: {full: {max_tokens: true}}", "full", "max_tokens"),
    ("prompts: {full: {temperature: -0.1}}", "full", "temperature"),
    ("prompts: {full: {temperature: .nan}}", "full", "temperature"),
    ("prompts: {technical: {top_p: 0}}", "technical", "top_p"),
    ("prompts: {technical: {top_p: 1.5}}", "technical", "top_p"),
    ("prompts: {technical: {top_k: -1}}", "technical", "top_k"),
    ("prompts: {technical: {repeat_penalty: 0}}", "technical", "repeat_penalty"),
    ("prompts: {structure: {seed: -1}}", "structure", "seed"),
    ("prompts: {structure: {seed: 4294967296}}", "structure", "seed"),
    ("prompts: {structure: {seed: 1.5}}", "structure", "seed"),
    ("prompts: {brief: {key: 'bad-key'}}", "brief", "key"),
    ("prompts: {brief: {key: 1abc}}", "brief", "key"),
    ("prompts: {brief: {text: '  '}}", "brief", "text"),
    ("prompts: {brief: {text: [a, b]}}", "brief", "text"),
    ("prompts: {brief: {colour: red}}", "brief", "colour"),
    ("prompts: {mine: {key: my_key, text: hi}}", "mine", "max_tokens"),
    ("prompts: {mine: {text: hi, max_tokens: 10}}", "mine", "key"),
    ("prompts: {mine: {key: my_key, max_tokens: 10}}", "mine", "text"),
    ("prompts: {mine: just a string}", "mine", "fields"),
    ("prompts: {mine: null}", "mine", "fields"),
    ("prompts: {'bad name': {key: k, text: t, max_tokens: 1}}", "bad name", "name"),
    ("prompts: {mine: {key: music_flamingo_full, text: t, max_tokens: 9}}", "mine", "key"),
    ("prompts: {technical: {key: music_flamingo_full}}", "technical", "key"),
    ("prompts: [full, technical]", "prompts", "prompts"),
    ("default_set: [full, nope]", "default_set", "default_set"),
    ("default_set: full", "default_set", "default_set"),
    ("defaults: {top_p: 2}", "defaults", "top_p"),
    ("defaults: {max_tokens: 10}", "defaults", "max_tokens"),
    ("defaults: [1, 2]", "defaults", "defaults"),
    ("version: 2", "top level", "version"),
]


@pytest.mark.parametrize("body, entry, field", BAD, ids=[b for b, _, _ in BAD])
def test_bad_yaml_names_file_entry_field(tmp_path, body, entry, field):
    path = write(tmp_path, body + "\n", "bad_prompts.yaml")
    with pytest.raises(PromptConfigError) as ei:
        load_catalogue([path])
    msg = str(ei.value)
    assert "bad_prompts.yaml" in msg and entry in msg and f"'{field}'" in msg, msg


def test_duplicate_key_error_names_both_prompts(tmp_path):
    path = write(tmp_path, "prompts: {full: {key: music_flamingo_technical}}")
    with pytest.raises(PromptConfigError, match=r"prompt 'full'.*'key'.*prompt 'technical'"):
        load_catalogue([path])


@pytest.mark.parametrize(
    "body, line",
    [
        ("prompts:\n  full: {max_tokens: 10\n", 3),  # unclosed flow mapping
        ("prompts:\n\tfull: {}\n", 2),  # tab indentation
        ("prompts:\n  full: {max_tokens: 10}\n  full: {seed: 1}\n", 3),  # same prompt twice in one file
    ],
)
def test_yaml_syntax_error_has_line_number(tmp_path, body, line):
    path = write(tmp_path, body, "broken.yaml")
    with pytest.raises(PromptConfigError) as ei:
        load_catalogue([path])
    assert f"broken.yaml:{line}:" in str(ei.value), str(ei.value)


def test_unclosed_quote_points_at_its_start(tmp_path):
    path = write(tmp_path, "prompts:\n  full:\n    text: 'never closed\n    max_tokens: 10\n", "broken.yaml")
    with pytest.raises(PromptConfigError, match=r"broken\.yaml:5:1: invalid YAML: .*started at line 3"):
        load_catalogue([path])


@pytest.mark.parametrize(
    "body, words",
    [
        ("- full\n- technical\n", ["top level", "mapping"]),
        ("just text\n", ["top level", "mapping"]),
        ("prompt: {full: {max_tokens: 10}}\n", ["'prompt'", "allowed"]),
    ],
)
def test_top_level_errors(tmp_path, body, words):
    path = write(tmp_path, body, "top.yaml")
    with pytest.raises(PromptConfigError) as ei:
        load_catalogue([path])
    assert "top.yaml" in str(ei.value) and all(w in str(ei.value) for w in words), str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptConfigError, match="missing.yaml"):
        load_catalogue([tmp_path / "missing.yaml"])


def test_entry_is_frozen(cat):
    with pytest.raises(AttributeError):
        cat.entries["full"].max_tokens = 1  # type: ignore[misc]
    assert isinstance(cat.entries["full"], PromptEntry)


def test_yaml_is_shipped_inside_the_package():
    """scikit-build-core's wheel.packages copies every file of python/music_flamingo, YAML included."""
    from importlib import resources

    assert resources.files("music_flamingo").joinpath("prompts.yaml").is_file()


def test_asked_combines_names_and_free_text(cat):
    default = [e.key for e in cat.select(None)]
    assert [e.key for e in cat.asked()] == default
    assert [e.key for e in cat.asked(["technical"])] == ["music_flamingo_technical"]
    assert [e.key for e in cat.asked(None, "Tempo?")] == ["music_flamingo_custom"]  # --prompt alone asks only it
    both = cat.asked(["technical", "full"], "Tempo?")
    assert [e.key for e in both] == ["music_flamingo_technical", "music_flamingo_full", "music_flamingo_custom"]
    assert both[-1].text == "Tempo?"
    with pytest.raises(PromptConfigError, match="unknown prompt"):
        cat.asked(["nope"], "Tempo?")


def test_analysis_options_ask_one_name_given_as_a_string():
    """prompts="technical" is one name (as select() takes it), not the letters t, e, c ..."""
    from music_flamingo.analyzer import AnalysisOptions

    assert [e.key for e in AnalysisOptions(prompts="technical").asked()] == ["music_flamingo_technical"]
    assert [e.key for e in AnalysisOptions(prompts="full", prompt="Key?").asked()] == [
        "music_flamingo_full",
        "music_flamingo_custom",
    ]
