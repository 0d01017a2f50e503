// The Gemma 4 text decoder on one NVIDIA GPU: the CPU reference forward
// (gemma4/cpu_model.h) operation for operation, with the weights packed for
// the CUDA kernels and activations in bf16 (the residual stream in float32).
//
// Usage:
//   auto model = GpuModel::Load("/models/31b-int4", {});
//   auto seq = model->NewSequence(/*max_positions=*/8192);
//   auto result = model->Generate(*seq, prompt_ids, {.max_new_tokens = 128});
//   // or, as CpuModel: auto logits = model->Forward(*seq, prompt_ids);
//
// Weights (backend_weights.h): quantized ones stay quantized and run through
// the int4 / int8 kernels (a gquant checkpoint's codes or a GGUF's blocks
// packed as they are, or a plain checkpoint quantized on load with a recipe);
// the rest run in bf16. They are loaded one at a time, so host memory stays
// near the largest tensor.
//
// Execution: prefill in chunks of up to max_chunk tokens through the large-M
// paths (WeightOnlyGemm / cuBLAS, flash prefill attention); decode one token
// at a time through the GEMV kernels and split-K decode attention, the whole
// step (embedding, layers, head, soft-cap, sampling, position advance)
// captured once per sequence into a CUDA graph and replayed; the sampled id
// stays on the GPU and feeds the next step, and only its 4 bytes come back
// so the host can stop at a stop id.
//
// Numerics: bf16 activations (one rounding per stored tensor), float32
// accumulation, norms, softmax and residual. Against the CPU reference on
// the same weights the logits agree to ~1e-2 relative (tests state the
// bound).
//
// Mixture of experts (26B-A4B, moe_kernels.cuh, device_experts.cuh): the
// router runs in float32 on the GPU; decode multiplies the chosen experts
// with one grouped GEMV per matrix that reads the ids on the device (int4
// and int8 experts; a model with bf16 experts routes on the host and decodes
// without a graph); prefill sorts the chunk's (token, expert) pairs on the
// host and runs the used experts as grouped GEMMs (or, with few rows each,
// one GEMV each).
//
// Header without device code: plain C++ files may include it.
#ifndef GQUANT_CUDA_GPU_MODEL_CUH_
#define GQUANT_CUDA_GPU_MODEL_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/model_plan.h"
#include "gquant/gemma4/weight_source.h"
#include "gquant/progress.h"
#include "gquant/sampler.h"

namespace gquant::cuda {

struct GpuModelOptions {
  // Quantize plain weights on load with this recipe (a bundled name or a
  // path; recipe.h). Empty: every weight keeps the form its source stores.
  std::string recipe;
  int threads = 0;            // host threads for quantizing on load (0: all)
  ProgressCallback progress;  // called after each weight reaches the device
};

// What loading did, for the runner's summary and the benches.
struct GpuLoadReport {
  int64_t weight_bytes = 0;  // device bytes of all weights
  // Of those, tables only gathered from (the PLE table; an untied model's
  // input embedding): a decode step reads one row of them, not all.
  int64_t lookup_only_bytes = 0;
  // Of weight_bytes, the MoE experts': a decode step reads top_k /
  // num_experts of them (the chosen experts' matrices).
  int64_t expert_bytes = 0;
  int int4_matrices = 0, int8_matrices = 0, bf16_matrices = 0;
  int quantized_on_load = 0;       // of those, quantized with the recipe
  std::vector<std::string> notes;  // fallbacks to bf16, with the reason
  double seconds = 0;
};

// One sequence on the GPU: its KV cache (ring buffers of sliding_window +
// max_chunk - 1 slots on sliding layers, max_positions on full layers, none
// on KV-shared layers), activation buffers for max_chunk tokens, a stream,
// the sampler state and the captured decode graph. Move-only; one host
// thread at a time.
class GpuSequence {
 public:
  GpuSequence(GpuSequence&&) noexcept;
  GpuSequence& operator=(GpuSequence&&) noexcept;
  ~GpuSequence();

