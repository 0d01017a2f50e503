// Host quantizer throughput on a Gemma 4 31B MLP projection shape
// ([21504, 5376] bf16, 231 MB, normal with std 0.02 like trained weights),
// reported as bytes of bf16 input per second. The ceiling is a plain memcpy
// of the same bf16 bytes, measured in this binary; each quantize benchmark
// also reports `vs_memcpy`, its throughput over that ceiling's (best of 5
// memcpy passes, taken once per process).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gquant/dtype.h"
#include "gquant/quantize.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

constexpr int64_t kRows = 21504;
constexpr int64_t kCols = 5376;
// HQQ makes ~22 passes over the weight, with scalar inner loops (a pow call
// per residual above the shrink threshold, rare at this weight scale): it
// runs on a 1024-row slice, ~0.3 s per call on one core.
constexpr int64_t kHqqRows = 1024;

const std::vector<uint16_t>& Weight() {
  static const std::vector<uint16_t>* weight = [] {
    auto* w = new std::vector<uint16_t>(kRows * kCols);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (auto& v : *w) v = FloatToBFloat16(normal(rng));
    return w;
  }();
  return *weight;
}

std::span<const std::byte> WeightBytes(int64_t rows) {
  return {reinterpret_cast<const std::byte*>(Weight().data()),
          static_cast<size_t>(rows * kCols * 2)};
}

// Best of a few memcpy passes over the bf16 bytes, in bytes per second.
double MemcpyBytesPerSecond() {
  static const double rate = [] {
    const auto src = WeightBytes(kRows);
    std::vector<std::byte> dst(src.size());
    double best = 0;
    for (int rep = 0; rep < 5; ++rep) {
      const auto start = std::chrono::steady_clock::now();
      std::memcpy(dst.data(), src.data(), src.size());
      benchmark::DoNotOptimize(dst.data());
      const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
      best = std::max(best, static_cast<double>(src.size()) / elapsed.count());
    }
    return best;
  }();
  return rate;
}

// `seconds`: wall time of the timed loop, measured by the caller (counters
// flagged as rates would print a misleading "/s").
void SetThroughput(benchmark::State& state, int64_t rows, double seconds) {
  const double bytes = static_cast<double>(rows * kCols * 2);
  state.SetBytesProcessed(state.iterations() * rows * kCols * 2);
  state.counters["vs_memcpy"] =
      bytes * static_cast<double>(state.iterations()) / seconds / MemcpyBytesPerSecond();
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void BM_QuantizeMemcpyCeiling(benchmark::State& state) {
  const auto src = WeightBytes(kRows);
  std::vector<std::byte> dst(src.size());
  MemcpyBytesPerSecond();
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), src.size());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  SetThroughput(state, kRows, SecondsSince(start));
}
BENCHMARK(BM_QuantizeMemcpyCeiling)->Unit(benchmark::kMillisecond)->UseRealTime();

// Args: bits, group size (0 = per row), symmetric, method, threads, rows,
// error stats.
void BM_Quantize(benchmark::State& state) {
  QuantConfig config;
  config.bits = static_cast<int>(state.range(0));
  config.group_size = static_cast<int>(state.range(1));
  config.symmetric = state.range(2) != 0;
  config.method = static_cast<QuantMethod>(state.range(3));
  const int threads = static_cast<int>(state.range(4));
  const int64_t rows = state.range(5);
  const int64_t group = config.group_size == kPerRowGroupSize ? kCols : config.group_size;
  std::vector<int8_t> codes(rows * kCols);
  std::vector<float> scale(rows * kCols / group), zero(rows * kCols / group);
  ThreadPool pool(threads);
  ErrorStats stats;
  QuantizeOptions options;
  options.pool = &pool;
  if (state.range(6) != 0) options.error_stats = &stats;
  const auto weight = WeightBytes(rows);
  MemcpyBytesPerSecond();  // measured before, not inside, the timed loop
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const absl::Status status =
        Quantize(config, DType::kBF16, weight, rows, kCols, {codes, scale, zero}, options);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      return;
    }
    benchmark::ClobberMemory();
  }
  SetThroughput(state, rows, SecondsSince(start));
  state.SetLabel(absl::StrFormat(
      "%s int%d %s %s, %d thread%s, [%d, %d]%s", std::string(QuantMethodName(config.method)),
      config.bits, config.symmetric ? "sym" : "asym",
      config.group_size == kPerRowGroupSize ? "per-row" : absl::StrFormat("gs%d", group), threads,
      threads == 1 ? "" : "s", rows, kCols, state.range(6) != 0 ? ", error stats" : ""));
}

constexpr int kMinMax = static_cast<int>(QuantMethod::kMinMax);
constexpr int kHqq = static_cast<int>(QuantMethod::kHqq);

BENCHMARK(BM_Quantize)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ArgNames({"bits", "gs", "sym", "method", "threads", "rows", "stats"})
    // min-max, the Gemma recipes' three shapes, 1 and 2 threads
    ->Args({4, 32, 0, kMinMax, 1, kRows, 0})
    ->Args({4, 32, 0, kMinMax, 2, kRows, 0})
    ->Args({8, kPerRowGroupSize, 1, kMinMax, 1, kRows, 0})
    ->Args({8, kPerRowGroupSize, 1, kMinMax, 2, kRows, 0})
    ->Args({8, 32, 1, kMinMax, 1, kRows, 0})
    ->Args({8, 32, 1, kMinMax, 2, kRows, 0})
    // with the fused error statistics the quantize tool asks for
    ->Args({4, 32, 0, kMinMax, 1, kRows, 1})
    // a 32-row slice that stays in L2: the kernel's compute alone
    ->Args({4, 32, 0, kMinMax, 1, 32, 0})
    // HQQ on a row slice
    ->Args({4, 32, 0, kHqq, 1, kHqqRows, 0})
    ->Args({4, 32, 0, kHqq, 2, kHqqRows, 0})
    ->Args({4, 32, 1, kHqq, 1, kHqqRows, 0});

}  // namespace
}  // namespace gquant
