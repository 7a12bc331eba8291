"""The prompt catalogue: which questions a track is asked, under which output keys, with which limits and sampling.

The packaged ``prompts.yaml`` holds the default questions; users layer their own YAML files over it (to add
prompts, adjust one field of a packaged prompt, or change the defaults) instead of editing code. Every file is
validated before use, and each error names the file, the prompt entry and the field, because a typo found after
hours of batch captioning is expensive.

Fields a prompt does not set come from ``defaults`` once all files are merged, so a user file that changes
``defaults.temperature`` changes every prompt that does not pin its own.

A prompt's text may be a template filled per track from its sidecar (``{genres}``, ``{metadata}``, Jinja2:
:mod:`.templates`); templates are compiled here, so an error is refused with the catalogue, before a model loads.

Two shapes of file are read (:func:`load_catalogue` tells them apart by their top-level keys): this package's own
(``version``, ``defaults``, ``default_set``, ``prompts``) and the users' pipeline config
(``config/master_pipeline.yaml`` of Taikakim/mir-feature-extraction), whose ``music_flamingo:`` section gives
``prompts: {key: text}`` (answers written as ``music_flamingo_<key>``), ``max_tokens: {key: n}`` and
``revision: {prompts: {key: text}}``, follow-up questions in :attr:`Catalogue.followups`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import validation
from ._logging import logger
from .datatypes import Prompt
from .errors import PromptConfigError
from .fsutil import MAX_PROMPTS_BYTES, read_regular_file
from .templates import Template, TemplateProblem, compile_text

__all__ = ["Catalogue", "FollowUp", "PromptEntry", "load_catalogue", "PACKAGED_SOURCE", "SUMMARIES_FILE"]

PACKAGED_SOURCE = "music_flamingo/prompts.yaml"
# The pipeline's three short summaries as follow-ups, opt-in (the command line's --summaries).
SUMMARIES_FILE = Path(__file__).with_name("summaries.yaml")
CATALOGUE_VERSION = 1

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no commas or spaces: names are typed on command lines

_TOP_LEVEL = ("version", "defaults", "default_set", "prompts")
_SAMPLING = ("temperature", "top_p", "top_k", "repeat_penalty", "seed")
_ENTRY_FIELDS = ("key", "text", "max_tokens", *_SAMPLING)
_REQUIRED = ("key", "text", "max_tokens")


# --- entries -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEntry:
    """One catalogue prompt, fully resolved. ``source`` is the file that last set any of its fields."""

    name: str
    key: str
    text: str
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    seed: int
    source: str = PACKAGED_SOURCE
    template: Template | None = field(default=None, compare=False, repr=False)  # None: the text is sent as is

    def fill(self, info: Any = None, file: str = "") -> str:
        """The text asked of a track whose sidecar holds ``info`` (:mod:`.templates`); a plain text as it is."""
        if self.template is None:
            return self.text
        try:
            return self.template.fill(info, file)
        except TemplateProblem as e:
            raise PromptConfigError(f"{self.source}: prompt '{self.name}': {e}") from e

    def to_prompt(
        self,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        text: str | None = None,
    ) -> Prompt:
        """The engine's :class:`~music_flamingo.datatypes.Prompt`; ``None`` keeps the catalogue's value, anything
        else (from the CLI or :class:`~music_flamingo.analyzer.AnalysisOptions`) overrides it. ``text``: the text
        as filled for one track (:meth:`fill`); default the catalogue's."""
        return Prompt(
            text=self.text if text is None else text,
            max_tokens=self.max_tokens,
            temperature=self.temperature if temperature is None else float(temperature),
            top_p=self.top_p if top_p is None else float(top_p),
            top_k=self.top_k,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed if seed is None else int(seed),
            name=self.name,
        )

    def _hash_fields(self) -> list[Any]:
        return [
            self.name,
            self.key,
            self.text,
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.top_k,
            self.repeat_penalty,
            self.seed,
        ]


