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
worker holds the tracks its engine is describing and the next few (being decoded), and the parent cannot tell
which of them killed it, so the tracks given back are spread through the queue, as far apart as the most a worker
has held, so that an innocent track is rarely in hand again when the guilty one strikes twice. A worker that dies
before its engine is loaded is not replaced (its device or its options are wrong): its output is shown and the
others go on.

A worker that stops making progress — frozen by a hung GPU driver, stopped (SIGSTOP), deadlocked — is taken for dead
the same way (:class:`Deadlines`): the parent measures each worker's pace from the tracks it finished and the
length of their audio (read from the file headers as they are handed out), and a worker that holds tracks and
finishes none within a deadline derived from that pace and the audio it holds (or ``--track-timeout``) is
SIGKILLed (which also ends a stopped process), named, and its tracks go back to the queue once as for a crash.
There is no heartbeat: a thread beating beside an engine stuck in a driver call would look alive; a finished
track is the only sign of health that counts. Loading the engine has its own, generous deadline.

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
import stat
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from . import validation
from ._logging import logger
from .batch import BatchOptions, BatchSummary, TrackOutcome, _progress, failures_path, plan_work, run_batch
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, NoWorker, WorkerDied
from .failures import FailureLog

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
MAX_DEATHS = 3  # workers lost in one place before it is given up
_STOP_GRACE_S = 60.0  # how long a worker may take to stop (after Ctrl-C, or once told there is no more work)
_MODEL_SECONDS = 600.0  # the most audio a track is analysed for without --max-duration (both backends' limit)


@dataclass(frozen=True)
class Deadlines:
    """How long a worker may go without progress before the parent takes it for frozen and kills it.

    Progress is the engine loaded (``ready``) or a track finished. While a worker holds tracks, the next one must
    finish within ``track_timeout`` seconds (``--track-timeout``) or, by default, within ``factor`` times what its
    own pace says everything it holds should take — at least ``floor_s``. Its pace is measured from the tracks it
    finished: wall seconds per track and per second of audio, the larger of the two estimates counting (a short
    track still costs its prompts' full answers; a long one costs its audio's length). Before it finished any
    track (a fresh engine: first allocations, kernels compiled) the deadline is ``first_s``. Loading the engine
    may take ``load_s`` (or ``track_timeout``, if longer). A track's audio counts up to ``max_seconds``, what the
    engine analyses at most (``--max-duration``); a file whose header tells no length counts as that.
    """

    track_timeout: float | None = None
    max_seconds: float = _MODEL_SECONDS
    factor: float = 3.0
    floor_s: float = 120.0
    first_s: float = 900.0
    load_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.track_timeout is not None:
            validation.require("track_timeout", validation.track_timeout(self.track_timeout))

    def for_tracks(self, held_n: int, held_audio: float, done_n: int, done_audio: float, busy_s: float) -> float:
        """The seconds a worker holding ``held_n`` tracks (``held_audio`` seconds of audio) may go without
        finishing one, given ``done_n`` tracks (``done_audio`` s) finished in ``busy_s`` seconds since it took
        its first."""
        if self.track_timeout is not None:
            return self.track_timeout
        if done_n == 0:
            return self.first_s
        expected = max(busy_s / done_n * held_n, busy_s / max(done_audio, 1e-3) * held_audio)
        return max(self.floor_s, self.factor * expected)

    def seconds_of(self, path: str) -> float:
        """A track's audio as the deadlines count it: its length from the file header, at most ``max_seconds``.
        Only regular files are probed (opening a FIFO would block the parent)."""
        from .audio import probe_duration

        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            regular = False
        seconds = probe_duration(path) if regular else None
        return self.max_seconds if seconds is None else min(seconds, self.max_seconds)


def visibility_variables(backends: Sequence[str]) -> list[str]:
    """The device-visibility variables of the GPU backends in ``backends`` (``[]`` for a CPU-only build)."""
    return [VISIBILITY[b] for b in backends if b in VISIBILITY]


