// Internal to the prefill attention kernels (prefill_attention.cu: mma.sync,
// any GPU; prefill_attention_wgmma.cu: wgmma, sm_90a): their arguments, the
// tile sizes they share and what a block reads (its queries, the key tiles
// it walks, the cache rows of each), its mask and its output store.
#ifndef GQUANT_CUDA_PREFILL_ATTENTION_INTERNAL_CUH_
#define GQUANT_CUDA_PREFILL_ATTENTION_INTERNAL_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cuda_status.cuh"
#include "device_primitives.cuh"
#include "launch.cuh"
#include "online_softmax.cuh"

namespace gquant::cuda::prefill_attention_internal {

inline constexpr int kRows = 64;       // queries per block
inline constexpr int kKeys = 64;       // keys per tile (mma.sync kernel)
inline constexpr int kSliceDim = 256;  // head-dim columns of a 16 x 256 fp32 accumulator
inline constexpr int kRowWarps = kRows / 16;

struct Params {
  const __nv_bfloat16* q;  // [tokens, num_heads, D]
  __nv_bfloat16* out;      // [tokens, num_heads, D]
  const __nv_bfloat16* k;  // [capacity, num_kv_heads, D]
  const __nv_bfloat16* v;  // [capacity, num_kv_heads, D]
  int tokens;
  int num_heads;
  int group;  // query heads per KV head
  int num_kv_heads;
  int first_position;       // of query row 0
  int window;               // 0: none
  int capacity;             // slots of the cache, clamped to kMaxPositions (slot = position beyond)
  const int32_t* last_key;  // [tokens] last key each query sees; null: its own position
};

// Byte offset of 16-byte chunk `chunk` of tile row `row` (chunks swizzled by
// row % 8).
template <int kRowBytes>
__device__ __forceinline__ uint32_t SwizzledOffset(int row, int chunk) {
  return row * kRowBytes + ((chunk ^ (row & 7)) << 4);
}

// Copies kTileRows rows of kHeadDim bf16 into a shared-memory tile with
// kThreads threads: row_source(r) is the global address of row r, or null for
// a row to zero-fill; offset(r, c) the byte offset of its 16-byte chunk c.
// Thread i copies chunk i % (kHeadDim / 8) of every (kThreads / (kHeadDim /
// 8))-th row, so a warp reads 512 contiguous bytes per copy.
template <int kHeadDim, int kTileRows, int kThreads, typename RowSource, typename Offset>
__device__ __forceinline__ void CopyTileRows(uint8_t* tile, RowSource row_source, Offset offset) {
  constexpr int kChunksPerRow = kHeadDim / 8;
  constexpr int kRowsPerPass = kThreads / kChunksPerRow;
  static_assert(kThreads % kChunksPerRow == 0 && kTileRows % kRowsPerPass == 0);
  const int chunk = threadIdx.x % kChunksPerRow;
  const int first_row = threadIdx.x / kChunksPerRow;
  const uint32_t tile_address = SharedAddress(tile);
#pragma unroll
  for (int i = 0; i < kTileRows / kRowsPerPass; ++i) {
    const int row = first_row + i * kRowsPerPass;
    const __nv_bfloat16* source = row_source(row);
    const uint32_t at = offset(row, chunk);
    if (source != nullptr) {
      CopyAsync16(tile_address + at, source + chunk * 8);
    } else {
      *reinterpret_cast<uint4*>(tile + at) = make_uint4(0, 0, 0, 0);
    }
  }
}

// What a block (query head, tile of kRows queries) reads: its queries, the
// key tiles it walks and the cache rows of each, as the kernels share them.
template <int kHeadDim, int kTileKeys = kKeys>
struct QueryBlock {
  Params p;
  int head, kv_head;
  int q0, valid_rows;           // query rows [q0, q0 + valid_rows) of the chunk
  int first_query, last_query;  // their positions
  int key_first, last_key;      // the keys any of them sees
  int tile_first, tile_last;    // key tiles holding those keys

  // After the predecessor wait (last_key may come from an earlier copy).
  __device__ __forceinline__ explicit QueryBlock(const Params& params) : p(params) {
    head = blockIdx.x;
    kv_head = head / p.group;
    // Later query tiles see more keys: they get the lower block indices, so
    // the longest blocks start first.
    q0 = (static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y)) * kRows;
    valid_rows = min(kRows, p.tokens - q0);
    first_query = p.first_position + q0;
    last_query = first_query + valid_rows - 1;
    key_first = p.window > 0 ? max(0, first_query - p.window + 1) : 0;
    // The last key any row sees: its own position, or beyond it (image
    // tokens seeing the rest of their image) when last_key is given.
    last_key = last_query;
    if (p.last_key != nullptr) {
      for (int r = 0; r < valid_rows; ++r) last_key = max(last_key, p.last_key[q0 + r]);
    }
    tile_first = key_first / kTileKeys;
    tile_last = last_key / kTileKeys;
  }

  // Row `row` of the query tile, or null past the chunk.
  __device__ __forceinline__ const __nv_bfloat16* QueryRow(int row) const {
    if (row >= valid_rows) return nullptr;
    return p.q + (static_cast<int64_t>(q0 + row) * p.num_heads + head) * kHeadDim;
  }

