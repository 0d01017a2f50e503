// GGUF writer -> reader round trips, the annotated minimal file of
// spec/gguf.md §1.9, and the value accessors.
#include "gquant/gguf.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "test_util.h"

namespace gquant {
namespace {

using testing::MakeRng;
using testing::TempDir;

std::vector<std::byte> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xFF);
  if (n > 0) out[0] = std::byte{0x5A};  // never all zeros
  return out;
}

std::vector<std::byte> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

GgufValue Nested() {
  auto inner1 = GgufValue::ArrayOf<int32_t>({1, -2, 3});
  auto inner2 = GgufValue::ArrayOf<int32_t>({});
  auto mid = GgufValue::MakeArray(GgufValueType::kArray, {inner1, inner2});
  REQUIRE_OK(mid);
  auto outer = GgufValue::MakeArray(GgufValueType::kArray, {*mid});
  REQUIRE_OK(outer);
  return *outer;
}

std::vector<std::pair<std::string, GgufValue>> AllValueKinds() {
  return {
      {"general.architecture", GgufValue("llama")},
      {"t.u8", GgufValue(uint8_t{200})},
      {"t.i8", GgufValue(int8_t{-100})},
      {"t.u16", GgufValue(uint16_t{60000})},
      {"t.i16", GgufValue(int16_t{-30000})},
      {"t.u32", GgufValue(uint32_t{4000000000u})},
      {"t.i32", GgufValue(int32_t{-2000000000})},
      {"t.f32", GgufValue(1.5f)},
      {"t.bool", GgufValue(true)},
      {"t.string", GgufValue("hello")},
      {"t.empty_string", GgufValue("")},
      {"t.utf8", GgufValue("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80")},
      {"t.u64", GgufValue(uint64_t{0xFFFFFFFFFFFFFFFFull})},
      {"t.i64", GgufValue(int64_t{-9000000000000000000})},
      {"t.f64", GgufValue(-2.25e300)},
      {"a.u8", GgufValue::ArrayOf<uint8_t>({0, 1, 255})},
      {"a.i8", GgufValue::ArrayOf<int8_t>({-128, 127})},
      {"a.u16", GgufValue::ArrayOf<uint16_t>({1, 65535})},
      {"a.i16", GgufValue::ArrayOf<int16_t>({-1, 2})},
      {"a.u32", GgufValue::ArrayOf<uint32_t>({7, 8, 9})},
      {"a.i32", GgufValue::ArrayOf<int32_t>({-7})},
      {"a.f32", GgufValue::ArrayOf<float>({0.5f, -1e30f})},
      {"a.bool", GgufValue::ArrayOf<bool>({true, false, true})},
      {"a.string", GgufValue::ArrayOf<std::string>({"a", "", "\xC3\xA9t\xC3\xA9"})},
      {"a.u64", GgufValue::ArrayOf<uint64_t>({1ull << 63})},
      {"a.i64", GgufValue::ArrayOf<int64_t>({-(1ll << 62)})},
      {"a.f64", GgufValue::ArrayOf<double>({3.25, -0.0})},
      {"a.empty", GgufValue::ArrayOf<uint32_t>({})},
      {"a.nested", Nested()},
  };
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> dims;
  uint32_t type;
  uint64_t bytes;
};

std::vector<TensorSpec> SomeTensors() {
  return {
      {"f32", {8, 3}, 0, 8 * 3 * 4},
      {"f16", {16}, 1, 32},
      {"q8_0", {64, 2}, 8, 2 * 2 * 34},
      {"q4_k", {256, 2, 2}, 12, 4 * 144},
      {"q6_k", {512, 1}, 14, 2 * 210},
      {"i8", {5, 1, 1, 3}, 24, 15},
      {"q4_0", {32}, 2, 18},
  };
}

