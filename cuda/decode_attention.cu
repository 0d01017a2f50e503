#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "decode_attention.cuh"
#include "device_primitives.cuh"
#include "launch.cuh"

namespace gquant::cuda {
namespace {

// Head dims per warp: four k16 steps of the scores, four m16 tiles of the
// output (16 accumulators per head tile), whatever D is; a block has D / 64
// warps, so each thread copies exactly 4 of a stage's 2 D 16-byte chunks.
constexpr int kDimsPerWarp = 64;
constexpr int kSteps = kDimsPerWarp / 16;
constexpr int kMaxHeadDim = 512;
constexpr int kMaxThreads = kMaxHeadDim / kDimsPerWarp * 32;
constexpr int kRowsPerCopyPass = 4;  // threads (D / 2) / 16-byte chunks per row (D / 8)
// Ring depths (16-key stages; 16 KB each at D = 512). kStages - 1 stages are
// in flight per block; at the default 4 and 3 blocks per multiprocessor that
// is 144 KB per SM, several times the ~25 KB that covers DRAM latency at
// 3.35 TB/s (~1 us x 3.35 TB/s / 132 SMs).
constexpr int kStageOptions[] = {3, 4, 6};
constexpr int kDefaultStageOption = 1;
// A sliding window's grid is sized for at most this many blocks per
// multiprocessor (fewer, longer chunks than the full wave of 6 at D = 256):
// the 31B sliding layer's full window 12.9 -> 11.7 µs in a decode graph on
// the H100.
// Full layers keep the full wave: in isolation 2 blocks were faster at 4K and
// 128K too, but the 31B decode at 128K lost 5% (bench/RESULTS.md).
constexpr int kWindowBlocksPerSm = 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr uint32_t kFullMask = 0xFFFFFFFFu;
// Merge: one block per (query head, 64 head dims); 16 float4 columns x 16
// slices of the chunks, added in slice order (deterministic).
constexpr int kMergeThreads = 256;
constexpr int kMergeColumns = kDimsPerWarp / 4;
constexpr int kMergeSlices = kMergeThreads / kMergeColumns;

constexpr int StageBytes(int head_dim) { return kDecodeBlockKeys * head_dim * 2; }
// The ring, then the scores of the current stage: [warps][16 keys][8 x head
// tiles] fp32, one partial sum over its 64 dims per warp.
constexpr int AttentionSharedBytes(int head_dim, int head_tiles, int stages) {
  return stages * StageBytes(head_dim) + head_dim / kDimsPerWarp * kDecodeBlockKeys * 8 *
                                             head_tiles * static_cast<int>(sizeof(float));
}

// Byte offset of 16-byte chunk `chunk` of key row `row` in a stage. Chunks are
// XOR-swizzled by row % 8 within each 128-byte group: rows are 2 D bytes (a
// multiple of 128), so the 8 rows one ldmatrix matrix reads at one logical
// chunk land in 8 different bank groups; the cp.async writes of 8
// consecutive chunks still cover one group.
__device__ __forceinline__ int StageOffset(int row, int chunk, int row_bytes) {
  return row * row_bytes + ((chunk & ~7) | ((chunk ^ row) & 7)) * 16;
}

// One block: KV head blockIdx.y, chunk blockIdx.x of the visible keys.
// Stages alternate K (even) and V (odd) of the same 16 keys. Lane (g, t) =
// (lane / 4, lane % 4):
// - scores: S^T[16 keys, 8 heads] per head tile = K · Q^T over the warp's 64
//   dims (A = K rows by ldmatrix, B = Q from registers, loaded once); the
//   accumulators (keys g, g + 8 x heads 2t, 2t + 1) go to shared memory.
// - softmax: every warp sums the warps' partial scores for head g, keys 2t,
//   2t + 1, 2t + 8, 2t + 9 (exactly its P^T B fragment), in warp order, so
//   all warps hold identical maxima, sums and probabilities.
// - values: O^T[64 dims, heads] += V^T · P^T (A = V by ldmatrix.trans).
// kHeadTiles: n8 tiles of query heads (group <= 8: 1, <= 16: 2).
template <int kHeadTiles, int kStages>
__global__ void __launch_bounds__(kMaxThreads)
    DecodeAttentionKernel(const __nv_bfloat16* __restrict__ q,        // [num_heads, D]
                          const __nv_bfloat16* __restrict__ k_cache,  // [capacity, nKV, D]
                          const __nv_bfloat16* __restrict__ v_cache,  // [capacity, nKV, D]
                          int64_t capacity, int num_kv_heads, int head_dim,
                          int group,  // query heads per KV head
                          const int64_t* __restrict__ position, int64_t window,
                          float* __restrict__ partial_out,         // [chunks][num_heads][D]
                          float2* __restrict__ partial_max_sum) {  // [chunks][num_heads]
  constexpr int kHeads = 8 * kHeadTiles;
  constexpr int kCopies = kDecodeBlockKeys / kRowsPerCopyPass;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int chunk = blockIdx.x, kv_head = blockIdx.y;
  const int row_bytes = head_dim * 2, stage_bytes = kDecodeBlockKeys * row_bytes;
  float* const scores = reinterpret_cast<float*>(smem + kStages * stage_bytes);

  WaitForPredecessor();
  AllowDependents();
  const VisibleKeys keys = VisibleKeysOf(*position, window, capacity);
  const int64_t chunk_keys = DecodeChunkKeys(keys.count, static_cast<int>(gridDim.x));
  const int64_t chunk_begin = chunk * chunk_keys;  // offset from keys.first
  if (chunk_begin >= keys.count) return;           // past the live span
  const int chunk_len = static_cast<int>(std::min(chunk_keys, keys.count - chunk_begin));
  const int stages_total = 2 * ((chunk_len + kDecodeBlockKeys - 1) / kDecodeBlockKeys);
  const int64_t chunk_slot = (keys.first + chunk_begin) % capacity;

  // Thread i copies 16-byte chunk i % (D / 8) of rows i / (D / 8) + 4j.
  const int copy_chunk = threadIdx.x % (head_dim / 8), copy_row = threadIdx.x / (head_dim / 8);
  const int64_t slot_stride = int64_t{num_kv_heads} * head_dim;
  const int64_t copy_offset = int64_t{kv_head} * head_dim + copy_chunk * 8;
  // Queues stage i (K or V of keys 16 (i / 2) ..) into ring slot i % kStages
  // and commits a group (empty past the last stage, keeping the count).
  const auto issue = [&](int i) {
    if (i < stages_total) {
      const __nv_bfloat16* const source = (i % 2 == 0 ? k_cache : v_cache) + copy_offset;
      unsigned char* const stage = smem + (i % kStages) * stage_bytes;
      const int block_begin = i / 2 * kDecodeBlockKeys;
#pragma unroll
      for (int j = 0; j < kCopies; ++j) {
        const int row = copy_row + kRowsPerCopyPass * j;
        // Rows past the chunk repeat its last key: finite data, weight 0.
        int64_t slot = chunk_slot + std::min(block_begin + row, chunk_len - 1);
        if (slot >= capacity) slot -= capacity;  // chunk_slot < capacity, offset < span <= capacity
        CopyAsync16(SharedAddress(stage + StageOffset(row, copy_chunk, row_bytes)),
                    source + slot * slot_stride);
      }
    }
    CommitCopies();
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) issue(i);

  // Q^T B fragments for the warp's dims: head 8 ht + g, dims 16 s + 2t (+1)
  // and + 8 (+9). Padding heads (>= group) are zero and never written.
  uint32_t q_frag[kHeadTiles][kSteps][2];
#pragma unroll
  for (int ht = 0; ht < kHeadTiles; ++ht) {
    const int head = 8 * ht + g;
    const bool valid = head < group;
    const __nv_bfloat16* const q_row = q +
                                       (int64_t{kv_head} * group + (valid ? head : 0)) * head_dim +
                                       warp * kDimsPerWarp + 2 * t;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      q_frag[ht][s][0] = valid ? *reinterpret_cast<const uint32_t*>(q_row + 16 * s) : 0u;
      q_frag[ht][s][1] = valid ? *reinterpret_cast<const uint32_t*>(q_row + 16 * s + 8) : 0u;
    }
  }

