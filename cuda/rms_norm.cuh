// Gemma4RMSNorm on the GPU (spec gemma4.md §2.1, §2.4, §2.5):
//   RmsNorm(v) = v * (mean(v^2) + eps)^-0.5, then * weight when one is given
// (no "1 +"), in float32 as cpu::RmsNorm, over each row (or head vector) of
// `dim` elements. The residual stream is float32 [rows, hidden]; every other
// activation is bf16, rounded once when stored.
//
// The entry points are the norm sites of a decoder layer:
//   RmsNorm                the pre-norms: residual -> bf16 GEMV input;
//   AddNormalized          the post-norms + residual add (and layer_scalar);
//   AddNormalizedThenNorm  the same, fused with the next pre-norm;
//   HeadNormRope           q_norm / k_norm (+ RoPE) and v_norm per head.
// Each is one memory-bound kernel (a block per row, a warp per head vector),
// 16-byte accesses when the row length and pointers allow and a scalar path
// otherwise, launched with programmatic dependent launch (launch.cuh) on
// `stream`. Weights are bf16 [dim] and nullable (no weight); pointers are
// device pointers; rows (tokens) = 0 does nothing. InvalidArgument names a
// null or misaligned pointer, a bad shape or eps; Internal is a CUDA error.
// At decode the int4 GEMV can do AddNormalizedThenNorm's work for one row
// itself (ResidualAddNorm below, Int4MmaGemvAfterAddNorm).
#ifndef GQUANT_CUDA_RMS_NORM_CUH_
#define GQUANT_CUDA_RMS_NORM_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace gquant::cuda {

// One row's residual add and both norms, as AddNormalizedThenNorm computes
// them: r = (residual + RmsNorm(delta) * delta_weight) * (*scalar) goes to
// residual_out, and the next block's input is bf16(RmsNorm(r) *
// next_weight), or with next_norm false bf16(r) itself (as AddNormalized and
// a conversion give the PLE gate its input, spec §2.4). Device pointers to
// [dim] vectors (scalar: one float); delta_weight, scalar and next_weight
// are nullable. A decode GEMV takes it to form its input row on chip
// (Int4MmaGemvAfterAddNorm, int4_mma_gemv.cuh).
struct ResidualAddNorm {
  const float* residual = nullptr;
  float* residual_out = nullptr;
  const __nv_bfloat16* delta = nullptr;
  const __nv_bfloat16* delta_weight = nullptr;
  const float* scalar = nullptr;
  const __nv_bfloat16* next_weight = nullptr;
  float eps = 0;
  bool next_norm = true;
};

// y[r, :] = bf16(RmsNorm(x[r, :]) * weight) for x float32 [rows, dim].
absl::Status RmsNorm(const float* x, int64_t rows, int dim, const __nv_bfloat16* weight, float eps,
                     __nv_bfloat16* y, cudaStream_t stream);

// residual[r, :] = (residual[r, :] + RmsNorm(delta[r, :]) * delta_weight)
// * (*scalar), for residual float32 [rows, dim] (in place) and delta bf16
// [rows, dim]; scalar is a nullable device pointer to one float (the
// layer_scalar after a layer's last block), read when the kernel runs.
absl::Status AddNormalized(float* residual, const __nv_bfloat16* delta, int64_t rows, int dim,
                           const __nv_bfloat16* delta_weight, float eps, const float* scalar,
                           cudaStream_t stream);

// AddNormalized, then y[r, :] = bf16(RmsNorm(new residual[r, :]) *
// next_weight) in the same kernel: the next block's pre-norm (or the final
// norm) without another pass over the residual.
absl::Status AddNormalizedThenNorm(float* residual, const __nv_bfloat16* delta, int64_t rows,
                                   int dim, const __nv_bfloat16* delta_weight, float eps,
                                   const float* scalar, const __nv_bfloat16* next_weight,
                                   __nv_bfloat16* y, cudaStream_t stream);

// In place on x bf16 [tokens, heads, head_dim]: every head vector becomes
// RmsNorm(x) * weight (q_norm, k_norm; v_norm has no weight), then, when
// inv_freq is given, rotated by RoPE at position *first_position + token
// exactly as ApplyRope (rope.cuh) does, without a bf16 rounding in between.
// inv_freq (head_dim / 2 floats) and first_position (one int64) are device
// pointers; first_position is not read without inv_freq and may be null.
absl::Status HeadNormRope(__nv_bfloat16* x, int64_t tokens, int heads, int head_dim,
                          const __nv_bfloat16* weight, float eps, const float* inv_freq,
                          const int64_t* first_position, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_RMS_NORM_CUH_
