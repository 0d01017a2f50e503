#include "gquant/recipe.h"

#include <re2/re2.h>

#include <charconv>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/status.h"
#include "strict_json.h"

namespace gquant {
namespace {

namespace fs = std::filesystem;
// Ordered, so unknown keys are reported and ToJson is written in file order.
using Json = nlohmann::ordered_json;

// A JSON value for an error message, shortened so a huge object stays legible.
std::string Describe(const Json& value) {
  std::string text = value.dump();
  constexpr size_t kMaxChars = 60;
  if (text.size() > kMaxChars) text = absl::StrCat(text.substr(0, kMaxChars), "...");
  return text;
}

// Builds messages "recipe '<source>': rule <i>: field '<field>': ...".
class ErrorContext {
 public:
  explicit ErrorContext(std::string prefix) : prefix_(std::move(prefix)) {}
  ErrorContext Rule(size_t index) const {
    return ErrorContext(absl::StrCat(prefix_, "rule ", index, ": "));
  }

  absl::Status Expected(const std::string& field, const std::string& expected,
                        const Json& got) const {
    return absl::InvalidArgumentError(absl::StrFormat("%sfield '%s': expected %s, but got %s",
                                                      prefix_, field, expected, Describe(got)));
  }
  absl::Status Missing(const std::string& field, const std::string& expected) const {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%sfield '%s': expected %s, but the field is missing", prefix_, field, expected));
  }
  absl::Status Annotated(const absl::Status& status, const std::string& field) const {
    return Annotate(status, prefix_, "field '", field, "'");
  }

  // Every key of `object` must be in `allowed`; `path` prefixes nested names.
  absl::Status CheckKeys(const Json& object, std::initializer_list<const char*> allowed,
                         const std::string& path) const {
    for (const auto& [key, value] : object.items()) {
      bool known = false;
      for (const char* name : allowed) known = known || key == name;
      if (known) continue;
      std::string names;
      for (const char* name : allowed) absl::StrAppend(&names, names.empty() ? "" : ", ", name);
      return absl::InvalidArgumentError(
          absl::StrFormat("%sunknown field '%s%s': expected one of %s", prefix_, path, key, names));
    }
    return absl::OkStatus();
  }

  // An integer in int range; floats and booleans are rejected, not coerced.
  absl::StatusOr<int> Int(const Json& value, const std::string& field,
                          const std::string& expected) const {
    if (!value.is_number_integer()) return Expected(field, expected, value);
    if (value.is_number_unsigned()) {
      if (value.get<uint64_t>() > static_cast<uint64_t>(INT_MAX)) {
        return Expected(field, expected, value);
      }
      return static_cast<int>(value.get<uint64_t>());
    }
    const int64_t v = value.get<int64_t>();
    if (v < INT_MIN || v > INT_MAX) return Expected(field, expected, value);
    return static_cast<int>(v);
  }

