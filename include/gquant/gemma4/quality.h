// How far a quantized model's predictions drift from the unquantized one:
// per-position KL divergence KL(P_ref || P_quant) of the next-token
// distributions (softmax of the soft-capped logits, computed in float64) and
// top-1 agreement, over prompts run through both models with teacher forcing.
#ifndef GQUANT_GEMMA4_QUALITY_H_
#define GQUANT_GEMMA4_QUALITY_H_

#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/cpu_model.h"

namespace gquant::gemma4 {

struct QualityReport {
  int64_t positions = 0;
  double mean_kl = 0;         // nats, mean over all positions
  double max_kl = 0;
  double p99_kl = 0;          // 99th percentile over positions
  double top1_agreement = 0;  // fraction of positions with the same argmax
  std::vector<double> kl;     // per position, prompts concatenated

  std::string ToText() const;  // one summary line
};

// KL(P || Q) in nats of softmax(p_logits) and softmax(q_logits), in float64.
// Both spans must have the same non-zero size.
double KlDivergence(std::span<const float> p_logits, std::span<const float> q_logits);

// Runs each prompt through both models (Prefill in one chunk) and compares
// the logits at every position. InvalidArgument when the vocabularies differ
// or a prompt is empty; the models' errors otherwise.
absl::StatusOr<QualityReport> CompareModels(const CpuModel& reference, const CpuModel& candidate,
                                            const std::vector<std::vector<int>>& prompts);

// Token-id prompts from a text file: one prompt per line, ids separated by
// spaces or commas. InvalidArgument (with the line number) for anything else.
absl::StatusOr<std::vector<std::vector<int>>> ReadPromptFile(const std::string& path);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_QUALITY_H_
