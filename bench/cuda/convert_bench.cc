// GPU float32 <-> 16-bit conversion against a device-to-device copy of the
// same bytes (the memory-copy ceiling), timed with CUDA events. Buffers of
// 256 Mi elements are far larger than L2, so this measures HBM.
// Bytes processed = bytes read + bytes written, for all three.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <random>
#include <vector>

#include "convert.cuh"
#include "device.cuh"
#include "device_buffer.cuh"

namespace gquant::cuda {
namespace {

constexpr int64_t kElements = int64_t{256} << 20;

// Times `launch` with events; one iteration = one launch.
template <typename Launch>
void TimeWithEvents(benchmark::State& state, Launch launch, int64_t bytes_moved) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  launch();  // warm-up
  cudaDeviceSynchronize();
  for (auto _ : state) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  if (cudaGetLastError() != cudaSuccess) state.SkipWithError("CUDA error");
  state.SetBytesProcessed(state.iterations() * bytes_moved);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

bool SkipWithoutGpu(benchmark::State& state) {
  if (DeviceCount() > 0) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

void BM_CopyCeiling(benchmark::State& state) {
  if (SkipWithoutGpu(state)) return;
  auto src = DeviceBuffer<float>::Allocate(kElements);
  auto dst = DeviceBuffer<float>::Allocate(kElements);
  if (!src.ok() || !dst.ok() || !src->FillBytes(0x3f).ok()) return state.SkipWithError("alloc");
  TimeWithEvents(
      state,
      [&] { cudaMemcpyAsync(dst->data(), src->data(), kElements * 4, cudaMemcpyDeviceToDevice); },
      2 * kElements * 4);
}
BENCHMARK(BM_CopyCeiling)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_BF16ToFloat(benchmark::State& state) {
  if (SkipWithoutGpu(state)) return;
  auto src = DeviceBuffer<uint16_t>::Allocate(kElements);
  auto dst = DeviceBuffer<float>::Allocate(kElements);
  if (!src.ok() || !dst.ok() || !src->FillBytes(0x3f).ok()) return state.SkipWithError("alloc");
  TimeWithEvents(
      state,
      [&] { (void)Convert16ToFloat(DType::kBF16, src->data(), dst->data(), kElements, nullptr); },
      kElements * (2 + 4));
}
BENCHMARK(BM_BF16ToFloat)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_FloatToBF16(benchmark::State& state) {
  if (SkipWithoutGpu(state)) return;
  auto src = DeviceBuffer<float>::Allocate(kElements);
  auto dst = DeviceBuffer<uint16_t>::Allocate(kElements);
  if (!src.ok() || !dst.ok() || !src->FillBytes(0x3f).ok()) return state.SkipWithError("alloc");
  TimeWithEvents(
      state,
      [&] { (void)ConvertFloatTo16(DType::kBF16, src->data(), dst->data(), kElements, nullptr); },
      kElements * (4 + 2));
}
BENCHMARK(BM_FloatToBF16)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gquant::cuda
