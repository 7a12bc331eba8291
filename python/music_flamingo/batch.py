"""The dataset runner: find the tracks of a tree, describe every one that still lacks our keys, write sidecars safely.

Which files are tracks, and which of them a run takes, is :mod:`music_flamingo.discovery` (the users' layout:
full mixes, crops, loose files; stems and skip-list folders are not tracks). :func:`plan_batch` adds each track's
status (done, pending, failed last time, locked) without touching anything; :func:`run_batch` runs that plan and
:func:`dry_run` shows it.

Built for runs of days over tens of thousands of tracks, possibly by several processes on one dataset:
- a track whose sidecar already has every requested key is skipped (resume after a crash = run again);
- one failing track never stops the run: it is logged, counted and listed in a failures JSONL (:mod:`.failures`:
  one record per track, cleared when it succeeds; a track another process failed in this run is not retried);
- each track is locked (``flock`` on a file in ``<root>/.music-flamingo/locks`` that exists only while held,
  :class:`~music_flamingo.fsutil.SelfRemovingLock`) while it is analysed, so processes sharing a dataset do each
  track once; a locked track is not waited for: it is looked at once more after the others (its
  holder may have died) and skipped if still locked;
- the next tracks are decoded and resampled on a background thread while the engine works on the current ones;
- tracks stream into the engine: up to ``tracks_in_flight`` decode together in its batch steps, and a finished
  track's place goes to the next one at once (continuous batching; the batch never drains between groups);
- Ctrl-C stops between tracks or decode steps; sidecars are written atomically, so none is left half-written;
- nothing is written outside the dataset (resolved paths: a sidecar symlinked out of it is a counted failure), and
  ``--jsonl`` lines are appended whole or not at all (:mod:`.fsutil`'s rules, :mod:`.manifest`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import lifecycle, validation
from ._logging import logger
from .analyzer import Analyzer, AnalyzerCalls, as_analyzer
from .audio import PreparedAudio
from .datatypes import GenerationStats, Prompt
from .discovery import EXCLUDED_AS, NOT_SAMPLED, NOT_SELECTED, Selection, Track, discover_tracks
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, SidecarError
from .failures import STATE_DIR, FailureLog, parse_record
from .fsutil import MAX_FAILURES_BYTES, SelfRemovingLock, inside, open_regular_file, real
from .manifest import Manifest
from .sidecar import has_keys, remove_stale_temp_files, sidecar_path, update_sidecar

# What a run does with each path discovery looked at (one of these per PlannedTrack).
DONE = "done"  # the sidecar already has every requested key
PENDING = "pending"  # to describe
FAILED_LAST_TIME = "failed last time"  # to describe; listed in the failures file
LOCKED = "locked"  # to describe, but another process holds its lock now (dry run only)
SIDECAR_ERROR = "sidecar unreadable"  # its sidecar cannot be read: the run counts it as failed, touches nothing
EXCLUDED = "excluded"  # not a track, or not selected (the Track's kind and reason say which)
TO_DESCRIBE = (PENDING, FAILED_LAST_TIME)


@dataclass(frozen=True)
class PlannedTrack:
    track: Track
    status: str
    detail: str = ""  # the sidecar error, for SIDECAR_ERROR

    @property
    def path(self) -> Path:
        return self.track.path


def state_dir_of(root: str | os.PathLike) -> Path:
    root = Path(root)
    return (root if root.is_dir() else root.parent) / STATE_DIR


def failures_path(root: str | os.PathLike, failures: str | os.PathLike | None = None) -> Path:
    """Where the failures of a run on ``root`` are listed (``--failures``, else ``<root>/.music-flamingo/``)."""
    return Path(failures) if failures else state_dir_of(root) / "failures.jsonl"


def read_failed_tracks(path: str | os.PathLike) -> list[str]:
    """The track paths listed in a failures file, in order, once each; [] when there is none.

    The one place that reads the failures file (JSON lines with a ``"path"``), for ``--retry-failed`` and the dry
    run's "failed last time": a line that is not such a record is skipped with a warning.
    """
    out: dict[str, None] = {}
    try:
        with open_regular_file(path, MAX_FAILURES_BYTES) as f:  # a FIFO or a folder of that name: no hang
            data = f.read(MAX_FAILURES_BYTES)
    except FileNotFoundError:
        return []
    except OSError as e:
        logger.warning("cannot read the failures file: %s", e)
        return []
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        rec = parse_record(raw)
        if rec is None:
            logger.warning("%s:%d is not a failure record; skipped", path, n)
        else:
            out[rec["path"]] = None
    return list(out)


def _same_file_key(p: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(p))


def _lock_path(state_dir: Path, track: Path) -> Path:
    # real(), not Path.resolve(): a symlink loop named like a track must fail that track, not raise RuntimeError here
    digest = hashlib.sha1(real(track).encode("utf-8", "surrogatepass")).hexdigest()
    return state_dir / "locks" / f"{digest}.lock"


def is_locked(state_dir: Path, track: Path) -> bool:
    """Whether another process holds ``track``'s lock right now; creates and removes nothing (the dry run)."""
    try:
        return SelfRemovingLock.held_elsewhere(_lock_path(state_dir, track))
    except OSError:  # cannot even open it: nobody we could race with
        return False


