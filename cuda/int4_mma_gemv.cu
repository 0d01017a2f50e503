#include <cuda_bf16.h>

#include <algorithm>

#include "absl/strings/str_format.h"
#include "cuda_status.cuh"
#include "device_primitives.cuh"
#include "int4_mma_gemv.cuh"

namespace gquant::cuda {
namespace {

constexpr int kRows = kInt4MmaRows;
constexpr int kTileK = kInt4MmaTileK;
constexpr int kTileBytes = kInt4MmaTileBytes;
constexpr int kParamBytes = 128;   // a tile's params: two 32-groups x 16 rows x 4 bytes
constexpr int kWarpsPerBlock = 4;  // warps are independent; small blocks pack SMs evenly
constexpr int kMinTilesPerWarp = 8;
constexpr int kSlotsPerWarp = 2;  // partial sums: a warp's first and last row block

// A ring stage holds kTilesPerStage slots of: the tile, its params, and x for
// its 64 columns ([h][token][t] chunks of 8 bf16, the order lanes read them).
constexpr int kTilesPerStage = 2;
constexpr int TileSlotBytes(int tokens) { return kTileBytes + kParamBytes + tokens * 2 * kTileK; }
constexpr int StageBytes(int tokens) { return kTilesPerStage * TileSlotBytes(tokens); }

struct Args {
  const uint8_t* qweight;
  const uint8_t* params;
  const __nv_bfloat16* x;
  __nv_bfloat16* y;
  float* partials;
  int* counters;
  int m, n, k, k_tiles, groups, tiles_per_group;
  int64_t total_tiles;
  int64_t total_warps;
};

// The warp's run of tiles is [FirstTile(w), FirstTile(w + 1)).
__device__ __forceinline__ int64_t FirstTile(const Args& a, int64_t warp) {
  return a.total_tiles * warp / a.total_warps;
}
// The warp whose run holds `tile`.
__device__ __forceinline__ int64_t OwnerOf(const Args& a, int64_t tile) {
  return ((tile + 1) * a.total_warps - 1) / a.total_tiles;
}

// Writes a row block's sums: straight to y when the warp's run held the
// whole block; otherwise into the warp's partial slot (slot 1 when the block
// started before the run, i.e. it is the run's last block, else slot 0), and
// the last of the block's warps to arrive adds the slots in warp order.
template <int kTokenTiles>
__device__ __forceinline__ void Finish(const Args& a, const float (&acc)[kTokenTiles][4],
                                       int64_t block, int64_t begin, int64_t warp, bool block_ends,
                                       int lane) {
  const int g = lane / 4, t = lane % 4;
  const auto store = [&](const float(&sum)[kTokenTiles][4]) {
#pragma unroll
    for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int token = 8 * n8 + 2 * t + i % 2;
        const int64_t row = block * kRows + g + 8 * (i / 2);
        if (token < a.m)
          a.y[static_cast<int64_t>(token) * a.n + row] = __float2bfloat16(sum[n8][i]);
      }
    }
  };
  const int64_t block_first = block * a.k_tiles;
  if (begin <= block_first && block_ends) {
    store(acc);
    return;
  }
  const auto slot_of = [&](int64_t w) {
    return a.partials +
           (w * kSlotsPerWarp + (FirstTile(a, w) < block_first ? 1 : 0)) * (128 * kTokenTiles);
  };
  float* mine = slot_of(warp);
#pragma unroll
  for (int n8 = 0; n8 < kTokenTiles; ++n8) {
    reinterpret_cast<float4*>(mine)[n8 * 32 + lane] =
        make_float4(acc[n8][0], acc[n8][1], acc[n8][2], acc[n8][3]);
  }
  __threadfence();
  __syncwarp();
  const int64_t first = OwnerOf(a, block_first), last = OwnerOf(a, block_first + a.k_tiles - 1);
  int arrived = 0;
  if (lane == 0) arrived = atomicAdd(a.counters + block, 1);
  arrived = __shfl_sync(0xFFFFFFFFu, arrived, 0);
  if (arrived != last - first) return;
  __threadfence();  // the last of the row block's warps: every slot is written
  float sum[kTokenTiles][4] = {};
  for (int64_t w = first; w <= last; ++w) {
    const float* part = slot_of(w);
#pragma unroll
    for (int n8 = 0; n8 < kTokenTiles; ++n8) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(part) + n8 * 32 + lane);
      sum[n8][0] += v.x;
      sum[n8][1] += v.y;
      sum[n8][2] += v.z;
      sum[n8][3] += v.w;
    }
  }
  store(sum);
  if (lane == 0) a.counters[block] = 0;
}

