// Int8 activation quantization: observers, fake quantization, the integer
// Linear and the parameter file. Formulas: activation_quant.h (torch's
// observer.py _calculate_qparams and the CPU fake-quantize kernels of
// QuantizedOpKernels.cpp).
#include "gquant/activation_quant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

// char arrays, not std::string_view: this Abseil's StrCat takes no std::string_view.
constexpr char kScaleSuffix[] = ".input_scale";
constexpr char kZeroPointSuffix[] = ".input_zero_point";
constexpr char kVersionKey[] = "gquant.activation_quant.version";
constexpr char kVersion[] = "1";

// "row 3, column 17" of the first NaN/Inf in the [rows, cols] matrix x, or
// OK. (cols may be 0 only when x is empty.)
absl::Status CheckFinite(std::span<const float> x, int64_t cols, const char* what) {
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) {
      const int64_t index = static_cast<int64_t>(i);
      return absl::InvalidArgumentError(absl::StrCat(what, ": expected finite values, but got ",
                                                     x[i], " at row ", index / cols, ", column ",
                                                     index % cols));
    }
  }
  return absl::OkStatus();
}

// x.size() == rows * cols without overflow.
bool HasShape(size_t size, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return size == 0;
  return static_cast<uint64_t>(size) % static_cast<uint64_t>(cols) == 0 &&
         static_cast<uint64_t>(size) / static_cast<uint64_t>(cols) == static_cast<uint64_t>(rows);
}

// Checks a [rows, channels] activation against `params` and returns its
// channel count (per tensor: x.size() / rows).
absl::StatusOr<int64_t> CheckActivation(std::span<const float> x, int64_t rows,
                                        const ActivationQuantParams& params, const char* what) {
  GQ_RETURN_IF_ERROR(Annotate(ValidateActivationQuantParams(params), what));
  if (rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": expected rows >= 0, but got ", rows));
  }
  int64_t channels = 0;
  if (params.granularity == QuantGranularity::kPerChannel) {
    channels = static_cast<int64_t>(params.scale.size());
  } else if (rows > 0) {
    channels = static_cast<int64_t>(x.size()) / rows;
  }
  if (!HasShape(x.size(), rows, channels)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": expected ", rows, " rows of ",
        params.granularity == QuantGranularity::kPerChannel ? absl::StrCat(channels) : "equal",
        " channels, but got ", x.size(), " values"));
  }
  GQ_RETURN_IF_ERROR(CheckFinite(x, channels, what));
  return channels;
}

// The integer code of x, as torch's fake-quantize kernels compute it:
// float(zp) + nearbyint(x * inv_scale) in float32, clamped before the
// conversion to an integer (so a product that overflows to +-inf clamps).
inline int32_t QuantizeValue(float x, float inv_scale, int32_t zero_point, float quant_min,
                             float quant_max) {
  const float q = static_cast<float>(zero_point) + std::nearbyint(x * inv_scale);
  return static_cast<int32_t>(std::fmin(std::fmax(q, quant_min), quant_max));
}

// Calls fn(index, code) for every element of the validated activation x.
template <typename Fn>
void ForEachCode(std::span<const float> x, int64_t channels, const ActivationQuantParams& params,
                 Fn&& fn) {
  const float quant_min = static_cast<float>(params.quant_min);
  const float quant_max = static_cast<float>(params.quant_max);
  if (params.granularity == QuantGranularity::kPerTensor) {
    const float inv_scale = 1.0f / params.scale[0];
    const int32_t zero_point = params.zero_point[0];
    for (size_t i = 0; i < x.size(); ++i) {
      fn(i, QuantizeValue(x[i], inv_scale, zero_point, quant_min, quant_max));
    }
    return;
  }
  std::vector<float> inv_scale(channels);
  for (int64_t c = 0; c < channels; ++c) inv_scale[c] = 1.0f / params.scale[c];
  for (size_t i = 0; i < x.size(); ++i) {
    const int64_t c = static_cast<int64_t>(i) % channels;
    fn(i, QuantizeValue(x[i], inv_scale[c], params.zero_point[c], quant_min, quant_max));
  }
}

std::string FormatFloat(float value) { return absl::StrFormat("%.9g", value); }

}  // namespace

// ---- names ----

std::string_view ObserverKindName(ObserverKind kind) {
  switch (kind) {
    case ObserverKind::kMinMax:
      return "min_max";
    case ObserverKind::kMovingAverageMinMax:
      return "moving_average_min_max";
  }
  return "unknown";
}

