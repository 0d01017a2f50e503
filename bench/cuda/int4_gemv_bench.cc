// Decode-time int4 GEMV on the Gemma 4 31B linear shapes, against the two
// baselines measured in the same run: the device copy ceiling (cudaMemcpy
// D2D of 1 GiB, bytes read + written) and cuBLAS bf16 GEMM at the same M, N, K.
// Weight buffers rotate over >= 256 MiB so L2 (50 MiB) never holds them. Each
// timed iteration is kBatch back-to-back launches (as decode issues them, in
// a stream or graph) between two events; the time reported is per launch.
// Counters: weight_GBps = bytes of packed weights + scales (or of the bf16
// matrix) per second; vs_copy = that over the copy ceiling; vs_cublas =
// cuBLAS time / our time.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "device.cuh"
#include "device_buffer.cuh"
#include "int4_gemv.cuh"
#include "int4_mma_gemv.cuh"

namespace gquant::cuda {
namespace {

struct Shape {
  const char* name;
  int64_t n, k;
};
// Gemma 4 31B: hidden 5376; sliding layers 32 x 256 query heads and 16 KV
// heads; full layers 32 x 512 and 4 KV heads; MLP 21504; vocabulary 262144.
constexpr Shape kShapes[] = {
    {"q_sliding", 8192, 5376}, {"kv_sliding", 4096, 5376}, {"o_sliding", 5376, 8192},
    {"q_full", 16384, 5376},   {"k_full", 2048, 5376},     {"o_full", 5376, 16384},
    {"gate_up", 21504, 5376},  {"down", 5376, 21504},      {"lm_head", 262144, 5376},
};
constexpr int kGroup = 32;
constexpr int64_t kRotationBytes = int64_t{256} << 20;
constexpr int kBatch = 10;

void Check(cudaError_t e) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(e));
    std::abort();
  }
}

// Random codes (any byte), or bf16 values in about +-0.06 for 16-bit buffers:
// never zeros (which can run faster) and never NaN. splitmix64: fast enough
// for the gigabytes the rotation needs.
template <typename T>
std::vector<T> RandomHost(size_t count, uint64_t seed) {
  std::vector<T> host(count);
  uint64_t state = seed;
  for (auto& v : host) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    if constexpr (std::is_same_v<T, uint16_t>) {
      v = static_cast<uint16_t>(0x3D00 | (z & 0x807F));  // sign, 7 mantissa bits, |v| < 0.0625
    } else {
      v = static_cast<T>(z);
    }
  }
  return host;
}

template <typename T>
DeviceBuffer<T> Upload(const std::vector<T>& host) {
  auto buffer = DeviceBuffer<T>::Allocate(host.size());
  if (!buffer.ok() || !buffer->CopyFromHost(host).ok()) std::abort();
  return *std::move(buffer);
}

// `copies` device copies of one random host buffer (the rotation defeats L2,
// not the data's entropy).
template <typename T>
std::vector<DeviceBuffer<T>> RandomCopies(size_t count, int copies, uint64_t seed) {
  const std::vector<T> host = RandomHost<T>(count, seed);
  std::vector<DeviceBuffer<T>> out;
  for (int c = 0; c < copies; ++c) out.push_back(Upload(host));
  return out;
}

// Event timing of `launch(i)` for iteration i; one launch per iteration.
template <typename Launch>
void TimeLaunches(benchmark::State& state, Launch launch) {
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start));
  Check(cudaEventCreate(&stop));
  for (int i = 0; i < kBatch; ++i) launch(i);  // warm-up
  Check(cudaDeviceSynchronize());
  int64_t i = 0;
  for (auto _ : state) {
    Check(cudaEventRecord(start));
    for (int b = 0; b < kBatch; ++b) launch(i++);
    Check(cudaEventRecord(stop));
    Check(cudaEventSynchronize(stop));
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3 / kBatch);
  }
  Check(cudaGetLastError());
  Check(cudaEventDestroy(start));
  Check(cudaEventDestroy(stop));
}

