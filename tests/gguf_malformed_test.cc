// Malformed GGUF files: each must fail with a specific code and a message that
// names what is wrong. Files are built byte by byte with Builder.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "gquant/gguf.h"
#include "test_util.h"

namespace gquant {
namespace {

class Builder {
 public:
  Builder& U8(uint8_t v) { return Le(v, 1); }
  Builder& U32(uint32_t v) { return Le(v, 4); }
  Builder& U64(uint64_t v) { return Le(v, 8); }
  Builder& Str(std::string_view s) {
    U64(s.size());
    for (char c : s) out_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Builder& Header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    return U32(kGgufMagic).U32(version).U64(tensors).U64(kvs);
  }
  Builder& KvString(std::string_view key, std::string_view value) {
    return Str(key).U32(8).Str(value);
  }
  Builder& KvU32(std::string_view key, uint32_t value) { return Str(key).U32(4).U32(value); }
  Builder& Tensor(std::string_view name, std::vector<int64_t> dims, uint32_t type,
                  uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(dims.size()));
    for (int64_t d : dims) U64(static_cast<uint64_t>(d));
    return U32(type).U64(offset);
  }
  Builder& PadTo(size_t alignment) {
    while (out_.size() % alignment != 0) out_.push_back(std::byte{0});
    return *this;
  }
  Builder& Data(size_t n) {
    for (size_t i = 0; i < n; ++i) out_.push_back(static_cast<std::byte>(i * 7 + 1));
    return *this;
  }
  const std::vector<std::byte>& bytes() const { return out_; }

 private:
  Builder& Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
    return *this;
  }
  std::vector<std::byte> out_;
};

void ExpectError(const Builder& b, absl::StatusCode code, const std::string& substring) {
  auto file = GgufFile::Parse(b.bytes(), "bad.gguf");
  REQUIRE_STATUS_IS(file, code);
  const std::string message(file.status().message());
  CHECK_THAT(message, Catch::Matchers::Contains(substring));
  CHECK_THAT(message, Catch::Matchers::Contains("bad.gguf"));
}

// One F32 tensor 'w' of 8 elements (32 bytes) with a valid layout.
Builder OneTensor(std::vector<int64_t> dims = {8}, uint32_t type = 0, uint64_t offset = 0) {
  Builder b;
  b.Header(1, 1).KvString("general.architecture", "llama").Tensor("w", dims, type, offset);
  return b.PadTo(32);
}

TEST_CASE("GGUF builder makes a valid file", "[gguf]") {
  Builder b = OneTensor();
  b.Data(32);
  REQUIRE_OK(GgufFile::Parse(b.bytes(), "ok.gguf"));
  Builder v2;
  v2.Header(0, 0, 2);
  REQUIRE_OK(GgufFile::Parse(v2.bytes(), "v2.gguf"));
}

TEST_CASE("GGUF rejects malformed headers", "[gguf]") {
  using C = absl::StatusCode;
  ExpectError(Builder(), C::kOutOfRange, "header: expected at least 24 bytes, but the file has 0");
  ExpectError(Builder().U32(kGgufMagic).U32(3), C::kOutOfRange, "header");
  ExpectError(Builder().U32(0x46554746).U32(3).U64(0).U64(0), C::kDataLoss, "magic");
  ExpectError(Builder().Header(0, 0, 1), C::kUnimplemented, "expected 2 or 3, but got 1");
  ExpectError(Builder().Header(0, 0, 4), C::kUnimplemented, "expected 2 or 3, but got 4");
  ExpectError(Builder().Header(0, 0, 0), C::kDataLoss, "version");
  ExpectError(Builder().Header(0, 0, 0x03000000), C::kUnimplemented, "big-endian");
  ExpectError(Builder().Header(0, 0, 0xDEADBEEF), C::kDataLoss, "version");
  ExpectError(Builder().Header(uint64_t{1} << 40, 0), C::kDataLoss, "tensor_count");
  ExpectError(Builder().Header(~uint64_t{0}, 0), C::kDataLoss, "tensor_count");
  ExpectError(Builder().Header(0, uint64_t{1} << 40), C::kDataLoss, "kv_count");
  ExpectError(Builder().Header(0, uint64_t{1} << 63), C::kDataLoss, "kv_count");
}

