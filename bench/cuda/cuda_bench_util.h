// Shared pieces of the CUDA microbenchmarks (one binary, gquant_cuda_bench):
// random device data that rotates over >= 256 MiB so L2 (50 MiB) never holds
// the weights, CUDA-event timing of back-to-back launches, the copy ceiling
// and cuBLAS bf16 baselines measured in the same run, and the bandwidth
// counters every kernel reports.
//
// Counters: weight_GBps = bytes of packed weights + scales (or of the bf16
// matrix) per second; copy_GBps = the D2D copy ceiling (bytes read + written).
#ifndef GQUANT_BENCH_CUDA_CUDA_BENCH_UTIL_H_
#define GQUANT_BENCH_CUDA_CUDA_BENCH_UTIL_H_

#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "device.cuh"
#include "device_buffer.cuh"
#include "gquant/gemma4/linear_shapes.h"

namespace gquant::cuda::bench {

using gemma4::LinearShape;
inline constexpr std::span<const LinearShape> kShapes = gemma4::kGemma4_31bLinearShapes;

inline constexpr int64_t kRotationBytes = int64_t{256} << 20;
inline constexpr int kBatch = 10;

inline void Check(cudaError_t e) {
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

// Event timing of kBatch launches captured once into a CUDA graph and
// replayed per iteration: how a decode step issues its kernels, without the
// per-launch gaps of stream launches. `launch(i, stream)` must launch on
// `stream` (a capturing, non-blocking stream).
template <typename Launch>
void TimeGraphLaunches(benchmark::State& state, Launch launch) {
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int i = 0; i < kBatch; ++i) launch(i, stream);  // warm-up, outside the capture
  Check(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kBatch; ++i) launch(i, stream);
  Check(cudaStreamEndCapture(stream, &graph));
  Check(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start));
  Check(cudaEventCreate(&stop));
  Check(cudaGraphLaunch(exec, stream));
  for (auto _ : state) {
    Check(cudaEventRecord(start, stream));
    Check(cudaGraphLaunch(exec, stream));
    Check(cudaEventRecord(stop, stream));
    Check(cudaEventSynchronize(stop));
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3 / kBatch);
  }
  Check(cudaGetLastError());
  Check(cudaEventDestroy(start));
  Check(cudaEventDestroy(stop));
  Check(cudaGraphExecDestroy(exec));
  Check(cudaGraphDestroy(graph));
  Check(cudaStreamDestroy(stream));
}

// The copy ceiling in bytes/s (read + written), measured once per process.
inline double CopyCeiling() {
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

inline bool NoGpu(benchmark::State& state) {
  if (DeviceCount() > 0) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

inline int Copies(int64_t bytes) {
  return static_cast<int>(std::clamp<int64_t>(kRotationBytes / bytes + 1, 1, 32));
}

inline void Report(benchmark::State& state, int64_t weight_bytes) {
  state.counters["weight_GBps"] = benchmark::Counter(
      static_cast<double>(weight_bytes) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  state.counters["copy_GBps"] = CopyCeiling() / 1e9;
}

// y[M, N] = x[M, K] W[N, K]^T in bf16 with fp32 compute: the cuBLAS baseline
// every kernel is compared with. Column-major view: W is K x N (lda K), x is
// K x M, y is N x M.
inline void CublasBf16Gemm(cublasHandle_t handle, const uint16_t* w, const uint16_t* x, uint16_t* y,
                           int m, int64_t n, int64_t k) {
  const float alpha = 1, beta = 0;
  if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), m, static_cast<int>(k),
                   &alpha, w, CUDA_R_16BF, static_cast<int>(k), x, CUDA_R_16BF, static_cast<int>(k),
                   &beta, y, CUDA_R_16BF, static_cast<int>(n), CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
    std::abort();
  }
}

// Times cuBLAS bf16 at shape `s` and M = m with rotating random weights and
// reports weight_GBps of the bf16 matrix: the baseline of the same run.
// `graph`: timed as a replayed CUDA graph (TimeGraphLaunches) instead.
inline void TimeCublasBf16(benchmark::State& state, const LinearShape& s, int m,
                           bool graph = false) {
  const int64_t wbytes = s.n * s.k * 2;
  const int copies = Copies(wbytes);
  std::vector<DeviceBuffer<uint16_t>> w = RandomCopies<uint16_t>(s.n * s.k, copies, 7);
  auto x = Upload(RandomHost<uint16_t>(m * s.k, 99));
  auto y = DeviceBuffer<uint16_t>::Allocate(m * s.n);
  if (!y.ok()) std::abort();
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) std::abort();
  const auto launch = [&](int64_t i) {
    CublasBf16Gemm(handle, w[i % copies].data(), x.data(), y->data(), m, s.n, s.k);
  };
  if (graph) {
    TimeGraphLaunches(state, [&](int64_t i, cudaStream_t stream) {
      if (cublasSetStream(handle, stream) != CUBLAS_STATUS_SUCCESS) std::abort();
      launch(i);
    });
  } else {
    TimeLaunches(state, launch);
  }
  cublasDestroy(handle);
  Report(state, wbytes);
}

}  // namespace gquant::cuda::bench

#endif  // GQUANT_BENCH_CUDA_CUDA_BENCH_UTIL_H_
