#include "gquant/gemma4/config.h"

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using Json = nlohmann::json;

// gemma-4-31B-it as the released config.json writes it (legacy global keys).
constexpr char k31B[] = R"({
  "architectures": ["Gemma4ForConditionalGeneration"],
  "model_type": "gemma4",
  "audio_config": null,
  "boi_token_id": 255999, "eoi_token_id": 258882, "image_token_id": 258880,
  "video_token_id": 258884, "boa_token_id": 256000, "eoa_token_index": 258883,
  "audio_token_id": 258881,
  "eos_token_id": [1, 106],
  "initializer_range": 0.02,
  "tie_word_embeddings": true,
  "dtype": "bfloat16",
  "vision_soft_tokens_per_image": 280,
  "text_config": {
    "model_type": "gemma4_text",
    "attention_bias": false, "attention_dropout": 0.0, "attention_k_eq_v": true,
    "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    "enable_moe_block": false, "num_experts": null, "top_k_experts": null,
    "moe_intermediate_size": null,
    "final_logit_softcapping": 30.0,
    "global_head_dim": 512, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 5376, "hidden_size_per_layer_input": 0,
    "intermediate_size": 21504,
    "layer_types": [
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
      "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"
    ],
    "max_position_embeddings": 262144,
    "num_attention_heads": 32, "num_global_key_value_heads": 4, "num_hidden_layers": 60,
    "num_key_value_heads": 16, "num_kv_shared_layers": 0,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {
      "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
      "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
    },
    "sliding_window": 1024,
    "tie_word_embeddings": true,
    "use_bidirectional_attention": "vision",
    "use_cache": true, "use_double_wide_mlp": false,
    "vocab_size": 262144, "vocab_size_per_layer_input": 262144
  },
  "vision_config": {
    "model_type": "gemma4_vision",
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 72,
    "global_head_dim": 72, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-06,
    "patch_size": 16, "pooling_kernel_size": 3, "position_embedding_size": 10240,
    "default_output_length": 280, "use_clipped_linears": false, "standardize": true,
    "rope_parameters": {"rope_theta": 100.0, "rope_type": "default"}
  }
})";

// gemma-4-E2B as a text-only Gemma4ForCausalLM config.
constexpr char kE2B[] = R"({
  "architectures": ["Gemma4ForCausalLM"],
  "model_type": "gemma4_text",
  "attention_bias": false, "attention_k_eq_v": false,
  "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
  "enable_moe_block": false,
  "final_logit_softcapping": 30.0,
  "global_head_dim": 512, "head_dim": 256,
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 1536, "hidden_size_per_layer_input": 256,
  "intermediate_size": 6144,
  "layer_types": [
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"
  ],
  "max_position_embeddings": 131072,
  "num_attention_heads": 8, "num_global_key_value_heads": null, "num_hidden_layers": 35,
  "num_key_value_heads": 1, "num_kv_shared_layers": 20,
  "rms_norm_eps": 1e-06,
  "rope_parameters": {
    "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
    "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
  },
  "sliding_window": 512,
  "use_bidirectional_attention": null, "use_double_wide_mlp": true,
  "vocab_size": 262144, "vocab_size_per_layer_input": 262144
})";

// A tiny 12-layer text config in the form transformers 5.17 saves: no
// global_head_dim, a per_layer_config keyed by (sometimes zero-padded) index.
constexpr char kTinyPerLayer[] = R"({
  "model_type": "gemma4_text",
  "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 12, "num_attention_heads": 4, "num_key_value_heads": 2,
  "head_dim": 16, "attention_k_eq_v": true, "hidden_size_per_layer_input": 0,
  "per_layer_config": {"05": {"head_dim": 32, "num_key_value_heads": 1},
                       "11": {"head_dim": 32, "num_key_value_heads": 1}}
})";