TEST_CASE("GGUF rejects malformed metadata", "[gguf]") {
  using C = absl::StatusCode;
  {
    Builder b;
    b.Header(0, 1).Str("general.name").U32(8).U64(1000).Str("short");
    ExpectError(b, C::kOutOfRange, "string value");
  }
  {
    Builder b;
    b.Header(0, 1).Str("k").U32(8).U64(~uint64_t{0});
    ExpectError(b, C::kOutOfRange, "18446744073709551615");
  }
  {
    Builder b;
    b.Header(0, 1).U64(1000).U32(0).U32(0);
    ExpectError(b, C::kOutOfRange, "metadata key");
  }
  {
    Builder b;
    b.Header(0, 1).Str("k").U32(13).U64(0);
    ExpectError(b, C::kDataLoss, "value type of key 'k': expected an id in 0..12, but got 13");
  }
  {
    Builder b;
    b.Header(0, 1).Str("k").U32(9).U32(77).U64(0);
    ExpectError(b, C::kDataLoss, "but got 77");
  }
  {
    Builder b;
    b.Header(0, 1).Str("arr").U32(9).U32(4).U64(1000).U32(1).U32(2);
    ExpectError(b, C::kOutOfRange, "array count of key 'arr'");
  }
  {
    Builder b;
    b.Header(0, 1).Str("deep").U32(9);
    for (int i = 0; i < kGgufMaxArrayDepth; ++i) b.U32(9).U64(1);
    b.U32(0).U64(0);
    ExpectError(b, C::kUnimplemented, "array nesting of key 'deep'");
  }
  {
    Builder b;
    b.Header(0, 2).KvU32("dup", 1).KvU32("dup", 2);
    ExpectError(b, C::kDataLoss, "metadata key 'dup': expected unique keys");
  }
  {
    Builder b;
    b.Header(0, 1).KvU32("", 1);
    ExpectError(b, C::kDataLoss, "expected a non-empty string");
  }
  {
    Builder b;
    b.Header(0, 1).KvU32("general.alignment", 0);
    ExpectError(b, C::kDataLoss, "'general.alignment': expected a power of two, but got 0");
  }
  {
    Builder b;
    b.Header(0, 1).KvU32("general.alignment", 48);
    ExpectError(b, C::kDataLoss, "expected a power of two, but got 48");
  }
  {
    Builder b;
    b.Header(0, 1).Str("general.alignment").U32(10).U64(32);
    ExpectError(b, C::kDataLoss, "expected UINT32, but got UINT64");
  }
}

TEST_CASE("GGUF rejects malformed tensor infos", "[gguf]") {
  using C = absl::StatusCode;
  ExpectError(OneTensor({1, 1, 1, 1, 8}).Data(32), C::kDataLoss,
              "tensor 'w' n_dims: expected 1..4, but got 5");
  ExpectError(OneTensor({}).Data(32), C::kDataLoss, "n_dims: expected 1..4, but got 0");
  ExpectError(OneTensor({8, -1}).Data(32), C::kDataLoss, "tensor 'w' dim 1: expected >= 0");
  ExpectError(OneTensor({int64_t{1} << 40, int64_t{1} << 40}).Data(32), C::kDataLoss, "fits int64");
  ExpectError(OneTensor({int64_t{1} << 62, 1}, 1).Data(32), C::kDataLoss, "overflows");
  ExpectError(OneTensor({8}, 4).Data(32), C::kUnimplemented, "but got 4");
  ExpectError(OneTensor({8}, 1000).Data(32), C::kUnimplemented, "but got 1000");
  ExpectError(OneTensor({48}, 8).Data(64), C::kDataLoss, "block size 32 of type 8, but got 48");
  ExpectError(OneTensor({8}, 0, 16).Data(64), C::kDataLoss,
              "tensor 'w' offset: expected a multiple of 32, but got 16");
  ExpectError(OneTensor({8}, 0, 32).Data(64), C::kDataLoss, "leaves a gap");
  ExpectError(OneTensor().Data(16), C::kOutOfRange, "tensor 'w' data");
  ExpectError(OneTensor({6}).Data(24), C::kOutOfRange, "tensor 'w' padding");
  {
    Builder b;
    b.Header(2, 0).Tensor("w", {8}, 0, 0).Tensor("w", {8}, 0, 32).PadTo(32).Data(64);
    ExpectError(b, C::kDataLoss, "tensor 'w': expected unique names");
  }
  {
    Builder b;
    b.Header(2, 0).Tensor("a", {16}, 0, 0).Tensor("b", {8}, 0, 32).PadTo(32).Data(96);
    ExpectError(b, C::kDataLoss, "tensor 'b' offset: expected 64, but got 32 (overlaps");
  }
  {
    Builder b;
    b.Header(1, 0).Tensor(std::string(64, 'n'), {8}, 0, 0).PadTo(32).Data(32);
    ExpectError(b, C::kDataLoss, "expected 1..63 bytes, but got 64");
  }
  {
    Builder b;
    b.Header(1, 0).Str("w").U32(4).U64(8).U64(1).U64(1);
    ExpectError(b, C::kOutOfRange, "tensor dim");
  }
  {
    Builder b;
    b.Header(1, 1).KvU32("general.alignment", 64).Tensor("w", {8}, 0, 32).PadTo(64).Data(64);
    ExpectError(b, C::kDataLoss, "expected a multiple of 64, but got 32");
  }
}

// ---- hostile inputs (issue 8) ----

// Parses `b` expecting `code`, within a second and without throwing (the
// declared sizes below would need terabytes if the reader allocated them).
void ExpectFastError(const Builder& b, absl::StatusCode code, const std::string& substring) {
  const auto start = std::chrono::steady_clock::now();
  REQUIRE_NOTHROW(ExpectError(b, code, substring));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
}

