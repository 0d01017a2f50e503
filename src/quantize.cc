// Public entry points of the quantizers: config checks, the Quantize
// dispatcher and Dequantize. The formulas live in quantize_minmax.cc (spec
// formats.md §2.6) and quantize_hqq.cc (§3.1, §3.3).
#include "gquant/quantize.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"
#include "quantize_internal.h"

namespace gquant {

using internal_quantize::QuantJob;

std::string_view QuantMethodName(QuantMethod method) {
  switch (method) {
    case QuantMethod::kMinMax:
      return "min_max";
    case QuantMethod::kHqq:
      return "hqq";
  }
  return "unknown";
}

absl::StatusOr<QuantMethod> QuantMethodFromName(std::string_view name) {
  for (QuantMethod method : {QuantMethod::kMinMax, QuantMethod::kHqq}) {
    if (QuantMethodName(method) == name) return method;
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "quantization method '%s': expected \"min_max\" or \"hqq\", but got an unknown name",
      std::string(name)));
}

std::string QuantConfigToString(const QuantConfig& config) {
  return absl::StrFormat(
      "int%d %s %s %s", config.bits,
      config.group_size == kPerRowGroupSize ? std::string("per-row")
                                            : absl::StrCat("g", config.group_size),
      config.symmetric ? "sym" : "asym", std::string(QuantMethodName(config.method)));
}

absl::Status ValidateQuantConfig(const QuantConfig& config) {
  if (config.bits != 4 && config.bits != 5 && config.bits != 6 && config.bits != 8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "quant config field 'bits': expected 4, 5, 6 or 8, but got %d", config.bits));
  }
  if (config.group_size < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "quant config field 'group_size': expected a positive size or %d (per row), but got %d",
        kPerRowGroupSize, config.group_size));
  }
  if (config.method != QuantMethod::kMinMax && config.method != QuantMethod::kHqq) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "quant config field 'method': expected min_max or hqq, but got enum value %d",
        static_cast<int>(config.method)));
  }
  if (config.method == QuantMethod::kHqq && !config.symmetric && config.bits != 4) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "quant config field 'bits': expected 4 for asymmetric hqq (5/6/8-bit hqq is "
        "symmetric, scale-only), but got %d",
        config.bits));
  }
  return absl::OkStatus();
}

CodeRange CodeRangeOf(const QuantConfig& config) {
  if (config.bits == 4) return {0, 15};
  const int half = 1 << (config.bits - 1);
  return {-half, half - 1};
}

absl::StatusOr<int64_t> ResolveGroupSize(const QuantConfig& config, int64_t cols) {
  if (config.group_size < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("group size: expected a positive size or %d (per row), but got %d",
                        kPerRowGroupSize, config.group_size));
  }
  if (cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight columns: expected a positive count, but got %d", cols));
  }
  const int64_t group = config.group_size == kPerRowGroupSize ? cols : config.group_size;
  if (cols % group != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight columns: expected a multiple of the group size %d, but got %d", group, cols));
  }
  return group;
}

double ErrorStats::RelativeError() const {
  if (reference_sq == 0) return error_sq == 0 ? 0 : std::numeric_limits<double>::infinity();
  return std::sqrt(error_sq / reference_sq);
}

double ErrorStats::SnrDb() const {
  if (error_sq == 0) return std::numeric_limits<double>::infinity();
  return 10 * std::log10(reference_sq / error_sq);
}

namespace internal_quantize {

void ConvertRow(DType dtype, const std::byte* src, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        dst[i] = BFloat16ToFloat(bits);
      }
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        dst[i] = HalfToFloat(bits);
      }
      return;
    default:
      return;  // Quantize admits only the three above
  }
}

absl::Status NonFiniteError(const QuantJob& job, int64_t row) {
  std::vector<float> values(job.cols);
  ConvertRow(job.dtype, job.Row(row), job.cols, values.data());
  for (int64_t c = 0; c < job.cols; ++c) {
    if (!std::isfinite(values[c])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("weight element [row %d, column %d]: expected a finite value, but got %f",
                          row, c, values[c]));
    }
  }
  return absl::InternalError(absl::StrFormat("row %d was flagged non-finite but is finite", row));
}

void RowErrorSums::AddRow(const QuantJob& job, int64_t r, const float* w, const int8_t* codes) {
  const float* scale = job.out.scale.data() + r * job.num_groups;
  const float* zero = job.out.zero_point.data() + r * job.num_groups;
  double ref = 0, err = 0;
  for (int64_t i = 0; i < job.cols; ++i) {
    const int64_t g = i / job.group;
    const float deq = (static_cast<float>(codes[i]) - zero[g]) * scale[g];
    const double d = static_cast<double>(w[i]) - deq;
    ref += static_cast<double>(w[i]) * w[i];
    err += d * d;
  }
  reference_sq[r] = ref;
  error_sq[r] = err;
}

