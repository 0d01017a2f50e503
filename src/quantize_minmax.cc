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
// BF16 int4 asymmetric gs32 rows (the Gemma recipes' bulk) take a
// hand-written AVX2 kernel instead on CPUs that have AVX2.
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

#if GQ_HAVE_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace gquant::internal_quantize {
namespace {

// The formula's constants for one config (§2.6).
struct Constants : MinMaxConstants {
  bool symmetric;
};

Constants ConstantsOf(const QuantConfig& config) {
  return {MinMaxConstantsOf(config), config.symmetric};
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

#if GQ_HAVE_AVX2_KERNELS
// Hand-written AVX2 form of QuantizeRow<uint16_t, 32, false> for 4-bit
// asymmetric configs (the Gemma recipes' int4 gs32 from bf16), bit-identical
// to it and about 1.6-2x as fast on the 21504 x 5376 bench tensor. Eight
// groups are reduced together by one transposing tree whose result is already
// the eight groups' extremes in one vector, the layout the (vector) scale and
// zero formulas need, and the codes loop needs no per-element permutes.

// Reduces v[j] (16 lanes each) to lane j of the result, for j < 8: three
// unpack levels interleave the vectors while halving the lanes, then the two
// 128-bit halves are combined.
template <typename Max>
__attribute__((target("avx2"))) GQ_ALWAYS_INLINE __m128i ReduceEight(const __m256i* v, Max max) {
  __m256i t[4], u[2];
  for (int i = 0; i < 4; ++i) {
    t[i] = max(_mm256_unpacklo_epi16(v[2 * i], v[2 * i + 1]),
               _mm256_unpackhi_epi16(v[2 * i], v[2 * i + 1]));
  }
  for (int i = 0; i < 2; ++i) {
    u[i] = max(_mm256_unpacklo_epi32(t[2 * i], t[2 * i + 1]),
               _mm256_unpackhi_epi32(t[2 * i], t[2 * i + 1]));
  }
  const __m256i w = max(_mm256_unpacklo_epi64(u[0], u[1]), _mm256_unpackhi_epi64(u[0], u[1]));
  return _mm256_castsi256_si128(
      max(w, _mm256_permute2x128_si256(w, w, 0x01)));  // both halves hold the result
}

// The reductions' operations (named types: a lambda would not inherit the
// target attribute).
struct MaxSigned {
  __attribute__((target("avx2"))) __m256i operator()(__m256i a, __m256i b) const {
    return _mm256_max_epi16(a, b);
  }
};
struct MaxUnsigned {
  __attribute__((target("avx2"))) __m256i operator()(__m256i a, __m256i b) const {
    return _mm256_max_epu16(a, b);
  }
};

// float -> nearest bf16 -> float on 8 lanes, as RoundToBFloat16.
__attribute__((target("avx2"))) GQ_ALWAYS_INLINE __m256 RoundToBFloat16x8(__m256 f) {
  __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}

// round(x * r) of 8 bf16 patterns already shifted to float bits.
__attribute__((target("avx2"))) GQ_ALWAYS_INLINE __m256i Code32(__m256 r, __m256i bits) {
  return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(bits), r));
}

