#include "gquant/gemma4/config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../strict_json.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "gquant/mapped_file.h"
#include "gquant/status.h"

namespace gquant::gemma4 {
namespace {

using Json = nlohmann::json;

// Debian's Abseil (ABSL_OPTION_USE_STD_STRING_VIEW 0) has its own
// absl::string_view, and StrCat does not take std::string_view, so the
// internals use absl::string_view.
absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

constexpr absl::string_view kSlidingName = "sliding_attention";
constexpr absl::string_view kFullName = "full_attention";

// Guards the per-layer vectors against absurd layer counts in a hostile file
// (the largest Gemma 4 has 60 layers).
constexpr int kMaxLayers = 4096;

absl::string_view TypeName(LayerType type) {
  return type == LayerType::kFull ? kFullName : kSlidingName;
}

// "string \"5376\"", "number 5376.5", "null": the offending value, truncated.
std::string Describe(const Json& value) {
  if (value.is_null()) return "null";
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return absl::StrCat(value.type_name(), " ", text);
}

absl::Status FieldError(absl::string_view key, absl::string_view expected, absl::string_view got) {
  return absl::InvalidArgumentError(
      absl::StrCat("field '", key, "': expected ", expected, ", but got ", got));
}

absl::Status TypeError(absl::string_view key, absl::string_view expected, const Json& value) {
  return FieldError(key, expected, Describe(value));
}

absl::Status MissingError(absl::string_view key) {
  return absl::InvalidArgumentError(absl::StrCat("missing required field '", key, "'"));
}

absl::Status RequirePositive(absl::string_view key, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return FieldError(key, "a positive value", absl::StrCat(value));
}

absl::Status CheckLayerCount(int num_layers) {
  GQ_RETURN_IF_ERROR(RequirePositive("num_hidden_layers", num_layers));
  if (num_layers <= kMaxLayers) return absl::OkStatus();
  return FieldError("num_hidden_layers", absl::StrCat("at most ", kMaxLayers),
                    absl::StrCat(num_layers));
}

absl::Status CheckTokenIds(absl::string_view key, absl::Span<const int> ids, int vocab_size) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= 0 && ids[i] < vocab_size) continue;
    return FieldError(ids.size() == 1 ? std::string(key) : absl::StrCat(key, "[", i, "]"),
                      absl::StrCat("a token id in [0, ", vocab_size, ")"), absl::StrCat(ids[i]));
  }
  return absl::OkStatus();
}

absl::Status CheckTokenId(absl::string_view key, const std::optional<int>& id, int vocab_size) {
  return id.has_value() ? CheckTokenIds(key, {*id}, vocab_size) : absl::OkStatus();
}

// ---- JSON value -> C++ value, rejecting wrong types (HF's @strict does too) ----

absl::Status Convert(const Json& value, absl::string_view key, int* out) {
  // Floats are rejected even when integral: Python writes ints without ".0".
  if (!value.is_number_integer()) return TypeError(key, "an integer", value);
  const bool fits = value.is_number_unsigned()
                        ? value.get<uint64_t>() <= INT_MAX
                        : value.get<int64_t>() >= INT_MIN && value.get<int64_t>() <= INT_MAX;
  if (!fits) return TypeError(key, "an integer in int32 range", value);
  *out = value.get<int>();
  return absl::OkStatus();
}

// double (any JSON number), bool or std::string.
template <typename T>
absl::Status Convert(const Json& value, absl::string_view key, T* out) {
  constexpr bool kIsBool = std::is_same_v<T, bool>, kIsDouble = std::is_same_v<T, double>;
  static_assert(kIsBool || kIsDouble || std::is_same_v<T, std::string>);
  const bool ok = kIsBool ? value.is_boolean() : kIsDouble ? value.is_number() : value.is_string();
  if (!ok)
    return TypeError(key, kIsBool ? "a boolean" : kIsDouble ? "a number" : "a string", value);
  *out = value.get<T>();
  return absl::OkStatus();
}