// kTokens: 1, 8 or 16 activation rows the ring has room for (M <= kTokens).
// kGroupsPerTile: 2 for group size 32, 1 for multiples of 64. A ring stage
// holds kTilesPerStage consecutive tiles of the warp's run, so the pipeline's
// bookkeeping (wait, warp sync, addresses) is paid once per stage.
template <int kTokens, int kGroupsPerTile, bool kMinForm, int kStages>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, kTokens > 8 ? 4 : 8)
    Int4MmaGemvKernel(const Args a) {
  constexpr int kTokenTiles = (kTokens + 7) / 8;
  constexpr int kStage = StageBytes(kTokens);
  constexpr int kTileSlot = TileSlotBytes(kTokens);
  extern __shared__ __align__(16) uint8_t shared[];
  const int lane = threadIdx.x % 32;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (warp >= a.total_warps) return;
  uint8_t* ring = shared + (threadIdx.x / 32) * kStages * kStage;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates
  const int64_t begin = FirstTile(a, warp), end = FirstTile(a, warp + 1);
  const int count = static_cast<int>(end - begin);
  const int64_t first_block = begin / a.k_tiles;
  const int first_kt = static_cast<int>(begin - first_block * a.k_tiles);

  // Stage u holds tiles begin + kTilesPerStage u + v. Each lane copies its 16
  // bytes of each tile, lanes 0..7 (or 0..3) each tile's params, and the
  // lanes covering x's chunks (token, h, t) for the valid tokens. Everything
  // lane-dependent is computed once; sources advance by counting (a 64-bit
  // division costs ~70 instructions), and copies are predicated, not branched.
  constexpr int kXChunksPerLane = (kTokens * 8 + 31) / 32;
  int x_source[kXChunksPerLane], x_target[kXChunksPerLane];
  bool x_valid[kXChunksPerLane];
#pragma unroll
  for (int r = 0; r < kXChunksPerLane; ++r) {
    const int c = lane + 32 * r, token = c / 8, h = c % 8 / 4, ct = c % 4;
    x_valid[r] = c < kTokens * 8 && token < a.m;
    x_source[r] = x_valid[r] ? token * a.k + 32 * h + 8 * ct : 0;
    x_target[r] = kTileBytes + kParamBytes + ((h * kTokens + token) * 4 + ct) * 16;
  }
  const bool copies_params = lane < 4 * kGroupsPerTile;
  const uint32_t ring_address = SharedAddress(ring);
  const uint8_t* next_weights = a.qweight + begin * kTileBytes + lane * 16;
  // Params follow the tile sequence: 128 bytes per tile for group size 32,
  // 64 bytes per tiles_per_group tiles otherwise (row blocks are contiguous).
  const uint8_t* next_params =
      a.params + (kGroupsPerTile == 2 ? begin * 128 : begin / a.tiles_per_group * 64) +
      (copies_params ? lane * 16 : 0);
  int next = 0, next_kt = first_kt, next_stage = 0;
  int next_in_group = kGroupsPerTile == 2 ? 0 : static_cast<int>(begin % a.tiles_per_group);
  const auto issue = [&] {
#pragma unroll
    for (int v = 0; v < kTilesPerStage; ++v) {
      const bool valid = next < count;
      const uint32_t tile = ring_address + next_stage * kStage + v * kTileSlot;
      CopyAsync16If(tile + lane * 16, next_weights, valid);
      CopyAsync16If(tile + kTileBytes + lane * 16, next_params, valid && copies_params);
      const __nv_bfloat16* x_tile = a.x + next_kt * kTileK;
#pragma unroll
      for (int r = 0; r < kXChunksPerLane; ++r) {
        CopyAsync16CachedIf(tile + x_target[r], x_tile + x_source[r], valid && x_valid[r]);
      }
      ++next;
      next_weights += kTileBytes;
      if constexpr (kGroupsPerTile == 2) {
        next_params += 128;
      } else if (++next_in_group == a.tiles_per_group) {
        next_in_group = 0;
        next_params += 64;
      }
      if (++next_kt == a.k_tiles) next_kt = 0;
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

  // Per token tile: rows g, g, g+8, g+8; tokens 2t, 2t+1, 2t, 2t+1 (+ 8 per tile).
  float acc[kTokenTiles][4] = {};
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue();
  int64_t block = first_block;
  int kt = first_kt, stage_index = 0;
  for (int done = 0; done < count; done += kTilesPerStage) {
    WaitCopies<kStages - 2>();
    __syncwarp();  // the stage is complete for every lane; the previous one is free
    issue();
    const uint8_t* stage = ring + stage_index * kStage;
    stage_index = stage_index == kStages - 1 ? 0 : stage_index + 1;
#pragma unroll
    for (int v = 0; v < kTilesPerStage; ++v) {
      if (done + v >= count) break;
      const uint8_t* tile = stage + v * kTileSlot;
      const uint4 w = *reinterpret_cast<const uint4*>(tile + lane * 16);
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
      uint2 p[kGroupsPerTile];  // (row g, row g + 8) of each group
#pragma unroll
      for (int j = 0; j < kGroupsPerTile; ++j) {
        p[j] = *reinterpret_cast<const uint2*>(tile + kTileBytes + (j * 16 + 2 * g) * 4);
      }
      uint32_t b[kTokenTiles][4][2];  // [token tile][k16 step][register]
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint4 x = make_uint4(0, 0, 0, 0);
          if (has_token[n8]) {
            x = *reinterpret_cast<const uint4*>(tile + kTileBytes + kParamBytes +
                                                ((h * kTokens + g + 8 * n8) * 4 + t) * 16);
          }
          b[n8][2 * h][0] = x.x;
          b[n8][2 * h][1] = x.y;
          b[n8][2 * h + 1][0] = x.z;
          b[n8][2 * h + 1][1] = x.w;
        }
      }

      float dq[kTokenTiles][4] = {}, ds[kTokenTiles][4] = {};  // Σ (128 + q) x and Σ x
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint32_t areg[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          // bf16 bits 0x4300 | q are 128 + q exactly (bf16 has 7 mantissa bits).
          areg[i] = ((words[s] >> (4 * i)) & 0x000F000Fu) | 0x43004300u;
        }
#pragma unroll
        for (int n8 = 0; n8 < kTokenTiles; ++n8) {
          Mma(dq[n8], areg, b[n8][s][0], b[n8][s][1]);
          Mma(ds[n8], ones, b[n8][s][0], b[n8][s][1]);
        }
        if (s % (4 / kGroupsPerTile) == 4 / kGroupsPerTile - 1) {  // end of a group's part
          const int j = kGroupsPerTile == 2 ? s / 2 : 0;
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // row g, then row g + 8
            const uint32_t word = h == 0 ? p[j].x : p[j].y;
            const float scale = __uint_as_float(word << 16);
            const float zero = __uint_as_float(word & 0xFFFF0000u);
            const float c = kMinForm ? 128.0f * scale + zero : scale * (128.0f + zero);
#pragma unroll
            for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
              for (int i = 2 * h; i < 2 * h + 2; i += kAccStep) {
                acc[n8][i] += scale * dq[n8][i] - c * ds[n8][i];
                dq[n8][i] = ds[n8][i] = 0;
              }
            }
          }
        }
      }

      const bool block_ends = kt == a.k_tiles - 1;
      const int64_t this_block = block;
      if (++kt == a.k_tiles) {
        kt = 0;
        ++block;
      }
      if (!block_ends && done + v != count - 1) continue;
      Finish(a, acc, this_block, begin, warp, block_ends, lane);