// gemma-4-26B-A4B (MoE), text only, layer_types and rope_parameters left out.
constexpr char k26B[] = R"({
  "model_type": "gemma4_text",
  "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112,
  "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8,
  "num_global_key_value_heads": 2, "head_dim": 256, "global_head_dim": 512,
  "attention_k_eq_v": true, "hidden_size_per_layer_input": 0,
  "enable_moe_block": true, "num_experts": 128, "top_k_experts": 8,
  "moe_intermediate_size": 704, "sliding_window": 1024, "final_logit_softcapping": 30.0,
  "use_bidirectional_attention": "vision", "max_position_embeddings": 262144
})";

std::string Edit(std::string_view base, const std::function<void(Json&)>& edit) {
  Json json = Json::parse(base);
  edit(json);
  return json.dump();
}

Config ParseOk(std::string_view text) {
  absl::StatusOr<Config> config = ParseConfigJson(text, "test");
  REQUIRE_OK(config);
  return *std::move(config);
}

TEST_CASE("31B-like multimodal config resolves full layers to 512/4 K=V", "[config]") {
  const Config config = ParseOk(k31B);
  const TextConfig& t = config.text;
  CHECK(config.is_multimodal());
  CHECK(config.architectures == std::vector<std::string>{"Gemma4ForConditionalGeneration"});
  CHECK(t.num_hidden_layers == 60);
  CHECK(t.hidden_size == 5376);
  REQUIRE(t.layer_types.size() == 60);
  for (int i = 0; i < 60; ++i) {
    INFO("layer " << i);
    const bool full = (i + 1) % 6 == 0;
    CHECK(t.is_full(i) == full);
    CHECK(t.layer_head_dim[i] == (full ? 512 : 256));
    CHECK(t.layer_num_kv_heads[i] == (full ? 4 : 16));
    CHECK(t.k_eq_v(i) == full);
    CHECK(!t.is_kv_shared(i));
    CHECK(t.kv_source_layer(i) == i);
    CHECK(t.mlp_width(i) == 21504);
  }
  CHECK(t.layer_types[5] == LayerType::kFull);
  CHECK(t.layer_types[4] == LayerType::kSliding);
  CHECK(!t.last_layer_forced_full);
  CHECK(t.first_kv_shared_layer() == 60);
  CHECK(t.sliding_window == 1024);
  CHECK(t.final_logit_softcapping == 30.0);
  CHECK(!t.has_per_layer_embeddings());
  CHECK(t.max_position_embeddings == 262144);
  CHECK(t.use_bidirectional_attention == BidirectionalAttention::kVision);
  CHECK(t.rope_full.rope_type == "proportional");
  CHECK(t.rope_full.rope_theta == 1e6);
  CHECK(t.rope_full.partial_rotary_factor == 0.25);
  CHECK(t.rope_sliding.rope_type == "default");
  CHECK(t.rope_sliding.partial_rotary_factor == 1.0);
  CHECK(t.eos_token_ids == std::vector<int>{1});
  CHECK(config.eos_token_ids == std::vector<int>{1, 106});
  CHECK(config.image_token_id == 258880);
  CHECK(config.eoa_token_index == 258883);
  CHECK(!config.has_audio);
  REQUIRE(config.vision.has_value());
  CHECK(config.vision->hidden_size == 1152);
  CHECK(config.vision->num_hidden_layers == 27);
  CHECK(config.vision->head_dim == 72);
  CHECK(config.vision->standardize);
  CHECK(!config.vision->use_clipped_linears);

  const std::string description = DescribeConfig(config);
  INFO(description);
  CHECK(description.find("31B-like") != std::string::npos);
  CHECK(description.find("[SSSSSF]x10") != std::string::npos);
  CHECK(description.find("full: head_dim 512, kv_heads 4, K=V") != std::string::npos);
  CHECK(description.find("soft-cap: 30") != std::string::npos);
}

