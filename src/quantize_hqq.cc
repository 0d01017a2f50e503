// HQQ (half-quadratic quantization), the CPU / float32 path:
//   asymmetric 4-bit: torchao _choose_qparams_and_quantize_affine_hqq with
//     optimize_weights_proximal_legacy, spec formats.md §3.1 and §3.2;
//   symmetric (any bits): torchao _choose_qparams_and_quantize_scale_only_hqq,
//     spec §3.3.
// Groups are runs of `group` elements along a row (torchao axis=1, i.e.
// W.reshape(-1, gs)). Every iteration is one ParallelFor over rows; the
// solver's global reductions (the mean error of §3.1, the max relative change
// of §3.3) are formed from per-row partials combined in row order, so results
// do not depend on the thread count. Group sums are accumulated in double
// (torch sums in float32 in an order we cannot reproduce anyway).
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "gquant/thread_pool.h"
#include "quantize_internal.h"

namespace gquant::internal_quantize {
namespace {

// Rows per ParallelFor range; each HQQ row costs ~100x a min-max row.
constexpr int64_t kMinElementsPerRange = 1 << 12;

int64_t Grain(const QuantJob& job) { return std::max<int64_t>(1, kMinElementsPerRange / job.cols); }

// Runs fn(row, float32 row values) over all rows in parallel. Rows are
// converted from the source dtype on every pass: cheaper than holding a
// float32 copy of the whole matrix.
template <typename Fn>
void ForEachRow(const QuantJob& job, const Fn& fn) {
  ParallelFor(job.options.pool, job.rows, Grain(job), [&](int64_t begin, int64_t end) {
    std::vector<float> w(job.cols);
    for (int64_t r = begin; r < end; ++r) {
      ConvertRow(job.dtype, job.Row(r), job.cols, w.data());
      fn(r, w.data());
    }
  });
}

// Checks every element; returns the first non-finite row, or job.rows.
int64_t FirstNonFiniteRow(const QuantJob& job) {
  std::atomic<int64_t> first{job.rows};
  ForEachRow(job, [&](int64_t r, const float* w) {
    bool bad = false;
    for (int64_t i = 0; i < job.cols; ++i) bad |= !std::isfinite(w[i]);
    int64_t seen = first.load();
    while (bad && r < seen && !first.compare_exchange_weak(seen, r)) {
    }
  });
  return first.load();
}

// ---------------------------------------------------------------------------
// Asymmetric 4-bit HQQ, §3.1. State per group: s_inv (the inverse scale HQQ
// optimizes with; fixed) and z (the zero; optimized).

constexpr float kQmax = 15;  // 2^4 - 1; qmin = 0

// One solver pass over a row group by group, §3.1:
//   W_q = clamp(round(W * s_inv + z), 0, qmax)
//   W_r = (W_q - z) / s_inv
//   W_e = shrink_p(W - W_r, beta) = sign(x) relu(|x| - (1/beta) |x|^(p-1))
//   z'  = mean_group(W_q - (W - W_e) * s_inv)
// returning sum |W - W_r| (the error of the incoming z). shrink_p is 0
// whenever |x| < skip_below, a bound safely under inv_beta^(1/(2-p)); those
// elements skip the pow call, the result is bit-identical.
struct ProximalStep {
  float inv_beta;   // float32(1 / beta): Python float times a float32 tensor
  float p_minus_1;  // lp_norm - 1
  float skip_below;
};

GQ_TARGET_CLONES double ProximalRow(const float* w, int64_t cols, int64_t group, const float* s_inv,
                                    const float* zero, float* next_zero, const ProximalStep& step) {
  double abs_error = 0;
  for (int64_t g = 0; g * group < cols; ++g) {
    const float s = s_inv[g], z = zero[g];
    const float* wg = w + g * group;
    double sum = 0;
    for (int64_t i = 0; i < group; ++i) {
      const float x = wg[i];
      const float wq = std::min(std::max(std::nearbyint(x * s + z), 0.0f), kQmax);
      const float d = x - (wq - z) / s;
      const float a = std::fabs(d);
      abs_error += a;
      float we = 0;
      if (a >= step.skip_below) {
        const float t = std::max(a - step.inv_beta * std::pow(a, step.p_minus_1), 0.0f);
        we = d > 0 ? t : -t;
      }
      sum += wq - (x - we) * s;
    }
    next_zero[g] = static_cast<float>(sum / static_cast<double>(group));
  }
  return abs_error;
}

// The mean |W - W_r| over the whole call for zeros `zero`, and z' per group.
double ProximalPass(const QuantJob& job, const std::vector<float>& s_inv,
                    const std::vector<float>& zero, std::vector<float>& next_zero,
                    const ProximalStep& step) {
  std::vector<double> row_error(job.rows);
  ForEachRow(job, [&](int64_t r, const float* w) {
    const int64_t g0 = r * job.num_groups;
    row_error[r] = ProximalRow(w, job.cols, job.group, &s_inv[g0], &zero[g0], &next_zero[g0], step);
  });
  double total = 0;
  for (double e : row_error) total += e;
  return total / (static_cast<double>(job.rows) * static_cast<double>(job.cols));
}

// The codes and the stored bf16 scale/zero.
GQ_TARGET_CLONES void WriteAsymmetricRow(const float* w, int64_t cols, int64_t group,
                                         const float* s_inv, const float* zero, int8_t* codes,
                                         float* scale_out, float* zero_out) {
  for (int64_t g = 0; g * group < cols; ++g) {
    const float s = s_inv[g], z = zero[g];
    // Final W_q uses the float32 s_inv and z; torchao then returns
    // scale = 1 / s_inv, and ExecuTorch casts scale and zero to bf16 (§2.6 (b)).
    scale_out[g] = RoundToBFloat16(1.0f / s);
    zero_out[g] = RoundToBFloat16(z);
    for (int64_t i = g * group; i < (g + 1) * group; ++i) {
      codes[i] = static_cast<int8_t>(std::min(std::max(std::nearbyint(w[i] * s + z), 0.0f), kQmax));
    }
  }
}

absl::Status QuantizeAsymmetric(const QuantJob& job) {
  const HqqOptions& opt = job.options.hqq;
  const int64_t total_groups = job.rows * job.num_groups;
  std::vector<float> s_inv(total_groups), zero(total_groups), next_zero(total_groups);

  // Initialization, §3.1/§3.2: s_inv = qmax / (max - min) clamped to 2e4, and
  // z = round(-min * s_inv) (rounded for 4-bit). torchao has no guard for
  // max == min (15/0 = inf, then clamped to 2e4); we use hqq-lib's rule
  // s_inv = 1 when |max - min| <= 1e-4 so that no group divides by zero. It
  // changes groups whose range is at most 1e-4 only.
  ForEachRow(job, [&](int64_t r, const float* w) {
    for (int64_t g = 0; g < job.num_groups; ++g) {
      const float* wg = w + g * job.group;
      float mn = wg[0], mx = wg[0];
      for (int64_t i = 1; i < job.group; ++i) {
        mn = std::min(mn, wg[i]);
        mx = std::max(mx, wg[i]);
      }
      const float range = mx - mn;
      float s = std::fabs(range) <= 1e-4f ? 1.0f : kQmax / range;
      s = std::min(s, 2e4f);
      s_inv[r * job.num_groups + g] = s;
      zero[r * job.num_groups + g] = std::nearbyint(-mn * s);
    }
  });

  // The proximal iterations. The early stop compares the error of the
  // iterate made with the previous z after z has been overwritten, so the
  // reference returns z one update past the best measured one (§3.1);
  // keep_best_iterate returns the measured-best z instead, or the final one
  // if that is at least as good.
  const double p = opt.lp_norm;
  ProximalStep step{0, opt.lp_norm - 1.0f, 0};
  double beta = opt.beta;
  double best_error = 1e4;  // torchao's initial best_error
  double kept_error = std::numeric_limits<double>::infinity();
  std::vector<float> kept_zero;
  for (int it = 0; it < opt.iterations; ++it) {
    step.inv_beta = static_cast<float>(1.0 / beta);
    // shrink_p(x) = 0 exactly when |x|^(2-p) <= 1/beta (0 < p < 2); the 1e-3
    // margin dwarfs the float32 rounding of the terms.
    step.skip_below =
        p > 0 && p < 2 ? static_cast<float>(std::pow(step.inv_beta, 1 / (2 - p)) * (1 - 1e-3)) : 0;
    const double error = ProximalPass(job, s_inv, zero, next_zero, step);
    beta *= opt.kappa;
    zero.swap(next_zero);  // next_zero now holds the z `error` was measured with
    if (opt.keep_best_iterate && error < kept_error) {
      kept_error = error;
      kept_zero = next_zero;
    }
    if (opt.early_stop) {
      if (error < best_error) {
        best_error = error;
      } else {
        break;
      }
    }
  }
  if (opt.keep_best_iterate && !kept_zero.empty()) {
    const double final_error = ProximalPass(job, s_inv, zero, next_zero, step);
    if (kept_error < final_error) zero.swap(kept_zero);
  }

  RowErrorSums sums(job);
  ForEachRow(job, [&](int64_t r, const float* w) {
    const int64_t g0 = r * job.num_groups;
    int8_t* codes = job.out.codes.data() + r * job.cols;
    WriteAsymmetricRow(w, job.cols, job.group, &s_inv[g0], &zero[g0], codes,
                       job.out.scale.data() + g0, job.out.zero_point.data() + g0);
    if (sums.enabled()) sums.AddRow(job, r, w, codes);
  });
  sums.AddTo(job.options.error_stats);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Scale-only (symmetric) HQQ, §3.3: least-squares refits of the scale, zero 0.

constexpr float kScaleEps = FLT_EPSILON;  // finfo(fp32).eps
constexpr float kScaleTolerance = 1e-5f;
constexpr int kScaleIterations = 20;

// One refit of every group of a row, §3.3:
//   Q  = clamp(round(W / s), qmin, qmax)
//   s' = |max(sum(W Q) / sum(Q Q), eps)|   (s' = s when sum(Q Q) = 0)
// returning the row's max |s' - s| / max(s, eps).
GQ_TARGET_CLONES float RefitScaleRow(const float* w, int64_t cols, int64_t group, float qmin,
                                     float qmax, const float* scale, float* next_scale) {
  float max_change = 0;
  for (int64_t g = 0; g * group < cols; ++g) {
    const float s = scale[g];
    const float* wg = w + g * group;
    double wq = 0, qq = 0;
    for (int64_t i = 0; i < group; ++i) {
      const float q = std::min(std::max(std::nearbyint(wg[i] / s), qmin), qmax);
      wq += static_cast<double>(wg[i]) * q;
      qq += static_cast<double>(q) * q;
    }
    float next = qq > 0 ? static_cast<float>(wq / qq) : s;
    next = std::fabs(std::max(next, kScaleEps));
    max_change = std::max(max_change, std::fabs(next - s) / std::max(s, kScaleEps));
    next_scale[g] = next;
  }
  return max_change;
}

GQ_TARGET_CLONES void WriteScaleOnlyRow(const float* w, int64_t cols, int64_t group, float qmin,
                                        float qmax, float offset, const float* scale, int8_t* codes,
                                        float* scale_out, float* zero_out) {
  for (int64_t g = 0; g * group < cols; ++g) {
    const float s = scale[g];
    // Codes from the float32 s (as torchao returns them); the scale is then
    // stored as bf16 like every other scale.
    scale_out[g] = RoundToBFloat16(s);
    zero_out[g] = offset;
    for (int64_t i = g * group; i < (g + 1) * group; ++i) {
      const float q = std::min(std::max(std::nearbyint(w[i] / s), qmin), qmax);
      codes[i] = static_cast<int8_t>(q + offset);
    }
  }
}

absl::Status QuantizeScaleOnly(const QuantJob& job) {
  const int bits = job.config.bits;
  const float qmin = static_cast<float>(-(1 << (bits - 1)));
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  const float qabs = std::max(std::fabs(qmin), std::fabs(qmax));
  // 4-bit codes are stored +8 with zero_point 8 (ExecuTorch Int4Tensor
  // convention, §2.6 (c)); 5/6/8-bit keep zero 0.
  const float offset = bits == 4 ? 8 : 0;

  const int64_t total_groups = job.rows * job.num_groups;
  std::vector<float> scale(total_groups), next_scale(total_groups);
  // s = max(amax(|W|) / qabs, eps).
  ForEachRow(job, [&](int64_t r, const float* w) {
    for (int64_t g = 0; g < job.num_groups; ++g) {
      float amax = 0;
      for (int64_t i = g * job.group; i < (g + 1) * job.group; ++i) {
        amax = std::max(amax, std::fabs(w[i]));
      }
      scale[r * job.num_groups + g] = std::max(amax / qabs, kScaleEps);
    }
  });
  // The stop test is global: the largest relative change over all groups. As
  // in §3.3 it is checked before s = s', so a converged step is not applied.
  std::vector<float> row_change(job.rows);
  for (int it = 0; it < kScaleIterations; ++it) {
    ForEachRow(job, [&](int64_t r, const float* w) {
      const int64_t g0 = r * job.num_groups;
      row_change[r] =
          RefitScaleRow(w, job.cols, job.group, qmin, qmax, &scale[g0], &next_scale[g0]);
    });
    if (*std::max_element(row_change.begin(), row_change.end()) < kScaleTolerance) break;
    scale.swap(next_scale);
  }

  RowErrorSums sums(job);
  ForEachRow(job, [&](int64_t r, const float* w) {
    const int64_t g0 = r * job.num_groups;
    int8_t* codes = job.out.codes.data() + r * job.cols;
    WriteScaleOnlyRow(w, job.cols, job.group, qmin, qmax, offset, &scale[g0], codes,
                      job.out.scale.data() + g0, job.out.zero_point.data() + g0);
    if (sums.enabled()) sums.AddRow(job, r, w, codes);
  });
  sums.AddTo(job.options.error_stats);
  return absl::OkStatus();
}

}  // namespace

absl::Status QuantizeHqq(const QuantJob& job) {
  if (const int64_t bad = FirstNonFiniteRow(job); bad < job.rows) return NonFiniteError(job, bad);
  return job.config.symmetric ? QuantizeScaleOnly(job) : QuantizeAsymmetric(job);
}

}  // namespace gquant::internal_quantize
