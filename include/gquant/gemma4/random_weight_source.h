// A Gemma 4 model with random weights, made in memory: for tests that run two
// forwards on identical weights (CPU reference against GPU), and for speed
// measurements at real shapes (31B, E2B, E4B, 26B-A4B) without a checkpoint.
//
// Weights are a deterministic function of (seed, weight name, matrix index,
// element), drawn when read from a counter-based generator, so nothing but
// the plan is held in memory, Load / LoadRows / LoadPacked of one weight
// agree, and two sources with the same seed and config are identical.
//
// Quantized mode (the default) stores weights as the "default" recipe does
// (StoresQuantized is true for them): embed_tokens int8 per-row symmetric
// (uniform codes -128..127), every other 2-D / 3-D weight int4 with group 32,
// asymmetric (uniform codes 0..15, zero points in [7, 8]), except the MoE
// router projection, which the recipe keeps plain; a tied model also stores
// "lm_head.weight" int4 (its own random values), as gquant-quantize writes
// the head of a tied model under the lm_head rule. Scales and zero points
// are bf16 values, so every packing is exact. A weight whose K is not a
// multiple of 32 (tiny configs only) is plain. Load returns the dequantized
// values (quantize.h: Dequantize), LoadRows only the rows asked for (no
// whole-table work for an embedding row), and LoadPacked the codes packed
// for a backend (pack.h: PackMatrix; per expert for [E, N, K]), generated and
// packed in parallel blocks of rows. With `quantized = false` every weight
// is plain float32 (values uniform, rounded to bf16 so a bf16 copy is exact).
//
// Magnitudes keep activations O(1) through the layers (the model is a random
// function, not a language model): linear weights have standard deviation
// 1/sqrt(K), so a linear roughly keeps the variance of its input; the
// embedding 1/sqrt(H) and the PLE table 1/sqrt(PLE dim), undoing the sqrt
// scale of the lookup; the router projection 1. One-element and 1-D weights
// (norms, layer_scalar, router.scale, router.per_expert_scale) are drawn from
// U(0.5, 1.5), with q_norm and k_norm further scaled by D^-1/4 so that the
// attention scores (scale 1.0, spec §2.5) have an O(1) spread rather than
// sqrt(D).
#ifndef GQUANT_GEMMA4_RANDOM_WEIGHT_SOURCE_H_
#define GQUANT_GEMMA4_RANDOM_WEIGHT_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/weight_source.h"

namespace gquant::gemma4 {

struct RandomWeightOptions {
  uint64_t seed = 1;
  bool quantized = true;
  int threads = 0;  // generation and packing threads; 0: hardware concurrency
};

// The source for `config.text`, validated by ModelPlan::Create (whose errors,
// ValidateTextConfig's included, it returns). Its config() is text-only:
// model_type "gemma4_text", architectures {"Gemma4ForCausalLM"}, eos ids
// from the text config; `config`'s vision tower (its weights generated as
// well: MediaNames, int8 per row when quantized, as the bundled recipes)
// and media token ids are kept, the audio tower dropped.
absl::StatusOr<std::unique_ptr<WeightSource>> MakeRandomWeightSource(
    const Config& config, const RandomWeightOptions& options = {});

// The text configs of the released models (spec gemma4.md §1): "31b", "e2b",
// "e4b", "26b-a4b", as a text-only Config like MakeRandomWeightSource's.
// InvalidArgument for another name.
absl::StatusOr<Config> ReleasedModelConfig(std::string_view name);

// The vision towers of the released models (spec §1.2): "31b" and "26b-a4b"
// (hidden 1152, 27 layers, 16 heads of 72, standardize), "e2b" and "e4b"
// (hidden 768, 16 layers, 12 heads of 64, clipped linears). InvalidArgument
// for another name.
absl::StatusOr<VisionConfig> ReleasedVisionConfig(std::string_view name);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_RANDOM_WEIGHT_SOURCE_H_