TEST_CASE("E2B-like text config: KV sharing, double-wide MLP, PLE", "[config]") {
  const Config config = ParseOk(kE2B);
  const TextConfig& t = config.text;
  CHECK(config.model_type == "gemma4_text");
  CHECK(!config.is_multimodal());
  CHECK(!config.vision.has_value());
  CHECK(!config.image_token_id.has_value());
  CHECK(config.eos_token_ids == std::vector<int>{1});
  CHECK(t.has_per_layer_embeddings());
  CHECK(t.hidden_size_per_layer_input == 256);
  CHECK(t.first_kv_shared_layer() == 15);
  CHECK(t.final_logit_softcapping == 30.0);
  for (int i = 0; i < 35; ++i) {
    INFO("layer " << i);
    const bool full = (i + 1) % 5 == 0;
    CHECK(t.is_full(i) == full);
    CHECK(t.layer_head_dim[i] == (full ? 512 : 256));
    CHECK(t.layer_num_kv_heads[i] == 1);  // num_global_key_value_heads is null
    CHECK(!t.k_eq_v(i));
    CHECK(t.is_kv_shared(i) == (i >= 15));
    CHECK(t.kv_source_layer(i) == (i < 15 ? i : full ? 14 : 13));
    CHECK(t.mlp_width(i) == (i < 15 ? 6144 : 12288));
  }
  const std::string description = DescribeConfig(config);
  INFO(description);
  CHECK(description.find("[SSSSF]x7") != std::string::npos);
  CHECK(description.find("sliding_attention from layer 13") != std::string::npos);
  CHECK(description.find("full_attention from layer 14") != std::string::npos);
  CHECK(description.find("PLE: 256") != std::string::npos);
}

TEST_CASE("per_layer_config form resolves like the legacy keys", "[config]") {
  // The tiny config, with the per_layer_config replaced by its legacy spelling.
  const std::string legacy = Edit(kTinyPerLayer, [](Json& j) {
    j.erase("per_layer_config");
    j["global_head_dim"] = 32;
    j["num_global_key_value_heads"] = 1;
  });
  const Config a = ParseOk(kTinyPerLayer);
  const Config b = ParseOk(legacy);
  CHECK(a.text.layer_head_dim == b.text.layer_head_dim);
  CHECK(a.text.layer_num_kv_heads == b.text.layer_num_kv_heads);
  CHECK(a.text.layer_head_dim[5] == 32);
  CHECK(a.text.layer_num_kv_heads[5] == 1);
  CHECK(a.text.layer_head_dim[4] == 16);
  CHECK(a.text.layer_num_kv_heads[4] == 2);

  // The 31B config as transformers 5.17 would save it.
  const std::string per_layer_31b = Edit(k31B, [](Json& j) {
    Json& text = j["text_config"];
    text.erase("global_head_dim");
    text.erase("num_global_key_value_heads");
    Json overrides = Json::object();
    for (int i = 5; i < 60; i += 6) {
      const std::string key = absl::StrFormat("%02d", i);  // "05", "11", ...
      overrides[key] = {{"head_dim", 512}, {"num_key_value_heads", 4}};
    }
    text["per_layer_config"] = overrides;
  });
  const Config legacy_31b = ParseOk(k31B);
  const Config new_31b = ParseOk(per_layer_31b);
  CHECK(new_31b.text.layer_head_dim == legacy_31b.text.layer_head_dim);
  CHECK(new_31b.text.layer_num_kv_heads == legacy_31b.text.layer_num_kv_heads);
}

TEST_CASE("the tiny-31b fixture (written by transformers 5.17) resolves", "[config]") {
  absl::StatusOr<Config> config = LoadConfig(testing::TestDataDir() + "/tiny-31b/f32");
  REQUIRE_OK(config);
  const TextConfig& t = config->text;
  CHECK(t.layer_head_dim == std::vector<int>{32, 32, 64, 32, 32, 64});
  CHECK(t.layer_num_kv_heads == std::vector<int>{2, 2, 1, 2, 2, 1});
  CHECK(t.k_eq_v(2));
  CHECK(!config->vision.has_value());
  CHECK(config->eos_token_ids == std::vector<int>{1});
}

