// Fused attention for the Gemma 4 vision encoder (spec gemma4.md §5.3): the
// same function as VisionAttention (vision_kernels.cuh) without its float32
// score matrix. A flash-attention kernel on the tensor cores (mma.sync
// m16n8k16, bf16 inputs, fp32 accumulation and an online softmax in fp32)
// for head dims up to 128; the schedule is described in
// vision_flash_attention.cu.
#ifndef GQUANT_CUDA_VISION_FLASH_ATTENTION_CUH_
#define GQUANT_CUDA_VISION_FLASH_ATTENTION_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace gquant::cuda {

// Gemma4VisionAttention's core with scale 1.0: for every query row t <
// patches (padding rows too, as HF computes them) and query head h,
//   out[t, h, :] = sum_{j < num_keys} softmax_j(q[t, h, :] · k[j, g, :]) v[j, g, :]
// with g = h / (num_heads / num_kv_heads): the keys are the real patches
// [0, num_keys); padding keys and values (rows >= num_keys) are never read,
// so they may hold anything, NaN included. Scores and the softmax are fp32
// (a running row maximum, exp2 of log2(e)-scaled scores); the weights are
// rounded to bf16 before P · V (as HF's eager path and VisionAttention do,
// here before the division by the row sum), fp32 accumulation, one bf16
// rounding of the output.
//   q, out: bf16 [patches, num_heads, head_dim]; k, v: bf16 [patches,
//   num_kv_heads, head_dim]; all 16-byte aligned device pointers. out may be
//   q itself (each block reads its queries before it writes the same rows
//   and head); otherwise it must not overlap q, and it never may overlap k
//   or v.
//   1 <= num_keys <= patches <= 2^30; patches = 0 (with num_keys = 0) does
//   nothing. num_heads a positive multiple of num_kv_heads, at most 65535.
//   head_dim a multiple of 8 in [8, 128] (VisionAttention also takes other
//   head dims; this kernel refuses them).
// Queued on `stream` with programmatic dependent launch (launch.cuh); no
// workspace, nothing synchronizes. InvalidArgument naming the argument for
// any of the above; Internal for a CUDA error.
absl::Status VisionFlashAttention(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                  const __nv_bfloat16* v, int64_t patches, int64_t num_keys,
                                  int num_heads, int num_kv_heads, int head_dim, __nv_bfloat16* out,
                                  cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_VISION_FLASH_ATTENTION_CUH_
