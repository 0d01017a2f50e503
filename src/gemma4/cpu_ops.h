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
#include <limits>
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
// j <= last_key[i] (j <= i when last_key is empty: causal) and, when
// window > 0, i - j < window (spec §6). last_key[i] >= i lets an image token
// see the rest of its image (31B sliding layers). Softmax in float32. The
// caller guarantees every visible key is in `kv` (capacity >= the visible
// span). out: [tokens, num_heads, head_dim].
void Attention(std::span<const float> q, int64_t tokens, int num_heads, int64_t first_position,
               int64_t window, const KvView& kv, std::span<float> out, ThreadPool* pool,
               std::span<const int64_t> last_key = {});

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

// ---- Vision tower (spec §5.2-§5.4; HF Gemma4VisionModel) ----

// Gemma4ClippableLinear's clamp bounds; the defaults (infinite) clamp nothing.
struct ClipBounds {
  float input_min = -std::numeric_limits<float>::infinity();
  float input_max = std::numeric_limits<float>::infinity();
  float output_min = -std::numeric_limits<float>::infinity();
  float output_max = std::numeric_limits<float>::infinity();
};

// torch.clamp(x, lo, hi) in place: min(max(x, lo), hi), so NaN stays NaN and
// lo > hi gives hi.
void Clamp(std::span<float> x, float lo, float hi);

// Gemma4ClippableLinear: Linear on clamp(x, input_min, input_max), then y
// clamped to [output_min, output_max]. With infinite bounds it is Linear,
// bit for bit.
void ClippedLinear(std::span<const float> x, int64_t rows, int64_t in, std::span<const float> w,
                   int64_t out, const ClipBounds& bounds, std::span<float> y, ThreadPool* pool);

// The vision encoder's 2-D RoPE (HF apply_multidimensional_rope with
// Gemma4VisionRotaryEmbedding) in place on `heads` vectors of head_dim: the
// first half of each head rotates by pos_x and the second by pos_y, each half
// as NeoX RoPE of its own (pairs j, j + head_dim / 4). inv_freq has
// head_dim / 4 entries: RopeInverseFrequencies({"default", theta}, head_dim / 2).
// Padding patches take position -1 on both axes, as in HF.
void ApplyRope2d(std::span<float> x, int64_t heads, int head_dim, int64_t pos_x, int64_t pos_y,
                 std::span<const float> inv_freq);

// Attention with scale 1.0 in which every query sees the keys listed in
// `keys` (ascending token indices; the vision encoder's bidirectional mask
// lists the real patches, masking padding ones). q [tokens, num_heads,
// head_dim]; k, v [tokens, num_kv_heads, head_dim]; query head h reads KV head
// h / (num_heads / num_kv_heads). Softmax in float32. `keys` must not be
// empty. out: [tokens, num_heads, head_dim].
void BidirectionalAttention(std::span<const float> q, std::span<const float> k,
                            std::span<const float> v, int64_t tokens, int num_heads,
                            int num_kv_heads, int head_dim, std::span<const int64_t> keys,
                            std::span<float> out, ThreadPool* pool);

// Gemma4VisionPooler's window of each patch (positions [patches, 2] as
// (x, y), clamped at 0 as HF does for padding): floor(x / k) +
// (max_x / k) * floor(y / k), max_x = the largest clamped x + 1.
std::vector<int64_t> PoolWindows(std::span<const int32_t> positions, int kernel);

// Gemma4VisionPooler's average pool and scale on x [patches, dim]: window w
// sums float(1 / k^2) * x[p] over the patches p with window[p] == w (float32,
// in patch order), times `scale` in float32. Returns the windows that some
// patch maps to, in window order ([count, dim]): HF's pooler mask. Every
// window[p] must lie in [0, num_windows).
std::vector<float> AvgPoolWindows(std::span<const float> x, int64_t dim,
                                  std::span<const int64_t> window, int kernel, int64_t num_windows,
                                  float scale);

}  // namespace gquant::gemma4::cpu

#endif  // GQUANT_SRC_GEMMA4_CPU_OPS_H_