def dataset_of(root: str | os.PathLike) -> Path:
    """The folder nothing is written outside of: ``root``, or the folder of a single file."""
    root = Path(root)
    return root if root.is_dir() else root.parent


def check_sidecar_inside(track: Path, dataset: Path) -> None:
    """Raise :class:`SidecarError` naming the link when ``track``'s sidecar (through any symlinks) lies outside
    ``dataset``: a sidecar symlinked to a file elsewhere is never written (:mod:`.fsutil`, rule 1)."""
    side = sidecar_path(track)
    if not inside(side, dataset):
        raise SidecarError(
            f"sidecar {side} leads outside the dataset {dataset} (to {real(side)}); nothing is written outside it"
        )


def plan_batch(
    root: str | os.PathLike,
    keys: Sequence[str],
    selection: Selection | None = None,
    *,
    overwrite: bool = False,
    check_sidecars: bool = True,
    retry_failed: bool = False,
    failures: str | os.PathLike | None = None,
    check_locks: bool = False,
) -> list[PlannedTrack]:
    """What a run over ``root`` would do with each path, without doing it: discovery + selection (see
    :mod:`music_flamingo.discovery`), then each selected track's status from its sidecar (``keys`` present: done),
    the failures file and, with ``check_locks``, the per-track locks. Reads only; the runner and the dry run both
    use it, so the dry run's counts are the run's.

    ``retry_failed``: only the tracks listed in the failures file (still subject to ``selection``'s rules).
    ``check_sidecars=False`` (no sidecars written) or ``overwrite``: no track is done.
    """
    sel = selection or Selection()
    failed = read_failed_tracks(failures_path(root, failures))
    if retry_failed:
        if not failed:
            logger.warning("no failures listed in %s: nothing to retry", failures_path(root, failures))
        sel = dataclasses.replace(sel, paths=tuple(failed))
    failed_keys = {_same_file_key(p) for p in failed}
    state_dir = state_dir_of(root)
    dataset = dataset_of(root)
    plan: list[PlannedTrack] = []
    for t in discover_tracks(root, sel):
        if not t.selected:
            plan.append(PlannedTrack(t, EXCLUDED))
            continue
        try:
            if check_sidecars and not overwrite and has_keys(sidecar_path(t.path), keys):
                plan.append(PlannedTrack(t, DONE))
                continue
            if check_sidecars:
                check_sidecar_inside(t.path, dataset)
        except SidecarError as e:
            plan.append(PlannedTrack(t, SIDECAR_ERROR, str(e)))
            continue
        if check_locks and is_locked(state_dir, t.path):
            plan.append(PlannedTrack(t, LOCKED))
        elif _same_file_key(t.path) in failed_keys:
            plan.append(PlannedTrack(t, FAILED_LAST_TIME))
        else:
            plan.append(PlannedTrack(t, PENDING))
    return plan


def _plan(
    root: str | os.PathLike, keys: Sequence[str], o: BatchOptions, check_locks: bool = False
) -> list[PlannedTrack]:
    """:func:`plan_batch` with a run's options: the run and its dry run plan alike."""
    return plan_batch(
        root,
        keys,
        o.selection,
        overwrite=o.overwrite,
        check_sidecars=o.write_sidecars,
        retry_failed=o.retry_failed,
        failures=o.failures,
        check_locks=check_locks,
    )


