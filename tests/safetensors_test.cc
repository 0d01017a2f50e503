#include "gquant/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;
using ::gquant::testing::TempDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

void WriteRaw(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  REQUIRE(out.good());
}

std::string AsString(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// A tensor of random bytes; never all zeros, so a payload written to the
// wrong place or not at all cannot pass.
Tensor RandomTensor(std::mt19937_64& rng, std::string name, DType dtype,
                    std::vector<int64_t> shape) {
  auto tensor = Tensor::Allocate(std::move(name), dtype, std::move(shape));
  REQUIRE_OK(tensor);
  std::span<std::byte> bytes = tensor->mutable_bytes();
  for (std::byte& b : bytes) b = static_cast<std::byte>(rng());
  if (!bytes.empty() &&
      std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; })) {
    bytes[0] = std::byte{1};
  }
  return *std::move(tensor);
}

// 8-byte little-endian length, header, payload: the file layout by hand.
std::string Frame(std::string_view header, std::string_view payload) {
  std::string file;
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<char>(header.size() >> (8 * i)));
  file.append(header);
  file.append(payload);
  return file;
}

std::string Floats(std::initializer_list<float> values) {
  std::string bytes(values.size() * 4, '\0');
  std::memcpy(bytes.data(), values.begin(), bytes.size());
  return bytes;
}

Tensor TensorFrom(std::string name, DType dtype, std::vector<int64_t> shape,
                  std::string_view bytes) {
  auto tensor = Tensor::Allocate(std::move(name), dtype, std::move(shape));
  REQUIRE_OK(tensor);
  REQUIRE(tensor->num_bytes() == bytes.size());
  if (!bytes.empty()) std::memcpy(tensor->mutable_bytes().data(), bytes.data(), bytes.size());
  return *std::move(tensor);
}

void RequireSameTensor(const Tensor& actual, const Tensor& expected) {
  INFO("tensor " << expected.name());
  REQUIRE(actual.name() == expected.name());
  REQUIRE(actual.dtype() == expected.dtype());
  REQUIRE(actual.shape() == expected.shape());
  REQUIRE(AsString(actual.bytes()) == AsString(expected.bytes()));
}

constexpr DType kAllDTypes[] = {
    DType::kF32, DType::kF16, DType::kBF16, DType::kF64,    DType::kI8,
    DType::kU8,  DType::kI16, DType::kU16,  DType::kI32,    DType::kU32,
    DType::kI64, DType::kU64, DType::kBool, DType::kF8E4M3, DType::kF8E5M2,
};
static_assert(std::size(kAllDTypes) == kNumDTypes);

TEST_CASE("safetensors round trip over every dtype and odd shapes", "[safetensors]") {
  TempDir dir;
  auto rng = MakeRng();
  std::vector<Tensor> tensors;
  for (DType dtype : kAllDTypes) {
    const std::string name(DTypeName(dtype));
    tensors.push_back(RandomTensor(rng, "m." + name, dtype, {3, 5}));
    tensors.push_back(RandomTensor(rng, "scalar." + name, dtype, {}));
    tensors.push_back(RandomTensor(rng, "odd." + name, dtype, {1, 7, 1}));
    tensors.push_back(RandomTensor(rng, "zero." + name, dtype, {4, 0}));
  }
  tensors.push_back(RandomTensor(rng, "one_byte", DType::kU8, {1}));
  tensors.push_back(RandomTensor(rng, "eight_bytes", DType::kF64, {1}));
  tensors.push_back(RandomTensor(rng, "zero_rank3", DType::kF32, {0, 2, 3}));
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"note", "caf\xc3\xa9 \"quoted\"\n"}};
  const std::string path = dir.File("all.safetensors");
  REQUIRE_OK(WriteSafetensors(path, tensors, metadata));

  auto file = SafetensorsFile::Open(path);
  REQUIRE_OK(file);
  REQUIRE(file->path() == path);
  REQUIRE(file->metadata() == metadata);
  REQUIRE(file->tensors().size() == tensors.size());
  REQUIRE(file->data_start() % 8 == 0);
  const std::string raw = ReadFile(path);
  REQUIRE(raw.compare(8, 15, "{\"__metadata__\"") == 0);
  for (const Tensor& expected : tensors) {
    auto actual = file->Get(expected.name());
    REQUIRE_OK(actual);
    RequireSameTensor(*actual, expected);
    // The dtype sort keeps every payload aligned, so reads are zero-copy.
    REQUIRE_FALSE(actual->owns_memory());
    REQUIRE(reinterpret_cast<uintptr_t>(actual->bytes().data()) % DTypeSize(expected.dtype()) == 0);
    const SafetensorsTensorInfo* info = file->Find(expected.name());
    REQUIRE(info != nullptr);
    REQUIRE(info->num_bytes() == expected.num_bytes());
  }
  // tensors() is in file order and tiles the data buffer.
  uint64_t offset = 0;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    REQUIRE(info.begin == offset);
    offset = info.end;
  }
  REQUIRE(file->data_start() + offset == raw.size());
}

