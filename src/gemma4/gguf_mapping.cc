// Gemma 4 <-> llama.cpp GGUF: one table of tensor names, and the hyperparameter
// keys read by TextConfigFromGguf and written by GgufMetadataFromTextConfig.
//
// Provenance (ggml-org/llama.cpp, read through a code index; commits vary by
// file and are not pinned):
//   Verified in the sources:
//   * every metadata key string below: LLM_KV_NAMES in src/llama-arch.cpp and
//     Keys.{General,LLM,Attention,Rope,Tokenizer} in gguf-py/gguf/constants.py;
//   * what the converter writes for Gemma 4 (class Gemma4Model and its bases
//     Gemma3Model / TextModel in conversion/gemma.py and conversion/base.py,
//     the split-out convert_hf_to_gguf.py): feed_forward_length becomes a
//     per-layer array only for use_double_wide_mlp; head_count_kv a per-layer
//     array only when num_global_key_value_heads is set; key/value_length =
//     global_head_dim and *_swa = head_dim; rope.dimension_count =
//     global_head_dim (the rotated fraction of proportional RoPE goes into the
//     generated rope_freqs tensor: 1.0 rotated, 1e30 not);
//     rope.dimension_count_swa = head_dim * partial_rotary_factor;
//     sliding_window_pattern = [type == sliding]; expert_count / used_count from
//     num_experts / top_k_experts; final_logit_softcapping only when set;
//   * what llama.cpp reads and which keys are optional: load_arch_hparams in
//     src/models/gemma4.cpp, the common load_hparams in src/llama-model.cpp
//     (gemma4.vocab_size, else the tokenizer.ggml.tokens count; rope.freq_base
//     defaults to 10000 and freq_base_swa to freq_base);
//   * tensor names: LLM_TENSOR_NAMES in src/llama-arch.cpp, load_arch_tensors in
//     src/models/gemma4.cpp (attn_v optional, "use_alternative_attention"), the
//     router.scale -> ffn_gate_inp.scale and per_expert_scale ->
//     ffn_down_exps.scale renames in Gemma4Model.modify_tensors, and the
//     "# gemma4" rows of gguf-py/gguf/tensor_mapping.py (router.proj,
//     pre_feedforward_layernorm_2, post_feedforward_layernorm_1/2).
//   Inferred: experts.gate_up_proj / down_proj <-> ffn_gate_up_exps /
//   ffn_down_exps from the shapes load_arch_tensors expects (the converter only
//   appends ".weight" to them); and every field llama.cpp has no key for, read
//   off the tensor list instead (see TextConfigFromGguf in the header).
#include "gquant/gemma4/gguf_mapping.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gquant/ggml_format.h"
#include "gquant/status.h"

namespace gquant::gemma4 {
namespace {

// Debian's Abseil has its own absl::string_view, which StrCat needs.
absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

// ---- tensor names ----

enum class Scope : uint8_t {
  kModel,  // "<hf_prefix><hf>"          <-> "<gguf>"
  kLayer,  // "<hf_prefix>layers.N.<hf>" <-> "blk.N.<gguf>"
  kRoot,   // "<hf>", outside the prefix <-> "<gguf>"
};

struct TensorNameRule {
  std::string_view gguf;
  std::string_view hf;
  Scope scope;
};

constexpr TensorNameRule kTensorNames[] = {
    {"token_embd.weight", "embed_tokens.weight", Scope::kModel},
    {"output_norm.weight", "norm.weight", Scope::kModel},
    {"output.weight", "lm_head.weight", Scope::kRoot},  // untied models only
    {"per_layer_token_embd.weight", "embed_tokens_per_layer.weight", Scope::kModel},
    {"per_layer_model_proj.weight", "per_layer_model_projection.weight", Scope::kModel},
    {"per_layer_proj_norm.weight", "per_layer_projection_norm.weight", Scope::kModel},
    // Attention.
    {"attn_norm.weight", "input_layernorm.weight", Scope::kLayer},
    {"attn_q.weight", "self_attn.q_proj.weight", Scope::kLayer},
    {"attn_k.weight", "self_attn.k_proj.weight", Scope::kLayer},
    {"attn_v.weight", "self_attn.v_proj.weight", Scope::kLayer},
    {"attn_output.weight", "self_attn.o_proj.weight", Scope::kLayer},
    {"attn_q_norm.weight", "self_attn.q_norm.weight", Scope::kLayer},
    {"attn_k_norm.weight", "self_attn.k_norm.weight", Scope::kLayer},
    {"post_attention_norm.weight", "post_attention_layernorm.weight", Scope::kLayer},
    // Dense MLP (the always-on shared expert of MoE layers).
    {"ffn_norm.weight", "pre_feedforward_layernorm.weight", Scope::kLayer},
    {"ffn_gate.weight", "mlp.gate_proj.weight", Scope::kLayer},
    {"ffn_up.weight", "mlp.up_proj.weight", Scope::kLayer},
    {"ffn_down.weight", "mlp.down_proj.weight", Scope::kLayer},
    {"post_ffw_norm.weight", "post_feedforward_layernorm.weight", Scope::kLayer},
    // MoE block (26B-A4B).
    {"ffn_gate_inp.weight", "router.proj.weight", Scope::kLayer},
    {"ffn_gate_inp.scale", "router.scale", Scope::kLayer},
    {"ffn_gate_up_exps.weight", "experts.gate_up_proj", Scope::kLayer},
    {"ffn_down_exps.weight", "experts.down_proj", Scope::kLayer},
    {"ffn_down_exps.scale", "router.per_expert_scale", Scope::kLayer},
    {"post_ffw_norm_1.weight", "post_feedforward_layernorm_1.weight", Scope::kLayer},
    {"pre_ffw_norm_2.weight", "pre_feedforward_layernorm_2.weight", Scope::kLayer},
    {"post_ffw_norm_2.weight", "post_feedforward_layernorm_2.weight", Scope::kLayer},
    // Per-layer embeddings (E2B/E4B).
    {"inp_gate.weight", "per_layer_input_gate.weight", Scope::kLayer},
    {"proj.weight", "per_layer_projection.weight", Scope::kLayer},
    {"post_norm.weight", "post_per_layer_input_norm.weight", Scope::kLayer},
    // The [1] residual scale at the end of every layer.
    {"layer_output_scale.weight", "layer_scalar", Scope::kLayer},
};

constexpr std::string_view kGgufLayer = "blk.";
constexpr std::string_view kHfLayer = "layers.";
constexpr size_t kMaxLayerDigits = 9;  // keeps N inside int

static_assert(std::all_of(std::begin(kTensorNames), std::end(kTensorNames),
                          [](const TensorNameRule& rule) {
                            return kGgufLayer.size() + kMaxLayerDigits + 1 + rule.gguf.size() <=
                                   kGgufMaxTensorName;
                          }),
              "every GGUF name must fit ggml's limit, whatever the layer index");

// llama.cpp accepts split expert halves in place of ffn_gate_up_exps.
constexpr std::string_view kGgufSplitExperts[] = {"ffn_gate_exps.weight", "ffn_up_exps.weight"};
// HF towers that llama.cpp keeps in the separate mmproj file.
constexpr std::string_view kHfMediaTowers[] = {"vision_tower.", "embed_vision.", "audio_tower.",
                                               "embed_audio."};

struct LayerName {
  int layer;
  std::string_view rest;
};

// "<prefix>N.<rest>" -> {N, rest}; nullopt for any other form. N must be
// canonical decimal (no sign, no leading zero) so that names map one to one.
std::optional<LayerName> SplitLayer(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) return std::nullopt;
  name.remove_prefix(prefix.size());
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > kMaxLayerDigits) return std::nullopt;
  const std::string_view digits = name.substr(0, dot);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      (digits.size() > 1 && digits[0] == '0')) {
    return std::nullopt;
  }
  int layer = 0;
  std::from_chars(digits.data(), digits.data() + digits.size(), layer);
  return LayerName{layer, name.substr(dot + 1)};
}

