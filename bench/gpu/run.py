#!/usr/bin/env python3
"""One prepared throughput run: the resident engine at several tracks in flight and weight types, where a step's
time goes, the users' own workload and the transformers backend (and the old method, one llama-mtmd-cli per prompt),
on random-weight models of the real shapes. Prints two tables; writes the numbers as JSON (<card>-<date>-<tag>).

Built for a lent GPU machine (no network, a few minutes): everything it needs travels with the repository
(bench/gpu/device.sh unpacks the prebuilt native parts and calls this), and it runs the same way on a CPU with a
tiny model (``--cpu``), which is what CI does, so it works the first time it meets a GPU.

Per engine setting, N tracks of the same length (the same music, rotated so no two are identical) with the five
catalogue prompts at their full token limits, end-of-generation ignored (every answer runs to its limit), sampled as
the catalogue says (temperature 0.7, top-p 0.9, top-k 50). Columns: seconds per track and tracks per hour over the
whole run (ramp-up and drain included) and in the steady state between them, generated tokens per second, mean decode step against the floor of reading
the weights once at the measured bandwidth, host ms per step (sampling and bookkeeping outside llama_decode), the
prefill each admitted track costs the decode thread, the helper thread's mel + encoder per track, peak device memory.

The rows (``--rows``; kinds, order and time plan: DEVICE_ROWS, ``--plan``, bench/gpu/README.md) run in order; one
that would end past ``--time-limit`` by its estimate is skipped, one that fails is reported and the others go on.

usage: run.py --meta-model M --meta-mmproj P [--meta-hf HF] --audio WAV [--cli MTMD_CLI] [--op-profile EXE]
              --out OUT [--rows ...] [--cpu] [--plan]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np

# music_flamingo comes from the import path as installed (or PYTHONPATH=python with an in-tree build, as device.sh
# sets it); make_model from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_wav(path: Path) -> np.ndarray:
    """16-bit PCM WAV -> float32 mono (the GPU machine has no soundfile)."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getframerate() != 16000:
            raise SystemExit(f"{path}: need 16-bit 16 kHz WAV")
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        return x.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.float32)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())


def machine() -> dict:
    info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["gpu"] = q.stdout.strip()
    return info


def bandwidth_gbs() -> float | None:
    """Device-to-device copy, bytes read + written per second (the decode step's floor is weights / this)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        y.copy_(x)
    e.record()
    torch.cuda.synchronize()
    bw = 2 * 20 * 2**30 / (s.elapsed_time(e) / 1e3) / 1e9
    del x, y
    torch.cuda.empty_cache()
    return bw


class PeakMemory:
    """Peak device memory used while a block runs (NVML, polled every 50 ms); peak RSS on a CPU."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self._nvml = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._h).used / 2**20
            self.peak_mb = max(self.peak_mb, used)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakMemory:
        if self._nvml:
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._nvml:
            self._stop.set()
            self._t.join()
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def catalogue_prompts(scale: float):
    """The five default prompts as the package asks them, every answer forced to its full token limit."""
    from music_flamingo import load_catalogue

    cat = load_catalogue()
    out = []
    for e in cat.select(None):
        p = e.to_prompt(temperature=None, top_p=None, seed=None)
        out.append(dataclasses.replace(p, max_tokens=max(2, int(p.max_tokens * scale)), ignore_eos=True))
    return out


