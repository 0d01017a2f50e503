#include "gquant/dtype.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "test_util.h"

namespace gquant {
namespace {

// Independent decoders: sign/exponent/mantissa arithmetic in double, not bit
// shifts or Eigen.
double DecodeIeee(uint32_t bits, int exponent_bits, int mantissa_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const uint32_t exponent = (bits >> mantissa_bits) & ((1u << exponent_bits) - 1);
  const uint32_t mantissa = bits & ((1u << mantissa_bits) - 1);
  const double sign = (bits >> (exponent_bits + mantissa_bits)) & 1 ? -1.0 : 1.0;
  if (exponent == (1u << exponent_bits) - 1) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  if (exponent == 0)
    return sign * std::ldexp(static_cast<double>(mantissa), 1 - bias - mantissa_bits);
  return sign * std::ldexp(1.0 + std::ldexp(static_cast<double>(mantissa), -mantissa_bits),
                           static_cast<int>(exponent) - bias);
}

using Decode16 = float (*)(uint16_t);
using Encode16 = uint16_t (*)(float);

struct Format16 {
  const char* name;
  Decode16 decode;
  Encode16 encode;
  int exponent_bits;
  int mantissa_bits;
};

const Format16 kFormats[] = {
    {"F16", HalfToFloat, FloatToHalf, 5, 10},
    {"BF16", BFloat16ToFloat, FloatToBFloat16, 8, 7},
};

TEST_CASE("all 65536 16-bit patterns decode exactly and round trip", "[dtype]") {
  for (const Format16& f : kFormats) {
    INFO(f.name);
    int nan_count = 0;
    for (uint32_t bits = 0; bits <= 0xffff; ++bits) {
      const float value = f.decode(static_cast<uint16_t>(bits));
      const double expected = DecodeIeee(bits, f.exponent_bits, f.mantissa_bits);
      if (std::isnan(expected)) {
        REQUIRE(std::isnan(value));
        REQUIRE(std::isnan(f.decode(f.encode(value))));
        ++nan_count;
        continue;
      }
      INFO("bits 0x" << std::hex << bits);
      REQUIRE(static_cast<double>(value) == expected);
      REQUIRE(std::signbit(value) == static_cast<bool>(bits & 0x8000));
      REQUIRE(f.encode(value) == bits);  // exact round trip, -0 included
    }
    // 2 signs x (2^mantissa - 1) NaN payloads.
    REQUIRE(nan_count == 2 * ((1 << f.mantissa_bits) - 1));
  }
}

// Every rounding boundary: between each pair of adjacent finite 16-bit values
// the exact midpoint (representable in float32) must go to the even one, and
// the float32 values one ulp either side must go to the nearer neighbour.
TEST_CASE("float32 -> 16-bit rounds to nearest even at every midpoint", "[dtype]") {
  for (const Format16& f : kFormats) {
    INFO(f.name);
    const uint16_t max_finite =
        static_cast<uint16_t>(((1u << f.exponent_bits) - 1) << f.mantissa_bits) - 1;
    for (uint16_t sign : {uint16_t{0}, uint16_t{0x8000}}) {
      for (uint16_t lo = 0; lo < max_finite; ++lo) {
        const uint16_t a = sign | lo, b = sign | (lo + 1);
        const float fa = f.decode(a), fb = f.decode(b);
        const float mid = static_cast<float>((static_cast<double>(fa) + fb) / 2);
        REQUIRE(static_cast<double>(mid) == (static_cast<double>(fa) + fb) / 2);
        INFO("between 0x" << std::hex << a << " and 0x" << b);
        REQUIRE(f.encode(mid) == ((lo & 1) == 0 ? a : b));
        REQUIRE(f.encode(std::nextafter(mid, fa)) == a);
        REQUIRE(f.encode(std::nextafter(mid, fb)) == b);
      }
      // Past the largest finite value: below the midpoint to "max + 1 ulp"
      // stays finite, from it on rounds to infinity.
      const double top = f.decode(max_finite);
      const double overflow = top + std::ldexp(1.0, std::ilogb(top) - f.mantissa_bits - 1);
      const float s = sign ? -1.0f : 1.0f;
      REQUIRE(f.encode(s * std::nextafter(static_cast<float>(overflow), 0.0f)) ==
              (sign | max_finite));
      REQUIRE(std::isinf(f.decode(f.encode(s * static_cast<float>(overflow)))));
    }
  }
}

TEST_CASE("float32 -> 16-bit matches a nearest-value search on random floats", "[dtype]") {
  auto rng = testing::MakeRng();
  for (const Format16& f : kFormats) {
    INFO(f.name);
    // Sorted table of every finite non-negative value of the format.
    std::vector<std::pair<double, uint16_t>> table;
    for (uint32_t bits = 0; bits < 0x8000; ++bits) {
      const double v = DecodeIeee(bits, f.exponent_bits, f.mantissa_bits);
      if (std::isfinite(v)) table.push_back({v, static_cast<uint16_t>(bits)});
    }
    std::sort(table.begin(), table.end());
    const double max_value = table.back().first;
    std::uniform_int_distribution<uint32_t> any_bits;
    for (int i = 0; i < 200000; ++i) {
      const float x = std::bit_cast<float>(any_bits(rng));
      if (!std::isfinite(x) || std::fabs(x) > max_value) continue;
      const double ax = std::fabs(static_cast<double>(x));
      auto hi = std::lower_bound(table.begin(), table.end(), std::make_pair(ax, uint16_t{0}));
      uint16_t expected;
      if (hi->first == ax || hi == table.begin()) {
        expected = hi->second;
      } else {
        auto lo = std::prev(hi);
        const double dlo = ax - lo->first, dhi = hi->first - ax;
        expected = dlo < dhi   ? lo->second
                   : dhi < dlo ? hi->second
                               : ((lo->second & 1) == 0 ? lo->second : hi->second);
      }
      if (std::signbit(x)) expected |= 0x8000;
      INFO("x = " << x);
      REQUIRE(f.encode(x) == expected);
    }
  }
}

TEST_CASE("float8 decoders match the formula", "[dtype]") {
  for (uint32_t bits = 0; bits < 256; ++bits) {
    INFO("bits 0x" << std::hex << bits);
    // E5M2 is IEEE-like with 5 exponent bits.
    const double e5m2 = DecodeIeee(bits, 5, 2);
    const float got5 = Float8E5M2ToFloat(static_cast<uint8_t>(bits));
    if (std::isnan(e5m2)) {
      REQUIRE(std::isnan(got5));
    } else {
      REQUIRE(static_cast<double>(got5) == e5m2);
    }
    // E4M3FN: no infinities; only S.1111.111 is NaN.
    const float got4 = Float8E4M3ToFloat(static_cast<uint8_t>(bits));
    if ((bits & 0x7f) == 0x7f) {
      REQUIRE(std::isnan(got4));
    } else {
      const int e = (bits >> 3) & 0xf, m = bits & 7;
      const double magnitude = e == 0 ? std::ldexp(m, -9) : std::ldexp(1.0 + m / 8.0, e - 7);
      REQUIRE(static_cast<double>(got4) == ((bits & 0x80) ? -magnitude : magnitude));
    }
  }
  REQUIRE(Float8E4M3ToFloat(0x7e) == 448.0f);
  REQUIRE(Float8E5M2ToFloat(0x7b) == 57344.0f);
}

TEST_CASE("dtype table and names", "[dtype]") {
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType dtype = static_cast<DType>(i);
    const DTypeTraits& traits = GetDTypeTraits(dtype);
    REQUIRE(traits.dtype == dtype);
    auto parsed = DTypeFromName(traits.name);
    REQUIRE_OK(parsed);
    REQUIRE(*parsed == dtype);
  }
  REQUIRE(DTypeSize(DType::kBF16) == 2);
  REQUIRE(DTypeSize(DType::kI64) == 8);
  REQUIRE(DTypeSize(DType::kBool) == 1);
  REQUIRE_STATUS_IS(DTypeFromName("bf16"), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(DTypeFromName("Q4_K"), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(DTypeFromName("F4"), absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(DTypeFromName("C64"), absl::StatusCode::kUnimplemented);
}

template <typename T>
std::vector<std::byte> Bytes(const std::vector<T>& values) {
  std::vector<std::byte> out(values.size() * sizeof(T));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

TEST_CASE("ConvertToFloat covers integer, bool and float64 inputs", "[dtype]") {
  auto rng = testing::MakeRng();
  std::uniform_int_distribution<int> small(-128, 127);
  std::vector<int8_t> i8(37);
  std::vector<int64_t> i64(37);
  std::vector<double> f64(37);
  std::vector<uint8_t> flags(37);
  for (size_t i = 0; i < i8.size(); ++i) {
    i8[i] = static_cast<int8_t>(small(rng));
    i64[i] = static_cast<int64_t>(small(rng)) * 1000003;
    f64[i] = small(rng) * 0.123456789012345;
    flags[i] = static_cast<uint8_t>(small(rng) & 1);
  }
  std::vector<float> out(37, std::numeric_limits<float>::quiet_NaN());
  REQUIRE_OK(ConvertToFloat(DType::kI8, Bytes(i8), out));
  for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<float>(i8[i]));
  REQUIRE_OK(ConvertToFloat(DType::kI64, Bytes(i64), out));
  for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<float>(i64[i]));
  REQUIRE_OK(ConvertToFloat(DType::kF64, Bytes(f64), out));
  for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<float>(f64[i]));
  REQUIRE_OK(ConvertToFloat(DType::kBool, Bytes(flags), out));
  for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == static_cast<float>(flags[i]));

