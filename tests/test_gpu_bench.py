"""The prepared GPU run (bench/gpu/run.py) rehearsed on the CPU with tiny shapes, so it works the first time a GPU
machine is lent: model writer (every weight type), old method, engine settings with their ramp-up / steady state /
drain, the op profiler, the users' workload, the transformers backend, table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench" / "gpu"))


@pytest.fixture(scope="module")
def op_profile(llama_cpp_dir, mtmd_cli, tmp_path_factory):
    """bench/gpu/op_profile.cpp built against the tests' static llama.cpp build (the mtmd-cli one)."""
    exe = tmp_path_factory.mktemp("op") / "op-profile"
    build = REPO / "bench" / "gpu" / "build_op_profile.sh"
    subprocess.run(["bash", str(build), str(llama_cpp_dir), str(mtmd_cli.parent.parent), str(exe)], check=True)
    return exe


def test_gpu_bench_runs_on_cpu_and_reports_every_row_kind(tiny, mtmd_cli, llama_cpp_dir, track, op_profile, tmp_path):
    from run import write_wav

    wav = tmp_path / "music.wav"
    write_wav(wav, track[16000 * 20 : 16000 * 30])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(llama_cpp_dir / "gguf-py")] + [p for p in sys.path if p])}
    args = ["--cpu", "--meta-model", str(tiny.model_gguf), "--meta-mmproj", str(tiny.mmproj_gguf)]
    args += [
        "--meta-hf",
        str(tiny.hf_dir),
        "--audio",
        str(wav),
        "--cli",
        str(mtmd_cli),
        "--op-profile",
        str(op_profile),
    ]
    args += ["--work", str(tmp_path / "work"), "--out", str(out), "--threads", "1", "--hf-tracks", "2"]
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (result,) = out.glob("cpu-*-run.json")  # <card>-<date>-<tag>
    report = json.loads(result.read_text())
    rows = report["rows"]
    assert not report.get("skipped") and not [x for x in rows if x.get("failed")], rows
    old, engine = rows[0], [x for x in rows if x.get("kind") == "engine"]
    assert old["ok"] and len(old["per_prompt_s"]) == 5
    assert [x["spec"] for x in engine] == [
        "Q6_K@1",
        "Q6_K@1:devsample",
        "Q6_K@auto",
        "Q6_K@2:beside",
        "Q6_K@1:live",
        "Q6_K@2:per_track",
        "Q8_0@1",
        "F16@1",
    ]
    assert [x["kv_layout"] for x in engine] == ["unified"] * 5 + ["per_track"] + ["unified"] * 2
    for row in engine:
        assert row["n_errors"] == 0, row["errors"]
        assert row["tokens"] == row["expected_tokens"] > 0  # end of generation ignored: every answer at its limit
        assert row["steps"] > 0 and row["host_ms_per_step"] > 0 and row["step_ms"] > 0
        assert 0 < row["ramp_s"] < row["wall_s"]
    # "auto" samples on the host on a CPU; the devsample row's every token came from llama.cpp's backend samplers
    assert [x["device_sampled"] > 0 for x in engine] == [False, True] + [False] * 6
    assert engine[1]["device_sampled"] == engine[1]["tokens"]  # ignore_eos: no token ends an answer early
    beside, live = engine[3], engine[4]
    assert beside["prefill_beside"] == beside["tracks"] and beside["beside_ms_per_track"] > 0  # issue 18 item 2
    assert engine[0]["prefill_beside"] == 0  # a CPU's default: prefilled at admission
    assert live["live_answers"] == 5 and live["peak_in_flight"] >= 1  # item 3: the target reaches the engine
    auto = engine[2]
    assert auto["chosen_in_flight"] == 2 and auto["tracks"] == 6  # 3 x its tracks in flight on the CPU
    assert auto["steady_tracks_per_h"] > 0 and auto["ramp_s"] + auto["steady_s"] + auto["drain_s"] == pytest.approx(
        auto["wall_s"]
    )
    sizes = {t: m["bytes"] for t, m in report["models"].items()}
    assert sizes["Q6_K"] < sizes["Q8_0"] < sizes["F16"]
    (ops,) = [x for x in rows if x.get("kind") == "ops"]
    assert [s["tracks_in_flight"] for s in ops["settings"]] == [1, 2]
    for s in ops["settings"]:
        for what in ("step", "prefill"):
            ms = s[what]["ms"]
            assert ms["matmul"] > 0 and ms["attention"] > 0 and s[what]["plain_ms"] > 0, s
    (users,) = [x for x in rows if x.get("kind") == "users"]
    assert users["tokens"] == users["expected_tokens"] == users["tracks"] * 50  # `full` alone, 500 x 0.1
    assert "47.55 s crops" in users["setting"] and 0 < users["memory_budget_mb"] < 16384
    (hf,) = [x for x in rows if x.get("kind") == "hf"]
    assert hf["tracks"] == 2 and hf["tokens"] > 0 and hf["tracks_per_h"] > 0 and hf["attn_implementation"] == "sdpa"
    md = result.with_suffix(".md").read_text()
    assert "| engine Q6_K, tracks in flight auto " in r.stdout and "| transformers backend (sdpa" in md
    assert "| Q6_K | 2 | step (B 10) |" in md