def plan_work(
    root: str | os.PathLike,
    keys: Sequence[str],
    options: BatchOptions,
    summary: BatchSummary,
    done: list[Path] | None = None,
) -> list[Path]:
    """The tracks a run with these options has to hand to an engine — pending, failed last time, and those whose
    sidecar cannot be read (the runner fails them as it finds them) — from :func:`plan_batch`; ``summary`` gets
    what the plan settles (total, already complete, paths not taken). For callers that hand the tracks to other
    processes (:mod:`.workers`, :mod:`.distributed`), which then run them with ``run_batch(tracks=...)``.
    ``done``, if given, receives the tracks found complete."""
    todo: list[Path] = []
    for item in _plan(root, keys, options):
        if item.status == EXCLUDED:
            label = item.track.excluded_as or ""
            summary.excluded[label] = summary.excluded.get(label, 0) + 1
            continue
        summary.total += 1
        if item.status == DONE:
            summary.skipped_complete += 1
            if done is not None:
                done.append(item.path)
        else:
            todo.append(item.path)
    return todo


# The dry run's rows, in this order: what the run would find for the selected tracks, then what it leaves out.
_STATUS_ROWS = (DONE, PENDING, FAILED_LAST_TIME, LOCKED, SIDECAR_ERROR)


@dataclass
class DryRun:
    """A run's plan as the user sees it: one line per path (``listing``), counts per row (``counts``: each status
    of the selected tracks, then ``excluded: <why>``) and the audio hours to describe (pending + failed last
    time)."""

    root: Path
    plan: list[PlannedTrack]
    counts: dict[str, int]
    seconds_to_describe: float
    unknown_duration: int

    @property
    def to_describe(self) -> int:
        return sum(self.counts[s] for s in TO_DESCRIBE)

    def listing(self) -> Iterator[str]:
        """One line per path: row, path below the root, why; tab-separated, easy to grep or cut."""
        for item in self.plan:
            t = item.track
            row = f"excluded: {t.excluded_as}" if item.status == EXCLUDED else item.status
            why = item.detail or t.reason
            yield f"{row}\t{t.rel or t.path}\t{why}"

    def table(self) -> str:
        rows = [(row, n) for row, n in self.counts.items() if n or not row.startswith("excluded")]
        width = max(len(row) for row, _ in rows) + 2
        lines = [f"dry run of {self.root}: nothing was written", f"{'':{width}}{'count':>8}"]
        lines += [f"{row:{width}}{n:>8}" for row, n in rows]
        hours = self.seconds_to_describe / 3600
        unknown = f" ({self.unknown_duration} of unknown length)" if self.unknown_duration else ""
        lines.append(f"to describe: {self.to_describe} tracks, {hours:.2f} h of audio{unknown}")
        return "\n".join(lines)


def dry_run(root: str | os.PathLike, keys: Sequence[str], options: BatchOptions | None = None) -> DryRun:
    """What :func:`run_batch` with these options would do, from :func:`plan_batch` with the locks checked, plus the
    length of the audio to describe (read from file headers). Writes nothing."""
    from .audio import probe_duration

    plan = _plan(root, keys, options or BatchOptions(), check_locks=True)
    counts = {s: 0 for s in _STATUS_ROWS}
    counts.update({f"excluded: {why}": 0 for why in (*EXCLUDED_AS.values(), NOT_SELECTED, NOT_SAMPLED)})
    seconds, unknown = 0.0, 0
    for item in plan:
        row = f"excluded: {item.track.excluded_as}" if item.status == EXCLUDED else item.status
        counts[row] = counts.get(row, 0) + 1
        if item.status in TO_DESCRIBE:
            d = probe_duration(item.path)
            if d is None:
                unknown += 1
            else:
                seconds += d
    return DryRun(Path(root), plan, counts, seconds, unknown)


