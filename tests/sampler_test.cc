// Sampler: greedy and its tie rule, and the distributions that temperature,
// top-k and top-p draw from, checked by counting many draws against the
// renormalized probabilities computed here in float64.
#include "gquant/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;

constexpr float kInf = std::numeric_limits<float>::infinity();

Sampler MakeSampler(float temperature, int top_k, float top_p, uint64_t seed) {
  absl::StatusOr<Sampler> sampler = Sampler::Create({temperature, top_k, top_p, seed});
  REQUIRE_OK(sampler);
  return *std::move(sampler);
}

std::vector<int64_t> Counts(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<int64_t> counts(logits.size());
  for (int i = 0; i < draws; ++i) {
    absl::StatusOr<int> id = sampler.Sample(logits);
    if (!id.ok() || *id < 0 || *id >= static_cast<int>(logits.size())) {
      REQUIRE_OK(id);
      FAIL("token id " << *id << " outside [0, " << logits.size() << ")");
    }
    ++counts[*id];
  }
  return counts;
}

// softmax(logits / t) restricted to `keep` (others 0), in float64.
std::vector<double> Expected(const std::vector<float>& logits, double t,
                             const std::vector<bool>& keep) {
  double max = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (keep[i]) max = std::max(max, double{logits[i]});
  }
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (keep[i]) total += p[i] = std::exp((logits[i] - max) / t);
  }
  for (double& x : p) x /= total;
  return p;
}

// Pearson's chi-square of the counts against `p`, compared with the
// Wilson-Hilferty approximation of its 1 - 1e-6 quantile (z = 4.75), so a
// correct sampler fails about once in a million runs. Tokens expected fewer
// than 5 times share one bin (the approximation needs 5); tokens with p = 0
// must never be drawn.
void RequireMatches(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  const double n = std::accumulate(counts.begin(), counts.end(), 0.0);
  std::vector<double> observed, expected;
  double rare_observed = 0, rare_expected = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    INFO("token " << i << ": drawn " << counts[i] << ", expected " << n * p[i]);
    if (p[i] == 0) {
      REQUIRE(counts[i] == 0);
    } else if (n * p[i] < 5) {
      rare_observed += counts[i];
      rare_expected += n * p[i];
    } else {
      observed.push_back(counts[i]);
      expected.push_back(n * p[i]);
    }
  }
  if (rare_expected >= 5) {
    observed.push_back(rare_observed);
    expected.push_back(rare_expected);
  }
  double chi2 = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    chi2 += (observed[i] - expected[i]) * (observed[i] - expected[i]) / expected[i];
  }
  if (observed.size() < 2) return;  // nothing to compare the one bin with
  const double df = observed.size() - 1.0, a = 2 / (9 * df);
  const double bound = df * std::pow(1 - a + 4.75 * std::sqrt(a), 3);
  INFO("chi-square " << chi2 << " with " << df << " degrees of freedom; bound " << bound);
  REQUIRE(chi2 < bound);
}

std::vector<float> RandomLogits(std::mt19937_64& rng, int n, float stddev) {
  std::normal_distribution<float> normal(0, stddev);
  std::vector<float> logits(n);
  for (float& l : logits) l = normal(rng);
  return logits;
}

int ArgMax(const std::vector<float>& logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

TEST_CASE("Greedy picks the argmax, the lowest id on a tie", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  // top_k and top_p do not matter at temperature 0.
  Sampler greedy = MakeSampler(0, 3, 0.5f, rng());
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits = RandomLogits(rng, 1 + trial * 7, 3);
    REQUIRE(*greedy.Sample(logits) == ArgMax(logits));
  }
  REQUIRE(*greedy.Sample(std::vector<float>{1, 3, 3, 2}) == 1);
  REQUIRE(*greedy.Sample(std::vector<float>{-kInf, 5, kInf, kInf}) == 2);
  REQUIRE(*greedy.Sample(std::vector<float>{-kInf, -kInf, -7}) == 2);
}

