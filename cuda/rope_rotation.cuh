// The per-head device code shared by ApplyRope (rope.cu) and HeadNormRope
// (rms_norm.cu): one warp transforms one head vector of a bf16 [tokens,
// heads, head_dim] tensor in place. Math as cpu::ApplyRope (spec gemma4.md
// §3.1): NeoX pairs (j, j + D/2), angle = float32(position) * inv_freq[j]
// rounded to float32 once, cos and sin in float32 (sincosf, accurate range
// reduction for any angle), the rotation in float32. Include from .cu files.
#ifndef GQUANT_CUDA_ROPE_ROTATION_CUH_
#define GQUANT_CUDA_ROPE_ROTATION_CUH_

#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "aligned.h"
#include "row_access.cuh"

namespace gquant::cuda {

// Head vectors per block of the warp-per-head kernels.
inline constexpr int kHeadsPerBlock = 4;

// The position of `token` as float32, rounded to nearest as the CPU's
// static_cast<float> (exact below 2^24).
__device__ __forceinline__ float RopePosition(const int64_t* first_position, int64_t token) {
  return static_cast<float>(*first_position + token);
}

// Rotates lo = dims j..j+kWidth-1 against hi = dims j+D/2..; inv_freq points
// at inv_freq[j]. x * cos + rotate_half(x) * sin, rotate_half(x) = (-hi, lo).
template <int kWidth>
__device__ __forceinline__ void RotatePairs(float (&lo)[kWidth], float (&hi)[kWidth],
                                            const float* inv_freq, float position) {
  float frequency[kWidth];
  LoadF32<kWidth>(inv_freq, frequency);
#pragma unroll
  for (int i = 0; i < kWidth; ++i) {
    float s, c;
    // __fmul_rn: never fused into sincosf's range reduction, so the angle is
    // the CPU's float32 product bit for bit.
    sincosf(__fmul_rn(position, frequency[i]), &s, &c);
    const float x1 = lo[i], x2 = hi[i];
    lo[i] = x1 * c - x2 * s;
    hi[i] = x2 * c + x1 * s;
  }
}

// (mean(x^2) + eps)^-0.5 over one head vector of head_dim bf16, summed by
// one warp in runs of kWidth (lane = lane index). The run width fixes the
// order of the float32 sum, so callers that must agree bit for bit
// (HeadNormRope, PrepareAttentionInputs) pick it the same way.
template <int kWidth>
__device__ __forceinline__ float HeadInverseRms(const __nv_bfloat16* head, int head_dim, float eps,
                                                int lane) {
  float sum = 0.0f;
  for (int j = lane * kWidth; j < head_dim; j += 32 * kWidth) {
    float v[kWidth];
    LoadBf16<kWidth>(head + j, v);
    float run = 0.0f;
#pragma unroll
    for (int i = 0; i < kWidth; ++i) run += v[i] * v[i];
    sum += run;
  }
  // rsqrtf is within 2 ulp of pow(., -0.5).
  return rsqrtf(WarpSum(sum) / static_cast<float>(head_dim) + eps);
}

// One warp's pass from `source` to `target` (head_dim bf16 each; the same
// pointer for in place; lane = lane index): target = rotate(source * scale *
// weight), the rotation only when inv_freq is not null (then head_dim is
// even), weight nullable. Each lane writes only the elements it read. kWidth
// 8 needs 16-byte-aligned heads, weight and inv_freq, and head_dim % 16 == 0
// with RoPE (% 8 without).
template <int kWidth>
__device__ __forceinline__ void ScaleAndRotateHeadTo(const __nv_bfloat16* source,
                                                     __nv_bfloat16* target, int head_dim,
                                                     float scale, const __nv_bfloat16* weight,
                                                     const float* inv_freq, float position,
                                                     int lane) {
  if (inv_freq == nullptr) {
    for (int j = lane * kWidth; j < head_dim; j += 32 * kWidth) {
      float x[kWidth];
      LoadBf16<kWidth>(source + j, x);
      ScaleRun<kWidth>(x, scale, OffsetOrNull(weight, j));
      StoreBf16<kWidth>(target + j, x);
    }
    return;
  }
  const int half = head_dim / 2;
  for (int j = lane * kWidth; j < half; j += 32 * kWidth) {
    float lo[kWidth], hi[kWidth];
    LoadBf16<kWidth>(source + j, lo);
    LoadBf16<kWidth>(source + half + j, hi);
    ScaleRun<kWidth>(lo, scale, OffsetOrNull(weight, j));
    ScaleRun<kWidth>(hi, scale, OffsetOrNull(weight, half + j));
    RotatePairs<kWidth>(lo, hi, inv_freq + j, position);
    StoreBf16<kWidth>(target + j, lo);
    StoreBf16<kWidth>(target + half + j, hi);
  }
}

// ScaleAndRotateHeadTo in place.
template <int kWidth>
__device__ __forceinline__ void ScaleAndRotateHead(__nv_bfloat16* head, int head_dim, float scale,
                                                   const __nv_bfloat16* weight,
                                                   const float* inv_freq, float position,
                                                   int lane) {
  ScaleAndRotateHeadTo<kWidth>(head, head, head_dim, scale, weight, inv_freq, position, lane);
}

// ---- host side, shared by the two launchers ----

// InvalidArgument (prefixed with `op`) unless x is a non-null bf16 [tokens,
// heads, head_dim] tensor with tokens >= 0, heads, head_dim > 0, a grid that
// fits, and, when inv_freq is given (RoPE), an even head_dim, inv_freq
// (head_dim / 2 floats) and first_position non-null and aligned.
inline absl::Status CheckHeads(const char* op, const __nv_bfloat16* x, int64_t tokens, int heads,
                               int head_dim, const float* inv_freq, const int64_t* first_position) {
  if (x == nullptr || !Aligned(x, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: x must be non-null, got %p", op, x));
  }
  if (tokens < 0 || heads <= 0 || head_dim <= 0 ||
      tokens * heads > int64_t{INT_MAX} * kHeadsPerBlock) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: expected tokens >= 0 and heads, head_dim > 0 (at most %d head vectors), but got "
        "tokens %d, heads %d, head_dim %d",
        op, int64_t{INT_MAX} * kHeadsPerBlock, tokens, heads, head_dim));
  }
  if (inv_freq == nullptr) return absl::OkStatus();
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: RoPE needs an even head_dim, but got %d", op, head_dim));
  }
  if (!Aligned(inv_freq, 4) || first_position == nullptr || !Aligned(first_position, 8)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: expected aligned inv_freq and non-null aligned first_position, but got %p and %p", op,
        inv_freq, first_position));
  }
  return absl::OkStatus();
}

// Whether ScaleAndRotateHead may use 16-byte accesses (kWidth 8).
inline bool HeadsVectorizable(const __nv_bfloat16* x, int head_dim, const __nv_bfloat16* weight,
                              const float* inv_freq) {
  return head_dim % (inv_freq == nullptr ? kVectorWidth : 2 * kVectorWidth) == 0 &&
         Aligned(x, 16) && Aligned(weight, 16) && Aligned(inv_freq, 16);
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ROPE_ROTATION_CUH_
