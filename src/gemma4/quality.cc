#include "gquant/gemma4/quality.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/status.h"

namespace gquant::gemma4 {
namespace {

// log softmax(logits) in float64, shifted by the max so exp never overflows.
// Empty when a logit is NaN or +inf, or all are -inf.
std::vector<double> LogSoftmax(std::span<const float> logits) {
  double max = -std::numeric_limits<double>::infinity();
  for (const float l : logits) {
    if (std::isnan(l) || l == std::numeric_limits<float>::infinity()) return {};
    max = std::max(max, double{l});
  }
  if (std::isinf(max)) return {};
  double sum = 0;
  for (const float l : logits) sum += std::exp(l - max);
  const double log_sum = std::log(sum);
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = (logits[i] - max) - log_sum;
  return out;
}

// The first index of the largest value: greedy's choice (sampler.h).
int64_t ArgMax(std::span<const float> row) {
  return std::max_element(row.begin(), row.end()) - row.begin();
}

}  // namespace

double KlDivergence(std::span<const float> p_logits, std::span<const float> q_logits) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  if (p_logits.empty() || p_logits.size() != q_logits.size()) return kNaN;
  const std::vector<double> log_p = LogSoftmax(p_logits), log_q = LogSoftmax(q_logits);
  if (log_p.empty() || log_q.empty()) return kNaN;
  double kl = 0;
  for (size_t i = 0; i < log_p.size(); ++i) {
    if (std::isinf(log_p[i])) continue;  // P = 0 adds nothing, even where Q = 0
    kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
  }
  return std::max(kl, 0.0);  // rounding can dip just below 0 for P ~ Q
}

absl::StatusOr<QualityReport> CompareModels(const CpuModel& reference, const CpuModel& candidate,
                                            const std::vector<std::vector<int>>& prompts) {
  const int vocab = reference.source().config().text.vocab_size;
  if (candidate.source().config().text.vocab_size != vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("CompareModels: vocabulary of ", candidate.source().description(),
                     ": expected ", vocab, " (", reference.source().description(), "), but got ",
                     candidate.source().config().text.vocab_size));
  }
  if (prompts.empty()) return absl::InvalidArgumentError("CompareModels: no prompts");
  QualityReport report;
  int64_t agree = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    const std::vector<int>& prompt = prompts[p];
    if (prompt.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("CompareModels: prompt ", p, " is empty"));
    }
    const int64_t t = static_cast<int64_t>(prompt.size());
    const auto run = [&](const CpuModel& model) {
      KvCache cache = model.NewCache(t, static_cast<int>(t));
      return model.Prefill(cache, prompt, static_cast<int>(t));
    };
    absl::StatusOr<std::vector<float>> ref = run(reference);
    if (!ref.ok()) return Annotate(ref.status(), "CompareModels: prompt ", p, " (reference)");
    absl::StatusOr<std::vector<float>> cand = run(candidate);
    if (!cand.ok()) return Annotate(cand.status(), "CompareModels: prompt ", p, " (candidate)");
    if (ref->size() != static_cast<size_t>(t * vocab) || cand->size() != ref->size()) {
      return absl::InternalError(absl::StrCat("CompareModels: prompt ", p, ": expected ", t * vocab,
                                              " logits, but got ", ref->size(), " and ",
                                              cand->size()));
    }
    for (int64_t i = 0; i < t; ++i) {
      const std::span<const float> r(ref->data() + i * vocab, vocab);
      const std::span<const float> c(cand->data() + i * vocab, vocab);
      report.kl.push_back(KlDivergence(r, c));
      agree += ArgMax(r) == ArgMax(c);
    }
  }
  report.positions = static_cast<int64_t>(report.kl.size());
  std::vector<double> sorted = report.kl;
  // NaN (a model gave NaN logits) sorts last and shows in mean and max.
  std::sort(sorted.begin(), sorted.end(),
            [](double a, double b) { return a < b || (!std::isnan(a) && std::isnan(b)); });
  double sum = 0;
  for (const double kl : sorted) sum += kl;
  report.mean_kl = sum / report.positions;
  report.max_kl = sorted.back();
  const double rank = 0.99 * (report.positions - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  report.p99_kl = sorted[lo] + (rank - lo) * (sorted[hi] - sorted[lo]);
  report.top1_agreement = static_cast<double>(agree) / report.positions;
  return report;
}

std::string QualityReport::ToText() const {
  return absl::StrFormat(
      "quality: %d positions, KL(ref || quant) mean %.4g nats, p99 %.4g, max %.4g; "
      "top-1 agreement %.2f%%\n",
      positions, mean_kl, p99_kl, max_kl, 100 * top1_agreement);
}

absl::StatusOr<std::vector<int>> ParsePromptIds(std::string_view text) {
  std::vector<int> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = std::min(text.find_first_of(" \t,\r", pos), text.size());
    const std::string_view token = text.substr(pos, end - pos);
    pos = end + 1;
    if (token.empty()) continue;
    int id = 0;
    const auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), id);
    if (ec != std::errc() || ptr != token.data() + token.size() || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id '", std::string(token), "': expected a non-negative decimal int"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("prompt: expected token ids, but got none");
  return ids;
}

absl::StatusOr<std::vector<std::vector<int>>> ReadPromptFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("prompt file '", path, "': cannot open"));
  std::vector<std::vector<int>> prompts;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t,\r") == std::string::npos) continue;  // blank
    absl::StatusOr<std::vector<int>> ids = ParsePromptIds(line);
    if (!ids.ok()) return Annotate(ids.status(), "prompt file '", path, "' line ", number);
    prompts.push_back(*std::move(ids));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("prompt file '", path, "': read error"));
  if (prompts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt file '", path, "': expected prompts, but it has none"));
  }
  return prompts;
}

std::vector<std::vector<int>> RandomPrompts(int vocab_size, int count, int length, uint64_t seed) {
  if (vocab_size <= 0) return {};
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int>> prompts(std::max(count, 0));
  for (std::vector<int>& prompt : prompts) {
    prompt.resize(std::max(length, 0));
    // A modulo, not std::uniform_int_distribution, whose output differs
    // between standard libraries; the bias is below vocab / 2^64.
    for (int& id : prompt) id = static_cast<int>(rng() % static_cast<uint64_t>(vocab_size));
  }
  return prompts;
}

}  // namespace gquant::gemma4
