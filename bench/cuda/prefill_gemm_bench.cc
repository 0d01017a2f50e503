// Prefill (large M) int4 weight-only GEMM (prefill_gemm.cuh: chunked
// dequantization overlapped with cuBLAS) on the Gemma 4 31B linear shapes,
// against cuBLAS bf16 at the same M, N, K in the same run; the wgmma GEMM
// that dequantizes in its main loop (int4_wgmma_gemm.cuh) against the same;
// and the int4 dequantizer alone against the copy ceiling.
//
// Counters: TFLOPS = 2 M N K / time; vs_cublas = cuBLAS bf16 time / our time
// (goal: >= 0.9 at M = 2048 on every shape), with cublas_TFLOPS beside it;
// chunks = GEMM calls per run; split_SMs = the d SMs dequantizing beside a
// GEMM (0: no split); weight_GBps = packed int4 bytes per second;
// copy_GBps = the D2D copy ceiling. The dequantizer reports moved_GBps
// (bytes read + written) and vs_copy = that over the ceiling.
//
// Knob variants (arg "variant", at M = 2048 on three shapes) change one
// default each; the label names it. Int4 weights rotate over >= 256 MiB.
#include <cuda_bf16.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda_bench_util.h"
#include "int4_dequantize.cuh"
#include "int4_problem.h"
#include "int4_wgmma_gemm.cuh"
#include "prefill_gemm.cuh"

