// Quality report: KL divergence against a direct float64 formula and by
// hand, prompt files, and CompareModels on the bundled tiny fixtures (a model
// against itself, and float32 against its int4 and bf16 versions).
#include "gquant/gemma4/quality.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gquant/quantize_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using ::gquant::testing::MakeRng;
using ::gquant::testing::TempDir;
using ::gquant::testing::TestDataDir;

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> RandomLogits(std::mt19937_64& rng, int n, float stddev) {
  std::normal_distribution<float> normal(0, stddev);
  std::vector<float> logits(n);
  for (float& l : logits) l = normal(rng);
  return logits;
}

// sum_i p_i log(p_i / q_i) with p = exp(l) / sum exp(l) and q likewise from
// q_logits - q_offset (subtracted in float64, exactly), with no max shift:
// fine for the moderate logits it is given.
double DirectKl(const std::vector<float>& p_logits, const std::vector<float>& q_logits,
                double q_offset = 0) {
  double zp = 0, zq = 0;
  for (size_t i = 0; i < p_logits.size(); ++i) {
    zp += std::exp(double{p_logits[i]});
    zq += std::exp(double{q_logits[i]} - q_offset);
  }
  double kl = 0;
  for (size_t i = 0; i < p_logits.size(); ++i) {
    const double p = std::exp(double{p_logits[i]}) / zp;
    const double q = std::exp(double{q_logits[i]} - q_offset) / zq;
    kl += p * std::log(p / q);
  }
  return kl;
}

TEST_CASE("KlDivergence matches the direct float64 formula", "[quality]") {
  std::mt19937_64 rng = MakeRng();
  for (const int n : {2, 7, 512, 4096}) {
    for (const float stddev : {0.1f, 1.0f, 4.0f}) {
      const std::vector<float> p = RandomLogits(rng, n, stddev);
      std::vector<float> q = RandomLogits(rng, n, stddev * 0.1f);
      for (size_t i = 0; i < q.size(); ++i) q[i] += p[i];  // a perturbed P
      const double expected = DirectKl(p, q);
      INFO("n " << n << ", stddev " << stddev);
      REQUIRE(KlDivergence(p, q) == Approx(expected).epsilon(1e-9).margin(1e-15));
      REQUIRE(KlDivergence(p, q) >= 0);
      REQUIRE(KlDivergence(p, p) == 0);
      // Logits around 1000 overflow a naive exp; the max shift copes.
      std::vector<float> shifted = q;
      for (float& l : shifted) l += 1000;
      REQUIRE(KlDivergence(p, shifted) ==
              Approx(DirectKl(p, shifted, 1000)).epsilon(1e-9).margin(1e-15));
    }
  }
}

TEST_CASE("KlDivergence by hand, and at the edges", "[quality]") {
  // P = (1/2, 1/2), Q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
  const float ln3 = std::log(3.0f);
  REQUIRE(KlDivergence(std::vector<float>{0, 0}, std::vector<float>{0, ln3}) ==
          Approx(0.5 * std::log(4.0 / 3.0)).epsilon(1e-6));
  // Logits far apart: stable, KL ~ 1000 nats (P puts e^-1000 where Q has 1).
  REQUIRE(KlDivergence(std::vector<float>{1000, 0}, std::vector<float>{0, 1000}) ==
          Approx(1000).epsilon(1e-12));
  // -inf in P drops a term; -inf in Q where P has mass is infinitely surprising.
  REQUIRE(KlDivergence(std::vector<float>{0, -kInf}, std::vector<float>{0, 5}) ==
          Approx(std::log1p(std::exp(5.0))).epsilon(1e-9));
  REQUIRE(KlDivergence(std::vector<float>{0, 1}, std::vector<float>{0, -kInf}) == kInf);
  REQUIRE(KlDivergence(std::vector<float>{0, -kInf}, std::vector<float>{0, -kInf}) == 0);
  // Bad inputs give NaN, not a crash.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  REQUIRE(std::isnan(KlDivergence({}, {})));
  REQUIRE(std::isnan(KlDivergence(std::vector<float>{0, 1}, std::vector<float>{0})));
  REQUIRE(std::isnan(KlDivergence(std::vector<float>{0, nan}, std::vector<float>{0, 1})));
  REQUIRE(std::isnan(KlDivergence(std::vector<float>{0, 1}, std::vector<float>{kInf, 1})));
  REQUIRE(std::isnan(KlDivergence(std::vector<float>{-kInf}, std::vector<float>{0})));
}

