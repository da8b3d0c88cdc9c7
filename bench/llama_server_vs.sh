#!/usr/bin/env bash
# llama.cpp's llama-server beside `mha2mla serve` (MHA and its MLA -87.5 % conversion) on the same model shape and
# machine, the three run alternately in this one script so that they see the same load: N streamed greedy
# completions of P-token prompts and M new tokens at concurrency 1, 8 and 32 (build/serve_load against each
# server's /v1/completions), output tokens/s, time to first token and time per output token.
# llama.cpp reads a GGUF of the SmolLM-135M shape with random weights (bench/gguf_synth.py, through the gguf-py of
# the checkout given); ours a random model of the same shape (mha2mla init). Nothing is downloaded: pass a llama.cpp
# source checkout, which is built here (llama-server, CPU, native); LLAMA_CPP_COMMIT names its commit in the summary
# when the checkout is not a git work tree.
#
#   bench/llama_server_vs.sh LLAMA_CPP_DIR [OUT_DIR]   (after scripts/build.sh; ROUNDS=2, CONCURRENCY="1 8 32",
#                                                       PROMPT=256, NEW=64, DTYPE=bf16)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 && -f "$1/CMakeLists.txt" && -d "$1/gguf-py" ]] || {
  echo "usage: bench/llama_server_vs.sh LLAMA_CPP_DIR [OUT_DIR]   (LLAMA_CPP_DIR: a llama.cpp source checkout)" >&2
  exit 2
}
lcpp=$(cd "$1" && pwd)
out=${2:-runs/llama-server-vs}
B=build/mha2mla
LOAD=build/serve_load
PY=${PYTHON:-/usr/bin/python3}
rounds=${ROUNDS:-2}
concurrency=${CONCURRENCY:-1 8 32}
prompt=${PROMPT:-256}
new=${NEW:-64}
dtype=${DTYPE:-bf16}
threads=$(nproc)
mkdir -p "$out"
[[ -x $B && -x $LOAD ]] || { echo "$B or $LOAD not found: run scripts/build.sh first" >&2; exit 2; }

lb=$lcpp/build-mha2mla/bin
if [[ ! -x $lb/llama-server ]]; then
  echo "building llama-server (CPU, native) in $lcpp/build-mha2mla" >&2
  cmake -S "$lcpp" -B "$lcpp/build-mha2mla" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  ninja -C "$lcpp/build-mha2mla" llama-server >/dev/null
fi
gguf=$out/smollm-135m-$dtype.gguf
[[ -s $gguf ]] || { "$PY" bench/gguf_synth.py "$lcpp/gguf-py" "$gguf.tmp" smollm-135m "$dtype" && mv "$gguf.tmp" "$gguf"; }
# Ours: the same shape (bench/gguf_synth.py's smollm-135m), random weights, and its MLA -87.5 % conversion.
if [[ ! -f $out/mha/config.json ]]; then
  cat >"$out/config.json" <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
 "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": true,
 "hidden_act": "silu", "attention_bias": false, "bos_token_id": 1, "eos_token_id": 2}
EOF
  $B init --config "$out/config.json" --out "$out/mha" --dtype "$dtype" --tokenizer models/kjv-mha >/dev/null
fi
[[ -f $out/mla/config.json ]] || $B convert --model "$out/mha" --out "$out/mla" --rope high --rope-dims 8 --dkv 8 --svd joint >/dev/null

start() {  # ENGINE CONCURRENCY -> PID, PORT
  local port
  rm -f "$out/port"
  if [[ $1 == llama ]]; then
    port=$((20000 + RANDOM % 20000))
    "$lb/llama-server" -m "$gguf" -c $(($2 * (prompt + new + 16))) -np "$2" -t "$threads" -tb "$threads" \
      --host 127.0.0.1 --port "$port" 2>"$out/llama-server.log" >/dev/null &
    PID=$!
    echo "$port" >"$out/port"
  else
    $B serve --model "$out/$1" --alias m --port 0 --port-file "$out/port" --cache-memory 1G --parallel "$2" \
      --max-queue 256 --dtype "$dtype" 2>"$out/serve.log" &
    PID=$!
  fi
  for _ in $(seq 1200); do
    [[ -s $out/port ]] && curl -sf "localhost:$(cat "$out/port")/health" >/dev/null && break
    kill -0 "$PID" 2>/dev/null || { echo "the $1 server exited: see $out" >&2; exit 1; }
    sleep 0.1
  done
  PORT=$(cat "$out/port")
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

results=$out/results.jsonl
: >"$results"
for round in $(seq "$rounds"); do
  for c in $concurrency; do
    n=$((2 * c < 8 ? 8 : 2 * c))
    for engine in llama mha mla; do
      start $engine "$c"
      $LOAD --port "$PORT" --requests "$n" --concurrency "$c" --prompt-tokens "$prompt" --max-tokens "$new" \
        --model m >"$out/load.json"
      stop
      jq -c --arg e $engine --argjson r "$round" --argjson c "$c" '{engine: $e, round: $r, concurrency: $c} + .' \
        "$out/load.json" >>"$results"
      echo "round $round, concurrency $c, $engine: $(jq -r '.output_tokens_per_s' "$out/load.json") output tokens/s" >&2
    done
  done
done

{
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $threads threads; llama.cpp" \
    "$(git -C "$lcpp" rev-parse --short HEAD 2>/dev/null || echo "${LLAMA_CPP_COMMIT:-(commit unknown: set LLAMA_CPP_COMMIT)}"); $dtype weights;" \
    "prompts of $prompt tokens, $new new tokens, greedy"
  echo
  echo "| concurrency | round | llama-server tok/s | mha2mla MHA tok/s | MLA −87.5 % tok/s | MHA ÷ llama | MLA ÷ llama | TTFT p50 llama / MHA / MLA (s) | TPOT p50 llama / MHA / MLA (ms) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---|---|"
  jq -rs '
    group_by([.concurrency, .round])[] | (map({(.engine): .}) | add) as $e |
    "| \($e.llama.concurrency) | \($e.llama.round) | \($e.llama.output_tokens_per_s * 10 | round / 10) | \($e.mha.output_tokens_per_s * 10 | round / 10) | \($e.mla.output_tokens_per_s * 10 | round / 10) | \($e.mha.output_tokens_per_s / $e.llama.output_tokens_per_s * 100 | round / 100)× | \($e.mla.output_tokens_per_s / $e.llama.output_tokens_per_s * 100 | round / 100)× | \($e.llama.ttft_s.p50 * 100 | round / 100) / \($e.mha.ttft_s.p50 * 100 | round / 100) / \($e.mla.ttft_s.p50 * 100 | round / 100) | \($e.llama.tpot_s.p50 * 1000 | round) / \($e.mha.tpot_s.p50 * 1000 | round) / \($e.mla.tpot_s.p50 * 1000 | round) |"' \
    "$results"
} >"$out/summary.md"
cat "$out/summary.md"
