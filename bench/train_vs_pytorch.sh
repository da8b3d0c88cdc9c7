#!/usr/bin/env bash
# Training tokens/s of `mha2mla train` beside PyTorch eager (Python, Debian's python3-torch) on the same
# model (configs/kjv-mha.json unless CONFIG is set), batch and sequence length, on this machine.
# Usage: bench/train_vs_pytorch.sh [BUILD_DIR]   (needs the KJV shards: scripts/pretrain_default.sh or
# the data steps in scripts/kjv.sh)
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=${CONFIG:-$ROOT/configs/kjv-mha.json}
STEPS=${STEPS:-20}
BATCH=${BATCH:-8}
SEQ=${SEQ:-512}
THREADS=${MHA2MLA_THREADS:-$(nproc)}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$BUILD/mha2mla" init --config "$CONFIG" --tokenizer "$ROOT/data/kjv/tokenizer" --out "$TMP/model" >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $THREADS threads; batch $BATCH x $SEQ tokens, $STEPS steps"
printf '%-10s %14s %22s %9s\n' precision "C++ tok/s" "PyTorch eager tok/s" speedup
for p in f32 bf16; do
  cpp=$(MHA2MLA_THREADS=$THREADS "$BUILD/mha2mla" train --model "$TMP/model" --data "$ROOT/data/kjv/tok" \
    --val "$ROOT/data/kjv/tok" --out "$TMP/run-$p" --steps "$STEPS" --batch "$BATCH" --seq-len "$SEQ" \
    --precision $p --val-windows 1 --val-every 100000 --save-every 100000 --json |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')
  py=$(/usr/bin/python3 "$ROOT/tests/oracle/train_ref.py" --model "$TMP/model" --bench --steps "$STEPS" \
    --batch "$BATCH" --seq-len "$SEQ" --precision $p --threads "$THREADS" |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')
  /usr/bin/python3 -c "print(f'{\"$p\":10} {$cpp:14.1f} {$py:22.1f} {$cpp/$py:8.2f}x')"
done