// Nullable field: null clears *out.
template <typename T>
absl::Status Convert(const Json& value, absl::string_view key, std::optional<T>* out) {
  if (value.is_null()) {
    out->reset();
    return absl::OkStatus();
  }
  T item{};
  GQ_RETURN_IF_ERROR(Convert(value, key, &item));
  *out = std::move(item);
  return absl::OkStatus();
}

// List field: null is the empty list.
template <typename T>
absl::Status Convert(const Json& value, absl::string_view key, std::vector<T>* out) {
  out->clear();
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_array()) return TypeError(key, "a list", value);
  for (size_t i = 0; i < value.size(); ++i) {
    GQ_RETURN_IF_ERROR(Convert(value[i], absl::StrCat(key, "[", i, "]"), &out->emplace_back()));
  }
  return absl::OkStatus();
}

const Json* Find(const Json& obj, absl::string_view key) {
  const auto it = obj.find(std::string(key));
  return it == obj.end() ? nullptr : &*it;
}

// Reads obj[key] into *out; an absent key keeps the default unless required.
template <typename T>
absl::Status Read(const Json& obj, absl::string_view key, T* out, bool required = false) {
  const Json* value = Find(obj, key);
  if (value == nullptr) return required ? MissingError(key) : absl::OkStatus();
  return Convert(*value, key, out);
}

// "eos_token_id": an int, a list of ints, or null (no stop token).
absl::Status ReadTokenIds(const Json& obj, absl::string_view key, std::vector<int>* out) {
  const Json* value = Find(obj, key);
  if (value == nullptr || value->is_null() || value->is_array()) return Read(obj, key, out);
  out->assign(1, 0);
  return Convert(*value, key, out->data());
}

// Runs `parse` on obj[key] when it is present and not null; prefixes errors
// with the key's path ("text_config: ...", "rope_parameters.full_attention: ...").
template <typename T, typename Parse>
absl::Status ReadNested(const Json& obj, absl::string_view key, Parse parse, std::optional<T>* out,
                        absl::string_view parent = "") {
  const Json* value = Find(obj, key);
  if (value == nullptr || value->is_null()) return absl::OkStatus();
  const std::string path = parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
  if (!value->is_object()) return TypeError(path, "an object", *value);
  absl::StatusOr<T> parsed = parse(*value);
  if (!parsed.ok()) return Annotate(parsed.status(), path);
  *out = *std::move(parsed);
  return absl::OkStatus();
}

// ---- text config pieces ----

