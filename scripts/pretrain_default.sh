#!/usr/bin/env bash
# Reproduces the shipped default models: a byte-level BPE tokenizer (4096) and two small Llama-architecture
# models (head_dim 64 as in SmolLM; one MHA, one GQA) pretrained on the King James Bible, with whole books
# held out for validation.
#
#   scripts/pretrain_default.sh [mha|gqa|all] [512|4k|all]     (defaults all all; run after scripts/build.sh)
#
# Stage 512 writes runs/kjv-{mha,gqa}/ (checkpoints, train_log.jsonl, loss.svg) and the final models, stored in
# bf16, into models/kjv-{mha,gqa}/. Each model trains for 800 steps of 8 × 512 tokens (3.3M tokens, about 3.3
# epochs).
#
# Stage 4k extends those models to 4,096 positions, as long-context recipes do: rope_theta 10,000 -> 100,000
# (so that the slowest frequency pairs stay within the angles seen in training), then 160 steps of continued
# pretraining on 2 × 4,096-token sequences (1.3M tokens). half of the windows come from synthetic retrieval
# documents built from the training books (scripts/kjv_retrieval_docs.py: numbered passages, then verses quoted
# from them with their passage numbers), which teach the models to look things up in a long context.
# Writes runs/kjv-{mha,gqa}-4k/ and models/kjv-{mha,gqa}-4k/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
which=${1:-all}
stage=${2:-all}

bash scripts/kjv.sh data/kjv
[ -f data/kjv/tokenizer/tokenizer.json ] ||
  $B tokenizer-train --in data/kjv/train.txt --vocab-size 4096 --out data/kjv/tokenizer
[ -f data/kjv/tok/train.bin ] ||
  $B data --tokenizer data/kjv/tokenizer --in data/kjv/train.txt --val-in data/kjv/val.txt --out data/kjv/tok

for kind in mha gqa; do
  [ "$which" = all ] || [ "$which" = "$kind" ] || continue
  [ "$stage" = all ] || [ "$stage" = 512 ] || continue
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

if [ "$stage" != 512 ]; then
  [ -f data/kjv/retrieval_docs.jsonl ] || MHA2MLA=$B /usr/bin/python3 scripts/kjv_retrieval_docs.py
  [ -f data/kjv/tok-retrieval/train.bin ] || $B data --tokenizer data/kjv/tokenizer --in data/kjv/retrieval_docs.jsonl \
    --out data/kjv/tok-retrieval --val-fraction 0.02
fi
for kind in mha gqa; do
  [ "$which" = all ] || [ "$which" = "$kind" ] || continue
  [ "$stage" = all ] || [ "$stage" = 4k ] || continue
  rm -rf "runs/kjv-$kind-4k" "runs/kjv-$kind-4k-init"
  $B cast --model "models/kjv-$kind" --out "runs/kjv-$kind-4k-init" --dtype f32 --max-positions 4096 --rope-theta 100000
  $B train --model "runs/kjv-$kind-4k-init" --data data/kjv/tok:0.5 data/kjv/tok-retrieval:0.5 --val data/kjv/tok \
    --out "runs/kjv-$kind-4k" \
    --steps 160 --batch 2 --seq-len 4096 --lr 5e-4 --min-lr 5e-5 --warmup 10 --decay-start 110 --decay 1-sqrt \
    --weight-decay 0.1 --precision bf16 --val-every 40 --val-windows -1 --save-every 40 --seed 2
  rm -rf "models/kjv-$kind-4k"
  $B cast --model "runs/kjv-$kind-4k/model" --out "models/kjv-$kind-4k" --dtype bf16
  for ctx in 512 4096; do
    $B ppl --model "models/kjv-$kind-4k" --text data/kjv/val.txt --ctx $ctx --stride $((ctx / 2)) --json
  done | tee "models/kjv-$kind-4k/val_ppl.json"
done
