// Int8 weights in the "cuda_int8_rows" layout (int8_layout.h) back to bf16
// rows, for the prefill GEMM (prefill_gemm.cuh), which hands the rows to
// cuBLAS chunk by chunk.
//
// Each element becomes w = bf16((c - zero) * scale), or bf16(c * scale - min)
// in the min form, with each float32 operation rounded on its own (no fused
// multiply-add) and round-to-nearest-even to bf16, so a host computation
// reproduces it bit for bit.
//
// Memory bound (reads 1.25 bytes per weight at group 32, writes 2): each
// thread loads four 16-byte runs of codes (16 weights each) before it
// converts and stores any, 64 KB in flight per SM at the default grid.
#ifndef GQUANT_CUDA_INT8_DEQUANTIZE_CUH_
#define GQUANT_CUDA_INT8_DEQUANTIZE_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "int8_gemv.cuh"  // Int8RowsWeight

namespace gquant::cuda {

// Rows [row_begin, row_begin + rows) of `weight` into `out`, bf16 [rows, K]
// row-major (16-byte aligned), on `stream`; rows = 0 does nothing.
// `max_blocks` caps the grid (a knob for running beside a GEMM); 0 = 4
// blocks of 256 threads per multiprocessor. InvalidArgument for a bad shape,
// range, pointer or knob; Internal for a CUDA error.
absl::Status DequantizeInt8Rows(const Int8RowsWeight& weight, int64_t row_begin, int64_t rows,
                                __nv_bfloat16* out, cudaStream_t stream, int max_blocks = 0);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT8_DEQUANTIZE_CUH_
