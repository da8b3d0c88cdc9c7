#!/usr/bin/env bash
# The server's MHA vs MLA numbers on one machine, run alternately in one script (docs/serving.md, Serving):
#   1. 4K-token sequences admitted at once within one --cache-memory: the room the pool has (a request of 4,000
#      prompt + 96 new tokens reserves 4,096 tokens of blocks) and the most running at any moment while 48 such
#      requests arrive together, per cache type;
#   2. output tokens/s, TTFT and time per output token at concurrency 16 with 2K-token prompts (bench/serve_load);
#   3. the same with 512 new tokens per request (16 requests), where decoding outweighs the prompts' prefill.
# usage: bench/serve_vs.sh [OUT_DIR]
#   PARTS="admission throughput decode" (default all three); MHA=DIR (default models/kjv-mha-4k), converted here to MLA
#   -87.5 % (r = 8, d_kv = 8 per KV head: head_dim 64); DTYPE (bf16); MEM (128M, the admission pool).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/serve-vs}
BIN=build/mha2mla
LOAD=build/serve_load
MEM=${MEM:-128M}
DTYPE=${DTYPE:-bf16}
PARTS=${PARTS:-admission throughput decode}
mkdir -p "$OUT"
MHA=${MHA:-models/kjv-mha-4k}
MLA=$OUT/mla
[ -f "$MLA/config.json" ] || $BIN convert --model "$MHA" --out "$MLA" --rope high --rope-dims 8 --dkv 8 --svd joint >/dev/null

start() {  # MODEL CACHE_TYPE PARALLEL -> sets PID, PORT
  rm -f "$OUT/port"
  $BIN serve --model "$1" --alias m --port 0 --port-file "$OUT/port" --cache-memory "$MEM" --cache-type "$2" \
    --parallel "$3" --max-queue 256 --dtype "$DTYPE" 2>"$OUT/serve.log" &
  PID=$!
  for _ in $(seq 600); do [ -s "$OUT/port" ] && curl -sf "localhost:$(cat "$OUT/port")/health" >/dev/null && break; sleep 0.1; done
  PORT=$(cat "$OUT/port")
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }
metric() { curl -s "localhost:$PORT/metrics" | awk -v k="$1" '$1 == k {print $2}'; }

if [[ " $PARTS " == *" admission "* ]]; then
echo "| model | cache | KV bytes/token | blocks in $MEM | room for (4,096-token sequences) | most running at once (48 sent) |" >"$OUT/admission.md"
echo "|---|---|---:|---:|---:|---:|" >>"$OUT/admission.md"
for ct in bf16 int4; do
  for name in mha mla; do
    model=$MHA; [ $name = mla ] && model=$MLA
    start "$model" $ct 64
    $LOAD --port "$PORT" --requests 48 --concurrency 48 --prompt-tokens 4000 --max-tokens 96 >"$OUT/admit-$name-$ct.json" &
    LPID=$!
    peak=0
    while kill -0 $LPID 2>/dev/null; do
      r=$(metric mha2mla_running_sequences); [ "${r:-0}" -gt "$peak" ] && peak=$r; sleep 0.05
    done
    wait $LPID || true
    bpt=$(awk "BEGIN {printf \"%.0f\", $(metric mha2mla_cache_block_bytes) / $(metric mha2mla_cache_block_tokens)}")
    blocks=$(metric mha2mla_cache_blocks_total)
    bt=$(metric mha2mla_cache_block_tokens)
    echo "| $name | $ct | $bpt | $blocks | $((blocks / ((4096 + bt - 1) / bt))) | $peak |" >>"$OUT/admission.md"
    stop
  done
done
cat "$OUT/admission.md"
fi

run_load() {  # PART REQUESTS NEW_TOKENS: two rounds of MHA then MLA, a table in $OUT/PART.md
  echo "| round | model | output tok/s | TTFT p50 s | TTFT p99 s | TPOT p50 ms | TPOT p99 ms |" >"$OUT/$1.md"
  echo "|---|---|---:|---:|---:|---:|---:|" >>"$OUT/$1.md"
  for round in 1 2; do
    for name in mha mla; do
      model=$MHA; [ $name = mla ] && model=$MLA
      MEM=1G start "$model" bf16 16
      $LOAD --port "$PORT" --requests "$2" --concurrency 16 --prompt-tokens 2048 --max-tokens "$3" >"$OUT/$1-$name-$round.json"
      stop
      python3 -c "
import json; j = json.load(open('$OUT/$1-$name-$round.json'))
print('| $round | $name | %.1f | %.3f | %.3f | %.1f | %.1f |' % (j['output_tokens_per_s'], j['ttft_s']['p50'], j['ttft_s']['p99'], 1e3 * j['tpot_s']['p50'], 1e3 * j['tpot_s']['p99']))" >>"$OUT/$1.md"
    done
  done
  cat "$OUT/$1.md"
}
if [[ " $PARTS " == *" throughput "* ]]; then run_load throughput 32 64; fi
if [[ " $PARTS " == *" decode "* ]]; then run_load decode 16 512; fi
