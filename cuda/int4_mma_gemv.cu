#include <cuda_bf16.h>

#include <algorithm>

#include "absl/strings/str_format.h"
#include "add_normalized_row.cuh"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_primitives.cuh"
#include "gelu_tanh.cuh"
#include "int4_mma_gemv.cuh"
#include "launch.cuh"
#include "one_wave_grid.cuh"
#include "split_runs.cuh"

namespace gquant::cuda {
namespace {

constexpr int kRows = kInt4MmaRows;
constexpr int kTileK = kInt4MmaTileK;
constexpr int kTileBytes = kInt4MmaTileBytes;
constexpr int kParamBytes = 128;  // a tile's params: two 32-groups x 16 rows x 4 bytes
constexpr int kMaxWarpsPerBlock = 16;

// The kernel streams "units": kRowTiles (1 or 2) row blocks' tiles at the
// same 64 columns, which share one copy of x and one Σx mma. A ring stage
// holds 2 / kRowTiles unit slots of: the unit's tiles, their params, and for
// M > 1 x for its 64 columns ([h][token][t] chunks of 8 bf16, the order lanes
// read them). At M = 1 the block copies all of x to shared memory before the
// loop (CopyRowToShared) and slots hold no x (`tokens` 0 below), so the ring
// carries only weights, which do not depend on earlier kernels: its first
// stages are requested before the predecessor wait.
constexpr int kTilesPerStage = 2;
constexpr int UnitSlotBytes(int tokens, int row_tiles) {
  return row_tiles * (kTileBytes + kParamBytes) + tokens * 2 * kTileK;
}
constexpr int StageBytes(int tokens, int row_tiles) {
  return kTilesPerStage / row_tiles * UnitSlotBytes(tokens, row_tiles);
}

struct Args {
  const uint8_t* qweight;
  const uint8_t* params;
  const __nv_bfloat16* x;
  __nv_bfloat16* y;
  int m, n, k, k_tiles, groups, tiles_per_group;
  int units;           // N / (16 row tiles)
  int block_units;     // units per thread block (the last may have fewer)
  int x_bytes;         // M = 1: shared bytes of x before the rings
  bool early_weights;  // M = 1: the first stages' weights requested before the predecessor wait
  // Int4MmaGemvSelected: blockIdx.y is a slot, its weight expert_ids[slot]
  // of the tables; null for one weight.
  const int32_t* expert_ids;
  const uint8_t* const* qweight_table;
  const uint8_t* const* params_table;
  int num_experts, slots;
  int64_t x_slot_stride;
  // Int4MmaGemvGeluPairs: launch the kGeluPairs kernel (y is [m, n / 2]).
  bool gelu_pairs;
  // Int4MmaEpilogue::gelu_times (the kGeluTimes kernel): [n] factors.
  const __nv_bfloat16* gelu_times;
};

// What a finished unit's store writes: the sums; gelu_tanh(gate) * up of a
// gate / up pair weight; or gelu_tanh(sum) * gelu_times[row].
enum class Store { kSums, kGeluPairs, kGeluTimes };

// The two nibbles at bits 0-3 and 16-19 of `word` as bf16 128 + q: the bits
// 0x4300 | q are 128 + q exactly (bf16 has 7 mantissa bits). One LOP3 with
// both constants; the compiler emits an AND and an OR for the C form.
__device__ __forceinline__ uint32_t NibblesAsBf16(uint32_t word) {
  uint32_t out;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n"  // (a & b) | c
      : "=r"(out)
      : "r"(word), "n"(0x000F000F), "n"(0x43004300));
  return out;
}

// kTokens: 1, 8 or 16 activation rows the ring has room for (M <= kTokens).
// kGroupsPerTile: 2 for group size 32, 1 for multiples of 64. A ring stage
// holds kTilesPerStage consecutive tiles of the warp's run, so the pipeline's
// bookkeeping (wait, warp sync, addresses) is paid once per stage.
//
// A thread block owns block_units whole units; its warps take equal
// contiguous runs of their (unit, 64-column) steps. A unit inside one run is
// stored straight to y; a unit split between runs leaves a partial sum per
// warp (its first unit's in registers, its last unit's in its ring after the
// loop), and after one barrier the warp holding the unit's first step adds
// them in warp order, so results do not depend on timing and nothing crosses
// thread blocks.
//
// kStore kGeluPairs (Int4MmaGemvGeluPairs): rows g and g + 8 of each row
// block are a gate and an up row, and the store writes gelu_tanh(gate) * up;
// kGeluTimes (M = 1 after the add and norms only) multiplies each row's
// gelu_tanh(sum) by a factor read in the store. Template values, not
// run-time ones, so the plain kernels keep their registers (the run-time
// branch spilled in several of them and cost M = 16 ~4%). kAddNorm
// (Int4MmaGemvAfterAddNorm, M = 1): x is formed from `add_norm` instead of
// read; likewise a flag, and `add_norm` a parameter of its own (in Args, or
// behind a run-time branch, it made ptxas spill in the plain M = 1 and
// M = 16 kernels).
template <int kTokens, int kGroupsPerTile, bool kMinForm, int kStages, int kRowTiles,
          bool kSelected, Store kStore, bool kAddNorm>
__global__ void __launch_bounds__(kMaxWarpsPerBlock * 32, kTokens == 1 ? 2 : 1)
    Int4MmaGemvKernel(const Args a, const ResidualAddNorm add_norm) {
  constexpr bool kGeluPairs = kStore == Store::kGeluPairs;
  static_assert(!(kSelected && kGeluPairs), "experts have no gate / up pairs");
  static_assert(!kAddNorm || (kTokens == 1 && !kSelected), "the row is formed for one token");
  static_assert(kStore != Store::kGeluTimes || (kAddNorm && kRowTiles == 1),
                "factors are read for one token");
  constexpr int kTokenTiles = (kTokens + 7) / 8;
  constexpr bool kSharedX = kTokens == 1;
  constexpr int kSlotTokens = kSharedX ? 0 : kTokens;
  constexpr int kUnitsPerStage = kTilesPerStage / kRowTiles;
  constexpr int kStage = StageBytes(kSlotTokens, kRowTiles);
  constexpr int kUnitSlot = UnitSlotBytes(kSlotTokens, kRowTiles);
  constexpr int kXOffset = kRowTiles * (kTileBytes + kParamBytes);  // x within a unit slot
  constexpr int kPartialFloats = kRowTiles * kTokenTiles * 128;     // a warp's sums for one unit
  static_assert(2 * kPartialFloats * 4 <= kStages * kStage, "partials alias the ring");
  extern __shared__ __align__(16) uint8_t shared[];
  // The plain kernel reads a.y from the parameter space when it stores.
  const uint8_t* qweight = a.qweight;
  const uint8_t* params = a.params;
  const __nv_bfloat16* x_row = a.x;
  if constexpr (kSelected) {
    // The slot's expert comes from an earlier kernel (the router), so
    // nothing is requested before the predecessor wait (early_weights off).
    WaitForPredecessor();
    const int slot = blockIdx.y;
    const int expert = min(max(a.expert_ids[slot], 0), a.num_experts - 1);
    qweight = a.qweight_table[expert];
    params = a.params_table[expert];
    x_row += slot * a.x_slot_stride;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  __nv_bfloat16* const shared_x = reinterpret_cast<__nv_bfloat16*>(shared);  // M = 1
  uint8_t* const rings = shared + (kSharedX ? a.x_bytes : 0);
  uint8_t* ring = rings + warp * kStages * kStage;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates
  const int first_unit = blockIdx.x * a.block_units;
  const int steps = min(a.block_units, a.units - first_unit) * a.k_tiles;
  const int run_begin = RunBegin(steps, warps, warp);
  const int count = RunBegin(steps, warps, warp + 1) - run_begin;
  const int first_kt = run_begin % a.k_tiles;
  // The run's first tile (row tile 0 of its first unit) in the tile sequence.
  const int64_t unit0 = first_unit + run_begin / a.k_tiles;
  const int64_t begin = unit0 * kRowTiles * a.k_tiles + first_kt;

  // Stage u holds the run's steps kUnitsPerStage u + v. Each lane copies its
  // 16 bytes of each tile, lanes 0..7 (or 0..3) each tile's params, and the
  // lanes covering x's chunks (token, h, t) for the valid tokens. Everything
  // lane-dependent is computed once; sources advance by counting, and copies
  // are predicated, not branched.
  constexpr int kXChunksPerLane = (kTokens * 8 + 31) / 32;
  int x_source[kXChunksPerLane], x_target[kXChunksPerLane];
  bool x_valid[kXChunksPerLane];
#pragma unroll
  for (int r = 0; r < kXChunksPerLane; ++r) {
    const int c = lane + 32 * r, token = c / 8, h = c % 8 / 4, ct = c % 4;
    x_valid[r] = c < kTokens * 8 && token < a.m;
    x_source[r] = x_valid[r] ? token * a.k + 32 * h + 8 * ct : 0;
    x_target[r] = kXOffset + ((h * kTokens + token) * 4 + ct) * 16;
  }
  const bool copies_params = lane < 4 * kGroupsPerTile;
  const uint32_t ring_address = SharedAddress(ring);
  // Row tile r of a unit is a whole row block (k_tiles tiles) after row tile
  // r - 1; its params likewise (groups x 64 bytes per row block).
  const int64_t row_tile_bytes = int64_t{a.k_tiles} * kTileBytes;
  const int64_t row_tile_param_bytes = int64_t{a.groups} * 64;
  const uint8_t* next_weights = qweight + begin * kTileBytes + lane * 16;
  // Params follow the tile sequence: 128 bytes per tile for group size 32,
  // 64 bytes per tiles_per_group tiles otherwise (row blocks are contiguous).
  const uint8_t* next_params =
      params + (kGroupsPerTile == 2 ? begin * 128 : begin / a.tiles_per_group * 64) +
      (copies_params ? lane * 16 : 0);
  int next = 0, next_kt = first_kt, next_stage = 0;
  int next_in_group = kGroupsPerTile == 2 ? 0 : first_kt % a.tiles_per_group;
  const auto issue = [&] {
#pragma unroll
    for (int v = 0; v < kUnitsPerStage; ++v) {
      const bool valid = next < count;
      const uint32_t slot = ring_address + next_stage * kStage + v * kUnitSlot;
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        CopyAsync16If(slot + r * kTileBytes + lane * 16, next_weights + r * row_tile_bytes, valid);
        CopyAsync16If(slot + kRowTiles * kTileBytes + r * kParamBytes + lane * 16,
                      next_params + r * row_tile_param_bytes, valid && copies_params);
      }
      if constexpr (!kSharedX) {
        const __nv_bfloat16* x_tile = a.x + next_kt * kTileK;
#pragma unroll
        for (int r = 0; r < kXChunksPerLane; ++r) {
          CopyAsync16CachedIf(slot + x_target[r], x_tile + x_source[r], valid && x_valid[r]);
        }
      }
      ++next;
      next_weights += kTileBytes;
      if constexpr (kGroupsPerTile == 2) {
        next_params += 128;
      } else if (++next_in_group == a.tiles_per_group) {
        next_in_group = 0;
        next_params += 64;
      }
      if (++next_kt == a.k_tiles) {  // on to the next unit: skip its other row tiles
        next_kt = 0;
        next_weights += (kRowTiles - 1) * row_tile_bytes;
        next_params += (kRowTiles - 1) * row_tile_param_bytes;
      }
    }
    CommitCopies();  // possibly empty: keeps one group per stage for WaitCopies
    next_stage = next_stage == kStages - 1 ? 0 : next_stage + 1;
  };

  constexpr uint32_t kOnes = 0x3F803F80u;  // bf16x2 (1, 1)
  const uint32_t ones[4] = {kOnes, kOnes, kOnes, kOnes};
  bool has_token[kTokenTiles];
#pragma unroll
  for (int n8 = 0; n8 < kTokenTiles; ++n8) has_token[n8] = g + 8 * n8 < min(a.m, kTokens);
  // With one token only accumulators 0 and 2 (token column 0) are ever used.
  constexpr int kAccStep = kTokens == 1 ? 2 : 1;

  using Sums = float[kRowTiles * kTokenTiles][4];  // [row tile * kTokenTiles + token tile]
  // Writes a finished unit's sums (per row tile: rows g, g, g+8, g+8; tokens
  // 2t, 2t+1, 2t, 2t+1, + 8 per token tile) to y; with kGeluPairs, the
  // product of each lane's row g (gate) and row g + 8 (up) sums instead;
  // with kGeluTimes, gelu_tanh of each sum times its row's factor.
  const auto store = [&](int unit, const Sums& sum) {
    __nv_bfloat16* const y_out = kSelected ? a.y + int64_t{blockIdx.y} * a.n : a.y;
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r) {
      const int64_t block = int64_t{first_unit + unit} * kRowTiles + r;
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
        const float* s = sum[r * kTokenTiles + n8];
        if constexpr (kGeluPairs) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int token = 8 * n8 + 2 * t + i;
            if (token < a.m) {
              y_out[int64_t{token} * (a.n / 2) + block * 8 + g] =
                  __float2bfloat16(GeluTanh(s[i]) * s[i + 2]);
            }
          }
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int token = 8 * n8 + 2 * t + i % 2;
            const int64_t row = block * kRows + g + 8 * (i / 2);
            if (token >= a.m) continue;
            float value = s[i];
            if constexpr (kStore == Store::kGeluTimes) {
              value = GeluTanh(value) * __bfloat162float(a.gelu_times[row]);
            }
            y_out[int64_t{token} * a.n + row] = __float2bfloat16(value);
          }
        }
      }
    }
  };

  Sums acc = {};
  // The run's first unit when another run shares it (kept until the
  // barrier), and its last one likewise; -1: none.
  Sums first_partial = {};
  int first_partial_unit = -1, last_partial_unit = -1;
  // The weights do not depend on earlier kernels; x and y do.
  int early = 0;
  if (kSharedX && a.early_weights) {
    for (; early < kStages - 1; ++early) issue();
  }
  WaitForPredecessor();
  AllowDependents();
  if constexpr (kAddNorm) {
    // Every block forms the row; the first also stores the new residual.
    ResidualAddNorm row = add_norm;
    if (blockIdx.x != 0) row.residual_out = nullptr;
    AddNormalizedRow<kVectorWidth>(row, a.k, shared_x);
    __syncthreads();
  } else if constexpr (kSharedX) {
    CopyRowToShared<uint4>(x_row, a.k, shared_x);
  }
  for (int s = early; s < kStages - 1; ++s) issue();
  int unit = run_begin / a.k_tiles;  // within the thread block
  int kt = first_kt, stage_index = 0;
  for (int done = 0; done < count; done += kUnitsPerStage) {
    WaitCopies<kStages - 2>();
    __syncwarp();  // the stage is complete for every lane; the previous one is free
    issue();
    const uint8_t* stage = ring + stage_index * kStage;
    stage_index = stage_index == kStages - 1 ? 0 : stage_index + 1;
#pragma unroll
    for (int v = 0; v < kUnitsPerStage; ++v) {
      if (done + v >= count) break;
      const uint8_t* slot = stage + v * kUnitSlot;
      uint32_t b[kTokenTiles][4][2];  // [token tile][k16 step][register]
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint4 x = make_uint4(0, 0, 0, 0);
          if constexpr (kSharedX) {
            // Every lane reads token 0's x (a broadcast): columns g > 0 of
            // the mma then repeat column 0 and are never stored.
            x = *reinterpret_cast<const uint4*>(shared_x + kt * kTileK + 32 * h + 8 * t);
          } else if (has_token[n8]) {
            x = *reinterpret_cast<const uint4*>(slot + kXOffset +
                                                ((h * kTokens + g + 8 * n8) * 4 + t) * 16);
          }
          b[n8][2 * h][0] = x.x;
          b[n8][2 * h][1] = x.y;
          b[n8][2 * h + 1][0] = x.z;
          b[n8][2 * h + 1][1] = x.w;
        }
      }
      uint32_t words[kRowTiles][4];
      uint2 p[kRowTiles][kGroupsPerTile];  // (row g, row g + 8) of each group
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        const uint4 w = *reinterpret_cast<const uint4*>(slot + r * kTileBytes + lane * 16);
        words[r][0] = w.x;
        words[r][1] = w.y;
        words[r][2] = w.z;
        words[r][3] = w.w;
