#include "cpu_ops.h"

#include <Eigen/Core>
#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <numeric>

namespace gquant::gemma4::cpu {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;
using ConstVecMap = Eigen::Map<const Eigen::VectorXf>;

// Output features per parallel task of Linear: a block of weight rows stays
// in cache while every input row passes. Fixed, so results do not depend on
// the thread count.
constexpr int64_t kLinearBlock = 64;

}  // namespace

void Linear(std::span<const float> x, int64_t rows, int64_t in, std::span<const float> w,
            int64_t out, std::span<float> y, ThreadPool* pool) {
  assert(static_cast<int64_t>(x.size()) == rows * in);
  assert(static_cast<int64_t>(w.size()) == out * in);
  assert(static_cast<int64_t>(y.size()) == rows * out);
  const int64_t blocks = (out + kLinearBlock - 1) / kLinearBlock;
  ParallelFor(pool, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * kLinearBlock, n = std::min(kLinearBlock, out - o0);
      const ConstRowMap wm(w.data() + o0 * in, n, in);
      // One matrix-vector product per row rather than a GEMM: Eigen's GEMV
      // sums each output in an order fixed by the weight alone, so a row's
      // result does not depend on how many rows come with it (chunked
      // prefill and decode reproduce one-shot prefill bit for bit).
      for (int64_t r = 0; r < rows; ++r) {
        Eigen::Map<Eigen::VectorXf> yv(y.data() + r * out + o0, n);
        yv.noalias() = wm * ConstVecMap(x.data() + r * in, in);
      }
    }
  });
}

void RmsNorm(std::span<float> x, int64_t dim, std::span<const float> weight, float eps) {
  assert(dim > 0 && x.size() % dim == 0);
  assert(weight.empty() || static_cast<int64_t>(weight.size()) == dim);
  for (size_t row = 0; row < x.size(); row += dim) {
    Eigen::Map<Eigen::VectorXf> v(x.data() + row, dim);
    // HF: x * pow(mean(x^2) + eps, -0.5), pow rather than rsqrt.
    const float mean_sq = v.squaredNorm() / static_cast<float>(dim);
    v *= std::pow(mean_sq + eps, -0.5f);
    if (!weight.empty()) v.array() *= ConstVecMap(weight.data(), dim).array();
  }
}

float GeluTanh(float x) {
  // PyTorch's constants: kBeta = sqrt(2) * (2 / sqrt(pi)) * 0.5 = sqrt(2 / pi).
  constexpr float kBeta = static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5);
  constexpr float kKappa = 0.044715f;
  const float inner = kBeta * (x + kKappa * (x * x * x));
  return 0.5f * x * (1.0f + std::tanh(inner));
}

std::vector<float> RopeInverseFrequencies(const RopeParameters& rope, int head_dim) {
  const int pairs = head_dim / 2;
  int rotated = pairs;
  if (rope.rope_type == "proportional") {
    // Python: int(factor * head_dim // 2), a float floor division.
    rotated = static_cast<int>(std::floor(rope.partial_rotary_factor * head_dim / 2));
  }
  std::vector<float> inv_freq(pairs, 0.0f);
  const float base = static_cast<float>(rope.rope_theta);
  for (int j = 0; j < std::min(rotated, pairs); ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(head_dim);
    inv_freq[j] = 1.0f / std::pow(base, exponent);
  }
  return inv_freq;
}

void ApplyRope(std::span<float> x, int64_t heads, int head_dim, int64_t position,
               std::span<const float> inv_freq) {
  const int half = head_dim / 2;
  assert(static_cast<int64_t>(x.size()) == heads * head_dim);
  assert(static_cast<int>(inv_freq.size()) == half);
  const float pos = static_cast<float>(position);
  for (int j = 0; j < half; ++j) {
    const float angle = pos * inv_freq[j];
    const float c = std::cos(angle), s = std::sin(angle);
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x.data() + h * head_dim;
      const float x1 = v[j], x2 = v[j + half];
      // x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1).
      v[j] = x1 * c + (-x2) * s;
      v[j + half] = x2 * c + x1 * s;
    }
  }
}

void Attention(std::span<const float> q, int64_t tokens, int num_heads, int64_t first_position,
               int64_t window, const KvView& kv, std::span<float> out, ThreadPool* pool,
               std::span<const int64_t> last_key) {
  const int d = kv.head_dim;
  const int group = num_heads / kv.num_kv_heads;
  assert(static_cast<int64_t>(q.size()) == tokens * num_heads * d);
  assert(out.size() == q.size());
  assert(last_key.empty() || static_cast<int64_t>(last_key.size()) == tokens);
  ParallelFor(pool, tokens * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / num_heads;
      const int h = static_cast<int>(task % num_heads);
      const int64_t pos = first_position + t;
      const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      const int64_t hi = last_key.empty() ? pos : last_key[t];
      assert(hi >= pos);
      const int64_t n = hi - lo + 1;
      assert(n <= kv.capacity);
      const int64_t kv_offset = int64_t{h / group} * d;
      const int64_t stride = int64_t{kv.num_kv_heads} * d;
      const ConstVecMap qv(q.data() + task * d, d);
      scores.resize(n);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t slot = (lo + j) % kv.capacity;
        scores[j] = qv.dot(ConstVecMap(kv.k + slot * stride + kv_offset, d));
      }
      const float max = *std::max_element(scores.begin(), scores.end());
      float sum = 0;
      for (float& s : scores) sum += (s = std::exp(s - max));
      Eigen::Map<Eigen::VectorXf> o(out.data() + task * d, d);
      o.setZero();
      for (int64_t j = 0; j < n; ++j) {
        const int64_t slot = (lo + j) % kv.capacity;
        o += (scores[j] / sum) * ConstVecMap(kv.v + slot * stride + kv_offset, d);
      }
    }
  });
}