absl::StatusOr<ObserverKind> ObserverKindFromName(std::string_view name) {
  for (ObserverKind kind : {ObserverKind::kMinMax, ObserverKind::kMovingAverageMinMax}) {
    if (name == ObserverKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "observer '", std::string(name), "': expected 'min_max' or 'moving_average_min_max'"));
}

std::string_view QuantGranularityName(QuantGranularity granularity) {
  switch (granularity) {
    case QuantGranularity::kPerTensor:
      return "per_tensor";
    case QuantGranularity::kPerChannel:
      return "per_channel";
  }
  return "unknown";
}

absl::StatusOr<QuantGranularity> QuantGranularityFromName(std::string_view name) {
  for (QuantGranularity g : {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel}) {
    if (name == QuantGranularityName(g)) return g;
  }
  return absl::InvalidArgumentError(absl::StrCat("granularity '", std::string(name),
                                                 "': expected 'per_tensor' or 'per_channel'"));
}

// ---- params ----

absl::Status ValidateActivationQuantParams(const ActivationQuantParams& params) {
  const int32_t qmin = params.quant_min, qmax = params.quant_max;
  if (qmin < kInt8QuantMin || qmax > kInt8QuantMax || qmin > 0 || qmax < 0 || qmin >= qmax) {
    return absl::InvalidArgumentError(
        absl::StrCat("quant range [", qmin, ", ", qmax,
                     "]: expected a range inside [-128, 127] that holds 0 and more than one code"));
  }
  const size_t n = params.scale.size();
  if (n == 0) return absl::InvalidArgumentError("scale: expected at least one value, but got none");
  if (params.zero_point.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "zero_point: expected ", n, " values (one per scale), but got ", params.zero_point.size()));
  }
  if (params.granularity == QuantGranularity::kPerTensor && n != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale: expected 1 value for per_tensor params, but got ", n));
  }
  for (size_t i = 0; i < n; ++i) {
    // Normal, so that 1 / scale is finite.
    if (!(std::isfinite(params.scale[i]) && params.scale[i] >= FLT_MIN)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scale[", i, "]: expected a positive, finite, normal float, but got ", params.scale[i]));
    }
    const int32_t z = params.zero_point[i];
    if (z < qmin || z > qmax || (params.symmetric && z != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "zero_point[", i, "]: expected ", params.symmetric ? "0 (symmetric)" : "a value in ",
          params.symmetric ? "" : absl::StrCat("[", qmin, ", ", qmax, "]"), ", but got ", z));
    }
  }
  for (const auto* v : {&params.min_val, &params.max_val}) {
    if (!v->empty() && v->size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(v == &params.min_val ? "min_val" : "max_val",
                                                     ": expected 0 or ", n, " values, but got ",
                                                     v->size()));
    }
  }
  return absl::OkStatus();
}

// ---- observer ----

ActivationObserver::ActivationObserver(const ObserverOptions& options, int64_t channels)
    : options_(options), channels_(channels) {}

absl::StatusOr<ActivationObserver> ActivationObserver::Create(const ObserverOptions& options,
                                                              int64_t channels) {
  if (channels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("observer channels: expected >= 1, but got ", channels));
  }
  const float c = options.averaging_constant;
  if (options.kind == ObserverKind::kMovingAverageMinMax && !(c > 0.0f && c <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("averaging_constant: expected a value in (0, 1], but got ", c));
  }
  return ActivationObserver(options, channels);
}

