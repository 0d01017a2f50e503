// Gemma 4 model configuration: a parsed, validated view of a Hugging Face
// `config.json` (transformers `Gemma4Config` / `Gemma4TextConfig`), with the
// per-layer attention shapes already resolved (spec gemma4.md §1, §2.5-2.6, §3).
//
// Two layouts are accepted:
//   * multimodal, model_type "gemma4": text fields under "text_config", plus
//     top-level media token ids and optional "vision_config"/"audio_config";
//   * text-only, model_type "gemma4_text": text fields at the top level.
//
// Required text fields (they fix tensor shapes and have no safe default):
//   vocab_size, hidden_size, intermediate_size, num_hidden_layers,
//   num_attention_heads, num_key_value_heads, head_dim.
// Every other field takes the transformers default when absent (the values
// written beside each member below). HF's save_pretrained always writes the
// Gemma 4 specific keys, so defaults only matter for hand-written configs.
//
// Per-layer attention shapes come from one of two encodings:
//   * "per_layer_config" (transformers >= 5.17 writes it): {"5": {"head_dim":
//     512, "num_key_value_heads": 4}, ...}; keys are layer indices, possibly
//     zero-padded ("05"). When present it wins and the legacy keys are ignored.
//   * legacy keys of the released checkpoints: every full_attention layer gets
//     head_dim = global_head_dim (default 512), and num_key_value_heads =
//     num_global_key_value_heads when attention_k_eq_v is true and it is not null.
// Both are folded into layer_head_dim / layer_num_kv_heads; neither is kept.
#ifndef GQUANT_GEMMA4_CONFIG_H_
#define GQUANT_GEMMA4_CONFIG_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant::gemma4 {

enum class LayerType {
  kSliding,  // "sliding_attention": local window of `sliding_window` tokens
  kFull,     // "full_attention": global causal attention
};

// "sliding_attention" / "full_attention".
std::string_view LayerTypeName(LayerType type);

// Values of `use_bidirectional_attention`.
enum class BidirectionalAttention {
  kNone,    // null: causal everywhere
  kVision,  // "vision": image tokens attend bidirectionally within their image
  kAll,     // "all": every token attends bidirectionally
};

// One entry of `rope_parameters` (spec §3). rope_type is "default" (all dims
// rotate) or "proportional" (only partial_rotary_factor of the frequency pairs
// rotate, with exponents computed over the full head_dim).
struct RopeParameters {
  std::string rope_type;
  double rope_theta;
  double partial_rotary_factor = 1.0;
};

struct TextConfig {
  // ---- required ----
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;  // dense MLP width; on MoE models the shared-expert width
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // base value; see layer_num_kv_heads
  int head_dim = 0;             // base value; see layer_head_dim

  // ---- defaulted (HF defaults) ----
  // hidden_activation and attention_bias are stored, not checked: Gemma 4 only
  // uses gelu_pytorch_tanh and no biases, so the model builder rejects others.
  std::string hidden_activation = "gelu_pytorch_tanh";
  int max_position_embeddings = 131072;
  double rms_norm_eps = 1e-6;
  std::optional<int> pad_token_id = 0;
  std::vector<int> eos_token_ids = {1};  // "eos_token_id": int, list of ints, or null (empty)
  std::optional<int> bos_token_id = 2;
  bool tie_word_embeddings = true;
  bool attention_bias = false;
  // Stored as written. HF's __post_init__ replaces it by sliding_window / 2 + 1
  // when use_bidirectional_attention is "all" (an exclusive-bound quirk); the
  // mask code must apply that, the parser does not.
  int sliding_window = 512;
  std::optional<double> final_logit_softcapping;  // null: no soft-cap; released models: 30.0
  BidirectionalAttention use_bidirectional_attention = BidirectionalAttention::kNone;
  int vocab_size_per_layer_input = 262144;
  int hidden_size_per_layer_input = 256;  // 0: no per-layer embeddings (PLE)
  bool attention_k_eq_v = false;          // full layers have no v_proj; V = raw K
  int num_kv_shared_layers = 0;           // the last N layers reuse earlier K/V
  bool enable_moe_block = false;
  bool use_double_wide_mlp = false;          // 2x intermediate_size on KV-shared layers
  std::optional<int> num_experts;            // required when enable_moe_block
  std::optional<int> top_k_experts;          // required when enable_moe_block
  std::optional<int> moe_intermediate_size;  // required when enable_moe_block

  // rope_parameters["sliding_attention"] / ["full_attention"]; absent
  // rope_parameters means these HF defaults.
  RopeParameters rope_sliding{"default", 10000.0, 1.0};
  RopeParameters rope_full{"proportional", 1000000.0, 0.25};

  // ---- resolved per layer (size num_hidden_layers) ----
  // Absent layer_types: every 6th layer is full ((i + 1) % 6 == 0). HF forces
  // the last layer to full_attention (with a warning); so does the parser, and
  // it sets last_layer_forced_full so callers can report it.
  std::vector<LayerType> layer_types;
  bool last_layer_forced_full = false;
  std::vector<int> layer_head_dim;
  std::vector<int> layer_num_kv_heads;

