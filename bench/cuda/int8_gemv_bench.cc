// Int8 ("cuda_int8_rows") decode GEMV, row dequantizer and embedding gather
// on the Gemma 4 31B shapes, against the baselines measured in the same run:
// the device copy ceiling (cudaMemcpy D2D of 1 GiB, bytes read + written)
// and cuBLAS bf16 GEMM at the same M, N, K. Weight buffers rotate over
// >= 256 MiB so L2 (50 MiB) never holds them; each timed iteration is kBatch
// back-to-back launches between two events, the time reported per launch.
// Counters: weight_GBps = bytes of codes + params (or of the bf16 matrix)
// per second for the GEMVs, bytes read + written for the dequantizer and
// the gather; copy_GBps = the copy ceiling.
#include <cuda_bf16.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cuda_bench_util.h"
#include "embedding_gather.cuh"
#include "int8_dequantize.cuh"
#include "int8_gemv.cuh"

namespace gquant::cuda {
namespace {

using namespace bench;

// Rotating device copies of one int8 weight: random codes and params
// (scale, zero) = (2^-7, 0), the symmetric form (the speed does not depend
// on the values). group 0 = per-row.
struct Int8Weights {
  int64_t n, k, group;
  int64_t bytes;  // codes + params of one copy
  int copies;
  std::vector<DeviceBuffer<int8_t>> codes;
  std::vector<DeviceBuffer<float>> params;