absl::Status ActivationObserver::Observe(std::span<const float> x, int64_t rows) {
  if (rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("observed activation: expected rows >= 0, but got ", rows));
  }
  if (!HasShape(x.size(), rows, channels_)) {
    return absl::InvalidArgumentError(absl::StrCat("observed activation: expected ", rows, " x ",
                                                   channels_, " values, but got ", x.size()));
  }
  if (rows == 0) return absl::OkStatus();  // as torch: an empty tensor changes nothing
  GQ_RETURN_IF_ERROR(CheckFinite(x, channels_, "observed activation"));

  // This batch's extremes (torch.aminmax over the tensor, or per column).
  const bool per_channel = options_.granularity == QuantGranularity::kPerChannel;
  std::vector<float> batch_min(x.begin(), x.begin() + (per_channel ? channels_ : 1));
  std::vector<float> batch_max = batch_min;
  if (per_channel) {
    for (int64_t r = 1; r < rows; ++r) {
      const float* row = x.data() + r * channels_;
      for (int64_t c = 0; c < channels_; ++c) {
        batch_min[c] = std::min(batch_min[c], row[c]);
        batch_max[c] = std::max(batch_max[c], row[c]);
      }
    }
  } else {
    const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
    batch_min[0] = *lo;
    batch_max[0] = *hi;
  }

  if (batches_observed_ == 0) {
    min_val_ = std::move(batch_min);
    max_val_ = std::move(batch_max);
  } else if (options_.kind == ObserverKind::kMinMax) {
    for (size_t i = 0; i < min_val_.size(); ++i) {
      min_val_[i] = std::min(min_val_[i], batch_min[i]);
      max_val_[i] = std::max(max_val_[i], batch_max[i]);
    }
  } else {
    // float32 throughout, each operation rounded, as torch's buffers; the
    // build does not contract these into fused multiply-adds (ISO C++ mode).
    const float c = options_.averaging_constant;
    for (size_t i = 0; i < min_val_.size(); ++i) {
      min_val_[i] = min_val_[i] + c * (batch_min[i] - min_val_[i]);
      max_val_[i] = max_val_[i] + c * (batch_max[i] - max_val_[i]);
    }
  }
  rows_observed_ += rows;
  ++batches_observed_;
  return absl::OkStatus();
}

absl::StatusOr<ActivationQuantParams> ActivationObserver::Compute() const {
  if (batches_observed_ == 0) {
    return absl::FailedPreconditionError(
        "activation observer: nothing observed yet, so there is no range to quantize");
  }
  ActivationQuantParams p;
  p.granularity = options_.granularity;
  p.symmetric = options_.symmetric;
  p.observer = options_.kind;
  p.averaging_constant =
      options_.kind == ObserverKind::kMovingAverageMinMax ? options_.averaging_constant : 0.0f;
  p.min_val = min_val_;
  p.max_val = max_val_;
  p.rows_observed = rows_observed_;
  p.batches_observed = batches_observed_;

  const size_t n = min_val_.size();
  p.scale.resize(n);
  p.zero_point.resize(n);
  const float levels = static_cast<float>(p.quant_max - p.quant_min);  // 255
  for (size_t i = 0; i < n; ++i) {
    const float min_neg = std::min(min_val_[i], 0.0f);
    const float max_pos = std::max(max_val_[i], 0.0f);
    float scale;
    int32_t zero_point = 0;
    if (p.symmetric) {
      scale = std::max(std::max(-min_neg, max_pos) / (levels / 2.0f), kObserverScaleEps);
    } else {
      scale = std::max((max_pos - min_neg) / levels, kObserverScaleEps);
      // |min_neg / scale| <= 255 up to rounding, so the conversion is safe.
      const int32_t shift = static_cast<int32_t>(std::nearbyint(min_neg / scale));
      zero_point = std::clamp(p.quant_min - shift, p.quant_min, p.quant_max);
    }
    if (!std::isfinite(scale)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "activation observer: the observed range [", min_val_[i], ", ", max_val_[i], "] of ",
          n == 1 ? "the tensor" : absl::StrCat("channel ", i), " is too wide for a float32 scale"));
    }
    p.scale[i] = scale;
    p.zero_point[i] = zero_point;
  }
  return p;
}

// ---- fake quantization ----

absl::Status FakeQuantizeActivations(std::span<float> x, int64_t rows,
                                     const ActivationQuantParams& params) {
  GQ_ASSIGN_OR_RETURN(const int64_t channels,
                      CheckActivation(x, rows, params, "fake-quantized activation"));
  const bool per_tensor = params.granularity == QuantGranularity::kPerTensor;
  ForEachCode(x, channels, params, [&](size_t i, int32_t q) {
    const size_t c = per_tensor ? 0 : i % static_cast<size_t>(channels);
    // torch: (qval - z_point) * sc, an exact integer times the float scale.
    x[i] = static_cast<float>(q - params.zero_point[c]) * params.scale[c];
  });
  return absl::OkStatus();
}

absl::Status QuantizeActivations(std::span<const float> x, int64_t rows,
                                 const ActivationQuantParams& params, std::span<int8_t> codes) {
  GQ_ASSIGN_OR_RETURN(const int64_t channels,
                      CheckActivation(x, rows, params, "quantized activation"));
  if (codes.size() != x.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("activation codes: expected ", x.size(), " values, but got ", codes.size()));
  }
  ForEachCode(x, channels, params, [&](size_t i, int32_t q) { codes[i] = static_cast<int8_t>(q); });
  return absl::OkStatus();
}

// ---- integer Linear ----

