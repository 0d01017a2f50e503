// Shared by the GPU quantizers (gpu_quantize.cu, gpu_minmax.cu, gpu_hqq.cu):
// the validated job in device memory, the one dtype -> template dispatch, and
// the device helpers that reproduce the host quantizers' arithmetic exactly.
// Included by .cu files only.
//
// Exactness: the host quantizers (src/quantize_*.cc) are compiled without FMA
// (quantize_internal.h) and round with nearbyint (half to even). nvcc
// contracts a * b + c into an FMA by default, so every float product or sum
// that feeds a rounding is written with the _rn intrinsics, which are never
// contracted; min/max follow std::min/std::max's operand choice (they differ
// from fminf/fmaxf only in which zero they return, but the zero can reach a
// stored bf16 value).
#ifndef GQUANT_CUDA_GPU_QUANTIZE_INTERNAL_CUH_
#define GQUANT_CUDA_GPU_QUANTIZE_INTERNAL_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "gquant/dtype.h"
#include "gquant/quantize.h"

namespace gquant::cuda::internal_gpu_quantize {

// One QuantizeOnGpu call, validated, with its buffers in device memory.
struct GpuQuantJob {
  QuantConfig config;
  DType dtype;         // F32, F16 or BF16
  const void* weight;  // [rows, cols] elements of dtype
  int64_t rows;
  int64_t cols;
  int64_t group;       // resolved group size; divides cols
  int64_t num_groups;  // per row: cols / group
  int8_t* codes;       // [rows, cols]
  float* scale;        // [rows, num_groups]
  float* zero_point;   // [rows, num_groups]
  HqqOptions hqq;

  int64_t total_groups() const { return rows * num_groups; }
};

// Write codes, scale and zero_point (gpu_minmax.cu, gpu_hqq.cu); the weight
// is known finite. Kernels go to the legacy default stream, so the caller's
// later copies wait for them.
absl::Status QuantizeMinMaxOnGpu(const GpuQuantJob& job);
absl::Status QuantizeHqqOnGpu(const GpuQuantJob& job);

// Threads per block of the one-thread-per-group kernels.
inline constexpr int kGroupThreads = 256;

inline int64_t GroupBlocks(int64_t total_groups) {
  return (total_groups + kGroupThreads - 1) / kGroupThreads;
}

// Calls fn(std::integral_constant<DType, d>{}) for the job's source dtype:
// the one place where the runtime dtype becomes a template argument.
template <typename Fn>
absl::Status DispatchDtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32:
      return fn(std::integral_constant<DType, DType::kF32>{});
    case DType::kF16:
      return fn(std::integral_constant<DType, DType::kF16>{});
    case DType::kBF16:
      return fn(std::integral_constant<DType, DType::kBF16>{});
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("weight dtype: expected F32, F16 or BF16, but got %s", DTypeName(dtype)));
  }
}

// Element i of the source as float32, as the host's ConvertRow (both exact).
template <DType kDtype>
__device__ __forceinline__ float LoadWeight(const void* __restrict__ weight, int64_t i) {
  if constexpr (kDtype == DType::kBF16) {
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(weight)[i]) << 16);
  } else if constexpr (kDtype == DType::kF16) {
    return __half2float(__ushort_as_half(static_cast<const uint16_t*>(weight)[i]));
  } else {
    return static_cast<const float*>(weight)[i];
  }
}

// std::max / std::min: the first operand unless the other compares greater /
// less.
__device__ __forceinline__ float StdMax(float a, float b) { return a < b ? b : a; }
__device__ __forceinline__ float StdMin(float a, float b) { return b < a ? b : a; }

// float -> nearest bf16 (ties to even) -> float; the host's RoundToBFloat16,
// operation for operation.
__device__ __forceinline__ float RoundToBFloat16(float f) {
  uint32_t u = __float_as_uint(f);
  u += 0x7fffu + ((u >> 16) & 1u);
  return __uint_as_float(u & 0xffff0000u);
}

}  // namespace gquant::cuda::internal_gpu_quantize

#endif  // GQUANT_CUDA_GPU_QUANTIZE_INTERNAL_CUH_
