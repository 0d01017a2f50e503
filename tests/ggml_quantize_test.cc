// Tests for ggml's reference quantizers: the spec's test vectors (gguf.md
// §6.8, produced by ggml's own code without FMA), the edge cases of §6.7,
// size checks, and round trips over several distributions with per-format
// error bounds.
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "ggml_reference.h"
#include "gquant/dtype.h"
#include "gquant/ggml_format.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;

}  // namespace

namespace {

// ---- a small SHA-256 (FIPS 180-4), to check the spec's digests ----
std::string Sha256Hex(const std::vector<std::byte>& data) {
  static constexpr uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
      0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
      0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
      0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
      0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
      0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
      0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
      0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::vector<uint8_t> msg;
  for (std::byte b : data) msg.push_back(std::to_integer<uint8_t>(b));
  const uint64_t bit_len = 8 * static_cast<uint64_t>(msg.size());
  msg.push_back(0x80);
  while (msg.size() % 64 != 56) msg.push_back(0);
  for (int i = 7; i >= 0; --i) msg.push_back(static_cast<uint8_t>(bit_len >> (8 * i)));
  for (size_t chunk = 0; chunk < msg.size(); chunk += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = uint32_t{msg[chunk + 4 * i]} << 24 | uint32_t{msg[chunk + 4 * i + 1]} << 16 |
             uint32_t{msg[chunk + 4 * i + 2]} << 8 | msg[chunk + 4 * i + 3];
    }
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = std::rotr(w[i - 15], 7) ^ std::rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = std::rotr(w[i - 2], 17) ^ std::rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a[8];
    std::copy(h, h + 8, a);
    for (int i = 0; i < 64; ++i) {
      const uint32_t s1 = std::rotr(a[4], 6) ^ std::rotr(a[4], 11) ^ std::rotr(a[4], 25);
      const uint32_t ch = (a[4] & a[5]) ^ (~a[4] & a[6]);
      const uint32_t t1 = a[7] + s1 + ch + k[i] + w[i];
      const uint32_t s0 = std::rotr(a[0], 2) ^ std::rotr(a[0], 13) ^ std::rotr(a[0], 22);
      const uint32_t maj = (a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]);
      std::copy_backward(a, a + 7, a + 8);
      a[4] += t1;
      a[0] = t1 + s0 + maj;
    }
    for (int i = 0; i < 8; ++i) h[i] += a[i];
  }
  std::string hex;
  for (uint32_t v : h) hex += absl::StrFormat("%08x", v);
  return hex;
}

std::string Hex(const std::vector<std::byte>& bytes, size_t begin = 0, size_t end = SIZE_MAX) {
  std::string out;
  for (size_t i = begin; i < std::min(end, bytes.size()); ++i) {
    if (!out.empty()) out += ' ';
    out += absl::StrFormat("%02x", std::to_integer<int>(bytes[i]));
  }
  return out;
}

std::vector<std::byte> Quantize(GgmlType type, const std::vector<float>& x) {
  const auto bytes = GgmlRowBytes(type, static_cast<int64_t>(x.size()));
  REQUIRE_OK(bytes);
  std::vector<std::byte> out(*bytes);
  REQUIRE_OK(QuantizeGgmlRef(type, x, out));
  return out;
}

std::vector<float> Dequantize(GgmlType type, const std::vector<std::byte>& bytes, size_t n) {
  std::vector<float> out(n);
  REQUIRE_OK(DequantizeGgml(type, bytes, out));
  return out;
}

