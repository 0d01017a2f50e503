// Elementwise activations of the Gemma 4 GPU forward (spec gemma4.md §2.3,
// §2.4, §2.7), float32 math on bf16 storage:
//   GeluTanhMul  out = gelu_tanh(a) * b: the MLP (a = gate, b = up, the two
//                halves of one fused gate_up GEMV output) and the PLE gate
//                (b = the layer's per-layer-embedding slice);
//   SoftCap      y = tanh(x / cap) * cap, the final logits, into float32.
// gelu_tanh is PyTorch's gelu(approximate="tanh"), as cpu::GeluTanh:
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Unlike HF's bf16 path the
// product is rounded once, not after the gelu too.
// Memory bound: one thread per 8 elements with 16-byte accesses when widths,
// strides and pointers allow, one per element otherwise; launched with
// programmatic dependent launch (launch.cuh) on `stream`. An empty problem
// does nothing. InvalidArgument names a null or misaligned pointer or a bad
// shape; Internal is a CUDA error.
#ifndef GQUANT_CUDA_ACTIVATIONS_CUH_
#define GQUANT_CUDA_ACTIVATIONS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace gquant::cuda {

// out[r, c] = bf16(gelu_tanh(a[r * a_stride + c]) * b[r * b_stride + c]) for
// r < rows, c < width; out is dense [rows, width]. For the fused gate_up
// output g [rows, 2 * width]: a = g, b = g + width, both strides 2 * width.
// Strides must be >= width; out must not overlap a or b.
absl::Status GeluTanhMul(const __nv_bfloat16* a, int64_t a_stride, const __nv_bfloat16* b,
                         int64_t b_stride, int64_t rows, int64_t width, __nv_bfloat16* out,
                         cudaStream_t stream);

// y[i] = tanh(x[i] / cap) * cap in float32, i < count; cap finite and > 0.
absl::Status SoftCap(const __nv_bfloat16* x, int64_t count, float cap, float* y,
                     cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ACTIVATIONS_CUH_