absl::Status ParseLayerTypes(const Json& obj, TextConfig* config) {
  const int num_layers = config->num_hidden_layers;
  std::vector<std::string> names;
  GQ_RETURN_IF_ERROR(Read(obj, "layer_types", &names));
  if (const Json* value = Find(obj, "layer_types"); value == nullptr || value->is_null()) {
    // HF's default: 5 sliding layers, then 1 full.
    for (int i = 0; i < num_layers; ++i) {
      names.emplace_back((i + 1) % 6 == 0 ? kFullName : kSlidingName);
    }
  }
  if (names.size() != static_cast<size_t>(num_layers)) {
    return FieldError("layer_types", absl::StrCat(num_layers, " entries (num_hidden_layers)"),
                      absl::StrCat(names.size()));
  }
  config->layer_types.clear();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] != kSlidingName && names[i] != kFullName) {
      return FieldError(absl::StrCat("layer_types[", i, "]"),
                        "'sliding_attention' or 'full_attention'",
                        absl::StrCat("'", names[i], "'"));
    }
    config->layer_types.push_back(names[i] == kFullName ? LayerType::kFull : LayerType::kSliding);
  }
  // HF: "Last layer must use `full_attention`"; it warns and overrides.
  if (config->layer_types.back() != LayerType::kFull) {
    config->layer_types.back() = LayerType::kFull;
    config->last_layer_forced_full = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<RopeParameters> ParseRopeEntry(const Json& entry) {
  RopeParameters rope{"", 0.0, 1.0};
  GQ_RETURN_IF_ERROR(Read(entry, "rope_type", &rope.rope_type, /*required=*/true));
  GQ_RETURN_IF_ERROR(Read(entry, "rope_theta", &rope.rope_theta, /*required=*/true));
  std::optional<double> partial;
  GQ_RETURN_IF_ERROR(Read(entry, "partial_rotary_factor", &partial));
  rope.partial_rotary_factor = partial.value_or(1.0);
  return rope;
}

// rope_parameters is keyed by layer type; absent means the HF defaults, which
// TextConfig's initializers already hold.
absl::Status ParseRope(const Json& obj, TextConfig* config) {
  const Json* rope = Find(obj, "rope_parameters");
  if (rope == nullptr || rope->is_null()) return absl::OkStatus();
  if (!rope->is_object()) {
    return TypeError("rope_parameters", "an object keyed by layer type", *rope);
  }
  for (const auto& [name, entry] : rope->items()) {
    if (name != kSlidingName && name != kFullName) {
      return FieldError("rope_parameters", "keys 'sliding_attention' and 'full_attention'",
                        absl::StrCat("key '", name, "'"));
    }
  }
  for (LayerType type : {LayerType::kSliding, LayerType::kFull}) {
    const auto& types = config->layer_types;
    const auto used = std::find(types.begin(), types.end(), type);
    std::optional<RopeParameters> parsed;
    GQ_RETURN_IF_ERROR(
        ReadNested(*rope, TypeName(type), ParseRopeEntry, &parsed, "rope_parameters"));
    if (parsed.has_value()) {
      (type == LayerType::kFull ? config->rope_full : config->rope_sliding) = *parsed;
    } else if (used != types.end()) {
      return FieldError("rope_parameters",
                        absl::StrCat("an entry for '", TypeName(type), "' (layer ",
                                     used - types.begin(), " has that type)"),
                        "none");
    }
  }
  return absl::OkStatus();
}

// Layer index of a per_layer_config key: decimal digits only, zero padding
// allowed ("05"), as transformers writes them.
absl::StatusOr<int> ParseLayerKey(const std::string& key, int num_layers) {
  const bool digits =
      !key.empty() && key.size() <= 9 &&
      std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
  const int index = digits ? std::stoi(key) : -1;
  if (index >= 0 && index < num_layers) return index;
  return FieldError("per_layer_config",
                    absl::StrCat("keys that are layer indices in [0, ", num_layers, ")"),
                    absl::StrCat("key '", key, "'"));
}

absl::Status ApplyPerLayerConfig(const Json& value, TextConfig* config) {
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_object()) {
    return TypeError("per_layer_config", "an object keyed by layer index", value);
  }
  std::map<int, std::string> seen;  // layer -> the key that named it
  for (const auto& [key, entry] : value.items()) {
    GQ_ASSIGN_OR_RETURN(const int layer, ParseLayerKey(key, config->num_hidden_layers));
    if (const auto [it, inserted] = seen.emplace(layer, key); !inserted) {
      return FieldError("per_layer_config", "one entry per layer",
                        absl::StrCat("keys '", it->second, "' and '", key, "' for layer ", layer));
    }
    const std::string context = absl::StrCat("per_layer_config.", key);
    if (!entry.is_object()) return TypeError(context, "an object", entry);
    for (const auto& [name, field] : entry.items()) {
      int* target = name == "head_dim"              ? &config->layer_head_dim[layer]
                    : name == "num_key_value_heads" ? &config->layer_num_kv_heads[layer]
                                                    : nullptr;
      // Any other override would change shapes in ways we do not model.
      if (target == nullptr) {
        return absl::UnimplementedError(absl::StrCat(
            context, ": expected only head_dim or num_key_value_heads overrides, but got '", name,
            "'"));
      }
      absl::Status status = Convert(field, name, target);
      if (status.ok()) status = RequirePositive(name, *target);
      if (!status.ok()) return Annotate(status, context);
    }
  }
  return absl::OkStatus();
}

