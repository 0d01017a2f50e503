// Device side of the decode GEMVs' one-wave grid (one_wave_grid.cuh): each
// thread block's (unit, K tile) steps cut into equal contiguous runs, one per
// warp, and the activation row copied to shared memory at M = 1. Device code
// only; include from .cu files.
#ifndef GQUANT_CUDA_SPLIT_RUNS_CUH_
#define GQUANT_CUDA_SPLIT_RUNS_CUH_

#include <cuda_bf16.h>

#include <cstdint>

namespace gquant::cuda {

// Within a thread block of `warps` warps and `steps` steps, warp w's run is
// [RunBegin(w), RunBegin(w + 1)).
__device__ __forceinline__ int RunBegin(int steps, int warps, int warp) {
  return steps * warp / warps;
}

// The last warp whose run holds a step of the unit whose steps are
// [unit_first, unit_first + steps_per_unit).
__device__ __forceinline__ int LastWarpOfUnit(int unit_first, int steps_per_unit, int steps,
                                              int warps) {
  return ((unit_first + steps_per_unit) * warps - 1) / steps;
}

// x[0, k) -> shared by every thread of the block, four Vec loads in flight
// per thread (k a multiple of the bf16 per Vec, x aligned to a Vec), then a
// barrier.
template <typename Vec>
__device__ __forceinline__ void CopyRowToShared(const __nv_bfloat16* x, int k,
                                                __nv_bfloat16* shared_x) {
  constexpr int kBatch = 4, kWidth = sizeof(Vec) / 2;  // bf16 per load
  const int step = blockDim.x * kWidth;
  for (int base = threadIdx.x * kWidth; base < k; base += kBatch * step) {
    Vec v[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (base + b * step < k) v[b] = *reinterpret_cast<const Vec*>(x + base + b * step);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (base + b * step < k) *reinterpret_cast<Vec*>(shared_x + base + b * step) = v[b];
    }
  }
  __syncthreads();
}

// After the main loop, with every warp's ring idle: finishes the units split
// between runs. Each warp puts its run's first unit's part (first_partial,
// if first_unit >= 0; zeros for an empty run, where a later run's part would
// be: testing for empty runs in the summing loop instead made the int4
// kernel up to 37% slower, bench/int4_gemv_notes.md) in slot 0 of its ring and its last unit's
// (last_partial, if last_unit
// >= 0) in slot 1; after one barrier the warp whose run began last_unit adds
// every run's part in warp order and calls store(last_unit, sum), so results
// do not depend on timing and nothing crosses thread blocks. A part is
// kQuads float4 per lane; all threads of the block must call this.
template <int kQuads, typename Store>
__device__ __forceinline__ void FinishSplitUnits(uint8_t* rings, int ring_bytes, int count,
                                                 int first_unit,
                                                 const float (&first_partial)[kQuads][4],
                                                 int last_unit,
                                                 const float (&last_partial)[kQuads][4], int steps,
                                                 int steps_per_unit, Store store) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const auto slot = [&](int w, int which) {
    return reinterpret_cast<float4*>(rings + w * ring_bytes) + which * kQuads * 32;
  };
  const auto put = [&](int which, const float(&sum)[kQuads][4]) {
#pragma unroll
    for (int q = 0; q < kQuads; ++q) {
      slot(warp, which)[q * 32 + lane] = make_float4(sum[q][0], sum[q][1], sum[q][2], sum[q][3]);
    }
  };
  if (first_unit >= 0 || count == 0) put(0, first_partial);
  if (last_unit >= 0) put(1, last_partial);
  __syncthreads();
  if (last_unit < 0) return;
  const int last_warp = LastWarpOfUnit(last_unit * steps_per_unit, steps_per_unit, steps, warps);
  float sum[kQuads][4] = {};
  for (int w = warp; w <= last_warp; ++w) {
    const float4* part = slot(w, w == warp ? 1 : 0);
#pragma unroll
    for (int q = 0; q < kQuads; ++q) {
      const float4 v = part[q * 32 + lane];
      sum[q][0] += v.x;
      sum[q][1] += v.y;
      sum[q][2] += v.z;
      sum[q][3] += v.w;
    }
  }
  store(last_unit, sum);
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_SPLIT_RUNS_CUH_
