// DescribeConfig: the human-readable summary printed by gquant-inspect.
#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gquant/gemma4/config.h"

namespace gquant::gemma4 {
namespace {

// "[SSSSSF]x10" when the pattern repeats, else the full S/F string.
std::string LayerPattern(const std::vector<LayerType>& types) {
  std::string letters;
  for (LayerType type : types) letters += type == LayerType::kFull ? 'F' : 'S';
  const size_t n = letters.size();
  for (size_t period = 1; period <= n / 2; ++period) {
    if (n % period != 0) continue;
    bool repeats = true;
    for (size_t i = period; i < n && repeats; ++i) repeats = letters[i] == letters[i - period];
    if (repeats) return absl::StrCat("[", letters.substr(0, period), "]x", n / period);
  }
  return letters;
}

// "head_dim 512, kv_heads 4" over the layers of one type; ranges ("256-512")
// when per-layer overrides make them differ.
std::string ShapeSummary(const TextConfig& text, LayerType type) {
  int min_dim = INT_MAX, max_dim = 0, min_kv = INT_MAX, max_kv = 0;
  for (int i = 0; i < text.num_hidden_layers; ++i) {
    if (text.layer_types[i] != type) continue;
    min_dim = std::min(min_dim, text.layer_head_dim[i]);
    max_dim = std::max(max_dim, text.layer_head_dim[i]);
    min_kv = std::min(min_kv, text.layer_num_kv_heads[i]);
    max_kv = std::max(max_kv, text.layer_num_kv_heads[i]);
  }
  auto range = [](int lo, int hi) {
    return lo == hi ? absl::StrCat(lo) : absl::StrCat(lo, "-", hi);
  };
  return absl::StrCat("head_dim ", range(min_dim, max_dim), ", kv_heads ", range(min_kv, max_kv));
}

std::string RopeSummary(const RopeParameters& rope) {
  std::string out = absl::StrFormat("rope %s theta %g", rope.rope_type, rope.rope_theta);
  if (rope.partial_rotary_factor != 1.0) {
    absl::StrAppendFormat(&out, " partial %g", rope.partial_rotary_factor);
  }
  return out;
}

}  // namespace

std::string DescribeConfig(const Config& config) {
  const TextConfig& t = config.text;
  // Name the released variant when the sizes match one (spec §1.1).
  std::string variant;
  if (t.hidden_size == 5376 && t.num_hidden_layers == 60) variant = " (31B-like)";
  if (t.hidden_size == 2816 && t.num_hidden_layers == 30) variant = " (26B-A4B-like)";
  if (t.hidden_size == 1536 && t.num_hidden_layers == 35) variant = " (E2B-like)";
  if (t.hidden_size == 2560 && t.num_hidden_layers == 42) variant = " (E4B-like)";
  std::string out = absl::StrFormat(
      "%s%s%s: %d layers, hidden %d, MLP %d, vocab %d\n", config.model_type,
      config.architectures.empty() ? ""
                                   : absl::StrCat(" ", absl::StrJoin(config.architectures, ",")),
      variant, t.num_hidden_layers, t.hidden_size, t.intermediate_size, t.vocab_size);
  const int num_full =
      static_cast<int>(std::count(t.layer_types.begin(), t.layer_types.end(), LayerType::kFull));
  absl::StrAppendFormat(&out, "  layers: %s (%d sliding, %d full%s)\n", LayerPattern(t.layer_types),
                        t.num_hidden_layers - num_full, num_full,
                        t.last_layer_forced_full ? "; last layer forced to full_attention" : "");
  std::vector<std::string> attention;
  if (num_full < t.num_hidden_layers) {
    attention.push_back(absl::StrFormat("sliding: %s, window %d, %s",
                                        ShapeSummary(t, LayerType::kSliding), t.sliding_window,
                                        RopeSummary(t.rope_sliding)));
  }
  attention.push_back(absl::StrFormat("full: %s%s, %s", ShapeSummary(t, LayerType::kFull),
                                      t.attention_k_eq_v ? ", K=V" : "", RopeSummary(t.rope_full)));
  absl::StrAppendFormat(&out, "  attention: %d query heads; %s\n", t.num_attention_heads,
                        absl::StrJoin(attention, "; "));
  const int first_shared = t.first_kv_shared_layer();
  if (t.num_kv_shared_layers == 0) {
    out += "  KV sharing: none";
  } else {
    absl::StrAppendFormat(&out, "  KV sharing: layers %d..%d reuse K/V", first_shared,
                          t.num_hidden_layers - 1);
    for (LayerType type : {LayerType::kSliding, LayerType::kFull}) {
      const auto it = std::find(t.layer_types.begin() + first_shared, t.layer_types.end(), type);
      if (it == t.layer_types.end()) continue;
      absl::StrAppendFormat(&out, "; %s from layer %d", LayerTypeName(type),
                            t.kv_source_layer(static_cast<int>(it - t.layer_types.begin())));
    }
    if (t.use_double_wide_mlp) absl::StrAppendFormat(&out, "; MLP %d", t.mlp_width(first_shared));
  }
  absl::StrAppendFormat(
      &out, "\n  PLE: %s\n  MoE: %s\n",
      t.has_per_layer_embeddings()
          ? absl::StrFormat("%d per layer, vocab %d", t.hidden_size_per_layer_input,
                            t.vocab_size_per_layer_input)
          : "none",
      t.enable_moe_block
          ? absl::StrFormat("%d experts, top %d, expert MLP %d (+ shared MLP %d)", *t.num_experts,
                            *t.top_k_experts, *t.moe_intermediate_size, t.intermediate_size)
          : "none");
  const char* bidirectional =
      t.use_bidirectional_attention == BidirectionalAttention::kVision ? "vision"
      : t.use_bidirectional_attention == BidirectionalAttention::kAll  ? "all"
                                                                       : "none";
  absl::StrAppendFormat(
      &out, "  logit soft-cap: %s; bidirectional attention: %s; eos: [%s]\n",
      t.final_logit_softcapping ? absl::StrCat(*t.final_logit_softcapping) : "none", bidirectional,
      absl::StrJoin(config.eos_token_ids, ", "));
  if (config.vision.has_value()) {
    const VisionConfig& v = *config.vision;
    absl::StrAppendFormat(&out, "  vision: %d layers, hidden %d, %d heads x %d, patch %d%s%s\n",
                          v.num_hidden_layers, v.hidden_size, v.num_attention_heads, v.head_dim,
                          v.patch_size, v.use_clipped_linears ? ", clipped linears" : "",
                          v.standardize ? ", standardize" : "");
  }
  if (config.has_audio) out += "  audio: present\n";
  return out;
}

}  // namespace gquant::gemma4
