// Flash-attention kernel for the vision encoder's bidirectional attention
// (mma.sync m16n8k16 bf16, fp32 accumulation), in the schedule of
// FlashAttention-2 as prefill_attention.cu, for small head dims.
//
// Work split. One block per (tile of kTileRows = 64 consecutive query rows,
// query head): blockIdx.x is the query tile, so the blocks running together
// share a head and its K/V rows stay in L2. 4 warps; warp w owns query rows
// [16 w, 16 w + 16) and all kDim columns, so its 16 x kDim fp32 output
// accumulator (kDim / 2 registers per thread, <= 64) and its Q fragments
// (kDim / 4 registers) stay in registers for the whole key walk.
//
// Head dim. kDim is head_dim rounded up to a multiple of 16 (the mma's k):
// 72 -> 80. Shared-memory rows hold kDim columns; the columns [head_dim,
// kDim) (at most one 16-byte chunk) are zero-filled in Q, K and V, so they
// add 0 to the scores and give output columns that are never stored.
//
// Keys. Tiles of 64 keys cover [0, num_keys); rows of the last tile at or
// beyond num_keys are zero-filled in shared memory (never read from global
// memory: padding rows may hold NaN, and P = 0 times NaN would poison the
// product) and their scores masked to -inf. There is no causal mask.
//
// Softmax. As prefill_attention.cu: fp32 with a real running maximum per row
// (after each tile the row max m grows to m' and the accumulator and row sum
// are scaled by exp(m - m')), exp2 of log2(e)-scaled scores, P rounded to
// bf16 for the tensor cores (HF's eager path rounds softmax to bf16 before
// @V) while the row sums use the unrounded fp32 values; the division by the
// row sum comes last.
//
// Pipeline. K and V have two shared-memory stages. Iteration `tile` waits
// for its K/V copies, one barrier (every warp is then done with tile - 1's
// stage), starts the copies of tile + 1 into that other stage, and computes
// S = Q Kᵀ, the softmax and O += P V on its own stage: the next tile's
// copies overlap the whole of this tile's math.
//
// Shared memory. Q, 2 x K, 2 x V tiles of 64 rows of (kDim / 8 + 1) 16-byte
// chunks: the one spare chunk per row makes the row pitch an odd number of
// 16-byte units, so the 8 rows one ldmatrix phase reads (consecutive rows,
// one chunk) hit 8 distinct bank groups without a swizzle (an XOR swizzle
// needs a power-of-two count of chunks per row; 10 at D 72). 55 KiB at
// kDim 80, 45 KiB at 64, 85 KiB at 128.
//
// Output. Each warp divides by the row sums, stages its 16 rows in its own
// rows of the Q tile (only it ever read them) and stores the head_dim / 8
// real chunks of each row with 16-byte stores.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device_primitives.cuh"
#include "launch.cuh"
#include "online_softmax.cuh"
#include "vision_flash_attention.cuh"

