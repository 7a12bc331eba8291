#!/usr/bin/env bash
# Builds, on a machine WITHOUT a GPU, everything the GPU run carries (bench/gpu/device.sh uses it), so the lent
# machine's few minutes go to measuring, not to compiling CUDA kernels (~6 min on its 16 cores, ~1 h on 2).
#
#   .gpu/native.tar.xz   lib/  libggml*.so (CUDA, SASS for sm_90), libllama.so, libmtmd.so — built ONCE and shared by
#                        bin/  llama-mtmd-cli (the old method), llama-batched-bench (raw decode capacity) and
#                        core/ _core.cpython-312-*.so (the engine, as pip would build it, against the same libggml)
#                        include/, lib/cmake/ggml: ggml's package (a rebuild of the engine there links these)
#   .gpu/llama.tar.gz    the llama.cpp tree (gguf-py for the model writer; the sources for a rebuild there)
#   .gpu/meta/           tensor-less copies of the tests' tiny GGUF pair (tokenizer, chat template, clip keys)
#   .gpu/meta-hf.tar.gz  its transformers checkpoint without weights (tokenizer, processor, config; make_hf.py)
#   bin/op-profile       (in native.tar.xz) bench/gpu/op_profile.cpp: where a step's device time goes
#   .gpu/track150.wav    150 s of real music from the test corpus, 16 kHz mono 16-bit
#
# Needs: nvcc (CUDA 13), cmake, ninja, python3.12 with pybind11 (PY312), the tests' cache (tiny model, corpus), and
# a python (PY, default python3) where music_flamingo imports (its audio decoding) — e.g. the test venv.
# cuBLAS headers and libraries, when the toolkit has none, come from PyPI (nvidia-cublas, the CUDA 13.0 line that
# matches the GPU machine's runtime); the driver library is a stub with the symbols ggml uses. Neither travels.
#
# usage: bench/gpu/prebuild.sh [ARCH (default 90)]     env: PY312=/path/to/python3.12  JOBS=2
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
ARCH=${1:-90}
JOBS=${JOBS:-2}
PY312=${PY312:-python3.12}
PY=${PY:-python3}
OUT=$REPO/.gpu
WORK=${WORK:-/tmp/mf-prebuild}
mkdir -p "$OUT" "$WORK"
# the pinned tree with this package's patch queue applied (third_party/README.md): the engine's C++ uses what the
# patches add (the audio rotation, the real positions, several sequences per KV stream)
LLAMA=$(python3 cmake/patch_llama_cpp.py --tree "$(python3 cmake/fetch_llama_cpp.py | tail -1)" \
  --patches third_party/patches | tail -1)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}  # the toolkit CMake's FindCUDAToolkit finds
CUDA_LIB=$CUDA_HOME/lib64
CUDA_INC=$CUDA_HOME/include

