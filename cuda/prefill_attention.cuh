// Prefill attention for Gemma 4 (spec gemma4.md §2.5, §6): a chunk of
// `tokens` queries attends, with grouped-query heads, scale 1.0 and the
// causal (and sliding-window) mask, to the keys and values already in a
// layer's KV cache, the chunk's own included. Flash-attention style kernels
// on the tensor cores (bf16 inputs, fp32 accumulation and softmax with
// online rescaling): mma.sync m16n8k16 on any GPU (layout and schedule in
// prefill_attention.cu) and wgmma on Hopper (prefill_attention_wgmma.cu).
#ifndef GQUANT_CUDA_PREFILL_ATTENTION_CUH_
#define GQUANT_CUDA_PREFILL_ATTENTION_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "kv_cache.cuh"  // KvLayerView

namespace gquant::cuda {

// Query i of a chunk (at position first_position + i) sees key position j
// iff j <= first_position + i and, when window > 0, first_position + i - j
// < window (spec §6). The keys some query of the chunk sees are the range
// [first, last] returned here: the cache must hold all of them at once, so
// its capacity must be at least last - first + 1. Host only.
struct KeyRange {
  int64_t first;
  int64_t last;
  int64_t size() const { return last - first + 1; }
};
inline KeyRange ChunkKeyRange(int64_t first_position, int64_t tokens, int64_t window) {
  const int64_t last = first_position + tokens - 1;
  return {window > 0 ? std::max<int64_t>(0, first_position - window + 1) : 0, last};
}

// The number of (query, key) pairs the mask lets through for the chunk: the
// work of the attention (each pair costs 2 * head_dim multiply-adds).
// Host only.
inline int64_t VisiblePairs(int64_t first_position, int64_t tokens, int64_t window) {
  // Query at position p sees min(p + 1, window) keys (p + 1 without a
  // window): sum the two pieces in closed form.
  const int64_t begin = first_position, end = first_position + tokens;  // positions [begin, end)
  const int64_t ramp_end = window > 0 ? std::clamp<int64_t>(window - 1, begin, end) : end;
  // Positions [begin, ramp_end) see p + 1 keys, [ramp_end, end) see `window`.
  const int64_t ramp = (ramp_end - begin) * (begin + 1 + ramp_end) / 2;
  return ramp + (end - ramp_end) * (window > 0 ? window : 0);
}

// Which kernel PrefillAttention runs: the fastest the build and device
// have (wgmma on an sm_90a build and a compute capability 9.0 device, else
// mma.sync), or one by name (tests and benchmarks run both).
enum class PrefillAttentionPath { kFastest, kMmaSync, kWgmma };

// Whether the wgmma kernel runs on the current device. Host only.
bool PrefillAttentionWgmmaAvailable();

// out[t, h, :] = softmax_j(q[t, h, :] · k[j, h / group, :]) v[j, h / group, :]
// over the keys j query t sees (mask above), group = num_heads /
// cache.num_kv_heads, keys and values at slot j % cache.capacity.
//   q:   [tokens, num_heads, head_dim] bf16 on the device, 16-byte aligned
//   out: [tokens, num_heads, head_dim] bf16 (may alias q: each block reads
//        its queries before it writes the same rows and head)
//   first_position: position of q's first row (host value)
//   window: sliding window in positions, 0 for none (full layers)
//   cache: already holds positions ChunkKeyRange(...) (the chunk's own keys
//        included); head_dim 256 or 512
// Queued on `stream` with programmatic dependent launch (launch.cuh).
// InvalidArgument naming the argument for: a null or misaligned pointer,
// tokens < 0, num_heads not a positive multiple of cache.num_kv_heads, a
// head_dim other than 256 or 512, first_position < 0, window < 0, a
// capacity smaller than ChunkKeyRange(...).size(), or positions or head
// counts beyond what the kernel indexes (int32 positions, 65535 query tiles).
// tokens == 0 does nothing. FailedPrecondition for PrefillAttentionPath::kWgmma
// where it cannot run. Internal for a CUDA error.
//   last_key: null (causal), or int32 [tokens] on the device: the last key
//        position each query sees, >= its own and <= the chunk's last
//        position (the 31B's image tokens see the rest of their image on
//        sliding layers; spec §6). The window still bounds keys below.
absl::Status PrefillAttention(const __nv_bfloat16* q, int64_t tokens, int num_heads,
                              int64_t first_position, int64_t window, const KvLayerView& cache,
                              __nv_bfloat16* out, cudaStream_t stream,
                              const int32_t* last_key = nullptr,
                              PrefillAttentionPath path = PrefillAttentionPath::kFastest);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_PREFILL_ATTENTION_CUH_
