"""One Analyzer over a backend: path -> PCM -> prompts -> texts -> T5-safe text -> sidecar fields.

A *backend* is a model that answers prompts about audio (:class:`Backend`: ``generate``, optionally
``generate_many``/``generate_stream``, ``provenance``, ``close``) — :class:`~music_flamingo.MusicFlamingoGGUF` and
:class:`~music_flamingo.MusicFlamingoTransformers`. :class:`Analyzer` is composed over one and adds what both share:
the prompt catalogue, the length limit, normalisation and the ``music_flamingo_*`` fields, so both write the same
sidecars. Each model class holds its analyzer (``mf.analyzer``) and answers the seed's calls through it
(:class:`AnalyzerCalls`: ``mf.analyze(path)``), so the model itself only generates.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from . import validation
from ._version import __version__
from .audio import TARGET_SAMPLE_RATE, AudioSource, PreparedAudio, prepare_audio
from .datatypes import GenerationResult, GenerationStats, Prompt
from .errors import PromptConfigError
from .prompts import Catalogue, FollowUp, PromptEntry, load_catalogue
from .reasoning import DEFAULT_REASONING_TOKENS, split_reasoning
from .sidecar import read_sidecar, sidecar_path
from .text import normalize_music_flamingo_text

_Model = TypeVar("_Model", bound="AnalyzerCalls")

MODEL_KEY = "music_flamingo_model"
META_KEY = "music_flamingo_meta"
# A think model's reasoning, kept on request (keep_reasoning): one object {description key: reasoning}. An object,
# not more music_flamingo_* strings, so a dataset builder that takes every music_flamingo_* string as a caption
# never takes a reasoning trace for one.
REASONING_KEY = "music_flamingo_reasoning"
# Tokens a filled template may add to its prompt, over the template's own text: room the engine sizes a stream for
# (the pipeline's {genres} and {metadata} fragments together are about 100 tokens).
FILL_ROOM_TOKENS = 256


@dataclass
class AnalysisOptions:
    """What to ask and how: the one list of the analysis options both backends take (as keywords of their
    constructors, or as ``options=``). ``None`` means the catalogue's (or the model's) own value."""

    prompts: Sequence[str] | None = None  # catalogue names; None: the default five
    prompt: str | None = None  # one free-text question (key music_flamingo_custom); alone, only it is asked
    prompts_files: Sequence[str | Path] = ()  # user YAML files layered over the packaged catalogue
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_duration: float | None = None  # seconds analysed at most; None: the model's limit
    normalize: bool = True
    trim_frac: float | None = None  # analyse only the first share of each track, faded out (an excerpt)
    # Follow-up questions (the catalogue's, e.g. the pipeline config's revision prompts) asked after one answer in
    # the same conversation, written as their keys: names; None: every one the catalogue has; (): none.
    followups: Sequence[str] | None = None
    followups_of: str | None = None  # the prompt whose answer they follow; None: "full" if asked, else the first
    # The catch-up pass: only the follow-ups, from the answer a track's sidecar already holds (text only, no audio);
    # only the follow-ups' keys are written.
    catch_up: bool = False
    # Think models (reasoning before the answer): keep the reasoning under REASONING_KEY; the tokens allowed for it
    # beyond each prompt's max_tokens (None: DEFAULT_REASONING_TOKENS). Plain models ignore both.
    keep_reasoning: bool = False
    reasoning_tokens: int | None = None

    def __post_init__(self) -> None:
        """Every value checked here, before a backend loads its model (InvalidInputError, a ValueError)."""
        self.prompts_files = tuple(self.prompts_files)
        for name in ("temperature", "top_p", "seed", "max_duration", "trim_frac"):
            value = getattr(self, name)
            if value is not None:
                validation.require(name, getattr(validation, name)(value))
        if self.prompt is not None:
            validation.require("prompt", validation.prompt_text(self.prompt))
        room, limit = self.reasoning_tokens, validation.MAX_TOKENS_LIMIT
        if room is not None and (not validation.is_int(room) or not 0 <= room <= limit):
            validation.require("reasoning_tokens", f"must be an integer in 0..{limit}, got {room!r}")

    @classmethod
    def of(cls, owner: str, options: AnalysisOptions | None, keywords: Mapping[str, Any]) -> AnalysisOptions:
        """The options a model class was built with: ``options`` (default: all defaults) with ``keywords`` — any
        of the fields above — set over it. Another keyword is the TypeError a misspelled argument gives."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
        return dataclasses.replace(options or cls(), **keywords)

    def catalogue(self) -> Catalogue:
        """The packaged prompt catalogue with ``prompts_files`` layered over it (PromptConfigError if bad)."""
        return load_catalogue(self.prompts_files)

    def asked(self, catalogue: Catalogue | None = None) -> list[PromptEntry]:
        """The entries these options ask, in order (:meth:`.Catalogue.asked`): from the catalogue alone, so the
        dry run and the parents of several engines know a run's sidecar keys without loading a model. The catch-up
        pass asks only the prompt its follow-ups follow."""
        catalogue = catalogue or self.catalogue()
        entries = catalogue.asked(self.prompts, self.prompt)
        return [followups_parent(self, catalogue, entries)] if self.catch_up else entries

    def asked_followups(self, catalogue: Catalogue | None = None) -> list[FollowUp]:
        """The follow-up questions these options ask (PromptConfigError for an unknown name)."""
        catalogue = catalogue or self.catalogue()
        if self.followups is None:
            chosen = list(catalogue.followups.values())
        else:
            unknown = [n for n in self.followups if n not in catalogue.followups]
            if unknown:
                raise PromptConfigError(
                    f"unknown follow-up(s) {', '.join(map(repr, unknown))}; available: "
                    + (
                        ", ".join(catalogue.followups)
                        or "none (add a prompts file with revision prompts, or --summaries)"
                    )
                )
            chosen = [catalogue.followups[n] for n in dict.fromkeys(self.followups)]
        if self.catch_up and not chosen:
            raise PromptConfigError("the catch-up pass needs follow-up questions (none in the prompt catalogue)")
        return chosen

    def keys(self, catalogue: Catalogue | None = None) -> list[str]:
        """The sidecar keys a run writes (a track holding them all is done): the prompts' and the follow-ups'; the
        catch-up pass, the follow-ups' alone."""
        catalogue = catalogue or self.catalogue()
        fkeys = [f.key for f in self.asked_followups(catalogue)]
        return fkeys if self.catch_up else [e.key for e in self.asked(catalogue)] + fkeys


