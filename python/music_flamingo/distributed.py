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

An actor that dies (a track that crashes the engine, an out-of-memory kill, a lost node) is restarted by Ray and
its batch given to it again (Ray Data's ``max_restarts=-1``, ``max_task_retries=-1``: no limit). What bounds the
attempts per track, as ``--workers`` does, is a ledger (:class:`_Ledger`, one small actor per run) that the actors
tell which tracks they hold and which they finished: a retried batch learns which tracks were in hand when its
actor died, returns the rows of those finished before, describes its other tracks as usual, then each suspect
alone (so an innocent neighbour is never in hand twice), and a track that was in hand when two actors died is
failed (``WorkerDied``: a row, and a record in the failures file) instead of being tried a third time. Each batch
is one block of the dataset (:func:`track_dataset`), so that a retry redoes one batch, never more.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._logging import logger
from .analyzer import AnalysisOptions, Analyzer, AnalyzerCalls, as_analyzer
from .batch import BatchOptions, BatchSummary, TrackOutcome, failures_path, plan_work, run_batch
from .errors import WorkerDied
from .failures import FailureLog
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
    return AnalysisOptions.of("MusicFlamingoGGUF", analyzer.get("options"), chosen).keys()


class _Ledger:
    """Which tracks of the run are in an actor's hands, how many actors died holding each, and the rows of the
    tracks finished in a batch that has not returned yet. Lives in its own actor (no CPU), outside the actors that
    die, so a batch retried after its actor died knows what happened to it (see the module docstring)."""

    def __init__(self) -> None:
        self.in_hand: set[str] = set()
        self.deaths: Counter[str] = Counter()
        self.rows: dict[str, dict[str, Any]] = {}
        self.closed = False

    def begin(self, paths: list[str]) -> dict[str, tuple[int, dict[str, Any] | None]]:
        """A batch starts (again): a track still marked in hand was in hand when its actor died. Returns each
        track's deaths and its row if it was finished."""
        for p in paths:
            if p in self.in_hand:
                self.in_hand.discard(p)
                self.deaths[p] += 1
        return {p: (self.deaths[p], self.rows.get(p)) for p in paths}

    def take(self, path: str) -> bool:
        """Whether the actor may take ``path`` (not once the run was stopped)."""
        if not self.closed:
            self.in_hand.add(path)
        return not self.closed

    def finished(self, path: str, row: dict[str, Any]) -> None:
        self.in_hand.discard(path)
        self.rows[path] = row

    def close(self) -> list[dict[str, Any]]:
        """The run was stopped: no track is taken from now on. Returns the rows of the tracks finished in batches
        that have not returned (they will not be)."""
        self.closed = True
        return list(self.rows.values())

    def end(self, paths: list[str]) -> None:
        """The batch returned its rows: forget it."""
        for p in paths:
            self.in_hand.discard(p)
            self.deaths.pop(p, None)
            self.rows.pop(p, None)


def new_ledger():
    """A :class:`_Ledger` actor for one run of :func:`describe` (the driver holds it; it ends with the run)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(_Ledger).remote()


class TrackDescriber:
    """Ray Data callable class: one resident engine per actor, the local runner per batch of rows.

    ``root`` is the dataset folder (where ``.music-flamingo/`` keeps the locks and the failures file);
    ``analyzer`` builds the engine (a zero-argument callable, or MusicFlamingoGGUF's keyword arguments);
    ``options`` are the local runner's (overwrite, sidecars, manifest, failures file, tracks in flight).
    ``visibility``: device-visibility variables to set from the GPUs Ray gave this actor when Ray does not set
    them itself (Ray sets CUDA_VISIBLE_DEVICES and HIP_VISIBLE_DEVICES; a Vulkan build needs
    GGML_VK_VISIBLE_DEVICES), before the engine loads. ``ledger``: the run's :class:`_Ledger` actor
    (:func:`new_ledger`), which bounds the attempts at a track that kills its actor; None: no bound.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        analyzer: AnalyzerSpec,
        options: BatchOptions | None = None,
        visibility: Sequence[str] = (),
        ledger: Any = None,
    ) -> None:
        _claim_gpus(visibility)
        self.root = Path(root)
        self.options = dataclasses.replace(options or BatchOptions(), progress=False)
        self.ledger = ledger
        self.analyzer = _build(analyzer)
        self.keys = self.analyzer.keys()

    def __call__(self, batch):
        """A pyarrow batch with a ``path`` column (bytes or text) -> one row per path (:func:`row_schema`)."""
        import pyarrow as pa

        # as the runner names them in its outcomes (Path: "a//b" is "a/b"), so that rows and ledger match
        paths = [str(Path(os.fsdecode(p))) for p in batch.column("path").to_pylist()]
        rows = self._run(paths, self.options) if self.ledger is None else self._attempt(paths)
        unreported = lambda p: TrackOutcome(Path(p), "failed", NOT_REPORTED, "no outcome reported")  # noqa: E731
        table = [rows.get(p) or _row(unreported(p), self.keys) for p in paths]
        return pa.Table.from_pylist(table, schema=row_schema(self.keys))

    def _attempt(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        """The batch, knowing what its earlier attempts left (their actors died): their finished rows are
        returned as they were; a track in hand at two deaths is failed; the others are described, then each
        track in hand at one death alone."""
        import ray

        state = ray.get(self.ledger.begin.remote(paths))
        rows = {p: row for p, (_, row) in state.items() if row is not None}
        todo = [p for p in paths if p not in rows]
        for p in todo:
            if state[p][0] >= 2:
                rows[p] = self._failed_twice(p)
        rows.update(self._run([p for p in todo if state[p][0] == 0], self.options))
        alone = dataclasses.replace(self.options, tracks_in_flight=1, prefetch=False)
        for p in todo:
            if state[p][0] == 1:
                rows.update(self._run([p], alone))
        ray.get(self.ledger.end.remote(paths))
        return rows

    def _run(self, paths: list[str], options: BatchOptions) -> dict[str, dict[str, Any]]:
        """The local runner over ``paths``; each track's row by path, told to the ledger as it is taken and
        finished."""
        import ray

        rows: dict[str, dict[str, Any]] = {}

        def taking() -> Iterator[str]:
            for p in paths:
                if self.ledger is not None and not ray.get(self.ledger.take.remote(p)):
                    return  # the run was stopped: finish the tracks in hand, take no more
                yield p

        def finished(o: TrackOutcome) -> None:
            row = rows[str(o.path)] = _row(o, self.keys)
            if self.ledger is not None:
                ray.get(self.ledger.finished.remote(str(o.path), row))

        if not paths:
            return rows
        summary = run_batch(self.analyzer, self.root, options, tracks=taking(), on_track=finished)
        if summary.interrupted:  # cancelled: let Ray see it rather than return rows for tracks never tried
            raise KeyboardInterrupt
        return rows

    def _failed_twice(self, path: str) -> dict[str, Any]:
        """A track that was in hand when two actors died: failed and listed in the failures file, not retried."""
        import ray

        err = WorkerDied("two Ray actors died while it was in hand")
        failures = FailureLog(failures_path(self.root, self.options.failures))
        failures.record(path, err)
        failures.close()
        logger.error("failed: %s: %s", path, err)
        row = _row(TrackOutcome(Path(path), "failed", type(err).__name__, str(err)), self.keys)
        ray.get(self.ledger.finished.remote(path, row))
        return row


def _claim_gpus(variables: Sequence[str]) -> None:
    missing = [v for v in variables if not os.environ.get(v)]
    if not missing:
        return
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    if ids:
        for var in missing:
            os.environ[var] = ",".join(ids)


def track_dataset(tracks: Sequence[str | os.PathLike], rows_per_block: int = 16):
    """A Ray dataset of ``tracks``, one row each: ``{"path": <the file name's bytes>}`` (bytes, so that any file
    name travels exactly), in blocks of ``rows_per_block`` rows — :func:`describe`'s batch size, so that a batch
    retried after its actor died is one block, not many. The tracks a local run would describe are
    ``plan_work(root, keys, options, BatchSummary())`` (:func:`~music_flamingo.batch.plan_work`)."""
    import ray.data

    blocks = max(1, math.ceil(len(tracks) / max(1, rows_per_block)))
    return ray.data.from_items([{"path": os.fsencode(p)} for p in tracks], override_num_blocks=blocks)


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
    ledger: Any = None,
):
    """``ds`` (rows with a ``path``) described by a fixed pool of ``actors`` :class:`TrackDescriber` actors, each
    with ``gpus_per_actor`` GPUs and ``cpus_per_actor`` CPUs, ``batch_size`` tracks per call (the engine's
    continuous batching works within a call). Lazy, like every Ray dataset: write it or iterate it to run it.
    An actor that dies is restarted and its batch retried; ``ledger`` (default: a new one, :func:`new_ledger`)
    bounds the attempts at each track (see the module docstring)."""
    import ray.data

    return ds.map_batches(
        TrackDescriber,
        fn_constructor_kwargs={
            "root": str(root),
            "analyzer": analyzer,
            "options": options,
            "visibility": tuple(visibility),
            "ledger": ledger if ledger is not None else new_ledger(),
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor or None,
        num_cpus=cpus_per_actor,
        max_restarts=-1,  # Ray Data's defaults, stated: the ledger, not Ray, bounds the attempts at a track
        max_task_retries=-1,
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

    ``analyzer``: MusicFlamingoGGUF's keyword arguments (default: ``{"model_name": models.DEFAULT_MODEL}``) or a
    zero-argument factory (then give ``keys``, the sidecar keys its prompts write). Missing GGUF files of a ``model_name`` are
    downloaded here, once; the actors only look them up. ``address``: the cluster (``None``: ``$RAY_ADDRESS`` or
    a new local one, which dies with this process however it ends; a Ray session already started in this process
    is used as it is). ``actors``: default one per GPU of the cluster (``gpus_per_actor``, default 1 where the
    cluster has GPUs), or without GPUs one per ``cpus_per_actor`` CPUs, less one left for Ray Data's own tasks.
    ``output``: a folder; this run's rows go to a new subfolder of it (``<UTC time>-<id>``), so reruns add to it
    and never overwrite. Ctrl-C (KeyboardInterrupt) stops the run: the counts so far come back, ``interrupted``.
    """
    from .native import system_info
    from .workers import visibility_variables

    t0 = time.monotonic()
    opts = options or BatchOptions()
    spec: AnalyzerSpec = analyzer if analyzer is not None else {"model_name": DEFAULT_MODEL}
    keys = list(keys) if keys is not None else keys_of(spec)
    if not callable(spec):
        spec = _resolved(spec)
    _connect(address)
    visibility = visibility_variables(system_info()["backends"])
    actors, gpus_per_actor = _pool_size(actors, gpus_per_actor, cpus_per_actor, spec, visibility)
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
        ledger = new_ledger()
        rows = describe(
            track_dataset(todo, batch_size),
            root,
            spec,
            options=opts,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor,
            batch_size=batch_size,
            visibility=visibility,
            ledger=ledger,
        )
        _collect(rows, summary, output, ledger, keys)
    summary.seconds = time.monotonic() - t0
    fpath = failures_path(root, opts.failures)
    if summary.failed and fpath.exists():
        summary.failures_file = str(fpath)
    return summary


def _connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``, or start a local one) unless this process already
    has. A local cluster started here is bound to this process by a watchdog (:mod:`._raywatch`)."""
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address or None)
    _watch_local_cluster()


_watchdog: subprocess.Popen | None = None  # kept for the life of the process (see _watch_local_cluster)
_watchdog_pipe: int | None = None


def _watch_local_cluster() -> None:
    """If ``ray.init`` started a local cluster in this process, start its watchdog: a process that SIGKILLs the
    cluster once this process is gone, however it ended (:mod:`._raywatch`). It waits for the end of a pipe whose
    other end only this process holds (never inherited: ``os.pipe`` descriptors are not). Linux only."""
    global _watchdog, _watchdog_pipe
    from ray._private import worker as ray_worker  # the node this driver started, if it started one

    node = getattr(ray_worker, "_global_node", None)
    started = getattr(node, "all_processes", None) or {}
    raylets = started.get("raylet") or []
    if not sys.platform.startswith("linux") or not raylets or _watchdog is not None:
        return
    from . import _raywatch

    heads = [info.process.pid for infos in started.values() for info in infos if info.process is not None]
    args = [f"{pid}:{_raywatch.start_time(pid)}" for pid in heads if _raywatch.start_time(pid) is not None]
    r, w = os.pipe()
    try:
        _watchdog = subprocess.Popen(
            [sys.executable, _raywatch.__file__, *args],
            stdin=r,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to this process's group does not end it first
        )
    except OSError as e:
        os.close(w)
        logger.warning("could not start the watchdog of the local Ray cluster: %s", e)
        return
    finally:
        os.close(r)
    _watchdog_pipe = w  # closed by the kernel when this process ends


def _pool_size(
    actors: int | None, gpus_per_actor: float | None, cpus_per_actor: float, spec: AnalyzerSpec, visibility
) -> tuple[int, float]:
    """The number of actors and the GPUs of each, from the cluster's resources where not given."""
    import ray

    from .native import system_info

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
    return max(1, actors), gpus_per_actor


ROWS_PER_PART = 4096  # rows per Parquet file of --ray-output: a driver killed mid-run loses at most one file's


def _collect(rows, summary: RaySummary, output: str | os.PathLike | None, ledger, keys: Sequence[str]) -> None:
    """Run the described dataset, counting its rows as they arrive and, with ``output``, writing them as Parquet
    parts (each written whole, then renamed into place). Ctrl-C stops it: the counts so far are kept and the
    rows so far written, with those of the tracks finished in batches that had not returned (from ``ledger``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    out = None
    if output is not None:
        out = Path(output) / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        out.mkdir(parents=True)
        summary.rows = str(out)
    pending: list = []

    def flush() -> None:
        if out is None or not pending:
            return
        part = out / f"part-{len(list(out.glob('part-*.parquet'))):05}.parquet"
        temp = part.with_name(f".{part.name}.tmp")  # a dot: Parquet readers skip it if left half-written
        pq.write_table(pa.concat_tables(pending), temp)
        os.replace(temp, part)
        pending.clear()

    try:
        for table in rows.iter_batches(batch_format="pyarrow", batch_size=None):
            _count(summary, [table.select(SUMMARY_COLUMNS)])
            pending.append(table)
            if sum(t.num_rows for t in pending) >= ROWS_PER_PART:
                flush()
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: stopping the Ray run; no sidecar is left half-written")
        try:
            left = pa.Table.from_pylist(ray.get(ledger.close.remote(), timeout=30), schema=row_schema(keys))
        except ray.exceptions.RayError as e:
            logger.warning("the tracks finished in unfinished batches are not counted: %s", e)
        else:
            _count(summary, [left])
            pending.append(left)
    finally:
        flush()


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


__all__ = [
    "TrackDescriber",
    "RaySummary",
    "describe",
    "describe_with_ray",
    "keys_of",
    "new_ledger",
    "row_schema",
    "track_dataset",
]
