// The mixture-of-experts kernels (moe_kernels.cuh) against float64 host
// computations and the CPU reference ops (cpu::RouteTopK, and cpu_model's
// router input via cpu::RmsNorm and cpu::Linear), on fresh random data with
// outputs poisoned first: the 26B-A4B shapes (hidden 2816, 128 experts, top
// 8) and small odd ones.
//
// Error bounds (worst case, float32 unit roundoff u = 2^-24 ~ 6e-8):
//  - RouterLogits: per logit, dot = Σ (r * scale) * proj and Σ r², each
//    summed by a thread over its <= 4 ceil(hidden / 1024) elements (<= 24
//    here), a 5-level shuffle tree and 8 warp sums in order: depth D <= 37,
//    so |dot error| <= (D + 1) u Σ|terms| and inv_rms is within D u / 2 +
//    2 u (divide, eps) + 2 ulp (rsqrtf); logit = dot * (inv_rms * root)
//    adds 2 u: ~(1.5 D + 7) u <= 4e-6 Σ|terms|, Σ|terms| = Σ_i |v_i
//    proj_i|, v the exact routed input. Hence |got - want| <= 1e-5 Σ|terms|
//    (2.5x slack). The CPU's float32 logits (Eigen: up to ~350 sequential
//    terms per SIMD lane) are within ~3e-5 Σ|terms| in the worst case, so
//    against them: 4e-5 Σ|terms|. The decode (< 16 tokens) and tiled
//    variants add in the same order, so a row's logits are the same floats
//    whatever the token count: checked bit for bit.
//  - RouteTopK: the same float32 softmax as the CPU up to expf (2 ulp) and
//    the order of the softmax sum, which scales every probability alike and
//    cancels in p / Σ_top p. So ids are identical whenever no two
//    probabilities at the top-k boundary are within ~1e-6 relative (random
//    rows closer than 1e-5 are redrawn), and weights are within a few ulp:
//    |got - cpu| <= 1e-5 |cpu|.
//  - CombineExperts: the expert sum Σ_j w_j y_j rounds <= top_k <= 10
//    times (<= 10 u Σ_j |w_j y_j|), the norms' sums of squares <= ~60
//    times (hidden 12288: 24 + 5 + 16; inv_rms within
//    ~3e-6), plus a few products and one sum, then one bf16 rounding (2^-8).
//    With the two normalized terms a (dense) and b (experts), which may
//    cancel, and E = |inv_rms(e) expert_norm| Σ_j |w_j y_j| >= |b|:
//    |got - want| <= (2^-8 + 1e-5) |want| + 2e-5 (|a| + E).
//  - GatherRows / ScatterRows copy bits: exact.
#include "moe_kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"

namespace gquant::cuda {
namespace {

using testing::AsBf16;
using testing::RandomBf16;
using testing::RequireClose;

constexpr float kEps = 1e-6f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <typename T>
cuda::DeviceBuffer<T> Poisoned(size_t n) {
  auto buffer = cuda::DeviceBuffer<T>::Allocate(n);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0xFF));
  return *std::move(buffer);
}

template <typename T>
std::vector<T> Download(const cuda::DeviceBuffer<T>& b) {
  std::vector<T> host(b.size());
  REQUIRE_OK(b.CopyToHost(host));
  return host;
}

// REQUIREs got == want, reporting the first difference (not both vectors).
template <typename T>
void RequireEqual(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  REQUIRE(got.size() == want.size());
  const auto first = std::mismatch(got.begin(), got.end(), want.begin()).first;
  INFO(what << ": first difference at element " << (first - got.begin()));
  REQUIRE(first == got.end());
}

