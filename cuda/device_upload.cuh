// Host-to-device uploads shared by the GPU models (gpu_model.cu,
// gpu_vision.cu): plain buffers, float32 values as bf16, and a loaded
// backend weight (gemma4/backend_weights.h) as a DeviceLinear.
#ifndef GQUANT_CUDA_DEVICE_UPLOAD_CUH_
#define GQUANT_CUDA_DEVICE_UPLOAD_CUH_

#include <cuda_bf16.h>

#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "device_buffer.cuh"
#include "device_linear.cuh"
#include "gquant/dtype.h"
#include "gquant/gemma4/backend_weights.h"
#include "gquant/status.h"

namespace gquant::cuda {

template <typename T>
absl::StatusOr<DeviceBuffer<T>> Upload(std::span<const T> values) {
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<T> buffer, DeviceBuffer<T>::Allocate(values.size()));
  GQ_RETURN_IF_ERROR(buffer.CopyFromHost(values));
  return buffer;
}

// float32 values rounded to bf16 (nearest even).
inline absl::StatusOr<DeviceBuffer<__nv_bfloat16>> UploadBf16(std::span<const float> values) {
  std::vector<__nv_bfloat16> host(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    host[i] = __ushort_as_bfloat16(FloatToBFloat16(values[i]));
  }
  return Upload<__nv_bfloat16>(host);
}

// A loaded weight of two or more dimensions as one DeviceLinear of
// [product of the leading dims, last dim]: a matrix, or a stack of matrices
// (a 3-D weight's packed parts stacked along N; its float values as they
// lie). InvalidArgument for a 0-D or 1-D weight.
inline absl::StatusOr<DeviceLinear> UploadLinear(const gemma4::BackendWeight& weight,
                                                 const std::string& name) {
  if (weight.shape.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat("weight '", name, "' is not a matrix"));
  }
  if (!weight.packed.empty()) {
    if (weight.packed.size() == 1) return DeviceLinear::FromPacked(weight.packed[0], name);
    return DeviceLinear::FromPackedRows(weight.packed, name);
  }
  const int64_t rows = std::accumulate(weight.shape.begin(), weight.shape.end() - 1, int64_t{1},
                                       std::multiplies<>());
  return DeviceLinear::FromFloat(weight.values, rows, weight.shape.back(), name);
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_DEVICE_UPLOAD_CUH_
