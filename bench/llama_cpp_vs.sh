#!/usr/bin/env bash
# Decode speed of llama.cpp beside mha2mla on the same model shape and machine, the two run alternately in
# this one script so that both see the same load:
#   - short context (128 generated tokens after an empty prompt for llama-bench's tg128; 128 cached tokens for
#     ours), bf16 and f32 weights, each as a share of the weight-read roofline (weight bytes over the read
#     bandwidth that `mha2mla bench` measures in the same round);
#   - decode after 1K and 4K tokens: llama.cpp's MHA with f16 caches (flash attention off and on) and q4_0 caches,
#     against our MHA and MLA -87.5 % with bf16 and int4 caches.
# llama.cpp reads a GGUF of the same shape with random weights (bench/gguf_synth.py, through the gguf-py of the
# checkout given); speed does not depend on the values. Nothing here is downloaded: pass a llama.cpp checkout.
#
# And the GEMV alone against ggml's, both in one process (bench/ggml/gemv_vs_ggml.cpp, built here against the
# llama.cpp checkout's ggml).
#
#   bench/llama_cpp_vs.sh LLAMA_CPP_DIR [OUT_DIR]   (after scripts/build.sh; ROUNDS=3, SHAPE=smollm-135m,
#                                                    CONTEXTS=1024,4096, THREADS=2, BUILD=build by default)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 && -f "$1/CMakeLists.txt" && -d "$1/gguf-py" ]] || {
  echo "usage: bench/llama_cpp_vs.sh LLAMA_CPP_DIR [OUT_DIR]   (LLAMA_CPP_DIR: a llama.cpp source checkout)" >&2
  exit 2
}
lcpp=$(cd "$1" && pwd)
out=${2:-runs/llama-cpp-vs}
build=${BUILD:-build}
B=$build/mha2mla
PY=${PYTHON:-/usr/bin/python3}
shape=${SHAPE:-smollm-135m}
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
contexts=${CONTEXTS:-1024,4096}
mkdir -p "$out"
[[ -x $B ]] || { echo "$B not found: run scripts/build.sh first (or set BUILD)" >&2; exit 2; }

lb=$lcpp/build-mha2mla/bin
if [[ ! -x $lb/llama-bench || ! -x $lb/llama-batched-bench ]]; then
  echo "building llama.cpp (CPU, native) in $lcpp/build-mha2mla" >&2
  cmake -S "$lcpp" -B "$lcpp/build-mha2mla" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  ninja -C "$lcpp/build-mha2mla" llama-bench llama-batched-bench >/dev/null
fi
# The GEMV alone beside ggml's, in one process (bench/ggml/gemv_vs_ggml.cpp).
cmake -S . -B "$build" -DMHA2MLA_LLAMA_CPP="$lcpp" >/dev/null
cmake --build "$build" --target bench_gemv_vs_ggml >/dev/null
for t in bf16 f32; do
  [[ -s $out/$shape-$t.gguf ]] || "$PY" bench/gguf_synth.py "$lcpp/gguf-py" "$out/$shape-$t.gguf.tmp" "$shape" "$t"
  [[ -s $out/$shape-$t.gguf.tmp ]] && mv "$out/$shape-$t.gguf.tmp" "$out/$shape-$t.gguf"
done
commit=$(git -C "$lcpp" rev-parse --short HEAD 2>/dev/null || echo unknown)
max_ctx=$(tr , '\n' <<<"$contexts" | sort -n | tail -1)

results=$out/results.jsonl
: >"$results"
# One JSON line per measurement: engine, config, context (0: the short-context cell), weights, round, tokens/s,
# and for the short cells the read bandwidth and weight bytes of the same round.
emit() { jq -cn --arg e "$1" --arg c "$2" --argjson ctx "$3" --arg w "$4" --argjson r "$5" --argjson tps "$6" \
  --argjson bw "$7" --argjson wb "$8" \
  '{engine:$e, config:$c, context:$ctx, weights:$w, round:$r, tokens_per_s:$tps, read_bandwidth_gbs:$bw, weight_bytes:$wb}' \
  >>"$results"; }

# llama.cpp's cache configurations: f16 (its default) without and with flash attention, and q4_0 K and V
# (4.5 bits a value, as our int4 with groups of 64 and f16 scale and zero), which needs flash attention.
lcpp_configs=("f16 cache|-ctk f16 -ctv f16" "f16 cache, flash attention|-ctk f16 -ctv f16 -fa"
  "q4_0 cache, flash attention|-ctk q4_0 -ctv q4_0 -fa")