std::vector<float> Normal(size_t n, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<float> Uniform(size_t n, float lo, float hi, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ---- RouterLogits ----

struct RouterShape {
  int64_t tokens;
  int hidden;
  int experts;
};

TEST_CASE("RouterLogits matches float64 and the CPU router", "[cuda][moe]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  std::uniform_real_distribution<float> exponent(-2.0f, 2.0f);
  // 26B-A4B decode and prefill, small odd shapes, the 31B hidden size (two
  // steps of the decode variant), and >= 16 tokens (the tiled variant of 8
  // tokens x 8 experts) with tokens and experts not multiples of 8.
  for (const RouterShape& s :
       {RouterShape{1, 2816, 128}, RouterShape{3, 64, 8}, RouterShape{17, 256, 256},
        RouterShape{2, 2816, 100}, RouterShape{5, 100, 7}, RouterShape{2, 5376, 16},
        RouterShape{21, 2816, 128}, RouterShape{16, 64, 8}, RouterShape{37, 100, 13},
        RouterShape{19, 5376, 20}}) {
    INFO("tokens " << s.tokens << " hidden " << s.hidden << " experts " << s.experts);
    // Residual rows of magnitudes 1e-2 .. 1e2 (the residual grows over layers).
    std::vector<float> r = Normal(s.tokens * s.hidden, 1.0f, rng);
    for (int64_t t = 0; t < s.tokens; ++t) {
      const float magnitude = std::pow(10.0f, exponent(rng));
      for (int i = 0; i < s.hidden; ++i) r[t * s.hidden + i] *= magnitude;
    }
    const std::vector<float> scale = Uniform(s.hidden, 0.5f, 1.5f, rng);
    const std::vector<float> proj = Normal(int64_t{s.experts} * s.hidden, 1.0f, rng);
    const float root = static_cast<float>(std::pow(static_cast<double>(s.hidden), -0.5));
    auto r_d = testing::Upload(r);
    auto scale_d = testing::Upload(scale);
    auto proj_d = testing::Upload(proj);
    auto logits_d = Poisoned<float>(s.tokens * s.experts);
    REQUIRE_OK(RouterLogits(r_d.data(), s.tokens, s.hidden, scale_d.data(), root, kEps,
                            proj_d.data(), s.experts, logits_d.data(), nullptr));
    const std::vector<float> got = Download(logits_d);

    std::vector<double> want(got.size()), terms(got.size());
    for (int64_t t = 0; t < s.tokens; ++t) {
      const float* row = r.data() + t * s.hidden;
      double squares = 0;
      for (int i = 0; i < s.hidden; ++i) squares += static_cast<double>(row[i]) * row[i];
      const double inv = 1.0 / std::sqrt(squares / s.hidden + kEps);
      for (int e = 0; e < s.experts; ++e) {
        double dot = 0, magnitude = 0;
        for (int i = 0; i < s.hidden; ++i) {
          const double term = row[i] * inv * scale[i] * root * proj[int64_t{e} * s.hidden + i];
          dot += term;
          magnitude += std::abs(term);
        }
        want[t * s.experts + e] = dot;
        terms[t * s.experts + e] = magnitude;
      }
    }
    RequireClose(
        got, want, [&](size_t i) { return 1e-5 * terms[i]; }, "vs float64");

    // cpu_model's router: RmsNorm without weight, * scale * root, Linear.
    std::vector<float> routed = r;
    gemma4::cpu::RmsNorm(routed, s.hidden, {}, kEps);
    for (size_t i = 0; i < routed.size(); ++i) {
      routed[i] = routed[i] * scale[i % s.hidden] * root;
    }
    std::vector<float> cpu(got.size());
    gemma4::cpu::Linear(routed, s.tokens, s.hidden, proj, s.experts, cpu, nullptr);
    RequireClose(
        got, testing::ToDouble(cpu), [&](size_t i) { return 4e-5 * terms[i]; }, "vs CPU");

    // Each row alone (the decode variant) gives the same floats.
    for (int64_t t : {int64_t{0}, s.tokens / 2, s.tokens - 1}) {
      INFO("token " << t << " alone");
      auto one_d = Poisoned<float>(s.experts);
      REQUIRE_OK(RouterLogits(r_d.data() + t * s.hidden, 1, s.hidden, scale_d.data(), root, kEps,
                              proj_d.data(), s.experts, one_d.data(), nullptr));
      RequireEqual(
          Download(one_d),
          std::vector<float>(got.begin() + t * s.experts, got.begin() + (t + 1) * s.experts),
          "one token vs the batch");
    }
  }
}

// ---- RouteTopK ----

// The softmax of one row in float32 as cpu::RouteTopK computes it.
std::vector<float> CpuProbabilities(const float* logits, int experts) {
  const float max = *std::max_element(logits, logits + experts);
  std::vector<float> p(experts);
  float sum = 0;
  for (int e = 0; e < experts; ++e) sum += (p[e] = std::exp(logits[e] - max));
  for (float& v : p) v /= sum;
  return p;
}

// Whether the k-th and (k+1)-th largest probabilities are within 1e-5
// relative: the GPU, whose probabilities differ by a few ulp, might then
// order them differently (their ratio moves by < 1e-6; 10x margin).
bool NearTieAtBoundary(const float* logits, int experts, int top_k) {
  if (top_k == experts) return false;
  std::vector<float> p = CpuProbabilities(logits, experts);
  std::sort(p.begin(), p.end(), std::greater<>());
  return p[top_k - 1] - p[top_k] <= 1e-5f * p[top_k - 1];
}

// Random N(0, 2) logits [tokens, experts] without near ties at the top-k
// boundary.
std::vector<float> RandomLogits(int64_t tokens, int experts, int top_k, std::mt19937_64& rng) {
  std::vector<float> logits(tokens * experts);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = logits.data() + t * experts;
    do {
      for (int e = 0; e < experts; ++e) row[e] = dist(rng);
    } while (NearTieAtBoundary(row, experts, top_k));
  }
  return logits;
}

struct Routing {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routing RunRouteTopK(const std::vector<float>& logits, int64_t tokens, int experts,
                     const std::vector<float>& per_expert_scale, int top_k) {
  auto logits_d = testing::Upload(logits);
  auto scale_d = testing::Upload(per_expert_scale);
  auto ids_d = Poisoned<int32_t>(tokens * top_k);
  auto weights_d = Poisoned<float>(tokens * top_k);
  REQUIRE_OK(RouteTopK(logits_d.data(), tokens, experts, scale_d.data(), top_k, ids_d.data(),
                       weights_d.data(), nullptr));
  return Routing{Download(ids_d), Download(weights_d)};
}

// Token t of `got` equals cpu::RouteTopK: the same ids, weights within 1e-5
// relative.
void RequireMatchesCpu(const Routing& got, const std::vector<float>& logits, int64_t t, int experts,
                       const std::vector<float>& per_expert_scale, int top_k) {
  INFO("token " << t);
  const std::vector<gemma4::cpu::ExpertChoice> want = gemma4::cpu::RouteTopK(
      std::span(logits).subspan(t * experts, experts), per_expert_scale, top_k);
  REQUIRE(static_cast<int>(want.size()) == top_k);
  for (int j = 0; j < top_k; ++j) {
    INFO("choice " << j);
    REQUIRE(got.ids[t * top_k + j] == want[j].expert);
    const float w = got.weights[t * top_k + j];
    REQUIRE(std::abs(w - want[j].weight) <= 1e-5f * std::abs(want[j].weight));
  }
}

struct TopKShape {
  int experts;
  int top_k;
};

TEST_CASE("RouteTopK matches cpu::RouteTopK", "[cuda][moe]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // Up to 128 experts take 4 per lane, more take 8 (129: one in the fifth).
  for (const TopKShape& s :
       {TopKShape{128, 8}, TopKShape{4, 1}, TopKShape{8, 2}, TopKShape{16, 4}, TopKShape{100, 8},
        TopKShape{256, 8}, TopKShape{256, 1}, TopKShape{128, 128}, TopKShape{256, 256},
        TopKShape{33, 32}, TopKShape{129, 8}, TopKShape{129, 129}}) {
    for (int64_t tokens : {1, 3, 17, 300}) {
      INFO("experts " << s.experts << " top_k " << s.top_k << " tokens " << tokens);
      const std::vector<float> logits = RandomLogits(tokens, s.experts, s.top_k, rng);
      const std::vector<float> per_expert_scale = Uniform(s.experts, 0.5f, 1.5f, rng);
      const Routing got = RunRouteTopK(logits, tokens, s.experts, per_expert_scale, s.top_k);
      for (int64_t t = 0; t < tokens; ++t) {
        RequireMatchesCpu(got, logits, t, s.experts, per_expert_scale, s.top_k);
      }
    }
  }
}

TEST_CASE("RouteTopK breaks ties to the lower expert", "[cuda][moe]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  SECTION("all logits equal") {
    for (const TopKShape& s : {TopKShape{128, 8}, TopKShape{100, 8}, TopKShape{256, 1},
                               TopKShape{7, 7}, TopKShape{200, 16}}) {
      INFO("experts " << s.experts << " top_k " << s.top_k);
      const std::vector<float> logits(2 * s.experts, 0.7f);
      const std::vector<float> per_expert_scale = Uniform(s.experts, 0.5f, 1.5f, rng);
      const Routing got = RunRouteTopK(logits, 2, s.experts, per_expert_scale, s.top_k);
      for (int64_t t = 0; t < 2; ++t) {
        RequireMatchesCpu(got, logits, t, s.experts, per_expert_scale, s.top_k);
        for (int j = 0; j < s.top_k; ++j) {
          INFO("token " << t << " choice " << j);
          REQUIRE(got.ids[t * s.top_k + j] == j);
          const double want = per_expert_scale[j] / static_cast<double>(s.top_k);
          REQUIRE(std::abs(got.weights[t * s.top_k + j] - want) <= 1e-5 * want);
        }
      }
    }
  }
  SECTION("a tie at the top-k boundary") {
    // Three experts at 2, three at 1 (the lowest of them, 1, goes in), the
    // rest below; top 4.
    constexpr int kExperts = 16;
    std::vector<float> logits = Uniform(kExperts, -3.0f, -1.0f, rng);
    for (int e : {10, 2, 7}) logits[e] = 2.0f;
    for (int e : {14, 1, 5}) logits[e] = 1.0f;
    const std::vector<float> per_expert_scale = Uniform(kExperts, 0.5f, 1.5f, rng);
    const Routing got = RunRouteTopK(logits, 1, kExperts, per_expert_scale, 4);
    REQUIRE(got.ids == std::vector<int32_t>{1, 2, 7, 10});
    RequireMatchesCpu(got, logits, 0, kExperts, per_expert_scale, 4);
  }
}

TEST_CASE("RouteTopK gives a NaN row distinct ids and NaN weights", "[cuda][moe]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  for (const TopKShape& s : {TopKShape{128, 8}, TopKShape{256, 256}, TopKShape{8, 1}}) {
    for (bool all_nan : {false, true}) {
      INFO("experts " << s.experts << " top_k " << s.top_k << " all NaN " << all_nan);
      constexpr int64_t kTokens = 5, kNaNToken = 2;
      std::vector<float> logits = RandomLogits(kTokens, s.experts, s.top_k, rng);
      float* nan_row = logits.data() + kNaNToken * s.experts;
      if (all_nan) {
        std::fill(nan_row, nan_row + s.experts, kNaN);
      } else {
        nan_row[std::uniform_int_distribution<int>(0, s.experts - 1)(rng)] = kNaN;
      }
      const std::vector<float> per_expert_scale = Uniform(s.experts, 0.5f, 1.5f, rng);
      const Routing got = RunRouteTopK(logits, kTokens, s.experts, per_expert_scale, s.top_k);
      for (int64_t t = 0; t < kTokens; ++t) {
        if (t != kNaNToken) {
          RequireMatchesCpu(got, logits, t, s.experts, per_expert_scale, s.top_k);
          continue;
        }
        for (int j = 0; j < s.top_k; ++j) {
          INFO("choice " << j);
          const int32_t id = got.ids[t * s.top_k + j];
          REQUIRE(id >= 0);
          REQUIRE(id < s.experts);
          if (j > 0) REQUIRE(id > got.ids[t * s.top_k + j - 1]);  // ascending, so distinct
          REQUIRE(std::isnan(got.weights[t * s.top_k + j]));
        }
      }
    }
  }
}