@dataclass
class BatchOptions:
    overwrite: bool = False
    write_sidecars: bool = True
    jsonl: Path | None = None  # one line per analysed track (a manifest), besides or instead of sidecars
    failures: Path | None = None  # default: <root>/.music-flamingo/failures.jsonl
    progress: bool = True
    prefetch: bool = True
    tracks_in_flight: int | str = "auto"  # tracks decoded together in the engine's batch steps (continuous
    # batching); "auto": sized by the engine from free device memory
    selection: Selection | None = None  # which tracks (discovery.Selection); None: every track, no stems
    retry_failed: bool = False  # only the tracks listed in the failures file

    def __post_init__(self) -> None:
        validation.require_run_setting("tracks_in_flight", self.tracks_in_flight)  # the engine's rule, early


@dataclass
class BatchSummary:
    total: int = 0
    done: int = 0
    skipped_complete: int = 0
    skipped_locked: int = 0  # another process has the track, or failed it during this run
    failed: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    failures_file: str | None = None
    failures_unwritten: int = 0  # failures the failures file could not take (full disk, not a failures file)
    failures: list[dict[str, str]] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)  # paths not taken, by Track.excluded_as

    @property
    def exit_code(self) -> int:
        """0: all done; 1: some tracks failed; 130: interrupted (as shells report Ctrl-C)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed else EXIT_OK

    def line(self) -> str:
        s = (
            f"{self.done} done, {self.skipped_complete} skipped (complete), {self.skipped_locked} skipped (locked), "
            f"{self.failed} failed of {self.total} tracks in {self.seconds:.1f} s"
        )
        if self.excluded:
            s += "; not taken: " + ", ".join(f"{n} {k}" for k, n in sorted(self.excluded.items()))
        if self.interrupted:
            s += " (interrupted)"
        if self.failures_file:
            s += f"; failures: {self.failures_file}"
        if self.failures_unwritten:
            s += f"; {self.failures_unwritten} failure(s) could not be listed in the failures file (see the log)"
        return s


@dataclass
class TrackOutcome:
    """What became of one track in :func:`run_batch`, told as it happens through ``on_track``: for callers that
    report progress elsewhere (the multi-process parent, :mod:`.workers`) or collect rows (the Ray actors,
    :mod:`.distributed`). ``status`` is the :class:`BatchSummary` counter it adds to: ``done``, ``failed``,
    ``skipped_locked`` or ``skipped_complete``."""

    path: Path
    status: str
    error: str = ""  # failed: the exception's type
    message: str = ""  # failed: what went wrong
    fields: dict[str, Any] | None = None  # done: the fields written (descriptions, model label, provenance)
    stats: GenerationStats | None = None  # done: the engine's timings


class _Skip(Exception):
    """A locked track turned out complete: release it and go on."""


# Tracks decoded ahead of the one the engine takes next (one decoding thread): enough to keep the engine's helper
# thread from waiting on a slow decode, few enough to hold little audio in memory.
PREFETCH_AHEAD = 2


def _looking_ahead(tracks: Iterable[Path], ahead: int, want: Callable[[Path], None]) -> Iterator[Path]:
    """Each track in turn, once ``want`` (the prefetcher) was told of it and of the ``ahead`` tracks after it. The
    iterable is read no further than that, so a caller's tracks are pulled only as the run needs them."""
    it = iter(tracks)
    window = collections.deque(itertools.islice(it, 1 + ahead))
    while window:
        for track in window:
            want(track)
        yield window.popleft()
        window.extend(itertools.islice(it, 1))


