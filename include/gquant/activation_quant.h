// Post-training int8 quantization of activations (first user: the Gemma 4
// vision embedder, y = RMSNorm_noweight(soft_tokens) @ W^T, spec gemma4.md
// §5.4). Four parts:
//   1. observers that calibrate a scale and zero point from sample
//      activations, following torch.ao.quantization's MinMaxObserver,
//      MovingAverageMinMaxObserver, PerChannelMinMaxObserver and
//      MovingAveragePerChannelMinMaxObserver (dtype qint8);
//   2. fake quantization (quantize + dequantize in place), as
//      torch.fake_quantize_per_tensor_affine / _per_channel_affine;
//   3. an integer Linear: int8 activations x int8 per-row weights, int32 sums;
//   4. persistence of the parameters in a safetensors file.
//
// An activation is a row-major [rows, channels] float matrix (tokens x
// features); "per channel" means one scale per column (the last dim).
// Integer codes: q = clamp(zero_point + round(x * (1 / scale)), quant_min,
// quant_max), round = half to even; dequantized x' = (q - zero_point) * scale.
#ifndef GQUANT_ACTIVATION_QUANT_H_
#define GQUANT_ACTIVATION_QUANT_H_

#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/quantize.h"

namespace gquant {

class ThreadPool;

// torch.qint8's range, the default of every observer here.
inline constexpr int32_t kInt8QuantMin = -128;
inline constexpr int32_t kInt8QuantMax = 127;

// The observers' floor on the scale: torch.finfo(torch.float32).eps (2^-23),
// the observers' default (not FLT_MIN, which the weight quantizers use).
inline constexpr float kObserverScaleEps = std::numeric_limits<float>::epsilon();

enum class ObserverKind : uint8_t {
  kMinMax,               // running min / max over every batch
  kMovingAverageMinMax,  // first batch sets min / max, later ones move them by c
};

enum class QuantGranularity : uint8_t {
  kPerTensor,   // one scale and zero point
  kPerChannel,  // one per column of the [rows, channels] activation
};

// "min_max" / "moving_average_min_max", and back (InvalidArgument otherwise).
std::string_view ObserverKindName(ObserverKind kind);
absl::StatusOr<ObserverKind> ObserverKindFromName(std::string_view name);

// "per_tensor" / "per_channel", and back (InvalidArgument otherwise).
std::string_view QuantGranularityName(QuantGranularity granularity);
absl::StatusOr<QuantGranularity> QuantGranularityFromName(std::string_view name);

struct ObserverOptions {
  ObserverKind kind = ObserverKind::kMinMax;
  QuantGranularity granularity = QuantGranularity::kPerTensor;
  // torch.per_{tensor,channel}_symmetric: zero point 0 and
  // scale = max(-min, max) / ((quant_max - quant_min) / 2); otherwise affine.
  bool symmetric = false;
  // c of the moving average, in (0, 1] (torch's default 0.01). Ignored by
  // kMinMax.
  float averaging_constant = 0.01f;
};

// Quantization parameters of one activation, plus the calibration record
// they came from (for reports).
struct ActivationQuantParams {
  QuantGranularity granularity = QuantGranularity::kPerTensor;
  bool symmetric = false;
  std::vector<float> scale;         // 1 (per tensor) or channels values, > 0
  std::vector<int32_t> zero_point;  // same size, in [quant_min, quant_max]
  int32_t quant_min = kInt8QuantMin;
  int32_t quant_max = kInt8QuantMax;

  // Calibration record. min_val / max_val are the observer's running values
  // (same size as scale) and are not persisted: empty after a read.
  ObserverKind observer = ObserverKind::kMinMax;
  float averaging_constant = 0;  // as in ObserverOptions; 0 for kMinMax
  std::vector<float> min_val;
  std::vector<float> max_val;
  int64_t rows_observed = 0;     // activation rows (tokens) seen
  int64_t batches_observed = 0;  // Observe calls with at least one row