TEST_CASE("safetensors writer output is independent of write order", "[safetensors]") {
  TempDir dir;
  auto rng = MakeRng();
  std::vector<Tensor> tensors = {
      RandomTensor(rng, "b", DType::kU8, {5}),          RandomTensor(rng, "a", DType::kF32, {2, 3}),
      RandomTensor(rng, "c", DType::kBF16, {7}),        RandomTensor(rng, "d", DType::kI64, {3}),
      RandomTensor(rng, "e", DType::kBool, {1}),        RandomTensor(rng, "f", DType::kF16, {0}),
      RandomTensor(rng, "big", DType::kF32, {1 << 20}),  // 4 MiB, larger than small writes
  };
  const std::string in_order = dir.File("in_order.safetensors");
  REQUIRE_OK(WriteSafetensors(in_order, tensors, {{"k", "v"}}));

  std::vector<SafetensorsTensorSpec> specs;
  for (const Tensor& t : tensors) specs.push_back({t.name(), t.dtype(), t.shape()});
  const std::string shuffled = dir.File("shuffled.safetensors");
  auto writer = SafetensorsWriter::Create(shuffled, specs, {{"k", "v"}});
  REQUIRE_OK(writer);
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (size_t i : order) REQUIRE_OK((*writer)->WriteTensor(tensors[i].name(), tensors[i].bytes()));
  REQUIRE_OK((*writer)->Commit());
  REQUIRE(ReadFile(shuffled) == ReadFile(in_order));

  // Reference layout: widest dtype first, then name.
  std::vector<std::string> names;
  for (const SafetensorsTensorInfo& t : (*writer)->header().tensors) names.push_back(t.name);
  REQUIRE(names == std::vector<std::string>{"d", "a", "big", "c", "f", "b", "e"});
}

TEST_CASE("safetensors writer Commit needs every tensor", "[safetensors]") {
  TempDir dir;
  auto rng = MakeRng();
  const Tensor a = RandomTensor(rng, "a", DType::kF32, {4});
  const std::string path = dir.File("partial.safetensors");
  auto writer = SafetensorsWriter::Create(
      path, {{"a", DType::kF32, {4}}, {"b", DType::kI8, {2}}, {"z", DType::kF16, {0}}}, {});
  REQUIRE_OK(writer);
  REQUIRE_OK((*writer)->WriteTensor("a", a.bytes()));
  const absl::Status status = (*writer)->Commit();
  REQUIRE_STATUS_IS(status, absl::StatusCode::kFailedPrecondition);
  INFO(status.ToString());
  REQUIRE(std::string(status.message()).find("'z', 'b'") != std::string::npos);
  REQUIRE_FALSE(std::filesystem::exists(path));

  // The writer stays usable: finishing the missing tensors commits.
  const Tensor b = RandomTensor(rng, "b", DType::kI8, {2});
  REQUIRE_OK((*writer)->WriteTensor("b", b.bytes()));
  REQUIRE_OK((*writer)->WriteTensor("z", {}));
  REQUIRE_OK((*writer)->Commit());
  auto file = SafetensorsFile::Open(path);
  REQUIRE_OK(file);
  REQUIRE(AsString(file->Get("b")->bytes()) == AsString(b.bytes()));
}

