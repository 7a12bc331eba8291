"""``music-flamingo`` / ``python -m music_flamingo``: describe one file, or a whole dataset with ``--batch``.

Exit codes (defined in :mod:`.errors`): 0 all done, 1 some tracks failed, 2 usage or configuration error (bad
arguments, missing model files, bad prompts YAML), 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import validation
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    InvalidInputError,
    ModelFileError,
    MusicFlamingoError,
    PromptConfigError,
)
from .models import DEFAULT_MODEL
from .validation import cli_type


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="music-flamingo",
        description="Describe music with NVIDIA Music Flamingo: genre, tempo, key, instruments, mood, structure. "
        "Results go to .INFO sidecar files (JSON; other keys in them are kept).",
    )
    p.add_argument("path", type=Path, help="an audio file, or with --batch a dataset folder")
    p.add_argument("--batch", action="store_true", help="walk PATH and describe every track still missing a key")
    m = p.add_argument_group("model")
    m.add_argument(
        "--backend",
        choices=["gguf", "transformers"],
        default="gguf",
        help="inference backend: gguf (llama.cpp, default) or transformers (PyTorch; needs "
        "pip install 'music-flamingo[transformers]')",
    )
    m.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"quantization: any published one by name (Q8_0, {DEFAULT_MODEL} (default), IQ3_M, i1-Q4_K_M ...); a bare "
        "name takes the static or the imatrix (i1-) file already in --model-dir",
    )
    m.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="where the GGUF files are (default: $MUSIC_FLAMINGO_MODEL_DIR or models/music_flamingo)",
    )
    m.add_argument("--model-path", type=Path, default=None, help="any text-model GGUF (with --mmproj)")
    m.add_argument("--mmproj", type=Path, default=None, help="the audio encoder GGUF for --model-path")
    m.add_argument("--offline", action="store_true", help="never download; fail listing the expected files")
    m.add_argument("--n-gpu-layers", type=int, default=-1, help="layers on the GPU (-1: all)")
    m.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto")
    m.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the GGUF engine (default: half the logical CPUs; with --workers on a CPU "
        "build, divided among the workers)",
    )
    m.add_argument(
        "--model-id",
        default="nvidia/music-flamingo-hf",
        help="transformers backend: Hub repository or local folder (default: nvidia/music-flamingo-hf; "
        "also nvidia/music-flamingo-2601-hf)",
    )
    m.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32", "auto"],
        default="bfloat16",
        help="transformers backend: weights and compute precision (default: bfloat16)",
    )
    m.add_argument(
        "--local-files-only",
        action="store_true",
        help="transformers backend: never download, use the Hugging Face cache or a local folder",
    )
    q = p.add_argument_group("prompts and sampling")
    q.add_argument(
        "--prompts",
        default=None,
        help="comma-separated catalogue names (default: full,technical,genre_mood,instrumentation,"
        "structure; also brief, genre_mood_inst, very_brief)",
    )
    q.add_argument(
        "--prompts-file",
        type=Path,
        action="append",
        default=[],
        help="YAML adding or overriding prompts (repeatable); also the pipeline's config/master_pipeline.yaml "
        "(its music_flamingo: prompts and max_tokens)",
    )
    q.add_argument("--prompt", default=None, help="a free-text prompt (key music_flamingo_custom)")
    q.add_argument(
        "--summaries",
        action="store_true",
        help="also ask the pipeline's three short summaries (music_flamingo_short_technical, _short_mood, "
        "_short_genre) as follow-up questions after the full answer, in the same conversation",
    )
    q.add_argument(
        "--followups",
        default=None,
        metavar="NAMES",
        help="comma-separated follow-up questions to ask (default: every one the prompts files name, e.g. the "
        "pipeline config's revision prompts; 'none': none)",
    )
    q.add_argument(
        "--followups-of",
        default=None,
        metavar="NAME",
        help="the prompt whose answer the follow-ups follow (default: full when asked, else the first prompt)",
    )
    q.add_argument(
        "--summaries-only",
        action="store_true",
        help="the catch-up pass: ask only the follow-ups, after the answer each track's sidecar already holds "
        "(text only, no audio decoded); writes only the follow-ups' keys",
    )
    q.add_argument("--temperature", type=cli_type(float, validation.temperature), default=None)
    q.add_argument("--top-p", type=cli_type(float, validation.top_p), default=None)
    q.add_argument("--seed", type=cli_type(int, validation.seed), default=None)
    q.add_argument(
        "--max-duration",
        type=cli_type(float, validation.max_duration),
        default=None,
        help="seconds analysed at most (default: the model's trained length: 600 s for the preview, the GGUF's for converted checkpoints); longer audio is cut",
    )
    q.add_argument(
        "--trim-frac",
        type=cli_type(float, validation.trim_frac),
        default=None,
        metavar="FRAC",
        help="analyse only the first FRAC of each track (0.6: 60 %%), faded out over the last 5 %% of the track "
        "before the cut, within --max-duration; the sidecar records the span analysed",
    )
    q.add_argument(
        "--keep-reasoning",
        action="store_true",
        help="think models: also write each answer's reasoning, as one music_flamingo_reasoning object "
        "{description key: reasoning} (default: the answers alone)",
    )
    q.add_argument(
        "--reasoning-tokens",
        type=int,
        default=None,
        metavar="N",
        help="think models: tokens for the reasoning beyond each prompt's max_tokens (default 1536); an answer "
        "still cut inside its reasoning fails its track",
    )
    o = p.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true", help="redo tracks whose sidecar already has every key")
    o.add_argument("--jsonl", type=Path, default=None, help="also append one JSON line per track to this file")
    o.add_argument("--no-sidecar", action="store_true", help="do not write .INFO files")
    o.add_argument(
        "--failures",
        type=Path,
        default=None,
        help="JSONL of failed tracks (default: PATH/.music-flamingo/failures.jsonl)",
    )
    o.add_argument("--no-progress", action="store_true")
    o.add_argument(
        "--tracks-in-flight",
        type=cli_type(_in_flight, validation.run_setting("tracks_in_flight")),
        default="auto",
        help="tracks decoded together by the GGUF engine (continuous batching; 1: one at a time; "
        "default auto: sized from the device's free memory)",
    )
    d = p.add_argument_group(
        "dataset selection (with --batch)",
        "Tracks: the full_mix.<ext> of each organized folder, the crops <name>_<n> in crops folders, loose audio "
        "elsewhere; stems, crop stems and the pipeline's skip-list folders are not tracks (README: Datasets).",
    )
    d.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="full_mix|crops|loose",
        help="only these kinds of track (repeatable or comma-separated; default: all three)",
    )
    d.add_argument(
        "--stems",
        action="store_true",
        help="describe stems too: the Demucs/DrumSep stems of organized folders and the crops' stems",
    )
    d.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only tracks whose path below PATH matches (repeatable): '*Live*', 'Rock/*', '*.mp3'",
    )
    d.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching tracks (repeatable)")
    src = d.add_mutually_exclusive_group()
    src.add_argument(
        "--from-list",
        metavar="FILE",
        default=None,
        help="only the files listed in FILE ('-': stdin), one path a line, relative to PATH or "
        "absolute; the rules above still apply",
    )
    src.add_argument(
        "--retry-failed", action="store_true", help="only the tracks listed in the failures file of the last run"
    )
    d.add_argument(
        "--sample",
        type=cli_type(float, validation.sample),
        default=None,
        metavar="FRACTION",
        help="take about this share of the tracks (0.5: half), the same ones on every run with the same "
        "--sample-seed; a larger share keeps the tracks a smaller one took",
    )
    d.add_argument("--sample-seed", type=int, default=0, metavar="N", help="which tracks --sample takes (default 0)")
    d.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be done and why, with counts and the audio hours pending; loads no "
        "model and writes nothing",
    )
    s = p.add_argument_group(
        "scaling out (with --batch; README: Scaling out)",
        "Several engines share one run: one progress bar, one summary, one exit code; the same sidecars, locks and "
        "failures file as one process.",
    )
    s.add_argument(
        "--devices",
        default=None,
        metavar="LIST",
        help="one worker process per GPU: device numbers as the build's backend counts them (0,1,2,3) "
        "or 'all'; each worker sees only its device (CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, "
        "GGML_VK_VISIBLE_DEVICES ...)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="engines per device with --devices; without it, N worker processes (CPU engines, or each "
        "over every visible GPU); with --ray, the number of Ray actors (default: one per GPU)",
    )
    s.add_argument(
        "--track-timeout",
        type=cli_type(float, validation.track_timeout),
        default=None,
        metavar="SECONDS",
        help="with --devices/--workers: a worker that holds tracks and finishes none in SECONDS is taken for "
        "frozen (a hung driver), killed and replaced, its tracks given to others (default: from its measured "
        "pace and the length of the audio it holds, at least 120 s; 15 min before its first track). Runs the "
        "engine in a worker even with --workers 1",
    )
    s.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster with Ray Data (pip install 'music-flamingo[ray]'): ADDRESS of the "
        "cluster ('auto', 'ray://head:10001'), or none to use $RAY_ADDRESS or start a local one",
    )
    s.add_argument(
        "--ray-output",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --ray: also write one row per track (path, status, error, timings, texts) as Parquet files in DIR",
    )
    s.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker of --devices/--workers
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress details; -vv: llama.cpp too")
    return p


def _file_problem(a: argparse.Namespace) -> str | None:
    """The file arguments checked before anything loads (:mod:`.fsutil` rules): one output path serves one role
    (``--failures m.jsonl --jsonl m.jsonl`` once deleted the manifest), ``--failures`` names a failures file or
    nothing yet (a user's notes were deleted once their "last record" cleared), ``--jsonl`` a regular file."""
    from .batch import failures_path
    from .failures import not_a_failures_file
    from .fsutil import file_kind, same_file

    outputs = [("--jsonl", a.jsonl), ("--failures", failures_path(a.path, a.failures)), ("--ray-output", a.ray_output)]
    inputs = [("--from-list", a.from_list if a.from_list not in (None, "-") else None), ("PATH", a.path)]
    inputs += [("--prompts-file", p) for p in a.prompts_file]
    outputs = [(o, Path(p)) for o, p in outputs if p is not None]
    others = outputs + [(o, Path(p)) for o, p in inputs if p is not None]
    for i, (o1, p1) in enumerate(outputs):
        for o2, p2 in others[i + 1 :]:
            if same_file(p1, p2):
                return f"{o1} and {o2} name the same file ({p2}): one path cannot serve two roles"
    if a.failures is not None:
        problem = not_a_failures_file(a.failures)
        if problem is not None:
            return f"--failures: {problem}"
    if a.jsonl is not None and a.jsonl.exists():
        kind = file_kind(a.jsonl.stat().st_mode)
        if kind is not None:
            return f"--jsonl: {a.jsonl} is {kind}, not a regular file"
    return None


def _preflight(a: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    """The file arguments and the prompts checked before anything loads; False (the message printed) when the run
    must not start. A file problem is argparse's usage error (exit 2 from ``parser.error``)."""
    problem = _file_problem(a)
    if problem is not None:
        parser.error(problem)
    try:  # prompts and their files, before any model loads (a 10 MB prompt once failed each track in turn)
        _analysis_options(a).asked()
    except (InvalidInputError, PromptConfigError) as e:
        print(f"music-flamingo: {e}", file=sys.stderr)
        return False
    return True


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("music_flamingo").setLevel(level)


def _analysis_options(a: argparse.Namespace):
    """What to ask and how (:class:`~music_flamingo.analyzer.AnalysisOptions`): --prompts (default: the
    catalogue's set), --prompt, --prompts-file, the sampling options and --max-duration. The one place the command
    line turns them into options, for the engines and for the keys a run writes."""
    from .analyzer import AnalysisOptions
    from .prompts import SUMMARIES_FILE

    names = [n.strip() for n in a.prompts.split(",") if n.strip()] if a.prompts else None
    followups = None if a.followups is None else [n.strip() for n in a.followups.split(",") if n.strip()]
    return AnalysisOptions(
        prompts=names or None,
        prompt=a.prompt,
        prompts_files=[SUMMARIES_FILE, *a.prompts_file] if a.summaries else a.prompts_file,
        followups=[] if followups == ["none"] else followups,
        followups_of=a.followups_of,
        catch_up=a.summaries_only,
        temperature=a.temperature,
        top_p=a.top_p,
        seed=a.seed,
        max_duration=a.max_duration,
        trim_frac=a.trim_frac,
        keep_reasoning=a.keep_reasoning,
        reasoning_tokens=a.reasoning_tokens,
    )


def _make_analyzer(a: argparse.Namespace):
    """The model the options name (public constructors only), holding the analyzer of these options."""
    options = _analysis_options(a)
    if a.backend == "transformers":
        from .transformers_backend import MusicFlamingoTransformers

        return MusicFlamingoTransformers(
            a.model_id,
            use_flash_attention=a.flash_attn != "off",
            dtype=a.dtype,
            local_files_only=a.local_files_only,
            options=options,
        )
    from .gguf_backend import MusicFlamingoGGUF

    return MusicFlamingoGGUF(
        model_name=a.model,
        model_dir=a.model_dir,
        model_path=a.model_path,
        mmproj_path=a.mmproj,
        offline=a.offline,
        options=options,
        n_gpu_layers=a.n_gpu_layers,
        n_threads=a.threads,
        flash_attn={"auto": "auto", "on": True, "off": False}[a.flash_attn],
        verbose=a.verbose >= 2,
    )


def _run_single(mf, a: argparse.Namespace) -> int:
    """One file through the batch runner (the same lock, sidecar merge, JSONL line, failures file and exit codes
    as a dataset run), always described anew; its descriptions are printed."""
    from .batch import BatchOptions, TrackOutcome, run_batch
    from .sidecar import sidecar_path

    keys = mf.analyzer.keys()
    outcome: list[TrackOutcome] = []
    options = BatchOptions(
        overwrite=True, write_sidecars=not a.no_sidecar, jsonl=a.jsonl, failures=a.failures, progress=False
    )
    summary = run_batch(mf, a.path, options, tracks=[a.path], on_track=outcome.append)
    if summary.interrupted:
        print("interrupted", file=sys.stderr)
        return summary.exit_code
    o = outcome[0] if outcome else None
    if o is not None and o.fields is not None:  # described, even if the sidecar could not be written (read-only)
        for key in keys:
            print(f"{key}:\n{o.fields[key]}\n")
    if o is not None and o.status == "done":
        if not a.no_sidecar:
            print(f"wrote {sidecar_path(a.path)}", file=sys.stderr)
        return summary.exit_code
    if o is not None and o.status == "failed":
        print(f"music-flamingo: {o.error}: {o.message}", file=sys.stderr)
        return summary.exit_code
    # the only other outcome of an overwriting run: another process holds the track's lock and is describing it
    print(f"music-flamingo: {a.path} is being described by another process right now; nothing done", file=sys.stderr)
    return EXIT_FAILED


def _selection(a: argparse.Namespace):
    """--only/--stems/--include/--exclude/--from-list as a discovery.Selection (ValueError: a usage error)."""
    from .discovery import GROUPS, Selection, read_path_list

    only = {g.strip() for v in a.only for g in v.split(",") if g.strip()} if a.only else set(GROUPS)
    paths = None
    if a.from_list is not None:
        try:
            paths = read_path_list(a.from_list)
        except OSError as e:
            raise ValueError(f"--from-list: cannot read {a.from_list}: {e}") from e
    return Selection(
        only=frozenset(only),
        stems=a.stems,
        include=tuple(a.include),
        exclude=tuple(a.exclude),
        paths=paths,
        sample=a.sample,
        sample_seed=a.sample_seed,
    )


def _batch_options(a: argparse.Namespace, selection):
    from .batch import BatchOptions

    return BatchOptions(
        overwrite=a.overwrite,
        write_sidecars=not a.no_sidecar,
        jsonl=a.jsonl,
        failures=a.failures,
        progress=not a.no_progress,
        tracks_in_flight=a.tracks_in_flight,
        selection=selection,
        retry_failed=a.retry_failed,
    )


def _run_batch(mf, a: argparse.Namespace, selection) -> int:
    from .batch import run_batch

    summary = run_batch(mf, a.path, _batch_options(a, selection))
    print(summary.line(), file=sys.stderr)
    return summary.exit_code


def _keys(a: argparse.Namespace) -> list[str]:
    """The sidecar keys a run with these options writes, from the prompt catalogue alone (no model loaded)."""
    return _analysis_options(a).keys()


def _dry_run(a: argparse.Namespace, selection) -> int:
    """The plan of the run these options would start, on stdout; no model is loaded, nothing is written."""
    from .batch import dry_run

    report = dry_run(a.path, _keys(a), _batch_options(a, selection))
    for line in report.listing():
        print(line)
    print(report.table())
    return EXIT_OK


def _in_flight(value: str) -> int | str:
    """--tracks-in-flight: 'auto' or an integer, as the engine takes it (its range is checked where it enters C++:
    validation.run_setting)."""
    return value if value == "auto" else int(value)


def _prepare_model_files(a: argparse.Namespace) -> list[str]:
    """Before several engines start: find or download the GGUF files once, here, and the arguments that keep the
    engines from downloading them again (each then only looks them up)."""
    if a.backend != "gguf" or a.model_path is not None:
        return []
    from .models import resolve_model_files

    resolve_model_files(a.model, a.model_dir, offline=a.offline)
    return ["--offline"]


def _gpu_devices() -> list[str]:
    """``--devices all``: the GPUs this build's backends found (numbered as the backend numbers them)."""
    from .native import system_info

    return [str(i) for i, d in enumerate(d for d in system_info()["devices"] if d["type"] == "gpu")]


def _run_workers(a: argparse.Namespace, selection, argv: list[str]) -> int:
    """--devices / --workers: one worker process per device (or N on CPU), one bar, one summary, one exit code."""
    from .native import system_info
    from .workers import TORCH_VISIBILITY, Deadlines, plan_slots, run_workers, visibility_variables

    variables = [TORCH_VISIBILITY] if a.backend == "transformers" else visibility_variables(system_info()["backends"])
    devices = None
    if a.devices is not None:
        devices = (
            _gpu_devices() if a.devices.strip() == "all" else [d.strip() for d in a.devices.split(",") if d.strip()]
        )
    try:
        slots = plan_slots(devices, a.workers or 1, variables, threads=a.threads)
    except ValueError as e:
        print(f"music-flamingo: {e}", file=sys.stderr)
        return EXIT_USAGE
    keys = _keys(a)
    extra = _prepare_model_files(a)
    command = [sys.executable, "-m", "music_flamingo", *argv, *extra]
    deadlines = Deadlines(track_timeout=a.track_timeout, max_seconds=a.max_duration or Deadlines.max_seconds)
    summary = run_workers(a.path, command, slots, keys, _batch_options(a, selection), deadlines=deadlines)
    print(summary.line(), file=sys.stderr)
    return summary.exit_code


def _run_ray(a: argparse.Namespace, selection) -> int:
    """--ray: the run on a Ray cluster (music_flamingo.distributed), the same sidecars, one summary."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        print("music-flamingo: --ray needs Ray Data: pip install 'music-flamingo[ray]'", file=sys.stderr)
        return EXIT_USAGE
    from ray.exceptions import RayError

    try:
        summary = _ray_summary(a, selection)
    except RayError as e:  # an actor could not start (its engine did not load), the cluster went away ...
        print(f"music-flamingo: the Ray run failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(summary.line(), file=sys.stderr)
    return summary.exit_code


def _ray_summary(a: argparse.Namespace, selection):
    """The Ray run itself: this command line's own engine options on every actor."""
    import functools

    from .distributed import describe_with_ray
    from .native import system_info
    from .workers import visibility_variables

    engine = vars(a).copy()
    if _prepare_model_files(a):  # fetched here, once
        engine["offline"] = True
    if engine["threads"] is None and not visibility_variables(system_info()["backends"]):
        engine["threads"] = 1  # CPU actors: one core each (describe_with_ray's cpus_per_actor), not half the node
    return describe_with_ray(
        a.path,
        functools.partial(_make_analyzer, argparse.Namespace(**engine)),
        keys=_keys(a),
        options=_batch_options(a, selection),
        actors=a.workers,
        address=a.ray or None,
        output=a.ray_output,
    )


class _Interrupts:
    """The handler of SIGINT and SIGTERM while :func:`main` runs: a ``KeyboardInterrupt``, as Python's own Ctrl-C
    (SIGTERM, what job schedulers and ``kill`` send, stops the same way: between steps, summary printed), until the
    exit code is decided; from then on ignored. A Ctrl-C pressed again while Python joins threads and runs its exit
    handlers once turned exit 130 into a death by signal."""

    def __init__(self) -> None:
        self.decided = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.decided:
            raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["convert"]:  # `music-flamingo convert SRC OUT_DIR`: its own command line (convert.py)
        from .convert import main as convert_main

        return convert_main(args[1:])
    on_main_thread = threading.current_thread() is threading.main_thread()
    handler, previous = _Interrupts(), {}
    if on_main_thread:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = None
    try:
        code = _main(argv)
    except KeyboardInterrupt:  # pressed again while the first one's stop or summary was under way
        pass
    except BrokenPipeError:  # `music-flamingo ... --dry-run | head -1`: the reader is gone
        _quiet_stdout()
        code = EXIT_OK
    finally:
        # An attribute store, not a call: Python runs a pending signal's handler at a call's entry (and on loops),
        # so a Ctrl-C landing here once raised out of a decide() method's first line and killed the process by
        # SIGINT instead of exit 130 (seen under load in test_ctrl_c_pressed_again_and_again_still_exits_130).
        handler.decided = True
        if argv is not None:  # called from Python (tests, another program): give its handlers back
            for sig, old in previous.items():
                signal.signal(sig, old)
        elif on_main_thread:  # the program: Python's finalization resets handlers to the default (death by SIGINT)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return EXIT_INTERRUPTED if code is None else code


def _quiet_stdout() -> None:
    """Exit quietly, as Unix tools do when their reader goes away: stdout to /dev/null, so that Python's own
    flush at exit does not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(argv)
    _setup_logging(a.verbose)
    _check_arguments(a, parser)
    if not _preflight(a, parser):
        return EXIT_USAGE
    selection = None
    if a.batch and a.worker_fd is None:  # a worker takes its tracks from its parent, which chose them
        try:
            selection = _selection(a)
        except ValueError as e:
            parser.error(str(e))
    return _run(a, selection, argv)


def _check_arguments(a: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The combinations of arguments argparse cannot check itself; a bad one is a usage error (exit 2)."""
    if (a.model_path is None) != (a.mmproj is None):
        parser.error("--model-path and --mmproj go together")
    if not a.path.exists():
        parser.error(f"{a.path} does not exist")
    if a.batch != a.path.is_dir():
        parser.error("--batch needs a folder" if a.batch else f"{a.path} is a folder: add --batch")
    batch_only = [
        o
        for o, v in [
            ("--only", a.only),
            ("--stems", a.stems),
            ("--include", a.include),
            ("--exclude", a.exclude),
            ("--from-list", a.from_list),
            ("--retry-failed", a.retry_failed),
            ("--sample", a.sample is not None),
            ("--dry-run", a.dry_run),
            ("--devices", a.devices),
            ("--workers", a.workers),
            ("--track-timeout", a.track_timeout),
            ("--ray", a.ray is not None),
            ("--ray-output", a.ray_output),
        ]
        if v
    ]
    if batch_only and not a.batch:
        parser.error(f"{', '.join(batch_only)}: only with --batch")
    if a.ray is not None and a.devices is not None:
        parser.error("--ray and --devices: Ray gives each actor its GPU; use --workers for the number of actors")
    if a.ray_output is not None and a.ray is None:
        parser.error("--ray-output: only with --ray")
    if a.track_timeout is not None and a.ray is not None:
        parser.error("--track-timeout: only with --devices/--workers (Ray restarts an actor that dies)")
    for opt, n in (("--workers", a.workers), ("--threads", a.threads)):
        if n is not None and n < 1:
            parser.error(f"{opt} must be at least 1, got {n}")


def _run(a: argparse.Namespace, selection, argv: list[str]) -> int:
    """The command's work, its arguments checked: a dry run, worker processes or Ray actors, or this process's own
    engine. An exception that ends it becomes the exit code in one place, :func:`_exit_code`."""
    mf = None
    try:
        if a.dry_run:
            return _dry_run(a, selection)
        workers = a.devices is not None or (a.workers or 1) > 1 or a.track_timeout is not None
        if a.worker_fd is None and (a.ray is not None or workers):
            return _run_ray(a, selection) if a.ray is not None else _run_workers(a, selection, argv)
        mf = _make_analyzer(a)
        if a.worker_fd is not None:
            from .workers import serve

            return serve(mf, a.path, _batch_options(a, None), a.worker_fd)
        return _run_batch(mf, a, selection) if a.batch else _run_single(mf, a)
    except BaseException as e:
        code = _exit_code(e, engine_loaded=mf is not None)
        if code is None:
            raise
        return code
    finally:
        if mf is not None:
            try:
                mf.close()
            except KeyboardInterrupt:  # Ctrl-C while freeing the model: the work is already saved
                pass


def _exit_code(e: BaseException, *, engine_loaded: bool) -> int | None:
    """The exit code of an exception that ends the command, its message printed; None for any other exception
    (it goes on up, with its traceback: a bug to report). Before an engine runs here, a model file, prompt or
    setting error is the user's configuration (2): an engine setting out of range (``--threads 1000000``) is refused
    by the engine itself, with its name, before the model loads; once one runs, any error of this package fails the
    run (1)."""
    if isinstance(e, KeyboardInterrupt):
        if engine_loaded:
            print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not engine_loaded and isinstance(e, (ModelFileError, PromptConfigError, InvalidInputError)):
        print(f"music-flamingo: {e}", file=sys.stderr)
        return EXIT_USAGE
    if engine_loaded and isinstance(e, MusicFlamingoError):
        print(f"music-flamingo: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return None


if __name__ == "__main__":
    sys.exit(main())
