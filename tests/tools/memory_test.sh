#!/usr/bin/env bash
# Resource bounds of gquant-quantize (issue 8, part 5): peak RSS stays within
# the memory bound the job computes and --max-memory enforces, a bound below
# it is refused up front naming the tensor, and a truncated input is refused
# with a clean error before anything is written.
#
#   memory_test.sh GQUANT_QUANTIZE MAKE_TEST_CHECKPOINT PEAK_RSS HQQ_RECIPE
set -euo pipefail
quantize=$1
make_checkpoint=$2
peak_rss=$3
hqq_recipe=$4

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# 2 layers of hidden 1024 and a 32768 x 1024 embedding (64 MiB, the largest
# tensor): ~116 MiB of bf16.
"$make_checkpoint" "$work/in" 2 1024 32768

for recipe in default "$hqq_recipe"; do
  name=$(basename "$recipe" .json)
  # The bound the job computes (a dry run writes nothing).
  "$quantize" --recipe="$recipe" --threads=2 --dry-run "$work/in" > "$work/plan.txt"
  bound=$(sed -n 's/^memory bound: \([0-9,]*\) bytes$/\1/p' "$work/plan.txt" | tr -d ,)
  [[ -n $bound ]] || fail "$name: no memory bound in the dry run's report"
  rm -rf "$work/out"
  rss_kib=$("$peak_rss" "$quantize" --recipe="$recipe" --output="$work/out" --threads=2 \
    --per_tensor=false --max-memory="$bound" "$work/in" 2> "$work/err.txt" | tail -1) ||
    { cat "$work/err.txt" >&2; fail "$name: gquant-quantize --max-memory=$bound failed"; }
  rss=$((rss_kib * 1024))
  echo "$name: peak RSS $rss bytes ($((rss >> 20)) MiB), bound $bound bytes ($((bound >> 20)) MiB)"
  ((rss <= bound)) || fail "$name: peak RSS $rss exceeds the bound $bound"

  # Below the bound: refused before anything is written, naming the tensor.
  rm -rf "$work/out"
  if "$quantize" --recipe="$recipe" --output="$work/out" --max-memory=$((bound - 1)) "$work/in" \
    > /dev/null 2> "$work/err.txt"; then
    fail "$name: --max-memory=$((bound - 1)) was accepted"
  fi
  grep -q "RESOURCE_EXHAUSTED.*--max-memory.*tensor '" "$work/err.txt" ||
    { cat "$work/err.txt" >&2; fail "$name: unexpected refusal message"; }
  [[ ! -e "$work/out" ]] || fail "$name: a refused job created its output directory"
done

# A truncated input: the header declares more bytes than the file holds.
mkdir "$work/truncated"
cp "$work/in/generation_config.json" "$work/truncated/"
head -c $(($(stat -c %s "$work/in/model.safetensors") - 4096)) "$work/in/model.safetensors" \
  > "$work/truncated/model.safetensors"
rm -rf "$work/out"
if "$quantize" --recipe=default --output="$work/out" "$work/truncated" > /dev/null \
  2> "$work/err.txt"; then
  fail "a truncated input was accepted"
fi
cat "$work/err.txt"
grep -q "OUT_OF_RANGE\|DATA_LOSS" "$work/err.txt" || fail "unexpected error for a truncated input"
[[ ! -e "$work/out" ]] || fail "a job on a truncated input created its output directory"
echo "PASS"
