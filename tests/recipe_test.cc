#include "gquant/recipe.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::TempDir;

constexpr QuantConfig kInt8PerRow{
    .bits = 8, .group_size = kPerRowGroupSize, .symmetric = true, .method = QuantMethod::kMinMax};
constexpr QuantConfig kInt8{
    .bits = 8, .group_size = 32, .symmetric = true, .method = QuantMethod::kMinMax};
constexpr QuantConfig kInt4{
    .bits = 4, .group_size = 32, .symmetric = false, .method = QuantMethod::kMinMax};
constexpr QuantConfig kInt4Hqq{
    .bits = 4, .group_size = 32, .symmetric = false, .method = QuantMethod::kHqq};

struct Expectation {
  std::string name;
  std::optional<QuantConfig> default_config;  // nullopt: keep
  std::optional<QuantConfig> sensitive_config;
};

std::string Describe(const std::optional<QuantConfig>& config) {
  if (!config.has_value()) return "keep";
  return absl::StrCat("bits=", config->bits, " group_size=", config->group_size,
                      " symmetric=", config->symmetric,
                      " method=", std::string(QuantMethodName(config->method)));
}

void CheckTable(const std::string& prefix, int num_layers,
                const std::vector<Expectation>& expectations) {
  absl::StatusOr<Recipe> default_recipe = Recipe::Load("default");
  absl::StatusOr<Recipe> sensitive_recipe = Recipe::Load("sensitive");
  REQUIRE_OK(default_recipe);
  REQUIRE_OK(sensitive_recipe);
  for (const Expectation& e : expectations) {
    const std::string name = prefix + e.name;
    INFO(name << " (" << num_layers << " layers)");
    const RecipeMatch d = default_recipe->Match(name, num_layers);
    const RecipeMatch s = sensitive_recipe->Match(name, num_layers);
    INFO("default: rule " << d.rule_index << " " << Describe(d.config));
    INFO("sensitive: rule " << s.rule_index << " " << Describe(s.config));
    CHECK(d.config == e.default_config);
    CHECK(s.config == e.sensitive_config);
  }
}

// One layer's names for a dense layer; v_proj/down_proj follow `edge`.
std::vector<Expectation> DenseLayer(int layer, bool edge) {
  const std::string l = absl::StrCat("layers.", layer, ".");
  const QuantConfig vd = edge ? kInt8 : kInt4Hqq;
  return {
      {l + "self_attn.v_proj.weight", kInt4, vd},
      {l + "mlp.down_proj.weight", kInt4, vd},
      {l + "self_attn.q_proj.weight", kInt4, kInt4Hqq},
      {l + "self_attn.k_proj.weight", kInt4, kInt4Hqq},
      {l + "self_attn.o_proj.weight", kInt4, kInt4Hqq},
      {l + "mlp.gate_proj.weight", kInt4, kInt4Hqq},
      {l + "mlp.up_proj.weight", kInt4, kInt4Hqq},
      {l + "self_attn.q_norm.weight", std::nullopt, std::nullopt},
      {l + "self_attn.k_norm.weight", std::nullopt, std::nullopt},
      {l + "input_layernorm.weight", std::nullopt, std::nullopt},
      {l + "post_feedforward_layernorm.weight", std::nullopt, std::nullopt},
      {l + "layer_scalar", std::nullopt, std::nullopt},
  };
}

std::vector<Expectation> Layers(const std::vector<std::pair<int, bool>>& layers) {
  std::vector<Expectation> all;
  for (const auto& [layer, edge] : layers) {
    std::vector<Expectation> one = DenseLayer(layer, edge);
    all.insert(all.end(), one.begin(), one.end());
  }
  return all;
}

TEST_CASE("bundled recipes on the 31B layout", "[recipe]") {
  std::vector<Expectation> table =
      Layers({{0, true}, {14, true}, {15, false}, {44, false}, {45, true}, {59, true}});
  table.push_back({"embed_tokens.weight", kInt8PerRow, kInt8PerRow});
  table.push_back({"norm.weight", std::nullopt, std::nullopt});
  CheckTable("model.language_model.", 60, table);
  // Created by the quantize tool from the tied embedding; no prefix.
  CheckTable("", 60, {{"lm_head.weight", kInt4, kInt4Hqq}});
}