 private:
  std::string prefix_;
};

absl::StatusOr<std::optional<QuantConfig>> ParseConfig(const Json& json, const ErrorContext& ctx) {
  if (json.is_null()) return std::optional<QuantConfig>();
  if (!json.is_object()) return ctx.Expected("config", "an object or null", json);
  GQ_RETURN_IF_ERROR(ctx.CheckKeys(json, {"bits", "group_size", "symmetric", "method"}, "config."));
  QuantConfig config;
  const auto bits = json.find("bits");
  constexpr char kBits[] = "4, 5, 6 or 8";
  if (bits == json.end()) return ctx.Missing("config.bits", kBits);
  GQ_ASSIGN_OR_RETURN(config.bits, ctx.Int(*bits, "config.bits", kBits));
  if (config.bits != 4 && config.bits != 5 && config.bits != 6 && config.bits != 8) {
    return ctx.Expected("config.bits", kBits, *bits);
  }
  if (const auto gs = json.find("group_size"); gs != json.end()) {
    constexpr char kGroup[] = "a positive integer or \"per_row\"";
    if (gs->is_string()) {
      if (gs->get<std::string>() != "per_row")
        return ctx.Expected("config.group_size", kGroup, *gs);
      config.group_size = kPerRowGroupSize;
    } else {
      // 0 is kPerRowGroupSize internally; in JSON it must be spelled "per_row".
      GQ_ASSIGN_OR_RETURN(config.group_size, ctx.Int(*gs, "config.group_size", kGroup));
      if (config.group_size <= 0) return ctx.Expected("config.group_size", kGroup, *gs);
    }
  }
  if (const auto sym = json.find("symmetric"); sym != json.end()) {
    if (!sym->is_boolean()) return ctx.Expected("config.symmetric", "true or false", *sym);
    config.symmetric = sym->get<bool>();
  }
  if (const auto method = json.find("method"); method != json.end()) {
    constexpr char kMethods[] = "\"min_max\" or \"hqq\"";
    if (!method->is_string()) return ctx.Expected("config.method", kMethods, *method);
    absl::StatusOr<QuantMethod> parsed = QuantMethodFromName(method->get<std::string>());
    if (!parsed.ok()) return ctx.Expected("config.method", kMethods, *method);
    config.method = *parsed;
  }
  if (absl::Status valid = ValidateQuantConfig(config); !valid.ok()) {
    return ctx.Annotated(valid, "config");
  }
  return std::optional<QuantConfig>(config);
}

absl::StatusOr<LayerFilter> ParseLayers(const Json& json, const ErrorContext& ctx) {
  LayerFilter filter;
  if (json.is_object()) {
    GQ_RETURN_IF_ERROR(ctx.CheckKeys(json, {"first", "last"}, "layers."));
    if (json.empty()) {
      return ctx.Expected("layers", "an object with \"first\" and/or \"last\"", json);
    }
    constexpr char kFraction[] = "a fraction of the layers in [0, 0.5]";
    for (const char* key : {"first", "last"}) {
      const auto value = json.find(key);
      if (value == json.end()) continue;
      const std::string field = absl::StrCat("layers.", key);
      if (!value->is_number()) return ctx.Expected(field, kFraction, *value);
      const double f = value->get<double>();
      if (!(f >= 0 && f <= 0.5)) return ctx.Expected(field, kFraction, *value);
      double& target =
          std::string_view(key) == "first" ? filter.first_fraction : filter.last_fraction;
      target = f;
    }
    return filter;
  }
  if (!json.is_array() || json.empty()) {
    return ctx.Expected("layers",
                        "a non-empty array of layer indices and [first, last] ranges, or "
                        "{\"first\": f, \"last\": f}",
                        json);
  }
  constexpr char kItem[] = "a layer index >= 0 or a [first, last] range with 0 <= first <= last";
  for (size_t i = 0; i < json.size(); ++i) {
    const Json& item = json[i];
    const std::string field = absl::StrCat("layers[", i, "]");
    if (item.is_array()) {
      if (item.size() != 2) return ctx.Expected(field, kItem, item);
      GQ_ASSIGN_OR_RETURN(const int first, ctx.Int(item[0], field, kItem));
      GQ_ASSIGN_OR_RETURN(const int last, ctx.Int(item[1], field, kItem));
      if (first < 0 || first > last) return ctx.Expected(field, kItem, item);
      filter.ranges.emplace_back(first, last);
    } else {
      GQ_ASSIGN_OR_RETURN(const int layer, ctx.Int(item, field, kItem));
      if (layer < 0) return ctx.Expected(field, kItem, item);
      filter.ranges.emplace_back(layer, layer);
    }
  }
  return filter;
}

Json ConfigToJson(const QuantConfig& config) {
  Json json = Json::object();
  json["bits"] = config.bits;
  if (config.group_size == kPerRowGroupSize) {
    json["group_size"] = "per_row";
  } else {
    json["group_size"] = config.group_size;
  }
  json["symmetric"] = config.symmetric;
  json["method"] = std::string(QuantMethodName(config.method));
  return json;
}

Json LayersToJson(const LayerFilter& filter) {
  if (filter.ranges.empty()) {
    return Json{{"first", filter.first_fraction}, {"last", filter.last_fraction}};
  }
  Json json = Json::array();
  for (const auto& [first, last] : filter.ranges) {
    json.push_back(first == last ? Json(first) : Json::array({first, last}));
  }
  return json;
}

}  // namespace

bool LayerFilter::Contains(int layer, int num_layers) const {
  for (const auto& [first, last] : ranges) {
    if (layer >= first && layer <= last) return true;
  }
  // Fractions resolve against the model, so a layer outside it is never an edge.
  if (layer < 0 || layer >= num_layers) return false;
  const int first_count = static_cast<int>(std::floor(first_fraction * num_layers));
  const int last_count = static_cast<int>(std::floor(last_fraction * num_layers));
  return layer < first_count || layer >= num_layers - last_count;
}

std::optional<int> LayerIndexOf(std::string_view tensor_name) {
  // Python's re.search(r"layers\.(\d+)\.") semantics: the first position where
  // "layers." is followed by digits and a dot.
  constexpr std::string_view kKey = "layers.";
  for (size_t pos = tensor_name.find(kKey); pos != std::string_view::npos;
       pos = tensor_name.find(kKey, pos + 1)) {
    const size_t begin = pos + kKey.size();
    size_t end = begin;
    while (end < tensor_name.size() && tensor_name[end] >= '0' && tensor_name[end] <= '9') ++end;
    if (end == begin || end == tensor_name.size() || tensor_name[end] != '.') continue;
    int layer = 0;
    const auto [ptr, ec] =
        std::from_chars(tensor_name.data() + begin, tensor_name.data() + end, layer);
    if (ec != std::errc()) return std::nullopt;  // does not fit in int
    return layer;
  }
  return std::nullopt;
}

struct Recipe::State {
  std::string name;
  std::string description;
  std::vector<RecipeRule> rules;
  std::vector<std::unique_ptr<const RE2>> regexes;  // regexes[i] compiles rules[i].pattern
};

absl::StatusOr<Recipe> Recipe::FromJson(std::string_view json, std::string_view source) {
  const ErrorContext ctx(absl::StrFormat("recipe '%s': ", source));
  absl::StatusOr<Json> parsed = internal::ParseStrictJson<Json>(json);
  if (!parsed.ok()) return Annotate(parsed.status(), "recipe '", std::string(source), "'");
  const Json root = std::move(*parsed);
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "recipe '%s': expected a JSON object, but got %s", source, root.type_name()));
  }
  GQ_RETURN_IF_ERROR(ctx.CheckKeys(root, {"name", "description", "rules"}, ""));

  auto state = std::make_shared<State>();
  const auto name = root.find("name");
  if (name == root.end()) return ctx.Missing("name", "a non-empty string");
  if (!name->is_string() || name->get<std::string>().empty()) {
    return ctx.Expected("name", "a non-empty string", *name);
  }
  state->name = name->get<std::string>();
  if (const auto description = root.find("description"); description != root.end()) {
    if (!description->is_string()) return ctx.Expected("description", "a string", *description);
    state->description = description->get<std::string>();
  }
  const auto rules = root.find("rules");
  constexpr char kRules[] = "a non-empty array of rules";
  if (rules == root.end()) return ctx.Missing("rules", kRules);
  if (!rules->is_array() || rules->empty()) return ctx.Expected("rules", kRules, *rules);

  for (size_t i = 0; i < rules->size(); ++i) {
    const Json& rule_json = (*rules)[i];
    const ErrorContext rule_ctx = ctx.Rule(i);
    if (!rule_json.is_object()) {
      return ctx.Expected(absl::StrCat("rules[", i, "]"), "an object", rule_json);
    }
    GQ_RETURN_IF_ERROR(rule_ctx.CheckKeys(rule_json, {"pattern", "config", "layers"}, ""));
    RecipeRule rule;
    const auto pattern = rule_json.find("pattern");
    constexpr char kPattern[] = "a regular expression string";
    if (pattern == rule_json.end()) return rule_ctx.Missing("pattern", kPattern);
    if (!pattern->is_string()) return rule_ctx.Expected("pattern", kPattern, *pattern);
    rule.pattern = pattern->get<std::string>();
    RE2::Options options;
    options.set_log_errors(false);  // the error goes into the Status instead
    auto regex = std::make_unique<const RE2>(rule.pattern, options);
    if (!regex->ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("recipe '%s': rule %d: field 'pattern': invalid regular expression "
                          "'%s': %s",
                          source, i, rule.pattern, regex->error()));
    }
    const auto config = rule_json.find("config");
    // Required, so that "keep" is always written as an explicit null.
    if (config == rule_json.end()) return rule_ctx.Missing("config", "an object or null");
    GQ_ASSIGN_OR_RETURN(rule.config, ParseConfig(*config, rule_ctx));
    if (const auto layers = rule_json.find("layers"); layers != rule_json.end()) {
      GQ_ASSIGN_OR_RETURN(rule.layers, ParseLayers(*layers, rule_ctx));
    }
    state->rules.push_back(std::move(rule));
    state->regexes.push_back(std::move(regex));
  }
  return Recipe(std::move(state));
}