def followups_parent(options: AnalysisOptions, catalogue: Catalogue, entries: Sequence[PromptEntry]) -> PromptEntry:
    """The prompt whose answer the follow-ups continue: ``followups_of``, else ``full`` when asked (the answer the
    pipeline summarises), else the first prompt asked."""
    if options.followups_of is not None:
        return catalogue.select([options.followups_of])[0]
    return next((e for e in entries if e.name == "full"), entries[0])


@dataclass
class TrackAnalysis:
    """One track's answers (by output key), with provenance and timings."""

    descriptions: dict[str, str]
    raw: dict[str, str]
    model_label: str
    meta: dict[str, Any]
    stats: GenerationStats | None = None
    audio: PreparedAudio | None = field(default=None, repr=False)
    prompts: dict[str, str] = field(default_factory=dict)  # the texts as sent, by prompt name (filled per track)
    catch_up: bool = False  # only follow-ups: the sidecar's answer, label and metadata stay as they are
    reasoning: dict[str, str] = field(default_factory=dict)  # a think model's reasoning by key, when kept

    def sidecar_fields(self) -> dict[str, Any]:
        """The keys this package owns in a sidecar: the descriptions, the model label and the metadata (the
        catch-up pass: its follow-ups' keys alone), and a think model's reasoning when it is kept."""
        kept = {REASONING_KEY: self.reasoning} if self.reasoning else {}
        if self.catch_up:
            return {**self.descriptions, **kept}
        return {**self.descriptions, MODEL_KEY: self.model_label, META_KEY: self.meta, **kept}