// ---- GatherRows / ScatterRows ----

TEST_CASE("GatherRows and ScatterRows copy rows by index", "[cuda][moe]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  for (int width : {2816, 64, 8}) {
    for (int64_t rows : {1, 17, 300}) {
      INFO("width " << width << " rows " << rows);
      const std::vector<uint16_t> src = RandomBf16(rows * width, 0.01f, 4.0f, rng).bits;
      auto src_d = testing::Upload(src);

      // Gather a permutation of the rows, then a sample with repeats.
      std::vector<int32_t> permutation(rows);
      std::iota(permutation.begin(), permutation.end(), 0);
      std::shuffle(permutation.begin(), permutation.end(), rng);
      std::vector<int32_t> sample(2 * rows + 1);
      std::uniform_int_distribution<int32_t> any_row(0, static_cast<int32_t>(rows - 1));
      for (int32_t& i : sample) i = any_row(rng);
      for (const std::vector<int32_t>* index : {&permutation, &sample}) {
        const int64_t count = index->size();
        auto index_d = testing::Upload(*index);
        auto dst_d = Poisoned<uint16_t>(count * width);
        REQUIRE_OK(GatherRows(AsBf16(src_d), index_d.data(), count, width, AsBf16(dst_d), nullptr));
        std::vector<uint16_t> want(count * width);
        for (int64_t i = 0; i < count; ++i) {
          std::copy_n(src.begin() + (*index)[i] * width, width, want.begin() + i * width);
        }
        RequireEqual(Download(dst_d), want, "GatherRows");
      }

      // Scatter the rows into a buffer twice as tall: the rows not indexed
      // keep their contents.
      const int64_t dst_rows = 2 * rows + 3;
      std::vector<int32_t> targets(dst_rows);
      std::iota(targets.begin(), targets.end(), 0);
      std::shuffle(targets.begin(), targets.end(), rng);
      targets.resize(rows);
      std::vector<uint16_t> want = RandomBf16(dst_rows * width, 0.01f, 4.0f, rng).bits;
      auto dst_d = testing::Upload(want);
      auto targets_d = testing::Upload(targets);
      REQUIRE_OK(ScatterRows(AsBf16(src_d), targets_d.data(), rows, width, AsBf16(dst_d), nullptr));
      for (int64_t i = 0; i < rows; ++i) {
        std::copy_n(src.begin() + i * width, width, want.begin() + targets[i] * width);
      }
      RequireEqual(Download(dst_d), want, "ScatterRows");
    }
  }
}

