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

// ---- Vision tower ops (spec §5.2-§5.4) ----

TEST_CASE("cpu ops: clipped linear clamps its input and output", "[vision]") {
  auto rng = gquant::testing::MakeRng();
  ThreadPool pool(2);
  const int64_t rows = 7, in = 67, out = 33;
  const std::vector<float> x = Random(rng, rows * in, 2.0), w = Random(rng, out * in);
  // Bounds inside the data's range, so that both clamps really act.
  const ClipBounds bounds{-1.5f, 1.0f, -4.0f, 3.0f};
  std::vector<float> y(rows * out);
  ClippedLinear(x, rows, in, w, out, bounds, y, &pool);
  int clipped_out = 0;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0, magnitude = 0;
      for (int64_t k = 0; k < in; ++k) {
        const double xc = std::clamp(double{x[r * in + k]}, -1.5, 1.0);
        s += xc * w[o * in + k];
        magnitude += std::abs(xc * w[o * in + k]);
      }
      const double ref = std::clamp(s, -4.0, 3.0);
      clipped_out += ref != s;
      // Linear's float32 dot bound (gamma_n, see the Linear test); clamping
      // is 1-Lipschitz, so it carries over.
      worst = std::max(worst, std::abs(y[r * out + o] - ref) / magnitude);
    }
  }
  const double u = std::ldexp(1.0, -24);
  CHECK(worst <= in * u / (1 - in * u));
  CHECK(clipped_out > 0);
  // Infinite bounds (no use_clipped_linears) are Linear, bit for bit.
  std::vector<float> plain(rows * out), unclipped(rows * out);
  Linear(x, rows, in, w, out, plain, &pool);
  ClippedLinear(x, rows, in, w, out, ClipBounds{}, unclipped, &pool);
  CHECK(plain == unclipped);
  // torch.clamp: NaN stays NaN, and lo > hi gives hi.
  std::vector<float> v = {std::nanf(""), -9.0f, 0.5f, 9.0f};
  Clamp(v, -1.0f, 1.0f);
  CHECK(std::isnan(v[0]));
  CHECK(v[1] == -1.0f);
  CHECK(v[2] == 0.5f);
  CHECK(v[3] == 1.0f);
  std::vector<float> crossed = {-5.0f, 5.0f};
  Clamp(crossed, 2.0f, 1.0f);
  CHECK(crossed == std::vector<float>{1.0f, 1.0f});
}

TEST_CASE("cpu ops: vision 2-D RoPE rotates x on the first half, y on the second", "[vision]") {
  auto rng = gquant::testing::MakeRng();
  const int heads = 3;
  for (int d : {16, 24, 72}) {
    // HF Gemma4VisionRotaryEmbedding: spatial = d / 2, inv_freq[j] =
    // 100^(-2j / spatial) for j < spatial / 2.
    const int spatial = d / 2, n = spatial / 2;
    const std::vector<float> inv = RopeInverseFrequencies({"default", 100.0, 1.0}, spatial);
    REQUIRE(static_cast<int>(inv.size()) == n);
    for (int j = 0; j < n; ++j) {
      CHECK(inv[j] == Approx(std::pow(100.0, -2.0 * j / spatial)).epsilon(1e-6));
    }
    for (auto [px, py] : std::vector<std::pair<int, int>>{{0, 0}, {5, 17}, {63, 2}, {-1, -1}}) {
      INFO("head_dim " << d << ", position (" << px << ", " << py << ")");
      const std::vector<float> x = Random(rng, heads * d);
      // cos/sin laid out [x, x, y, y] (recomposition_frequencies), the angle
      // formed in float32 as HF does; then x * cos + rotate_half(x) * sin
      // inside each half (apply_multidimensional_rope), in double.
      std::vector<double> angle(d);
      for (int j = 0; j < n; ++j) {
        angle[j] = angle[j + n] = static_cast<float>(px) * inv[j];
        angle[spatial + j] = angle[spatial + j + n] = static_cast<float>(py) * inv[j];
      }
      std::vector<double> ref(x.size());
      for (int h = 0; h < heads; ++h) {
        for (int part = 0; part < 2; ++part) {
          const int base = h * d + part * spatial;
          for (int i = 0; i < spatial; ++i) {
            const double rotated = i < n ? -double{x[base + i + n]} : double{x[base + i - n]};
            const double a = angle[part * spatial + i];
            ref[base + i] = x[base + i] * std::cos(a) + rotated * std::sin(a);
          }
        }
      }
      std::vector<float> y = x;
      ApplyRope2d(y, heads, d, px, py, inv);
      CHECK(RelErr(y, ref) <= 1e-5);
      if (px == 0 && py == 0) CHECK(y == x);
    }
  }
}