#pragma unroll
      for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[n8][i] = 0;
      }
    }
  }
  WaitCopies<0>();  // no copy may outlive the warp
}

template <int kTokens, int kGroupsPerTile, bool kMinForm, int kStages>
absl::Status Launch(const Args& base, int multiprocessors, int warps_per_sm, cudaStream_t stream) {
  const auto kernel = Int4MmaGemvKernel<kTokens, kGroupsPerTile, kMinForm, kStages>;
  const int smem = kWarpsPerBlock * kStages * StageBytes(kTokens);
  static const int blocks_per_sm = [&] {
    int blocks = 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kWarpsPerBlock * 32, smem) !=
            cudaSuccess) {
      return 0;
    }
    return blocks;
  }();
  if (blocks_per_sm == 0) {
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::InternalError("Int4MmaGemv: the kernel does not fit on a multiprocessor");
  }
  int per_sm = blocks_per_sm * kWarpsPerBlock;
  if (warps_per_sm > 0) per_sm = std::min(per_sm, warps_per_sm);
  Args a = base;
  a.total_warps = std::max<int64_t>(
      1, std::min<int64_t>(int64_t{multiprocessors} * per_sm, a.total_tiles / kMinTilesPerWarp));
  const int blocks = static_cast<int>((a.total_warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  kernel<<<blocks, kWarpsPerBlock * 32, smem, stream>>>(a);
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

template <int kTokens, int kStages>
absl::Status ForGroups(const Args& a, bool g32, bool min_form, int sms, int warps_per_sm,
                       cudaStream_t stream) {
  if (g32) {
    return min_form ? Launch<kTokens, 2, true, kStages>(a, sms, warps_per_sm, stream)
                    : Launch<kTokens, 2, false, kStages>(a, sms, warps_per_sm, stream);
  }
  return min_form ? Launch<kTokens, 1, true, kStages>(a, sms, warps_per_sm, stream)
                  : Launch<kTokens, 1, false, kStages>(a, sms, warps_per_sm, stream);
}

template <int kStages>
absl::Status ForTokens(const Args& a, bool g32, bool min_form, int sms, int warps_per_sm,
                       cudaStream_t stream) {
  if (a.m == 1) return ForGroups<1, kStages>(a, g32, min_form, sms, warps_per_sm, stream);
  if (a.m <= 8) return ForGroups<8, kStages>(a, g32, min_form, sms, warps_per_sm, stream);
  return ForGroups<16, kStages>(a, g32, min_form, sms, warps_per_sm, stream);
}

}  // namespace

absl::StatusOr<Int4MmaWorkspace> Int4MmaWorkspace::Create(int64_t max_n) {
  int device = 0, sms = 0, max_threads = 0;
  GQ_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  GQ_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  GQ_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&max_threads, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  Int4MmaWorkspace ws;
  ws.multiprocessors_ = sms;
  ws.max_warps_ = int64_t{sms} * (max_threads / 32);
  absl::StatusOr<DeviceBuffer<float>> partials =
      DeviceBuffer<float>::Allocate(ws.max_warps_ * kSlotsPerWarp * 128 * 2);
  if (!partials.ok()) return partials.status();
  absl::StatusOr<DeviceBuffer<int>> counters =
      DeviceBuffer<int>::Allocate(std::max<int64_t>(1, (max_n + kRows - 1) / kRows));
  if (!counters.ok()) return counters.status();
  if (absl::Status s = counters->FillBytes(0); !s.ok()) return s;
  ws.partials_ = *std::move(partials);
  ws.counters_ = *std::move(counters);
  return ws;
}

absl::Status Int4MmaGemv(const Int4MmaWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                         Int4MmaWorkspace& workspace, cudaStream_t stream,
                         const Int4MmaTuning& tuning) {
  if (w.qweight == nullptr || w.params == nullptr || x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("Int4MmaGemv: null pointer");
  }
  if (absl::Status s = CheckInt4MmaShape(w.n, w.k, w.group_size); !s.ok()) return s;
  if (m < 1 || m > kInt4MmaMaxM) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4MmaGemv: M must be 1..%d, but got %d", kInt4MmaMaxM, m));
  }
  if (w.n / kRows > workspace.max_row_blocks()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4MmaGemv: the workspace holds %d row blocks, N=%d needs %d",
                        workspace.max_row_blocks(), w.n, w.n / kRows));
  }
  if (tuning.warps_per_sm < 0) {
    return absl::InvalidArgumentError("Int4MmaGemv: warps_per_sm must not be negative");
  }
  Args a{};
  a.qweight = reinterpret_cast<const uint8_t*>(w.qweight);
  a.params = reinterpret_cast<const uint8_t*>(w.params);
  a.x = x;
  a.y = y;
  a.partials = workspace.partials();
  a.counters = workspace.counters();
  a.m = m;
  a.n = static_cast<int>(w.n);
  a.k = static_cast<int>(w.k);
  a.k_tiles = a.k / kTileK;
  a.groups = a.k / w.group_size;
  a.tiles_per_group = w.group_size / kTileK;  // 0 for group size 32
  a.total_tiles = w.n / kRows * a.k_tiles;
  const bool g32 = w.group_size == 32;
  const int sms = workspace.multiprocessors();
  // Measured on an H100 (bench/int4_gemv_notes.md): 16 warps per
  // multiprocessor beat a full one (32) by 5-15% on the 31B layer shapes
  // (longer runs per warp, fewer split row blocks); the 262144-row LM head
  // prefers the full one.
  const int warps_per_sm = tuning.warps_per_sm != 0 ? tuning.warps_per_sm
                           : w.n < 8192 * kRows     ? 16
                                                    : 0;
  switch (tuning.stages) {
    case 0:
    case 4:
      return ForTokens<4>(a, g32, w.min_form, sms, warps_per_sm, stream);
    case 8:
      return ForTokens<8>(a, g32, w.min_form, sms, warps_per_sm, stream);
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("Int4MmaGemv: stages must be 4 or 8, not %d", tuning.stages));
  }
}

}  // namespace gquant::cuda
