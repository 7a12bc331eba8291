"""Many machines: the batch runner on Ray Data (``pip install 'music-flamingo[ray]'``; CLI ``--batch --ray``).

Offline batch inference with one resident model per GPU is what Ray Data's ``map_batches`` with a callable class
does (vLLM's and NeMo Curator's batch paths run on it): the class's constructor loads the model once per actor, and
each call handles a batch of rows. Here:

* :func:`track_dataset` — rows ``{"path": <bytes of the file name>}`` of the tracks a local run would describe:
  the same discovery, selection and sidecar checks (:func:`~music_flamingo.batch.plan_batch`), done on the driver;
* :class:`TrackDescriber` — the callable class. One engine per actor; each call runs the local runner
  (:func:`~music_flamingo.batch.run_batch` with ``tracks=``) over its batch, so sidecars are written exactly as by
  one process — the same per-track locks, atomic merge, provenance and failures file, continuous batching within
  the batch — and returns one row per track (:func:`row_schema`: path, status, error, timings, the texts);
* :func:`describe` — that class in ``map_batches`` with the resources it needs
  (``compute=ActorPoolStrategy(size=n)``, ``num_gpus``); the rows go to any of Ray's writers;
* :func:`describe_with_ray` — the common case in one call: connect, plan, describe, write the rows as Parquet,
  count.

Every node must see the dataset and the model files at the same paths (a shared filesystem whose file locks work
across machines: NFSv4, CephFS, Lustre mounted with ``flock``): sidecars are written next to the audio, and the
actors never download models (the driver fetches missing ones once, before any actor starts).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._logging import logger
from .analyzer import AnalysisOptions, Analyzer, AnalyzerCalls, as_analyzer
from .batch import BatchOptions, BatchSummary, TrackOutcome, failures_path, plan_work, run_batch
from .models import DEFAULT_MODEL

# A factory the actors call to build their engine, or MusicFlamingoGGUF's keyword arguments.
AnalyzerSpec = Callable[[], Analyzer | AnalyzerCalls] | Mapping[str, Any]
TIMINGS = ("audio_seconds", "encode_ms", "prefill_ms", "decode_ms", "total_ms")
SUMMARY_COLUMNS = ["path", "status", "error", "message"]
NOT_REPORTED = "NotReported"


def row_schema(keys: Sequence[str]):
    """The rows :class:`TrackDescriber` returns: ``path`` (UTF-8; bytes that are not are shown as ``\\xNN``),
    ``status`` (``done``, ``failed``, ``skipped_locked``, ``skipped_complete``), ``error`` and ``message`` (failed),
    ``model`` (the ``music_flamingo_model`` label), the engine's timings, the tokens generated, and one text
    column per description key (null unless done)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("message", pa.string()),
            ("model", pa.string()),
            *[(name, pa.float64()) for name in TIMINGS],
            ("tokens_generated", pa.int64()),
            *[(key, pa.string()) for key in keys],
        ]
    )


def _shown(path: str | os.PathLike) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _row(o: TrackOutcome, keys: Sequence[str]) -> dict[str, Any]:
    fields = o.fields or {}
    stats = o.stats
    return {
        "path": _shown(o.path),
        "status": o.status,
        "error": o.error,
        "message": o.message,
        "model": fields.get("music_flamingo_model"),
        **{name: (getattr(stats, name) if stats is not None else None) for name in TIMINGS},
        "tokens_generated": stats.tokens_generated if stats is not None else None,
        **{key: fields.get(key) for key in keys},
    }


def _build(analyzer: AnalyzerSpec) -> Analyzer:
    if callable(analyzer):
        return as_analyzer(analyzer())
    from .gguf_backend import MusicFlamingoGGUF

    return MusicFlamingoGGUF(**dict(analyzer)).analyzer


def keys_of(analyzer: AnalyzerSpec) -> list[str]:
    """The sidecar keys an engine built from MusicFlamingoGGUF keyword arguments writes (its ``prompts`` and
    ``prompts_files``), read from the prompt catalogue without loading a model."""
    if callable(analyzer):
        raise ValueError("give keys= with an analyzer factory (the sidecar keys its prompts write)")
    fields = {f.name for f in dataclasses.fields(AnalysisOptions)}
    chosen = {k: v for k, v in analyzer.items() if k in fields}
    return [e.key for e in AnalysisOptions.of("MusicFlamingoGGUF", analyzer.get("options"), chosen).asked()]


