#include <cuda_runtime_api.h>

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

}  // namespace gquant::cuda
