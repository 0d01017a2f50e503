// Int4 weights in the cuda_int4_mma16 layout (int4_mma_layout.h) back to
// bf16 rows, for the prefill GEMM (prefill_gemm.cuh), which hands the rows to
// cuBLAS chunk by chunk.
//
// Each element becomes w = bf16((q - zero) * scale), or bf16(q * scale - min)
// in the min form, with each float32 operation rounded on its own (no fused
// multiply-add), so a host computation reproduces it bit for bit.
//
// Memory bound (reads 0.625 bytes per weight at group 32, writes 2): one warp
// per 512-byte tile, one 16-byte load per lane. No shared memory is needed:
// by the layout, lane (g = l / 4, t = l % 4) holds rows g and g + 8, columns
// 8t..8t+7 and 32+8t..32+8t+7 of its tile, so it writes four whole 16-byte
// runs of the output, and the 4 lanes of a quad fill 64 contiguous bytes.
#ifndef GQUANT_CUDA_INT4_DEQUANTIZE_CUH_
#define GQUANT_CUDA_INT4_DEQUANTIZE_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "int4_mma_gemv.cuh"  // Int4MmaWeight

namespace gquant::cuda {

// Rows [row_begin, row_begin + rows) of `weight` into `out`, bf16 [rows, K]
// row-major, on `stream`. row_begin and rows are multiples of 16 (rows = 0
// does nothing). The kernel runs on at most `multiprocessors` SMs (0: all):
// its blocks fill an SM each, so a GEMM can keep the others. Pointers:
// qweight and out 16-byte aligned, params 8-byte aligned. InvalidArgument
// for a bad shape, range, pointer or count; Internal for a CUDA error.
absl::Status DequantizeInt4Mma(const Int4MmaWeight& weight, int64_t row_begin, int64_t rows,
                               __nv_bfloat16* out, cudaStream_t stream, int multiprocessors = 0);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_DEQUANTIZE_CUH_