@dataclass(frozen=True)
class WorkerSlot:
    """One place for a worker: how the summary names it, what its environment gets, extra CLI arguments."""

    label: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def plan_slots(
    devices: Sequence[str] | None,
    workers: int,
    variables: Sequence[str],
    *,
    threads: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> list[WorkerSlot]:
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
        raise ValueError(
            "--devices: this build has no GPU backend (rebuild with CMAKE_ARGS, see README: GPU builds); "
            "use --workers N for several engines on CPU"
        )
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
    requeued: int = 0  # tracks given back to the queue
    no_worker: bool = False  # no worker could be started: a setup error

    @property
    def exit_code(self) -> int:
        """As :class:`BatchSummary`, and 2 when no worker could load its engine."""
        return EXIT_USAGE if self.no_worker and not self.interrupted else super().exit_code

    def line(self) -> str:
        s = f"{super().line()}; {self.workers} workers"
        if self.deaths:
            s += (
                f"; {len(self.deaths)} worker(s) died ("
                + ", ".join(f"{d['worker']}: {d['how']}" for d in self.deaths)
                + f"), {self.requeued} track(s) given back to the queue"
            )
        return s


# --- the worker's side --------------------------------------------------------------------------------------------


class _Channel:
    """JSON lines to the parent. A parent that has gone away closes it; the worker then finishes what it holds."""

    def __init__(self, fd: int) -> None:
        self._f: IO[str] | None = os.fdopen(fd, "w", encoding="ascii", buffering=1)
        self._lock = threading.Lock()  # outcomes come from the engine's helper thread and the main thread

    @property
    def open(self) -> bool:
        return self._f is not None

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message) + "\n"  # ASCII: undecodable file names travel as \udcxx escapes
        with self._lock:
            if self._f is None:
                return
            try:
                self._f.write(line)
            except OSError:
                self._f = None
                logger.warning("the parent process is gone: finishing the tracks in hand, then stopping")


def serve(analyzer, root: str | os.PathLike, options: BatchOptions, fd: int, stdin: IO[str] | None = None) -> int:
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
        channel.send(
            {"event": "track", "path": str(o.path), "status": o.status, "error": o.error, "message": o.message}
        )

    summary = run_batch(analyzer, root, options, tracks=tracks(), on_track=report)
    return summary.exit_code


# --- the parent's side --------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen
    events: int  # read end of the event pipe
    output: int  # read end of the worker's stdout + stderr
    ready: bool = False  # its engine is loaded
    held: dict[str, float] = field(default_factory=dict)  # tracks handed out, not yet reported (in order): seconds
    buffers: dict[int, bytes] = field(default_factory=dict)  # an unfinished line per pipe
    # For its deadline (Deadlines): when it last made progress, and its pace so far.
    since: float = field(default_factory=time.monotonic)  # started, ready, a track finished, or work handed to it idle
    stopping: bool = False  # told there is no more work
    first_given: float | None = None  # when it was handed its first track
    done_n: int = 0  # tracks it described
    done_audio: float = 0.0  # their audio, in seconds
    busy_s: float = 0.0  # from its first track handed out to its last one described
    frozen: str | None = None  # why the parent killed it, if it did


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


