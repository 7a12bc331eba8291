#!/usr/bin/env python3
"""One prepared throughput run: the old method (one llama-mtmd-cli per prompt) against the resident engine at
several tracks in flight, on a random-weight model of the real shapes. Prints one table; writes the numbers as JSON.

Built for a lent GPU machine (no network, a few minutes): everything it needs travels with the repository
(bench/gpu/device.sh unpacks the prebuilt native parts and calls this), and it runs the same way on a CPU with a
tiny model (``--cpu``), which is what CI does, so it works the first time it meets a GPU.

Per engine setting, N tracks of the same length (the same music, rotated so no two are identical) with the five
catalogue prompts at their full token limits, end-of-generation ignored (every answer runs to its limit), sampled as
the catalogue says (temperature 0.7, top-p 0.9, top-k 50). Columns: seconds per track and tracks per hour over the
whole run (ramp-up and drain included), generated tokens per second, mean decode step against the floor of reading
the weights once at the measured bandwidth, host ms per step (sampling and bookkeeping outside llama_decode), the
prefill each admitted track costs the decode thread, the helper thread's mel + encoder per track, peak device memory.

usage: run.py --model-dir DIR --meta-model M --meta-mmproj P --audio WAV --cli LLAMA_MTMD_CLI --out OUT [--cpu]
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
        r = subprocess.run(cmd, capture_output=True, text=True)
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
    llama_sampler_sample does) or ``:split`` (``mf`` is then an engine with one KV stream per sequence)."""
    from music_flamingo import _core

    name, _, variant = setting.partition(":")
    in_flight = name if name == "auto" else int(name)
    if variant == "noprep":
        prepare_ahead = False
    tracks = [np.roll(pcm, 16000 * 7 * i) for i in range(n_tracks)]
    results: dict[int, object] = {}
    _core.set_force_full_sampling(variant == "fullsample")
    try:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            st = mf.generate_stream(
                iter(tracks),
                prompts,
                lambda i, r: results.__setitem__(i, r),
                tracks_in_flight=in_flight,
                max_audio_seconds=len(pcm) / 16000 + 1,
                profile=True,
                prepare_ahead=prepare_ahead,
            )
            wall = time.perf_counter() - t0
    finally:
        _core.set_force_full_sampling(False)
    errors = [repr(r) for r in results.values() if isinstance(r, Exception)]
    good = [r for r in results.values() if not isinstance(r, Exception)]
    tokens = sum(r.stats.tokens_generated for r in good)
    steps = max(1, st["steps"])
    batch = np.array(st["step_batch"], dtype=float)
    dec = np.array(st["step_decode_ms"], dtype=float)
    host = np.array(st["step_host_ms"], dtype=float)
    full = batch >= np.percentile(batch, 90) if batch.size else batch.astype(bool)
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
        "steps": st["steps"],
        "mean_batch": float(batch.mean()) if batch.size else 0.0,
        "step_ms": st["decode_ms"] / steps,
        "host_ms_per_step": st["host_ms"] / steps,
        "sample_ms_per_step": st["sample_ms"] / steps,
        "step_ms_at_full_batch": float(dec[full].mean()) if batch.size else 0.0,
        "full_batch": float(batch[full].mean()) if batch.size else 0.0,
        "host_ms_at_full_batch": float(host[full].mean()) if batch.size else 0.0,
        "admit_ms_per_track": st["admit_ms"] / n_tracks,
        "prepare_ms_per_track": st["prepare_ms"] / n_tracks,
        "wait_ms": st["wait_ms"],
        "n_ctx": st["n_ctx"],
        "kv_budget_mb": st["kv_budget_mb"],
        "peak_mem_mb": mem.peak_mb,
        "errors": errors[:3],
        "n_errors": len(errors),
        "floor_ms": (weights_bytes / (bw * 1e9) * 1e3) if bw else None,
        "sampling_threads": st["sampling_threads"],
        "encode_ms_per_track": float(np.mean([r.stats.encode_ms for r in good])) if good else 0.0,
        "mel_ms_per_track": float(np.mean([r.stats.mel_ms for r in good])) if good else 0.0,
        "prefill_ms_per_track": float(np.mean([r.stats.prefill_ms for r in good])) if good else 0.0,
    }
    return row


