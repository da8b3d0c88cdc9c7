#!/usr/bin/env bash
# Installs every build, test and benchmark dependency from Debian (and npm for the tokenizer oracle).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
PKGS="build-essential cmake ninja-build pkg-config libtorch-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest libbenchmark-dev python3-torch python3-numpy bible-kjv bible-kjv-text libpcre2-dev libutf8proc-dev libopenblas0-openmp libgloo-dev"
# libopenblas0-openmp replaces the reference BLAS that libtorch-dev links by default (about 100x faster fp32 matmuls).
# nodejs and npm: the tokenizer conformance test uses them if present (installed separately below).
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
# npm is only a test-time oracle: install Debian's nodejs+npm if no node toolchain is present.
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm || echo "setup: npm unavailable; the tokenizer conformance test will skip" >&2
fi
