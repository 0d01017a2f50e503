// Int4 weight-only products for decode on the tensor cores: y[M, N] =
// x[M, K] · W[N, K]ᵀ for M = 1..16 with bf16 activations and output and fp32
// accumulation, using mma.m16n8k16 with the weights as the 16-row A operand
// and the (zero-padded) activations as one or two 8-column B operands.
//
// Why this form: on CUDA cores a decode GEMV spends ~4 instructions per
// weight (unpack, convert, FMA), which caps it near 60% of HBM bandwidth on
// an H100. Here the codes go to the tensor cores as exact bf16 values 128 + q
// (one shift and one LOP3 per two weights, no conversion), and each group's
// scale and zero are applied to its partial sums:
//   Σ_k∈g w_k x_k = s · (Σ (128 + q_k) x_k − (128 + z) Σ x_k),
// with Σ x_k from the same mma against an A of ones. Weights are never
// rounded, so the only rounding is fp32 accumulation and the bf16 output.
//
// Layout "cuda_int4_mma16" (PackInt4Mma):
//   qweight  [N/16][K/64][32 lanes][4 words]: tile (row block, 64 columns)
//            is 512 contiguous bytes; lane l's 16-byte word w holds, for k16
//            step w, its A fragment: nibble i (bits 4i) and i + 4 (bits 16 + 4i)
//            are the two bf16 halves of register a_i (PTX m16n8k16 layout:
//            a0 rows g, a1 g + 8, a2 g cols + 8, a3 g + 8 cols + 8; g = l / 4,
//            columns 2 (l % 4) and + 1)
//   params   [N/16][K/group][16] bf16x2 (scale, zero), or (scale, min) in the
//            min form: w = q · scale − min
// Requires N % 16 == 0, K % 64 == 0 and a group size that is a multiple of 16
// dividing K.
#ifndef GQUANT_CUDA_INT4_MMA_GEMV_CUH_
#define GQUANT_CUDA_INT4_MMA_GEMV_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace gquant::cuda {

inline constexpr int kInt4MmaMaxM = 16;

struct Int4MmaWeight {
  const uint4* qweight = nullptr;          // tiled, see above
  const __nv_bfloat162* params = nullptr;  // [N/16][G][16]
  int64_t n = 0;
  int64_t k = 0;
  int group_size = 32;
  bool min_form = false;
};

// y = x · Wᵀ for m in 1..kInt4MmaMaxM rows of x ([m, K] bf16) into y ([m, N]
// bf16). Tuning knobs for benchmarks (0: the default): `warps_per_row_block`
// splits K over that many warps (4, 8 or 16); `tiles_in_flight` is how many
// 512-byte tiles each warp loads before using them (2 or 4).
// InvalidArgument for a bad shape, pointer or knob; Internal for a launch error.
absl::Status Int4MmaGemv(const Int4MmaWeight& weight, const __nv_bfloat16* x, int m,
                         __nv_bfloat16* y, cudaStream_t stream, int warps_per_row_block = 0,
                         int tiles_in_flight = 0);

// Host packing from gquant's Int4 form: qdata [N, K/2] (element 2j low
// nibble), scale and zero (or min) [G, N] bf16 bits. Returns the tiled
// qweight (N*K/2 bytes) and params (N*G words).
struct PackedInt4Mma {
  std::vector<uint8_t> qweight;
  std::vector<uint32_t> params;
};
PackedInt4Mma PackInt4Mma(std::span<const uint8_t> qdata, std::span<const uint16_t> scale_gn,
                          std::span<const uint16_t> zero_gn, int64_t n, int64_t k, int group_size);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_MMA_GEMV_CUH_