  float acc[kHeadTiles][kSteps][4] = {};  // O^T: dims 16 mt + g (+8) x heads 8 ht + 2t (+1)
  float running_max[kHeadTiles], running_sum[kHeadTiles];  // head 8 ht + g, log2 units
#pragma unroll
  for (int ht = 0; ht < kHeadTiles; ++ht) {
    running_max[ht] = -INFINITY;
    running_sum[ht] = 0.0f;
  }
  // ldmatrix rows: K matrices (keys 0-7, c), (8-15, c), (0-7, c+1), (8-15,
  // c+1) = a0..a3 of S^T's A; V matrices (keys 0-7, c), (0-7, c+1), (8-15,
  // c), (8-15, c+1) = a0..a3 of V^T's A after the transpose.
  const int k_row = lane % 8 + lane / 8 % 2 * 8, k_chunk = lane / 16;
  const int v_row = lane % 8 + lane / 16 * 8, v_chunk = lane / 8 % 2;
  const int warp_chunk = warp * kDimsPerWarp / 8;

  for (int i = 0; i < stages_total; ++i) {
    WaitCopies<kStages - 2>();
    __syncthreads();  // stage i landed everywhere; stage i - 1 is free again
    issue(i + kStages - 1);
    const unsigned char* const stage = smem + (i % kStages) * stage_bytes;
    if (i % 2 == 0) {
      float s[kHeadTiles][4] = {};
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        uint32_t a[4];
        LoadMatrixX4(
            SharedAddress(stage + StageOffset(k_row, warp_chunk + 2 * step + k_chunk, row_bytes)),
            a);
#pragma unroll
        for (int ht = 0; ht < kHeadTiles; ++ht)
          Mma(s[ht], a, q_frag[ht][step][0], q_frag[ht][step][1]);
      }
      float* const part = scores + warp * kDecodeBlockKeys * kHeads;
#pragma unroll
      for (int ht = 0; ht < kHeadTiles; ++ht) {
        *reinterpret_cast<float2*>(part + g * kHeads + 8 * ht + 2 * t) =
            make_float2(s[ht][0], s[ht][1]);
        *reinterpret_cast<float2*>(part + (g + 8) * kHeads + 8 * ht + 2 * t) =
            make_float2(s[ht][2], s[ht][3]);
      }
      continue;
    }
    const int valid_keys = chunk_len - i / 2 * kDecodeBlockKeys;  // >= 1
    uint32_t p_frag[kHeadTiles][2];
#pragma unroll
    for (int ht = 0; ht < kHeadTiles; ++ht) {
      const int head = 8 * ht + g;
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = 2 * t + e % 2 + 8 * (e / 2);
        float sum = 0.0f;
        for (int w = 0; w < warps; ++w) sum += scores[(w * kDecodeBlockKeys + key) * kHeads + head];
        x[e] = key < valid_keys ? sum * kLog2e : -INFINITY;
      }
      float block_max = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
      block_max = fmaxf(block_max, __shfl_xor_sync(kFullMask, block_max, 1));
      block_max = fmaxf(block_max, __shfl_xor_sync(kFullMask, block_max, 2));
      // Key 0 of the block is always visible, so new_max is finite and the
      // first block's rescale is exp2(-inf) = 0.
      const float new_max = fmaxf(running_max[ht], block_max);
      const float rescale = exp2f(running_max[ht] - new_max);
      running_max[ht] = new_max;
      // P is rounded to bf16 for the mma; the sum adds the rounded values so
      // numerator and denominator use the same weights.
      float p[4], p_sum = 0.0f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[e] = __bfloat162float(__float2bfloat16_rn(exp2f(x[e] - new_max)));
        p_sum += p[e];
      }
      p_sum += __shfl_xor_sync(kFullMask, p_sum, 1);
      p_sum += __shfl_xor_sync(kFullMask, p_sum, 2);
      running_sum[ht] = running_sum[ht] * rescale + p_sum;
      p_frag[ht][0] = PackBf16x2(p[0], p[1]);
      p_frag[ht][1] = PackBf16x2(p[2], p[3]);
      // This lane's accumulators hold heads 2t and 2t + 1, whose rescale
      // lanes 4 (2t) and 4 (2t + 1) computed.
      const float rescale_even = __shfl_sync(kFullMask, rescale, 8 * t);
      const float rescale_odd = __shfl_sync(kFullMask, rescale, 8 * t + 4);
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        acc[ht][mt][0] *= rescale_even;
        acc[ht][mt][1] *= rescale_odd;
        acc[ht][mt][2] *= rescale_even;
        acc[ht][mt][3] *= rescale_odd;
      }
    }
