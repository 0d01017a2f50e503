#include "gquant/gguf_unpack.h"

#include <bit>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gquant/ggml_format.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/thread_pool.h"
#include "test_util.h"

namespace gquant {
namespace {

constexpr GgmlType kUnpackable[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0,
                                    GgmlType::kQ4_1, GgmlType::kQ5_1, GgmlType::kQ4_K,
                                    GgmlType::kQ5_K, GgmlType::kQ6_K};

std::string NameOf(GgmlType type) {
  return std::string(FindGgmlType(static_cast<uint32_t>(type))->name);
}

// Writes `packed` alone into a checkpoint and reads it back dequantized.
std::vector<float> DequantizeThroughFile(const PackedWeight& packed) {
  testing::TempDir dir;
  const std::string path = dir.File("w.safetensors");
  auto writer = QuantizedCheckpointWriter::Create(path, {{packed.layout().fqn(), packed.layout()}});
  REQUIRE_OK(writer);
  REQUIRE_OK((*writer)->WritePacked(packed));
  REQUIRE_OK((*writer)->Commit());
  auto file = QuantizedCheckpoint::Open(path);
  REQUIRE_OK(file);
  auto values = file->Dequantize(packed.layout().fqn());
  REQUIRE_OK(values);
  return *std::move(values);
}

// Bit-identical, NaN matching any NaN (payloads may differ through fp16 scales).
void RequireSameFloats(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  size_t mismatches = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool same = std::isnan(got[i])
                          ? std::isnan(want[i])
                          : std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(want[i]);
    if (!same && mismatches++ == 0) first = i;
  }
  INFO("first mismatch at " << first << ": " << got[first] << " vs ggml " << want[first]);
  REQUIRE(mismatches == 0);
}

std::vector<float> Sample(int dist, size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::student_t_distribution<float> heavy(3.0f);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    switch (dist) {
      case 0:  // a weight-like scale
        x[i] = 0.02f * normal(rng);
        break;
      case 1:  // heavy tails
        x[i] = heavy(rng);
        break;
      case 2:  // 1% outliers x40
        x[i] = normal(rng) * (rng() % 100 == 0 ? 40.0f : 1.0f);
        break;
      default:  // all positive, offset (exercises the mins)
        x[i] = 3.0f + std::fabs(normal(rng));
        break;
    }
  }
  return x;
}

TEST_CASE("GGUF unpacking reproduces ggml's dequantization bit for bit", "[gguf_unpack]") {
  auto rng = testing::MakeRng();
  ThreadPool pool(3);
  // 3-D with a row count that is not a multiple of the unpacker's row tasks.
  const std::vector<int64_t> shapes[] = {{37, 512}, {3, 21, 256}};
  for (GgmlType type : kUnpackable) {
    for (const std::vector<int64_t>& shape : shapes) {
      for (int dist = 0; dist < 4; ++dist) {
        INFO(NameOf(type) << " " << ShapeToString(shape) << " distribution " << dist);
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        const std::vector<float> x = Sample(dist, n, rng);
        auto row_bytes = GgmlRowBytes(type, n);
        REQUIRE_OK(row_bytes);
        std::vector<std::byte> blocks(*row_bytes);
        REQUIRE_OK(QuantizeGgmlRef(type, x, blocks));
        std::vector<float> want(n);
        REQUIRE_OK(DequantizeGgml(type, blocks, want));

        auto packed = UnpackGgufWeight("blk.w", shape, type, blocks, dist % 2 ? &pool : nullptr);
        REQUIRE_OK(packed);
        auto format = GgufUnpackFormatOf(type);
        REQUIRE_OK(format);
        REQUIRE(packed->layout().format() == format->format);
        RequireSameFloats(DequantizeThroughFile(*packed), want);
      }
    }
  }
}