#pragma unroll
        for (int j = 0; j < kGroupsPerTile; ++j) {
          p[r][j] = *reinterpret_cast<const uint2*>(slot + kRowTiles * kTileBytes +
                                                    r * kParamBytes + (j * 16 + 2 * g) * 4);
        }
      }

      // One group's part at a time, its sums starting from zero (the mma's C
      // is then the zero register, no resets).
      constexpr int kStepsPerGroup = 4 / kGroupsPerTile;
#pragma unroll
      for (int j = 0; j < kGroupsPerTile; ++j) {
        float dq[kRowTiles][kTokenTiles][4] = {};  // Σ (128 + q) x per row tile
        float ds[kTokenTiles][4] = {};             // Σ x, the same for every row
#pragma unroll
        for (int u = 0; u < kStepsPerGroup; ++u) {
          const int s = j * kStepsPerGroup + u;
#pragma unroll
          for (int r = 0; r < kRowTiles; ++r) {
            uint32_t areg[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) areg[i] = NibblesAsBf16(words[r][s] >> (4 * i));
#pragma unroll
            for (int n8 = 0; n8 < kTokenTiles; ++n8) {
              Mma(dq[r][n8], areg, b[n8][s][0], b[n8][s][1]);
            }
          }
#pragma unroll
          for (int n8 = 0; n8 < kTokenTiles; ++n8) Mma(ds[n8], ones, b[n8][s][0], b[n8][s][1]);
        }
        // (q - z) s summed is s (dq - (128 + z) ds); q s - m summed is
        // s (dq - 128 ds) - m ds. Each difference is one fused multiply-add,
        // so the cancellation between its two large terms is rounded once.
#pragma unroll
        for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // row g, then row g + 8
            const uint32_t word = h == 0 ? p[r][j].x : p[r][j].y;
            const float scale = __uint_as_float(word << 16);
            const float zero = __uint_as_float(word & 0xFFFF0000u);  // or min
            const float offset = kMinForm ? 128.0f : 128.0f + zero;
#pragma unroll
            for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
              for (int i = 2 * h; i < 2 * h + 2; i += kAccStep) {
                float& sum = acc[r * kTokenTiles + n8][i];
                sum = fmaf(scale, fmaf(-offset, ds[n8][i], dq[r][n8][i]), sum);
                if constexpr (kMinForm) sum = fmaf(-zero, ds[n8][i], sum);
              }
            }
          }
        }
      }

      const bool unit_ends = kt == a.k_tiles - 1;
      const bool run_ends = done + v == count - 1;
      if (++kt == a.k_tiles) kt = 0;
      if (!unit_ends && !run_ends) continue;
      const bool whole = unit * a.k_tiles >= run_begin && unit_ends;
      if (whole) {
        store(unit, acc);
      } else if (unit * a.k_tiles < run_begin) {  // began in an earlier run
        first_partial_unit = unit;
#pragma unroll
        for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
          for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
              first_partial[r * kTokenTiles + n8][i] = acc[r * kTokenTiles + n8][i];
          }
        }
      } else {  // began in this run, continues in the next
        last_partial_unit = unit;
      }
      if (!run_ends) {
#pragma unroll
        for (int r = 0; r < kRowTiles; ++r) {
#pragma unroll
          for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[r * kTokenTiles + n8][i] = 0;
          }
        }
      }
      ++unit;
    }
  }
  WaitCopies<0>();  // the ring is idle: it now holds this warp's partial sums
  __syncwarp();

  FinishSplitUnits<kRowTiles * kTokenTiles>(rings, kStages * kStage, count, first_partial_unit,
                                            first_partial, last_partial_unit, acc, steps, a.k_tiles,
                                            store);
}

