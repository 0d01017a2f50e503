// Tests for the ggml type registry and the dequantizers: table consistency,
// lookups, size checks, and hand-built / random-byte blocks decoded against an
// independent float64 implementation of each format's formula (spec gguf.md §4,
// §5), written per element from the spec's layout description.
//
// Why float64 must agree *exactly*: in every format the products ggml forms in
// float32 (fp16 scale x 6- or 8-bit sub-scale, then x code) are exact in
// float32 except the last one, and the final sum has one rounding; computing
// the same value exactly in double and rounding once to float gives the same
// bits.
#include "gquant/ggml_format.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "ggml_reference.h"
#include "gquant/dtype.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;

double H(const std::byte* p) {  // fp16 at p, as double
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return HalfToFloat(bits);
}
uint8_t U8(const std::byte* p, int i) { return std::to_integer<uint8_t>(p[i]); }

// ---- independent float64 decoders: element e of one block ----
double RefQ8_0(const std::byte* b, int e) { return H(b) * static_cast<int8_t>(U8(b, 2 + e)); }
double RefQ4_0(const std::byte* b, int e) {
  const uint8_t byte = U8(b, 2 + e % 16);
  return H(b) * ((e < 16 ? byte & 15 : byte >> 4) - 8);
}
double RefQ4_1(const std::byte* b, int e) {
  const uint8_t byte = U8(b, 4 + e % 16);
  return H(b) * (e < 16 ? byte & 15 : byte >> 4) + H(b + 2);
}
int Q5Code(const std::byte* qh, const std::byte* qs, int e) {
  const uint8_t byte = U8(qs, e % 16);
  const int high = (U8(qh, e / 8) >> (e % 8)) & 1;
  return (e < 16 ? byte & 15 : byte >> 4) + 16 * high;
}
double RefQ5_0(const std::byte* b, int e) { return H(b) * (Q5Code(b + 2, b + 6, e) - 16); }
double RefQ5_1(const std::byte* b, int e) { return H(b) * Q5Code(b + 4, b + 8, e) + H(b + 2); }
void RefScaleMin(const std::byte* scales, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = U8(scales, j) % 64;
    *m = U8(scales, j + 4) % 64;
  } else {
    *sc = U8(scales, j + 4) % 16 + 16 * (U8(scales, j - 4) / 64);
    *m = U8(scales, j + 4) / 16 + 16 * (U8(scales, j) / 64);
  }
}
int NibbleK(const std::byte* qs, int e) {
  const uint8_t byte = U8(qs, 32 * (e / 64) + e % 32);
  return (e / 32) % 2 == 0 ? byte % 16 : byte / 16;
}
double RefQ4K(const std::byte* b, int e) {
  int sc, m;
  RefScaleMin(b + 4, e / 32, &sc, &m);
  return H(b) * sc * NibbleK(b + 16, e) - H(b + 2) * m;
}
double RefQ5K(const std::byte* b, int e) {
  int sc, m;
  RefScaleMin(b + 4, e / 32, &sc, &m);
  const int q = NibbleK(b + 48, e) + 16 * ((U8(b + 16, e % 32) >> (e / 32)) & 1);
  return H(b) * sc * q - H(b + 2) * m;
}
double RefQ6K(const std::byte* b, int e) {
  const int h = e / 128, l = e % 32, k = (e % 128) / 32;
  const uint8_t low_byte = U8(b, 64 * h + l + 32 * (k % 2));
  const int low = k < 2 ? low_byte % 16 : low_byte / 16;
  const int high = (U8(b + 128, 32 * h + l) >> (2 * k)) & 3;
  return H(b + 208) * static_cast<int8_t>(U8(b + 192, e / 16)) * (low + 16 * high - 32);
}
double RefQ8K(const std::byte* b, int e) {
  float d;
  std::memcpy(&d, b, 4);
  return static_cast<double>(d) * static_cast<int8_t>(U8(b, 4 + e));
}

struct RefDecoder {
  GgmlType type;
  double (*element)(const std::byte* block, int e);
};
constexpr RefDecoder kRefDecoders[] = {
    {GgmlType::kQ8_0, RefQ8_0}, {GgmlType::kQ4_0, RefQ4_0}, {GgmlType::kQ4_1, RefQ4_1},
    {GgmlType::kQ5_0, RefQ5_0}, {GgmlType::kQ5_1, RefQ5_1}, {GgmlType::kQ4_K, RefQ4K},
    {GgmlType::kQ5_K, RefQ5K},  {GgmlType::kQ6_K, RefQ6K},  {GgmlType::kQ8_K, RefQ8K},
};

// Same float, or both NaN.
bool SameFloat(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) ||
         std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