namespace gquant::cuda {
namespace {

constexpr int kTileRows = 64;  // query rows per block and keys per K/V tile
constexpr int kWarps = kTileRows / 16;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxHeadDim = 128;          // the accumulator's registers bound it
constexpr int64_t kMaxPatches = 1 << 30;  // int row indices with headroom
constexpr int kMaxHeads = 65535;          // gridDim.y

// The tile geometry of a padded head dim kDim (a multiple of 16).
template <int kDim>
struct Shape {
  static constexpr int kChunks = kDim / 8;              // 16-byte chunks per row
  static constexpr int kRowBytes = (kChunks + 1) * 16;  // one spare chunk: see the file comment
  static constexpr int kTileBytes = kTileRows * kRowBytes;
  static constexpr int kSharedBytes = 5 * kTileBytes;  // Q, 2 x K, 2 x V
  static_assert(kDim % 16 == 0 && kDim <= kMaxHeadDim);
  static_assert((kTileRows * kChunks) % kThreads == 0, "LoadTile covers a tile in whole passes");
  static_assert(kSharedBytes <= 227 * 1024, "over the H100's shared memory per block");
};

struct Params {
  const __nv_bfloat16* q;  // [patches, num_heads, head_dim]
  const __nv_bfloat16* k;  // [patches, num_kv_heads, head_dim], rows < num_keys read
  const __nv_bfloat16* v;  // [patches, num_kv_heads, head_dim], rows < num_keys read
  __nv_bfloat16* out;      // [patches, num_heads, head_dim]
  int patches;
  int num_keys;
  int num_heads;
  int num_kv_heads;
  int group;     // query heads per KV head
  int head_dim;  // a multiple of 8, <= kDim
};

// Byte offset of 16-byte chunk `chunk` of tile row `row`.
template <int kDim>
__device__ __forceinline__ uint32_t TileOffset(int row, int chunk) {
  return row * Shape<kDim>::kRowBytes + chunk * 16;
}

// Fills the kTileRows rows of a tile: row_source(r) is the global address of
// row r (head_dim bf16), or null for a row to zero-fill; chunks at or beyond
// head_dim / 8 are zero-filled too. Consecutive threads take consecutive
// chunks of a row, so a warp reads whole rows.
template <int kDim, typename RowSource>
__device__ __forceinline__ void LoadTile(uint8_t* tile, int real_chunks, RowSource row_source) {
  using S = Shape<kDim>;
  const uint32_t tile_address = SharedAddress(tile);
#pragma unroll
  for (int i = 0; i < kTileRows * S::kChunks / kThreads; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * kThreads;
    const int row = index / S::kChunks, chunk = index % S::kChunks;
    const __nv_bfloat16* source = row_source(row);
    const uint32_t offset = TileOffset<kDim>(row, chunk);
    if (source != nullptr && chunk < real_chunks) {
      CopyAsync16(tile_address + offset, source + chunk * 8);
    } else {
      *reinterpret_cast<uint4*>(tile + offset) = make_uint4(0, 0, 0, 0);
    }
  }
}

// No minimum of blocks per multiprocessor in the bounds: at kDim 64 and 80
// the kernel takes ~146 / 158 registers (3 blocks of 128 threads fit); a
// minimum of 4 (<= 128 registers) makes ptxas spill 24 bytes.
template <int kDim>
__global__ void __launch_bounds__(kThreads) VisionFlashAttentionKernel(const Params p) {
  using S = Shape<kDim>;
  extern __shared__ __align__(128) uint8_t shared[];
  uint8_t* const q_tile = shared;
  // Stage s: K at tile 1 + 2 s, V at tile 2 + 2 s.
  const auto k_tile = [&](int stage) { return shared + (1 + 2 * stage) * S::kTileBytes; };
  const auto v_tile = [&](int stage) { return shared + (2 + 2 * stage) * S::kTileBytes; };

  const int q0 = static_cast<int>(blockIdx.x) * kTileRows;
  const int head = static_cast<int>(blockIdx.y);
  const int kv_head = head / p.group;
  const int real_chunks = p.head_dim / 8;
  const int key_tiles = (p.num_keys + kTileRows - 1) / kTileRows;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates

  // Row r of key tile `tile` in `base` (k or v); null from num_keys on.
  const auto key_rows = [&](const __nv_bfloat16* base, int tile) {
    return [=](int row) -> const __nv_bfloat16* {
      const int key = tile * kTileRows + row;
      if (key >= p.num_keys) return nullptr;
      return base + (static_cast<int64_t>(key) * p.num_kv_heads + kv_head) * p.head_dim;
    };
  };

  WaitForPredecessor();  // q, k and v come from earlier kernels
  LoadTile<kDim>(q_tile, real_chunks, [&](int row) -> const __nv_bfloat16* {
    const int query = q0 + row;
    if (query >= p.patches) return nullptr;
    return p.q + (static_cast<int64_t>(query) * p.num_heads + head) * p.head_dim;
  });
  LoadTile<kDim>(k_tile(0), real_chunks, key_rows(p.k, 0));
  LoadTile<kDim>(v_tile(0), real_chunks, key_rows(p.v, 0));
  CommitCopies();

  // ldmatrix.x4: lane l gives the address of row l % 8 of matrix l / 8
  // (prefill_attention.cu's fragment map, without the swizzle):
  //   A (Q, 16 rows x 16 dims): rows 0-7 / 8-15 / 0-7 / 8-15, dims 0-7 / 0-7 / 8-15 / 8-15;
  //   B (K, 16 keys x 16 dims): keys 0-7 / 0-7 / 8-15 / 8-15, dims 0-7 / 8-15 / 0-7 / 8-15,
  //     i.e. (b0, b1) of keys 0-7, then of keys 8-15;
  //   B (V transposed, 16 keys x 16 dims): keys 0-7 / 8-15 / 0-7 / 8-15, dims 0-7 / 0-7 /
  //     8-15 / 8-15, i.e. (b0, b1) of dims 0-7, then of dims 8-15.
  const int lane_row = lane % 8, matrix = lane / 8;
  const int a_row = warp * 16 + (matrix % 2) * 8 + lane_row, a_chunk = matrix / 2;
  const int k_row = (matrix / 2) * 8 + lane_row, k_chunk = matrix % 2;
  const int v_row = (matrix % 2) * 8 + lane_row, v_chunk = matrix / 2;

  WaitCopies<0>();
  __syncthreads();  // Q and the first K/V tile are in
  // This warp's Q fragments, for every 16-column step of the contraction.
  uint32_t q_frag[kDim / 16][4];
  const uint32_t q_address = SharedAddress(q_tile);
#pragma unroll
  for (int kk = 0; kk < kDim / 16; ++kk) {
    LoadMatrixX4(q_address + TileOffset<kDim>(a_row, 2 * kk + a_chunk), q_frag[kk]);
  }

  // Accumulator fragments: rows g (registers 0, 1) and g + 8 (2, 3), columns
  // 2t and 2t + 1 of each 8-wide n-tile.
  float o[kDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};  // rows g and g + 8, unscaled
  float row_sum[2] = {0.0f, 0.0f};            // this thread's columns only

  for (int tile = 0; tile < key_tiles; ++tile) {
    const int stage = tile % 2;
    if (tile > 0) {
      WaitCopies<0>();
      __syncthreads();  // this tile's K/V are in; every warp is done with tile - 1's stage
    }
    if (tile + 1 < key_tiles) {
      LoadTile<kDim>(k_tile(1 - stage), real_chunks, key_rows(p.k, tile + 1));
      LoadTile<kDim>(v_tile(1 - stage), real_chunks, key_rows(p.v, tile + 1));
      CommitCopies();
    }
    const uint32_t k_address = SharedAddress(k_tile(stage));
    const uint32_t v_address = SharedAddress(v_tile(stage));

    // S = Q Kᵀ: 16 rows x 64 keys.
    float s[kTileRows / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kTileRows / 16; ++np) {
        uint32_t b[4];
        LoadMatrixX4(k_address + TileOffset<kDim>(np * 16 + k_row, 2 * kk + k_chunk), b);
        Mma(s[2 * np], q_frag[kk], b[0], b[1]);
        Mma(s[2 * np + 1], q_frag[kk], b[2], b[3]);
      }
    }

    // Mask the keys of a partial last tile (their K/V rows are zeros).
    const int keys_in_tile = p.num_keys - tile * kTileRows;
    if (keys_in_tile < kTileRows) {
#pragma unroll
      for (int nt = 0; nt < kTileRows / 8; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          if (nt * 8 + 2 * t + i % 2 >= keys_in_tile) s[nt][i] = -INFINITY;
        }
      }
    }

