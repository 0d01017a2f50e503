// The grid of the decode GEMVs (int4_mma_gemv.cu, int8_gemv.cu): one wave of
// thread blocks, each owning whole "units" (row blocks) whose (unit, K tile)
// steps its warps split into equal contiguous runs. One wave, because every
// later wave pays the rings' fill and drain again; whole units per block, so
// a unit split between warps is finished in the block (no global atomics).
// Host code.
#ifndef GQUANT_CUDA_ONE_WAVE_GRID_CUH_
#define GQUANT_CUDA_ONE_WAVE_GRID_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "launch.cuh"

namespace gquant::cuda {

// Shared memory the runtime keeps per thread block on sm_90 (1 KB), with room
// to spare.
inline constexpr int kReservedSharedBytes = 2048;

// The most dynamic shared memory a block of kKernel may ask for (the
// device's opt-in limit less the kernel's static shared memory), raised to
// that once per kernel.
template <auto kKernel>
absl::StatusOr<int> RaiseDynamicSharedLimit(const DeviceLimits& device) {
  static int max_dynamic = 0;
  static const cudaError_t raised = [&] {
    cudaFuncAttributes attributes{};
    const cudaError_t e = cudaFuncGetAttributes(&attributes, kKernel);
    if (e != cudaSuccess) return e;
    max_dynamic = device.shared_per_block - static_cast<int>(attributes.sharedSizeBytes);
    return cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_dynamic);
  }();
  GQ_RETURN_IF_CUDA_ERROR(raised);
  return max_dynamic;
}

struct OneWaveGrid {
  int blocks = 0;
  int warps = 0;        // per block
  int block_units = 0;  // units per block (the last block may have fewer)
  int shared_bytes = 0;
};

// What a decode GEMV kernel needs of the grid.
struct OneWaveProblem {
  int64_t units = 0;       // row blocks of one weight
  int slots = 1;           // weights (selected experts) in the grid's y
  int steps_per_unit = 0;  // K tiles
  int warp_bytes = 0;      // each warp's ring
  int x_bytes = 0;         // shared bytes before the rings (M = 1's activation row)
  int k = 0;               // for the error message
};

// Blocks of up to kMaxWarps warps, as many resident per multiprocessor as
// `warps_per_sm` allows, each owning enough whole units that the grid is a
// single wave. Each block asks for enough shared memory that no
// multiprocessor can hold one block more than that: launched early
// (programmatic launch) behind another GEMV, blocks otherwise go wherever
// there is room, and two on one multiprocessor beside one with none made the
// 31B's GEMVs up to 2x slower end to end (bench/int4_gemv_notes.md).
template <int kMaxWarps>
absl::StatusOr<OneWaveGrid> PlanOneWaveGrid(const void* kernel,
                                            OccupancyTable<kMaxWarps>& occupancy,
                                            const DeviceLimits& device, int max_dynamic,
                                            int warps_per_sm, const OneWaveProblem& p) {
  int warps = std::min(kMaxWarps, warps_per_sm), blocks_per_sm = 0;
  for (; warps > 0; --warps) {  // the largest block that fits
    if (warps * p.warp_bytes + p.x_bytes > max_dynamic) continue;
    absl::StatusOr<int> blocks = occupancy.BlocksPerMultiprocessor(kernel, warps, p.warp_bytes);
    if (!blocks.ok()) return blocks.status();
    // The occupancy table counts only the rings: x is checked here.
    blocks_per_sm =
        std::min(*blocks, device.shared_per_multiprocessor /
                              (warps * p.warp_bytes + p.x_bytes + kReservedSharedBytes));
    if (blocks_per_sm > 0) break;
  }
  if (blocks_per_sm == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "decode GEMV: K=%d leaves no room on a multiprocessor for the activation row", p.k));
  }
  blocks_per_sm = std::max(1, std::min(blocks_per_sm, warps_per_sm / warps));
  const int64_t resident = int64_t{device.multiprocessors} * blocks_per_sm;
  OneWaveGrid grid;
  grid.block_units = static_cast<int>((p.units * p.slots + resident - 1) / resident);
  grid.blocks = static_cast<int>((p.units + grid.block_units - 1) / grid.block_units);
  // Every full block's runs hold a step.
  grid.warps =
      static_cast<int>(std::min<int64_t>(warps, int64_t{grid.block_units} * p.steps_per_unit));
  const int needed = grid.warps * p.warp_bytes + p.x_bytes;
  const int one_too_many = device.shared_per_multiprocessor / (blocks_per_sm + 1) + 1;
  grid.shared_bytes = std::max(needed, std::min(one_too_many, max_dynamic));
  return grid;
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ONE_WAVE_GRID_CUH_
