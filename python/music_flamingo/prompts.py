"""The prompt catalogue: which questions a track is asked, under which output keys, with which limits and sampling.

The packaged ``prompts.yaml`` holds the default questions; users layer their own YAML files over it (to add
prompts, adjust one field of a packaged prompt, or change the defaults) instead of editing code. Every file is
validated before use, and each error names the file, the prompt entry and the field, because a typo found after
hours of batch captioning is expensive.

Fields a prompt does not set come from ``defaults`` once all files are merged, so a user file that changes
``defaults.temperature`` changes every prompt that does not pin its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from . import validation
from ._logging import logger
from .datatypes import Prompt
from .errors import PromptConfigError
from .fsutil import MAX_PROMPTS_BYTES, read_regular_file

__all__ = ["Catalogue", "PromptEntry", "load_catalogue", "PACKAGED_SOURCE"]

PACKAGED_SOURCE = "music_flamingo/prompts.yaml"
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

    def to_prompt(
        self, temperature: float | None = None, top_p: float | None = None, seed: int | None = None
    ) -> Prompt:
        """The engine's :class:`~music_flamingo.datatypes.Prompt`; ``None`` keeps the catalogue's value, anything
        else (from the CLI or :class:`~music_flamingo.analyzer.AnalysisOptions`) overrides it."""
        return Prompt(
            text=self.text,
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


@dataclass
class Catalogue:
    """All known prompts by name, the default selection and the sampling defaults, after merging every file."""

    entries: dict[str, PromptEntry]
    default_set: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

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
    unknown = [str(k) for k in data if k not in _TOP_LEVEL]
    if unknown:
        raise PromptConfigError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_TOP_LEVEL)}"
        )
    return data


# --- merging -----------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What the files said so far, before defaults are applied."""

    defaults: dict[str, Any] = field(default_factory=dict)
    default_set: list[str] = field(default_factory=list)
    default_set_source: str = PACKAGED_SOURCE
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_sources: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def _merge_file(raw: _Raw, data: dict[str, Any], source: str) -> None:
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
        )
    return Catalogue(
        entries=entries,
        default_set=list(dict.fromkeys(raw.default_set)),
        defaults=dict(raw.defaults),
        sources=list(raw.sources),
    )


def load_catalogue(extra_files: Sequence[str | os.PathLike[str]] = ()) -> Catalogue:
    """The packaged catalogue with each of ``extra_files`` layered over it, in order (later files win)."""
    if isinstance(extra_files, (str, os.PathLike)):
        extra_files = [extra_files]
    raw = _Raw()
    packaged = resources.files("music_flamingo").joinpath("prompts.yaml").read_text(encoding="utf-8")
    _merge_file(raw, _parse_yaml(packaged, PACKAGED_SOURCE), PACKAGED_SOURCE)
    for path in extra_files:
        source = str(path)
        try:
            text = read_regular_file(path, MAX_PROMPTS_BYTES).decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PromptConfigError(f"{source}: cannot read prompt file: {e}") from e
        _merge_file(raw, _parse_yaml(text, source), source)
        logger.debug("prompt file %s layered over the catalogue", source)
    catalogue = _resolve(raw)
    logger.debug(
        "prompt catalogue: %d prompts from %s; default set %s",
        len(catalogue.entries),
        ", ".join(catalogue.sources),
        ",".join(catalogue.default_set),
    )
    return catalogue
