#!/usr/bin/env python3
"""Host time per decode step by the number of live sequences B: everything the decode thread does between two
llama_decode calls (sampling every sequence, building the next batch, bookkeeping), which a GPU waits for.

The tiny test model has the real 152k-token vocabulary, so a row of logits and its sampling cost what they cost with
the real model. Sampling as the catalogue asks (temperature 0.7, top-p 0.9, top-k 50), answers forced to their full
length. Compared: llama.cpp's path (all 152k candidates per row, as llama_sampler_sample does) and the engine's
fast path (the top-k candidates from one scan of the row), with 1..N sampling threads.

Usage, from the repository root: python -m bench.host_step [--in-flight 1 4 8 16] [--threads 1 2] [--tokens 48] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=48, help="tokens per answer (steps at full B)")
    ap.add_argument("--model-path")
    ap.add_argument("--mmproj")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import numpy as np

    from bench.fidelity import model_files
    from music_flamingo import MusicFlamingoGGUF, Prompt, _core

    model, mmproj = model_files(a.model_path, a.mmproj)
    rng = np.random.default_rng(0)
    prompts = [
        Prompt(
            f"Describe part {i} of this track.",
            max_tokens=a.tokens,
            temperature=0.7,
            top_p=0.9,
            top_k=50,
            seed=42 + i,
            ignore_eos=True,
        )
        for i in range(5)
    ]
    rows = []
    print(f"host ms per step at full B (median over steps), load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    print("| B (tracks x 5 prompts) | path | sampling threads | host ms/step | of which sampling | steps |")
    print("|---|---|---|---|---|---|")
    for threads in a.threads:
        # prepare_ahead off: every track is encoded and admitted before the first step, so B stays at 5 x tracks
        with MusicFlamingoGGUF(
            model_path=model,
            mmproj_path=mmproj,
            n_threads=1,
            warmup=False,
            n_sampling_threads=threads,
            prepare_ahead=False,
        ) as mf:
            for k in a.in_flight:
                tracks = [(rng.standard_normal(16000).astype(np.float32) * 0.1) for _ in range(k)]
                for full in (True, False):
                    _core.set_force_full_sampling(full)
                    try:
                        st = mf.generate_stream(
                            iter(tracks),
                            prompts,
                            lambda i, r: None,
                            tracks_in_flight=k,
                            max_audio_seconds=1.0,
                            profile=True,
                        )
                    finally:
                        _core.set_force_full_sampling(False)
                    b = 5 * k
                    host = [h for n, h in zip(st["step_batch"], st["step_host_ms"]) if n == b]
                    row = {
                        "B": b,
                        "path": "llama.cpp (all candidates)" if full else "fast (top-k scan)",
                        "threads": threads,
                        "host_ms": statistics.median(host) if host else float("nan"),
                        "sample_ms": st["sample_ms"] / max(1, st["steps"]),
                        "steps": len(host),
                    }
                    rows.append(row)
                    print(
                        f"| {b} | {row['path']} | {threads} | {row['host_ms']:.3f} | {row['sample_ms']:.3f} "
                        f"| {row['steps']} |",
                        flush=True,
                    )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
