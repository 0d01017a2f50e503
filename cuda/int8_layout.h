// Layout "cuda_int8_rows": int8 weights as the int8 GEMV (int8_gemv.cuh), the
// int8 dequantizer and the embedding gather read them. Plain C++ (no CUDA
// headers), so the packer runs in gquant_core on machines without a GPU.
//
//   codes   int8 [N, K] row-major, as the quantizer made them (signed intx
//           codes, or unsigned min-form codes of at most 6 bits)
//   params  float32 pairs [N][G]: (scale, zero) with w = (c - zero) * scale,
//           or (scale, min) with w = c * scale - min in the min form
//
// float32 params keep ggml's Q8_0 (fp16 d, group 32) and Q6_K (fp16 d times
// int8 sub-scale, group 16) exact, and the per-row embedding costs nothing.
// Requires K % 16 == 0 (16-byte rows) and a group size that is a multiple of
// 16 dividing K (per-row: group size K).
#ifndef GQUANT_CUDA_INT8_LAYOUT_H_
#define GQUANT_CUDA_INT8_LAYOUT_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace gquant::cuda {

// Whether (n, k, group size) can be packed; InvalidArgument naming the shape otherwise.
absl::Status CheckInt8RowsShape(int64_t n, int64_t k, int64_t group_size);

struct PackedInt8Rows {
  std::vector<int8_t> codes;  // n * k
  std::vector<float> params;  // n * G * 2: scale, zero (or min)
};

// Packs one [n, k] matrix from gquant's unpacked form: codes [n, k] (any int8;
// 5/6/8-bit intx codes, or unsigned min-form codes up to 127), scale and zero
// (or min) [n, G]. InvalidArgument for a bad shape or mismatched spans.
absl::StatusOr<PackedInt8Rows> PackInt8Rows(std::span<const int8_t> codes,
                                            std::span<const float> scale,
                                            std::span<const float> zero, int64_t n, int64_t k,
                                            int64_t group_size);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT8_LAYOUT_H_
