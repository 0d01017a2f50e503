// How far a quantized model's predictions drift from the unquantized one:
// per-position KL divergence KL(P_ref || P_quant) of the next-token
// distributions (softmax of the soft-capped logits, computed in float64) and
// top-1 agreement, over prompts run through both models with teacher forcing.
#ifndef GQUANT_GEMMA4_QUALITY_H_
#define GQUANT_GEMMA4_QUALITY_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/cpu_model.h"

namespace gquant::gemma4 {

struct QualityReport {
  int64_t positions = 0;
  double mean_kl = 0;  // nats, mean over all positions
  double max_kl = 0;
  double p99_kl = 0;          // 99th percentile over positions
  double top1_agreement = 0;  // fraction of positions with the same argmax
  std::vector<double> kl;     // per position, prompts concatenated

  std::string ToText() const;  // one summary line
};

// KL(P || Q) in nats of softmax(p_logits) and softmax(q_logits), in float64
// with a max-shifted log-softmax. -inf logits are allowed (+inf when Q has
// none of P's mass). NaN when the spans are empty, differ in size, or hold
// a NaN or +inf.
double KlDivergence(std::span<const float> p_logits, std::span<const float> q_logits);

// Runs each prompt through both models (Prefill in one chunk) and compares
// the logits at every position; p99_kl interpolates linearly between order
// statistics (numpy.percentile's default). InvalidArgument when the
// vocabularies differ, there are no prompts, or a prompt is empty; the
// models' errors (e.g. a token outside the vocabulary) otherwise, naming the
// prompt.
absl::StatusOr<QualityReport> CompareModels(const CpuModel& reference, const CpuModel& candidate,
                                            const std::vector<std::vector<int>>& prompts);

// Token ids separated by spaces, tabs or commas ("2, 45 99"). InvalidArgument
// for anything but non-negative decimal ints, or no ids at all.
absl::StatusOr<std::vector<int>> ParsePromptIds(std::string_view text);

// Token-id prompts from a text file: one prompt per line as ParsePromptIds
// reads it, blank lines skipped. NotFound for a missing file; InvalidArgument
// (with the line number) for a bad line or a file without prompts.
absl::StatusOr<std::vector<std::vector<int>>> ReadPromptFile(const std::string& path);

// `count` prompts of `length` token ids drawn uniformly from [0, vocab_size)
// by std::mt19937_64(seed), the same on every platform: a stand-in when a
// model has no prompt file (random tokens probe the weights, not realistic
// text, so the figures are rougher than on real prompts).
std::vector<std::vector<int>> RandomPrompts(int vocab_size, int count, int length, uint64_t seed);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_QUALITY_H_
