"""The dataset runner: walk a tree, describe every track that still lacks our keys, write sidecars safely.

Built for runs of days over tens of thousands of tracks, possibly by several processes on one dataset:
- a track whose sidecar already has every requested key is skipped (resume after a crash = run again);
- one failing track never stops the run: it is logged, counted and listed in a failures JSONL (:mod:`.failures`:
  one record per track, cleared when it succeeds; a track another process failed in this run is not retried);
- each track is locked (filelock, in ``<root>/.music-flamingo/locks``) while it is analysed, so processes sharing
  a dataset do each track once; a locked track is skipped, not waited for;
- the next tracks are decoded and resampled on a background thread while the engine works on the current ones;
- with ``tracks_in_flight > 1`` several tracks decode together in the engine's batch steps (continuous batching);
- Ctrl-C stops between tracks or decode steps; sidecars are written atomically, so none is left half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import lifecycle, validation
from ._logging import logger
from .analyzer import Analyzer
from .audio import PreparedAudio, prepare_audio
from .errors import SidecarError
from .failures import FailureLog
from .sidecar import has_keys, remove_stale_temp_files, sidecar_path, update_sidecar

AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif", ".alac",
                    ".mp4", ".webm", ".mka"}
STATE_DIR = ".music-flamingo"


def is_audio(p: Path) -> bool:
    return p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")


def discover_tracks(root: Path) -> list[Path]:
    """Every track under ``root``, sorted. In an organized track folder (one holding ``full_mix.<ext>``) the tracks
    are the full mix and its crops (files with "crop" in the name); stems and other files there are not tracks.
    Elsewhere every audio file is a track. Hidden folders are skipped."""
    root = Path(root)
    if root.is_file():
        return [root]
    tracks: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = sorted(Path(dirpath) / f for f in filenames)
        audio = [f for f in files if is_audio(f)]
        if any(f.stem == "full_mix" for f in audio):
            audio = [f for f in audio if f.stem == "full_mix" or "crop" in f.stem.lower()]
        tracks.extend(audio)
    return tracks


@dataclass
class BatchOptions:
    overwrite: bool = False
    write_sidecars: bool = True
    jsonl: Path | None = None          # one line per analysed track (a manifest), besides or instead of sidecars
    failures: Path | None = None       # default: <root>/.music-flamingo/failures.jsonl
    progress: bool = True
    prefetch: bool = True
    tracks_in_flight: int = 4          # >1: tracks decoded together in the engine's batch steps (continuous batching)

    def __post_init__(self) -> None:
        validation.require("tracks_in_flight", validation.tracks_in_flight(self.tracks_in_flight))


@dataclass
class BatchSummary:
    total: int = 0
    done: int = 0
    skipped_complete: int = 0
    skipped_locked: int = 0            # another process has the track, or failed it during this run
    failed: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    failures_file: str | None = None
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: all done; 1: some tracks failed; 130: interrupted (as shells report Ctrl-C)."""
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    def line(self) -> str:
        s = (f"{self.done} done, {self.skipped_complete} skipped (complete), {self.skipped_locked} skipped (locked), "
             f"{self.failed} failed of {self.total} tracks in {self.seconds:.1f} s")
        if self.interrupted:
            s += " (interrupted)"
        if self.failures_file:
            s += f"; failures: {self.failures_file}"
        return s


class _Prefetcher:
    """Decodes the next track on one background thread while the engine works on the current one."""

    def __init__(self, load: Callable[[Path], PreparedAudio], enabled: bool) -> None:
        self._load = load
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mf-decode") if enabled else None
        self._pending: dict[Path, Future] = {}

    def want(self, path: Path | None) -> None:
        if self._pool is not None and path is not None and path not in self._pending:
            self._pending[path] = self._pool.submit(self._load, path)

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


def _lock_path(state_dir: Path, track: Path) -> Path:
    digest = hashlib.sha1(str(track.resolve()).encode("utf-8", "surrogatepass")).hexdigest()
    return state_dir / "locks" / f"{digest}.lock"