    // Online softmax: new row maxima, rescale, exponentiate.
    OnlineSoftmaxStep(s, o, row_max, row_sum);

    // O += P V: the m16n8 accumulator layout of S is the A layout of P.
#pragma unroll
    for (int kk = 0; kk < kTileRows / 16; ++kk) {
      const uint32_t a[4] = {PackBf16x2(s[2 * kk][0], s[2 * kk][1]),
                             PackBf16x2(s[2 * kk][2], s[2 * kk][3]),
                             PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kDim / 16; ++dp) {
        uint32_t b[4];
        LoadMatrixX4Transposed(v_address + TileOffset<kDim>(kk * 16 + v_row, 2 * dp + v_chunk), b);
        Mma(o[2 * dp], a, b[0], b[1]);
        Mma(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
  }

  // Normalize, stage in this warp's own rows of the Q tile, and store the
  // real chunks of each row with 16-byte stores.
  float inverse[2];
  RowInverseSums(row_sum, inverse);
  // Every lane's Q reads (ldmatrix, before the key loop) are ordered before
  // the writes over the same rows; with one key tile no block barrier lies
  // between them.
  __syncwarp();
#pragma unroll
  for (int nt = 0; nt < kDim / 8; ++nt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * 16 + g + 8 * h;
      *reinterpret_cast<uint32_t*>(q_tile + TileOffset<kDim>(row, nt) + 4 * t) =
          PackBf16x2(o[nt][2 * h] * inverse[h], o[nt][2 * h + 1] * inverse[h]);
    }
  }
  __syncwarp();
  for (int index = lane; index < 16 * real_chunks; index += 32) {
    const int row = warp * 16 + index / real_chunks, chunk = index % real_chunks;
    const int query = q0 + row;
    if (query >= p.patches) break;  // rows only grow with index
    const uint4 value = *reinterpret_cast<const uint4*>(q_tile + TileOffset<kDim>(row, chunk));
    *reinterpret_cast<uint4*>(
        p.out + (static_cast<int64_t>(query) * p.num_heads + head) * p.head_dim + chunk * 8) =
        value;
  }
  AllowDependents();  // late: the grid has several waves (device_primitives.cuh)
}

template <int kDim>
absl::Status Launch(const Params& p, cudaStream_t stream) {
  using S = Shape<kDim>;
  const auto kernel = VisionFlashAttentionKernel<kDim>;
  // Above 48 KiB of shared memory a kernel must opt in; once per process.
  static const cudaError_t opted_in =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSharedBytes);
  if (opted_in != cudaSuccess) {
    return CudaStatus(opted_in,
                      absl::StrCat("cudaFuncSetAttribute(VisionFlashAttentionKernel<", kDim,
                                   ">, MaxDynamicSharedMemorySize, ", S::kSharedBytes, ")")
                          .c_str());
  }
  const dim3 grid((p.patches + kTileRows - 1) / kTileRows, p.num_heads);
  return LaunchKernel(kernel, grid, dim3(kThreads), S::kSharedBytes, stream, /*overlap=*/true, p);
}

// Whether the byte ranges [a, a + a_bytes) and [b, b + b_bytes) overlap.
bool Overlap(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + static_cast<uintptr_t>(b_bytes) && b0 < a0 + static_cast<uintptr_t>(a_bytes);
}

}  // namespace

