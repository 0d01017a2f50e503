// Next-token sampling from a row of logits: greedy, temperature, top-k and
// top-p (nucleus), with a seedable generator so runs reproduce.
//
// Order, as Hugging Face's generation warpers apply them: logits / temperature,
// keep the top_k largest, keep the smallest set whose probability reaches
// top_p (always at least one token), renormalize, draw. temperature 0 means
// greedy (argmax; the lowest id wins a tie), whatever top_k/top_p say.
//
// Two departures from HF, both for determinism: top-k keeps exactly k tokens
// (a tie at the cut goes to the lower id; HF keeps all tied tokens), so
// top_k = 1 is greedy; and a top-p prefix within 1e-6 of top_p counts as
// reaching it, so float rounding of the logits cannot add a token. The draw
// uses the generator's top 53 bits, so a seed gives the same tokens with any
// standard library.
#ifndef GQUANT_SAMPLER_H_
#define GQUANT_SAMPLER_H_

#include <cstdint>
#include <random>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant {

struct SamplerConfig {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;

  // InvalidArgument (naming the field) for temperature < 0 or not finite,
  // top_k < 0, or top_p outside (0, 1].
  absl::Status Validate() const;
  friend bool operator==(const SamplerConfig&, const SamplerConfig&) = default;
};

class Sampler {
 public:
  // InvalidArgument for a bad config.
  static absl::StatusOr<Sampler> Create(const SamplerConfig& config);

  // A token id in [0, logits.size()). InvalidArgument for empty logits, a
  // NaN, or every logit -inf. -inf logits are never drawn; when some logits
  // are +inf, only those are drawn, with equal weight.
  absl::StatusOr<int> Sample(std::span<const float> logits);

  const SamplerConfig& config() const { return config_; }

 private:
  explicit Sampler(const SamplerConfig& config) : config_(config), rng_(config.seed) {}
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace gquant

#endif  // GQUANT_SAMPLER_H_