absl::StatusOr<Recipe> Recipe::Load(const std::string& name_or_path) {
  if (std::optional<std::string_view> json = BundledRecipeJson(name_or_path)) {
    return FromJson(*json, name_or_path);
  }
  std::error_code ec;
  const fs::file_status status = fs::status(name_or_path, ec);
  if (!fs::exists(status)) {
    std::string bundled;
    for (std::string_view name : BundledRecipeNames()) {
      absl::StrAppend(&bundled, bundled.empty() ? "" : ", ", std::string(name));
    }
    return absl::NotFoundError(
        absl::StrFormat("recipe '%s': expected a bundled recipe name (%s) or a JSON file, but "
                        "there is no such file",
                        name_or_path, bundled));
  }
  if (!fs::is_regular_file(status)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "recipe '%s': expected a JSON file, but it is not a regular file", name_or_path));
  }
  // Checked before reading, so a huge file is not read into memory first.
  if (const uintmax_t size = fs::file_size(name_or_path, ec);
      !ec && size > internal::kMaxJsonBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("recipe '%s': expected at most %d bytes of JSON, but the file has %d",
                        name_or_path, internal::kMaxJsonBytes, size));
  }
  std::ifstream file(name_or_path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  if (!file || !text) {
    return absl::NotFoundError(absl::StrFormat("recipe '%s': cannot read the file", name_or_path));
  }
  return FromJson(text.str(), name_or_path);
}

