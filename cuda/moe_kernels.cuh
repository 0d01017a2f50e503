// The mixture-of-experts block of Gemma 4 26B-A4B on the GPU (spec gemma4.md
// §2.4; HF Gemma4TextRouter / Gemma4TextExperts), the kernels around the
// expert GEMVs (device_experts.cuh):
//
//   RouterLogits    logits = (RmsNorm(r) * scale * H^-0.5) · projᵀ, float32
//   RouteTopK       softmax, top k, renormalise, * per_expert_scale
//   GatherRows /    (prefill) token rows into expert order and the expert
//   ScatterRows     outputs back to [token, slot] order
//   CombineExperts  RmsNorm(dense) * w1 + RmsNorm(Σ_j weight_j y_j) * w2
//
// Routing stays in float32 end to end, from the float32 residual with the
// projection in float32 (dequantized if stored quantized; 1.4 MB per 26B
// layer): a bf16 router would flip near-tied expert choices against the CPU
// reference, and a flipped expert changes the token's output wholesale.
//
// Layouts (all device pointers, row-major): r float32 [tokens, hidden];
// logits float32 [tokens, experts]; ids int32 and weights float32 [tokens,
// top_k], a token's k choices in ascending expert order (the order HF adds
// expert outputs in, and cpu::RouteTopK's); expert outputs bf16 [tokens,
// top_k, hidden], slot j of a token holding expert ids[j]'s output.
//
// Every launcher checks shapes and pointers (InvalidArgument naming the
// argument), does nothing for tokens = 0, launches with programmatic
// dependent launch (launch.cuh) on `stream`, and returns Internal for a CUDA
// error. All of them can be captured into a CUDA graph.
#ifndef GQUANT_CUDA_MOE_KERNELS_CUH_
#define GQUANT_CUDA_MOE_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace gquant::cuda {

// The most experts RouteTopK takes (one warp holds a token's probabilities
// in registers: 32 lanes x 8).
inline constexpr int kMaxExperts = 256;

// logits[t, e] = Σ_i (r[t, i] * inv_rms(r[t]) * scale[i] * root) * proj[e, i]
// in float32, inv_rms = (mean(r[t]^2) + eps)^-0.5 (RmsNorm without weight),
// root = hidden^-0.5 as the caller computes it (a float32 PowF, as the CPU),
// computed as (Σ_i (r[t, i] * scale[i]) * proj[e, i]) * (inv_rms * root) in
// a fixed order: deterministic, and a row's logits are the same floats
// whatever `tokens` is (not bit-equal to the CPU's). proj float32 [experts,
// hidden], scale float32 [hidden]. Decode: a block per (token, expert), so
// the projection streams over every SM; 16 tokens and more: a block per 8
// tokens x 8 experts, reading the projection once per 8 tokens. hidden %
// 4 == 0, experts <= 65535, 16-byte aligned r, scale, proj.
absl::Status RouterLogits(const float* r, int64_t tokens, int hidden, const float* scale,
                          float root, float eps, const float* proj, int experts, float* logits,
                          cudaStream_t stream);

// Per token, as cpu::RouteTopK: p = softmax(logits[t]); the top_k largest p
// (ties: the lower index first); ids[t, :] those experts in ascending order
// and weights[t, j] = p[id] / Σ_top p * per_expert_scale[id]. A token whose
// logits hold a NaN still gets k distinct valid ids (its weights are NaN, so
// the NaN reaches the logits and the sampler reports it). 1 <= top_k <=
// experts <= kMaxExperts; per_expert_scale float32 [experts].
absl::Status RouteTopK(const float* logits, int64_t tokens, int experts,
                       const float* per_expert_scale, int top_k, int32_t* ids, float* weights,
                       cudaStream_t stream);

// dst[i, :] = src[index[i], :] for i < count (GatherRows), and
// dst[index[i], :] = src[i, :] (ScatterRows); rows of `width` bf16, index
// int32 on the device (the caller guarantees the range; ScatterRows's
// indices distinct). width % 8 == 0 and 16-byte aligned src, dst.
absl::Status GatherRows(const __nv_bfloat16* src, const int32_t* index, int64_t count, int width,
                        __nv_bfloat16* dst, cudaStream_t stream);
absl::Status ScatterRows(const __nv_bfloat16* src, const int32_t* index, int64_t count, int width,
                         __nv_bfloat16* dst, cudaStream_t stream);

// out[t, :] = bf16(RmsNorm(dense[t, :]) * dense_norm
//                  + RmsNorm(e[t, :]) * expert_norm),
// e[t, :] = Σ_j weights[t, j] * expert_out[t, j, :] summed in j order in
// float32: the dense MLP's post_feedforward_layernorm_1 and the experts'
// post_feedforward_layernorm_2, added (HF Gemma4TextDecoderLayer). dense,
// out bf16 [tokens, hidden]; out may be dense (in place). dense_norm and
// expert_norm bf16 [hidden], not null. hidden % 8 == 0, 16-byte aligned
// bf16 pointers.
absl::Status CombineExperts(const __nv_bfloat16* dense, const __nv_bfloat16* expert_out,
                            const float* weights, int64_t tokens, int top_k, int hidden,
                            const __nv_bfloat16* dense_norm, const __nv_bfloat16* expert_norm,
                            float eps, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_MOE_KERNELS_CUH_
