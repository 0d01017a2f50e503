#include <cuda_bf16.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_primitives.cuh"
#include "int8_gemv.cuh"
#include "launch.cuh"

namespace gquant::cuda {
namespace {

constexpr int kRows = 16;            // rows per row tile: the mma's M
constexpr int kTileK = 128;          // columns per stage: one 128-byte segment per row
constexpr int kSteps = kTileK / 16;  // k16 mma steps per tile
// Ring depth per warp: kStages - 1 tiles in flight while one is used.
// 3 x 2.5 KB per warp, 60-150 KB per SM at 8-20 warps: several times what
// covers DRAM latency at 3 TB/s (~1 us x 3 TB/s / 132 SMs = 23 KB).
constexpr int kStages = 4;
constexpr int kMaxWarps = 16;
constexpr uint32_t kOnesBf16x2 = 0x3F803F80u;  // bf16x2 (1, 1)
// Default warps per block: at least 4 (the partial-sum reduction stays a
// small part of a block's work), and enough for kTargetWarps in the grid:
// 1024 warps x 3 tiles x 2.5 KB = 7.5 MB in flight, above the ~5 MB that
// 3.35 TB/s needs at ~1.5 us of loaded DRAM latency.
constexpr int kMinDefaultWarps = 4;
constexpr int64_t kTargetWarps = 1024;

// kGroupBlocks: 16-column blocks per group when the kernel is specialized
// for it (1: group 16, 2: group 32), kPerRow for one group per row (params
// held in registers), kAnyGroup for any other group size (read at run time).
constexpr int kPerRow = 0, kAnyGroup = -1;

// One warp's shared-memory stage: codes [16 R rows][8 chunks of 16 bytes]
// with chunk c of row r at position c ^ (r % 8) (so 8 rows of one chunk, as
// ldmatrix reads them, hit 8 different bank quads), then the params of the
// groups the tile touches, [16 R rows][kSlots] float2.
template <int kRowTiles, int kGroupBlocks>
struct Stage {
  static constexpr int kSlots = kGroupBlocks > 0          ? kSteps / kGroupBlocks
                                : kGroupBlocks == kPerRow ? 0
                                                          : kSteps;
  static constexpr int kCodeBytes = kRowTiles * kRows * kTileK;
  static constexpr int kBytes = kCodeBytes + kRowTiles * kRows * kSlots * 8;
};

// The four int8 codes of `word` (byte i = code i) as exact bf16 pairs
// (c0, c1) and (c2, c3). Float bits 0x4B0000bb are 2^23 + bb, so with
// bb = c + 128 one byte permute and one subtract give c without the slow
// integer conversion; c has at most 8 significant bits, so bf16 holds it.
__device__ __forceinline__ void CodesToBf16(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t biased = word ^ 0x80808080u;
  float c[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    c[i] = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7540 | i)) - 8388736.0f;
  }
  lo = PackBf16x2(c[0], c[1]);
  hi = PackBf16x2(c[2], c[3]);
}

// One block per 16 kRowTiles rows; its warps split the 128-column tiles
// (warp w takes tiles w, w + W, ...), each streaming them through its own
// ring of kStages stages, and add their partial sums at the end.
// kTokenTiles: n8 tiles of tokens (1 for M <= 8, 2 for M <= 16).
// Per 16-row tile and k16 step, lane (g, t) = (l / 4, l % 4) feeds A rows g
// and g + 8, columns 4t..4t+3 (k slots 2t, 2t+1, 2t+8, 2t+9), and B token
// g (+ 8 per token tile), the same columns; it accumulates rows g, g + 8 x
// tokens 2t, 2t + 1.
// Int8GemvSelected: blockIdx.y is a slot, whose expert's codes and params
// replace the kernel's, with x and y offset to the slot's rows.
struct Selection {
  const int32_t* expert_ids;
  const int8_t* const* codes;
  const float2* const* params;
  int num_experts;
  int64_t x_slot_stride;
};

