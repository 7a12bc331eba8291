#!/usr/bin/env python3
"""Throughput of the resident engine against the old method (one llama-mtmd-cli process per prompt).

On the same GGUF files, the same tracks and the same five prompts (the packaged default catalogue):

- (a) engine: one resident ``MusicFlamingoGGUF``; ``analyze_track(path)`` per track: the audio is decoded and
  resampled, encoded once, and all prompts are decoded together. Per-stage times come from ``GenerationStats``.
- (b) old method: per track and per prompt one ``llama-mtmd-cli`` process (``-m --mmproj --audio FILE -p PROMPT
  -n LIMIT --temp T --top-p P --seed S -c CTX``), the CLI decoding the file itself; a track's time is the sum of
  its five processes.
- (c) optional (``--transformers``): ``MusicFlamingoTransformers`` on the Hugging Face checkpoint.

Each method runs in a fresh Python process of its own, so its peak RSS is its own (for (b): the largest CLI
process). GPU memory (device-wide, minus the idle baseline) is sampled with nvidia-smi when there is one.
``--overhead`` measures what the Python wrapper and the binding add to a native ``generate`` call.

Defaults: the tiny random test model (testkit/tiny_model.py) and the reference CLI built for the tests
(testkit/mtmd_cli.py); tracks of 2-4 minutes from the test corpus (testkit/corpus.py, ~/.cache/music-flamingo/corpus).
Files the CLI cannot read (it reads mp3/wav/flac) are transcoded once to FLAC (untimed) and both methods get that FLAC.
It measures the music_flamingo that Python imports: the installed package, or a source tree put first on PYTHONPATH.

Usage, from the repository root: python -m bench.benchmark [--tracks 3] [--max-tokens N] [--overhead] [--transformers]
[--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from testkit import CACHE, REPO, fetch_llama_cpp

CLI_READS = {".mp3", ".wav", ".flac"}  # what llama-mtmd-cli (miniaudio) decodes itself
SR = 16000
AUDIO_TOKENS_PER_WINDOW = 750  # AF3: 30 s window -> 1500 encoder frames -> pooled by 2
OUT_DEFAULT = REPO / "bench" / "out" / "benchmark.json"


# ----------------------------------------------------------------------------------------------------------------
# machine, defaults, tracks
# ----------------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        model = m.group(1).strip() if m else model
    except (OSError, subprocess.SubprocessError):
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
        )
        gpu = r.stdout.strip() or None if r.returncode == 0 else None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def tiny_model():
    from testkit.tiny_model import default_tiny_model

    return default_tiny_model()


def default_cli() -> Path:
    from testkit.mtmd_cli import ensure_mtmd_cli

    return ensure_mtmd_cli(fetch_llama_cpp.resolve(), CACHE / "test-tools")


def corpus_dir() -> Path:
    from testkit.corpus import ensure_corpus

    return ensure_corpus()


def _natural(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def pick_tracks(a) -> list[dict[str, Any]]:
    """The tracks to time: --audio files, else corpus files (mp3 first, then ogg) of --min/--max-seconds."""
    import soundfile as sf

    if a.audio:
        cands = [Path(p) for p in a.audio]
    else:
        c = corpus_dir()
        cands = sorted(c.glob("mp3/*.mp3"), key=_natural) + sorted(c.glob("ogg/*.ogg"), key=_natural)
    picked = []
    for p in cands:
        try:
            info = sf.info(str(p))
            secs = info.frames / info.samplerate
        except RuntimeError:
            from music_flamingo.audio import read_file

            data, sr = read_file(p)
            secs = len(data) / sr
        if not a.audio and not (a.min_seconds <= secs <= a.max_seconds):
            continue
        picked.append({"name": p.name, "source": str(p), "seconds": round(secs, 2)})
        if len(picked) == a.tracks:
            break
    if not picked:
        raise SystemExit(f"no track of {a.min_seconds:g}-{a.max_seconds:g} s found (give --audio FILES)")
    # one file for both methods: what the CLI cannot read becomes FLAC at the file's own rate (not timed)
    conv = a.json.parent / "audio"
    for t in picked:
        src = Path(t["source"])
        if src.suffix.lower() in CLI_READS:
            t["file"] = str(src)
            continue
        conv.mkdir(parents=True, exist_ok=True)
        dst = conv / (src.stem + ".flac")
        if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
            import soundfile as sf

            from music_flamingo.audio import read_file

            data, sr = read_file(src)
            sf.write(str(dst), data, sr, subtype="PCM_16")
        t["file"] = str(dst)
    return picked


def prompt_set(max_tokens: int | None) -> list[dict[str, Any]]:
    """The packaged default catalogue, each limit capped at --max-tokens."""
    from music_flamingo.prompts import load_catalogue

    out = []
    for e in load_catalogue().select(None):
        d = dataclasses.asdict(e)
        if max_tokens:
            d["max_tokens"] = min(d["max_tokens"], max_tokens)
        out.append(d)
    return out


def entries_from(spec) -> list:
    from music_flamingo.prompts import PromptEntry

    return [PromptEntry(**d) for d in spec["prompts"]]


def peak_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def cuda_visible() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU" in r.stdout


class GpuSampler:
    """Device-wide GPU memory in use, sampled every 0.2 s by nvidia-smi; reports the peak minus the baseline."""

    def __init__(self) -> None:
        self.enabled = cuda_visible()
        self.base = self.peak = None
        self._stop = threading.Event()
        self._t = None

    @staticmethod
    def _used() -> int | None:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
        )
        try:
            return sum(int(x) for x in r.stdout.split())
        except ValueError:
            return None

    def __enter__(self):
        if self.enabled:
            self.base = self.peak = self._used()
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            u = self._used()
            if u is not None and (self.peak is None or u > self.peak):
                self.peak = u

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._t:
            self._t.join()

    def result_mb(self) -> float | None:
        if not self.enabled or self.base is None or self.peak is None:
            return None
        return float(self.peak - self.base)


# ----------------------------------------------------------------------------------------------------------------
# workers (each in its own process)
# ----------------------------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _time_analyzer(an, spec, label: str) -> dict[str, Any]:
    """analyze_track per track; decode+resample timed apart (it is the first step of analyze_track). With
    ``repeat`` > 1 each track runs that many times and its fastest run is kept (the others' walls are listed)."""
    from music_flamingo.audio import prepare_audio

    entries = entries_from(spec)
    tracks = spec["tracks"]

    def one(t):
        c0 = _cpu_s(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        prepared = prepare_audio(t["file"], None, an.analyzer.max_analysed_seconds(), name=t["file"])
        t1 = time.perf_counter()
        res = an.analyze_track(t["file"], entries=entries, prepared=prepared)
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0, res, _cpu_s(resource.RUSAGE_SELF) - c0

    for i in range(spec["warmup"]):
        w, _, _, _ = one(tracks[i % len(tracks)])
        _log(f"[{label}] warm-up track {tracks[i % len(tracks)]['name']}: {w:.2f} s (not counted)")
    rows = []
    for t in tracks:
        runs = [one(t) for _ in range(spec["repeat"])]
        wall, dec, res, cpu = min(runs, key=lambda x: x[0])
        st = res.stats
        rows.append(
            {
                "track": t["name"],
                "wall_s": wall,
                "walls_all_s": [x[0] for x in runs],
                "cpu_s": cpu,
                "decode_resample_s": dec,
                "encode_s": st.encode_ms / 1e3,
                "prefill_s": st.prefill_ms / 1e3,
                "decode_s": st.decode_ms / 1e3,
                "native_total_s": st.total_ms / 1e3,
                "tokens_generated": st.tokens_generated,
                "decode_tokens_per_s": st.decode_tokens_per_s,
                "audio_chunks": st.audio_chunks,
                "audio_tokens": st.audio_tokens,
                "prefix_tokens": st.prefix_tokens,
                "n_ctx": st.n_ctx,
                "other_s": wall - dec - st.total_ms / 1e3,
                "chars": {k: len(v) for k, v in res.raw.items()},
            }
        )
        _log(
            f"[{label}] {t['name']}: {wall:.2f} s (decode+resample {dec:.2f}, encode {st.encode_ms / 1e3:.2f}, "
            f"prefill {st.prefill_ms / 1e3:.2f}, decode {st.decode_ms / 1e3:.2f} s for {st.tokens_generated} tokens; "
            f"CPU {cpu:.1f} s; all runs " + ", ".join(f"{x[0]:.2f}" for x in runs) + ")"
        )
    return {"rows": rows}


def spec_engine(spec):
    """The resident engine a worker measures, as the spec describes it."""
    from music_flamingo import MusicFlamingoGGUF

    return MusicFlamingoGGUF(
        model_path=spec["model"],
        mmproj_path=spec["mmproj"],
        n_threads=spec["threads"],
        n_gpu_layers=spec["n_gpu_layers"],
        framing=spec["framing"],
    )


def worker_engine(spec) -> dict[str, Any]:
    t0 = time.perf_counter()
    eng = spec_engine(spec)
    load_s = time.perf_counter() - t0
    _log(
        f"[engine] loaded in {load_s:.2f} s: text model on {eng.info['text_model_device']}, "
        f"audio encoder on {eng.info['audio_encoder_device']}"
    )
    out = _time_analyzer(eng, spec, "engine")
    out.update(
        load_s=load_s,
        devices={"text_model": eng.info["text_model_device"], "audio_encoder": eng.info["audio_encoder_device"]},
        framing=eng.framing,
        flash_attn=eng.info.get("flash_attn"),
    )
    eng.close()
    out["peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_SELF)
    return out


def worker_transformers(spec) -> dict[str, Any]:
    import torch

    from music_flamingo import MusicFlamingoTransformers

    torch.set_num_threads(spec["threads"])
    dtype = spec["transformers_dtype"] or ("bfloat16" if torch.cuda.is_available() else "float32")
    t0 = time.perf_counter()
    m = MusicFlamingoTransformers(spec["hf_dir"], dtype=dtype, local_files_only=True)
    load_s = time.perf_counter() - t0
    _log(f"[transformers] loaded in {load_s:.2f} s ({dtype}, {m.attn_implementation}) on {m.device}")
    out = _time_analyzer(m, spec, "transformers")
    out.update(
        load_s=load_s,
        devices={"text_model": str(m.device), "audio_encoder": str(m.audio_device)},
        dtype=dtype,
        attn_implementation=m.attn_implementation,
    )
    if torch.cuda.is_available():
        out["torch_cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    m.close()
    out["peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_SELF)
    return out


_TS = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")


def _log_seconds(line: str) -> float | None:
    m = _TS.match(line)
    if not m:
        return None
    mi, s, ms, us = (int(x) for x in m.groups())
    return mi * 60 + s + ms / 1e3 + us / 1e6


def cli_ctx(spec, t, limit: int) -> int:
    """-c for one track: room for its audio (mtmd: floor(s/30)+1 windows of 750), the prompt and the limit."""
    if spec["cli_ctx"]:
        return spec["cli_ctx"]
    windows = int(t["seconds"] // 30) + 1
    need = windows * AUDIO_TOKENS_PER_WINDOW + 512 + limit
    return max(8192, -(-need // 1024) * 1024)


def run_cli_once(spec, t, p, ctx: int, n: int | None = None) -> dict[str, Any]:
    cmd = [
        spec["cli"],
        "-m",
        spec["model"],
        "--mmproj",
        spec["mmproj"],
        "--audio",
        t["file"],
        "-p",
        p["text"],
        "-n",
        str(n or p["max_tokens"]),
        "--temp",
        f"{p['temperature']:g}",
        "--top-p",
        f"{p['top_p']:g}",
        "--seed",
        str(p["seed"]),
        "-c",
        str(ctx),
        "-t",
        str(spec["threads"]),
    ]
    if spec["n_gpu_layers"] is not None:
        cmd += ["-ngl", str(999 if spec["n_gpu_layers"] < 0 else spec["n_gpu_layers"])]
    c0 = _cpu_s(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, timeout=3600)
    wall = time.perf_counter() - t0
    cpu = _cpu_s(resource.RUSAGE_CHILDREN) - c0
    if r.returncode != 0:
        raise RuntimeError(
            f"llama-mtmd-cli failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')[-3000:]}"
        )
    text = r.stdout.decode("utf-8", errors="replace").strip()  # what users parse
    err = r.stderr.decode("utf-8", errors="replace").splitlines()
    enc_ms = [float(m.group(1)) for ln in err if (m := re.search(r"encoding done in (\d+(?:\.\d+)?) ms", ln))]
    first = next((_log_seconds(ln) for ln in err if "encoding mtmd batch" in ln), None)
    return {
        "prompt": p["name"],
        "n": n or p["max_tokens"],
        "ctx": ctx,
        "wall_s": wall,
        "cpu_s": cpu,
        "startup_s": first,
        "encode_s": sum(enc_ms) / 1e3 if enc_ms else None,
        "windows": len(enc_ms),
        "text": text,
        "cmd": cmd,
    }


def worker_cli(spec) -> dict[str, Any]:
    tracks, prompts = spec["tracks"], spec["prompts"]
    if spec["warmup"]:  # page cache and first-run effects: one short untimed process
        t = tracks[0]
        w = run_cli_once(spec, t, prompts[0], cli_ctx(spec, t, 1), n=1)
        _log(f"[cli] warm-up process: {w['wall_s']:.2f} s (not counted)")
    rows = []
    for t in tracks:
        ctx = cli_ctx(spec, t, max(p["max_tokens"] for p in prompts))
        runs = [[run_cli_once(spec, t, p, ctx) for p in prompts] for _ in range(spec["repeat"])]
        walls = [sum(x["wall_s"] for x in procs) for procs in runs]
        procs = runs[walls.index(min(walls))]
        wall = min(walls)
        row = {
            "track": t["name"],
            "wall_s": wall,
            "walls_all_s": walls,
            "processes": procs,
            "ctx": ctx,
            "cpu_s": sum(x["cpu_s"] for x in procs),
            "startup_s": sum(x["startup_s"] or 0 for x in procs),
            "encode_s": sum(x["encode_s"] or 0 for x in procs),
        }
        row["rest_s"] = wall - row["startup_s"] - row["encode_s"]
        rows.append(row)
        _log(
            f"[cli] {t['name']}: {wall:.2f} s = "
            + " + ".join(f"{x['wall_s']:.2f}" for x in procs)
            + f" (start-up to first encode {row['startup_s']:.2f}, encode {row['encode_s']:.2f}, "
            f"prefill+decode+exit {row['rest_s']:.2f}; CPU {row['cpu_s']:.1f} s; all runs "
            + ", ".join(f"{w:.2f}" for w in walls)
            + ")"
        )
    # tokens generated, approximately: the CLI prints text only, so count by re-tokenizing it (tiny/HF tokenizer)
    tok = None
    tj = Path(spec["hf_dir"]) / "tokenizer.json" if spec.get("hf_dir") else None
    if tj and tj.is_file():
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(tj))
        except Exception:  # optional: without it the column stays empty
            tok = None
    for r in rows:
        for x in r["processes"]:
            x["approx_tokens"] = len(tok.encode(x["text"], add_special_tokens=False).ids) if tok else None
        r["approx_tokens"] = sum(x["approx_tokens"] for x in r["processes"]) if tok else None
    example = rows[0]["processes"][0]["cmd"] if rows else None
    for r in rows:
        for x in r["processes"]:
            x.pop("cmd")
    return {"rows": rows, "example_command": example, "peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN)}


def worker_overhead(spec) -> dict[str, Any]:
    """What Python + the binding add to a native generate(): three views, ``calls`` calls each."""
    import numpy as np

    from music_flamingo import InvalidInputError, Prompt
    from music_flamingo.audio import load_audio

    n = spec["overhead_calls"]
    eng = spec_engine(spec)
    music = load_audio(spec["tracks"][0]["file"])
    start = max(0, min(20 * SR, len(music) - SR))
    pcm = np.ascontiguousarray(music[start : start + SR])  # 1 s of real music (from 20 s in)
    prompts = [
        Prompt(
            p["text"],
            max_tokens=1,
            temperature=p["temperature"],
            top_p=p["top_p"],
            top_k=p["top_k"],
            seed=p["seed"],
            name=p["name"],
        )
        for p in spec["prompts"]
    ]

    def summary(xs_ms: list[float]) -> dict[str, float]:
        xs = sorted(xs_ms)
        return {
            "mean_ms": statistics.fmean(xs),
            "median_ms": statistics.median(xs),
            "p95_ms": xs[int(0.95 * (len(xs) - 1))],
            "min_ms": xs[0],
            "calls": len(xs),
        }

    # 1) real calls: wall of generate() minus the native engine's own time — log-mel and audio encoding (done before
    # the track is admitted) plus total_ms (admission to the last token)
    eng.generate(pcm, prompts)  # first call creates the context
    diffs, walls, raw_example = [], [], None
    real_native = eng._engine
    for _ in range(n):
        t0 = time.perf_counter()
        r = eng.generate(pcm, prompts)
        w = (time.perf_counter() - t0) * 1e3
        walls.append(w)
        diffs.append(w - (r.stats.mel_ms + r.stats.encode_ms + r.stats.total_ms))
    _log(
        f"[overhead] generate(1 s, 5 prompts, max_tokens=1): wall {statistics.fmean(walls):.1f} ms, "
        f"wall - native (mel + encode + total) {statistics.fmean(diffs):.3f} ms"
    )
    raw_example = real_native.generate(pcm, SR, [p.to_native() for p in prompts], request=eng._request(None))

    # 2) the binding round trip with (almost) no native work: the engine rejects the prompt in its validation
    bad = [Prompt("bad\0prompt", max_tokens=1)]
    fails = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            eng.generate(pcm, bad)
        except InvalidInputError:
            pass
        fails.append((time.perf_counter() - t0) * 1e3)

    # 3) the pure Python wrapper: generate() and analyze_track() against a stub that returns a recorded result
    class Stub:
        def generate(self, *args, **kwargs):
            return raw_example

        def close(self):
            pass

    from music_flamingo.audio import PreparedAudio

    prepared = PreparedAudio(pcm=pcm, source_seconds=1.0, analysed_seconds=1.0, truncated=False)
    entries = [dataclasses.replace(e, max_tokens=1) for e in entries_from(spec)]
    eng.provenance()  # hashes the model files once; not part of the per-call cost
    eng._engine = Stub()
    wrap, analyze = [], []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            eng.generate(pcm, prompts)
            wrap.append((time.perf_counter() - t0) * 1e3)
        for _ in range(n):
            t0 = time.perf_counter()
            eng.analyze_track("stub", entries=entries, prepared=prepared)
            analyze.append((time.perf_counter() - t0) * 1e3)
    finally:
        eng._engine = real_native
    eng.close()
    # 4) a trivial native call, for scale
    from music_flamingo import _core

    calls = []
    for _ in range(n):
        t0 = time.perf_counter()
        _core.build_info()
        calls.append((time.perf_counter() - t0) * 1e3)
    return {
        "real_generate_wall": summary(walls),
        "real_generate_minus_native_total": summary(diffs),
        "binding_roundtrip_validation_failure": summary(fails),
        "python_generate_wrapper_stub": summary(wrap),
        "python_analyze_track_stub": summary(analyze),
        "trivial_native_call_build_info": summary(calls),
        "audio_seconds": 1.0,
        "prompts": len(prompts),
        "target_ms": 5.0,
    }


WORKERS = {"engine": worker_engine, "cli": worker_cli, "transformers": worker_transformers, "overhead": worker_overhead}


def run_worker(kind: str, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    spec_f, out_f = tmp / f"{kind}.spec.json", tmp / f"{kind}.out.json"
    spec_f.write_text(json.dumps(spec))
    load0 = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    with GpuSampler() as gpu:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.benchmark",
                "--worker",
                kind,
                "--spec",
                str(spec_f),
                "--worker-out",
                str(out_f),
            ],
            cwd=REPO,  # where bench.benchmark and testkit import from
        )
    if r.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({r.returncode})")
    out = json.loads(out_f.read_text())
    out["gpu_mem_peak_mb"] = gpu.result_mb()
    out["worker_wall_s"] = time.perf_counter() - t0
    out["load_avg_start_end"] = [load0, [round(x, 2) for x in os.getloadavg()]]
    return out


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------


def _mean(rows, k):
    xs = [r[k] for r in rows if r.get(k) is not None]
    return statistics.fmean(xs) if xs else None


def summarize(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s = {}
    for key, label in (
        ("engine", "(a) engine, resident"),
        ("cli", "(b) llama-mtmd-cli per prompt"),
        ("transformers", "(c) transformers, resident"),
    ):
        m = res.get(key)
        if not m:
            continue
        rows = m["rows"]
        wall = _mean(rows, "wall_s")
        d = {
            "label": label,
            "s_per_track": wall,
            "tracks_per_hour": 3600 / wall if wall else None,
            "cpu_s_per_track": _mean(rows, "cpu_s"),
            "load_avg_start_end": m.get("load_avg_start_end"),
            "peak_rss_mb": m.get("peak_rss_mb"),
            "gpu_mem_peak_mb": m.get("gpu_mem_peak_mb"),
            "load_s": m.get("load_s"),
        }
        if key == "cli":
            d.update(
                startup_s=_mean(rows, "startup_s"),
                encode_s=_mean(rows, "encode_s"),
                rest_s=_mean(rows, "rest_s"),
                approx_tokens_per_track=_mean(rows, "approx_tokens"),
            )
        else:
            tok = sum(r["tokens_generated"] for r in rows)
            dec = sum(r["decode_s"] for r in rows)
            for r in rows:  # native time no stage claims (the engine: the log-mel of each window)
                r.setdefault("unattributed_s", r["native_total_s"] - r["encode_s"] - r["prefill_s"] - r["decode_s"])
            d.update(
                decode_resample_s=_mean(rows, "decode_resample_s"),
                encode_s=_mean(rows, "encode_s"),
                unattributed_s=_mean(rows, "unattributed_s"),
                prefill_s=_mean(rows, "prefill_s"),
                decode_s=_mean(rows, "decode_s"),
                decode_tokens_per_s=tok / dec if dec else None,
                tokens_per_track=tok / len(rows),
                other_s=_mean(rows, "other_s"),
            )
        s[key] = d
    base = s.get("cli", {}).get("s_per_track")
    for d in s.values():
        d["speedup_vs_b"] = base / d["s_per_track"] if base and d["s_per_track"] else None
    return s


def _f(x, fmt="{:.2f}", none="–"):
    return none if x is None else fmt.format(x)


def table(summary: dict[str, dict[str, Any]]) -> str:
    head = (
        "| method | s/track | tracks/h | speed-up vs (b) | CPU s/track | load (once) s | decode+resample s | encode s | "
        "other in-call s | prefill s | decode s | decode tok/s | tokens/track | peak RSS MB | GPU mem MB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key in ("engine", "transformers", "cli"):
        d = summary.get(key)
        if not d:
            continue
        if key == "cli":
            stages = (
                f"(in CLI start-up) | {_f(d['encode_s'])} (5×) | (in start-up) | "
                f"{_f(d['rest_s'])} (prefill+decode+exit, 5×) | | | "
                f"{_f(d['approx_tokens_per_track'], '~{:.0f}', '')} | "
            )
            load = f"{_f(d['startup_s'])} per track (5× start-up)"
        else:
            stages = (
                f"{_f(d['decode_resample_s'])} | {_f(d['encode_s'])} | {_f(d['unattributed_s'])} | "
                f"{_f(d['prefill_s'])} | "
                f"{_f(d['decode_s'])} | {_f(d['decode_tokens_per_s'], '{:.1f}')} | "
                f"{_f(d['tokens_per_track'], '{:.0f}')} | "
            )
            load = _f(d["load_s"])
        lines.append(
            f"| {d['label']} | {_f(d['s_per_track'])} | {_f(d['tracks_per_hour'], '{:.0f}')} | "
            f"{_f(d['speedup_vs_b'], '{:.2f}×')} | {_f(d['cpu_s_per_track'], '{:.1f}')} | {load} | {stages}{_f(d['peak_rss_mb'], '{:.0f}')} | "
            f"{_f(d['gpu_mem_peak_mb'], '{:.0f}', 'n/a (no CUDA device)')} |"
        )
    return "\n".join(lines)


def overhead_table(o: dict[str, Any]) -> str:
    lines = [
        "| what (per call, 1 s audio, 5 prompts, max_tokens=1) | mean ms | median ms | p95 ms | calls |",
        "|---|---|---|---|---|",
    ]
    names = {
        "real_generate_minus_native_total": "generate() wall − native (mel + encode + total_ms)",
        "binding_roundtrip_validation_failure": "generate() rejected by the engine's validation (full round trip)",
        "python_generate_wrapper_stub": "generate() Python wrapper alone (stub engine)",
        "python_analyze_track_stub": "analyze_track() Python alone (stub engine, audio decoded)",
        "trivial_native_call_build_info": "trivial native call (_core.build_info)",
        "real_generate_wall": "generate() wall (for scale)",
    }
    for k, label in names.items():
        x = o[k]
        lines.append(f"| {label} | {x['mean_ms']:.3f} | {x['median_ms']:.3f} | {x['p95_ms']:.3f} | {x['calls']} |")
    return "\n".join(lines)


def _git_state() -> dict[str, Any]:
    def git(*args):
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    return {"head": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", type=Path, help="text model GGUF (default: the tiny test model)")
    ap.add_argument("--mmproj", type=Path, help="mmproj GGUF (default: the tiny test model's)")
    ap.add_argument("--hf-dir", type=Path, help="HF checkpoint for --transformers (default: the tiny test model's)")
    ap.add_argument("--cli", type=Path, help="llama-mtmd-cli (default: the one built for the tests)")
    ap.add_argument(
        "--cli-ctx",
        type=int,
        default=0,
        help="-c for the CLI; 0: per track, max(8192, audio + prompt + limit rounded up to 1024)",
    )
    ap.add_argument("--audio", nargs="+", help="audio files to time (default: corpus tracks of 2-4 minutes)")
    ap.add_argument("--tracks", type=int, default=3, help="number of tracks (default 3)")
    ap.add_argument("--min-seconds", type=float, default=120, help="corpus tracks at least this long (default 120)")
    ap.add_argument("--max-seconds", type=float, default=240, help="corpus tracks at most this long (default 240)")
    ap.add_argument("--max-tokens", type=int, default=None, help="cap every prompt's token limit (quick runs)")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="CPU threads, every method (default: all cores)"
    )
    ap.add_argument("--n-gpu-layers", type=int, default=-1, help="-1: all (passed to the CLI as -ngl 999)")
    ap.add_argument(
        "--framing",
        default=None,
        choices=["llamacpp", "reference", "reference_trim", "reference_tail"],  # gguf_backend.FRAMINGS
        help="engine framing (default: the engine's, reference; llamacpp = what the CLI feeds)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="time each track this many times and keep its fastest run (default 1)"
    )
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed tracks first for (a)/(c); (b): one short process (default 1)"
    )
    ap.add_argument("--transformers", action="store_true", help="also time (c) the transformers backend")
    ap.add_argument("--transformers-dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--skip", nargs="*", default=[], choices=["engine", "cli"], help="methods not to run")
    ap.add_argument("--overhead", action="store_true", help="also measure the binding overhead")
    ap.add_argument("--overhead-calls", type=int, default=200, help="calls per overhead measurement (default 200)")
    ap.add_argument(
        "--json", type=Path, default=OUT_DEFAULT, help="where to write the results (default bench/out/benchmark.json)"
    )
    ap.add_argument("--report", type=Path, help="print the tables of a saved result JSON and exit")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        spec = json.loads(a.spec.read_text())
        a.worker_out.write_text(json.dumps(WORKERS[a.worker](spec)))
        return

    if a.report:
        saved = json.loads(a.report.read_text())
        print(f"{saved['command']}\n{saved['machine']}\n")
        print(table(summarize(saved)))
        if "overhead" in saved:
            print("\n" + overhead_table(saved["overhead"]))
        return

    from music_flamingo import _core
    from music_flamingo.gguf_backend import DEFAULT_FRAMING

    a.json = a.json.resolve()
    tiny = None
    if a.model_path is None or a.mmproj is None or (a.transformers and a.hf_dir is None):
        tiny = tiny_model()
    model = a.model_path or tiny.model_gguf
    mmproj = a.mmproj or tiny.mmproj_gguf
    cli = a.cli or (default_cli() if "cli" not in a.skip else None)
    tracks = pick_tracks(a)
    prompts = prompt_set(a.max_tokens)
    spec = {
        "model": str(model),
        "mmproj": str(mmproj),
        "cli": str(cli) if cli else None,
        "hf_dir": str(a.hf_dir or (tiny.hf_dir if tiny else "")),
        "threads": a.threads,
        "n_gpu_layers": a.n_gpu_layers,
        "framing": a.framing or DEFAULT_FRAMING,
        "warmup": a.warmup,
        "repeat": a.repeat,
        "tracks": tracks,
        "prompts": prompts,
        "cli_ctx": a.cli_ctx,
        "transformers_dtype": a.transformers_dtype,
        "overhead_calls": a.overhead_calls,
    }
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "build": {k: v for k, v in dict(_core.build_info()).items()},
        "native_module": {
            "file": str(Path(_core.__file__).resolve()),
            "mtime": _dt.datetime.fromtimestamp(Path(_core.__file__).stat().st_mtime, _dt.timezone.utc).isoformat(
                timespec="seconds"
            ),
        },
        "git": _git_state(),
        "model": str(model),
        "mmproj": str(mmproj),
        "cli": spec["cli"],
        "tracks": tracks,
        "prompts": [
            {k: p[k] for k in ("name", "max_tokens", "temperature", "top_p", "top_k", "seed")} for p in prompts
        ],
        "threads": a.threads,
        "n_gpu_layers": a.n_gpu_layers,
        "framing": spec["framing"],
        "warmup": a.warmup,
        "repeat": a.repeat,
    }
    _log("tracks: " + ", ".join(f"{t['name']} ({t['seconds']:.0f} s)" for t in tracks))
    _log("prompts: " + ", ".join(f"{p['name']}={p['max_tokens']}" for p in prompts))
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as td:
        tmp = Path(td)
        todo = [k for k in ("engine", "cli") if k not in a.skip]
        todo += ["transformers"] * a.transformers + ["overhead"] * a.overhead
        for kind in todo:  # a failed method is reported, the others still run
            try:
                result[kind] = run_worker(kind, spec, tmp)
            except RuntimeError as e:
                _log(f"{kind}: {e}")
                result[f"{kind}_error"] = str(e)
    result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = summarize(result)
    t = table(result["summary"])
    result["table_markdown"] = t
    print(
        f"\n{len(tracks)} tracks, {sum(x['seconds'] for x in tracks) / len(tracks):.0f} s on average; prompts "
        + ", ".join(f"{p['name']}={p['max_tokens']}" for p in prompts)
        + f"; threads {a.threads}; machine {result['machine']['cpu']} ({result['machine']['cores']} cores), "
        f"load {result['machine']['load_avg']} -> {result['machine']['load_avg_end']}\n"
    )
    print(t)
    if "overhead" in result:
        result["overhead_table_markdown"] = overhead_table(result["overhead"])
        print("\nbinding overhead (target < 5 ms per call):\n" + result["overhead_table_markdown"])
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
