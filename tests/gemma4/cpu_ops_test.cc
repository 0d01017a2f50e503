// The float32 building blocks of the CPU forward against float64 references
// written here from the spec's formulas (gemma4.md §2-§3, §6).
#include "gemma4/cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "test_util.h"

namespace gquant::gemma4::cpu {
namespace {

std::vector<float> Random(std::mt19937_64& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(dist(rng));
  return v;
}

// max |a - b| / max(|b|, floor).
double RelErr(std::span<const float> a, std::span<const double> b, double floor = 1e-3) {
  REQUIRE(a.size() == b.size());
  double diff = 0, norm = floor;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    norm = std::max(norm, std::abs(b[i]));
  }
  return diff / norm;
}

TEST_CASE("cpu ops: Linear is x @ W^T, row-independent and thread-independent", "[gemma4_model]") {
  auto rng = gquant::testing::MakeRng();
  ThreadPool pool(2);
  for (auto [rows, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 64, 1}, {3, 5, 65}, {17, 67, 130}, {24, 256, 512}}) {
    INFO(rows << "x" << in << " @ " << out << "x" << in << "^T");
    const std::vector<float> x = Random(rng, rows * in), w = Random(rng, out * in);
    // Each output against float64, relative to sum |x_k w_k| (a single dot
    // can cancel): a float32 dot of n terms in any order stays within
    // gamma_n = n u / (1 - n u) of that, u = 2^-24 (Higham, ch. 3).
    double worst = 0;
    std::vector<float> y(rows * out), y1(rows * out), row(out);
    Linear(x, rows, in, w, out, y, &pool);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t o = 0; o < out; ++o) {
        double s = 0, magnitude = 0;
        for (int64_t k = 0; k < in; ++k) {
          s += double{x[r * in + k]} * w[o * in + k];
          magnitude += std::abs(double{x[r * in + k]} * w[o * in + k]);
        }
        worst = std::max(worst, std::abs(y[r * out + o] - s) / magnitude);
      }
    }
    const double u = std::ldexp(1.0, -24);
    CHECK(worst <= in * u / (1 - in * u));
    Linear(x, rows, in, w, out, y1, nullptr);
    CHECK(y1 == y);
    for (int64_t r = 0; r < rows; ++r) {
      Linear(std::span(x).subspan(r * in, in), 1, in, w, out, row, &pool);
      CHECK(std::equal(row.begin(), row.end(), y.begin() + r * out));
    }
  }
}

TEST_CASE("cpu ops: RMSNorm with and without weight", "[gemma4_model]") {
  auto rng = gquant::testing::MakeRng();
  const int64_t rows = 5, dim = 96;
  const float eps = 1e-6f;
  std::vector<float> x = Random(rng, rows * dim, 3.0), w = Random(rng, dim);
  x[0] = 1e4f;  // a large entry must not overflow the mean of squares
  for (bool weighted : {true, false}) {
    std::vector<double> ref(rows * dim);
    for (int64_t r = 0; r < rows; ++r) {
      double ms = 0;
      for (int64_t i = 0; i < dim; ++i) ms += double{x[r * dim + i]} * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ms / dim + eps);
      for (int64_t i = 0; i < dim; ++i) {
        ref[r * dim + i] = x[r * dim + i] * inv * (weighted ? w[i] : 1.0);
      }
    }
    std::vector<float> y = x;
    RmsNorm(y, dim, weighted ? std::span<const float>(w) : std::span<const float>(), eps);
    CHECK(RelErr(y, ref) <= 1e-6);
  }
  // eps sits inside the root: a zero vector stays zero, no NaN.
  std::vector<float> zeros(dim, 0.0f);
  RmsNorm(zeros, dim, w, eps);
  CHECK(std::all_of(zeros.begin(), zeros.end(), [](float v) { return v == 0.0f; }));
  // eps is visible on a tiny vector: x / sqrt(x^2 + eps) for a constant x.
  std::vector<float> tiny(dim, 1e-3f);
  RmsNorm(tiny, dim, {}, eps);
  CHECK(tiny[0] == Approx(1e-3 / std::sqrt(1e-6 + 1e-6)).epsilon(1e-6));
}

TEST_CASE("cpu ops: GELU tanh approximation and soft-cap", "[gemma4_model]") {
  for (double x = -8; x <= 8; x += 0.0625) {
    const double ref = 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    INFO(x);
    CHECK(GeluTanh(static_cast<float>(x)) == Approx(ref).margin(1e-7).epsilon(1e-6));
  }
  std::vector<float> logits = {-100.0f, -1.0f, 0.0f, 0.5f, 29.0f, 1000.0f};
  std::vector<double> ref;
  for (float v : logits) ref.push_back(std::tanh(v / 30.0) * 30.0);
  SoftCap(logits, 30.0f);
  CHECK(RelErr(logits, ref) <= 1e-6);
  CHECK(logits.back() <= 30.0f);
}

TEST_CASE("cpu ops: RoPE inverse frequencies, default and proportional", "[gemma4_model]") {
  const std::vector<float> sliding = RopeInverseFrequencies({"default", 10000.0, 1.0}, 256);
  REQUIRE(sliding.size() == 128);
  for (int j = 0; j < 128; ++j) {
    CHECK(sliding[j] == Approx(std::pow(10000.0, -2.0 * j / 256)).epsilon(1e-6));
  }
  // Spec §3.3: 64 of 256 pairs rotate, exponent over the full 512 dims.
  const std::vector<float> full = RopeInverseFrequencies({"proportional", 1e6, 0.25}, 512);
  REQUIRE(full.size() == 256);
  for (int j = 0; j < 256; ++j) {
    INFO(j);
    if (j < 64) {
      CHECK(full[j] == Approx(std::pow(1e6, -2.0 * j / 512)).epsilon(1e-6));
    } else {
      CHECK(full[j] == 0.0f);
    }
  }
  CHECK(RopeInverseFrequencies({"proportional", 1e6, 0.25}, 64)[7] > 0.0f);
  CHECK(RopeInverseFrequencies({"proportional", 1e6, 0.25}, 64)[8] == 0.0f);
}

