// The registry of ggml tensor types (spec gguf.md §2): one constexpr table,
// indexed by the stable ggml type id, giving each type's name, block shape and
// reference row functions. This is ggml's `type_traits[]`, made type-safe.
//
// The ids are written into GGUF files: never renumber or reuse one. Retired ids
// (4, 5, 31-33, 36-38) keep a table slot named "DEPRECATED" with block size 0,
// and FindGgmlType returns nullptr for them.
//
// Row functions are the unchecked reference kernels: `n` must be a multiple of
// the type's block_elements and the buffers must hold n elements / n/block
// blocks. Use the checked entry points DequantizeGgml and QuantizeGgmlRef.
#ifndef GQUANT_GGML_FORMAT_H_
#define GQUANT_GGML_FORMAT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/ggml_blocks.h"

namespace gquant {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  // 4, 5: retired (Q4_2, Q4_3)
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  // 31-33: retired (Q4_0_4_4, Q4_0_4_8, Q4_0_8_8)
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  // 36-38: retired (IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8)
  kMXFP4 = 39,
  kNVFP4 = 40,
  kQ1_0 = 41,
  kQ2_0 = 42,
};

// One past the largest ggml type id gquant knows.
inline constexpr uint32_t kGgmlTypeIdCount = 43;

// Decodes `n` elements (a multiple of the block size) from `src` into `dst`.
using GgmlDequantizeRowFn = void (*)(const std::byte* src, float* dst, int64_t n);
// Encodes `n` elements (a multiple of the block size) from `src` into `dst`.
using GgmlQuantizeRowFn = void (*)(const float* src, std::byte* dst, int64_t n);

