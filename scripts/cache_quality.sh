#!/usr/bin/env bash
# Held-out perplexity through the cache for every cache type, on the shipped models and their MHA2MLA
# conversions (recovered by a short fine-tune), plus the quantization-axis choices for the MLA buffers.
#
#   scripts/cache_quality.sh [OUT_DIR]     (default runs/cache-quality; run after scripts/build.sh)
#
# Environment: TYPES (cache types of the main table, default "f32 bf16 int8 int4 int2"; empty: none), AXES=0 skips the MLA
# axis table, FP8=0 skips the FP8 table, STEPS (recovery fine-tune steps of the converted models, default 200; 0 keeps
# them as converted), REUSE=1 keeps cells whose JSON is already in OUT_DIR (default: every cell is run again).
# The quantizer table (min-max against HQQ zero points, --cache-quant) always covers int4 and int2; the FP8 table
# sets int8, fp8 (E4M3, f32 scale per group) and, on the MLA models, fp8-flashmla beside int4.
#
# Windows of 512 tokens advance by 511 (each held-out token is scored once, with 1-511 tokens of context).
# Writes OUT_DIR/cache_quality.md (docs/serving.md's table), OUT_DIR/*.json (one ppl report per cell) and, when
# missing, the converted models under OUT_DIR/mla-{mha,gqa}/ (calibrate -> convert 2-norm r=8 d_kv=16 joint ->
# finetune --skip-baseline 200 steps, as scripts/mla_demo.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
out=${1:-runs/cache-quality}
ctx=${CTX:-512}
steps=${STEPS:-200}
types=${TYPES-f32 bf16 int8 int4 int2}
mkdir -p "$out"
bash scripts/kjv.sh data/kjv >/dev/null
[ -f data/kjv/tok/train.bin ] ||
  $B data --tokenizer models/kjv-mha --in data/kjv/train.txt --val-in data/kjv/val.txt --out data/kjv/tok >/dev/null

for kind in mha gqa; do
  mla=$out/mla-$kind
  [ -f "$mla/model/config.json" ] && continue
  rm -rf "$mla"
  mkdir -p "$mla"
  $B calibrate --model models/kjv-$kind --text data/kjv/train.txt --samples 64 --ctx 512 --out "$mla/calib" >/dev/null
  $B convert --model models/kjv-$kind --out "$mla/converted" --rope 2-norm --rope-dims 8 --dkv 16 --svd joint \
    --calib "$mla/calib" --json >"$mla/convert.json"
  if [ "$steps" = 0 ]; then mv "$mla/converted" "$mla/model"; continue; fi
  $B finetune --model models/kjv-$kind --mla "$mla/converted" --data data/kjv/tok --val data/kjv/tok --out "$mla/ft" \
    --steps "$steps" --batch 8 --seq-len 512 --lr 5e-4 --precision bf16 --val-windows -1 --skip-baseline --json \
    >"$mla/finetune.json"
  mv "$mla/ft/mla/model" "$mla/model"
done

run() {  # name model type [extra flags...]
  local name=$1 model=$2 type=$3
  shift 3
  [ "${REUSE:-0}" = 1 ] && [ -s "$out/$name.json" ] && return 0
  $B ppl --model "$model" --text data/kjv/val.txt --ctx "$ctx" --stride "$ctx" --chunk 64 \
    --cache-type "$type" --cache-residual 128 "$@" --json >"$out/$name.json"
}
models="kjv-mha:models/kjv-mha kjv-gqa:models/kjv-gqa mla-mha:$out/mla-mha/model mla-gqa:$out/mla-gqa/model"
for mt in $models; do
  for t in $types; do run "${mt%%:*}-$t" "${mt#*:}" "$t"; done
  in_types() { case " $types " in *" $1 "*) return 0 ;; esac; return 1; }  # already run above
  for t in int4 int2; do
    in_types "$t" || run "${mt%%:*}-$t" "${mt#*:}" "$t"
    run "${mt%%:*}-$t-hqq" "${mt#*:}" "$t" --cache-quant hqq
  done
  [ "${FP8:-1}" = 0 ] || for t in int8 fp8 $(case $mt in mla-*) echo fp8-flashmla ;; esac); do
    in_types "$t" || run "${mt%%:*}-$t" "${mt#*:}" "$t"
  done
done
[ "${AXES:-1}" = 0 ] || {
# Quantization axes of the MLA buffers (c: the latent, k_r: the rotated keys) and k_r kept in bf16.
for kind in mha gqa; do
  for ax in "c=token,k_r=channel" "c=token,k_r=token" "c=channel,k_r=channel" "c=channel,k_r=token"; do
    tag=$(echo "$ax" | tr ',=' '__')
    run "axes-mla-$kind-int4-$tag" "$out/mla-$kind/model" int4 --cache-axis "$ax"
  done
  run "axes-mla-$kind-int4-kr-bf16" "$out/mla-$kind/model" int4 --cache-type-kr bf16
done
}

cell() {  # cell FILE DIGITS BYTES: " ppl |" of one ppl report (BYTES=1: " ppl (bytes B) |"), " — |" where missing
  if [ -f "$1" ]; then
    grep -o '"ppl":[0-9.e+-]*' "$1" | cut -d: -f2 | xargs printf " %.${2}f"
    [ "$3" = 1 ] && grep -o '"cache_bytes_per_token":[0-9.e+-]*' "$1" | cut -d: -f2 | xargs printf " (%.0f B)"
    printf " |"
  else
    printf " — |"
  fi
}
rows() {  # rows DIGITS BYTES SUFFIX...: a table row per model, a cell per OUT_DIR/MODEL-SUFFIX.json
  local digits=$1 bytes=$2
  shift 2
  for mt in $models; do
    printf "| %s |" "${mt%%:*}"
    for t in "$@"; do cell "$out/${mt%%:*}-$t.json" "$digits" "$bytes"; done
    echo
  done
}
{
  [ -n "$types" ] && {
  echo "| model | $(echo $types | sed 's/ / | /g') |"
  echo "|---|$(for t in $types; do printf -- '---:|'; done)"
  rows 2 1 $types
  echo
  }
  echo "| model | int4 min-max | int4 HQQ | int2 min-max | int2 HQQ |"
  echo "|---|---:|---:|---:|---:|"
  rows 3 0 int4 int4-hqq int2 int2-hqq
  if [ "${FP8:-1}" != 0 ]; then
    echo
    echo "| model | int8 | fp8 | fp8-flashmla | int4 |"
    echo "|---|---:|---:|---:|---:|"
    rows 3 1 int8 fp8 fp8-flashmla int4
  fi
  if [ "${AXES:-1}" != 0 ]; then
    echo
    echo "| MLA int4 axes (c, k_r) | mla-mha ppl | mla-gqa ppl |"
    echo "|---|---:|---:|"
    for ax in c_token_k_r_channel c_token_k_r_token c_channel_k_r_channel c_channel_k_r_token kr-bf16; do
      printf "| %s |" "$ax"
      for kind in mha gqa; do
        f="$out/axes-mla-$kind-int4-$ax.json"
        [ "$ax" = kr-bf16 ] && f="$out/axes-mla-$kind-int4-kr-bf16.json"
        grep -o '"ppl":[0-9.e+-]*' "$f" | cut -d: -f2 | xargs printf " %.2f |"
      done
      echo
    done
  fi
} >"$out/cache_quality.md.tmp"
mv "$out/cache_quality.md.tmp" "$out/cache_quality.md"
cat "$out/cache_quality.md"