__attribute__((target("avx2"), noinline)) bool QuantizeRowBf16Gs32Avx2(const uint16_t* x,
                                                                       int64_t num_groups,
                                                                       const Constants& k,
                                                                       Scratch<uint16_t>& s,
                                                                       const RowOut& out) {
  constexpr int kGroup = 32;
  float* __restrict scale = s.scale.data();
  float* __restrict reciprocal = s.reciprocal.data();
  int32_t* __restrict zero = s.zero.data();

  // 1+2. Extremes, scale and zero of eight groups at a time (see BitsTraits
  // and QuantizeRow for the formulas; max_ps/min_ps equal std::max/min here
  // because no lane is NaN once the row is known finite).
  const __m256 divisor = _mm256_set1_ps(k.divisor), qmin = _mm256_set1_ps(k.qmin),
               qmax = _mm256_set1_ps(k.qmax), eps = _mm256_set1_ps(FLT_MIN),
               one = _mm256_set1_ps(1.0f);
  __m128i bad = _mm_setzero_si128();
  for (int64_t b = 0; b < num_groups; b += 8) {
    const int64_t count = std::min<int64_t>(8, num_groups - b);
    const uint16_t* src = x + b * kGroup;
    alignas(32) uint16_t padded[8 * kGroup];
    if (count < 8) {  // zero groups are finite and their results unused
      std::memset(padded, 0, sizeof(padded));
      std::memcpy(padded, src, count * kGroup * sizeof(uint16_t));
      src = padded;
    }
    __m256i hi[8], lo[8];
    for (int j = 0; j < 8; ++j) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j * kGroup));
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j * kGroup + 16));
      hi[j] = _mm256_max_epi16(a, c);
      lo[j] = _mm256_max_epu16(a, c);
    }
    const __m128i hi8 = _mm_max_epi16(ReduceEight(hi, MaxSigned()), _mm_setzero_si128());
    const __m128i lo8 =
        _mm_max_epu16(ReduceEight(lo, MaxUnsigned()), _mm_set1_epi16(static_cast<int16_t>(0x8000)));
    // hi8 >= 0x7f80 (signed) or lo8 >= 0xff80 (unsigned; lo8 >= 0x8000, so
    // as signed lanes that is lo8 > -129).
    bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmpgt_epi16(hi8, _mm_set1_epi16(0x7f7f)),
                                         _mm_cmpgt_epi16(lo8, _mm_set1_epi16(-129))));
    const __m256 mx = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(hi8), 16));
    const __m256 mn = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(lo8), 16));
    const __m256 sg = _mm256_max_ps(_mm256_div_ps(_mm256_sub_ps(mx, mn), divisor), eps);
    const __m256 rounded =
        _mm256_round_ps(_mm256_div_ps(mn, sg), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 z = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(qmin, rounded), qmin), qmax);
    const __m256 sb = RoundToBFloat16x8(sg);
    const __m256 r = RoundToBFloat16x8(_mm256_div_ps(one, sb));
    alignas(32) float sb_lanes[8], r_lanes[8];
    alignas(32) int32_t z_lanes[8];
    _mm256_store_ps(sb_lanes, sb);
    _mm256_store_ps(r_lanes, r);
    _mm256_store_si256(reinterpret_cast<__m256i*>(z_lanes), _mm256_cvttps_epi32(z));
    std::memcpy(scale + b, sb_lanes, count * sizeof(float));
    std::memcpy(reciprocal + b, r_lanes, count * sizeof(float));
    std::memcpy(zero + b, z_lanes, count * sizeof(int32_t));
  }
  if (!_mm_testz_si128(bad, bad)) return false;
  for (int64_t g = 0; g < num_groups; ++g) {
    out.scale[g] = scale[g];
    out.zero[g] = static_cast<float>(zero[g]);
  }

  // 3. Codes. Interleaving zeros below each bf16 (unpack) gives its float
  // bits, and packs undoes the unpacks' in-lane order, so no permutes are
  // needed until the final int8 pack. cvtps_epi32 rounds in the current
  // rounding mode, as std::nearbyint does. |round(x * r)| <= 16 and z is in
  // [0, 15], so adding z and clamping in int8 lanes is exact.
  const __m256i code_min = _mm256_set1_epi8(static_cast<int8_t>(k.qmin));
  const __m256i code_max = _mm256_set1_epi8(static_cast<int8_t>(k.qmax));
  const __m256i zeros = _mm256_setzero_si256();
  for (int64_t g = 0; g < num_groups; ++g) {
    const uint16_t* xg = x + g * kGroup;
    const __m256 r = _mm256_set1_ps(reciprocal[g]);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + 16));
    const __m256i qa = _mm256_packs_epi32(Code32(r, _mm256_unpacklo_epi16(zeros, a)),
                                          Code32(r, _mm256_unpackhi_epi16(zeros, a)));
    const __m256i qc = _mm256_packs_epi32(Code32(r, _mm256_unpacklo_epi16(zeros, c)),
                                          Code32(r, _mm256_unpackhi_epi16(zeros, c)));
    __m256i q = _mm256_permute4x64_epi64(_mm256_packs_epi16(qa, qc), 0xd8);
    q = _mm256_add_epi8(q, _mm256_set1_epi8(static_cast<int8_t>(zero[g])));
    q = _mm256_min_epi8(_mm256_max_epi8(q, code_min), code_max);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.codes + g * kGroup), q);
  }
  return true;
}
#endif  // GQ_HAVE_AVX2_KERNELS

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
#if GQ_HAVE_AVX2_KERNELS
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  const bool avx2_row = std::is_same_v<Bits, uint16_t> && has_avx2 && job.config.bits == 4 &&
                        !job.config.symmetric && job.group == 32 && !sums.enabled();
#endif
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
#if GQ_HAVE_AVX2_KERNELS
    if constexpr (std::is_same_v<Bits, uint16_t>) {
      if (avx2_row) {
        if (!QuantizeRowBf16Gs32Avx2(x, job.num_groups, k, scratch, out)) return r;
        continue;
      }
    }
#endif
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

namespace gquant {

MinMaxConstants MinMaxConstantsOf(const QuantConfig& config) {
  MinMaxConstants k;
  if (config.bits == 4) {
    k.qmin = config.symmetric ? -8 : 0;
    k.qmax = config.symmetric ? 7 : 15;
  } else {
    k.qmin = static_cast<float>(-(1 << (config.bits - 1)));
    k.qmax = static_cast<float>((1 << (config.bits - 1)) - 1);
  }
  // Python: float(quant_max - quant_min) [/ 2]; exact in float32.
  k.divisor = config.symmetric ? (k.qmax - k.qmin) / 2 : k.qmax - k.qmin;
  k.offset = config.bits == 4 && config.symmetric ? 8 : 0;
  return k;
}

}  // namespace gquant
