// Flash-attention style prefill kernel (mma.sync m16n8k16 bf16, fp32
// accumulation), in the schedule of FlashAttention-2, and the entry point
// (argument checks, then this kernel or the wgmma one of
// prefill_attention_wgmma.cu on Hopper).
//
// Work split. One block per (query head, tile of kRows = 64 consecutive
// queries). Its warps form a kRowWarps x kColWarps grid: warp (slab, slice)
// owns query rows [16 slab, 16 slab + 16) and head-dim columns [256 slice,
// 256 slice + 256) of both products, so every warp keeps a 16 x 256 fp32
// output accumulator (128 registers per thread). D = 256 has one slice
// (4 warps); D = 512 has two (8 warps): a 16 x 512 accumulator would not fit
// in registers. With two slices the scores S = Q Kᵀ are split over the head
// dimension too: each warp computes the partial S of its 256 columns, the
// partials go through shared memory, and every warp of the slab adds them in
// the same order (slice 0 + slice 1), so both hold bitwise identical S, row
// maxima and P without any further exchange. P then stays in registers: the
// m16n8 accumulator layout of S is the A-fragment layout of P · V.
//
// Keys. The block walks key tiles of kKeys = 64 positions aligned to
// multiples of 64, from the tile holding the first key any of its queries
// sees to the one holding the last (its last query, or a later key of an
// image when last_key is given), so the cost follows the visible
// span (causal and window): fully masked tiles are never loaded. Only tiles
// that cross the diagonal or the window's edge apply the mask. Key rows
// outside [first visible, last query] (the ends of the first and last tile)
// are zero-filled instead of read: their cache slots may hold anything, NaN
// included, and P = 0 times NaN would still poison the product.
//
// Softmax. fp32 with a real running maximum per row (online rescaling):
// after each tile the row max m grows to m' and the accumulator and the row
// sum are scaled by exp(m - m'). Exponentials are exp2 of log2(e)-scaled
// scores. Rows whose keys so far are all masked keep m = -inf and subtract
// 0 instead, so exp gives 0 rather than NaN. P is rounded to bf16 for the
// tensor cores (as HF's eager path rounds softmax to bf16 before @V); the
// row sums use the unrounded fp32 values.
//
// Pipeline (per key tile; Q, K and V each have one shared-memory tile):
//   wait K(t); barrier; start V(t) copies; S = Q K(t)ᵀ; mask; softmax;
//   wait V(t); barrier; start K(t+1) copies; O += P V(t).
// So the copies of V overlap the scores and those of the next K the P · V
// product. Shared memory: Q, K and V tiles (3 x 32 KiB at D = 256, 2 blocks
// per multiprocessor; 3 x 64 KiB + 32 KiB of exchange at D = 512, one block).
// Rows of 16-byte chunks are XOR-swizzled by row % 8, so ldmatrix (8 rows at
// one logical chunk) and the 16-byte copies are free of bank conflicts.
//
// Output. Each warp divides by the row sums, stages its 16 x 256 bf16 part
// in its own part of the Q tile (no other warp reads it) and writes rows of
// 512 contiguous bytes.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device_primitives.cuh"
#include "launch.cuh"
#include "online_softmax.cuh"
#include "prefill_attention.cuh"
#include "prefill_attention_internal.cuh"

