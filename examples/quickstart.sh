#!/usr/bin/env bash
# The main job on the bundled tiny Gemma 4 checkpoint: build gquant, inspect
# the checkpoint, quantize it with the default recipe and print the report
# (per rule: tensors and bytes; per tensor: relative error and SNR).
# Usage (as root on Debian 12): bash examples/quickstart.sh [checkpoint-dir] [recipe]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install_deps.sh
build=build-quickstart
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGQUANT_BUILD_TESTS=OFF -DGQUANT_BUILD_BENCH=OFF -DGQUANT_ENABLE_CUDA=OFF
cmake --build "$build" -j "$(nproc)" --target gquant-inspect gquant-quantize
input=${1:-tests/data/tiny-31b/bf16}
"$build/gquant-inspect" --tensors=false "$input"
echo
"$build/gquant-quantize" --recipe="${2:-default}" --output="$build/quantized" "$input"
echo
"$build/gquant-inspect" --tensors=false "$build/quantized"