namespace gquant::cuda {
namespace {

using namespace bench;

// cuBLAS bf16 seconds per launch at (shape, m), with the same setup as
// bench::TimeCublasBf16 (CublasBf16Baseline): median of 5 batches after
// ~0.1 s of warm-up, so the GPU runs at the sustained (power-limited) clock
// ours is timed at; a cold measurement read ~15% faster. Measured once per
// process.
double CublasSeconds(const LinearShape& s, int64_t m) {
  static std::map<std::tuple<int64_t, int64_t, int64_t>, double> cache;
  const auto key = std::make_tuple(s.n, s.k, m);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  CublasBf16Baseline cublas(s, static_cast<int>(m));
  int64_t i = 0;
  const auto start_warm_up = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start_warm_up < std::chrono::milliseconds(100)) {
    for (int b = 0; b < kBatch; ++b) cublas.Launch(i++);
    Check(cudaDeviceSynchronize());
  }
  EventTimer timer;
  std::vector<float> ms(5);
  for (float& t : ms) {
    t = timer.Milliseconds(nullptr, [&] {
      for (int b = 0; b < kBatch; ++b) cublas.Launch(i++);
    });
  }
  std::sort(ms.begin(), ms.end());
  return cache[key] = ms[ms.size() / 2] / 1e3 / kBatch;
}

// The TFLOPS, vs_cublas and cublas_TFLOPS counters of a timed GEMM at
// (shape, m), cuBLAS taking `cublas_seconds` per launch.
void ReportAgainstCublas(benchmark::State& state, const LinearShape& s, int64_t m,
                         double cublas_seconds) {
  const double flops = 2.0 * m * s.n * s.k;
  const double iterations = static_cast<double>(state.iterations());
  state.counters["TFLOPS"] =
      benchmark::Counter(flops * iterations / 1e12, benchmark::Counter::kIsRate);
  state.counters["vs_cublas"] =
      benchmark::Counter(cublas_seconds * iterations, benchmark::Counter::kIsRate);
  state.counters["cublas_TFLOPS"] = flops / cublas_seconds / 1e12;
}

// `rows` per chunk, with scratch for them at the widest K (21504).
WeightOnlyGemmOptions Chunked(int64_t rows) {
  WeightOnlyGemmOptions o;
  o.chunk_rows = rows;
  o.max_chunk_elements = std::max(o.max_chunk_elements, rows * 21504);
  return o;
}

// d SMs dequantize beside each GEMM (0: no split).
WeightOnlyGemmOptions Split(int multiprocessors) {
  WeightOnlyGemmOptions o;
  o.dequantize_multiprocessors = multiprocessors;
  return o;
}

// Knob variants: the defaults, then one change each.
struct Variant {
  const char* name;
  WeightOnlyGemmOptions (*options)(const LinearShape& s);
};
constexpr Variant kVariants[] = {
    {"default", [](const LinearShape&) { return WeightOnlyGemmOptions{}; }},
    {"whole (dequantize all, then one GEMM)",
     [](const LinearShape& s) {
       WeightOnlyGemmOptions o;
       o.max_chunk_elements = s.n * s.k;
       o.chunk_rows = (s.n + 15) / 16 * 16;
       o.buffers = 1;
       return o;
     }},
    {"chunk 1024", [](const LinearShape&) { return Chunked(1024); }},
    {"chunk 2048", [](const LinearShape&) { return Chunked(2048); }},
    {"chunk 4096", [](const LinearShape&) { return Chunked(4096); }},
    {"chunk 8192", [](const LinearShape&) { return Chunked(8192); }},
    {"3 buffers",
     [](const LinearShape&) {
       WeightOnlyGemmOptions o;
       o.buffers = 3;
       return o;
     }},
    {"first chunk 512",
     [](const LinearShape&) {
       WeightOnlyGemmOptions o;
       o.first_chunk_rows = 512;
       return o;
     }},
    {"no split (every SM for both kernels)", [](const LinearShape&) { return Split(0); }},
    {"no split, dequantize low priority",
     [](const LinearShape&) {
       WeightOnlyGemmOptions o = Split(0);
       o.dequantize_high_priority = false;
       return o;
     }},
    {"split 4 SMs", [](const LinearShape&) { return Split(4); }},
    {"split 16 SMs", [](const LinearShape&) { return Split(16); }},
    {"split 32 SMs", [](const LinearShape&) { return Split(32); }},
};

// Args: shape index, M, variant index.
void BM_PrefillInt4(benchmark::State& state) {
  if (NoGpu(state)) return;
  const LinearShape& s = kShapes[state.range(0)];
  const int64_t m = state.range(1);
  const Variant& variant = kVariants[state.range(2)];
  const WeightOnlyGemmOptions options = variant.options(s);
  auto gemm = WeightOnlyGemm::Create(options);
  auto chunks = PrefillChunkRows(options, s.n, s.k, m);
  if (!gemm.ok() || !chunks.ok()) {
    state.SkipWithError((gemm.ok() ? chunks.status() : gemm.status()).ToString().c_str());
    return;
  }
  const double cublas_seconds = CublasSeconds(s, m);
  Int4Problem p(s, m);
  TimeLaunches(state, [&](int64_t i) {
    if (!gemm->Run(p.MmaWeight(i), p.X(), m, p.Y(), nullptr).ok()) std::abort();
  });
  Report(state, p.bytes);
  ReportAgainstCublas(state, s, m, cublas_seconds);
  state.counters["chunks"] = static_cast<double>(chunks->size());
  state.counters["split_SMs"] =
      PrefillDequantizeMultiprocessors(options, m, gemm->multiprocessors());
  state.SetLabel(absl::StrCat(std::string(s.name), " int4 g32 ", variant.name, ", chunk rows ",
                              (*chunks)[0],
                              chunks->size() > 1 ? absl::StrCat("/", (*chunks)[1]) : ""));
}

// The wgmma GEMM that dequantizes in its main loop (int4_wgmma_gemm.cuh).
// Args: shape index, M.
void BM_Int4WgmmaGemm(benchmark::State& state) {
  if (NoGpu(state)) return;
  if (!Int4WgmmaGemmAvailable()) {
    state.SkipWithError("needs an sm_90a build on a compute capability 9.0 GPU");
    return;
  }
  const LinearShape& s = kShapes[state.range(0)];
  const int64_t m = state.range(1);
  const double cublas_seconds = CublasSeconds(s, m);
  Int4Problem p(s, m);
  TimeLaunches(state, [&](int64_t i) {
    if (!Int4WgmmaGemm(p.MmaWeight(i), p.X(), m, p.Y(), nullptr).ok()) std::abort();
  });
  Report(state, p.bytes);
  ReportAgainstCublas(state, s, m, cublas_seconds);
  state.SetLabel(
      absl::StrCat(std::string(s.name), " int4 g32 wgmma, dequantized in the main loop"));
}

// cuBLAS bf16 at the same shape and M (bench::TimeCublasBf16).
void BM_PrefillCublasBf16(benchmark::State& state) {
  if (NoGpu(state)) return;
  const LinearShape& s = kShapes[state.range(0)];
  const int64_t m = state.range(1);
  TimeCublasBf16(state, s, static_cast<int>(m));
  const double flops = 2.0 * m * s.n * s.k;
  state.counters["TFLOPS"] = benchmark::Counter(
      flops * static_cast<double>(state.iterations()) / 1e12, benchmark::Counter::kIsRate);
  state.SetLabel(absl::StrCat(std::string(s.name), " cublas bf16"));
}

// The dequantizer alone over the whole weight. Args: shape index, chunk rows
// (0: one launch into one [N, K] output; else chunks alternating between two
// scratch buffers, as WeightOnlyGemm writes them), SMs (0: all). The SM
// counts show what a split's d SMs sustain alone.
void BM_DequantizeInt4(benchmark::State& state) {
  if (NoGpu(state)) return;
  const LinearShape& s = kShapes[state.range(0)];
  const int64_t chunk_rows = state.range(1);
  const int multiprocessors = static_cast<int>(state.range(2));
  Int4Problem p(s, 0);
  const int64_t out_rows = chunk_rows > 0 ? chunk_rows : s.n;
  std::vector<DeviceBuffer<uint16_t>> out;
  for (int b = 0; b < (chunk_rows > 0 ? 2 : 1); ++b) {
    auto buffer = DeviceBuffer<uint16_t>::Allocate(out_rows * s.k);
    if (!buffer.ok()) std::abort();
    out.push_back(*std::move(buffer));
  }
  TimeLaunches(state, [&](int64_t i) {
    for (int64_t row = 0, c = 0; row < s.n; row += out_rows, ++c) {
      auto* o = reinterpret_cast<__nv_bfloat16*>(out[c % out.size()].data());
      if (!DequantizeInt4Mma(p.MmaWeight(i), row, std::min(out_rows, s.n - row), o, nullptr,
                             multiprocessors)
               .ok()) {
        std::abort();
      }
    }
  });
  Report(state, p.bytes);
  const double moved = static_cast<double>(p.bytes + s.n * s.k * 2);
  const double iterations = static_cast<double>(state.iterations());
  state.counters["moved_GBps"] =
      benchmark::Counter(moved * iterations / 1e9, benchmark::Counter::kIsRate);
  state.counters["vs_copy"] =
      benchmark::Counter(moved * iterations / CopyCeiling(), benchmark::Counter::kIsRate);
  state.SetLabel(
      absl::StrCat(std::string(s.name), " int4 g32 dequantize",
                   chunk_rows > 0 ? absl::StrCat(", chunks of ", chunk_rows) : "",
                   multiprocessors > 0 ? absl::StrCat(", on ", multiprocessors, " SMs") : ""));
}

constexpr int kQSliding = 0, kGateUp = 6, kDown = 7, kLmHead = 8;

// The token counts besides 2048 at which three shapes are also measured:
// where the fused GEMM and the dequantize + cuBLAS path cross.
constexpr int kOtherMs[] = {128, 512, 1024, 8192};

// (shape, M): every shape at M = 2048, three of them at kOtherMs.
void ShapesAndMs(benchmark::internal::Benchmark* b) {
  for (int shape = 0; shape < static_cast<int>(std::size(kShapes)); ++shape) {
    b->Args({shape, 2048});
  }
  for (int shape : {kQSliding, kGateUp, kDown}) {
    for (int m : kOtherMs) b->Args({shape, m});
  }
}

BENCHMARK(BM_PrefillInt4)
    ->ArgNames({"shape", "m", "variant"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int shape = 0; shape < static_cast<int>(std::size(kShapes)); ++shape) {
        b->Args({shape, 2048, 0});
      }
      for (int shape : {kQSliding, kGateUp, kDown}) {
        for (int v = 1; v < static_cast<int>(std::size(kVariants)); ++v) {
          b->Args({shape, 2048, v});
        }
        for (int m : {512, 8192}) {
          for (int v : {1, 2, 4, 8}) b->Args({shape, m, v});
        }
        for (int m : kOtherMs) b->Args({shape, m, 0});
      }
    })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1);
BENCHMARK(BM_Int4WgmmaGemm)
    ->ArgNames({"shape", "m"})
    ->Apply(ShapesAndMs)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1);
BENCHMARK(BM_PrefillCublasBf16)
    ->ArgNames({"shape", "m"})
    ->Apply(ShapesAndMs)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1);
BENCHMARK(BM_DequantizeInt4)
    ->ArgNames({"shape", "chunk_rows", "sms"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int shape : {kGateUp, kLmHead}) {
        for (int sms : {0, 4, 8, 16}) b->Args({shape, 0, sms});
        b->Args({shape, 2048, 0});
      }
    })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1);

}  // namespace
}  // namespace gquant::cuda
