#!/usr/bin/env bash
# Builds everything, then runs the whole test suite with CTest.
#   scripts/test.sh              the normal build (build/)
#   scripts/test.sh --sanitize   the whole suite built with AddressSanitizer + UndefinedBehaviorSanitizer
#                                (LeakSanitizer included) in build-sanitize/, then run
# Under CI (CI=true) a skipped test is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SANITIZE=0
for a in "$@"; do
  case "$a" in
    --sanitize) SANITIZE=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
JOBS=${JOBS:-$(nproc)}

if [ "$SANITIZE" = 1 ]; then
  bash scripts/setup.sh
  BUILD_DIR=${BUILD_DIR:-build-sanitize}
  FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    # -O1 keeps the instrumented suite fast enough; benchmarks are left out.
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMHA2MLA_BUILD_BENCH=OFF \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS="$FLAGS" \
      -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
  fi
  # Set before building too: test discovery runs the instrumented binaries.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_odr_violation=0}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  cmake --build "$BUILD_DIR" -j "$JOBS"
else
  bash scripts/build.sh
  BUILD_DIR=${BUILD_DIR:-build}
fi

LOG="$BUILD_DIR/ctest.log"
set +e
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 0 ] && { [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; } && grep -q '\*\*\*Skipped\|Not Run' "$LOG"; then
  echo "test.sh: error: tests were skipped under CI (a missing oracle?):" >&2
  grep '\*\*\*Skipped\|Not Run' "$LOG" >&2
  exit 1
fi
exit "$rc"
