// Decode attention: one query token against a layer's KV cache (kv_cache.cuh),
// split over the keys (flash-decoding) so that long contexts use the whole
// GPU.
//
// Semantics (spec gemma4.md §2.5, §6): q [num_heads, D] bf16, already normed
// and roped; scale 1.0; grouped-query attention, query head h reads KV head
// h / (num_heads / num_kv_heads); the query at position p = *position sees
// key j iff j <= p and, when window > 0, p - j < window; key j is read from
// slot j % capacity. Softmax in fp32. out [num_heads, D] bf16.
//
// Why this shape. Decode attention is a stream over the cache: every K and V
// byte is read once and used by G = num_heads / num_kv_heads query heads
// (31B: 8 on full layers, 2 on sliding ones; E2B: 8), ~4 G flops per 2 bytes,
// too many for the CUDA cores at HBM speed once bf16 -> fp32 conversions are
// counted. So the group's query heads are the 8-wide N dimension of
// mma.m16n8k16 (16 for G up to 16): scores S^T [16 keys, 8 heads] = K · Q^T
// with K as the A operand straight from shared memory (ldmatrix), and
// O^T [16 d, 8 heads] += V^T · P^T with V^T loaded by ldmatrix.trans.
//
// Split-K: the visible keys are cut into equal chunks (a multiple of 16
// keys). One block per (chunk, KV head) streams its chunk's K and V rows (16
// keys per stage, K and V stages alternating) through a cp.async ring; warp w
// owns head dims [64w, 64w + 64) in both products, so a block has D / 64 warps
// and each K/V byte is read once into shared memory and once out of it. The
// block keeps an online softmax (running max and sum, per query head) and
// writes its unnormalized fp32 output with the max and the sum; a merge
// kernel combines the chunks with the exact log-sum-exp (the largest chunk
// max, not a fixed constant).
//
// CUDA graphs: the grid depends only on the layer (capacity, window, heads)
// and the device, never on the position; the chunk size follows the live
// span on the device (DecodeChunkKeys), so short contexts still spread over
// the whole grid, and blocks past the span exit at once. A graph captured
// once replays for every position.
#ifndef GQUANT_CUDA_DECODE_ATTENTION_CUH_
#define GQUANT_CUDA_DECODE_ATTENTION_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "device_buffer.cuh"
#include "kv_cache.cuh"

namespace gquant::cuda {

inline constexpr int kDecodeBlockKeys = 16;    // keys per ring stage: the mma's M (K) / k (V)
inline constexpr int kDecodeMaxGroup = 16;     // query heads per KV head: two n8 tiles
inline constexpr int kDecodeMaxChunks = 1024;  // chunks per KV head (the merge's shared memory)

// The keys query position `position` sees: [first, first + count). count is
// min(position + 1, window (if > 0), capacity): a cache never holds more than
// `capacity` positions, so a larger span is cut to the newest keys instead of
// reading overwritten slots. count <= 0 for a negative position.
struct VisibleKeys {
  int64_t first;
  int64_t count;
};
constexpr VisibleKeys VisibleKeysOf(int64_t position, int64_t window, int64_t capacity) {
  int64_t count = position + 1;
  if (window > 0 && count > window) count = window;
  if (count > capacity) count = capacity;
  return {position - count + 1, count};
}

// The most keys a query can see in this layer: sizes the grid and workspace.
constexpr int64_t DecodeMaxSpan(int64_t window, int64_t capacity) {
  return window > 0 ? std::min(window, capacity) : capacity;
}

// Keys per chunk for a live span of `span` keys over `chunks` chunks: the
// fewest 16-key blocks per chunk that cover the span, so ceil(span /
// chunk_keys) <= chunks chunks are active and the rest exit. Computed the
// same way by the attention and the merge kernel.
constexpr int64_t DecodeChunkKeys(int64_t span, int chunks) {
  const int64_t blocks = (span + kDecodeBlockKeys - 1) / kDecodeBlockKeys;
  return std::max<int64_t>(1, (blocks + chunks - 1) / chunks) * kDecodeBlockKeys;
}
constexpr int64_t DecodeActiveChunks(int64_t span, int chunks) {
  return span <= 0 ? 0 : (span + DecodeChunkKeys(span, chunks) - 1) / DecodeChunkKeys(span, chunks);
}

// Chunks per KV head (grid.x): one wave of blocks (multiprocessors x blocks
// per multiprocessor over all KV heads: equal chunks then finish together),
// but no more than there are 16-key blocks in the largest span, and at most
// kDecodeMaxChunks.
constexpr int DecodeChunksPerKvHead(int multiprocessors, int blocks_per_sm, int num_kv_heads,
                                    int64_t max_span) {
  const int64_t wave =
      std::max<int64_t>(1, int64_t{multiprocessors} * blocks_per_sm / num_kv_heads);
  const int64_t blocks = std::max<int64_t>(1, (max_span + kDecodeBlockKeys - 1) / kDecodeBlockKeys);
  return static_cast<int>(std::min({wave, blocks, int64_t{kDecodeMaxChunks}}));
}

// Benchmark knobs (0: the default).
struct DecodeAttentionTuning {
  int stages = 0;         // ring depth in 16-key stages: 3, 4 (default) or 6
  int blocks_per_sm = 0;  // caps the blocks per multiprocessor the grid is sized for (0: as
                          // many as fit, 2 on a sliding window)
};

// The chunks' partial outputs: o [chunks][num_heads][head_dim] fp32
// (unnormalized, relative to the chunk's max) and (max, sum) [chunks]
// [num_heads] float2 (the max in log2 units). Sized for one layer shape; a
// launch that may run concurrently with another needs its own workspace.
class DecodeAttentionWorkspace {
 public:
  DecodeAttentionWorkspace() = default;