TEST_CASE("Prompt ids from text and files", "[quality]") {
  REQUIRE(*ParsePromptIds("2 45 99") == std::vector<int>{2, 45, 99});
  REQUIRE(*ParsePromptIds(" 2,45,\t99 ,, 0\r") == std::vector<int>{2, 45, 99, 0});
  for (const char* bad : {"", " , ", "1 x 2", "1 -3", "3.5", "+4", "99999999999", "0x10"}) {
    INFO("'" << bad << "'");
    REQUIRE_STATUS_IS(ParsePromptIds(bad), absl::StatusCode::kInvalidArgument);
  }

  TempDir dir;
  const std::string good = dir.File("good.txt");
  std::ofstream(good) << "2 45 99\n\n  \r\n7,8, 9\r\n1\n";
  absl::StatusOr<std::vector<std::vector<int>>> prompts = ReadPromptFile(good);
  REQUIRE_OK(prompts);
  REQUIRE(*prompts == std::vector<std::vector<int>>{{2, 45, 99}, {7, 8, 9}, {1}});

  const std::string bad = dir.File("bad.txt");
  std::ofstream(bad) << "1 2\n\n3 four 5\n";
  const absl::Status s = ReadPromptFile(bad).status();
  INFO(s.ToString());
  REQUIRE(s.code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(std::string(s.message()).find("line 3") != std::string::npos);
  REQUIRE(std::string(s.message()).find("four") != std::string::npos);

  const std::string blank = dir.File("blank.txt");
  std::ofstream(blank) << "\n \n";
  REQUIRE_STATUS_IS(ReadPromptFile(blank), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(ReadPromptFile(dir.File("missing.txt")), absl::StatusCode::kNotFound);
}

TEST_CASE("RandomPrompts is seeded and inside the vocabulary", "[quality]") {
  const auto prompts = RandomPrompts(512, 3, 64, 7);
  REQUIRE(prompts.size() == 3);
  for (const auto& prompt : prompts) {
    REQUIRE(prompt.size() == 64);
    for (const int id : prompt) REQUIRE((id >= 0 && id < 512));
  }
  REQUIRE(prompts[0] != prompts[1]);
  REQUIRE(RandomPrompts(512, 3, 64, 7) == prompts);
  REQUIRE(RandomPrompts(512, 3, 64, 8) != prompts);
  REQUIRE(RandomPrompts(0, 3, 64, 7).empty());
}

// --- CompareModels on the fixtures (needs the CPU model) ---

std::vector<int> GoldenPrompt(const std::string& fixture) {
  auto golden = SafetensorsFile::Open(TestDataDir() + "/" + fixture + "/golden.safetensors");
  REQUIRE_OK(golden);
  auto ids = golden->Get("input_ids");
  REQUIRE_OK(ids);
  REQUIRE(ids->dtype() == DType::kI64);
  std::vector<int> prompt(ids->num_elements());
  for (size_t i = 0; i < prompt.size(); ++i) {
    int64_t id;
    std::memcpy(&id, ids->bytes().data() + 8 * i, 8);
    prompt[i] = static_cast<int>(id);
  }
  return prompt;
}

std::unique_ptr<CpuModel> LoadModel(const std::string& path) {
  auto model = CpuModel::Load(path, {.threads = 2});
  REQUIRE_OK(model);
  return *std::move(model);
}

// The report's summary figures follow from its per-position KL.
void RequireConsistent(const QualityReport& report, int64_t positions) {
  REQUIRE(report.positions == positions);
  REQUIRE(report.kl.size() == static_cast<size_t>(positions));
  std::vector<double> sorted = report.kl;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0;
  for (const double kl : sorted) {
    REQUIRE(std::isfinite(kl));
    REQUIRE(kl >= 0);
    sum += kl;
  }
  REQUIRE(report.mean_kl == Approx(sum / positions).epsilon(1e-12));
  REQUIRE(report.max_kl == sorted.back());
  const double rank = 0.99 * (positions - 1);
  const size_t lo = static_cast<size_t>(rank);
  const double p99 =
      sorted[lo] + (rank - lo) * (sorted[std::min(lo + 1, sorted.size() - 1)] - sorted[lo]);
  REQUIRE(report.p99_kl == Approx(p99).epsilon(1e-12));
  REQUIRE(report.p99_kl <= report.max_kl);
  REQUIRE(report.top1_agreement >= 0);
  REQUIRE(report.top1_agreement <= 1);
}

TEST_CASE("CompareModels: a model against itself drifts by nothing", "[quality]") {
  const auto model = LoadModel(TestDataDir() + "/tiny-31b/f32");
  const std::vector<int> golden = GoldenPrompt("tiny-31b");
  const std::vector<std::vector<int>> prompts = {golden, RandomPrompts(512, 1, 10, 1)[0]};
  absl::StatusOr<QualityReport> report = CompareModels(*model, *model, prompts);
  REQUIRE_OK(report);
  RequireConsistent(*report, static_cast<int64_t>(golden.size()) + 10);
  REQUIRE(report->max_kl == 0);
  REQUIRE(report->top1_agreement == 1);
  INFO(report->ToText());
  REQUIRE(report->ToText().find("34 positions") != std::string::npos);

  REQUIRE_STATUS_IS(CompareModels(*model, *model, {}), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(CompareModels(*model, *model, {golden, {}}),
                    absl::StatusCode::kInvalidArgument);
  const absl::Status s = CompareModels(*model, *model, {golden, {1, 512}}).status();
  INFO(s.ToString());
  REQUIRE(s.code() == absl::StatusCode::kInvalidArgument);  // token outside the vocabulary
  REQUIRE(std::string(s.message()).find("prompt 1") != std::string::npos);
}

TEST_CASE("CompareModels: int4 drifts more than bf16 from float32", "[quality]") {
  auto recipe = Recipe::Load("default");
  REQUIRE_OK(recipe);
  for (const char* fixture : {"tiny-31b", "tiny-e2b", "tiny-moe"}) {
    INFO(fixture);
    const std::string base = TestDataDir() + "/" + fixture;
    TempDir dir;
    QuantizeJobOptions options;
    options.input = base + "/f32";
    options.output_dir = dir.path().string();
    options.threads = 2;
    REQUIRE_OK(QuantizeCheckpoint(*recipe, options));

    const auto f32 = LoadModel(base + "/f32");
    const auto bf16 = LoadModel(base + "/bf16");
    const auto int4 = LoadModel(dir.path().string());
    const std::vector<std::vector<int>> prompts = {GoldenPrompt(fixture)};
    const int64_t positions = static_cast<int64_t>(prompts[0].size());
    absl::StatusOr<QualityReport> q4 = CompareModels(*f32, *int4, prompts);
    REQUIRE_OK(q4);
    absl::StatusOr<QualityReport> b16 = CompareModels(*f32, *bf16, prompts);
    REQUIRE_OK(b16);
    UNSCOPED_INFO("int4: " << q4->ToText() << "bf16: " << b16->ToText());
    RequireConsistent(*q4, positions);
    RequireConsistent(*b16, positions);
    // Measured on the golden prompts: int4 KL 0.14-0.40 nats with top-1
    // 29-67% (tiny random models have flat, fragile predictions: max
    // probability ~4% over 512 tokens), bf16 KL 0.001-0.008 with top-1 92%.
    REQUIRE(q4->mean_kl > 0);
    REQUIRE(b16->mean_kl > 0);
    REQUIRE(10 * b16->mean_kl < q4->mean_kl);
    REQUIRE(b16->top1_agreement >= 0.75);
    REQUIRE(b16->top1_agreement >= q4->top1_agreement);
  }
}

}  // namespace
}  // namespace gquant::gemma4