@dataclass(frozen=True)
class FollowUp:
    """A follow-up question about a track's answer (the pipeline's ``revision.prompts``: short summaries written
    as ``music_flamingo_<name>``), asked in the same conversation after the answer it follows
    (:class:`~music_flamingo.analyzer.AnalysisOptions`: ``followups``, ``followups_of``, ``catch_up``)."""

    name: str
    key: str
    text: str
    max_tokens: int
    temperature: float | None
    source: str


@dataclass
class Catalogue:
    """All known prompts by name, the default selection and the sampling defaults, after merging every file;
    ``followups``: the follow-up questions the files named (see :class:`FollowUp`)."""

    entries: dict[str, PromptEntry]
    default_set: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    followups: dict[str, FollowUp] = field(default_factory=dict)

    def templated(self, entries: Sequence[PromptEntry]) -> bool:
        """Whether any of ``entries`` is filled per track (its text differs from track to track)."""
        return any(e.template is not None for e in entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def select(self, names: Sequence[str] | None) -> list[PromptEntry]:
        """Entries by name (or by output key), in the order asked, duplicates dropped; ``None``: the default set."""
        if names is None:
            names = self.default_set
        if isinstance(names, str):  # "full" would otherwise be read as ["f", "u", "l", "l"]
            names = [names]
        by_key = {e.key: e for e in self.entries.values()}
        chosen: dict[str, PromptEntry] = {}
        unknown: list[str] = []
        for raw in names:
            name = str(raw).strip()
            if not name:
                continue
            entry = self.entries.get(name) or by_key.get(name)
            if entry is None:
                unknown.append(name)
            else:
                chosen.setdefault(entry.name, entry)
        if unknown:
            raise PromptConfigError(
                f"unknown prompt name(s) {', '.join(map(repr, unknown))}; available: {', '.join(self.entries)}"
                + (f" (catalogue files: {', '.join(self.sources)})" if len(self.sources) > 1 else "")
            )
        return list(chosen.values())

    def asked(self, names: Sequence[str] | None = None, free_text: str | None = None) -> list[PromptEntry]:
        """What a run asks: the entries ``names`` (None: the default set) and, with ``free_text``, one more
        question written to ``music_flamingo_custom``; ``free_text`` alone asks only it (``--prompt``)."""
        entries = self.select(names or None) if names or not free_text else []  # a str is one name
        if free_text:
            entries = [*entries, self.free_text(free_text)]
        return entries

    @staticmethod
    def texts_hash(entries: Sequence[PromptEntry]) -> str:
        """16 hex digits identifying what was asked (names, keys, texts, limits, sampling, in order), so datasets
        record which prompt wording produced a caption and stale captions can be found after a prompt edit."""
        payload = json.dumps([e._hash_fields() for e in entries], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def free_text(self, text: str, key: str = "music_flamingo_custom", max_tokens: int = 300) -> PromptEntry:
        """An entry for a user's own question (``--prompt``), with the catalogue's sampling defaults."""
        source = "<free text>"
        fields = {"key": key, "text": text, "max_tokens": max_tokens}
        for name, value in fields.items():
            _FIELD_CHECKS[name](value, _Where(source, "prompt 'custom'", name))
        clash = [e.name for e in self.entries.values() if e.key == key]
        if clash:
            raise PromptConfigError(
                f"{source}: prompt 'custom': field 'key': {key!r} is already the key of "
                f"prompt {clash[0]!r}; choose another key"
            )
        return PromptEntry(
            name="custom",
            key=key,
            text=text,
            max_tokens=max_tokens,
            source=source,
            template=_compiled(text, source, "custom", None),
            **{k: self.defaults[k] for k in _SAMPLING},
        )


# --- validation --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Where a value sits, for error messages: file, section/entry, field."""

    source: str
    entry: str
    field: str

    def error(self, problem: str) -> PromptConfigError:
        if len(problem) > _MAX_MESSAGE:  # a value quoted in full could be megabytes (a long text, YAML aliases)
            problem = f"{problem[:_MAX_MESSAGE]}… ({len(problem)} characters in all)"
        return PromptConfigError(f"{self.source}: {self.entry}: field '{self.field}': {problem}")


def _check_key(v: Any, w: _Where) -> None:
    if not isinstance(v, str) or not _KEY_RE.match(v):
        raise w.error(f"must be an identifier matching {_KEY_RE.pattern} (it becomes a dataset field), got {v!r}")


def _check_text(v: Any, w: _Where) -> None:
    problem = validation.prompt_text(v)  # non-empty, no NUL, not longer than a context holds
    if problem is not None:
        raise w.error(problem)


def _checked(check: Callable[[Any], str | None]) -> Callable[[Any, _Where], None]:
    """A field check of :mod:`.validation` (one place for every range) that names the file, prompt and field."""

    def run(v: Any, w: _Where) -> None:
        problem = check(v)
        if problem is not None:
            raise w.error(problem)

    return run


_FIELD_CHECKS: dict[str, Callable[[Any, _Where], None]] = {
    "key": _check_key,
    "text": _check_text,
    **{name: _checked(getattr(validation, name)) for name in ("max_tokens", *_SAMPLING)},
}


_MAX_MESSAGE = 300
# What a prompts file may expand to through YAML aliases (``&a``/``*a``): far above any real catalogue, far below
# an "alias bomb" (1 KB of nested aliases once expanded to ≈ 3 GB and took over a minute).
MAX_YAML_NODES = 100_000
MAX_YAML_CHARS = 4 << 20


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key written twice in one mapping (plain YAML keeps the last one silently, which
    would hide, say, two ``full:`` entries in one file) and a document whose aliases expand beyond
    :data:`MAX_YAML_NODES` values or :data:`MAX_YAML_CHARS` characters (checked on the composed graph, before
    anything is built)."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            nodes, chars = _expanded_size(node, {}, set())
            if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the document expands (through its aliases) to over {MAX_YAML_NODES} values or "
                    f"{MAX_YAML_CHARS} characters; refused",
                    node.start_mark,
                )
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, tuple[int, int]], open_: set[int]) -> tuple[int, int]:
    """(values, characters) of ``node`` with every alias expanded, in time linear in the file (memoised per
    node, since an alias is the same node object); a node that contains itself counts as too large."""
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, yaml.ScalarNode):
        return 1, len(node.value)
    if id(node) in open_:
        return MAX_YAML_NODES + 1, 0
    open_.add(id(node))
    children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
    nodes, chars = 1, 0
    for child in children:
        n, c = _expanded_size(child, memo, open_)
        nodes, chars = nodes + n, chars + c
        if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
            break
    open_.discard(id(node))
    memo[id(node)] = (nodes, chars)
    return nodes, chars


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)):
            continue  # unhashable keys: construct_mapping below reports them
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError as e:
        raise PromptConfigError(f"{source}: invalid YAML: nested too deeply") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e)
        context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and cmark is not None and (mark is None or cmark.line != mark.line):
            problem += f" ({context} started at line {cmark.line + 1})"  # e.g. where an unclosed quote opened
        raise PromptConfigError(f"{where}: invalid YAML: {problem}") from e
    if data is None:
        logger.warning("prompt file %s is empty", source)
        return {}
    if not isinstance(data, dict):
        raise PromptConfigError(
            f"{source}: the top level must be a mapping with keys {', '.join(_TOP_LEVEL)}, got {type(data).__name__}"
        )
    if _is_pipeline_config(data):
        return data
    unknown = [str(k) for k in data if k not in _TOP_LEVEL]
    if unknown:
        raise PromptConfigError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_TOP_LEVEL)} "
            f"(or a pipeline config with a '{PIPELINE_SECTION}:' section)"
        )
    return data