// The launch settings past the weight and activations.
struct Plan {
  const DeviceLimits& device;
  int warps_per_sm;
  bool overlap;
  cudaStream_t stream;
  const ResidualAddNorm* add_norm;  // Int4MmaGemvAfterAddNorm's row, else null
};

// Shapes the grid for `base` on this device and launches: thread blocks of
// up to kMaxWarpsPerBlock warps, as many resident per multiprocessor as
// `warps_per_sm` allows, each owning enough whole units that the grid is a
// single wave.
template <int kTokens, int kGroupsPerTile, bool kMinForm, int kStages, int kRowTiles,
          bool kSelected, Store kStore, bool kAddNorm>
absl::Status Launch(const Args& base, const Plan& p) {
  constexpr auto kKernel = Int4MmaGemvKernel<kTokens, kGroupsPerTile, kMinForm, kStages, kRowTiles,
                                             kSelected, kStore, kAddNorm>;
  const DeviceLimits& device = p.device;
  absl::StatusOr<int> max_dynamic = RaiseDynamicSharedLimit<kKernel>(device);
  if (!max_dynamic.ok()) return max_dynamic.status();
  static OccupancyTable<kMaxWarpsPerBlock> occupancy;
  Args a = base;
  a.units = a.n / (kRows * kRowTiles);
  a.x_bytes = kTokens == 1 ? (a.k * 2 + 15) / 16 * 16 : 0;  // M = 1: x before the rings
  const int slots = kSelected ? a.slots : 1;                // the grid's y
  absl::StatusOr<OneWaveGrid> grid = PlanOneWaveGrid(
      reinterpret_cast<const void*>(kKernel), occupancy, device, *max_dynamic, p.warps_per_sm,
      {.units = a.units,
       .slots = slots,
       .steps_per_unit = a.k_tiles,
       .warp_bytes = kStages * StageBytes(kTokens == 1 ? 0 : kTokens, kRowTiles),
       .x_bytes = a.x_bytes,
       .k = a.k});
  if (!grid.ok()) return grid.status();
  a.block_units = grid->block_units;
  return LaunchKernel(kKernel, dim3(grid->blocks, slots), dim3(grid->warps * 32),
                      static_cast<size_t>(grid->shared_bytes), p.stream, p.overlap, a,
                      kAddNorm ? *p.add_norm : ResidualAddNorm{});
}

