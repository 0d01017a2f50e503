// Int4 weight-only GEMM for prefill (large M) that dequantizes in its main
// loop: y[M, N] = x[M, K] · Wᵀ with W in the cuda_int4_mma16 layout
// (int4_mma_layout.h), bf16 activations and output, fp32 accumulation, on
// Hopper's wgmma (sm_90a).
//
// Why: the other prefill path (prefill_gemm.cuh) writes the whole weight as
// bf16 to a scratch and hands it to cuBLAS, which costs a memory-bound pass
// over 2.6 bytes per weight (~12% of a 31B prompt) and the scratch itself.
// Here the weight goes from DRAM to shared memory as int4 and becomes bf16
// only on chip, by the dequantizer's formula (int4_mma_dequantize.cuh), so
// both paths multiply the same bf16 weights.
//
// A thread block computes 256 tokens x 128 weight rows of y, K in steps of
// 64 (one packed tile column), with two warp groups: each copies its share
// of x's 256 x 64 tile and of the packed tiles (cp.async, a 4-deep ring),
// dequantizes its 64 rows of a step ahead into a 128-byte-swizzled bf16
// tile (a 4-deep ring) while the tensor cores run the two steps before it
// (m64n256k16, weights as A, x as B, both from shared memory), and block
// barriers hand the slots over. The grid has one block per output tile,
// token tiles fastest, so blocks that share a weight tile run together.
//
// Status (bench/RESULTS.md, H100): 0.55-0.66x cuBLAS bf16 at M = 2048, below
// the dequantize + cuBLAS path (0.75-0.93x), so no caller uses it yet; it is
// the base for a faster fused kernel (bench/RESULTS.md lists the next steps).
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

// y = x · Wᵀ for m >= 1 rows of x ([m, K] bf16, 16-byte aligned) into y
// ([m, N] bf16, 16-byte aligned), queued on `stream`. InvalidArgument for a
// bad shape or pointer; FailedPrecondition where unavailable (see above);
// Internal for a CUDA error.
absl::Status Int4WgmmaGemm(const Int4MmaWeight& weight, const __nv_bfloat16* x, int64_t m,
                           __nv_bfloat16* y, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_WGMMA_GEMM_CUH_
