#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "attention_inputs.cuh"
#include "device_primitives.cuh"
#include "kv_cache.cuh"
#include "launch.cuh"
#include "rope_rotation.cuh"
#include "row_access.cuh"

namespace gquant::cuda {
namespace {

struct AttentionInputsArgs {
  __nv_bfloat16* q;               // [tokens, num_heads, head_dim], in place
  const __nv_bfloat16* k;         // [tokens, num_kv_heads, head_dim]; null if KV-shared
  const __nv_bfloat16* v_source;  // the same shape: the v block, or k on K=V layers
  __nv_bfloat16* k_cache;         // [capacity, num_kv_heads, head_dim]
  __nv_bfloat16* v_cache;         // [capacity, num_kv_heads, head_dim]
  const __nv_bfloat16* q_norm;    // [head_dim] or null
  const __nv_bfloat16* k_norm;    // [head_dim] or null
  const float* inv_freq;          // [head_dim / 2], or null: no RoPE
  const int64_t* first_position;  // one value
  int64_t tokens;
  int64_t vectors;   // warps with work: tokens * (num_heads [+ 2 * num_kv_heads])
  int64_t capacity;  // cache slots
  int num_heads;
  int num_kv_heads;
  int head_dim;
  float eps;
  // Whether the unfused HeadNormRope call on q, k, v takes 16-byte runs: the
  // run width fixes the order of the sum of squares, so it must match.
  bool q_vectorized;
  bool k_vectorized;
  bool v_vectorized;
};

// What one warp computes: target = RoPE(RmsNorm(source) * weight).
struct HeadJob {
  const __nv_bfloat16* source;  // [head_dim]
  __nv_bfloat16* target;        // [head_dim]; source for q (in place)
  const __nv_bfloat16* weight;  // [head_dim] or null
  const float* inv_freq;        // null: no RoPE
  int64_t token;
  bool vectorized;
};

// The job of warp `vector` (q vectors first, then K, then V, each [token]
// [head] as in qkv), or false where AppendKv would write nothing: a negative
// first position, or a token that a later token of the same call overwrites
// in the ring (so no two warps write one slot).
__device__ __forceinline__ bool FindJob(const AttentionInputsArgs& a, int64_t vector,
                                        HeadJob& job) {
  const int64_t d = a.head_dim;
  const int64_t q_vectors = a.tokens * a.num_heads;
  if (vector < q_vectors) {
    __nv_bfloat16* head = a.q + vector * d;
    job = {head, head, a.q_norm, a.inv_freq, vector / a.num_heads, a.q_vectorized};
    return true;
  }
  const int64_t kv_vectors = a.tokens * a.num_kv_heads;
  int64_t index = vector - q_vectors;  // [token][kv head] within K or V
  const bool is_v = index >= kv_vectors;
  if (is_v) index -= kv_vectors;
  const int64_t token = index / a.num_kv_heads, kv_head = index % a.num_kv_heads;
  const int64_t first = *a.first_position;
  if (first < 0 || token < a.tokens - a.capacity) return false;
  const int64_t slot = (first + token) % a.capacity;
  const int64_t target = (slot * a.num_kv_heads + kv_head) * d;
  if (is_v) {
    job = {a.v_source + index * d, a.v_cache + target, nullptr, nullptr, token, a.v_vectorized};
  } else {
    job = {a.k + index * d, a.k_cache + target, a.k_norm, a.inv_freq, token, a.k_vectorized};
  }
  return true;
}

template <int kWidth>
__device__ __forceinline__ void RunJob(const HeadJob& job, const AttentionInputsArgs& a, int lane) {
  // The warp sum orders every lane's reads of the sum pass before any write
  // of the second pass, which may touch other lanes' elements (q in place).
  const float scale = HeadInverseRms<kWidth>(job.source, a.head_dim, a.eps, lane);
  const float position = job.inv_freq == nullptr ? 0.0f : RopePosition(a.first_position, job.token);
  ScaleAndRotateHeadTo<kWidth>(job.source, job.target, a.head_dim, scale, job.weight, job.inv_freq,
                               position, lane);
}

// One warp per head vector; the run width is picked per vector (warp-uniform)
// so that q, k and v each match their unfused HeadNormRope call.
__global__ void __launch_bounds__(kHeadsPerBlock * 32)
    AttentionInputsKernel(const AttentionInputsArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t vector = int64_t{blockIdx.x} * kHeadsPerBlock + threadIdx.x / 32;
  if (vector >= a.vectors) return;  // whole warps
  HeadJob job;
  if (!FindJob(a, vector, job)) return;  // whole warps
  const int lane = threadIdx.x % 32;
  if (job.vectorized) {
    RunJob<kVectorWidth>(job, a, lane);
  } else {
    RunJob<1>(job, a, lane);
  }
}

}  // namespace

absl::Status PrepareAttentionInputs(__nv_bfloat16* qkv, int64_t tokens, int num_heads,
                                    int num_kv_heads, int head_dim, bool has_v, bool kv_shared,
                                    const __nv_bfloat16* q_norm, const __nv_bfloat16* k_norm,
                                    float eps, const float* inv_freq, const int64_t* first_position,
                                    const KvLayerView& cache, cudaStream_t stream) {
  constexpr char kOp[] = "PrepareAttentionInputs";
  if (qkv == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: qkv must be non-null", kOp));
  }
  if (absl::Status s = CheckHeads(kOp, qkv, tokens, num_heads, head_dim, inv_freq, first_position);
      !s.ok()) {
    return s;
  }
  if (first_position == nullptr || !Aligned(first_position, sizeof(int64_t))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: first_position must be a non-null aligned device pointer, but got %p",
                        kOp, first_position));
  }
  if (!Aligned(q_norm, 2) || !Aligned(k_norm, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: q_norm / k_norm must be 2-byte aligned, but got %p and %p", kOp, q_norm, k_norm));
  }
  if (!(eps >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: eps must be >= 0, but got %g", kOp, eps));
  }
  int64_t vectors_per_token = num_heads;
  if (!kv_shared) {
    if (num_kv_heads < 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: num_kv_heads must be >= 1, but got %d", kOp, num_kv_heads));
    }
    if (absl::Status s = CheckKvLayerView(cache, kOp); !s.ok()) return s;
    if (cache.num_kv_heads != num_kv_heads || cache.head_dim != head_dim) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: expected cache.num_kv_heads %d and cache.head_dim %d (the arguments), but got %d "
          "and %d",
          kOp, num_kv_heads, head_dim, cache.num_kv_heads, cache.head_dim));
    }
    vectors_per_token += 2 * int64_t{num_kv_heads};
  }
  constexpr int64_t kMaxVectors = int64_t{INT_MAX} * kHeadsPerBlock;  // the grid's limit
  if (tokens > kMaxVectors / vectors_per_token) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: tokens %d x %d head vectors exceeds %d",
                                                      kOp, tokens, vectors_per_token, kMaxVectors));
  }
  if (tokens == 0) return absl::OkStatus();

  const int64_t d = head_dim;
  __nv_bfloat16* const k = kv_shared ? nullptr : qkv + tokens * num_heads * d;
  const __nv_bfloat16* const v_source =
      kv_shared ? nullptr : (has_v ? k + tokens * num_kv_heads * d : k);
  const AttentionInputsArgs args{
      .q = qkv,
      .k = k,
      .v_source = v_source,
      .k_cache = kv_shared ? nullptr : cache.k,
      .v_cache = kv_shared ? nullptr : cache.v,
      .q_norm = q_norm,
      .k_norm = k_norm,
      .inv_freq = inv_freq,
      .first_position = first_position,
      .tokens = tokens,
      .vectors = tokens * vectors_per_token,
      .capacity = kv_shared ? 1 : cache.capacity,
      .num_heads = num_heads,
      .num_kv_heads = kv_shared ? 0 : num_kv_heads,
      .head_dim = head_dim,
      .eps = eps,
      // As the unfused calls decide (k and v start 16-byte aligned iff qkv
      // does, head_dim being a multiple of 8; the cache slots always do).
      .q_vectorized = HeadsVectorizable(qkv, head_dim, q_norm, inv_freq),
      .k_vectorized = !kv_shared && HeadsVectorizable(k, head_dim, k_norm, inv_freq),
      .v_vectorized = !kv_shared && HeadsVectorizable(v_source, head_dim, nullptr, nullptr),
  };
  const int blocks = static_cast<int>((args.vectors + kHeadsPerBlock - 1) / kHeadsPerBlock);
  return LaunchKernel(AttentionInputsKernel, blocks, kHeadsPerBlock * 32, 0, stream,
                      /*overlap=*/true, args);
}

}  // namespace gquant::cuda
