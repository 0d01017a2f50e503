#!/usr/bin/env bash
# Peak resident memory of gquant-gguf export and convert on a synthetic
# checkpoint (default: 2 GB of bf16, largest tensor 256 MB), to check that both
# stream one tensor at a time.
# Usage: bash bench/measure_gguf_memory.sh BUILD_DIR [WORK_DIR] [TOTAL_MB] [LARGEST_MB]
set -euo pipefail
build=${1:?build dir}
work=${2:-$(mktemp -d)}
total=${3:-2048}
largest=${4:-256}
# Hidden 4096: the embedding holds LARGEST_MB, each layer 320 MB, as many as
# reach TOTAL_MB.
"$build/tests/tools/gquant_make_synthetic_checkpoint" "$work/in" \
  $(((total - largest + 319) / 320 > 0 ? (total - largest + 319) / 320 : 1)) 4096 $((largest * 128))
rss() { awk '/Maximum resident/{print $6}' "$1"; }
wall() { awk '/Elapsed/{print $8}' "$1"; }
/usr/bin/time -v "$build/gquant-gguf" export "$work/in" --out "$work/model.gguf" \
  > "$work/export.txt" 2> "$work/export_time.txt"
echo "export (default recipe): peak RSS $(rss "$work/export_time.txt") KB, wall $(wall "$work/export_time.txt")," \
     "input $(du -m "$work/in/model.safetensors" | cut -f1) MB, GGUF $(du -m "$work/model.gguf" | cut -f1) MB"
rm -rf "$work/out"
/usr/bin/time -v "$build/gquant-gguf" convert "$work/model.gguf" --out "$work/out" \
  > "$work/convert.txt" 2> "$work/convert_time.txt"
echo "convert: peak RSS $(rss "$work/convert_time.txt") KB, wall $(wall "$work/convert_time.txt")," \
     "output $(du -m "$work/out/model.safetensors" | cut -f1) MB"
