"""Clean Music Flamingo's answers into plain prose that a T5 tokenizer (and a caption dataset) can take as is.

The model often answers in markdown (bullets, ``**bold**`` labels, headings) with typographic punctuation
(em dashes, curly quotes, ``F♯``). Text-to-music models are conditioned through T5-like tokenizers whose
vocabularies lack most of those characters (they become ``<unk>`` or split oddly), and captions read best as
sentences, so :func:`normalize_music_flamingo_text` flattens everything into one line of sentences with ASCII
punctuation, while leaving letters alone: accents, non-Latin scripts and musical spellings (``C#``, ``Bb``) survive.

The function is idempotent (a cleaned caption cleaned again is unchanged), so datasets can be re-normalised
safely. One pass is already a fixed point for ordinary model output; for adversarial input (markdown markers that
only appear once other markup is removed) passes repeat until nothing changes.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["normalize_music_flamingo_text"]

# --- characters --------------------------------------------------------------------------------------------------

_DASHES = "\u2010\u2011\u2012\u2013\u2212"  # hyphen, non-breaking hyphen, figure dash, en dash, minus
_LONG_DASHES = "\u2014\u2015"  # em dash, horizontal bar: parenthetical, so spaced
_SINGLE_QUOTES = "\u2018\u2019\u201a\u201b\u2032\u2039\u203a"  # ‘ ’ ‚ ‛ ′ ‹ ›
_DOUBLE_QUOTES = "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"  # “ ” „ ‟ ″ « »
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
# Invisible format characters: no glyph, no piece in a T5 vocabulary, and they break word matching.
_INVISIBLE = (
    "\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063"
    "\u2064\u2066\u2067\u2068\u2069\ufeff"
)
_BULLETS = "\u2022\u00b7\u2023\u2043\u2219\u25e6\u25cf\u25aa"  # • · ‣ ⁃ ∙ ◦ ● ▪
_ARROWS = {
    "\u2192": "->",
    "\u27f6": "->",
    "\u2794": "->",
    "\u279c": "->",
    "\u279d": "->",
    "\u279e": "->",
    "\u21fe": "->",
    "\u2190": "<-",
    "\u27f5": "<-",
    "\u2194": "<->",
    "\u27f7": "<->",
    "\u21d2": "=>",
    "\u27f9": "=>",
    "\u21d0": "<=",
    "\u27f8": "<=",
    "\u21d4": "<=>",
    "\u27fa": "<=>",
    "\u2191": "up",
    "\u2193": "down",
}
_MUSIC = {"\u266f": "#", "\u266d": "b", "\u266e": "natural", "\U0001d12a": "##", "\U0001d12b": "bb"}

_TRANSLATION: dict[int, str] = {
    **{ord(c): "-" for c in _DASHES},
    **{ord(c): " - " for c in _LONG_DASHES},
    **{ord(c): "'" for c in _SINGLE_QUOTES},
    **{ord(c): '"' for c in _DOUBLE_QUOTES},
    **{ord(c): " " for c in _SPACES},
    **{ord(c): "" for c in _INVISIBLE},
    ord("\u2026"): "...",
    ord("\u00d7"): "x",
    **{ord(c): v for c, v in _ARROWS.items()},
    **{ord(c): v for c, v in _MUSIC.items()},
    # Controls other than whitespace (NUL, ESC, DEL, C1): never meaningful in a caption.
    **{i: "" for i in [*range(0x00, 0x09), *range(0x0E, 0x1C), *range(0x7F, 0x85), *range(0x86, 0xA0)]},
    # Lone surrogates cannot be written as UTF-8 (a sidecar write would fail); U+FFFD marks a multi-byte character
    # cut by the token limit. Neither is text.
    **{i: "" for i in range(0xD800, 0xE000)},
    ord("\ufffd"): "",
}

#: Characters the output never contains (bullets are handled as list markers or separators, not by the table).
TYPOGRAPHIC_CHARS: frozenset[str] = frozenset(
    _DASHES
    + _LONG_DASHES
    + _SINGLE_QUOTES
    + _DOUBLE_QUOTES
    + _SPACES
    + _INVISIBLE
    + _BULLETS
    + "\u2026\u00d7"
    + "".join(_ARROWS)
    + "".join(_MUSIC)
    + "\ufffd"
)

# --- patterns ----------------------------------------------------------------------------------------------------

_NATURAL_AFTER_NOTE = re.compile(r"(?<=[A-Ga-g])\u266e")  # "C♮" -> "C natural", not "Cnatural"
_INLINE_BULLET = re.compile(rf"\s*(?:[{_BULLETS}]\s*)+")  # "Rock · Pop" -> "Rock, Pop"
_LEADING_BULLET = re.compile(rf"^\s*[{_BULLETS}]\s*")

_CODE_FENCE = re.compile(r"^\s*(?:`{3,}|~{3,})\s*[A-Za-z0-9_+.-]*\s*$")
_RULE = re.compile(r"^\s*([-*_=])(?:\s*\1){2,}\s*$")  # --- *** ___ === (and setext underlines)
_TABLE_SEPARATOR = re.compile(r"^\s*\|[\s|:-]*-[\s|:-]*$")  # |---|:--:|
_HEADING = re.compile(r"^\s*#{1,6}(?:\s+|$)")  # "# x" only: "C# major" and "#1" stay
_HEADING_CLOSE = re.compile(r"\s+#+\s*$")
_BLOCKQUOTE = re.compile(r"^\s*>\s*")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\(?\d{1,2}[.)])\s+")  # "- x", "* x", "+ x", "1. x", "(2) x"

# Emphasis: the delimiters must not touch a word on their outer side, so snake_case, 2**3 and 4*4 are left alone.
# Spans are bounded (real emphasis is a few words) so runaway output full of stray "*" stays linear in time.
_STAR_EMPHASIS = re.compile(r"(?<![\w*])(\*{1,3})(?![\s*])(.{1,400}?)(?<![\s*])\1(?![\w*])")
_UNDERSCORE_EMPHASIS = re.compile(r"(?<!\w)(_{1,3})(?![\s_])(.{1,400}?)(?<![\s_])\1(?!\w)")
_STRAY_STARS = re.compile(r"(?<!\w)\*{2,}|\*{2,}(?!\w)")  # unbalanced "**" from truncated output
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[.,!?;:](?:\s|$))")

_SENTENCE_END = re.compile(r"[.!?:;\u3002\u0964\u061f][\"')\]]*$")
_TRAILING_COMMAS = re.compile(r"[\s,]+$")

_MAX_PASSES = 8


# --- one line ----------------------------------------------------------------------------------------------------


@dataclass
class _Line:
    """One source line after markdown removal; ``kind`` decides how it joins its neighbours."""

    kind: str  # "text", "item" (list item), "heading"
    text: str


def _strip_inline(s: str) -> str:
    """Remove inline markup (code backticks, emphasis), repeated because emphasis nests (``***x***``)."""
    s = s.replace("`", "")
    while True:
        out = _STAR_EMPHASIS.sub(r"\2", s)
        out = _UNDERSCORE_EMPHASIS.sub(r"\2", out)
        out = _STRAY_STARS.sub("", out)
        if out == s:
            return s
        s = out


def _table_row(s: str) -> str:
    """``| a | b |`` -> ``a, b``: tables of sections or instruments read fine as comma lists."""
    cells = [c.strip() for c in s.strip().strip("|").split("|")]
    return ", ".join(c for c in cells if c)


def _clean_line(raw: str) -> _Line | None:
    """Markdown block markers off one line; None for lines that carry no text (blank, rules, fences)."""
    if _CODE_FENCE.match(raw) or _RULE.match(raw) or _TABLE_SEPARATOR.match(raw):
        return None
    kind = "text"
    s = raw
    while True:  # markers can stack ("> - **x**") or appear once emphasis is gone
        before = s
        if s.lstrip().startswith("|") and s.rstrip().endswith("|") and len(s.strip()) > 1:
            s = _table_row(s)
        if _HEADING.match(s):
            s, kind = _HEADING_CLOSE.sub("", _HEADING.sub("", s, count=1)), "heading"
        s = _BLOCKQUOTE.sub("", s, count=1)
        if _LIST_MARKER.match(s) or _LEADING_BULLET.match(s):
            s, kind = _LEADING_BULLET.sub("", _LIST_MARKER.sub("", s, count=1), count=1), "item"
        s = _strip_inline(s)
        if s == before:
            break
    s = _INLINE_BULLET.sub(", ", s)
    s = _WHITESPACE.sub(" ", s).strip()
    s = _SPACE_BEFORE_PUNCT.sub("", s)
    return _Line(kind, s) if s else None


# --- lines into sentences ----------------------------------------------------------------------------------------


def _ends_sentence(s: str) -> bool:
    return bool(_SENTENCE_END.search(s))


def _as_sentence(s: str) -> str:
    """Give a segment an end: "Key: C major" -> "Key: C major." (a trailing comma becomes the period)."""
    if _ends_sentence(s):
        return s
    return _TRAILING_COMMAS.sub("", s) + "."


def _flatten(lines: list[_Line]) -> str:
    """Join cleaned lines into one line of sentences.

    A line that starts lowercase after a line that did not end a sentence is a soft wrap and is joined with a
    space; every other line is its own sentence. One plain line is left as it is (it may be a fragment on purpose);
    as soon as there are several segments, or a list item, each segment without final punctuation gets a period.
    A segment ending in ":" keeps it, so "Instruments:" followed by items reads "Instruments: Piano. Bass.".
    """
    segments: list[str] = []
    any_item = False
    open_ = False
    for line in lines:
        any_item |= line.kind == "item"
        if open_ and line.kind == "text" and line.text[0].islower():
            segments[-1] += " " + line.text
        else:
            segments.append(line.text)
        open_ = line.kind != "heading" and not _ends_sentence(segments[-1])
    if len(segments) == 1 and not any_item:
        return segments[0]
    return " ".join(_as_sentence(s) for s in segments)


# --- public ------------------------------------------------------------------------------------------------------


def _one_pass(text: str) -> str:
    s = _NATURAL_AFTER_NOTE.sub(" \u266e", text)
    # Translate before NFKC too, so "″" becomes '"' rather than NFKC's "′′" -> "''".
    s = unicodedata.normalize("NFKC", s.translate(_TRANSLATION)).translate(_TRANSLATION)
    lines = [ln for ln in (_clean_line(raw) for raw in s.splitlines()) if ln is not None]
    s = _flatten(lines) if lines else ""
    s = _WHITESPACE.sub(" ", s).strip()
    # Removing markup can put a base letter next to a combining mark: compose again.
    return unicodedata.normalize("NFKC", s)


def normalize_music_flamingo_text(text: str) -> str:
    """Music Flamingo output as clean, single-line, ASCII-punctuated prose (NFKC), safe to re-apply.

    Markdown (headings, bullets, numbered lists, bold/italic, code, rules, tables) is removed and its lines become
    sentences; typographic dashes, quotes, spaces, ellipses and bullets become ASCII; ``♯``/``♭``/``♮`` become
    ``#``/``b``/``natural``, ``×`` becomes ``x`` and arrows ``->``-style. Letters are never changed, so accents,
    non-Latin scripts, ``C#`` and ``Bb`` survive.
    """
    s = text
    for _ in range(_MAX_PASSES):
        out = _one_pass(s)
        if out == s:
            break
        s = out
    return s