TEST_CASE("Temperature draws from softmax(logits / T)", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  for (const float t : {0.5f, 1.0f, 2.0f}) {
    INFO("temperature " << t);
    const std::vector<float> logits = RandomLogits(rng, 8, 1);
    Sampler sampler = MakeSampler(t, 0, 1, rng());
    RequireMatches(Counts(sampler, logits, 100000),
                   Expected(logits, t, std::vector<bool>(logits.size(), true)));
  }
}

TEST_CASE("Top-k draws from the k largest, renormalized", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  const std::vector<float> logits = RandomLogits(rng, 10, 1);
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::vector<bool> keep(logits.size(), false);
  for (int i = 0; i < 3; ++i) keep[order[i]] = true;
  Sampler sampler = MakeSampler(0.7f, 3, 1, rng());
  RequireMatches(Counts(sampler, logits, 100000), Expected(logits, 0.7, keep));
}

TEST_CASE("Top-k = 1 is greedy, ties included", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  Sampler sampler = MakeSampler(1.5f, 1, 1, rng());
  for (int trial = 0; trial < 200; ++trial) {
    const std::vector<float> logits = RandomLogits(rng, 50, 0.1f);
    REQUIRE(*sampler.Sample(logits) == ArgMax(logits));
  }
  REQUIRE(*sampler.Sample(std::vector<float>{0, 3, 1, 3}) == 1);
}

TEST_CASE("Top-p keeps the smallest prefix reaching p", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  // Probabilities 0.5, 0.3, 0.15, 0.05 at shuffled ids, with a random offset
  // (softmax ignores it).
  const std::vector<double> probs = {0.5, 0.3, 0.15, 0.05};
  std::vector<int> ids = {0, 1, 2, 3};
  std::shuffle(ids.begin(), ids.end(), rng);
  const float offset = std::uniform_real_distribution<float>(-5, 5)(rng);
  std::vector<float> logits(4);
  for (int i = 0; i < 4; ++i) logits[ids[i]] = static_cast<float>(std::log(probs[i])) + offset;

  // p = 0.8: 0.5 + 0.3 reaches it, so the first two only, as 0.625 / 0.375.
  // p = 0.81: the third is needed. p = 0.3: the first alone reaches it;
  // so does a p within the 1e-6 slack of 0 (at least one token is kept).
  const struct {
    float top_p;
    int kept;
  } cases[] = {{0.8f, 2}, {0.81f, 3}, {0.3f, 1}, {1.0f, 4}, {1e-7f, 1}};
  for (const auto& c : cases) {
    INFO("top_p " << c.top_p);
    std::vector<bool> keep(4, false);
    for (int i = 0; i < c.kept; ++i) keep[ids[i]] = true;
    Sampler sampler = MakeSampler(1, 0, c.top_p, rng());
    RequireMatches(Counts(sampler, logits, 50000), Expected(logits, 1, keep));
  }
}

TEST_CASE("Top-p applies to the top-k renormalized distribution", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  // 0.4, 0.3, 0.2, 0.1; top-k 2 renormalizes to 0.571, 0.429, which reaches
  // top_p 0.5 with the first token alone. Top-p first would have kept two.
  const std::vector<float> logits = {std::log(0.3f), std::log(0.1f), std::log(0.4f),
                                     std::log(0.2f)};
  Sampler sampler = MakeSampler(1, 2, 0.5f, rng());
  RequireMatches(Counts(sampler, logits, 1000), {0, 0, 1, 0});
  // With a temperature, the kept pair draws as softmax(logits / T) over the two.
  Sampler hot = MakeSampler(4, 2, 1, rng());
  std::vector<bool> keep = {true, false, true, false};
  RequireMatches(Counts(hot, logits, 100000), Expected(logits, 4, keep));
}

