// Moving short runs of a row between global memory (bf16 or float32) and
// float32 registers, plus the warp sum, for the memory-bound row and
// elementwise kernels (rms_norm, rope, activations, embedding gather).
// kWidth 8 moves 8 elements with 16-byte accesses (bf16: one, float32: two)
// and needs 16-byte-aligned addresses; kWidth 1 is the scalar fallback for
// row lengths or pointers that do not allow it. Device code only; include
// from .cu files.
#ifndef GQUANT_CUDA_ROW_ACCESS_CUH_
#define GQUANT_CUDA_ROW_ACCESS_CUH_

#include <cuda_bf16.h>

#include <cstdint>

#include "device_primitives.cuh"  // PackBf16x2

namespace gquant::cuda {

// Elements per 16-byte bf16 access, the vector width of these kernels.
inline constexpr int kVectorWidth = 8;

// v[i] = the i-th bf16 of the 16 bytes `raw` (LoadBf16's unpacking).
__device__ __forceinline__ void UnpackBf16x8(const uint4& raw, float (&v)[kVectorWidth]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(words[i] << 16);  // little-endian: element 2i is the low half
    v[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}

// v[i] = p[i], i < kWidth. bf16 -> float32 is exact (the high 16 bits).
template <int kWidth>
__device__ __forceinline__ void LoadBf16(const __nv_bfloat16* p, float (&v)[kWidth]) {
  static_assert(kWidth == 1 || kWidth == kVectorWidth);
  if constexpr (kWidth == kVectorWidth) {
    UnpackBf16x8(*reinterpret_cast<const uint4*>(p), v);
  } else {
    v[0] = __bfloat162float(*p);
  }
}

// p[i] = bf16(v[i]) rounded to nearest even, i < kWidth.
template <int kWidth>
__device__ __forceinline__ void StoreBf16(__nv_bfloat16* p, const float (&v)[kWidth]) {
  static_assert(kWidth == 1 || kWidth == kVectorWidth);
  if constexpr (kWidth == kVectorWidth) {
    *reinterpret_cast<uint4*>(p) = make_uint4(PackBf16x2(v[0], v[1]), PackBf16x2(v[2], v[3]),
                                              PackBf16x2(v[4], v[5]), PackBf16x2(v[6], v[7]));
  } else {
    *p = __float2bfloat16_rn(v[0]);
  }
}

template <int kWidth>
__device__ __forceinline__ void LoadF32(const float* p, float (&v)[kWidth]) {
  static_assert(kWidth == 1 || kWidth == kVectorWidth);
  if constexpr (kWidth == kVectorWidth) {
    const float4 lo = reinterpret_cast<const float4*>(p)[0];
    const float4 hi = reinterpret_cast<const float4*>(p)[1];
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  } else {
    v[0] = *p;
  }
}

template <int kWidth>
__device__ __forceinline__ void StoreF32(float* p, const float (&v)[kWidth]) {
  static_assert(kWidth == 1 || kWidth == kVectorWidth);
  if constexpr (kWidth == kVectorWidth) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    *p = v[0];
  }
}

// Σ v[i]², i < kWidth, in index order (the norms' per-thread part).
template <int kWidth>
__device__ __forceinline__ float SumOfSquares(const float (&v)[kWidth]) {
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kWidth; ++i) sum += v[i] * v[i];
  return sum;
}

// (mean(v^2) + eps)^-0.5 from sum(v^2); rsqrtf is within 2 ulp of pow.
__device__ __forceinline__ float InverseRms(float sum_of_squares, int dim, float eps) {
  return rsqrtf(sum_of_squares / static_cast<float>(dim) + eps);
}

// p + i, or null for a null p (an optional weight).
__device__ __forceinline__ const __nv_bfloat16* OffsetOrNull(const __nv_bfloat16* p, int i) {
  return p == nullptr ? nullptr : p + i;
}

// x[i] *= scale, then x[i] *= the i-th bf16 of `raw` if `weighted` (a
// weight's 8 values already loaded), in that order as cpu::RmsNorm does.
__device__ __forceinline__ void ScaleRunBy(float (&x)[kVectorWidth], float scale, bool weighted,
                                           const uint4& raw) {
#pragma unroll
  for (int i = 0; i < kVectorWidth; ++i) x[i] *= scale;
  if (weighted) {
    float w[kVectorWidth];
    UnpackBf16x8(raw, w);
#pragma unroll
    for (int i = 0; i < kVectorWidth; ++i) x[i] *= w[i];
  }
}

// x[i] *= scale (then * weight[i] if weight is not null), as ScaleRunBy.
template <int kWidth>
__device__ __forceinline__ void ScaleRun(float (&x)[kWidth], float scale,
                                         const __nv_bfloat16* weight) {
  static_assert(kWidth == 1 || kWidth == kVectorWidth);
  if constexpr (kWidth == kVectorWidth) {
    ScaleRunBy(x, scale, weight != nullptr,
               weight == nullptr ? uint4{} : *reinterpret_cast<const uint4*>(weight));
  } else {
    x[0] *= scale;
    if (weight != nullptr) x[0] *= __bfloat162float(*weight);
  }
}

// The sum of `v` over the 32 lanes of a (fully active) warp; every lane gets
// the same value.
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ROW_ACCESS_CUH_
