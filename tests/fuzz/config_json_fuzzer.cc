// Fuzzes gemma4::ParseConfigJson with arbitrary text. On success it does what
// the model loader and the GGUF exporter do next: builds the model plan (every
// weight's shape), describes the config, writes it back as config.json (which
// must parse again to the same per-layer shapes) and checks whether GGUF can
// represent it.
#include <algorithm>
#include <string>

#include "fuzz_util.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/gemma4/model_plan.h"
#include "gquant/tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gquant;
  using namespace gquant::gemma4;
  const absl::StatusOr<Config> config = ParseConfigJson(fuzz::AsText(data, size), "fuzz-input");
  if (!config.ok()) {
    fuzz::CheckErrorNames(config.status(), "config 'fuzz-input'");
    return 0;
  }
  const TextConfig& text = config->text;
  FUZZ_CHECK(ValidateTextConfig(text).ok());
  for (int layer = 0; layer < text.num_hidden_layers; ++layer) {
    const int source = text.kv_source_layer(layer);
    FUZZ_CHECK(source >= 0 && source <= layer);
    FUZZ_CHECK(text.mlp_width(layer) > 0);
    (void)text.k_eq_v(layer);
  }
  (void)DescribeConfig(*config);

  const absl::StatusOr<ModelPlan> plan = ModelPlan::Create(text);
  if (plan.ok()) {
    for (const WeightSpec& weight : plan->AllWeights()) (void)NumElements(weight.shape);
  }

  const std::string json = ConfigJsonFromTextConfig(text);
  const absl::StatusOr<Config> reread = ParseConfigJson(json, "written");
  if (!reread.ok()) {
    std::fprintf(stderr, "written config does not read back: %s\n%s\n",
                 std::string(reread.status().message()).c_str(), json.c_str());
  }
  FUZZ_CHECK(reread.ok());
  FUZZ_CHECK(reread->text.layer_types == text.layer_types);
  FUZZ_CHECK(reread->text.layer_head_dim == text.layer_head_dim);
  FUZZ_CHECK(reread->text.layer_num_kv_heads == text.layer_num_kv_heads);
  if (CheckGgufRepresentable(text).ok()) {
    (void)GgufMetadataFromTextConfig(text, "fuzz");
    // One float per rotated pair: a valid config may ask for 2^30 of them.
    const bool small_heads = std::all_of(text.layer_head_dim.begin(), text.layer_head_dim.end(),
                                         [](int d) { return d <= 65536; });
    if (small_heads) (void)RopeFreqsFromTextConfig(text);
  }
  return 0;
}