def _text_lines(text: str, path: Sequence[str]) -> dict[str, int]:
    """The file line (1-based) where each prompt's text starts, for the mapping of prompts at ``path`` (e.g.
    ``("prompts",)``): template errors name it. A value given as a mapping is looked up under ``text``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # already reported by _parse_yaml
        return {}

    def child(n: Any, key: str) -> Any:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                if getattr(k, "value", None) == key:
                    return v
        return None

    for key in path:
        node = child(node, key)
    lines: dict[str, int] = {}
    for k, v in node.value if isinstance(node, yaml.MappingNode) else ():
        scalar = child(v, "text") if isinstance(v, yaml.MappingNode) else v
        if isinstance(scalar, yaml.ScalarNode):
            block = scalar.style in ("|", ">")  # the text starts on the line after the indicator
            lines[str(k.value)] = scalar.start_mark.line + 1 + block
    return lines


def _compiled(text: str, source: str, name: str, line: int | None) -> Template | None:
    """The text's template (None: a plain text), or the PromptConfigError naming file, line and prompt."""
    try:
        return compile_text(text)
    except TemplateProblem as e:
        where = f"{source}:{line + e.line - 1}" if line is not None else source
        raise PromptConfigError(f"{where}: prompt '{name}': field 'text': {e}") from e