# cuBLAS for compiling and linking (not carried: the GPU machine has its own, from CUDA 13 / PyTorch)
if [ ! -f "$CUDA_INC/cublas_v2.h" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: "nvidia-cublas==13.0.*" -d "$WORK/wheels"
  (cd "$WORK/wheels" && unzip -q -o nvidia_cublas-*.whl)
  cp "$WORK"/wheels/nvidia/cu13/include/* "$CUDA_INC/"
  cp "$WORK"/wheels/nvidia/cu13/lib/libcublas*.so.13 "$CUDA_LIB/"
  (cd "$CUDA_LIB" && ln -sf libcublas.so.13 libcublas.so && ln -sf libcublasLt.so.13 libcublasLt.so)
fi
if [ ! -e "$CUDA_LIB/stubs/libcuda.so" ]; then  # the driver's API, as a stub to link against
  mkdir -p "$CUDA_LIB/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$LLAMA"/ggml/src/ggml-cuda/*.cu "$LLAMA"/ggml/src/ggml-cuda/*.cuh \
    | sort -u | sed 's/.*/int &() { return 0; }/' > "$WORK/cuda_stub.c"
  for s in $(grep -oE '#define (cu[A-Za-z0-9_]+) +(cu[A-Za-z0-9_]+)' "$CUDA_INC/cuda.h" | awk '{print $3}' | sort -u); do
    echo "int $s() { return 0; }" >> "$WORK/cuda_stub.c"
  done
  sort -u "$WORK/cuda_stub.c" -o "$WORK/cuda_stub.c"
  gcc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$CUDA_LIB/stubs/libcuda.so" "$WORK/cuda_stub.c"
fi
ln -sf libcuda.so "$CUDA_LIB/stubs/libcuda.so.1"  # what executables linking libggml-cuda look for (-rpath-link)

# 1. ggml (CUDA, shared) + llama + mtmd + the two tools, once
B=${LLAMA_BUILD:-$WORK/llama-cuda}
cmake -S "$LLAMA" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH-real" -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_OPENSSL=OFF -DMTMD_VIDEO=OFF '-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib' \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$CUDA_LIB/stubs" > "$WORK/configure.log"
cmake --build "$B" -j "$JOBS" --target ggml llama mtmd llama-mtmd-cli llama-batched-bench
cmake -DCMAKE_INSTALL_PREFIX="$WORK/ggml-prefix" -P "$B/ggml/cmake_install.cmake" > /dev/null

# 2. the engine for the GPU machine's Python (3.12), linked against the libllama/libmtmd/libggml just built (the
#    same code pip builds statically into the module; compiling llama.cpp a second time would double this script's
#    hour). device.sh rebuilds it through the package's CMake if this one does not load there.
E=$WORK/core-cuda-cp312
mkdir -p "$E"
PYINC=$("$PY312" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PYBIND=$("$PY312" -c 'import pybind11; print(pybind11.get_include())')
EXT=$("$PY312" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
PIN=$(python3 -c 'import json; print(json.load(open("third_party/llama-cpp.json"))["llama_cpp_commit"])')
c++ -O2 -std=c++17 -fPIC -shared -fvisibility=hidden -DNDEBUG \
  -DMF_LLAMA_CPP_COMMIT="\"$PIN\"" -DMF_LLAMA_CPP_SOURCE="\"prebuilt for the GPU bench\"" \
  -I"$LLAMA/include" -I"$LLAMA/ggml/include" -I"$LLAMA/tools/mtmd" -I"$PYINC" -I"$PYBIND" \
  cpp/*.cpp -L"$B/bin" -lmtmd -lllama -lggml -lggml-base -Wl,-rpath,'$ORIGIN/../lib' -o "$E/_core$EXT"

# the op profiler (bench/gpu/op_profile.cpp, graph timing per node) against the same libraries
LDFLAGS="-Wl,-rpath-link,$CUDA_LIB/stubs" bash bench/gpu/build_op_profile.sh "$LLAMA" "$B/bin" "$WORK/op-profile" '$ORIGIN/../lib'

# 3. pack
P=$WORK/pack
rm -rf "$P" && mkdir -p "$P/bin" "$P/core"
cp -a "$WORK/ggml-prefix/." "$P/"          # lib/libggml*.so, lib/cmake/ggml, include/
cp -a "$B"/bin/lib*.so* "$P/lib/"           # libllama, libmtmd, llama-common and the tools' own libraries
cp "$B/bin/llama-mtmd-cli" "$B/bin/llama-batched-bench" "$WORK/op-profile" "$P/bin/"
cp "$E"/_core*.so "$P/core/"
strip --strip-unneeded "$P"/lib/*.so* "$P"/bin/* "$P"/core/*.so 2>/dev/null || true
tar -C "$P" -cJf "$OUT/native.tar.xz" .
tar -C "$(dirname "$LLAMA")" --exclude=.git --exclude=docs --exclude=examples --exclude=tests --exclude=models \
  --exclude=app --exclude=benches --exclude=media --exclude='*.png' -czf "$OUT/llama.tar.gz" \
  --transform "s,^$(basename "$LLAMA"),llama.cpp," "$(basename "$LLAMA")"

# 4. the model's metadata and the music
TINY=$(ls -d "${MUSIC_FLAMINGO_CACHE:-$HOME/.cache/music-flamingo}"/test-models/tiny-music-flamingo-*/ | head -1)
PYTHONPATH="$LLAMA/gguf-py" "$PY" bench/gpu/make_model.py --strip "$TINY/model-f32.gguf" "$TINY/mmproj-f32.gguf" "$OUT/meta"
# the tiny transformers checkpoint without its weights (tokenizer, processor, config): make_hf.py builds on it
# (11 MB of tokenizer.json, 2 MB packed: the device tool carries 64 MiB in all)
"$PY" -c 'import sys; sys.path.insert(0, "bench/gpu"); import make_hf; from pathlib import Path; make_hf.strip(Path(sys.argv[1]), Path(sys.argv[2]))' "$TINY/hf" "$WORK/meta-hf"
tar -C "$WORK/meta-hf" -czf "$OUT/meta-hf.tar.gz" .
PYTHONPATH=python "$PY" - "$OUT/track150.wav" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "bench/gpu")
from music_flamingo.audio import load_audio
from run import write_wav
from testkit.corpus import ensure_corpus  # the tests' music, fetched here if this machine has none yet
x = load_audio(sorted(ensure_corpus().glob("mp3/*.mp3"))[0])
write_wav(Path(sys.argv[1]), x[16000 * 20:16000 * 170])
PY
du -sh "$OUT"/*