  friend bool operator==(const ActivationQuantParams&, const ActivationQuantParams&) = default;
};

// Checks what every user of the params relies on. Returns InvalidArgument
// (naming the field and index) for: a quant range not inside int8 or not
// holding 0 (quant_min <= 0 <= quant_max, quant_min < quant_max, as torch
// requires); no scales; scale and zero_point of different sizes; per-tensor
// params with more than one value; a scale that is not positive and finite; a
// zero point outside the quant range; a symmetric zero point other than 0;
// min_val / max_val neither empty nor of the scale's size.
absl::Status ValidateActivationQuantParams(const ActivationQuantParams& params);

// Calibrates an activation's quantization parameters from sample batches.
// The arithmetic is torch's, in float32 (observer buffers are float32):
//   min_max          min = min(min, batch_min), max likewise;
//   moving average   the first batch sets min / max; later ones
//                    min = min + c * (batch_min - min), max likewise, with
//                    c = float(averaging_constant);
// batch_min / batch_max over the whole batch (per tensor) or over its rows
// for each column (per channel). Compute then takes, per value,
//   min_neg = min(min, 0), max_pos = max(max, 0), and
//   affine:    scale = max((max_pos - min_neg) / float(quant_max - quant_min), eps)
//              zero_point = clamp(quant_min - round(min_neg / scale), quant_min, quant_max)
//   symmetric: scale = max(max(-min_neg, max_pos) / ((quant_max - quant_min) / 2), eps)
//              zero_point = 0
// with eps = kObserverScaleEps and round = half to even, each operation a
// float32 one. Including 0 in the range keeps 0 exactly representable.
class ActivationObserver {
 public:
  // Returns InvalidArgument for channels < 1 or, for the moving average, an
  // averaging constant outside (0, 1].
  static absl::StatusOr<ActivationObserver> Create(const ObserverOptions& options,
                                                   int64_t channels);

  // Records one batch: `x` is [rows, channels] (rows may be 0: nothing is
  // recorded). Returns InvalidArgument for rows < 0, x.size() != rows *
  // channels, or a NaN/Inf element (naming its row and column); the state is
  // then unchanged.
  absl::Status Observe(std::span<const float> x, int64_t rows);

  // The parameters for what was observed so far (the observer may go on).
  // Returns FailedPrecondition if no row was observed yet, InvalidArgument
  // if the observed range is too wide for a finite float32 scale.
  absl::StatusOr<ActivationQuantParams> Compute() const;

  const ObserverOptions& options() const { return options_; }
  int64_t channels() const { return channels_; }
  int64_t rows_observed() const { return rows_observed_; }
  int64_t batches_observed() const { return batches_observed_; }

 private:
  ActivationObserver(const ObserverOptions& options, int64_t channels);

