// The CPU reference of Gemma 4's vision path (spec gemma4.md §5.2-§5.4; HF
// Gemma4VisionModel + Gemma4MultimodalEmbedder), float32 with the HF float32
// path's order of operations: patch embedder with the 2-D position table,
// encoder layers (clippable linears, q/k norms, 2-D RoPE, bidirectional
// attention that masks padding patches as keys), the 3x3 average pooler with
// the sqrt(hidden) scale, standardization (31B), and the embedder (RMSNorm
// without weight + projection to the text width).
//
// Usage:
//   auto source = OpenWeightSource("/models/gemma-4-31b-it");
//   auto vision = CpuVisionModel::Create(**source, {});
//   auto image = ReadImageFile("cat.png");
//   auto input = PreprocessImage(*image, *(*source)->config().vision, 280);
//   auto rows = (*vision)->EncodeImage(*input);  // [num_soft_tokens, H_text]
//
// Weights are read from the source at each call, one layer at a time, so the
// model holds no copy of them.
//
// Int8 embedder activations (issue 9; calibration in vision_calibration.h):
// EmbedderInput is the activation the embedder's projection sees, what an
// observer calibrates; EmbedQuantized runs the projection on that activation
// quantized with the calibrated params and on the projection weight in int8
// per row; CpuVisionOptions::embedder_activations makes EncodeImage use it.
#ifndef GQUANT_GEMMA4_CPU_VISION_H_
#define GQUANT_GEMMA4_CPU_VISION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/activation_quant.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/vision_input.h"
#include "gquant/gemma4/weight_source.h"

namespace gquant::gemma4 {

struct CpuVisionOptions {
  int threads = 0;  // 0: all hardware threads
  // When set, EncodeImage ends with EmbedQuantized(tokens, rows, *this)
  // instead of Embed: the embedder with int8 activations and weights. Create
  // checks the params (ValidateActivationQuantParams; per-channel params need
  // one value per vision hidden channel). Unset: the float32 embedder.
  std::optional<ActivationQuantParams> embedder_activations;
};

class CpuVisionModel {
 public:
  // `source` must outlive the model. FailedPrecondition when its config has
  // no vision_config; Unimplemented for a hidden_activation other than
  // gelu_pytorch_tanh; InvalidArgument listing every missing or mis-shaped
  // vision weight (clip bounds are required exactly when use_clipped_linears)
  // and for options.embedder_activations that fail the checks above.
  static absl::StatusOr<std::unique_ptr<CpuVisionModel>> Create(const WeightSource& source,
                                                                const CpuVisionOptions& options);
  ~CpuVisionModel();

  const VisionConfig& config() const;
  int text_hidden_size() const;

  // [num_hidden_layers + 1, max_patches, hidden]: the patch embeddings, then
  // each encoder layer's output, padding rows included (what HF computes for
  // them). For tests that localize a mismatch.
  absl::StatusOr<std::vector<float>> EncoderStates(const VisionInput& input) const;

  // [num_soft_tokens, hidden]: the encoder output pooled over 3x3 patch
  // windows, times sqrt(hidden), empty windows dropped, then standardized
  // when the config says so (HF Gemma4VisionModel's last_hidden_state).
  absl::StatusOr<std::vector<float>> SoftTokens(const VisionInput& input) const;

  // embed_vision on `rows` soft tokens ([rows, hidden] -> [rows, H_text]).
  absl::StatusOr<std::vector<float>> Embed(std::span<const float> soft_tokens, int64_t rows) const;

  // The embedder's first half on `rows` soft tokens: RMSNorm without weight
  // (eps = rms_norm_eps), [rows, hidden], the activation the projection
  // embed_vision.embedding_projection.weight multiplies (Embed is
  // Linear(EmbedderInput(...), projection), bit for bit). What calibration
  // observes. InvalidArgument for a size that is not rows * hidden.
  absl::StatusOr<std::vector<float>> EmbedderInput(std::span<const float> soft_tokens,
                                                   int64_t rows) const;

  // The projection as the int8 embedder uses it (kInt8RowWeightConfig: int8,
  // per row, symmetric): the checkpoint's own codes and scales when it stores
  // the weight that way (a gquant-quantize output with the bundled recipes),
  // so nothing is requantized; otherwise the float32 weight (dequantized when
  // stored in another format) quantized with QuantizeInt8Rows. A float
  // checkpoint and its quantized output give the same codes. Read from the
  // source at each call. Returns the reader's and the quantizer's errors.
  absl::StatusOr<Int8RowWeights> EmbedderProjectionInt8() const;

  // embed_vision with quantized activations: EmbedderInput, then the
  // projection (EmbedderProjectionInt8) on the activation quantized with
  // `params`:
  //   per tensor   the integer path, LinearInt8: int8 activation codes times
  //                int8 weight codes, summed exactly in int32, times
  //                scale_x * scale_w[o] (what an int8 kernel computes);
  //   per channel  FakeQuantizeActivations, then the float32 Linear with the
  //                dequantized int8 weight (codes * scale): per-channel
  //                activation scales cannot be factored out of an integer sum
  //                (activation_quant.h, LinearInt8).
  // Both are the W8A8 embedder; they differ only in where the sums run.
  // Returns InvalidArgument for a size that is not rows * hidden, per-channel
  // params whose size is not hidden, and ValidateActivationQuantParams'
  // errors; the reader's and quantizer's errors otherwise.
  absl::StatusOr<std::vector<float>> EmbedQuantized(std::span<const float> soft_tokens,
                                                    int64_t rows,
                                                    const ActivationQuantParams& params) const;

  // SoftTokens then Embed (EmbedQuantized with the options'
  // embedder_activations when set): the rows that replace the image's
  // placeholder tokens.
  absl::StatusOr<std::vector<float>> EncodeImage(const VisionInput& input) const;

 private:
  struct State;
  explicit CpuVisionModel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_CPU_VISION_H_
