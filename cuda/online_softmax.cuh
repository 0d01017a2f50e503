// The online softmax of the flash-attention kernels (prefill_attention.cu,
// vision_flash_attention.cu), on scores held as mma.sync m16n8 accumulator
// fragments: a thread holds columns 2t, 2t + 1 of rows g (registers 0, 1)
// and g + 8 (registers 2, 3) of each 8-wide tile, and the four threads of a
// quad share a row. fp32 with a real running maximum per row; exponentials
// are exp2 of log2(e)-scaled scores.
#ifndef GQUANT_CUDA_ONLINE_SOFTMAX_CUH_
#define GQUANT_CUDA_ONLINE_SOFTMAX_CUH_

#include <cmath>

namespace gquant::cuda {

inline constexpr float kLog2e = 1.4426950408889634f;

// One key tile: the rows' maxima grow to include the tile's scores `s`
// (masked ones -inf), the accumulator `o` and the row sums are rescaled by
// exp(old max - new max), and `s` becomes exp(s - new max). Rows whose keys
// so far are all masked keep max -inf and subtract 0 instead, so exp gives 0
// rather than NaN. row_sum holds this thread's columns only.
template <int kScoreTiles, int kOutTiles>
__device__ __forceinline__ void OnlineSoftmaxStep(float (&s)[kScoreTiles][4],
                                                  float (&o)[kOutTiles][4], float (&row_max)[2],
                                                  float (&row_sum)[2]) {
  float rescale[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float tile_max = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kScoreTiles; ++nt) {
      tile_max = fmaxf(tile_max, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 2));
    const float new_max = fmaxf(row_max[h], tile_max);
    const float offset = new_max == -INFINITY ? 0.0f : new_max * kLog2e;
    rescale[h] = exp2f(row_max[h] * kLog2e - offset);
    row_max[h] = new_max;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < kScoreTiles; ++nt) {
#pragma unroll
      for (int i = 2 * h; i < 2 * h + 2; ++i) {
        s[nt][i] = exp2f(fmaf(s[nt][i], kLog2e, -offset));
        sum += s[nt][i];
      }
    }
    row_sum[h] = row_sum[h] * rescale[h] + sum;
  }
#pragma unroll
  for (int nt = 0; nt < kOutTiles; ++nt) {
    o[nt][0] *= rescale[0];
    o[nt][1] *= rescale[0];
    o[nt][2] *= rescale[1];
    o[nt][3] *= rescale[1];
  }
}

// After the last tile: 1 / (the row's sum over the quad), 0 for a row that
// saw no key, for rows g and g + 8.
__device__ __forceinline__ void RowInverseSums(const float (&row_sum)[2], float (&inverse)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = row_sum[h];
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
    inverse[h] = sum > 0.0f ? 1.0f / sum : 0.0f;
  }
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ONLINE_SOFTMAX_CUH_
