// GGUF block-quantized tensors in gquant's quantized form, without loss:
// dequantizing the unpacked weight (QuantizedCheckpoint::Dequantize) gives
// float32 values bit-identical to ggml's dequantize_row_* (spec gguf.md §4-§5).
//
//   ggml   gquant storage (quantized_checkpoint.h)      scale dtype and why
//   Q8_0   Intx 8-bit, group 32, zero 0                 F16: d itself
//   Q4_0   Int4, group 32, zero point 8                 F16: d itself
//   Q5_0   Intx 5-bit, group 32, zero 0, code q - 16    F16: d itself
//   Q4_1   min form 4-bit, group 32, min = -m           F16: d and m themselves
//   Q5_1   min form 5-bit, group 32, min = -m           F16
//   Q4_K   min form 4-bit, group 32,                    F32: d*sc and dmin*m are
//          scale = d*sc, min = dmin*m                   products of an fp16 and a
//   Q5_K   min form 5-bit, group 32 (as Q4_K)           6-bit integer (17 bits)
//   Q6_K   Intx 6-bit, group 16, zero 0, scale = d*sc   F32 (fp16 x int8: 19 bits)
//
// Why exact: each ggml formula is one float32 product (and for the min types
// one subtraction) of values our storage holds exactly, and our dequantizer
// evaluates the same operations in the same order. Q4_K's min cannot become
// an integer-domain zero point (m/d is not a float in general), hence the
// min form (w = q * scale - min) rather than torchao's (q - z) * scale.
//
// F32, F16 and BF16 tensors stay plain; other types (Q2_K, Q3_K, IQ*, ...)
// have no unpacker and give Unimplemented.
#ifndef GQUANT_GGUF_UNPACK_H_
#define GQUANT_GGUF_UNPACK_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/ggml_format.h"
#include "gquant/quantize.h"
#include "gquant/quantized_checkpoint.h"

namespace gquant {

class ThreadPool;

// The gquant storage of one unpackable ggml type.
struct GgufUnpackFormat {
  QuantConfig config;  // bits and group size (method and symmetric are nominal)
  StorageFormat format;
};

// The storage a tensor of `type` unpacks into. Unimplemented for a type with
// no lossless unpacker (plain F32/F16/BF16 included: they need none).
absl::StatusOr<GgufUnpackFormat> GgufUnpackFormatOf(GgmlType type);

// Unpacks the GGUF payload `data` of a [N, K] or [E, N, K] tensor (torch
// shape, i.e. GGUF dims reversed) into a packed weight named `fqn`. Rows are
// split over `pool` when given. Returns Unimplemented for a type with no
// unpacker, InvalidArgument for a shape of another rank, K not a multiple of
// the block size, or `data` of the wrong size (messages name `fqn`).
absl::StatusOr<PackedWeight> UnpackGgufWeight(std::string fqn, std::vector<int64_t> torch_shape,
                                              GgmlType type, std::span<const std::byte> data,
                                              ThreadPool* pool = nullptr);

}  // namespace gquant

#endif  // GQUANT_GGUF_UNPACK_H_
