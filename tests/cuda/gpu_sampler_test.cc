// GpuSampler (gpu_sampler.cuh) against gquant::Sampler's semantics on fresh
// random logits: greedy bit-identical to the host argmax (exact ties
// inserted); every draw inside the host's kept set and the frequencies of
// 20000 draws against the host's renormalized probabilities (Pearson
// chi-square); +inf, -inf and NaN; draws from a CUDA graph replayed. Token
// outputs are poisoned with 0x7F7F7F7F (neither an id nor -1) first. The
// argument checks that run before any CUDA call are tested without a GPU.
#include "gpu_sampler.cuh"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/sampler.h"

namespace gquant::cuda {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The host Sampler's kept set for finite-or-infinite, NaN-free logits, with
// each kept token's renormalized probability: sampler.cc's steps (order by
// logit then id, top_k, then the top_p prefix of the kept weights), in
// float64. Empty when every logit is -inf.
struct Kept {
  std::vector<int> ids;  // in the sampler's order
  std::vector<double> probability;
};

Kept HostKeptSet(const std::vector<float>& logits, const SamplerConfig& c) {
  const auto first_max = std::max_element(logits.begin(), logits.end());
  const float max = *first_max;
  if (max == -kInf) return {};
  if (c.temperature == 0) return {{static_cast<int>(first_max - logits.begin())}, {1.0}};
  struct Candidate {
    int id;
    double logit;
  };
  std::vector<Candidate> cands;
  for (int i = 0; i < static_cast<int>(logits.size()); ++i) {
    if (logits[i] == -kInf || (std::isinf(max) && logits[i] != max)) continue;
    cands.push_back({i, std::isinf(max) ? 0.0 : double{logits[i]} - max});
  }
  std::sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& b) {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  });
  if (c.top_k > 0 && static_cast<size_t>(c.top_k) < cands.size()) cands.resize(c.top_k);
  std::vector<double> weight(cands.size());
  double total = 0;
  for (size_t i = 0; i < cands.size(); ++i) {
    weight[i] = std::exp(cands[i].logit / c.temperature);
    total += weight[i];
  }
  if (c.top_p < 1) {
    double mass = 0;
    size_t kept = 0;
    while (kept < cands.size() && mass < c.top_p - 1e-6) mass += weight[kept++] / total;
    cands.resize(kept);
    weight.resize(kept);
  }
  Kept k;
  total = 0;
  for (double w : weight) total += w;
  for (size_t i = 0; i < cands.size(); ++i) {
    k.ids.push_back(cands[i].id);
    k.probability.push_back(weight[i] / total);
  }
  return k;
}

DeviceBuffer<int32_t> PoisonedTokens(int count) {
  auto tokens = DeviceBuffer<int32_t>::Allocate(count);
  REQUIRE_OK(tokens);
  REQUIRE_OK(tokens->FillBytes(0x7F));
  return *std::move(tokens);
}

// `count` draws from one row, one Sample per draw (each into its own slot,
// on the default stream), copied back once.
std::vector<int32_t> Draw(GpuSampler& sampler, const float* logits, int count) {
  DeviceBuffer<int32_t> tokens = PoisonedTokens(count);
  for (int i = 0; i < count; ++i) REQUIRE_OK(sampler.Sample(logits, tokens.data() + i, nullptr));
  std::vector<int32_t> got(count);
  REQUIRE_OK(tokens.CopyToHost(got));
  return got;
}

GpuSampler MakeSampler(const SamplerConfig& config, int64_t vocab) {
  auto sampler = GpuSampler::Create(config, vocab);
  REQUIRE_OK(sampler);
  return *std::move(sampler);
}

