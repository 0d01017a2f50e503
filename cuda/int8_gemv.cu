#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_primitives.cuh"
#include "int8_gemv.cuh"
#include "launch.cuh"
#include "one_wave_grid.cuh"
#include "split_runs.cuh"

namespace gquant::cuda {
namespace {

constexpr int kRows = 16;            // rows per unit: the mma's M
constexpr int kTileK = 128;          // columns per step: one 128-byte segment per row
constexpr int kSteps = kTileK / 16;  // k16 mma steps per tile
// Ring stages per warp (the default): kStages - 1 tiles (~5 KB) in flight
// while one is used; at 16 warps per multiprocessor ~80 KB, several times
// what covers DRAM latency at 3 TB/s (~1 us x 3 TB/s / 132 SMs = 23 KB).
// Measured on an H100 at M = 1: 4 stages were as fast on most 31B shapes and
// 9% slower on down_proj (K = 21504).
constexpr int kDefaultStages = 3;
constexpr int kMaxWarpsPerBlock = 16;
constexpr uint32_t kOnesBf16x2 = 0x3F803F80u;  // bf16x2 (1, 1)

// kGroupBlocks: 16-column blocks per group when the kernel is specialized
// for it (1: group 16, 2: group 32), kPerRow for one group per row,
// kAnyGroup for any other group size (read at run time).
constexpr int kPerRow = 0, kAnyGroup = -1;

// One warp's ring stage: codes [16 rows][8 chunks of 16 bytes] with chunk c
// of row r at position c ^ (r % 8) (so 8 rows of one chunk, as ldmatrix
// reads them, hit 8 different bank quads), then the params of the groups
// the tile touches, [16 rows][kSlots] float2.
template <int kGroupBlocks>
struct Stage {
  static constexpr int kSlots = kGroupBlocks > 0          ? kSteps / kGroupBlocks
                                : kGroupBlocks == kPerRow ? 1
                                                          : kSteps;
  static constexpr int kCodeBytes = kRows * kTileK;
  static constexpr int kBytes = kCodeBytes + kRows * kSlots * 8;
};

struct Args {
  const int8_t* codes;     // [N, K]
  const float2* params;    // [N][groups]
  const __nv_bfloat16* x;  // [m, K]
  __nv_bfloat16* y;        // [m, N]
  int m, n, k, k_blocks, k_tiles, groups;
  int group_blocks;  // 16-column blocks per group (run-time value)
  bool min_form;
  int units;           // row blocks of 16
  int block_units;     // units per thread block (the last may have fewer)
  int x_bytes;         // M = 1: shared bytes of x before the rings
  bool early_weights;  // M = 1: the first stages requested before the predecessor wait
  bool one_wave;       // else one unit per block, several rounds of blocks
  // Int8GemvSelected: blockIdx.y is a slot, its weight expert_ids[slot] of
  // the tables; null for one weight.
  const int32_t* expert_ids;
  const int8_t* const* codes_table;
  const float2* const* params_table;
  int num_experts;
  int64_t x_slot_stride;
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

// kTokens: 1, 8 or 16 activation rows the kernel is built for (M <= kTokens).
//
// A thread block owns block_units whole units (16-row blocks); its warps
// take equal contiguous runs of their (unit, 128-column tile) steps and
// stream them through private cp.async rings. A unit inside one run is
// stored straight to y; a unit split between runs leaves a partial sum per
// warp (its first unit's in registers, its last unit's in its ring after the
// loop), and after one barrier the warp holding the unit's first step adds
// them in warp order, so results do not depend on timing and nothing crosses
// thread blocks (int4_mma_gemv.cu's scheme).
// Per step and k16 block, lane (g, t) = (l / 4, l % 4) feeds A rows g and
// g + 8, columns 4t..4t+3 (k slots 2t, 2t+1, 2t+8, 2t+9), and B token g
// (+ 8 per token tile), the same columns; it accumulates rows g, g + 8 x
// tokens 2t, 2t + 1. At M = 1 every lane reads token 0's x from shared
// memory (a broadcast): columns g > 0 of the mma repeat column 0 and are
// never stored.
template <int kTokens, int kGroupBlocks, bool kSelected, int kStages>
__global__ void __launch_bounds__(kMaxWarpsPerBlock * 32, 1) Int8GemvKernel(const Args a) {
  using S = Stage<kGroupBlocks>;
  constexpr int kTokenTiles = (kTokens + 7) / 8;
  constexpr bool kSharedX = kTokens == 1;
  constexpr bool kPerRowParams = kGroupBlocks == kPerRow;
  static_assert(2 * kTokenTiles * 512 <= kStages * S::kBytes, "partials alias the ring");
  extern __shared__ __align__(16) uint8_t shared[];
  const int8_t* codes = a.codes;
  const float2* params = a.params;
  const __nv_bfloat16* x = a.x;
  __nv_bfloat16* y = a.y;
  if constexpr (kSelected) {
    // The slot's expert comes from an earlier kernel (the router), so
    // nothing is requested before the predecessor wait.
    WaitForPredecessor();
    const int slot = blockIdx.y;
    const int expert = min(max(a.expert_ids[slot], 0), a.num_experts - 1);
    codes = a.codes_table[expert];
    params = a.params_table[expert];
    x += slot * a.x_slot_stride;
    y += int64_t{slot} * a.n;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, t = lane % 4;
  __nv_bfloat16* const shared_x = reinterpret_cast<__nv_bfloat16*>(shared);  // M = 1
  uint8_t* const rings = shared + (kSharedX ? a.x_bytes : 0);
  uint8_t* const ring = rings + warp * kStages * S::kBytes;
  const int first_unit = blockIdx.x * a.block_units;
  const int steps = min(a.block_units, a.units - first_unit) * a.k_tiles;
  const int run_begin = RunBegin(steps, warps, warp);
  const int count = RunBegin(steps, warps, warp + 1) - run_begin;
  const int blocks_per_group = kGroupBlocks > 0 ? kGroupBlocks : a.group_blocks;

  // Queues the codes and params of the run's next step into the next stage
  // and commits a group (empty past the run's end, keeping one per stage).
  // Codes: lane l copies chunk l % 8 of rows l / 8 + 4i, so 8 lanes read one
  // row's 128-byte segment. Rows past N repeat row N - 1 (never stored).
  int next = 0, next_unit = run_begin / a.k_tiles, next_kt = run_begin % a.k_tiles;
  int next_stage = 0;
  const int chunk = lane % 8;
  const auto issue = [&] {
    if (next < count) {
      uint8_t* const stage = ring + next_stage * S::kBytes;
      const int row0 = (first_unit + next_unit) * kRows;
      if (next_kt * kSteps + chunk < a.k_blocks) {
#pragma unroll
        for (int i = 0; i < kRows / 4; ++i) {
          const int r = lane / 8 + 4 * i;
          const int64_t row = min(row0 + r, a.n - 1);
          CopyAsync16(SharedAddress(stage + r * kTileK + (chunk ^ (r % 8)) * 16),
                      codes + row * a.k + next_kt * kTileK + chunk * 16);
        }
      }
      // Params of the groups the tile touches: slot = group - first group.
      if constexpr (kPerRowParams) {
        if (lane < kRows) {
          CopyAsync8(SharedAddress(stage + S::kCodeBytes + lane * 8),
                     params + min(row0 + lane, a.n - 1));
        }
      } else {
        const int first_block = next_kt * kSteps;
        const int first_group = first_block / blocks_per_group;
        const int slots =
            (min(first_block + kSteps, a.k_blocks) - 1) / blocks_per_group - first_group + 1;
#pragma unroll
        for (int i = 0; i < kRows * S::kSlots / 32; ++i) {
          const int q = lane + 32 * i, r = q / S::kSlots, slot = q % S::kSlots;
          if (slot < slots) {
            const int64_t row = min(row0 + r, a.n - 1);
            CopyAsync8(SharedAddress(stage + S::kCodeBytes + q * 8),
                       params + row * a.groups + first_group + slot);
          }
        }
      }
    }
    CommitCopies();
    ++next;
    if (++next_kt == a.k_tiles) {
      next_kt = 0;
      ++next_unit;
    }
    next_stage = next_stage == kStages - 1 ? 0 : next_stage + 1;
  };

  // Lane quad g feeds token g (+ 8 per token tile) as B; padding tokens are 0.
  bool has_token[kTokenTiles];
  const __nv_bfloat16* x_row[kTokenTiles];
#pragma unroll
  for (int n8 = 0; n8 < kTokenTiles; ++n8) {
    has_token[n8] = g + 8 * n8 < a.m;
    x_row[n8] = x + static_cast<int64_t>(has_token[n8] ? g + 8 * n8 : 0) * a.k;
  }
  // B fragments of one tile: token g's columns 4t..4t+3 of each block.
  using TileX = uint32_t[kSteps][kTokenTiles][2];
  const auto load_x = [&](int kt, TileX& b) {
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int block = kt * kSteps + s;
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
        uint2 v = make_uint2(0, 0);
        if (block < a.k_blocks) {
          if constexpr (kSharedX) {
            v = *reinterpret_cast<const uint2*>(shared_x + block * 16 + 4 * t);
          } else if (has_token[n8]) {
            v = __ldg(reinterpret_cast<const uint2*>(x_row[n8] + block * 16 + 4 * t));
          }
        }
        b[s][n8][0] = v.x;
        b[s][n8][1] = v.y;
      }
    }
  };

