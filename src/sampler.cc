#include "gquant/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace gquant {
namespace {

// A top_p prefix whose mass is within this of top_p counts as reaching it, so
// float rounding of the logits does not add a token (0.5 + 0.3 vs p = 0.8).
constexpr double kTopPSlack = 1e-6;

// A uniform double in [0, 1) from the top 53 bits: unlike
// std::uniform_real_distribution, the same on every standard library.
double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

absl::Status SamplerConfig::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampler field 'temperature': expected a finite value >= 0, but got ", temperature));
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampler field 'top_k': expected >= 0, but got ", top_k));
  }
  if (!(top_p > 0 && top_p <= 1)) {  // also rejects NaN
    return absl::InvalidArgumentError(
        absl::StrCat("sampler field 'top_p': expected a value in (0, 1], but got ", top_p));
  }
  return absl::OkStatus();
}

absl::StatusOr<Sampler> Sampler::Create(const SamplerConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  return Sampler(config);
}

absl::StatusOr<int> Sampler::Sample(std::span<const float> logits) {
  if (logits.empty()) return absl::InvalidArgumentError("sampler: empty logits");
  if (logits.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampler: expected at most 2^31-1 logits, but got ", logits.size()));
  }
  const int n = static_cast<int>(logits.size());
  int best = 0;  // argmax; the lowest id wins a tie
  for (int i = 0; i < n; ++i) {
    if (std::isnan(logits[i])) {
      return absl::InvalidArgumentError(absl::StrCat("sampler: logit ", i, " is NaN"));
    }
    if (logits[i] > logits[best]) best = i;
  }
  const float max = logits[best];
  if (max == -std::numeric_limits<float>::infinity()) {
    return absl::InvalidArgumentError("sampler: every logit is -inf");
  }
  if (config_.temperature == 0) return best;

  // Candidates with their weight exp((l - max) / T); -inf weighs 0 and is
  // dropped. When some logit is +inf, those tokens share all the mass.
  struct Candidate {
    int id;
    double logit;
  };
  std::vector<Candidate> cands;
  cands.reserve(n);
  for (int i = 0; i < n; ++i) {
    if (logits[i] == -std::numeric_limits<float>::infinity()) continue;
    if (std::isinf(max) && logits[i] != max) continue;
    cands.push_back({i, std::isinf(max) ? 0.0 : double{logits[i]} - max});
  }
  // Descending by logit, ties to the lower id: top-k keeps exactly k tokens
  // (HF keeps every token tied with the k-th), so top_k = 1 is greedy.
  const auto before = [](const Candidate& a, const Candidate& b) {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  };
  if (config_.top_k > 0 && static_cast<size_t>(config_.top_k) < cands.size()) {
    std::nth_element(cands.begin(), cands.begin() + config_.top_k, cands.end(), before);
    cands.resize(config_.top_k);
  }
  std::vector<double> weight(cands.size());
  double total = 0;
  for (size_t i = 0; i < cands.size(); ++i) {
    weight[i] = std::exp(cands[i].logit / config_.temperature);
    total += weight[i];
  }
  if (config_.top_p < 1) {
    // Keep the most probable tokens until their mass reaches top_p (HF drops
    // a token when the mass of the tokens ranked above it already does).
    std::vector<size_t> order(cands.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return before(cands[a], cands[b]); });
    double mass = 0;
    size_t kept = 0;
    // At least the most probable token, even for a top_p within the slack.
    while (kept < order.size() && (kept == 0 || mass < config_.top_p - kTopPSlack)) {
      mass += weight[order[kept++]] / total;
    }
    std::vector<Candidate> nucleus;
    std::vector<double> nucleus_weight;
    total = 0;
    for (size_t i = 0; i < kept; ++i) {
      nucleus.push_back(cands[order[i]]);
      nucleus_weight.push_back(weight[order[i]]);
      total += weight[order[i]];
    }
    cands.swap(nucleus);
    weight.swap(nucleus_weight);
  }
  const double target = Uniform01(rng_) * total;
  double cumulative = 0;
  for (size_t i = 0; i < cands.size(); ++i) {
    cumulative += weight[i];
    if (target < cumulative) return cands[i].id;
  }
  return cands.back().id;  // target rounded up to total
}

}  // namespace gquant