// Wilson-Hilferty approximation of the chi-square(df) quantile at z standard
// deviations; conservative in the upper tail for small df (df = 1, z = 5:
// 30.8 against the exact 25).
double ChiSquareQuantile(int df, double z) {
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

// Every draw is in `kept`, and Pearson's chi-square of the counts against
// draws * probability stays below its 1 - 3e-7 quantile (z = 5), so a correct
// sampler fails about once in 3 million runs. Tokens expected fewer than 5
// times are pooled (the chi-square approximation needs about 5 per bin).
void CheckDraws(const std::vector<int32_t>& draws, const Kept& kept) {
  REQUIRE(!kept.ids.empty());
  std::vector<int> index_of_id(*std::max_element(kept.ids.begin(), kept.ids.end()) + 1, -1);
  for (size_t i = 0; i < kept.ids.size(); ++i) index_of_id[kept.ids[i]] = static_cast<int>(i);
  std::vector<double> counts(kept.ids.size());
  for (size_t d = 0; d < draws.size(); ++d) {
    const int32_t id = draws[d];
    const bool in_kept =
        id >= 0 && id < static_cast<int32_t>(index_of_id.size()) && index_of_id[id] >= 0;
    if (!in_kept) {
      INFO("draw " << d << " is " << id << ", not in the host's kept set of " << kept.ids.size());
      REQUIRE(in_kept);
    }
    counts[index_of_id[id]] += 1;
  }
  const double n = static_cast<double>(draws.size());
  std::vector<double> observed, expected;
  double pooled_observed = 0, pooled_expected = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = n * kept.probability[i];
    if (e < 5) {
      pooled_observed += counts[i];
      pooled_expected += e;
    } else {
      observed.push_back(counts[i]);
      expected.push_back(e);
    }
  }
  if (pooled_expected >= 5 || (expected.empty() && pooled_expected > 0)) {
    observed.push_back(pooled_observed);
    expected.push_back(pooled_expected);
  } else if (pooled_expected > 0) {  // too small for its own bin
    observed.back() += pooled_observed;
    expected.back() += pooled_expected;
  }
  if (expected.size() < 2) return;  // one bin: membership was the whole check
  double chi2 = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    chi2 += (observed[i] - expected[i]) * (observed[i] - expected[i]) / expected[i];
  }
  const int df = static_cast<int>(expected.size()) - 1;
  INFO("chi-square " << chi2 << " with " << df << " degrees of freedom over " << draws.size()
                     << " draws");
  REQUIRE(chi2 < ChiSquareQuantile(df, 5.0));
}

std::vector<float> NormalLogits(int64_t vocab, float sigma, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> logits(vocab);
  for (float& l : logits) l = normal(rng);
  return logits;
}

// HostKeptSet agrees with the Sampler it mirrors: its draws stay inside.
void CheckMirror(const std::vector<float>& logits, const SamplerConfig& config, const Kept& kept) {
  auto host = Sampler::Create(config);
  REQUIRE_OK(host);
  const std::set<int> ids(kept.ids.begin(), kept.ids.end());
  for (int i = 0; i < 200; ++i) {
    auto id = host->Sample(logits);
    REQUIRE_OK(id);
    REQUIRE(ids.count(*id) == 1);
  }
}