class Backend(Protocol):
    """What :class:`Analyzer` needs of a model.

    Required: ``model_label`` (the sidecar's ``music_flamingo_model``), ``max_duration_default`` (seconds the model
    was trained for), ``generate(pcm, prompts)`` (float32 mono 16 kHz + :class:`Prompt` list -> texts in prompt
    order and stats), ``provenance()`` (backend, model files, versions: recorded in every sidecar) and ``close()``.
    Optional, used when present: ``generate_many(tracks, tracks_in_flight=...)`` (several tracks decoded together),
    ``generate_stream(audio, prompts, on_result, tracks_in_flight=..., max_audio_seconds=...)`` (continuous
    batching over a stream) and ``analysed_seconds(limit)`` (where audio is cut when the limit is ``limit``).
    """

    model_label: str
    max_duration_default: float

    def generate(self, audio: Any, prompts: Sequence[Prompt]) -> GenerationResult: ...

    def provenance(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Analyzer:
    """Descriptions of tracks from one backend: the catalogue's prompts asked, texts normalised, provenance added.

    ``Analyzer(MusicFlamingoGGUF(...))`` composes a pipeline over a model, as faster-whisper's batched pipeline is
    composed over its model; each model class also holds one (``mf.analyzer``), built from its analysis options.
    The batch runner (:func:`~music_flamingo.batch.run_batch`) takes either.
    """

    def __init__(self, backend: Backend, options: AnalysisOptions | None = None) -> None:
        self.backend = backend
        self.options = options or AnalysisOptions()
        self.catalogue: Catalogue = self.options.catalogue()
        self.entries: list[PromptEntry] = self.options.asked(self.catalogue)
        self.followups: list[FollowUp] = self.options.asked_followups(self.catalogue)
        self._provenance: dict[str, Any] | None = None

    @property
    def model_label(self) -> str:
        return self.backend.model_label

    @property
    def max_duration(self) -> float:
        limit = self.options.max_duration
        return limit if limit is not None else self.backend.max_duration_default

    def max_analysed_seconds(self) -> float:
        """Where audio is cut before it reaches the model (a backend may stay just short of ``max_duration``)."""
        cut = getattr(self.backend, "analysed_seconds", None)
        return cut(self.max_duration) if cut is not None else self.max_duration

    @property
    def reasoning(self) -> str | None:
        """ "think" when the backend's model writes reasoning before its answers (a think variant), else None."""
        return getattr(self.backend, "reasoning", None)

    @property
    def reasoning_tokens(self) -> int:
        """Tokens each prompt gets for the reasoning beyond its own max_tokens: 0 for a plain model."""
        if not self.reasoning:
            return 0
        room = self.options.reasoning_tokens
        return DEFAULT_REASONING_TOKENS if room is None else room

    def provenance(self) -> dict[str, Any]:
        """The backend's provenance, computed once (it hashes the model files)."""
        if self._provenance is None:
            self._provenance = self.backend.provenance()
        return self._provenance

    def use_prompts(self, names: Sequence[str] | None = None, free_text: str | None = None) -> list[PromptEntry]:
        """Choose what later calls ask (:meth:`.Catalogue.asked`): catalogue ``names`` (None: the default set) and/or
        one free-text question, written to ``music_flamingo_custom``."""
        entries = self.catalogue.asked(names, free_text)
        self.options = dataclasses.replace(self.options, prompts=names, prompt=free_text)
        self.entries = entries
        return entries

    def entries_for(self, prompt_type: str | Sequence[str] | None) -> list[PromptEntry]:
        if prompt_type is None:
            return self.entries
        return self.catalogue.select([prompt_type] if isinstance(prompt_type, str) else list(prompt_type))

    def to_prompts(self, entries: Sequence[PromptEntry], texts: Sequence[str] | None = None) -> list[Prompt]:
        """The engine's prompts of ``entries``, with ``texts`` as filled for one track (default: as written); the
        follow-ups ride on the prompt whose answer they follow (:attr:`Prompt.followups`)."""
        o = self.options
        texts = texts if texts is not None else [None] * len(entries)
        prompts = [
            e.to_prompt(temperature=o.temperature, top_p=o.top_p, seed=o.seed, text=t) for e, t in zip(entries, texts)
        ]
        at = self.followups_index(entries)
        if at is not None:
            asked = tuple(self._with_room(followup_prompt(f, o)) for f in self.followups)
            prompts[at] = dataclasses.replace(prompts[at], followups=asked)
        return [self._with_room(p) for p in prompts]

    def _with_room(self, prompt: Prompt) -> Prompt:
        """``prompt`` with room for a think model's reasoning before the answer (its max_tokens stays the
        answer's)."""
        room = self.reasoning_tokens
        if not room:
            return prompt
        return dataclasses.replace(prompt, max_tokens=min(prompt.max_tokens + room, validation.MAX_TOKENS_LIMIT))

    def followups_index(self, entries: Sequence[PromptEntry]) -> int | None:
        """Where in ``entries`` the prompt the follow-ups follow is; None: no follow-ups, or that prompt not there."""
        if not self.followups or not entries:
            return None
        parent = followups_parent(self.options, self.catalogue, self.entries or entries)
        return next((i for i, e in enumerate(entries) if e.name == parent.name), None)

    def keys(self) -> list[str]:
        """The sidecar keys this analyzer writes (a track holding them all is done; :meth:`AnalysisOptions.keys`)."""
        fkeys = [f.key for f in self.followups]
        return fkeys if self.options.catch_up else [e.key for e in self.entries] + fkeys

    @property
    def templated(self) -> bool:
        """Whether what is asked is filled per track from its sidecar (:mod:`.templates`)."""
        return self.catalogue.templated(self.entries)

    def track_prompts(
        self, info: Mapping[str, Any] | None, file: str = "", entries: Sequence[PromptEntry] | None = None
    ) -> list[Prompt]:
        """The prompts asked of one track whose sidecar holds ``info``: templates filled (PromptConfigError when
        a template cannot be filled for this track's values)."""
        entries = self.entries if entries is None else entries
        return self.to_prompts(entries, [e.fill(info, file) for e in entries])

    def prompts_for_file(self, path: str | Path, entries: Sequence[PromptEntry] | None = None) -> list[Prompt] | None:
        """:meth:`track_prompts` for an audio file, from its sidecar; None when nothing asked is a template (every
        track gets the same prompts). A damaged sidecar is the SidecarError of :func:`.sidecar.read_sidecar`."""
        entries = self.entries if entries is None else entries
        if self.options.catch_up:
            return self.catch_up_prompts(read_sidecar(sidecar_path(path)), Path(path).name)
        if not self.catalogue.templated(entries):
            return None
        return self.track_prompts(read_sidecar(sidecar_path(path)), Path(path).name, entries)

    def catch_up_prompts(self, info: Mapping[str, Any] | None, file: str = "") -> list[Prompt]:
        """The catch-up pass for a track whose sidecar holds ``info``: the answer it already has fed as the model's
        turn, the follow-ups asked after it. [] when the sidecar holds no such answer (nothing to catch up)."""
        (parent,) = self.entries
        answer = (info or {}).get(parent.key)
        if not isinstance(answer, str) or not answer.strip():
            return []
        (prompt,) = self.track_prompts(info, file, [parent])
        return [dataclasses.replace(prompt, answer=answer)]

    def _own(self, prompts: Sequence[Prompt] | None) -> list[Prompt]:
        """A track's prompts: those given (filled from its sidecar), else the catalogue's as written — templates
        with their fallbacks (no sidecar values)."""
        if prompts is not None:
            return list(prompts)
        return self.track_prompts({}) if self.templated else self.to_prompts(self.entries)

    def prepare(self, audio: AudioSource, sample_rate: int | None = None, name: str | None = None) -> PreparedAudio:
        """One track's audio as the model gets it: decoded, cut at the length limit, an excerpt with
        ``trim_frac``."""
        if self.options.catch_up:  # text only: the audio is not needed, nor decoded
            return PreparedAudio(np.zeros(0, np.float32), 0.0, 0.0, False)
        if name is None:
            name = str(audio) if not hasattr(audio, "shape") else "audio array"
        return prepare_audio(
            audio, sample_rate, self.max_analysed_seconds(), name=name, trim_frac=self.options.trim_frac
        )

    def analyze(
        self, audio: AudioSource, sample_rate: int | None = None, prompt_type: str | None = None
    ) -> dict[str, str] | str:
        """Describe one track. Without ``prompt_type``: a dict of the selected keys (by default the five
        ``music_flamingo_*`` descriptions). With ``prompt_type='full'`` (any catalogue name): that one text."""
        entries = self.entries_for(prompt_type)
        result = self.analyze_track(audio, sample_rate, entries, with_provenance=False)
        if prompt_type is not None:
            return result.descriptions[entries[0].key]
        return result.descriptions

    def analyze_track(
        self,
        audio: AudioSource,
        sample_rate: int | None = None,
        entries: Sequence[PromptEntry] | None = None,
        *,
        with_provenance: bool = True,
        prepared: PreparedAudio | None = None,
    ) -> TrackAnalysis:
        """Everything about one track: descriptions by key, raw texts, provenance metadata and timings."""
        entries = list(entries) if entries is not None else self.entries
        if prepared is None:
            prepared = self.prepare(audio, sample_rate)
        prompts = None
        if isinstance(audio, (str, os.PathLike)):  # a file: templates are filled from its sidecar
            prompts = self.prompts_for_file(audio, entries)
        if prompts is None:
            prompts = self.track_prompts({}, entries=entries)  # an array: every template's fallback
        result = self.backend.generate(prepared.pcm, prompts)
        return self._analysis(entries, prompts, prepared, result, with_provenance)

    def analyze_many(
        self,
        prepared: Sequence[PreparedAudio],
        tracks_in_flight: int | str = "auto",
        prompts: Sequence[Sequence[Prompt] | None] | None = None,
    ) -> list[TrackAnalysis]:
        """Several decoded tracks with the current prompts, decoded together where the backend can
        (``generate_many``: continuous batching on the GGUF engine). ``prompts``: each track's own (filled from
        its sidecar, :meth:`prompts_for_file`; None: the shared ones). Results in order; one bad track fails the
        call (the batch runner then retries the tracks one by one)."""
        entries = self.entries
        per_track = [self._own(p) for p in (prompts or [None] * len(prepared))]
        many = getattr(self.backend, "generate_many", None)
        if many is not None:
            results = many([(a.pcm, p) for a, p in zip(prepared, per_track)], tracks_in_flight=tracks_in_flight)
        else:
            results = [self.backend.generate(a.pcm, p) for a, p in zip(prepared, per_track)]
        return [self._analysis(entries, p, a, r, True) for a, p, r in zip(prepared, per_track, results)]

    def analyze_stream(
        self,
        items: Iterable[tuple[Hashable, PreparedAudio] | tuple[Hashable, PreparedAudio, Sequence[Prompt] | None]],
        on_result: Callable[[Hashable, TrackAnalysis | Exception], None],
        tracks_in_flight: int | str = "auto",
    ) -> None:
        """Describe decoded tracks as they come, each reported as it finishes: ``on_result(key, analysis)`` or
        ``on_result(key, exception)`` for a track that failed alone. ``items`` may be a generator (the batch runner
        locks and decodes tracks inside it); an item may carry the track's own prompts (filled from its sidecar,
        :meth:`prompts_for_file`) as a third element. A backend with ``generate_stream`` (GGUF) keeps up to
        ``tracks_in_flight`` tracks decoding together, whatever their prompts, and pulls the next item as soon as
        one finishes, on its helper thread; results then arrive in the order tracks finish. Otherwise one track at a
        time."""
        entries, templated = self.entries, self.templated
        stream = getattr(self.backend, "generate_stream", None)
        if stream is None:
            for key, prepared, own in map(_with_prompts, items):
                try:
                    prompts = self._own(own)
                    result = self.backend.generate(prepared.pcm, prompts)
                    analysis = self._analysis(entries, prompts, prepared, result, True)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # one bad track never stops the stream
                    on_result(key, e)
                    continue
                on_result(key, analysis)
            return

        # in the order the backend took them (its index): key, audio, prompts
        taken: list[tuple[Hashable, PreparedAudio, list[Prompt]] | None] = []

        def audio():
            for key, prepared, own in map(_with_prompts, items):
                try:
                    prompts = self._own(own)
                except PromptConfigError as e:  # a template that cannot take this track's values: it fails alone
                    on_result(key, e)
                    continue
                taken.append((key, prepared, prompts))
                yield (prepared.pcm, prompts) if own is not None or templated else prepared.pcm

        def done(index: int, result: GenerationResult | Exception) -> None:
            key, prepared, prompts = taken[index]
            taken[index] = None  # the audio is no longer needed
            if not isinstance(result, Exception):
                try:
                    result = self._analysis(entries, prompts, prepared, result, True)
                except Exception as e:  # a think model's answer cut inside its reasoning: this track fails alone
                    result = e
            on_result(key, result)

        # Filled texts are longer than their templates: the run is sized with room for what fills them (a track
        # that still does not fit fails alone, in the engine).
        plain = self.to_prompts(entries)  # the texts as written
        sizing = [dataclasses.replace(p, max_tokens=p.max_tokens + FILL_ROOM_TOKENS) for p in plain]
        stream(
            audio(),
            sizing if templated else plain,
            done,
            tracks_in_flight=tracks_in_flight,
            max_audio_seconds=self.max_analysed_seconds(),
        )

    def _analysis(
        self,
        entries: Sequence[PromptEntry],
        prompts: Sequence[Prompt],
        prepared: PreparedAudio,
        result: GenerationResult,
        with_provenance: bool,
    ) -> TrackAnalysis:
        """Texts by key -> T5-safe descriptions + provenance."""
        catch_up = self.options.catch_up
        raw = {} if catch_up else {e.key: t for e, t in zip(entries, result.texts)}
        at = self.followups_index(entries)
        if at is not None:  # the follow-ups' answers, by their keys
            raw.update({f.key: a.text for f, a in zip(self.followups, result.followups[at])})
        answers, reasoning = self._answers(raw)
        clean = {k: normalize_music_flamingo_text(t) if self.options.normalize else t for k, t in answers.items()}
        meta = self.track_meta(entries, prompts, prepared) if with_provenance and not catch_up else {}
        asked = {e.name: p.text for e, p in zip(entries, prompts)}
        asked.update({f.name: f.text for p in prompts for f in p.followups})
        return TrackAnalysis(
            descriptions=clean,
            raw=raw,
            model_label=self.model_label,
            meta=meta,
            stats=result.stats,
            audio=prepared,
            prompts=asked,
            catch_up=catch_up,
            reasoning=reasoning if self.options.keep_reasoning else {},
        )

    def _answers(self, raw: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """A think model's texts split into answers and reasoning by key (ReasoningCutError when one ended inside
        its reasoning: nothing of the track is written); a plain model's texts are the answers."""
        if not self.reasoning:
            return raw, {}
        opened = bool(getattr(self.backend, "reasoning_opened", False))
        split = {k: split_reasoning(t, opened) for k, t in raw.items()}
        return {k: s.answer for k, s in split.items()}, {k: s.reasoning for k, s in split.items() if s.reasoning}

    def track_meta(
        self, entries: Sequence[PromptEntry], prompts: Sequence[Prompt], prepared: PreparedAudio
    ) -> dict[str, Any]:
        return {
            **self.provenance(),
            "package_version": __version__,
            "prompts": [e.name for e in entries],
            **({"followups": [f.name for f in self.followups]} if self.followups_index(entries) is not None else {}),
            "prompts_hash": self.catalogue.texts_hash(entries),
            "sampling": {
                p.name: {
                    "temperature": p.temperature,
                    "top_p": p.top_p,
                    "top_k": p.top_k,
                    "repeat_penalty": p.repeat_penalty,
                    "seed": p.seed,
                    "max_tokens": p.max_tokens,
                }
                for p in prompts
            },
            **({"reasoning": self.reasoning, "reasoning_tokens": self.reasoning_tokens} if self.reasoning else {}),
            "seconds_analysed": round(prepared.analysed_seconds, 3),
            "source_seconds": round(prepared.source_seconds, 3),
            "truncated": prepared.truncated,
            **_excerpt_meta(prepared),
            **_filled_meta(entries, prompts),
            "sample_rate": TARGET_SAMPLE_RATE,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def close(self) -> None:
        """Close the backend (free its model now rather than at garbage collection)."""
        self.backend.close()

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_prompts(item: tuple[Any, ...]) -> tuple[Hashable, PreparedAudio, Sequence[Prompt] | None]:
    """A stream item as (key, audio, its own prompts or None)."""
    return (item[0], item[1], item[2] if len(item) > 2 else None)


def _excerpt_meta(prepared: PreparedAudio) -> dict[str, Any]:
    """What the sidecar says of an excerpt (``trim_frac``): the span analysed (seconds from the start of the track)
    and the fade before its cut. Nothing for a whole track."""
    if prepared.trim_frac is None:
        return {}
    return {
        "trim_frac": prepared.trim_frac,
        "span_analysed": [0.0, round(prepared.analysed_seconds, 3)],
        "fade_out_seconds": round(prepared.fade_seconds, 3),
    }


def _filled_meta(entries: Sequence[PromptEntry], prompts: Sequence[Prompt]) -> dict[str, Any]:
    """The texts of the prompts filled for this track (templates), by name, so a caption's question can be read
    back; prompts sent as written are identified by ``prompts_hash`` alone."""
    filled = {e.name: p.text for e, p in zip(entries, prompts) if e.template is not None}
    return {"prompts_filled": filled} if filled else {}


def as_analyzer(obj: Analyzer | AnalyzerCalls) -> Analyzer:
    """An :class:`Analyzer`, or the one a model class holds (``run_batch(mf, ...)`` and ``run_batch(an, ...)``
    both work)."""
    return obj if isinstance(obj, Analyzer) else obj.analyzer


class AnalyzerCalls:
    """The description calls of a model class, answered by the :class:`Analyzer` it holds (``self.analyzer``), so
    the seed's ``MusicFlamingoGGUF(model_name='Q6_K').analyze('track.flac')`` keeps working while the model itself
    only generates. Also the context-manager methods (``close()`` is the model's own)."""

    analyzer: Analyzer

    def close(self) -> None:
        raise NotImplementedError

    @property
    def options(self) -> AnalysisOptions:
        return self.analyzer.options

    @property
    def catalogue(self) -> Catalogue:
        return self.analyzer.catalogue

    @property
    def entries(self) -> list[PromptEntry]:
        """What :meth:`analyze` asks (change it with :meth:`use_prompts`)."""
        return self.analyzer.entries

    def use_prompts(self, names: Sequence[str] | None = None, free_text: str | None = None) -> list[PromptEntry]:
        """See :meth:`Analyzer.use_prompts`."""
        return self.analyzer.use_prompts(names, free_text)

    def analyze(
        self, audio: AudioSource, sample_rate: int | None = None, prompt_type: str | None = None
    ) -> dict[str, str] | str:
        """See :meth:`Analyzer.analyze`."""
        return self.analyzer.analyze(audio, sample_rate, prompt_type)

    def analyze_track(self, *args: Any, **kwargs: Any) -> TrackAnalysis:
        """:meth:`Analyzer.analyze_track` (the same arguments): descriptions, raw texts, provenance, timings."""
        return self.analyzer.analyze_track(*args, **kwargs)

    def __enter__(self: _Model) -> _Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def followup_prompt(f: FollowUp, o: AnalysisOptions) -> Prompt:
    """The engine's :class:`Prompt` of a follow-up question: its own temperature (the pipeline's revision
    temperature) when it has one, else the run's (greedy by default)."""
    temperature = f.temperature if f.temperature is not None else o.temperature
    return Prompt(
        f.text,
        max_tokens=f.max_tokens,
        temperature=0.0 if temperature is None else float(temperature),
        top_p=1.0 if o.top_p is None else float(o.top_p),
        seed=0 if o.seed is None else int(o.seed),
        name=f.name,
    )