// ---- CombineExperts ----

TEST_CASE("CombineExperts matches float64", "[cuda][moe]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // 26B-A4B, a small one, the 31B hidden size (two runs per thread) and
  // three runs per thread (the 4-run kernel); top_k not a multiple of a
  // thread's batch of slots (8, 4 and 2 for 1, 2 and 4 runs) and above 8.
  for (int hidden : {2816, 64, 5376, 12288}) {
    for (int64_t tokens : {1, 5}) {
      for (int top_k : {1, 3, 8, 10}) {
        for (bool in_place : {false, true}) {
          INFO("hidden " << hidden << " tokens " << tokens << " top_k " << top_k << " in place "
                         << in_place);
          const int64_t n = tokens * hidden;
          const auto dense = RandomBf16(n, 0.01f, 4.0f, rng);
          const auto expert_out = RandomBf16(n * top_k, 0.01f, 4.0f, rng);
          const std::vector<float> weights = Uniform(tokens * top_k, 0.05f, 1.0f, rng);
          const auto dense_norm = RandomBf16(hidden, 0.25f, 2.0f, rng);
          const auto expert_norm = RandomBf16(hidden, 0.25f, 2.0f, rng);
          auto dense_d = testing::Upload(dense.bits);
          auto expert_out_d = testing::Upload(expert_out.bits);
          auto weights_d = testing::Upload(weights);
          auto dense_norm_d = testing::Upload(dense_norm.bits);
          auto expert_norm_d = testing::Upload(expert_norm.bits);
          auto out_d = testing::PoisonedBf16(n);
          cuda::DeviceBuffer<uint16_t>& result = in_place ? dense_d : out_d;
          REQUIRE_OK(CombineExperts(AsBf16(dense_d), AsBf16(expert_out_d), weights_d.data(), tokens,
                                    top_k, hidden, AsBf16(dense_norm_d), AsBf16(expert_norm_d),
                                    kEps, AsBf16(result), nullptr));
          const std::vector<float> got = testing::DownloadBf16(result);

          std::vector<double> want(n), slack(n);
          for (int64_t t = 0; t < tokens; ++t) {
            std::vector<double> e(hidden, 0.0), e_magnitude(hidden, 0.0);
            for (int j = 0; j < top_k; ++j) {
              const double w = weights[t * top_k + j];
              for (int i = 0; i < hidden; ++i) {
                const double term = w * expert_out.values[(t * top_k + j) * hidden + i];
                e[i] += term;
                e_magnitude[i] += std::abs(term);
              }
            }
            double dense_squares = 0, expert_squares = 0;
            for (int i = 0; i < hidden; ++i) {
              const double d = dense.values[t * hidden + i];
              dense_squares += d * d;
              expert_squares += e[i] * e[i];
            }
            const double dense_scale = 1.0 / std::sqrt(dense_squares / hidden + kEps);
            const double expert_scale = 1.0 / std::sqrt(expert_squares / hidden + kEps);
            for (int i = 0; i < hidden; ++i) {
              const double a = dense.values[t * hidden + i] * dense_scale * dense_norm.values[i];
              const double b = e[i] * expert_scale * expert_norm.values[i];
              want[t * hidden + i] = a + b;
              slack[t * hidden + i] =
                  2e-5 *
                  (std::abs(a) + std::abs(expert_scale * expert_norm.values[i]) * e_magnitude[i]);
            }
          }
          const double bf16_bound = std::ldexp(1.0, -8) + 1e-5;
          RequireClose(
              got, want, [&](size_t i) { return bf16_bound * std::abs(want[i]) + slack[i]; },
              "vs float64");
        }
      }
    }
  }
}