template <int kTokenTiles, int kRowTiles, int kGroupBlocks, bool kSelected = false>
__global__ void __launch_bounds__(kMaxWarps * 32 / kRowTiles)
    Int8GemvKernel(const int8_t* __restrict__ codes,     // [N, K]
                   const float2* __restrict__ params,    // [N][groups]
                   const __nv_bfloat16* __restrict__ x,  // [m, K]
                   __nv_bfloat16* __restrict__ y,        // [m, N]
                   int m, int n, int k,
                   int group_blocks,  // 16-column blocks per group (run-time value)
                   bool min_form, const Selection selection) {
  if constexpr (kSelected) {
    // The slot's expert comes from an earlier kernel (the router).
    WaitForPredecessor();
    const int slot = blockIdx.y;
    const int expert = min(max(selection.expert_ids[slot], 0), selection.num_experts - 1);
    codes = selection.codes[expert];
    params = selection.params[expert];
    x += slot * selection.x_slot_stride;
    y += int64_t{slot} * n;
  }
  using S = Stage<kRowTiles, kGroupBlocks>;
  constexpr int kBlockRows = kRowTiles * kRows;
  constexpr int kOutputs = kRowTiles * kTokenTiles * 128;  // per block
  constexpr bool kPerRowParams = kGroupBlocks == kPerRow;
  extern __shared__ __align__(16) unsigned char smem[];

  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int row0 = blockIdx.x * kBlockRows;
  const int k_blocks = k / 16, k_tiles = (k_blocks + kSteps - 1) / kSteps;
  const int blocks_per_group = kGroupBlocks > 0 ? kGroupBlocks : group_blocks;
  const int groups = k_blocks / blocks_per_group;
  unsigned char* const ring = smem + warp * kStages * S::kBytes;

  // Lane quad g feeds token g (+ 8 per token tile) as B; padding tokens are 0.
  bool has_token[kTokenTiles];
  const __nv_bfloat16* x_row[kTokenTiles];
#pragma unroll
  for (int n8 = 0; n8 < kTokenTiles; ++n8) {
    has_token[n8] = g + 8 * n8 < m;
    x_row[n8] = x + static_cast<int64_t>(has_token[n8] ? g + 8 * n8 : 0) * k;
  }
  // Per-row params: rows g and g + 8 of each row tile, read once.
  float2 row_params[kRowTiles][2];
  if constexpr (kPerRowParams) {
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        row_params[rt][h] = __ldg(params + min(row0 + rt * kRows + g + 8 * h, n - 1));
      }
    }
  }

  WaitForPredecessor();  // x and y belong to earlier kernels until here

  // Queues the copies of this warp's j-th tile into stage j % kStages, then
  // commits a group (empty past the warp's last tile, keeping the count).
  const auto issue = [&](int j) {
    const int tile = warp + j * warps;
    if (tile < k_tiles) {
      unsigned char* const stage = ring + (j % kStages) * S::kBytes;
      // Codes: lane l copies chunk l % 8 of rows l / 8 + 4i, so 8 lanes read
      // one row's 128-byte segment. Rows past N repeat row N - 1 (never stored).
      const int chunk = lane % 8;
      if (tile * kSteps + chunk < k_blocks) {
#pragma unroll
        for (int i = 0; i < kBlockRows / 4; ++i) {
          const int r = lane / 8 + 4 * i;
          const int64_t row = min(row0 + r, n - 1);
          CopyAsync16(SharedAddress(stage + r * kTileK + (chunk ^ (r % 8)) * 16),
                      codes + row * k + tile * kTileK + chunk * 16);
        }
      }
      // Params of the groups the tile touches: slot = group - first group.
      if constexpr (!kPerRowParams) {
        const int first_block = tile * kSteps;
        const int first_group = first_block / blocks_per_group;
        const int slots =
            (min(first_block + kSteps, k_blocks) - 1) / blocks_per_group - first_group + 1;
#pragma unroll
        for (int i = 0; i < kBlockRows * S::kSlots / 32; ++i) {
          const int q = lane + 32 * i, r = q / S::kSlots, slot = q % S::kSlots;
          if (slot < slots) {
            const int64_t row = min(row0 + r, n - 1);
            CopyAsync8(SharedAddress(stage + S::kCodeBytes + q * 8),
                       params + row * groups + first_group + slot);
          }
        }
      }
    }
    CommitCopies();
  };

  // B fragments of one tile: token g's columns 4t..4t+3 of each block.
  using TileX = uint32_t[kSteps][kTokenTiles][2];
  const auto load_x = [&](int tile, TileX& b) {
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int block = tile * kSteps + s;
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
        uint2 v = make_uint2(0, 0);
        if (has_token[n8] && block < k_blocks) {
          v = __ldg(reinterpret_cast<const uint2*>(x_row[n8] + block * 16 + 4 * t));
        }
        b[s][n8][0] = v.x;
        b[s][n8][1] = v.y;
      }
    }
  };

  // ldmatrix row addresses (byte offsets in a row tile) for steps 2p, 2p + 1:
  // matrices (rows 0-7, step 2p), (rows 8-15, 2p), (0-7, 2p + 1), (8-15, 2p + 1).
  const int ldsm_row = (lane / 8 % 2) * 8 + lane % 8;
  const auto ldsm_offset = [&](int p) {
    const int chunk = 2 * p + lane / 16;
    return ldsm_row * kTileK + (chunk ^ (lane % 8)) * 16;
  };

  float acc[kRowTiles][kTokenTiles][4] = {};
  // Per group part: Σ c x per row tile, and Σ x (row independent).
  float dq[kRowTiles][kTokenTiles][4] = {}, ds[kTokenTiles][4] = {};

  // acc += scale · dq − offset · Σ x for the group in params slot `slot`,
  // offset = scale · zero (or min); then the group sums restart.
  const auto flush = [&](const unsigned char* stage, int slot) {
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // row g, then row g + 8
        float2 p;
        if constexpr (kPerRowParams) {
          p = row_params[rt][h];
        } else {
          const int r = rt * kRows + g + 8 * h;
          p = reinterpret_cast<const float2*>(stage + S::kCodeBytes)[r * S::kSlots + slot];
        }
        const float scale = p.x, offset = min_form ? p.y : p.x * p.y;
#pragma unroll
        for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
          for (int i = 2 * h; i < 2 * h + 2; ++i) {
            acc[rt][n8][i] = fmaf(scale, dq[rt][n8][i], fmaf(-offset, ds[n8][i], acc[rt][n8][i]));
            dq[rt][n8][i] = 0;
          }
        }
      }
    }