  std::vector<float> too_small(3);
  REQUIRE_STATUS_IS(ConvertToFloat(DType::kI64, Bytes(i64), too_small),
                    absl::StatusCode::kInvalidArgument);
  const std::vector<std::byte> ragged(5);
  REQUIRE_STATUS_IS(ConvertToFloat(DType::kF32, ragged, out), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("ConvertFromFloat writes F16/BF16/F32/F64 and refuses integers", "[dtype]") {
  auto rng = testing::MakeRng();
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> values(101);
  for (float& v : values) v = normal(rng);
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32, DType::kF64}) {
    INFO(DTypeName(dtype));
    std::vector<std::byte> bytes(values.size() * DTypeSize(dtype), std::byte{0xa5});
    REQUIRE_OK(ConvertFromFloat(values, dtype, bytes));
    std::vector<float> back(values.size());
    REQUIRE_OK(ConvertToFloat(dtype, bytes, back));
    for (size_t i = 0; i < values.size(); ++i) {
      const float expected = dtype == DType::kF16    ? HalfToFloat(FloatToHalf(values[i]))
                             : dtype == DType::kBF16 ? BFloat16ToFloat(FloatToBFloat16(values[i]))
                                                     : values[i];
      REQUIRE(back[i] == expected);
    }
  }
  std::vector<std::byte> bytes(values.size());
  REQUIRE_STATUS_IS(ConvertFromFloat(values, DType::kI8, bytes), absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(ConvertFromFloat(values, DType::kF32, bytes),
                    absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gquant
