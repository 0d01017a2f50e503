// Quantization recipes: an ordered list of rules that decide, per tensor
// name, how a weight is quantized (spec formats.md §2.4, ExecuTorch
// QuantRecipe; torchao FqnToConfig semantics).
//
// JSON (recipes/README.md has the full schema):
//   {"name": "default", "description": "...",
//    "rules": [
//      {"pattern": ".*embed_tokens\\.weight",
//       "config": {"bits": 8, "group_size": "per_row", "symmetric": true, "method": "min_max"}},
//      {"pattern": ".*norm\\.weight", "config": null},
//      {"pattern": ".*\\.(v_proj|down_proj)\\.weight", "layers": {"first": 0.25, "last": 0.25},
//       "config": {"bits": 8, "group_size": 32, "symmetric": true, "method": "min_max"}},
//      {"pattern": ".*\\.weight", "config": {"bits": 4, "group_size": 32}}]}
//
// Matching: the pattern must match the whole tensor name (RE2 full match).
// Rules are tried in order and the first match wins; no match, or a match
// whose config is null, means "keep as is". A rule with "layers" matches only
// names that carry a layer index (the first "layers.<N>." in the name) inside
// the filter. "layers" is a list of indices and [first, last] ranges
// (inclusive), e.g. [0, 3, [45, 59]], or {"first": f, "last": f}: the first
// and last floor(f * num_layers) layers of the model (f = 0.25 gives layers
// 0..14 and 45..59 for 60 layers, 0..7 and 27..34 for 35), so one recipe
// serves every model size.
// Config fields: bits (4, 5, 6, 8; required), group_size (positive integer or
// "per_row"; default 32), symmetric (default false), method ("min_max" or
// "hqq"; default "min_max").
#ifndef GQUANT_RECIPE_H_
#define GQUANT_RECIPE_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/quantize.h"

namespace gquant {

struct LayerFilter {
  std::vector<std::pair<int, int>> ranges;  // inclusive [first, last]
  // Edge fractions, resolved against the model's layer count.
  double first_fraction = 0;
  double last_fraction = 0;

  // In a range, or among the first floor(first_fraction * num_layers) or last
  // floor(last_fraction * num_layers) of 0..num_layers-1.
  bool Contains(int layer, int num_layers) const;

  friend bool operator==(const LayerFilter&, const LayerFilter&) = default;
};

struct RecipeRule {
  std::string pattern;
  std::optional<QuantConfig> config;  // nullopt: keep the tensor as is
  std::optional<LayerFilter> layers;

  friend bool operator==(const RecipeRule&, const RecipeRule&) = default;
};

// What a recipe decided for one tensor.
struct RecipeMatch {
  int rule_index = -1;                // -1: no rule matched
  std::optional<QuantConfig> config;  // nullopt: keep

  friend bool operator==(const RecipeMatch&, const RecipeMatch&) = default;
};

// The layer index of a tensor name: N of the first "layers.N." in it.
std::optional<int> LayerIndexOf(std::string_view tensor_name);

class Recipe {
 public:
  // Parses and validates recipe JSON; `source` names it in messages.
  // Returns InvalidArgument for invalid JSON (also invalid UTF-8, a repeated
  // key, nesting deeper than 64 or text over 16 MiB), an unknown key, a bad
  // regex (also one RE2 would need too much memory for), bits
  // outside {4,5,6,8}, a group size <= 0, a bad layer filter or an invalid
  // config (ValidateQuantConfig); messages read
  // "recipe '<source>': rule <i>: field '<name>': ...".
  static absl::StatusOr<Recipe> FromJson(std::string_view json, std::string_view source);

  // A bundled recipe by name ("default", "sensitive"), else a JSON file path
  // (symlinks followed). Returns NotFound when it is neither, InvalidArgument
  // for a path that is not a regular file or holds over 16 MiB, and
  // FromJson's errors.
  static absl::StatusOr<Recipe> Load(const std::string& name_or_path);

  const std::string& name() const;
  const std::string& description() const;
  const std::vector<RecipeRule>& rules() const;
  // The recipe as compact JSON (stored in quantized checkpoints).
  std::string ToJson() const;

  // The first rule that matches `tensor_name` in a model of `num_layers`.
  RecipeMatch Match(std::string_view tensor_name, int num_layers) const;

 private:
  struct State;
  explicit Recipe(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

// Recipes compiled into the library from recipes/*.json (by file stem).
std::vector<std::string_view> BundledRecipeNames();
std::optional<std::string_view> BundledRecipeJson(std::string_view name);

}  // namespace gquant

#endif  // GQUANT_RECIPE_H_