  // ldmatrix row addresses (byte offsets in a stage) for steps 2p, 2p + 1:
  // matrices (rows 0-7, step 2p), (rows 8-15, 2p), (0-7, 2p + 1), (8-15, 2p + 1).
  const int ldsm_row = (lane / 8 % 2) * 8 + lane % 8;
  const auto ldsm_offset = [&](int p) {
    const int c = 2 * p + lane / 16;
    return ldsm_row * kTileK + (c ^ (lane % 8)) * 16;
  };

  using Sums = float[kTokenTiles][4];
  Sums acc = {};
  // Per group part: Σ c x (rows g, g + 8) and Σ x (row independent).
  float dq[kTokenTiles][4] = {}, ds[kTokenTiles][4] = {};

  // acc += scale · dq − offset · Σ x for the group in params slot `slot`,
  // offset = scale · zero (or min); then the group sums restart.
  const auto flush = [&](const uint8_t* stage, int slot) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // row g, then row g + 8
      const float2 p =
          reinterpret_cast<const float2*>(stage + S::kCodeBytes)[(g + 8 * h) * S::kSlots + slot];
      const float scale = p.x, offset = a.min_form ? p.y : p.x * p.y;
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
        for (int i = 2 * h; i < 2 * h + 2; ++i) {
          acc[n8][i] = fmaf(scale, dq[n8][i], fmaf(-offset, ds[n8][i], acc[n8][i]));
          dq[n8][i] = 0;
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
  const auto compute = [&](const uint8_t* stage, int kt, const TileX& b) {
    const int first_block = kt * kSteps;
    // Any group size: the params slot and the blocks left in the group.
    [[maybe_unused]] int slot = 0, left = blocks_per_group - first_block % blocks_per_group;
    uint32_t words[4];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (first_block + s >= a.k_blocks) break;  // the last tile of a K % 128 != 0
      if (s % 2 == 0) LoadMatrixX4(SharedAddress(stage + ldsm_offset(s / 2)), words);
      uint32_t w[4];  // w0, w2: row g; w1, w3: row g + 8
      CodesToBf16(words[2 * (s % 2)], w[0], w[2]);
      CodesToBf16(words[2 * (s % 2) + 1], w[1], w[3]);
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
        Mma(dq[n8], w, b[s][n8][0], b[s][n8][1]);
        Mma(ds[n8], ones, b[s][n8][0], b[s][n8][1]);
      }
      // A group's part ends at its last block or at the tile's end (parts
      // add up: the correction is linear). Groups of 16 or 32 columns start
      // at tile boundaries and divide K, so they end every kGroupBlocks steps.
      const bool tile_end = s == kSteps - 1 || first_block + s + 1 == a.k_blocks;
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

  // Writes a finished unit's sums (rows g, g, g+8, g+8; tokens 2t, 2t+1,
  // 2t, 2t+1, + 8 per token tile) to y.
  const auto store = [&](int unit, const Sums& sum) {
#pragma unroll
    for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int token = 8 * n8 + 2 * t + i % 2;
        const int row = (first_unit + unit) * kRows + g + 8 * (i / 2);
        if (token < a.m && row < a.n) y[int64_t{token} * a.n + row] = __float2bfloat16(sum[n8][i]);
      }
    }
  };