void RowErrorSums::AddTo(ErrorStats* stats) const {
  if (stats == nullptr) return;
  for (size_t r = 0; r < error_sq.size(); ++r) {
    stats->reference_sq += reference_sq[r];
    stats->error_sq += error_sq[r];
  }
}

}  // namespace internal_quantize

namespace {

absl::Status CheckSpanSize(const char* what, size_t size, int64_t expected) {
  if (static_cast<int64_t>(size) == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: expected %d elements, but got %d", what, expected, size));
}

// Shared by Quantize and Dequantize: the config, the shape and the group size.
absl::StatusOr<int64_t> CheckShape(const QuantConfig& config, int64_t rows, int64_t cols) {
  GQ_RETURN_IF_ERROR(ValidateQuantConfig(config));
  if (rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight rows: expected a count >= 0, but got %d", rows));
  }
  GQ_ASSIGN_OR_RETURN(const int64_t group, ResolveGroupSize(config, cols));
  if (rows > std::numeric_limits<int64_t>::max() / 8 / cols) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight shape: expected fewer elements, but got [%d, %d]", rows, cols));
  }
  return group;
}

}  // namespace

absl::StatusOr<int64_t> CheckQuantizeArguments(const QuantConfig& config, DType dtype,
                                               std::span<const std::byte> weight, int64_t rows,
                                               int64_t cols, const QuantizedSpans& out) {
  GQ_ASSIGN_OR_RETURN(const int64_t group, CheckShape(config, rows, cols));
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight dtype: expected F32, F16 or BF16, but got %s", std::string(DTypeName(dtype))));
  }
  const int64_t num_groups = cols / group;
  GQ_RETURN_IF_ERROR(CheckSpanSize("weight bytes", weight.size(), rows * cols * DTypeSize(dtype)));
  GQ_RETURN_IF_ERROR(CheckSpanSize("codes", out.codes.size(), rows * cols));
  GQ_RETURN_IF_ERROR(CheckSpanSize("scale", out.scale.size(), rows * num_groups));
  GQ_RETURN_IF_ERROR(CheckSpanSize("zero_point", out.zero_point.size(), rows * num_groups));
  return group;
}

absl::Status Quantize(const QuantConfig& config, DType dtype, std::span<const std::byte> weight,
                      int64_t rows, int64_t cols, const QuantizedSpans& out,
                      const QuantizeOptions& options) {
  GQ_ASSIGN_OR_RETURN(const int64_t group,
                      CheckQuantizeArguments(config, dtype, weight, rows, cols, out));
  const int64_t num_groups = cols / group;
  if (rows == 0) return absl::OkStatus();

  const QuantJob job{config, dtype, weight.data(), rows, cols, group, num_groups, out, options};
  switch (config.method) {
    case QuantMethod::kMinMax:
      return internal_quantize::QuantizeMinMax(job);
    case QuantMethod::kHqq:
      return internal_quantize::QuantizeHqq(job);
  }
  return absl::InternalError("unreachable quantization method");
}

void WeightScan::Add(const WeightScan& other, int64_t offset) {
  if (other.first_non_finite >= 0) {
    const int64_t at = other.first_non_finite + offset;
    first_non_finite = first_non_finite < 0 ? at : std::min(first_non_finite, at);
  }
  non_finite += other.non_finite;
  subnormal += other.subnormal;
  constant_groups += other.constant_groups;
  zero_groups += other.zero_groups;
}

