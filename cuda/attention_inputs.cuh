// A decoder layer's attention inputs in one kernel (spec gemma4.md §2.5):
// q_norm + RoPE on q, and, on layers that compute their own K and V, k_norm +
// RoPE on k, the weightless v_norm on v and the append to the layer's KV
// cache. It replaces five launches of the unfused sequence
//   [cudaMemcpyAsync v <- k]             (K=V layers: V is the raw k projection)
//   HeadNormRope(k, k_norm, RoPE)
//   HeadNormRope(v, no weight, no RoPE)
//   AppendKv(cache, k, v)
//   HeadNormRope(q, q_norm, RoPE)
// and computes bit for bit what it computes (rms_norm.cuh, kv_cache.cuh): the
// same float32 operations in the same order, including each head vector's
// sum of squares (16-byte runs or single elements, as HeadNormRope chooses
// from that call's pointers and head_dim), and one rounding to bf16.
//
// One warp per output head vector (kHeadsPerBlock per block): tokens *
// (num_heads + 2 * num_kv_heads) warps, or tokens * num_heads on a KV-shared
// layer. The K and V warps read the projections and write the normalized
// vectors straight into the cache slots, so the k and v blocks of qkv are
// only read: they keep the raw projections (the unfused sequence left them
// normalized, and on K=V layers wrote k into v, but nothing reads them after
// the append). Launched with programmatic dependent launch (launch.cuh).
#ifndef GQUANT_CUDA_ATTENTION_INPUTS_CUH_
#define GQUANT_CUDA_ATTENTION_INPUTS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kv_cache.cuh"

namespace gquant::cuda {

// qkv holds the q/k/v projections of `tokens` tokens as member-major blocks
// (the stacked q/k/v GEMV output), D = head_dim:
//   q [tokens, num_heads, D]                      at qkv,
//   k [tokens, num_kv_heads, D]                   at qkv + tokens * num_heads * D
//                                                 (absent when kv_shared),
//   v [tokens, num_kv_heads, D]                   after k (only when has_v).
// Token i is at position p = *first_position + i. In place, each q head
// vector becomes RoPE_p(RmsNorm(q) * q_norm). Unless kv_shared, the cache slot
// p % cache.capacity of cache.k gets RoPE_p(RmsNorm(k) * k_norm) and that of
// cache.v gets RmsNorm(v_raw), v_raw being the v block when has_v and the raw
// k block otherwise (K=V layers), with AppendKv's rules: when tokens >
// capacity only the last `capacity` tokens are written, and a negative
// *first_position writes no slot. On a KV-shared layer only q is touched;
// has_v, k_norm and cache are then not used (cache may be empty).
//
// q_norm, k_norm: bf16 [D] or null (no weight); inv_freq: D / 2 floats
// (cpu::RopeInverseFrequencies), or null for no RoPE; first_position: one
// int64, always required (read when the kernel runs, so one captured decode
// graph serves every position). All are device pointers. tokens = 0 does
// nothing.
//
// InvalidArgument (naming the argument) for a null or misaligned pointer, a
// bad shape (tokens < 0, num_heads or head_dim < 1, an odd head_dim with
// RoPE; unless kv_shared, num_kv_heads < 1, a cache that fails
// CheckKvLayerView, whose head_dim must be a multiple of 8, or one whose
// num_kv_heads / head_dim differ from the arguments) or a bad eps; Internal
// for a CUDA error.
absl::Status PrepareAttentionInputs(__nv_bfloat16* qkv, int64_t tokens, int num_heads,
                                    int num_kv_heads, int head_dim, bool has_v, bool kv_shared,
                                    const __nv_bfloat16* q_norm, const __nv_bfloat16* k_norm,
                                    float eps, const float* inv_freq, const int64_t* first_position,
                                    const KvLayerView& cache, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ATTENTION_INPUTS_CUH_