TEST_CASE("ggml test vector sha256 helper", "[ggml]") {
  REQUIRE(Sha256Hex({}) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const std::vector<std::byte> abc = {std::byte{'a'}, std::byte{'b'}, std::byte{'c'}};
  REQUIRE(Sha256Hex(abc) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("ggml ref quantizers: spec §6.8 test vectors", "[ggml]") {
  std::vector<float> ramp32(32);
  for (int i = 0; i < 32; ++i) ramp32[i] = static_cast<float>(i - 16) / 8;
  std::vector<float> sin256(256);
  for (int i = 0; i < 256; ++i)
    sin256[i] = static_cast<float>(std::sin(0.37 * i) * (1 + i / 256.0));

  SECTION("ramp32 Q8_0") {
    REQUIRE(Hex(Quantize(GgmlType::kQ8_0, ramp32)) ==
            "08 24 81 89 91 99 a1 a9 b1 b9 c0 c8 d0 d8 e0 e8 f0 f8 00 08 10 18 20 28 30 38 40 47 "
            "4f 57 5f 67 6f 77");
  }
  SECTION("ramp32 Q4_0") {
    REQUIRE(Hex(Quantize(GgmlType::kQ4_0, ramp32)) ==
            "00 34 80 91 91 a2 a2 b3 b3 c4 c4 d5 d5 e6 e6 f7 f7 f8");
  }
  SECTION("sin256 Q4_K") {
    const auto bytes = Quantize(GgmlType::kQ4_K, sin256);
    REQUIRE(Hex(bytes, 0, 18) == "35 1c c2 27 e2 e7 ec ee e4 e7 ea ef 21 76 bb ff 38 5a");
    REQUIRE(Sha256Hex(bytes) == "5ab6929f8957f04f77bd90e4f93463f74fb6ab951ad65a676756fc979b074f60");
  }
  SECTION("sin256 Q6_K") {
    const auto bytes = Quantize(GgmlType::kQ6_K, sin256);
    REQUIRE(Hex(bytes, 192) == "bb b9 b5 50 51 57 5b 61 63 68 6b 72 90 89 84 80 01 90");
    REQUIRE(Sha256Hex(bytes) == "c135305cc978ce1e72766b384d24bcf0c81608ce4146155f92003624b8692302");
  }
}

TEST_CASE("ggml ref quantizers: spec §6.7 edge cases", "[ggml]") {
  SECTION("Q4_K constant -0.25 block") {
    const auto bytes = Quantize(GgmlType::kQ4_K, std::vector<float>(256, -0.25f));
    REQUIRE(Hex(bytes, 0, 16) == "00 00 10 1c 00 00 00 00 ff ff ff ff f0 f0 f0 f0");
    REQUIRE(Hex(bytes, 16) == Hex(std::vector<std::byte>(128)));
    for (float y : Dequantize(GgmlType::kQ4_K, bytes, 256)) REQUIRE(std::fabs(y + 0.25f) < 1e-3f);
  }
  SECTION("Q4_K constant +0.5 block") {
    const auto bytes = Quantize(GgmlType::kQ4_K, std::vector<float>(256, 0.5f));
    REQUIRE(Hex(bytes, 0, 16) == "56 10 00 00 ff ff ff ff 00 00 00 00 0f 0f 0f 0f");
    REQUIRE(Hex(bytes, 16) == Hex(std::vector<std::byte>(128, std::byte{0xff})));
  }
  SECTION("all-zero blocks") {
    REQUIRE(Quantize(GgmlType::kQ4_K, std::vector<float>(256)) == std::vector<std::byte>(144));
    REQUIRE(Quantize(GgmlType::kQ5_K, std::vector<float>(256)) == std::vector<std::byte>(176));
    REQUIRE(Quantize(GgmlType::kQ6_K, std::vector<float>(256)) == std::vector<std::byte>(210));
    REQUIRE(Quantize(GgmlType::kQ8_0, std::vector<float>(32)) == std::vector<std::byte>(34));
    // Q4_0: d = 0/-8 = -0.0 (fp16 0x8000) and every code is 8.
    std::string q4_0_zero = "00 80";
    for (int i = 0; i < 16; ++i) q4_0_zero += " 88";
    REQUIRE(Hex(Quantize(GgmlType::kQ4_0, std::vector<float>(32))) == q4_0_zero);
    // Q5_0: d = 0x8000, q = 16: qs all 00, qh ff ff ff ff.
    const auto q5 = Quantize(GgmlType::kQ5_0, std::vector<float>(32));
    REQUIRE(Hex(q5, 0, 6) == "00 80 ff ff ff ff");
    REQUIRE(Hex(q5, 6) == Hex(std::vector<std::byte>(16)));
  }
  SECTION("Q4_K sub-block whose scale rounds to 0 keeps its first-pass codes") {
    std::vector<float> x(256);
    for (int i = 0; i < 256; ++i)
      x[i] = i < 32 ? 1e-6f * static_cast<float>(i) : std::sin(0.1f * i);
    const auto bytes = Quantize(GgmlType::kQ4_K, x);
    REQUIRE((std::to_integer<int>(bytes[4]) & 63) == 0);  // sc_0 == 0
    int nonzero = 0;
    for (int l = 0; l < 32; ++l) nonzero += (std::to_integer<int>(bytes[16 + l]) & 15) != 0;
    REQUIRE(nonzero > 0);
  }
  SECTION("Q6_K all-zero sub-block among live ones keeps code 0") {
    std::vector<float> x(256);
    for (int i = 16; i < 256; ++i) x[i] = std::cos(0.3f * i);
    const auto bytes = Quantize(GgmlType::kQ6_K, x);
    REQUIRE(std::to_integer<int>(bytes[192]) == 0);  // scale of sub-block 0
    for (int l = 0; l < 16; ++l) REQUIRE((std::to_integer<int>(bytes[l]) & 15) == 0);
    const auto y = Dequantize(GgmlType::kQ6_K, bytes, 256);
    for (int i = 0; i < 16; ++i) REQUIRE(y[i] == 0.0f);
  }
}

TEST_CASE("ggml ref quantizers: size checks", "[ggml]") {
  std::vector<float> x(256, 1.0f);
  std::vector<std::byte> out(144);
  REQUIRE_OK(QuantizeGgmlRef(GgmlType::kQ4_K, x, out));
  REQUIRE_STATUS_IS(QuantizeGgmlRef(GgmlType::kQ4_K, std::span(x).first(255), out),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(QuantizeGgmlRef(GgmlType::kQ4_K, x, std::span(out).first(143)),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(QuantizeGgmlRef(GgmlType::kQ8_0, x, out), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(QuantizeGgmlRef(GgmlType::kQ2_K, x, std::span(out).first(84)),
                    absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(QuantizeGgmlRef(static_cast<GgmlType>(31), x, out),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(QuantizeGgmlRef(GgmlType::kQ6_K, {}, {}));
}

TEST_CASE("ggml ref quantizers: non-finite input is accepted without UB", "[ggml]") {
  // ggml does not special-case NaN/Inf (spec §6.7); gquant only promises
  // well-defined behaviour and the right sizes (run under UBSan).
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) x[i] = std::sin(0.3f * i);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[40] = std::numeric_limits<float>::infinity();
  x[77] = -std::numeric_limits<float>::infinity();
  for (const GgmlTypeTraits& t : kGgmlTypeTraits) {
    if (t.quantize_row_ref == nullptr) continue;
    INFO(std::string(t.name));
    const auto bytes = Quantize(t.type, x);
    std::vector<float> y(256);
    REQUIRE_OK(DequantizeGgml(t.type, bytes, y));
  }
}

// ---- round trips ----

enum class Dist { kNormal, kUniform, kOutliers, kConstantBlocks, kNegativeBlocks };
constexpr const char* kDistNames[] = {"normal", "uniform", "outliers", "constant", "negative"};

std::vector<float> Sample(Dist dist, size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    switch (dist) {
      case Dist::kNormal:
        x[i] = normal(rng);
        break;
      case Dist::kUniform:
        x[i] = uniform(rng);
        break;
      case Dist::kOutliers:
        x[i] = normal(rng) * (rng() % 100 == 0 ? 30.0f : 1.0f);
        break;
      case Dist::kConstantBlocks:
        x[i] = i % 256 == 0 ? normal(rng) + 0.01f : x[i - 1];
        break;
      case Dist::kNegativeBlocks:
        x[i] = -std::fabs(normal(rng)) - 0.05f;
        break;
    }
  }
  return x;
}

// Bounds on RMS(error)/RMS(x), about 1.3x the worst of 10 seeds measured on
// 16 x 4096 elements. The N(0,1) values agree with ggml's own (spec §6.8:
// Q8_0 0.0053, Q6_K 0.0177, Q5_K 0.0360, Q4_K 0.0713, Q4_0 0.0858, F16
// 0.00021, BF16 0.0017), so Q8_0 sits just above 0.005 and its bound is
// 0.007. Outliers (1% of values x30) get their own bound: one huge value sets
// the scale of its whole block, which roughly doubles the error of 8- and
// 6-bit formats. All-negative blocks stay within the normal bound (the
// asymmetric formats even halve it). Constant blocks are reproduced up to the
// fp16 rounding of the scale (at most 2^-12 relative), for every format.
struct RoundTrip {
  GgmlType type;
  double typical;   // normal, uniform and all-negative data
  double outliers;  // normal data with 1% of values scaled by 30
};
constexpr RoundTrip kRoundTrips[] = {
    {GgmlType::kF32, 0.0, 0.0},        {GgmlType::kF16, 3e-4, 3e-4},
    {GgmlType::kBF16, 2.3e-3, 2.3e-3}, {GgmlType::kQ8_0, 0.007, 0.016},
    {GgmlType::kQ4_0, 0.11, 0.16},     {GgmlType::kQ4_1, 0.10, 0.155},
    {GgmlType::kQ5_0, 0.056, 0.11},    {GgmlType::kQ5_1, 0.05, 0.07},
    {GgmlType::kQ4_K, 0.093, 0.125},   {GgmlType::kQ5_K, 0.047, 0.068},
    {GgmlType::kQ6_K, 0.023, 0.044},
};
constexpr double kConstantBlockBound = 3e-4;  // measured <= 2.4e-4 over 40 seeds

double MaxRelRmse(const RoundTrip& rt, Dist dist) {
  switch (dist) {
    case Dist::kOutliers:
      return rt.outliers;
    case Dist::kConstantBlocks:
      return rt.type == GgmlType::kF32 ? 0.0 : std::max(kConstantBlockBound, rt.typical);
    default:
      return rt.typical;
  }
}

TEST_CASE("ggml ref quantizers: round trips over distributions", "[ggml]") {
  auto rng = MakeRng();
  constexpr size_t kN = 16 * 4096;
  for (const RoundTrip& rt : kRoundTrips) {
    const GgmlTypeTraits& t = *FindGgmlType(static_cast<uint32_t>(rt.type));
    for (int d = 0; d < 5; ++d) {
      const Dist dist = static_cast<Dist>(d);
      INFO(std::string(t.name) << " on " << kDistNames[d]);
      const std::vector<float> x = Sample(dist, kN, rng);
      const auto bytes = Quantize(rt.type, x);
      const auto y = Dequantize(rt.type, bytes, kN);
      std::vector<float> ref(kN);
      if (ggml_testing::RefDequantize(rt.type, bytes, ref)) {
        for (size_t i = 0; i < kN; ++i) {
          if (y[i] != ref[i]) {
            INFO("element " << i << ": " << y[i] << " vs float64 formula " << ref[i]);
            REQUIRE(y[i] == ref[i]);
          }
        }
      }
      double err2 = 0, x2 = 0;
      for (size_t i = 0; i < kN; ++i) {
        REQUIRE(std::isfinite(y[i]));
        err2 += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
        x2 += static_cast<double>(x[i]) * x[i];
      }
      const double rel = std::sqrt(err2 / x2);
      UNSCOPED_INFO(
          absl::StrFormat("%s %s rel_rmse %.5f", std::string(t.name), kDistNames[d], rel));
      REQUIRE(rel <= MaxRelRmse(rt, dist));
      // Quantizing the decoded values again is a fixed point for Q8_0 (the
      // codes and scale reproduce), which guards the packing order.
      if (rt.type == GgmlType::kQ8_0) REQUIRE(Quantize(rt.type, y) == bytes);
    }
  }
}

}  // namespace
}  // namespace gquant
