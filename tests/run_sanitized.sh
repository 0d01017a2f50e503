#!/usr/bin/env bash
# The host tests under AddressSanitizer + UndefinedBehaviorSanitizer, then a
# short run of every fuzz target, from one clang build (the library is built
# once with address,undefined,fuzzer-no-link and serves both).
# Usage (as root on Debian 12): bash tests/run_sanitized.sh [build-dir] [fuzz-seconds]
# CI calls it after the README's test command (.ci/run). CUDA is off: the
# sanitizers cover host code, and [cuda] tests would skip anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-sanitize}
seconds=${2:-15}
bash tests/install_deps.sh sanitizers
compilers=()
[ -f "$build/CMakeCache.txt" ] || compilers=(-DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14)
# -O1 -g1 keeps reports' line numbers and the build short on CI's two cores
# (measured: all 99 objects in about 6 minutes; -O2 -g had built 10 in 3).
cmake -S . -B "$build" -G Ninja "${compilers[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DGQUANT_ENABLE_CUDA=OFF -DGQUANT_BUILD_BENCH=OFF -DGQUANT_BUILD_EXAMPLES=OFF \
  -DGQUANT_BUILD_FUZZERS=ON -DGQUANT_SANITIZE=address,undefined,fuzzer-no-link
cmake --build "$build" -j "$(nproc)"
# detect_leaks: LeakSanitizer too. Left out: the consumer test (it builds an
# installed package with the system compiler, which knows nothing of the
# sanitizers) and tools:memory (ASan's shadow memory and quarantine inflate
# the peak RSS it bounds).
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$build" --output-on-failure -j "$(nproc)" -E '^(install_consumer|tools:memory)$'
GQUANT_FUZZ_SKIP_BUILD=1 GQUANT_FUZZ_BUILD_DIR="$PWD/$build" GQUANT_FUZZ_JOBS="$(nproc)" \
  bash tests/fuzz/run_fuzzers.sh "$seconds"