TEST_CASE("GGUF: lengths and counts near 2^64 fail fast", "[gguf][hostile]") {
  using C = absl::StatusCode;
  constexpr uint64_t kMax = ~uint64_t{0};
  ExpectFastError(Builder().Header(0, 1).U64(kMax).Data(16), C::kOutOfRange, "metadata key");
  ExpectFastError(Builder().Header(0, 1).Str("k").U32(9).U32(8).U64(kMax), C::kOutOfRange,
                  "array count of key 'k'");
  ExpectFastError(Builder().Header(0, 1).Str("k").U32(9).U32(0).U64(uint64_t{1} << 40).U64(0),
                  C::kOutOfRange, "array count of key 'k'");
  // An array of 2^40 empty arrays: 12 bytes each in the file, never allocated.
  ExpectFastError(Builder().Header(0, 1).Str("k").U32(9).U32(9).U64(uint64_t{1} << 40),
                  C::kOutOfRange, "array count of key 'k'");
  ExpectFastError(Builder().Header(1, 0).U64(kMax - 7).Data(24), C::kOutOfRange, "tensor name");
  ExpectFastError(Builder().Header(kMax, kMax), C::kDataLoss, "tensor_count");
  ExpectFastError(Builder().Header(0, kMax), C::kDataLoss, "kv_count");
  // A 4 PiB F32 tensor (2^50 elements) in a 200-byte file.
  ExpectFastError(OneTensor({int64_t{1} << 25, int64_t{1} << 25}).Data(32), C::kOutOfRange,
                  "tensor 'w' data: expected to end by file size");
  // Dims whose product overflows int64 only at the last dim.
  ExpectFastError(OneTensor({int64_t{1} << 31, int64_t{1} << 31, 4}).Data(32), C::kDataLoss,
                  "tensor 'w' dims: expected an element count that fits int64");
  ExpectFastError(OneTensor({8}, 0, kMax - 31).Data(32), C::kDataLoss,
                  "tensor 'w' offset: expected 0");
}

TEST_CASE("GGUF: metadata values are capped, not trusted to fit in memory", "[gguf][hostile]") {
  // One byte per UINT8 element in the file, ~40 in memory: an array just over
  // the cap (a 16 MiB file) is refused before anything is allocated for it.
  Builder b;
  b.Header(0, 2).KvU32("small", 1).Str("big").U32(9).U32(0).U64(kGgufMaxMetadataValues);
  std::vector<std::byte> bytes = b.bytes();
  bytes.resize(bytes.size() + kGgufMaxMetadataValues);
  const auto start = std::chrono::steady_clock::now();
  const auto file = GgufFile::Parse(bytes, "big.gguf");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  REQUIRE_STATUS_IS(file, absl::StatusCode::kResourceExhausted);
  const std::string message(file.status().message());
  CHECK_THAT(message, Catch::Matchers::Contains("big.gguf"));
  CHECK_THAT(message, Catch::Matchers::Contains("array count of key 'big'"));
}

TEST_CASE("GGUF: keys, strings and names are bytes, kept verbatim", "[gguf][hostile]") {
  // GGUF does not require valid UTF-8 (neither does ggml's reader): invalid
  // bytes and NULs are kept as they are and never used as paths.
  const std::string nul_key("a\0b", 3), bad_utf8("\xc0\xaf\xff", 3);
  Builder b;
  b.Header(2, 2).Str(nul_key).U32(8).Str(bad_utf8).KvString("general.name", "../../etc/passwd");
  b.Tensor("../../x", {8}, 0, 0).Tensor(std::string("/t\0", 3), {8}, 0, 32).PadTo(32).Data(64);
  const auto file = GgufFile::Parse(b.bytes(), "names.gguf");
  REQUIRE_OK(file);
  REQUIRE(file->Find(nul_key) != nullptr);
  CHECK(*file->Find(nul_key)->AsString() == bad_utf8);
  CHECK(file->Find("a") == nullptr);
  CHECK(file->FindTensor("../../x") != nullptr);
  CHECK(file->FindTensor(std::string("/t\0", 3)) != nullptr);
  CHECK(file->FindTensor("/t") == nullptr);
}

TEST_CASE("GGUF: a file truncated after Open is caught before tensor reads", "[gguf][hostile]") {
  testing::TempDir dir;
  const std::string path = dir.File("shrinking.gguf");
  Builder b = OneTensor({16384});  // 64 KiB of F32
  b.Data(65536);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.bytes().data()),
              static_cast<std::streamsize>(b.bytes().size()));
  }
  const auto file = GgufFile::Open(path);
  REQUIRE_OK(file);
  REQUIRE_OK(file->CheckNotTruncated());
  std::filesystem::resize_file(path, file->data_start() + 64);
  const absl::Status status = file->CheckNotTruncated();
  REQUIRE_STATUS_IS(status, absl::StatusCode::kDataLoss);
  CHECK_THAT(std::string(status.message()), Catch::Matchers::Contains(path));
  // Parsed bytes have no file behind them to shrink.
  REQUIRE_OK(GgufFile::Parse(b.bytes(), "bytes")->CheckNotTruncated());
}

}  // namespace
}  // namespace gquant
