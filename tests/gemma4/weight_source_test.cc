// Weight sources (HF, gquant quantized, GGUF) and the binding check against
// the model plan, with checkpoints modified in a temporary directory.
#include "gquant/gemma4/weight_source.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "checkpoint_edit_util.h"
#include "gquant/dtype.h"
#include "gquant/gemma4/cpu_model.h"
#include "gquant/gguf_export.h"
#include "gquant/quantize_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using gquant::testing::Erase;
using gquant::testing::Find;
using gquant::testing::Renamed;
using gquant::testing::TempDir;
using gquant::testing::TestDataDir;
using gquant::testing::WriteModified;

std::string F32Dir(const std::string& fixture) { return TestDataDir() + "/" + fixture + "/f32"; }

std::unique_ptr<WeightSource> Open(const std::string& path) {
  auto source = OpenWeightSource(path);
  REQUIRE_OK(source);
  return *std::move(source);
}

ModelPlan PlanOf(const WeightSource& source) {
  auto plan = ModelPlan::Create(source.config().text);
  REQUIRE_OK(plan);
  return *std::move(plan);
}

Recipe MakeRecipe(const std::string& json) {
  auto recipe = Recipe::FromJson(json, "test");
  REQUIRE_OK(recipe);
  return *std::move(recipe);
}

std::string CheckMessage(const std::string& path) {
  auto source = Open(path);
  const absl::Status status = CheckWeights(PlanOf(*source), *source);
  REQUIRE_STATUS_IS(status, absl::StatusCode::kInvalidArgument);
  // The model refuses to load with the same error.
  REQUIRE_STATUS_IS(CpuModel::Load(path, {}), absl::StatusCode::kInvalidArgument);
  return std::string(status.message());
}

