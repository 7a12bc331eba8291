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
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import validation
from ._version import __version__
from .audio import TARGET_SAMPLE_RATE, AudioSource, PreparedAudio, prepare_audio
from .datatypes import GenerationResult, GenerationStats, Prompt
from .prompts import Catalogue, PromptEntry, load_catalogue
from .text import normalize_music_flamingo_text

_Model = TypeVar("_Model", bound="AnalyzerCalls")

MODEL_KEY = "music_flamingo_model"
META_KEY = "music_flamingo_meta"


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

    def __post_init__(self) -> None:
        """Every value checked here, before a backend loads its model (InvalidInputError, a ValueError)."""
        self.prompts_files = tuple(self.prompts_files)
        for name in ("temperature", "top_p", "seed", "max_duration"):
            value = getattr(self, name)
            if value is not None:
                validation.require(name, getattr(validation, name)(value))
        if self.prompt is not None:
            validation.require("prompt", validation.prompt_text(self.prompt))

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
        dry run and the parents of several engines know a run's sidecar keys without loading a model."""
        return (catalogue or self.catalogue()).asked(self.prompts, self.prompt)


@dataclass
class TrackAnalysis:
    """One track's answers (by output key), with provenance and timings."""

    descriptions: dict[str, str]
    raw: dict[str, str]
    model_label: str
    meta: dict[str, Any]
    stats: GenerationStats | None = None
    audio: PreparedAudio | None = field(default=None, repr=False)

    def sidecar_fields(self) -> dict[str, Any]:
        """The keys this package owns in a sidecar: the descriptions, the model label and the metadata."""
        return {**self.descriptions, MODEL_KEY: self.model_label, META_KEY: self.meta}


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

    def to_prompts(self, entries: Sequence[PromptEntry]) -> list[Prompt]:
        o = self.options
        return [e.to_prompt(temperature=o.temperature, top_p=o.top_p, seed=o.seed) for e in entries]

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
        name = str(audio) if not hasattr(audio, "shape") else "audio array"
        if prepared is None:
            prepared = prepare_audio(audio, sample_rate, self.max_analysed_seconds(), name=name)
        prompts = self.to_prompts(entries)
        result = self.backend.generate(prepared.pcm, prompts)
        return self._analysis(entries, prompts, prepared, result, with_provenance)

    def analyze_many(
        self, prepared: Sequence[PreparedAudio], tracks_in_flight: int | str = "auto"
    ) -> list[TrackAnalysis]:
        """Several decoded tracks with the current prompts, decoded together where the backend can
        (``generate_many``: continuous batching on the GGUF engine). Results in order; one bad track fails the call
        (the batch runner then retries the tracks one by one)."""
        entries = self.entries
        prompts = self.to_prompts(entries)
        many = getattr(self.backend, "generate_many", None)
        if many is not None:
            results = many([(p.pcm, prompts) for p in prepared], tracks_in_flight=tracks_in_flight)
        else:
            results = [self.backend.generate(p.pcm, prompts) for p in prepared]
        return [self._analysis(entries, prompts, audio, r, True) for audio, r in zip(prepared, results)]

    def analyze_stream(
        self,
        items: Iterable[tuple[Hashable, PreparedAudio]],
        on_result: Callable[[Hashable, TrackAnalysis | Exception], None],
        tracks_in_flight: int | str = "auto",
    ) -> None:
        """Describe decoded tracks as they come, each reported as it finishes: ``on_result(key, analysis)`` or
        ``on_result(key, exception)`` for a track that failed alone. ``items`` may be a generator (the batch runner
        locks and decodes tracks inside it). A backend with ``generate_stream`` (GGUF) keeps up to
        ``tracks_in_flight`` tracks decoding together and pulls the next item as soon as one finishes, on its helper
        thread; results then arrive in the order tracks finish. Otherwise one track at a time."""
        entries = self.entries
        prompts = self.to_prompts(entries)
        stream = getattr(self.backend, "generate_stream", None)
        if stream is None:
            for key, prepared in items:
                try:
                    result = self.backend.generate(prepared.pcm, prompts)
                    analysis = self._analysis(entries, prompts, prepared, result, True)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # one bad track never stops the stream
                    on_result(key, e)
                    continue
                on_result(key, analysis)
            return

        taken: list[tuple[Hashable, PreparedAudio] | None] = []  # in the order the backend took them: its index

        def audio():
            for key, prepared in items:
                taken.append((key, prepared))
                yield prepared.pcm

        def done(index: int, result: GenerationResult | Exception) -> None:
            key, prepared = taken[index]
            taken[index] = None  # the audio is no longer needed
            if isinstance(result, Exception):
                on_result(key, result)
            else:
                on_result(key, self._analysis(entries, prompts, prepared, result, True))

        stream(audio(), prompts, done, tracks_in_flight=tracks_in_flight, max_audio_seconds=self.max_analysed_seconds())

    def _analysis(
        self,
        entries: Sequence[PromptEntry],
        prompts: Sequence[Prompt],
        prepared: PreparedAudio,
        result: GenerationResult,
        with_provenance: bool,
    ) -> TrackAnalysis:
        """Texts by key -> T5-safe descriptions + provenance."""
        raw = {e.key: t for e, t in zip(entries, result.texts)}
        clean = {k: normalize_music_flamingo_text(t) if self.options.normalize else t for k, t in raw.items()}
        meta = self.track_meta(entries, prompts, prepared) if with_provenance else {}
        return TrackAnalysis(
            descriptions=clean, raw=raw, model_label=self.model_label, meta=meta, stats=result.stats, audio=prepared
        )

    def track_meta(
        self, entries: Sequence[PromptEntry], prompts: Sequence[Prompt], prepared: PreparedAudio
    ) -> dict[str, Any]:
        return {
            **self.provenance(),
            "package_version": __version__,
            "prompts": [e.name for e in entries],
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
            "seconds_analysed": round(prepared.analysed_seconds, 3),
            "source_seconds": round(prepared.source_seconds, 3),
            "truncated": prepared.truncated,
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
