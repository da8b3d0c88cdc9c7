#!/usr/bin/env bash
# Prefill and decode tokens/s of the C++ runtime beside PyTorch eager (Python) on the same
# SmolLM-135M-shaped model, same machine, same thread count. Usage: bench/model_vs_pytorch.sh [BUILD_DIR]
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=${MHA2MLA_THREADS:-$(nproc)}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$BUILD/bench_model" --write-model "$TMP/model" >/dev/null
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $THREADS threads"
MHA2MLA_THREADS=$THREADS "$BUILD/bench_model" --benchmark_format=json > "$TMP/cpp.json" 2>/dev/null
for dt in f32 bf16; do
  /usr/bin/python3 "$ROOT/tests/oracle/torch_ref.py" --model "$TMP/model" --bench --dtype $dt --threads "$THREADS" \
    --prompt-len 128 --new 64 > "$TMP/py_$dt.json"
done
/usr/bin/python3 - "$TMP" <<'PY'
import json, sys
d = sys.argv[1]
cpp = {b["name"]: b["tokens_per_s"] for b in json.load(open(f"{d}/cpp.json"))["benchmarks"]}
print(f"{'':22}{'C++ tok/s':>12}{'PyTorch eager tok/s':>22}{'speedup':>10}")
for dt, flag in (("f32", 0), ("bf16", 1)):
    py = json.load(open(f"{d}/py_{dt}.json"))
    for kind, key, pykey in (("prefill 128", f"BM_Prefill/bf16:{flag}/T:128/min_time:2.000/real_time", "prefill_tokens_per_s"),
                             ("decode after 128", f"BM_Decode/bf16:{flag}/prompt:128/min_time:2.000/real_time", "decode_tokens_per_s")):
        c = cpp[key]
        print(f"{dt + ' ' + kind:22}{c:12.1f}{py[pykey]:22.1f}{c / py[pykey]:9.2f}x")
PY