gemv_log=$out/gemv.txt
: >"$gemv_log"
for ((r = 1; r <= rounds; r++)); do
  echo "round $r of $rounds" >&2
  for t in bf16 f32; do "$build/bench_gemv_vs_ggml" "$t" 16 "$threads" >>"$gemv_log"; done
  for t in bf16 f32; do
    j=$("$B" bench --shape "$shape" --models mha --cache-types "$t" --dtype "$t" --contexts 128 --prefill-chunk 128 \
      --steps 32 --json 2>/dev/null)
    bw=$(jq '.read_bandwidth_gbs' <<<"$j")
    wb=$(jq '.cells[0].weight_bytes' <<<"$j")
    emit mha2mla "MHA, $t cache" 0 "$t" "$r" "$(jq '.cells[0].decode_tokens_per_s' <<<"$j")" "$bw" "$wb"
    tps=$("$lb/llama-bench" -m "$out/$shape-$t.gguf" -p 0 -n 128 -t "$threads" -r 1 -o json 2>/dev/null |
      jq '.[0].avg_ts')
    emit llama.cpp "MHA, f16 cache" 0 "$t" "$r" "$tps" "$bw" "$wb"
  done
  "$B" bench --shape "$shape" --models mha,mla-87.5 --cache-types bf16,int4 --no-prefill --contexts "$contexts" \
    --steps 16 --json 2>/dev/null |
    jq -c --argjson r "$r" '.cells[] | {engine:"mha2mla",
      config:"\(if .model == "mha" then "MHA" else "MLA -87.5 %" end), \(.cache_type) cache", context, weights:"bf16",
      round:$r, tokens_per_s:.decode_tokens_per_s, read_bandwidth_gbs:null, weight_bytes:null}' >>"$results"
  for c in "${lcpp_configs[@]}"; do
    read -r -a flags <<<"${c#*|}"
    "$lb/llama-batched-bench" -m "$out/$shape-bf16.gguf" -c $((max_ctx + 64)) -b 2048 -ub 512 -npp "$contexts" \
      -ntg 16 -npl 1 -t "$threads" "${flags[@]}" --output-format jsonl 2>&1 | grep '^{"n_kv_max"' |
      jq -c --argjson r "$r" --arg cfg "MHA, ${c%%|*}" '{engine:"llama.cpp", config:$cfg, context:.pp,
        weights:"bf16", round:$r, tokens_per_s:.speed_tg, read_bandwidth_gbs:null, weight_bytes:null}' >>"$results"
  done
done

# Tables: short-context decode with each round's share of the weight-read roofline; decode after each context,
# one column per context, each round's tokens/s.
jq -rs --arg commit "$commit" --arg shape "$shape" --argjson threads "$threads" '
  def r1: (. * 10 | round) / 10 | tostring;
  def rounds: map(.tokens_per_s | r1) | join(" / ");
  (map(select(.context > 0) | .context) | unique) as $ctx |
  "llama.cpp \($commit) and mha2mla, \($shape) shape, \($threads) threads, run alternately; tokens/s of each round.",
  "",
  "Decode at 128 tokens (llama.cpp: tg128 from an empty prompt), against the weight-read roofline (weight bytes",
  "over the read bandwidth measured by mha2mla bench in the same round):",
  "",
  "| weights | engine | tokens/s | % of roofline |",
  "|---|---|---|---|",
  (map(select(.context == 0)) | group_by([.weights, .engine])[] |
    "| \(.[0].weights) | \(.[0].engine) | \(rounds) | " +
    (map(.tokens_per_s * .weight_bytes / (.read_bandwidth_gbs * 1e9) * 100 | r1 + " %") | join(" / ")) + " |"),
  "",
  "Decode after a prompt of N tokens, bf16 weights (llama.cpp: llama-batched-bench -ntg 16; mha2mla: synthetic caches):",
  "",
  "| engine | model, cache | " + ($ctx | map("N = \(.)") | join(" | ")) + " |",
  "|---|---|" + ($ctx | map("---") | join("|")) + "|",
  (map(select(.context > 0)) | group_by([.engine, .config])[] | . as $g |
    "| \($g[0].engine) | \($g[0].config) | " + ($ctx | map(. as $c | $g | map(select(.context == $c)) | rounds) | join(" | ")) + " |"),
  "",
  "Read bandwidth (GB/s, mha2mla bench, bf16 round): " +
    (map(select(.context == 0 and .engine == "mha2mla" and .weights == "bf16") | .read_bandwidth_gbs | r1) | join(" / "))
' "$results" >"$out/summary.md"
{
  echo
  echo "The GEMV alone, in one process (build/bench_gemv_vs_ggml, the 210 matrices of the layer stack, median of 16):"
  echo
  sed 's/^/    /' "$gemv_log"
} >>"$out/summary.md"
cat "$out/summary.md"