TEST_CASE("cpu ops: NeoX RoPE rotates dim j with j + D/2", "[gemma4_model]") {
  auto rng = gquant::testing::MakeRng();
  const int d = 64, heads = 3;
  const std::vector<float> inv = RopeInverseFrequencies({"proportional", 1e6, 0.25}, d);
  for (int64_t pos : {0, 1, 23, 1000, 123457}) {
    INFO("position " << pos);
    const std::vector<float> x = Random(rng, heads * d);
    std::vector<double> ref(x.size());
    for (int h = 0; h < heads; ++h) {
      for (int j = 0; j < d / 2; ++j) {
        // The angle is formed in float32 as HF does; the rotation in double.
        const double angle = static_cast<float>(pos) * inv[j];
        const double x1 = x[h * d + j], x2 = x[h * d + j + d / 2];
        ref[h * d + j] = x1 * std::cos(angle) - x2 * std::sin(angle);
        ref[h * d + j + d / 2] = x2 * std::cos(angle) + x1 * std::sin(angle);
      }
    }
    std::vector<float> y = x;
    ApplyRope(y, heads, d, pos, inv);
    CHECK(RelErr(y, ref) <= 1e-5);
    // Pairs with zero frequency pass through exactly.
    for (int h = 0; h < heads; ++h) {
      for (int j = 8; j < d / 2; ++j) {
        CHECK(y[h * d + j] == x[h * d + j]);
        CHECK(y[h * d + j + d / 2] == x[h * d + j + d / 2]);
      }
    }
  }
}

TEST_CASE("cpu ops: grouped-query attention with causal and sliding masks", "[gemma4_model]") {
  auto rng = gquant::testing::MakeRng();
  ThreadPool pool(2);
  const int nh = 4, nkv = 2, d = 16;
  const int64_t total = 30;  // positions 0..29 exist; the chunk is 20..29
  const int64_t first = 20, tokens = 10;
  const std::vector<float> keys = Random(rng, total * nkv * d),
                           values = Random(rng, total * nkv * d);
  const std::vector<float> q = Random(rng, tokens * nh * d, 0.5);
  for (int64_t window : {int64_t{0}, int64_t{8}}) {
    // A ring just large enough for the chunk's visible span (sliding) or
    // every position (full), written in position order as the model does:
    // slot = position % capacity, later positions overwrite earlier ones.
    const int64_t capacity = window > 0 ? window + tokens - 1 : total;
    std::vector<float> k(capacity * nkv * d), v(k.size());
    for (int64_t p = 0; p < total; ++p) {
      std::copy_n(keys.begin() + p * nkv * d, nkv * d, k.begin() + (p % capacity) * nkv * d);
      std::copy_n(values.begin() + p * nkv * d, nkv * d, v.begin() + (p % capacity) * nkv * d);
    }
    std::vector<double> ref(q.size());
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t i = first + t;
      for (int h = 0; h < nh; ++h) {
        const int g = h / (nh / nkv);
        std::vector<double> s;
        std::vector<int64_t> visible;
        for (int64_t j = 0; j < total; ++j) {
          if (j > i || (window > 0 && i - j >= window)) continue;  // spec §6
          double dot = 0;
          for (int e = 0; e < d; ++e) {
            dot += double{q[(t * nh + h) * d + e]} * keys[(j * nkv + g) * d + e];
          }
          s.push_back(dot);  // scale 1.0
          visible.push_back(j);
        }
        const double max = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - max));
        for (size_t n = 0; n < s.size(); ++n) {
          for (int e = 0; e < d; ++e) {
            ref[(t * nh + h) * d + e] += s[n] / sum * values[(visible[n] * nkv + g) * d + e];
          }
        }
      }
    }
    std::vector<float> out(q.size());
    Attention(q, tokens, nh, first, window, {k.data(), v.data(), capacity, nkv, d}, out, &pool);
    INFO("window " << window);
    CHECK(RelErr(out, ref) <= 1e-5);
  }
}

TEST_CASE("cpu ops: MoE routing", "[gemma4_model]") {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 1.5f, 2.0f, 0.0f};
  const std::vector<float> scale = {1.1f, 0.9f, 1.0f, 1.3f, 0.7f, 1.2f};
  // Softmax, then the top 3 (1, 4 tie at 2.0, then 3), renormalised, times
  // the per-expert scale; in ascending expert order.
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t e = 0; e < p.size(); ++e) sum += (p[e] = std::exp(double{logits[e]}));
  for (double& x : p) x /= sum;
  const double top = p[1] + p[3] + p[4];
  const std::vector<ExpertChoice> choices = RouteTopK(logits, scale, 3);
  REQUIRE(choices.size() == 3);
  const int experts[] = {1, 3, 4};
  for (int i = 0; i < 3; ++i) {
    const int e = experts[i];
    CHECK(choices[i].expert == e);
    CHECK(choices[i].weight == Approx(p[e] / top * scale[e]).epsilon(1e-6));
  }
  // top_k = 1 keeps the lower index of a tie with weight = its scale.
  const std::vector<ExpertChoice> one = RouteTopK(logits, scale, 1);
  REQUIRE(one.size() == 1);
  CHECK(one[0].expert == 1);
  CHECK(one[0].weight == Approx(0.9).epsilon(1e-6));
}

}  // namespace
}  // namespace gquant::gemma4::cpu
