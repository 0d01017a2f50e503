// LoadBackendWeight over the three kinds of source (plain HF, gquant
// quantized, GGUF), with and without a recipe, for the CPU and CUDA packings.
// The sources are the tiny fixtures' names and shapes filled with fresh random
// values (host only: packing needs no GPU).
#include "gquant/gemma4/backend_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gquant/dtype.h"
#include "gquant/gemma4/weight_source.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf_export.h"
#include "gquant/pack.h"
#include "gquant/quantize.h"
#include "gquant/quantize_checkpoint.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"
#include "gquant/thread_pool.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using gquant::testing::TempDir;
using gquant::testing::TestDataDir;
using Kind = QuantizedWeightInfo::Kind;

std::string F32Dir(const std::string& fixture) { return TestDataDir() + "/" + fixture + "/f32"; }

std::unique_ptr<WeightSource> Open(const std::string& path) {
  auto source = OpenWeightSource(path);
  REQUIRE_OK(source);
  return *std::move(source);
}

Recipe LoadRecipe(const std::string& name) {
  auto recipe = Recipe::Load(name);
  REQUIRE_OK(recipe);
  return *std::move(recipe);
}

Recipe MakeRecipe(const std::string& json) {
  auto recipe = Recipe::FromJson(json, "test");
  REQUIRE_OK(recipe);
  return *std::move(recipe);
}

BackendWeight LoadOk(const WeightSource& source, const std::string& name, PackBackend backend,
                     const BackendWeightOptions& options = {}) {
  auto weight = LoadBackendWeight(source, name, backend, options);
  REQUIRE_OK(weight);
  return *std::move(weight);
}

std::vector<float> LoadValues(const WeightSource& source, const std::string& name) {
  auto values = source.Load(name);
  REQUIRE_OK(values);
  return *std::move(values);
}

// Writes fixture `fixture`'s f32 checkpoint (names, shapes, config.json) to
// `dir` with every tensor drawn from N(0, 0.05^2); `edit` may change values
// (by tensor name) before they are written. Returns the directory.
std::string WriteRandomCopy(
    const std::string& fixture, const TempDir& dir, std::mt19937_64& rng,
    const std::function<void(const std::string&, std::span<float>)>& edit = {}) {
  auto file = SafetensorsFile::Open(F32Dir(fixture) + "/model.safetensors");
  REQUIRE_OK(file);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<Tensor> tensors;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    auto tensor = Tensor::Allocate(info.name, DType::kF32, info.shape);
    REQUIRE_OK(tensor);
    std::span<float> values(reinterpret_cast<float*>(tensor->mutable_bytes().data()),
                            static_cast<size_t>(tensor->num_elements()));
    for (float& v : values) v = normal(rng);
    if (edit) edit(info.name, values);
    tensors.push_back(*std::move(tensor));
  }
  const std::string out = dir.File(fixture);
  std::filesystem::create_directories(out);
  REQUIRE_OK(WriteSafetensors(out + "/model.safetensors", tensors));
  std::filesystem::copy_file(F32Dir(fixture) + "/config.json", out + "/config.json");
  return out;
}

std::string QuantizeInto(const std::string& input, const Recipe& recipe, const std::string& out) {
  QuantizeJobOptions options;
  options.input = input;
  options.output_dir = out;
  options.threads = 2;
  REQUIRE_OK(QuantizeCheckpoint(recipe, options));
  return out;
}

// A cpu_unpacked matrix dequantized with the float32 formulas of
// quantized_checkpoint.h ((q - zero) * scale, or q * scale - min).
std::vector<float> DequantizeCpu(const PackedMatrix& packed) {
  auto view = CpuUnpackedView(packed);
  REQUIRE_OK(view);
  const QuantizedMatrixInfo& info = view->info;
  std::vector<float> out(info.rows * info.cols);
  for (int64_t r = 0; r < info.rows; ++r) {
    for (int64_t c = 0; c < info.cols; ++c) {
      const int64_t g = r * info.groups() + c / info.group_size;
      const float q = view->codes[r * info.cols + c];
      out[r * info.cols + c] = info.zero_form() == ZeroForm::kMin
                                   ? q * view->scale[g] - view->zero[g]
                                   : (q - view->zero[g]) * view->scale[g];
    }
  }
  return out;
}