  // The run's first unit when another run shares it (kept until the
  // barrier), and its last one likewise; -1: none.
  Sums first_partial = {};
  int first_partial_unit = -1, last_partial_unit = -1;
  // The weights do not depend on earlier kernels; x and y do.
  int early = 0;
  if (kSharedX && a.early_weights) {
    for (; early < kStages - 1; ++early) issue();
  }
  if constexpr (!kSelected) WaitForPredecessor();
  if (a.one_wave) AllowDependents();  // the grid has all of its room already
  if constexpr (kSharedX) CopyRowToShared<uint2>(x, a.k, shared_x);
  for (int s = early; s < kStages - 1; ++s) issue();
  int unit = run_begin / a.k_tiles;  // within the thread block
  int kt = run_begin % a.k_tiles, stage_index = 0;
  for (int done = 0; done < count; ++done) {
    TileX b;
    load_x(kt, b);
    WaitCopies<kStages - 2>();
    __syncwarp();  // the stage is complete for every lane; the previous one is free
    issue();
    compute(ring + stage_index * S::kBytes, kt, b);
    stage_index = stage_index == kStages - 1 ? 0 : stage_index + 1;

    const bool unit_ends = kt == a.k_tiles - 1;
    const bool run_ends = done == count - 1;
    if (++kt == a.k_tiles) kt = 0;
    if (!unit_ends && !run_ends) continue;
    if (unit * a.k_tiles >= run_begin && unit_ends) {  // whole in this run
      store(unit, acc);
    } else if (unit * a.k_tiles < run_begin) {  // began in an earlier run
      first_partial_unit = unit;
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
        for (int i = 0; i < 4; ++i) first_partial[n8][i] = acc[n8][i];
      }
    } else {  // began in this run, continues in the next
      last_partial_unit = unit;
    }
    if (!run_ends) {
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[n8][i] = 0;
      }
    }
    ++unit;
  }
  WaitCopies<0>();  // the ring is idle: it now holds this warp's partial sums
  __syncwarp();
  FinishSplitUnits<kTokenTiles>(rings, kStages * S::kBytes, count, first_partial_unit,
                                first_partial, last_partial_unit, acc, steps, a.k_tiles, store);
  // Several rounds: a dependent launched early would take the later rounds'
  // room (device_primitives.cuh).
  if (!a.one_wave) AllowDependents();
}

