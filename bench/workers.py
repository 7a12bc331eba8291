#!/usr/bin/env python3
"""`--workers 2` against one process: the same tracks and prompts through the CLI, wall-clock time of each command.

Each run is a fresh `music-flamingo DIR --batch --no-sidecar --jsonl FILE` (nothing is skipped, so every run
describes every track), one engine thread per process; runs alternate (1, N, 1, N, ...) so a change in the
machine's load hits both. The time includes loading the engine(s): that is what a user waits for. "cores used"
is the CPU time of the command and its workers over its wall time: how much of the machine the run actually got.
Usage, from the repository root: python -m bench.workers [--tracks 24] [--seconds 10] [--workers 2] [--repeat 2] [--model-path M --mmproj P]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each track")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--model-path")
    ap.add_argument("--mmproj")
    a = ap.parse_args()

    from bench.fidelity import model_files
    from testkit.corpus import load_music, write_clip

    model, mmproj = model_files(a.model_path, a.mmproj)
    music = load_music(10 + a.tracks * (a.seconds + 1))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for i in range(a.tracks):
            write_clip(root / f"track {i:03d}.flac", music, a.seconds, 5 + i * (a.seconds + 1) / 2)
        prompts = Path(tmp) / "prompts.yaml"
        prompts.write_text(
            "prompts:\n"
            + "".join(
                f"  {n}: {{max_tokens: {30 + 7 * i}}}\n"
                for i, n in enumerate(["full", "technical", "genre_mood", "instrumentation", "structure"])
            )
        )
        base = [
            sys.executable,
            "-m",
            "music_flamingo",
            str(root),
            "--batch",
            "--model-path",
            str(model),
            "--mmproj",
            str(mmproj),
            "--prompts-file",
            str(prompts),
            "--no-sidecar",
            "--no-progress",
            "--threads",
            "1",
        ]
        print(
            f"{a.tracks} tracks of {a.seconds:g} s, 5 prompts (30-58 tokens), 1 engine thread per process, "
            f"{os.cpu_count()} logical CPUs; 1-min load {os.getloadavg()[0]:.2f} at the start"
        )
        print(
            "| processes | run | seconds | tracks/s | CPU seconds | cores used | load (1 min) after |\n"
            "|---|---|---|---|---|---|---|"
        )
        best: dict[int, float] = {}
        for r in range(a.repeat):
            for n in (1, a.workers):
                jsonl = Path(tmp) / f"m{n}-{r}.jsonl"
                cmd = base + ["--jsonl", str(jsonl)] + (["--workers", str(n)] if n > 1 else [])
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers, all reaped
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                lines = jsonl.read_text().splitlines() if jsonl.exists() else []
                if done.returncode != 0 or len({json.loads(x)["path"] for x in lines}) != a.tracks:
                    sys.exit(f"run failed ({done.returncode}): {done.stderr[-2000:]}")
                best[n] = min(best.get(n, dt), dt)
                print(
                    f"| {n} | {r + 1} | {dt:.1f} | {a.tracks / dt:.2f} | {cpu:.1f} | {cpu / dt:.2f} | "
                    f"{os.getloadavg()[0]:.2f} |"
                )
        print(
            f"best of {a.repeat}: 1 process {best[1]:.1f} s, {a.workers} workers {best[a.workers]:.1f} s: "
            f"{best[1] / best[a.workers]:.2f}x"
        )


if __name__ == "__main__":
    main()