TEST_CASE("GpuSampler::Create checks its arguments", "[gpu_sampler]") {
  // These fail before any CUDA call, so they run without a GPU.
  const SamplerConfig bad[] = {{-1.0f, 0, 1.0f, 0},
                               {kNaN, 0, 1.0f, 0},
                               {1.0f, -1, 1.0f, 0},
                               {1.0f, 0, 0.0f, 0},
                               {1.0f, 0, 1.5f, 0}};
  for (const SamplerConfig& c : bad) {
    REQUIRE_STATUS_IS(GpuSampler::Create(c, 100), absl::StatusCode::kInvalidArgument);
  }
  REQUIRE_STATUS_IS(GpuSampler::Create({}, 0), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(GpuSampler::Create({}, int64_t{1} << 31), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("GpuSampler::Sample rejects null pointers", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  GpuSampler sampler = MakeSampler({1.0f, 5, 0.9f, 1}, 100);
  auto logits = testing::Upload(std::vector<float>(100, 1.0f));
  DeviceBuffer<int32_t> token = PoisonedTokens(1);
  REQUIRE_STATUS_IS(sampler.Sample(nullptr, token.data(), nullptr),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(sampler.Sample(logits.data(), nullptr, nullptr),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE(sampler.vocab() == 100);
  REQUIRE(sampler.config().top_k == 5);
}

TEST_CASE("GpuSampler greedy is the host argmax, lowest id on a tie", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // temperature 0 ignores top_k and top_p, as on the host.
  const SamplerConfig configs[] = {{0.0f, 0, 1.0f, 0}, {0.0f, 3, 0.5f, 7}};
  for (const int64_t vocab : {1, 7, 1000, 4099, 262144}) {
    constexpr int kRows = 8;
    std::vector<float> rows;
    for (int r = 0; r < kRows; ++r) {
      std::vector<float> row = NormalLogits(vocab, 3.0f, rng);
      std::uniform_int_distribution<int64_t> position(0, vocab - 1);
      const int64_t argmax = std::max_element(row.begin(), row.end()) - row.begin();
      switch (r) {
        case 1:  // exact ties with the maximum, before and after it
        case 2:
          for (int t = 0; t < 3; ++t) row[position(rng)] = row[argmax];
          break;
        case 3:  // every logit equal
          std::fill(row.begin(), row.end(), 0.25f);
          break;
        case 4:  // -inf around (not all), and the maximum tied at the last id
          for (int t = 0; t < 5 && vocab > 1; ++t) row[position(rng)] = -kInf;
          row[vocab - 1] = *std::max_element(row.begin(), row.end());
          break;
        case 5:  // +inf twice (the lower id wins)
          row[position(rng)] = kInf;
          row[position(rng)] = kInf;
          break;
        case 6:  // -0 and +0 compare equal
          std::fill(row.begin(), row.end(), -1.0f);
          row[position(rng)] = -0.0f;
          row[position(rng)] = 0.0f;
          break;
        default:
          break;
      }
      rows.insert(rows.end(), row.begin(), row.end());
    }
    auto rows_d = testing::Upload(rows);
    for (const SamplerConfig& config : configs) {
      INFO("vocab " << vocab << " top_k " << config.top_k);
      GpuSampler sampler = MakeSampler(config, vocab);
      DeviceBuffer<int32_t> tokens = PoisonedTokens(kRows);
      for (int r = 0; r < kRows; ++r) {
        REQUIRE_OK(sampler.Sample(rows_d.data() + r * vocab, tokens.data() + r, nullptr));
      }
      std::vector<int32_t> got(kRows);
      REQUIRE_OK(tokens.CopyToHost(got));
      auto host = Sampler::Create(config);
      REQUIRE_OK(host);
      for (int r = 0; r < kRows; ++r) {
        INFO("row " << r);
        auto want = host->Sample(std::span<const float>(rows).subspan(r * vocab, vocab));
        REQUIRE_OK(want);
        REQUIRE(got[r] == *want);
      }
    }
  }
}

TEST_CASE("GpuSampler draws match the host's kept set and probabilities", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  constexpr int kDraws = 20000;
  struct Case {
    const char* name;
    int64_t vocab;
    SamplerConfig config;
    int tie_levels;  // > 0: logits from this many values only, so ties are everywhere
  };
  const Case cases[] = {
      {"temperature", 16, {1.0f, 0, 1.0f, 0}, 0},
      {"temperature 0.5", 64, {0.5f, 0, 1.0f, 0}, 0},
      {"top_k", 37, {0.7f, 5, 1.0f, 0}, 0},
      {"top_k = 1", 40, {1.0f, 1, 1.0f, 0}, 0},
      {"top_p", 64, {1.3f, 0, 0.8f, 0}, 0},
      {"top_k and top_p", 64, {1.0f, 10, 0.9f, 0}, 0},
      {"wide top_k and top_p", 50, {2.0f, 49, 0.95f, 0}, 0},
      {"top_k ties", 32, {1.0f, 11, 1.0f, 0}, 4},
      {"top_k and top_p ties", 48, {0.8f, 20, 0.7f, 0}, 3},
      {"all equal, top_k", 40, {1.0f, 7, 1.0f, 0}, 1},
      {"all equal, top_p", 40, {1.0f, 0, 0.3f, 0}, 1},
  };
  for (const Case& c : cases) {
    SamplerConfig config = c.config;
    config.seed = rng();
    INFO(c.name << ": vocab " << c.vocab << " T " << config.temperature << " top_k " << config.top_k
                << " top_p " << config.top_p << " seed " << config.seed);
    std::vector<float> logits = NormalLogits(c.vocab, 1.5f, rng);
    if (c.tie_levels > 0) {
      std::uniform_int_distribution<int> level(0, c.tie_levels - 1);
      for (float& l : logits) l = 0.5f * static_cast<float>(level(rng));
    }
    const Kept kept = HostKeptSet(logits, config);
    CheckMirror(logits, config, kept);
    auto logits_d = testing::Upload(logits);
    GpuSampler sampler = MakeSampler(config, c.vocab);
    CheckDraws(Draw(sampler, logits_d.data(), kDraws), kept);
  }
}

TEST_CASE("GpuSampler keeps the host's set on a 262144-token vocabulary", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  constexpr int64_t kVocab = 262144;
  // Gemma-like rows: a wide normal body and a few dozen tokens well above it,
  // so the nucleus is tens of tokens, and the wide cuts keep many thousands.
  std::vector<float> logits = NormalLogits(kVocab, 2.0f, rng);
  std::uniform_int_distribution<int64_t> position(0, kVocab - 1);
  std::uniform_real_distribution<float> peak(6.0f, 14.0f);
  for (int t = 0; t < 40; ++t) logits[position(rng)] = peak(rng);
  logits[position(rng)] = logits[position(rng)];  // an exact tie somewhere
  auto logits_d = testing::Upload(logits);
  const SamplerConfig configs[] = {
      {1.0f, 64, 0.95f, 0},      {0.8f, 0, 0.9f, 0}, {1.0f, 100000, 1.0f, 0},
      {1.5f, 200000, 0.999f, 0}, {1.0f, 0, 1.0f, 0}, {1.0f, 40, 1.0f, 0},
  };
  for (SamplerConfig config : configs) {
    config.seed = rng();
    INFO("T " << config.temperature << " top_k " << config.top_k << " top_p " << config.top_p
              << " seed " << config.seed);
    const Kept kept = HostKeptSet(logits, config);
    GpuSampler sampler = MakeSampler(config, kVocab);
    // Fewer draws: the kept sets are large, so this mostly checks membership
    // (the cuts land where the host's do: outside them lies real mass).
    CheckDraws(Draw(sampler, logits_d.data(), 2000), kept);
  }
}

TEST_CASE("GpuSampler handles +inf, -inf and NaN logits", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const SamplerConfig configs[] = {{0.0f, 0, 1.0f, 0}, {1.0f, 0, 1.0f, 0}, {1.0f, 2, 1.0f, 0},
                                   {1.0f, 0, 0.5f, 0}, {0.7f, 3, 0.9f, 0}, {1.0f, 1, 1.0f, 0},
                                   {1.0f, 0, 1e-7f, 0}};
  constexpr int64_t kVocab = 1000;
  std::uniform_int_distribution<int64_t> position(0, kVocab - 1);
  for (SamplerConfig config : configs) {
    config.seed = rng();
    INFO("T " << config.temperature << " top_k " << config.top_k << " top_p " << config.top_p
              << " seed " << config.seed);
    GpuSampler sampler = MakeSampler(config, kVocab);
    {
      INFO("a NaN anywhere: -1");
      for (const int64_t at : {int64_t{0}, kVocab - 1, position(rng)}) {
        std::vector<float> logits = NormalLogits(kVocab, 2.0f, rng);
        logits[at] = kNaN;
        if (at != 0) logits[0] = kInf;  // NaN outranks +inf
        auto logits_d = testing::Upload(logits);
        REQUIRE(Draw(sampler, logits_d.data(), 3) == std::vector<int32_t>(3, -1));
      }
    }
    {
      INFO("every logit -inf: -1");
      auto logits_d = testing::Upload(std::vector<float>(kVocab, -kInf));
      REQUIRE(Draw(sampler, logits_d.data(), 3) == std::vector<int32_t>(3, -1));
    }
    // top_p = 1e-7 is below the host's 1e-6 slack (the host Sampler keeps
    // nothing there); the GPU keeps the first token of the order.
    const bool host_comparable = config.top_p > 1e-6f;
    {
      INFO("-inf never drawn: all -inf but five");
      std::vector<float> logits(kVocab, -kInf);
      for (int t = 0; t < 5; ++t) logits[position(rng)] = std::normal_distribution<float>()(rng);
      auto logits_d = testing::Upload(logits);
      const std::vector<int32_t> draws = Draw(sampler, logits_d.data(), 4000);
      if (host_comparable) {
        CheckDraws(draws, HostKeptSet(logits, config));
      } else {
        const int64_t argmax = std::max_element(logits.begin(), logits.end()) - logits.begin();
        REQUIRE(draws == std::vector<int32_t>(draws.size(), static_cast<int32_t>(argmax)));
      }
    }
    {
      INFO("+inf: only those, equally likely");
      std::vector<float> logits = NormalLogits(kVocab, 2.0f, rng);
      for (int t = 0; t < 3; ++t) logits[position(rng)] = kInf;
      logits[position(rng)] = -kInf;
      auto logits_d = testing::Upload(logits);
      const std::vector<int32_t> draws = Draw(sampler, logits_d.data(), 6000);
      if (host_comparable) {
        const Kept kept = HostKeptSet(logits, config);
        CheckMirror(logits, config, kept);
        CheckDraws(draws, kept);
      } else {
        const int64_t first_inf = std::find(logits.begin(), logits.end(), kInf) - logits.begin();
        REQUIRE(draws == std::vector<int32_t>(draws.size(), static_cast<int32_t>(first_inf)));
      }
    }
  }
  {
    INFO("one token");
    GpuSampler sampler = MakeSampler({1.0f, 0, 0.5f, 3}, 1);
    for (const auto& [logit, want] :
         {std::pair{2.5f, 0}, std::pair{kInf, 0}, std::pair{-kInf, -1}, std::pair{kNaN, -1}}) {
      INFO("logit " << logit);
      auto logits_d = testing::Upload(std::vector<float>{logit});
      REQUIRE(Draw(sampler, logits_d.data(), 2) == std::vector<int32_t>(2, want));
    }
  }
}

TEST_CASE("GpuSampler draws are reproducible by seed", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const std::vector<float> logits = NormalLogits(64, 0.5f, rng);  // flat: draws vary
  auto logits_d = testing::Upload(logits);
  const uint64_t seed = rng();
  for (const SamplerConfig& base :
       {SamplerConfig{1.0f, 0, 1.0f, 0}, SamplerConfig{1.0f, 30, 0.9f, 0}}) {
    SamplerConfig config = base, other = base;
    config.seed = seed;
    other.seed = seed + 1;
    INFO("top_k " << base.top_k << " seed " << seed);
    GpuSampler a = MakeSampler(config, 64), b = MakeSampler(config, 64), c = MakeSampler(other, 64);
    const std::vector<int32_t> first = Draw(a, logits_d.data(), 50);
    REQUIRE(Draw(b, logits_d.data(), 50) == first);
    REQUIRE(Draw(c, logits_d.data(), 50) != first);
    REQUIRE(std::set<int32_t>(first.begin(), first.end()).size() > 5);
  }
}

TEST_CASE("GpuSampler replays from a CUDA graph with fresh draws", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  constexpr int64_t kVocab = 262144;
  constexpr int kReplays = 16;
  std::vector<float> logits = NormalLogits(kVocab, 2.0f, rng);
  auto logits_d = testing::Upload(logits);
  SamplerConfig config{1.0f, 64, 0.95f, rng()};
  INFO("seed " << config.seed);
  const Kept kept = HostKeptSet(logits, config);
  const std::set<int> kept_ids(kept.ids.begin(), kept.ids.end());
  GpuSampler sampler = MakeSampler(config, kVocab);
  DeviceBuffer<int32_t> token = PoisonedTokens(1);

  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  cudaGraph_t graph;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  const absl::Status sampled = sampler.Sample(logits_d.data(), token.data(), stream);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  REQUIRE_OK(sampled);
  cudaGraphExec_t exec;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  // The poison fill ran on the legacy stream, which a non-blocking stream
  // does not wait for.
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<int32_t> replayed;
  for (int r = 0; r < kReplays; ++r) {
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    std::vector<int32_t> got(1);
    REQUIRE_OK(token.CopyToHost(got));
    INFO("replay " << r << " drew " << got[0]);
    REQUIRE(kept_ids.count(got[0]) == 1);
    replayed.push_back(got[0]);
  }
  REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
  // Each replay advanced the draw counter: the draws vary (the top of 64
  // tokens of a N(0, 2) row has probability well below 1/2, so 16 equal
  // draws would be a < 1e-5 event), and are those of the same seed's first
  // 16 Sample calls on a stream.
  REQUIRE(std::set<int32_t>(replayed.begin(), replayed.end()).size() > 1);
  GpuSampler direct = MakeSampler(config, kVocab);
  REQUIRE(Draw(direct, logits_d.data(), kReplays) == replayed);
}

TEST_CASE("GpuSampler time per draw at vocab 262144 (printed)", "[cuda][gpu_sampler]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  constexpr int64_t kVocab = 262144;
  constexpr int kWarmup = 20, kTimed = 200;
  auto logits_d = testing::Upload(NormalLogits(kVocab, 2.0f, rng));
  DeviceBuffer<int32_t> token = PoisonedTokens(1);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const SamplerConfig configs[] = {{0.0f, 0, 1.0f, 1},
                                   {1.0f, 0, 1.0f, 1},
                                   {1.0f, 64, 1.0f, 1},
                                   {1.0f, 0, 0.95f, 1},
                                   {1.0f, 64, 0.95f, 1}};
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t start, stop;
  REQUIRE(cudaEventCreate(&start) == cudaSuccess);
  REQUIRE(cudaEventCreate(&stop) == cudaSuccess);
  for (const SamplerConfig& config : configs) {
    GpuSampler sampler = MakeSampler(config, kVocab);
    // One graph of kTimed draws, as a decode graph holds one per step.
    cudaGraph_t graph;
    REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    absl::Status sampled;
    for (int i = 0; i < kTimed && sampled.ok(); ++i) {
      sampled = sampler.Sample(logits_d.data(), token.data(), stream);
    }
    REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
    REQUIRE_OK(sampled);
    cudaGraphExec_t exec;
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    for (int i = 0; i < kWarmup; ++i) {
      REQUIRE_OK(sampler.Sample(logits_d.data(), token.data(), stream));
    }
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);  // warm the graph
    REQUIRE(cudaEventRecord(start, stream) == cudaSuccess);
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE(cudaEventRecord(stop, stream) == cudaSuccess);
    REQUIRE(cudaEventSynchronize(stop) == cudaSuccess);
    float ms = 0;
    REQUIRE(cudaEventElapsedTime(&ms, start, stop) == cudaSuccess);
    WARN("T " << config.temperature << " top_k " << config.top_k << " top_p " << config.top_p
              << ": " << 1000.0f * ms / kTimed << " us per Sample (graph of " << kTimed << ")");
    std::vector<int32_t> got(1);
    REQUIRE_OK(token.CopyToHost(got));
    REQUIRE(got[0] >= 0);
    REQUIRE(got[0] < kVocab);
    REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
    REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
  }
  REQUIRE(cudaEventDestroy(start) == cudaSuccess);
  REQUIRE(cudaEventDestroy(stop) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

}  // namespace
}  // namespace gquant::cuda
