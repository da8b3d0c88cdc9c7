#!/usr/bin/env bash
# The whole MHA2MLA recipe on a shipped default model: calibrate, convert (2-norm partial RoPE, joint SVD
# and its activation-aware variant), then fine-tune the converted model beside the fair baseline.
#
#   scripts/mla_demo.sh [mha|gqa|mha-4k|gqa-4k]      (default mha; run after scripts/build.sh)
#
# Writes runs/demo-KIND/: calib, mla-joint/, mla-act/, convert-*.json, finetune/ and finetune.json. The 4k
# kinds (the 4,096-position models) fine-tune on 2 x 4,096-token sequences for 100 steps (the same 819k
# tokens), so the converted model recovers at the length it serves, and add ppl-{512,4096}.json: held-out ppl
# of the original, the fair baseline and the converted model before and after fine-tuning, at both contexts.
# STEPS=200 BATCH=1 takes the same tokens in twice the optimizer steps (it recovers better, docs/models.md).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
kind=${1:-mha}
src=models/kjv-$kind
out=runs/demo-$kind
bash scripts/kjv.sh data/kjv >/dev/null
[ -f data/kjv/tok/train.bin ] ||
  $B data --tokenizer "$src" --in data/kjv/train.txt --val-in data/kjv/val.txt --out data/kjv/tok
rm -rf "$out"
mkdir -p "$out"
$B calibrate --model "$src" --text data/kjv/train.txt --samples 64 --ctx 512 --out "$out/calib"
# r = 8 rotated dims of 64 (4 frequency pairs), d_kv = 16: the cache keeps (8 + 16) / 128 = 18.75%.
$B convert --model "$src" --out "$out/mla-joint" --rope 2-norm --rope-dims 8 --dkv 16 --svd joint \
  --calib "$out/calib" --json > "$out/convert-joint.json"
$B convert --model "$src" --out "$out/mla-act" --rope 2-norm --rope-dims 8 --dkv 16 --svd activation \
  --calib "$out/calib" --json > "$out/convert-act.json"
shape=(--steps 200 --batch 8 --seq-len 512)
[[ $kind == *-4k ]] && shape=(--steps "${STEPS:-100}" --batch "${BATCH:-2}" --seq-len 4096)
$B finetune --model "$src" --mla "$out/mla-joint" --data data/kjv/tok --val data/kjv/tok --out "$out/finetune" \
  "${shape[@]}" --lr 5e-4 --precision bf16 --val-windows -1 --json | tee "$out/finetune.json"
if [[ $kind == *-4k ]]; then
  for ctx in 512 4096; do
    for m in "$src" "$out/mla-joint" "$out/finetune/baseline/model" "$out/finetune/mla/model"; do
      $B ppl --model "$m" --text data/kjv/val.txt --ctx $ctx --stride $((ctx / 2)) --json | sed "s|^{|{\"model\":\"$m\",|"
    done >"$out/ppl-$ctx.json"
  done
fi
