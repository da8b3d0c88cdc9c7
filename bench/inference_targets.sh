#!/usr/bin/env bash
# The inference targets, each as a ratio measured in this one script on this machine:
#   1. prefill of a 4,096-token prompt, SmolLM-135M shape, bf16: fused kernels against the libtorch reference;
#   2. decode at 1K/4K/16K cached tokens (synthetic caches), MHA against the MLA ladder, bf16 and int4 caches:
#      the attention step's time and its bandwidth against the read bandwidth measured in the same run;
#   3. decode at 128 cached tokens against the weight-read roofline (weight bytes / read bandwidth);
#   4. prefill of 512 tokens against the measured matmul throughput.
#
#   bench/inference_targets.sh [OUT_DIR]      (default runs/inference-targets; after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
out=${1:-runs/inference-targets}
mkdir -p "$out"
shape=${SHAPE:-smollm-135m}
$B bench --shape "$shape" --models mha --cache-types bf16 --contexts 4096 --prefill-chunk 4096 --steps 2 \
  --attn-kernel reference --out "$out/prefill-reference" >/dev/null
$B bench --shape "$shape" --models mha --cache-types bf16 --contexts 4096 --prefill-chunk 4096 --steps 2 \
  --out "$out/prefill-fused" >/dev/null
$B bench --shape "$shape" --no-prefill --contexts "${CONTEXTS:-1024,4096,16384}" --cache-types bf16,int4 \
  --steps 8 --out "$out/decode" >/dev/null
$B bench --shape "$shape" --models mha --cache-types bf16 --contexts 128 --prefill-chunk 128 --steps 32 \
  --out "$out/short-bf16" >/dev/null
$B bench --shape "$shape" --models mha --cache-types f32 --contexts 128 --prefill-chunk 128 --steps 32 --dtype f32 \
  --out "$out/short-f32" >/dev/null
$B bench --shape "$shape" --models mha --cache-types bf16 --contexts 512 --prefill-chunk 512 --steps 1 \
  --out "$out/prefill-512" >/dev/null
cat "$out/decode.md"