class TrackDescriber:
    """Ray Data callable class: one resident engine per actor, the local runner per batch of rows.

    ``root`` is the dataset folder (where ``.music-flamingo/`` keeps the locks and the failures file);
    ``analyzer`` builds the engine (a zero-argument callable, or MusicFlamingoGGUF's keyword arguments);
    ``options`` are the local runner's (overwrite, sidecars, manifest, failures file, tracks in flight).
    ``visibility``: device-visibility variables to set from the GPUs Ray gave this actor when Ray does not set
    them itself (Ray sets CUDA_VISIBLE_DEVICES and HIP_VISIBLE_DEVICES; a Vulkan build needs
    GGML_VK_VISIBLE_DEVICES), before the engine loads.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        analyzer: AnalyzerSpec,
        options: BatchOptions | None = None,
        visibility: Sequence[str] = (),
    ) -> None:
        _claim_gpus(visibility)
        self.root = Path(root)
        self.options = dataclasses.replace(options or BatchOptions(), progress=False)
        self.analyzer = _build(analyzer)
        self.keys = [e.key for e in self.analyzer.entries]

    def __call__(self, batch):
        """A pyarrow batch with a ``path`` column (bytes or text) -> one row per path (:func:`row_schema`)."""
        import pyarrow as pa

        paths = [os.fsdecode(p) for p in batch.column("path").to_pylist()]
        outcomes: dict[str, TrackOutcome] = {}
        summary = run_batch(
            self.analyzer,
            self.root,
            self.options,
            tracks=paths,
            on_track=lambda o: outcomes.__setitem__(str(o.path), o),
        )
        if summary.interrupted:  # cancelled: let Ray see it rather than return rows for tracks never tried
            raise KeyboardInterrupt
        rows = [
            _row(outcomes.get(p) or TrackOutcome(Path(p), "failed", NOT_REPORTED, "no outcome reported"), self.keys)
            for p in paths
        ]
        return pa.Table.from_pylist(rows, schema=row_schema(self.keys))


def _claim_gpus(variables: Sequence[str]) -> None:
    missing = [v for v in variables if not os.environ.get(v)]
    if not missing:
        return
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    if ids:
        for var in missing:
            os.environ[var] = ",".join(ids)


def track_dataset(tracks: Sequence[str | os.PathLike]):
    """A Ray dataset of ``tracks``, one row each: ``{"path": <the file name's bytes>}`` (bytes, so that any file
    name travels exactly). The tracks a local run would describe are
    ``plan_work(root, keys, options, BatchSummary())`` (:func:`~music_flamingo.batch.plan_work`)."""
    import ray.data

    return ray.data.from_items([{"path": os.fsencode(p)} for p in tracks])


def describe(
    ds,
    root: str | os.PathLike,
    analyzer: AnalyzerSpec,
    *,
    options: BatchOptions | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    batch_size: int = 16,
    visibility: Sequence[str] = (),
):
    """``ds`` (rows with a ``path``) described by a fixed pool of ``actors`` :class:`TrackDescriber` actors, each
    with ``gpus_per_actor`` GPUs and ``cpus_per_actor`` CPUs, ``batch_size`` tracks per call (the engine's
    continuous batching works within a call). Lazy, like every Ray dataset: write it or iterate it to run it."""
    import ray.data

    return ds.map_batches(
        TrackDescriber,
        fn_constructor_kwargs={
            "root": str(root),
            "analyzer": analyzer,
            "options": options,
            "visibility": tuple(visibility),
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor or None,
        num_cpus=cpus_per_actor,
    )


@dataclass
class RaySummary(BatchSummary):
    """A Ray run: the counts of all actors together, and where the rows went."""

    actors: int = 0
    rows: str | None = None  # the Parquet folder of this run's rows

    def line(self) -> str:
        s = f"{super().line()}; {self.actors} Ray actors"
        return s + (f"; rows: {self.rows}" if self.rows else "")


def describe_with_ray(
    root: str | os.PathLike,
    analyzer: AnalyzerSpec | None = None,
    *,
    keys: Sequence[str] | None = None,
    options: BatchOptions | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    batch_size: int = 16,
    address: str | None = None,
    output: str | os.PathLike | None = None,
) -> RaySummary:
    """Describe a dataset on a Ray cluster; returns the counts (and writes the rows as Parquet with ``output``).

    ``analyzer``: MusicFlamingoGGUF's keyword arguments (default: ``{"model_name": "Q6_K"}``) or a zero-argument
    factory (then give ``keys``, the sidecar keys its prompts write). Missing GGUF files of a ``model_name`` are
    downloaded here, once; the actors only look them up. ``address``: the cluster (``None``: ``$RAY_ADDRESS`` or
    a new local one; a Ray session already started in this process is used as it is). ``actors``: default one
    per GPU of the cluster (``gpus_per_actor``, default 1 where the cluster has GPUs), or without GPUs one per
    ``cpus_per_actor`` CPUs, less one left for Ray Data's own tasks. ``output``: a folder; this run's rows go to a
    new subfolder of it (``<UTC time>-<id>``), so reruns add to it and never overwrite.
    """
    import ray

    from .native import system_info
    from .workers import visibility_variables

    t0 = time.monotonic()
    opts = options or BatchOptions()
    spec: AnalyzerSpec = analyzer if analyzer is not None else {"model_name": DEFAULT_MODEL}
    keys = list(keys) if keys is not None else keys_of(spec)
    if not callable(spec):
        spec = _resolved(spec)
    if not ray.is_initialized():
        ray.init(address=address or None)
    visibility = visibility_variables(system_info()["backends"])
    resources = ray.cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        if gpus_per_actor and not visibility and not callable(spec):
            logger.warning(
                "this llama.cpp build has no GPU backend (%s): each actor holds a GPU but runs on CPU",
                ", ".join(system_info()["backends"]),
            )
    if actors is None:
        actors = (
            int(resources.get("GPU", 0) // gpus_per_actor)
            if gpus_per_actor
            else int(resources.get("CPU", 1) // cpus_per_actor) - 1
        )
    actors = max(1, actors)
    if not gpus_per_actor and not callable(spec) and "n_threads" not in spec:
        spec = {**spec, "n_threads": max(1, int(cpus_per_actor))}
    summary = RaySummary(actors=actors)
    todo = plan_work(root, keys, opts, summary)
    logger.info(
        "%d tracks: %d to describe with %d Ray actors (%s GPU, %s CPU each)",
        summary.total,
        len(todo),
        actors,
        gpus_per_actor,
        cpus_per_actor,
    )
    if todo:
        rows = describe(
            track_dataset(todo),
            root,
            spec,
            options=opts,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor,
            batch_size=batch_size,
            visibility=visibility,
        )
        if output is not None:
            out = Path(output) / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
            rows.write_parquet(str(out))
            summary.rows = str(out)
            import pyarrow.parquet as pq

            _count(summary, [pq.read_table(str(out), columns=SUMMARY_COLUMNS)])
        else:
            _count(summary, rows.select_columns(SUMMARY_COLUMNS).iter_batches(batch_format="pyarrow"))
    summary.seconds = time.monotonic() - t0
    fpath = failures_path(root, opts.failures)
    if summary.failed and fpath.exists():
        summary.failures_file = str(fpath)
    return summary


def _resolved(spec: Mapping[str, Any]) -> dict[str, Any]:
    """MusicFlamingoGGUF arguments for the actors: the files of a ``model_name`` are found (or downloaded) here,
    once, and the actors told not to download (several actors of a node would fetch the same file at once). The
    name stays a name rather than becoming two paths: it is what the sidecars' ``music_flamingo_model`` says."""
    spec = dict(spec)
    if spec.get("model_path") is None and spec.get("model_name", DEFAULT_MODEL) is not None:
        from .models import resolve_model_files

        resolve_model_files(
            spec.get("model_name", DEFAULT_MODEL), spec.get("model_dir"), offline=spec.get("offline", False)
        )
        spec["offline"] = True
    return spec


def _count(summary: BatchSummary, tables) -> None:
    for table in tables:
        for row in table.to_pylist():
            status = row["status"]
            setattr(summary, status, getattr(summary, status) + 1)
            if status == "failed":
                summary.failures.append({"path": row["path"], "error": row["error"], "message": row["message"]})


__all__ = ["TrackDescriber", "RaySummary", "describe", "describe_with_ray", "keys_of", "row_schema", "track_dataset"]
