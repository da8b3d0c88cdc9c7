#!/usr/bin/env bash
# The paper's ablation tables on a shipped default model, with the shipped data and tasks.
#
#   scripts/reproduce.sh [mha|gqa] [extra reproduce options]   (default mha; run after scripts/build.sh)
#
# Writes runs/reproduce-KIND/: reproduce.{json,md,svg}, rows/ (one file per finished row: a run that stops
# resumes there), calib.safetensors and models/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
kind=${1:-mha}
shift || true
bash scripts/kjv.sh data/kjv >/dev/null
[ -f data/kjv/tok/train.bin ] ||
  $B data --tokenizer "models/kjv-$kind" --in data/kjv/train.txt --val-in data/kjv/val.txt --out data/kjv/tok
$B reproduce --model "models/kjv-$kind" --out "runs/reproduce-$kind" "$@"