// kSelected: Int4MmaGemvSelected's kernel (its own instantiation, so the
// plain one carries no expert lookup); kStore: what the store writes;
// kAddNorm: Int4MmaGemvAfterAddNorm's.
template <int kTokens, int kStages, int kRowTiles, bool kSelected = false,
          Store kStore = Store::kSums, bool kAddNorm = false>
absl::Status ForGroups(const Args& a, bool g32, bool min_form, const Plan& p) {
  const auto launch = [&]<int kGroupsPerTile, bool kMinForm>() {
    return Launch<kTokens, kGroupsPerTile, kMinForm, kStages, kRowTiles, kSelected, kStore,
                  kAddNorm>(a, p);
  };
  if (g32) {
    return min_form ? launch.template operator()<2, true>()
                    : launch.template operator()<2, false>();
  }
  return min_form ? launch.template operator()<1, true>() : launch.template operator()<1, false>();
}

template <int kStages, int kRowTiles>
absl::Status ForTokens(const Args& a, bool g32, bool min_form, const Plan& p) {
  if (a.expert_ids != nullptr) return ForGroups<1, kStages, kRowTiles, true>(a, g32, min_form, p);
  if (p.add_norm != nullptr) {
    // One token and one row tile only; gated stores in 3 stages only
    // (CheckAndLaunch).
    if constexpr (kRowTiles == 1) {
      if (!a.gelu_pairs && a.gelu_times == nullptr) {
        return ForGroups<1, kStages, 1, false, Store::kSums, true>(a, g32, min_form, p);
      }
      if constexpr (kStages == 3) {
        if (a.gelu_pairs) {
          return ForGroups<1, 3, 1, false, Store::kGeluPairs, true>(a, g32, min_form, p);
        }
        return ForGroups<1, 3, 1, false, Store::kGeluTimes, true>(a, g32, min_form, p);
      }
    }
    return absl::InternalError("Int4MmaGemvAfterAddNorm: no kernel for these knobs");
  }
  if (a.gelu_pairs) {
    // Gate / up pairs come in the default ring depth only (CheckAndLaunch).
    if constexpr (kStages == 3) {
      if (a.m == 1)
        return ForGroups<1, 3, kRowTiles, false, Store::kGeluPairs>(a, g32, min_form, p);
      if (a.m <= 8)
        return ForGroups<8, 3, kRowTiles, false, Store::kGeluPairs>(a, g32, min_form, p);
      return ForGroups<16, 3, kRowTiles, false, Store::kGeluPairs>(a, g32, min_form, p);
    }
    return absl::InternalError("Int4MmaGemvGeluPairs: no kernel for this ring depth");
  }
  if (a.m == 1) return ForGroups<1, kStages, kRowTiles>(a, g32, min_form, p);
  if (a.m <= 8) return ForGroups<8, kStages, kRowTiles>(a, g32, min_form, p);
  return ForGroups<16, kStages, kRowTiles>(a, g32, min_form, p);
}