// The copy ceiling in bytes/s (read + written), measured once per process.
double CopyCeiling() {
  static const double ceiling = [] {
    const size_t bytes = size_t{1} << 30;
    auto a = DeviceBuffer<uint8_t>::Allocate(bytes), b = DeviceBuffer<uint8_t>::Allocate(bytes);
    if (!a.ok() || !b.ok()) std::abort();
    Check(cudaMemset(a->data(), 1, bytes));
    cudaEvent_t start, stop;
    Check(cudaEventCreate(&start));
    Check(cudaEventCreate(&stop));
    std::vector<float> times;
    for (int i = 0; i < 12; ++i) {
      Check(cudaEventRecord(start));
      Check(cudaMemcpy(b->data(), a->data(), bytes, cudaMemcpyDeviceToDevice));
      Check(cudaEventRecord(stop));
      Check(cudaEventSynchronize(stop));
      float ms;
      Check(cudaEventElapsedTime(&ms, start, stop));
      times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    return 2.0 * bytes / (times[times.size() / 2] / 1e3);
  }();
  return ceiling;
}

bool NoGpu(benchmark::State& state) {
  if (DeviceCount() > 0) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

int Copies(int64_t bytes) {
  return static_cast<int>(std::clamp<int64_t>(kRotationBytes / bytes + 1, 1, 32));
}

void Report(benchmark::State& state, int64_t weight_bytes) {
  state.counters["weight_GBps"] = benchmark::Counter(
      static_cast<double>(weight_bytes) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  state.counters["copy_GBps"] = CopyCeiling() / 1e9;
}

// Device buffers of one int4 g32 benchmark: rotating copies of random codes
// and of (scale, zero) = (0.0078125, 0.0078125) in bf16 (sane values; the
// speed does not depend on them), activations and the output. Both kernels'
// layouts have the same sizes.
struct Int4Problem {
  const Shape& shape;
  int m;
  int64_t bytes;  // codes + params of one copy
  int copies;
  std::vector<DeviceBuffer<uint8_t>> codes;
  std::vector<DeviceBuffer<uint32_t>> params;
  DeviceBuffer<uint16_t> x, y;

  Int4Problem(const Shape& s, int m_rows) : shape(s), m(m_rows) {
    const int64_t qbytes = s.n * s.k / 2, pbytes = s.n * (s.k / kGroup) * 4;
    bytes = qbytes + pbytes;
    copies = Copies(bytes);
    codes = RandomCopies<uint8_t>(qbytes, copies, 1);
    for (int c = 0; c < copies; ++c) {
      params.push_back(Upload(std::vector<uint32_t>(pbytes / 4, 0x3C003C00u)));
    }
    x = Upload(RandomHost<uint16_t>(m * s.k, 99));
    auto out = DeviceBuffer<uint16_t>::Allocate(m * s.n);
    if (!out.ok()) std::abort();
    y = *std::move(out);
  }
  const __nv_bfloat162* Params(int64_t i) const {
    return reinterpret_cast<const __nv_bfloat162*>(params[i % copies].data());
  }
  const __nv_bfloat16* X() const { return reinterpret_cast<const __nv_bfloat16*>(x.data()); }
  __nv_bfloat16* Y() { return reinterpret_cast<__nv_bfloat16*>(y.data()); }
};

// Args: shape index, M, rows per warp (0 = default).
void BM_Int4Gemv(benchmark::State& state) {
  if (NoGpu(state)) return;
  if (state.range(1) > kInt4GemvMaxM) {
    state.SkipWithError("the CUDA-core kernel takes M <= 8");
    return;
  }
  Int4Problem p(kShapes[state.range(0)], static_cast<int>(state.range(1)));
  const int rows_per_warp = static_cast<int>(state.range(2));
  TimeLaunches(state, [&](int64_t i) {
    const Int4GemvWeight w{
        p.codes[i % p.copies].data(), p.Params(i), p.shape.n, p.shape.k, kGroup, false};
    if (!Int4Gemv(w, p.X(), p.m, p.Y(), nullptr, rows_per_warp).ok()) std::abort();
  });
  Report(state, p.bytes);
  state.SetLabel(std::string(p.shape.name) + " int4 g32 cuda cores");
}

// The tensor-core kernel. Args: shape index, M, variant = 100 * tiles in
// flight + warps per row block (0 = defaults).
void BM_Int4MmaGemv(benchmark::State& state) {
  if (NoGpu(state)) return;
  Int4Problem p(kShapes[state.range(0)], static_cast<int>(state.range(1)));
  const int warps = static_cast<int>(state.range(2)) % 100;
  const int in_flight = static_cast<int>(state.range(2)) / 100;
  TimeLaunches(state, [&](int64_t i) {
    const Int4MmaWeight w{reinterpret_cast<const uint4*>(p.codes[i % p.copies].data()),
                          p.Params(i),
                          p.shape.n,
                          p.shape.k,
                          kGroup,
                          false};
    if (!Int4MmaGemv(w, p.X(), p.m, p.Y(), nullptr, warps, in_flight).ok()) std::abort();
  });
  Report(state, p.bytes);
  state.SetLabel(std::string(p.shape.name) + " int4 g32 tensor cores");
}

// cuBLAS bf16 at the same shape: y[M, N] = x[M, K] W[N, K]^T, fp32 compute.
void BM_CublasBf16(benchmark::State& state) {
  if (NoGpu(state)) return;
  const Shape& s = kShapes[state.range(0)];
  const int m = static_cast<int>(state.range(1));
  const int64_t wbytes = s.n * s.k * 2;
  const int copies = Copies(wbytes);
  std::vector<DeviceBuffer<uint16_t>> w = RandomCopies<uint16_t>(s.n * s.k, copies, 7);
  auto x = Upload(RandomHost<uint16_t>(m * s.k, 99));
  auto y = DeviceBuffer<uint16_t>::Allocate(m * s.n);
  if (!y.ok()) std::abort();
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) std::abort();
  const float alpha = 1, beta = 0;
  TimeLaunches(state, [&](int64_t i) {
    // Column-major view: W is K x N (lda K), x is K x M, y is N x M.
    if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(s.n), m,
                     static_cast<int>(s.k), &alpha, w[i % copies].data(), CUDA_R_16BF,
                     static_cast<int>(s.k), x.data(), CUDA_R_16BF, static_cast<int>(s.k), &beta,
                     y->data(), CUDA_R_16BF, static_cast<int>(s.n), CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      std::abort();
    }
  });
  cublasDestroy(handle);
  Report(state, wbytes);
  state.SetLabel(std::string(s.name) + " cublas bf16");
}

// Every shape at M = 1, 4, 8; `variants` adds the tuning knob's values at M = 1.
void Shapes(benchmark::internal::Benchmark* b, std::initializer_list<int> variants) {
  for (int shape = 0; shape < static_cast<int>(std::size(kShapes)); ++shape) {
    for (int m : {1, 4, 8, 16}) {
      b->Args({shape, m, 0});
      if (m == 1) {
        for (int v : variants) b->Args({shape, m, v});
      }
    }
  }
}

BENCHMARK(BM_Int4Gemv)
    ->ArgNames({"shape", "m", "rows"})
    ->Apply([](benchmark::internal::Benchmark* b) { Shapes(b, {}); })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_Int4MmaGemv)
    ->ArgNames({"shape", "m", "variant"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      Shapes(b, {204, 208, 216, 404, 408, 416});
    })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);
BENCHMARK(BM_CublasBf16)
    ->ArgNames({"shape", "m", "rows"})
    ->Apply([](benchmark::internal::Benchmark* b) { Shapes(b, {}); })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);

}  // namespace
}  // namespace gquant::cuda