TEST_CASE("per_layer_config wins over the legacy keys", "[config]") {
  const std::string both = Edit(kTinyPerLayer, [](Json& j) {
    j["global_head_dim"] = 64;
    j["num_global_key_value_heads"] = 4;
    j["per_layer_config"] = {{"11", {{"head_dim", 48}}}};
  });
  const Config config = ParseOk(both);
  CHECK(config.text.layer_head_dim[11] == 48);
  CHECK(config.text.layer_num_kv_heads[11] == 2);  // not overridden: base value
  CHECK(config.text.layer_head_dim[5] == 16);      // full, but not listed
  // k_eq_v=false gates num_global_key_value_heads in the legacy form.
  const Config gated = ParseOk(Edit(kTinyPerLayer, [](Json& j) {
    j.erase("per_layer_config");
    j["attention_k_eq_v"] = false;
    j["num_global_key_value_heads"] = 1;
  }));
  CHECK(gated.text.layer_head_dim[5] == 512);  // global_head_dim default
  CHECK(gated.text.layer_num_kv_heads[5] == 2);
}

TEST_CASE("26B-A4B-like MoE config", "[config]") {
  const Config config = ParseOk(k26B);
  const TextConfig& t = config.text;
  CHECK(t.enable_moe_block);
  CHECK(t.num_experts == 128);
  CHECK(t.top_k_experts == 8);
  CHECK(t.moe_intermediate_size == 704);
  CHECK(t.mlp_width(0) == 2112);
  CHECK(t.layer_head_dim[5] == 512);
  CHECK(t.layer_num_kv_heads[5] == 2);
  CHECK(t.layer_num_kv_heads[4] == 8);
  // Absent layer_types and rope_parameters take the HF defaults.
  for (int i = 0; i < 30; ++i) CHECK(t.is_full(i) == ((i + 1) % 6 == 0));
  CHECK(!t.last_layer_forced_full);
  CHECK(t.rope_full.partial_rotary_factor == 0.25);
  CHECK(t.rope_sliding.rope_theta == 10000.0);
  CHECK(t.pad_token_id == 0);
  CHECK(t.bos_token_id == 2);
  const std::string description = DescribeConfig(config);
  INFO(description);
  CHECK(description.find("MoE: 128 experts, top 8, expert MLP 704") != std::string::npos);
}

TEST_CASE("default layer_types; the last layer is forced to full like HF", "[config]") {
  const Config defaulted = ParseOk(Edit(kTinyPerLayer, [](Json& j) {
    j["num_hidden_layers"] = 8;
    j.erase("per_layer_config");
  }));
  const TextConfig& t = defaulted.text;
  const std::vector<LayerType> expected = {
      LayerType::kSliding, LayerType::kSliding, LayerType::kSliding, LayerType::kSliding,
      LayerType::kSliding, LayerType::kFull,    LayerType::kSliding, LayerType::kFull};
  CHECK(t.layer_types == expected);
  CHECK(t.last_layer_forced_full);
  CHECK(t.layer_head_dim[7] == 512);  // legacy override follows the forced type
  CHECK(DescribeConfig(defaulted).find("forced to full_attention") != std::string::npos);

  const Config listed = ParseOk(Edit(kTinyPerLayer, [](Json& j) {
    j["num_hidden_layers"] = 2;
    j["layer_types"] = {"full_attention", "sliding_attention"};
    j["per_layer_config"] = Json::object();
  }));
  CHECK(listed.text.layer_types == std::vector<LayerType>{LayerType::kFull, LayerType::kFull});
  CHECK(listed.text.last_layer_forced_full);
}

struct ErrorCase {
  const char* name;
  std::string json;
  absl::StatusCode code;
  std::vector<std::string> substrings;
};