  // Row r of key tile `tile` in `base` (k or v), or null outside the keys
  // this block may read. The tile's readable positions [lo, hi] span at most
  // `capacity` (the launcher checks it), so their slots wrap at most once:
  // slot = position - lo + lo_slot, less capacity from position `wrap` on.
  // One division per tile instead of one per row.
  __device__ __forceinline__ auto CacheRows(const __nv_bfloat16* base, int tile) const {
    const int lo = max(tile * kTileKeys, key_first);
    const int hi = min(tile * kTileKeys + kTileKeys - 1, last_key);
    const int lo_slot = lo % p.capacity;
    const int wrap = lo + (p.capacity - lo_slot);  // < 2^31: lo and capacity are <= 2^30
    const int capacity = p.capacity, kv_heads = p.num_kv_heads, kv = kv_head;
    return [=](int row) -> const __nv_bfloat16* {
      const int position = tile * kTileKeys + row;
      if (position < lo || position > hi) return nullptr;
      const int slot = position - lo + lo_slot - (position >= wrap ? capacity : 0);
      return base + (static_cast<int64_t>(slot) * kv_heads + kv) * kHeadDim;
    };
  }

  // The last key rows g and g + 8 of warp slab `slab` see.
  __device__ __forceinline__ void RowLastKeys(int slab, int g, int (&row_last)[2]) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = slab * 16 + g + 8 * h;
      row_last[h] = first_query + row;
      if (p.last_key != nullptr && row < valid_rows) row_last[h] = p.last_key[q0 + row];
    }
  }

  // Sets the scores of keys rows g and g + 8 (of slab `slab`) do not see to
  // -inf, where key tile `tile` crosses the diagonal or the window's lower
  // edge for some row of the block.
  __device__ __forceinline__ void Mask(float (&s)[kTileKeys / 8][4], int tile, int slab, int g,
                                       int t, const int (&row_last)[2]) const {
    const int tile_key = tile * kTileKeys;
    const bool crosses_diagonal = tile_key + kTileKeys - 1 > first_query;
    const bool crosses_window = p.window > 0 && last_query - tile_key >= p.window;
    if (!crosses_diagonal && !crosses_window) return;
#pragma unroll
    for (int nt = 0; nt < kTileKeys / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = tile_key + nt * 8 + 2 * t + i % 2;
        const int query = first_query + slab * 16 + g + 8 * (i / 2);
        if (key > row_last[i / 2] || (p.window > 0 && query - key >= p.window)) {
          s[nt][i] = -INFINITY;
        }
      }
    }
  }

  // Divides a warp's 16 x 256 accumulator (columns [256 slice, + 256) of
  // rows [16 slab, + 16)) by the row sums, stages it in `stage` (row-major
  // rows of kHeadDim, swizzled; only this warp's part is touched) and
  // writes each row's 512 bytes with one 16-byte store per lane.
  __device__ __forceinline__ void StoreOutput(const float (&o)[kSliceDim / 8][4],
                                              const float (&row_sum)[2], uint8_t* stage, int slab,
                                              int slice, int lane) const {
    constexpr int kRowBytes = kHeadDim * 2;
    const int g = lane / 4, t = lane % 4, slice_chunk = slice * kSliceDim / 8;
    float inverse[2];
    RowInverseSums(row_sum, inverse);
#pragma unroll
    for (int nt = 0; nt < kSliceDim / 8; ++nt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = slab * 16 + g + 8 * h;
        *reinterpret_cast<uint32_t*>(stage + SwizzledOffset<kRowBytes>(row, slice_chunk + nt) +
                                     4 * t) =
            PackBf16x2(o[nt][2 * h] * inverse[h], o[nt][2 * h + 1] * inverse[h]);
      }
    }
    __syncwarp();
#pragma unroll 4
    for (int r = 0; r < 16; ++r) {
      const int row = slab * 16 + r;
      if (row >= valid_rows) break;
      const uint4 value = *reinterpret_cast<const uint4*>(
          stage + SwizzledOffset<kRowBytes>(row, slice_chunk + lane));
      *reinterpret_cast<uint4*>(p.out +
                                (static_cast<int64_t>(q0 + row) * p.num_heads + head) * kHeadDim +
                                (slice_chunk + lane) * 8) = value;
    }
  }
};

// Launches kKernel on the (query head, query tile) grid with `threads` a
// block and `shared_bytes` of dynamic shared memory, which above 48 KiB a
// kernel must opt in to: once per kernel and process. `name` labels errors.
template <auto kKernel>
absl::Status LaunchOnQueryTiles(const char* name, int threads, int shared_bytes, const Params& p,
                                cudaStream_t stream) {
  static const cudaError_t opted_in =
      cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes);
  if (opted_in != cudaSuccess) {
    return CudaStatus(opted_in, absl::StrCat("cudaFuncSetAttribute(", name,
                                             ", MaxDynamicSharedMemorySize, ", shared_bytes, ")")
                                    .c_str());
  }
  const dim3 grid(p.num_heads, (p.tokens + kRows - 1) / kRows);
  return LaunchKernel(kKernel, grid, dim3(threads), shared_bytes, stream, /*overlap=*/true, p);
}

// The wgmma kernels (prefill_attention_wgmma.cu): whether they run here
// (built for sm_90a, on a compute capability 9.0 device with the shared
// memory they take), and their launch for head_dim 256 or 512. Host only.
bool WgmmaAvailable();
absl::Status LaunchWgmma(const Params& p, int head_dim, cudaStream_t stream);

}  // namespace gquant::cuda::prefill_attention_internal

#endif  // GQUANT_CUDA_PREFILL_ATTENTION_INTERNAL_CUH_
