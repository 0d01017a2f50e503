// What a Gemma 4 text decoder computes, layer by layer, and which weights it
// needs: derived from a validated TextConfig (spec gemma4.md §1-§2). The CPU
// reference forward and the GPU forward both execute this plan.
#ifndef GQUANT_GEMMA4_MODEL_PLAN_H_
#define GQUANT_GEMMA4_MODEL_PLAN_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/config.h"

namespace gquant::gemma4 {

struct LayerPlan {
  int index = 0;
  LayerType type = LayerType::kSliding;
  int head_dim = 0;        // D: 256 sliding / 512 full on the released models
  int num_heads = 0;       // nH
  int num_kv_heads = 0;    // nKV
  bool v_from_k = false;   // K=V layer: no v_proj, V is the raw K projection (§2.5)
  bool kv_shared = false;  // computes Q only and attends to kv_source's K/V (§2.6)
  int kv_source = 0;       // the layer whose cache this layer reads (itself unless shared)
  int mlp_width = 0;       // dense MLP intermediate size (doubled on E2B's shared layers)
  bool has_ple = false;    // per-layer-embedding block after the MLP (§2.3-§2.4)
  bool has_moe = false;    // 26B-A4B: experts beside the dense MLP
  RopeParameters rope;     // rope_sliding or rope_full
};

// One weight the model needs, by its HF name without the model prefix
// ("layers.3.self_attn.q_proj.weight", "embed_tokens.weight", "norm.weight").
struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;  // torch order
};

struct ModelPlan {
  TextConfig config;
  std::vector<LayerPlan> layers;
  std::vector<WeightSpec> global_weights;              // embeddings, PLE projection, final norm
  std::vector<std::vector<WeightSpec>> layer_weights;  // per layer, in forward order

  // The plan for `config`. InvalidArgument when ValidateTextConfig fails or the
  // config uses something the model layer does not implement (an activation
  // other than gelu_pytorch_tanh, attention biases, bidirectional text
  // attention: use_bidirectional_attention "all"). "vision" is accepted: it
  // only changes the mask at image tokens (CpuModel / GpuModel apply it).
  static absl::StatusOr<ModelPlan> Create(const TextConfig& config);

  // Every weight, global first, then layer by layer.
  std::vector<WeightSpec> AllWeights() const;
};

// Every weight the vision tower and embedder read (spec §4.1), as
// WeightSource::MediaNames spells them ("vision_tower....",
// "embed_vision.embedding_projection.weight"), with torch shapes: clip bounds
// are 0-d and listed only with use_clipped_linears, std_bias / std_scale
// only with standardize.
std::vector<WeightSpec> VisionWeightSpecs(const VisionConfig& config, int64_t text_hidden_size);

// Positions a layer's KV cache holds for a sequence of up to max_positions
// tokens fed in chunks of up to max_chunk: none for KV-shared layers (they
// read their source's), the window a chunk can see on sliding layers
// (sliding_window + max_chunk - 1, a ring buffer), all of them on full ones.
// Both the CPU and the GPU forward size their caches by it.
int64_t KvCacheCapacity(const TextConfig& config, const LayerPlan& layer, int64_t max_positions,
                        int max_chunk);

// InvalidArgument naming `what`, the index and the id when a token id lies
// outside what the model can embed: [0, vocab_size), and also below
// vocab_size_per_layer_input on PLE models.
absl::Status CheckTokenIds(const TextConfig& config, std::span<const int> tokens,
                           std::string_view what);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_MODEL_PLAN_H_