const TensorNameRule* FindRule(Scope scope, std::string_view name, bool by_gguf) {
  for (const TensorNameRule& rule : kTensorNames) {
    if (rule.scope == scope && (by_gguf ? rule.gguf : rule.hf) == name) return &rule;
  }
  return nullptr;
}

template <typename Range>
bool Contains(const Range& range, std::string_view value) {
  return std::find(std::begin(range), std::end(range), value) != std::end(range);
}

// ---- metadata keys (llama.cpp spelling; see the top of the file) ----

constexpr std::string_view kKeyArchitecture = "general.architecture";
constexpr std::string_view kKeyName = "general.name";
constexpr std::string_view kKeyVocabSize = "gemma4.vocab_size";
constexpr std::string_view kKeyContextLength = "gemma4.context_length";
constexpr std::string_view kKeyEmbeddingLength = "gemma4.embedding_length";
constexpr std::string_view kKeyBlockCount = "gemma4.block_count";
constexpr std::string_view kKeyFeedForwardLength = "gemma4.feed_forward_length";
constexpr std::string_view kKeyHeadCount = "gemma4.attention.head_count";
constexpr std::string_view kKeyHeadCountKv = "gemma4.attention.head_count_kv";
constexpr std::string_view kKeyKeyLength = "gemma4.attention.key_length";
constexpr std::string_view kKeyValueLength = "gemma4.attention.value_length";
constexpr std::string_view kKeyKeyLengthSwa = "gemma4.attention.key_length_swa";
constexpr std::string_view kKeyValueLengthSwa = "gemma4.attention.value_length_swa";
constexpr std::string_view kKeyRmsEps = "gemma4.attention.layer_norm_rms_epsilon";
constexpr std::string_view kKeySlidingWindow = "gemma4.attention.sliding_window";
constexpr std::string_view kKeySlidingPattern = "gemma4.attention.sliding_window_pattern";
constexpr std::string_view kKeySharedKvLayers = "gemma4.attention.shared_kv_layers";
constexpr std::string_view kKeyRopeFreqBase = "gemma4.rope.freq_base";
constexpr std::string_view kKeyRopeFreqBaseSwa = "gemma4.rope.freq_base_swa";
constexpr std::string_view kKeyRopeDims = "gemma4.rope.dimension_count";
constexpr std::string_view kKeyRopeDimsSwa = "gemma4.rope.dimension_count_swa";
constexpr std::string_view kKeySoftcap = "gemma4.final_logit_softcapping";
constexpr std::string_view kKeyPerLayerInput = "gemma4.embedding_length_per_layer_input";
constexpr std::string_view kKeyExpertCount = "gemma4.expert_count";
constexpr std::string_view kKeyExpertUsedCount = "gemma4.expert_used_count";
constexpr std::string_view kKeyExpertFfLength = "gemma4.expert_feed_forward_length";
constexpr std::string_view kKeyTokens = "tokenizer.ggml.tokens";
constexpr std::string_view kKeyBosId = "tokenizer.ggml.bos_token_id";
constexpr std::string_view kKeyEosId = "tokenizer.ggml.eos_token_id";
constexpr std::string_view kKeyPadId = "tokenizer.ggml.padding_token_id";

constexpr std::string_view kTokenEmbd = "token_embd.weight";
constexpr std::string_view kPerLayerTokenEmbd = "per_layer_token_embd.weight";
constexpr std::string_view kOutput = "output.weight";

constexpr double kDefaultRopeBase = 10000.0;  // llama.cpp's, when freq_base is absent
constexpr int kMaxLayers = 4096;              // as ParseConfigJson: bounds per-layer vectors

