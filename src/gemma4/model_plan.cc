#include "gquant/gemma4/model_plan.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gquant/status.h"

namespace gquant::gemma4 {
namespace {

absl::Status Unsupported(std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("Gemma 4 model plan: ", std::string(what), " is not implemented"));
}

}  // namespace

absl::StatusOr<ModelPlan> ModelPlan::Create(const TextConfig& config) {
  GQ_RETURN_IF_ERROR(ValidateTextConfig(config));
  if (config.hidden_activation != "gelu_pytorch_tanh") {
    return Unsupported(absl::StrCat("hidden_activation '", config.hidden_activation, "'"));
  }
  if (config.attention_bias) return Unsupported("attention_bias = true");
  // "all" makes text attention bidirectional (and changes the window); only
  // the causal text path exists. "vision" only differs at image tokens.
  if (config.use_bidirectional_attention == BidirectionalAttention::kAll) {
    return Unsupported("use_bidirectional_attention = \"all\"");
  }

  ModelPlan plan;
  plan.config = config;
  const TextConfig& c = plan.config;
  const int64_t h = c.hidden_size;
  const int64_t ple = c.hidden_size_per_layer_input;
  const int num_layers = c.num_hidden_layers;

  plan.global_weights.push_back({"embed_tokens.weight", {c.vocab_size, h}});
  if (c.has_per_layer_embeddings()) {
    plan.global_weights.push_back(
        {"embed_tokens_per_layer.weight", {c.vocab_size_per_layer_input, num_layers * ple}});
    plan.global_weights.push_back({"per_layer_model_projection.weight", {num_layers * ple, h}});
    plan.global_weights.push_back({"per_layer_projection_norm.weight", {ple}});
  }
  plan.global_weights.push_back({"norm.weight", {h}});
  if (!c.tie_word_embeddings) plan.global_weights.push_back({"lm_head.weight", {c.vocab_size, h}});

  for (int i = 0; i < num_layers; ++i) {
    LayerPlan layer;
    layer.index = i;
    layer.type = c.layer_types[i];
    layer.head_dim = c.layer_head_dim[i];
    layer.num_heads = c.num_attention_heads;
    layer.num_kv_heads = c.layer_num_kv_heads[i];
    layer.v_from_k = c.k_eq_v(i);
    layer.kv_shared = c.is_kv_shared(i);
    layer.kv_source = c.kv_source_layer(i);
    layer.mlp_width = c.mlp_width(i);
    layer.has_ple = c.has_per_layer_embeddings();
    layer.has_moe = c.enable_moe_block;
    layer.rope = layer.type == LayerType::kFull ? c.rope_full : c.rope_sliding;
    plan.layers.push_back(layer);

    const std::string p = absl::StrCat("layers.", i, ".");
    const int64_t d = layer.head_dim, q = int64_t{layer.num_heads} * d,
                  kv = int64_t{layer.num_kv_heads} * d, width = layer.mlp_width;
    std::vector<WeightSpec> w;
    w.push_back({p + "input_layernorm.weight", {h}});
    w.push_back({p + "self_attn.q_proj.weight", {q, h}});
    w.push_back({p + "self_attn.q_norm.weight", {d}});
    if (!layer.kv_shared) {
      w.push_back({p + "self_attn.k_proj.weight", {kv, h}});
      w.push_back({p + "self_attn.k_norm.weight", {d}});
      if (!layer.v_from_k) w.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    }
    w.push_back({p + "self_attn.o_proj.weight", {h, q}});
    w.push_back({p + "post_attention_layernorm.weight", {h}});
    w.push_back({p + "pre_feedforward_layernorm.weight", {h}});
    w.push_back({p + "mlp.gate_proj.weight", {width, h}});
    w.push_back({p + "mlp.up_proj.weight", {width, h}});
    w.push_back({p + "mlp.down_proj.weight", {h, width}});
    if (layer.has_moe) {
      const int64_t experts = *c.num_experts, moe = *c.moe_intermediate_size;
      w.push_back({p + "post_feedforward_layernorm_1.weight", {h}});
      w.push_back({p + "router.scale", {h}});
      w.push_back({p + "router.proj.weight", {experts, h}});
      w.push_back({p + "router.per_expert_scale", {experts}});
      w.push_back({p + "pre_feedforward_layernorm_2.weight", {h}});
      w.push_back({p + "experts.gate_up_proj", {experts, 2 * moe, h}});
      w.push_back({p + "experts.down_proj", {experts, h, moe}});
      w.push_back({p + "post_feedforward_layernorm_2.weight", {h}});
    }
    w.push_back({p + "post_feedforward_layernorm.weight", {h}});
    if (layer.has_ple) {
      w.push_back({p + "per_layer_input_gate.weight", {ple, h}});
      w.push_back({p + "per_layer_projection.weight", {h, ple}});
      w.push_back({p + "post_per_layer_input_norm.weight", {h}});
    }
    w.push_back({p + "layer_scalar", {1}});
    plan.layer_weights.push_back(std::move(w));
  }
  return plan;
}