  Int8Weights(int64_t rows, int64_t cols, int64_t group_size)
      : n(rows), k(cols), group(group_size != 0 ? group_size : cols) {
    const int64_t param_floats = 2 * n * (k / group);
    bytes = n * k + param_floats * 4;
    copies = Copies(bytes);
    codes = RandomCopies<int8_t>(n * k, copies, 1);
    std::vector<float> host(param_floats, 0.0f);
    for (int64_t i = 0; i < param_floats; i += 2) host[i] = 0.0078125f;
    for (int c = 0; c < copies; ++c) params.push_back(Upload(host));
  }
  Int8RowsWeight View(int64_t i) const {
    return {codes[i % copies].data(),
            reinterpret_cast<const float2*>(params[i % copies].data()),
            n,
            k,
            group,
            false};
  }
};

// The weights of the last (N, K, group) asked for: consecutive benchmarks
// of one shape and group (registered in that order) reuse them instead of
// regenerating up to 1.4 GB of random codes each.
const Int8Weights& CachedWeights(int64_t n, int64_t k, int64_t group) {
  static std::unique_ptr<Int8Weights> cached;
  if (cached == nullptr || cached->n != n || cached->k != k ||
      cached->group != (group != 0 ? group : k)) {
    cached.reset();  // free the device memory first
    cached = std::make_unique<Int8Weights>(n, k, group);
  }
  return *cached;
}

std::string GroupLabel(int64_t group) {
  return group == 0 ? "int8 per-row" : "int8 g" + std::to_string(group) + " sym";
}

// Args: shape index, M, group size (0 = per-row), variant = 100 * ring
// stages + warps per multiprocessor (0 = defaults); 1000: the defaults without programmatic
// dependent launch; 2000: the defaults replayed from a CUDA graph; 3000: the
// first weights requested after the predecessor wait (M = 1), from a graph;
// 4000 / 5000: the rounds / one-wave grid whatever the shape.
void BM_Int8Gemv(benchmark::State& state) {
  if (NoGpu(state)) return;
  const LinearShape& s = kShapes[state.range(0)];
  const int m = static_cast<int>(state.range(1));
  const int variant = static_cast<int>(state.range(3));
  const Int8GemvTuning tuning{.warps_per_sm = variant % 100,
                              .serial_launch = variant == 1000,
                              .late_weights = variant == 3000,
                              .stages = variant < 1000 ? variant / 100 : 0,
                              .schedule = variant == 4000   ? Int8GemvTuning::kRounds
                                          : variant == 5000 ? Int8GemvTuning::kOneWave
                                                            : Int8GemvTuning::kByShape};
  const Int8Weights& w = CachedWeights(s.n, s.k, state.range(2));
  auto x = Upload(RandomHost<uint16_t>(m * s.k, 99));
  auto y = DeviceBuffer<uint16_t>::Allocate(m * s.n);
  if (!y.ok()) std::abort();
  const auto launch = [&](int64_t i, cudaStream_t stream) {
    if (!Int8Gemv(w.View(i), reinterpret_cast<const __nv_bfloat16*>(x.data()), m,
                  reinterpret_cast<__nv_bfloat16*>(y->data()), stream, tuning)
             .ok()) {
      std::abort();
    }
  };
  if (variant == 2000 || variant == 3000) {
    TimeGraphLaunches(state, launch);
  } else {
    TimeLaunches(state, [&](int64_t i) { launch(i, nullptr); });
  }
  Report(state, w.bytes);
  state.SetLabel(std::string(s.name) + " " + GroupLabel(state.range(2)) +
                 (variant == 1000   ? ", serial launch"
                  : variant == 2000 ? ", graph"
                  : variant == 3000 ? ", graph, late weights"
                  : variant == 4000 ? ", rounds"
                  : variant == 5000 ? ", one wave"
                                    : ""));
}

// cuBLAS bf16 at the same shapes and M (the baseline of the same run).
void BM_Int8GemvCublasBf16(benchmark::State& state) {
  if (NoGpu(state)) return;
  const LinearShape& s = kShapes[state.range(0)];
  TimeCublasBf16(state, s, static_cast<int>(state.range(1)));
  state.SetLabel(std::string(s.name) + " cublas bf16");
}

// Dequantizing all of gate_up (the prefill path's cost per weight). Args:
// group size (0 = per-row), max_blocks (0 = default).
void BM_DequantizeInt8Rows(benchmark::State& state) {
  if (NoGpu(state)) return;
  const LinearShape& s = kShapes[6];  // gate_up
  const Int8Weights& w = CachedWeights(s.n, s.k, state.range(0));
  auto out = DeviceBuffer<uint16_t>::Allocate(s.n * s.k);
  if (!out.ok()) std::abort();
  const int max_blocks = static_cast<int>(state.range(1));
  TimeLaunches(state, [&](int64_t i) {
    if (!DequantizeInt8Rows(w.View(i), 0, s.n, reinterpret_cast<__nv_bfloat16*>(out->data()),
                            nullptr, max_blocks)
             .ok()) {
      std::abort();
    }
  });
  Report(state, w.bytes + s.n * s.k * 2);
  state.SetLabel(std::string(s.name) + " " + GroupLabel(state.range(0)) + " -> bf16");
}

// The 262144 x 5376 per-row embedding table (the lm_head's), `count`
// random ids per launch, rotating over 64 id sets so successive launches
// read different rows. Arg: count.
void BM_GatherInt8Rows(benchmark::State& state) {
  if (NoGpu(state)) return;
  constexpr int64_t kVocab = 262144, kHidden = 5376;
  constexpr int kIdSets = 64;
  const int count = static_cast<int>(state.range(0));
  const Int8Weights& table = CachedWeights(kVocab, kHidden, 0);  // one copy: 1.4 GB
  std::vector<int32_t> ids(int64_t{kIdSets} * count);
  const std::vector<uint32_t> random = RandomHost<uint32_t>(ids.size(), 5);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(random[i] % kVocab);
  auto ids_d = Upload(ids);
  auto out = DeviceBuffer<uint16_t>::Allocate(count * kHidden);
  if (!out.ok()) std::abort();
  const float multiplier = 73.3212f;  // sqrt(5376)
  TimeLaunches(state, [&](int64_t i) {
    if (!GatherInt8Rows(table.View(0), ids_d.data() + (i % kIdSets) * count, count, multiplier,
                        reinterpret_cast<__nv_bfloat16*>(out->data()), nullptr)
             .ok()) {
      std::abort();
    }
  });
  Report(state, count * (kHidden + 8 + kHidden * 2));  // codes + params read, bf16 written
  state.SetLabel("embedding 262144x5376 int8 per-row, " + std::to_string(count) + " ids");
}

// Every shape at M = 1, 4, 8, 16 for g32 and per-row, M = 1 for g16; `variants` adds the
// knob values for g32 at M = 1 and 16. Shape and
// group outermost, so CachedWeights hits.
void Shapes(benchmark::internal::Benchmark* b, std::initializer_list<int> variants) {
  for (int shape = 0; shape < static_cast<int>(kShapes.size()); ++shape) {
    for (int group : {32, 16, 0}) {
      for (int m : {1, 4, 8, 16}) {
        if (group == 16 && m != 1) continue;  // GGUF Q6_K's group, at M = 1 only
        b->Args({shape, m, group, 0});
        if (group != 32 && m == 1) {
          b->Args({shape, m, group, 4000});
          b->Args({shape, m, group, 5000});
        }
        if (group == 32 && (m == 1 || m == 16)) {
          for (int v : variants) b->Args({shape, m, group, v});
        }
      }
    }
  }
}

BENCHMARK(BM_Int8Gemv)
    ->ArgNames({"shape", "m", "group", "variant"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      Shapes(b, {1000, 2000, 3000, 4000, 5000, 400, 8, 12, 24});
    })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
// Right after the GEMVs, whose last weights (lm_head per-row) are its table.
BENCHMARK(BM_GatherInt8Rows)
    ->ArgNames({"count"})
    ->Arg(1)
    ->Arg(2048)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_Int8GemvCublasBf16)
    ->ArgNames({"shape", "m"})
    ->ArgsProduct({benchmark::CreateDenseRange(0, static_cast<int>(kShapes.size()) - 1, 1),
                   {1, 4, 8, 16}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_DequantizeInt8Rows)
    ->ArgNames({"group", "max_blocks"})
    ->Args({32, 0})
    ->Args({32, 264})
    ->Args({0, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);

}  // namespace
}  // namespace gquant::cuda
