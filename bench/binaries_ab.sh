#!/usr/bin/env bash
# Two builds of mha2mla against each other on this machine, alternated in one script (twice each), so that the
# ratios survive a noisy shared machine: 2,048- and 512-token prefill, decode at 16K cached tokens for MHA and
# MLA -87.5 % with bf16 and int4 caches (synthetic caches), and decode after 128 tokens, bf16 and f32.
#
#   bench/binaries_ab.sh OLD_BINARY NEW_BINARY [OUT_DIR]      (default OUT_DIR runs/binaries-ab)
#
# REPS=N alternates N times instead of 2; CELLS=decode16k (or any of prefill2048, prefill512, decode16k, short,
# comma-separated) runs only those cells.
#
# An older commit's binary: git worktree add /tmp/old REV && (cd /tmp/old && scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bench/binaries_ab.sh OLD_BINARY NEW_BINARY [OUT_DIR]" >&2
  exit 2
fi
old=$1 new=$2 out=${3:-runs/binaries-ab}
for b in "$old" "$new"; do
  [ -x "$b" ] || { echo "bench/binaries_ab.sh: $b is not an executable" >&2; exit 2; }
done
mkdir -p "$out"
shape=${SHAPE:-smollm-135m}
run() {  # run BINARY TAG NAME ARGS...
  local bin=$1 tag=$2 name=$3
  shift 3
  "$bin" bench --shape "$shape" "$@" --out "$out/$name-$tag" >/dev/null
}
cells=",${CELLS:-prefill2048,prefill512,decode16k,short},"
want() { [[ $cells == *",$1,"* ]]; }
for rep in $(seq 1 "${REPS:-2}"); do
  for side in old new; do
    bin=$old
    [ "$side" = new ] && bin=$new
    if want prefill2048; then
      run "$bin" "$side" "prefill2048-$rep" --models mha,mla-87.5 --cache-types bf16 --contexts 2048 --steps 1
    fi
    if want prefill512; then
      run "$bin" "$side" "prefill512-bf16-$rep" --models mha --cache-types bf16 --contexts 512 --prefill-chunk 512 --steps 1
      run "$bin" "$side" "prefill512-f32-$rep" --models mha --cache-types f32 --dtype f32 --contexts 512 \
        --prefill-chunk 512 --steps 1
    fi
    if want decode16k; then
      run "$bin" "$side" "decode16k-$rep" --models mha,mla-87.5 --no-prefill --contexts 16384 \
        --cache-types bf16,int4 --steps 8
    fi
    if want short; then
      run "$bin" "$side" "short-bf16-$rep" --models mha --cache-types bf16 --contexts 128 --prefill-chunk 128 --steps 32
      run "$bin" "$side" "short-f32-$rep" --models mha --cache-types f32 --dtype f32 --contexts 128 \
        --prefill-chunk 128 --steps 32
    fi
  done
done
# One line per cell: old and new side by side (prefill tok/s, decode tok/s, attention ms/step).
printf '| run | model | cache | context | prefill tok/s old → new | decode tok/s old → new | attention ms/step old → new |\n'
printf '|---|---|---|---:|---:|---:|---:|\n'
for f in "$out"/*-old.json; do
  name=$(basename "$f" -old.json)
  python3 - "$f" "$out/$name-new.json" "$name" <<'EOF'
import json, sys
old, new = (json.load(open(p)) for p in sys.argv[1:3])
def fmt(x, d=1):
    return "–" if x is None or x == 0 else f"{x:.{d}f}"
for a, b in zip(old["cells"], new["cells"]):
    print(f"| {sys.argv[3]} | {a['model']} | {a['cache_type']} | {a['context']} | "
          f"{fmt(a.get('prefill_tokens_per_s'))} → {fmt(b.get('prefill_tokens_per_s'))} | "
          f"{fmt(a['decode_tokens_per_s'])} → {fmt(b['decode_tokens_per_s'])} | "
          f"{fmt(a['attn_step_ms'], 2)} → {fmt(b['attn_step_ms'], 2)} |")
EOF
done