// "<what> '<name>': expected X, but got Y" (status.h's message form).
absl::Status Mismatch(std::string_view what, std::string_view name, std::string_view expected,
                      std::string_view got) {
  return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " '", AsAbsl(name), "': expected ",
                                                 AsAbsl(expected), ", but got ", AsAbsl(got)));
}
absl::Status KeyError(std::string_view key, std::string_view expected, std::string_view got) {
  return Mismatch("key", key, expected, got);
}
absl::Status TensorError(std::string_view name, std::string_view expected, std::string_view got) {
  return Mismatch("tensor", name, expected, got);
}
absl::Status FieldError(std::string_view field, std::string_view expected, std::string_view got) {
  return Mismatch("field", field, expected, got);
}

// "UINT32 7", "STRING 'llama'", "ARRAY of BOOL[6]".
std::string DescribeValue(const GgufValue& value) {
  if (const GgufArray* array = value.array()) {
    return absl::StrCat("ARRAY of ", GgufValueTypeName(array->element_type), "[",
                        array->elements.size(), "]");
  }
  const std::string text = std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return absl::StrCat("'", v.size() > 40 ? v.substr(0, 37) + "..." : v, "'");
        } else if constexpr (std::is_same_v<T, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          return "";
        } else if constexpr (std::is_integral_v<T>) {
          return absl::StrCat(static_cast<int64_t>(v));  // uint64 > INT64_MAX prints negative
        } else {
          return absl::StrCat(v);
        }
      },
      value.variant());
  return absl::StrCat(GgufValueTypeName(value.type()), " ", text);
}

std::string DescribeDims(const GgufTensorInfo& info) {
  return absl::StrCat("dims [", absl::StrJoin(info.dims, ", "), "] type ", info.type);
}

// A non-negative integer of any GGUF integer type that fits int.
absl::Status Convert(const GgufValue& value, std::string_view key, int* out) {
  const absl::StatusOr<int64_t> v = value.AsInt64();
  if (!v.ok() || *v < 0 || *v > INT_MAX) {
    return KeyError(key, "a non-negative integer in int32 range", DescribeValue(value));
  }
  *out = static_cast<int>(*v);
  return absl::OkStatus();
}

