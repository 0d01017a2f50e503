// The float32 building blocks of the Gemma 4 CPU reference forward
// (cpu_model.cc), one per operation of spec gemma4.md §2-§3 and §6. Each
// follows the order of operations of HF transformers' float32 path, so the
// rounding matches it up to the order of sums. Internal: not installed.
//
// Layouts are row-major: a [rows, dim] activation is rows * dim floats; a
// Linear weight is [out, in] as in PyTorch.
#ifndef GQUANT_SRC_GEMMA4_CPU_OPS_H_
#define GQUANT_SRC_GEMMA4_CPU_OPS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "gquant/gemma4/config.h"
#include "gquant/thread_pool.h"

namespace gquant::gemma4::cpu {

// y[rows, out] = x[rows, in] @ w[out, in]^T (no bias). Each row's result is
// independent of the other rows and of the thread count, bit for bit.
void Linear(std::span<const float> x, int64_t rows, int64_t in, std::span<const float> w,
            int64_t out, std::span<float> y, ThreadPool* pool);

// Gemma4RMSNorm in place on every `dim`-long vector of x:
// x * (mean(x^2) + eps)^-0.5, then * weight when `weight` is not empty (no
// "1 +": Gemma 4 stores the scale itself).
void RmsNorm(std::span<float> x, int64_t dim, std::span<const float> weight, float eps);

// PyTorch's gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
float GeluTanh(float x);

// HF's inverse frequencies for a head of `head_dim` (head_dim / 2 entries):
// "default" 1 / theta^(2j / D) for every pair; "proportional" the same
// exponent over the full D for the first floor(factor * D / 2) pairs and 0
// (no rotation) for the rest. Computed in float32 as HF does.
std::vector<float> RopeInverseFrequencies(const RopeParameters& rope, int head_dim);

// NeoX ("rotate_half") RoPE in place on `heads` vectors of `head_dim` at
// `position`: dim j pairs with j + D/2, angle = float(position) * inv_freq[j],
// cos and sin in float32.
void ApplyRope(std::span<float> x, int64_t heads, int head_dim, int64_t position,
               std::span<const float> inv_freq);

// Keys and values of one layer: [capacity, num_kv_heads, head_dim] each,
// position p in slot p % capacity (a ring buffer when capacity is smaller
// than the sequence).
struct KvView {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t capacity = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Grouped-query attention with scale 1.0 (spec §2.5) for `tokens` queries
// q [tokens, num_heads, head_dim] at positions first_position + t. Query head
// h reads KV head h / (num_heads / num_kv_heads). Query i sees key j iff
// j <= i and, when window > 0, i - j < window (spec §6). Softmax in float32.
// The caller guarantees every visible key is in `kv` (capacity >= the
// visible span). out: [tokens, num_heads, head_dim].
void Attention(std::span<const float> q, int64_t tokens, int num_heads, int64_t first_position,
               int64_t window, const KvView& kv, std::span<float> out, ThreadPool* pool);

// One expert picked for a token and its mixing weight.
struct ExpertChoice {
  int expert = 0;
  float weight = 0;
};

// Gemma4TextRouter after its projection: softmax over `logits` (one token,
// num_experts entries), the top_k largest probabilities (ties: lower index
// first), renormalised to sum to 1, then each times per_expert_scale[expert].
// Returned in ascending expert order (the order HF adds expert outputs in).
std::vector<ExpertChoice> RouteTopK(std::span<const float> logits,
                                    std::span<const float> per_expert_scale, int top_k);

// tanh(x / cap) * cap on every element (the final logit soft-cap).
void SoftCap(std::span<float> x, float cap);

}  // namespace gquant::gemma4::cpu

#endif  // GQUANT_SRC_GEMMA4_CPU_OPS_H_
