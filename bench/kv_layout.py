#!/usr/bin/env python3
"""KV layouts (issue 18 item 1): prefill per track and decode step time per sequence against tracks in flight, the
unified cache vs one KV stream per track (kv_layout='per_track', llama.cpp patch 0003).

Each setting streams 3 x K tracks of the same audio (rotated, so no two are the same) with five prompts whose
answers end at different lengths (60-300 tokens, long enough that the helper thread's encoding of the next tracks
keeps K tracks decoding), greedy, end of generation ignored; tokens are checked equal across layouts (flash
attention off). Prefill per track is the engine's own (GenerateStats.prefill_ms: prefix, forks, prompt
suffixes, first tokens); step ms per sequence is llama_decode's time over the sequences it decoded.
Usage, from the repository root: python -m bench.kv_layout [--seconds 30] [--in-flight 1 2 4] [--threads 1]
[--model-path M --mmproj P]
"""

from __future__ import annotations

import argparse
import os


def run(mf, tracks, prompts, k: int) -> tuple[dict, list]:
    import numpy as np

    got: dict = {}
    st = mf.generate_stream(
        iter(tracks), prompts, got.__setitem__, tracks_in_flight=k, max_audio_seconds=len(tracks[0]) / 16000 + 1
    )
    bad = [r for r in got.values() if isinstance(r, Exception)]
    if bad:
        raise bad[0]
    res = [got[i] for i in range(len(tracks))]
    return {
        "prefill_ms": float(np.mean([r.stats.prefill_ms for r in res])),
        "step_ms_per_seq": st["decode_ms"] / max(1, st["step_tokens"]),
        "step_ms": st["decode_ms"] / max(1, st["steps"]),
        "mean_batch": st["step_tokens"] / max(1, st["steps"]),
        "n_ctx": st["n_ctx"],
        "peak": st["peak_in_flight"],
    }, [r.tokens for r in res]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-path")
    ap.add_argument("--mmproj")
    a = ap.parse_args()

    import numpy as np

    from bench.fidelity import model_files
    from music_flamingo import MusicFlamingoGGUF, Prompt
    from testkit.corpus import load_music

    model, mmproj = model_files(a.model_path, a.mmproj)
    sr, n = 16000, int(a.seconds * 16000)
    music = load_music(a.seconds + 60)
    prompts = [Prompt("Describe this track.", max_tokens=60 + 60 * i, ignore_eos=True) for i in range(5)]
    print(
        f"{a.seconds:.0f} s tracks, 5 prompts (60-300 tokens), greedy, {a.threads} thread(s); "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(
        "| layout | tracks in flight (peak) | prefill ms/track | step ms/seq | step ms (mean B) | n_ctx | same tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    reference: dict[int, list] = {}
    for layout in ("unified", "per_track"):
        with MusicFlamingoGGUF(
            model_path=model, mmproj_path=mmproj, n_threads=a.threads, flash_attn=False, warmup=False, kv_layout=layout
        ) as mf:
            mf.generate(music[: sr * 5], prompts[:1])  # warm-up
            for k in a.in_flight:
                tracks = [np.ascontiguousarray(np.roll(music, sr * 3 * i)[:n]) for i in range(3 * k)]
                row, toks = run(mf, tracks, prompts, k)
                same = reference.setdefault(k, toks) == toks
                print(
                    f"| {layout} | {k} ({row['peak']}) | {row['prefill_ms']:.0f} | {row['step_ms_per_seq']:.2f} "
                    f"| {row['step_ms']:.1f} ({row['mean_batch']:.1f}) | {row['n_ctx']} | {same} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
