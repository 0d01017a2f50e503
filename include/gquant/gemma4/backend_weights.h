// A model's weights as a backend's forward wants them: each linear weight
// packed for the backend's kernels when it is (or is to be) quantized, every
// other weight in float32. The GPU forward (cuda/gpu_model.cuh) loads through
// this, one weight at a time, so host memory stays near the largest tensor.
//
// Where the quantized form comes from, by source:
//   - a gquant quantized checkpoint: its stored codes, packed as they are
//     (PackWeight: no dequantize / requantize round trip);
//   - a GGUF file: its blocks (PackGgufTensor: Q8_0 / Q6_K / Q4_K directly,
//     other quantized types through the gquant form);
//   - a plain (bf16 / f32) weight with a recipe: quantized on load with the
//     rule the recipe picks for it (min-max or HQQ, on the CPU or with the
//     caller's quantizer), then packed;
//   - a plain weight without a recipe, or one the recipe leaves plain:
//     float32.
// A quantized weight the backend has no layout for (a shape its kernels
// cannot take, a format without a packer) falls back to float32 (its
// dequantized values) and says why in `note`: the model still runs, and the
// loader reports it.
#ifndef GQUANT_GEMMA4_BACKEND_WEIGHTS_H_
#define GQUANT_GEMMA4_BACKEND_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/weight_source.h"
#include "gquant/pack.h"
#include "gquant/quantize_checkpoint.h"  // MatrixQuantizer
#include "gquant/recipe.h"

namespace gquant {
class ThreadPool;
}

namespace gquant::gemma4 {

struct BackendWeight {
  std::vector<int64_t> shape;        // torch shape ([N, K], [E, N, K], [N], ...)
  std::vector<PackedMatrix> packed;  // one per matrix when it runs quantized, else empty
  std::vector<float> values;         // float32 row-major when it runs unquantized, else empty
  std::string note;                  // why a quantized weight runs in float32; empty otherwise
  bool quantized_on_load = false;    // quantized here with the recipe's rule
};

struct BackendWeightOptions {
  const Recipe* recipe = nullptr;  // quantize plain weights on load (nullptr: keep them)
  ThreadPool* pool = nullptr;      // for the quantizers (nullptr: one thread)
  // Quantizes one matrix on load; empty: gquant::Quantize on the CPU. The GPU
  // forward passes cuda::QuantizeOnGpu (the same codes, min-max bit for bit).
  MatrixQuantizer quantizer;
  // Pick the recipe rule by this name instead of the weight's own. A tied
  // model's head is the embedding's values under the "lm_head.weight" rule,
  // as gquant-quantize stores it (int4 in "default", the embedding int8).
  std::string_view match_as;
};

// Weight `name` (unprefixed HF name, as WeightSource) of `source` for
// `backend`. NotFound for an unknown name; the source's, quantizer's and
// packer's errors otherwise (a recipe rule that fails to quantize, e.g. a NaN
// weight, is an error, not a fallback), each naming the weight.
absl::StatusOr<BackendWeight> LoadBackendWeight(const WeightSource& source, std::string_view name,
                                                PackBackend backend,
                                                const BackendWeightOptions& options = {});

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_BACKEND_WEIGHTS_H_
