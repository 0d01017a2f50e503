// Min-max (affine) quantization: ExecuTorch quantize.py's choose_qparams_affine
// + quantize_affine, spec formats.md §2.6 (a) (4-bit) and (d) (5/6/8-bit).
//
// Rows are independent. Each row goes through three loops over its groups,
// written so that GCC vectorizes them (no branches per element):
//   1. group extremes, read from the raw bf16/f32 bit patterns (below);
//   2. scale and zero of every group of the row;
//   3. codes, converting the source elements to float on the fly.
// The row (10 KB of bf16 for K = 5376) stays in L1 between loops 1 and 3, so
// bf16/f32 rows need no float scratch copy; F16 rows are converted to one
// first and take the f32 path. The kernel is compute-bound (a row slice that
// fits in L2 runs only ~10% faster than the whole 231 MB matrix), so the
// loops are shaped for instruction count: integer reductions, int16 codes.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gquant/thread_pool.h"
#include "quantize_internal.h"

namespace gquant::internal_quantize {
namespace {

// The formula's constants for one config (§2.6).
struct Constants {
  float qmin;     // asymmetric 4-bit [0, 15], symmetric 4-bit [-8, 7],
  float qmax;     // 5/6/8-bit [-2^(b-1), 2^(b-1) - 1]
  float divisor;  // qmax - qmin (asymmetric), (qmax - qmin) / 2 (symmetric)
  bool symmetric;
  int32_t offset;  // 8 for 4-bit symmetric: codes and zero are stored +8
};

Constants ConstantsOf(const QuantConfig& config) {
  Constants k;
  if (config.bits == 4) {
    k.qmin = config.symmetric ? -8 : 0;
    k.qmax = config.symmetric ? 7 : 15;
  } else {
    k.qmin = static_cast<float>(-(1 << (config.bits - 1)));
    k.qmax = static_cast<float>((1 << (config.bits - 1)) - 1);
  }
  // Python: float(quant_max - quant_min) [/ 2]; exact in float32.
  k.divisor = config.symmetric ? (k.qmax - k.qmin) / 2 : k.qmax - k.qmin;
  k.symmetric = config.symmetric;
  k.offset = config.bits == 4 && config.symmetric ? 8 : 0;
  return k;
}

// Group extremes without converting to float or comparing floats. As
// integers, the bit patterns of non-negative floats sort like the floats, so
//   max over signed patterns, starting at 0 (+0.0)         = max(max_g, 0),
// and negative patterns sort by magnitude as unsigned integers, so
//   max over unsigned patterns, starting at the sign bit (-0.0) = min(min_g, -0).
// -0 in place of +0 changes neither s nor z below. These integer max
// reductions vectorize; float min/max reductions do not without -ffast-math.
// A NaN or Inf ends up at or above the exponent mask in one of the two, which
// makes the finiteness check free.
template <typename Bits>
struct BitsTraits;

template <>
struct BitsTraits<uint16_t> {  // bf16
  static constexpr uint16_t kSign = 0x8000, kExponent = 0x7f80;
  static float ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
};

template <>
struct BitsTraits<uint32_t> {  // f32
  static constexpr uint32_t kSign = 0x80000000u, kExponent = 0x7f800000u;
  static float ToFloat(uint32_t b) { return std::bit_cast<float>(b); }
};

template <>
struct BitsTraits<float> {  // already float (SumSquares of errors)
  static float ToFloat(float v) { return v; }
};

// Per-thread buffers, one entry per group of a row.
template <typename Bits>
struct Scratch {
  explicit Scratch(int64_t cols, int64_t num_groups)
      : positive(num_groups),
        negative(num_groups),
        scale(num_groups),
        reciprocal(num_groups),
        zero(num_groups),
        aligned_row(cols),
        errors(cols) {}
  std::vector<Bits> positive;  // max(max_g, 0) as a bit pattern
  std::vector<Bits> negative;  // min(min_g, -0) as a bit pattern
  std::vector<float> scale;    // float32 s
  std::vector<float> reciprocal;
  std::vector<int32_t> zero;          // stored zero, offset included
  std::vector<uint32_t> aligned_row;  // an unaligned or F16 source row, as bf16/f32 bits
  std::vector<float> errors;          // error statistics: w - dequantized w
};

// sum v^2 in double over n bf16/f32 values (their squares are exact in
// double). The fixed lanes let GCC vectorize what would otherwise be a
// serial double reduction: 8 vector accumulators hide the add latency. GCC
// manages that in a small function, not inlined into the kernel.
template <typename Bits>
GQ_TARGET_CLONES __attribute__((noinline)) double SumSquares(const Bits* __restrict v, int64_t n) {
  constexpr int kLanes = 32;
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double x = BitsTraits<Bits>::ToFloat(v[i + j]);
      acc[j] += x * x;
    }
  }
  for (; i < n; ++i) {
    const double x = BitsTraits<Bits>::ToFloat(v[i]);
    acc[0] += x * x;
  }
  double sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += acc[j];
  return sum;
}