// FLOAT32 goes through its shortest decimal form, so the 1e-6 that config.json
// holds and the converter wrote as float reads back as the double 1e-6.
absl::Status Convert(const GgufValue& value, std::string_view key, double* out) {
  if (const float* f = std::get_if<float>(&value.variant())) {
    char text[32];
    const std::to_chars_result written = std::to_chars(std::begin(text), std::end(text), *f);
    *out = *f;
    std::from_chars(text, written.ptr, *out);
  } else if (const double* d = std::get_if<double>(&value.variant())) {
    *out = *d;
  } else {
    return KeyError(key, "a FLOAT32 or FLOAT64", DescribeValue(value));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status Convert(const GgufValue& value, std::string_view key, std::optional<T>* out) {
  return Convert(value, key, &out->emplace());
}

template <typename T>
struct IsOptional : std::false_type {};
template <typename T>
struct IsOptional<std::optional<T>> : std::true_type {};

// Typed reads of a file's metadata.
class Metadata {
 public:
  explicit Metadata(const GgufFile& file) : file_(file) {}

  absl::StatusOr<const GgufValue*> Get(std::string_view key, bool required) const {
    const GgufValue* value = file_.Find(key);
    if (value == nullptr && required) {
      return absl::InvalidArgumentError(absl::StrCat("missing required key '", AsAbsl(key), "'"));
    }
    return value;
  }

  // Reads `key` into *out (int, double, or an optional of either). An absent
  // key resets an optional and leaves a plain value at its default.
  template <typename T>
  absl::Status Read(std::string_view key, T* out, bool required = false) const {
    GQ_ASSIGN_OR_RETURN(const GgufValue* value, Get(key, required));
    if (value != nullptr) return Convert(*value, key, out);
    if constexpr (IsOptional<T>::value) out->reset();
    return absl::OkStatus();
  }

  // A per-layer value as llama.cpp's get_key_or_arr reads it: one integer for
  // every layer, or an integer array with one entry per layer. *is_array says
  // which form the file used.
  absl::Status PerLayerInts(std::string_view key, int num_layers, std::vector<int>* out,
                            bool* is_array, bool required = false) const {
    GQ_ASSIGN_OR_RETURN(const GgufValue* value, Get(key, required));
    if (value == nullptr) return absl::OkStatus();
    const GgufArray* array = value->array();
    *is_array = array != nullptr;
    if (array == nullptr) {
      int v = 0;
      GQ_RETURN_IF_ERROR(Convert(*value, key, &v));
      out->assign(num_layers, v);
      return absl::OkStatus();
    }
    if (array->elements.size() != static_cast<size_t>(num_layers)) {
      return KeyError(key, absl::StrCat(num_layers, " entries (", AsAbsl(kKeyBlockCount), ")"),
                      DescribeValue(*value));
    }
    out->assign(num_layers, 0);
    for (int i = 0; i < num_layers; ++i) {
      GQ_RETURN_IF_ERROR(
          Convert(array->elements[i], absl::StrCat(AsAbsl(key), "[", i, "]"), &(*out)[i]));
    }
    return absl::OkStatus();
  }

  // sliding_window_pattern: a BOOL per layer, true = sliding.
  absl::Status LayerTypes(int num_layers, std::vector<LayerType>* out) const {
    GQ_ASSIGN_OR_RETURN(const GgufValue* value, Get(kKeySlidingPattern, true));
    const GgufArray* array = value->array();
    if (array == nullptr || array->element_type != GgufValueType::kBool) {
      return KeyError(kKeySlidingPattern, "an ARRAY of BOOL (true: sliding layer)",
                      DescribeValue(*value));
    }
    if (array->elements.size() != static_cast<size_t>(num_layers)) {
      return KeyError(kKeySlidingPattern,
                      absl::StrCat(num_layers, " entries (", AsAbsl(kKeyBlockCount), ")"),
                      DescribeValue(*value));
    }
    out->clear();
    for (const GgufValue& element : array->elements) {
      out->push_back(*element.AsBool() ? LayerType::kSliding : LayerType::kFull);
    }
    return absl::OkStatus();
  }

 private:
  const GgufFile& file_;
};

// The head dim of the first layer of `type`; head_dim when no layer has it.
// GGUF holds one head dim per layer type (CheckGgufRepresentable).
int TypeHeadDim(const TextConfig& c, LayerType type) {
  const size_t n = std::min(c.layer_types.size(), c.layer_head_dim.size());
  for (size_t i = 0; i < n; ++i) {
    if (c.layer_types[i] == type) return c.layer_head_dim[i];
  }
  return c.head_dim;
}

// HF's base num_key_value_heads is the sliding layers' count.
int BaseKvHeads(const TextConfig& c) {
  const auto sliding = std::find(c.layer_types.begin(), c.layer_types.end(), LayerType::kSliding);
  return c.layer_num_kv_heads[sliding == c.layer_types.end() ? 0 : sliding - c.layer_types.begin()];
}

absl::Status ReadAttention(const Metadata& md, TextConfig* c) {
  const int n = c->num_hidden_layers;
  bool is_array = false;
  std::vector<int> heads;
  GQ_RETURN_IF_ERROR(md.PerLayerInts(kKeyHeadCount, n, &heads, &is_array, /*required=*/true));
  for (int i = 1; i < n; ++i) {
    if (heads[i] != heads[0]) {
      return KeyError(absl::StrCat(AsAbsl(kKeyHeadCount), "[", i, "]"),
                      absl::StrCat(heads[0], " (one head count for every layer)"),
                      absl::StrCat(heads[i]));
    }
  }
  c->num_attention_heads = heads[0];
  c->layer_num_kv_heads = heads;  // llama.cpp's default: no grouping
  GQ_RETURN_IF_ERROR(md.PerLayerInts(kKeyHeadCountKv, n, &c->layer_num_kv_heads, &is_array));
  c->num_key_value_heads = BaseKvHeads(*c);

  int full_dim = 0;
  int swa_dim = 0;
  GQ_RETURN_IF_ERROR(md.Read(kKeyKeyLength, &full_dim, /*required=*/true));
  GQ_RETURN_IF_ERROR(md.Read(kKeyKeyLengthSwa, &swa_dim, /*required=*/true));
  // llama.cpp requires V head dims equal to K's (K = V layers reuse K as V).
  for (const auto& [k_key, v_key, dim] : {std::tuple{kKeyKeyLength, kKeyValueLength, full_dim},
                                          {kKeyKeyLengthSwa, kKeyValueLengthSwa, swa_dim}}) {
    if (dim <= 0) return KeyError(k_key, "a positive head dim", absl::StrCat(dim));
    int v_dim = dim;
    GQ_RETURN_IF_ERROR(md.Read(v_key, &v_dim));
    if (v_dim != dim) {
      return KeyError(v_key, absl::StrCat(dim, " (the key length)"), absl::StrCat(v_dim));
    }
  }
  c->head_dim = swa_dim;
  c->layer_head_dim.clear();
  for (LayerType type : c->layer_types) {
    c->layer_head_dim.push_back(type == LayerType::kFull ? full_dim : swa_dim);
  }
  return absl::OkStatus();
}

absl::Status ReadFeedForward(const Metadata& md, TextConfig* c) {
  const int n = c->num_hidden_layers;
  bool per_layer = false;
  std::vector<int> widths;
  GQ_RETURN_IF_ERROR(
      md.PerLayerInts(kKeyFeedForwardLength, n, &widths, &per_layer, /*required=*/true));
  c->intermediate_size = widths[0];  // layer 0 is never KV-shared
  // The converter writes an array only for use_double_wide_mlp.
  const int first_shared = c->first_kv_shared_layer();
  c->use_double_wide_mlp = per_layer && (first_shared == n || widths[first_shared] != widths[0]);
  for (int i = 0; i < n; ++i) {
    const bool doubled = c->use_double_wide_mlp && c->is_kv_shared(i);
    const int64_t expected = int64_t{widths[0]} * (doubled ? 2 : 1);
    if (widths[i] != expected) {
      return KeyError(absl::StrCat(AsAbsl(kKeyFeedForwardLength), "[", i, "]"),
                      absl::StrCat(expected, doubled ? " (2x layer 0's width on a KV-shared layer)"
                                                     : " (layer 0's width)"),
                      absl::StrCat(widths[i]));
    }
  }

  std::optional<int> experts;
  GQ_RETURN_IF_ERROR(md.Read(kKeyExpertCount, &experts));
  c->enable_moe_block = experts.value_or(0) > 0;
  if (c->enable_moe_block) {
    int used = 0;
    int width = 0;
    GQ_RETURN_IF_ERROR(md.Read(kKeyExpertUsedCount, &used, /*required=*/true));
    GQ_RETURN_IF_ERROR(md.Read(kKeyExpertFfLength, &width, /*required=*/true));
    c->num_experts = experts;
    c->top_k_experts = used;
    c->moe_intermediate_size = width;
  }
  return absl::OkStatus();
}

// Full layers' partial_rotary_factor: the leading 1.0 entries of rope_freqs
// (the rotated pairs), else HF's default.
absl::StatusOr<double> FullRotaryFactor(const GgufFile& file, int full_dim) {
  const GgufTensorInfo* info = file.FindTensor(kGgufRopeFreqsTensor);
  if (info == nullptr) return TextConfig().rope_full.partial_rotary_factor;
  const int64_t pairs = full_dim / 2;
  if (info->type != static_cast<uint32_t>(GgmlType::kF32) || info->dims != std::vector{pairs}) {
    return TensorError(kGgufRopeFreqsTensor,
                       absl::StrCat("F32 dims [", pairs, "] (", AsAbsl(kKeyKeyLength), " / 2)"),
                       DescribeDims(*info));
  }
  std::vector<float> freqs(pairs);
  GQ_RETURN_IF_ERROR(file.CheckNotTruncated());
  std::memcpy(freqs.data(), file.TensorData(*info).data(), freqs.size() * sizeof(float));
  const auto first_unrotated =
      std::find_if(freqs.begin(), freqs.end(), [](float f) { return f != 1.0f; });
  const int64_t rotated = first_unrotated - freqs.begin();
  if (rotated == 0 ||
      std::any_of(first_unrotated, freqs.end(), [](float f) { return f == 1.0f; })) {
    return TensorError(kGgufRopeFreqsTensor,
                       "1.0 for the leading rotated pairs, then other factors (1e30)",
                       absl::StrCat(rotated, " leading 1.0 entries and later ones"));
  }
  return 2.0 * static_cast<double>(rotated) / full_dim;
}

absl::Status ReadRope(const Metadata& md, const GgufFile& file, TextConfig* c) {
  const int full_dim = TypeHeadDim(*c, LayerType::kFull);
  const int swa_dim = c->head_dim;
  double base = kDefaultRopeBase;
  GQ_RETURN_IF_ERROR(md.Read(kKeyRopeFreqBase, &base));
  double base_swa = base;
  GQ_RETURN_IF_ERROR(md.Read(kKeyRopeFreqBaseSwa, &base_swa));
  // Proportional RoPE keeps the whole head's frequency exponents, so ggml must
  // rotate the whole head and mask pairs through rope_freqs; a smaller count
  // would mean llama.cpp's "default" partial RoPE, which Gemma 4 does not use.
  int dims = full_dim;
  GQ_RETURN_IF_ERROR(md.Read(kKeyRopeDims, &dims));
  if (dims != full_dim) {
    return KeyError(kKeyRopeDims,
                    absl::StrCat(full_dim, " (", AsAbsl(kKeyKeyLength),
                                 "; the rotated fraction lives in rope_freqs.weight)"),
                    absl::StrCat(dims));
  }
  int dims_swa = swa_dim;  // llama.cpp would default to dimension_count; a whole head is meant
  GQ_RETURN_IF_ERROR(md.Read(kKeyRopeDimsSwa, &dims_swa));
  if (dims_swa < 1 || dims_swa > swa_dim) {
    return KeyError(kKeyRopeDimsSwa,
                    absl::StrCat("a value in [1, ", swa_dim, "] (", AsAbsl(kKeyKeyLengthSwa), ")"),
                    absl::StrCat(dims_swa));
  }
  c->rope_sliding = {"default", base_swa, static_cast<double>(dims_swa) / swa_dim};
  GQ_ASSIGN_OR_RETURN(const double partial, FullRotaryFactor(file, full_dim));
  c->rope_full = {"proportional", base, partial};
  return absl::OkStatus();
}

// Fields llama.cpp has no key for, read off the tensor list (see the header).
absl::Status ReadFromTensors(const Metadata& md, const GgufFile& file, TextConfig* c) {
  std::optional<int> vocab;
  GQ_RETURN_IF_ERROR(md.Read(kKeyVocabSize, &vocab));
  if (const GgufValue* tokens = file.Find(kKeyTokens); !vocab.has_value() && tokens != nullptr) {
    if (tokens->array() == nullptr || tokens->array()->elements.size() > INT_MAX) {
      return KeyError(kKeyTokens, "an ARRAY of STRING", DescribeValue(*tokens));
    }
    vocab = static_cast<int>(tokens->array()->elements.size());
  }
  if (const GgufTensorInfo* embd = file.FindTensor(kTokenEmbd)) {
    if (embd->dims.size() != 2 || embd->dims[1] > INT_MAX ||
        (vocab.has_value() && embd->dims[1] != *vocab)) {
      return TensorError(kTokenEmbd,
                         vocab.has_value() ? absl::StrCat("dims [", c->hidden_size, ", ", *vocab,
                                                          "] (the vocabulary size)")
                                           : "2 dims",
                         DescribeDims(*embd));
    }
    vocab = static_cast<int>(embd->dims[1]);
  }
  if (!vocab.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no vocabulary size: none of key '", AsAbsl(kKeyVocabSize), "', key '",
                     AsAbsl(kKeyTokens), "' or tensor '", AsAbsl(kTokenEmbd), "'"));
  }
  c->vocab_size = *vocab;

  // llama.cpp indexes per_layer_token_embd with token ids, so its rows are the
  // vocabulary unless the tensor says otherwise.
  if (c->has_per_layer_embeddings()) {
    c->vocab_size_per_layer_input = c->vocab_size;
    if (const GgufTensorInfo* ple = file.FindTensor(kPerLayerTokenEmbd)) {
      if (ple->dims.size() != 2 || ple->dims[1] <= 0 || ple->dims[1] > INT_MAX) {
        return TensorError(kPerLayerTokenEmbd, "2 dims", DescribeDims(*ple));
      }
      c->vocab_size_per_layer_input = static_cast<int>(ple->dims[1]);
    }
  }
  c->tie_word_embeddings = file.FindTensor(kOutput) == nullptr;

  // K = V full layers have no attn_v (llama.cpp then uses K as V); KV-shared
  // layers have no K/V at all. With no tensors there is nothing to go on.
  if (file.tensors().empty()) return absl::OkStatus();
  int with_v = 0;
  std::string first_missing;
  for (int i = 0; i < c->first_kv_shared_layer(); ++i) {
    if (!c->is_full(i)) continue;
    std::string name = absl::StrCat(AsAbsl(kGgufLayer), i, ".attn_v.weight");
    if (file.FindTensor(name) != nullptr) {
      ++with_v;
    } else if (first_missing.empty()) {
      first_missing = std::move(name);
    }
  }
  if (!first_missing.empty() && with_v > 0) {
    return TensorError(first_missing,
                       "present like on the other non-shared full layers (absent on all of "
                       "them means attention_k_eq_v)",
                       "none");
  }
  c->attention_k_eq_v = !first_missing.empty();
  return absl::OkStatus();
}

