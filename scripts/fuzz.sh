#!/usr/bin/env bash
# Runs one libFuzzer target for SECONDS (clang, ASan + UBSan + LeakSanitizer), in build-fuzz/.
#   scripts/fuzz.sh TARGET SECONDS [extra libFuzzer flags]
#   scripts/fuzz.sh --list
# The corpus starts from tests/fuzz/corpus/TARGET (committed seeds) and grows in build-fuzz/corpus/TARGET.
# A crash is saved under build-fuzz/crashes/TARGET/; copy it into tests/fuzz/corpus/TARGET once fixed, so
# test_fuzz replays it on every run. Prints the number of executions at the end. The per-input timeout is
# generous (30 min): libFuzzer counts wall time, and on a shared machine a process can be paused for minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS="config_json tokenizer_json tokenizer_encode safetensors_header safetensors_index token_shard ds_metadata calibration"
if [ "${1:-}" = --list ]; then echo "$TARGETS" | tr ' ' '\n'; exit 0; fi
if [ $# -lt 2 ]; then sed -n '2,8p' "$0"; exit 2; fi
T=$1; SECS=$2; shift 2
echo " $TARGETS " | grep -q " $T " || { echo "fuzz.sh: unknown target $T (scripts/fuzz.sh --list)" >&2; exit 2; }
command -v clang++ >/dev/null 2>&1 || { echo "fuzz.sh: clang++ is needed: MHA2MLA_FUZZ_DEPS=1 scripts/setup.sh" >&2; exit 1; }
B=${FUZZ_BUILD_DIR:-build-fuzz}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
if [ ! -f "$B/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMHA2MLA_FUZZ=ON \
    -DMHA2MLA_BUILD_TESTS=OFF -DMHA2MLA_BUILD_BENCH=OFF -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link $SAN" -DCMAKE_EXE_LINKER_FLAGS="$SAN" >/dev/null
fi
nice -n 10 cmake --build "$B" --target "fuzz_$T" -j "${JOBS:-2}"
mkdir -p "$B/corpus/$T" "$B/crashes/$T"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_odr_violation=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
LOG="$B/fuzz-$T.log"
# Every tokenizer_json input is a whole tokenizer.json that is parsed and built: small inputs keep it fast.
MAX_LEN=65536
[ "$T" = tokenizer_json ] && MAX_LEN=4096
set +e
start=$SECONDS
"$B/fuzz_$T" "$B/corpus/$T" "tests/fuzz/corpus/$T" -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=1800 \
  -max_len="$MAX_LEN" -print_final_stats=1 -artifact_prefix="$B/crashes/$T/" "$@" 2>&1 | tee "$LOG" | grep -v '^#[0-9]*	\(NEW\|REDUCE\|pulse\)'
rc=${PIPESTATUS[0]}
set -e
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG" | tail -1)
echo "fuzz.sh: $T: ${runs:-?} executions in $((SECONDS - start)) s (limit ${SECS} s), exit $rc"
exit "$rc"