TEST_CASE("Weight source: HF checkpoints under either prefix", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  auto source = Open(F32Dir(fixture));
  CHECK(source->description() == "checkpoint '" + F32Dir(fixture) + "'");
  REQUIRE_OK(CheckWeights(PlanOf(*source), *source));
  for (const std::string& name : source->Names()) {
    CHECK(!name.starts_with("model."));
  }
  CHECK(source->Shape("embed_tokens.weight") == std::vector<int64_t>{512, 64});
  CHECK(!source->Shape("model.embed_tokens.weight").has_value());
  REQUIRE_STATUS_IS(source->Load("nope"), absl::StatusCode::kNotFound);

  auto table = source->Load("embed_tokens.weight");
  REQUIRE_OK(table);
  auto rows = source->LoadRows("embed_tokens.weight", 100, 3);
  REQUIRE_OK(rows);
  CHECK(*rows == std::vector<float>(table->begin() + 100 * 64, table->begin() + 103 * 64));
  REQUIRE_STATUS_IS(source->LoadRows("embed_tokens.weight", 510, 3),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(source->LoadRows("norm.weight", 0, 1), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Weight source: quantized and GGUF sources hold the same weights", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  auto hf = Open(F32Dir(fixture));
  TempDir dir;
  // Quantized: the default recipe's Int4/Intx weights dequantize on Load;
  // LoadRows of a quantized table is the same rows of it.
  QuantizeJobOptions quantize;
  quantize.input = F32Dir(fixture);
  quantize.output_dir = dir.File("q");
  auto recipe = Recipe::Load("default");
  REQUIRE_OK(recipe);
  REQUIRE_OK(QuantizeCheckpoint(*recipe, quantize));
  auto quantized = Open(quantize.output_dir);
  REQUIRE_OK(CheckWeights(PlanOf(*quantized), *quantized));
  auto q_table = quantized->Load("embed_tokens.weight");
  REQUIRE_OK(q_table);
  CHECK(*q_table != *hf->Load("embed_tokens.weight"));  // really quantized
  auto q_rows = quantized->LoadRows("embed_tokens.weight", 7, 2);
  REQUIRE_OK(q_rows);
  CHECK(*q_rows == std::vector<float>(q_table->begin() + 7 * 64, q_table->begin() + 9 * 64));

  // GGUF F32: same names and values; the config comes from its metadata.
  GgufExportOptions options;
  options.input = F32Dir(fixture);
  options.output_file = dir.File("m.gguf");
  options.keep_type = GgmlType::kF32;
  REQUIRE_OK(ExportGguf(
      MakeRecipe(R"({"name": "k", "rules": [{"pattern": ".*", "config": null}]})"), options));
  auto gguf = Open(options.output_file);
  CHECK(gguf->description() == "GGUF '" + options.output_file + "'");
  REQUIRE_OK(CheckWeights(PlanOf(*gguf), *gguf));
  const std::vector<std::string> names = hf->Names(), gguf_names = gguf->Names();
  CHECK(std::set(names.begin(), names.end()) == std::set(gguf_names.begin(), gguf_names.end()));
  for (const std::string& name : names) {
    INFO(name);
    CHECK(gguf->Shape(name) == hf->Shape(name));
    CHECK(*gguf->Load(name) == *hf->Load(name));
  }
  auto rows = gguf->LoadRows("embed_tokens.weight", 3, 4);
  REQUIRE_OK(rows);
  CHECK(*rows == *hf->LoadRows("embed_tokens.weight", 3, 4));
  const TextConfig& a = hf->config().text;
  const TextConfig& b = gguf->config().text;
  CHECK(a.layer_types == b.layer_types);
  CHECK(a.layer_head_dim == b.layer_head_dim);
  CHECK(a.layer_num_kv_heads == b.layer_num_kv_heads);
  CHECK(a.sliding_window == b.sliding_window);
}

TEST_CASE("Weight source: a GGUF file truncated after opening gives DataLoss, not SIGBUS",
          "[gemma4_model][hostile]") {
  TempDir dir;
  GgufExportOptions options;
  options.input = F32Dir("tiny-31b");
  options.output_file = dir.File("m.gguf");
  options.keep_type = GgmlType::kF32;
  REQUIRE_OK(ExportGguf(
      MakeRecipe(R"({"name": "k", "rules": [{"pattern": ".*", "config": null}]})"), options));
  auto gguf = Open(options.output_file);
  REQUIRE_OK(gguf->Load("embed_tokens.weight"));
  std::filesystem::resize_file(options.output_file, 4096);  // the tensor data is gone
  for (const absl::Status& status : {gguf->Load("embed_tokens.weight").status(),
                                     gguf->LoadRows("embed_tokens.weight", 0, 1).status()}) {
    REQUIRE_STATUS_IS(status, absl::StatusCode::kDataLoss);
    CHECK_THAT(std::string(status.message()), Catch::Matchers::Contains("shrank"));
  }
}

TEST_CASE("Weight source: media towers are listed apart, shared-layer K/V allowed",
          "[gemma4_model]") {
  TempDir dir;
  std::vector<float> norm_values;
  WriteModified("tiny-31b", dir, [&](std::vector<Tensor>& t, std::string&) {
    const Tensor& norm = Find(t, "model.language_model.norm.weight");
    norm_values.resize(64);
    std::memcpy(norm_values.data(), norm.bytes().data(), 64 * sizeof(float));
    t.push_back(Renamed(norm, "model.vision_tower.encoder.layers.0.input_layernorm.weight", {64}));
    t.push_back(Renamed(norm, "model.embed_vision.embedding_projection.weight", {8, 8}));
  });
  auto source = Open(dir.path().string());
  REQUIRE_OK(CheckWeights(PlanOf(*source), *source));
  CHECK(source->Names().size() == Open(F32Dir("tiny-31b"))->Names().size());
  std::vector<std::string> media = source->MediaNames();
  std::sort(media.begin(), media.end());
  CHECK(media == std::vector<std::string>{"embed_vision.embedding_projection.weight",
                                          "vision_tower.encoder.layers.0.input_layernorm.weight"});
  CHECK(source->Shape("embed_vision.embedding_projection.weight") == std::vector<int64_t>{8, 8});
  auto loaded = source->Load("vision_tower.encoder.layers.0.input_layernorm.weight");
  REQUIRE_OK(loaded);
  CHECK(*loaded == norm_values);
  CHECK(Open(F32Dir("tiny-31b"))->MediaNames().empty());

  // HF ignores k/v projections and norms stored for KV-shared layers.
  TempDir shared;
  WriteModified("tiny-e2b", shared, [](std::vector<Tensor>& t, std::string&) {
    t.push_back(Renamed(Find(t, "model.layers.2.self_attn.k_proj.weight"),
                        "model.layers.4.self_attn.k_proj.weight", {32, 64}));
    t.push_back(Renamed(Find(t, "model.layers.2.self_attn.k_norm.weight"),
                        "model.layers.4.self_attn.k_norm.weight", {32}));
  });
  auto with_kv = Open(shared.path().string());
  REQUIRE_OK(CheckWeights(PlanOf(*with_kv), *with_kv));
}

TEST_CASE("Weight binding errors list every problem", "[gemma4_model]") {
  SECTION("missing tensor") {
    TempDir dir;
    WriteModified("tiny-e2b", dir, [](std::vector<Tensor>& t, std::string&) {
      Erase(t, "model.layers.1.mlp.up_proj.weight");
      Erase(t, "model.per_layer_projection_norm.weight");
    });
    const std::string message = CheckMessage(dir.path().string());
    CHECK(message.find("2 missing: per_layer_projection_norm.weight, "
                       "layers.1.mlp.up_proj.weight") != std::string::npos);
    CHECK(message.find(dir.path().string()) != std::string::npos);
  }
  SECTION("wrong shape") {
    TempDir dir;
    WriteModified("tiny-31b", dir, [](std::vector<Tensor>& t, std::string&) {
      Tensor& q_norm = Find(t, "model.language_model.layers.3.self_attn.q_norm.weight");
      q_norm = Renamed(q_norm, q_norm.name(), {16});
    });
    CHECK(CheckMessage(dir.path().string())
              .find("1 with the wrong shape: layers.3.self_attn.q_norm.weight: expected [32], "
                    "but got [16]") != std::string::npos);
  }
  SECTION("unexpected tensor, including a v_proj on a K=V layer") {
    TempDir dir;
    WriteModified("tiny-31b", dir, [](std::vector<Tensor>& t, std::string&) {
      t.push_back(Renamed(Find(t, "model.language_model.layers.2.self_attn.k_proj.weight"),
                          "model.language_model.layers.2.self_attn.v_proj.weight", {64, 64}));
      t.push_back(Renamed(Find(t, "model.language_model.norm.weight"),
                          "model.language_model.extra.weight", {64}));
    });
    CHECK(CheckMessage(dir.path().string())
              .find("2 unexpected: extra.weight, layers.2.self_attn.v_proj.weight") !=
          std::string::npos);
  }
  SECTION("wrong layer count") {
    TempDir fewer;  // the config says 3 layers, the weights hold 6
    WriteModified("tiny-31b", fewer, [](std::vector<Tensor>&, std::string& text) {
      nlohmann::json config = nlohmann::json::parse(text);
      nlohmann::json& c = config["text_config"];
      c["num_hidden_layers"] = 3;
      c["layer_types"] = {"sliding_attention", "sliding_attention", "full_attention"};
      c["per_layer_config"].erase("5");
      text = config.dump();
    });
    const std::string message = CheckMessage(fewer.path().string());
    CHECK(message.find("layer count: the config has 3 layers, but the weights cover 6") !=
          std::string::npos);
    CHECK(message.find("unexpected: layers.3.") != std::string::npos);

    TempDir more;  // the weights lack the last layer
    WriteModified("tiny-moe", more, [](std::vector<Tensor>& t, std::string&) {
      std::erase_if(t, [](const Tensor& x) { return x.name().starts_with("model.layers.3."); });
    });
    const std::string missing = CheckMessage(more.path().string());
    CHECK(missing.find("layer count: the config has 4 layers, but the weights cover 3") !=
          std::string::npos);
    CHECK(missing.find("missing: layers.3.input_layernorm.weight") != std::string::npos);
  }
  SECTION("every problem in one error") {
    TempDir dir;
    WriteModified("tiny-moe", dir, [](std::vector<Tensor>& t, std::string&) {
      Erase(t, "model.layers.0.router.per_expert_scale");
      Tensor& experts = Find(t, "model.layers.2.experts.down_proj");
      experts = Renamed(experts, experts.name(), {8, 32, 64});
      t.push_back(Renamed(Find(t, "model.norm.weight"), "model.layers.1.experts.bias", {64}));
      // A tied model's stored head must have the embedding's shape.
      t.push_back(Renamed(Find(t, "model.embed_tokens.weight"), "lm_head.weight", {64, 512}));
    });
    const std::string message = CheckMessage(dir.path().string());
    for (const char* part :
         {"1 missing: layers.0.router.per_expert_scale", "2 unexpected: ", "layers.1.experts.bias",
          "lm_head.weight",
          "layers.2.experts.down_proj: expected [8, 64, 32], but got [8, 32, 64]"}) {
      INFO(part);
      CHECK(message.find(part) != std::string::npos);
    }
  }
}

}  // namespace
}  // namespace gquant::gemma4