absl::StatusOr<TextConfig> ReadTextConfig(const GgufFile& file) {
  const Metadata md(file);
  GQ_ASSIGN_OR_RETURN(const GgufValue* arch, md.Get(kKeyArchitecture, /*required=*/true));
  if (const absl::StatusOr<std::string_view> name = arch->AsString();
      !name.ok() || *name != kGgufArchitecture) {
    return KeyError(kKeyArchitecture, "STRING 'gemma4'", DescribeValue(*arch));
  }

  TextConfig c;
  GQ_RETURN_IF_ERROR(md.Read(kKeyBlockCount, &c.num_hidden_layers, /*required=*/true));
  const int n = c.num_hidden_layers;
  if (n < 1 || n > kMaxLayers) {
    return KeyError(kKeyBlockCount, absl::StrCat("a value in [1, ", kMaxLayers, "]"),
                    absl::StrCat(n));
  }
  GQ_RETURN_IF_ERROR(md.Read(kKeyContextLength, &c.max_position_embeddings, /*required=*/true));
  GQ_RETURN_IF_ERROR(md.Read(kKeyEmbeddingLength, &c.hidden_size, /*required=*/true));
  GQ_RETURN_IF_ERROR(md.Read(kKeyRmsEps, &c.rms_norm_eps, /*required=*/true));
  GQ_RETURN_IF_ERROR(md.Read(kKeySlidingWindow, &c.sliding_window, /*required=*/true));
  GQ_RETURN_IF_ERROR(md.Read(kKeySoftcap, &c.final_logit_softcapping));
  GQ_RETURN_IF_ERROR(md.Read(kKeyPerLayerInput, &c.hidden_size_per_layer_input, /*required=*/true));
  GQ_RETURN_IF_ERROR(md.LayerTypes(n, &c.layer_types));
  // As ParseConfigJson, after HF: the last layer is forced to full attention.
  if (c.layer_types.back() != LayerType::kFull) {
    c.layer_types.back() = LayerType::kFull;
    c.last_layer_forced_full = true;
  }
  GQ_RETURN_IF_ERROR(md.Read(kKeySharedKvLayers, &c.num_kv_shared_layers));
  if (c.num_kv_shared_layers >= n) {
    return KeyError(kKeySharedKvLayers, absl::StrCat("a value in [0, ", n, ")"),
                    absl::StrCat(c.num_kv_shared_layers));
  }
  GQ_RETURN_IF_ERROR(ReadAttention(md, &c));
  GQ_RETURN_IF_ERROR(ReadFeedForward(md, &c));
  GQ_RETURN_IF_ERROR(ReadRope(md, file, &c));
  GQ_RETURN_IF_ERROR(ReadFromTensors(md, file, &c));

  // An absent id key means "no such token", as a null does in config.json.
  GQ_RETURN_IF_ERROR(md.Read(kKeyPadId, &c.pad_token_id));
  GQ_RETURN_IF_ERROR(md.Read(kKeyBosId, &c.bos_token_id));
  std::optional<int> eos;
  GQ_RETURN_IF_ERROR(md.Read(kKeyEosId, &eos));
  c.eos_token_ids.clear();
  if (eos.has_value()) c.eos_token_ids.push_back(*eos);

  GQ_RETURN_IF_ERROR(ValidateTextConfig(c));
  return c;
}