#pragma unroll
    for (int mt = 0; mt < kSteps; ++mt) {
      uint32_t a[4];
      LoadMatrixX4Transposed(
          SharedAddress(stage + StageOffset(v_row, warp_chunk + 2 * mt + v_chunk, row_bytes)), a);
#pragma unroll
      for (int ht = 0; ht < kHeadTiles; ++ht) Mma(acc[ht][mt], a, p_frag[ht][0], p_frag[ht][1]);
    }
  }

  // Partial rows (chunk, query head); the group's heads are consecutive.
  const int64_t row0 = int64_t{chunk} * num_kv_heads * group + int64_t{kv_head} * group;
#pragma unroll
  for (int ht = 0; ht < kHeadTiles; ++ht) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int head = 8 * ht + 2 * t + half;
      if (head >= group) continue;
      float* const o = partial_out + (row0 + head) * head_dim + warp * kDimsPerWarp + g;
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        o[16 * mt] = acc[ht][mt][half];
        o[16 * mt + 8] = acc[ht][mt][2 + half];
      }
    }
    const int head = 8 * ht + g;
    if (warp == 0 && t == 0 && head < group) {
      partial_max_sum[row0 + head] = make_float2(running_max[ht], running_sum[ht]);
    }
  }
}

// One block per (query head, 64 dims): out = Σ_c w_c o_c / Σ_c w_c l_c with
// w_c = 2^(m_c - max_c m_c) over the active chunks. No active chunk (a
// negative position) gives 0 / 0 = NaN.
__global__ void __launch_bounds__(kMergeThreads)
    DecodeAttentionMergeKernel(const float* __restrict__ partial_out,       // [chunks][heads][D]
                               const float2* __restrict__ partial_max_sum,  // [chunks][heads]
                               const int64_t* __restrict__ position, int64_t window,
                               int64_t capacity, int chunks, int num_heads, int head_dim,
                               __nv_bfloat16* __restrict__ out) {  // [num_heads, D]
  __shared__ float weight[kDecodeMaxChunks];
  __shared__ float weighted_sum[kDecodeMaxChunks];
  __shared__ float warp_max[kMergeThreads / 32];
  __shared__ float4 slice_out[kMergeSlices][kMergeColumns];
  __shared__ float slice_sum[kMergeSlices];
  WaitForPredecessor();
  AllowDependents();
  const int head = blockIdx.x, tid = threadIdx.x;
  const int active = static_cast<int>(
      DecodeActiveChunks(VisibleKeysOf(*position, window, capacity).count, chunks));

  float chunk_max = -INFINITY;
  for (int c = tid; c < active; c += kMergeThreads) {
    chunk_max = fmaxf(chunk_max, partial_max_sum[int64_t{c} * num_heads + head].x);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, offset));
  }
  if (tid % 32 == 0) warp_max[tid / 32] = chunk_max;
  __syncthreads();
  float overall_max = warp_max[0];
