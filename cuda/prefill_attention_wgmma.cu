// Prefill attention on Hopper's warp-group tensor-core instructions
// (wgmma, sm_90a), in the schedule of prefill_attention.cu's mma.sync kernel
// (same blocks, key walk, mask, online softmax and output store).
//
// Work split. A block is D / 256 warp groups over the same kRows queries
// (four warps of 16 rows each, as in the mma.sync kernel); warp group c owns
// output columns [256 c, + 256).
// The tensor cores read K and V from shared memory once per warp group
// instead of once per warp. Per key tile of kWgmmaKeys: every warp group
// computes the whole S = Q Kᵀ (D / 16 wgmma.m64n32k16, Q and K by
// descriptor, both K-major), so all hold bitwise identical scores and
// softmax state without an exchange (at D = 512 that repeats the score
// product, cheaper than a round trip through shared memory while the
// tensor cores are far from busy), then O += P V for its columns (two
// wgmma.m64n256k16, P from registers: S's accumulator layout is the A
// fragment's; V by an MN-major descriptor). Tiles are 64-column panels
// in the 128-byte swizzle (LoadPanels); K and V tiles go through a
// two-stage ring, so each tile's copies have a whole tile step to land.
// Shared memory: Q 32 KiB + 2 x (K + V) 32 KiB at D = 256 (two blocks per
// multiprocessor), 64 + 2 x 64 KiB at D = 512 (one).
//
// Measured on an H100 (bench/RESULTS.md): 1.2x the mma.sync kernel at D =
// 256, 1.15x at D = 512. Not kept: 64-key tiles in one stage (5% faster
// at D = 256, no room for D = 512's), and issuing the next tile's scores
// before this tile's softmax (a third K stage; 1.3-1.4x slower).
#include <cuda_bf16.h>

#include "absl/strings/str_cat.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "launch.cuh"
#include "prefill_attention_internal.cuh"
#include "sm90_primitives.cuh"