TEST_CASE("bundled recipes on the E2B layout", "[recipe]") {
  std::vector<Expectation> table =
      Layers({{0, true}, {7, true}, {8, false}, {26, false}, {27, true}, {34, true}});
  table.insert(table.end(),
               {
                   {"embed_tokens.weight", kInt8PerRow, kInt8PerRow},
                   // Not the embedding rule: "embed_tokens_per_layer" != "embed_tokens".
                   {"embed_tokens_per_layer.weight", kInt4, kInt4Hqq},
                   {"per_layer_model_projection.weight", kInt4, kInt4Hqq},
                   {"per_layer_projection_norm.weight", std::nullopt, std::nullopt},
                   {"layers.3.per_layer_input_gate.weight", kInt4, kInt4Hqq},
                   {"layers.3.per_layer_projection.weight", kInt4, kInt4Hqq},
                   {"layers.3.post_per_layer_input_norm.weight", std::nullopt, std::nullopt},
                   {"norm.weight", std::nullopt, std::nullopt},
               });
  CheckTable("model.", 35, table);
}

TEST_CASE("bundled recipes on MoE names", "[recipe]") {
  // 26B-A4B style, 30 layers: edges are 0..6 and 23..29.
  CheckTable("model.", 30,
             {
                 {"layers.0.experts.gate_up_proj", kInt4, kInt4Hqq},
                 // Expert tensors have no ".weight", so the edge int8 rule skips them.
                 {"layers.0.experts.down_proj", kInt4, kInt4Hqq},
                 {"layers.10.experts.down_proj", kInt4, kInt4Hqq},
                 {"layers.0.mlp.down_proj.weight", kInt4, kInt8},
                 {"layers.6.mlp.down_proj.weight", kInt4, kInt8},
                 {"layers.7.mlp.down_proj.weight", kInt4, kInt4Hqq},
                 {"layers.23.self_attn.v_proj.weight", kInt4, kInt8},
                 {"layers.0.router.proj.weight", std::nullopt, std::nullopt},
                 {"layers.0.router.scale", std::nullopt, std::nullopt},
                 {"layers.0.router.per_expert_scale", std::nullopt, std::nullopt},
                 {"layers.0.layer_scalar", std::nullopt, std::nullopt},
                 // The MoE block's extra norms carry a numeric suffix.
                 {"layers.0.post_feedforward_layernorm_1.weight", std::nullopt, std::nullopt},
                 {"layers.0.post_feedforward_layernorm_2.weight", std::nullopt, std::nullopt},
                 {"layers.0.pre_feedforward_layernorm_2.weight", std::nullopt, std::nullopt},
             });
}

TEST_CASE("bundled recipes on vision and audio names", "[recipe]") {
  // Multimodal checkpoints: the towers sit beside "model.language_model.".
  CheckTable(
      "model.", 60,
      {
          {"vision_tower.patch_embedder.position_embedding_table", kInt8PerRow, kInt8PerRow},
          {"vision_tower.patch_embedder.input_proj.weight", kInt8PerRow, kInt8PerRow},
          {"vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight", kInt8PerRow,
           kInt8PerRow},
          // Layer 0 and 26 of 27 are "edge" layers, but no edge rule reaches them.
          {"vision_tower.encoder.layers.0.self_attn.v_proj.linear.weight", kInt8PerRow,
           kInt8PerRow},
          {"vision_tower.encoder.layers.26.mlp.down_proj.linear.weight", kInt8PerRow, kInt8PerRow},
          {"vision_tower.encoder.layers.3.self_attn.q_proj.input_min", std::nullopt, std::nullopt},
          {"vision_tower.encoder.layers.3.self_attn.q_norm.weight", std::nullopt, std::nullopt},
          {"vision_tower.encoder.layers.3.input_layernorm.weight", std::nullopt, std::nullopt},
          {"vision_tower.std_bias", std::nullopt, std::nullopt},
          {"vision_tower.std_scale", std::nullopt, std::nullopt},
          {"embed_vision.embedding_projection.weight", kInt8PerRow, kInt8PerRow},
          {"audio_tower.layers.0.feed_forward1.ffw_layer_1.linear.weight", std::nullopt,
           std::nullopt},
          {"embed_audio.embedding_projection.weight", std::nullopt, std::nullopt},
      });
}

