"""llama-mtmd-cli, built for the tests and benchmarks only from the same llama.cpp tree and with the same flags as
the package.

It is the reference the engine must agree with (the program users run today). Built once per tree into the cache
(~10 min on 2 cores), or taken from $MUSIC_FLAMINGO_MTMD_CLI.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

# Same numerics-relevant flags as CMakeLists.txt: static, portable CPU, no OpenMP, Release.
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_OPENMP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DMTMD_VIDEO=OFF",
]
RESPONSE_MARKER = "<<<MUSIC-FLAMINGO-RESPONSE>>>"


def ensure_mtmd_cli(llama_cpp_dir: Path, cache_dir: Path) -> Path:
    """Path of a llama-mtmd-cli binary for this tree; builds it on first use."""
    if os.environ.get("MUSIC_FLAMINGO_MTMD_CLI"):
        return Path(os.environ["MUSIC_FLAMINGO_MTMD_CLI"])
    build = cache_dir / f"mtmd-cli-{llama_cpp_dir.name}"
    exe = build / "bin" / "llama-mtmd-cli"
    if exe.is_file():
        return exe
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".mtmd-cli.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.is_file():
            return exe
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(
            ["cmake", "-S", str(llama_cpp_dir), "-B", str(build), *gen, *CMAKE_FLAGS],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-mtmd-cli", "-j", str(os.cpu_count() or 2)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return exe


def run_mtmd_cli(
    exe: Path,
    model: Path,
    mmproj: Path,
    audio: Path,
    prompt: str,
    n_predict: int,
    *,
    n_ctx: int = 8192,
    n_batch: int = 2048,
    n_ubatch: int = 1024,
    n_threads: int = 1,
) -> str:
    """Greedy answer of llama-mtmd-cli, the way users call it today (one process per prompt).

    Flash attention off and the engine's batch sizes, so both sides compute with the same numerics.
    """
    cmd = [
        str(exe),
        "-m",
        str(model),
        "--mmproj",
        str(mmproj),
        "--audio",
        str(audio),
        "-p",
        prompt,
        "-n",
        str(n_predict),
        "--temp",
        "0",
        "-c",
        str(n_ctx),
        "-b",
        str(n_batch),
        "-ub",
        str(n_ubatch),
        "-t",
        str(n_threads),
        "-fa",
        "off",
        "--no-warmup",
    ]
    env = dict(os.environ, MTMD_TEST_RESPONSE_MARKER=RESPONSE_MARKER)
    r = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"llama-mtmd-cli failed ({r.returncode}):\n{r.stderr.decode(errors='replace')[-3000:]}")
    out = r.stdout.decode("utf-8", errors="replace")
    if RESPONSE_MARKER not in out:
        raise RuntimeError(f"no response marker in llama-mtmd-cli output:\n{out[-2000:]}")
    # stdout after the marker: "\n" (end of prompt eval), the generated pieces, "\n" if the model stopped by
    # itself, and "\n\n" at exit (tools/mtmd/mtmd-cli.cpp)
    body = out.split(RESPONSE_MARKER + "\n", 1)[1]
    if not (body.startswith("\n") and body.endswith("\n\n")):
        raise RuntimeError(f"unexpected llama-mtmd-cli output framing: {body!r}")
    return body[1:-2]