// The alternative to the one-wave grid for very tall weights at M = 1: one
// unit per block, its warps' contiguous K runs read side by side in the same
// 16 rows, and as many rounds of blocks as it takes. Measured on an H100
// (bench/RESULTS.md): on the 262144-row LM head at M = 1, 0.88-0.89x the
// time of the one-wave grid (whose 16 warps per multiprocessor each stream a
// different row block) with group 16 or 32 params, the same per row; at
// M = 16 1.14x; on the 31B layer shapes (2-11 row blocks per one-wave
// block) 1.0-1.5x.
constexpr int kRoundsFromBlockUnits = 32;

// Warps per block of a rounds grid: the count in [4, 16] (at most the K
// tiles) that splits the K tiles most evenly and fits, the fewest on a tie
// (42 tiles: 6).
int RoundsWarps(int k_tiles, int warp_bytes, int x_bytes, int max_dynamic) {
  int best = 1;
  double best_balance = 0;
  for (int w = std::min(4, k_tiles); w <= std::min(kMaxWarpsPerBlock, k_tiles); ++w) {
    if (w * warp_bytes + x_bytes > max_dynamic) break;
    const double balance = static_cast<double>(k_tiles) / (w * ((k_tiles + w - 1) / w));
    if (balance > best_balance + 1e-9) {
      best = w;
      best_balance = balance;
    }
  }
  return best;
}