// Reference row functions (src/ggml_dequantize.cc, src/ggml_quantize.cc). They
// follow ggml's dequantize_row_* / quantize_row_*_ref operation by operation, in
// float32, so their outputs are bit-identical to ggml's (spec §3).
namespace ggml_ref {
void DequantizeRowF32(const std::byte* src, float* dst, int64_t n);
void DequantizeRowF16(const std::byte* src, float* dst, int64_t n);
void DequantizeRowBF16(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ8_0(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ4_0(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ4_1(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ5_0(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ5_1(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ4K(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ5K(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ6K(const std::byte* src, float* dst, int64_t n);
void DequantizeRowQ8K(const std::byte* src, float* dst, int64_t n);

void QuantizeRowF32(const float* src, std::byte* dst, int64_t n);
void QuantizeRowF16(const float* src, std::byte* dst, int64_t n);
void QuantizeRowBF16(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ8_0(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ4_0(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ4_1(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ5_0(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ5_1(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ4K(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ5K(const float* src, std::byte* dst, int64_t n);
void QuantizeRowQ6K(const float* src, std::byte* dst, int64_t n);

// ggml's scalar conversions: fp32 -> fp16 (round to nearest even; NaN becomes
// 0x7E00 with its sign) and fp32 -> bf16 (round to nearest even; NaN keeps its
// top bits with the quiet bit forced). They equal dtype.h's FloatToHalf /
// FloatToBFloat16 on every non-NaN input (tested); they exist only so F16/BF16
// GGUF payloads match ggml's bytes for NaN too.
uint16_t Fp32ToFp16(float value);
uint16_t Fp32ToBf16(float value);
}  // namespace ggml_ref

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;               // ggml's spelling, e.g. "q4_K"; "DEPRECATED" if retired
  int64_t block_elements;              // elements per block; 0 for a retired id
  int64_t block_bytes;                 // bytes per block; 0 for a retired id
  bool is_quantized;                   // ggml's is_quantized
  GgmlDequantizeRowFn dequantize_row;  // nullptr when gquant cannot decode the type
  GgmlQuantizeRowFn quantize_row_ref;  // nullptr when gquant has no reference encoder
};

namespace internal_ggml {
constexpr GgmlTypeTraits Retired(uint32_t id) {
  return {static_cast<GgmlType>(id), "DEPRECATED", 0, 0, false, nullptr, nullptr};
}
}  // namespace internal_ggml

// Entry i describes type id i.
inline constexpr std::array<GgmlTypeTraits, kGgmlTypeIdCount> kGgmlTypeTraits = {{
    {GgmlType::kF32, "f32", 1, 4, false, ggml_ref::DequantizeRowF32, ggml_ref::QuantizeRowF32},
    {GgmlType::kF16, "f16", 1, 2, false, ggml_ref::DequantizeRowF16, ggml_ref::QuantizeRowF16},
    {GgmlType::kQ4_0, "q4_0", kQK, sizeof(BlockQ4_0), true, ggml_ref::DequantizeRowQ4_0,
     ggml_ref::QuantizeRowQ4_0},
    {GgmlType::kQ4_1, "q4_1", kQK, sizeof(BlockQ4_1), true, ggml_ref::DequantizeRowQ4_1,
     ggml_ref::QuantizeRowQ4_1},
    internal_ggml::Retired(4),
    internal_ggml::Retired(5),
    {GgmlType::kQ5_0, "q5_0", kQK, sizeof(BlockQ5_0), true, ggml_ref::DequantizeRowQ5_0,
     ggml_ref::QuantizeRowQ5_0},
    {GgmlType::kQ5_1, "q5_1", kQK, sizeof(BlockQ5_1), true, ggml_ref::DequantizeRowQ5_1,
     ggml_ref::QuantizeRowQ5_1},
    {GgmlType::kQ8_0, "q8_0", kQK, sizeof(BlockQ8_0), true, ggml_ref::DequantizeRowQ8_0,
     ggml_ref::QuantizeRowQ8_0},
    {GgmlType::kQ8_1, "q8_1", kQK, sizeof(BlockQ8_1), true, nullptr, nullptr},
    {GgmlType::kQ2_K, "q2_K", kQKK, sizeof(BlockQ2K), true, nullptr, nullptr},
    {GgmlType::kQ3_K, "q3_K", kQKK, sizeof(BlockQ3K), true, nullptr, nullptr},
    {GgmlType::kQ4_K, "q4_K", kQKK, sizeof(BlockQ4K), true, ggml_ref::DequantizeRowQ4K,
     ggml_ref::QuantizeRowQ4K},
    {GgmlType::kQ5_K, "q5_K", kQKK, sizeof(BlockQ5K), true, ggml_ref::DequantizeRowQ5K,
     ggml_ref::QuantizeRowQ5K},
    {GgmlType::kQ6_K, "q6_K", kQKK, sizeof(BlockQ6K), true, ggml_ref::DequantizeRowQ6K,
     ggml_ref::QuantizeRowQ6K},
    {GgmlType::kQ8_K, "q8_K", kQKK, sizeof(BlockQ8K), true, ggml_ref::DequantizeRowQ8K, nullptr},
    {GgmlType::kIQ2_XXS, "iq2_xxs", kQKK, 66, true, nullptr, nullptr},
    {GgmlType::kIQ2_XS, "iq2_xs", kQKK, 74, true, nullptr, nullptr},
    {GgmlType::kIQ3_XXS, "iq3_xxs", kQKK, 98, true, nullptr, nullptr},
    {GgmlType::kIQ1_S, "iq1_s", kQKK, 50, true, nullptr, nullptr},
    {GgmlType::kIQ4_NL, "iq4_nl", kQK, 18, true, nullptr, nullptr},
    {GgmlType::kIQ3_S, "iq3_s", kQKK, 110, true, nullptr, nullptr},
    {GgmlType::kIQ2_S, "iq2_s", kQKK, 82, true, nullptr, nullptr},
    {GgmlType::kIQ4_XS, "iq4_xs", kQKK, 136, true, nullptr, nullptr},
    {GgmlType::kI8, "i8", 1, 1, false, nullptr, nullptr},
    {GgmlType::kI16, "i16", 1, 2, false, nullptr, nullptr},
    {GgmlType::kI32, "i32", 1, 4, false, nullptr, nullptr},
    {GgmlType::kI64, "i64", 1, 8, false, nullptr, nullptr},
    {GgmlType::kF64, "f64", 1, 8, false, nullptr, nullptr},
    {GgmlType::kIQ1_M, "iq1_m", kQKK, 56, true, nullptr, nullptr},
    {GgmlType::kBF16, "bf16", 1, 2, false, ggml_ref::DequantizeRowBF16, ggml_ref::QuantizeRowBF16},
    internal_ggml::Retired(31),
    internal_ggml::Retired(32),
    internal_ggml::Retired(33),
    {GgmlType::kTQ1_0, "tq1_0", kQKK, 54, true, nullptr, nullptr},
    {GgmlType::kTQ2_0, "tq2_0", kQKK, 66, true, nullptr, nullptr},
    internal_ggml::Retired(36),
    internal_ggml::Retired(37),
    internal_ggml::Retired(38),
    {GgmlType::kMXFP4, "mxfp4", 32, 17, true, nullptr, nullptr},
    {GgmlType::kNVFP4, "nvfp4", 64, 36, true, nullptr, nullptr},
    {GgmlType::kQ1_0, "q1_0", 128, 18, true, nullptr, nullptr},
    {GgmlType::kQ2_0, "q2_0", 64, 18, true, nullptr, nullptr},
}};

namespace internal_ggml {
// Entry i has id i; live entries have a name and a positive block shape; a
// multi-element block is a quantized type. (The function-pointer invariants,
// "retired ids have none" and "an encoder implies a decoder", are checked in
// tests/ggml_format_test.cc: GCC cannot fold a function address against null
// under -fsanitize=undefined.)
constexpr bool GgmlTypeTableIsConsistent() {
  for (uint32_t i = 0; i < kGgmlTypeIdCount; ++i) {
    const GgmlTypeTraits& t = kGgmlTypeTraits[i];
    if (static_cast<uint32_t>(t.type) != i || t.name.empty()) return false;
    const bool retired = t.block_elements == 0;
    if (retired != (t.block_bytes == 0)) return false;
    if (retired && t.name != "DEPRECATED") return false;
    if (!retired && t.block_elements > 1 && !t.is_quantized) return false;
  }
  return true;
}
}  // namespace internal_ggml
static_assert(internal_ggml::GgmlTypeTableIsConsistent(), "kGgmlTypeTraits is inconsistent");

// The traits of type id `id`, or nullptr for an unknown or retired id.
const GgmlTypeTraits* FindGgmlType(uint32_t id);

// ggml's name of type id `id` ("q4_K"), or "type <id>" for an unknown or
// retired id: for messages and reports.
std::string GgmlTypeName(uint32_t id);

// Parses ggml's type name ("q4_K", "bf16", ...; case-sensitive, as ggml).
// InvalidArgument for an unknown or retired name.
absl::StatusOr<GgmlType> GgmlTypeFromName(std::string_view name);

// Bytes of a row of `elements` elements of `type` (ggml_row_size).
// InvalidArgument for an unknown or retired type, a negative count, or a count
// that is not a multiple of the block size.
absl::StatusOr<uint64_t> GgmlRowBytes(GgmlType type, int64_t elements);

// Decodes whole blocks to float32, bit-identical to ggml's dequantize_row_*.
// `out` must hold exactly (blocks.size() / block_bytes) * block_elements floats
// and `blocks` a whole number of blocks (InvalidArgument otherwise);
// Unimplemented for a type gquant cannot decode. Any byte content is accepted.
absl::Status DequantizeGgml(GgmlType type, std::span<const std::byte> blocks, std::span<float> out);

// Encodes float32 values with ggml's reference quantizer (quantize_row_*_ref,
// i.e. llama-quantize without an imatrix), byte-identical for finite input.
// `in` must be a whole number of blocks and `out` exactly its row bytes
// (InvalidArgument otherwise); Unimplemented for a type without a reference
// encoder. Non-finite inputs are not rejected (ggml does not either) but never
// cause undefined behaviour.
absl::Status QuantizeGgmlRef(GgmlType type, std::span<const float> in, std::span<std::byte> out);

}  // namespace gquant

#endif  // GQUANT_GGML_FORMAT_H_
