#!/usr/bin/env bash
# Builds gquant with its tests and runs the whole suite with ctest.
# Usage (as root on Debian 12): bash tests/run_tests.sh [build-dir]
# The CUDA backend is built when nvcc is found; its [cuda] tests skip without
# a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install_deps.sh
build=${1:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
