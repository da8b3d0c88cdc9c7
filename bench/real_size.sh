#!/usr/bin/env bash
# The whole pipeline at Llama-2-7B size: synthesise a 7B-shaped fp16 checkpoint (2 shards, random weights with a
# decaying spectrum), then calibrate (bf16, 2 windows of 512) -> convert (2-norm, r = 16, d_kv = 16, joint SVD,
# with the calibration file) -> ppl (bf16, ~1K tokens) -> generate (16 tokens, bf16), reporting each step's wall
# time, CPU time (user + sys: comparable on a shared machine) and peak resident memory against its target
# (1.25 x the bf16 size of the weights it holds + 1 GiB).
#
#   bench/real_size.sh [--layers N] [--device cpu|cuda] [--work DIR] [--keep]
#
# --layers N: the same width with N layers (default 32, the full 7B: ~13.5 GB on disk for the source and ~12.5 GB
# for the converted model, and ~14 GiB of memory for the bf16 steps). --device cuda runs calibrate, ppl and
# generate on the GPU (convert always runs on the CPU). Needs build/mha2mla and build/synth_checkpoint
# (scripts/build.sh; MHA2MLA_BUILD=DIR for another build folder) and text: Debian's bible-kjv when installed,
# else this repository's own Markdown (the weights are random, so any English text serves). Writes
# DIR/results.md and DIR/results.json.
set -euo pipefail

layers=32
device=cpu
work=${TMPDIR:-/tmp}/mha2mla-real-size
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "real_size.sh: unknown option $1" >&2; exit 1 ;;
  esac
done
case "$device" in cpu|cuda) ;; *) echo "real_size.sh: --device must be cpu or cuda" >&2; exit 1 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
build=${MHA2MLA_BUILD:-$root/build}
bin=$build/mha2mla
synth=$build/synth_checkpoint
for b in "$bin" "$synth"; do [ -x "$b" ] || { echo "real_size.sh: $b not built (scripts/build.sh)" >&2; exit 1; }; done

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
df -h "$(dirname "$work")" | tail -1 | awk '{print "== disk: " $4 " free on " $6}'

rm -rf "$work"
mkdir -p "$work"
[ "$keep" = 1 ] || trap 'rm -rf "$work/src" "$work/mla"' EXIT

# Calibration text (Genesis) and held-out text (Ruth, cut to about 1K tokens), verses without references.
if command -v bible >/dev/null; then
  bible -f "Gen1:1-Gen12:20" | sed 's/^[^ ]* //' >"$work/calib.txt"
  # Through a file: head closing the pipe early would fail the pipeline under pipefail.
  bible -f "Ruth1:1-Ruth4:22" | sed 's/^[^ ]* //' >"$work/ruth.txt"
  head -c 4600 "$work/ruth.txt" >"$work/heldout.txt"
else
  head -c 40000 "$root/README.md" >"$work/calib.txt"
  tail -c 4600 "$root/README.md" >"$work/heldout.txt"
fi

# Runs one step: wall time by the clock, peak RSS from the command's own report (peak_rss_bytes) and, as a
# cross-check, from /usr/bin/time when it is installed.
results=()
step() {
  local name=$1 target_bytes=$2
  shift 2
  local t0 t1 json maxrss="" cpu=0 kib user sys
  echo "== $name: $*" >&2
  t0=$(date +%s.%N)
  if [ -x /usr/bin/time ]; then
    json=$(/usr/bin/time -f '%M %U %S' -o "$work/$name.time" "$@")
    read -r kib user sys <<<"$(tail -1 "$work/$name.time")"
    maxrss=$((kib * 1024))
    cpu=$(echo "$user + $sys" | bc)
  else
    json=$("$@")
  fi
  t1=$(date +%s.%N)
  echo "$json" >"$work/$name.json"
  local peak
  peak=$(echo "$json" | sed -n 's/.*"peak_rss_bytes":\([0-9]*\).*/\1/p' | tail -1)
  local secs
  secs=$(echo "$t1 - $t0" | bc)
  results+=("$name $secs $peak $target_bytes ${maxrss:-0} $cpu")
}

gib() { echo "scale=2; $1 / 1073741824" | bc; }

"$synth" --out "$work/src" --tokenizer "$root/models/kjv-mha/tokenizer.json" --layers "$layers" --shards 2 >&2
du -sb "$work/src" | awk '{printf "== source checkpoint: %.2f GiB\n", $1 / 1073741824}'

# Parameter counts (bf16 bytes = 2 per parameter) of what each step holds.
d=4096 inter=11008 vocab=32000
layer_params=$((4 * d * d + 3 * d * inter + 2 * d))
src_bytes=$((2 * (layers * layer_params + 2 * vocab * d + d)))
# After conversion, each layer's k/v projections (2 d^2) become k_r (32*16 rows), down_kv (512 rows), up_k and up_v.
mla_layer=$((2 * d * d + 3 * d * inter + 2 * d + 32 * 16 * d + 512 * d + 32 * 112 * 512 + 32 * 128 * 512))
mla_bytes=$((2 * (layers * mla_layer + 2 * vocab * d + d)))
gib1=1073741824
target() { echo "$(( $1 * 5 / 4 + gib1 ))"; }

step calibrate "$(target $src_bytes)" "$bin" calibrate --model "$work/src" --text "$work/calib.txt" --samples 2 \
  --ctx 512 --dtype bf16 --device "$device" --out "$work/src.calib" --json
# Streaming holds one layer (plus the calibration file's mapped covariances for that layer).
step convert "$(target $((2 * (layer_params + vocab * d))))" "$bin" convert --model "$work/src" --out "$work/mla" \
  --rope 2-norm --rope-dims 16 --dkv 16 --svd joint --calib "$work/src.calib" --json
step ppl "$(target $mla_bytes)" "$bin" ppl --model "$work/mla" --text "$work/heldout.txt" --ctx 1024 --stride 1023 \
  --dtype bf16 --device "$device" --json
step generate "$(target $mla_bytes)" "$bin" generate --model "$work/mla" --prompt "And Ruth said" --max-new 16 \
  --temperature 0 --dtype bf16 --device "$device" --json

tokens=$(sed -n 's/.*"tokens":\([0-9]*\).*/\1/p' "$work/ppl.json")
{
  echo "layers $layers, device $device, $(nproc) cores; source $(gib $src_bytes) GiB of weights in bf16 terms, converted $(gib $mla_bytes) GiB; ppl on $tokens tokens"
  echo
  echo "| step | wall (s) | CPU (s) | peak RSS (GiB) | target (GiB) | within | /usr/bin/time max RSS (GiB) |"
  echo "|---|---|---|---|---|---|---|"
  for r in "${results[@]}"; do
    set -- $r
    ok=no
    [ "$3" -le "$4" ] && ok=yes
    printf '| %s | %.1f | %.1f | %s | %s | %s | %s |\n' "$1" "$2" "$6" "$(gib "$3")" "$(gib "$4")" "$ok" "$(gib "$5")"
  done
} | tee "$work/results.md"
{
  printf '{"layers":%s,"device":"%s","steps":[' "$layers" "$device"
  sep=""
  for r in "${results[@]}"; do
    set -- $r
    printf '%s{"step":"%s","seconds":%s,"cpu_seconds":%s,"peak_rss_bytes":%s,"target_bytes":%s,"time_max_rss_bytes":%s}' "$sep" "$1" "$2" "$6" "$3" "$4" "$5"
    sep=","
  done
  printf ']}\n'
} >"$work/results.json"