std::vector<ExpertChoice> RouteTopK(std::span<const float> logits,
                                    std::span<const float> per_expert_scale, int top_k) {
  const int n = static_cast<int>(logits.size());
  assert(per_expert_scale.size() == logits.size() && top_k >= 1 && top_k <= n);
  const float max = *std::max_element(logits.begin(), logits.end());
  std::vector<float> probs(n);
  float sum = 0;
  for (int e = 0; e < n; ++e) sum += (probs[e] = std::exp(logits[e] - max));
  for (float& p : probs) p /= sum;

  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
  order.resize(top_k);
  float top_sum = 0;
  for (int e : order) top_sum += probs[e];
  std::sort(order.begin(), order.end());
  std::vector<ExpertChoice> choices;
  for (int e : order) choices.push_back({e, probs[e] / top_sum * per_expert_scale[e]});
  return choices;
}

void SoftCap(std::span<float> x, float cap) {
  for (float& v : x) v = std::tanh(v / cap) * cap;
}

void Clamp(std::span<float> x, float lo, float hi) {
  for (float& v : x) {
    if (!std::isnan(v)) v = std::min(std::max(v, lo), hi);
  }
}

void ClippedLinear(std::span<const float> x, int64_t rows, int64_t in, std::span<const float> w,
                   int64_t out, const ClipBounds& bounds, std::span<float> y, ThreadPool* pool) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (bounds.input_min == -kInf && bounds.input_max == kInf) {
    Linear(x, rows, in, w, out, y, pool);
  } else {
    std::vector<float> clamped(x.begin(), x.end());
    Clamp(clamped, bounds.input_min, bounds.input_max);
    Linear(clamped, rows, in, w, out, y, pool);
  }
  Clamp(y, bounds.output_min, bounds.output_max);
}

void ApplyRope2d(std::span<float> x, int64_t heads, int head_dim, int64_t pos_x, int64_t pos_y,
                 std::span<const float> inv_freq) {
  assert(head_dim % 4 == 0 && static_cast<int64_t>(x.size()) == heads * head_dim);
  const int half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    ApplyRope(x.subspan(h * head_dim, half), 1, half, pos_x, inv_freq);
    ApplyRope(x.subspan(h * head_dim + half, half), 1, half, pos_y, inv_freq);
  }
}

void BidirectionalAttention(std::span<const float> q, std::span<const float> k,
                            std::span<const float> v, int64_t tokens, int num_heads,
                            int num_kv_heads, int head_dim, std::span<const int64_t> keys,
                            std::span<float> out, ThreadPool* pool) {
  const int d = head_dim;
  const int group = num_heads / num_kv_heads;
  const int64_t stride = int64_t{num_kv_heads} * d;
  assert(static_cast<int64_t>(q.size()) == tokens * num_heads * d);
  assert(k.size() == static_cast<size_t>(tokens * stride) && v.size() == k.size());
  assert(out.size() == q.size() && !keys.empty());
  ParallelFor(pool, tokens * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(keys.size());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t kv_offset = int64_t{static_cast<int>(task % num_heads) / group} * d;
      const ConstVecMap qv(q.data() + task * d, d);
      for (size_t j = 0; j < keys.size(); ++j) {
        scores[j] = qv.dot(ConstVecMap(k.data() + keys[j] * stride + kv_offset, d));
      }
      const float max = *std::max_element(scores.begin(), scores.end());
      float sum = 0;
      for (float& s : scores) sum += (s = std::exp(s - max));
      Eigen::Map<Eigen::VectorXf> o(out.data() + task * d, d);
      o.setZero();
      for (size_t j = 0; j < keys.size(); ++j) {
        o += (scores[j] / sum) * ConstVecMap(v.data() + keys[j] * stride + kv_offset, d);
      }
    }
  });
}

std::vector<int64_t> PoolWindows(std::span<const int32_t> positions, int kernel) {
  assert(positions.size() % 2 == 0 && kernel > 0);
  int64_t max_x = 0;
  for (size_t p = 0; p < positions.size(); p += 2) {
    max_x = std::max<int64_t>(max_x, std::max(positions[p], 0) + int64_t{1});
  }
  std::vector<int64_t> window(positions.size() / 2);
  for (size_t p = 0; p < window.size(); ++p) {
    const int64_t x = std::max(positions[2 * p], 0), y = std::max(positions[2 * p + 1], 0);
    window[p] = x / kernel + (max_x / kernel) * (y / kernel);
  }
  return window;
}

std::vector<float> AvgPoolWindows(std::span<const float> x, int64_t dim,
                                  std::span<const int64_t> window, int kernel, int64_t num_windows,
                                  float scale) {
  assert(static_cast<int64_t>(x.size()) == static_cast<int64_t>(window.size()) * dim);
  // HF: one_hot(window).float() / k^2, so the weight is a float32 quotient.
  const float weight = 1.0f / static_cast<float>(kernel * kernel);
  std::vector<float> sums(num_windows * dim, 0.0f);
  std::vector<char> used(num_windows, 0);
  for (size_t p = 0; p < window.size(); ++p) {
    const int64_t w = window[p];
    assert(w >= 0 && w < num_windows);
    used[w] = 1;
    for (int64_t i = 0; i < dim; ++i) sums[w * dim + i] += weight * x[p * dim + i];
  }
  std::vector<float> out;
  for (int64_t w = 0; w < num_windows; ++w) {
    if (!used[w]) continue;
    for (int64_t i = 0; i < dim; ++i) out.push_back(sums[w * dim + i] * scale);
  }
  return out;
}

}  // namespace gquant::gemma4::cpu
