#!/usr/bin/env bash
# The main job on the bundled tiny Gemma 4 checkpoint: build gquant and inspect
# the checkpoint (tensors, dtypes, parameter count, config summary).
# Usage (as root on Debian 12): bash examples/quickstart.sh [checkpoint-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install_deps.sh
cmake -S . -B build-quickstart -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGQUANT_BUILD_TESTS=OFF -DGQUANT_BUILD_BENCH=OFF -DGQUANT_ENABLE_CUDA=OFF
cmake --build build-quickstart -j "$(nproc)" --target gquant-inspect
./build-quickstart/gquant-inspect "${1:-tests/data/tiny-31b/bf16}"
