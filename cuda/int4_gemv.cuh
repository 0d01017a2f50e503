// Int4 weight-only matrix-vector products for decode (M = 1..8 activation
// rows): y[M, N] = x[M, K] · W[N, K]ᵀ with bf16 activations and output, fp32
// accumulation, on CUDA cores.
//
// Weight layout ("cuda_int4_rowmajor", packed by PackInt4ForGemv):
//   qweight  u8 [N, K/2]        gquant's nibble order (element 2j low, 2j+1
//                               high), so each 16-byte load is 32 consecutive
//                               weights of one row; rows are 16-byte aligned
//                               (K % 32 == 0)
//   params   bf16x2 [N, G]      per group (scale, zero): w = (q - zero) * scale;
//                               or (scale, min) for the min form: w = q*scale - min
// A warp owns `rows_per_warp` rows, its lanes stride over 32-element chunks
// of K (16-byte coalesced loads); each group's dot product is formed as
// scale * (Σ q x - zero Σ x), so x's group sums are shared by the warp's rows.
#ifndef GQUANT_CUDA_INT4_GEMV_CUH_
#define GQUANT_CUDA_INT4_GEMV_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant::cuda {

inline constexpr int kInt4GemvMaxM = 8;

// Device pointers and shape of one packed int4 weight.
struct Int4GemvWeight {
  const uint8_t* qweight = nullptr;        // [N, K/2]
  const __nv_bfloat162* params = nullptr;  // [N, K/group_size]
  int64_t n = 0;
  int64_t k = 0;
  int group_size = 32;    // a multiple of 32 dividing K
  bool min_form = false;  // params hold (scale, min) instead of (scale, zero)
};

// y = x · Wᵀ for m in 1..kInt4GemvMaxM rows of x ([m, K] row-major bf16) into
// y ([m, N] row-major bf16). `rows_per_warp` (1, 2 or 4; 0 picks by M) is for
// benchmarks. Returns InvalidArgument for a bad shape, null pointers, K not a
// multiple of 32 or of the group size, or m out of range; Internal for a
// launch error.
absl::Status Int4Gemv(const Int4GemvWeight& weight, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                      cudaStream_t stream, int rows_per_warp = 0);

// Host side of the layout: params [N, G] interleaved from gquant's Int4
// scale/zero ([G, N] bf16 bits, as stored in the checkpoint).
std::vector<uint32_t> PackInt4GemvParams(std::span<const uint16_t> scale_gn,
                                         std::span<const uint16_t> zero_gn, int64_t n,
                                         int64_t groups);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_GEMV_CUH_
