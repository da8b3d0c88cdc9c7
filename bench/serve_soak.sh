#!/usr/bin/env bash
# Soak test of `mha2mla serve`: 2,000 requests at concurrency 32, a third unstreamed and every seventh stream
# hung up after its first tokens. Checks that every request is accounted for (completed or cancelled, none
# failed or lost) and that the server's resident memory at the end is within 5 % of its level after the first
# 100 requests.   usage: bench/serve_soak.sh [MODEL_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/kjv-mha}
OUT=${2:-runs/serve-soak}
N=${N:-2000}
mkdir -p "$OUT"
rm -f "$OUT/port"
build/mha2mla serve --model "$MODEL" --port 0 --port-file "$OUT/port" --parallel 32 --max-queue 256 \
  --cache-memory 512M 2>"$OUT/serve.log" &
PID=$!
for _ in $(seq 600); do [ -s "$OUT/port" ] && curl -sf "localhost:$(cat "$OUT/port")/health" >/dev/null && break; sleep 0.1; done
PORT=$(cat "$OUT/port")
build/serve_load --port "$PORT" --requests "$N" --concurrency 32 --prompt-tokens 64 --max-tokens 24 \
  --whole-every 3 --cancel-every 7 --pid $PID >"$OUT/load.json" || true
sleep 1
curl -s "localhost:$PORT/metrics" >"$OUT/metrics.txt"
kill -TERM $PID
wait $PID
python3 - "$OUT" "$N" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
load = json.load(open(f"{out}/load.json"))
m = {l.split()[0]: float(l.split()[1]) for l in open(f"{out}/metrics.txt") if l and not l.startswith("#") and "{" not in l}
done, cancelled, failed = m["mha2mla_requests_completed_total"], m["mha2mla_requests_cancelled_total"], m["mha2mla_requests_failed_total"]
rss = load["server_rss_bytes"]
growth = rss["end"] / rss["after_100"] - 1
print(f"requests {n}: completed {done:.0f}, cancelled {cancelled:.0f} (client hung up on {load['cancelled']}), failed {failed:.0f}, "
      f"client-side failures {load['failed']}; blocks in use at the end {m['mha2mla_cache_blocks_used']:.0f}; "
      f"server RSS after 100 requests {rss['after_100'] / 2**20:.1f} MiB, at the end {rss['end'] / 2**20:.1f} MiB ({100 * growth:+.1f} %)")
ok = done + cancelled == n and failed == 0 and load["failed"] == 0 and m["mha2mla_cache_blocks_used"] == 0 and abs(growth) <= 0.05
print("soak:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