def run_batch(analyzer: Analyzer, root: str | os.PathLike, options: BatchOptions | None = None,
              on_result: Callable[[Path, dict[str, Any]], None] | None = None) -> BatchSummary:
    """Describe every incomplete track under ``root``; returns the counts. Never raises for a single track."""
    from filelock import FileLock, Timeout

    opts = options or BatchOptions()
    root = Path(root)
    base = root if root.is_dir() else root.parent
    state_dir = base / STATE_DIR
    (state_dir / "locks").mkdir(parents=True, exist_ok=True)
    failures = FailureLog(opts.failures or state_dir / "failures.jsonl")
    failures.start()
    if root.is_dir():
        remove_stale_temp_files(root)  # of sidecar writes killed in earlier runs
    keys = [e.key for e in analyzer.entries]
    t0 = time.monotonic()
    summary = BatchSummary()
    tracks = discover_tracks(root)
    summary.total = len(tracks)

    def fail(track: Path, err: BaseException) -> None:
        summary.failed += 1
        summary.failures.append({"path": str(track), "error": type(err).__name__, "message": str(err)})
        failures.record(track, err)
        logger.error("failed: %s: %s: %s", track, type(err).__name__, err)

    def complete(track: Path) -> bool:
        return not opts.overwrite and opts.write_sidecars and has_keys(sidecar_path(track), keys)

    todo: list[Path] = []
    done_before: list[Path] = []
    for t in tracks:
        try:
            if complete(t):
                summary.skipped_complete += 1
                done_before.append(t)
                continue
        except SidecarError as e:
            fail(t, e)
            continue
        todo.append(t)
    failures.clear(done_before)  # listed by an earlier run, done since
    logger.info("%d tracks: %d to analyse, %d already complete", len(tracks), len(todo), summary.skipped_complete)

    max_s = analyzer.max_analysed_seconds()
    prefetch = _Prefetcher(lambda p: prepare_audio(p, None, max_s, name=str(p)), opts.prefetch)
    jsonl = open(opts.jsonl, "a", encoding="utf-8") if opts.jsonl else None
    bar = _progress(len(todo), opts.progress)
    def analyze(group: list[tuple[Path, PreparedAudio]]) -> list[tuple[Path, Any]]:
        """(track, TrackAnalysis or the exception) for each; decoded together where the engine can."""
        if len(group) > 1:
            try:
                results = analyzer.analyze_many([p for _, p in group], opts.tracks_in_flight)
                return [(t, r) for (t, _), r in zip(group, results)]
            except KeyboardInterrupt:
                raise
            except Exception as e:  # find the bad track: one at a time
                logger.warning("a group of %d tracks failed (%s); retrying them one by one", len(group), e)
        out: list[tuple[Path, Any]] = []
        for t, p in group:
            try:
                out.append((t, analyzer.analyze_track(t, prepared=p)))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one bad track never stops the run
                out.append((t, e))
        return out

    # Groups of tracks_in_flight x 2 keep the engine's slots refilled from within a group.
    size = 1 if opts.tracks_in_flight <= 1 else opts.tracks_in_flight * 2
    groups = [todo[i:i + size] for i in range(0, len(todo), size)]
    try:
        for g, tracks_of_group in enumerate(groups):
            lifecycle.raise_if_exiting()  # a batch in a thread at interpreter exit stops as on Ctrl-C
            locks, ready = [], []
            try:
                for track in tracks_of_group:
                    prefetch.want(track)
                for track in groups[g + 1] if g + 1 < len(groups) else []:
                    prefetch.want(track)
                for track in tracks_of_group:
                    lock = FileLock(str(_lock_path(state_dir, track)))
                    try:
                        lock.acquire(timeout=0)
                    except Timeout:
                        summary.skipped_locked += 1
                        logger.info("locked by another process, skipped: %s", track)
                        prefetch.drop(track)
                        bar.update(1)
                        continue
                    locks.append(lock)
                    if complete(track):  # another process finished it since we looked
                        summary.skipped_complete += 1
                        prefetch.drop(track)
                        bar.update(1)
                        continue
                    if failures.failed_elsewhere(track):  # not retried by every process of this run
                        summary.skipped_locked += 1
                        logger.info("failed in another process during this run, skipped: %s", track)
                        prefetch.drop(track)
                        bar.update(1)
                        continue
                    try:
                        ready.append((track, prefetch.get(track)))
                    except Exception as e:  # undecodable audio
                        fail(track, e)
                        bar.update(1)
                for track, result in analyze(ready):
                    try:
                        if isinstance(result, Exception):
                            raise result
                        fields = result.sidecar_fields()
                        if opts.write_sidecars:
                            update_sidecar(sidecar_path(track), fields)
                        if jsonl is not None:
                            jsonl.write(json.dumps({"path": str(track), **fields}, ensure_ascii=False) + "\n")
                            jsonl.flush()
                        if on_result is not None:
                            on_result(track, fields)
                        summary.done += 1
                        failures.clear(track)
                    except Exception as e:  # one bad track never stops the run
                        fail(track, e)
                    bar.update(1)
                    bar.set_postfix(done=summary.done, failed=summary.failed, refresh=False)
            finally:
                for lock in locks:
                    lock.release()
    except KeyboardInterrupt:
        summary.interrupted = True
        logger.warning("interrupted: stopping; no sidecar is left half-written")
    finally:
        bar.close()
        prefetch.close()
        failures.close()
        if jsonl is not None:
            jsonl.close()
    summary.seconds = time.monotonic() - t0
    if summary.failures:
        summary.failures_file = str(failures.path)
    return summary


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


def summary_dict(s: BatchSummary) -> dict[str, Any]:
    d = asdict(s)
    d.pop("failures")
    d["exit_code"] = s.exit_code
    return d


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


__all__ = ["BatchOptions", "BatchSummary", "discover_tracks", "run_batch", "summary_dict", "iter_jsonl",
           "AUDIO_EXTENSIONS"]
