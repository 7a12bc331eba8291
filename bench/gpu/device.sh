#!/usr/bin/env bash
# The one command of a lent GPU machine (see bench/gpu/README.md): unpack what bench/gpu/prebuild.sh built, check
# that the engine loads the CUDA backend, rebuild the engine there only if the carried one does not load, then run
# bench/gpu/run.py. Everything it writes lands in $OUT (the device tool brings that folder back).
#
# usage: bench/gpu/device.sh [run.py options...]        (the carried files in .gpu/, see prebuild.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/bench/out/gpu}
W=${WORK:-/tmp/mf-gpu}
mkdir -p "$OUT" "$W"
exec > >(tee "$OUT/device.log") 2>&1
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"

tar -C "$W" -xJf .gpu/native.tar.xz
tar -C "$W" -xzf .gpu/llama.tar.gz
# cuBLAS / cudart: the CUDA toolkit's or PyTorch's pip wheels (the libraries are not carried)
CULIBS=$(dirname "$(find /usr/local/cuda*/ /opt -name 'libcublas.so.13' 2>/dev/null | head -1)" 2>/dev/null)
RTLIBS=$(dirname "$(find /usr/local/cuda*/ /opt -name 'libcudart.so.13' 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH="$W/lib:$CULIBS:$RTLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "== libraries: cublas in $CULIBS, cudart in $RTLIBS"
cp "$W"/core/_core*.so python/music_flamingo/
export PYTHONPATH="$REPO/python:$W/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

check() {
  python3 -c "import music_flamingo as m, json; i = m.system_info(); print(json.dumps({k: v for k, v in i.items() if k != 'system_info'})); assert 'CUDA' in i['backends'], i['backends']"
}
if ! check; then
  echo "== the carried engine does not load here: building it against the carried ggml"
  rm -f python/music_flamingo/_core*.so
  cmake -S "$REPO" -B "$W/core-build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSKBUILD=ON \
    -DSKBUILD_PROJECT_NAME=music_flamingo -DSKBUILD_PROJECT_VERSION=0.1.0 -DPython_EXECUTABLE="$(command -v python3)" \
    -Dpybind11_DIR="$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
    -DLLAMA_CPP_DIR="$W/llama.cpp" -DLLAMA_USE_SYSTEM_GGML=ON -Dggml_DIR="$W/lib/cmake/ggml" \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 > "$W/core-configure.log" 2>&1 \
    && cmake --build "$W/core-build" -j "$(nproc)" --target _core > "$W/core-build.log" 2>&1 \
    && cp "$W"/core-build/_core*.so python/music_flamingo/ \
    || { tail -30 "$W/core-configure.log" "$W/core-build.log"; exit 3; }
  check || exit 3
fi

# the op profiler (bench/gpu/op_profile.cpp): prebuilt and carried, else built here against the carried libraries
if [ ! -x "$W/bin/op-profile" ]; then
  bash bench/gpu/build_op_profile.sh "$W/llama.cpp" "$W/lib" "$W/bin/op-profile" || echo "== op-profile did not build"
fi
EXTRA=()
if [ -f .gpu/meta-hf.tar.gz ]; then
  mkdir -p "$W/meta-hf" && tar -C "$W/meta-hf" -xzf .gpu/meta-hf.tar.gz && EXTRA+=(--meta-hf "$W/meta-hf")
fi
# the old method was measured on the H200 on 2026-11-26 (22.44 s/track); on another card it runs again
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  EXTRA+=(--no-old --old-s-per-track 22.44)
fi
run() {
  python3 bench/gpu/run.py --meta-model .gpu/meta/meta-model.gguf --meta-mmproj .gpu/meta/meta-mmproj.gguf \
    --audio .gpu/track150.wav --cli "$W/bin/llama-mtmd-cli" --op-profile "$W/bin/op-profile" --work "$W/run" \
    --out "$OUT" "${EXTRA[@]}" "$@"
}
run "$@"
rc=$?
if [ $rc -ge 128 ]; then
  # a crash (signal): once more with the audio encoded on the decode thread, to tell the helper thread's
  # concurrent GPU use apart from the rest (the first run's rows are in $OUT/device.log)
  echo "== run.py died with $rc: again without the helper thread"
  for f in "$OUT"/*-run.json; do [ -f "$f" ] && mv "$f" "${f%-run.json}-run-first.json"; done
  run --no-prepare-ahead --time-limit $((540 - SECONDS)) --keep-models "$@"
  rc=$?
fi
# llama.cpp's own view of the decode step without sampling (the engine's floor in practice), if time allows
if [ "${BATCHED_BENCH:-1}" = 1 ] && [ -f "$W/run/model/model-Q6_K.gguf" ] && [ "$SECONDS" -lt 460 ]; then
  timeout $((560 - SECONDS)) "$W/bin/llama-batched-bench" -m "$W/run/model/model-Q6_K.gguf" -c 200000 -b 2048 -ub 1024 -npp 3800 \
    -ntg 128 -npl 5,20,40,60,80 -ngl 99 -fa on > "$OUT/batched_bench.txt" 2>&1
  tail -9 "$OUT/batched_bench.txt"
fi
# the log beside the JSON, under the same <card>-<date>-<tag> name
for f in "$OUT"/*-run.json; do [ -f "$f" ] && cp "$OUT/device.log" "${f%.json}.log"; done
exit $rc
