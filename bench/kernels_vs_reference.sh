#!/usr/bin/env bash
# The project's kernels against the libtorch reference (MHA2MLA_KERNELS=reference) on this CPU, whichever
# variant it runs (avx512bf16, avx512 or avx2: the first line of bench_kernels says which), alternated in one
# script: short-context decode in bf16 and f32 (twice each), a 512-token prefill (twice), and decode at 1K, 4K
# and 16K cached tokens for MHA and MLA -87.5 % with bf16 and int4 caches (synthetic caches).
#
#   bench/kernels_vs_reference.sh [OUT_DIR]      (default runs/kernels-vs-reference; after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
out=${1:-runs/kernels-vs-reference}
mkdir -p "$out"
shape=${SHAPE:-smollm-135m}
run() {  # run NAME KERNELS ARGS...
  local name=$1 k=$2
  shift 2
  if [ "$k" = auto ]; then env -u MHA2MLA_KERNELS "$B" bench --shape "$shape" "$@" --out "$out/$name-$k" >/dev/null
  else MHA2MLA_KERNELS=$k "$B" bench --shape "$shape" "$@" --out "$out/$name-$k" >/dev/null; fi
}
for rep in 1 2; do
  for k in reference auto; do
    run short-bf16-$rep $k --models mha --cache-types bf16 --contexts 128 --prefill-chunk 128 --steps 32
    run short-f32-$rep $k --models mha --cache-types f32 --dtype f32 --contexts 128 --prefill-chunk 128 --steps 32
    run prefill512-$rep $k --models mha --cache-types bf16 --contexts 512 --prefill-chunk 512 --steps 1
  done
done
for k in reference auto; do
  run decode $k --models mha,mla-87.5 --no-prefill --contexts "${CONTEXTS:-1024,4096,16384}" --cache-types bf16,int4 --steps 8
done
for f in "$out"/*.md; do echo "== $(basename "$f" .md)"; cat "$f"; done
