#!/usr/bin/env python3
"""Audio encoding time per track and framing: the engine's ``stats.encode_ms`` (PCM to embeddings, log-mel
included), median of several calls, on real music.

``reference`` encodes only the real frames of a partial window, so a 47.55 s crop (one whole window and 17.55 s)
costs less than under ``reference_tail``/``reference_trim`` (two full windows); a track of whole windows costs
the same.

Usage, from the repository root: python -m bench.encode_ms [--lengths 47.55 150] [--framings reference_tail reference] [--repeats 5]
                                 [--model-path M --mmproj-path P] [--threads N]
Without model paths it uses the tests' tiny model (its encoder is tiny, so the log-mel dominates).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from bench.fidelity import model_files
from testkit.corpus import SR, load_music


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=[47.55, 150])
    ap.add_argument("--framings", nargs="+", default=["reference_tail", "reference"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model-path")
    ap.add_argument("--mmproj-path")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from music_flamingo import MusicFlamingoGGUF, Prompt

    model, mmproj = model_files(a.model_path, a.mmproj_path)
    eng = MusicFlamingoGGUF(model_path=model, mmproj_path=mmproj, n_threads=a.threads, flash_attn=False)
    music = load_music(max(a.lengths))
    print(f"| audio | framing | audio tokens | encode ms (median of {a.repeats}) | min | max |")
    print("|---|---|---|---|---|---|")
    for L in a.lengths:
        pcm = np.ascontiguousarray(music[: int(round(L * SR))])
        for fr in a.framings:
            eng.generate(pcm, [Prompt("Describe.", max_tokens=1)], framing=fr)  # warm
            runs = [eng.generate(pcm, [Prompt("Describe.", max_tokens=1)], framing=fr).stats for _ in range(a.repeats)]
            ms = [s.encode_ms for s in runs]
            print(
                f"| {L:g} s | {fr} | {runs[0].audio_tokens} | {statistics.median(ms):.1f} | {min(ms):.1f} | "
                f"{max(ms):.1f} |",
                flush=True,
            )
    eng.close()


if __name__ == "__main__":
    main()