template <int kRowTiles>
absl::Status ForStages(const Args& a, bool g32, bool min_form, int stages, const Plan& p) {
  return stages == 4 ? ForTokens<4, kRowTiles>(a, g32, min_form, p)
                     : ForTokens<3, kRowTiles>(a, g32, min_form, p);
}

// Checks what both entry points share and launches `a` (pointers, selection
// and m already set) with the shape of `w`.
absl::Status CheckAndLaunch(const Int4MmaWeight& w, Args a, cudaStream_t stream,
                            const Int4MmaTuning& tuning, const ResidualAddNorm* add_norm) {
  const bool reads_x = add_norm == nullptr;
  if ((reads_x && a.x == nullptr) || a.y == nullptr) {
    return absl::InvalidArgumentError("Int4MmaGemv: null pointer");
  }
  if (reads_x && reinterpret_cast<uintptr_t>(a.x) % 16 != 0) {
    return absl::InvalidArgumentError("Int4MmaGemv: x must be 16-byte aligned");
  }
  if (absl::Status s = CheckInt4MmaShape(w.n, w.k, w.group_size); !s.ok()) return s;
  if (a.m < 1 || a.m > kInt4MmaMaxM) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4MmaGemv: M must be 1..%d, but got %d", kInt4MmaMaxM, a.m));
  }
  if (w.n > (int64_t{1} << 30) || w.k > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemv: N must be at most 2^30 and K at most 2^24, but got %d x %d", w.n, w.k));
  }
  if (tuning.warps_per_sm < 0 || tuning.warps_per_sm > 64) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemv: warps_per_sm must be 0..64, but got %d", tuning.warps_per_sm));
  }
  absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
  if (!device.ok()) return device.status();
  a.n = static_cast<int>(w.n);
  a.k = static_cast<int>(w.k);
  a.k_tiles = a.k / kTileK;
  a.groups = a.k / w.group_size;
  a.tiles_per_group = w.group_size / kTileK;  // 0 for group size 32
  // A selected expert is known only after the predecessor wait.
  a.early_weights = !tuning.late_weights && a.expert_ids == nullptr;
  const bool g32 = w.group_size == 32;
  // Measured on an H100 (bench/int4_gemv_notes.md): 16 warps per
  // multiprocessor beat a full one (32) on the 31B layer shapes (longer runs
  // per warp, fewer split row blocks); the 262144-row LM head prefers 32.
  const int warps_per_sm = tuning.warps_per_sm != 0 ? tuning.warps_per_sm
                           : w.n < 8192 * kRows     ? 16
                                                    : 32;
  if (tuning.stages != 0 && tuning.stages != 3 && tuning.stages != 4) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4MmaGemv: stages must be 3 or 4, not %d", tuning.stages));
  }
  if ((a.gelu_pairs || a.gelu_times != nullptr) && tuning.stages == 4) {
    return absl::InvalidArgumentError("Int4MmaGemv: gated stores only in the default 3 stages");
  }
  if (add_norm != nullptr && (a.m != 1 || tuning.row_tiles == 2)) {
    return absl::InvalidArgumentError("Int4MmaGemvAfterAddNorm: one token and 1 row tile only");
  }
  if (tuning.row_tiles < 0 || tuning.row_tiles > 2 || (tuning.row_tiles == 2 && w.n % 32 != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemv: row_tiles must be 0, 1 or 2 (2 needs N %% 32 == 0), not %d for N=%d",
        tuning.row_tiles, w.n));
  }
  const Plan plan{*device, warps_per_sm, !tuning.serial_launch, stream, add_norm};
  // Two row tiles per step share x and its Σx: measured 1.1-1.5x faster for
  // M > 8 when the grid still has a unit per two multiprocessors (halving
  // k_full's 128 row blocks to 64 units left SMs idle: 1.16x slower); at
  // M <= 8 neutral, and at M = 1 slower (64 registers are then too few).
  const bool two_row_tiles = a.m > 8 && w.n % 32 == 0 && w.n / 32 >= device->multiprocessors / 2;
  const int row_tiles = tuning.row_tiles != 0 ? tuning.row_tiles : two_row_tiles ? 2 : 1;
  return row_tiles == 2 ? ForStages<2>(a, g32, w.min_form, tuning.stages, plan)
                        : ForStages<1>(a, g32, w.min_form, tuning.stages, plan);
}