TEST_CASE("GGUF unpacking is exact on arbitrary block bytes", "[gguf_unpack]") {
  // Random bytes reach every code, every 6-bit scale/min and negative d.
  auto rng = testing::MakeRng();
  for (GgmlType type : kUnpackable) {
    INFO(NameOf(type));
    const GgmlTypeTraits& traits = *FindGgmlType(static_cast<uint32_t>(type));
    const int64_t rows = 5, cols = 512;
    std::vector<std::byte> blocks(rows * cols / traits.block_elements * traits.block_bytes);
    for (std::byte& b : blocks) b = static_cast<std::byte>(rng());
    // Keep fp16 scales finite and moderate so products stay finite too.
    for (size_t at = 0; at < blocks.size(); at += traits.block_bytes) {
      const size_t d_at = type == GgmlType::kQ6_K ? 208 : 0;
      const int halves = (type == GgmlType::kQ4_1 || type == GgmlType::kQ5_1 ||
                          type == GgmlType::kQ4_K || type == GgmlType::kQ5_K)
                             ? 2
                             : 1;
      for (int h = 0; h < halves; ++h) {
        blocks[at + d_at + 2 * h + 1] &= std::byte{0xBF};  // exponent below 16: |d| < 2
      }
    }
    std::vector<float> want(rows * cols);
    REQUIRE_OK(DequantizeGgml(type, blocks, want));
    auto packed = UnpackGgufWeight("m.w", {rows, cols}, type, blocks);
    REQUIRE_OK(packed);
    RequireSameFloats(DequantizeThroughFile(*packed), want);
  }
}

TEST_CASE("GGUF unpacking: hand-built blocks give the expected codes", "[gguf_unpack]") {
  // Q4_K: d = 0.5, dmin = 0.25, sub-block j has sc = j + 1 and m = 2j; element
  // e holds code e % 16. Expected w = 0.5 (j + 1) q - 0.25 (2j).
  BlockQ4K block{};
  block.d = FloatToHalf(0.5f);
  block.dmin = FloatToHalf(0.25f);
  for (int j = 0; j < 8; ++j) {
    const int sc = j + 1, m = 2 * j;
    if (j < 4) {
      block.scales[j] = static_cast<uint8_t>(sc);
      block.scales[j + 4] = static_cast<uint8_t>(m);
    } else {
      block.scales[j + 4] = static_cast<uint8_t>((sc & 0xF) | ((m & 0xF) << 4));
      block.scales[j - 4] |= static_cast<uint8_t>((sc >> 4) << 6);
      block.scales[j] |= static_cast<uint8_t>((m >> 4) << 6);
    }
  }
  for (int e = 0; e < 256; ++e) {
    const int q = e % 16;
    uint8_t& byte = block.qs[32 * (e / 64) + e % 32];
    byte |= static_cast<uint8_t>((e / 32) % 2 == 0 ? q : q << 4);
  }
  std::vector<std::byte> bytes(sizeof(block));
  std::memcpy(bytes.data(), &block, sizeof(block));
  auto packed = UnpackGgufWeight("m.w", {1, 256}, GgmlType::kQ4_K, bytes);
  REQUIRE_OK(packed);
  const std::vector<float> w = DequantizeThroughFile(*packed);
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32;
    REQUIRE(w[e] == 0.5f * (j + 1) * (e % 16) - 0.25f * (2 * j));
  }
  // The stored parts: packed nibbles in gquant's order (2j low, 2j+1 high),
  // F32 scale d*sc and min dmin*m per 32.
  const auto qdata = packed->qdata();
  REQUIRE(qdata[0] == std::byte{0x10});  // elements 0, 1
  float scale3, min3;
  std::memcpy(&scale3, packed->scale().data() + 3 * 4, 4);
  std::memcpy(&min3, packed->zero_point().data() + 3 * 4, 4);
  REQUIRE(scale3 == 2.0f);
  REQUIRE(min3 == 1.5f);
}

TEST_CASE("GGUF unpacking errors", "[gguf_unpack]") {
  std::vector<std::byte> q4k(2 * sizeof(BlockQ4K), std::byte{0x11});
  REQUIRE_STATUS_IS(UnpackGgufWeight("m.w", {2, 256}, GgmlType::kQ2_K, q4k),
                    absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(UnpackGgufWeight("m.w", {2, 256}, GgmlType::kF16, q4k),
                    absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(UnpackGgufWeight("m.w", {3, 256}, GgmlType::kQ4_K, q4k),
                    absl::StatusCode::kInvalidArgument);  // too few bytes
  REQUIRE_STATUS_IS(UnpackGgufWeight("m.w", {512}, GgmlType::kQ4_K, q4k),
                    absl::StatusCode::kInvalidArgument);  // 1-D
  REQUIRE_STATUS_IS(UnpackGgufWeight("m.w", {4, 128}, GgmlType::kQ4_K, q4k),
                    absl::StatusCode::kInvalidArgument);  // K not a multiple of 256
  const auto status = UnpackGgufWeight("blk.0.attn_q.weight", {3, 256}, GgmlType::kQ4_K, q4k);
  REQUIRE(std::string(status.status().message()).find("blk.0.attn_q.weight") != std::string::npos);
}

}  // namespace
}  // namespace gquant
