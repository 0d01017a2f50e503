// Where a Gemma 4 model's weights come from, read one tensor at a time as
// float32: a Hugging Face checkpoint, a gquant quantized checkpoint
// (dequantized on demand), or a llama.cpp GGUF file (through
// gemma4/gguf_mapping.h, dequantized with ggml's formulas).
//
// Names are HF names without the model prefix ("layers.0.mlp.up_proj.weight");
// the source accepts either "model.language_model." or "model." in the file.
// The vision/audio towers and their embedders are listed apart (MediaNames:
// "vision_tower.encoder.layers.0.mlp.up_proj.linear.weight",
// "embed_vision.embedding_projection.weight", without "model.") and read
// through the same calls. A tied model's "lm_head.weight" is absent unless
// the file stores an untied one.
#ifndef GQUANT_GEMMA4_WEIGHT_SOURCE_H_
#define GQUANT_GEMMA4_WEIGHT_SOURCE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/model_plan.h"
#include "gquant/pack.h"

namespace gquant::gemma4 {

class WeightSource {
 public:
  virtual ~WeightSource() = default;

  // The model's config: config.json beside a checkpoint, the GGUF metadata.
  virtual const Config& config() const = 0;
  // Text-model weight names (unprefixed), in file order.
  virtual std::vector<std::string> Names() const = 0;
  // Vision/audio tower and embedder weight names, in file order; empty when
  // the file has none (the default; GGUF files keep them in a separate
  // mmproj file).
  virtual std::vector<std::string> MediaNames() const;
  // Logical (dequantized) torch shape; nullopt for an unknown name.
  virtual std::optional<std::vector<int64_t>> Shape(std::string_view name) const = 0;
  // The weight in float32, row-major. NotFound for an unknown name; the
  // reader's errors otherwise (naming file and tensor).
  virtual absl::StatusOr<std::vector<float>> Load(std::string_view name) const = 0;
  // Rows [row_begin, row_begin + rows) of a 2-D weight (an embedding lookup).
  // The default loads the whole weight; sources override it where cheaper.
  virtual absl::StatusOr<std::vector<float>> LoadRows(std::string_view name, int64_t row_begin,
                                                      int64_t rows) const;
  // Describes the source for messages ("checkpoint '/m/tiny'", "GGUF '/m/x.gguf'").
  virtual std::string description() const = 0;

  // Whether the file stores weight `name` quantized (gquant Int4/Intx, or a
  // quantized GGUF type), so LoadPacked can pack its codes without a float
  // round trip. False for plain weights and unknown names (the default).
  virtual bool StoresQuantized(std::string_view name) const;
  // The stored quantized weight packed for `backend`, one matrix per expert
  // for [E, N, K] (pack.h: PackWeight / PackGgufTensor). The default returns
  // Unimplemented; so do sources for plain weights. Otherwise the packers'
  // errors: Unimplemented (no packer for the format), InvalidArgument (a
  // shape the layout cannot take), each naming the source and weight.
  virtual absl::StatusOr<std::vector<PackedMatrix>> LoadPacked(std::string_view name,
                                                               PackBackend backend) const;
};

// Opens `path`: a GGUF file (told by its magic), or a checkpoint directory /
// .safetensors file with config.json beside it (plain HF or gquant quantized:
// the reader tells). Returns the readers' and config parsers' errors;
// Unimplemented for a GGUF with split expert halves (ffn_gate_exps /
// ffn_up_exps), which HF stores fused. A GGUF's config is
// TextConfigFromGguf's (model_type "gemma4_text").
absl::StatusOr<std::unique_ptr<WeightSource>> OpenWeightSource(const std::string& path);

// Checks that `source` holds exactly the weights `plan` needs with the right
// shapes. Returns OkStatus, or one InvalidArgument listing every missing,
// unexpected and mis-shaped weight (and a layer-count mismatch), naming the
// source. Unexpected weights HF ignores (k/v projections and norms of
// KV-shared layers) are allowed, and so is a stored "lm_head.weight" of the
// embedding's shape in a tied model (the forward then uses it: a quantized
// checkpoint may quantize the head apart from the embedding).
absl::Status CheckWeights(const ModelPlan& plan, const WeightSource& source);

// Checks that `source` holds every vision weight its config's vision tower
// needs (VisionWeightSpecs) with the right shapes; a clip bound may be stored
// as [1] as well as 0-d. Returns OkStatus, FailedPrecondition without a
// vision_config, or one InvalidArgument listing every missing and mis-shaped
// weight, naming the source.
absl::Status CheckVisionWeights(const WeightSource& source);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_WEIGHT_SOURCE_H_
