#!/usr/bin/env bash
# Builds gquant's libFuzzer targets (clang, ASan + UBSan, library coverage
# instrumented) and runs each for a bounded time over a copy of its committed
# seed corpus (tests/fuzz/corpus/<target>; the copy grows, the committed one
# does not).
#
# Usage: tests/fuzz/run_fuzzers.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  default 30 (CI's smoke); RESULTS.md's runs used 600+
#   TARGET              default: all of them (names as in tests/fuzz/corpus/)
# Environment:
#   GQUANT_FUZZ_BUILD_DIR  build directory (default <repo>/build-fuzz)
#   GQUANT_FUZZ_JOBS       fuzzers run at once (default 1; each uses one core)
#   GQUANT_FUZZ_WORK_DIR   where corpus copies, logs and crash inputs go
#                          (default: a new directory under ${TMPDIR:-/tmp}, kept)
#   GQUANT_FUZZ_RSS_MB     -rss_limit_mb and -malloc_limit_mb (default 2048)
#   GQUANT_FUZZ_SKIP_BUILD=1  use the fuzzers already built in the build
#                          directory (the CMake target `fuzz` sets it)
#
# Prints, per target: executions, exec/s, coverage (cov = edges, ft =
# features, from libFuzzer's last status line), corpus size at the end.
# Exits non-zero when any target crashes, leaks, hits a sanitizer report, a
# timeout (-timeout, 10 s per input) or the memory limit; the offending input
# is in <work dir>/<target>/artifacts/ (reproduce: <fuzzer binary> <input>).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-30}
[ $# -gt 0 ] && shift
all_targets=(safetensors_header gguf_file recipe_json config_json gguf_unpack quantized_checkpoint
             image_decode)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
build=${GQUANT_FUZZ_BUILD_DIR:-$repo/build-fuzz}
jobs=${GQUANT_FUZZ_JOBS:-1}
rss_mb=${GQUANT_FUZZ_RSS_MB:-2048}
work=${GQUANT_FUZZ_WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gquant-fuzz.XXXXXX")}
mkdir -p "$work"

for target in "${targets[@]}"; do
  if [ ! -d "$repo/tests/fuzz/corpus/$target" ]; then
    echo "run_fuzzers: unknown target '$target' (expected one of: ${all_targets[*]})" >&2
    exit 2
  fi
done

if [ "${GQUANT_FUZZ_SKIP_BUILD:-0}" != 1 ]; then
  # ---- toolchain: clang 14 and its runtimes (libFuzzer, ASan) from Debian ----
  bash "$repo/tests/install_deps.sh" sanitizers

  # ---- build: only the fuzz targets and the library under them ----
  # The compiler is fixed at the first configure; later runs reuse the cache.
  compilers=()
  [ -f "$build/CMakeCache.txt" ] || compilers=(-DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14)
  cmake -S "$repo" -B "$build" -G Ninja "${compilers[@]}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGQUANT_ENABLE_CUDA=OFF -DGQUANT_BUILD_TESTS=OFF \
    -DGQUANT_BUILD_BENCH=OFF -DGQUANT_BUILD_EXAMPLES=OFF -DGQUANT_BUILD_FUZZERS=ON \
    -DGQUANT_SANITIZE=address,undefined,fuzzer-no-link >/dev/null
  cmake --build "$build" --target gquant_fuzzers -j"$(nproc)"
fi

# ---- run ----
run_one() {
  local target=$1 dir="$work/$1"
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -r "$repo/tests/fuzz/corpus/$target/." "$dir/corpus/"
  local dict=()
  [ -f "$repo/tests/fuzz/dict/$target.dict" ] && dict=(-dict="$repo/tests/fuzz/dict/$target.dict")
  local rc=0
  nice -n 10 "$build/tests/fuzz/gquant_fuzz_$target" "$dir/corpus" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" \
    -artifact_prefix="$dir/artifacts/" -print_final_stats=1 >"$dir/log" 2>&1 || rc=$?
  echo "$rc" >"$dir/rc"
}

echo "run_fuzzers: ${#targets[@]} targets, ${seconds} s each, $jobs at once; logs in $work"
running=0
for target in "${targets[@]}"; do
  run_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

# ---- report ----
failed=0
printf '%-22s %12s %8s %7s %7s %8s  %s\n' target executions exec/s cov ft corpus result
for target in "${targets[@]}"; do
  dir="$work/$target"
  log="$dir/log"
  rc=$(cat "$dir/rc" 2>/dev/null || echo 99)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  status_line=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")
  corpus=$(find "$dir/corpus" -type f | wc -l)
  result=ok
  if [ "$rc" != 0 ] || [ -n "$(ls -A "$dir/artifacts")" ]; then
    result="FAILED (exit $rc; $(ls "$dir/artifacts" | head -3 | tr '\n' ' '))"
    failed=1
  fi
  printf '%-22s %12s %8s %7s %7s %8s  %s\n' "$target" "${execs:-?}" "${speed:-?}" "${cov:-?}" \
    "${ft:-?}" "$corpus" "$result"
done
if [ "$failed" != 0 ]; then
  for target in "${targets[@]}"; do
    if [ "$(cat "$work/$target/rc")" != 0 ]; then
      echo "==== $target: end of $work/$target/log"
      grep -v '^#[0-9]' "$work/$target/log" | tail -40
    fi
  done
  exit 1
fi
