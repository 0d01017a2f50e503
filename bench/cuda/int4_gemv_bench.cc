// Decode-time int4 GEMV on the Gemma 4 31B linear shapes, against the two
// baselines measured in the same run: the device copy ceiling (cudaMemcpy
// D2D of 1 GiB, bytes read + written) and cuBLAS bf16 GEMM at the same M, N, K.
// Weight buffers rotate over >= 256 MiB so L2 (50 MiB) never holds them. Each
// timed iteration is kBatch back-to-back launches (as decode issues them, in
// a stream or graph) between two events; the time reported is per launch.
// Counters: weight_GBps = bytes of packed weights + scales (or of the bf16
// matrix) per second, copy_GBps = the copy ceiling.
#include <string>

#include "cuda_bench_util.h"
#include "int4_mma_gemv.cuh"
#include "int4_problem.h"

namespace gquant::cuda {
namespace {

using namespace bench;

// The tensor-core kernel. Args: shape index, M, variant = 100 * stages +
// warps per multiprocessor (0 = defaults), graph (1: launches replayed from a
// CUDA graph, as a decode step runs them).
void BM_Int4MmaGemv(benchmark::State& state) {
  if (NoGpu(state)) return;
  const int m = static_cast<int>(state.range(1));
  Int4Problem p(kShapes[state.range(0)], m);
  const Int4MmaTuning tuning{static_cast<int>(state.range(2)) / 100,
                             static_cast<int>(state.range(2)) % 100};
  auto workspace = Int4MmaWorkspace::Create(p.shape.n);
  if (!workspace.ok()) std::abort();
  const auto launch = [&](int64_t i, cudaStream_t stream) {
    if (!Int4MmaGemv(p.MmaWeight(i), p.X(), m, p.Y(), *workspace, stream, tuning).ok()) {
      std::abort();
    }
  };
  if (state.range(3) != 0) {
    TimeGraphLaunches(state, launch);
  } else {
    TimeLaunches(state, [&](int64_t i) { launch(i, nullptr); });
  }
  Report(state, p.bytes);
  state.SetLabel(std::string(p.shape.name) + " int4 g32 tensor cores" +
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
// CUDA graph; `variants` adds the tuning knob's values at M = 1.
void Shapes(benchmark::internal::Benchmark* b, std::initializer_list<int> variants) {
  for (int shape = 0; shape < static_cast<int>(kShapes.size()); ++shape) {
    for (int m : {1, 4, 8, 16}) {
      b->Args({shape, m, 0, 0});
      b->Args({shape, m, 0, 1});
      if (m == 1) {
        for (int v : variants) b->Args({shape, m, v, 0});
      }
    }
  }
}

BENCHMARK(BM_Int4MmaGemv)
    ->ArgNames({"shape", "m", "variant", "graph"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      Shapes(b, {800, 416, 424, 408});
    })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_CublasBf16)
    ->ArgNames({"shape", "m", "variant", "graph"})
    ->Apply([](benchmark::internal::Benchmark* b) { Shapes(b, {}); })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);

}  // namespace
}  // namespace gquant::cuda