TEST_CASE("cpu ops: bidirectional attention sees only the listed keys", "[vision]") {
  auto rng = gquant::testing::MakeRng();
  ThreadPool pool(2);
  const int nh = 4, nkv = 2, d = 16;
  const int64_t tokens = 23;
  std::vector<float> q = Random(rng, tokens * nh * d, 0.5), k = Random(rng, tokens * nkv * d),
                     v = Random(rng, tokens * nkv * d);
  // Real patches first, then padding, as the processor lays them out; and a
  // scattered set.
  std::vector<int64_t> prefix(17), scattered;
  std::iota(prefix.begin(), prefix.end(), 0);
  std::bernoulli_distribution keep(0.6);
  for (int64_t j = 0; j < tokens; ++j) {
    if (keep(rng) || j == 3) scattered.push_back(j);
  }
  for (const std::vector<int64_t>& keys : {prefix, scattered, std::vector<int64_t>{5}}) {
    INFO(keys.size() << " keys");
    std::vector<double> ref(q.size());
    for (int64_t t = 0; t < tokens; ++t) {
      for (int h = 0; h < nh; ++h) {
        const int g = h / (nh / nkv);
        std::vector<double> s;
        for (int64_t j : keys) {
          double dot = 0;
          for (int e = 0; e < d; ++e) {
            dot += double{q[(t * nh + h) * d + e]} * k[(j * nkv + g) * d + e];
          }
          s.push_back(dot);  // scale 1.0
        }
        const double max = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - max));
        for (size_t n = 0; n < keys.size(); ++n) {
          for (int e = 0; e < d; ++e) {
            ref[(t * nh + h) * d + e] += s[n] / sum * v[(keys[n] * nkv + g) * d + e];
          }
        }
      }
    }
    std::vector<float> out(q.size(), std::nanf(""));
    BidirectionalAttention(q, k, v, tokens, nh, nkv, d, keys, out, &pool);
    CHECK(RelErr(out, ref) <= 1e-5);
    // Unlisted keys do not matter at all: overwrite them with huge values.
    std::vector<float> k2 = k, v2 = v;
    for (int64_t j = 0; j < tokens; ++j) {
      if (std::find(keys.begin(), keys.end(), j) != keys.end()) continue;
      std::fill_n(k2.begin() + j * nkv * d, nkv * d, 1e30f);
      std::fill_n(v2.begin() + j * nkv * d, nkv * d, -1e30f);
    }
    std::vector<float> out2(q.size());
    BidirectionalAttention(q, k2, v2, tokens, nh, nkv, d, keys, out2, nullptr);
    CHECK(out2 == out);
  }
}

TEST_CASE("cpu ops: vision pooler averages whole k x k windows in grid order", "[vision]") {
  auto rng = gquant::testing::MakeRng();
  const int64_t dim = 10;
  const float scale = static_cast<float>(std::sqrt(48.0));
  struct Grid {
    int width, height, kernel, padding;
  };
  for (const Grid& g : std::vector<Grid>{{3, 3, 3, 0},
                                         {9, 6, 3, 9},
                                         {15, 3, 3, 18},
                                         {3, 12, 3, 0},
                                         {30, 18, 3, 90},
                                         {4, 6, 2, 4}}) {
    INFO("grid " << g.width << "x" << g.height << ", kernel " << g.kernel << ", padding "
                 << g.padding);
    const int64_t real = int64_t{g.width} * g.height, patches = real + g.padding;
    const int64_t k2 = int64_t{g.kernel} * g.kernel;
    REQUIRE(patches % k2 == 0);
    // Row-major real patches (x fastest), then padding at (-1, -1) whose rows
    // the model zeroes before pooling.
    std::vector<int32_t> positions;
    for (int y = 0; y < g.height; ++y) {
      for (int x = 0; x < g.width; ++x) positions.insert(positions.end(), {x, y});
    }
    for (int i = 0; i < g.padding; ++i) positions.insert(positions.end(), {-1, -1});
    std::vector<float> x = Random(rng, patches * dim);
    std::fill(x.begin() + real * dim, x.end(), 0.0f);

    // Reference: token (tx, ty) of the (width / k) x (height / k) pooled grid,
    // row-major, is the mean of its k x k patches times the scale.
    const int tw = g.width / g.kernel, th = g.height / g.kernel;
    std::vector<double> ref;
    for (int ty = 0; ty < th; ++ty) {
      for (int tx = 0; tx < tw; ++tx) {
        for (int64_t i = 0; i < dim; ++i) {
          double sum = 0;
          for (int dy = 0; dy < g.kernel; ++dy) {
            for (int dx = 0; dx < g.kernel; ++dx) {
              const int64_t p = int64_t{ty * g.kernel + dy} * g.width + tx * g.kernel + dx;
              sum += x[p * dim + i];
            }
          }
          ref.push_back(sum / k2 * scale);
        }
      }
    }
    const std::vector<int64_t> windows = PoolWindows(positions, g.kernel);
    REQUIRE(static_cast<int64_t>(windows.size()) == patches);
    for (int64_t p = 0; p < real; ++p) {
      CHECK(windows[p] == (p / g.width / g.kernel) * tw + (p % g.width) / g.kernel);
    }
    for (int64_t p = real; p < patches; ++p) CHECK(windows[p] == 0);
    const std::vector<float> pooled =
        AvgPoolWindows(x, dim, windows, g.kernel, patches / k2, scale);
    // Each output sums k^2 float32 products: a few ulps.
    CHECK(RelErr(pooled, ref) <= 1e-6);
  }
  // Windows no patch maps to are dropped, the rest kept in window order.
  const std::vector<float> x = {1, 2, 3, 4};
  const std::vector<int64_t> windows = {3, 1, 3, 1};
  CHECK(AvgPoolWindows(x, 1, windows, 1, 5, 2.0f) == std::vector<float>{12.0f, 8.0f});
}

}  // namespace
}  // namespace gquant::gemma4::cpu
