"""What every backend does around its engine: path -> PCM -> prompts -> texts -> T5-safe text -> sidecar fields.

A backend supplies ``_generate`` (PCM + prompts -> raw texts) and its provenance; :class:`Analyzer` adds the prompt
catalogue, the length limit, normalisation and the ``music_flamingo_*`` fields, so both backends write the same
sidecars.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import validation
from ._version import __version__
from .audio import TARGET_SAMPLE_RATE, AudioSource, PreparedAudio, prepare_audio
from .datatypes import GenerationStats, Prompt
from .prompts import Catalogue, PromptEntry, load_catalogue
from .text import normalize_music_flamingo_text

MODEL_KEY = "music_flamingo_model"
META_KEY = "music_flamingo_meta"


@dataclass
class AnalysisOptions:
    """What to ask and how. ``None`` means the catalogue's (or the model's) own value."""

    prompts: Sequence[str] | None = None  # catalogue names; None: the default five
    prompts_files: Sequence[str | Path] = ()  # user YAML files layered over the packaged catalogue
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_duration: float | None = None  # seconds analysed at most; None: the model's limit
    normalize: bool = True

    def __post_init__(self) -> None:
        """Every value checked here, before a backend loads its model (InvalidInputError, a ValueError)."""
        for name in ("temperature", "top_p", "seed", "max_duration"):
            value = getattr(self, name)
            if value is not None:
                validation.require(name, getattr(validation, name)(value))


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


class Analyzer:
    """Base of the backends. Subclasses implement :meth:`_generate`, :meth:`_provenance` and set
    ``backend``, ``model_label`` and ``max_duration_default``."""

    backend = "base"
    model_label = "unknown"
    max_duration_default: float = 600.0  # AF3 architecture: 20 windows of 30 s

    def __init__(self, options: AnalysisOptions | None = None) -> None:
        self.options = options or AnalysisOptions()
        self.catalogue: Catalogue = load_catalogue(self.options.prompts_files)
        self.entries: list[PromptEntry] = self.catalogue.select(self.options.prompts)
        self._provenance_cache: dict[str, Any] | None = None

    # --- to implement -------------------------------------------------------------------------------------
    def _generate(self, pcm, prompts: list[Prompt]) -> tuple[list[str], GenerationStats | None]:
        raise NotImplementedError

    def _generate_many(
        self, pcms: Sequence[Any], prompts: list[Prompt], tracks_in_flight: int
    ) -> list[tuple[list[str], GenerationStats | None]]:
        """Several tracks with the same prompts. Backends that can decode tracks together override this."""
        return [self._generate(pcm, prompts) for pcm in pcms]

    def _provenance(self) -> dict[str, Any]:
        """Backend, model files and their hashes, library versions (computed once, see :meth:`provenance`)."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------------
    @property
    def max_duration(self) -> float:
        return self.options.max_duration if self.options.max_duration is not None else self.max_duration_default

    def max_analysed_seconds(self) -> float:
        """Where audio is cut before it reaches the engine (backends may stay just short of max_duration)."""
        return self.max_duration

    def provenance(self) -> dict[str, Any]:
        if self._provenance_cache is None:
            self._provenance_cache = self._provenance()
        return self._provenance_cache

    def use_prompts(self, names: Sequence[str] | None = None, free_text: str | None = None) -> list[PromptEntry]:
        """Choose what later calls ask (:meth:`.Catalogue.asked`): catalogue ``names`` (None: the default set) and/or
        one free-text question, written to ``music_flamingo_custom``."""
        self.entries = self.catalogue.asked(names, free_text)
        return self.entries

    def entries_for(self, prompt_type: str | Sequence[str] | None) -> list[PromptEntry]:
        if prompt_type is None:
            return self.entries
        return self.catalogue.select([prompt_type] if isinstance(prompt_type, str) else list(prompt_type))

    def to_prompts(self, entries: Sequence[PromptEntry]) -> list[Prompt]:
        o = self.options
        return [e.to_prompt(temperature=o.temperature, top_p=o.top_p, seed=o.seed) for e in entries]

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
        texts, stats = self._generate(prepared.pcm, prompts)
        return self._analysis(entries, prompts, prepared, texts, stats, with_provenance)

    def analyze_many(
        self, prepared: Sequence[PreparedAudio], tracks_in_flight: int | str = "auto"
    ) -> list[TrackAnalysis]:
        """Several decoded tracks with the current prompts, decoded together where the backend can (continuous
        batching on the GGUF engine). Results in order; one bad track fails the call (the batch runner then
        retries the tracks one by one)."""
        entries = self.entries
        prompts = self.to_prompts(entries)
        outs = self._generate_many([p.pcm for p in prepared], prompts, tracks_in_flight)
        return [
            self._analysis(entries, prompts, audio, texts, stats, True) for audio, (texts, stats) in zip(prepared, outs)
        ]

    def analyze_stream(
        self,
        items: Iterable[tuple[Hashable, PreparedAudio]],
        on_result: Callable[[Hashable, TrackAnalysis | Exception], None],
        tracks_in_flight: int | str = "auto",
    ) -> None:
        """Describe decoded tracks as they come, each reported as it finishes: ``on_result(key, analysis)`` or
        ``on_result(key, exception)`` for a track that failed alone. ``items`` may be a generator (the batch runner
        locks and decodes tracks inside it). This base version takes one track at a time; the GGUF backend keeps
        up to ``tracks_in_flight`` tracks decoding together and pulls the next as soon as one finishes."""
        for key, prepared in items:
            try:
                result = self.analyze_track(key, prepared=prepared)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one bad track never stops the stream
                on_result(key, e)
                continue
            on_result(key, result)

    def _analysis(
        self,
        entries: Sequence[PromptEntry],
        prompts: Sequence[Prompt],
        prepared: PreparedAudio,
        texts: Sequence[str],
        stats: GenerationStats | None,
        with_provenance: bool,
    ) -> TrackAnalysis:
        """Texts by key -> T5-safe descriptions + provenance."""
        raw = {e.key: t for e, t in zip(entries, texts)}
        clean = {k: normalize_music_flamingo_text(t) if self.options.normalize else t for k, t in raw.items()}
        meta = self.track_meta(entries, prompts, prepared) if with_provenance else {}
        return TrackAnalysis(
            descriptions=clean, raw=raw, model_label=self.model_label, meta=meta, stats=stats, audio=prepared
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
