#!/usr/bin/env bash
# Peak resident memory of gquant-quantize on a synthetic 2 GB checkpoint whose
# largest tensor is 256 MB (issue 3's bound: 3 x 256 MB + 200 MB = 968 MB).
# Usage: bash bench/measure_quantize_memory.sh BUILD_DIR [WORK_DIR]
set -euo pipefail
build=${1:?build dir}
work=${2:-$(mktemp -d)}
# Hidden 4096: the 256 MB embedding is 32768 rows; 6 layers of 320 MB each.
"$build/tests/tools/gquant_make_synthetic_checkpoint" "$work/in" 6 4096 32768
for recipe in default sensitive; do
  rm -rf "$work/out"
  /usr/bin/time -v "$build/gquant-quantize" --recipe=$recipe --output="$work/out" --per_tensor=false \
    "$work/in" > "$work/report.txt" 2> "$work/time.txt"
  tail -3 "$work/report.txt" | head -1
  echo "$recipe: peak RSS $(awk '/Maximum resident/{print $6}' "$work/time.txt") KB," \
       "wall $(awk '/Elapsed/{print $8}' "$work/time.txt"), input $(du -m "$work/in/model.safetensors" | cut -f1) MB," \
       "output $(du -m "$work/out/model.safetensors" | cut -f1) MB"
done