// True when x is within rounding of a whole number.
bool IsWhole(double x) { return std::abs(x - std::round(x)) < 1e-9; }

}  // namespace

absl::StatusOr<std::string> HfNameFromGguf(std::string_view gguf_name, std::string_view hf_prefix) {
  const std::optional<LayerName> layer = SplitLayer(gguf_name, kGgufLayer);
  const std::string_view rest = layer.has_value() ? layer->rest : gguf_name;
  if (rest == kGgufRopeFreqsTensor) {
    return absl::NotFoundError(absl::StrCat("GGUF tensor '", AsAbsl(gguf_name),
                                            "': generated by llama.cpp's converter, not in HF"));
  }
  if (layer.has_value()) {
    if (const TensorNameRule* rule = FindRule(Scope::kLayer, rest, /*by_gguf=*/true)) {
      return absl::StrCat(AsAbsl(hf_prefix), AsAbsl(kHfLayer), layer->layer, ".", AsAbsl(rule->hf));
    }
    if (Contains(kGgufSplitExperts, rest)) {
      return absl::UnimplementedError(
          absl::StrCat("GGUF tensor '", AsAbsl(gguf_name),
                       "': split expert halves; HF stores them fused as experts.gate_up_proj"));
    }
  } else if (const TensorNameRule* rule = FindRule(Scope::kModel, gguf_name, /*by_gguf=*/true)) {
    return absl::StrCat(AsAbsl(hf_prefix), AsAbsl(rule->hf));
  } else if (const TensorNameRule* root = FindRule(Scope::kRoot, gguf_name, /*by_gguf=*/true)) {
    return std::string(root->hf);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("GGUF tensor '", AsAbsl(gguf_name), "': not a Gemma 4 text tensor"));
}

absl::StatusOr<std::string> GgufNameFromHf(std::string_view hf_name) {
  std::string_view rest = hf_name;
  bool prefixed = true;
  if (rest.starts_with(kHfPrefixMultimodal)) {
    rest.remove_prefix(kHfPrefixMultimodal.size());
  } else if (rest.starts_with(kHfPrefixText)) {
    rest.remove_prefix(kHfPrefixText.size());
  } else {
    prefixed = false;
  }
  for (std::string_view tower : kHfMediaTowers) {
    if (rest.starts_with(tower)) {
      return absl::NotFoundError(absl::StrCat("HF tensor '", AsAbsl(hf_name),
                                              "': vision/audio weights go to llama.cpp's mmproj "
                                              "file, not the text GGUF"));
    }
  }
  if (const std::optional<LayerName> layer = SplitLayer(rest, kHfLayer)) {
    if (const TensorNameRule* rule = FindRule(Scope::kLayer, layer->rest, /*by_gguf=*/false)) {
      return absl::StrCat(AsAbsl(kGgufLayer), layer->layer, ".", AsAbsl(rule->gguf));
    }
  } else if (const TensorNameRule* rule = FindRule(Scope::kModel, rest, /*by_gguf=*/false)) {
    return std::string(rule->gguf);
  } else if (const TensorNameRule* root = FindRule(Scope::kRoot, rest, /*by_gguf=*/false);
             root != nullptr && !prefixed) {
    return std::string(root->gguf);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("HF tensor '", AsAbsl(hf_name), "': not a Gemma 4 text tensor"));
}