absl::StatusOr<Int8RowWeights> QuantizeInt8Rows(std::span<const float> weight, int64_t out,
                                                int64_t in, ThreadPool* pool) {
  Int8RowWeights w;
  if (out > 0 && in > 0 && HasShape(weight.size(), out, in)) {
    w.codes.resize(weight.size());
    w.scale.resize(out);
  }
  std::vector<float> zero_point(w.scale.size());
  GQ_RETURN_IF_ERROR(Quantize(kInt8RowWeightConfig, DType::kF32, std::as_bytes(weight), out, in,
                              {w.codes, w.scale, zero_point}, {.pool = pool}));
  return w;
}

absl::Status LinearInt8(std::span<const float> x, int64_t rows, int64_t in, const Int8Rows& weight,
                        int64_t out, const ActivationQuantParams& params, std::span<float> y,
                        ThreadPool* pool) {
  GQ_RETURN_IF_ERROR(Annotate(ValidateActivationQuantParams(params), "LinearInt8 activation"));
  if (params.granularity != QuantGranularity::kPerTensor) {
    return absl::InvalidArgumentError(
        "LinearInt8 activation: expected per_tensor params (per-channel activation scales "
        "cannot be factored out of an integer dot product; use FakeQuantizeActivations and a "
        "float Linear)");
  }
  if (rows < 0 || in < 1 || out < 1 || in > kMaxInt8DotLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinearInt8 shape: expected rows >= 0, 1 <= in <= ", kMaxInt8DotLength,
        " (int32 sums) and out >= 1, but got rows ", rows, ", in ", in, ", out ", out));
  }
  const auto check_size = [](const char* what, size_t size, int64_t r, int64_t c) {
    return HasShape(size, r, c) ? absl::OkStatus()
                                : absl::InvalidArgumentError(
                                      absl::StrCat("LinearInt8 ", what, ": expected [", r, ", ", c,
                                                   "] = ", r * c, " values, but got ", size));
  };
  GQ_RETURN_IF_ERROR(check_size("x", x.size(), rows, in));
  GQ_RETURN_IF_ERROR(check_size("weight codes", weight.codes.size(), out, in));
  GQ_RETURN_IF_ERROR(check_size("weight scale", weight.scale.size(), out, 1));
  GQ_RETURN_IF_ERROR(check_size("y", y.size(), rows, out));
  for (int64_t o = 0; o < out; ++o) {
    if (!(std::isfinite(weight.scale[o]) && weight.scale[o] > 0.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("LinearInt8 weight scale[", o,
                       "]: expected a positive finite value, but got ", weight.scale[o]));
    }
  }
  GQ_RETURN_IF_ERROR(CheckFinite(x, in, "LinearInt8 x"));

  // q_x - zp_x in [-255, 255]: int16, so the products widen to int32 in
  // vector multiply-adds.
  std::vector<int16_t> centered(x.size());
  const int32_t zp = params.zero_point[0];
  ForEachCode(x, in, params,
              [&](size_t i, int32_t q) { centered[i] = static_cast<int16_t>(q - zp); });

  const float x_scale = params.scale[0];
  // Blocks of output features: each weight row is read once per block and
  // reused across every activation row.
  ParallelFor(pool, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const int8_t* w = weight.codes.data() + o * in;
      const float combined = x_scale * weight.scale[o];
      for (int64_t r = 0; r < rows; ++r) {
        const int16_t* xr = centered.data() + r * in;
        int32_t acc = 0;  // cannot overflow: in <= kMaxInt8DotLength
        for (int64_t k = 0; k < in; ++k) acc += static_cast<int32_t>(xr[k]) * w[k];
        y[r * out + o] = static_cast<float>(acc) * combined;
      }
    }
  });
  return absl::OkStatus();
}

// ---- persistence ----

