#include "gquant/quantized_checkpoint.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant {
namespace {

using Json = nlohmann::json;

// Random unpacked quantizer output for a [matrices, rows, cols] weight: codes
// in range, bf16-exact scales, zeros as the format stores them.
struct Unpacked {
  std::vector<int8_t> codes;
  std::vector<float> scale, zero;
};
Unpacked RandomUnpacked(std::mt19937_64& rng, const QuantizedLayout& layout) {
  const bool min_form = layout.format().zero_form == ZeroForm::kMin;
  const CodeRange range =
      min_form ? CodeRange{0, (1 << layout.config().bits) - 1} : CodeRangeOf(layout.config());
  // Values the stored dtype holds exactly, so the file round trip is lossless.
  const auto stored = [&](float v) {
    switch (layout.format().scale_dtype) {
      case DType::kF32:
        return v;
      case DType::kF16:
        return HalfToFloat(FloatToHalf(v));
      default:
        return BFloat16ToFloat(FloatToBFloat16(v));
    }
  };
  const int64_t n = layout.matrices() * layout.rows();
  std::uniform_int_distribution<int> code(range.quant_min, range.quant_max);
  std::uniform_real_distribution<float> positive(0.001f, 0.5f);
  std::uniform_real_distribution<float> real_zero(0.0f, 15.0f);
  Unpacked u;
  u.codes.resize(n * layout.cols());
  for (int8_t& c : u.codes) c = static_cast<int8_t>(code(rng));
  u.scale.resize(n * layout.groups());
  u.zero.resize(u.scale.size());
  for (size_t i = 0; i < u.scale.size(); ++i) {
    u.scale[i] = stored(positive(rng));
    // Mins and 4-bit zeros may be non-integers (HQQ); Intx zeros are int8 integers.
    const bool real = min_form || layout.config().bits == 4;
    u.zero[i] = real ? stored(real_zero(rng) * (min_form ? u.scale[i] : 1.0f))
                     : static_cast<float>(code(rng));
  }
  return u;
}

// Packs `u` in two row blocks per matrix, writes the file, and returns its path.
std::string WritePacked(const testing::TempDir& dir, const QuantizedLayout& layout,
                        const Unpacked& u, bool with_marker) {
  PackedWeight packed(layout);
  const int64_t k = layout.cols(), g = layout.groups(), rows = layout.rows();
  for (int64_t m = 0; m < layout.matrices(); ++m) {
    for (int64_t r0 : {int64_t{0}, rows / 2}) {
      const int64_t n = r0 == 0 ? rows / 2 : rows - rows / 2;
      const int64_t row = m * rows + r0;
      REQUIRE_OK(packed.Pack(m, r0, n, std::span(u.codes).subspan(row * k, n * k),
                             std::span(u.scale).subspan(row * g, n * g),
                             std::span(u.zero).subspan(row * g, n * g)));
    }
  }
  std::map<std::string, std::string> metadata = {
      {"tensor_names", Json::array({layout.fqn()}).dump()}, {layout.fqn(), layout.MetadataJson()}};
  if (with_marker) metadata["gquant.convention"] = std::string(kGquantConvention);
  const std::string path = dir.File("q.safetensors");
  auto writer = SafetensorsWriter::Create(path, layout.Specs(), metadata);
  REQUIRE_OK(writer);
  const auto specs = layout.Specs();
  REQUIRE_OK((*writer)->WriteTensor(specs[0].name, packed.qdata()));
  REQUIRE_OK((*writer)->WriteTensor(specs[1].name, packed.scale()));
  REQUIRE_OK((*writer)->WriteTensor(specs[2].name, packed.zero_point()));
  REQUIRE_OK((*writer)->Commit());
  return path;
}

TEST_CASE("flattened names follow torchao", "[quantized_checkpoint]") {
  auto names = FlattenedNamesOf("model.layers.3.mlp.down_proj.weight");
  REQUIRE_OK(names);
  REQUIRE(names->qdata == "model.layers.3.mlp.down_proj._weight_qdata");
  REQUIRE(names->scale == "model.layers.3.mlp.down_proj._weight_scale");
  REQUIRE(names->zero_point == "model.layers.3.mlp.down_proj._weight_zero_point");
  REQUIRE(FlattenedNamesOf("a.experts.gate_up_proj")->qdata == "a.experts._gate_up_proj_qdata");
  REQUIRE_STATUS_IS(FlattenedNamesOf("weight"), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("layouts match the torchao / ExecuTorch shapes and dtypes", "[quantized_checkpoint]") {
  auto int4 = QuantizedLayout::Create("m.w", {96, 256}, {4, 32, false, QuantMethod::kMinMax});
  REQUIRE_OK(int4);
  auto specs = int4->Specs();
  REQUIRE(specs[0].dtype == DType::kU8);
  REQUIRE(specs[0].shape == std::vector<int64_t>{96, 128});
  REQUIRE(specs[1].dtype == DType::kBF16);
  REQUIRE(specs[1].shape == std::vector<int64_t>{8, 96});  // [G, N]
  REQUIRE(specs[2].dtype == DType::kBF16);
  REQUIRE(int4->num_bytes() == 96 * 128 + 2 * 8 * 96 * 2);
  const Json meta = Json::parse(int4->MetadataJson());
  REQUIRE(meta["_type"] == "Int4Tensor");
  REQUIRE(meta["_data"]["block_size"] == Json::array({1, 32}));
  REQUIRE(meta["_data"]["shape"] == Json::array({96, 256}));
  REQUIRE(meta["_data"]["activation_dtype"]["_data"] == "bfloat16");

  auto int8 = QuantizedLayout::Create("m.w", {4, 96, 256}, {8, kPerRowGroupSize, true});
  REQUIRE_OK(int8);
  REQUIRE(int8->config().group_size == 256);
  specs = int8->Specs();
  REQUIRE(specs[0].dtype == DType::kI8);
  REQUIRE(specs[0].shape == std::vector<int64_t>{4, 96, 256});
  REQUIRE(specs[1].shape == std::vector<int64_t>{4, 96, 1});  // [E, N, G]
  REQUIRE(specs[2].dtype == DType::kI8);
  const Json meta8 = Json::parse(int8->MetadataJson());
  REQUIRE(meta8["_type"] == "IntxUnpackedToInt8Tensor");
  REQUIRE(meta8["_data"]["target_dtype"]["_data"] == "int8");
  REQUIRE(meta8["_data"]["block_size"] == Json::array({1, 1, 256}));

  REQUIRE_STATUS_IS(QuantizedLayout::Create("m.w", {256}, {}), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(QuantizedLayout::Create("m.w", {8, 100}, {4, 32}),
                    absl::StatusCode::kInvalidArgument);  // 100 % 32
  REQUIRE_STATUS_IS(QuantizedLayout::Create("m.w", {8, 33}, {4, kPerRowGroupSize}),
                    absl::StatusCode::kInvalidArgument);  // odd K for nibbles

  // gquant's min form: unsigned codes, [N, G] scale and min in the asked dtype.
  auto min4 = QuantizedLayout::Create("m.w", {96, 256}, {4, 32}, {DType::kF32, ZeroForm::kMin});
  REQUIRE_OK(min4);
  specs = min4->Specs();
  REQUIRE(specs[0].shape == std::vector<int64_t>{96, 128});
  REQUIRE(specs[1].dtype == DType::kF32);
  REQUIRE(specs[1].shape == std::vector<int64_t>{96, 8});
  REQUIRE(specs[2].name == "m._w_min");
  REQUIRE(specs[2].dtype == DType::kF32);
  const Json meta_min = Json::parse(min4->MetadataJson());
  REQUIRE(meta_min["_type"] == "GquantMinTensor");
  REQUIRE(meta_min["_data"]["bits"] == 4);
  REQUIRE(meta_min["_tensor_data_names"] == Json::array({"qdata", "scale", "min"}));
  auto min5 = QuantizedLayout::Create("m.w", {96, 256}, {5, 32}, {DType::kF16, ZeroForm::kMin});
  REQUIRE_OK(min5);
  REQUIRE(min5->Specs()[0].dtype == DType::kU8);
  REQUIRE(min5->Specs()[0].shape == std::vector<int64_t>{96, 256});
  REQUIRE(min5->Specs()[2].dtype == DType::kF16);
  REQUIRE_STATUS_IS(QuantizedLayout::Create("m.w", {8, 64}, {8, 32}, {DType::kF32, ZeroForm::kMin}),
                    absl::StatusCode::kInvalidArgument);  // codes 0..255 do not fit int8
  REQUIRE_STATUS_IS(QuantizedLayout::Create("m.w", {8, 64}, {8, 32}, {DType::kI8}),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("int4 nibbles: even element low, odd element high", "[quantized_checkpoint]") {
  auto layout = QuantizedLayout::Create("m.w", {1, 4}, {4, kPerRowGroupSize});
  REQUIRE_OK(layout);
  PackedWeight packed(*layout);
  const std::vector<int8_t> codes = {1, 2, 15, 4};
  REQUIRE_OK(packed.Pack(0, 0, 1, codes, std::vector<float>{0.5f}, std::vector<float>{8.0f}));
  REQUIRE(packed.qdata()[0] == std::byte{0x21});
  REQUIRE(packed.qdata()[1] == std::byte{0x4f});
}

TEST_CASE("packed weights round trip through a file to (q - z) * s or q * s - m",
          "[quantized_checkpoint]") {
  auto rng = testing::MakeRng();
  struct Case {
    std::vector<int64_t> shape;
    QuantConfig config;
    StorageFormat format;
  };
  constexpr StorageFormat kF16{DType::kF16}, kF32{DType::kF32};
  constexpr StorageFormat kMinF32{DType::kF32, ZeroForm::kMin},
      kMinF16{DType::kF16, ZeroForm::kMin};
  const Case cases[] = {
      {{37, 128}, {4, 32, false}},         {{3, 17, 64}, {4, 64, true}},
      {{29, 96}, {8, 32, true}},           {{11, 256}, {8, kPerRowGroupSize, true}},
      {{13, 64}, {6, 32, false}},          {{2, 9, 128}, {5, 128, false}},
      {{19, 64}, {8, 32, true}, kF16},     {{7, 96}, {6, 16, true}, kF32},
      {{21, 64}, {4, 32, false}, kF32},    {{2, 5, 64}, {4, 32, false}, kMinF32},
      {{9, 256}, {5, 32, false}, kMinF32}, {{6, 64}, {4, 32, false}, kMinF16},
  };
  for (const Case& c : cases) {
    INFO(ShapeToString(c.shape) << " bits " << c.config.bits << " scale "
                                << DTypeName(c.format.scale_dtype) << " min form "
                                << (c.format.zero_form == ZeroForm::kMin));
    testing::TempDir dir;
    auto layout =
        QuantizedLayout::Create("model.layers.0.mlp.up_proj.weight", c.shape, c.config, c.format);
    REQUIRE_OK(layout);
    const Unpacked u = RandomUnpacked(rng, *layout);
    for (bool marker : {true, false}) {  // files without gquant's marker read the same
      const std::string path = WritePacked(dir, *layout, u, marker);
      auto file = QuantizedCheckpoint::Open(path);
      REQUIRE_OK(file);
      const QuantizedWeightInfo* info = file->Find(layout->fqn());
      REQUIRE(info != nullptr);
      REQUIRE(info->shape == c.shape);
      REQUIRE(info->bits == c.config.bits);
      auto values = file->Dequantize(layout->fqn());
      REQUIRE_OK(values);
      REQUIRE(values->size() == u.codes.size());
      REQUIRE(info->kind == (c.format.zero_form == ZeroForm::kMin ? QuantizedWeightInfo::Kind::kMin
                             : c.config.bits == 4                 ? QuantizedWeightInfo::Kind::kInt4
                                                  : QuantizedWeightInfo::Kind::kIntx));
      const int64_t k = layout->cols(), gs = layout->config().group_size;
      for (size_t i = 0; i < values->size(); ++i) {
        const size_t group = (i / k) * layout->groups() + (i % k) / gs;
        const double q = u.codes[i], s = u.scale[group], z = u.zero[group];
        const double expected = c.format.zero_form == ZeroForm::kMin ? q * s - z : (q - z) * s;
        const double magnitude = std::fabs(q * s) + std::fabs(z * s) + std::fabs(z);
        REQUIRE(std::fabs((*values)[i] - expected) <= 1e-6 * magnitude + 1e-30);
      }
      // Any row range (crossing experts for 3-D) decodes to the same floats.
      const int64_t total_rows = static_cast<int64_t>(values->size()) / k;
      std::uniform_int_distribution<int64_t> pick(0, total_rows - 1);
      const int64_t first = pick(rng), count = std::min<int64_t>(1 + pick(rng), total_rows - first);
      auto rows = file->DequantizeRows(layout->fqn(), first, count);
      REQUIRE_OK(rows);
      REQUIRE(std::equal(rows->begin(), rows->end(), values->begin() + first * k,
                         values->begin() + (first + count) * k));
      REQUIRE_STATUS_IS(file->DequantizeRows(layout->fqn(), total_rows - 1, 2),
                        absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST_CASE("quantized checkpoint metadata errors", "[quantized_checkpoint]") {
  testing::TempDir dir;
  auto layout = QuantizedLayout::Create("m.w", {4, 64}, {4, 32});
  REQUIRE_OK(layout);
  auto rng = testing::MakeRng();
  const std::string good = WritePacked(dir, *layout, RandomUnpacked(rng, *layout), true);
  auto write_with = [&](const std::map<std::string, std::string>& metadata) {
    auto source = SafetensorsFile::Open(good);
    REQUIRE_OK(source);
    std::vector<SafetensorsTensorSpec> specs;
    for (const auto& t : source->tensors()) specs.push_back({t.name, t.dtype, t.shape});
    const std::string path = dir.File("bad.safetensors");
    auto writer = SafetensorsWriter::Create(path, specs, metadata);
    REQUIRE_OK(writer);
    for (const auto& t : source->tensors())
      REQUIRE_OK((*writer)->WriteTensor(t.name, source->Get(t.name)->bytes()));
    REQUIRE_OK((*writer)->Commit());
    return QuantizedCheckpoint::Open(path).status();
  };
  const std::string names = Json::array({"m.w"}).dump();
  REQUIRE_STATUS_IS(write_with({{"tensor_names", names},
                                {"m.w", layout->MetadataJson()},
                                {"gquant.convention", "torchao-native"}}),
                    absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(write_with({{"tensor_names", names}, {"m.w", R"({"_type":"NVFP4Tensor"})"}}),
                    absl::StatusCode::kUnimplemented);
  REQUIRE_STATUS_IS(write_with({{"tensor_names", names}}), absl::StatusCode::kDataLoss);
  REQUIRE_STATUS_IS(write_with({{"tensor_names", "not json"}}), absl::StatusCode::kDataLoss);
  REQUIRE_STATUS_IS(
      write_with({{"tensor_names", names},
                  {"m.w", R"({"_type":"Int4Tensor","_data":{"block_size":[1,48]}})"}}),
      absl::StatusCode::kDataLoss);  // 48 does not divide 64
  REQUIRE_STATUS_IS(
      write_with({{"tensor_names", Json::array({"m.v"}).dump()}, {"m.v", layout->MetadataJson()}}),
      absl::StatusCode::kDataLoss);  // parts not stored

  // Hostile metadata (issue 8). The first four threw nlohmann::type_error out
  // of Open (value() on a non-object, a string read from a number), which
  // terminated the process (reproduced with tests/fuzz/quantized_checkpoint_fuzzer.cc;
  // inputs in tests/fuzz/corpus/quantized_checkpoint/regression_*).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::pair<const char*, std::string> hostile[] = {
      {"no _data", R"({"_type":"Int4Tensor"})"},
      {"_data not an object", R"({"_type":"Int4Tensor","_data":5})"},
      {"Intx without target_dtype",
       R"({"_type":"IntxUnpackedToInt8Tensor","_data":{"block_size":[1,32]}})"},
      {"target_dtype _data not a string",
       R"({"_type":"IntxUnpackedToInt8Tensor","_data":{"block_size":[1,32],)"
       R"("target_dtype":{"_data":8}}})"},
      {"bits 2^32 + 4 (int truncation)",
       R"({"_type":"GquantMinTensor","_data":{"block_size":[1,32],"bits":4294967300}})"},
      {"100000 nested arrays", R"({"_type":"Int4Tensor","_data":)" + deep + "}"},
      {"a layout the parts do not have",  // 5-bit min form over int4 parts
       R"({"_type":"GquantMinTensor","_data":{"block_size":[1,32],"bits":5}})"},
  };
  for (const auto& [what, entry] : hostile) {
    DYNAMIC_SECTION(what) {
      absl::Status status;
      REQUIRE_NOTHROW(status = write_with({{"tensor_names", names}, {"m.w", entry}}));
      REQUIRE_STATUS_IS(status, absl::StatusCode::kDataLoss);
      CHECK(std::string(status.message()).find(dir.File("bad.safetensors")) != std::string::npos);
      CHECK(std::string(status.message()).find("'m.w'") != std::string::npos);
    }
  }
  REQUIRE_STATUS_IS(write_with({{"tensor_names", Json::array({"m.w", "m.w"}).dump()},
                                {"m.w", layout->MetadataJson()}}),
                    absl::StatusCode::kDataLoss);  // listed twice
}

// Zero-byte parts with shapes that claim 2^62 rows: consistent as far as the
// safetensors layout goes. Open used to accept them; then Dequantize either
// sized a 2^62-element vector (std::length_error: abort), looped over 2^62
// empty rows (hang), or doubled 2^62 (signed overflow); the fuzz corpus keeps
// these as regression_k_zero, regression_intx_k_zero, regression_k_overflow.
TEST_CASE("quantized checkpoint: empty rows claimed by the shape", "[quantized_checkpoint]") {
  constexpr int64_t kHuge = int64_t{1} << 62;
  struct Case {
    const char* what;
    std::vector<SafetensorsTensorSpec> parts;
    std::string entry;
  };
  const std::string int4 = R"({"_type":"Int4Tensor","_data":{"block_size":[1,32]}})";
  const Case cases[] = {
      {"int4, K = 0",
       {{"m._w_qdata", DType::kU8, {kHuge, 0}},
        {"m._w_scale", DType::kBF16, {0, kHuge}},
        {"m._w_zero_point", DType::kBF16, {0, kHuge}}},
       int4},
      {"int4, K / 2 = 2^62",
       {{"m._w_qdata", DType::kU8, {0, kHuge}},
        {"m._w_scale", DType::kBF16, {0, 0}},
        {"m._w_zero_point", DType::kBF16, {0, 0}}},
       R"({"_type":"Int4Tensor","_data":{"block_size":[1,4611686018427387904]}})"},
      {"int8, K = 0",
       {{"m._w_qdata", DType::kI8, {kHuge, 0}},
        {"m._w_scale", DType::kBF16, {kHuge, 0}},
        {"m._w_zero_point", DType::kI8, {kHuge, 0}}},
       R"({"_type":"IntxUnpackedToInt8Tensor","_data":{"block_size":[1,32],)"
       R"("target_dtype":{"_type":"torch.dtype","_data":"int8"}}})"},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.what) {
      testing::TempDir dir;
      const std::string path = dir.File("empty_rows.safetensors");
      auto writer = SafetensorsWriter::Create(path, c.parts,
                                              {{"tensor_names", R"(["m.w"])"}, {"m.w", c.entry}});
      REQUIRE_OK(writer);
      for (const SafetensorsTensorSpec& part : c.parts)
        REQUIRE_OK((*writer)->WriteTensor(part.name, {}));
      REQUIRE_OK((*writer)->Commit());
      absl::StatusOr<QuantizedCheckpoint> checkpoint = absl::InternalError("not run");
      REQUIRE_NOTHROW(checkpoint = QuantizedCheckpoint::Open(path));
      REQUIRE_STATUS_IS(checkpoint, absl::StatusCode::kDataLoss);
      CHECK(std::string(checkpoint.status().message()).find("'m.w'") != std::string::npos);
    }
  }
}

}  // namespace
}  // namespace gquant