TEST_CASE("ParseConfigJson rejects bad configs with precise errors", "[config]") {
  using absl::StatusCode;
  constexpr StatusCode kInvalid = StatusCode::kInvalidArgument;
  auto e2b = [](std::function<void(Json&)> edit) { return Edit(kE2B, edit); };
  auto text31 = [](std::function<void(Json&)> edit) {
    return Edit(k31B, [&](Json& j) { edit(j["text_config"]); });
  };
  const std::vector<ErrorCase> cases = {
      {"invalid JSON", R"({"model_type": )", kInvalid, {"config 'test'", "invalid JSON"}},
      {"not an object", "[1, 2]", kInvalid, {"a JSON object", "array"}},
      {"missing model_type",
       e2b([](Json& j) { j.erase("model_type"); }),
       kInvalid,
       {"missing required field 'model_type'"}},
      {"unknown model_type",
       e2b([](Json& j) { j["model_type"] = "gemma3_text"; }),
       kInvalid,
       {"'model_type'", "'gemma3_text'"}},
      {"missing hidden_size",
       e2b([](Json& j) { j.erase("hidden_size"); }),
       kInvalid,
       {"config 'test': missing required field 'hidden_size'"}},
      {"missing nested head_dim",
       text31([](Json& t) { t.erase("head_dim"); }),
       kInvalid,
       {"config 'test': text_config: missing required field 'head_dim'"}},
      {"missing text_config",
       Edit(k31B, [](Json& j) { j.erase("text_config"); }),
       kInvalid,
       {"'text_config'"}},
      {"nested model_type",
       text31([](Json& t) { t["model_type"] = "gemma3_text"; }),
       kInvalid,
       {"text_config", "'model_type'"}},
      {"string for int",
       e2b([](Json& j) { j["hidden_size"] = "1536"; }),
       kInvalid,
       {"'hidden_size'", "an integer", "string \"1536\""}},
      {"float for int",
       e2b([](Json& j) { j["intermediate_size"] = 6144.5; }),
       kInvalid,
       {"'intermediate_size'", "an integer"}},
      {"bool for int",
       e2b([](Json& j) { j["num_hidden_layers"] = true; }),
       kInvalid,
       {"'num_hidden_layers'", "boolean"}},
      {"int32 overflow",
       e2b([](Json& j) { j["vocab_size"] = 3000000000LL; }),
       kInvalid,
       {"'vocab_size'", "int32"}},
      {"zero heads",
       e2b([](Json& j) { j["num_attention_heads"] = 0; }),
       kInvalid,
       {"'num_attention_heads'", "positive"}},
      {"layer_types length",
       e2b([](Json& j) { j["layer_types"].erase(0); }),
       kInvalid,
       {"'layer_types'", "35 entries", "34"}},
      {"unknown layer type",
       e2b([](Json& j) { j["layer_types"][3] = "chunked_attention"; }),
       kInvalid,
       {"'layer_types[3]'", "'chunked_attention'"}},
      {"kv heads do not divide",
       text31([](Json& t) { t["num_global_key_value_heads"] = 5; }),
       kInvalid,
       {"text_config: layer 5 (full_attention): field 'num_key_value_heads'", "divisor", "got 5"}},
      {"too many shared layers",
       e2b([](Json& j) { j["num_kv_shared_layers"] = 35; }),
       kInvalid,
       {"'num_kv_shared_layers'", "[0, 35)", "35"}},
      {"negative shared layers",
       e2b([](Json& j) { j["num_kv_shared_layers"] = -1; }),
       kInvalid,
       {"'num_kv_shared_layers'"}},
      {"no sliding source layer",
       e2b([](Json& j) {
         j["num_hidden_layers"] = 4;
         j["layer_types"] = {"full_attention", "full_attention", "sliding_attention",
                             "full_attention"};
         j["num_kv_shared_layers"] = 2;
       }),
       kInvalid,
       {"'num_kv_shared_layers'", "sliding_attention", "shared layer 2"}},
      {"shared layer shape differs",
       e2b([](Json& j) {
         j["per_layer_config"] = {{"14", {{"head_dim", 512}}}};
       }),
       kInvalid,
       {"layer 19 (full_attention, KV-shared): field 'head_dim/num_key_value_heads'",
        "source layer 14 (512/1)", "256/1"}},
      {"per_layer_config index out of range",
       Edit(kTinyPerLayer,
            [](Json& j) {
              j["per_layer_config"]["12"] = {{"head_dim", 8}};
            }),
       kInvalid,
       {"'per_layer_config'", "[0, 12)", "'12'"}},
      {"per_layer_config key not a number",
       Edit(kTinyPerLayer,
            [](Json& j) {
              j["per_layer_config"]["x5"] = {{"head_dim", 8}};
            }),
       kInvalid,
       {"'per_layer_config'", "'x5'"}},
      {"per_layer_config duplicate layer",
       Edit(kTinyPerLayer,
            [](Json& j) {
              j["per_layer_config"]["5"] = {{"head_dim", 8}};
            }),
       kInvalid,
       {"'per_layer_config'", "'05' and '5'"}},
      {"per_layer_config zero head_dim",
       Edit(kTinyPerLayer, [](Json& j) { j["per_layer_config"]["05"]["head_dim"] = 0; }),
       kInvalid,
       {"per_layer_config.05: field 'head_dim'", "positive"}},
      {"per_layer_config unsupported override",
       Edit(kTinyPerLayer, [](Json& j) { j["per_layer_config"]["05"]["sliding_window"] = 128; }),
       StatusCode::kUnimplemented,
       {"per_layer_config.05", "'sliding_window'"}},
      {"unknown rope_type",
       e2b([](Json& j) { j["rope_parameters"]["full_attention"]["rope_type"] = "yarn"; }),
       kInvalid,
       {"rope_parameters.full_attention: field 'rope_type'", "'yarn'"}},
      {"rope entry missing for a used type",
       e2b([](Json& j) { j["rope_parameters"].erase("full_attention"); }),
       kInvalid,
       {"'rope_parameters'", "'full_attention'", "layer 4"}},
      {"rope entry missing theta",
       e2b([](Json& j) { j["rope_parameters"]["sliding_attention"].erase("rope_theta"); }),
       kInvalid,
       {"rope_parameters.sliding_attention: missing required field 'rope_theta'"}},
      {"partial_rotary_factor above 1",
       e2b([](Json& j) { j["rope_parameters"]["full_attention"]["partial_rotary_factor"] = 1.5; }),
       kInvalid,
       {"partial_rotary_factor", "(0, 1]", "1.5"}},
      {"partial_rotary_factor zero",
       e2b([](Json& j) { j["rope_parameters"]["full_attention"]["partial_rotary_factor"] = 0; }),
       kInvalid,
       {"partial_rotary_factor"}},
      {"sliding_window zero",
       e2b([](Json& j) { j["sliding_window"] = 0; }),
       kInvalid,
       {"'sliding_window'", "positive", "0"}},
      {"MoE without experts",
       Edit(k26B, [](Json& j) { j.erase("num_experts"); }),
       kInvalid,
       {"'num_experts'", "enable_moe_block"}},
      {"MoE null expert width",
       Edit(k26B, [](Json& j) { j["moe_intermediate_size"] = nullptr; }),
       kInvalid,
       {"'moe_intermediate_size'"}},
      {"MoE top_k above experts",
       Edit(k26B, [](Json& j) { j["top_k_experts"] = 129; }),
       kInvalid,
       {"'top_k_experts'", "128"}},
      {"soft-cap zero",
       e2b([](Json& j) { j["final_logit_softcapping"] = 0.0; }),
       kInvalid,
       {"'final_logit_softcapping'"}},
      {"unknown bidirectional mode",
       e2b([](Json& j) { j["use_bidirectional_attention"] = "text"; }),
       kInvalid,
       {"'use_bidirectional_attention'", "'text'"}},
      {"eos list of strings",
       e2b([](Json& j) { j["eos_token_id"] = {"1"}; }),
       kInvalid,
       {"'eos_token_id[0]'"}},
      {"token id outside vocab",
       e2b([](Json& j) { j["bos_token_id"] = 262144; }),
       kInvalid,
       {"'bos_token_id'", "[0, 262144)"}},
      {"vision missing hidden_size",
       Edit(k31B, [](Json& j) { j["vision_config"].erase("hidden_size"); }),
       kInvalid,
       {"vision_config: missing required field 'hidden_size'"}},
  };
  for (const ErrorCase& c : cases) {
    DYNAMIC_SECTION(c.name) {
      const absl::StatusOr<Config> config = ParseConfigJson(c.json, "test");
      REQUIRE_STATUS_IS(config, c.code);
      const std::string message(config.status().message());
      for (const std::string& part : c.substrings) {
        INFO("message: " << message << "\nexpected to contain: " << part);
        CHECK(message.find(part) != std::string::npos);
      }
    }
  }
}