#pragma unroll
    for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
      for (int i = 0; i < 4; ++i) ds[n8][i] = 0;
    }
  };

  const uint32_t ones[4] = {kOnesBf16x2, kOnesBf16x2, kOnesBf16x2, kOnesBf16x2};
  const auto compute = [&](int j, const TileX& b) {
    const unsigned char* const stage = ring + (j % kStages) * S::kBytes;
    const int first_block = (warp + j * warps) * kSteps;
    // Any group size: the params slot and the blocks left in the group.
    [[maybe_unused]] int slot = 0, left = blocks_per_group - first_block % blocks_per_group;
    uint32_t words[kRowTiles][4];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (first_block + s >= k_blocks) break;  // the last tile of a K % 128 != 0
      if (s % 2 == 0) {
#pragma unroll
        for (int rt = 0; rt < kRowTiles; ++rt) {
          LoadMatrixX4(SharedAddress(stage + rt * kRows * kTileK + ldsm_offset(s / 2)), words[rt]);
        }
      }
#pragma unroll
      for (int rt = 0; rt < kRowTiles; ++rt) {
        uint32_t a[4];  // a0, a2: row g; a1, a3: row g + 8
        CodesToBf16(words[rt][2 * (s % 2)], a[0], a[2]);
        CodesToBf16(words[rt][2 * (s % 2) + 1], a[1], a[3]);
#pragma unroll
        for (int n8 = 0; n8 < kTokenTiles; ++n8) Mma(dq[rt][n8], a, b[s][n8][0], b[s][n8][1]);
      }
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) Mma(ds[n8], ones, b[s][n8][0], b[s][n8][1]);
      // A group's part ends at its last block or at the tile's end (parts
      // add up: the correction is linear). Groups of 16 or 32 columns start
      // at tile boundaries and divide K, so they end every kGroupBlocks steps.
      const bool tile_end = s == kSteps - 1 || first_block + s + 1 == k_blocks;
      if constexpr (kPerRowParams) {
        if (tile_end) flush(stage, 0);
      } else if constexpr (kGroupBlocks > 0) {
        if ((s + 1) % kGroupBlocks == 0) flush(stage, s / kGroupBlocks);
      } else {
        if (--left == 0 || tile_end) flush(stage, slot);
        if (left == 0) {
          ++slot;
          left = blocks_per_group;
        }
      }
    }
  };

  for (int j = 0; j < kStages - 1; ++j) issue(j);
  for (int j = 0; warp + j * warps < k_tiles; ++j) {
    issue(j + kStages - 1);  // into the stage the previous iteration used
    TileX b;
    load_x(warp + j * warps, b);
    WaitCopies<kStages - 1>();  // this lane's copies of tile j have landed
    __syncwarp();               // and every lane's
    compute(j, b);
    __syncwarp();  // all reads of stage j done before it is refilled
  }
  WaitCopies<0>();

  // Partial sums of all warps through shared memory (the rings are done):
  // partial[warp][e], e = ((rt · kTokenTiles + n8) · 32 + lane) · 4 + i.
  __syncthreads();
  float* const partial = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
    for (int n8 = 0; n8 < kTokenTiles; ++n8) {
      const float(&v)[4] = acc[rt][n8];
      *reinterpret_cast<float4*>(partial + warp * kOutputs +
                                 ((rt * kTokenTiles + n8) * 32 + lane) * 4) =
          make_float4(v[0], v[1], v[2], v[3]);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kOutputs; e += blockDim.x) {
    float sum = 0;
    for (int v = 0; v < warps; ++v) sum += partial[v * kOutputs + e];
    const int i = e % 4, l = e / 4 % 32, n8 = e / 128 % kTokenTiles, rt = e / (128 * kTokenTiles);
    const int token = 8 * n8 + 2 * (l % 4) + i % 2;
    const int row = row0 + rt * kRows + l / 4 + 8 * (i / 2);
    if (token < m && row < n) y[static_cast<int64_t>(token) * n + row] = __float2bfloat16(sum);
  }
  AllowDependents();  // late: the grid has several waves (device_primitives.cuh)
}

