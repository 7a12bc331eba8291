"""The prepared GPU run (bench/gpu/run.py) rehearsed on the CPU with tiny shapes, so it works the first time a GPU
machine is lent: model writer, old method, engine settings, table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_bench_runs_on_cpu_and_reports_every_setting(tiny, mtmd_cli, llama_cpp_dir, track, tmp_path):
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    from run import write_wav

    wav = tmp_path / "music.wav"
    write_wav(wav, track[16000 * 20 : 16000 * 30])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(llama_cpp_dir / "gguf-py")] + [p for p in sys.path if p])}
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu" / "run.py"),
            "--cpu",
            "--meta-model",
            str(tiny.model_gguf),
            "--meta-mmproj",
            str(tiny.mmproj_gguf),
            "--audio",
            str(wav),
            "--cli",
            str(mtmd_cli),
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_bench.json").read_text())
    rows = report["rows"]
    old, engine = rows[0], rows[1:]
    assert old["ok"] and len(old["per_prompt_s"]) == 5
    assert [r["setting"].split()[-1] for r in engine] == ["1", "auto", "auto:noprep", "auto:fullsample"]
    for row in engine:
        assert row["n_errors"] == 0, row["errors"]
        assert row["tokens"] == row["expected_tokens"] > 0  # end of generation ignored: every answer at its limit
        assert row["steps"] > 0 and row["host_ms_per_step"] > 0 and row["step_ms"] > 0
    assert engine[1]["chosen_in_flight"] == 2 and engine[1]["peak_in_flight"] >= 1
    assert (out / "gpu_bench.md").read_text().count("\n") == len(rows) + 2
    assert "| engine, tracks in flight auto " in r.stdout