const std::string& Recipe::name() const { return state_->name; }
const std::string& Recipe::description() const { return state_->description; }
const std::vector<RecipeRule>& Recipe::rules() const { return state_->rules; }

std::string Recipe::ToJson() const {
  Json json = Json::object();
  json["name"] = state_->name;
  if (!state_->description.empty()) json["description"] = state_->description;
  Json rules = Json::array();
  for (const RecipeRule& rule : state_->rules) {
    Json rule_json = Json::object();
    rule_json["pattern"] = rule.pattern;
    if (rule.layers.has_value()) rule_json["layers"] = LayersToJson(*rule.layers);
    rule_json["config"] = rule.config.has_value() ? ConfigToJson(*rule.config) : Json(nullptr);
    rules.push_back(std::move(rule_json));
  }
  json["rules"] = std::move(rules);
  return json.dump();
}

RecipeMatch Recipe::Match(std::string_view tensor_name, int num_layers) const {
  // Computed at most once, and only when a rule has a layer filter.
  std::optional<std::optional<int>> layer;
  const re2::StringPiece text(tensor_name.data(), tensor_name.size());
  for (size_t i = 0; i < state_->rules.size(); ++i) {
    const RecipeRule& rule = state_->rules[i];
    if (rule.layers.has_value()) {
      if (!layer.has_value()) layer = LayerIndexOf(tensor_name);
      if (!layer->has_value() || !rule.layers->Contains(**layer, num_layers)) continue;
    }
    if (RE2::FullMatch(text, *state_->regexes[i])) {
      return RecipeMatch{.rule_index = static_cast<int>(i), .config = rule.config};
    }
  }
  return RecipeMatch{};
}

}  // namespace gquant
