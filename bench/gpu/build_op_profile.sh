#!/usr/bin/env bash
# Builds bench/gpu/op_profile.cpp (a bench-only program on llama.h, see its header) against a llama.cpp build that
# already exists: the static libraries of the tests' llama-mtmd-cli build (CPU, CI) or the shared ones that
# bench/gpu/prebuild.sh carries to the GPU machine (device.sh). One file, a few seconds.
#
# usage: bench/gpu/build_op_profile.sh LLAMA_SRC LIB_DIR OUT_EXE [RPATH]      env: LDFLAGS (extra link flags)
#   LIB_DIR holds libllama.a + libggml*.a (static, searched recursively) or libllama.so + libggml*.so (shared;
#   RPATH defaults to LIB_DIR)
set -euo pipefail
SRC=$1 LIB=$2 OUT=$3 RPATH=${4:-$2}
HERE=$(cd "$(dirname "$0")" && pwd)
INC=(-I"$SRC/include" -I"$SRC/ggml/include")
if [ -f "$LIB/libllama.so" ]; then
  c++ -O2 -std=c++17 "${INC[@]}" "$HERE/op_profile.cpp" -L"$LIB" -lllama -lggml -lggml-base \
    -Wl,-rpath,"$RPATH" ${LDFLAGS:-} -o "$OUT"
else
  find_lib() { find "$LIB" -name "$1" | head -1; }
  c++ -O2 -std=c++17 "${INC[@]}" "$HERE/op_profile.cpp" "$(find_lib libllama.a)" "$(find_lib libggml.a)" \
    "$(find_lib libggml-cpu.a)" "$(find_lib libggml-base.a)" -lpthread -ldl -lm -o "$OUT"
fi
