"""``music-flamingo`` / ``python -m music_flamingo``: describe one file, or a whole dataset with ``--batch``.

Exit codes: 0 all done, 1 some tracks failed, 2 usage or configuration error (bad arguments, missing model files,
bad prompts YAML), 130 interrupted (Ctrl-C or SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from . import validation
from .errors import ModelFileError, MusicFlamingoError, PromptConfigError
from .validation import cli_type

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="music-flamingo",
        description="Describe music with NVIDIA Music Flamingo: genre, tempo, key, instruments, mood, structure. "
                    "Results go to .INFO sidecar files (JSON; other keys in them are kept).")
    p.add_argument("path", type=Path, help="an audio file, or with --batch a dataset folder")
    p.add_argument("--batch", action="store_true", help="walk PATH and describe every track still missing a key")
    m = p.add_argument_group("model")
    m.add_argument("--backend", choices=["gguf", "transformers"], default="gguf",
                   help="inference backend: gguf (llama.cpp, default) or transformers (PyTorch; needs "
                        "pip install 'music-flamingo[transformers]')")
    m.add_argument("--model", default="Q6_K", help="quantization: Q8_0, Q6_K (default) or IQ3_M")
    m.add_argument("--model-dir", type=Path, default=None,
                   help="where the GGUF files are (default: $MUSIC_FLAMINGO_MODEL_DIR or models/music_flamingo)")
    m.add_argument("--model-path", type=Path, default=None, help="any text-model GGUF (with --mmproj)")
    m.add_argument("--mmproj", type=Path, default=None, help="the audio encoder GGUF for --model-path")
    m.add_argument("--offline", action="store_true", help="never download; fail listing the expected files")
    m.add_argument("--n-gpu-layers", type=int, default=-1, help="layers on the GPU (-1: all)")
    m.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto")
    m.add_argument("--model-id", default="nvidia/music-flamingo-hf",
                   help="transformers backend: Hub repository or local folder (default: nvidia/music-flamingo-hf; "
                        "also nvidia/music-flamingo-2601-hf)")
    m.add_argument("--dtype", choices=["bfloat16", "float16", "float32", "auto"], default="bfloat16",
                   help="transformers backend: weights and compute precision (default: bfloat16)")
    m.add_argument("--local-files-only", action="store_true",
                   help="transformers backend: never download, use the Hugging Face cache or a local folder")
    q = p.add_argument_group("prompts and sampling")
    q.add_argument("--prompts", default=None,
                   help="comma-separated catalogue names (default: full,technical,genre_mood,instrumentation,"
                        "structure; also brief, genre_mood_inst, very_brief)")
    q.add_argument("--prompts-file", type=Path, action="append", default=[],
                   help="YAML adding or overriding prompts (repeatable)")
    q.add_argument("--prompt", default=None, help="a free-text prompt (key music_flamingo_custom)")
    q.add_argument("--temperature", type=cli_type(float, validation.temperature), default=None)
    q.add_argument("--top-p", type=cli_type(float, validation.top_p), default=None)
    q.add_argument("--seed", type=cli_type(int, validation.seed), default=None)
    q.add_argument("--max-duration", type=cli_type(float, validation.max_duration), default=None,
                   help="seconds analysed at most (default: the model's limit, 600 s); longer audio is cut")
    o = p.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true", help="redo tracks whose sidecar already has every key")
    o.add_argument("--jsonl", type=Path, default=None, help="also append one JSON line per track to this file")
    o.add_argument("--no-sidecar", action="store_true", help="do not write .INFO files")
    o.add_argument("--failures", type=Path, default=None,
                   help="JSONL of failed tracks (default: PATH/.music-flamingo/failures.jsonl)")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--tracks-in-flight", type=cli_type(int, validation.tracks_in_flight), default=4,
                   help="tracks decoded together by the GGUF engine (continuous batching; 1: one at a time)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress details; -vv: llama.cpp too")
    return p


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("music_flamingo").setLevel(level)


def _make_analyzer(a: argparse.Namespace):
    names = [n.strip() for n in a.prompts.split(",") if n.strip()] if a.prompts else None
    if a.prompt and names is None:
        names = []
    if a.backend == "transformers":
        from .transformers_backend import MusicFlamingoTransformers

        mf = MusicFlamingoTransformers(
            a.model_id, use_flash_attention=a.flash_attn != "off", dtype=a.dtype,
            local_files_only=a.local_files_only, prompts=names or None, prompts_files=a.prompts_file,
            temperature=a.temperature, top_p=a.top_p, seed=a.seed, max_duration=a.max_duration)
        if a.prompt:
            mf.entries = (mf.entries if names else []) + [mf.catalogue.free_text(a.prompt)]
        return mf
    from .gguf_backend import MusicFlamingoGGUF

    mf = MusicFlamingoGGUF(
        model_name=a.model, model_dir=a.model_dir, model_path=a.model_path, mmproj_path=a.mmproj,
        offline=a.offline, prompts=names or None, prompts_files=a.prompts_file, temperature=a.temperature,
        top_p=a.top_p, seed=a.seed, max_duration=a.max_duration, n_gpu_layers=a.n_gpu_layers,
        flash_attn={"auto": "auto", "on": True, "off": False}[a.flash_attn], verbose=a.verbose >= 2)
    if a.prompt:
        mf.entries = (mf.entries if names else []) + [mf.catalogue.free_text(a.prompt)]
    return mf


def _run_single(mf, a: argparse.Namespace) -> int:
    from .sidecar import sidecar_path, update_sidecar

    result = mf.analyze_track(a.path)
    for key, text in result.descriptions.items():
        print(f"{key}:\n{text}\n")
    fields = result.sidecar_fields()
    if not a.no_sidecar:
        path = sidecar_path(a.path)
        update_sidecar(path, fields)
        print(f"wrote {path}", file=sys.stderr)
    if a.jsonl:
        with open(a.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": str(a.path), **fields}, ensure_ascii=False) + "\n")
    return EXIT_OK


def _run_batch(mf, a: argparse.Namespace) -> int:
    from .batch import BatchOptions, run_batch

    summary = run_batch(mf, a.path, BatchOptions(
        overwrite=a.overwrite, write_sidecars=not a.no_sidecar, jsonl=a.jsonl, failures=a.failures,
        progress=not a.no_progress, tracks_in_flight=a.tracks_in_flight))
    print(summary.line(), file=sys.stderr)
    return summary.exit_code


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (what job schedulers and ``kill`` send) stops like Ctrl-C: between steps, summary printed."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if on_main_thread else None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    _setup_logging(a.verbose)
    if (a.model_path is None) != (a.mmproj is None):
        parser.error("--model-path and --mmproj go together")
    if not a.path.exists():
        parser.error(f"{a.path} does not exist")
    if a.batch != a.path.is_dir():
        parser.error("--batch needs a folder" if a.batch else f"{a.path} is a folder: add --batch")
    try:
        mf = _make_analyzer(a)
    except (ModelFileError, PromptConfigError) as e:
        print(f"music-flamingo: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    try:
        return _run_batch(mf, a) if a.batch else _run_single(mf, a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MusicFlamingoError as e:
        print(f"music-flamingo: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        try:
            mf.close()
        except KeyboardInterrupt:  # Ctrl-C while freeing the model: the work is already saved
            pass


if __name__ == "__main__":
    sys.exit(main())
