// Next-token sampling on the GPU from one row of float32 logits, so a decode
// step (captured in a CUDA graph) never copies the vocabulary's logits to the
// host: only the chosen id (4 bytes) comes back, or nothing when the id feeds
// the next step's embedding gather directly.
//
// Semantics are those of gquant::Sampler (sampler.h), applied in its order:
// logits / temperature, keep the top_k largest (exactly k; a tie at the cut
// keeps the lower ids), keep the smallest prefix of the remaining tokens in
// descending probability whose mass reaches top_p (within 1e-6; at least one
// token), renormalize, draw. temperature 0 is greedy: the argmax, lowest id on
// a tie, bit-identical to the host. -inf logits are never drawn; if any logit
// is +inf only those are drawn, equally likely; a NaN logit, or every logit
// -inf, makes the draw return id -1 (where the host Sampler returns
// InvalidArgument; the caller reports it). The top_k set is exactly the
// host's; the top_p set is too unless the host's running sum lands within
// rounding of top_p - 1e-6 (weights are summed in 2^-(62 - bit_width(vocab -
// 1)) fixed point: below 1e-8 for vocab 262144, about 1e-12 typically).
//
// Random numbers: counter-based (Philox, curand), keyed by the seed and a
// draw counter in device memory that every Sample advances, so graph replays
// draw fresh numbers and a seed reproduces a run on any GPU. They are not the
// host Sampler's mt19937_64 numbers: the same seed gives a different (equally
// distributed) sequence.
//
// Header without device code: plain C++ files may include it.
#ifndef GQUANT_CUDA_GPU_SAMPLER_CUH_
#define GQUANT_CUDA_GPU_SAMPLER_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/sampler.h"

namespace gquant::cuda {

class GpuSampler {
 public:
  // For rows of `vocab` logits on the current device; allocates its device
  // state (about 33 KB) here, never in Sample. Checks the arguments before
  // touching the device. InvalidArgument for a bad config
  // (SamplerConfig::Validate) or vocab outside [1, 2^31 - 1]; Internal for a
  // CUDA error.
  static absl::StatusOr<GpuSampler> Create(const SamplerConfig& config, int64_t vocab);
  GpuSampler(GpuSampler&&) noexcept;
  GpuSampler& operator=(GpuSampler&&) noexcept;
  ~GpuSampler();

  // Draws one id from `logits` (device, [vocab] float32) into *token (device
  // int32), queued on `stream` with a fixed sequence of launches (capturable;
  // the sequence depends only on the config: 1 launch for greedy or
  // temperature alone, plus ceil((32 + bit_width(vocab - 1)) / 11) for top_k
  // and 1 + that many for top_p). Calls on one sampler must be stream-ordered
  // (it keeps state on the device). InvalidArgument for null or misaligned
  // pointers; FailedPrecondition on a moved-from sampler; Internal for a
  // CUDA error.
  absl::Status Sample(const float* logits, int32_t* token, cudaStream_t stream);

  const SamplerConfig& config() const;
  int64_t vocab() const;

 private:
  struct State;
  explicit GpuSampler(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_GPU_SAMPLER_CUH_