def old_method(cli: Path, model: Path, mmproj: Path, wav: Path, prompts, ctx: int, gpu: bool, threads: int) -> dict:
    """One llama-mtmd-cli process per prompt, as users ran it before (weights loaded and audio encoded each time)."""
    walls, rcs = [], []
    for p in prompts:
        cmd = [
            str(cli),
            "-m",
            str(model),
            "--mmproj",
            str(mmproj),
            "--audio",
            str(wav),
            "-p",
            p.text,
            "-n",
            str(p.max_tokens),
            "--ignore-eos",
            "--temp",
            str(p.temperature),
            "--top-p",
            str(p.top_p),
            "--top-k",
            str(p.top_k),
            "--seed",
            str(p.seed),
            "-c",
            str(ctx),
            "-t",
            str(threads),
        ]
        if gpu:
            cmd += ["-ngl", "99"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")  # random weights: any bytes
        walls.append(time.perf_counter() - t0)
        rcs.append(r.returncode)
        if r.returncode != 0:
            log(f"llama-mtmd-cli failed ({r.returncode}): {r.stderr[-2000:]}")
            break
    total = sum(walls)
    return {
        "setting": "old method: llama-mtmd-cli per prompt",
        "tracks": 1,
        "wall_s": total,
        "s_per_track": total,
        "tracks_per_h": 3600 / total if total else 0,
        "per_prompt_s": walls,
        "ok": all(rc == 0 for rc in rcs) and len(rcs) == len(prompts),
        "tokens": sum(p.max_tokens for p in prompts),
    }


def engine_setting(
    mf,
    pcm: np.ndarray,
    prompts,
    setting: str,
    n_tracks: int,
    weights_bytes: int,
    bw: float | None,
    prepare_ahead: bool | None = None,
) -> dict:
    """N tracks through the engine's stream path (the batch runner's), with per-step profiling.

    ``setting``: tracks in flight ("auto" or a number), optionally ``:noprep`` (audio encoded on the decode thread,
    as before this engine had a helper thread), ``:fullsample`` (every row sampled over all 152k candidates, as
    llama_sampler_sample does), ``:split`` or ``:per_track`` (``mf`` is then an engine with one KV stream per
    sequence, or per track: KV_LAYOUTS), ``:inline`` (each prefix prefilled on the decode thread at admission, as
    before issue 18 item 2; the default on a GPU is beside the steps, in a second context), ``:beside`` (beside,
    also on a CPU), ``:live`` (admission by live answers, item 3: a target of K x prompts live answers, up to 2K
    tracks), ``:hostsample`` / ``:devsample`` (every row sampled on the host / by llama.cpp's backend samplers;
    without either the engine's "auto": the device where the output layer is on a GPU)."""
    from music_flamingo import _core

    name, _, variant = setting.partition(":")
    in_flight = name if name == "auto" else int(name)
    if variant == "noprep":
        prepare_ahead = False
    prefill_beside = {"inline": False, "beside": True}.get(variant)
    live_answers = in_flight * len(prompts) if variant == "live" and in_flight != "auto" else 0
    tracks = [np.roll(pcm, 16000 * 7 * i) for i in range(n_tracks)]
    results: dict[int, object] = {}
    done_at: list[float] = []  # when each track's answers came back, seconds from the start

    def on_result(i, r):
        results[i] = r
        done_at.append(time.perf_counter() - t0)

    _core.set_force_full_sampling(variant == "fullsample")
    try:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            st = mf.generate_stream(
                iter(tracks),
                prompts,
                on_result,
                tracks_in_flight=in_flight,
                max_audio_seconds=len(pcm) / 16000 + 1,
                profile=True,
                prepare_ahead=prepare_ahead,
                sampling_on_device={"hostsample": "off", "devsample": "on"}.get(variant),
                prefill_beside=prefill_beside,
                live_answers=live_answers,
            )
            wall = time.perf_counter() - t0
    finally:
        _core.set_force_full_sampling(False)
    errors = [repr(r) for r in results.values() if isinstance(r, Exception)]
    good = [r for r in results.values() if not isinstance(r, Exception)]
    tokens = sum(r.stats.tokens_generated for r in good)
    row = {
        "setting": f"engine, tracks in flight {setting}",
        "in_flight": in_flight,
        "tracks": n_tracks,
        "chosen_in_flight": st["tracks_in_flight"],
        "peak_in_flight": st["peak_in_flight"],
        "wall_s": wall,
        "s_per_track": wall / n_tracks,
        "tracks_per_h": 3600 * n_tracks / wall,
        "tokens": tokens,
        "tok_per_s": tokens / wall,
        "expected_tokens": n_tracks * sum(p.max_tokens for p in prompts),
        **step_stats(st),
        "admit_ms_per_track": st["admit_ms"] / n_tracks,
        "prefill_beside": st["prefill_beside"],
        "prefill_fallbacks": st["prefill_fallbacks"],
        "beside_ms_per_track": st["prefill_beside_ms"] / max(1, st["prefill_beside"]),
        "live_answers": st["live_answers"],
        "prepare_ms_per_track": st["prepare_ms"] / n_tracks,
        "wait_ms": st["wait_ms"],
        "n_ctx": st["n_ctx"],
        "kv_budget_mb": st["kv_budget_mb"],
        "peak_mem_mb": mem.peak_mb,
        "errors": errors[:3],
        "n_errors": len(errors),
        "floor_ms": (weights_bytes / (bw * 1e9) * 1e3) if bw else None,
        "sampling_threads": st["sampling_threads"],
        "device_sampled": st["device_sampled"],
        "sampler_attaches": st["sampler_attaches"],
        "sample_ms_per_step": st["sample_ms"] / max(1, st["steps"]),
        "encode_ms_per_track": float(np.mean([r.stats.encode_ms for r in good])) if good else 0.0,
        "mel_ms_per_track": float(np.mean([r.stats.mel_ms for r in good])) if good else 0.0,
        "prefill_ms_per_track": float(np.mean([r.stats.prefill_ms for r in good])) if good else 0.0,
        "kv_layout": mf.info.get("kv_layout", "unified"),
    }
    row.update(phases(sorted(done_at), wall, int(st["tracks_in_flight"])))
    return row


def step_stats(st: dict) -> dict:
    """Per decode step: mean batch, llama_decode ms, host ms; and at full batch (the top decile of B)."""
    steps = max(1, st["steps"])
    batch = np.array(st["step_batch"], dtype=float)
    dec = np.array(st["step_decode_ms"], dtype=float)
    host = np.array(st["step_host_ms"], dtype=float)
    full = batch >= np.percentile(batch, 90) if batch.size else batch.astype(bool)
    return {
        "steps": st["steps"],
        "mean_batch": float(batch.mean()) if batch.size else 0.0,
        "step_ms": st["decode_ms"] / steps,
        "step_ms_per_seq": st["decode_ms"] / max(1, st["step_tokens"]),  # flat with tracks in flight: issue 18
        "host_ms_per_step": st["host_ms"] / steps,
        "sample_ms_per_step": st["sample_ms"] / steps,
        "step_ms_at_full_batch": float(dec[full].mean()) if batch.size else 0.0,
        "full_batch": float(batch[full].mean()) if batch.size else 0.0,
        "host_ms_at_full_batch": float(host[full].mean()) if batch.size else 0.0,
    }


def phases(done_at: list[float], wall: float, k: int) -> dict:
    """Ramp-up, steady state and drain of a run of N tracks at k in flight, from the tracks' finishing times.

    Ramp-up: until the k-th track finishes (the first k were admitted together and finish as a wave). Drain: after
    the (N-k)-th finishes, the last track has been admitted and the engine empties. In between every finished
    track is replaced at once: (N-2k) tracks over that window is the steady state (None when N < 2k + 1)."""
    n = len(done_at)
    out = {"ramp_s": done_at[min(k, n) - 1] if n else None, "drain_s": None, "steady_s": None}
    out["steady_tracks_per_h"] = None
    if n - 2 * k >= 1:
        first, last = done_at[k - 1], done_at[n - k - 1]
        out.update(drain_s=wall - last, steady_s=last - first)
        out["steady_tracks_per_h"] = 3600 * (n - 2 * k) / (last - first) if last > first else None
    return out


def table(rows: list[dict], base: float | None) -> str:
    """The engine and backend rows as one Markdown table (op profiles have their own, see ops_table)."""
    lines = [
        "| setting | tracks | s/track | tracks/h (steady) | ramp-up / drain s | vs old | tok/s "
        "| step ms (mean B; per seq) | floor ms | host ms/step | prefill ms/track (decode thread) "
        "| mel+encode [+ prefill beside] ms/track (helpers) | peak mem MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("kind") == "ops":
            continue
        vs = f"{base / r['s_per_track']:.1f}x" if base and r.get("s_per_track") else ""
        steady = f" ({r['steady_tracks_per_h']:.0f})" if r.get("steady_tracks_per_h") else ""
        phase = f"{r['ramp_s']:.1f} / {r['drain_s']:.1f}" if r.get("drain_s") is not None else ""
        head = f"| {r['setting']}"
        if "step_ms" in r:
            floor = f"{r['floor_ms']:.2f}" if r.get("floor_ms") else "n/a"
            beside = f" + {r['beside_ms_per_track']:.0f}" if r.get("prefill_beside") else ""
            lines.append(
                f"{head} (chosen {r['chosen_in_flight']}, peak {r['peak_in_flight']}) | {r['tracks']} "
                f"| {r['s_per_track']:.2f} | {r['tracks_per_h']:.0f}{steady} | {phase} | {vs} | {r['tok_per_s']:.0f} "
                f"| {r['step_ms']:.2f} ({r['mean_batch']:.0f}; {r.get('step_ms_per_seq', 0):.2f}) | {floor} "
                f"| {r['host_ms_per_step']:.2f} "
                f"| {r['admit_ms_per_track']:.0f} | {r['mel_ms_per_track'] + r['encode_ms_per_track']:.0f}{beside} "
                f"| {r['peak_mem_mb']:.0f} |"
            )
        else:
            mem = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") else ""
            lines.append(
                f"{head} | {r['tracks']} | {r['s_per_track']:.2f} | {r['tracks_per_h']:.0f}{steady} | | {vs} "
                f"| {r['tokens'] / r['wall_s']:.0f} | | | | | | {mem} |"
            )
    return "\n".join(lines)


def ops_table(rows: list[dict]) -> str:
    """Where a step's (and an admitted track's prefill's) device time goes, from bench/gpu/op_profile.cpp."""
    lines = [
        "| type | tracks in flight | what | ms (plain) | matmul % | attention % | rest % | nodes | sync ms/node |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("kind") != "ops":
            continue
        for st in r["settings"]:
            for what in ("step", "prefill"):
                m = st[what]
                c = m["ms_corrected"]
                tot = sum(max(0.0, v) for v in c.values()) or 1.0
                pct = {k: 100 * max(0.0, c.get(k, 0.0)) / tot for k in ("matmul", "attention", "rest")}
                lines.append(
                    f"| {r['type']} | {st['tracks_in_flight']} | {what} (B {st['batch'] if what == 'step' else 1}) "
                    f"| {m['plain_ms']:.2f} | {pct['matmul']:.0f} | {pct['attention']:.0f} | {pct['rest']:.0f} "
                    f"| {m['nodes']:.0f} | {m['overhead_ms_per_node']:.4f} |"
                )
    return "\n".join(lines)


# --- the row list and its time plan ------------------------------------------------------------------------------
# A row: "[TYPE@]K[:variant]" (engine, K tracks in flight or auto), "ops[@TYPE]" (op profile), "users[@TYPE]" (the
# users' workload), "hf" (the transformers backend). Rows of one weight type run together; a type's model is
# written before its first row and deleted after its last (the disk).
# The variants that pick the engine's KV layout (issue 18 item 1: the per_track rows at 4 and 16 in flight show
# whether prefill per track and step time per sequence stay flat; Q6_K@8 and the 2026-11-26 unified rows at 1/8/16/24
# are the comparison).
KV_LAYOUTS = {"split": "per_sequence", "per_track": "per_track"}
DEVICE_ROWS = "Q6_K@8,Q6_K@4:per_track,Q6_K@16:per_track,ops@Q6_K,users@Q6_K,Q8_0@8,F16@8"
CPU_ROWS = "Q6_K@1,Q6_K@1:devsample,Q6_K@auto,Q6_K@2:beside,Q6_K@1:live,Q6_K@2:per_track,ops,users,hf,Q8_0@1,F16@1"
# Named lists for --rows. "prefill": issue 18 items 2 and 3 alone (prefill beside the steps, the GPU's default,
# against the decode thread's prefill at 8 and 16 in flight; admission by live answers), ≈463 s on the H200 plan.
# "rest": what does not fit one call beside the default list (a second call: the transformers backend, host
# sampling against the device's, the weight types' other in-flight settings, per_track at 8).
ROW_LISTS = {
    "prefill": "Q6_K@8,Q6_K@8:inline,Q6_K@16,Q6_K@16:inline,Q6_K@8:live",
    "rest": "hf,Q6_K@8:hostsample,Q8_0@4,F16@4,F16@16,Q6_K@8:per_track",
}
# H200, 2026-11-26 (bench/RESULTS.md): s/track of the 150 s work at K in flight (Q6_K); other types assumed alike
H200_S_PER_TRACK = {1: 3.72, 4: 2.01, 8: 1.74, 12: 1.78, 16: 1.94, 24: 2.29}
WRITE_GBS = 0.27  # make_model.py: 7.58 GB in 28 s there
TYPE_GB = {"Q6_K": 6.25, "Q8_0": 8.10, "F16": 15.2, "BF16": 15.2}


def parse_row(spec: str, default_type: str) -> dict:
    """ "Q8_0@8:noprep" -> engine row; "ops@F16" / "users" / "hf" -> the other kinds (default_type where none)."""
    head, _, variant = spec.strip().partition(":")
    left, _, right = head.partition("@")
    if left in ("ops", "users", "hf"):
        return {"spec": spec, "kind": left, "type": right or default_type, "variant": variant}
    qtype, k = (left, right) if right else (default_type, left)
    return {"spec": spec, "kind": "engine", "type": qtype, "k": k, "variant": variant}


def tracks_for(row: dict, auto_cap: int, per_slot: int, cpu: bool) -> int:
    """At least per_slot x its tracks in flight (steady state between ramp-up and drain)."""
    k = auto_cap if row["k"] == "auto" else int(row["k"])
    return max(2 if cpu else 3, per_slot * k)


def estimate_s(row: dict, new_type: bool, per_slot: int) -> float:
    """Seconds a row takes on the H200 (from its 2026-11-26 numbers; an H100 is ≈1.3x on the engine rows)."""
    t = (TYPE_GB[row["type"]] + (1.32 if row["type"] == "Q6_K" else 0)) / WRITE_GBS + 5 if new_type else 0.0
    if row["kind"] == "engine":
        k = 12 if row["k"] == "auto" else int(row["k"])
        s = H200_S_PER_TRACK.get(k) or H200_S_PER_TRACK[min(H200_S_PER_TRACK, key=lambda x: abs(x - k))]
        return t + s * max(3, per_slot * k)
    # ops: 4/8/16 in flight, 31 tracks' prefill + steps; users: 48 crops at 12 in flight + its own engine;
    # hf: build + save + load 16.5 GB, then 3 tracks of ≈15 s (HF generate, 5 prompts batched, 500 steps)
    return t + {"ops": 40.0, "users": 35.0, "hf": 95.0}[row["kind"]]


def plan(rows: list[dict], per_slot: int, setup_s: float = 15.0) -> list[tuple[dict, float]]:
    out, seen, total = [], set(), setup_s
    for r in rows:
        new = r["kind"] != "hf" and r["type"] not in seen
        seen.add(r["type"])
        est = estimate_s(r, new, per_slot)
        total += est
        out.append((r, est))
    return out


def print_plan(rows: list[dict], per_slot: int, limit: float) -> None:
    total = 15.0
    print(f"{'row':24} {'est s (H200)':>12} {'cumulative':>10}")
    print(f"{'setup (unpack, check, bandwidth)':24} {15.0:12.0f} {total:10.0f}")
    for r, est in plan(rows, per_slot):
        total += est
        note = "" if total <= limit else "  <- past the time limit: skipped unless earlier rows run faster"
        print(f"{r['spec']:24} {est:12.0f} {total:10.0f}{note}")


# --- the row kinds beside the engine settings -----------------------------------------------------------------------
def users_setting(model: Path, mmproj: Path, pcm: np.ndarray, a, per_slot: int, bw: float | None) -> dict:
    """The users' own pipeline (issue 18, item 7): 47.55 s crops, the `full` prompt alone at its 500 tokens, the
    engine's automatic tracks in flight under the KV budget a 16 GB card leaves (card - weights - reserve)."""
    from music_flamingo import MusicFlamingoGGUF

    crop = np.resize(pcm, int(47.55 * 16000)).astype(np.float32)
    prompts = [p for p in catalogue_prompts(0.1 if a.cpu else 1.0) if p.name == "full"]
    weights = model.stat().st_size + mmproj.stat().st_size
    budget = a.card_mb - weights / 2**20 - a.reserve_mb
    mf = MusicFlamingoGGUF(
        model_path=model, mmproj_path=mmproj, n_threads=a.threads or None, memory_budget_mb=max(256.0, budget)
    )
    try:
        mf.generate(crop[: 16000 * 5], prompts)  # warm-up
        cap = int(mf.info["auto_tracks_in_flight_cap"])
        n = max(3, per_slot * cap)
        row = engine_setting(mf, crop, prompts, "auto", n, model.stat().st_size, bw)
    finally:
        mf.close()
    row.update(kind="users", type=model.stem.removeprefix("model-"), memory_budget_mb=budget, card_mb=a.card_mb)
    row["setting"] = (
        f"users' workload ({row['type']}): 47.55 s crops, `full` at {prompts[0].max_tokens} tokens, "
        f"{a.card_mb / 1024:.0f} GB card (KV budget {budget:.0f} MiB), auto"
    )
    return row


def ops_setting(exe: Path, model: Path, a, out: Path) -> dict:
    """Graph timing on the device (issue 18, item 6): bench/gpu/op_profile.cpp on this type's model."""
    gpu = not a.cpu
    cmd = [str(exe), "-m", str(model), "--tracks", "4,8,16" if gpu else "1,2", "--prefix", "3800" if gpu else "200"]
    cmd += ["--steps", "8" if gpu else "2", "--ngl", "99" if gpu else "0", "--threads", str(a.threads or 4)]
    cmd += ["--out", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=a.ops_timeout)
    log(r.stderr[-1500:])
    if r.returncode != 0:
        raise RuntimeError(f"op-profile failed ({r.returncode})")
    prof = json.loads(out.read_text())
    t = model.stem.removeprefix("model-")
    return {"kind": "ops", "type": t, "setting": f"op profile {t}", "wall_s": time.perf_counter() - t0, **prof}


def hf_setting(a, pcm: np.ndarray, prompts, n_tracks: int) -> dict:
    """The transformers backend on the same work (issue 18, item 8): a random AF3 checkpoint of the real shapes
    (bf16, built on the device by transformers' classes), FlashAttention-2 where installed, else SDPA. One track
    at a time (the backend has no batching over tracks); its five prompts go as one generate. The first track
    pays the kernels' warm-up: s/track is over the others."""
    import make_hf

    from music_flamingo import MusicFlamingoTransformers

    gpu = not a.cpu
    if a.cpu:  # the rehearsal: a few steps per answer (each costs a full-vocabulary sort on the CPU)
        prompts = [dataclasses.replace(p, max_tokens=min(p.max_tokens, 8)) for p in prompts]
    t0 = time.perf_counter()
    ckpt = make_hf.build(a.meta_hf, a.work / "hf", "tiny" if a.cpu else "full", "cuda" if gpu else "cpu")
    build_s = time.perf_counter() - t0
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        tf = MusicFlamingoTransformers(  # float32 on a CPU: bf16 matrix products there are slow, not the point
            ckpt, local_files_only=True, device_map="cuda" if gpu else "cpu", dtype="bfloat16" if gpu else "float32"
        )
        load_s = time.perf_counter() - t0
        walls, tokens = [], 0
        try:
            for i in range(n_tracks):
                t0 = time.perf_counter()
                res = tf.generate(np.roll(pcm, 16000 * 7 * i), prompts)
                walls.append(time.perf_counter() - t0)
                tokens += res.stats.tokens_generated
        finally:
            attn = tf.attn_implementation
            tf.close()
            if not a.keep_models:
                shutil.rmtree(ckpt, ignore_errors=True)  # 16.5 GB of the disk, before the next types
    steady = walls[1:] or walls
    return {
        "kind": "hf",
        "setting": f"transformers backend ({attn}, {'bf16' if gpu else 'f32'}), 1 track at a time",
        "tracks": n_tracks,
        "wall_s": sum(walls),
        "per_track_s": walls,
        "first_track_s": walls[0],
        "s_per_track": float(np.mean(steady)),
        "tracks_per_h": 3600 / float(np.mean(steady)),
        "tokens": tokens,
        "expected_tokens": None,  # the backend stops at end of generation: it cannot ignore it
        "attn_implementation": attn,
        "build_s": build_s,
        "load_s": load_s,
        "peak_mem_mb": mem.peak_mb,
    }


# --- the run -------------------------------------------------------------------------------------------------------
class Models:
    """One weight type on disk (and one engine on it) at a time: the disk holds Q6_K + Q8_0 + F16 only just."""

    def __init__(self, a, report: dict) -> None:
        self.a, self.report = a, report
        self.type: str | None = None
        self.model = self.mmproj = None
        self.engine = None

    def use(self, qtype: str):
        import make_model

        if qtype != self.type:
            self.close()
            if self.type and not self.a.keep_models:
                make_model.remove(self.a.work / "model", self.shape, self.type)
            t0 = time.perf_counter()
            self.model, self.mmproj = make_model.make(
                self.a.meta_model, self.a.meta_mmproj, self.a.work / "model", shape=self.shape, qtype=qtype
            )
            info = {"file": self.model.name, "bytes": self.model.stat().st_size, "make_s": time.perf_counter() - t0}
            info["mmproj_bytes"] = self.mmproj.stat().st_size
            self.report.setdefault("models", {})[qtype] = info
            self.report.setdefault("model", info)  # the first, as before
            log(f"model written: {info}")
            self.type = qtype
        return self.model, self.mmproj

    @property
    def shape(self) -> str:
        return "tiny" if self.a.cpu else "full"

    def get_engine(self, kv_layout: str = "unified"):
        from music_flamingo import MusicFlamingoGGUF

        if self.engine is None or self.engine[0] != kv_layout:
            self.close()
            t0 = time.perf_counter()
            mf = MusicFlamingoGGUF(
                model_path=self.model, mmproj_path=self.mmproj, n_threads=self.a.threads or None, kv_layout=kv_layout
            )
            self.report.setdefault("engine_load_s", time.perf_counter() - t0)
            self.report.setdefault("engine_info", {k: v for k, v in mf.info.items() if k != "chat_template"})
            mf.generate(self.a.pcm[: 16000 * 5], self.a.prompts[:2])  # warm-up: first kernels, context creation
            self.engine = (kv_layout, mf)
        return self.engine[1]

    def close(self) -> None:
        if self.engine is not None:
            self.engine[1].close()
            self.engine = None


def run_row(r: dict, models: Models, a, bw: float | None, per_slot: int) -> dict:
    need = {"hf": ("meta_hf", "--meta-hf"), "ops": ("op_profile", "--op-profile")}.get(r["kind"])
    if need and not getattr(a, need[0]):
        raise RuntimeError(f"row {r['spec']} needs {need[1]}")
    if r["kind"] == "hf":
        models.close()
        return hf_setting(a, a.pcm, a.prompts, a.hf_tracks)
    model, mmproj = models.use(r["type"])
    if r["kind"] == "users":
        models.close()
        return users_setting(model, mmproj, a.pcm, a, per_slot, bw)
    if r["kind"] == "ops":
        models.close()
        return ops_setting(a.op_profile, model, a, a.work / f"ops-{r['type']}.json")
    mf = models.get_engine(kv_layout=KV_LAYOUTS.get(r["variant"], "unified"))
    cap = int(mf.info["auto_tracks_in_flight_cap"])
    n = tracks_for(r, cap, per_slot, a.cpu)
    setting = r["k"] + (":" + r["variant"] if r["variant"] else "")
    log(f"engine {r['type']}, tracks in flight {setting}, {n} tracks ...")
    row = engine_setting(
        mf, a.pcm, a.prompts, setting, n, model.stat().st_size, bw, False if a.no_prepare_ahead else None
    )
    row.update(kind="engine", type=r["type"], setting=f"engine {r['type']}, tracks in flight {setting}")
    return row


def run_rows(rows: list[dict], a, report: dict, bw: float | None, t_start: float, save) -> None:
    """Every row in order; a row whose estimate (scaled by how far the run so far is off its plan) would end past
    --time-limit is skipped and listed in report["skipped"]. A row that fails is reported and the run goes on."""
    per_slot = a.per_slot or (3 if a.cpu else 4)
    models = Models(a, report)
    est_done = 15.0
    for r, est in plan(rows, per_slot):
        elapsed = time.perf_counter() - t_start
        scale = max(1.0, elapsed / est_done)
        if not a.cpu and elapsed + est * scale > a.time_limit:
            log(f"time limit: skipping {r['spec']} (estimate {est * scale:.0f} s, {elapsed:.0f} s elapsed)")
            report.setdefault("skipped", []).append(r["spec"])
            continue
        est_done += est
        log(f"row {r['spec']} (estimate {est:.0f} s on the H200) ...")
        try:
            row = run_row(r, models, a, bw, per_slot)
        except Exception as e:  # one row's failure must not lose the others' numbers
            log(f"row {r['spec']} failed: {e!r}")
            row = {"kind": r["kind"], "setting": r["spec"], "failed": repr(e), "n_errors": 1}
        row["spec"] = r["spec"]
        report["rows"].append(row)
        log(json.dumps(row)[:4000])
        save()
    models.close()


def card_name(m: dict) -> str:
    """'h200', 'h100', ... from nvidia-smi's name ('NVIDIA H200, 580.., 143771 MiB'); 'cpu' without a GPU."""
    gpu = m.get("gpu", "")
    if not gpu:
        return "cpu"
    words = gpu.split(",")[0].replace("NVIDIA", "").split()
    return next((w.lower() for w in words if any(c.isdigit() for c in w)), words[0].lower() if words else "gpu")


def arguments():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta-model", type=Path, help="GGUF whose metadata the model copies")
    ap.add_argument("--meta-mmproj", type=Path)
    ap.add_argument("--meta-hf", type=Path, help="small transformers checkpoint (tokenizer, processor, config)")
    ap.add_argument("--audio", type=Path, help="16 kHz 16-bit WAV of real music")
    ap.add_argument("--cli", type=Path, help="llama-mtmd-cli of the same llama.cpp (old method); omit to skip")
    ap.add_argument("--op-profile", type=Path, help="bench/gpu/op_profile.cpp built (build_op_profile.sh)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mf-bench"))
    ap.add_argument("--out", type=Path, default=Path("bench/out/gpu"))
    ap.add_argument("--tag", default="run", help="results are <card>-<date>-<tag>.json/.md")
    ap.add_argument("--cpu", action="store_true", help="tiny model, short tracks, small limits: a rehearsal")
    ap.add_argument("--seconds", type=float, help="track length (default 150, --cpu 5)")
    ap.add_argument(
        "--rows", default=None, help=f"comma list or {'/'.join(ROW_LISTS)} (default {DEVICE_ROWS}; --cpu {CPU_ROWS})"
    )
    ap.add_argument("--in-flight", default=None, help="old spelling of --rows for Q6_K engine rows (1,4,auto)")
    ap.add_argument("--per-slot", type=int, default=0, help="tracks per track in flight (default 4, --cpu 3)")
    ap.add_argument("--hf-tracks", type=int, default=3, help="tracks through the transformers backend")
    ap.add_argument("--card-mb", type=float, default=16384, help="the users' card for the users' row (16 GB)")
    ap.add_argument("--reserve-mb", type=float, default=2048, help="compute buffers + runtime on that card")
    ap.add_argument("--time-limit", type=float, default=555, help="skip rows whose estimate would end after this")
    ap.add_argument("--ops-timeout", type=float, default=240)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-prepare-ahead", action="store_true", help="encode audio on the decode thread throughout")
    ap.add_argument("--no-old", action="store_true", help="skip the old method (measured in an earlier run)")
    ap.add_argument("--old-s-per-track", type=float, default=None, help="the old method's s/track, when skipped")
    ap.add_argument("--keep-models", action="store_true", help="do not delete a type's model after its rows")
    ap.add_argument("--plan", action="store_true", help="print the rows with their estimated time and exit")
    return ap.parse_args()


def main() -> int:
    a = arguments()
    spec = a.rows or (",".join(a.in_flight.split(",")) if a.in_flight else (CPU_ROWS if a.cpu else DEVICE_ROWS))
    spec = ROW_LISTS.get(spec, spec)
    rows = [parse_row(s, "Q6_K") for s in spec.split(",") if s.strip()]
    per_slot = a.per_slot or (3 if a.cpu else 4)
    if a.plan:
        print_plan(rows, per_slot, a.time_limit)
        return 0
    if not (a.meta_model and a.meta_mmproj and a.audio):
        raise SystemExit("--meta-model, --meta-mmproj and --audio are needed (all but --plan)")
    t_start = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    seconds = a.seconds or (5.0 if a.cpu else 150.0)
    report: dict = {"machine": machine(), "shape": "tiny" if a.cpu else "full", "seconds": seconds, "rows": []}
    stem = f"{card_name(report['machine'])}-{time.strftime('%Y-%m-%d', time.gmtime())}-{a.tag}"
    report["plan"] = [{"row": r["spec"], "estimate_s": est} for r, est in plan(rows, per_slot)]
    log(f"machine: {report['machine']}; results {a.out / stem}.json")

    from music_flamingo import system_info

    report["system_info"] = {k: v for k, v in system_info().items() if k != "system_info"}
    log(f"engine build: {report['system_info']}")
    bw = bandwidth_gbs()
    report["bandwidth_gbs"] = bw
    log(f"device copy bandwidth: {bw and round(bw)} GB/s (read + write)")
    a.pcm = np.resize(read_wav(a.audio), int(seconds * 16000)).astype(np.float32)  # repeated if shorter
    a.prompts = catalogue_prompts(0.1 if a.cpu else 1.0)
    report["prompts"] = [{"name": p.name, "max_tokens": p.max_tokens} for p in a.prompts]

    def save() -> None:
        (a.out / f"{stem}.json").write_text(json.dumps(report, indent=1))

    base = old_row(a, report, rows[0]["type"], seconds)
    run_rows(rows, a, report, bw, t_start, save)
    report["wall_s"] = time.perf_counter() - t_start
    save()
    t = table(report["rows"], base) + "\n\n" + ops_table(report["rows"])
    (a.out / f"{stem}.md").write_text(t + "\n")
    print(f"\n{report['machine']}\nbandwidth {bw and round(bw)} GB/s; models {report.get('models')}\n")
    print(t)
    bad = [
        r
        for r in report["rows"]
        if r.get("n_errors") or (r.get("kind") == "engine" and r["tokens"] != r["expected_tokens"])
    ]
    return 1 if bad else 0


def old_row(a, report: dict, qtype: str, seconds: float) -> float | None:
    """The old method on the first row's type, or the s/track given for it; the base of the "vs old" column."""
    if not a.cli or a.no_old:
        return a.old_s_per_track
    import make_model

    model, mmproj = make_model.make(a.meta_model, a.meta_mmproj, a.work / "model", "tiny" if a.cpu else "full", qtype)
    wav = a.work / "track.wav"
    write_wav(wav, a.pcm)
    log("old method ...")
    ctx = int(seconds / 30 + 2) * 750 + 2048
    threads = a.threads or max(1, (os.cpu_count() or 2) // 2)
    row = old_method(a.cli, model, mmproj, wav, a.prompts, ctx, bool(report["machine"].get("gpu")), threads)
    row["kind"] = "old"
    report["rows"].append(row)
    log(json.dumps(row))
    return row["s_per_track"] if row["ok"] else None


if __name__ == "__main__":
    sys.exit(main())