absl::StatusOr<TextConfig> TextConfigFromGguf(const GgufFile& file) {
  absl::StatusOr<TextConfig> config = ReadTextConfig(file);
  if (!config.ok()) return Annotate(config.status(), "GGUF '", file.source(), "'");
  return config;
}

absl::Status CheckGgufRepresentable(const TextConfig& c) {
  GQ_RETURN_IF_ERROR(ValidateTextConfig(c));
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const int expected = TypeHeadDim(c, c.layer_types[i]);
    if (c.layer_head_dim[i] != expected) {
      return FieldError(absl::StrCat("layer_head_dim[", i, "]"),
                        absl::StrCat(expected, " (GGUF holds one head dim per layer type)"),
                        absl::StrCat(c.layer_head_dim[i]));
    }
  }
  const int swa_dim = TypeHeadDim(c, LayerType::kSliding);
  const int full_dim = TypeHeadDim(c, LayerType::kFull);
  if (c.rope_sliding.rope_type != "default") {
    return FieldError("rope_parameters.sliding_attention.rope_type", "'default'",
                      absl::StrCat("'", c.rope_sliding.rope_type, "'"));
  }
  if (c.rope_full.rope_type != "proportional") {
    return FieldError("rope_parameters.full_attention.rope_type", "'proportional'",
                      absl::StrCat("'", c.rope_full.rope_type, "'"));
  }
  if (!IsWhole(swa_dim * c.rope_sliding.partial_rotary_factor)) {
    return FieldError("rope_parameters.sliding_attention.partial_rotary_factor",
                      absl::StrCat("a multiple of 1/", swa_dim, " (whole rotated dims)"),
                      absl::StrCat(c.rope_sliding.partial_rotary_factor));
  }
  if (!IsWhole(full_dim * c.rope_full.partial_rotary_factor / 2)) {
    return FieldError("rope_parameters.full_attention.partial_rotary_factor",
                      absl::StrCat("a multiple of 2/", full_dim, " (whole rotated pairs)"),
                      absl::StrCat(c.rope_full.partial_rotary_factor));
  }
  if (c.has_per_layer_embeddings() && c.vocab_size_per_layer_input != c.vocab_size) {
    return FieldError("vocab_size_per_layer_input",
                      absl::StrCat(c.vocab_size,
                                   " (vocab_size: llama.cpp indexes per-layer "
                                   "embeddings by token id)"),
                      absl::StrCat(c.vocab_size_per_layer_input));
  }
  if (c.hidden_activation != "gelu_pytorch_tanh") {
    return FieldError("hidden_activation", "'gelu_pytorch_tanh' (llama.cpp's Gemma 4 graph)",
                      absl::StrCat("'", c.hidden_activation, "'"));
  }
  if (c.attention_bias) return FieldError("attention_bias", "false (no bias tensors)", "true");
  return absl::OkStatus();
}

std::vector<std::pair<std::string, GgufValue>> GgufMetadataFromTextConfig(
    const TextConfig& c, std::string_view model_name) {
  std::vector<std::pair<std::string, GgufValue>> out;
  const auto add = [&out](std::string_view key, GgufValue value) {
    out.emplace_back(std::string(key), std::move(value));
  };
  const auto u32 = [](int v) { return GgufValue(static_cast<uint32_t>(v)); };
  const auto f32 = [](double v) { return GgufValue(static_cast<float>(v)); };
  const int n = c.num_hidden_layers;
  const int full_dim = TypeHeadDim(c, LayerType::kFull);
  const int swa_dim = TypeHeadDim(c, LayerType::kSliding);

  add(kKeyArchitecture, GgufValue(std::string(kGgufArchitecture)));
  add(kKeyName, GgufValue(std::string(model_name)));
  add(kKeyVocabSize, u32(c.vocab_size));
  add(kKeyContextLength, u32(c.max_position_embeddings));
  add(kKeyEmbeddingLength, u32(c.hidden_size));
  add(kKeyBlockCount, u32(n));
  if (c.use_double_wide_mlp) {  // the converter's form: an INT32 per layer
    std::vector<int32_t> widths;
    for (int i = 0; i < n; ++i) widths.push_back(c.mlp_width(i));
    add(kKeyFeedForwardLength, GgufValue::ArrayOf(widths));
  } else {
    add(kKeyFeedForwardLength, u32(c.intermediate_size));
  }
  add(kKeyHeadCount, u32(c.num_attention_heads));
  const bool uniform_kv = std::all_of(c.layer_num_kv_heads.begin(), c.layer_num_kv_heads.end(),
                                      [&c](int kv) { return kv == c.num_key_value_heads; });
  add(kKeyHeadCountKv,
      uniform_kv ? u32(c.num_key_value_heads) : GgufValue::ArrayOf<int32_t>(c.layer_num_kv_heads));
  add(kKeyRopeFreqBase, f32(c.rope_full.rope_theta));
  add(kKeyRopeFreqBaseSwa, f32(c.rope_sliding.rope_theta));
  add(kKeyRmsEps, f32(c.rms_norm_eps));
  if (c.enable_moe_block) {
    add(kKeyExpertCount, u32(c.num_experts.value_or(0)));
    add(kKeyExpertUsedCount, u32(c.top_k_experts.value_or(0)));
  }
  add(kKeyKeyLength, u32(full_dim));
  add(kKeyValueLength, u32(full_dim));
  if (c.final_logit_softcapping.has_value()) add(kKeySoftcap, f32(*c.final_logit_softcapping));
  add(kKeySlidingWindow, u32(c.sliding_window));
  add(kKeySharedKvLayers, u32(c.num_kv_shared_layers));
  add(kKeyPerLayerInput, u32(c.hidden_size_per_layer_input));
  std::vector<bool> sliding;
  for (LayerType type : c.layer_types) sliding.push_back(type == LayerType::kSliding);
  add(kKeySlidingPattern, GgufValue::ArrayOf(sliding));
  add(kKeyKeyLengthSwa, u32(swa_dim));
  add(kKeyValueLengthSwa, u32(swa_dim));
  if (c.enable_moe_block) add(kKeyExpertFfLength, u32(c.moe_intermediate_size.value_or(0)));
  add(kKeyRopeDims, u32(full_dim));
  add(kKeyRopeDimsSwa,
      u32(static_cast<int>(std::lround(swa_dim * c.rope_sliding.partial_rotary_factor))));
  if (c.bos_token_id.has_value()) add(kKeyBosId, u32(*c.bos_token_id));
  if (!c.eos_token_ids.empty()) add(kKeyEosId, u32(c.eos_token_ids.front()));
  if (c.pad_token_id.has_value()) add(kKeyPadId, u32(*c.pad_token_id));
  return out;
}

