// Int4 weight-only GEMM for prefill (large M) that dequantizes in its main
// loop: y[M, N] = x[M, K] · Wᵀ with W in the cuda_int4_mma16 layout
// (int4_mma_layout.h), bf16 activations and output, fp32 accumulation, on
// Hopper's wgmma (sm_90a).
//
// Why: the other prefill path (prefill_gemm.cuh) writes the whole weight as
// bf16 to a scratch and hands it to cuBLAS, which costs a memory-bound pass
// over 2.6 bytes per weight (~12% of a 31B prompt) and the scratch itself.
// Here the weight goes from DRAM to shared memory as int4 and becomes bf16
// only on chip: w = bf16(q * scale + bf16(-zero * scale)) (min form:
// bf16(q * scale - min)), two weights per bf16x2 instruction, within a bf16
// unit of the dequantizer's float formula (int4_mma_dequantize.cuh).
//
// A thread block computes 256 tokens x 128 weight rows of y, K in steps of
// 64 (one packed tile column). One warp issues the copies: x's 256 x 64
// tile through a tensor map (the copy engine writes it 128-byte swizzled, as
// wgmma reads it) and the packed tiles and params as plain bulk copies, into
// a 5-deep ring of stages with transaction barriers. Two warp groups
// multiply: each warp dequantizes its 16 rows of a step into its group's
// 128-byte-swizzled bf16 weight tile while the tensor cores run the step
// before, the group's warps meet at a barrier, and it issues m64n256k16
// wgmmas with both operands in shared memory.
// The grid has one block per output tile, token tiles fastest, so blocks
// that share a weight tile run together.
//
// Status (bench/RESULTS.md, H100): 0.71-0.77x cuBLAS bf16 at M = 2048, below
// the dequantize + cuBLAS path there (0.85-0.91x), but faster than it up to
// 512 tokens where the tiles fill the GPU (no dequantization pass to
// amortize): DeviceLinear takes it there.
#ifndef GQUANT_CUDA_INT4_WGMMA_GEMM_CUH_
#define GQUANT_CUDA_INT4_WGMMA_GEMM_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "int4_mma_gemv.cuh"  // Int4MmaWeight

namespace gquant::cuda {

// Whether Int4WgmmaGemm can run on the current device: the library was built
// for sm_90a and the device is compute capability 9.0. Host only.
bool Int4WgmmaGemmAvailable();

// Thread blocks (output tiles of 256 tokens x 128 weight rows) that
// Int4WgmmaGemm launches for an [n, k] weight and m tokens.
int64_t Int4WgmmaGemmTiles(int64_t n, int64_t m);

// y = x · Wᵀ for m >= 1 rows of x ([m, K] bf16, 16-byte aligned) into y
// ([m, N] bf16, 16-byte aligned), queued on `stream`. InvalidArgument for a
// bad shape or pointer; FailedPrecondition where unavailable (see above);
// Internal for a CUDA error.
absl::Status Int4WgmmaGemm(const Int4MmaWeight& weight, const __nv_bfloat16* x, int64_t m,
                           __nv_bfloat16* y, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_WGMMA_GEMM_CUH_
