// Grid-stride elementwise kernels; each thread handles one element per step.
// These are bandwidth-bound and tiny; their job is to be exact, since later
// kernels' tests compare against host values converted the same way.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "absl/strings/str_format.h"
#include "convert.cuh"
#include "cuda_status.cuh"

namespace gquant::cuda {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; the grid-stride
// loop covers the rest.
constexpr int64_t kMaxBlocks = 4096;

template <bool kIsBF16>
__global__ void SixteenToFloatKernel(const uint16_t* __restrict__ src, float* __restrict__ dst,
                                     int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    if constexpr (kIsBF16) {
      dst[i] = __bfloat162float(__ushort_as_bfloat16(src[i]));
    } else {
      dst[i] = __half2float(__ushort_as_half(src[i]));
    }
  }
}

template <bool kIsBF16>
__global__ void FloatToSixteenKernel(const float* __restrict__ src, uint16_t* __restrict__ dst,
                                     int64_t count) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    if constexpr (kIsBF16) {
      dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
    } else {
      dst[i] = __half_as_ushort(__float2half_rn(src[i]));
    }
  }
}

absl::Status CheckArguments(DType dtype, int64_t count) {
  if (dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrFormat("dtype '%s': expected F16 or BF16", DTypeName(dtype)));
  }
  if (count < 0) return absl::InvalidArgumentError(absl::StrFormat("count %d < 0", count));
  return absl::OkStatus();
}

int Blocks(int64_t count) {
  return static_cast<int>(std::min<int64_t>(kMaxBlocks, (count + kThreads - 1) / kThreads));
}

}  // namespace

absl::Status Convert16ToFloat(DType dtype, const uint16_t* src, float* dst, int64_t count,
                              cudaStream_t stream) {
  if (absl::Status s = CheckArguments(dtype, count); !s.ok()) return s;
  if (count == 0) return absl::OkStatus();
  if (dtype == DType::kBF16) {
    SixteenToFloatKernel<true><<<Blocks(count), kThreads, 0, stream>>>(src, dst, count);
  } else {
    SixteenToFloatKernel<false><<<Blocks(count), kThreads, 0, stream>>>(src, dst, count);
  }
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status ConvertFloatTo16(DType dtype, const float* src, uint16_t* dst, int64_t count,
                              cudaStream_t stream) {
  if (absl::Status s = CheckArguments(dtype, count); !s.ok()) return s;
  if (count == 0) return absl::OkStatus();
  if (dtype == DType::kBF16) {
    FloatToSixteenKernel<true><<<Blocks(count), kThreads, 0, stream>>>(src, dst, count);
  } else {
    FloatToSixteenKernel<false><<<Blocks(count), kThreads, 0, stream>>>(src, dst, count);
  }
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gquant::cuda