#pragma unroll
  for (int w = 1; w < kMergeThreads / 32; ++w) overall_max = fmaxf(overall_max, warp_max[w]);
  for (int c = tid; c < active; c += kMergeThreads) {
    const float2 max_sum = partial_max_sum[int64_t{c} * num_heads + head];
    weight[c] = exp2f(max_sum.x - overall_max);
    weighted_sum[c] = weight[c] * max_sum.y;
  }
  __syncthreads();

  const int column = tid % kMergeColumns, slice = tid / kMergeColumns;
  const int d = blockIdx.y * kDimsPerWarp + 4 * column;
  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float denominator = 0.0f;
  for (int c = slice; c < active; c += kMergeSlices) {
    const float w = weight[c];
    const float4 o = *reinterpret_cast<const float4*>(
        partial_out + (int64_t{c} * num_heads + head) * head_dim + d);
    sum.x += w * o.x;
    sum.y += w * o.y;
    sum.z += w * o.z;
    sum.w += w * o.w;
    denominator += weighted_sum[c];
  }
  slice_out[slice][column] = sum;
  if (column == 0) slice_sum[slice] = denominator;
  __syncthreads();
  if (slice != 0) return;
  float4 total = slice_out[0][column];
  float total_sum = slice_sum[0];
#pragma unroll
  for (int s = 1; s < kMergeSlices; ++s) {
    const float4 part = slice_out[s][column];
    total.x += part.x;
    total.y += part.y;
    total.z += part.z;
    total.w += part.w;
    total_sum += slice_sum[s];
  }
  *reinterpret_cast<uint2*>(out + int64_t{head} * head_dim + d) =
      make_uint2(PackBf16x2(total.x / total_sum, total.y / total_sum),
                 PackBf16x2(total.z / total_sum, total.w / total_sum));
}