TEST_CASE("ValidateTextConfig checks a hand-built config", "[config]") {
  TextConfig t = ParseOk(kTinyPerLayer).text;
  REQUIRE_OK(ValidateTextConfig(t));
  t.layer_head_dim.pop_back();
  REQUIRE_STATUS_IS(ValidateTextConfig(t), absl::StatusCode::kInvalidArgument);
  t = ParseOk(kTinyPerLayer).text;
  t.layer_types.back() = LayerType::kSliding;
  REQUIRE_STATUS_IS(ValidateTextConfig(t), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("LoadConfig reads a directory or a file", "[config]") {
  testing::TempDir dir;
  {
    std::ofstream out(dir.File("config.json"));
    out << kE2B;
  }
  absl::StatusOr<Config> from_dir = LoadConfig(dir.path().string());
  REQUIRE_OK(from_dir);
  CHECK(from_dir->text.num_hidden_layers == 35);
  absl::StatusOr<Config> from_file = LoadConfig(dir.File("config.json"));
  REQUIRE_OK(from_file);
  CHECK(from_file->text.hidden_size == 1536);

  REQUIRE_STATUS_IS(LoadConfig(dir.File("missing.json")), absl::StatusCode::kNotFound);
  testing::TempDir empty;
  REQUIRE_STATUS_IS(LoadConfig(empty.path().string()), absl::StatusCode::kNotFound);

  {
    std::ofstream out(dir.File("bad.json"));
    out << R"({"model_type": "gemma4_text"})";
  }
  const absl::StatusOr<Config> bad = LoadConfig(dir.File("bad.json"));
  REQUIRE_STATUS_IS(bad, absl::StatusCode::kInvalidArgument);
  CHECK(bad.status().message().find(dir.File("bad.json")) != std::string::npos);
}

// ---- hostile inputs (issue 8) ----

TEST_CASE("hostile config.json fails fast with InvalidArgument", "[config][hostile]") {
  using absl::StatusCode;
  constexpr int kDeep = 100000;
  const std::string deep = std::string(kDeep, '[') + std::string(kDeep, ']');
  std::string many_layer_types = "[";
  for (int i = 0; i < 200000; ++i) many_layer_types += R"("full_attention",)";
  many_layer_types.back() = ']';
  const ErrorCase cases[] = {
      // An error message quotes the offending value: a 100000-deep one used to
      // overflow the stack in nlohmann's (recursive) dump().
      {"100000 nested arrays as model_type",
       R"({"model_type": )" + deep + "}",
       StatusCode::kInvalidArgument,
       {"config 'test'", "nesting at most 64 deep"}},
      {"100000 nested arrays in an ignored field",
       Edit(kE2B, [&](Json& j) { j["x"] = 0; }).insert(1, R"("deep": )" + deep + ","),
       StatusCode::kInvalidArgument,
       {"nesting at most 64 deep"}},
      {"17 MiB of JSON",
       Edit(kE2B, [](Json& j) { j["x"] = std::string(17 << 20, ' '); }),
       StatusCode::kInvalidArgument,
       {"config 'test'", "expected at most 16777216"}},
      // nlohmann throws out_of_range, not parse_error, for a number beyond
      // double; it escaped ParseConfigJson and aborted (found by the fuzzer:
      // tests/fuzz/corpus/config_json/regression_number_overflow.json).
      {"a number beyond double",
       R"({"model_type": "gemma4_text", "vocab_size": 258E881})",
       StatusCode::kInvalidArgument,
       {"config 'test'", "invalid JSON", "number overflow"}},
      {"invalid UTF-8 in model_type",
       "{\"model_type\": \"gemma4\xff\"}",
       StatusCode::kInvalidArgument,
       {"invalid JSON"}},
      {"a NUL in model_type",
       Edit(kE2B, [](Json& j) { j["model_type"] = std::string("gemma4\0x", 8); }),
       StatusCode::kInvalidArgument,
       {"field 'model_type'"}},
      {"2^31 - 1 layers",
       Edit(kE2B, [](Json& j) { j["num_hidden_layers"] = 2147483647; }),
       StatusCode::kInvalidArgument,
       {"field 'num_hidden_layers': expected at most 4096"}},
      {"2^64 layers",
       Edit(kE2B, [](Json& j) { j["num_hidden_layers"] = UINT64_MAX; }),
       StatusCode::kInvalidArgument,
       {"field 'num_hidden_layers': expected an integer in int32"}},
      {"200000 layer types",
       Edit(kE2B, [&](Json& j) { j["layer_types"] = Json::parse(many_layer_types); }),
       StatusCode::kInvalidArgument,
       {"field 'layer_types': expected 35 entries"}},
      {"a per_layer_config key of 2^40",
       Edit(kE2B,
            [](Json& j) {
              j["per_layer_config"] = {{"1099511627776", {{"head_dim", 8}}}};
            }),
       StatusCode::kInvalidArgument,
       {"key '1099511627776'"}},
  };
  for (const ErrorCase& c : cases) {
    INFO(c.name);
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<Config> config = absl::InternalError("not run");
    CHECK_NOTHROW(config = ParseConfigJson(c.json, "test"));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    CHECK(config.status().code() == c.code);
    const std::string message(config.status().message());
    for (const std::string& part : c.substrings) {
      INFO("message: " << message.substr(0, 300) << "\nexpected to contain: " << part);
      CHECK(message.find(part) != std::string::npos);
    }
  }
}

TEST_CASE("LoadConfig takes regular files only, symlinks followed", "[config][hostile]") {
  namespace fs = std::filesystem;
  using absl::StatusCode;
  testing::TempDir dir;
  fs::create_directories(dir.path() / "blobs");
  fs::create_directories(dir.path() / "snapshot");
  std::ofstream(dir.File("blobs/0123")) << kE2B;
  // The Hugging Face cache layout: config.json is a link into a blob store.
  fs::create_symlink("../blobs/0123", dir.path() / "snapshot" / "config.json");
  REQUIRE_OK(LoadConfig((dir.path() / "snapshot").string()));

  REQUIRE(mkfifo(dir.File("fifo.json").c_str(), 0600) == 0);  // no writer: must not block
  REQUIRE_STATUS_IS(LoadConfig(dir.File("fifo.json")), StatusCode::kInvalidArgument);
  fs::create_symlink(dir.path() / "nowhere", dir.path() / "dangling.json");
  REQUIRE_STATUS_IS(LoadConfig(dir.File("dangling.json")), StatusCode::kNotFound);

  // A 1 GiB (sparse) file is refused by its size, without being read.
  const std::string huge = dir.File("huge.json");
  std::ofstream(huge) << "{";
  fs::resize_file(huge, uintmax_t{1} << 30);
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = LoadConfig(huge).status();
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  REQUIRE_STATUS_IS(status, StatusCode::kInvalidArgument);
  CHECK(status.message().find(huge) != std::string::npos);
}

}  // namespace
}  // namespace gquant::gemma4
