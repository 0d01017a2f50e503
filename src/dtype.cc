#include "gquant/dtype.h"

#include <Eigen/Core>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"

namespace gquant {
namespace {

// Files are little-endian and we reinterpret their bytes in place.
static_assert(std::endian::native == std::endian::little, "gquant needs a little-endian host");

constexpr std::array<DTypeTraits, kNumDTypes> kDTypeTraits = {{
    {DType::kF32, "F32", 4, true},
    {DType::kF16, "F16", 2, true},
    {DType::kBF16, "BF16", 2, true},
    {DType::kF64, "F64", 8, true},
    {DType::kI8, "I8", 1, false},
    {DType::kU8, "U8", 1, false},
    {DType::kI16, "I16", 2, false},
    {DType::kU16, "U16", 2, false},
    {DType::kI32, "I32", 4, false},
    {DType::kU32, "U32", 4, false},
    {DType::kI64, "I64", 8, false},
    {DType::kU64, "U64", 8, false},
    {DType::kBool, "BOOL", 1, false},
    {DType::kF8E4M3, "F8_E4M3", 1, true},
    {DType::kF8E5M2, "F8_E5M2", 1, true},
}};

constexpr bool TableIsIndexedByEnum() {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (static_cast<int>(kDTypeTraits[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableIsIndexedByEnum(), "kDTypeTraits[i] must describe DType i");

// safetensors dtypes that exist in the format but that gquant does not hold.
constexpr std::array<std::string_view, 7> kKnownUnsupported = {
    "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"};

template <typename T>
void ConvertElements(const std::byte* src, size_t count, float* dst) {
  for (size_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, src + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(value);
  }
}

template <typename Bits, float (*kToFloat)(Bits)>
void ConvertBits(const std::byte* src, size_t count, float* dst) {
  for (size_t i = 0; i < count; ++i) {
    Bits bits;
    std::memcpy(&bits, src + i * sizeof(Bits), sizeof(Bits));
    dst[i] = kToFloat(bits);
  }
}

}  // namespace

const DTypeTraits& GetDTypeTraits(DType dtype) { return kDTypeTraits[static_cast<int>(dtype)]; }

absl::StatusOr<DType> DTypeFromName(std::string_view name) {
  for (const DTypeTraits& traits : kDTypeTraits) {
    if (traits.name == name) return traits.dtype;
  }
  for (std::string_view unsupported : kKnownUnsupported) {
    if (unsupported == name) {
      return absl::UnimplementedError(
          absl::StrFormat("dtype '%s' is a safetensors dtype that gquant does not support", name));
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat("unknown dtype '%s'", name));
}

// Eigen's half and bfloat16 convert with round-to-nearest-even and keep NaN a
// NaN; tests/dtype_test.cc checks every bit pattern against an independent
// reference.
float HalfToFloat(uint16_t bits) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
}
uint16_t FloatToHalf(float value) { return Eigen::numext::bit_cast<uint16_t>(Eigen::half(value)); }
float BFloat16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}
uint16_t FloatToBFloat16(float value) {
  return Eigen::numext::bit_cast<uint16_t>(Eigen::bfloat16(value));
}

float Float8E5M2ToFloat(uint8_t bits) { return HalfToFloat(static_cast<uint16_t>(bits) << 8); }

float Float8E4M3ToFloat(uint8_t bits) {
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int exponent = (bits >> 3) & 0xf;
  const int mantissa = bits & 0x7;
  if (exponent == 0xf && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);  // subnormal
  return sign * std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
}

absl::Status ConvertToFloat(DType dtype, std::span<const std::byte> src, std::span<float> dst) {
  const size_t size = DTypeSize(dtype);
  if (src.size() % size != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ConvertToFloat: %d bytes is not a whole number of %s elements", src.size(),
                        DTypeName(dtype)));
  }
  const size_t count = src.size() / size;
  if (dst.size() < count) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ConvertToFloat: destination holds %d floats, but got %d elements", dst.size(), count));
  }
  const std::byte* s = src.data();
  float* d = dst.data();
  switch (dtype) {
    case DType::kF32:
      std::memcpy(d, s, count * sizeof(float));
      break;
    case DType::kF16:
      ConvertBits<uint16_t, HalfToFloat>(s, count, d);
      break;
    case DType::kBF16:
      ConvertBits<uint16_t, BFloat16ToFloat>(s, count, d);
      break;
    case DType::kF64:
      ConvertElements<double>(s, count, d);
      break;
    case DType::kI8:
      ConvertElements<int8_t>(s, count, d);
      break;
    case DType::kU8:
      ConvertElements<uint8_t>(s, count, d);
      break;
    case DType::kI16:
      ConvertElements<int16_t>(s, count, d);
      break;
    case DType::kU16:
      ConvertElements<uint16_t>(s, count, d);
      break;
    case DType::kI32:
      ConvertElements<int32_t>(s, count, d);
      break;
    case DType::kU32:
      ConvertElements<uint32_t>(s, count, d);
      break;
    case DType::kI64:
      ConvertElements<int64_t>(s, count, d);
      break;
    case DType::kU64:
      ConvertElements<uint64_t>(s, count, d);
      break;
    case DType::kBool:
      for (size_t i = 0; i < count; ++i) d[i] = s[i] != std::byte{0} ? 1.0f : 0.0f;
      break;
    case DType::kF8E4M3:
      ConvertBits<uint8_t, Float8E4M3ToFloat>(s, count, d);
      break;
    case DType::kF8E5M2:
      ConvertBits<uint8_t, Float8E5M2ToFloat>(s, count, d);
      break;
  }
  return absl::OkStatus();
}

absl::Status ConvertFromFloat(std::span<const float> src, DType dtype, std::span<std::byte> dst) {
  const size_t size = DTypeSize(dtype);
  if (dst.size() != src.size() * size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ConvertFromFloat: %d floats to %s need %d bytes, but got %d", src.size(),
                        DTypeName(dtype), src.size() * size, dst.size()));
  }
  std::byte* d = dst.data();
  switch (dtype) {
    case DType::kF32:
      std::memcpy(d, src.data(), dst.size());
      return absl::OkStatus();
    case DType::kF64:
      for (size_t i = 0; i < src.size(); ++i) {
        const double value = src[i];
        std::memcpy(d + i * 8, &value, 8);
      }
      return absl::OkStatus();
    case DType::kF16:
    case DType::kBF16: {
      uint16_t (*convert)(float) = dtype == DType::kF16 ? FloatToHalf : FloatToBFloat16;
      for (size_t i = 0; i < src.size(); ++i) {
        const uint16_t bits = convert(src[i]);
        std::memcpy(d + i * 2, &bits, 2);
      }
      return absl::OkStatus();
    }
    default:
      return absl::UnimplementedError(
          absl::StrFormat("ConvertFromFloat: no conversion from float32 to %s", DTypeName(dtype)));
  }
}

}  // namespace gquant
