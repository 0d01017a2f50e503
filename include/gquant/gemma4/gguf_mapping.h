// Gemma 4 in llama.cpp's GGUF vocabulary: tensor names, tensor shapes and the
// hyperparameter keys (spec gguf.md §8-§9, gemma4.md §4.2). Used by
// `gquant-gguf convert` (GGUF -> HF names and config.json) and `export` (the
// reverse), and by the model layer to bind a GGUF file directly.
//
// Names. GGUF "blk.N.attn_q.weight" <-> HF "<prefix>layers.N.self_attn.q_proj.weight",
// where the HF prefix is "model.language_model." (Gemma4ForConditionalGeneration)
// or "model." (Gemma4ForCausalLM); the tied embedding is "token_embd.weight" and
// an untied head is "output.weight" <-> "lm_head.weight". Norm weights carry no
// "+1" for Gemma 4 (spec gguf.md §9.3): values are copied unchanged.
//
// Shapes. GGUF dims are innermost first: torch shape = reversed dims, and the
// bytes are the same row-major buffer (spec gguf.md §8). No Gemma tensor is
// permuted (Gemma uses NeoX RoPE, so the converter does not reorder q/k rows).
#ifndef GQUANT_GEMMA4_GGUF_MAPPING_H_
#define GQUANT_GEMMA4_GGUF_MAPPING_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/gemma4/config.h"
#include "gquant/gguf.h"

namespace gquant::gemma4 {

inline constexpr std::string_view kGgufArchitecture = "gemma4";
inline constexpr std::string_view kHfPrefixMultimodal = "model.language_model.";
inline constexpr std::string_view kHfPrefixText = "model.";

// The tensor llama.cpp's converter generates for proportional RoPE on full
// layers (head_dim/2 F32 frequency factors, shared by every full layer).
inline constexpr std::string_view kGgufRopeFreqsTensor = "rope_freqs.weight";

// GGUF tensor name -> HF tensor name under `hf_prefix`. Returns NotFound for
// tensors llama.cpp generates and HF does not store ("rope_freqs.weight",
// "blk.N.rope_freqs.weight"), Unimplemented for the split expert halves
// "blk.N.ffn_gate_exps/ffn_up_exps.weight" (HF stores them fused as
// experts.gate_up_proj), InvalidArgument for a name that is not a Gemma 4 text
// tensor (the message names it).
absl::StatusOr<std::string> HfNameFromGguf(std::string_view gguf_name,
                                           std::string_view hf_prefix = kHfPrefixText);

// HF tensor name (either prefix, or none; "lm_head.weight" has none) -> GGUF
// tensor name. Returns NotFound for HF tensors with no GGUF counterpart (vision
// and audio towers, which llama.cpp keeps in a separate mmproj file),
// InvalidArgument for a name that is not a Gemma 4 tensor.
absl::StatusOr<std::string> GgufNameFromHf(std::string_view hf_name);

// The text config described by a GGUF file's metadata, resolved and validated
// like ParseConfigJson's (per-layer head dims, KV heads, layer types, MLP
// widths). Required keys: general.architecture, gemma4.{context_length,
// embedding_length, block_count, feed_forward_length, attention.head_count,
// attention.key_length, attention.key_length_swa,
// attention.layer_norm_rms_epsilon, attention.sliding_window,
// attention.sliding_window_pattern, embedding_length_per_layer_input}; the rest
// take llama.cpp's defaults. GGUF has no key for some fields, so they come from
// the tensor list: attention_k_eq_v (no attn_v on any non-shared full layer),
// tie_word_embeddings (no output.weight), vocab_size (gemma4.vocab_size, else
// tokenizer.ggml.tokens, else token_embd.weight), the PLE vocabulary
// (per_layer_token_embd.weight, else vocab_size) and the full layers'
// partial_rotary_factor (rope_freqs.weight, else HF's 0.25). A file without
// tensors therefore reads as k_eq_v false and tied. Not carried at all:
// use_bidirectional_attention (kNone), hidden_activation and attention_bias
// (their Gemma 4 values), eos ids past the first.
// Returns InvalidArgument when general.architecture is not "gemma4", a
// required key is missing or has the wrong type, a per-layer array has the
// wrong length, keys and tensors disagree, or the values fail
// ValidateTextConfig; messages name the file and key (or tensor).
absl::StatusOr<TextConfig> TextConfigFromGguf(const GgufFile& file);

// config.json text for `config` as a text-only model (model_type "gemma4_text",
// architectures ["Gemma4ForCausalLM"]) that ParseConfigJson reads back into an
// equal TextConfig (last_layer_forced_full reads back false: the resolved
// layer types are written) and transformers' Gemma4TextConfig accepts. Layer
// shapes go in per_layer_config (transformers >= 5.17), plus the legacy
// global_head_dim / num_global_key_value_heads keys when those describe the
// same shapes (older transformers).
std::string ConfigJsonFromTextConfig(const TextConfig& config);

// OK when GGUF can describe `config` to llama.cpp exactly: one head dim per
// layer type, "default" RoPE on sliding layers and "proportional" on full
// layers with partial factors that give whole rotated dims, a PLE vocabulary
// equal to vocab_size, gelu_pytorch_tanh and no attention bias. Otherwise
// InvalidArgument naming the field. Fields GGUF drops without changing what
// llama.cpp computes (see TextConfigFromGguf) are not checked.
absl::Status CheckGgufRepresentable(const TextConfig& config);

// The "general.*", "gemma4.*" and tokenizer.ggml.{bos,eos,padding}_token_id
// metadata llama.cpp needs to load `config`, in the order llama.cpp's converter
// writes them. The inverse of TextConfigFromGguf for configs that pass
// CheckGgufRepresentable (best effort for the others).
std::vector<std::pair<std::string, GgufValue>> GgufMetadataFromTextConfig(
    const TextConfig& config, std::string_view model_name);

// Values of kGgufRopeFreqsTensor for `config` (GGUF dims [head_dim_full / 2]):
// 1.0 for the rotated frequency pairs, 1e30 for the rest, as llama.cpp's
// converter writes them (ggml's NeoX RoPE then leaves those pairs unrotated).
std::vector<float> RopeFreqsFromTextConfig(const TextConfig& config);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_GGUF_MAPPING_H_
