// Host dtype conversion throughput, against memcpy of the same output bytes
// as the ceiling. Reported as bytes of output written per second.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "gquant/dtype.h"

namespace gquant {
namespace {

// One Gemma 4 31B q_proj row block: 256 rows of 5376 (2.75 MB of bf16).
constexpr int64_t kElements = 256 * 5376;

std::vector<uint16_t> RandomBF16(int64_t n) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> out(n);
  for (auto& v : out) v = FloatToBFloat16(normal(rng));
  return out;
}

void BM_MemcpyFloatCeiling(benchmark::State& state) {
  std::vector<float> src(kElements, 1.5f), dst(kElements);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), kElements * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(state.iterations() * kElements * sizeof(float));
}
BENCHMARK(BM_MemcpyFloatCeiling);

void BM_ConvertToFloat(benchmark::State& state) {
  const DType dtype = static_cast<DType>(state.range(0));
  std::vector<uint16_t> src = RandomBF16(kElements);
  if (dtype == DType::kF16) {
    for (auto& v : src) v = FloatToHalf(BFloat16ToFloat(v));
  }
  std::vector<float> dst(kElements);
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(src.data()),
                                         src.size() * 2);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ConvertToFloat(dtype, bytes, dst).ok());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kElements * sizeof(float));
  state.SetLabel(std::string(DTypeName(dtype)));
}
BENCHMARK(BM_ConvertToFloat)
    ->Arg(static_cast<int>(DType::kBF16))
    ->Arg(static_cast<int>(DType::kF16));

}  // namespace
}  // namespace gquant
