#!/usr/bin/env python3
"""Host time per decode step by the number of live sequences B: everything the decode thread does between two
llama_decode calls (sampling every sequence, building the next batch, bookkeeping), which a GPU waits for.

The tiny test model has the real 152k-token vocabulary, so a row of logits and its sampling cost what they cost with
the real model. Sampling as the catalogue asks (temperature 0.7, top-p 0.9, top-k 50), answers forced to their full
length. Compared: llama.cpp's path (all 152k candidates per row, as llama_sampler_sample does), the engine's
fast path (the top-k candidates from one scan of the row), with 1..N sampling threads, and sampling on the device
(``sampling_on_device="on"``: llama.cpp's backend samplers inside the decode's graph, here the CPU backend's), run
twice: first with its chains attached (llama.cpp re-reserves its graphs), then reused.

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
    print(
        "| B (tracks x 5 prompts) | path | sampling threads | host ms/step | of which sampling | decode ms/step "
        "| admit ms/track | chains attached | steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
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
                for path in ("full", "fast", "device", "device"):
                    row = measure(mf, _core, tracks, prompts, k, path)
                    row["threads"] = threads
                    rows.append(row)
                    print(
                        f"| {row['B']} | {row['path']} | {threads} | {row['host_ms']:.3f} | {row['sample_ms']:.3f} "
                        f"| {row['decode_ms']:.2f} | {row['admit_ms_per_track']:.1f} | {row['attaches']} "
                        f"| {row['steps']} |",
                        flush=True,
                    )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


PATHS = {"full": "llama.cpp (all candidates)", "fast": "fast (top-k scan)", "device": "device (backend samplers)"}


def measure(mf, core, tracks, prompts, k: int, path: str) -> dict:
    """One run of k tracks in flight on one sampling path; medians over the steps at full B."""
    core.set_force_full_sampling(path == "full")
    try:
        st = mf.generate_stream(
            iter(tracks),
            prompts,
            lambda i, r: None,
            tracks_in_flight=k,
            max_audio_seconds=1.0,
            profile=True,
            sampling_on_device="on" if path == "device" else "off",
        )
    finally:
        core.set_force_full_sampling(False)
    b = 5 * k
    full_b = [i for i, n in enumerate(st["step_batch"]) if n == b]
    return {
        "B": b,
        "path": PATHS[path],
        "host_ms": statistics.median(st["step_host_ms"][i] for i in full_b) if full_b else float("nan"),
        "sample_ms": st["sample_ms"] / max(1, st["steps"]),
        "decode_ms": statistics.median(st["step_decode_ms"][i] for i in full_b) if full_b else float("nan"),
        "admit_ms_per_track": st["admit_ms"] / max(1, k),
        "attaches": st["sampler_attaches"],
        "device_sampled": st["device_sampled"],
        "steps": len(full_b),
    }


if __name__ == "__main__":
    main()
