#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_primitives.cuh"
#include "int4_dequantize.cuh"
#include "int4_mma_dequantize.cuh"
#include "int4_mma_layout.h"

namespace gquant::cuda {
namespace {

// One block of 1024 threads per multiprocessor: at 64 registers a thread it
// takes the whole register file, so a grid of d blocks occupies exactly d
// multiprocessors, and a GEMM running beside it keeps the others (see
// prefill_gemm.cuh). Half the threads an SM can hold is enough in flight.
constexpr int kWarpsPerBlock = 32;
constexpr int kThreads = kWarpsPerBlock * 32;
// Tiles a warp loads before it stores any: 4 x 16 bytes in flight per lane,
// 64 KiB per multiprocessor, several times what covers DRAM latency at the
// copy ceiling (~3 TB/s x ~1 us over 132 SMs).
constexpr int kTilesPerWarp = 4;

struct Args {
  const uint4* tiles;   // the chunk's first tile: [row blocks][K/64][32 lanes]
  const uint2* params;  // its first row block's params: [row blocks][G][8] (row g, row g + 8)
  __nv_bfloat16* out;   // [rows, K] row-major
  int64_t tiles_total;  // tiles in the chunk: rows / 16 * K / 64
  int64_t k;            // columns
  int64_t k_tiles;      // K / 64
  int64_t groups;       // K / group size
  int tiles_per_group;  // group size / 64, for group sizes of 64 and more
};

// One warp per tile, kTilesPerWarp consecutive tiles per step of a
// grid-stride loop. Lane l (g = l / 4, t = l % 4) writes rows g and g + 8,
// columns 8t..8t+7 (half 0) and 32+8t..32+8t+7 (half 1) of each tile.
// kGroupsPerTile: 2 for group size 32 (one group per half), else 1.
template <bool kMinForm, int kGroupsPerTile>
__global__ void __launch_bounds__(kThreads, 1) DequantizeInt4MmaKernel(const Args a) {
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock * kTilesPerWarp;
  for (int64_t first = warp * kTilesPerWarp; first < a.tiles_total; first += stride) {
    // Position (row block, k tile) of each tile: one division per step.
    // Both fit an int (N and K are at most 2^30).
    int row_blocks[kTilesPerWarp], k_tiles[kTilesPerWarp];
    {
      int row_block = static_cast<int>(first / a.k_tiles);
      int k_tile = static_cast<int>(first - int64_t{row_block} * a.k_tiles);
#pragma unroll
      for (int i = 0; i < kTilesPerWarp; ++i) {
        row_blocks[i] = row_block;
        k_tiles[i] = k_tile;
        if (++k_tile == a.k_tiles) {
          k_tile = 0;
          ++row_block;
        }
      }
    }
    uint4 codes[kTilesPerWarp];
    uint2 params[kTilesPerWarp][kGroupsPerTile];
    // Every load before any store, so kTilesPerWarp tiles are in flight.
    // Codes and params are read once: stream them past the caches (.cs),
    // which keeps L2 for the bf16 rows the GEMM reads next.
#pragma unroll
    for (int i = 0; i < kTilesPerWarp; ++i) {
      if (first + i < a.tiles_total) {  // warp-uniform
        codes[i] = __ldcs(a.tiles + (first + i) * 32 + lane);
#pragma unroll
        for (int h = 0; h < kGroupsPerTile; ++h) {
          const int group =
              kGroupsPerTile == 2 ? 2 * k_tiles[i] + h : k_tiles[i] / a.tiles_per_group;
          params[i][h] = __ldcs(a.params + (row_blocks[i] * a.groups + group) * 8 + g);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kTilesPerWarp; ++i) {
      if (first + i < a.tiles_total) {
        __nv_bfloat16* row_g =
            a.out + (row_blocks[i] * kInt4MmaRows + g) * a.k + k_tiles[i] * kInt4MmaTileK + 8 * t;
        __nv_bfloat16* row_g8 = row_g + 8 * a.k;
        const uint2 p0 = params[i][0], p1 = params[i][kGroupsPerTile - 1];
        *reinterpret_cast<uint4*>(row_g) = DequantizeRun<kMinForm>(codes[i].x, codes[i].y, 0, p0.x);
        *reinterpret_cast<uint4*>(row_g8) =
            DequantizeRun<kMinForm>(codes[i].x, codes[i].y, 1, p0.y);
        *reinterpret_cast<uint4*>(row_g + 32) =
            DequantizeRun<kMinForm>(codes[i].z, codes[i].w, 0, p1.x);
        *reinterpret_cast<uint4*>(row_g8 + 32) =
            DequantizeRun<kMinForm>(codes[i].z, codes[i].w, 1, p1.y);
      }
    }
  }
}

}  // namespace

absl::Status DequantizeInt4Mma(const Int4MmaWeight& weight, int64_t row_begin, int64_t rows,
                               __nv_bfloat16* out, cudaStream_t stream, int multiprocessors) {
  if (absl::Status s = CheckInt4MmaShape(weight.n, weight.k, weight.group_size); !s.ok()) {
    return s;
  }
  if (weight.qweight == nullptr || weight.params == nullptr || out == nullptr ||
      !Aligned(weight.qweight, 16) || !Aligned(weight.params, 8) || !Aligned(out, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "DequantizeInt4Mma: expected non-null qweight and out 16-byte aligned and params 8-byte "
        "aligned, but got qweight %p, params %p, out %p",
        weight.qweight, weight.params, out));
  }
  if (row_begin < 0 || rows < 0 || row_begin % kInt4MmaRows != 0 || rows % kInt4MmaRows != 0 ||
      row_begin + rows > weight.n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DequantizeInt4Mma: expected rows [%d, %d) in multiples of 16 within N=%d",
                        row_begin, row_begin + rows, weight.n));
  }
  if (multiprocessors < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "DequantizeInt4Mma: multiprocessors must be >= 0, but got %d", multiprocessors));
  }
  if (rows == 0) return absl::OkStatus();

  const int64_t k_tiles = weight.k / kInt4MmaTileK, groups = weight.k / weight.group_size;
  const int64_t first_row_block = row_begin / kInt4MmaRows;
  const Args args{weight.qweight + first_row_block * k_tiles * 32,
                  reinterpret_cast<const uint2*>(weight.params) + first_row_block * groups * 8,
                  out,
                  rows / kInt4MmaRows * k_tiles,
                  weight.k,
                  k_tiles,
                  groups,
                  std::max(weight.group_size / kInt4MmaTileK, 1)};

  absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
  if (!device.ok()) return device.status();
  constexpr int64_t kTilesPerBlock = kWarpsPerBlock * kTilesPerWarp;
  const int64_t needed = (args.tiles_total + kTilesPerBlock - 1) / kTilesPerBlock;
  const int blocks = static_cast<int>(
      std::min(needed, int64_t{multiprocessors > 0 ? multiprocessors : device->multiprocessors}));

  const bool two_groups = weight.group_size == 32;
  void (*kernel)(Args) =
      weight.min_form
          ? (two_groups ? DequantizeInt4MmaKernel<true, 2> : DequantizeInt4MmaKernel<true, 1>)
          : (two_groups ? DequantizeInt4MmaKernel<false, 2> : DequantizeInt4MmaKernel<false, 1>);
  kernel<<<blocks, kThreads, 0, stream>>>(args);
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gquant::cuda