// The default K split: the warp count in [kMinDefaultWarps, max_warps] that
// maximizes balance x parallelism / rounds, the fewest on a tie. balance =
// K tiles over what the busiest warp does times the warps (42 tiles over 8
// warps is 6 + ... + 5: 12.5% idle; over 6 or 7 none); parallelism = the
// grid's warps over kTargetWarps, at most 1; rounds = 1 when the whole grid
// is resident at once, else 2 (each round pays the rings' fill and drain,
// which dominate when a warp has only a few tiles: q_sliding's 512 blocks
// in one round instead of two measured 1.2x faster). `blocks_per_sm[w]` is
// the occupancy of a block of w warps.
int DefaultWarps(int64_t row_blocks, int64_t k_tiles, int max_warps, int multiprocessors,
                 std::span<const int> blocks_per_sm) {
  int best = max_warps;
  double best_score = 0;
  for (int w = kMinDefaultWarps; w <= max_warps; ++w) {
    const double balance = static_cast<double>(k_tiles) / (w * ((k_tiles + w - 1) / w));
    const double parallelism = std::min(1.0, static_cast<double>(row_blocks * w) / kTargetWarps);
    const int64_t resident = int64_t{multiprocessors} * std::max(1, blocks_per_sm[w]);
    // One round against two is what matters; past two, the tail is a small
    // part and fewer warps per block would cost balance and bandwidth.
    const double rounds =
        static_cast<double>(std::min<int64_t>(2, (row_blocks + resident - 1) / resident));
    const double score = balance * parallelism / rounds;
    if (score > best_score + 1e-9) {
      best = w;
      best_score = score;
    }
  }
  return best;
}

