#!/usr/bin/env bash
# Reproduces the shipped default models: a byte-level BPE tokenizer (4096) and two small Llama-architecture
# models (head_dim 64 as in SmolLM; one MHA, one GQA) pretrained on the King James Bible, with whole books
# held out for validation.
#
#   scripts/pretrain_default.sh [mha|gqa|all]     (default all; run after scripts/build.sh)
#
# Writes runs/kjv-{mha,gqa}/ (checkpoints, train_log.jsonl, loss.svg) and the final models, stored in bf16,
# into models/kjv-{mha,gqa}/. Each model trains for 800 steps of 8 × 512 tokens (3.3M tokens, about 3.3 epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
which=${1:-all}

bash scripts/kjv.sh data/kjv
[ -f data/kjv/tokenizer/tokenizer.json ] ||
  $B tokenizer-train --in data/kjv/train.txt --vocab-size 4096 --out data/kjv/tokenizer
[ -f data/kjv/tok/train.bin ] ||
  $B data --tokenizer data/kjv/tokenizer --in data/kjv/train.txt --val-in data/kjv/val.txt --out data/kjv/tok

for kind in mha gqa; do
  [ "$which" = all ] || [ "$which" = "$kind" ] || continue
  rm -rf "runs/kjv-$kind" "runs/kjv-$kind-init"
  $B init --config "configs/kjv-$kind.json" --tokenizer data/kjv/tokenizer --out "runs/kjv-$kind-init" --seed 1
  $B train --model "runs/kjv-$kind-init" --data data/kjv/tok --val data/kjv/tok --out "runs/kjv-$kind" \
    --steps 800 --batch 8 --seq-len 512 --lr 2e-3 --min-lr 2e-4 --warmup 40 --decay-start 600 --decay 1-sqrt \
    --weight-decay 0.1 --precision bf16 --val-every 100 --val-windows -1 --save-every 200 --seed 1
  rm -rf "models/kjv-$kind"
  # bf16 storage keeps each shipped model near 10 MB; the runtime computes in f32 unless told otherwise.
  $B cast --model "runs/kjv-$kind/model" --out "models/kjv-$kind" --dtype bf16
  $B ppl --model "models/kjv-$kind" --text data/kjv/val.txt --ctx 512 --stride 256 --json | tee "models/kjv-$kind/val_ppl.json"
done