// One weight (Int4MmaGemv, or Int4MmaGemvGeluPairs with `epilogue.gelu_pairs`;
// x formed from `add_norm` when it is not null).
absl::Status LaunchOneWeight(const char* op, const Int4MmaWeight& w, const __nv_bfloat16* x, int m,
                             __nv_bfloat16* y, const Int4MmaEpilogue& epilogue, cudaStream_t stream,
                             const Int4MmaTuning& tuning,
                             const ResidualAddNorm* add_norm = nullptr) {
  if (w.qweight == nullptr || w.params == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: null pointer", op));
  }
  Args a{};
  a.qweight = reinterpret_cast<const uint8_t*>(w.qweight);
  a.params = reinterpret_cast<const uint8_t*>(w.params);
  a.x = x;
  a.y = y;
  a.m = m;
  a.gelu_pairs = epilogue.gelu_pairs;
  a.gelu_times = epilogue.gelu_times;
  return CheckAndLaunch(w, a, stream, tuning, add_norm);
}

// The vectors of `row` for K elements: 16-byte aligned (the kernel moves
// them in 8-element runs), the required ones non-null, and residual_out
// clear of residual (other thread blocks read it while the first writes).
absl::Status CheckAddNorm(const ResidualAddNorm& row, int64_t k) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (row.residual == nullptr || row.residual_out == nullptr || row.delta == nullptr ||
      !aligned(row.residual) || !aligned(row.residual_out) || !aligned(row.delta) ||
      !aligned(row.delta_weight) || !aligned(row.next_weight) ||
      reinterpret_cast<uintptr_t>(row.scalar) % 4 != 0 || !(row.eps >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemvAfterAddNorm: expected non-null residual, residual_out and delta, 16-byte "
        "aligned vectors and eps >= 0, but got residual %p, residual_out %p, delta %p, "
        "delta_weight %p, scalar %p, next_weight %p, eps %g",
        row.residual, row.residual_out, row.delta, row.delta_weight, row.scalar, row.next_weight,
        row.eps));
  }
  if (row.residual_out < row.residual + k && row.residual < row.residual_out + k) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4MmaGemvAfterAddNorm: residual_out %p overlaps residual %p (K=%d)",
                        row.residual_out, row.residual, k));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Int4MmaGemv(const Int4MmaWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                         cudaStream_t stream, const Int4MmaTuning& tuning) {
  return LaunchOneWeight("Int4MmaGemv", w, x, m, y, {}, stream, tuning);
}

