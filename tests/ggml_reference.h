// The ggml tests' independent float64 block decoder (defined in
// ggml_format_test.cc), shared with ggml_quantize_test.cc.
#ifndef GQUANT_TESTS_GGML_REFERENCE_H_
#define GQUANT_TESTS_GGML_REFERENCE_H_

#include <cstddef>
#include <span>

#include "gquant/ggml_format.h"

namespace gquant::ggml_testing {

// Decodes whole blocks of `type` with the test's float64 formula (rounded once
// to float); false when the tests have no formula for the type.
bool RefDequantize(GgmlType type, std::span<const std::byte> blocks, std::span<float> out);

}  // namespace gquant::ggml_testing

#endif  // GQUANT_TESTS_GGML_REFERENCE_H_