TEST_CASE("safetensors writer destroyed without Commit leaves the old file", "[safetensors]") {
  TempDir dir;
  auto rng = MakeRng();
  const std::string path = dir.File("model.safetensors");
  const Tensor old_tensor = RandomTensor(rng, "old", DType::kF32, {3});
  REQUIRE_OK(WriteSafetensors(path, std::span<const Tensor>(&old_tensor, 1)));
  const std::string before = ReadFile(path);
  {
    const Tensor t = RandomTensor(rng, "new", DType::kF32, {8});
    auto writer = SafetensorsWriter::Create(path, {{"new", DType::kF32, {8}}}, {});
    REQUIRE_OK(writer);
    REQUIRE_OK((*writer)->WriteTensor("new", t.bytes()));
  }
  REQUIRE(ReadFile(path) == before);
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    names.push_back(entry.path().filename().string());
  }
  REQUIRE(names == std::vector<std::string>{"model.safetensors"});
}

TEST_CASE("safetensors writer validates its input", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.File("x.safetensors");
  using Specs = std::vector<SafetensorsTensorSpec>;
  REQUIRE_STATUS_IS(
      SafetensorsWriter::Create(path, Specs{{"a", DType::kF32, {1}}, {"a", DType::kU8, {1}}}, {}),
      absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(SafetensorsWriter::Create(path, Specs{{"", DType::kF32, {1}}}, {}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(SafetensorsWriter::Create(path, Specs{{"__metadata__", DType::kF32, {1}}}, {}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(SafetensorsWriter::Create(path, Specs{{"a", DType::kF32, {2, -1}}}, {}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(
      SafetensorsWriter::Create(path, Specs{{"a", DType::kF64, {int64_t{1} << 62, 4}}}, {}),
      absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(SafetensorsWriter::Create(path, Specs{{"bad\xff", DType::kF32, {1}}}, {}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(SafetensorsWriter::Create(path, Specs{}, {{"k", "bad\xc3"}}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(SafetensorsWriter::Create(dir.File("no/dir.safetensors"), Specs{}, {}),
                    absl::StatusCode::kNotFound);
  REQUIRE(std::filesystem::is_empty(dir.path()));

  auto writer = SafetensorsWriter::Create(path, Specs{{"a", DType::kF32, {2}}}, {});
  REQUIRE_OK(writer);
  const std::string eight(8, 'x');
  const auto bytes = std::as_bytes(std::span<const char>(eight));
  REQUIRE_STATUS_IS((*writer)->WriteTensor("nope", bytes), absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS((*writer)->WriteTensor("a", bytes.first(7)),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_OK((*writer)->WriteTensor("a", bytes));
  REQUIRE_STATUS_IS((*writer)->WriteTensor("a", bytes), absl::StatusCode::kFailedPrecondition);
  REQUIRE_OK((*writer)->Commit());
}

// Byte-exact expectations of the reference writer (safetensors/src/tensor.rs
// tests test_serialization, test_serialization_forced_alignement, test_empty).
TEST_CASE("safetensors writer matches the reference writer's test vectors", "[safetensors]") {
  TempDir dir;
  const std::string data = Floats({0, 1, 2, 3, 4, 5});
  struct Vector {
    std::vector<Tensor> tensors;
    std::map<std::string, std::string> metadata;
    std::string expected;
  };
  const std::vector<Vector> vectors = {
      {{TensorFrom("attn.0", DType::kF32, {1, 2, 3}, data)},
       {},
       Frame(R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})", data)},
      {{TensorFrom("attn0", DType::kF32, {1, 1, 2, 3}, data)},
       {},
       Frame(R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       )", data)},
      {{}, {}, Frame("{}      ", "")},
      {{}, {{"framework", "pt"}}, Frame(R"({"__metadata__":{"framework":"pt"}}     )", "")},
  };
  for (size_t i = 0; i < vectors.size(); ++i) {
    INFO("vector " << i);
    const std::string path = dir.File(absl::StrCat("v", i, ".safetensors"));
    REQUIRE_OK(WriteSafetensors(path, vectors[i].tensors, vectors[i].metadata));
    REQUIRE(ReadFile(path) == vectors[i].expected);
    auto file = SafetensorsFile::Open(path);
    REQUIRE_OK(file);
    REQUIRE(file->metadata() == vectors[i].metadata);
    REQUIRE(file->tensors().size() == vectors[i].tensors.size());
    for (const Tensor& t : vectors[i].tensors) RequireSameTensor(*file->Get(t.name()), t);
  }
}

// Built by hand as safetensors.torch.save_file would lay it out: dtypes in
// reference alignment order (I64 > F32 > BF16 > F16 > F8_E4M3 > U8 > BOOL),
// names bytewise within a dtype, serde_json escaping, space padding to 8.
TEST_CASE("safetensors golden file parses and is reproduced byte for byte", "[safetensors]") {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("e":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("w\"q":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},)"
      "\"\xc3\xb1\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[20,24]},"
      R"("c":{"dtype":"BF16","shape":[1],"data_offsets":[24,26]},)"
      R"("empty":{"dtype":"F16","shape":[0],"data_offsets":[26,26]},)"
      R"("f8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[26,28]},)"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[28,31]},)"
      R"("z":{"dtype":"BOOL","shape":[],"data_offsets":[31,32]}})"
      "       ";
  REQUIRE(header.size() == 544);
  const std::string e("\x08\x07\x06\x05\x04\x03\x02\x81", 8);
  const std::string a = Floats({1.5f, -2.0f}), wq = Floats({3.0f}), n = Floats({4.0f});
  const std::string c("\x80\x3f", 2), f8("\x38\xc0", 2), b("\x01\x02\xff", 3), z("\x01", 1);
  const std::string golden = Frame(header, e + a + wq + n + c + f8 + b + z);

  TempDir dir;
  const std::string golden_path = dir.File("golden.safetensors");
  WriteRaw(golden_path, golden);
  auto file = SafetensorsFile::Open(golden_path);
  REQUIRE_OK(file);
  REQUIRE(file->data_start() == 552);
  REQUIRE(file->metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  const std::vector<Tensor> expected = {
      TensorFrom("e", DType::kI64, {1}, e),      TensorFrom("a", DType::kF32, {2}, a),
      TensorFrom("w\"q", DType::kF32, {1}, wq),  TensorFrom("\xc3\xb1", DType::kF32, {1}, n),
      TensorFrom("c", DType::kBF16, {1}, c),     TensorFrom("empty", DType::kF16, {0}, ""),
      TensorFrom("f8", DType::kF8E4M3, {2}, f8), TensorFrom("b", DType::kU8, {3}, b),
      TensorFrom("z", DType::kBool, {}, z),
  };
  REQUIRE(file->tensors().size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    REQUIRE(file->tensors()[i].name == expected[i].name());
    RequireSameTensor(*file->Get(expected[i].name()), expected[i]);
  }
  REQUIRE(file->Get("a")->ToFloat().value() == std::vector<float>{1.5f, -2.0f});

  // Our writer, given the tensors in another order, produces the same bytes.
  std::vector<Tensor> reversed(expected.rbegin(), expected.rend());
  const std::string ours = dir.File("ours.safetensors");
  REQUIRE_OK(WriteSafetensors(ours, reversed, {{"format", "pt"}}));
  REQUIRE(ReadFile(ours) == golden);
}

TEST_CASE("safetensors reader accepts unpadded headers and copies misaligned data",
          "[safetensors]") {
  // Another writer (e.g. MLX) may skip the padding and list entries in any
  // order; here the header is 81 bytes, so the F32 payload sits at offset 89.
  const std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
                             R"("y":{"shape":[1],"dtype":"U8","data_offsets":[0,1]}}  )"
                             "\n";
  const std::string payload = absl::StrCat("\x07", Floats({1.0f, -3.0f}));
  TempDir dir;
  const std::string path = dir.File("unpadded.safetensors");
  WriteRaw(path, Frame(header, payload));
  auto file = SafetensorsFile::Open(path);
  REQUIRE_OK(file);
  REQUIRE(file->data_start() == 8 + header.size());
  REQUIRE(file->data_start() % 4 != 0);
  REQUIRE(file->tensors()[0].name == "y");
  REQUIRE(file->tensors()[1].name == "x");
  auto x = file->Get("x");
  REQUIRE_OK(x);
  REQUIRE(x->owns_memory());  // copied: the payload is not 4-byte aligned
  REQUIRE(reinterpret_cast<uintptr_t>(x->bytes().data()) % 4 == 0);
  REQUIRE(x->ToFloat().value() == std::vector<float>{1.0f, -3.0f});
  auto y = file->Get("y");
  REQUIRE_OK(y);
  REQUIRE_FALSE(y->owns_memory());
  REQUIRE(AsString(y->bytes()) == "\x07");
}

TEST_CASE("safetensors ForEachTensor streams in file order", "[safetensors]") {
  TempDir dir;
  auto rng = MakeRng();
  std::vector<Tensor> tensors;
  for (int i = 0; i < 6; ++i) {
    tensors.push_back(RandomTensor(rng, absl::StrCat("t", i), kAllDTypes[i * 2], {i + 1, 3}));
  }
  const std::string path = dir.File("stream.safetensors");
  REQUIRE_OK(WriteSafetensors(path, tensors));
  auto file = SafetensorsFile::Open(path);
  REQUIRE_OK(file);

  std::vector<std::string> seen;
  std::vector<Tensor> kept;
  REQUIRE_OK(file->ForEachTensor([&](const Tensor& t) {
    seen.push_back(t.name());
    kept.push_back(t);
    return absl::OkStatus();
  }));
  std::vector<std::string> file_order;
  for (const SafetensorsTensorInfo& info : file->tensors()) file_order.push_back(info.name);
  REQUIRE(seen == file_order);
  // Tensors kept past the callback still read correctly (pages come back).
  for (const Tensor& t : kept) {
    RequireSameTensor(t, *std::find_if(tensors.begin(), tensors.end(),
                                       [&](const Tensor& e) { return e.name() == t.name(); }));
  }

  int calls = 0;
  const absl::Status stop = file->ForEachTensor([&](const Tensor&) {
    return ++calls == 2 ? absl::CancelledError("stop") : absl::OkStatus();
  });
  REQUIRE_STATUS_IS(stop, absl::StatusCode::kCancelled);
  REQUIRE(calls == 2);
}

TEST_CASE("safetensors Get and Find of a missing tensor", "[safetensors]") {
  TempDir dir;
  auto rng = MakeRng();
  const Tensor t = RandomTensor(rng, "present", DType::kF16, {2});
  const std::string path = dir.File("one.safetensors");
  REQUIRE_OK(WriteSafetensors(path, std::span<const Tensor>(&t, 1)));
  auto file = SafetensorsFile::Open(path);
  REQUIRE_OK(file);
  REQUIRE(file->Find("absent") == nullptr);
  const absl::Status status = file->Get("absent").status();
  REQUIRE_STATUS_IS(status, absl::StatusCode::kNotFound);
  REQUIRE(std::string(status.message()).find(path) != std::string::npos);
  REQUIRE_STATUS_IS(SafetensorsFile::Open(dir.File("missing.safetensors")),
                    absl::StatusCode::kNotFound);
}

TEST_CASE("safetensors tensors outlive the file handle", "[safetensors]") {
  TempDir dir;
  auto rng = MakeRng();
  const Tensor t = RandomTensor(rng, "w", DType::kBF16, {64, 3});
  const std::string path = dir.File("alive.safetensors");
  REQUIRE_OK(WriteSafetensors(path, std::span<const Tensor>(&t, 1)));
  Tensor view;
  {
    auto file = SafetensorsFile::Open(path);
    REQUIRE_OK(file);
    SafetensorsFile copy = *file;  // copies share the mapping
    view = *copy.Get("w");
  }
  RequireSameTensor(view, t);
}

}  // namespace
}  // namespace gquant
