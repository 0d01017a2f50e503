// Host throughput on a Gemma 4 31B MLP projection shape ([5376, 21504]) of
//   * the ggml reference decoders (Q4_K, Q6_K, Q8_0) to float32, reported as
//     bytes of float32 output per second;
//   * unpacking the same blocks into gquant's lossless quantized form
//     (gguf_unpack.h: codes, scales and mins packed for the checkpoint),
//     reported as GGUF bytes consumed per second. Blocks come from
// QuantizeGgmlRef on normal data with std 0.02 (never zeros, which would skip
// no work but give degenerate scales). The ceiling is a plain memcpy of the
// same float32 output bytes, measured in this binary.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf_unpack.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

constexpr int64_t kRows = 5376;
constexpr int64_t kCols = 21504;  // a multiple of 256, so whole K-quant blocks per row

const std::vector<float>& Weight() {
  static const std::vector<float>* weight = [] {
    auto* w = new std::vector<float>(kRows * kCols);
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (float& v : *w) v = normal(rng);
    return w;
  }();
  return *weight;
}

// The weight quantized to `type`, made once per type per process.
const std::vector<std::byte>& Blocks(GgmlType type) {
  static std::vector<std::byte>* cache[kGgmlTypeIdCount] = {};
  std::vector<std::byte>*& blocks = cache[static_cast<uint32_t>(type)];
  if (blocks == nullptr) {
    const uint64_t row_bytes = *GgmlRowBytes(type, kCols);
    blocks = new std::vector<std::byte>(row_bytes * kRows);
    ThreadPool pool(0);
    pool.ParallelFor(kRows, 16, [&](int64_t begin, int64_t end) {
      const absl::Status status = QuantizeGgmlRef(
          type, std::span<const float>(Weight()).subspan(begin * kCols, (end - begin) * kCols),
          std::span<std::byte>(*blocks).subspan(begin * row_bytes, (end - begin) * row_bytes));
      if (!status.ok()) std::abort();
    });
  }
  return *blocks;
}

// Args: ggml type id, threads (0 = all hardware threads).
void BM_GgmlDequantize(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const std::vector<std::byte>& blocks = Blocks(type);
  const uint64_t row_bytes = blocks.size() / kRows;
  std::vector<float> out(kRows * kCols);
  ThreadPool pool(static_cast<int>(state.range(1)));
  for (auto _ : state) {
    pool.ParallelFor(kRows, 16, [&](int64_t begin, int64_t end) {
      const absl::Status status = DequantizeGgml(
          type,
          std::span<const std::byte>(blocks).subspan(begin * row_bytes, (end - begin) * row_bytes),
          std::span<float>(out).subspan(begin * kCols, (end - begin) * kCols));
      if (!status.ok()) std::abort();
    });
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * static_cast<int64_t>(sizeof(float)));
  state.SetLabel(absl::StrFormat(
      "%s -> f32, %d thread%s, [%d, %d]", std::string(kGgmlTypeTraits[state.range(0)].name),
      pool.num_threads(), pool.num_threads() == 1 ? "" : "s", kRows, kCols));
}

constexpr int kQ4K = static_cast<int>(GgmlType::kQ4_K);
constexpr int kQ6K = static_cast<int>(GgmlType::kQ6_K);
constexpr int kQ8_0 = static_cast<int>(GgmlType::kQ8_0);

// Q4_K, Q6_K and Q8_0, each on one thread and on all of them.
void TypesAndThreads(benchmark::internal::Benchmark* b) {
  b->ArgNames({"type", "threads"});
  for (int type : {kQ4K, kQ6K, kQ8_0}) {
    for (int threads : {1, 0}) b->Args({type, threads});
  }
}

BENCHMARK(BM_GgmlDequantize)->Unit(benchmark::kMillisecond)->UseRealTime()->Apply(TypesAndThreads);

// Args: ggml type id, threads (0 = all hardware threads).
void BM_GgufUnpack(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const std::vector<std::byte>& blocks = Blocks(type);
  ThreadPool pool(static_cast<int>(state.range(1)));
  int64_t packed_bytes = 0;
  for (auto _ : state) {
    absl::StatusOr<PackedWeight> packed =
        UnpackGgufWeight("blk.0.ffn_up.weight", {kRows, kCols}, type, blocks, &pool);
    if (!packed.ok()) std::abort();
    packed_bytes = packed->layout().num_bytes();
    benchmark::DoNotOptimize(packed->qdata().data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(blocks.size()));
  state.SetLabel(absl::StrFormat("%s -> gquant (%d -> %d bytes), %d thread%s",
                                 std::string(kGgmlTypeTraits[state.range(0)].name), blocks.size(),
                                 packed_bytes, pool.num_threads(),
                                 pool.num_threads() == 1 ? "" : "s"));
}
BENCHMARK(BM_GgufUnpack)->Unit(benchmark::kMillisecond)->UseRealTime()->Apply(TypesAndThreads);

// The ceiling: copying the float32 output bytes, split over rows like the
// decoders. Args: threads (0 = all hardware threads).
void BM_GgufMemcpyCeiling(benchmark::State& state) {
  const std::vector<float>& src = Weight();
  std::vector<float> dst(src.size());
  ThreadPool pool(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    pool.ParallelFor(kRows, 16, [&](int64_t begin, int64_t end) {
      std::memcpy(dst.data() + begin * kCols, src.data() + begin * kCols,
                  (end - begin) * kCols * sizeof(float));
    });
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * static_cast<int64_t>(sizeof(float)));
  state.SetLabel(
      absl::StrFormat("%d thread%s", pool.num_threads(), pool.num_threads() == 1 ? "" : "s"));
}
BENCHMARK(BM_GgufMemcpyCeiling)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(0);

}  // namespace
}  // namespace gquant
