// The weight quantizers of gquant/quantize.h (min-max and HQQ) computed on
// the current CUDA device: upload one matrix, quantize it there, download the
// codes, scale and zero_point. gquant-quantize --device=cuda plugs this into
// QuantizeCheckpoint (QuantizeJobOptions::quantizer).
//
// Results against gquant::Quantize on the CPU:
//   - min-max: bit-identical codes, scale and zero_point;
//   - HQQ scale-only (symmetric): bit-identical (the same float32/float64
//     operations in the same order);
//   - HQQ asymmetric: bit-identical except where |x|^(p-1) of the shrinkage
//     step rounds differently (the host's libm powf against float64 pow on
//     the GPU, rounded to float32; at most an ulp apart). That step only runs
//     on elements whose reconstruction error exceeds about beta^(-1/(2-p))
//     (~0.15 in weight units), and an ulp there moves a zero by ~1e-7
//     relative, so codes differ rarely or not at all.
// The global reductions of HQQ (the mean error of the early stop, the max
// relative scale change) are fixed-order, so repeated calls give identical
// results.
//
// Header without device code: plain C++ files may include it.
#ifndef GQUANT_CUDA_GPU_QUANTIZE_CUH_
#define GQUANT_CUDA_GPU_QUANTIZE_CUH_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "gquant/dtype.h"
#include "gquant/quantize.h"

namespace gquant::cuda {

// Same contract as gquant::Quantize: `weight` (host memory) is a row-major
// [rows, cols] matrix of `dtype`; `out` (host spans) receives codes, scale and
// zero_point; options.error_stats, when set, is accumulated into with the
// same sums (up to float64 summation order); options.hqq is honoured;
// options.pool is not used. HQQ's early stop is global over the call, so pass
// one whole matrix (expert) at a time.
// Device memory: the matrix, its codes (1 byte per element) and 2 floats per
// group, plus 3-4 floats per group of HQQ state; freed before returning.
// Runs on the legacy default stream and returns after the outputs are copied.
// Returns InvalidArgument for a bad config, a dtype other than F32/F16/BF16,
// cols not a multiple of the group size, mismatched span sizes, or a NaN/Inf
// weight (the message gives its row and column); Internal for a CUDA error
// (including no device).
absl::Status QuantizeOnGpu(const QuantConfig& config, DType dtype,
                           std::span<const std::byte> weight, int64_t rows, int64_t cols,
                           const QuantizedSpans& out, const QuantizeOptions& options = {});

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_GPU_QUANTIZE_CUH_