def test_plan_fits_the_device_call_and_names_what_it_skips():
    """The default device rows, estimated from the H200 numbers: what fits the 10-minute call runs, in order."""
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu" / "run.py"), "--plan"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    fits = [ln.split()[0] for ln in lines[2:] if "past the time limit" not in ln]
    assert fits == ["Q6_K@8", "Q6_K@4:per_track", "Q6_K@16:per_track", "ops@Q6_K", "users@Q6_K", "Q8_0@8", "F16@8"]
    assert int(lines[len(fits) + 1].split()[-1]) <= 555


def test_row_specs_and_phases():
    from run import card_name, parse_row, phases

    assert parse_row("Q8_0@16:noprep", "Q6_K") == {
        "spec": "Q8_0@16:noprep",
        "kind": "engine",
        "type": "Q8_0",
        "k": "16",
        "variant": "noprep",
    }
    assert parse_row("auto", "Q6_K")["type"] == "Q6_K" and parse_row("ops@F16", "Q6_K")["type"] == "F16"
    assert card_name({"gpu": "NVIDIA H200, 580.159.04, 143771 MiB"}) == "h200" and card_name({}) == "cpu"
    # 8 tracks at 2 in flight: the 2nd (k) finishes at 4 s, the 6th (N-k) at 13 s, the run ends at 17 s
    p = phases([3, 4, 6, 8, 10, 13, 15, 16], 17.0, 2)
    assert (p["ramp_s"], p["steady_s"], p["drain_s"]) == (4, 9, 4.0)
    assert p["steady_tracks_per_h"] == pytest.approx(3600 * 4 / 9)
    assert phases([3, 4, 5, 6], 7.0, 2)["steady_tracks_per_h"] is None  # N = 2k: no steady state


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_unquantized_random_weights_are_small_finite_and_varied(qtype, llama_cpp_dir):
    sys.path.insert(0, str(llama_cpp_dir / "gguf-py"))
    import make_model
    from gguf import GGMLQuantizationType as Q

    b = make_model.quantized(64, 512, Q[qtype]).view("<u2")
    v = b.view(np.float16).astype(np.float32) if qtype == "F16" else (b.astype(np.uint32) << 16).view(np.float32)
    assert v.shape == (64, 512) and np.isfinite(v).all()
    assert 2**-7 <= np.abs(v).min() and np.abs(v).max() < 2**-3 and len(np.unique(v)) > 1000
    assert 0.3 < (v > 0).mean() < 0.7
