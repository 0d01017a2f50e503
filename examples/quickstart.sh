#!/usr/bin/env bash
# The main job on the bundled tiny Gemma 4 checkpoint: build gquant, inspect
# the checkpoint, quantize it with the default recipe and print the report
# (per rule: tensors and bytes; per tensor: relative error and SNR; then the
# quantized model's KL divergence and top-1 agreement against the original on
# the CPU), and generate a few tokens with the quantized model on the CPU; then
# the same for an image prompt on the bundled tiny multimodal checkpoint
# (vision tower quantized int8, its embedder's activations calibrated).
# Usage (as root on Debian 12): bash examples/quickstart.sh [checkpoint-dir] [recipe]
# (On a full-size checkpoint the CPU steps, --eval and gquant-generate, take
# long: they run the float32 reference forward.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install_deps.sh
build=build-quickstart
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGQUANT_BUILD_TESTS=OFF -DGQUANT_BUILD_BENCH=OFF -DGQUANT_ENABLE_CUDA=OFF
cmake --build "$build" -j "$(nproc)" --target gquant-inspect gquant-quantize gquant-generate
input=${1:-tests/data/tiny-31b/bf16}
"$build/gquant-inspect" --tensors=false "$input"
echo
"$build/gquant-quantize" --recipe="${2:-default}" --eval --output="$build/quantized" "$input"
echo
"$build/gquant-inspect" --tensors=false "$build/quantized"
echo
# Token ids (no tokenizer yet): BOS (2) and 11 more, longer than the tiny
# model's sliding window of 8; greedy, 8 new tokens.
"$build/examples/gquant-generate" --prompt="2 17 301 44 93 250 7 128 400 61 5 222" --max-new-tokens=8 \
  "$build/quantized"
echo
# An image prompt: the tiny 31B-style checkpoint with a vision tower. One image
# placeholder (id 501 in this tiny vocabulary) becomes BOI + 60 soft tokens +
# EOI; the PNG is decoded, resized and patchified as Hugging Face does.
vision=tests/data/tiny-31b-vision
"$build/gquant-quantize" --recipe="${2:-default}" --output="$build/quantized-vision" \
  --calibrate-images="$vision/image.png" --held-out-images=tests/data/tiny-e2b-vision/image.png \
  --image-tokens=70 "$vision/bf16"
echo
"$build/examples/gquant-generate" --prompt="2 9 127 102 501 17 469 234 92" --image="$vision/image.png" \
  --image-tokens=70 --max-new-tokens=8 "$build/quantized-vision"
