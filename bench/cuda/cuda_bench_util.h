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
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <type_traits>
#include <utility>
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

// A start and a stop event, reused for every measurement.
class EventTimer {
 public:
  EventTimer() {
    Check(cudaEventCreate(&start_));
    Check(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    Check(cudaEventDestroy(start_));
    Check(cudaEventDestroy(stop_));
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  // Milliseconds of the work `issue()` puts on `stream`.
  template <typename Issue>
  float Milliseconds(cudaStream_t stream, Issue issue) {
    Check(cudaEventRecord(start_, stream));
    issue();
    Check(cudaEventRecord(stop_, stream));
    Check(cudaEventSynchronize(stop_));
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaEvent_t start_, stop_;
};

// Event timing of `launch(i)` for iteration i; one launch per iteration.
template <typename Launch>
void TimeLaunches(benchmark::State& state, Launch launch) {
  EventTimer timer;
  for (int i = 0; i < kBatch; ++i) launch(i);  // warm-up
  Check(cudaDeviceSynchronize());
  int64_t i = 0;
  for (auto _ : state) {
    const float ms = timer.Milliseconds(nullptr, [&] {
      for (int b = 0; b < kBatch; ++b) launch(i++);
    });
    state.SetIterationTime(ms / 1e3 / kBatch);
  }
  Check(cudaGetLastError());
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
  {
    EventTimer timer;
    Check(cudaGraphLaunch(exec, stream));
    for (auto _ : state) {
      const float ms = timer.Milliseconds(stream, [&] { Check(cudaGraphLaunch(exec, stream)); });
      state.SetIterationTime(ms / 1e3 / kBatch);
    }
    Check(cudaGetLastError());
  }
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
    EventTimer timer;
    std::vector<float> times;
    for (int i = 0; i < 12; ++i) {
      times.push_back(timer.Milliseconds(nullptr, [&] {
        Check(cudaMemcpy(b->data(), a->data(), bytes, cudaMemcpyDeviceToDevice));
      }));
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

// Times back-to-back cudaMemcpyAsync D2D moving `bytes` (read + written,
// so bytes / 2 copied) between rotating buffers, like a kernel's launches;
// reports weight_GBps as those bytes per second.
inline void TimeCopies(benchmark::State& state, int64_t bytes, bool graph) {
  const int64_t half = bytes / 2;
  const int copies = Copies(half);
  std::vector<DeviceBuffer<uint8_t>> from = RandomCopies<uint8_t>(half, copies, 5);
  auto to = DeviceBuffer<uint8_t>::Allocate(half);
  if (!to.ok()) std::abort();
  const auto copy = [&](int64_t i, cudaStream_t stream) {
    Check(cudaMemcpyAsync(to->data(), from[i % copies].data(), half, cudaMemcpyDeviceToDevice,
                          stream));
  };
  if (graph) {
    TimeGraphLaunches(state, copy);
  } else {
    TimeLaunches(state, [&](int64_t i) { copy(i, nullptr); });
  }
  Report(state, 2 * half);
}

// y[M, N] = x[M, K] W[N, K]^T in bf16 with fp32 compute on rotating random
// weights: the cuBLAS baseline every kernel is compared with.
class CublasBf16Baseline {
 public:
  CublasBf16Baseline(const LinearShape& s, int m)
      : shape_(s),
        m_(m),
        copies_(Copies(weight_bytes())),
        w_(RandomCopies<uint16_t>(s.n * s.k, copies_, 7)),
        x_(Upload(RandomHost<uint16_t>(m * s.k, 99))) {
    auto y = DeviceBuffer<uint16_t>::Allocate(m * s.n);
    if (!y.ok()) std::abort();
    y_ = *std::move(y);
    if (cublasCreate(&handle_) != CUBLAS_STATUS_SUCCESS) std::abort();
  }
  ~CublasBf16Baseline() { cublasDestroy(handle_); }
  CublasBf16Baseline(const CublasBf16Baseline&) = delete;
  CublasBf16Baseline& operator=(const CublasBf16Baseline&) = delete;

  // Bytes of one bf16 weight copy.
  int64_t weight_bytes() const { return shape_.n * shape_.k * 2; }

  // Later launches go to `stream`.
  void SetStream(cudaStream_t stream) {
    if (cublasSetStream(handle_, stream) != CUBLAS_STATUS_SUCCESS) std::abort();
  }

  // The GEMM on weight copy i % copies. Column-major view: W is K x N
  // (lda K), x is K x M, y is N x M.
  void Launch(int64_t i) {
    const float alpha = 1, beta = 0;
    const int n = static_cast<int>(shape_.n), k = static_cast<int>(shape_.k);
    if (cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m_, k, &alpha, w_[i % copies_].data(),
                     CUDA_R_16BF, k, x_.data(), CUDA_R_16BF, k, &beta, y_.data(), CUDA_R_16BF, n,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      std::abort();
    }
  }

 private:
  const LinearShape& shape_;
  int m_;
  int copies_;
  std::vector<DeviceBuffer<uint16_t>> w_;
  DeviceBuffer<uint16_t> x_, y_;
  cublasHandle_t handle_;
};

// Seconds of cuBLAS bf16 GEMMs at M = m for `shapes` ((N, K) -> how many
// times the model runs that shape), each distinct shape timed once: a
// model's "cuBLAS-bf16-only estimate" (linears only).
inline double CublasBf16Seconds(const std::map<std::pair<int64_t, int64_t>, int>& shapes, int m) {
  double seconds = 0;
  for (const auto& [shape, count] : shapes) {
    const LinearShape s{"", shape.first, shape.second};
    CublasBf16Baseline cublas(s, m);
    EventTimer timer;
    cublas.Launch(0);  // warm up
    constexpr int kLaunches = 5;
    const float ms = timer.Milliseconds(nullptr, [&] {
      for (int i = 0; i < kLaunches; ++i) cublas.Launch(i);
    });
    seconds += count * ms / 1e3 / kLaunches;
  }
  return seconds;
}

// Times cuBLAS bf16 at shape `s` and M = m with rotating random weights and
// reports weight_GBps of the bf16 matrix: the baseline of the same run.
// `graph`: timed as a replayed CUDA graph (TimeGraphLaunches) instead.
inline void TimeCublasBf16(benchmark::State& state, const LinearShape& s, int m,
                           bool graph = false) {
  CublasBf16Baseline cublas(s, m);
  if (graph) {
    TimeGraphLaunches(state, [&](int64_t i, cudaStream_t stream) {
      cublas.SetStream(stream);
      cublas.Launch(i);
    });
  } else {
    TimeLaunches(state, [&](int64_t i) { cublas.Launch(i); });
  }
  Report(state, cublas.weight_bytes());
}

}  // namespace gquant::cuda::bench

#endif  // GQUANT_BENCH_CUDA_CUDA_BENCH_UTIL_H_