TEST_CASE("Logits of -inf are never drawn; +inf logits take all the mass", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  std::vector<float> logits = RandomLogits(rng, 12, 1);
  std::vector<bool> keep(logits.size(), true);
  for (size_t i = 0; i < logits.size(); i += 2) {
    logits[i] = -kInf;
    keep[i] = false;
  }
  Sampler sampler = MakeSampler(1, 0, 1, rng());
  RequireMatches(Counts(sampler, logits, 50000), Expected(logits, 1, keep));

  Sampler nucleus = MakeSampler(2, 5, 0.9f, rng());
  REQUIRE(*nucleus.Sample(std::vector<float>{-kInf, -kInf, 0.5f, -kInf}) == 2);
  RequireMatches(Counts(nucleus, {1, kInf, -kInf, kInf}, 20000), {0, 0.5, 0, 0.5});

  REQUIRE_STATUS_IS(sampler.Sample(std::vector<float>{-kInf, -kInf}),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Extreme temperatures stay finite", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  const std::vector<float> logits = RandomLogits(rng, 20, 1);
  Sampler cold = MakeSampler(1e-30f, 0, 1, rng());
  for (int i = 0; i < 100; ++i) REQUIRE(*cold.Sample(logits) == ArgMax(logits));
  Sampler hot = MakeSampler(1e30f, 0, 1, rng());
  RequireMatches(Counts(hot, logits, 40000), std::vector<double>(20, 1.0 / 20));
}

TEST_CASE("Bad logits and configs are InvalidArgument", "[sampler]") {
  Sampler sampler = MakeSampler(1, 0, 1, 0);
  REQUIRE_STATUS_IS(sampler.Sample({}), absl::StatusCode::kInvalidArgument);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_STATUS_IS(sampler.Sample(std::vector<float>{1, nan, 2}),
                    absl::StatusCode::kInvalidArgument);
  Sampler greedy = MakeSampler(0, 0, 1, 0);
  REQUIRE_STATUS_IS(greedy.Sample(std::vector<float>{nan}), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(greedy.Sample({}), absl::StatusCode::kInvalidArgument);

  const struct {
    SamplerConfig config;
    const char* field;
  } bad[] = {
      {{-1, 0, 1, 0}, "temperature"},   {{nan, 0, 1, 0}, "temperature"},
      {{kInf, 0, 1, 0}, "temperature"}, {{1, -1, 1, 0}, "top_k"},
      {{1, 0, 0, 0}, "top_p"},          {{1, 0, -0.5f, 0}, "top_p"},
      {{1, 0, 1.01f, 0}, "top_p"},      {{1, 0, nan, 0}, "top_p"},
  };
  for (const auto& b : bad) {
    const absl::Status s = b.config.Validate();
    INFO(s.ToString());
    REQUIRE(s.code() == absl::StatusCode::kInvalidArgument);
    REQUIRE(std::string(s.message()).find(b.field) != std::string::npos);
    REQUIRE(Sampler::Create(b.config).status() == s);
  }
  REQUIRE_OK((SamplerConfig{0, 0, 1, 0}.Validate()));
  REQUIRE_OK((SamplerConfig{3, 40, 0.95f, 7}.Validate()));
}

TEST_CASE("A seed fixes the sequence; different seeds differ", "[sampler]") {
  std::mt19937_64 rng = MakeRng();
  const std::vector<float> logits = RandomLogits(rng, 64, 0.5f);
  const uint64_t seed = rng();
  const auto draw = [&](uint64_t s) {
    Sampler sampler = MakeSampler(1, 40, 0.95f, s);
    std::vector<int> ids;
    for (int i = 0; i < 200; ++i) ids.push_back(*sampler.Sample(logits));
    return ids;
  };
  REQUIRE(draw(seed) == draw(seed));
  REQUIRE(draw(seed) != draw(seed + 1));
}

}  // namespace
}  // namespace gquant