absl::Status WriteActivationQuantParams(const std::string& dir,
                                        const std::map<std::string, ActivationQuantParams>& params,
                                        const std::map<std::string, std::string>& extra_metadata) {
  const std::string path = absl::StrCat(dir, "/", std::string(kActivationQuantFileName));
  const std::string what = absl::StrCat("activation quant file '", path, "'");
  if (params.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected params for at least one weight"));
  }
  std::vector<SafetensorsTensorSpec> specs;
  std::map<std::string, std::string> metadata;
  metadata.emplace(kVersionKey, kVersion);  // (operator= from a char array trips GCC 12 -Wrestrict)
  for (const auto& entry : params) {
    // Not a structured binding: clang 14 (the sanitizer build) cannot capture one.
    const std::string& name = entry.first;
    const ActivationQuantParams& p = entry.second;
    if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty weight name"));
    GQ_RETURN_IF_ERROR(
        Annotate(ValidateActivationQuantParams(p), what, ": params of '", name, "'"));
    const int64_t n = static_cast<int64_t>(p.scale.size());
    specs.push_back({absl::StrCat(name, kScaleSuffix), DType::kF32, {n}});
    specs.push_back({absl::StrCat(name, kZeroPointSuffix), DType::kI32, {n}});
    const auto key = [&name](const char* field) { return absl::StrCat(name, ".", field); };
    metadata[key("granularity")] = std::string(QuantGranularityName(p.granularity));
    metadata[key("symmetric")] = std::string(p.symmetric ? "true" : "false");
    metadata[key("quant_min")] = absl::StrCat(p.quant_min);
    metadata[key("quant_max")] = absl::StrCat(p.quant_max);
    metadata[key("observer")] = std::string(ObserverKindName(p.observer));
    metadata[key("averaging_constant")] = FormatFloat(p.averaging_constant);
    metadata[key("rows_observed")] = absl::StrCat(p.rows_observed);
    metadata[key("batches_observed")] = absl::StrCat(p.batches_observed);
  }
  for (const auto& [key, value] : extra_metadata) {
    if (!metadata.emplace(key, value).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": extra metadata key '", key,
                                                     "' collides with a key the writer generates"));
    }
  }
  GQ_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::Create(path, specs, std::move(metadata)));
  for (const auto& [name, p] : params) {
    GQ_RETURN_IF_ERROR(
        writer->WriteTensor(absl::StrCat(name, kScaleSuffix), std::as_bytes(std::span(p.scale))));
    GQ_RETURN_IF_ERROR(writer->WriteTensor(absl::StrCat(name, kZeroPointSuffix),
                                           std::as_bytes(std::span(p.zero_point))));
  }
  return writer->Commit();
}

namespace {

// The metadata value `key`, or InvalidArgument naming it.
absl::StatusOr<std::string> MetadataValue(const std::map<std::string, std::string>& metadata,
                                          const std::string& key) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) {
    return absl::InvalidArgumentError(absl::StrCat("metadata key '", key, "' is missing"));
  }
  return it->second;
}

absl::Status BadValue(const std::string& key, const std::string& value, const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("metadata '", key, "': expected ", expected, ", but got '", value, "'"));
}

// The weight's params from its metadata (everything but the tensors).
absl::Status ReadParamsMetadata(const std::map<std::string, std::string>& metadata,
                                const std::string& name, ActivationQuantParams& p) {
  const auto key = [&name](const char* field) { return absl::StrCat(name, ".", field); };
  std::string k = key("granularity");
  GQ_ASSIGN_OR_RETURN(std::string value, MetadataValue(metadata, k));
  const absl::StatusOr<QuantGranularity> granularity = QuantGranularityFromName(value);
  if (!granularity.ok()) return BadValue(k, value, "per_tensor or per_channel");
  p.granularity = *granularity;
  k = key("symmetric");
  GQ_ASSIGN_OR_RETURN(value, MetadataValue(metadata, k));
  if (value != "true" && value != "false") return BadValue(k, value, "true or false");
  p.symmetric = value == "true";
  for (auto [field, target] : {std::pair{"quant_min", &p.quant_min}, {"quant_max", &p.quant_max}}) {
    k = key(field);
    GQ_ASSIGN_OR_RETURN(value, MetadataValue(metadata, k));
    if (!absl::SimpleAtoi(value, target)) return BadValue(k, value, "an integer");
  }
  k = key("observer");
  GQ_ASSIGN_OR_RETURN(value, MetadataValue(metadata, k));
  const absl::StatusOr<ObserverKind> kind = ObserverKindFromName(value);
  if (!kind.ok()) return BadValue(k, value, "min_max or moving_average_min_max");
  p.observer = *kind;
  k = key("averaging_constant");
  GQ_ASSIGN_OR_RETURN(value, MetadataValue(metadata, k));
  if (!absl::SimpleAtof(value, &p.averaging_constant) || !std::isfinite(p.averaging_constant) ||
      p.averaging_constant < 0.0f || p.averaging_constant > 1.0f) {
    return BadValue(k, value, "a number in [0, 1]");
  }
  for (auto [field, target] :
       {std::pair{"rows_observed", &p.rows_observed}, {"batches_observed", &p.batches_observed}}) {
    k = key(field);
    GQ_ASSIGN_OR_RETURN(value, MetadataValue(metadata, k));
    if (!absl::SimpleAtoi(value, target) || *target < 0) {
      return BadValue(k, value, "a non-negative integer");
    }
  }
  return absl::OkStatus();
}

