// Int4 codes of the cuda_int4_mma16 layout (int4_mma_layout.h) to bf16, as
// the int4 dequantizer (int4_dequantize.cuh) computes them (the fused
// prefill GEMM, int4_wgmma_gemm.cuh, works in bf16x2 arithmetic instead):
// w = bf16((q - zero) * scale), or bf16(q * scale - min) in the min form,
// each float32 operation rounded on its own (no fused multiply-add), so a
// host computation reproduces it bit for bit. Device code only.
#ifndef GQUANT_CUDA_INT4_MMA_DEQUANTIZE_CUH_
#define GQUANT_CUDA_INT4_MMA_DEQUANTIZE_CUH_

#include <cstdint>

#include "device_primitives.cuh"  // PackBf16x2

namespace gquant::cuda {

// The exact float of the nibble at `shift`: 2^23 + q carries q in its low
// mantissa bits, and the subtraction is exact.
__device__ __forceinline__ float Nibble(uint32_t word, int shift) {
  return __uint_as_float(0x4B000000u | ((word >> shift) & 0xFu)) - 8388608.0f;
}

// Rounded operation by operation (the _rn intrinsics are never contracted
// into an FMA), as the host reference computes it.
template <bool kMinForm>
__device__ __forceinline__ float Dequantize(float q, float scale, float zero) {
  return kMinForm ? __fsub_rn(__fmul_rn(q, scale), zero) : __fmul_rn(__fsub_rn(q, zero), scale);
}

// Eight consecutive columns of one row from the lane's two words of a tile
// half (steps 2h and 2h + 1, four columns each). Column e of a word sits at
// nibble shift 4 (row_half + 2 (e / 2)) + 16 (e % 2) (Int4MmaSlotOf);
// `param` is the row's bf16x2 (scale low, zero or min high).
template <bool kMinForm>
__device__ __forceinline__ uint4 DequantizeRun(uint32_t word0, uint32_t word1, int row_half,
                                               uint32_t param) {
  const float scale = __uint_as_float(param << 16);
  const float zero = __uint_as_float(param & 0xFFFF0000u);
  const int base = 4 * row_half;
  auto column = [&](uint32_t word, int e) {
    return Dequantize<kMinForm>(Nibble(word, base + 8 * (e / 2) + 16 * (e % 2)), scale, zero);
  };
  return make_uint4(PackBf16x2(column(word0, 0), column(word0, 1)),
                    PackBf16x2(column(word0, 2), column(word0, 3)),
                    PackBf16x2(column(word1, 0), column(word1, 1)),
                    PackBf16x2(column(word1, 2), column(word1, 3)));
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_MMA_DEQUANTIZE_CUH_