absl::Status Int4MmaGemvGeluPairs(const Int4MmaWeight& w, const __nv_bfloat16* x, int m,
                                  __nv_bfloat16* y, cudaStream_t stream,
                                  const Int4MmaTuning& tuning) {
  return LaunchOneWeight("Int4MmaGemvGeluPairs", w, x, m, y, {.gelu_pairs = true}, stream, tuning);
}

absl::Status Int4MmaGemvAfterAddNorm(const Int4MmaWeight& w, const ResidualAddNorm& row,
                                     const Int4MmaEpilogue& epilogue, __nv_bfloat16* y,
                                     cudaStream_t stream, const Int4MmaTuning& tuning) {
  if (absl::Status s = CheckAddNorm(row, w.k); !s.ok()) return s;
  if (epilogue.gelu_times != nullptr &&
      (epilogue.gelu_pairs || reinterpret_cast<uintptr_t>(epilogue.gelu_times) % 2 != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemvAfterAddNorm: gelu_times %p must be 2-byte aligned and not combined with "
        "gelu_pairs",
        epilogue.gelu_times));
  }
  return LaunchOneWeight("Int4MmaGemvAfterAddNorm", w, nullptr, 1, y, epilogue, stream, tuning,
                         &row);
}

absl::Status Int4MmaGemvSelected(const Int4MmaWeight& shape, const Int4MmaExpertTables& experts,
                                 const int32_t* expert_ids, int slots, const __nv_bfloat16* x,
                                 int64_t x_slot_stride, __nv_bfloat16* y, cudaStream_t stream,
                                 const Int4MmaTuning& tuning) {
  if (experts.qweights == nullptr || experts.params == nullptr || experts.num_experts < 1 ||
      expert_ids == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemvSelected: null expert tables or ids, or %d experts", experts.num_experts));
  }
  if (slots < 1 || slots > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4MmaGemvSelected: slots must be 1..65535, not %d", slots));
  }
  if (x_slot_stride < 0 || x_slot_stride % 8 != 0 || x_slot_stride > (int64_t{1} << 31) / slots) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemvSelected: x_slot_stride %d must be a non-negative multiple of 8 (16-byte rows)",
        x_slot_stride));
  }
  Args a{};
  a.x = x;
  a.y = y;
  a.m = 1;
  a.expert_ids = expert_ids;
  a.qweight_table = reinterpret_cast<const uint8_t* const*>(experts.qweights);
  a.params_table = reinterpret_cast<const uint8_t* const*>(experts.params);
  a.num_experts = experts.num_experts;
  a.slots = slots;
  a.x_slot_stride = x_slot_stride;
  return CheckAndLaunch(shape, a, stream, tuning, nullptr);
}

}  // namespace gquant::cuda
