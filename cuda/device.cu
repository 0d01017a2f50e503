#include <cuda_runtime_api.h>

#include <atomic>

#include "absl/strings/str_format.h"
#include "cuda_status.cuh"
#include "device.cuh"

namespace gquant::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

absl::StatusOr<DeviceInfo> GetDeviceInfo(int index) {
  const int count = DeviceCount();
  if (index < 0 || index >= count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA device %d: expected an index in [0, %d)", index, count));
  }
  cudaDeviceProp prop;
  GQ_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, index));
  return DeviceInfo{index,
                    prop.name,
                    prop.major,
                    prop.minor,
                    prop.multiProcessorCount,
                    static_cast<int64_t>(prop.totalGlobalMem)};
}

absl::StatusOr<DeviceLimits> CurrentDeviceLimits() {
  constexpr int kMaxDevices = 64;
  static std::atomic<bool> known[kMaxDevices] = {};
  static DeviceLimits limits[kMaxDevices];
  int device = 0;
  GQ_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  if (device < kMaxDevices && known[device].load(std::memory_order_acquire)) return limits[device];
  DeviceLimits found{};
  GQ_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&found.multiprocessors, cudaDevAttrMultiProcessorCount, device));
  GQ_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&found.shared_per_block,
                                                 cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  GQ_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(
      &found.shared_per_multiprocessor, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  GQ_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&found.major, cudaDevAttrComputeCapabilityMajor, device));
  GQ_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&found.minor, cudaDevAttrComputeCapabilityMinor, device));
  if (device < kMaxDevices) {
    // Racing writers store the same values.
    limits[device] = found;
    known[device].store(true, std::memory_order_release);
  }
  return found;
}

bool Sm90aKernelsRun(int shared_bytes) {
#if defined(GQUANT_CUDA_SM90A)
  absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
  return device.ok() && device->major == 9 && device->minor == 0 &&
         device->shared_per_block >= shared_bytes;
#else
  return false;
#endif
}

}  // namespace gquant::cuda
