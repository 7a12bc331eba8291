#!/usr/bin/env python3
"""How closely the GGUF engine feeds the model what the reference (transformers) does, per audio framing.

On one tiny random Music Flamingo (AF3 architecture) held both as a transformers checkpoint and as the GGUF files
converted from it, with real music cut to several lengths:

- reference: transformers' own path (the checkpoint's chat template with its default system message, per-window
  log-mel, masked encoder, last window trimmed, ``<sound>`` replaced by the embeddings, the audio on its own line
  before the question), greedy;
- for each engine framing (``llamacpp`` = what llama-mtmd-cli does, ``reference_trim``, ``reference_tail``,
  ``reference``):
  (a) transformers' text model fed the engine's own audio embeddings in the engine's own prompt tokens — isolates
      the LLM arithmetic (expect ~1e-5);
  (b) the engine against the reference: first-step logits max |diff| and how many greedy tokens agree.
Every framing but ``llamacpp`` must feed the reference's prompt tokens exactly (checked on every row).

Usage, from the repository root: python -m bench.fidelity [--lengths 0.5 5 17.5 ...] [--tokens 16] [--write]
``--write`` stores bench/fidelity.json (bench/FIDELITY.md quotes its table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from testkit import REPO
from testkit.corpus import SR, load_music

FRAMINGS = ["llamacpp", "reference_trim", "reference_tail", "reference"]
# Under 1 s, a loop-length clip, the users' 47.55 s crops' partial window, just under / at / just over one window,
# the crops themselves, a long track, and the 10 minutes the model was trained for.
LENGTHS = [0.5, 5, 17.5, 29.99, 30, 30.01, 47.55, 95, 600]
# musicflamingo (2601 / AF-Next): the issue's lengths, with one past 10 minutes (11 min: 22 windows, more than the
# preview's 20)
MF_LENGTHS = [0.5, 5, 30, 47.55, 95, 660]
QUESTION = "Describe this track: genre, tempo, key, instruments and mood."


def model_files(model_path: str | None = None, mmproj_path: str | None = None) -> tuple:
    """The GGUF pair to benchmark: the given one, else the tests' tiny model (built and cached on first use)."""
    if model_path:
        return model_path, mmproj_path
    from testkit.tiny_model import default_tiny_model

    tiny = default_tiny_model()
    return tiny.model_gguf, tiny.mmproj_gguf