namespace {

// Bit layout of an F32 or BF16 element (F16 rows are widened to F32 first).
template <typename Bits>
struct ScanTraits;
template <>
struct ScanTraits<uint32_t> {
  static constexpr uint32_t kMagnitude = 0x7fffffffu, kExponent = 0x7f800000u;
  static constexpr uint32_t kSmallestNormal = 0x00800000u;
};
template <>
struct ScanTraits<uint16_t> {
  static constexpr uint16_t kMagnitude = 0x7fff, kExponent = 0x7f80, kSmallestNormal = 0x0080;
};

// One row's counts (first_non_finite relative to the row), on the raw bit
// patterns: with u = |w| as bits, non-finite is u >= the exponent mask,
// subnormal 0 < u < the smallest normal. A group is all zero when the OR of
// its u is 0, and constant when, besides that, the OR of (bits ^ first) is 0
// (floats equal as values have equal bits unless both are zeros; a NaN
// fails the weight anyway). Plain counting and OR loops that GCC vectorizes.
template <typename Bits>
GQ_TARGET_CLONES WeightScan ScanRow(const Bits* __restrict x, int64_t cols, int64_t group) {
  using T = ScanTraits<Bits>;
  uint32_t non_finite = 0, subnormal = 0;
  for (int64_t i = 0; i < cols; ++i) {
    const Bits u = x[i] & T::kMagnitude;
    non_finite += u >= T::kExponent;
    subnormal += static_cast<Bits>(u - 1) < static_cast<Bits>(T::kSmallestNormal - 1);
  }
  WeightScan scan;
  scan.non_finite = non_finite;
  scan.subnormal = subnormal;
  for (int64_t g0 = 0; g0 < cols; g0 += group) {
    const Bits first = x[g0];
    Bits differ = 0, magnitude = 0;
    for (int64_t i = g0; i < g0 + group; ++i) {
      differ |= x[i] ^ first;
      magnitude |= x[i] & T::kMagnitude;
    }
    scan.constant_groups += differ == 0 || magnitude == 0;
    scan.zero_groups += magnitude == 0;
  }
  for (int64_t i = 0; scan.non_finite > 0 && i < cols; ++i) {
    if ((x[i] & T::kMagnitude) >= T::kExponent) {
      scan.first_non_finite = i;
      break;
    }
  }
  return scan;
}

}  // namespace

absl::StatusOr<WeightScan> ScanWeight(const QuantConfig& config, DType dtype,
                                      std::span<const std::byte> weight, int64_t rows, int64_t cols,
                                      ThreadPool* pool) {
  GQ_ASSIGN_OR_RETURN(const int64_t group, CheckShape(config, rows, cols));
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight dtype: expected F32, F16 or BF16, but got %s", std::string(DTypeName(dtype))));
  }
  GQ_RETURN_IF_ERROR(CheckSpanSize("weight bytes", weight.size(), rows * cols * DTypeSize(dtype)));
  const int64_t row_bytes = cols * DTypeSize(dtype);
  // Counts are integer sums and the first NaN/Inf a minimum, so the result
  // does not depend on how rows are split over threads.
  std::mutex mutex;
  WeightScan total;
  constexpr int64_t kMinElementsPerRange = 1 << 16;
  ParallelFor(pool, rows, std::max<int64_t>(1, kMinElementsPerRange / cols),
              [&](int64_t begin, int64_t end) {
                // F16 rows are widened, unaligned rows copied: ScanRow reads whole
                // elements.
                std::vector<uint32_t> scratch(cols);
                WeightScan range;
                for (int64_t r = begin; r < end; ++r) {
                  const std::byte* row = weight.data() + r * row_bytes;
                  if (dtype == DType::kF16) {
                    internal_quantize::ConvertRow(dtype, row, cols,
                                                  reinterpret_cast<float*>(scratch.data()));
                    row = reinterpret_cast<const std::byte*>(scratch.data());
                  } else if (reinterpret_cast<uintptr_t>(row) % DTypeSize(dtype) != 0) {
                    std::memcpy(scratch.data(), row, row_bytes);
                    row = reinterpret_cast<const std::byte*>(scratch.data());
                  }
                  range.Add(dtype == DType::kBF16
                                ? ScanRow(reinterpret_cast<const uint16_t*>(row), cols, group)
                                : ScanRow(reinterpret_cast<const uint32_t*>(row), cols, group),
                            r * cols);
                }
                std::lock_guard<std::mutex> lock(mutex);
                total.Add(range, 0);
              });
  return total;
}

absl::Status Dequantize(const QuantConfig& config, int64_t rows, int64_t cols,
                        std::span<const int8_t> codes, std::span<const float> scale,
                        std::span<const float> zero_point, std::span<float> out) {
  GQ_ASSIGN_OR_RETURN(const int64_t group, CheckShape(config, rows, cols));
  const int64_t num_groups = cols / group;
  GQ_RETURN_IF_ERROR(CheckSpanSize("codes", codes.size(), rows * cols));
  GQ_RETURN_IF_ERROR(CheckSpanSize("scale", scale.size(), rows * num_groups));
  GQ_RETURN_IF_ERROR(CheckSpanSize("zero_point", zero_point.size(), rows * num_groups));
  GQ_RETURN_IF_ERROR(CheckSpanSize("output", out.size(), rows * cols));
  // (code - zero) * scale in float32, as ExecuTorch's dequantize_weight (§2.6).
  for (int64_t g = 0; g < rows * num_groups; ++g) {
    const float s = scale[g], z = zero_point[g];
    const int8_t* q = codes.data() + g * group;
    float* w = out.data() + g * group;
    for (int64_t i = 0; i < group; ++i) w[i] = (static_cast<float>(q[i]) - z) * s;
  }
  return absl::OkStatus();
}

}  // namespace gquant