def table(rows: list[dict], base: float | None) -> str:
    lines = [
        "| setting | tracks | s/track | tracks/h | vs old | tok/s | step ms (mean B) | floor ms | host ms/step "
        "| prefill ms/track (decode thread) | mel+encode ms/track (helper) | peak mem MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = f"{base / r['s_per_track']:.1f}x" if base and r.get("s_per_track") else ""
        if "step_ms" in r:
            floor = f"{r['floor_ms']:.2f}" if r.get("floor_ms") else "n/a"
            lines.append(
                f"| {r['setting']} (chosen {r['chosen_in_flight']}, peak {r['peak_in_flight']}) | {r['tracks']} "
                f"| {r['s_per_track']:.2f} | {r['tracks_per_h']:.0f} | {vs} | {r['tok_per_s']:.0f} "
                f"| {r['step_ms']:.2f} ({r['mean_batch']:.0f}) | {floor} | {r['host_ms_per_step']:.2f} "
                f"| {r['admit_ms_per_track']:.0f} | {r['mel_ms_per_track'] + r['encode_ms_per_track']:.0f} "
                f"| {r['peak_mem_mb']:.0f} |"
            )
        else:
            lines.append(
                f"| {r['setting']} | 1 | {r['s_per_track']:.2f} | {r['tracks_per_h']:.0f} | 1.0x "
                f"| {r['tokens'] / r['s_per_track']:.0f} | | | | | | |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meta-model", type=Path, required=True, help="GGUF whose metadata the model copies")
    ap.add_argument("--meta-mmproj", type=Path, required=True)
    ap.add_argument("--audio", type=Path, required=True, help="16 kHz 16-bit WAV of real music")
    ap.add_argument("--cli", type=Path, help="llama-mtmd-cli of the same llama.cpp (old method); omit to skip")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mf-bench"))
    ap.add_argument("--out", type=Path, default=Path("bench/out/gpu"))
    ap.add_argument("--cpu", action="store_true", help="tiny model, short tracks, small limits: a rehearsal")
    ap.add_argument("--seconds", type=float, help="track length (default 150, --cpu 8)")
    ap.add_argument("--in-flight", default=None, help="comma list, 'auto' allowed (default 1,4,8,16,auto)")
    ap.add_argument("--time-limit", type=float, default=400, help="skip settings that would start after this")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-prepare-ahead", action="store_true", help="encode audio on the decode thread throughout")
    ap.add_argument("--no-old", action="store_true", help="skip the old method (measured in an earlier run)")
    a = ap.parse_args()

    t_start = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    shape, scale = ("tiny", 0.1) if a.cpu else ("full", 1.0)
    seconds = a.seconds or (5.0 if a.cpu else 150.0)
    settings = (
        a.in_flight
        or ("1,auto,auto:noprep,auto:fullsample" if a.cpu else "1,4,8,16,auto,auto:fullsample,auto:noprep,24")
    ).split(",")
    report: dict = {"machine": machine(), "shape": shape, "seconds": seconds, "rows": []}
    log(f"machine: {report['machine']}")

    from music_flamingo import MusicFlamingoGGUF, system_info

    report["system_info"] = {k: v for k, v in system_info().items() if k != "system_info"}
    log(f"engine build: {report['system_info']}")
    bw = bandwidth_gbs()
    report["bandwidth_gbs"] = bw
    log(f"device copy bandwidth: {bw and round(bw)} GB/s (read + write)")

    import make_model

    t0 = time.perf_counter()
    model, mmproj = make_model.make(a.meta_model, a.meta_mmproj, a.work / "model", shape=shape)
    report["model"] = {
        "file": model.name,
        "bytes": model.stat().st_size,
        "mmproj_bytes": mmproj.stat().st_size,
        "make_s": time.perf_counter() - t0,
    }
    log(f"model written: {report['model']}")

    pcm = read_wav(a.audio)
    n = int(seconds * 16000)
    pcm = np.resize(pcm, n).astype(np.float32)  # the music, repeated if the file is shorter
    wav = a.work / "track.wav"
    write_wav(wav, pcm)
    prompts = catalogue_prompts(scale)
    report["prompts"] = [{"name": p.name, "max_tokens": p.max_tokens} for p in prompts]
    gpu = bool(report["machine"].get("gpu"))
    threads = a.threads or max(1, (os.cpu_count() or 2) // 2)

    base = None
    if a.cli and not a.no_old:
        log("old method ...")
        ctx = int(seconds / 30 + 2) * 750 + 2048
        row = old_method(a.cli, model, mmproj, wav, prompts, ctx, gpu, threads)
        report["rows"].append(row)
        base = row["s_per_track"] if row["ok"] else None
        log(json.dumps(row))

    log("loading the engine ...")
    t0 = time.perf_counter()
    mf = MusicFlamingoGGUF(model_path=model, mmproj_path=mmproj, n_threads=a.threads or None)
    report["engine_load_s"] = time.perf_counter() - t0
    report["engine_info"] = {k: v for k, v in mf.info.items() if k != "chat_template"}
    log(f"engine loaded in {report['engine_load_s']:.1f} s: {report['engine_info']}")
    mf.generate(pcm[: 16000 * 5], prompts[:2])  # warm-up: first kernels, context creation

    auto_cap = int(mf.info["auto_tracks_in_flight_cap"])
    engines = {False: mf}  # by "one KV stream per sequence"; the split engine is loaded when a setting asks for it
    for s in settings:
        name = s.partition(":")[0]
        k = auto_cap if name == "auto" else int(name)
        n_tracks = max(2, 2 * k) if k > 1 else (2 if a.cpu else 3)
        if time.perf_counter() - t_start > a.time_limit:
            log(f"time limit: skipping tracks in flight {s}")
            continue
        log(f"engine, tracks in flight {s}, {n_tracks} tracks ...")
        split = s.endswith(":split")
        if split not in engines:
            engines[split] = MusicFlamingoGGUF(
                model_path=model, mmproj_path=mmproj, n_threads=a.threads or None, kv_unified=False
            )
            engines[split].generate(pcm[: 16000 * 5], prompts[:2])
        row = engine_setting(
            engines[split],
            pcm,
            prompts,
            s,
            n_tracks,
            model.stat().st_size,
            bw,
            prepare_ahead=False if a.no_prepare_ahead else None,
        )
        report["rows"].append(row)
        log(json.dumps({k: v for k, v in row.items()}))
        (a.out / "gpu_bench.json").write_text(json.dumps(report, indent=1))
    for e in engines.values():
        e.close()

    report["wall_s"] = time.perf_counter() - t_start
    (a.out / "gpu_bench.json").write_text(json.dumps(report, indent=1))
    t = table(report["rows"], base)
    (a.out / "gpu_bench.md").write_text(t + "\n")
    print(f"\n{report['machine']}\nbandwidth {bw and round(bw)} GB/s; model {report['model']}\n")
    print(t)
    bad = [
        r
        for r in report["rows"]
        if r.get("n_errors") or ("tokens" in r and "expected_tokens" in r and r["tokens"] != r["expected_tokens"])
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
