// Interoperability with the Python `safetensors` package. The same value
// formula is used here and in tests/data/interop/check_interop.py:
//  * "[.interop_safetensors]" (hidden; run on the GPU machine's workflow) writes the file
//    that Python reads and checks, to $GQUANT_INTEROP_OUT;
//  * the other case reads the committed file Python wrote and checks it.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant {
namespace {

struct InteropTensor {
  const char* name;
  DType dtype;
  std::vector<int64_t> shape;
};

// Must match TENSORS in check_interop.py.
const std::vector<InteropTensor> kInteropTensors = {
    {"a.f32", DType::kF32, {3, 5}},    {"b.bf16", DType::kBF16, {7}},
    {"c.f16", DType::kF16, {2, 2, 3}}, {"d.i8", DType::kI8, {9}},
    {"e.u8", DType::kU8, {1}},         {"f.i64", DType::kI64, {4}},
    {"g.bool", DType::kBool, {5}},     {"h.scalar", DType::kF32, {}},
    {"i.empty", DType::kF32, {0, 4}},  {"j.f64", DType::kF64, {3}},
    {"k.i32", DType::kI32, {6}},       {"l.i16", DType::kI16, {5}},
};
const std::map<std::string, std::string> kInteropMetadata = {{"format", "pt"},
                                                             {"purpose", "gquant interop"}};

template <typename T>
void Put(std::vector<std::byte>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

// Element i: base = (i*37) % 101 - 50; floats base/8, i64 base*1e12,
// u8 (i*37) % 101, bool i % 3 == 0, other ints base.
std::vector<std::byte> ExpectedBytes(const InteropTensor& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  std::vector<std::byte> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t base = (i * 37) % 101 - 50;
    switch (t.dtype) {
      case DType::kF32:
        Put(out, static_cast<float>(base) * 0.125f);
        break;
      case DType::kF64:
        Put(out, static_cast<double>(base) * 0.125);
        break;
      case DType::kBF16:
        Put(out, FloatToBFloat16(static_cast<float>(base) * 0.125f));
        break;
      case DType::kF16:
        Put(out, FloatToHalf(static_cast<float>(base) * 0.125f));
        break;
      case DType::kI8:
        Put(out, static_cast<int8_t>(base));
        break;
      case DType::kI16:
        Put(out, static_cast<int16_t>(base));
        break;
      case DType::kI32:
        Put(out, static_cast<int32_t>(base));
        break;
      case DType::kI64:
        Put(out, base * 1'000'000'000'000);
        break;
      case DType::kU8:
        Put(out, static_cast<uint8_t>((i * 37) % 101));
        break;
      case DType::kBool:
        Put(out, static_cast<uint8_t>(i % 3 == 0));
        break;
      default:
        FAIL("no interop formula for " << DTypeName(t.dtype));
    }
  }
  return out;
}

TEST_CASE("writes the file the Python safetensors package checks", "[.interop_safetensors]") {
  const char* out = std::getenv("GQUANT_INTEROP_OUT");
  REQUIRE(out != nullptr);
  std::vector<SafetensorsTensorSpec> specs;
  for (const InteropTensor& t : kInteropTensors) specs.push_back({t.name, t.dtype, t.shape});
  auto writer = SafetensorsWriter::Create(out, specs, kInteropMetadata);
  REQUIRE_OK(writer);
  for (const InteropTensor& t : kInteropTensors)
    REQUIRE_OK((*writer)->WriteTensor(t.name, ExpectedBytes(t)));
  REQUIRE_OK((*writer)->Commit());
}

TEST_CASE("reads the file the Python safetensors package wrote", "[safetensors]") {
  auto file = SafetensorsFile::Open(testing::TestDataDir() + "/interop/python_written.safetensors");
  REQUIRE_OK(file);
  REQUIRE(file->metadata() == kInteropMetadata);
  REQUIRE(file->tensors().size() == kInteropTensors.size());
  for (const InteropTensor& t : kInteropTensors) {
    INFO(t.name);
    auto tensor = file->Get(t.name);
    REQUIRE_OK(tensor);
    REQUIRE(tensor->dtype() == t.dtype);
    REQUIRE(tensor->shape() == t.shape);
    const std::vector<std::byte> expected = ExpectedBytes(t);
    REQUIRE(std::equal(expected.begin(), expected.end(), tensor->bytes().begin(),
                       tensor->bytes().end()));
  }
}

}  // namespace
}  // namespace gquant