TEST_CASE("bundled recipe names", "[recipe]") {
  std::vector<std::string_view> names = BundledRecipeNames();
  CHECK(std::find(names.begin(), names.end(), "default") != names.end());
  CHECK(std::find(names.begin(), names.end(), "sensitive") != names.end());
  CHECK_FALSE(BundledRecipeJson("no_such_recipe").has_value());
}

TEST_CASE("first match wins; no match keeps", "[recipe]") {
  absl::StatusOr<Recipe> recipe = Recipe::FromJson(R"({"name": "t", "rules": [
      {"pattern": "a\\..*", "config": null},
      {"pattern": ".*\\.weight", "config": {"bits": 8}},
      {"pattern": "a\\.b\\.weight", "config": {"bits": 4}}]})",
                                                   "test");
  REQUIRE_OK(recipe);
  CHECK(recipe->Match("a.b.weight", 0) == RecipeMatch{0, std::nullopt});
  const QuantConfig int8_asym{.bits = 8, .group_size = 32};
  CHECK(recipe->Match("c.weight", 0) == RecipeMatch{1, int8_asym});
  // Full match: a prefix or a substring is not enough.
  CHECK(recipe->Match("c.weight.bias", 0) == RecipeMatch{});
  CHECK(recipe->Match("c.weight", 0).rule_index == 1);
  CHECK(recipe->Match("xa.weight", 0).rule_index == 1);
  CHECK(recipe->Match("", 0) == RecipeMatch{});
  CHECK(recipe->Match("c.bias", 0).rule_index == -1);
}

TEST_CASE("a rule with a layer filter needs a layer index", "[recipe]") {
  absl::StatusOr<Recipe> recipe = Recipe::FromJson(R"({"name": "t", "rules": [
      {"pattern": ".*", "layers": [[0, 10]], "config": {"bits": 8}},
      {"pattern": ".*", "layers": {"first": 0.5}, "config": {"bits": 6}},
      {"pattern": ".*", "config": {"bits": 4}}]})",
                                                   "test");
  REQUIRE_OK(recipe);
  CHECK(recipe->Match("model.layers.3.mlp.weight", 10).rule_index == 0);
  CHECK(recipe->Match("model.layers.50.mlp.weight", 200).rule_index == 1);
  CHECK(recipe->Match("model.layers.150.mlp.weight", 200).rule_index == 2);
  CHECK(recipe->Match("model.norm.weight", 10).rule_index == 2);
  CHECK(recipe->Match("model.layers.3", 10).rule_index == 2);
}

TEST_CASE("LayerIndexOf", "[recipe]") {
  CHECK(LayerIndexOf("model.layers.12.mlp") == 12);
  CHECK(LayerIndexOf("layers.0.x") == 0);
  CHECK(LayerIndexOf("model.language_model.layers.59.self_attn.v_proj.weight") == 59);
  CHECK(LayerIndexOf("layers.x.") == std::nullopt);
  CHECK(LayerIndexOf("model.layers.3") == std::nullopt);
  CHECK(LayerIndexOf("model.layers..3.") == std::nullopt);
  CHECK(LayerIndexOf("model.norm.weight") == std::nullopt);
  CHECK(LayerIndexOf("a.layers.1.b.layers.2.c") == 1);
  // As re.search: the first place the pattern matches, past a non-match.
  CHECK(LayerIndexOf("layers.x.layers.4.y") == 4);
  CHECK(LayerIndexOf("model.layers.2147483647.x") == 2147483647);
  CHECK(LayerIndexOf("model.layers.2147483648.x") == std::nullopt);
  CHECK(LayerIndexOf("model.layers.99999999999999999999.x") == std::nullopt);
}