// `selection` with slots > 0: Int8GemvSelected's kernel over a (row blocks,
// slots) grid.
template <int kTokenTiles, int kRowTiles, int kGroupBlocks, bool kSelected = false>
absl::Status Launch(const Int8RowsWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                    cudaStream_t stream, int warps, const Int8GemvTuning& tuning,
                    const Selection& selection = {}, int slots = 1) {
  constexpr int kStageBytes = Stage<kRowTiles, kGroupBlocks>::kBytes;
  const auto kernel = Int8GemvKernel<kTokenTiles, kRowTiles, kGroupBlocks, kSelected>;
  // The shared-memory limit is raised once, to what the largest block of this
  // instantiation uses (192 KB at most, under the H100's 227 KB).
  static const cudaError_t raised =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           kMaxWarps / kRowTiles * kStages * kStageBytes);
  GQ_RETURN_IF_CUDA_ERROR(raised);
  const int64_t row_blocks = (w.n + kRowTiles * kRows - 1) / (kRowTiles * kRows);
  if (warps == 0) {
    absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
    if (!device.ok()) return device.status();
    static OccupancyTable<kMaxWarps> occupancy;
    std::array<int, kMaxWarps + 1> blocks_per_sm{};
    for (int size = kMinDefaultWarps; size <= kMaxWarps / kRowTiles; ++size) {
      absl::StatusOr<int> blocks = occupancy.BlocksPerMultiprocessor(
          reinterpret_cast<const void*>(kernel), size, kStages * kStageBytes);
      if (!blocks.ok()) return blocks.status();
      blocks_per_sm[size] = *blocks;
    }
    warps = DefaultWarps(row_blocks * slots, (w.k + kTileK - 1) / kTileK, kMaxWarps / kRowTiles,
                         device->multiprocessors, blocks_per_sm);
  }
  const int smem = warps * kStages * kStageBytes;
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(slots));
  return LaunchKernel(kernel, grid, dim3(warps * 32), smem, stream, !tuning.serial_launch, w.codes,
                      w.params, x, y, m, static_cast<int>(w.n), static_cast<int>(w.k),
                      static_cast<int>(w.group_size / 16), w.min_form, selection);
}

template <int kTokenTiles, int kRowTiles>
absl::Status LaunchForGroup(const Int8RowsWeight& w, const __nv_bfloat16* x, int m,
                            __nv_bfloat16* y, cudaStream_t stream, int warps,
                            const Int8GemvTuning& t) {
  if (w.group_size == w.k)
    return Launch<kTokenTiles, kRowTiles, kPerRow>(w, x, m, y, stream, warps, t);
  if (w.group_size == 16) return Launch<kTokenTiles, kRowTiles, 1>(w, x, m, y, stream, warps, t);
  if (w.group_size == 32) return Launch<kTokenTiles, kRowTiles, 2>(w, x, m, y, stream, warps, t);
  return Launch<kTokenTiles, kRowTiles, kAnyGroup>(w, x, m, y, stream, warps, t);
}