std::vector<WeightSpec> ModelPlan::AllWeights() const {
  std::vector<WeightSpec> all = global_weights;
  for (const auto& layer : layer_weights) all.insert(all.end(), layer.begin(), layer.end());
  return all;
}

std::vector<WeightSpec> VisionWeightSpecs(const VisionConfig& c, int64_t text_hidden_size) {
  const int64_t h = c.hidden_size, m = c.intermediate_size, patch = c.patch_size;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim;
  const int64_t kv = int64_t{c.num_key_value_heads} * c.head_dim;
  std::vector<WeightSpec> specs = {
      {"vision_tower.patch_embedder.input_proj.weight", {h, 3 * patch * patch}},
      {"vision_tower.patch_embedder.position_embedding_table", {2, c.position_embedding_size, h}},
  };
  const std::pair<const char*, std::vector<int64_t>> linears[] = {
      {"self_attn.q_proj", {q, h}}, {"self_attn.k_proj", {kv, h}}, {"self_attn.v_proj", {kv, h}},
      {"self_attn.o_proj", {h, q}}, {"mlp.gate_proj", {m, h}},     {"mlp.up_proj", {m, h}},
      {"mlp.down_proj", {h, m}}};
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string pre = absl::StrCat("vision_tower.encoder.layers.", layer, ".");
    for (const auto& [name, shape] : linears) {
      specs.push_back({absl::StrCat(pre, name, ".linear.weight"), shape});
      if (!c.use_clipped_linears) continue;
      for (const char* bound : {"input_min", "input_max", "output_min", "output_max"}) {
        specs.push_back({absl::StrCat(pre, name, ".", bound), {}});
      }
    }
    specs.push_back({pre + "self_attn.q_norm.weight", {c.head_dim}});
    specs.push_back({pre + "self_attn.k_norm.weight", {c.head_dim}});
    for (const char* norm : {"input_layernorm", "post_attention_layernorm",
                             "pre_feedforward_layernorm", "post_feedforward_layernorm"}) {
      specs.push_back({absl::StrCat(pre, norm, ".weight"), {h}});
    }
  }
  if (c.standardize) {
    specs.push_back({"vision_tower.std_bias", {h}});
    specs.push_back({"vision_tower.std_scale", {h}});
  }
  specs.push_back({"embed_vision.embedding_projection.weight", {text_hidden_size, h}});
  return specs;
}

int64_t KvCacheCapacity(const TextConfig& config, const LayerPlan& layer, int64_t max_positions,
                        int max_chunk) {
  if (layer.kv_shared) return 0;
  if (layer.type == LayerType::kFull) return max_positions;
  return std::min<int64_t>(max_positions, int64_t{config.sliding_window} + max_chunk - 1);
}

absl::Status CheckTokenIds(const TextConfig& config, std::span<const int> tokens,
                           std::string_view what) {
  int vocab = config.vocab_size;
  if (config.has_per_layer_embeddings()) vocab = std::min(vocab, config.vocab_size_per_layer_input);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": token ", i, " is id ",
                                                     tokens[i], ", outside the vocabulary [0, ",
                                                     vocab, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace gquant::gemma4