class _Prefetcher:
    """Decodes the next track on one background thread while the engine works on the current one."""

    def __init__(self, load: Callable[[Path], PreparedAudio], enabled: bool) -> None:
        self._load = load
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mf-decode") if enabled else None
        self._pending: dict[Path, Future] = {}

    def want(self, path: Path | None) -> None:
        if self._pool is not None and path is not None and path not in self._pending:
            try:
                self._pending[path] = self._pool.submit(self._load, path)
            except RuntimeError:  # the interpreter is exiting (thread pools refuse work): get() decodes in place
                pass

    def get(self, path: Path) -> PreparedAudio:
        fut = self._pending.pop(path, None)
        return fut.result() if fut is not None else self._load(path)

    def drop(self, path: Path) -> None:
        fut = self._pending.pop(path, None)
        if fut is not None:
            fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def run_batch(
    analyzer: Analyzer | AnalyzerCalls,
    root: str | os.PathLike,
    options: BatchOptions | None = None,
    on_result: Callable[[Path, dict[str, Any]], None] | None = None,
    *,
    tracks: Iterable[str | os.PathLike] | None = None,
    on_track: Callable[[TrackOutcome], None] | None = None,
) -> BatchSummary:
    """Describe every incomplete track under ``root``; returns the counts. Never raises for a single track.

    ``analyzer``: an :class:`~music_flamingo.analyzer.Analyzer` or a model class holding one (``MusicFlamingoGGUF``).
    ``root`` may be one file (the single-file command line): its folder's ``.music-flamingo/`` holds the lock.

    ``tracks``: describe these (already discovered and selected by the caller, e.g. with :func:`plan_work`)
    instead of planning the run here; the iterable is consumed lazily, as the engine takes tracks, so a caller can
    hand out work as it goes (:mod:`.workers`). Each is still locked and checked for completeness first.
    ``on_track`` is called once per track run (not for those the plan finds complete) with its
    :class:`TrackOutcome`, as it happens — on the engine's helper thread for a track skipped or failed before the
    engine took it — and must not raise.
    """
    return _BatchRun(as_analyzer(analyzer), Path(root), options or BatchOptions(), on_result, tracks, on_track).run()


class _Counters:
    """The run's counts (its :class:`BatchSummary`), its failures file and its ``on_track`` calls, under one lock:
    they are updated from the engine's helper thread (tracks taken, skipped or failed before the engine has them)
    and from the thread that runs the engine (results), and the failures log is not safe across threads. Each
    event is one method, so a count, its failures record and its :class:`TrackOutcome` never disagree."""

    def __init__(
        self, summary: BatchSummary, failures: FailureLog, on_track: Callable[[TrackOutcome], None] | None
    ) -> None:
        self.summary = summary
        self._failures = failures
        self._on_track = on_track
        self._lock = threading.Lock()

    def _tell(self, track: Path, status: str, **detail: Any) -> None:
        # called under the lock, so a caller's on_track is never run on two threads at once
        if self._on_track is not None:
            self._on_track(TrackOutcome(Path(track), status, **detail))

    def given(self) -> None:
        """One more track handed in by the caller (``tracks``)."""
        with self._lock:
            self.summary.total += 1

    def failed_elsewhere(self, track: Path) -> bool:
        with self._lock:
            return self._failures.failed_elsewhere(track)

    def skipped(self, track: Path, status: str, why: str | None = None, *, complete: bool = False) -> None:
        """``status``: ``skipped_locked`` or ``skipped_complete``; ``complete``: its sidecar has every key now (so
        a failure listed for it is over); ``why``: logged."""
        with self._lock:
            setattr(self.summary, status, getattr(self.summary, status) + 1)
            if why is not None:
                logger.info("%s, skipped: %s", why, track)
            self._tell(track, status)
            if complete:
                self._failures.clear(track)

    def failed(self, track: Path, err: BaseException, fields: dict[str, Any] | None = None) -> None:
        """``fields``: what was computed before the failure (a sidecar that could not be written), so a caller
        can still show the descriptions."""
        with self._lock:
            self.summary.failed += 1
            self.summary.failures.append({"path": str(track), "error": type(err).__name__, "message": str(err)})
            self._failures.record(track, err)
            logger.error("failed: %s: %s: %s", track, type(err).__name__, err)
            self._tell(track, "failed", error=type(err).__name__, message=str(err), fields=fields)

    def done(self, track: Path, fields: dict[str, Any], stats: GenerationStats | None) -> None:
        with self._lock:
            self.summary.done += 1
            self._failures.clear(track)
            self._tell(track, "done", fields=fields, stats=stats)