class _Parent:
    """The run as the parent sees it: the queue, the live workers, who holds which track, the summary. One thread:
    a selector loop over every worker's two pipes (its events, its output)."""

    def __init__(
        self,
        command: Sequence[str],
        slots: Sequence[WorkerSlot],
        queue: list[str],
        opts: BatchOptions,
        summary: WorkersSummary,
        on_event: Callable[[WorkerSlot, int, dict[str, Any]], None] | None,
        deadlines: Deadlines,
        failures: FailureLog,
    ) -> None:
        self.command, self.slots, self.summary, self.on_event = list(command), list(slots), summary, on_event
        self.deadlines, self.failures = deadlines, failures
        self.interrupted_at = 0.0
        self.queue: deque[str] = deque(queue)
        self.hold = 1  # the most tracks one worker has had in hand (in its engine, being decoded, just taken)
        self.bar = _progress(len(queue), opts.progress)
        self.sel = selectors.DefaultSelector()
        self.live: dict[int, _Worker] = {}  # by pid
        self.deaths_of_slot: Counter[int] = Counter()
        self.retired: set[int] = set()  # slots given up
        self.died_holding: Counter[str] = Counter()  # track -> workers that died while it was in their hands
        self.ever_ready = False

    def run(self) -> None:
        try:
            for i in range(len(self.slots)):
                self.start(i)
            while self.live:
                try:
                    self.pump(1.0)
                    self.watch()
                    if not self.live and self.queue and not self.summary.interrupted:
                        # every worker ended (the others done, a place given up) while tracks came back
                        spare = next((i for i in range(len(self.slots)) if i not in self.retired), None)
                        if spare is not None:
                            self.start(spare)
                except KeyboardInterrupt:
                    self.interrupt()
        finally:
            for w in list(self.live.values()):
                w.proc.kill()
                w.proc.wait()
            self.sel.close()
            self.bar.close()

    def start(self, slot_no: int) -> None:
        slot = self.slots[slot_no]
        ev_r, ev_w = os.pipe()
        argv = [*self.command, "--no-progress", "--worker-fd", str(ev_w), *slot.args]
        try:  # its own session: a terminal's Ctrl-C reaches the parent only, which stops the workers once
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(ev_w,),
                env={**os.environ, **slot.env},
                start_new_session=True,
            )
        finally:
            os.close(ev_w)
        assert proc.stdout is not None
        w = _Worker(slot_no, proc, ev_r, proc.stdout.fileno())
        for fd in (w.events, w.output):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, w)
            w.buffers[fd] = b""
        self.live[proc.pid] = w
        env = " ".join(f"{k}={v}" for k, v in slot.env.items())
        logger.info("started %s (pid %d%s)", slot.label, proc.pid, f", {env}" if env else "")

    def pump(self, timeout: float) -> None:
        """Read what the workers wrote; a worker whose two pipes have closed is gone."""
        for key, _ in self.sel.select(timeout):
            w: _Worker = key.data
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                self.lines(w, key.fd, data)
                continue
            if key.fd == w.output and w.buffers[key.fd]:
                self.lines(w, key.fd, b"\n")  # its last words, unterminated
            self.sel.unregister(key.fd)
            if key.fd == w.events:
                os.close(key.fd)
            del w.buffers[key.fd]
            if not w.buffers:
                self.ended(w)

    def lines(self, w: _Worker, fd: int, data: bytes) -> None:
        *complete, w.buffers[fd] = (w.buffers[fd] + data).split(b"\n")
        label = self.slots[w.slot].label
        for raw in complete:
            if fd == w.output:
                _say(f"[{label}] {raw.decode('utf-8', 'replace').rstrip()}")
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                logger.warning("%s sent a line that is not JSON: %r", label, raw[:200])
                continue
            self.handle(w, event)

    def handle(self, w: _Worker, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(self.slots[w.slot], w.proc.pid, event)
        kind = event.get("event")
        if kind == "ready":
            w.ready = self.ever_ready = True
            w.since = time.monotonic()
        elif kind == "want":
            path = self.queue.popleft() if self.queue and not self.summary.interrupted else None
            if path is not None:
                self.hand(w, path)
            else:
                w.stopping = True
            self.reply(w, path)
        elif kind == "track":
            self.outcome(w, event)

    def hand(self, w: _Worker, path: str) -> None:
        seconds = self.deadlines.seconds_of(path)
        now = time.monotonic()
        if not w.held:  # it was idle: its clock starts now
            w.since = now
        if w.first_given is None:
            w.first_given = now
        w.held[path] = seconds
        self.hold = max(self.hold, len(w.held))

    def reply(self, w: _Worker, path: str | None) -> None:
        assert w.proc.stdin is not None
        try:
            w.proc.stdin.write((json.dumps(path) + "\n").encode("ascii"))
            w.proc.stdin.flush()
        except OSError:
            pass  # it died: what it held is settled when its pipes close

    def outcome(self, w: _Worker, event: dict[str, Any]) -> None:
        seconds = w.held.pop(event["path"], 0.0)
        status = event["status"]
        w.since = time.monotonic()
        if status == "done" and w.first_given is not None:
            w.done_n, w.done_audio, w.busy_s = w.done_n + 1, w.done_audio + seconds, w.since - w.first_given
        setattr(self.summary, status, getattr(self.summary, status) + 1)
        if status == "failed":
            self.summary.failures.append({k: event[k] for k in ("path", "error", "message")})
        self.bar.update(1)
        self.bar.set_postfix(done=self.summary.done, failed=self.summary.failed, refresh=False)

    def budget(self, w: _Worker) -> float:
        """The seconds ``w`` may go from its last progress (``w.since``) before it is taken for frozen."""
        d = self.deadlines
        if self.summary.interrupted or (w.stopping and not w.held):
            return _STOP_GRACE_S
        if not w.ready:
            return max(d.load_s, d.track_timeout or 0.0)
        return d.for_tracks(len(w.held), sum(w.held.values()), w.done_n, w.done_audio, w.busy_s)

    def watch(self) -> None:
        """Kill the workers that are past their deadline; each is then settled as a crash when its pipes close."""
        now = time.monotonic()
        for w in list(self.live.values()):
            if w.frozen is not None:
                continue
            since = max(w.since, self.interrupted_at)  # after Ctrl-C each gets the stop grace from then
            budget = self.budget(w)
            if now - since <= budget:
                continue
            label, doing = self.slots[w.slot].label, "loading its engine" if not w.ready else "working"
            if w.held:
                doing = f"holding {len(w.held)} track(s), none finished"
            elif w.stopping or self.summary.interrupted:
                doing = "asked to stop"
            w.frozen = f"frozen: no progress in {budget:.0f} s, killed"
            logger.error(
                "%s (pid %d) made no progress in %.0f s (%s); taken for frozen and killed",
                label,
                w.proc.pid,
                now - since,
                doing,
            )
            w.proc.kill()  # SIGKILL ends a stopped (SIGSTOP) process too

    def ended(self, w: _Worker) -> None:
        """The worker is gone. If it died, report it, give back what it held, and replace it."""
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
        del self.live[w.proc.pid]
        clean = rc in (EXIT_OK, EXIT_FAILED) or (self.summary.interrupted and rc == EXIT_INTERRUPTED)
        if (clean and not w.held) or self.summary.interrupted:  # when stopping, what it held is simply not done
            return
        if w.frozen is not None and w.stopping and not w.held:  # hung on its way out: nothing of the run lost
            return
        label, how, held = self.slots[w.slot].label, w.frozen or _how(rc), list(w.held)
        self.summary.deaths.append(
            {"worker": label, "pid": w.proc.pid, "how": how, "tracks": held, "at": "work" if w.ready else "start-up"}
        )
        self.deaths_of_slot[w.slot] += 1
        if not w.ready:
            logger.error("%s died while loading its engine (%s); not replaced", label, how)
        else:
            logger.error(
                "%s died (%s) holding %d track(s)%s", label, how, len(held), ": " + ", ".join(held) if held else ""
            )
        self.give_back(held, how)
        if w.ready and self.deaths_of_slot[w.slot] < MAX_DEATHS:
            self.start(w.slot)
        else:
            self.retired.add(w.slot)
            if w.ready:
                logger.error("%s: %d workers died there; giving it up", label, self.deaths_of_slot[w.slot])

    def give_back(self, held: list[str], how: str) -> None:
        """A dead worker's tracks: to the queue once — the first at its front, the others the most a worker has
        held apart — or, the second time, failed."""
        back = 0
        for path in held:
            if self.died_holding[path]:
                self.fail(path, WorkerDied(f"two workers died while it was in hand (last: {how})"))
                logger.error("failed: %s: two workers died while it was in hand", path)
                continue
            self.died_holding[path] += 1
            self.summary.requeued += 1
            self.queue.insert(min(back * self.hold, len(self.queue)), path)
            back += 1

    def fail(self, path: str, err: Exception) -> None:
        """A track the workers never reported on: counted, and listed in the failures file as a worker's own
        failures are (so ``--retry-failed`` takes it)."""
        self.summary.failed += 1
        self.summary.failures.append({"path": path, "error": type(err).__name__, "message": str(err)})
        self.failures.record(path, err)
        self.bar.update(1)

    def interrupt(self) -> None:
        """Ctrl-C: the workers stop between tracks (SIGINT, as a terminal would); a second one kills them."""
        if self.summary.interrupted:
            for w in self.live.values():
                w.proc.kill()
            return
        self.summary.interrupted = True
        self.interrupted_at = time.monotonic()
        logger.warning("interrupted: stopping the workers; no sidecar is left half-written")
        for w in self.live.values():
            try:
                w.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass


def run_workers(
    root: str | os.PathLike,
    command: Sequence[str],
    slots: Sequence[WorkerSlot],
    keys: Sequence[str],
    options: BatchOptions | None = None,
    on_event: Callable[[WorkerSlot, int, dict[str, Any]], None] | None = None,
    deadlines: Deadlines | None = None,
) -> WorkersSummary:
    """Describe the dataset at ``root`` with one worker process per slot; returns the counts of all of them.

    ``command`` starts a worker engine that takes the tracks and options of this run: ``[python, -m,
    music_flamingo, <the user's arguments>]`` (``--worker-fd``, ``--no-progress`` and the slot's arguments are
    added). ``keys`` and ``options`` plan the run exactly as the single-process runner would. ``on_event(slot,
    pid, event)`` sees every event a worker sends, as it arrives (for tests and dashboards). ``deadlines``: when a
    worker that makes no progress is taken for frozen (default :class:`Deadlines`).
    """
    opts = options or BatchOptions()
    t0 = time.monotonic()
    summary = WorkersSummary(workers=len(slots))
    todo = [str(p) for p in plan_work(root, keys, opts, summary)]
    logger.info(
        "%d tracks: %d to describe with %d workers, %d already complete",
        summary.total,
        len(todo),
        len(slots),
        summary.skipped_complete,
    )
    failures = FailureLog(failures_path(root, opts.failures))
    parent = _Parent(command, slots, todo, opts, summary, on_event, deadlines or Deadlines(), failures)
    try:
        parent.run()
        if parent.queue and not summary.interrupted:
            if not parent.ever_ready:  # no engine could be loaded: a setup error (the workers' output says which)
                summary.no_worker = True
            else:  # every place lost its workers
                for path in parent.queue:
                    parent.fail(path, NoWorker("no worker was left to describe it"))
    finally:
        failures.close()
    summary.seconds = time.monotonic() - t0
    fpath = failures_path(root, opts.failures)
    if summary.failures and fpath.exists():
        summary.failures_file = str(fpath)
    return summary


__all__ = [
    "MAX_DEATHS",
    "Deadlines",
    "TORCH_VISIBILITY",
    "VISIBILITY",
    "WorkerSlot",
    "WorkersSummary",
    "plan_slots",
    "run_workers",
    "serve",
    "visibility_variables",
]