namespace gquant::cuda {
namespace {

using namespace prefill_attention_internal;

constexpr int kMaxQueryTiles = 65535;       // gridDim.y
constexpr int64_t kMaxPositions = 1 << 30;  // positions and slots: int32 math with headroom
static_assert(kRows == kKeys, "the Q, K and V tiles share one size");
static_assert(kSliceDim / 8 == 32, "the output stage gives each lane one 16-byte chunk of a row");

template <int kHeadDim>
struct Shape {
  static constexpr int kColWarps = kHeadDim / kSliceDim;
  static constexpr int kWarps = kRowWarps * kColWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kTileBytes = kRows * kRowBytes;
  // Partial scores of every warp: 8 n-tiles x 32 lanes x float4.
  static constexpr int kExchangeBytes = kColWarps > 1 ? (kKeys / 8) * 32 * 16 * kWarps : 0;
  static constexpr int kSharedBytes = 3 * kTileBytes + kExchangeBytes;
  static_assert(kHeadDim % kSliceDim == 0);
  static_assert(kSharedBytes <= 227 * 1024, "over the H100's shared memory per block");
};

// Copies the kRows rows of a tile into shared memory, rows of 16-byte
// chunks swizzled by row % 8 (CopyTileRows).
template <int kHeadDim, typename RowSource>
__device__ __forceinline__ void LoadTile(uint8_t* tile, RowSource row_source) {
  using S = Shape<kHeadDim>;
  CopyTileRows<kHeadDim, kRows, S::kThreads>(tile, row_source, [](int row, int chunk) {
    return SwizzledOffset<S::kRowBytes>(row, chunk);
  });
}

template <int kHeadDim>
__global__ void __launch_bounds__(Shape<kHeadDim>::kThreads, kHeadDim == 256 ? 2 : 1)
    PrefillAttentionKernel(const Params p) {
  using S = Shape<kHeadDim>;
  constexpr int kRowBytes = S::kRowBytes;
  extern __shared__ __align__(128) uint8_t shared[];
  uint8_t* const q_tile = shared;
  uint8_t* const k_tile = shared + S::kTileBytes;
  uint8_t* const v_tile = shared + 2 * S::kTileBytes;
  float4* const exchange = reinterpret_cast<float4*>(shared + 3 * S::kTileBytes);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slab = warp % kRowWarps;   // query rows [16 slab, 16 slab + 16)
  const int slice = warp / kRowWarps;  // head-dim columns [256 slice, 256 slice + 256)
  const int slice_chunk = slice * kSliceDim / 8;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates

  WaitForPredecessor();  // q and the cache come from earlier kernels
  const QueryBlock<kHeadDim> b(p);
  LoadTile<kHeadDim>(q_tile, [&](int row) { return b.QueryRow(row); });
  LoadTile<kHeadDim>(k_tile, b.CacheRows(p.k, b.tile_first));
  CommitCopies();

  // ldmatrix.x4: lane l gives the address of row l % 8 of matrix l / 8.
  // Every row below is lane_row plus a multiple of 8, so its swizzle is
  // lane_row. Matrices 0..3 are:
  //   A (Q, 16 rows x 16 dims): rows 0-7 / 8-15 / 0-7 / 8-15, dims 0-7 / 0-7 / 8-15 / 8-15;
  //   B (K, 16 keys x 16 dims): keys 0-7 / 0-7 / 8-15 / 8-15, dims 0-7 / 8-15 / 0-7 / 8-15,
  //     i.e. (b0, b1) of keys 0-7, then of keys 8-15;
  //   B (V transposed, 16 keys x 16 dims): keys 0-7 / 8-15 / 0-7 / 8-15, dims 0-7 / 0-7 /
  //     8-15 / 8-15, i.e. (b0, b1) of dims 0-7, then of dims 8-15.
  const int lane_row = lane % 8, matrix = lane / 8;
  const int a_row = slab * 16 + (matrix % 2) * 8 + lane_row, a_chunk = matrix / 2;
  const int k_row = (matrix / 2) * 8 + lane_row, k_chunk = matrix % 2;
  const int v_row = (matrix % 2) * 8 + lane_row, v_chunk = matrix / 2;
  const uint32_t q_address = SharedAddress(q_tile);
  const uint32_t k_address = SharedAddress(k_tile);
  const uint32_t v_address = SharedAddress(v_tile);

  // Accumulator fragments: rows g (registers 0, 1) and g + 8 (2, 3), columns
  // 2t and 2t + 1 of each 8-wide n-tile.
  float o[kSliceDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};  // rows g and g + 8, unscaled
  float row_sum[2] = {0.0f, 0.0f};            // this thread's columns only
  int row_last[2];                            // the last key rows g and g + 8 see
  b.RowLastKeys(slab, g, row_last);

  for (int tile = b.tile_first; tile <= b.tile_last; ++tile) {
    WaitCopies<0>();
    __syncthreads();  // K(tile) (and Q) are in; every warp is done with V(tile - 1)
    LoadTile<kHeadDim>(v_tile, b.CacheRows(p.v, tile));
    CommitCopies();

    // S = Q Kᵀ over this warp's 256 columns: 16 rows x 64 keys.
    float s[kKeys / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kSliceDim / 16; ++kk) {
      uint32_t a[4];
      LoadMatrixX4(q_address + SwizzledOffset<kRowBytes>(a_row, slice_chunk + 2 * kk + a_chunk), a);
#pragma unroll
      for (int np = 0; np < kKeys / 16; ++np) {
        uint32_t bk[4];
        LoadMatrixX4(
            k_address + SwizzledOffset<kRowBytes>(np * 16 + k_row, slice_chunk + 2 * kk + k_chunk),
            bk);
        Mma(s[2 * np], a, bk[0], bk[1]);
        Mma(s[2 * np + 1], a, bk[2], bk[3]);
      }
    }
    if constexpr (S::kColWarps > 1) {
      // Sum the slices' partial scores in slice order in every warp.
      float4* const mine = exchange + warp * (kKeys / 8) * 32;
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
        mine[nt * 32 + lane] = make_float4(s[nt][0], s[nt][1], s[nt][2], s[nt][3]);
      }
      __syncthreads();
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
        float4 sum = exchange[(slab * (kKeys / 8) + nt) * 32 + lane];
#pragma unroll
        for (int c = 1; c < S::kColWarps; ++c) {
          const float4 part = exchange[((c * kRowWarps + slab) * (kKeys / 8) + nt) * 32 + lane];
          sum.x += part.x;
          sum.y += part.y;
          sum.z += part.z;
          sum.w += part.w;
        }
        s[nt][0] = sum.x;
        s[nt][1] = sum.y;
        s[nt][2] = sum.z;
        s[nt][3] = sum.w;
      }
    }