// ---- Argument checks ----

TEST_CASE("MoE kernels reject bad arguments", "[cuda][moe]") {
  GQ_SKIP_WITHOUT_CUDA();
  // Real buffers large enough for every call below, so a check that wrongly
  // passed would not launch on a wild pointer.
  auto f = cuda::DeviceBuffer<float>::Allocate(4096);
  REQUIRE_OK(f);
  auto b = cuda::DeviceBuffer<uint16_t>::Allocate(4096);
  REQUIRE_OK(b);
  auto i32 = cuda::DeviceBuffer<int32_t>::Allocate(64);
  REQUIRE_OK(i32);
  float* fp = f->data();
  __nv_bfloat16* bp = AsBf16(*b);
  int32_t* ip = i32->data();
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

  // RouterLogits: hidden % 4, experts, null, misaligned, eps.
  REQUIRE_STATUS_IS(RouterLogits(fp, 1, 6, fp, 1.0f, kEps, fp, 4, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouterLogits(fp, 1, 8, fp, 1.0f, kEps, fp, 0, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouterLogits(fp, 1, 8, fp, 1.0f, kEps, fp, 65536, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouterLogits(nullptr, 1, 8, fp, 1.0f, kEps, fp, 4, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouterLogits(fp + 1, 1, 8, fp, 1.0f, kEps, fp, 4, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouterLogits(fp, 1, 8, fp, 1.0f, -1.0f, fp, 4, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouterLogits(fp, -1, 8, fp, 1.0f, kEps, fp, 4, fp, nullptr), kInvalid);
  REQUIRE_OK(RouterLogits(fp, 0, 8, fp, 1.0f, kEps, fp, 4, fp, nullptr));

  // RouteTopK: top_k range, experts > kMaxExperts, null.
  REQUIRE_STATUS_IS(RouteTopK(fp, 1, 8, fp, 0, ip, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouteTopK(fp, 1, 8, fp, 9, ip, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouteTopK(fp, 1, kMaxExperts + 1, fp, 8, ip, fp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(RouteTopK(fp, 1, 8, fp, 2, nullptr, fp, nullptr), kInvalid);
  REQUIRE_OK(RouteTopK(fp, 0, 8, fp, 2, ip, fp, nullptr));

  // GatherRows / ScatterRows: width % 8, misaligned, null index.
  REQUIRE_STATUS_IS(GatherRows(bp, ip, 1, 12, bp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(ScatterRows(bp, ip, 1, 0, bp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(GatherRows(bp + 1, ip, 1, 8, bp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(ScatterRows(bp, nullptr, 1, 8, bp, nullptr), kInvalid);
  REQUIRE_OK(GatherRows(bp, ip, 0, 8, bp, nullptr));

  // CombineExperts: hidden % 8, too wide, top_k, null norm, misaligned.
  REQUIRE_STATUS_IS(CombineExperts(bp, bp, fp, 1, 1, 12, bp, bp, kEps, bp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(CombineExperts(bp, bp, fp, 1, 1, 1 << 20, bp, bp, kEps, bp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(CombineExperts(bp, bp, fp, 1, 0, 8, bp, bp, kEps, bp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(CombineExperts(bp, bp, fp, 1, 1, 8, nullptr, bp, kEps, bp, nullptr), kInvalid);
  REQUIRE_STATUS_IS(CombineExperts(bp, bp, fp, 1, 1, 8, bp, bp, kEps, bp + 4, nullptr), kInvalid);
  REQUIRE_OK(CombineExperts(bp, bp, fp, 0, 1, 8, bp, bp, kEps, bp, nullptr));
}

}  // namespace
}  // namespace gquant::cuda
