#!/usr/bin/env python3
"""Continuous batching over tracks: the same tracks and prompts, one track at a time vs N tracks in flight.

Greedy with flash attention off, so every setting must give the same tokens (checked); only the time differs.
Usage, from the repository root: python -m bench.in_flight [--tracks 6] [--in-flight 1 2 3 6] [--threads 1] [--model-path M --mmproj P]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=6)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 3, 6])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-path")
    ap.add_argument("--mmproj")
    a = ap.parse_args()

    import numpy as np

    from bench.fidelity import model_files
    from music_flamingo import MusicFlamingoGGUF, Prompt
    from testkit.corpus import load_music

    model, mmproj = model_files(a.model_path, a.mmproj)
    music = load_music(10 + 8 * a.tracks + 3 * a.tracks**2)
    sr = 16000
    tracks = [np.ascontiguousarray(music[sr * (8 * i) : sr * (8 * i + 5 + 3 * i)]) for i in range(a.tracks)]
    prompts = [Prompt("Describe this track.", max_tokens=30 + 7 * i) for i in range(5)]
    with MusicFlamingoGGUF(
        model_path=model, mmproj_path=mmproj, n_threads=a.threads, flash_attn=False, warmup=False
    ) as mf:
        mf.generate(tracks[0], prompts[:1])  # warm-up
        reference = None
        print(
            f"{a.tracks} tracks of 5-{5 + 3 * (a.tracks - 1)} s, 5 prompts (30-58 tokens), greedy, "
            f"{a.threads} thread(s); load {os.getloadavg()[0]:.2f}"
        )
        print("| tracks in flight | seconds | speed-up | same tokens |\n|---|---|---|---|")
        base = None
        for k in a.in_flight:
            t0 = time.perf_counter()
            if k == 1:
                res = [mf.generate(t, prompts) for t in tracks]
            else:
                res = mf.generate_many([(t, prompts) for t in tracks], tracks_in_flight=k)
            dt = time.perf_counter() - t0
            toks = [r.tokens for r in res]
            reference = reference or toks
            base = base or dt
            print(f"| {k} | {dt:.2f} | {base / dt:.2f}x | {toks == reference} |")


if __name__ == "__main__":
    main()