TEST_CASE("LayerFilter::Contains", "[recipe]") {
  const LayerFilter edges{.first_fraction = 0.25, .last_fraction = 0.25};
  auto members = [&](int num_layers) {
    std::vector<int> in;
    for (int layer = 0; layer < num_layers; ++layer) {
      if (edges.Contains(layer, num_layers)) in.push_back(layer);
    }
    return in;
  };
  auto span = [](int first, int last, std::vector<int> into) {
    for (int layer = first; layer <= last; ++layer) into.push_back(layer);
    return into;
  };
  CHECK(members(60) == span(45, 59, span(0, 14, {})));
  CHECK(members(35) == span(27, 34, span(0, 7, {})));
  CHECK(members(42) == span(32, 41, span(0, 9, {})));
  CHECK(members(3).empty());
  CHECK_FALSE(edges.Contains(60, 60));  // outside the model
  CHECK_FALSE(edges.Contains(-1, 60));

  const LayerFilter first_only{.first_fraction = 0.5};
  CHECK(first_only.Contains(4, 10));
  CHECK_FALSE(first_only.Contains(5, 10));
  CHECK_FALSE(first_only.Contains(9, 10));

  const LayerFilter ranges{.ranges = {{0, 0}, {3, 5}}};
  CHECK(ranges.Contains(0, 0));
  CHECK(ranges.Contains(4, 10));
  CHECK_FALSE(ranges.Contains(2, 10));
  CHECK_FALSE(ranges.Contains(6, 10));
}

