// Fuzzes Recipe::FromJson with arbitrary text. On success it does what
// gquant-quantize does next: stores the recipe as JSON (ToJson), which must
// parse back into the same rules, and matches tensor names of models of
// several depths against it.
#include <string>

#include "fuzz_util.h"
#include "gquant/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gquant;
  const std::string_view text = fuzz::AsText(data, size);
  const absl::StatusOr<Recipe> recipe = Recipe::FromJson(text, "fuzz-input");
  (void)LayerIndexOf(text);
  if (!recipe.ok()) {
    fuzz::CheckErrorNames(recipe.status(), "recipe 'fuzz-input'");
    FUZZ_CHECK(recipe.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(!recipe->name().empty() && !recipe->rules().empty());

  const std::string stored = recipe->ToJson();
  const absl::StatusOr<Recipe> reread = Recipe::FromJson(stored, "stored");
  FUZZ_CHECK(reread.ok());
  FUZZ_CHECK(reread->name() == recipe->name());
  FUZZ_CHECK(reread->description() == recipe->description());
  FUZZ_CHECK(reread->rules() == recipe->rules());

  static const char* const kNames[] = {
      "model.language_model.embed_tokens.weight",
      "model.language_model.layers.0.self_attn.q_proj.weight",
      "model.language_model.layers.14.mlp.down_proj.weight",
      "model.language_model.layers.59.self_attn.v_proj.weight",
      "model.layers.2147483647.mlp.gate_proj.weight",
      "model.layers.99999999999.input_layernorm.weight",
      "lm_head.weight",
      "",
  };
  for (int num_layers : {0, 1, 35, 60, 2147483647}) {
    for (const char* name : kNames) {
      const RecipeMatch match = recipe->Match(name, num_layers);
      FUZZ_CHECK(match.rule_index >= -1 &&
                 match.rule_index < static_cast<int>(recipe->rules().size()));
      if (match.rule_index >= 0)
        FUZZ_CHECK(match.config == recipe->rules()[match.rule_index].config);
    }
  }
  return 0;
}
