#!/usr/bin/env bash
# The engine's GPU paths without a GPU (issue 18, item 9): the package built with ggml's Vulkan backend and run on
# Mesa's lavapipe, a Vulkan device that runs on the CPU. What runs there is what only a GPU build runs: the text
# model's layers and the audio encoder offloaded to a device, the KV budget read from the device's memory, the
# automatic tracks in flight; numbers from it are no GPU timings (lavapipe is slower than the CPU backend).
# Vulkan is also a real backend for the users' RX 9070 XT.
#
# Cost, measured 2026-12-07 on the shared 2-core VM (Debian 12): ≈45 MB of packages (libvulkan-dev 1.3.239, glslc
# 2023.2, spirv-headers, mesa-vulkan-drivers 22.3.6); ggml-vulkan runs glslc 1,117 times for this llama.cpp and
# compiles ggml-vulkan.cpp (16.5k lines): the cold build took 2,646 s (44 min) at nice 19 while five other sessions
# built and tested (expect 15-25 min on 2 free cores; 1-2 min again with ccache). Debian 12's headers need
# third_party/patches/0004. What ran: lavapipe is seen as a GPU (llvmpipe, 2 GiB), row Q6_K@1 (3 tracks, the
# layers and the encoder on the device) at 150 tracks/h, 5.2 tok/s; row Q6_K@auto (36 tracks) died of SIGSEGV
# inside lavapipe's own worker thread (libvulkan_lvp.so executing a dispatch; reproduced under gdb, no frame of
# ggml's or ours on that thread): a Mesa 22.3.6 crash or an out-of-bounds shader access a real GPU tolerates, not
# found yet. Not in CI (its time, and that crash).
#
# ggml-vulkan skips devices of type CPU unless GGML_VK_VISIBLE_DEVICES names them: lavapipe is device 0 here.
#
# usage: bench/vulkan_lavapipe.sh [run.py rows]    (root on Debian 12; JOBS=2; the tests' cache for the tiny model)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
JOBS=${JOBS:-2}
W=${WORK:-/tmp/mf-vulkan}
mkdir -p "$W"
if ! command -v glslc > /dev/null || [ ! -f /usr/include/vulkan/vulkan.h ] || [ ! -d /usr/share/cmake/SPIRV-Headers ]; then
  # spirv-headers: ggml-vulkan's CMakeLists asks for find_package(SPIRV-Headers CONFIG REQUIRED)
  apt-get install -y --no-install-recommends libvulkan-dev glslc mesa-vulkan-drivers spirv-headers
fi
export VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json GGML_VK_VISIBLE_DEVICES=0

# 1. the package with the Vulkan backend (its own build folder, build/vulkan-…; ccache when configured)
t0=$SECONDS
CMAKE_ARGS="-DGGML_VULKAN=ON -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache" \
  CMAKE_BUILD_PARALLEL_LEVEL=$JOBS pip wheel --no-deps --no-build-isolation -w "$W/wheel" . > "$W/build.log" 2>&1 \
  || { tail -40 "$W/build.log"; exit 2; }
rm -rf "$W/pkg" && mkdir -p "$W/pkg" && (cd "$W/pkg" && unzip -q -o "$W"/wheel/music_flamingo-*.whl)
echo "== built in $((SECONDS - t0)) s"

# 2. the engine sees lavapipe and puts the model there
export PYTHONPATH="$W/pkg${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'PY'
import json
import music_flamingo as m
i = m.system_info()
print(json.dumps({k: v for k, v in i.items() if k != "system_info"}))
assert "Vulkan" in i["backends"], i["backends"]
assert any(d["type"] != "cpu" for d in i["devices"]), i["devices"]
PY

# 3. the prepared GPU run's rehearsal on it: offloaded engine rows, the users' row (KV budget from the device)
LLAMA=$(python3 cmake/fetch_llama_cpp.py | tail -1)
TINY=$(ls -d "${MUSIC_FLAMINGO_CACHE:-$HOME/.cache/music-flamingo}"/test-models/tiny-music-flamingo-*/ | head -1)
PYTHONPATH="$PYTHONPATH:$LLAMA/gguf-py" python3 - "$W/track.wav" <<'PY'
import glob, os, sys
from pathlib import Path
sys.path.insert(0, "bench/gpu")
from music_flamingo.audio import load_audio
from run import write_wav
cache = Path(os.environ.get("MUSIC_FLAMINGO_CACHE", Path.home() / ".cache/music-flamingo"))
write_wav(Path(sys.argv[1]), load_audio(sorted(glob.glob(str(cache / "corpus/mp3/*.mp3")))[0])[16000 * 20 : 16000 * 30])
PY
t0=$SECONDS
PYTHONPATH="$PYTHONPATH:$LLAMA/gguf-py" python3 bench/gpu/run.py --cpu --rows "${1:-Q6_K@1,Q6_K@auto,users}" \
  --meta-model "$TINY/model-f32.gguf" --meta-mmproj "$TINY/mmproj-f32.gguf" --audio "$W/track.wav" \
  --work "$W/run" --out "$W/out" --tag vulkan-lavapipe
grep -h '"text_model_device"' "$W"/out/*.json | head -1
echo "== rehearsal in $((SECONDS - t0)) s; results in $W/out"
