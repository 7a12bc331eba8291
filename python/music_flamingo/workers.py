"""Every device of one machine from one command: one worker process per device (or several engines on CPU), one
progress bar, one summary, one exit code (``music-flamingo DIR --batch --devices 0,1,2,3`` / ``--workers N``).

The parent plans the run once, with the single-process runner's own discovery, selection and sidecar checks
(:func:`~music_flamingo.batch.plan_batch`), and hands the tracks out one at a time as the workers ask for them.
A worker is ``python -m music_flamingo`` with the user's own arguments plus ``--worker-fd``: it loads its engine
once, with the build's device-visibility variable (:data:`VISIBILITY`) set to its device, and runs the ordinary
:func:`~music_flamingo.batch.run_batch` over the tracks it is given — the same per-track locks, sidecar merge,
provenance, manifest and failures file as a single process — reporting each track's outcome on a pipe.

Why the parent hands the tracks out rather than letting each worker walk the dataset and rely on the locks alone:
with ``--overwrite`` or ``--no-sidecar`` a track another worker has finished looks like a new one, so two workers
walking the same list could both do it; and only a parent that knows who holds what can give a dead worker's
tracks back to the queue.

A worker that dies (killed, out of memory, a crash in a driver) is reported. The tracks it held and had not
finished go back to the queue once — a track held by two workers that died is failed rather than tried a third
time — and a fresh worker takes the dead one's place unless that place has lost :data:`MAX_DEATHS` workers. A
worker holds the tracks of its current group and of the next one (being decoded), and the parent cannot tell
which of them killed it, so the tracks given back are spread through the queue, as far apart as one worker's
hold, so that an innocent track is rarely in hand again when the guilty one strikes twice. A worker that dies
before its engine is loaded is not replaced (its device or its options are wrong): its output is shown and the
others go on.

Protocol, one JSON value a line. Worker → parent, on the pipe: ``{"event": "ready"}`` once the engine is loaded,
``{"event": "want"}`` when it needs a track, ``{"event": "track", "path", "status", "error", "message"}`` per
outcome. Parent → worker, on the worker's stdin: a track path, or ``null`` (no more work). POSIX only (the pipe is
an inherited file descriptor).
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

from ._logging import logger
from .batch import BatchOptions, BatchSummary, TrackOutcome, _progress, failures_path, plan_work, run_batch

# ggml backend name (``system_info()["backends"]``) -> the variable that limits which devices a process sees.
# ROCm: Ray sets HIP_VISIBLE_DEVICES too; ROCR_VISIBLE_DEVICES, if the user set it, filters before it and is kept.
VISIBILITY: dict[str, str] = {
    "CUDA": "CUDA_VISIBLE_DEVICES",
    "ROCm": "HIP_VISIBLE_DEVICES",
    "MUSA": "MUSA_VISIBLE_DEVICES",
    "Vulkan": "GGML_VK_VISIBLE_DEVICES",
}
# The transformers backend runs on torch, which honours CUDA_VISIBLE_DEVICES on CUDA and ROCm builds alike.
TORCH_VISIBILITY = "CUDA_VISIBLE_DEVICES"
MAX_DEATHS = 3          # workers lost in one place before it is given up
_STOP_GRACE_S = 60.0    # how long a worker may take to stop after Ctrl-C before it is killed


def visibility_variables(backends: Sequence[str]) -> list[str]:
    """The device-visibility variables of the GPU backends in ``backends`` (``[]`` for a CPU-only build)."""
    return [VISIBILITY[b] for b in backends if b in VISIBILITY]


@dataclass(frozen=True)
class WorkerSlot:
    """One place for a worker: how the summary names it, what its environment gets, extra CLI arguments."""

    label: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def plan_slots(devices: Sequence[str] | None, workers: int, variables: Sequence[str], *,
               threads: int | None = None, environ: Mapping[str, str] = os.environ) -> list[WorkerSlot]:
    """The workers a run starts. ``devices`` (``--devices``): ``workers`` engines on each, each process seeing
    only its device through ``variables``; a device number counts within what the parent already sees (with
    ``CUDA_VISIBLE_DEVICES=2,3`` set, device 0 is GPU 2), as torch and llama.cpp count. No ``devices``:
    ``workers`` processes that all see what the parent sees (CPU, or every GPU, each engine spread over them).

    ``threads``: the engine's CPU threads per worker; None splits half the logical CPUs (one engine's default)
    among the workers of a CPU-only run, so N engines do not fight over the cores. Raises ValueError for a
    usage error.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if devices is None:
        if threads is None and not variables:
            threads = max(1, (os.cpu_count() or 2) // 2 // workers)
        args = ("--threads", str(threads)) if threads else ()
        return [WorkerSlot(f"worker {i}", {}, args) for i in range(workers)]
    if not variables:
        raise ValueError("--devices: this build has no GPU backend (rebuild with CMAKE_ARGS, see README: GPU builds); "
                         "use --workers N for several engines on CPU")
    if not devices:
        raise ValueError("--devices: no device given")
    args = ("--threads", str(threads)) if threads else ()
    slots = []
    for dev in devices:
        env = {}
        for var in variables:
            seen = environ.get(var)
            if seen is None or seen.strip() == "":
                env[var] = dev
                continue
            listed = [d.strip() for d in seen.split(",") if d.strip()]
            if not dev.isdigit() or int(dev) >= len(listed):
                raise ValueError(f"--devices {dev}: {var}={seen} leaves devices 0 to {len(listed) - 1} visible")
            env[var] = listed[int(dev)]
        slots += [WorkerSlot(f"device {dev}" + (f"#{i}" if workers > 1 else ""), env, args) for i in range(workers)]
    return slots


@dataclass
class WorkersSummary(BatchSummary):
    """A multi-process run: the counts of all workers together, plus the workers that died and what that cost."""

    workers: int = 0
    deaths: list[dict[str, Any]] = field(default_factory=list)  # worker, pid, how, the tracks it held
    requeued: int = 0                                           # tracks given back to the queue
    no_worker: bool = False                                     # no worker could be started: a setup error

    @property
    def exit_code(self) -> int:
        """As :class:`BatchSummary`, and 2 when no worker could load its engine."""
        return 2 if self.no_worker and not self.interrupted else super().exit_code

    def line(self) -> str:
        s = f"{super().line()}; {self.workers} workers"
        if self.deaths:
            s += (f"; {len(self.deaths)} worker(s) died ("
                  + ", ".join(f"{d['worker']}: {d['how']}" for d in self.deaths)
                  + f"), {self.requeued} track(s) given back to the queue")
        return s


# --- the worker's side --------------------------------------------------------------------------------------------

class _Channel:
    """JSON lines to the parent. A parent that has gone away closes it; the worker then finishes what it holds."""

    def __init__(self, fd: int) -> None:
        self._f: IO[str] | None = os.fdopen(fd, "w", encoding="ascii", buffering=1)

    @property
    def open(self) -> bool:
        return self._f is not None

    def send(self, message: dict[str, Any]) -> None:
        if self._f is None:
            return
        try:
            self._f.write(json.dumps(message) + "\n")  # ASCII: undecodable file names travel as \udcxx escapes
        except (BrokenPipeError, OSError):
            self._f = None
            logger.warning("the parent process is gone: finishing the tracks in hand, then stopping")


def serve(analyzer, root: str | os.PathLike, options: BatchOptions, fd: int,
          stdin: IO[str] | None = None) -> int:
    """The worker: :func:`run_batch` over the tracks the parent writes on ``stdin``, each outcome reported on
    ``fd``. Returns the run's exit code."""
    channel = _Channel(fd)
    source = stdin or sys.stdin
    channel.send({"event": "ready", "pid": os.getpid()})

    def tracks() -> Iterator[str]:
        while channel.open:
            channel.send({"event": "want"})
            line = source.readline()
            if not line:
                return
            path = json.loads(line)
            if path is None:
                return
            yield path

    def report(o: TrackOutcome) -> None:
        channel.send({"event": "track", "path": str(o.path), "status": o.status, "error": o.error,
                      "message": o.message})

    summary = run_batch(analyzer, root, options, tracks=tracks(), on_track=report)
    return summary.exit_code


# --- the parent's side --------------------------------------------------------------------------------------------

@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen
    events: int                                     # read end of the event pipe
    output: int                                     # read end of the worker's stdout + stderr
    ready: bool = False
    held: dict[str, None] = field(default_factory=dict)  # tracks handed out, not yet reported (in order)
    buffers: dict[int, bytes] = field(default_factory=dict)
    open_fds: set[int] = field(default_factory=set)


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _say(line: str) -> None:
    """A line on stderr that does not tear the progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def run_workers(root: str | os.PathLike, command: Sequence[str], slots: Sequence[WorkerSlot], keys: Sequence[str],
                options: BatchOptions | None = None,
                on_event: Callable[[WorkerSlot, int, dict[str, Any]], None] | None = None) -> WorkersSummary:
    """Describe the dataset at ``root`` with one worker process per slot; returns the counts of all of them.

    ``command`` starts a worker engine that takes the tracks and options of this run: ``[python, -m,
    music_flamingo, <the user's arguments>]`` (``--worker-fd``, ``--no-progress`` and the slot's arguments are
    added). ``keys`` and ``options`` plan the run exactly as the single-process runner would. ``on_event(slot,
    pid, event)`` sees every event a worker sends, as it arrives (for tests and dashboards).
    """
    opts = options or BatchOptions()
    root = Path(root)
    t0 = time.monotonic()
    summary = WorkersSummary(workers=len(slots))
    queue: deque[str] = deque(str(p) for p in plan_work(root, keys, opts, summary))
    logger.info("%d tracks: %d to describe with %d workers, %d already complete", summary.total, len(queue),
                len(slots), summary.skipped_complete)

    group = 1 if opts.tracks_in_flight <= 1 else 2 * opts.tracks_in_flight  # as run_batch groups tracks
    hold = 2 * group  # what one worker has in hand: its current group and the next
    bar = _progress(len(queue), opts.progress)
    sel = selectors.DefaultSelector()
    live: dict[int, _Worker] = {}            # by pid
    deaths_of_slot: Counter[int] = Counter()
    retired: set[int] = set()
    died_holding: Counter[str] = Counter()   # track -> workers that died while holding it
    ever_ready = False

    def start(slot_no: int) -> None:
        slot = slots[slot_no]
        ev_r, ev_w = os.pipe()
        argv = [*command, "--no-progress", "--worker-fd", str(ev_w), *slot.args]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    pass_fds=(ev_w,), env={**os.environ, **slot.env}, start_new_session=True)
        finally:
            os.close(ev_w)
        assert proc.stdout is not None
        w = _Worker(slot_no, proc, ev_r, proc.stdout.fileno())
        for fd in (w.events, w.output):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, w)
            w.open_fds.add(fd)
            w.buffers[fd] = b""
        live[proc.pid] = w
        env = " ".join(f"{k}={v}" for k, v in slot.env.items())
        logger.info("started %s (pid %d%s)", slot.label, proc.pid, f", {env}" if env else "")

    def reply(w: _Worker, path: str | None) -> None:
        assert w.proc.stdin is not None
        try:
            w.proc.stdin.write((json.dumps(path) + "\n").encode("ascii"))
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: its end is handled when its pipes close

    def outcome(w: _Worker, ev: dict[str, Any]) -> None:
        path = ev["path"]
        w.held.pop(path, None)
        status = ev["status"]
        setattr(summary, status, getattr(summary, status) + 1)
        if status == "failed":
            summary.failures.append({"path": path, "error": ev["error"], "message": ev["message"]})
        bar.update(1)
        bar.set_postfix(done=summary.done, failed=summary.failed, refresh=False)

    def handle(w: _Worker, ev: dict[str, Any]) -> None:
        if on_event is not None:
            on_event(slots[w.slot], w.proc.pid, ev)
        nonlocal ever_ready
        kind = ev.get("event")
        if kind == "ready":
            w.ready = ever_ready = True
        elif kind == "want":
            if queue and not summary.interrupted:
                path = queue.popleft()
                w.held[path] = None
                reply(w, path)
            else:
                reply(w, None)
        elif kind == "track":
            outcome(w, ev)

    def lines(w: _Worker, fd: int, data: bytes) -> None:
        buf = w.buffers[fd] + data
        *complete, w.buffers[fd] = buf.split(b"\n")
        for raw in complete:
            if fd == w.output:
                _say(f"[{slots[w.slot].label}] {raw.decode('utf-8', 'replace').rstrip()}")
                continue
            try:
                ev = json.loads(raw)
            except ValueError:
                logger.warning("%s sent a line that is not JSON: %r", slots[w.slot].label, raw[:200])
                continue
            handle(w, ev)

    def ended(w: _Worker) -> None:
        """Both pipes closed: the worker is gone. Account for what it held; replace it if it died working."""
        try:
            rc = w.proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            rc = w.proc.wait()
        for pipe in (w.proc.stdin, w.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        del live[w.proc.pid]
        label = slots[w.slot].label
        clean = rc in (0, 1) or (summary.interrupted and rc == 130)
        if clean and not w.held:
            return
        if summary.interrupted:  # stopping anyway: what it held is simply not done
            return
        how = _how(rc)
        held = list(w.held)
        summary.deaths.append({"worker": label, "pid": w.proc.pid, "how": how, "tracks": held,
                               "at": "work" if w.ready else "start-up"})
        deaths_of_slot[w.slot] += 1
        if not w.ready:
            retired.add(w.slot)
            logger.error("%s died while loading its engine (%s); not restarted", label, how)
        else:
            logger.error("%s died (%s) holding %d track(s)%s", label, how, len(held),
                         ": " + ", ".join(held) if held else "")
        back = 0
        for path in held:
            if died_holding[path] >= 1:
                summary.failed += 1
                summary.failures.append({"path": path, "error": "WorkerDied",
                                         "message": f"two workers died while it was in hand (last: {how})"})
                bar.update(1)
                logger.error("failed: %s: two workers died while it was in hand", path)
            else:  # back to the queue, first one first, the others one worker's hold apart
                died_holding[path] += 1
                summary.requeued += 1
                queue.insert(min(back * hold, len(queue)), path)
                back += 1
        if w.ready and deaths_of_slot[w.slot] < MAX_DEATHS:
            start(w.slot)
        elif w.ready:
            retired.add(w.slot)
            logger.error("%s: %d workers died there; giving it up", label, deaths_of_slot[w.slot])

    def pump(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            w: _Worker = key.data
            fd = key.fd
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                lines(w, fd, data)
                continue
            sel.unregister(fd)
            if fd != w.output:
                os.close(fd)
            w.open_fds.discard(fd)
            if not w.open_fds:
                ended(w)

    def interrupt() -> None:
        summary.interrupted = True
        logger.warning("interrupted: stopping the workers; no sidecar is left half-written")
        for w in live.values():
            try:
                w.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    try:
        for i in range(len(slots)):
            start(i)
        while live:
            try:
                pump(1.0)
                if not live and queue and not summary.interrupted:
                    # every worker ended (a slot retired, the others done) while tracks were given back
                    spare = next((i for i in range(len(slots)) if i not in retired), None)
                    if spare is not None:
                        start(spare)
            except KeyboardInterrupt:
                if summary.interrupted:  # a second Ctrl-C: stop now
                    for w in live.values():
                        w.proc.kill()
                else:
                    interrupt()
    finally:
        for w in list(live.values()):
            w.proc.kill()
            w.proc.wait()
        sel.close()
        bar.close()
    if queue and not summary.interrupted:
        if not ever_ready:  # no engine could be loaded: a setup error (the workers' output says which)
            summary.no_worker = True
        else:  # every place lost its workers: these tracks had nobody left to describe them
            for path in queue:
                summary.failed += 1
                summary.failures.append({"path": path, "error": "NoWorker",
                                         "message": "no worker was left to describe it"})
    summary.seconds = time.monotonic() - t0
    fpath = failures_path(root, opts.failures)
    if summary.failures and fpath.exists():
        summary.failures_file = str(fpath)
    return summary


__all__ = ["MAX_DEATHS", "TORCH_VISIBILITY", "VISIBILITY", "WorkerSlot", "WorkersSummary", "plan_slots",
           "run_workers", "serve", "visibility_variables"]