  int64_t length() const;  // positions processed so far
  int64_t max_positions() const;
  int max_chunk() const;
  int64_t cache_bytes() const;  // device bytes of the KV cache
  void Clear();                 // back to length 0 (the cache is overwritten as it refills)

  // Moves the position to `length` without computing K/V (the skipped slots
  // keep what they hold: zeros in a new sequence): for benchmarks of decode
  // at long contexts, whose cost does not depend on the cached values.
  // InvalidArgument outside [0, max_positions).
  absl::Status SkipTo(int64_t length);

  cudaStream_t stream() const;

  struct State;  // opaque: defined in gpu_model.cu

 private:
  friend class GpuModel;
  explicit GpuSequence(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

struct GenerateOptions {
  int max_new_tokens = 32;
  SamplerConfig sampler;      // temperature 0: greedy
  std::vector<int> stop_ids;  // generation stops after producing one of these
  int chunk = 0;              // prefill chunk, <= the sequence's max_chunk (0: max_chunk)
  // false: launch each decode step's kernels directly (always so when the
  // load report notes MoE experts routed on the host).
  bool use_graph = true;
  // One row of H floats per image placeholder of the prompt, in order (see
  // CpuModel: the rows replace the placeholders' embeddings; the prompt is
  // chunked so that a bidirectional image stays in one chunk).
  std::span<const float> image_rows;
};

struct GenerateResult {
  std::vector<int> tokens;  // generated ids (the stop id included when hit)
  bool stopped_at_stop_id = false;
  double prefill_seconds = 0;  // prompt forward up to the first sampled token
  double decode_seconds = 0;   // the decode steps after it
  int decode_steps = 0;        // tokens.size() - 1
};

class GpuModel {
 public:
  // Opens the weights (OpenWeightSource) and packs them onto the current
  // device. Errors: the source's and CheckWeights's; Unimplemented for head
  // dims other than 256 and 512; InvalidArgument for a bad recipe;
  // ResourceExhausted when the weights do not fit in device memory; Internal for a CUDA error.
  static absl::StatusOr<std::unique_ptr<GpuModel>> Load(const std::string& path,
                                                        const GpuModelOptions& options);
  static absl::StatusOr<std::unique_ptr<GpuModel>> FromSource(
      std::unique_ptr<gemma4::WeightSource> source, const GpuModelOptions& options);
  ~GpuModel();

  const gemma4::ModelPlan& plan() const;
  const gemma4::Config& config() const;
  const GpuLoadReport& load_report() const;
  // The weights' source, kept open (e.g. for GpuVisionModel::Load).
  const gemma4::WeightSource& source() const;

  // A sequence of up to max_positions tokens, fed at most max_chunk tokens
  // per Forward call. InvalidArgument for values < 1; ResourceExhausted when
  // the cache does not fit.
  absl::StatusOr<GpuSequence> NewSequence(int64_t max_positions, int max_chunk = 512) const;

  // Same contract as CpuModel::Forward, image rows included: runs `tokens`
  // at positions seq.length() .., appends their K/V, returns their logits
  // [T, vocab] (after the soft-cap) on the host. The same InvalidArgument
  // cases, checked before any work.
  absl::StatusOr<std::vector<float>> Forward(GpuSequence& seq, std::span<const int> tokens,
                                             std::span<const float> image_rows = {}) const;

  // Prefills `prompt` (in chunks) and generates up to max_new_tokens tokens,
  // sampling on the GPU. InvalidArgument for an empty prompt, a bad option,
  // image rows that do not match the prompt's placeholders, an image longer
  // than the chunk, or a prompt plus max_new_tokens beyond the sequence's
  // max_positions, all before any work; a
  // NaN in the logits is Internal, naming the step.
  absl::StatusOr<GenerateResult> Generate(GpuSequence& seq, std::span<const int> prompt,
                                          const GenerateOptions& options) const;

  struct State;  // opaque: defined in gpu_model.cu

 private:
  explicit GpuModel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Device memory in use on the current device, as cudaMemGetInfo reports it
// (total - free): what the runner prints as peak after a run.
absl::StatusOr<int64_t> DeviceMemoryInUse();

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_GPU_MODEL_CUH_