struct RowOut {
  int8_t* codes;
  float* scale;
  float* zero;
  double* reference_sq;  // null unless error stats are on
  double* error_sq;
};

// Quantizes one row; returns false (and writes nothing) if it holds a NaN/Inf.
// kGroup > 0 fixes the group size at compile time (fully unrolled groups).
template <typename Bits, int kGroup, bool kStats>
GQ_ALWAYS_INLINE bool QuantizeRow(const Bits* __restrict x, int64_t group, int64_t num_groups,
                                  const Constants& k, Scratch<Bits>& s, const RowOut& out) {
  using T = BitsTraits<Bits>;
  using Signed = std::make_signed_t<Bits>;
  const int64_t n = kGroup > 0 ? kGroup : group;

  // 1. Extremes (see BitsTraits). Symmetric configs need only max |x|: one
  // unsigned max over the patterns without their sign bit.
  Bits* __restrict positive = s.positive.data();
  Bits* __restrict negative = s.negative.data();
  Bits bad = 0;
  if (k.symmetric) {
    for (int64_t g = 0; g < num_groups; ++g) {
      const Bits* __restrict xg = x + g * n;
      Bits magnitude = 0;
      for (int64_t i = 0; i < n; ++i) {
        magnitude = std::max(magnitude, static_cast<Bits>(xg[i] & ~T::kSign));
      }
      positive[g] = magnitude;
    }
    for (int64_t g = 0; g < num_groups; ++g) bad |= positive[g] >= T::kExponent;
  } else {
    for (int64_t g = 0; g < num_groups; ++g) {
      const Bits* __restrict xg = x + g * n;
      Signed hi = 0;
      Bits lo = T::kSign;
      for (int64_t i = 0; i < n; ++i) {
        hi = std::max(hi, static_cast<Signed>(xg[i]));
        lo = std::max(lo, xg[i]);
      }
      positive[g] = static_cast<Bits>(hi);
      negative[g] = lo;
    }
    for (int64_t g = 0; g < num_groups; ++g) {
      bad |= (positive[g] >= T::kExponent) | (negative[g] >= (T::kSign | T::kExponent));
    }
  }
  if (bad) return false;

  // 2. Scale and zero, §2.6 (a)/(d), float32 in the reference's order:
  //   asymmetric: s = max((mx - mn) / (qmax - qmin), eps),
  //               z = clamp(qmin - round(mn / s), qmin, qmax);
  //   symmetric:  s = max(max(-mn, mx) / ((qmax - qmin) / 2), eps), z = 0;
  // eps = finfo(fp32).smallest_normal (FLT_MIN), round = half to even. z is
  // computed with the float32 s, which is then stored as bf16.
  float* __restrict scale = s.scale.data();
  int32_t* __restrict zero = s.zero.data();
  const float qmin = k.qmin, qmax = k.qmax, divisor = k.divisor;
  if (k.symmetric) {
    for (int64_t g = 0; g < num_groups; ++g) {
      const float a = T::ToFloat(positive[g]);  // max(-mn, mx) = max |x|
      scale[g] = std::max(a / divisor, FLT_MIN);
      zero[g] = k.offset;
    }
  } else {
    for (int64_t g = 0; g < num_groups; ++g) {
      const float mn = T::ToFloat(negative[g]), mx = T::ToFloat(positive[g]);
      const float sg = std::max((mx - mn) / divisor, FLT_MIN);
      const float z = std::min(std::max(qmin - std::nearbyint(mn / sg), qmin), qmax);
      scale[g] = sg;
      zero[g] = static_cast<int32_t>(z);
    }
  }
  // quantize_affine multiplies by 1.0 / scale with scale already bf16: the
  // reciprocal of a bf16 tensor is itself bf16 (dtype promotion, §2.6
  // [inferred]), so r = bf16(1 / bf16(s)) and x * r is a float32 product.
  // (A separate loop: merged with the one above, GCC duplicates the division
  // into a branch and gives up on vectorizing.)
  float* __restrict reciprocal = s.reciprocal.data();
  for (int64_t g = 0; g < num_groups; ++g) {
    const float sb = RoundToBFloat16(scale[g]);
    out.scale[g] = sb;
    out.zero[g] = static_cast<float>(zero[g]);
    reciprocal[g] = RoundToBFloat16(1.0f / sb);
  }

  // 3. Codes: q = clamp(round(x * r) + z, qmin, qmax) (+8 for 4-bit
  // symmetric, folded into z and the bounds). |x * r| <= (qmax - qmin) * 1.01
  // because s >= the group's range / divisor, so round(x * r) + z is exact in
  // int16; integer adds and clamps on 16-bit lanes cost less than on floats.
  // With statistics on, the same loop records w - dequant(q) in float32, the
  // dequantized value formed as Dequantize does.
  const int16_t code_min = static_cast<int16_t>(qmin + k.offset);
  const int16_t code_max = static_cast<int16_t>(qmax + k.offset);
  float* __restrict errors = s.errors.data();
  for (int64_t g = 0; g < num_groups; ++g) {
    const Bits* __restrict xg = x + g * n;
    int8_t* __restrict q = out.codes + g * n;
    const float r = reciprocal[g];
    const int16_t z = static_cast<int16_t>(zero[g]);
    const float sb = out.scale[g], zf = out.zero[g];
    for (int64_t i = 0; i < n; ++i) {
      const float w = T::ToFloat(xg[i]);
      int16_t v = static_cast<int16_t>(std::nearbyint(w * r));
      v = std::min(std::max(static_cast<int16_t>(v + z), code_min), code_max);
      q[i] = static_cast<int8_t>(v);
      if constexpr (kStats) errors[g * n + i] = w - (static_cast<float>(v) - zf) * sb;
    }
  }
  if constexpr (kStats) {
    *out.reference_sq = SumSquares(x, n * num_groups);
    *out.error_sq = SumSquares(errors, n * num_groups);
  }
  return true;
}