absl::Status VisionFlashAttention(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                  const __nv_bfloat16* v, int64_t patches, int64_t num_keys,
                                  int num_heads, int num_kv_heads, int head_dim, __nv_bfloat16* out,
                                  cudaStream_t stream) {
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr || !Aligned(q, 16) ||
      !Aligned(k, 16) || !Aligned(v, 16) || !Aligned(out, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionFlashAttention: expected non-null 16-byte aligned q, k, v and out, but got %p, "
        "%p, %p, %p",
        q, k, v, out));
  }
  if (out == k || out == v) {
    return absl::InvalidArgumentError("VisionFlashAttention: out must not be k or v");
  }
  if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 || num_heads > kMaxHeads) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionFlashAttention: expected num_heads a positive multiple of num_kv_heads >= 1, at "
        "most %d, but got num_heads %d, num_kv_heads %d",
        kMaxHeads, num_heads, num_kv_heads));
  }
  if (head_dim < 8 || head_dim > kMaxHeadDim || head_dim % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionFlashAttention: expected head_dim a multiple of 8 in [8, %d], but got %d",
        kMaxHeadDim, head_dim));
  }
  if (patches == 0 && num_keys == 0) return absl::OkStatus();
  if (num_keys < 1 || num_keys > patches || patches > kMaxPatches) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionFlashAttention: expected 1 <= num_keys <= patches <= %d, but got num_keys %d, "
        "patches %d",
        kMaxPatches, num_keys, patches));
  }
  // Sizes below fit in int64: patches <= 2^30, heads < 2^16, head_dim <= 2^7.
  const int64_t q_bytes = patches * num_heads * head_dim * 2;
  const int64_t kv_bytes = patches * num_kv_heads * head_dim * 2;
  if ((out != q && Overlap(out, q_bytes, q, q_bytes)) || Overlap(out, q_bytes, k, kv_bytes) ||
      Overlap(out, q_bytes, v, kv_bytes)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionFlashAttention: out [%p, +%d bytes) must be q or not overlap it, and must not "
        "overlap k or v [+%d bytes each] (q %p, k %p, v %p)",
        out, q_bytes, kv_bytes, q, k, v));
  }

  Params p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.patches = static_cast<int>(patches);
  p.num_keys = static_cast<int>(num_keys);
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.group = num_heads / num_kv_heads;
  p.head_dim = head_dim;
  // The contraction padded to a multiple of 16 (the mma's k).
  switch ((head_dim + 15) / 16 * 16) {
    case 16:
      return Launch<16>(p, stream);
    case 32:
      return Launch<32>(p, stream);
    case 48:
      return Launch<48>(p, stream);
    case 64:
      return Launch<64>(p, stream);
    case 80:
      return Launch<80>(p, stream);
    case 96:
      return Launch<96>(p, stream);
    case 112:
      return Launch<112>(p, stream);
    default:
      return Launch<128>(p, stream);
  }
}

}  // namespace gquant::cuda
