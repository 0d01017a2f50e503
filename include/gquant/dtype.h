// Element types of tensors in checkpoints, and exact conversions between the
// 16-bit float formats and float32.
//
// The enum numbers are stable (they may be written into files): never reuse or
// renumber one. Names are the safetensors dtype strings (spec formats.md §1.3).
#ifndef GQUANT_DTYPE_H_
#define GQUANT_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant {

enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kF64 = 3,
  kI8 = 4,
  kU8 = 5,
  kI16 = 6,
  kU16 = 7,
  kI32 = 8,
  kU32 = 9,
  kI64 = 10,
  kU64 = 11,
  kBool = 12,
  kF8E4M3 = 13,  // float8_e4m3fn: no infinities, 0x7f/0xff are NaN
  kF8E5M2 = 14,  // float8_e5m2: the top byte of an IEEE float16
};

inline constexpr int kNumDTypes = 15;

struct DTypeTraits {
  DType dtype;
  std::string_view name;  // safetensors spelling, e.g. "BF16"
  int bytes;              // bytes per element
  bool is_float;
};

// The one table describing every dtype, indexed by the enum value.
const DTypeTraits& GetDTypeTraits(DType dtype);

inline int DTypeSize(DType dtype) { return GetDTypeTraits(dtype).bytes; }
inline std::string_view DTypeName(DType dtype) { return GetDTypeTraits(dtype).name; }

// Parses a safetensors dtype string ("F32", "BF16", ...). Case-sensitive, as in
// the reference reader.
// Returns InvalidArgument for an unknown name; Unimplemented for a known
// safetensors dtype gquant cannot hold (sub-byte F4/F6, C64, F8_E8M0, FNUZ).
absl::StatusOr<DType> DTypeFromName(std::string_view name);

// ---- scalar conversions (round-to-nearest-even, IEEE semantics) ----
// Float16 and BFloat16 are carried as their raw bit patterns.
float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);
float BFloat16ToFloat(uint16_t bits);
uint16_t FloatToBFloat16(float value);
float Float8E4M3ToFloat(uint8_t bits);
float Float8E5M2ToFloat(uint8_t bits);

// Converts `count` little-endian elements of `dtype` at `src` to float32.
// Integers and F64 convert with static_cast semantics (F64 rounds to nearest).
// Returns InvalidArgument if `dst` is smaller than `src_bytes / DTypeSize`
// or `src` is not a whole number of elements.
absl::Status ConvertToFloat(DType dtype, std::span<const std::byte> src, std::span<float> dst);

// Converts float32 values to `dtype` (F32, F16, BF16 or F64 only; others are
// Unimplemented). `dst` must hold exactly src.size() * DTypeSize(dtype) bytes.
absl::Status ConvertFromFloat(std::span<const float> src, DType dtype, std::span<std::byte> dst);

}  // namespace gquant

#endif  // GQUANT_DTYPE_H_