std::vector<std::byte> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::vector<std::byte> bytes(n);
  for (auto& b : bytes) b = static_cast<std::byte>(rng() & 0xff);
  return bytes;
}

// Keeps every fp16 field finite (exponent < 31) so the comparison is about
// the integer fields, not inf*0.
void TameHalf(std::vector<std::byte>& bytes, size_t offset) {
  bytes[offset + 1] &= std::byte{0x77};
}

}  // namespace

namespace ggml_testing {
bool RefDequantize(GgmlType type, std::span<const std::byte> blocks, std::span<float> out) {
  for (const RefDecoder& ref : kRefDecoders) {
    if (ref.type != type) continue;
    const GgmlTypeTraits& t = *FindGgmlType(static_cast<uint32_t>(type));
    REQUIRE(out.size() == blocks.size() / t.block_bytes * t.block_elements);
    for (size_t b = 0; b < blocks.size() / t.block_bytes; ++b) {
      for (int e = 0; e < t.block_elements; ++e) {
        out[b * t.block_elements + e] =
            static_cast<float>(ref.element(blocks.data() + b * t.block_bytes, e));
      }
    }
    return true;
  }
  return false;
}
}  // namespace ggml_testing

namespace {

TEST_CASE("ggml traits table: ids, names and block sizes", "[ggml]") {
  REQUIRE(kGgmlTypeTraits.size() == kGgmlTypeIdCount);
  for (uint32_t id = 0; id < kGgmlTypeIdCount; ++id) {
    INFO("id " << id);
    const GgmlTypeTraits& t = kGgmlTypeTraits[id];
    REQUIRE(static_cast<uint32_t>(t.type) == id);
    if (t.block_elements == 0) {
      REQUIRE(t.dequantize_row == nullptr);
      REQUIRE(t.quantize_row_ref == nullptr);
    }
    if (t.quantize_row_ref != nullptr) REQUIRE(t.dequantize_row != nullptr);
  }
  REQUIRE(kGgmlTypeTraits[12].name == "q4_K");
  REQUIRE(kGgmlTypeTraits[30].name == "bf16");
  // Block bytes are the block structs (spec §2).
  const std::pair<GgmlType, size_t> sizes[] = {
      {GgmlType::kQ8_0, sizeof(BlockQ8_0)}, {GgmlType::kQ8_1, sizeof(BlockQ8_1)},
      {GgmlType::kQ4_0, sizeof(BlockQ4_0)}, {GgmlType::kQ4_1, sizeof(BlockQ4_1)},
      {GgmlType::kQ5_0, sizeof(BlockQ5_0)}, {GgmlType::kQ5_1, sizeof(BlockQ5_1)},
      {GgmlType::kQ2_K, sizeof(BlockQ2K)},  {GgmlType::kQ3_K, sizeof(BlockQ3K)},
      {GgmlType::kQ4_K, sizeof(BlockQ4K)},  {GgmlType::kQ5_K, sizeof(BlockQ5K)},
      {GgmlType::kQ6_K, sizeof(BlockQ6K)},  {GgmlType::kQ8_K, sizeof(BlockQ8K)},
  };
  for (const auto& [type, bytes] : sizes) {
    const GgmlTypeTraits* t = FindGgmlType(static_cast<uint32_t>(type));
    REQUIRE(t != nullptr);
    INFO(std::string(t->name));
    REQUIRE(t->block_bytes == static_cast<int64_t>(bytes));
    REQUIRE(t->is_quantized);
  }
  const int64_t expected_bytes[] = {144, 176, 210, 292, 34, 18};
  const GgmlType types[] = {GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K,
                            GgmlType::kQ8_K, GgmlType::kQ8_0, GgmlType::kQ4_0};
  for (int i = 0; i < 6; ++i) {
    REQUIRE(kGgmlTypeTraits[static_cast<uint32_t>(types[i])].block_bytes == expected_bytes[i]);
  }
  REQUIRE_FALSE(FindGgmlType(0)->is_quantized);
  REQUIRE_FALSE(FindGgmlType(30)->is_quantized);
}

TEST_CASE("ggml type lookups", "[ggml]") {
  for (uint32_t retired : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, kGgmlTypeIdCount, 1000u}) {
    INFO("id " << retired);
    REQUIRE(FindGgmlType(retired) == nullptr);
  }
  for (const GgmlTypeTraits& t : kGgmlTypeTraits) {
    if (t.block_elements == 0) continue;
    INFO(std::string(t.name));
    REQUIRE(FindGgmlType(static_cast<uint32_t>(t.type)) == &t);
    auto parsed = GgmlTypeFromName(t.name);
    REQUIRE_OK(parsed);
    REQUIRE(*parsed == t.type);
  }
  REQUIRE_STATUS_IS(GgmlTypeFromName("Q4_K"), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgmlTypeFromName("DEPRECATED"), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgmlTypeFromName(""), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("ggml row bytes", "[ggml]") {
  REQUIRE(*GgmlRowBytes(GgmlType::kQ4_K, 4096) == 16 * 144);
  REQUIRE(*GgmlRowBytes(GgmlType::kQ8_0, 64) == 68);
  REQUIRE(*GgmlRowBytes(GgmlType::kF32, 3) == 12);
  REQUIRE(*GgmlRowBytes(GgmlType::kBF16, 0) == 0);
  REQUIRE_STATUS_IS(GgmlRowBytes(GgmlType::kQ4_K, 100), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgmlRowBytes(GgmlType::kQ8_0, -32), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgmlRowBytes(static_cast<GgmlType>(4), 32), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgmlRowBytes(static_cast<GgmlType>(77), 32),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("ggml dequantize size checks", "[ggml]") {
  std::vector<std::byte> blocks(2 * 144);
  std::vector<float> out(512);
  REQUIRE_OK(DequantizeGgml(GgmlType::kQ4_K, blocks, out));
  REQUIRE_STATUS_IS(DequantizeGgml(GgmlType::kQ4_K, std::span(blocks).first(143), out),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(DequantizeGgml(GgmlType::kQ4_K, blocks, std::span(out).first(511)),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(DequantizeGgml(GgmlType::kQ4_K, std::span(blocks).first(144), out),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(DequantizeGgml(GgmlType::kQ4_K, {}, {}));
  REQUIRE_STATUS_IS(
      DequantizeGgml(GgmlType::kIQ2_XXS, std::span(blocks).first(66), std::span(out).first(256)),
      absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(DequantizeGgml(static_cast<GgmlType>(5), blocks, out),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("ggml dequantize: random bytes match the float64 formula", "[ggml]") {
  auto rng = MakeRng();
  for (const RefDecoder& ref : kRefDecoders) {
    const GgmlTypeTraits& t = *FindGgmlType(static_cast<uint32_t>(ref.type));
    INFO(std::string(t.name));
    constexpr int kBlocks = 64;
    for (bool tame : {true, false}) {
      std::vector<std::byte> bytes = RandomBytes(rng, kBlocks * t.block_bytes);
      if (tame) {
        for (int b = 0; b < kBlocks; ++b) {
          const size_t base = b * t.block_bytes;
          switch (ref.type) {
            case GgmlType::kQ6_K:
              TameHalf(bytes, base + 208);
              break;
            case GgmlType::kQ8_K:
              bytes[base + 3] &= std::byte{0x3f};
              break;  // |d| < 2
            case GgmlType::kQ4_1:
            case GgmlType::kQ5_1:
            case GgmlType::kQ4_K:
            case GgmlType::kQ5_K:
              TameHalf(bytes, base + 2);
              [[fallthrough]];
            default:
              TameHalf(bytes, base);
          }
        }
      }
      std::vector<float> out(kBlocks * t.block_elements);
      REQUIRE_OK(DequantizeGgml(ref.type, bytes, out));
      for (int b = 0; b < kBlocks; ++b) {
        for (int e = 0; e < t.block_elements; ++e) {
          const float expected =
              static_cast<float>(ref.element(bytes.data() + b * t.block_bytes, e));
          const float got = out[b * t.block_elements + e];
          if (!SameFloat(expected, got)) {
            INFO("block " << b << " element " << e << " expected " << expected << " got " << got);
            REQUIRE(SameFloat(expected, got));
          }
        }
      }
    }
  }
}

TEST_CASE("ggml dequantize: hand-built Q4_K, Q6_K, Q8_0 blocks", "[ggml]") {
  SECTION("Q4_K") {
    // d = 0.5, dmin = 0.25; sub-block j has scale 7j+1 and min 60-5j (6-bit
    // values with high bits set for j >= 4), element e has code e % 16.
    BlockQ4K block{};
    block.d = FloatToHalf(0.5f);
    block.dmin = FloatToHalf(0.25f);
    int sc[8], mn[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = 7 * j + 1;
      mn[j] = 60 - 5 * j;
      if (j < 4) {
        block.scales[j] = static_cast<uint8_t>(sc[j]);
        block.scales[j + 4] = static_cast<uint8_t>(mn[j]);
      }
    }
    for (int j = 4; j < 8; ++j) {
      block.scales[j + 4] = static_cast<uint8_t>((sc[j] & 15) | ((mn[j] & 15) << 4));
      block.scales[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      block.scales[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
    }
    for (int e = 0; e < 256; ++e) {
      const int byte = 32 * (e / 64) + e % 32;
      block.qs[byte] |= static_cast<uint8_t>((e % 16) << ((e / 32) % 2 ? 4 : 0));
    }
    std::vector<std::byte> bytes(sizeof(block));
    std::memcpy(bytes.data(), &block, sizeof(block));
    std::vector<float> out(256);
    REQUIRE_OK(DequantizeGgml(GgmlType::kQ4_K, bytes, out));
    for (int e = 0; e < 256; ++e) {
      INFO("element " << e);
      const double expected = 0.5 * sc[e / 32] * (e % 16) - 0.25 * mn[e / 32];
      REQUIRE(out[e] == static_cast<float>(expected));
    }
  }
  SECTION("Q6_K") {
    // d = -0.125, scales[s] = 8s - 64 (covers -64..56), code of element e is
    // (5e + 3) % 64, so value = d * scale * (code - 32).
    std::vector<int> code(256);
    for (int e = 0; e < 256; ++e) code[e] = (5 * e + 3) % 64;
    BlockQ6K block{};
    block.d = FloatToHalf(-0.125f);
    for (int s = 0; s < 16; ++s) block.scales[s] = static_cast<int8_t>(8 * s - 64);
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, l = e % 32, k = (e % 128) / 32;
      block.ql[64 * h + l + 32 * (k % 2)] |=
          static_cast<uint8_t>((code[e] & 15) << (k < 2 ? 0 : 4));
      block.qh[32 * h + l] |= static_cast<uint8_t>((code[e] >> 4) << (2 * k));
    }
    std::vector<std::byte> bytes(sizeof(block));
    std::memcpy(bytes.data(), &block, sizeof(block));
    std::vector<float> out(256);
    REQUIRE_OK(DequantizeGgml(GgmlType::kQ6_K, bytes, out));
    for (int e = 0; e < 256; ++e) {
      INFO("element " << e);
      REQUIRE(out[e] == static_cast<float>(-0.125 * (8 * (e / 16) - 64) * (code[e] - 32)));
    }
  }
  SECTION("Q8_0") {
    BlockQ8_0 block{};
    block.d = FloatToHalf(0.0078125f);
    for (int j = 0; j < 32; ++j) block.qs[j] = static_cast<int8_t>(8 * j - 128);
    std::vector<std::byte> bytes(sizeof(block));
    std::memcpy(bytes.data(), &block, sizeof(block));
    std::vector<float> out(32);
    REQUIRE_OK(DequantizeGgml(GgmlType::kQ8_0, bytes, out));
    for (int j = 0; j < 32; ++j) REQUIRE(out[j] == static_cast<float>((8 * j - 128) / 128.0));
  }
}

TEST_CASE("ggml F16/BF16 conversions follow ggml", "[ggml]") {
  auto rng = MakeRng();
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 100000; ++i) {
    const float f = std::bit_cast<float>(any_bits(rng));
    if (std::isnan(f)) continue;
    INFO("bits " << std::bit_cast<uint32_t>(f));
    REQUIRE(ggml_ref::Fp32ToFp16(f) == FloatToHalf(f));  // IEEE RNE (spec §3)
    REQUIRE(ggml_ref::Fp32ToBf16(f) == FloatToBFloat16(f));
  }
  // NaN: fp16 becomes 0x7E00 with the sign; bf16 keeps its top bits, quieted.
  REQUIRE(ggml_ref::Fp32ToFp16(std::bit_cast<float>(0xff800001u)) == 0xfe00);
  REQUIRE(ggml_ref::Fp32ToBf16(std::bit_cast<float>(0x7f800001u)) == 0x7fc0);
  REQUIRE(ggml_ref::Fp32ToFp16(65520.0f) == 0x7c00);        // overflow to inf
  REQUIRE(ggml_ref::Fp32ToFp16(5.9604645e-08f) == 0x0001);  // smallest subnormal kept
  // Round trips through the F16/BF16 rows decode every 16-bit pattern exactly.
  std::vector<std::byte> bytes(2 * 65536);
  for (uint32_t b = 0; b < 65536; ++b) std::memcpy(bytes.data() + 2 * b, &b, 2);
  std::vector<float> out(65536);
  REQUIRE_OK(DequantizeGgml(GgmlType::kF16, bytes, out));
  for (uint32_t b = 0; b < 65536; ++b) REQUIRE(SameFloat(out[b], HalfToFloat(b)));
  REQUIRE_OK(DequantizeGgml(GgmlType::kBF16, bytes, out));
  for (uint32_t b = 0; b < 65536; ++b) REQUIRE(std::bit_cast<uint32_t>(out[b]) == b << 16);
}

}  // namespace
}  // namespace gquant