// Every matrix of `weight` (packed for kCpu) dequantized, concatenated.
std::vector<float> DequantizeCpu(const BackendWeight& weight) {
  std::vector<float> out;
  for (const PackedMatrix& m : weight.packed) {
    const std::vector<float> part = DequantizeCpu(m);
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

// Quantize + Dequantize of `values` ([E, N, K] or [N, K]) with `config`, per
// matrix: the reference for quantize-on-load.
std::vector<float> QuantizeDequantize(const QuantConfig& config, const std::vector<int64_t>& shape,
                                      const std::vector<float>& values) {
  const int64_t rows = shape[shape.size() - 2], cols = shape.back();
  const int64_t matrices = shape.size() == 3 ? shape[0] : 1;
  auto group = ResolveGroupSize(config, cols);
  REQUIRE_OK(group);
  const int64_t groups = cols / *group;
  std::vector<int8_t> codes(rows * cols);
  std::vector<float> scale(rows * groups), zero(rows * groups), out(values.size());
  for (int64_t m = 0; m < matrices; ++m) {
    const std::span<const float> in = std::span(values).subspan(m * rows * cols, rows * cols);
    REQUIRE_OK(Quantize(config, DType::kF32, std::as_bytes(in), rows, cols, {codes, scale, zero}));
    REQUIRE_OK(Dequantize(config, rows, cols, codes, scale, zero,
                          std::span(out).subspan(m * rows * cols, rows * cols)));
  }
  return out;
}

// Bitwise float equality (NaN-safe; -0 != +0 on purpose).
bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp must not see the null data() of an empty vector (UBSan).
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

bool IsVector(const std::vector<int64_t>& shape) { return shape.size() < 2; }

TEST_CASE("Backend weights: a plain source without a recipe gives float32 values",
          "[backend_weights]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  auto rng = testing::MakeRng();
  TempDir dir;
  auto source = Open(WriteRandomCopy(fixture, dir, rng));
  for (const std::string& name : source->Names()) {
    INFO(name);
    CHECK(!source->StoresQuantized(name));
    REQUIRE_STATUS_IS(source->LoadPacked(name, PackBackend::kCpu),
                      absl::StatusCode::kUnimplemented);
    for (PackBackend backend : {PackBackend::kCpu, PackBackend::kCuda}) {
      const BackendWeight w = LoadOk(*source, name, backend);
      CHECK(w.shape == *source->Shape(name));
      CHECK(w.packed.empty());
      CHECK(w.note.empty());
      CHECK(!w.quantized_on_load);
      CHECK(SameBits(w.values, LoadValues(*source, name)));
    }
  }
  REQUIRE_STATUS_IS(LoadBackendWeight(*source, "nope.weight", PackBackend::kCpu),
                    absl::StatusCode::kNotFound);
}

TEST_CASE("Backend weights: the default recipe quantizes plain weights on load",
          "[backend_weights]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  auto rng = testing::MakeRng();
  TempDir dir;
  auto source = Open(WriteRandomCopy(fixture, dir, rng));
  const Recipe recipe = LoadRecipe("default");
  ThreadPool pool(2);
  const BackendWeightOptions options{&recipe, &pool};
  const QuantConfig int8_per_row{8, kPerRowGroupSize, true, QuantMethod::kMinMax};
  const QuantConfig int4_g32{4, 32, false, QuantMethod::kMinMax};
  int quantized = 0;
  for (const std::string& name : source->Names()) {
    INFO(name);
    const std::vector<float> values = LoadValues(*source, name);
    const BackendWeight w = LoadOk(*source, name, PackBackend::kCpu, options);
    CHECK(w.shape == *source->Shape(name));
    // The default recipe, spelled out: norms, the router and vectors stay.
    const bool keep = IsVector(w.shape) || name.ends_with("norm.weight") ||
                      name.ends_with("norm_1.weight") || name.ends_with("norm_2.weight") ||
                      name.ends_with("router.proj.weight");
    if (keep) {
      CHECK(!w.quantized_on_load);
      CHECK(w.packed.empty());
      CHECK(SameBits(w.values, values));
      continue;
    }
    ++quantized;
    const QuantConfig& config = name == "embed_tokens.weight" ? int8_per_row : int4_g32;
    REQUIRE(w.quantized_on_load);
    REQUIRE(w.note.empty());
    CHECK(w.values.empty());
    const int64_t matrices = w.shape.size() == 3 ? w.shape[0] : 1;
    REQUIRE(static_cast<int64_t>(w.packed.size()) == matrices);
    for (const PackedMatrix& m : w.packed) {
      CHECK(m.layout == kCpuUnpackedLayout);
      CHECK(m.info.kind == (config.bits == 4 ? Kind::kInt4 : Kind::kIntx));
      CHECK(m.info.bits == config.bits);
      CHECK(m.info.rows == w.shape[w.shape.size() - 2]);
      CHECK(m.info.cols == w.shape.back());
    }
    // Exact: the quantizer is deterministic and its scales and zeros are bf16
    // values by construction, so the stored form rounds nothing.
    CHECK(SameBits(DequantizeCpu(w), QuantizeDequantize(config, w.shape, values)));
  }
  CHECK(quantized > 10);
}

TEST_CASE("Backend weights: quantize-on-load matches gquant-quantize with the same recipe",
          "[backend_weights]") {
  // Tiny-31b names its tensors "model.language_model.", the others "model.":
  // the anchored rule tells whether the load matches the same full names.
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-moe");
  INFO(fixture);
  auto rng = testing::MakeRng();
  TempDir dir;
  const std::string input = WriteRandomCopy(fixture, dir, rng);
  const Recipe recipe = MakeRecipe(R"json({"name": "anchored", "rules": [
      {"pattern": "model\\.(language_model\\.)?layers\\.1\\..*_proj(\\.weight)?",
       "config": {"bits": 8, "group_size": 32, "symmetric": true}},
      {"pattern": "layers\\.2\\..*", "config": {"bits": 6, "group_size": 16}},
      {"pattern": ".*\\.(v_proj|down_proj)\\.weight", "layers": [0],
       "config": {"bits": 4, "group_size": 32, "method": "hqq"}},
      {"pattern": ".*norm(_\\d+)?\\.weight", "config": null},
      {"pattern": ".*\\.router\\.proj\\.weight", "config": null},
      {"pattern": ".*(\\.weight|experts\\..*)", "config": {"bits": 4, "group_size": 32}}]})json");
  auto plain = Open(input);
  auto stored = QuantizedCheckpoint::Open(QuantizeInto(input, recipe, dir.File("q")));
  REQUIRE_OK(stored);
  auto quantized = Open(dir.File("q"));
  const BackendWeightOptions options{&recipe, nullptr};
  const std::string prefix = fixture == "tiny-31b" ? "model.language_model." : "model.";
  int int8 = 0;
  for (const std::string& name : plain->Names()) {
    INFO(name);
    const QuantizedWeightInfo* info = stored->Find(prefix + name);
    REQUIRE(info != nullptr);
    CHECK((info->kind != Kind::kIntx || info->bits != 6));  // the unanchored rule never matches
    const BackendWeight on_load = LoadOk(*plain, name, PackBackend::kCpu, options);
    const BackendWeight from_file = LoadOk(*quantized, name, PackBackend::kCpu);
    CHECK(quantized->StoresQuantized(name) == (info->kind != Kind::kPlain));
    REQUIRE(on_load.quantized_on_load == (info->kind != Kind::kPlain));
    REQUIRE(on_load.packed.size() == from_file.packed.size());
    for (size_t e = 0; e < on_load.packed.size(); ++e) {
      CHECK(on_load.packed[e].info == from_file.packed[e].info);
      CHECK(on_load.packed[e].parts == from_file.packed[e].parts);
    }
    if (info->kind == Kind::kIntx && info->bits == 8) ++int8;
    CHECK(SameBits(on_load.values, from_file.values));
  }
  CHECK(int8 >= 3);  // layer 1's projections
}