  // For layers with `num_heads` query heads of `head_dim` and spans up to
  // `max_span` keys (DecodeMaxSpan), on the current device. Also raises the
  // kernels' shared-memory limit. InvalidArgument for a bad argument,
  // Internal for a CUDA error.
  static absl::StatusOr<DecodeAttentionWorkspace> Create(int num_heads, int head_dim,
                                                         int64_t max_span);

  int num_heads() const { return num_heads_; }
  int head_dim() const { return head_dim_; }
  int64_t max_span() const { return max_span_; }
  int max_chunks() const { return max_chunks_; }
  int multiprocessors() const { return multiprocessors_; }
  // Blocks of the attention kernel instance for `head_tiles` (1: group <= 8,
  // 2: <= 16) and ring depth stage_option (0, 1, 2: 3, 4, 6 stages) that fit
  // on one multiprocessor (measured by Create; sizes the grid).
  int blocks_per_sm(int head_tiles, int stage_option) const {
    return blocks_per_sm_[head_tiles - 1][stage_option];
  }
  float* partial_out() { return partial_out_.data(); }
  float2* partial_max_sum() { return partial_max_sum_.data(); }

 private:
  int num_heads_ = 0;
  int head_dim_ = 0;
  int64_t max_span_ = 0;
  int max_chunks_ = 0;
  int multiprocessors_ = 0;
  int blocks_per_sm_[2][3] = {};
  DeviceBuffer<float> partial_out_;
  DeviceBuffer<float2> partial_max_sum_;
};

// out = softmax(q · Kᵀ) · V for one query token at position *position (device
// int64), as described at the top. q [num_heads, head_dim] bf16 (4-byte
// aligned), out [num_heads, head_dim] bf16 (8-byte aligned). Requires
// cache.head_dim a multiple of 64 up to 512, num_heads a multiple of
// cache.num_kv_heads with at most kDecodeMaxGroup per KV head, window >= 0,
// and a workspace created for (num_heads, head_dim) and a max_span of at least
// DecodeMaxSpan(window, cache.capacity). Two kernels (attention, merge), both
// with programmatic dependent launch. A negative *position gives NaN
// outputs. InvalidArgument naming the argument; Internal for a launch error.
absl::Status DecodeAttention(const __nv_bfloat16* q, int num_heads, const KvLayerView& cache,
                             const int64_t* position, int64_t window, __nv_bfloat16* out,
                             DecodeAttentionWorkspace& workspace, cudaStream_t stream,
                             const DecodeAttentionTuning& tuning = {});

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_DECODE_ATTENTION_CUH_