std::vector<float> RopeFreqsFromTextConfig(const TextConfig& config) {
  const int full_dim = TypeHeadDim(config, LayerType::kFull);
  const int pairs = full_dim / 2;
  // The converter: int(head_dim * partial_rotary_factor / 2) rotated pairs.
  const int rotated =
      static_cast<int>(std::lround(full_dim * config.rope_full.partial_rotary_factor / 2));
  std::vector<float> freqs(pairs, 1e30f);
  std::fill_n(freqs.begin(), std::clamp(rotated, 0, pairs), 1.0f);
  return freqs;
}

std::string ConfigJsonFromTextConfig(const TextConfig& c) {
  using Json = nlohmann::ordered_json;
  const auto nullable = [](const auto& value) {
    return value.has_value() ? Json(*value) : Json(nullptr);
  };
  Json j;
  j["architectures"] = Json::array({"Gemma4ForCausalLM"});
  j["model_type"] = "gemma4_text";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_activation"] = c.hidden_activation;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["pad_token_id"] = nullable(c.pad_token_id);
  j["bos_token_id"] = nullable(c.bos_token_id);
  j["eos_token_id"] = c.eos_token_ids.size() == 1 ? Json(c.eos_token_ids[0])
                      : c.eos_token_ids.empty()   ? Json(nullptr)
                                                  : Json(c.eos_token_ids);
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["sliding_window"] = c.sliding_window;
  j["final_logit_softcapping"] = nullable(c.final_logit_softcapping);
  j["use_bidirectional_attention"] =
      c.use_bidirectional_attention == BidirectionalAttention::kVision ? Json("vision")
      : c.use_bidirectional_attention == BidirectionalAttention::kAll  ? Json("all")
                                                                       : Json(nullptr);
  j["vocab_size_per_layer_input"] = c.vocab_size_per_layer_input;
  j["hidden_size_per_layer_input"] = c.hidden_size_per_layer_input;
  j["attention_k_eq_v"] = c.attention_k_eq_v;
  j["num_kv_shared_layers"] = c.num_kv_shared_layers;
  j["use_double_wide_mlp"] = c.use_double_wide_mlp;
  j["enable_moe_block"] = c.enable_moe_block;
  j["num_experts"] = nullable(c.num_experts);
  j["top_k_experts"] = nullable(c.top_k_experts);
  j["moe_intermediate_size"] = nullable(c.moe_intermediate_size);
  Json& types = j["layer_types"] = Json::array();
  for (LayerType type : c.layer_types) types.push_back(std::string(LayerTypeName(type)));
  Json& rope = j["rope_parameters"] = Json::object();
  for (LayerType type : {LayerType::kFull, LayerType::kSliding}) {
    const RopeParameters& params = type == LayerType::kFull ? c.rope_full : c.rope_sliding;
    Json entry = {{"rope_type", params.rope_type}, {"rope_theta", params.rope_theta}};
    if (params.partial_rotary_factor != 1.0) {
      entry["partial_rotary_factor"] = params.partial_rotary_factor;
    }
    rope[std::string(LayerTypeName(type))] = std::move(entry);
  }

  // Shapes as transformers >= 5.17 writes them: overrides of the base values.
  Json overrides = Json::object();
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    Json entry = Json::object();
    if (c.layer_head_dim[i] != c.head_dim) entry["head_dim"] = c.layer_head_dim[i];
    if (c.layer_num_kv_heads[i] != c.num_key_value_heads) {
      entry["num_key_value_heads"] = c.layer_num_kv_heads[i];
    }
    if (!entry.empty()) overrides[std::to_string(i)] = std::move(entry);
  }
  j["per_layer_config"] = overrides.empty() ? Json(nullptr) : overrides;
  // The released checkpoints' legacy keys, for older transformers, when they
  // resolve to the same shapes (ParseConfigJson ignores them next to
  // per_layer_config, as transformers does).
  const int global_head_dim = TypeHeadDim(c, LayerType::kFull);
  std::optional<int> global_kv;
  for (int i = 0; i < c.num_hidden_layers && c.attention_k_eq_v && !global_kv; ++i) {
    if (c.is_full(i)) global_kv = c.layer_num_kv_heads[i];
  }
  bool legacy_matches = true;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const bool full = c.is_full(i);
    legacy_matches &=
        c.layer_head_dim[i] == (full ? global_head_dim : c.head_dim) &&
        c.layer_num_kv_heads[i] == (full && global_kv ? *global_kv : c.num_key_value_heads);
  }
  if (legacy_matches) {
    j["global_head_dim"] = global_head_dim;
    j["num_global_key_value_heads"] = nullable(global_kv);
  }
  return j.dump(2) + "\n";
}

}  // namespace gquant::gemma4
