// The per-layer plan and weight list derived from a config, checked against
// the fixtures' HF tensor lists and against the released model shapes (spec
// gemma4.md §1, §4.1).
#include "gquant/gemma4/model_plan.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using gquant::testing::TestDataDir;

TextConfig FixtureConfig(const std::string& fixture) {
  auto config = LoadConfig(TestDataDir() + "/" + fixture + "/f32");
  REQUIRE_OK(config);
  return config->text;
}

ModelPlan MakePlan(const TextConfig& config) {
  auto plan = ModelPlan::Create(config);
  REQUIRE_OK(plan);
  return *std::move(plan);
}

// A released-model text config: `layers` layers with every `full_every`-th
// one full, plus `fields`.
TextConfig ReleasedConfig(const std::string& fields, int layers, int full_every) {
  std::vector<std::string> types;
  for (int i = 0; i < layers; ++i) {
    types.push_back((i + 1) % full_every == 0 ? "\"full_attention\"" : "\"sliding_attention\"");
  }
  std::string json =
      absl::StrCat(R"({"model_type": "gemma4_text", "num_hidden_layers": )", layers,
                   R"(, "layer_types": [)", absl::StrJoin(types, ", "), "], ", fields, "}");
  auto config = ParseConfigJson(json, "released");
  REQUIRE_OK(config);
  return config->text;
}

TEST_CASE("Model plan: per-layer description of the fixtures", "[gemma4_model]") {
  SECTION("31B-like: hybrid attention, K=V on full layers") {
    const ModelPlan plan = MakePlan(FixtureConfig("tiny-31b"));
    REQUIRE(plan.layers.size() == 6);
    for (const LayerPlan& l : plan.layers) {
      const bool full = l.index == 2 || l.index == 5;
      INFO("layer " << l.index);
      CHECK(l.type == (full ? LayerType::kFull : LayerType::kSliding));
      CHECK(l.head_dim == (full ? 64 : 32));
      CHECK(l.num_heads == 4);
      CHECK(l.num_kv_heads == (full ? 1 : 2));
      CHECK(l.v_from_k == full);
      CHECK(!l.kv_shared);
      CHECK(l.kv_source == l.index);
      CHECK(l.mlp_width == 128);
      CHECK(!l.has_ple);
      CHECK(!l.has_moe);
      CHECK(l.rope.rope_type == (full ? "proportional" : "default"));
    }
  }
  SECTION("E2B-like: PLE, KV sharing, double-wide MLP") {
    const ModelPlan plan = MakePlan(FixtureConfig("tiny-e2b"));
    REQUIRE(plan.layers.size() == 7);
    const int sources[] = {0, 1, 2, 3, 2, 2, 3};
    for (const LayerPlan& l : plan.layers) {
      INFO("layer " << l.index);
      CHECK(l.kv_shared == (l.index >= 4));
      CHECK(l.kv_source == sources[l.index]);
      CHECK(l.mlp_width == (l.index >= 4 ? 192 : 96));
      CHECK(l.has_ple);
      CHECK(!l.v_from_k);
    }
  }
  SECTION("MoE") {
    const ModelPlan plan = MakePlan(FixtureConfig("tiny-moe"));
    for (const LayerPlan& l : plan.layers) CHECK(l.has_moe);
  }
}

TEST_CASE("Model plan: the weight list is the fixtures' HF tensor set", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  const ModelPlan plan = MakePlan(FixtureConfig(fixture));
  auto file = SafetensorsFile::Open(TestDataDir() + "/" + fixture + "/f32/model.safetensors");
  REQUIRE_OK(file);
  std::map<std::string, std::vector<int64_t>> in_file, planned;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    std::string name = info.name;
    for (std::string_view prefix : {"model.language_model.", "model."}) {
      if (name.starts_with(prefix)) {
        name = name.substr(prefix.size());
        break;
      }
    }
    in_file[name] = info.shape;
  }
  const std::vector<WeightSpec> all = plan.AllWeights();
  for (const WeightSpec& w : all) planned[w.name] = w.shape;
  CHECK(planned.size() == all.size());  // no duplicates
  CHECK(planned == in_file);

  // Forward order inside a layer: input norm first, layer scalar last.
  for (const auto& layer : plan.layer_weights) {
    CHECK(layer.front().name.ends_with("input_layernorm.weight"));
    CHECK(layer.back().name.ends_with("layer_scalar"));
  }
  CHECK(plan.global_weights.front().name == "embed_tokens.weight");
}

