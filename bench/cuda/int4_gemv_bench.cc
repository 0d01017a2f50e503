// Decode-time int4 GEMV on the Gemma 4 31B linear shapes, against the two
// baselines measured in the same run: the device copy ceiling (cudaMemcpy
// D2D of 1 GiB, bytes read + written) and cuBLAS bf16 GEMM at the same M, N, K.
// Weight buffers rotate over >= 256 MiB so L2 (50 MiB) never holds them. Each
// timed iteration is kBatch back-to-back launches (as decode issues them, in
// a stream or graph) between two events; the time reported is per launch.
// Counters: weight_GBps = bytes of packed weights + scales (or of the bf16
// matrix) per second, copy_GBps = the copy ceiling.
#include <algorithm>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_bench_util.h"
#include "int4_mma_gemv.cuh"
#include "int4_problem.h"
#include "rms_norm.cuh"

namespace gquant::cuda {
namespace {

using namespace bench;

// Knob settings compared at M = 1 (variant 0 is the default).
struct Variant {
  const char* label;
  Int4MmaTuning tuning;
};
const Variant kVariants[] = {
    {"", {}},
    {"serial launch", {.serial_launch = true}},
    {"4 stages", {.stages = 4}},
    {"1 row tile", {.row_tiles = 1}},
    {"2 row tiles", {.row_tiles = 2}},
    {"8 warps/SM", {.warps_per_sm = 8}},
    {"12 warps/SM", {.warps_per_sm = 12}},
    {"32 warps/SM", {.warps_per_sm = 32}},
    {"late weights", {.late_weights = true}},
};

// The tensor-core kernel. Args: shape index, M, variant (kVariants), graph
// (1: launches replayed from a CUDA graph, as a decode step runs them).
void BM_Int4MmaGemv(benchmark::State& state) {
  if (NoGpu(state)) return;
  const int m = static_cast<int>(state.range(1));
  Int4Problem p(kShapes[state.range(0)], m);
  const Variant& variant = kVariants[state.range(2)];
  const auto launch = [&](int64_t i, cudaStream_t stream) {
    if (!Int4MmaGemv(p.MmaWeight(i), p.X(), m, p.Y(), stream, variant.tuning).ok()) {
      std::abort();
    }
  };
  if (state.range(3) != 0) {
    TimeGraphLaunches(state, launch);
  } else {
    TimeLaunches(state, [&](int64_t i) { launch(i, nullptr); });
  }
  Report(state, p.bytes);
  state.SetLabel(std::string(p.shape.name) + " int4 g32" + (state.range(3) != 0 ? ", graph" : "") +
                 (variant.label[0] != 0 ? ", " : "") + variant.label);
}

// A decode site's residual add + norms and the GEMV that reads the row, as
// the decode graph runs them: `fused` 0 launches AddNormalizedThenNorm, then
// Int4MmaGemv on its row; 1 one Int4MmaGemvAfterAddNorm (the row formed in
// each thread block's prologue, the residual stored to a second buffer); 4
// the same with 4 ring stages instead of 3. Delta is the problem's x, the
// norms have no weights. Args: shape, fused.
void BM_Int4GemvAfterAddNorm(benchmark::State& state) {
  if (NoGpu(state)) return;
  Int4Problem p(kShapes[state.range(0)], 1);
  const int fused = static_cast<int>(state.range(1));
  const Int4MmaTuning tuning = {.stages = fused > 1 ? fused : 0};
  const int k = static_cast<int>(p.shape.k);
  DeviceBuffer<float> residual = Upload(std::vector<float>(k, 0.5f));
  DeviceBuffer<float> residual_out = Upload(std::vector<float>(k, 0.0f));
  DeviceBuffer<uint16_t> row = Upload(std::vector<uint16_t>(k, 0));
  auto* row_bf16 = reinterpret_cast<__nv_bfloat16*>(row.data());
  constexpr float kEps = 1e-6f;
  TimeGraphLaunches(state, [&](int64_t i, cudaStream_t stream) {
    absl::Status status;
    if (fused != 0) {
      status = Int4MmaGemvAfterAddNorm(p.MmaWeight(i),
                                       {.residual = residual.data(),
                                        .residual_out = residual_out.data(),
                                        .delta = p.X(),
                                        .eps = kEps},
                                       {}, p.Y(), stream, tuning);
    } else {
      status = AddNormalizedThenNorm(residual.data(), p.X(), 1, k, nullptr, kEps, nullptr, nullptr,
                                     row_bf16, stream);
      if (status.ok()) status = Int4MmaGemv(p.MmaWeight(i), row_bf16, 1, p.Y(), stream);
    }
    if (!status.ok()) std::abort();
  });
  Report(state, p.bytes);
  state.SetLabel(std::string(p.shape.name) + " int4 g32, graph, " +
                 (fused != 0 ? "add + norms in the GEMV" : "add + norms kernel, then the GEMV") +
                 (fused > 1 ? ", " + std::to_string(fused) + " stages" : ""));
}

// The copy ceiling for the same bytes: back-to-back cudaMemcpyAsync D2D of
// half the packed weight's bytes (read + written = the bytes a GEMV reads),
// rotating like the weights, so the fixed cost per launch is in it too.
void BM_CopySameBytes(benchmark::State& state) {
  if (NoGpu(state)) return;
  Int4Problem p(kShapes[state.range(0)], 0);
  TimeCopies(state, p.bytes, state.range(3) != 0);
  state.SetLabel(std::string(p.shape.name) + " D2D copy of the int4 g32 bytes" +
                 (state.range(3) != 0 ? ", graph" : ""));
}

// cuBLAS bf16 at the same shape.
void BM_CublasBf16(benchmark::State& state) {
  if (NoGpu(state)) return;
  const LinearShape& s = kShapes[state.range(0)];
  TimeCublasBf16(state, s, static_cast<int>(state.range(1)), state.range(3) != 0);
  state.SetLabel(std::string(s.name) + " cublas bf16" + (state.range(3) != 0 ? ", graph" : ""));
}

// Every shape at M = 1, 4, 8, 16, launched on a stream and replayed from a
// CUDA graph; with `variants`, every other variant at M = 1 as a graph.
void Shapes(benchmark::internal::Benchmark* b, bool variants) {
  for (int shape = 0; shape < static_cast<int>(kShapes.size()); ++shape) {
    for (int m : {1, 4, 8, 16}) {
      b->Args({shape, m, 0, 0});
      b->Args({shape, m, 0, 1});
      if (m == 1 && variants) {
        for (int v = 1; v < static_cast<int>(std::size(kVariants)); ++v) b->Args({shape, m, v, 1});
      }
    }
  }
}

// Decode through 26B-A4B experts: the 8 chosen of `copies` (>= 100) experts
// in one Int4MmaGemvSelected launch, against 8 Int4MmaGemv launches (one
// per expert, the ids known on the host) in the same run. Ids are fresh per
// launch (64 random sets of 8 distinct). Counters as above, weight bytes =
// the 8 chosen experts'. Arg: expert shape, grouped (1) or 8 launches (0).
void BM_Int4Experts(benchmark::State& state) {
  if (NoGpu(state)) return;
  constexpr int kChosen = 8, kSets = 64;
  const LinearShape& shape = gemma4::kGemma4_26bExpertShapes[state.range(0)];
  Int4Problem p(shape, kChosen);  // x [8, K]: one row per slot
  std::vector<const uint4*> qweights;
  std::vector<const __nv_bfloat162*> params;
  for (int e = 0; e < p.copies; ++e) {
    qweights.push_back(p.MmaWeight(e).qweight);
    params.push_back(p.MmaWeight(e).params);
  }
  std::vector<int32_t> ids(kSets * kChosen);
  std::mt19937 rng(5);
  for (int set = 0; set < kSets; ++set) {
    std::vector<int32_t> all(p.copies);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), kChosen, ids.begin() + set * kChosen);
  }
  const DeviceBuffer<const uint4*> qweight_table = Upload(qweights);
  const DeviceBuffer<const __nv_bfloat162*> params_table = Upload(params);
  const DeviceBuffer<int32_t> device_ids = Upload(ids);
  const Int4MmaExpertTables tables{qweight_table.data(), params_table.data(), p.copies};
  const bool grouped = state.range(1) != 0;
  const auto launch = [&](int64_t i, cudaStream_t stream) {
    const int set = static_cast<int>(i % kSets);
    if (grouped) {
      if (!Int4MmaGemvSelected(p.MmaWeight(0), tables, device_ids.data() + set * kChosen, kChosen,
                               p.X(), shape.k, p.Y(), stream)
               .ok()) {
        std::abort();
      }
      return;
    }
    for (int slot = 0; slot < kChosen; ++slot) {
      if (!Int4MmaGemv(p.MmaWeight(ids[set * kChosen + slot]), p.X() + slot * shape.k, 1,
                       p.Y() + slot * shape.n, stream)
               .ok()) {
        std::abort();
      }
    }
  };
  TimeGraphLaunches(state, launch);
  Report(state, kChosen * p.bytes);
  state.SetLabel(std::string(shape.name) + " int4 g32, 8 of " + std::to_string(p.copies) +
                 (grouped ? " experts, one grouped launch" : " experts, 8 launches") + ", graph");
}

BENCHMARK(BM_Int4MmaGemv)
    ->ArgNames({"shape", "m", "variant", "graph"})
    ->Apply([](benchmark::internal::Benchmark* b) { Shapes(b, true); })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_Int4GemvAfterAddNorm)
    ->ArgNames({"shape", "fused"})
    ->ArgsProduct({{0, 3, 6}, {0, 1, 4}})  // q_sliding, q_full (= a sliding q/k/v stack), gate_up
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_Int4Experts)
    ->ArgNames({"shape", "grouped"})
    ->ArgsProduct({{0, 1}, {1, 0}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_CublasBf16)
    ->ArgNames({"shape", "m", "variant", "graph"})
    ->Apply([](benchmark::internal::Benchmark* b) { Shapes(b, false); })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_CopySameBytes)
    ->ArgNames({"shape", "m", "variant", "graph"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int shape = 0; shape < static_cast<int>(kShapes.size()); ++shape) {
        b->Args({shape, 1, 0, 0});
        b->Args({shape, 1, 0, 1});
      }
    })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);

}  // namespace
}  // namespace gquant::cuda