template <typename Bits, bool kStats>
GQ_ALWAYS_INLINE bool QuantizeRowAnyGroup(const Bits* x, int64_t group, int64_t num_groups,
                                          const Constants& k, Scratch<Bits>& s, const RowOut& out) {
  // Compile-time sizes for the Gemma recipes' group sizes; others (per-row
  // included) loop with a runtime trip count.
  switch (group) {
    case 32:
      return QuantizeRow<Bits, 32, kStats>(x, group, num_groups, k, s, out);
    case 64:
      return QuantizeRow<Bits, 64, kStats>(x, group, num_groups, k, s, out);
    default:
      return QuantizeRow<Bits, 0, kStats>(x, group, num_groups, k, s, out);
  }
}

// Rows [begin, end) of one source dtype. Returns the first row holding a
// NaN/Inf, or `end`.
template <typename Bits>
GQ_ALWAYS_INLINE int64_t QuantizeRowsOf(const QuantJob& job, const Constants& k, RowErrorSums& sums,
                                        int64_t begin, int64_t end) {
  Scratch<Bits> scratch(job.cols, job.num_groups);
  for (int64_t r = begin; r < end; ++r) {
    const std::byte* row = job.Row(r);
    const Bits* x = reinterpret_cast<const Bits*>(row);
    if (job.dtype == DType::kF16) {
      ConvertRow(job.dtype, row, job.cols, reinterpret_cast<float*>(scratch.aligned_row.data()));
      x = reinterpret_cast<const Bits*>(scratch.aligned_row.data());
    } else if (reinterpret_cast<uintptr_t>(row) % alignof(Bits) != 0) {
      std::memcpy(scratch.aligned_row.data(), row, job.cols * sizeof(Bits));
      x = reinterpret_cast<const Bits*>(scratch.aligned_row.data());
    }
    const int64_t g0 = r * job.num_groups;
    const RowOut out{job.out.codes.data() + r * job.cols, job.out.scale.data() + g0,
                     job.out.zero_point.data() + g0,
                     sums.enabled() ? &sums.reference_sq[r] : nullptr,
                     sums.enabled() ? &sums.error_sq[r] : nullptr};
    const bool ok =
        sums.enabled()
            ? QuantizeRowAnyGroup<Bits, true>(x, job.group, job.num_groups, k, scratch, out)
            : QuantizeRowAnyGroup<Bits, false>(x, job.group, job.num_groups, k, scratch, out);
    if (!ok) return r;
  }
  return end;
}

// The multiversioned entry: everything above is inlined into each clone.
GQ_TARGET_CLONES int64_t QuantizeRows(const QuantJob& job, const Constants& k, RowErrorSums& sums,
                                      int64_t begin, int64_t end) {
  if (job.dtype == DType::kBF16) return QuantizeRowsOf<uint16_t>(job, k, sums, begin, end);
  return QuantizeRowsOf<uint32_t>(job, k, sums, begin, end);  // F32, or F16 via float
}

// Rows per ParallelFor range: enough elements to amortize the scheduling.
constexpr int64_t kMinElementsPerRange = 1 << 16;

}  // namespace

absl::Status QuantizeMinMax(const QuantJob& job) {
  const Constants k = ConstantsOf(job.config);
  RowErrorSums sums(job);
  std::atomic<int64_t> first_bad_row{job.rows};
  ParallelFor(job.options.pool, job.rows, std::max<int64_t>(1, kMinElementsPerRange / job.cols),
              [&](int64_t begin, int64_t end) {
                const int64_t bad = QuantizeRows(job, k, sums, begin, end);
                int64_t seen = first_bad_row.load();
                while (bad < end && bad < seen && !first_bad_row.compare_exchange_weak(seen, bad)) {
                }
              });
  if (first_bad_row.load() < job.rows) return NonFiniteError(job, first_bad_row.load());
  sums.AddTo(job.options.error_stats);
  return absl::OkStatus();
}

}  // namespace gquant::internal_quantize