using AttentionKernel = void (*)(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
                                 int64_t, int, int, int, const int64_t*, int64_t, float*, float2*);
// The instances: [head tiles - 1][stage option].
constexpr AttentionKernel kAttentionKernels[2][3] = {
    {DecodeAttentionKernel<1, kStageOptions[0]>, DecodeAttentionKernel<1, kStageOptions[1]>,
     DecodeAttentionKernel<1, kStageOptions[2]>},
    {DecodeAttentionKernel<2, kStageOptions[0]>, DecodeAttentionKernel<2, kStageOptions[1]>,
     DecodeAttentionKernel<2, kStageOptions[2]>},
};

absl::Status CheckHeadDim(int head_dim, const char* what) {
  if (head_dim < kDimsPerWarp || head_dim > kMaxHeadDim || head_dim % kDimsPerWarp != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: head_dim must be a multiple of %d in [%d, %d], but got %d", what,
                        kDimsPerWarp, kDimsPerWarp, kMaxHeadDim, head_dim));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DecodeAttentionWorkspace> DecodeAttentionWorkspace::Create(int num_heads,
                                                                          int head_dim,
                                                                          int64_t max_span) {
  constexpr const char* kWhat = "DecodeAttentionWorkspace::Create";
  if (num_heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: num_heads must be >= 1, but got %d", kWhat, num_heads));
  }
  if (absl::Status s = CheckHeadDim(head_dim, kWhat); !s.ok()) return s;
  if (max_span < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: max_span must be >= 1, but got %d", kWhat, max_span));
  }
  int device = 0;
  DecodeAttentionWorkspace ws;
  GQ_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  GQ_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&ws.multiprocessors_, cudaDevAttrMultiProcessorCount, device));
  int most_blocks = 1;
  for (int ht = 0; ht < 2; ++ht) {
    for (int option = 0; option < 3; ++option) {
      const AttentionKernel kernel = kAttentionKernels[ht][option];
      const int bytes = AttentionSharedBytes(head_dim, ht + 1, kStageOptions[option]);
      GQ_RETURN_IF_CUDA_ERROR(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
      int blocks = 0;
      GQ_RETURN_IF_CUDA_ERROR(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, head_dim / 2, bytes));
      if (blocks < 1) {
        return absl::InternalError(absl::StrFormat(
            "%s: the attention kernel (D=%d, %d head tiles, %d stages) does not fit on a "
            "multiprocessor",
            kWhat, head_dim, ht + 1, kStageOptions[option]));
      }
      ws.blocks_per_sm_[ht][option] = blocks;
      most_blocks = std::max(most_blocks, blocks);
    }
  }
  ws.num_heads_ = num_heads;
  ws.head_dim_ = head_dim;
  ws.max_span_ = max_span;
  // One KV head gets the most chunks (the whole wave).
  ws.max_chunks_ = DecodeChunksPerKvHead(ws.multiprocessors_, most_blocks, 1, max_span);
  const int64_t rows = int64_t{ws.max_chunks_} * num_heads;
  absl::StatusOr<DeviceBuffer<float>> partial_out = DeviceBuffer<float>::Allocate(rows * head_dim);
  if (!partial_out.ok()) return partial_out.status();
  absl::StatusOr<DeviceBuffer<float2>> partial_max_sum = DeviceBuffer<float2>::Allocate(rows);
  if (!partial_max_sum.ok()) return partial_max_sum.status();
  ws.partial_out_ = *std::move(partial_out);
  ws.partial_max_sum_ = *std::move(partial_max_sum);
  return ws;
}

