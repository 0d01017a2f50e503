// The Gemma 4 vision tower and embedder on one NVIDIA GPU: the CPU reference
// (gemma4/cpu_vision.h) operation for operation, with bf16 activations and a
// float32 residual as the text model (gpu_model.cuh). Its output rows go to
// GpuModel::Generate / Forward as GenerateOptions::image_rows.
//
// Usage:
//   auto source = OpenWeightSource("/models/31b-int4");
//   auto vision = GpuVisionModel::Load(**source, {});
//   auto input = PreprocessImage(image, *(*source)->config().vision, 280);
//   auto rows = (*vision)->EncodeImage(*input);  // [soft tokens, H_text], host
//
// Weights: each vision linear in the form its source stores (int8 per-row
// with the bundled recipes, int4, or bf16), through DeviceLinear; the
// position table as a DeviceLinear of [2 * table rows, hidden] whose rows are
// gathered; norms, clip bounds and the standardization in bf16 / float32.
// Activations: per image, [max_patches, ...] buffers, kept between calls
// and grown when a larger image comes.
//
// Header without device code: plain C++ files may include it.
#ifndef GQUANT_CUDA_GPU_VISION_CUH_
#define GQUANT_CUDA_GPU_VISION_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/vision_input.h"
#include "gquant/gemma4/weight_source.h"

namespace gquant::cuda {

struct GpuVisionOptions {
  // Quantize plain vision weights on load with this recipe (bundled name or
  // path); empty: keep the form the source stores.
  std::string recipe;
};

class GpuVisionModel {
 public:
  // Packs the vision tower and embedder of `source` onto the current device
  // (the source is not kept). FailedPrecondition without a vision_config;
  // Unimplemented for a hidden_activation other than gelu_pytorch_tanh;
  // InvalidArgument for a missing or mis-shaped weight or a bad recipe;
  // the loaders' and CUDA errors otherwise.
  static absl::StatusOr<std::unique_ptr<GpuVisionModel>> Load(const gemma4::WeightSource& source,
                                                              const GpuVisionOptions& options);
  ~GpuVisionModel();

  const gemma4::VisionConfig& config() const;
  int64_t weight_bytes() const;  // device bytes of the vision weights

  // [num_soft_tokens, hidden]: the pooled, scaled, standardized soft tokens
  // (CpuVisionModel::SoftTokens), as float32 on the host.
  absl::StatusOr<std::vector<float>> SoftTokens(const gemma4::VisionInput& input);
  // [num_soft_tokens, H_text]: the embedder's rows for the image's
  // placeholders (CpuVisionModel::EncodeImage), as float32 on the host.
  absl::StatusOr<std::vector<float>> EncodeImage(const gemma4::VisionInput& input);
  // EncodeImage without the copy back: queues the whole image on stream()
  // and returns; for benchmarks (time it with events on stream()).
  absl::Status EnqueueEncode(const gemma4::VisionInput& input);
  cudaStream_t stream() const;

  struct State;  // opaque: defined in gpu_vision.cu

 private:
  explicit GpuVisionModel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_GPU_VISION_CUH_