class _BatchRun:
    """One :func:`run_batch`: its options, engine, counters, failures log, prefetcher, manifest and the locks it
    holds. :meth:`run` runs it once."""

    def __init__(
        self,
        analyzer: Analyzer,
        root: Path,
        opts: BatchOptions,
        on_result: Callable[[Path, dict[str, Any]], None] | None,
        tracks: Iterable[str | os.PathLike] | None,
        on_track: Callable[[TrackOutcome], None] | None,
    ) -> None:
        self.analyzer, self.root, self.opts, self.on_result, self.tracks = analyzer, root, opts, on_result, tracks
        self.state_dir = state_dir_of(root)
        self.dataset = dataset_of(root)
        self.can_lock = self._make_lock_dir()
        self.failures = FailureLog(failures_path(root, opts.failures))
        self.failures.start()
        if root.is_dir():
            remove_stale_temp_files(root)  # of sidecar writes killed in earlier runs
        self.keys = analyzer.keys()  # the prompts' and the follow-ups' (the catch-up pass: the follow-ups' alone)
        self.t0 = time.monotonic()
        self.summary = BatchSummary()
        self.counters = _Counters(self.summary, self.failures, on_track)
        self.todo = self._plan()
        self.prefetch = _Prefetcher(lambda p: analyzer.prepare(p, name=str(p)), opts.prefetch)  # cut, or an excerpt
        self.jsonl = Manifest(opts.jsonl) if opts.jsonl else None
        self.bar = _progress(len(self.todo) if tracks is None else None, opts.progress)
        self.held: dict[Path, Any] = {}  # track -> its FileLock, from admission until its result is written

    def _make_lock_dir(self) -> bool:
        try:
            (self.state_dir / "locks").mkdir(parents=True, exist_ok=True)
            return True
        except OSError as e:  # a read-only dataset: no sidecar can be written either, but --jsonl/--no-sidecar works
            logger.warning(
                "cannot keep track locks in %s (%s): another process may describe the same tracks", self.state_dir, e
            )
            return False

    def _plan(self) -> list[Path]:
        """The tracks to describe when the caller gave none (``tracks``), counted into the summary."""
        # A damaged sidecar fails its track when the run reaches it (the check under the track's lock in _check).
        done_before: list[Path] = []
        todo = plan_work(self.root, self.keys, self.opts, self.summary, done_before) if self.tracks is None else []
        self.failures.clear(done_before)  # listed by an earlier run, done since
        if self.tracks is None:
            logger.info(
                "%d tracks: %d to analyse, %d already complete; not taken: %s",
                self.summary.total,
                len(todo),
                self.summary.skipped_complete,
                self.summary.excluded or "none",
            )
        return todo

    def run(self) -> BatchSummary:
        try:
            self.analyzer.analyze_stream(self.admitted(), self.finish, self.opts.tracks_in_flight)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            logger.warning("interrupted: stopping; no sidecar is left half-written")
        finally:
            for lock in self.held.values():  # tracks in flight when interrupted: nothing of theirs was written
                lock.release()
            self.bar.close()
            self.prefetch.close()
            self.failures.close()
            if self.jsonl is not None:
                self.jsonl.close()
        summary = self.summary
        summary.seconds = time.monotonic() - self.t0
        if summary.failures and self.failures.unwritten < len(summary.failures):  # named only if it lists something
            summary.failures_file = str(self.failures.path)
        summary.failures_unwritten = self.failures.unwritten
        return summary

    def _given(self) -> Iterator[Path]:
        for track in self.tracks or ():
            self.counters.given()
            yield Path(track)

    def admitted(self) -> Iterator[tuple[Path, PreparedAudio, list[Prompt] | None]]:
        """The tracks to analyse, in order, each locked and decoded. The engine pulls from this on its helper
        thread whenever it can take a track, so locking and decoding stay off the decode loop. A track locked by
        another process is looked at once more after the others: if that process died (SIGKILL, a lost node),
        its lock is free by then and this run does the track instead of leaving it undone."""
        deferred: list[Path] = []
        tracks = self.todo if self.tracks is None else self._given()
        for track in _looking_ahead(tracks, PREFETCH_AHEAD, self.prefetch.want):
            taken = self.take(track, deferred)
            if taken is not None:
                yield taken
        for track in deferred:
            taken = self.take(track, None)
            if taken is not None:
                yield taken

    def _complete(self, track: Path) -> bool:
        if not self.opts.write_sidecars:
            return False
        if not self.opts.overwrite and has_keys(sidecar_path(track), self.keys):
            return True
        check_sidecar_inside(track, self.dataset)  # before the work: a sidecar leading out of the dataset fails
        return False

    def _lock(self, track: Path, deferred: list[Path] | None) -> Any:
        """The track's lock, acquired; None when it is not taken now (deferred, skipped or failed: counted here)."""
        lock = SelfRemovingLock(_lock_path(self.state_dir, track)) if self.can_lock else _NoLock()
        try:
            lock.acquire(timeout=0)  # released on another thread (the lock has no thread affinity)
            return lock
        except TimeoutError:
            self.prefetch.drop(track)
            if deferred is not None:
                deferred.append(track)
                return None
            self.counters.skipped(track, "skipped_locked", "locked by another process")
        except OSError as e:  # the lock file cannot be created (the state folder went away, a full disk)
            self.prefetch.drop(track)
            self.counters.failed(track, e)
        self.bar.update(1)
        return None

    def take(self, track: Path, deferred: list[Path] | None) -> tuple[Path, PreparedAudio, list[Prompt] | None] | None:
        """One track locked, checked and decoded; None when it is skipped or failed (counted here). A track
        locked elsewhere goes to ``deferred`` if given, else is counted as skipped."""
        lifecycle.raise_if_exiting()  # a batch in a thread at interpreter exit stops as on Ctrl-C
        lock = self._lock(track, deferred)
        if lock is None:
            return None
        try:
            prepared, prompts = self._check(track)
        except _Skip:
            self.prefetch.drop(track)
            lock.release()
            self.bar.update(1)
            return None
        except Exception as e:  # undecodable audio, unreadable sidecar, a lock file that cannot be created
            lock.release()
            self.counters.failed(track, e)
            self.bar.update(1)
            return None
        self.held[track] = lock
        return track, prepared, prompts

    def _check(self, track: Path) -> tuple[PreparedAudio, list[Prompt] | None]:
        """A locked track still to describe, decoded with its prompts; raises _Skip (counted) when it is not."""
        if self._complete(track):  # another process finished it since we looked
            self.counters.skipped(track, "skipped_complete", complete=True)
            raise _Skip
        if self.counters.failed_elsewhere(track):  # not retried by every process of this run
            self.counters.skipped(track, "skipped_locked", "failed in another process during this run")
            raise _Skip
        prepared = self.prefetch.get(track)
        prompts = self.analyzer.prompts_for_file(track)  # templates filled from its sidecar (None: shared ones)
        if prompts == []:  # the catch-up pass, and the sidecar holds no answer to follow up
            self.counters.skipped(track, "skipped_complete", "no answer to follow up in its sidecar")
            raise _Skip
        return prepared, prompts

    def finish(self, track: Path, result: Any) -> None:
        """One track's result: written (sidecar, manifest) or counted as failed; its lock released."""
        fields = None
        try:
            if isinstance(result, Exception):
                raise result
            fields = result.sidecar_fields()
            if self.opts.write_sidecars:
                check_sidecar_inside(track, self.dataset)  # again: the link may have changed during the analysis
                update_sidecar(sidecar_path(track), fields)
            if self.jsonl is not None:  # with the prompts as sent (filled per track from its sidecar)
                self.jsonl.write({"path": str(track), **fields, "prompts": result.prompts})
            if self.on_result is not None:
                self.on_result(track, fields)
            self.counters.done(track, fields, result.stats)
        except Exception as e:  # one bad track never stops the run
            self.counters.failed(track, e, fields)
        finally:
            lock = self.held.pop(track, None)
            if lock is not None:
                lock.release()
        self.bar.update(1)
        self.bar.set_postfix(done=self.summary.done, failed=self.summary.failed, refresh=False)


class _NoLock:
    """Where no lock file can be created (a read-only dataset): the run goes on unlocked, as it said it would."""

    def acquire(self, timeout: float = 0) -> None: ...
    def release(self) -> None: ...


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    """tqdm shows tracks/s and the ETA; on stderr, so stdout stays clean for results."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="track", dynamic_ncols=True, smoothing=0.1)


__all__ = [
    "BatchOptions",
    "BatchSummary",
    "DryRun",
    "PlannedTrack",
    "TrackOutcome",
    "dry_run",
    "failures_path",
    "is_locked",
    "plan_batch",
    "plan_work",
    "read_failed_tracks",
    "run_batch",
]