template <int kTokens, int kGroupBlocks, bool kSelected, int kStages>
absl::Status Launch(const Args& base, const DeviceLimits& device, int warps_per_sm, int schedule,
                    bool overlap, int slots, cudaStream_t stream) {
  constexpr auto kKernel = Int8GemvKernel<kTokens, kGroupBlocks, kSelected, kStages>;
  constexpr int kWarpBytes = kStages * Stage<kGroupBlocks>::kBytes;
  absl::StatusOr<int> max_dynamic = RaiseDynamicSharedLimit<kKernel>(device);
  if (!max_dynamic.ok()) return max_dynamic.status();
  static OccupancyTable<kMaxWarpsPerBlock> occupancy;
  Args a = base;
  a.x_bytes = kTokens == 1 ? (a.k * 2 + 15) / 16 * 16 : 0;  // M = 1: x before the rings
  absl::StatusOr<OneWaveGrid> grid = PlanOneWaveGrid(reinterpret_cast<const void*>(kKernel),
                                                     occupancy, device, *max_dynamic, warps_per_sm,
                                                     {.units = a.units,
                                                      .slots = slots,
                                                      .steps_per_unit = a.k_tiles,
                                                      .warp_bytes = kWarpBytes,
                                                      .x_bytes = a.x_bytes,
                                                      .k = a.k});
  if (!grid.ok()) return grid.status();
  a.one_wave = schedule == Int8GemvTuning::kOneWave ||
               (schedule == Int8GemvTuning::kByShape &&
                (kTokens != 1 || grid->block_units < kRoundsFromBlockUnits));
  if (!a.one_wave) {
    const int warps = RoundsWarps(a.k_tiles, kWarpBytes, a.x_bytes, *max_dynamic);
    a.block_units = 1;
    return LaunchKernel(kKernel, dim3(a.units, slots), dim3(warps * 32),
                        static_cast<size_t>(warps * kWarpBytes + a.x_bytes), stream, overlap, a);
  }
  a.block_units = grid->block_units;
  return LaunchKernel(kKernel, dim3(grid->blocks, slots), dim3(grid->warps * 32),
                      static_cast<size_t>(grid->shared_bytes), stream, overlap, a);
}

template <int kTokens, bool kSelected, int kStages>
absl::Status LaunchForGroup(const Args& a, int64_t group_size, const DeviceLimits& device,
                            int warps_per_sm, int schedule, bool overlap, int slots,
                            cudaStream_t stream) {
  const auto launch = [&]<int kGroupBlocks>() {
    return Launch<kTokens, kGroupBlocks, kSelected, kStages>(a, device, warps_per_sm, schedule,
                                                             overlap, slots, stream);
  };
  if (group_size == a.k) return launch.template operator()<kPerRow>();
  if (group_size == 16) return launch.template operator()<1>();
  if (group_size == 32) return launch.template operator()<2>();
  return launch.template operator()<kAnyGroup>();
}

