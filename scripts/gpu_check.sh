#!/usr/bin/env bash
# The GPU check: builds against the CUDA libtorch of the machine's Python torch, runs the test suite with
# the CUDA variants of the device tests enabled, then the inference benchmark on the GPU. Meant to finish
# in under 8 minutes on one GPU. Writes its logs to ${OUT:-gpu_check_out}/.
#
#   bash scripts/gpu_check.sh            (on a machine with an NVIDIA GPU, CUDA and python3 -c 'import torch')
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
start=$(date +%s)
log() { echo "[gpu_check $(($(date +%s) - start))s] $*" | tee -a "$out/summary.txt"; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' | tee -a "$out/summary.txt"

# Build dependencies that a bare GPU machine may lack (no libtorch-dev: the Python torch provides libtorch).
if command -v apt-get >/dev/null; then
  need=""
  for p in cmake ninja-build pkg-config nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libpcre2-dev libutf8proc-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null; fi
fi

log "configure (CMAKE_PREFIX_PATH=$prefix)"
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
log "build"
cmake --build build-cuda -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -m 20 -B2 -A6 "error" "$out/build.log"; exit 1; }
log "tests (CPU and CUDA variants)"
set +e
MHA2MLA_TEST_DEVICES=cpu,cuda ctest --test-dir build-cuda --output-on-failure -j 8 --timeout 300 >"$out/ctest.log" 2>&1
rc=$?
set -e
tail -15 "$out/ctest.log"
log "benchmark: the CUDA attention kernels against the libtorch reference on the GPU"
timeout 180 build-cuda/bench_kernels --device cuda --quick 2>&1 | tee "$out/bench_kernels_cuda.txt" || rc=1
log "benchmark: decode on the GPU"
for cache in bf16 int4; do
  build-cuda/mha2mla generate --model models/kjv-mha --prompt "And God said" --max-new 256 --device cuda \
    --dtype bf16 --cache-type "$cache" --json >"$out/generate-$cache.json" 2>>"$out/bench.log" || rc=1
done
if [ -x build-cuda/mha2mla ] && build-cuda/mha2mla --help 2>/dev/null | grep -q "^  bench"; then
  build-cuda/mha2mla bench --shape smollm-135m --device cuda --dtype bf16 --contexts 1024,4096,16384 --batch 1 \
    --no-prefill --json >"$out/bench.json" 2>>"$out/bench.log" || rc=1
fi
log "real-size pipeline on the GPU (8 layers of Llama-2-7B width: calibrate, ppl and generate on cuda)"
MHA2MLA_BUILD=build-cuda bench/real_size.sh --layers 8 --device cuda --work "$out/real-size" \
  >"$out/real-size.log" 2>&1 || rc=1
tail -8 "$out/real-size.log"
log "done, exit $rc"
exit $rc