// The group specialization of Int8GemvSelected (M = 1, one row tile).
absl::Status LaunchSelected(const Int8RowsWeight& w, const __nv_bfloat16* x, __nv_bfloat16* y,
                            cudaStream_t stream, const Selection& s, int slots) {
  const Int8GemvTuning t;
  if (w.group_size == w.k) return Launch<1, 1, kPerRow, true>(w, x, 1, y, stream, 0, t, s, slots);
  if (w.group_size == 16) return Launch<1, 1, 1, true>(w, x, 1, y, stream, 0, t, s, slots);
  if (w.group_size == 32) return Launch<1, 1, 2, true>(w, x, 1, y, stream, 0, t, s, slots);
  return Launch<1, 1, kAnyGroup, true>(w, x, 1, y, stream, 0, t, s, slots);
}

}  // namespace

absl::Status Int8GemvSelected(const Int8RowsWeight& shape, const Int8RowsExpertTables& experts,
                              const int32_t* expert_ids, int slots, const __nv_bfloat16* x,
                              int64_t x_slot_stride, __nv_bfloat16* y, cudaStream_t stream) {
  if (experts.codes == nullptr || experts.params == nullptr || experts.num_experts < 1 ||
      expert_ids == nullptr || x == nullptr || y == nullptr || !Aligned(x, 8)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int8GemvSelected: null expert tables, ids, x or y, x not 8-byte aligned, or %d experts",
        experts.num_experts));
  }
  if (absl::Status s = CheckInt8RowsShape(shape.n, shape.k, shape.group_size); !s.ok()) return s;
  if (shape.n > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int8GemvSelected: N must be at most 2^30, but got %d", shape.n));
  }
  if (slots < 1 || slots > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int8GemvSelected: slots must be 1..65535, not %d", slots));
  }
  if (x_slot_stride < 0 || x_slot_stride % 4 != 0 || x_slot_stride > (int64_t{1} << 31) / slots) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int8GemvSelected: x_slot_stride %d must be a non-negative multiple of 4 (8-byte rows)",
        x_slot_stride));
  }
  const Selection selection{expert_ids, experts.codes, experts.params, experts.num_experts,
                            x_slot_stride};
  return LaunchSelected(shape, x, y, stream, selection, slots);
}

absl::Status Int8Gemv(const Int8RowsWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                      cudaStream_t stream, const Int8GemvTuning& tuning) {
  const int warps_per_block = tuning.warps_per_block, row_tiles = tuning.row_tiles;
  if (w.codes == nullptr || w.params == nullptr || x == nullptr || y == nullptr ||
      !Aligned(w.codes, 16) || !Aligned(w.params, 8) || !Aligned(x, 8)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int8Gemv: expected non-null pointers, codes 16-byte and params and x 8-byte aligned, "
        "but got codes %p, params %p, x %p, y %p",
        w.codes, w.params, x, y));
  }
  if (absl::Status s = CheckInt8RowsShape(w.n, w.k, w.group_size); !s.ok()) return s;
  if (w.n > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int8Gemv: N must be at most 2^30, but got %d", w.n));
  }
  if (m < 1 || m > kInt8GemvMaxM) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int8Gemv: M must be 1..%d, but got %d", kInt8GemvMaxM, m));
  }
  const int tiles = row_tiles != 0 ? row_tiles : 1;
  if (tiles != 1 && tiles != 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int8Gemv: row_tiles must be 1 or 2, but got %d", row_tiles));
  }
  const int max_warps = kMaxWarps / tiles;
  const int warps = warps_per_block;  // 0: Launch picks the default
  if (warps < 0 || warps > max_warps) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int8Gemv: warps_per_block must be 0 (default) or 1..%d with %d row tile(s), but got %d",
        max_warps, tiles, warps_per_block));
  }
  if (m <= 8) {
    return tiles == 1 ? LaunchForGroup<1, 1>(w, x, m, y, stream, warps, tuning)
                      : LaunchForGroup<1, 2>(w, x, m, y, stream, warps, tuning);
  }
  return tiles == 1 ? LaunchForGroup<2, 1>(w, x, m, y, stream, warps, tuning)
                    : LaunchForGroup<2, 2>(w, x, m, y, stream, warps, tuning);
}

}  // namespace gquant::cuda