    b.Mask(s, tile, slab, g, t, row_last);
    // Online softmax: new row maxima, rescale, exponentiate.
    OnlineSoftmaxStep(s, o, row_max, row_sum);

    WaitCopies<0>();
    __syncthreads();  // V(tile) is in; every warp is done with K(tile)
    if (tile < b.tile_last) {
      LoadTile<kHeadDim>(k_tile, b.CacheRows(p.k, tile + 1));
      CommitCopies();
    }

    // O += P V over this warp's 256 columns.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t a[4] = {PackBf16x2(s[2 * kk][0], s[2 * kk][1]),
                             PackBf16x2(s[2 * kk][2], s[2 * kk][3]),
                             PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kSliceDim / 16; ++dp) {
        uint32_t bv[4];
        LoadMatrixX4Transposed(
            v_address + SwizzledOffset<kRowBytes>(kk * 16 + v_row, slice_chunk + 2 * dp + v_chunk),
            bv);
        Mma(o[2 * dp], a, bv[0], bv[1]);
        Mma(o[2 * dp + 1], a, bv[2], bv[3]);
      }
    }
  }

  // This warp's rows and columns of the Q tile (no other warp reads them).
  b.StoreOutput(o, row_sum, q_tile, slab, slice, lane);
  AllowDependents();  // late: the grid has several waves (device_primitives.cuh)
}

template <int kHeadDim>
absl::Status Launch(const Params& p, cudaStream_t stream) {
  using S = Shape<kHeadDim>;
  return LaunchOnQueryTiles<PrefillAttentionKernel<kHeadDim>>(
      kHeadDim == 256 ? "PrefillAttentionKernel<256>" : "PrefillAttentionKernel<512>", S::kThreads,
      S::kSharedBytes, p, stream);
}

}  // namespace