  // ---- derived helpers (valid after ValidateTextConfig; `layer` in
  // [0, num_hidden_layers)) ----
  // num_hidden_layers - num_kv_shared_layers; == num_hidden_layers when none.
  int first_kv_shared_layer() const { return num_hidden_layers - num_kv_shared_layers; }
  bool is_kv_shared(int layer) const { return layer >= first_kv_shared_layer(); }
  // For a KV-shared layer, the last non-shared layer of the same type (spec
  // §2.6); for any other layer, the layer itself. -1 when no such layer exists
  // (ValidateTextConfig rejects that).
  int kv_source_layer(int layer) const;
  // MLP intermediate width of `layer`: doubled on KV-shared layers when
  // use_double_wide_mlp is set (E2B).
  int mlp_width(int layer) const;
  bool has_per_layer_embeddings() const { return hidden_size_per_layer_input > 0; }
  // True when `layer` takes V from its K projection (no v_proj tensor).
  bool k_eq_v(int layer) const;
  bool is_full(int layer) const { return layer_types[layer] == LayerType::kFull; }
};

// The vision tower fields kept for the vision encoder (spec §1.2). Required:
// hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
// head_dim. The rest take the HF Gemma4VisionConfig defaults below.
struct VisionConfig {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 12;
  int head_dim = 0;
  int patch_size = 16;
  int pooling_kernel_size = 3;
  int position_embedding_size = 10240;
  bool use_clipped_linears = false;  // E2B/E4B: clamp buffers on every vision Linear
  bool standardize = false;          // 31B: std_bias / std_scale after pooling
  double rms_norm_eps = 1e-6;
  // rope_parameters.rope_theta of the 2-D ("axial"; older configs say
  // "default") RoPE; any other rope_type is rejected.
  double rope_theta = 100.0;
  // Stored, not checked here; the vision model rejects anything but
  // gelu_pytorch_tanh.
  std::string hidden_activation = "gelu_pytorch_tanh";
};

struct Config {
  std::string model_type;  // "gemma4" (multimodal) or "gemma4_text"
  std::vector<std::string> architectures;
  TextConfig text;
  std::optional<VisionConfig> vision;  // vision_config present and not null
  bool has_audio = false;              // audio_config present and not null
  // Stop tokens: the top-level eos_token_id when the multimodal config has one
  // (the -it models: [1, 106]), else text.eos_token_ids.
  std::vector<int> eos_token_ids;
  // Media tokens of a "gemma4" config (HF defaults when absent, nullopt when
  // null; not checked against vocab_size, since tiny test checkpoints keep
  // these defaults); all nullopt for "gemma4_text".
  std::optional<int> boi_token_id;     // 255999
  std::optional<int> eoi_token_id;     // 258882
  std::optional<int> image_token_id;   // 258880
  std::optional<int> video_token_id;   // 258884
  std::optional<int> boa_token_id;     // 256000
  std::optional<int> eoa_token_index;  // 258883
  std::optional<int> audio_token_id;   // 258881
  // Soft tokens per image the processor aims for (HF default 280; one of 70,
  // 140, 280, 560, 1120).
  int vision_soft_tokens_per_image = 280;

  bool is_multimodal() const { return model_type == "gemma4"; }
};

// Parses and validates a config.json text. `source` names it in messages
// ("config '<source>': ..."); nested text fields are reported under
// "text_config: ...".
// Returns InvalidArgument for invalid JSON, a non-object, a missing required
// field, a field of the wrong JSON type or out of range, an unknown
// model_type / layer type / rope_type, or any ValidateTextConfig failure;
// Unimplemented for a per_layer_config entry that overrides anything other
// than head_dim / num_key_value_heads.
absl::StatusOr<Config> ParseConfigJson(std::string_view json_text, std::string_view source);

// Reads `path`, a config.json file or a directory holding one.
// Returns NotFound if the file does not exist, plus ParseConfigJson's errors.
absl::StatusOr<Config> LoadConfig(const std::string& path);

// Checks the invariants of a resolved TextConfig (the parser runs it; call it
// on a hand-built one):
// positive sizes, per-layer vectors of length num_hidden_layers with a full
// last layer, num_attention_heads divisible by every layer's KV heads, token
// ids inside the vocabulary, known rope types with rope_theta > 0 and
// partial_rotary_factor in (0, 1], num_kv_shared_layers in
// [0, num_hidden_layers) with a same-type, same-shape source for every shared
// layer, complete MoE fields when enabled, sliding_window > 0, and a positive
// final_logit_softcapping when set. Returns InvalidArgument naming the field.
absl::Status ValidateTextConfig(const TextConfig& config);

// A few human-readable lines: variant-like summary, layer pattern (S/F),
// heads and head dims per layer type, KV sharing, PLE, MoE, window, soft-cap.
std::string DescribeConfig(const Config& config);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_CONFIG_H_
