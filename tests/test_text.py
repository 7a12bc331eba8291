"""Caption normalisation: markdown and typographic output become clean one-line prose, idempotently."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from music_flamingo.text import TYPOGRAPHIC_CHARS
from music_flamingo.text import normalize_music_flamingo_text as norm

MARKDOWN_CAPTION = """\
## Overview
**Genre:** Synthwave — retro‑futuristic electronic with an 80s feel
**Tempo:** ~118 BPM
**Key:** F♯ minor

### Instrumentation
- **Analog synth bass** – driving sixteenth notes
- *Gated reverb drums*
- Lush pads…

The mix is wide and polished; the lead synth sits “up front”.
"""
MARKDOWN_CAPTION_CLEAN = (
    "Overview. Genre: Synthwave - retro-futuristic electronic with an 80s feel. Tempo: ~118 BPM. Key: F# minor. "
    "Instrumentation. Analog synth bass - driving sixteenth notes. Gated reverb drums. Lush pads... "
    'The mix is wide and polished; the lead synth sits "up front".'
)


def test_realistic_markdown_caption_becomes_sentences():
    assert norm(MARKDOWN_CAPTION) == MARKDOWN_CAPTION_CLEAN


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Key: C major\nTempo: 120 BPM", "Key: C major. Tempo: 120 BPM."),
        ("Instruments:\n1. Piano\n2) Bass,\n* Drums\n+ Strings!", "Instruments: Piano. Bass. Drums. Strings!"),
        ("- single item", "single item."),
        ("A plain fragment without a period", "A plain fragment without a period"),
        ("The track opens with\na soft piano and\nthen builds.", "The track opens with a soft piano and then builds."),
        ("First paragraph\n\nSecond paragraph", "First paragraph. Second paragraph."),
        ("> - **Quoted item**", "Quoted item."),
        ("Intro\n---\nVerse", "Intro. Verse."),
        ("```text\nplain\n```", "plain"),
        ("Uses `reverb` and ***huge*** drums", "Uses reverb and huge drums"),
        ("__Bold__ and _italic_ words", "Bold and italic words"),
        ("**Tempo:** 90 BPM **truncated", "Tempo: 90 BPM truncated"),
        ("| 0:00 | Intro |\n|---|:--:|\n| 0:15 | Verse |", "0:00, Intro. 0:15, Verse."),
        ("Rock · Pop • Electronic", "Rock, Pop, Electronic"),
        ("# Heading #\ntext", "Heading. text."),
    ],
)
def test_markdown_is_flattened(raw, clean):
    assert norm(raw) == clean


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("F♯ minor, B♭ major, E♮ and A𝄪", "F# minor, Bb major, E natural and A##"),
        ("in C# minor, then Bb major", "in C# minor, then Bb major"),
        ("#1 hit in C#", "#1 hit in C#"),
        ("4×4 beat, 120–130 BPM, −6 dB", "4x4 beat, 120-130 BPM, -6 dB"),
        ("verse → chorus ⇒ bridge ← outro ↔ ↑", "verse -> chorus => bridge <- outro <-> up"),
        (
            "‘single’ ‚low‛ “double” „low‟ «guillemets» ‹one› 3′30″",
            "'single' 'low' \"double\" \"low\" \"guillemets\" 'one' 3'30\"",
        ),
        ("a\u00a0b\u2009c\u202fd\u200be\u2060f\ufeffg\u00adh", "a b c defgh"),
        ("wait…", "wait..."),
        ("ﬁne ＡＢＣ ①", "fine ABC 1"),  # NFKC
        ("snake_case_name and 4*4 and 2**3 and a*b*c", "snake_case_name and 4*4 and 2**3 and a*b*c"),
        ("  spaced \t out  ", "spaced out"),
    ],
)
def test_characters(raw, clean):
    assert norm(raw) == clean


def test_letters_in_any_script_survive():
    s = "Café naïve Smørrebrød ÜBER señor 日本語の音楽 Жанр Ελληνικά موسيقى संगीत"
    assert norm(s) == s
    assert norm("Cafe\u0301") == "Café"  # decomposed accents are composed, not dropped


def test_unencodable_and_replacement_characters_are_dropped():
    out = norm("a\ud800b \ufffdc")  # a lone surrogate would make the sidecar's UTF-8 write fail
    assert out == "ab c"
    out.encode("utf-8")


def test_empty_and_markup_only():
    assert norm("") == ""
    assert norm(" \n\t ") == ""
    assert norm("---\n- \n**") == ""


# --- properties --------------------------------------------------------------------------------------------------

ACCENTED = "éèêëáàâäãåæçíìîïñóòôöõøœúùûüýÿßÉÜÑØÅÆŒ"
NON_LATIN = "日本語音楽ЖжЯяΩλαβبيت"
TYPOGRAPHIC = "".join(sorted(TYPOGRAPHIC_CHARS))
MARKUP = "-*+_#`>|~:.,;!?()[]0123456789 \n\t"
caption_like = st.text(
    alphabet=st.sampled_from(list(ACCENTED + NON_LATIN + TYPOGRAPHIC + MARKUP) + list("abcCFBbxyz")), max_size=80
)
anything = st.text(max_size=200)
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(st.one_of(anything, caption_like))
@example(MARKDOWN_CAPTION)
@example("e\u200b\u0301")  # removing an invisible char lets a combining mark compose
@example("**- **- x")  # a list marker that only appears once emphasis is gone
@example("a\n,\n\u00a8")
def test_idempotent(s):
    once = norm(s)
    assert norm(once) == once


@PROPS
@given(st.one_of(anything, caption_like))
def test_output_is_clean_nfkc_single_line(s):
    out = norm(s)
    assert unicodedata.is_normalized("NFKC", out)
    assert not set(out) & TYPOGRAPHIC_CHARS
    assert "\n" not in out and "\r" not in out and "\t" not in out
    assert not any(c.isspace() and c != " " for c in out)
    assert out == out.strip() and "  " not in out
    assert not any(unicodedata.category(c) == "Cc" for c in out)


@PROPS
@given(caption_like)
def test_letters_preserved_in_order(s):
    keep = set(ACCENTED + NON_LATIN)
    assert [c for c in norm(s) if c in keep] == [c for c in s if c in keep]


@PROPS
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_never_raises(s):
    assert isinstance(norm(s), str)