// Checks what both entry points share and launches `a` (pointers, selection
// and m already set) with the shape of `w`.
absl::Status CheckAndLaunch(const char* name, const Int8RowsWeight& w, Args a, int slots,
                            cudaStream_t stream, const Int8GemvTuning& tuning) {
  if (absl::Status s = CheckInt8RowsShape(w.n, w.k, w.group_size); !s.ok()) return s;
  if (w.n > (int64_t{1} << 30) || w.k > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: N must be at most 2^30 and K at most 2^24, but got %d x %d", name, w.n, w.k));
  }
  if (tuning.warps_per_sm < 0 || tuning.warps_per_sm > 64) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: warps_per_sm must be 0..64, but got %d", name, tuning.warps_per_sm));
  }
  if (tuning.schedule < Int8GemvTuning::kByShape || tuning.schedule > Int8GemvTuning::kRounds) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: schedule must be 0, 1 or 2, not %d", name, tuning.schedule));
  }
  if (tuning.stages != 0 && tuning.stages != 3 && tuning.stages != 4) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: stages must be 3 or 4, not %d", name, tuning.stages));
  }
  absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
  if (!device.ok()) return device.status();
  a.n = static_cast<int>(w.n);
  a.k = static_cast<int>(w.k);
  a.k_blocks = a.k / 16;
  a.k_tiles = (a.k + kTileK - 1) / kTileK;
  a.groups = static_cast<int>(w.k / w.group_size);
  a.group_blocks = static_cast<int>(w.group_size / 16);
  a.min_form = w.min_form;
  a.units = (a.n + kRows - 1) / kRows;
  // A selected expert is known only after the predecessor wait.
  a.early_weights = !tuning.late_weights && a.expert_ids == nullptr;
  const int warps_per_sm = tuning.warps_per_sm != 0 ? tuning.warps_per_sm : 16;
  const bool overlap = !tuning.serial_launch;
  const auto launch = [&]<int kStages>() {
    if (a.expert_ids != nullptr) {
      return LaunchForGroup<1, true, kStages>(a, w.group_size, *device, warps_per_sm,
                                              tuning.schedule, overlap, slots, stream);
    }
    const auto for_tokens = [&]<int kTokens>() {
      return LaunchForGroup<kTokens, false, kStages>(a, w.group_size, *device, warps_per_sm,
                                                     tuning.schedule, overlap, 1, stream);
    };
    return a.m == 1   ? for_tokens.template operator()<1>()
           : a.m <= 8 ? for_tokens.template operator()<8>()
                      : for_tokens.template operator()<16>();
  };
  return tuning.stages == 4 ? launch.template operator()<4>()
                            : launch.template operator()<kDefaultStages>();
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
  if (slots < 1 || slots > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int8GemvSelected: slots must be 1..65535, not %d", slots));
  }
  if (x_slot_stride < 0 || x_slot_stride % 4 != 0 || x_slot_stride > (int64_t{1} << 31) / slots) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int8GemvSelected: x_slot_stride %d must be a non-negative multiple of 4 (8-byte rows)",
        x_slot_stride));
  }
  Args a{};
  a.x = x;
  a.y = y;
  a.m = 1;
  a.expert_ids = expert_ids;
  a.codes_table = experts.codes;
  a.params_table = experts.params;
  a.num_experts = experts.num_experts;
  a.x_slot_stride = x_slot_stride;
  return CheckAndLaunch("Int8GemvSelected", shape, a, slots, stream, {});
}

absl::Status Int8Gemv(const Int8RowsWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                      cudaStream_t stream, const Int8GemvTuning& tuning) {
  if (w.codes == nullptr || w.params == nullptr || x == nullptr || y == nullptr ||
      !Aligned(w.codes, 16) || !Aligned(w.params, 8) || !Aligned(x, 8)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int8Gemv: expected non-null pointers, codes 16-byte and params and x 8-byte aligned, "
        "but got codes %p, params %p, x %p, y %p",
        w.codes, w.params, x, y));
  }
  if (m < 1 || m > kInt8GemvMaxM) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int8Gemv: M must be 1..%d, but got %d", kInt8GemvMaxM, m));
  }
  Args a{};
  a.codes = w.codes;
  a.params = w.params;
  a.x = x;
  a.y = y;
  a.m = m;
  return CheckAndLaunch("Int8Gemv", w, a, 1, stream, tuning);
}

}  // namespace gquant::cuda