void CheckRoundTrip(uint32_t alignment, bool set_alignment) {
  auto rng = MakeRng();
  TempDir dir;
  const std::string path = dir.File("model.gguf");
  const auto kvs = AllValueKinds();
  const auto specs = SomeTensors();
  std::vector<std::vector<std::byte>> payloads;
  {
    auto writer = GgufWriter::Create(path);
    REQUIRE_OK(writer);
    if (set_alignment) (*writer)->SetMetadata("general.alignment", GgufValue(alignment));
    for (const auto& [k, v] : kvs) (*writer)->SetMetadata(k, v);
    for (const auto& s : specs) {
      REQUIRE_OK((*writer)->AddTensor(s.name, s.dims, s.type, s.bytes));
      payloads.push_back(RandomBytes(rng, s.bytes));
    }
    // Any order.
    for (size_t i = specs.size(); i-- > 0;) {
      REQUIRE_OK((*writer)->WriteTensorData(specs[i].name, payloads[i]));
    }
    REQUIRE_OK((*writer)->Commit());
  }
  auto file = GgufFile::Open(path);
  REQUIRE_OK(file);
  CHECK(file->version() == 3);
  CHECK(file->alignment() == alignment);
  CHECK(file->data_start() % alignment == 0);
  const size_t skip = set_alignment ? 1 : 0;
  REQUIRE(file->metadata().size() == kvs.size() + skip);
  for (size_t i = 0; i < kvs.size(); ++i) {
    INFO(kvs[i].first);
    CHECK(file->metadata()[i + skip].first == kvs[i].first);
    CHECK(file->metadata()[i + skip].second == kvs[i].second);
    REQUIRE(file->Find(kvs[i].first) != nullptr);
  }
  REQUIRE(file->tensors().size() == specs.size());
  uint64_t end = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const GgufTensorInfo& t = file->tensors()[i];
    INFO(t.name);
    CHECK(t.name == specs[i].name);
    CHECK(t.dims == specs[i].dims);
    CHECK(t.type == specs[i].type);
    CHECK(t.num_bytes == specs[i].bytes);
    CHECK(t.offset % alignment == 0);
    CHECK(t.offset >= end);
    end = t.offset + t.num_bytes;
    CHECK(file->FindTensor(t.name) == &t);
    auto data = file->TensorData(t);
    REQUIRE(data.size() == payloads[i].size());
    CHECK(std::memcmp(data.data(), payloads[i].data(), data.size()) == 0);
  }
  // Padding after the last tensor too, as ggml writes and requires.
  const auto bytes = ReadAll(path);
  CHECK(bytes.size() % alignment == 0);
  CHECK(bytes.size() == file->data_start() + ((end + alignment - 1) / alignment) * alignment);
}

TEST_CASE("GGUF round trip with every value type and several tensors", "[gguf]") {
  CheckRoundTrip(32, false);
}

TEST_CASE("GGUF round trip honours general.alignment", "[gguf]") {
  CheckRoundTrip(64, true);
  CheckRoundTrip(256, true);
}