// The payload of a rank-1 tensor of `dtype`, copied into `out`.
template <typename T>
absl::Status ReadVector(const SafetensorsFile& file, const SafetensorsTensorInfo& info, DType dtype,
                        std::vector<T>& out) {
  if (info.dtype != dtype) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", info.name, "': expected dtype ",
                                                   std::string(DTypeName(dtype)), ", but got ",
                                                   std::string(DTypeName(info.dtype))));
  }
  if (info.shape.size() != 1 || info.shape[0] < 1) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", info.name,
                                                   "': expected shape [n] with n >= 1, but got ",
                                                   ShapeToString(info.shape)));
  }
  GQ_ASSIGN_OR_RETURN(const Tensor tensor, file.Get(info.name));
  out.resize(info.shape[0]);
  std::memcpy(out.data(), tensor.bytes().data(), tensor.num_bytes());  // little-endian host
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::map<std::string, ActivationQuantParams>> ReadActivationQuantParams(
    const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", std::string(kActivationQuantFileName));
  const std::string what = absl::StrCat("activation quant file '", path, "'");
  GQ_ASSIGN_OR_RETURN(const SafetensorsFile file, SafetensorsFile::Open(path));
  const auto& metadata = file.metadata();
  const auto version = metadata.find(kVersionKey);
  if (version == metadata.end() || version->second != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected metadata '", kVersionKey, "' = '", kVersion, "', but got ",
                     version == metadata.end() ? "none" : absl::StrCat("'", version->second, "'")));
  }

  // Pair every "<W>.input_scale" with its "<W>.input_zero_point".
  struct Pair {
    const SafetensorsTensorInfo* scale = nullptr;
    const SafetensorsTensorInfo* zero_point = nullptr;
  };
  std::map<std::string, Pair> pairs;
  for (const SafetensorsTensorInfo& info : file.tensors()) {
    const std::string& name = info.name;
    const std::string_view scale = kScaleSuffix, zero_point = kZeroPointSuffix;
    if (name.ends_with(scale) && name.size() > scale.size()) {
      pairs[name.substr(0, name.size() - scale.size())].scale = &info;
    } else if (name.ends_with(zero_point) && name.size() > zero_point.size()) {
      pairs[name.substr(0, name.size() - zero_point.size())].zero_point = &info;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": unexpected tensor '", name, "' (expected '<weight>", kScaleSuffix,
                       "' and '<weight>", kZeroPointSuffix, "' pairs)"));
    }
  }
  if (pairs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": holds no activation params"));
  }

  std::map<std::string, ActivationQuantParams> result;
  for (const auto& [name, pair] : pairs) {
    if (pair.scale == nullptr || pair.zero_point == nullptr) {
      const char* have = pair.scale ? kScaleSuffix : kZeroPointSuffix;
      const char* missing = pair.scale ? kZeroPointSuffix : kScaleSuffix;
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": tensor '", name, have, "' has no partner '", name, missing, "'"));
    }
    ActivationQuantParams p;
    GQ_RETURN_IF_ERROR(Annotate(ReadVector(file, *pair.scale, DType::kF32, p.scale), what));
    GQ_RETURN_IF_ERROR(
        Annotate(ReadVector(file, *pair.zero_point, DType::kI32, p.zero_point), what));
    if (p.scale.size() != p.zero_point.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": tensors '", pair.scale->name, "' and '", pair.zero_point->name,
                       "' differ in size (", p.scale.size(), " vs ", p.zero_point.size(), ")"));
    }
    GQ_RETURN_IF_ERROR(Annotate(ReadParamsMetadata(metadata, name, p), what));
    GQ_RETURN_IF_ERROR(
        Annotate(ValidateActivationQuantParams(p), what, ": params of '", name, "'"));
    result.emplace(name, std::move(p));
  }
  return result;
}

// ---- metrics ----

double SignalToNoiseDb(std::span<const float> reference, std::span<const float> test) {
  if (reference.size() != test.size()) return std::numeric_limits<double>::quiet_NaN();
  double signal = 0, noise = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double r = reference[i], d = r - static_cast<double>(test[i]);
    signal += r * r;
    noise += d * d;
  }
  if (noise == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

}  // namespace gquant