TEST_CASE("Backend weights: a quantized checkpoint packs its stored codes", "[backend_weights]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  auto rng = testing::MakeRng();
  TempDir dir;
  const std::string out =
      QuantizeInto(WriteRandomCopy(fixture, dir, rng), LoadRecipe("default"), dir.File("q"));
  auto checkpoint = QuantizedCheckpoint::Open(out);
  REQUIRE_OK(checkpoint);
  auto source = Open(out);
  const std::string prefix = fixture == "tiny-31b" ? "model.language_model." : "model.";
  const Recipe sensitive = LoadRecipe("sensitive");
  int int4 = 0, cuda_packed = 0, cuda_fallbacks = 0;
  for (const std::string& name : source->Names()) {
    INFO(name);
    const std::string fqn = name == "lm_head.weight" ? name : prefix + name;
    const QuantizedWeightInfo* info = checkpoint->Find(fqn);
    REQUIRE(info != nullptr);
    const std::vector<float> values = LoadValues(*source, name);
    REQUIRE(source->StoresQuantized(name) == (info->kind != Kind::kPlain));
    // A recipe changes nothing for stored weights: their codes are used.
    const BackendWeight cpu = LoadOk(*source, name, PackBackend::kCpu, {&sensitive, nullptr});
    CHECK(!cpu.quantized_on_load);
    if (info->kind == Kind::kPlain) {
      CHECK(cpu.packed.empty());
      CHECK(SameBits(cpu.values, values));
      REQUIRE_STATUS_IS(source->LoadPacked(name, PackBackend::kCuda),
                        absl::StatusCode::kUnimplemented);
      continue;
    }
    REQUIRE(cpu.note.empty());
    CHECK(cpu.values.empty());
    const int64_t matrices = info->shape.size() == 3 ? info->shape[0] : 1;
    REQUIRE(static_cast<int64_t>(cpu.packed.size()) == matrices);
    for (int64_t e = 0; e < matrices; ++e) {
      auto want = checkpoint->Unpack(fqn, e);
      REQUIRE_OK(want);
      auto got = CpuUnpackedView(cpu.packed[e]);
      REQUIRE_OK(got);
      CHECK(got->info == want->info);
      CHECK(
          std::equal(got->codes.begin(), got->codes.end(), want->codes.begin(), want->codes.end()));
      CHECK(
          std::equal(got->scale.begin(), got->scale.end(), want->scale.begin(), want->scale.end()));
      CHECK(std::equal(got->zero.begin(), got->zero.end(), want->zero.begin(), want->zero.end()));
    }
    // The packed codes stand for exactly what Load dequantizes.
    CHECK(SameBits(DequantizeCpu(cpu), values));
    if (info->kind == Kind::kInt4) ++int4;

    // CUDA: int4 mma needs N % 16 == 0 and K % 64 == 0; int8 rows K % 16.
    const int64_t n = info->shape[info->shape.size() - 2], k = info->shape.back();
    const bool fits = info->kind == Kind::kInt4 ? n % 16 == 0 && k % 64 == 0 : k % 16 == 0;
    const BackendWeight cuda = LoadOk(*source, name, PackBackend::kCuda);
    if (fits) {
      ++cuda_packed;
      CHECK(cuda.note.empty());
      CHECK(cuda.values.empty());
      REQUIRE(static_cast<int64_t>(cuda.packed.size()) == matrices);
      for (const PackedMatrix& m : cuda.packed) {
        CHECK(m.layout == (info->kind == Kind::kInt4 ? kCudaInt4Mma16Layout : kCudaInt8RowsLayout));
        CHECK(m.exact);
        CHECK(m.info.rows == n);
        CHECK(m.info.cols == k);
      }
    } else {
      ++cuda_fallbacks;
      CHECK(cuda.packed.empty());
      CHECK(SameBits(cuda.values, values));
      CHECK(cuda.note.find(fqn) != std::string::npos);
      CHECK(cuda.note.find(source->description()) != std::string::npos);
      REQUIRE_STATUS_IS(source->LoadPacked(name, PackBackend::kCuda),
                        absl::StatusCode::kInvalidArgument);
    }
  }
  CHECK(int4 > 10);
  CHECK(cuda_packed > 10);
  // tiny-e2b's per-layer projection [64, 32] and embedding [512, 224], and
  // tiny-moe's expert down_proj [8, 64, 32], have K % 64 != 0.
  CHECK((fixture == "tiny-31b") == (cuda_fallbacks == 0));
  REQUIRE_STATUS_IS(source->LoadPacked("nope.weight", PackBackend::kCpu),
                    absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(LoadBackendWeight(*source, "nope.weight", PackBackend::kCpu),
                    absl::StatusCode::kNotFound);
}

TEST_CASE("Backend weights: quantize-on-load falls back to dequantized values for CUDA",
          "[backend_weights]") {
  auto rng = testing::MakeRng();
  TempDir dir;
  auto source = Open(WriteRandomCopy("tiny-e2b", dir, rng));
  const Recipe recipe = LoadRecipe("default");
  const BackendWeightOptions options{&recipe, nullptr};
  // Packs: [128, 64] int4 g32 -> int4 mma; the embedding int8 per-row -> int8 rows.
  for (const auto& [name, layout] :
       {std::pair{"layers.0.self_attn.q_proj.weight", kCudaInt4Mma16Layout},
        std::pair{"per_layer_model_projection.weight", kCudaInt4Mma16Layout},
        std::pair{"embed_tokens.weight", kCudaInt8RowsLayout}}) {
    INFO(name);
    const BackendWeight cuda = LoadOk(*source, name, PackBackend::kCuda, options);
    CHECK(cuda.quantized_on_load);
    CHECK(cuda.note.empty());
    REQUIRE(cuda.packed.size() == 1);
    CHECK(cuda.packed[0].layout == layout);
    CHECK(cuda.packed[0].exact);
  }
  // Falls back: K = 96 and K = 32 are not multiples of 64. The values are the
  // quantized weight's, as on the CPU.
  for (const char* name : {"layers.0.mlp.down_proj.weight", "layers.3.per_layer_projection.weight",
                           "embed_tokens_per_layer.weight"}) {
    INFO(name);
    const BackendWeight cuda = LoadOk(*source, name, PackBackend::kCuda, options);
    const BackendWeight cpu = LoadOk(*source, name, PackBackend::kCpu, options);
    CHECK(cuda.quantized_on_load);
    CHECK(cuda.packed.empty());
    CHECK(cuda.note.find(name) != std::string::npos);
    CHECK(cuda.note.find(source->description()) != std::string::npos);
    CHECK(SameBits(cuda.values, DequantizeCpu(cpu)));
    CHECK(!SameBits(cuda.values, LoadValues(*source, name)));  // really quantized
  }
  // 3-D experts: gate_up [8, 64, 64] packs per expert, down [8, 64, 32] falls back.
  auto moe = Open(WriteRandomCopy("tiny-moe", dir, rng));
  const BackendWeight gate_up =
      LoadOk(*moe, "layers.0.experts.gate_up_proj", PackBackend::kCuda, options);
  CHECK(gate_up.packed.size() == 8);
  const BackendWeight down =
      LoadOk(*moe, "layers.0.experts.down_proj", PackBackend::kCuda, options);
  CHECK(down.packed.empty());
  CHECK(down.values.size() == 8 * 64 * 32);
  CHECK(down.note.find("expert 0") != std::string::npos);
}

TEST_CASE("Backend weights: vectors stay float32 whatever the recipe says", "[backend_weights]") {
  auto rng = testing::MakeRng();
  TempDir dir;
  auto source = Open(WriteRandomCopy("tiny-moe", dir, rng));
  const Recipe all = MakeRecipe(
      R"({"name": "all", "rules": [{"pattern": ".*", "config": {"bits": 4, "group_size": 32}}]})");
  for (const char* name : {"norm.weight", "layers.0.layer_scalar", "layers.0.router.scale",
                           "layers.0.router.per_expert_scale"}) {
    INFO(name);
    const BackendWeight w = LoadOk(*source, name, PackBackend::kCpu, {&all, nullptr});
    CHECK(!w.quantized_on_load);
    CHECK(SameBits(w.values, LoadValues(*source, name)));
  }
  const BackendWeight router =
      LoadOk(*source, "layers.0.router.proj.weight", PackBackend::kCpu, {&all, nullptr});
  CHECK(router.quantized_on_load);
}

TEST_CASE("Backend weights: quantizer errors are errors, not fallbacks", "[backend_weights]") {
  auto rng = testing::MakeRng();
  TempDir dir;
  const std::string nan_weight = "model.layers.1.self_attn.q_proj.weight";
  auto source = Open(WriteRandomCopy("tiny-moe", dir, rng, [&](const std::string& name, auto v) {
    if (name == nan_weight) v[5 * 64 + 7] = std::nanf("");
  }));
  const Recipe recipe = LoadRecipe("default");
  const std::string name = "layers.1.self_attn.q_proj.weight";
  for (PackBackend backend : {PackBackend::kCpu, PackBackend::kCuda}) {
    auto w = LoadBackendWeight(*source, name, backend, {&recipe, nullptr});
    REQUIRE_STATUS_IS(w, absl::StatusCode::kInvalidArgument);
    const std::string message(w.status().message());
    INFO(message);
    CHECK(message.find(name) != std::string::npos);
    CHECK(message.find(source->description()) != std::string::npos);
  }
  // Without a recipe the weight is passed on as it is.
  CHECK(std::isnan(LoadOk(*source, name, PackBackend::kCpu).values[5 * 64 + 7]));
  // A group size that does not divide K is the recipe's error too.
  const Recipe bad = MakeRecipe(
      R"({"name": "bad", "rules": [{"pattern": ".*", "config": {"bits": 8, "group_size": 48}}]})");
  REQUIRE_STATUS_IS(LoadBackendWeight(*source, "layers.0.self_attn.k_proj.weight",
                                      PackBackend::kCpu, {&bad, nullptr}),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Backend weights: a GGUF packs its quantized tensors", "[backend_weights]") {
  auto rng = testing::MakeRng();
  TempDir dir;
  GgufExportOptions export_options;
  export_options.input = WriteRandomCopy("tiny-31b", dir, rng);
  export_options.output_file = dir.File("m.gguf");
  export_options.keep_type = GgmlType::kF16;
  // Rows of 64 take llama-quantize's fallbacks: int8 embedding -> Q8_0 (read
  // directly), int4 -> Q5_0 (through the gquant form); norms F32; the router
  // and o_proj kept as F16 (plain, not quantized).
  const Recipe recipe = MakeRecipe(R"({"name": "g", "rules": [
      {"pattern": ".*embed_tokens\\.weight", "config": {"bits": 8, "group_size": "per_row",
                                                         "symmetric": true}},
      {"pattern": ".*norm\\.weight", "config": null},
      {"pattern": ".*o_proj\\.weight", "config": null},
      {"pattern": ".*\\.weight", "config": {"bits": 4}}]})");
  auto report = ExportGguf(recipe, export_options);
  REQUIRE_OK(report);
  auto source = Open(export_options.output_file);
  int direct = 0, unpacked = 0;
  for (const std::string& name : source->Names()) {
    INFO(name);
    const std::vector<float> values = LoadValues(*source, name);
    const BackendWeight cpu = LoadOk(*source, name, PackBackend::kCpu, {&recipe, nullptr});
    const bool quantized = !IsVector(cpu.shape) && !name.ends_with("o_proj.weight");
    REQUIRE(source->StoresQuantized(name) == quantized);
    CHECK(!cpu.quantized_on_load);
    if (!quantized) {
      CHECK(cpu.packed.empty());
      CHECK(SameBits(cpu.values, values));
      REQUIRE_STATUS_IS(source->LoadPacked(name, PackBackend::kCpu),
                        absl::StatusCode::kUnimplemented);
      continue;
    }
    REQUIRE(cpu.packed.size() == 1);
    // Q8_0 and Q5_0 unpack exactly: the same float32 products as ggml's.
    CHECK(SameBits(DequantizeCpu(cpu), values));
    const BackendWeight cuda = LoadOk(*source, name, PackBackend::kCuda);
    REQUIRE(cuda.packed.size() == 1);
    CHECK(cuda.packed[0].layout == kCudaInt8RowsLayout);  // 8 and 5 bits
    (name == "embed_tokens.weight" ? direct : unpacked) += 1;
  }
  CHECK(direct == 1);
  CHECK(unpacked > 10);
  REQUIRE_STATUS_IS(LoadBackendWeight(*source, "nope.weight", PackBackend::kCuda),
                    absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(source->LoadPacked("nope.weight", PackBackend::kCuda),
                    absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gquant::gemma4