TEST_CASE("invalid recipes", "[recipe]") {
  struct Case {
    std::string json;
    std::vector<std::string> substrings;
  };
  constexpr char kFront[] = R"({"name": "t", "rules": [{"pattern": "x", "config": null}, )";
  auto rule = [&](const std::string& r) { return absl::StrCat(kFront, r, "]}"); };
  auto config = [&](const std::string& c) {
    return rule(absl::StrCat(R"({"pattern": ".*", "config": )", c, "}"));
  };
  auto layers = [&](const std::string& l) {
    return rule(absl::StrCat(R"({"pattern": ".*", "config": null, "layers": )", l, "}"));
  };
  const std::vector<Case> cases = {
      {rule(R"({"pattern": "(", "config": null})"),
       {"recipe 'test': rule 1: field 'pattern'", "missing )"}},
      {rule(R"({"pattern": "x", "config": null, "layer": [1]})"),
       {"rule 1: unknown field 'layer'"}},
      {config(R"({"bits": 4, "gs": 32})"), {"rule 1: unknown field 'config.gs'"}},
      {config(R"({"bits": 3})"), {"rule 1: field 'config.bits'", "got 3"}},
      {config(R"({"bits": 7})"), {"rule 1: field 'config.bits'", "got 7"}},
      {config(R"({"bits": 4.0})"), {"rule 1: field 'config.bits'", "got 4.0"}},
      {config(R"({"bits": "4"})"), {"rule 1: field 'config.bits'"}},
      {config(R"({"group_size": 32})"), {"rule 1: field 'config.bits'", "missing"}},
      {config(R"({"bits": 4, "group_size": 0})"), {"rule 1: field 'config.group_size'", "got 0"}},
      {config(R"({"bits": 4, "group_size": -32})"), {"rule 1: field 'config.group_size'", "-32"}},
      {config(R"({"bits": 4, "group_size": 32.0})"), {"rule 1: field 'config.group_size'"}},
      {config(R"({"bits": 4, "group_size": "per_col"})"),
       {"rule 1: field 'config.group_size'", "per_col"}},
      {config(R"({"bits": 4, "symmetric": "true"})"), {"rule 1: field 'config.symmetric'"}},
      {config(R"({"bits": 4, "method": "gptq"})"), {"rule 1: field 'config.method'", "gptq"}},
      // Asymmetric HQQ exists for 4-bit only (ValidateQuantConfig).
      {config(R"({"bits": 8, "method": "hqq"})"), {"rule 1: field 'config'"}},
      {config(R"("int4")"), {"rule 1: field 'config'", "an object or null"}},
      {rule(R"({"pattern": "x"})"), {"rule 1: field 'config'", "missing"}},
      {rule(R"({"config": null})"), {"rule 1: field 'pattern'", "missing"}},
      {rule(R"({"pattern": 5, "config": null})"), {"rule 1: field 'pattern'"}},
      {layers("[[5, 2]]"), {"rule 1: field 'layers[0]'", "[5,2]"}},
      {layers("[1, [2, 3, 4]]"), {"rule 1: field 'layers[1]'"}},
      {layers("[-1]"), {"rule 1: field 'layers[0]'"}},
      {layers("[1.5]"), {"rule 1: field 'layers[0]'"}},
      {layers("[]"), {"rule 1: field 'layers'"}},
      {layers("null"), {"rule 1: field 'layers'"}},
      {layers(R"({"first": 0.75})"), {"rule 1: field 'layers.first'", "0.75"}},
      {layers(R"({"last": -0.1})"), {"rule 1: field 'layers.last'"}},
      {layers(R"({"first": "0.25"})"), {"rule 1: field 'layers.first'"}},
      {layers("{}"), {"rule 1: field 'layers'"}},
      {layers(R"({"first": 0.25, "middle": 0.1})"), {"rule 1: unknown field 'layers.middle'"}},
      {R"({"name": "t", "rules": []})", {"recipe 'test': field 'rules'", "non-empty"}},
      {R"({"name": "t"})", {"field 'rules'", "missing"}},
      {R"({"name": "t", "rules": {}})", {"field 'rules'"}},
      {R"({"name": "t", "rules": [5]})", {"field 'rules[0]'"}},
      {R"({"rules": [{"pattern": "x", "config": null}]})", {"field 'name'", "missing"}},
      {R"({"name": "", "rules": [{"pattern": "x", "config": null}]})", {"field 'name'"}},
      {R"({"name": "t", "version": 1, "rules": [{"pattern": "x", "config": null}]})",
       {"unknown field 'version'"}},
      {R"({"name": "t", "description": 1, "rules": [{"pattern": "x", "config": null}]})",
       {"field 'description'"}},
      {R"({"name": "t", "rules": [{"pattern": "x", "config": null, "config": {"bits": 4}}]})",
       {"duplicate key 'config'"}},
      {R"({"name": "t", "rules": [)", {"recipe 'test': invalid JSON"}},
      {"[1]", {"recipe 'test': expected a JSON object"}},
  };
  for (const Case& c : cases) {
    INFO(c.json);
    absl::StatusOr<Recipe> recipe = Recipe::FromJson(c.json, "test");
    REQUIRE_STATUS_IS(recipe, absl::StatusCode::kInvalidArgument);
    for (const std::string& substring : c.substrings) {
      INFO(recipe.status().message());
      CHECK(absl::StrContains(recipe.status().message(), substring));
    }
  }
  REQUIRE_OK(Recipe::FromJson(rule(R"({"pattern": "y", "config": {"bits": 4}})"), "test"));
}

void CheckRoundTrip(const Recipe& recipe) {
  const std::string json = recipe.ToJson();
  INFO(json);
  CHECK(json.find('\n') == std::string::npos);  // compact
  absl::StatusOr<Recipe> again = Recipe::FromJson(json, "round trip");
  REQUIRE_OK(again);
  CHECK(again->name() == recipe.name());
  CHECK(again->description() == recipe.description());
  CHECK(again->rules() == recipe.rules());
  CHECK(again->ToJson() == json);
}

TEST_CASE("ToJson round-trips", "[recipe]") {
  for (const char* name : {"default", "sensitive"}) {
    absl::StatusOr<Recipe> recipe = Recipe::Load(name);
    REQUIRE_OK(recipe);
    CheckRoundTrip(*recipe);
  }
  absl::StatusOr<Recipe> custom = Recipe::FromJson(R"({"name": "custom", "rules": [
      {"pattern": "a", "layers": [0, [3, 3], [45, 59]], "config": {"bits": 6, "group_size": 64,
       "symmetric": true, "method": "hqq"}},
      {"pattern": "b", "layers": {"last": 0.125}, "config": {"bits": 5, "group_size": "per_row"}},
      {"pattern": "c", "config": null}]})",
                                                   "custom");
  REQUIRE_OK(custom);
  CHECK(custom->description().empty());
  REQUIRE(custom->rules().size() == 3);
  CHECK(custom->rules()[0].layers->ranges ==
        std::vector<std::pair<int, int>>{{0, 0}, {3, 3}, {45, 59}});
  CHECK(custom->rules()[1].layers->last_fraction == 0.125);
  CHECK(custom->rules()[1].config->group_size == kPerRowGroupSize);
  CheckRoundTrip(*custom);
}

