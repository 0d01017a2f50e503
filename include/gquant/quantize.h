// Weight quantizers: min-max (affine) and HQQ, and their dequantization.
// Formulas: spec formats.md §2.6 (min-max, ExecuTorch quantize.py) and §3.1,
// §3.3 (HQQ). Vocabulary follows torchao: scale, zero_point, quant_min/max,
// group_size.
//
// A weight is a row-major [rows, cols] matrix (PyTorch Linear layout [N, K]);
// groups are runs of `group_size` consecutive elements along cols (K). 3-D
// expert tensors [E, N, K] are quantized per expert: E calls of [N, K].
//
// Output ("unpacked" form; packing into file layouts is quantized_checkpoint's
// job):
//   codes       int8 [rows, cols]   integer codes in CodeRange(config)
//   scale       float [rows, G]     G = cols / group_size; every value is
//                                   exactly representable in bf16
//   zero_point  float [rows, G]     integer-domain zero; bf16-representable
//                                   (4-bit; HQQ zeros are not integers),
//                                   integers (5/6/8-bit)
// and the dequantized weight is w = (code - zero_point) * scale, in float32.
//
// Code ranges (spec §2.6):
//   4-bit  (torchao Int4Tensor, ExecuTorch convention): [0, 15]; symmetric
//          weights are shifted by +8 and get zero_point 8.
//   5/6/8-bit (torchao IntxUnpackedToInt8Tensor): [-2^(b-1), 2^(b-1) - 1];
//          symmetric weights have zero_point 0.
#ifndef GQUANT_QUANTIZE_H_
#define GQUANT_QUANTIZE_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/dtype.h"

namespace gquant {

class ThreadPool;

enum class QuantMethod : uint8_t {
  kMinMax,  // "min_max": range of each group (zero-preserving), spec §2.6
  kHqq,     // "hqq": half-quadratic proximal solver; asymmetric §3.1, scale-only §3.3
};

// "min_max" / "hqq", and back (InvalidArgument for another name).
std::string_view QuantMethodName(QuantMethod method);
absl::StatusOr<QuantMethod> QuantMethodFromName(std::string_view name);

// group_size value meaning one group per row (group_size = cols).
inline constexpr int kPerRowGroupSize = 0;

struct QuantConfig {
  int bits = 4;         // 4, 5, 6 or 8
  int group_size = 32;  // elements per group along cols, or kPerRowGroupSize
  bool symmetric = false;
  QuantMethod method = QuantMethod::kMinMax;

