"""Prompt texts filled per track from the track's own ``.INFO`` sidecar (genres, release year, label, any key).

A prompt text is a *template* when it uses one of the pipeline's two fragments, ``{genres}`` and ``{metadata}``
(single braces, as the users' pipeline, Taikakim/mir-feature-extraction, writes them in its
``config/master_pipeline.yaml``), or Jinja2 syntax (``{{ ... }}``, ``{% ... %}``). Any other text is sent as it is,
so plain prompts (and single braces that mean nothing here) are untouched.

Variables a template can use:

- ``genres``: the top 5 of the sidecar's ``essentia_genre`` dict by weight, as the pipeline writes it:
  ``Probabilistic genre analysis reveals: Electronic - Goa Trance (0.39), ... . Numbers are softmax weights (0–1);
  very low probabilities are filtered out.`` — ``Genre unknown.`` when there is no such dict (or no numeric weight
  in it).
- ``metadata``: ``According to the actual ID3 metadata, this is the release year, label and genres of the track the
  clip is sourced from: release year: 2021; label: DAT Universe; genres: psytrance, trance.`` from ``release_year``
  (else ``track_metadata_year``), ``label`` and the tag ``genres`` list; parts that are absent (or of a type that
  cannot be such a value, e.g. a year that is a dict) are left out, and the whole fragment is empty when none is
  there.
- ``info``: the whole sidecar (a dict; ``{}`` when there is none): ``{{ info.bpm }}``, ``{{ info["key"] }}``.
- ``file``: the track's file name.

A missing value renders as nothing (``{{ info.bpm }}`` on a track without ``bpm`` is empty); Jinja's ``default``
filter gives another fallback: ``{{ info.bpm | default("unknown") }}``. Templates run in Jinja2's sandbox (no
attribute of Python internals is reachable from a prompt file). A syntax error, or a variable that is none of the
above, is refused when the prompts file is loaded — before any model loads — naming the file and line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox

from ._logging import logger

__all__ = ["VARIABLES", "Template", "TemplateProblem", "compile_text", "genres_fragment", "metadata_fragment"]

VARIABLES = ("genres", "metadata", "info", "file")
TOP_GENRES = 5  # the pipeline's top-5

# The pipeline's fragments, single braces, not part of a Jinja ``{{ }}``: rewritten to Jinja before compiling, so a
# sidecar value is never parsed as template syntax.
_FRAGMENT = re.compile(r"(?<!\{)\{(genres|metadata)\}(?!\})")
_JINJA = re.compile(r"\{\{|\{%|\{#")

_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    undefined=jinja2.ChainableUndefined,  # info.a.b on a missing a: empty, not an error
    autoescape=False,
    keep_trailing_newline=True,
)


class TemplateProblem(ValueError):
    """A template that cannot be used; ``line`` is the line within the prompt text (1-based)."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


def is_template(text: str) -> bool:
    return bool(_FRAGMENT.search(text) or _JINJA.search(text))


@dataclass(frozen=True)
class Template:
    """One prompt text compiled: :meth:`fill` gives the text for one track's sidecar values."""

    source: str
    _compiled: jinja2.Template

    def fill(self, info: Mapping[str, Any] | None, file: str = "") -> str:
        """The text for a track whose sidecar holds ``info`` (None or not a dict: an empty one). An error while
        rendering (a user expression applied to a value of the wrong type) raises :class:`TemplateProblem`."""
        values = dict(info) if isinstance(info, Mapping) else {}
        try:
            return self._compiled.render(
                genres=genres_fragment(values), metadata=metadata_fragment(values), info=values, file=file
            )
        except jinja2.TemplateError as e:
            raise TemplateProblem(f"cannot fill the prompt template: {e}", getattr(e, "lineno", None) or 1) from e
        except (TypeError, ValueError, ArithmeticError, LookupError) as e:
            raise TemplateProblem(f"cannot fill the prompt template: {type(e).__name__}: {e}") from e


def compile_text(text: str) -> Template | None:
    """The template of a prompt text, None for a plain text (sent as it is). :class:`TemplateProblem` for a syntax
    error or an unknown variable."""
    if not is_template(text):
        return None
    source = _FRAGMENT.sub(lambda m: "{{ " + m.group(1) + " }}", text)
    try:
        ast = _ENV.parse(source)
        compiled = _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateProblem(f"template syntax error: {e.message}", e.lineno or 1) from e
    unknown = sorted(jinja2.meta.find_undeclared_variables(ast) - set(VARIABLES))
    if unknown:
        line = next((n + 1 for n, s in enumerate(source.splitlines()) if unknown[0] in s), 1)
        raise TemplateProblem(
            f"unknown template variable(s) {', '.join(unknown)}; a prompt can use {', '.join(VARIABLES)} "
            "(sidecar keys as info.<key>)",
            line,
        )
    return Template(text, compiled)


def _weight(v: Any) -> float | None:
    """A genre weight: a finite real number (not a bool), else None (the entry is left out)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def genres_fragment(info: Mapping[str, Any]) -> str:
    """``{genres}``, exactly as the pipeline writes it (``_interpolate_genres`` in its src/pipeline.py)."""
    genre_dict = info.get("essentia_genre")
    weights: list[tuple[str, float]] = []
    if isinstance(genre_dict, Mapping):
        for k, v in genre_dict.items():
            w = _weight(v)
            if w is not None:
                weights.append((str(k), w))
    if not weights:
        if genre_dict not in (None, {}) and not isinstance(genre_dict, Mapping):
            logger.debug("essentia_genre is a %s, not a dict of weights: 'Genre unknown.'", type(genre_dict).__name__)
        return "Genre unknown."
    top = sorted(weights, key=lambda kv: kv[1], reverse=True)[:TOP_GENRES]
    entries = ", ".join(f"{k.replace('---', ' - ')} ({v:.2f})" for k, v in top)
    return (
        f"Probabilistic genre analysis reveals: {entries}. "
        "Numbers are softmax weights (0\u20131); very low probabilities are filtered out."
    )


def _scalar(v: Any) -> str | None:
    """A year or label as text: a non-empty string or a number (an integral float without ``.0``); None for
    anything else (a dict, a list, a bool, an empty string)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, str):
        return v if v.strip() else None
    if isinstance(v, int):
        return str(v) if v else None
    if isinstance(v, float) and math.isfinite(v) and v:
        return str(int(v)) if v.is_integer() else str(v)
    return None


def metadata_fragment(info: Mapping[str, Any]) -> str:
    """``{metadata}``, exactly as the pipeline writes it; "" when none of its fields is there."""
    parts = []
    year = _scalar(info.get("release_year")) or _scalar(info.get("track_metadata_year"))
    if year:
        parts.append(f"release year: {year}")
    label = _scalar(info.get("label"))
    if label:
        parts.append(f"label: {label}")
    tag_genres = info.get("genres")
    if isinstance(tag_genres, list):
        names = [s for g in tag_genres if (s := _scalar(g))]
        if names:
            parts.append(f"genres: {', '.join(names)}")
    if not parts:
        return ""
    return (
        "According to the actual ID3 metadata, this is the release year, label and "
        f"genres of the track the clip is sourced from: {'; '.join(parts)}."
    )