  ObserverOptions options_;
  int64_t channels_ = 0;
  // Running min / max: one value per tensor, or channels_ values.
  std::vector<float> min_val_;
  std::vector<float> max_val_;
  int64_t rows_observed_ = 0;
  int64_t batches_observed_ = 0;
};

// Quantizes and dequantizes the [rows, channels] activation `x` in place:
//   x = (clamp(zero_point + round(x * inv_scale), quant_min, quant_max) - zero_point) * scale
// with inv_scale = 1.0f / scale, as torch's CPU fake-quantize kernels (they
// multiply by the float32 reciprocal rather than dividing by the scale; the
// two can differ by one code when x / scale is within an ulp of a half).
// Per tensor, channels = x.size() / rows. Returns
// ValidateActivationQuantParams' errors, and InvalidArgument for rows < 0, a
// size that is not rows * channels, or a NaN/Inf element (naming its row and
// column; nothing is written then).
absl::Status FakeQuantizeActivations(std::span<float> x, int64_t rows,
                                     const ActivationQuantParams& params);

// The integer codes of the same formula: codes[i] = clamp(...) above, for
// either granularity. `codes` must have x.size() elements; the errors are
// FakeQuantizeActivations'.
absl::Status QuantizeActivations(std::span<const float> x, int64_t rows,
                                 const ActivationQuantParams& params, std::span<int8_t> codes);

// The weight format of LinearInt8: int8, one group per row, symmetric,
// min-max (quantize.h; codes in [-128, 127], scale = max|w| / 127.5 rounded
// to bf16, zero point 0).
inline constexpr QuantConfig kInt8RowWeightConfig{
    .bits = 8, .group_size = kPerRowGroupSize, .symmetric = true, .method = QuantMethod::kMinMax};

// An int8 symmetric per-row weight as Quantize produces it with
// kInt8RowWeightConfig: w[o, k] = codes[o, k] * scale[o] (Quantize's
// zero_point output is all zeros and is not needed).
struct Int8Rows {
  std::span<const int8_t> codes;  // [out, in], row-major
  std::span<const float> scale;   // [out]
};

// Owned storage for an Int8Rows.
struct Int8RowWeights {
  std::vector<int8_t> codes;
  std::vector<float> scale;
  Int8Rows view() const { return {codes, scale}; }
};

// Quantizes the float32 [out, in] weight with Quantize (int8, per row,
// symmetric, min-max). Returns Quantize's errors.
absl::StatusOr<Int8RowWeights> QuantizeInt8Rows(std::span<const float> weight, int64_t out,
                                                int64_t in, ThreadPool* pool = nullptr);

// Longest dot product LinearInt8 sums in int32: |q_x - zp_x| <= 255 and
// |q_w| <= 128, so each term is at most 32640 in magnitude and
// 65793 * 32640 = 2147483520 < 2^31 - 1. Gemma 4's widest input is 21504
// (31B down_proj).
inline constexpr int64_t kMaxInt8DotLength = std::numeric_limits<int32_t>::max() / (255 * 128);

// y[rows, out] = x[rows, in] @ w^T through integers: x is quantized with the
// per-tensor `params` (QuantizeActivations), then
//   acc[r, o] = sum_k (q_x[r, k] - zp_x) * q_w[o, k]     (exact, int32)
//   y[r, o]   = float(acc[r, o]) * (scale_x * scale_w[o])  (float32)
// Per-channel activation scales cannot be factored out of the integer sum:
// use FakeQuantizeActivations and a float Linear for them.
// Returns ValidateActivationQuantParams' errors, and InvalidArgument for
// per-channel params, rows < 0, in or out < 1, in > kMaxInt8DotLength,
// mismatched span sizes, a weight scale that is not positive and finite, or
// a NaN/Inf activation (naming its row and column; y is then not written).
absl::Status LinearInt8(std::span<const float> x, int64_t rows, int64_t in, const Int8Rows& weight,
                        int64_t out, const ActivationQuantParams& params, std::span<float> y,
                        ThreadPool* pool = nullptr);

// ---- persistence ----

// The file WriteActivationQuantParams writes in its directory.
inline constexpr std::string_view kActivationQuantFileName = "activation_quant.safetensors";

// Writes `params` (keyed by the name of the weight whose input they
// quantize) to `dir`/activation_quant.safetensors, atomically (a reader sees
// the old file or the complete new one). Per weight W:
//   tensors   "W.input_scale" F32 [n], "W.input_zero_point" I32 [n]
//   metadata  "W.granularity" (per_tensor | per_channel), "W.symmetric"
//             (true | false), "W.quant_min", "W.quant_max", "W.observer"
//             (min_max | moving_average_min_max), "W.averaging_constant",
//             "W.rows_observed", "W.batches_observed"
// plus "gquant.activation_quant.version" = "1" and `extra_metadata` (e.g. the
// model and calibration set), which is not read back.
// Returns InvalidArgument for no params, an empty name, invalid params
// (ValidateActivationQuantParams, message naming the weight), or an extra
// key that collides with a generated one; the codes of SafetensorsWriter.
absl::Status WriteActivationQuantParams(
    const std::string& dir, const std::map<std::string, ActivationQuantParams>& params,
    const std::map<std::string, std::string>& extra_metadata = {});

// Reads what WriteActivationQuantParams wrote (min_val / max_val empty).
// Returns NotFound if the file does not exist; SafetensorsFile::Open's codes
// for a damaged container (a truncated file: DataLoss, or OutOfRange when
// cut inside the tensor data); InvalidArgument,
// naming the tensor or key, for: an unknown version, a tensor that is not
// "<W>.input_scale" / "<W>.input_zero_point", a wrong dtype (F32 / I32) or
// a shape that is not [n >= 1], a scale without its zero point or the
// reverse, sizes that differ, missing or unparsable metadata, and params
// that fail ValidateActivationQuantParams (non-positive or non-finite
// scales, zero points out of range, ...).
absl::StatusOr<std::map<std::string, ActivationQuantParams>> ReadActivationQuantParams(
    const std::string& dir);

// 10 log10(sum ref^2 / sum (ref - test)^2), sums in double: +inf when the
// spans are equal (even both zero), -inf when ref is all zero and test is
// not, NaN when the sizes differ.
double SignalToNoiseDb(std::span<const float> reference, std::span<const float> test);

}  // namespace gquant

#endif  // GQUANT_ACTIVATION_QUANT_H_