class Reference:
    """transformers on the tiny checkpoint: the reference path and its text model fed given embeddings."""

    def __init__(self, hf_dir: Path) -> None:
        import torch
        import transformers
        from transformers import AutoConfig, AutoProcessor

        torch.manual_seed(0)
        self.torch = torch
        self.proc = AutoProcessor.from_pretrained(hf_dir)
        cls = getattr(transformers, AutoConfig.from_pretrained(hf_dir).architectures[0])  # AF3 or MusicFlamingo
        self.model = cls.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.tok = self.proc.tokenizer
        self.eos = {self.tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}

    def reference(self, pcm: np.ndarray, n: int) -> tuple[list[int], np.ndarray, list[int]]:
        """Greedy ids, first-step logits and the prompt ids of the standard path (the template's default system
        message; the audio, "\\n", the question)."""
        conv = [
            {"role": "user", "content": [{"type": "audio", "audio": pcm}, {"type": "text", "text": "\n" + QUESTION}]}
        ]
        inp = self.proc.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=True)
        with self.torch.no_grad():
            g = self.model.generate(
                **inp, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
        ids = g.sequences[0, inp["input_ids"].shape[1] :].tolist()
        return ids, g.scores[0][0].numpy(), inp["input_ids"][0].tolist()

    def greedy_from_layout(self, layout: list, audio_embd: np.ndarray, n: int) -> tuple[list[int], np.ndarray]:
        """Text model only: token ids with ``None`` where the audio embeddings go (in order)."""
        torch = self.torch
        from transformers import DynamicCache

        lm, head = self.model.model.language_model, self.model.lm_head
        embed = lm.embed_tokens
        parts, run, ai = [], [], 0
        for t in layout + ["end"]:
            if t is None:
                if run:
                    parts.append(embed(torch.tensor([run]))[0])
                    run = []
                parts.append(torch.from_numpy(audio_embd[ai : ai + 1]))
                ai += 1
            elif t == "end":
                if run:
                    parts.append(embed(torch.tensor([run]))[0])
            else:
                run.append(t)
        with torch.no_grad():
            cache = DynamicCache(config=self.model.config.text_config)
            o = lm(inputs_embeds=torch.cat(parts)[None], past_key_values=cache, use_cache=True)
            lg = head(o.last_hidden_state[:, -1])[0]
            logits0, ids = lg.numpy().copy(), []
            for _ in range(n):
                nxt = int(torch.argmax(lg))
                ids.append(nxt)
                if nxt in self.eos:
                    break
                o = lm(inputs_embeds=embed(torch.tensor([[nxt]])), past_key_values=cache, use_cache=True)
                lg = head(o.last_hidden_state[:, -1])[0]
        return ids, logits0


def agree(a: list[int], b: list[int]) -> int:
    """Leading tokens in agreement."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def measure(lengths: list[float], n_tokens: int, arch: str = "af3") -> dict:
    """The table's rows for the tiny model of ``arch``: ``af3`` (the preview, every framing) or ``musicflamingo``
    (2601 / AF-Next: rotary time embeddings, sound bos/eos, converted by music-flamingo convert; only the
    ``reference`` framing computes the RoTE)."""
    from music_flamingo import MusicFlamingoGGUF, Prompt
    from testkit.tiny_model import default_tiny_model

    if arch == "musicflamingo":
        from testkit.tiny_musicflamingo import default_tiny_musicflamingo

        tiny, framings = default_tiny_musicflamingo(), ["reference"]
    else:
        from testkit.tiny_model import default_tiny_model

        tiny, framings = default_tiny_model(), FRAMINGS
    ref = Reference(tiny.hf_dir)
    eng = MusicFlamingoGGUF(
        model_path=tiny.model_gguf,
        mmproj_path=tiny.mmproj_gguf,
        flash_attn=False,
        n_threads=1,
        kv_cache_type="f32",
        warmup=False,
    )
    music = load_music(max(lengths))
    audio_id = ref.model.config.audio_token_id
    rows = []
    for L in lengths:
        pcm = np.ascontiguousarray(music[: int(round(L * SR))])
        t0 = time.time()
        ids_r, logits_r, prompt_ids = ref.reference(pcm, n_tokens)
        n_ref_audio = sum(1 for t in prompt_ids if t == audio_id)
        for fr in framings:
            res = eng.generate(pcm, [Prompt(QUESTION, max_tokens=n_tokens)], framing=fr, debug=True)
            ids_e, logits_e = res.tokens[0], np.asarray(res.debug["first_logits"])
            embd = np.asarray(res.debug["audio_embd"])
            layout = [None if t < 0 else t for t in res.debug["prompt_tokens"]]  # the engine's own prompt
            if fr != "llamacpp":  # the engine's prompt must be the reference's, token for token
                expect = [None if t == audio_id else t for t in prompt_ids]
                assert layout == expect, f"{fr}: engine prompt differs from the reference prompt at {L} s"
            ids_a, logits_a = ref.greedy_from_layout(layout, embd, n_tokens)
            rows.append(
                {
                    "seconds": L,
                    "framing": fr,
                    "audio_tokens": int(embd.shape[0]),
                    "reference_audio_tokens": n_ref_audio,
                    "a_logits_max_abs_diff": float(np.abs(logits_a - logits_e).max()),
                    "a_greedy_agree": agree(ids_a, ids_e),
                    "b_logits_max_abs_diff": float(np.abs(logits_r - logits_e).max()),
                    "b_greedy_agree": agree(ids_r, ids_e),
                    "n_tokens": n_tokens,
                }
            )
        print(f"{L:>5.0f} s done in {time.time() - t0:.1f} s", file=sys.stderr)
    eng.close()
    source = {
        "af3": "tiny random AF3 (testkit/tiny_model.py)",
        "musicflamingo": "tiny random musicflamingo (testkit/tiny_musicflamingo.py, music-flamingo convert)",
    }[arch]
    return {"question": QUESTION, "model": f"{source}, f32 GGUF, f32 KV cache, flash attention off", "rows": rows}


def best_framing(result: dict) -> str:
    """The framing closest to the reference: most greedy tokens in agreement, then smallest logit error."""
    score = {}
    for fr in FRAMINGS:
        rs = [r for r in result["rows"] if r["framing"] == fr]
        score[fr] = (-sum(r["b_greedy_agree"] for r in rs), sum(r["b_logits_max_abs_diff"] for r in rs))
    return min(score, key=score.get)


def table(result: dict) -> str:
    lines = [
        "| audio | framing | audio tokens (engine / reference) | (a) logits max abs diff | (a) greedy agree "
        "| (b) logits max abs diff vs reference | (b) greedy agree |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['seconds']:g} s | {r['framing']} | {r['audio_tokens']} / {r['reference_audio_tokens']} | "
            f"{r['a_logits_max_abs_diff']:.1e} | {r['a_greedy_agree']}/{r['n_tokens']} | "
            f"{r['b_logits_max_abs_diff']:.2e} | {r['b_greedy_agree']}/{r['n_tokens']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=LENGTHS)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--arch", choices=["af3", "musicflamingo"], default="af3", help="which tiny model (default af3)")
    a = ap.parse_args()
    if a.arch == "musicflamingo":  # its own table and file; the preview's stays as it is
        result = measure(a.lengths if a.lengths != LENGTHS else MF_LENGTHS, a.tokens, "musicflamingo")
        print(table(result))
        if a.write:
            (REPO / "bench" / "fidelity_musicflamingo.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    result = measure(a.lengths, a.tokens)
    result["best_framing"] = best_framing(result)
    print(table(result))
    print(f"\nclosest to the reference: {result['best_framing']}")
    if a.write:
        (REPO / "bench" / "fidelity.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