# --- the users' pipeline config (config/master_pipeline.yaml) ----------------------------------------------------

PIPELINE_SECTION = "music_flamingo"
PIPELINE_MAX_TOKENS = 500  # the pipeline's DEFAULT_TOKEN_LIMITS, for a prompt its max_tokens does not list
_PIPELINE_KEYS = ("prompts", "max_tokens", "revision")
_PIPELINE_NOTED = ("enabled", "model", "context_size", "sample_probability")  # read by the pipeline, not here


def _is_pipeline_config(data: dict[str, Any]) -> bool:
    return PIPELINE_SECTION in data and not any(k in data for k in _TOP_LEVEL)


def _pipeline_mapping(section: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = section.get(name) or {}
    if not isinstance(value, dict):
        raise _Where(source, PIPELINE_SECTION, name).error(f"must be a mapping, got {type(value).__name__}")
    return value


def _from_pipeline(data: dict[str, Any], source: str, known: Sequence[str]) -> tuple[dict[str, Any], list[FollowUp]]:
    """The pipeline config's ``music_flamingo:`` section in this package's shape: each ``prompts`` key ``k`` a
    prompt named ``k`` written as ``music_flamingo_<k>`` with ``max_tokens[k]`` (else 500, the pipeline's
    default), and these prompts the default set (the pipeline asks exactly them). A value ``true`` (the older
    ``prompts: {full: true}``) asks the packaged prompt of that name; ``false`` leaves it out. ``revision.prompts``
    become follow-ups."""
    section = data[PIPELINE_SECTION] or {}
    if not isinstance(section, dict):
        raise _Where(source, PIPELINE_SECTION, PIPELINE_SECTION).error(
            f"must be a mapping, got {type(section).__name__}"
        )
    prompts, limits = _pipeline_mapping(section, "prompts", source), _pipeline_mapping(section, "max_tokens", source)
    out: dict[str, dict[str, Any]] = {}
    for name, value in prompts.items():
        entry: dict[str, Any] = {"max_tokens": limits[name]} if name in limits else {}
        if value is True:
            if name not in known:
                raise _Where(source, f"{PIPELINE_SECTION}.prompts", str(name)).error(
                    f"'true' asks a packaged prompt, and there is none of that name; give its text instead "
                    f"(packaged: {', '.join(known)})"
                )
        elif value is False or value is None:
            continue
        else:
            entry = {"key": f"music_flamingo_{name}", "text": value, "max_tokens": PIPELINE_MAX_TOKENS, **entry}
        out[name] = entry
    for name in limits:
        if name not in prompts:
            logger.warning("%s: %s.max_tokens.%s names no prompt; ignored", source, PIPELINE_SECTION, name)
    noted = {k: section[k] for k in _PIPELINE_NOTED if k in section and k != "enabled"}
    if noted:
        logger.info(
            "%s: %s read from the pipeline config; model and sampling are this command's options (--model, "
            "--sample): %s",
            source,
            ", ".join(_PIPELINE_KEYS),
            ", ".join(f"{k}={v!r}" for k, v in noted.items()),
        )
    converted = {"default_set": list(out), "prompts": out} if out else {}
    return converted, _followups(_pipeline_mapping(section, "revision", source), source)


def _followups(revision: dict[str, Any], source: str) -> list[FollowUp]:
    """The pipeline's ``revision:`` follow-up questions, validated (kept for the follow-up pass)."""
    prompts = revision.get("prompts") or {}
    where = f"{PIPELINE_SECTION}.revision"
    if not isinstance(prompts, dict):
        raise _Where(source, where, "prompts").error(f"must be a mapping of key -> text, got {prompts!r}")
    if revision.get("enabled", True) is False:
        return []
    max_tokens = revision.get("max_tokens", PIPELINE_MAX_TOKENS)
    _FIELD_CHECKS["max_tokens"](max_tokens, _Where(source, where, "max_tokens"))
    temperature = revision.get("temperature")
    if temperature is not None:
        _FIELD_CHECKS["temperature"](temperature, _Where(source, where, "temperature"))
    out = []
    for name, text in prompts.items():
        key = f"music_flamingo_{name}"
        _FIELD_CHECKS["key"](key, _Where(source, f"{where}.prompts.{name}", "key"))
        _FIELD_CHECKS["text"](text, _Where(source, f"{where}.prompts.{name}", "text"))
        out.append(FollowUp(str(name), key, text, max_tokens, temperature, source))
    return out


# --- merging -----------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What the files said so far, before defaults are applied."""

    defaults: dict[str, Any] = field(default_factory=dict)
    default_set: list[str] = field(default_factory=list)
    default_set_source: str = PACKAGED_SOURCE
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_sources: dict[str, str] = field(default_factory=dict)
    text_where: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # file and line of each text
    sources: list[str] = field(default_factory=list)
    followups: dict[str, FollowUp] = field(default_factory=dict)


def _merge_file(raw: _Raw, data: dict[str, Any], source: str, lines: dict[str, int] | None = None) -> None:
    """Validate one parsed file and layer it over ``raw``."""
    if "version" in data and (not validation.is_int(data["version"]) or data["version"] != CATALOGUE_VERSION):
        raise _Where(source, "top level", "version").error(
            f"this package reads catalogue version {CATALOGUE_VERSION}, got {data['version']!r}"
        )

    defaults = data.get("defaults", {})
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        raise _Where(source, "defaults", "defaults").error(f"must be a mapping, got {type(defaults).__name__}")
    for name, value in defaults.items():
        if name not in _SAMPLING:
            raise _Where(source, "defaults", str(name)).error(f"unknown field; allowed: {', '.join(_SAMPLING)}")
        _FIELD_CHECKS[name](value, _Where(source, "defaults", name))
    raw.defaults.update(defaults)

    if "default_set" in data:
        ds = data["default_set"]
        if not isinstance(ds, list) or not all(isinstance(n, str) for n in ds):
            raise _Where(source, "default_set", "default_set").error(f"must be a list of prompt names, got {ds!r}")
        raw.default_set, raw.default_set_source = list(ds), source

    prompts = data.get("prompts", {})
    if prompts is None:
        prompts = {}
    if not isinstance(prompts, dict):
        raise _Where(source, "prompts", "prompts").error(
            f"must be a mapping of prompt name -> fields, got {type(prompts).__name__}"
        )
    for name, entry in prompts.items():
        label = f"prompt '{name}'"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _Where(source, label, "name").error(
                f"prompt names must match {_NAME_RE.pattern} (no spaces or commas), got {name!r}"
            )
        if not isinstance(entry, dict):
            raise _Where(source, label, "fields").error(
                f"each prompt must be a mapping of fields ({', '.join(_ENTRY_FIELDS)}), got {entry!r}"
            )
        for fname, value in entry.items():
            if fname not in _ENTRY_FIELDS:
                raise _Where(source, label, str(fname)).error(f"unknown field; allowed: {', '.join(_ENTRY_FIELDS)}")
            _FIELD_CHECKS[fname](value, _Where(source, label, fname))
        if name not in raw.prompts:
            for fname in _REQUIRED:
                if fname not in entry:
                    raise _Where(source, label, fname).error(f"missing; a new prompt needs {', '.join(_REQUIRED)}")
        raw.prompts.setdefault(name, {}).update(entry)
        raw.prompt_sources[name] = source
        if "text" in entry:
            raw.text_where[name] = (source, (lines or {}).get(name))

    seen: dict[str, str] = {}
    for name, entry in raw.prompts.items():
        other = seen.setdefault(entry["key"], name)
        if other != name:
            if other in prompts and name not in prompts:  # name the prompt this file touched
                name, other = other, name
            raise _Where(source, f"prompt '{name}'", "key").error(
                f"{entry['key']!r} is also the key of prompt '{other}'; each prompt needs its own output key"
            )
    raw.sources.append(source)


def _resolve(raw: _Raw) -> Catalogue:
    """Apply defaults and check what only the merged result can tell (the default set)."""
    missing = [k for k in _SAMPLING if k not in raw.defaults]
    if missing:  # only reachable if the packaged file loses a default
        raise _Where(PACKAGED_SOURCE, "defaults", missing[0]).error("missing")
    for name in raw.default_set:
        if name not in raw.prompts:
            raise _Where(raw.default_set_source, "default_set", "default_set").error(
                f"unknown prompt {name!r}; available: {', '.join(raw.prompts)}"
            )
    entries: dict[str, PromptEntry] = {}
    for name, fields in raw.prompts.items():
        values = {**raw.defaults, **fields}
        text_source, line = raw.text_where.get(name, (raw.prompt_sources[name], None))
        entries[name] = PromptEntry(
            name=name,
            key=values["key"],
            text=values["text"],
            max_tokens=values["max_tokens"],
            temperature=float(values["temperature"]),
            top_p=float(values["top_p"]),
            top_k=values["top_k"],
            repeat_penalty=float(values["repeat_penalty"]),
            seed=values["seed"],
            source=raw.prompt_sources[name],
            template=_compiled(values["text"], text_source, name, line),
        )
    return Catalogue(
        entries=entries,
        default_set=list(dict.fromkeys(raw.default_set)),
        defaults=dict(raw.defaults),
        sources=list(raw.sources),
        followups=dict(raw.followups),
    )


def _merge_text(raw: _Raw, text: str, source: str) -> None:
    """One file's text, of either shape, layered over ``raw``."""
    data = _parse_yaml(text, source)
    if data and _is_pipeline_config(data):
        converted, followups = _from_pipeline(data, source, list(raw.prompts))
        _merge_file(raw, converted, source, _text_lines(text, (PIPELINE_SECTION, "prompts")))
        raw.followups.update({f.name: f for f in followups})
        logger.info("%s read as a pipeline config: prompts %s", source, ", ".join(converted.get("prompts", {})))
    else:
        _merge_file(raw, data, source, _text_lines(text, ("prompts",)))


def load_catalogue(extra_files: Sequence[str | os.PathLike[str]] = ()) -> Catalogue:
    """The packaged catalogue with each of ``extra_files`` layered over it, in order (later files win)."""
    if isinstance(extra_files, (str, os.PathLike)):
        extra_files = [extra_files]
    raw = _Raw()
    packaged = resources.files("music_flamingo").joinpath("prompts.yaml").read_text(encoding="utf-8")
    _merge_text(raw, packaged, PACKAGED_SOURCE)
    for path in extra_files:
        source = str(path)
        try:
            text = read_regular_file(path, MAX_PROMPTS_BYTES).decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PromptConfigError(f"{source}: cannot read prompt file: {e}") from e
        _merge_text(raw, text, source)
        logger.debug("prompt file %s layered over the catalogue", source)
    catalogue = _resolve(raw)
    logger.debug(
        "prompt catalogue: %d prompts from %s; default set %s",
        len(catalogue.entries),
        ", ".join(catalogue.sources),
        ",".join(catalogue.default_set),
    )
    return catalogue