  friend bool operator==(const QuantConfig&, const QuantConfig&) = default;
};

// "int4 g32 asym min_max", "int8 per-row sym min_max": for reports.
std::string QuantConfigToString(const QuantConfig& config);

// Returns InvalidArgument (naming the field) for bits outside {4,5,6,8}, a
// negative group size, or HQQ asymmetric with bits != 4 (ExecuTorch offers
// asymmetric HQQ for 4-bit only; 5/6/8-bit HQQ is scale-only).
absl::Status ValidateQuantConfig(const QuantConfig& config);

struct CodeRange {
  int quant_min;
  int quant_max;
};
CodeRange CodeRangeOf(const QuantConfig& config);

// The min-max formula's constants for a config (spec §2.6), shared by the CPU
// and GPU quantizers: the signed code range the formula works in (4-bit
// symmetric codes are then stored +8), and the divisor of the group's range.
struct MinMaxConstants {
  float qmin;      // asymmetric 4-bit 0, symmetric 4-bit -8, 5/6/8-bit -2^(b-1)
  float qmax;      // 15, 7, 2^(b-1) - 1
  float divisor;   // qmax - qmin (asymmetric), (qmax - qmin) / 2 (symmetric)
  int32_t offset;  // 8 for 4-bit symmetric: codes and zero are stored +8
};
MinMaxConstants MinMaxConstantsOf(const QuantConfig& config);

// The group size for a [rows, cols] weight: config.group_size, or cols when
// per-row. Returns InvalidArgument when cols is not a multiple of it.
absl::StatusOr<int64_t> ResolveGroupSize(const QuantConfig& config, int64_t cols);

// HQQ solver settings; defaults are the reference ("legacy") ones of §3.1.
struct HqqOptions {
  float lp_norm = 0.7f;  // p of the |.|^p objective
  float beta = 10.0f;
  float kappa = 1.01f;  // beta grows by this factor each iteration
  int iterations = 20;
  bool early_stop = true;
  // The reference stops when the error rises, but by then it has already
  // overwritten the zero, so it returns the zero one update past the best
  // iterate (§3.1, both hqq and torchao). true keeps the best iterate's zero
  // instead (never worse in the solver's own error).
  bool keep_best_iterate = false;
};

// Sum of squares over the quantized elements, accumulated in double:
// relative error = sqrt(error_sq / reference_sq); SNR dB = 10 log10(ref/err).
struct ErrorStats {
  double reference_sq = 0;  // sum of w^2
  double error_sq = 0;      // sum of (w - dequant(quant(w)))^2
  double RelativeError() const;
  double SnrDb() const;
};

struct QuantizeOptions {
  HqqOptions hqq;
  ThreadPool* pool = nullptr;         // parallel over rows when set
  ErrorStats* error_stats = nullptr;  // accumulated into when set
};

// Output views; sizes must be rows*cols, rows*G, rows*G.
struct QuantizedSpans {
  std::span<int8_t> codes;
  std::span<float> scale;
  std::span<float> zero_point;
};

// Quantizes the [rows, cols] matrix stored in `weight` as `dtype` (F32, F16
// or BF16; converted to float32 first, as the reference does).
// Min-max rows are independent, so a caller may pass any block of rows and
// get the same result as for the whole tensor. HQQ's early stop (asymmetric)
// and convergence test (scale-only) are global over the call, as in torchao:
// pass a whole matrix (one expert) to match the reference.
// Returns InvalidArgument for a bad config, a dtype other than F32/F16/BF16,
// cols not a multiple of the group size, mismatched span sizes, or a NaN/Inf
// weight (the message gives its row and column).
absl::Status Quantize(const QuantConfig& config, DType dtype, std::span<const std::byte> weight,
                      int64_t rows, int64_t cols, const QuantizedSpans& out,
                      const QuantizeOptions& options = {});

// Quantize's argument checks alone (config, shape, dtype, span sizes; not
// the values), for other implementations of the same contract (the GPU
// quantizers). Returns the resolved group size, or Quantize's error.
absl::StatusOr<int64_t> CheckQuantizeArguments(const QuantConfig& config, DType dtype,
                                               std::span<const std::byte> weight, int64_t rows,
                                               int64_t cols, const QuantizedSpans& out);

// Numerical edge cases (the same on every quantizer; spec formats.md §2.6,
// §3.1, §3.3 give the formulas):
//   NaN / Inf    Quantize refuses the weight (InvalidArgument naming the first
//                such element); nothing is written.
//   zero groups  (every element +0 or -0) dequantize to exactly 0: min-max
//                takes scale = FLT_MIN (its eps) and codes at the zero
//                point; HQQ takes inverse scale 1 and zero 0.
//   constant     groups (all elements equal to c != 0) follow the formulas,
//                not a special case (the output must stay the reference's):
//                asymmetric min-max includes 0 in the range, so c maps to an
//                end code and comes back within the bf16 rounding of the
//                scale (|error| <= 2^-8 |c|; at 8 bits the bf16 reciprocal
//                can cost one more step, 1/255 |c|); symmetric min-max maps c to
//                qmax + 1/2 steps, which rounds or clamps half a step off:
//                relative error 1 / (2 qmax + 1) (1/15 at 4 bits, 1/255 at
//                8). Asymmetric HQQ's range guard (range <= 1e-4: inverse
//                scale 1) leaves c to the zero, which the solver moves to -c:
//                |error| <= 2^-8 |c| (bf16 rounding of the zero).
//   subnormals   (float32 magnitudes below FLT_MIN; F16 inputs have none once
//                widened) are kept, not flushed: the library is built without
//                -ffast-math and never sets FTZ/DAZ. They take part in the
//                ranges like any value; as the min-max scale is at least
//                FLT_MIN, a group of subnormals only dequantizes to multiples
//                of FLT_MIN (absolute error < FLT_MIN).
// ScanWeight counts these cases so reports can say how often they occur.
struct WeightScan {
  int64_t non_finite = 0;         // NaN/Inf elements
  int64_t subnormal = 0;          // nonzero elements with |w| < FLT_MIN (as float32)
  int64_t constant_groups = 0;    // groups whose elements are all equal (zero groups included)
  int64_t zero_groups = 0;        // groups of +0/-0 only
  int64_t first_non_finite = -1;  // row-major element index of the first NaN/Inf, or -1

  // Sums the counts and keeps the smaller first_non_finite, `other`'s offset
  // by `offset` elements (where its rows start), so scans of row ranges
  // combine in any order.
  void Add(const WeightScan& other, int64_t offset);
};

// Scans the [rows, cols] weight in `weight` (dtype F32, F16 or BF16) in
// groups of `config`'s group size. Returns CheckQuantizeArguments' errors for
// a bad config, dtype, shape or size (no output spans are checked).
absl::StatusOr<WeightScan> ScanWeight(const QuantConfig& config, DType dtype,
                                      std::span<const std::byte> weight, int64_t rows, int64_t cols,
                                      ThreadPool* pool = nullptr);

// out[r, c] = (codes[r, c] - zero_point[r, g]) * scale[r, g], g = c / group.
// Returns InvalidArgument for mismatched sizes or a bad config.
absl::Status Dequantize(const QuantConfig& config, int64_t rows, int64_t cols,
                        std::span<const int8_t> codes, std::span<const float> scale,
                        std::span<const float> zero_point, std::span<float> out);

}  // namespace gquant

#endif  // GQUANT_QUANTIZE_H_
