// Elementwise conversions between float32 and the 16-bit float formats on the
// GPU, bit-identical to the host conversions in gquant/dtype.h
// (round-to-nearest-even, NaN stays NaN). Pointers are device memory.
#ifndef GQUANT_CUDA_CONVERT_CUH_
#define GQUANT_CUDA_CONVERT_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "gquant/dtype.h"

namespace gquant::cuda {

// dst[i] = float(src[i]) for a 16-bit `dtype` (kF16 or kBF16); `count` elements.
// Returns InvalidArgument for another dtype or a negative count, Internal for a
// CUDA error.
absl::Status Convert16ToFloat(DType dtype, const uint16_t* src, float* dst, int64_t count,
                              cudaStream_t stream);

// dst[i] = 16-bit bits of src[i], rounded to nearest even.
absl::Status ConvertFloatTo16(DType dtype, const float* src, uint16_t* dst, int64_t count,
                              cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_CONVERT_CUH_
