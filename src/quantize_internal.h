// Shared pieces of the quantizers (quantize.cc, quantize_minmax.cc,
// quantize_hqq.cc). Not installed.
#ifndef GQUANT_SRC_QUANTIZE_INTERNAL_H_
#define GQUANT_SRC_QUANTIZE_INTERNAL_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "gquant/dtype.h"
#include "gquant/quantize.h"

// The hot loops depend on IEEE semantics the reference has (no reassociation,
// round-half-even in the default rounding mode).
#if defined(__FAST_MATH__)
#error "gquant's quantizers must not be built with -ffast-math"
#endif

// Hot kernels are compiled for several x86-64 levels and picked at load time
// (GCC function multiversioning): the baseline x86-64 has no vector
// round-to-integer (SSE4.1 roundps), so std::nearbyint would be a libm call
// per element. No level with FMA is listed: GCC would fuse HQQ's
// W * s_inv + z, which then rounds differently from the reference.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define GQ_TARGET_CLONES __attribute__((target_clones("avx2", "arch=x86-64-v2", "default")))
// Hand-written kernels for one level, taken only where the CPU has it.
#define GQ_HAVE_AVX2_KERNELS 1
#else
#define GQ_HAVE_AVX2_KERNELS 0
#define GQ_TARGET_CLONES
#endif

#if defined(__GNUC__)
#define GQ_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define GQ_ALWAYS_INLINE inline
#endif

namespace gquant {
namespace internal_quantize {

// One Quantize call, validated.
struct QuantJob {
  QuantConfig config;
  DType dtype;              // F32, F16 or BF16
  const std::byte* weight;  // rows * cols elements of dtype
  int64_t rows;
  int64_t cols;
  int64_t group;       // resolved group size; divides cols
  int64_t num_groups;  // cols / group
  QuantizedSpans out;
  QuantizeOptions options;

  const std::byte* Row(int64_t r) const { return weight + r * cols * DTypeSize(dtype); }
};

absl::Status QuantizeMinMax(const QuantJob& job);
absl::Status QuantizeHqq(const QuantJob& job);

// float -> nearest bf16 (ties to even) -> float, for finite or infinite
// values (not NaN). Same result as BFloat16ToFloat(FloatToBFloat16(f)), but
// inline integer arithmetic so loops over it vectorize.
GQ_ALWAYS_INLINE float RoundToBFloat16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::bit_cast<float>(u & 0xffff0000u);
}

// Converts n elements of an F32, F16 or BF16 row (any alignment) to float.
void ConvertRow(DType dtype, const std::byte* src, int64_t n, float* dst);

// The InvalidArgument error for the first NaN/Inf of row `row` (which must
// hold one): "weight element [row, col]: expected a finite value, but got nan".
absl::Status NonFiniteError(const QuantJob& job, int64_t row);

// Per-row partial sums for ErrorStats. Rows are summed in order at the end, so
// the totals do not depend on how rows were split over threads.
struct RowErrorSums {
  std::vector<double> reference_sq;
  std::vector<double> error_sq;

  explicit RowErrorSums(const QuantJob& job)
      : reference_sq(job.options.error_stats ? job.rows : 0),
        error_sq(job.options.error_stats ? job.rows : 0) {}
  bool enabled() const { return !error_sq.empty(); }
  // Row r's sums from its written codes, scale and zero_point (in job.out).
  void AddRow(const QuantJob& job, int64_t r, const float* w, const int8_t* codes);
  void AddTo(ErrorStats* stats) const;
};

}  // namespace internal_quantize
}  // namespace gquant

#endif  // GQUANT_SRC_QUANTIZE_INTERNAL_H_