absl::Status PrefillAttention(const __nv_bfloat16* q, int64_t tokens, int num_heads,
                              int64_t first_position, int64_t window, const KvLayerView& cache,
                              __nv_bfloat16* out, cudaStream_t stream, const int32_t* last_key,
                              PrefillAttentionPath path) {
  const auto invalid = [](const auto&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillAttention: ", parts...));
  };
  if (q == nullptr || out == nullptr || cache.k == nullptr || cache.v == nullptr) {
    return invalid(
        absl::StrFormat("expected non-null q, out, cache.k and cache.v, but got %p, %p, %p and %p",
                        q, out, cache.k, cache.v));
  }
  if (!Aligned(q, 16) || !Aligned(out, 16) || !Aligned(cache.k, 16) || !Aligned(cache.v, 16)) {
    return invalid(absl::StrFormat(
        "expected 16-byte aligned q, out, cache.k and cache.v, but got %p, %p, %p and %p", q, out,
        cache.k, cache.v));
  }
  if (tokens < 0) return invalid("expected tokens >= 0, but got ", tokens);
  if (cache.head_dim != 256 && cache.head_dim != 512) {
    return invalid("expected cache.head_dim 256 or 512, but got ", cache.head_dim);
  }
  if (cache.num_kv_heads < 1 || num_heads < 1 || num_heads % cache.num_kv_heads != 0) {
    return invalid("expected num_heads a positive multiple of cache.num_kv_heads, but got ",
                   num_heads, " and ", cache.num_kv_heads);
  }
  if (first_position < 0) {
    return invalid("expected first_position >= 0, but got ", first_position);
  }
  if (window < 0) return invalid("expected window >= 0 (0: none), but got ", window);
  if (tokens == 0) return absl::OkStatus();
  if (first_position > kMaxPositions - tokens) {
    return invalid("expected first_position + tokens <= 2^30, but got ", first_position, " + ",
                   tokens);
  }
  if (tokens > int64_t{kMaxQueryTiles} * kRows) {
    return invalid("expected tokens <= ", int64_t{kMaxQueryTiles} * kRows, ", but got ", tokens);
  }
  const KeyRange keys = ChunkKeyRange(first_position, tokens, window);
  if (cache.capacity < keys.size()) {
    return invalid("cache.capacity ", cache.capacity, " is smaller than the ", keys.size(),
                   " positions [", keys.first, ", ", keys.last,
                   "] the chunk attends to (first_position ", first_position, ", tokens ", tokens,
                   ", window ", window, ")");
  }

  Params p{};
  p.q = q;
  p.out = out;
  p.k = cache.k;
  p.v = cache.v;
  p.tokens = static_cast<int>(tokens);
  p.num_heads = num_heads;
  p.group = num_heads / cache.num_kv_heads;
  p.num_kv_heads = cache.num_kv_heads;
  p.first_position = static_cast<int>(first_position);
  // A window longer than every position is no window; positions are below
  // kMaxPositions, so both values fit an int.
  p.window = window > keys.last ? 0 : static_cast<int>(window);
  p.capacity = static_cast<int>(std::min<int64_t>(cache.capacity, kMaxPositions));
  p.last_key = last_key;
  const bool wgmma = WgmmaAvailable();
  if (path == PrefillAttentionPath::kWgmma && !wgmma) {
    return absl::FailedPreconditionError(
        "PrefillAttention: the wgmma kernel needs a build for sm_90a and a compute capability 9.0 "
        "device");
  }
  if (wgmma && path != PrefillAttentionPath::kMmaSync) {
    return LaunchWgmma(p, cache.head_dim, stream);
  }
  return cache.head_dim == 256 ? Launch<256>(p, stream) : Launch<512>(p, stream);
}

bool PrefillAttentionWgmmaAvailable() { return WgmmaAvailable(); }

}  // namespace gquant::cuda