namespace gquant::cuda::prefill_attention_internal {
namespace {

constexpr int kWgmmaKeys = 32;
constexpr int kWgmmaStages = 2;

template <int kHeadDim>
struct WgmmaShape {
  static constexpr int kGroups = kHeadDim / kSliceDim;  // warp groups
  static constexpr int kThreads = 128 * kGroups;
  static constexpr int kQueryPanelBytes = kRows * 128;
  static constexpr int kKeyPanelBytes = kWgmmaKeys * 128;
  static constexpr int kQueryBytes = kRows * kHeadDim * 2;
  static constexpr int kKeyTileBytes = kWgmmaKeys * kHeadDim * 2;  // a K or V tile
  static constexpr int kStageBytes = 2 * kKeyTileBytes;            // K, then V
  // + 1024: the dynamic allocation is aligned up to the swizzle's atom.
  static constexpr int kSharedBytes = kQueryBytes + kWgmmaStages * kStageBytes + 1024;
  static_assert(kSharedBytes <= 227 * 1024, "over the H100's shared memory per block");
};

// Copies kTileRows rows of a tile into 64-column panels of kTileRows rows
// each, in the 128-byte swizzle (CopyTileRows).
template <int kHeadDim, int kTileRows, typename RowSource>
__device__ __forceinline__ void LoadPanels(uint8_t* tile, RowSource row_source) {
  CopyTileRows<kHeadDim, kTileRows, WgmmaShape<kHeadDim>::kThreads>(
      tile, row_source, [](int row, int chunk) {
        return (chunk / 8) * (kTileRows * 128) + Swizzle128Offset(row, chunk % 8);
      });
}

template <int kHeadDim>
__global__ void __launch_bounds__(WgmmaShape<kHeadDim>::kThreads, kHeadDim == 256 ? 2 : 1)
    PrefillAttentionWgmmaKernel(const Params p) {
#if GQUANT_SM90A_DEVICE
  using S = WgmmaShape<kHeadDim>;
  constexpr int kTileKeys = kWgmmaKeys;
  extern __shared__ uint8_t shared_raw[];
  const uint32_t raw = SharedAddress(shared_raw);
  uint8_t* const q_tile = shared_raw + (((raw + 1023) & ~1023u) - raw);
  uint8_t* const stages = q_tile + S::kQueryBytes;
  const uint32_t q_address = SharedAddress(q_tile);
  const uint32_t stages_address = SharedAddress(stages);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slab = warp % 4, group = warp / 4;  // rows [16 slab, + 16), columns [256 group, + 256)
  const int g = lane / 4, t = lane % 4;

  WaitForPredecessor();  // q and the cache come from earlier kernels
  const QueryBlock<kHeadDim, kTileKeys> b(p);
  const auto load_stage = [&](int tile) {
    uint8_t* const stage = stages + (tile % kWgmmaStages) * S::kStageBytes;
    LoadPanels<kHeadDim, kTileKeys>(stage, b.CacheRows(p.k, tile));
    LoadPanels<kHeadDim, kTileKeys>(stage + S::kKeyTileBytes, b.CacheRows(p.v, tile));
  };
  LoadPanels<kHeadDim, kRows>(q_tile, [&](int row) { return b.QueryRow(row); });
  load_stage(b.tile_first);
  CommitCopies();

  float o[kSliceDim / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};
  int row_last[2];
  b.RowLastKeys(slab, g, row_last);

  for (int tile = b.tile_first; tile <= b.tile_last; ++tile) {
    // Every warp is done with tile - 1, whose stage takes tile + 1.
    __syncthreads();
    if (tile < b.tile_last) load_stage(tile + 1);
    CommitCopies();  // possibly empty, so the wait below always leaves one group
    WaitCopies<1>();
    FenceProxyAsyncShared();  // the copies and zero rows, before wgmma reads them
    __syncthreads();          // the tile's K and V (and Q) are in
    const uint32_t k_address = stages_address + (tile % kWgmmaStages) * S::kStageBytes;
    const uint32_t v_address = k_address + S::kKeyTileBytes;

    // S = Q Kᵀ: k16 step kk is 32 bytes into panel kk / 4.
    float s[kTileKeys / 8][4];
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      WgmmaM64N32K16(
          reinterpret_cast<float(&)[kTileKeys / 2]>(s),
          Swizzle128Descriptor(q_address + (kk / 4) * S::kQueryPanelBytes) + 2 * (kk % 4),
          Swizzle128Descriptor(k_address + (kk / 4) * S::kKeyPanelBytes) + 2 * (kk % 4), kk > 0);
    }
    WgmmaCommit();
    WgmmaWait<0>();
    PinRegisters(s);

    b.Mask(s, tile, slab, g, t, row_last);
    OnlineSoftmaxStep(s, o, row_max, row_sum);

    // O += P V: keys [16 kk, + 16) are rows 16 kk.. of the V panels; this
    // group's columns start at panel 4 group. P is packed before the fence
    // (A registers written after it would make ptxas fence every wgmma).
    uint32_t a[kTileKeys / 16][4];
#pragma unroll
    for (int kk = 0; kk < kTileKeys / 16; ++kk) {
      a[kk][0] = PackBf16x2(s[2 * kk][0], s[2 * kk][1]);
      a[kk][1] = PackBf16x2(s[2 * kk][2], s[2 * kk][3]);
      a[kk][2] = PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[kk][3] = PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
    const uint32_t v_columns = v_address + group * 4 * S::kKeyPanelBytes;
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kTileKeys / 16; ++kk) {
      WgmmaM64N256K16RegisterA(
          reinterpret_cast<float(&)[kSliceDim / 2]>(o), a[kk],
          Swizzle128MnMajorDescriptor(v_columns + kk * 16 * 128, S::kKeyPanelBytes));
    }
    WgmmaCommit();
    WgmmaWait<0>();
    PinRegisters(o);
  }

  // The Q tile is free once every warp group's last wgmmas are done: stage
  // rows there (row-major, each warp its own rows and columns).
  __syncthreads();
  b.StoreOutput(o, row_sum, q_tile, slab, group, lane);
  AllowDependents();
#endif
}

template <int kHeadDim>
absl::Status Launch(const Params& p, cudaStream_t stream) {
  using S = WgmmaShape<kHeadDim>;
  return LaunchOnQueryTiles<PrefillAttentionWgmmaKernel<kHeadDim>>(
      kHeadDim == 256 ? "PrefillAttentionWgmmaKernel<256>" : "PrefillAttentionWgmmaKernel<512>",
      S::kThreads, S::kSharedBytes, p, stream);
}

}  // namespace

bool WgmmaAvailable() { return Sm90aKernelsRun(WgmmaShape<512>::kSharedBytes); }

absl::Status LaunchWgmma(const Params& p, int head_dim, cudaStream_t stream) {
  return head_dim == 256 ? Launch<256>(p, stream) : Launch<512>(p, stream);
}

}  // namespace gquant::cuda::prefill_attention_internal