TEST_CASE("GGUF typed metadata helpers", "[gguf]") {
  TempDir dir;
  const std::string path = dir.File("m.gguf");
  auto writer = GgufWriter::Create(path);
  REQUIRE_OK(writer);
  (*writer)->SetMetadata("a", GgufValue(uint32_t{7}));
  (*writer)->SetMetadata("b", GgufValue("x"));
  (*writer)->SetMetadata("c", GgufValue(0.5f));
  (*writer)->SetMetadata("d", GgufValue(int32_t{-1}));
  (*writer)->SetMetadata("a", GgufValue(uint64_t{9}));  // keeps position
  REQUIRE_OK((*writer)->Commit());
  auto file = GgufFile::Open(path);
  REQUIRE_OK(file);
  REQUIRE(file->metadata().size() == 4);
  CHECK(file->metadata()[0].first == "a");
  CHECK(*file->GetUint("a") == 9);
  CHECK(*file->GetString("b") == "x");
  CHECK(*file->GetFloat("c") == 0.5);
  REQUIRE_STATUS_IS(file->GetUint("missing"), absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(file->GetUint("b"), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(file->GetUint("d"), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(file->GetString("a"), absl::StatusCode::kInvalidArgument);
  CHECK(*file->Find("d")->AsInt64() == -1);
  CHECK(file->tensors().empty());
  CHECK(file->FindTensor("w") == nullptr);
  REQUIRE_STATUS_IS(GgufValue(uint64_t{1} << 63).AsInt64(), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgufValue(true).AsArray(), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgufValue::MakeArray(GgufValueType::kUint8, {GgufValue(int8_t{1})}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GgufFile::Open(dir.File("none.gguf")), absl::StatusCode::kNotFound);
}

// spec §1.9: one KV, tensor 'w' Q8_0 ne=[32,2], 224 bytes.
std::vector<std::byte> MinimalFile(std::span<const std::byte> payload) {
  std::vector<std::byte> out;
  auto put = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
  };
  auto str = [&](std::string_view s) {
    put(s.size(), 8);
    for (char c : s) out.push_back(static_cast<std::byte>(c));
  };
  put(0x46554747, 4);
  put(3, 4);
  put(1, 8);
  put(1, 8);
  str("general.architecture");
  put(8, 4);
  str("llama");
  REQUIRE(out.size() == 0x45);
  str("w");
  put(2, 4);
  put(32, 8);
  put(2, 8);
  put(8, 4);
  put(0, 8);
  REQUIRE(out.size() == 0x6e);
  out.resize(0x80, std::byte{0});
  out.insert(out.end(), payload.begin(), payload.end());
  out.resize(224, std::byte{0});
  return out;
}

TEST_CASE("GGUF annotated minimal file parses and our writer reproduces it", "[gguf]") {
  auto rng = MakeRng();
  const auto payload = RandomBytes(rng, 68);
  const auto bytes = MinimalFile(payload);
  auto file = GgufFile::Parse(bytes, "minimal");
  REQUIRE_OK(file);
  CHECK(file->data_start() == 0x80);
  CHECK(*file->GetString("general.architecture") == "llama");
  REQUIRE(file->tensors().size() == 1);
  const GgufTensorInfo& w = file->tensors()[0];
  CHECK(w.name == "w");
  CHECK(w.dims == std::vector<int64_t>{32, 2});
  CHECK(w.type == 8);
  CHECK(w.num_bytes == 68);
  CHECK(std::memcmp(file->TensorData(w).data(), payload.data(), 68) == 0);

  TempDir dir;
  auto writer = GgufWriter::Create(dir.File("w.gguf"));
  REQUIRE_OK(writer);
  (*writer)->SetMetadata("general.architecture", GgufValue("llama"));
  REQUIRE_OK((*writer)->AddTensor("w", {32, 2}, 8, 68));
  REQUIRE_OK((*writer)->WriteTensorData("w", payload));
  REQUIRE_OK((*writer)->Commit());
  CHECK(ReadAll(dir.File("w.gguf")) == bytes);
}

TEST_CASE("GGUF TorchShape reverses dims", "[gguf]") {
  GgufTensorInfo info{"x", {4096, 11008, 3}, 0, 0, 0};
  CHECK(info.TorchShape() == std::vector<int64_t>{3, 11008, 4096});
  info.dims = {7};
  CHECK(info.TorchShape() == std::vector<int64_t>{7});
}

TEST_CASE("GGUF writer rejects misuse", "[gguf]") {
  TempDir dir;
  auto writer = GgufWriter::Create(dir.File("bad.gguf"));
  REQUIRE_OK(writer);
  GgufWriter& w = **writer;
  REQUIRE_STATUS_IS(w.AddTensor("q", {31}, 8, 34), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(w.AddTensor("q", {32}, 4, 34), absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(w.AddTensor("q", {32}, 8, 35), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(w.AddTensor("q", {1, 1, 1, 1, 1}, 0, 4), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(w.AddTensor(std::string(64, 'n'), {1}, 0, 4),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(w.AddTensor("a", {4}, 0, 16));
  REQUIRE_OK(w.AddTensor("b", {4}, 0, 16));
  REQUIRE_STATUS_IS(w.AddTensor("a", {4}, 0, 16), absl::StatusCode::kInvalidArgument);
  const std::vector<std::byte> data(16, std::byte{1});
  REQUIRE_STATUS_IS(w.WriteTensorData("zz", data), absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(w.WriteTensorData("a", std::span(data).first(8)),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(w.WriteTensorData("a", data));
  REQUIRE_STATUS_IS(w.WriteTensorData("a", data), absl::StatusCode::kFailedPrecondition);
  REQUIRE_STATUS_IS(w.AddTensor("c", {4}, 0, 16), absl::StatusCode::kFailedPrecondition);
  REQUIRE_STATUS_IS(w.Commit(), absl::StatusCode::kFailedPrecondition);  // 'b' missing

  auto w2 = GgufWriter::Create(dir.File("bad2.gguf"));
  REQUIRE_OK(w2);
  (*w2)->SetMetadata("general.alignment", GgufValue(uint32_t{48}));
  REQUIRE_STATUS_IS((*w2)->Commit(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gquant