absl::Status DecodeAttention(const __nv_bfloat16* q, int num_heads, const KvLayerView& cache,
                             const int64_t* position, int64_t window, __nv_bfloat16* out,
                             DecodeAttentionWorkspace& workspace, cudaStream_t stream,
                             const DecodeAttentionTuning& tuning) {
  constexpr const char* kWhat = "DecodeAttention";
  if (q == nullptr || !Aligned(q, 4)) {
    return absl::InvalidArgumentError("DecodeAttention: q must be non-null and 4-byte aligned");
  }
  if (out == nullptr || !Aligned(out, 8)) {
    return absl::InvalidArgumentError("DecodeAttention: out must be non-null and 8-byte aligned");
  }
  if (position == nullptr || !Aligned(position, sizeof(int64_t))) {
    return absl::InvalidArgumentError(
        "DecodeAttention: position must be a non-null, aligned device pointer");
  }
  if (absl::Status s = CheckKvLayerView(cache, kWhat); !s.ok()) return s;
  if (absl::Status s = CheckHeadDim(cache.head_dim, "DecodeAttention: cache.head_dim"); !s.ok()) {
    return s;
  }
  if (num_heads < 1 || num_heads % cache.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: num_heads must be a positive multiple of cache.num_kv_heads (%d), "
                        "but got %d",
                        kWhat, cache.num_kv_heads, num_heads));
  }
  const int group = num_heads / cache.num_kv_heads;
  if (group > kDecodeMaxGroup) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: at most %d query heads per KV head, but num_heads %d / "
                        "num_kv_heads %d = %d",
                        kWhat, kDecodeMaxGroup, num_heads, cache.num_kv_heads, group));
  }
  if (window < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: window must be >= 0 (0: no window), but got %d", kWhat, window));
  }
  int stage_option = kDefaultStageOption;
  if (tuning.stages != 0) {
    const int* found = std::find(std::begin(kStageOptions), std::end(kStageOptions), tuning.stages);
    if (found == std::end(kStageOptions)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: tuning.stages must be 0, 3, 4 or 6, but got %d", kWhat, tuning.stages));
    }
    stage_option = static_cast<int>(found - std::begin(kStageOptions));
  }
  if (tuning.blocks_per_sm < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: tuning.blocks_per_sm must be >= 0, but got %d", kWhat, tuning.blocks_per_sm));
  }
  const int64_t max_span = DecodeMaxSpan(window, cache.capacity);
  if (workspace.num_heads() != num_heads || workspace.head_dim() != cache.head_dim ||
      workspace.max_span() < max_span) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: the workspace was created for num_heads %d, head_dim %d, max_span %d; this layer "
        "needs %d, %d, >= %d",
        kWhat, workspace.num_heads(), workspace.head_dim(), workspace.max_span(), num_heads,
        cache.head_dim, max_span));
  }

  const int head_tiles = group > 8 ? 2 : 1;
  int blocks_per_sm = workspace.blocks_per_sm(head_tiles, stage_option);
  if (tuning.blocks_per_sm > 0) {
    blocks_per_sm = std::min(blocks_per_sm, tuning.blocks_per_sm);
  } else if (window > 0) {
    blocks_per_sm = std::min(blocks_per_sm, kWindowBlocksPerSm);
  }
  const int chunks = DecodeChunksPerKvHead(workspace.multiprocessors(), blocks_per_sm,
                                           cache.num_kv_heads, max_span);
  if (chunks > workspace.max_chunks()) {
    return absl::InternalError(absl::StrFormat("%s: %d chunks exceed the workspace's %d", kWhat,
                                               chunks, workspace.max_chunks()));
  }
  const int shared_bytes =
      AttentionSharedBytes(cache.head_dim, head_tiles, kStageOptions[stage_option]);
  if (absl::Status s = LaunchKernel(kAttentionKernels[head_tiles - 1][stage_option],
                                    dim3(chunks, cache.num_kv_heads), dim3(cache.head_dim / 2),
                                    shared_bytes, stream,
                                    /*overlap=*/true, q, static_cast<const __nv_bfloat16*>(cache.k),
                                    static_cast<const __nv_bfloat16*>(cache.v), cache.capacity,
                                    cache.num_kv_heads, cache.head_dim, group, position, window,
                                    workspace.partial_out(), workspace.partial_max_sum());
      !s.ok()) {
    return s;
  }
  return LaunchKernel(DecodeAttentionMergeKernel, dim3(num_heads, cache.head_dim / kDimsPerWarp),
                      dim3(kMergeThreads), 0, stream, /*overlap=*/true,
                      static_cast<const float*>(workspace.partial_out()),
                      static_cast<const float2*>(workspace.partial_max_sum()), position, window,
                      cache.capacity, chunks, num_heads, cache.head_dim, out);
}

}  // namespace gquant::cuda