TEST_CASE("Load", "[recipe]") {
  absl::StatusOr<Recipe> bundled = Recipe::Load("sensitive");
  REQUIRE_OK(bundled);
  CHECK(bundled->name() == "sensitive");
  CHECK_FALSE(bundled->description().empty());
  REQUIRE(bundled->rules().size() == 9);
  CHECK(bundled->rules()[6].layers == LayerFilter{.first_fraction = 0.25, .last_fraction = 0.25});

  TempDir dir;
  const std::string path = dir.File("mine.json");
  std::ofstream(path) << R"({"name": "mine", "rules": [{"pattern": ".*", "config": {"bits": 8}}]})";
  absl::StatusOr<Recipe> from_file = Recipe::Load(path);
  REQUIRE_OK(from_file);
  CHECK(from_file->name() == "mine");
  CHECK(from_file->Match("w", 1).config == QuantConfig{.bits = 8});

  const std::string bad = dir.File("bad.json");
  std::ofstream(bad) << R"({"name": "bad", "rules": [{"pattern": "x", "config": {"bits": 3}}]})";
  absl::StatusOr<Recipe> invalid = Recipe::Load(bad);
  REQUIRE_STATUS_IS(invalid, absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(invalid.status().message(), bad));

  absl::StatusOr<Recipe> missing = Recipe::Load("no_such_recipe");
  REQUIRE_STATUS_IS(missing, absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(missing.status().message(), "'no_such_recipe'"));
  CHECK(absl::StrContains(missing.status().message(), "default"));
  REQUIRE_STATUS_IS(Recipe::Load(dir.File("missing.json")), absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(Recipe::Load(dir.path().string()), absl::StatusCode::kInvalidArgument);
}

// ---- hostile inputs (issue 8) ----

TEST_CASE("hostile recipes fail fast with InvalidArgument", "[recipe][hostile]") {
  constexpr int kDeep = 100000;
  const std::string deep_arrays = std::string(kDeep, '[') + std::string(kDeep, ']');
  std::string deep_objects;
  for (int i = 0; i < kDeep; ++i) deep_objects += R"({"a":)";
  deep_objects += "1" + std::string(kDeep, '}');
  const std::string rules = R"(, "rules": [{"pattern": ".*", "config": null}]})";
  struct Case {
    const char* what;
    std::string json;
    const char* message;
  };
  const Case cases[] = {
      {"100000 nested arrays", R"({"name": )" + deep_arrays + rules, "nesting at most 64 deep"},
      {"100000 unclosed arrays", R"({"name": )" + std::string(kDeep, '['),
       "nesting at most 64 deep"},
      {"100000 nested objects", R"({"name": "x", "description": )" + deep_objects + rules,
       "nesting at most 64 deep"},
      {"17 MiB of JSON",
       R"({"name": "x", "description": ")" + std::string(17 << 20, 'd') + "\"" + rules,
       "expected at most 16777216"},
      {"invalid UTF-8 in the name", "{\"name\": \"\xff\"" + rules, "invalid JSON"},
      {"overlong UTF-8 '/' in a pattern",
       R"({"name": "x", "rules": [{"pattern": ")"
       "\xc0\xaf"
       R"(", "config": null}]})",
       "invalid JSON"},
      {"unpaired surrogate in the name", R"({"name": "\udc00")" + rules, "invalid JSON"},
      {"layer index 2^64",
       R"({"name": "x", "rules": [{"pattern": ".*", "config": null, )"
       R"("layers": [18446744073709551616]}]})",
       "field 'layers[0]'"},
      {"layer range near 2^63",
       R"({"name": "x", "rules": [{"pattern": ".*", "config": null, )"
       R"("layers": [[0, 9223372036854775807]]}]})",
       "field 'layers[0]'"},
      {"group size 2^64 - 1",
       R"({"name": "x", "rules": [{"pattern": ".*", "config": )"
       R"({"bits": 4, "group_size": 18446744073709551615}}]})",
       "field 'config.group_size'"},
      // RE2 refuses a program over its memory budget instead of building it.
      {"a regex needing gigabytes",
       R"json({"name": "x", "rules": [{"pattern": "((((a{100}){100}){100}){100})", "config": null}]})json",
       "field 'pattern': invalid regular expression"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<Recipe> recipe = absl::InternalError("not run");
    CHECK_NOTHROW(recipe = Recipe::FromJson(c.json, "hostile"));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    CHECK(recipe.status().code() == absl::StatusCode::kInvalidArgument);
    INFO(recipe.status().message());
    CHECK(absl::StartsWith(recipe.status().message(), "recipe 'hostile': "));
    CHECK(absl::StrContains(recipe.status().message(), c.message));
  }
}