// Fills layer_head_dim / layer_num_kv_heads (spec §2.5), from per_layer_config
// when the key exists (even null, as in HF), else from the legacy keys.
absl::Status ResolveLayerShapes(const Json& obj, TextConfig* config) {
  const int num_layers = config->num_hidden_layers;
  config->layer_head_dim.assign(num_layers, config->head_dim);
  config->layer_num_kv_heads.assign(num_layers, config->num_key_value_heads);
  if (const Json* per_layer = Find(obj, "per_layer_config")) {
    return ApplyPerLayerConfig(*per_layer, config);
  }
  int global_head_dim = 512;
  std::optional<int> num_global_kv_heads;
  GQ_RETURN_IF_ERROR(Read(obj, "global_head_dim", &global_head_dim));
  GQ_RETURN_IF_ERROR(RequirePositive("global_head_dim", global_head_dim));
  GQ_RETURN_IF_ERROR(Read(obj, "num_global_key_value_heads", &num_global_kv_heads));
  if (num_global_kv_heads.has_value()) {
    GQ_RETURN_IF_ERROR(RequirePositive("num_global_key_value_heads", *num_global_kv_heads));
  }
  for (int i = 0; i < num_layers; ++i) {
    if (config->layer_types[i] != LayerType::kFull) continue;
    config->layer_head_dim[i] = global_head_dim;
    // E2B/E4B set num_global_key_value_heads=None: full layers keep the base value.
    if (config->attention_k_eq_v && num_global_kv_heads.has_value()) {
      config->layer_num_kv_heads[i] = *num_global_kv_heads;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TextConfig> ParseTextConfig(const Json& obj, bool nested) {
  TextConfig c;
  if (nested) {
    std::string model_type = "gemma4_text";
    GQ_RETURN_IF_ERROR(Read(obj, "model_type", &model_type));
    if (model_type != "gemma4_text") {
      return FieldError("model_type", "'gemma4_text'", absl::StrCat("'", model_type, "'"));
    }
  }
  for (const auto& [key, value] : {std::pair<absl::string_view, int*>{"vocab_size", &c.vocab_size},
                                   {"hidden_size", &c.hidden_size},
                                   {"intermediate_size", &c.intermediate_size},
                                   {"num_hidden_layers", &c.num_hidden_layers},
                                   {"num_attention_heads", &c.num_attention_heads},
                                   {"num_key_value_heads", &c.num_key_value_heads},
                                   {"head_dim", &c.head_dim}}) {
    GQ_RETURN_IF_ERROR(Read(obj, key, value, /*required=*/true));
  }
  // The per-layer vectors are sized and filled from these: check them first.
  GQ_RETURN_IF_ERROR(CheckLayerCount(c.num_hidden_layers));
  GQ_RETURN_IF_ERROR(RequirePositive("head_dim", c.head_dim));
  GQ_RETURN_IF_ERROR(RequirePositive("num_key_value_heads", c.num_key_value_heads));

  GQ_RETURN_IF_ERROR(Read(obj, "hidden_activation", &c.hidden_activation));
  GQ_RETURN_IF_ERROR(Read(obj, "max_position_embeddings", &c.max_position_embeddings));
  GQ_RETURN_IF_ERROR(Read(obj, "rms_norm_eps", &c.rms_norm_eps));
  GQ_RETURN_IF_ERROR(Read(obj, "pad_token_id", &c.pad_token_id));
  GQ_RETURN_IF_ERROR(ReadTokenIds(obj, "eos_token_id", &c.eos_token_ids));
  GQ_RETURN_IF_ERROR(Read(obj, "bos_token_id", &c.bos_token_id));
  GQ_RETURN_IF_ERROR(Read(obj, "tie_word_embeddings", &c.tie_word_embeddings));
  GQ_RETURN_IF_ERROR(Read(obj, "attention_bias", &c.attention_bias));
  GQ_RETURN_IF_ERROR(Read(obj, "sliding_window", &c.sliding_window));
  GQ_RETURN_IF_ERROR(Read(obj, "final_logit_softcapping", &c.final_logit_softcapping));
  std::optional<std::string> bidirectional;
  GQ_RETURN_IF_ERROR(Read(obj, "use_bidirectional_attention", &bidirectional));
  if (bidirectional == "vision") {
    c.use_bidirectional_attention = BidirectionalAttention::kVision;
  } else if (bidirectional == "all") {
    c.use_bidirectional_attention = BidirectionalAttention::kAll;
  } else if (bidirectional.has_value()) {
    return FieldError("use_bidirectional_attention", "null, 'vision' or 'all'",
                      absl::StrCat("'", *bidirectional, "'"));
  }
  GQ_RETURN_IF_ERROR(Read(obj, "vocab_size_per_layer_input", &c.vocab_size_per_layer_input));
  GQ_RETURN_IF_ERROR(Read(obj, "hidden_size_per_layer_input", &c.hidden_size_per_layer_input));
  GQ_RETURN_IF_ERROR(Read(obj, "attention_k_eq_v", &c.attention_k_eq_v));
  GQ_RETURN_IF_ERROR(Read(obj, "num_kv_shared_layers", &c.num_kv_shared_layers));
  GQ_RETURN_IF_ERROR(Read(obj, "enable_moe_block", &c.enable_moe_block));
  GQ_RETURN_IF_ERROR(Read(obj, "use_double_wide_mlp", &c.use_double_wide_mlp));
  GQ_RETURN_IF_ERROR(Read(obj, "num_experts", &c.num_experts));
  GQ_RETURN_IF_ERROR(Read(obj, "top_k_experts", &c.top_k_experts));
  GQ_RETURN_IF_ERROR(Read(obj, "moe_intermediate_size", &c.moe_intermediate_size));

  // Same order as HF's __post_init__: layer types (and the forced last layer)
  // first, since the legacy head_dim overrides follow the final types.
  GQ_RETURN_IF_ERROR(ParseLayerTypes(obj, &c));
  GQ_RETURN_IF_ERROR(ParseRope(obj, &c));
  GQ_RETURN_IF_ERROR(ResolveLayerShapes(obj, &c));
  GQ_RETURN_IF_ERROR(ValidateTextConfig(c));
  return c;
}

absl::StatusOr<VisionConfig> ParseVisionConfig(const Json& obj) {
  VisionConfig v;
  const std::pair<absl::string_view, int*> fields[] = {
      {"hidden_size", &v.hidden_size},
      {"intermediate_size", &v.intermediate_size},
      {"num_hidden_layers", &v.num_hidden_layers},
      {"num_attention_heads", &v.num_attention_heads},
      {"head_dim", &v.head_dim},  // the first five are required
      {"num_key_value_heads", &v.num_key_value_heads},
      {"patch_size", &v.patch_size},
      {"pooling_kernel_size", &v.pooling_kernel_size},
      {"position_embedding_size", &v.position_embedding_size}};
  for (size_t i = 0; i < std::size(fields); ++i) {
    GQ_RETURN_IF_ERROR(Read(obj, fields[i].first, fields[i].second, /*required=*/i < 5));
    GQ_RETURN_IF_ERROR(RequirePositive(fields[i].first, *fields[i].second));
  }
  GQ_RETURN_IF_ERROR(Read(obj, "use_clipped_linears", &v.use_clipped_linears));
  GQ_RETURN_IF_ERROR(Read(obj, "standardize", &v.standardize));
  GQ_RETURN_IF_ERROR(Read(obj, "hidden_activation", &v.hidden_activation));
  GQ_RETURN_IF_ERROR(Read(obj, "rms_norm_eps", &v.rms_norm_eps));
  if (!(v.rms_norm_eps > 0)) {
    return FieldError("rms_norm_eps", "a positive value", absl::StrCat(v.rms_norm_eps));
  }
  // transformers 5.17 writes {"rope_type": "axial", "rope_theta": 100.0}; the
  // released configs say "default" for the same 2-D RoPE.
  std::optional<RopeParameters> rope;
  GQ_RETURN_IF_ERROR(ReadNested(obj, "rope_parameters", ParseRopeEntry, &rope));
  if (rope.has_value()) {
    if (rope->rope_type != "axial" && rope->rope_type != "default") {
      return FieldError("rope_parameters.rope_type", "'axial' or 'default'",
                        absl::StrCat("'", rope->rope_type, "'"));
    }
    if (!(rope->rope_theta > 0)) {
      return FieldError("rope_parameters.rope_theta", "a positive value",
                        absl::StrCat(rope->rope_theta));
    }
    v.rope_theta = rope->rope_theta;
  }
  if (v.head_dim % 4 != 0) {  // two axes, each rotated in pairs
    return FieldError("head_dim", "a multiple of 4 (2-D RoPE)", absl::StrCat(v.head_dim));
  }
  if (v.num_attention_heads % v.num_key_value_heads != 0) {
    return FieldError(
        "num_key_value_heads",
        absl::StrCat("a divisor of num_attention_heads (", v.num_attention_heads, ")"),
        absl::StrCat(v.num_key_value_heads));
  }
  return v;
}

absl::StatusOr<Config> ParseConfig(const Json& root) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON object, but got ", Describe(root)));
  }
  Config config;
  GQ_RETURN_IF_ERROR(Read(root, "model_type", &config.model_type, /*required=*/true));
  GQ_RETURN_IF_ERROR(Read(root, "architectures", &config.architectures));
  if (config.model_type == "gemma4_text") {
    GQ_ASSIGN_OR_RETURN(config.text, ParseTextConfig(root, /*nested=*/false));
    config.eos_token_ids = config.text.eos_token_ids;
    return config;
  }
  if (config.model_type != "gemma4") {
    return FieldError("model_type", "'gemma4' or 'gemma4_text'",
                      absl::StrCat("'", config.model_type, "'"));
  }

  std::optional<TextConfig> text;
  GQ_RETURN_IF_ERROR(ReadNested(
      root, "text_config", [](const Json& obj) { return ParseTextConfig(obj, /*nested=*/true); },
      &text));
  if (!text.has_value()) return MissingError("text_config");
  config.text = *std::move(text);
  GQ_RETURN_IF_ERROR(ReadNested(root, "vision_config", ParseVisionConfig, &config.vision));
  std::optional<bool> audio;  // only its presence matters here
  GQ_RETURN_IF_ERROR(ReadNested(
      root, "audio_config", [](const Json&) { return absl::StatusOr<bool>(true); }, &audio));
  config.has_audio = audio.has_value();

  // Not checked against vocab_size: tiny test checkpoints keep these defaults.
  const std::tuple<absl::string_view, std::optional<int>*, int> media_tokens[] = {
      {"boi_token_id", &config.boi_token_id, 255999},
      {"eoi_token_id", &config.eoi_token_id, 258882},
      {"image_token_id", &config.image_token_id, 258880},
      {"video_token_id", &config.video_token_id, 258884},
      {"boa_token_id", &config.boa_token_id, 256000},
      {"eoa_token_index", &config.eoa_token_index, 258883},
      {"audio_token_id", &config.audio_token_id, 258881}};
  GQ_RETURN_IF_ERROR(
      Read(root, "vision_soft_tokens_per_image", &config.vision_soft_tokens_per_image));
  constexpr int kSoftTokenChoices[] = {70, 140, 280, 560, 1120};
  if (std::ranges::find(kSoftTokenChoices, config.vision_soft_tokens_per_image) ==
      std::end(kSoftTokenChoices)) {
    return FieldError("vision_soft_tokens_per_image", "one of 70, 140, 280, 560, 1120",
                      absl::StrCat(config.vision_soft_tokens_per_image));
  }
  for (const auto& [key, id, default_id] : media_tokens) {
    *id = default_id;
    GQ_RETURN_IF_ERROR(Read(root, key, id));
  }
  // The -it checkpoints put the chat stop tokens ([1, 106]) only at the top.
  config.eos_token_ids = config.text.eos_token_ids;
  GQ_RETURN_IF_ERROR(ReadTokenIds(root, "eos_token_id", &config.eos_token_ids));
  GQ_RETURN_IF_ERROR(CheckTokenIds("eos_token_id", config.eos_token_ids, config.text.vocab_size));
  return config;
}

absl::Status ValidateRope(const RopeParameters& rope) {
  if (rope.rope_type != "default" && rope.rope_type != "proportional") {
    return FieldError("rope_type", "'default' or 'proportional'",
                      absl::StrCat("'", rope.rope_type, "'"));
  }
  if (!(rope.rope_theta > 0) || !std::isfinite(rope.rope_theta)) {
    return FieldError("rope_theta", "a positive value", absl::StrCat(rope.rope_theta));
  }
  if (!(rope.partial_rotary_factor > 0 && rope.partial_rotary_factor <= 1)) {
    return FieldError("partial_rotary_factor", "a value in (0, 1]",
                      absl::StrCat(rope.partial_rotary_factor));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view LayerTypeName(LayerType type) {
  const absl::string_view name = TypeName(type);
  return std::string_view(name.data(), name.size());
}

int TextConfig::kv_source_layer(int layer) const {
  if (!is_kv_shared(layer)) return layer;
  for (int i = first_kv_shared_layer() - 1; i >= 0; --i) {
    if (layer_types[i] == layer_types[layer]) return i;
  }
  return -1;
}

int TextConfig::mlp_width(int layer) const {
  return use_double_wide_mlp && is_kv_shared(layer) ? 2 * intermediate_size : intermediate_size;
}

bool TextConfig::k_eq_v(int layer) const { return attention_k_eq_v && is_full(layer); }

absl::Status ValidateTextConfig(const TextConfig& c) {
  for (const auto& [key, value] : {std::pair<absl::string_view, int>{"vocab_size", c.vocab_size},
                                   {"hidden_size", c.hidden_size},
                                   {"intermediate_size", c.intermediate_size},
                                   {"num_attention_heads", c.num_attention_heads},
                                   {"num_key_value_heads", c.num_key_value_heads},
                                   {"head_dim", c.head_dim},
                                   {"max_position_embeddings", c.max_position_embeddings},
                                   {"sliding_window", c.sliding_window},
                                   {"vocab_size_per_layer_input", c.vocab_size_per_layer_input}}) {
    GQ_RETURN_IF_ERROR(RequirePositive(key, value));
  }
  GQ_RETURN_IF_ERROR(CheckLayerCount(c.num_hidden_layers));
  if (c.hidden_size_per_layer_input < 0) {
    return FieldError("hidden_size_per_layer_input", "a value >= 0 (0: no PLE)",
                      absl::StrCat(c.hidden_size_per_layer_input));
  }
  if (!(c.rms_norm_eps > 0)) {
    return FieldError("rms_norm_eps", "a positive value", absl::StrCat(c.rms_norm_eps));
  }
  if (c.use_double_wide_mlp && c.intermediate_size > INT_MAX / 2) {
    return FieldError("intermediate_size", "a value that can be doubled in int32",
                      absl::StrCat(c.intermediate_size));
  }
  const size_t num_layers = static_cast<size_t>(c.num_hidden_layers);
  for (const auto& [key, size] :
       {std::pair<absl::string_view, size_t>{"layer_types", c.layer_types.size()},
        {"layer_head_dim", c.layer_head_dim.size()},
        {"layer_num_kv_heads", c.layer_num_kv_heads.size()}}) {
    if (size != num_layers) {
      return FieldError(key, absl::StrCat(num_layers, " entries (num_hidden_layers)"),
                        absl::StrCat(size));
    }
  }
  if (c.layer_types.back() != LayerType::kFull) {
    return FieldError("layer_types", "a full_attention last layer", "sliding_attention");
  }
  GQ_RETURN_IF_ERROR(CheckTokenId("pad_token_id", c.pad_token_id, c.vocab_size));
  GQ_RETURN_IF_ERROR(CheckTokenId("bos_token_id", c.bos_token_id, c.vocab_size));
  GQ_RETURN_IF_ERROR(CheckTokenIds("eos_token_id", c.eos_token_ids, c.vocab_size));
  for (LayerType type : {LayerType::kSliding, LayerType::kFull}) {
    const RopeParameters& rope = type == LayerType::kFull ? c.rope_full : c.rope_sliding;
    const absl::Status status = ValidateRope(rope);
    if (!status.ok()) return Annotate(status, "rope_parameters.", TypeName(type));
  }

  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const int kv = c.layer_num_kv_heads[i];
    absl::Status status = RequirePositive("head_dim", c.layer_head_dim[i]);
    if (status.ok() && (kv <= 0 || c.num_attention_heads % kv != 0)) {
      status =
          FieldError("num_key_value_heads",
                     absl::StrCat("a divisor of num_attention_heads (", c.num_attention_heads, ")"),
                     absl::StrCat(kv));
    }
    if (!status.ok()) return Annotate(status, "layer ", i, " (", TypeName(c.layer_types[i]), ")");
  }

  if (c.num_kv_shared_layers < 0 || c.num_kv_shared_layers >= c.num_hidden_layers) {
    return FieldError("num_kv_shared_layers",
                      absl::StrCat("a value in [0, ", c.num_hidden_layers, ")"),
                      absl::StrCat(c.num_kv_shared_layers));
  }
  for (int i = c.first_kv_shared_layer(); i < c.num_hidden_layers; ++i) {
    const int source = c.kv_source_layer(i);
    if (source < 0) {
      return FieldError(
          "num_kv_shared_layers",
          absl::StrCat("a non-shared ", TypeName(c.layer_types[i]), " layer before layer ",
                       c.first_kv_shared_layer(), " for shared layer ", i, " to take K/V from"),
          "none");
    }
    // Sharer and source have the same type, so only per_layer_config can break this.
    if (c.layer_head_dim[i] != c.layer_head_dim[source] ||
        c.layer_num_kv_heads[i] != c.layer_num_kv_heads[source]) {
      return Annotate(
          FieldError("head_dim/num_key_value_heads",
                     absl::StrCat("those of its source layer ", source, " (",
                                  c.layer_head_dim[source], "/", c.layer_num_kv_heads[source], ")"),
                     absl::StrCat(c.layer_head_dim[i], "/", c.layer_num_kv_heads[i])),
          "layer ", i, " (", TypeName(c.layer_types[i]), ", KV-shared)");
    }
  }

  const std::pair<absl::string_view, const std::optional<int>*> moe_fields[] = {
      {"num_experts", &c.num_experts},
      {"top_k_experts", &c.top_k_experts},
      {"moe_intermediate_size", &c.moe_intermediate_size}};
  for (const auto& [key, value] : moe_fields) {
    if (value->has_value()) {
      GQ_RETURN_IF_ERROR(RequirePositive(key, **value));
    } else if (c.enable_moe_block) {
      return FieldError(key, "a positive value (enable_moe_block is true)", "null");
    }
  }
  if (c.enable_moe_block && *c.top_k_experts > *c.num_experts) {
    return FieldError("top_k_experts", absl::StrCat("at most num_experts (", *c.num_experts, ")"),
                      absl::StrCat(*c.top_k_experts));
  }
  if (c.final_logit_softcapping.has_value() && !(*c.final_logit_softcapping > 0)) {
    return FieldError("final_logit_softcapping", "a positive value or null",
                      absl::StrCat(*c.final_logit_softcapping));
  }
  return absl::OkStatus();
}

absl::StatusOr<Config> ParseConfigJson(std::string_view json_text, std::string_view source) {
  // Not ParseStrictJson: transformers (Python's json) takes the last of two
  // equal keys, and so does nlohmann. The limits keep a hostile file from
  // overflowing the stack when an error message quotes a deep value.
  absl::StatusOr<Config> config;
  if (absl::Status limits = internal::CheckJsonLimits(json_text); !limits.ok()) {
    config = limits;
  } else {
    try {
      config = ParseConfig(Json::parse(json_text));
    } catch (const Json::exception& e) {
      // what() has nlohmann's position and reason. Not only parse_error: a
      // number too large for a double ("1e400") throws out_of_range (406).
      config = absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", e.what()));
    }
  }
  if (!config.ok()) return Annotate(config.status(), "config '", AsAbsl(source), "'");
  return config;
}

absl::StatusOr<Config> LoadConfig(const std::string& path) {
  std::error_code error;
  std::string file = path;
  if (std::filesystem::is_directory(path, error)) {
    file = (std::filesystem::path(path) / "config.json").string();
  }
  GQ_ASSIGN_OR_RETURN(const std::shared_ptr<const MappedFile> mapped, MappedFile::Open(file));
  const auto bytes = mapped->bytes();
  return ParseConfigJson(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), file);
}

}  // namespace gquant::gemma4
