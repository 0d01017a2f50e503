#!/usr/bin/env bash
# Crash safety of gquant-quantize (issue 8, part 4): SIGKILL at random points
# never leaves a partial file under a final name nor mixes the previous
# output with the new one, and --resume after a kill gives the bytes of an
# uninterrupted run.
#
#   kill_resume_test.sh GQUANT_QUANTIZE MAKE_TEST_CHECKPOINT HQQ_RECIPE
#
# The kill points come from bash's RANDOM seeded with GQUANT_KILL_SEED (or
# the clock); the seed is printed so a failure can be replayed.
set -euo pipefail
quantize=$1
make_checkpoint=$2
hqq_recipe=$3
seed=${GQUANT_KILL_SEED:-$(($(date +%s%N) % 1000000))}
echo "kill test seed: $seed (replay: GQUANT_KILL_SEED=$seed)"
RANDOM=$seed
kills=${GQUANT_KILLS:-8}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL (seed $seed): $*" >&2
  ls -la "$work/out" >&2 || true
  exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

"$make_checkpoint" "$work/in" 4 512 4096

# quantize RECIPE OUT [FLAGS...]: one run to completion.
quantize() {
  local recipe=$1 out=$2
  shift 2
  "$quantize" --recipe="$recipe" --output="$out" --threads=2 --per_tensor=false "$@" "$work/in" \
    > "$work/log.txt" 2>&1 || { cat "$work/log.txt" >&2; fail "gquant-quantize $* failed"; }
}

# The previous output (min-max, the default recipe) and the new one (HQQ),
# each from an uninterrupted run; a kill must leave every final name holding
# one of these two versions.
quantize default "$work/old"
start=$(now_ms)
quantize "$hqq_recipe" "$work/new"
full_ms=$(($(now_ms) - start))
echo "uninterrupted HQQ run: $full_ms ms"
cmp -s "$work/old/model.safetensors" "$work/new/model.safetensors" &&
  fail "the two recipes gave the same weights; the test could not tell them apart"

# Same FILE and REFERENCE, but a report compares without its "seconds" line.
same() {
  local file=$1 reference=$2
  [[ -f $reference ]] || return 1
  if [[ $(basename "$file") == quantize_report.json ]]; then
    cmp -s <(grep -v '"seconds"' "$file") <(grep -v '"seconds"' "$reference")
  else
    cmp -s "$file" "$reference"
  fi
}

# Every entry of out/ is a final name holding the old or the new version, or
# a `.<name>.tmp.*` leftover; no final name of the old output is missing.
check_output() {
  local entry name
  for entry in "$work/out"/* "$work/out"/.[!.]*; do
    [[ -e $entry ]] || continue
    name=$(basename "$entry")
    if [[ $name =~ ^\..+\.tmp\..+$ ]]; then continue; fi
    same "$entry" "$work/old/$name" || same "$entry" "$work/new/$name" ||
      fail "after a kill at $1 ms, '$name' is neither the previous nor the new version"
  done
  for entry in "$work/old"/*; do
    [[ -e "$work/out/$(basename "$entry")" ]] ||
      fail "after a kill at $1 ms, '$(basename "$entry")' of the previous output is gone"
  done
}

cp -a "$work/old" "$work/out"
for ((i = 0; i < kills; ++i)); do
  delay_ms=$((RANDOM % (full_ms + full_ms / 4 + 1)))
  flags=()
  ((i % 2 == 1)) && flags=(--resume)
  "$quantize" --recipe="$hqq_recipe" --output="$work/out" --threads=2 --per_tensor=false \
    "${flags[@]}" "$work/in" > "$work/kill_log.txt" 2>&1 &
  pid=$!
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  kill -9 "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  echo "kill $i at $delay_ms ms ${flags[*]}: $(ls -A "$work/out" | tr '\n' ' ')"
  check_output "$delay_ms"
done

# A kill after the first checkpoint: --resume must reuse what it recorded.
# The previous kill's manifest goes first, so only this run's can be seen.
manifest="$work/out/.model.safetensors.tmp.progress.json"
rm -f "$manifest"
"$quantize" --recipe="$hqq_recipe" --output="$work/out" --threads=2 --per_tensor=false \
  "$work/in" > "$work/kill_log.txt" 2>&1 &
pid=$!
deadline=$(($(now_ms) + 4 * full_ms + 5000))
until grep -q '"name"' "$manifest" 2> /dev/null; do
  (($(now_ms) < deadline)) || fail "no resume checkpoint appeared"
  kill -0 "$pid" 2> /dev/null || fail "the run ended before its first checkpoint"
  sleep 0.01
done
kill -9 "$pid"
wait "$pid" 2> /dev/null || true
check_output "first checkpoint"
quantize "$hqq_recipe" "$work/out" --resume
grep -E "resume: reused [1-9][0-9]* quantized tensors" "$work/log.txt" ||
  { cat "$work/log.txt" >&2; fail "--resume reused nothing after a checkpoint"; }

# The resumed output is the uninterrupted one, byte for byte, with no leftovers.
[[ "$(ls -A "$work/out")" == "$(ls -A "$work/new")" ]] ||
  fail "files differ: $(ls -A "$work/out" | tr '\n' ' ') vs $(ls -A "$work/new" | tr '\n' ' ')"
for entry in "$work/new"/*; do
  same "$work/out/$(basename "$entry")" "$entry" || fail "$(basename "$entry") differs after --resume"
done
echo "PASS: $kills kills, resume byte-identical"