TEST_CASE("recipe strings may hold NULs and non-ASCII", "[recipe][hostile]") {
  absl::StatusOr<Recipe> recipe = Recipe::FromJson(
      R"({"name": "n\u0000ul", "rules": [{"pattern": "a\u0000b|caf\u00e9", "config": null},)"
      R"( {"pattern": ".*", "config": {"bits": 8}}]})",
      "nul");
  REQUIRE_OK(recipe);
  CHECK(recipe->name() == std::string("n\0ul", 4));
  CHECK(recipe->Match(std::string("a\0b", 3), 1).rule_index == 0);
  CHECK(recipe->Match("caf\xc3\xa9", 1).rule_index == 0);
  CHECK(recipe->Match("a", 1).rule_index == 1);
  CheckRoundTrip(*recipe);
}

TEST_CASE("Recipe::Load takes regular files only, symlinks followed", "[recipe][hostile]") {
  namespace fs = std::filesystem;
  TempDir dir;
  const std::string path = dir.File("real.json");
  std::ofstream(path) << R"({"name": "real", "rules": [{"pattern": ".*", "config": null}]})";
  fs::create_symlink(path, dir.path() / "link.json");
  absl::StatusOr<Recipe> linked = Recipe::Load(dir.File("link.json"));
  REQUIRE_OK(linked);
  CHECK(linked->name() == "real");

  // A FIFO with no writer would block a reader: refused before opening.
  REQUIRE(mkfifo(dir.File("fifo.json").c_str(), 0600) == 0);
  REQUIRE_STATUS_IS(Recipe::Load(dir.File("fifo.json")), absl::StatusCode::kInvalidArgument);
  fs::create_symlink(dir.path() / "nowhere.json", dir.path() / "dangling.json");
  REQUIRE_STATUS_IS(Recipe::Load(dir.File("dangling.json")), absl::StatusCode::kNotFound);

  // A 1 GiB (sparse) file is refused by its size, without reading it.
  const std::string huge = dir.File("huge.json");
  std::ofstream(huge) << "{";
  fs::resize_file(huge, uintmax_t{1} << 30);
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = Recipe::Load(huge).status();
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  REQUIRE_STATUS_IS(status, absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(status.message(), huge));
  CHECK(absl::StrContains(status.message(), "expected at most 16777216 bytes"));
}

}  // namespace
}  // namespace gquant
