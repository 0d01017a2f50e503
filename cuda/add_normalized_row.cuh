// One row of the residual add and norms (ResidualAddNorm, rms_norm.cuh) as
// code that a whole thread block runs: rms_norm.cu's AddNormalized kernels
// run it once per row, the int4 decode GEMV in every thread block's prologue
// to form its input row in shared memory (int4_mma_gemv.cu). One function,
// so both give the same floats for the same block size. Device code only;
// include from .cu files.
#ifndef GQUANT_CUDA_ADD_NORMALIZED_ROW_CUH_
#define GQUANT_CUDA_ADD_NORMALIZED_ROW_CUH_

#include <cuda_bf16.h>

#include "rms_norm.cuh"
#include "row_access.cuh"

namespace gquant::cuda {

// The sum of `v` over the block (blockDim.x a multiple of 32, at most 1024);
// every thread gets the same value, the warp sums being added in one fixed
// order.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float warp_sums[32];
  v = WarpSum(v);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += warp_sums[w];
  __syncthreads();  // before a second call overwrites warp_sums
  return total;
}

// `row` over `dim` elements (a multiple of kWidth, pointers aligned to it),
// thread i taking the runs i, i + blockDim.x, ... . Every thread of the
// block must call it. Steps, each element with the same float operations in
// the same order whichever path runs (so the same results):
//   s1 = InverseRms(delta); r = (residual + delta * s1 * delta_weight) *
//   scalar, stored to row.residual_out unless that is null (it may be
//   row.residual: in place); then, unless y is null, s2 = InverseRms(r) and
//   y = bf16(r * s2 * next_weight), or bf16(r) without row.next_norm (y in
//   global or shared memory).
// When every thread has at most kRegisterRuns runs of 8, all inputs and
// weights are loaded at once and kept in registers: one round trip to
// memory before the two block sums (a decode row's latency is this chain).
// Longer rows and the scalar path take three passes, re-reading the inputs.
template <int kWidth>
__device__ __forceinline__ void AddNormalizedRow(const ResidualAddNorm& row, int dim,
                                                 __nv_bfloat16* y) {
  constexpr int kRegisterRuns = 2;
  const int step = blockDim.x * kWidth;
  const float multiplier = row.scalar == nullptr ? 1.0f : *row.scalar;  // * 1 is exact

  if constexpr (kWidth == kVectorWidth) {
    if (dim <= kRegisterRuns * step) {
      // The bf16 vectors stay packed (4 registers a run) until used.
      uint4 delta[kRegisterRuns], delta_weight[kRegisterRuns], next_weight[kRegisterRuns];
      float r[kRegisterRuns][kWidth];
      const auto load = [](const __nv_bfloat16* p, int i) {
        return p == nullptr ? uint4{} : *reinterpret_cast<const uint4*>(p + i);
      };
      float delta_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kRegisterRuns; ++j) {
        const int i = threadIdx.x * kWidth + j * step;
        if (i < dim) {
          delta[j] = load(row.delta, i);
          delta_weight[j] = load(row.delta_weight, i);
          next_weight[j] = load(row.next_weight, i);
          LoadF32<kWidth>(row.residual + i, r[j]);
          float d[kWidth];
          UnpackBf16x8(delta[j], d);
          delta_sum += SumOfSquares<kWidth>(d);
        }
      }
      const float delta_scale = InverseRms(BlockSum(delta_sum), dim, row.eps);
      float next_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kRegisterRuns; ++j) {
        const int i = threadIdx.x * kWidth + j * step;
        if (i < dim) {
          float d[kWidth];
          UnpackBf16x8(delta[j], d);
          ScaleRunBy(d, delta_scale, row.delta_weight != nullptr, delta_weight[j]);
#pragma unroll
          for (int k = 0; k < kWidth; ++k) r[j][k] = (r[j][k] + d[k]) * multiplier;
          next_sum += SumOfSquares<kWidth>(r[j]);
          if (row.residual_out != nullptr) StoreF32<kWidth>(row.residual_out + i, r[j]);
        }
      }
      if (y == nullptr) return;  // uniform over the block
      const float next_scale =
          row.next_norm ? InverseRms(BlockSum(next_sum), dim, row.eps) : 1.0f;  // * 1 is exact
#pragma unroll
      for (int j = 0; j < kRegisterRuns; ++j) {
        const int i = threadIdx.x * kWidth + j * step;
        if (i < dim) {
          ScaleRunBy(r[j], next_scale, row.next_norm && row.next_weight != nullptr, next_weight[j]);
          StoreBf16<kWidth>(y + i, r[j]);
        }
      }
      return;
    }
  }

  float delta_sum = 0.0f;
  for (int i = threadIdx.x * kWidth; i < dim; i += step) {
    float d[kWidth];
    LoadBf16<kWidth>(row.delta + i, d);
    delta_sum += SumOfSquares<kWidth>(d);
  }
  const float delta_scale = InverseRms(BlockSum(delta_sum), dim, row.eps);
  // r at element i, recomputed from the inputs.
  const auto recompute = [&](int i, float(&r)[kWidth]) {
    float d[kWidth];
    LoadBf16<kWidth>(row.delta + i, d);
    ScaleRun<kWidth>(d, delta_scale, OffsetOrNull(row.delta_weight, i));
    LoadF32<kWidth>(row.residual + i, r);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) r[k] = (r[k] + d[k]) * multiplier;
  };
  float next_sum = 0.0f;
  for (int i = threadIdx.x * kWidth; i < dim; i += step) {
    float r[kWidth];
    recompute(i, r);
    next_sum += SumOfSquares<kWidth>(r);
    if (row.residual_out != nullptr) StoreF32<kWidth>(row.residual_out + i, r);
  }
  if (y == nullptr) return;  // uniform over the block
  const float next_scale = row.next_norm ? InverseRms(BlockSum(next_sum), dim, row.eps) : 1.0f;
  const __nv_bfloat16* next_weight = row.next_norm ? row.next_weight : nullptr;
  for (int i = threadIdx.x * kWidth; i < dim; i += step) {
    float r[kWidth];
    if (row.residual_out != nullptr) {
      LoadF32<kWidth>(row.residual_out + i, r);  // this thread's own store
    } else {
      recompute(i, r);
    }
    ScaleRun<kWidth>(r, next_scale, OffsetOrNull(next_weight, i));
    StoreBf16<kWidth>(y + i, r);
  }
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ADD_NORMALIZED_ROW_CUH_