TEST_CASE("Model plan: released model shapes", "[gemma4_model]") {
  SECTION("31B") {
    const ModelPlan plan = MakePlan(ReleasedConfig(
        R"("vocab_size": 262144, "hidden_size": 5376, "intermediate_size": 21504,
           "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 256,
           "global_head_dim": 512, "num_global_key_value_heads": 4, "attention_k_eq_v": true,
           "sliding_window": 1024, "hidden_size_per_layer_input": 0, "final_logit_softcapping": 30.0)",
        60, 6));
    const LayerPlan& full = plan.layers[59];
    CHECK(full.type == LayerType::kFull);
    CHECK(full.head_dim == 512);
    CHECK(full.num_kv_heads == 4);
    CHECK(full.v_from_k);
    CHECK(plan.layers[0].num_kv_heads == 16);
    std::map<std::string, std::vector<int64_t>> w;
    for (const WeightSpec& s : plan.AllWeights()) w[s.name] = s.shape;
    CHECK(w.at("layers.5.self_attn.q_proj.weight") == std::vector<int64_t>{16384, 5376});
    CHECK(w.at("layers.5.self_attn.k_proj.weight") == std::vector<int64_t>{2048, 5376});
    CHECK(!w.contains("layers.5.self_attn.v_proj.weight"));
    CHECK(w.at("layers.0.self_attn.v_proj.weight") == std::vector<int64_t>{4096, 5376});
    CHECK(w.at("layers.0.mlp.down_proj.weight") == std::vector<int64_t>{5376, 21504});
    CHECK(!w.contains("lm_head.weight"));
  }
  SECTION("E2B") {
    const ModelPlan plan = MakePlan(ReleasedConfig(
        R"("vocab_size": 262144, "hidden_size": 1536, "intermediate_size": 6144,
           "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
           "global_head_dim": 512, "sliding_window": 512, "hidden_size_per_layer_input": 256,
           "num_kv_shared_layers": 20, "use_double_wide_mlp": true)",
        35, 5));
    CHECK(plan.layers[14].type == LayerType::kFull);
    CHECK(!plan.layers[14].kv_shared);
    CHECK(plan.layers[15].kv_shared);
    CHECK(plan.layers[15].kv_source == 13);
    CHECK(plan.layers[19].kv_source == 14);
    CHECK(plan.layers[34].kv_source == 14);
    CHECK(plan.layers[14].mlp_width == 6144);
    CHECK(plan.layers[15].mlp_width == 12288);
    std::map<std::string, std::vector<int64_t>> w;
    for (const WeightSpec& s : plan.AllWeights()) w[s.name] = s.shape;
    CHECK(w.at("embed_tokens_per_layer.weight") == std::vector<int64_t>{262144, 8960});
    CHECK(w.at("per_layer_model_projection.weight") == std::vector<int64_t>{8960, 1536});
    CHECK(!w.contains("layers.15.self_attn.k_proj.weight"));
    CHECK(w.at("layers.15.self_attn.q_norm.weight") == std::vector<int64_t>{256});
  }
}

TEST_CASE("Model plan: configs the model layer does not implement", "[gemma4_model]") {
  const TextConfig base = FixtureConfig("tiny-31b");
  TextConfig c = base;
  c.hidden_activation = "gelu";
  REQUIRE_STATUS_IS(ModelPlan::Create(c), absl::StatusCode::kInvalidArgument);
  c = base;
  c.attention_bias = true;
  REQUIRE_STATUS_IS(ModelPlan::Create(c), absl::StatusCode::kInvalidArgument);
  c = base;
  c.use_bidirectional_attention = BidirectionalAttention::kAll;
  REQUIRE_STATUS_IS(ModelPlan::Create(c), absl::StatusCode::kInvalidArgument);
  c = base;
  c.layer_types.pop_back();  // fails ValidateTextConfig
  REQUIRE_STATUS_IS(ModelPlan::Create(c), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gquant::gemma4
