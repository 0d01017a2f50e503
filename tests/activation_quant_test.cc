// Int8 activation quantization (activation_quant.h): observers against hand
// values and a float64 reimplementation of torch.ao.quantization's formulas,
// fake quantization, the integer Linear against float64 references, the
// parameter file, and an end-to-end calibration of a synthetic vision
// embedder (RMSNorm_noweight + Linear) with held-out SNRs.
#include "gquant/activation_quant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gemma4/cpu_ops.h"
#include "gquant/dtype.h"
#include "gquant/quantize.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"
#include "quantize_test_util.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;
using ::gquant::testing::RoundHalfEven;
using ::gquant::testing::TempDir;
using Code = absl::StatusCode;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

ActivationObserver MakeObserver(ObserverKind kind, QuantGranularity granularity, bool symmetric,
                                int64_t channels, float averaging_constant = 0.01f) {
  auto observer = ActivationObserver::Create({.kind = kind,
                                              .granularity = granularity,
                                              .symmetric = symmetric,
                                              .averaging_constant = averaging_constant},
                                             channels);
  REQUIRE_OK(observer);
  return *std::move(observer);
}

ActivationQuantParams PerTensor(float scale, int32_t zero_point, bool symmetric = false) {
  ActivationQuantParams p;
  p.symmetric = symmetric;
  p.scale = {scale};
  p.zero_point = {zero_point};
  return p;
}

// ---- names and validation ----

TEST_CASE("activation quant names round trip", "[activation_quant]") {
  for (ObserverKind kind : {ObserverKind::kMinMax, ObserverKind::kMovingAverageMinMax}) {
    auto back = ObserverKindFromName(ObserverKindName(kind));
    REQUIRE_OK(back);
    CHECK(*back == kind);
  }
  for (QuantGranularity g : {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel}) {
    auto back = QuantGranularityFromName(QuantGranularityName(g));
    REQUIRE_OK(back);
    CHECK(*back == g);
  }
  CHECK(ObserverKindName(ObserverKind::kMovingAverageMinMax) == "moving_average_min_max");
  CHECK(QuantGranularityName(QuantGranularity::kPerChannel) == "per_channel");
  REQUIRE_STATUS_IS(ObserverKindFromName("histogram"), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(QuantGranularityFromName("per_row"), Code::kInvalidArgument);
}

TEST_CASE("ValidateActivationQuantParams names the bad field", "[activation_quant]") {
  REQUIRE_OK(ValidateActivationQuantParams(PerTensor(0.5f, -3)));
  const auto expect_bad = [](const ActivationQuantParams& p, const std::string& fragment) {
    const absl::Status status = ValidateActivationQuantParams(p);
    INFO(status.ToString());
    CHECK(status.code() == Code::kInvalidArgument);
    CHECK(std::string(status.message()).find(fragment) != std::string::npos);
  };
  ActivationQuantParams p = PerTensor(0.5f, 0);
  p.scale.clear();
  p.zero_point.clear();
  expect_bad(p, "scale");
  expect_bad(PerTensor(0.0f, 0), "scale[0]");
  expect_bad(PerTensor(-1.0f, 0), "scale[0]");
  expect_bad(PerTensor(kNaN, 0), "scale[0]");
  expect_bad(PerTensor(kInf, 0), "scale[0]");
  expect_bad(PerTensor(FLT_MIN / 4, 0), "scale[0]");  // 1 / scale would overflow
  expect_bad(PerTensor(1.0f, 128), "zero_point[0]");
  expect_bad(PerTensor(1.0f, -129), "zero_point[0]");
  expect_bad(PerTensor(1.0f, 5, /*symmetric=*/true), "zero_point[0]");
  p = PerTensor(1.0f, 0);
  p.quant_min = -129;
  expect_bad(p, "quant range");
  p.quant_min = 1;  // must hold 0
  expect_bad(p, "quant range");
  p = PerTensor(1.0f, 0);
  p.scale = {1.0f, 2.0f};
  p.zero_point = {0, 0};
  expect_bad(p, "per_tensor");
  p.granularity = QuantGranularity::kPerChannel;
  REQUIRE_OK(ValidateActivationQuantParams(p));
  p.zero_point = {0};
  expect_bad(p, "zero_point");
  p.zero_point = {0, 0};
  p.min_val = {1.0f};
  expect_bad(p, "min_val");
}

// ---- observers: hand-computed values ----

TEST_CASE("min-max observer matches hand-computed qparams", "[activation_quant]") {
  // Two batches of [2, 2]: overall min -2, max 3.
  const std::vector<float> batch1 = {-1.0f, 0.5f, 2.0f, 3.0f};
  const std::vector<float> batch2 = {-2.0f, 1.0f, 0.0f, 0.25f};

  SECTION("per tensor, affine") {
    auto obs = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, false, 2);
    REQUIRE_OK(obs.Observe(batch1, 2));
    REQUIRE_OK(obs.Observe(batch2, 2));
    auto p = obs.Compute();
    REQUIRE_OK(p);
    const float scale = 5.0f / 255.0f;  // (3 - (-2)) / 255
    CHECK(p->scale == std::vector<float>{scale});
    // -128 - round(-2 / scale) = -128 - round(-102.0) = -26
    CHECK(p->zero_point == std::vector<int32_t>{-26});
    CHECK(p->min_val == std::vector<float>{-2.0f});
    CHECK(p->max_val == std::vector<float>{3.0f});
    CHECK(p->rows_observed == 4);
    CHECK(p->batches_observed == 2);
    CHECK(p->observer == ObserverKind::kMinMax);
    CHECK(p->averaging_constant == 0.0f);
    REQUIRE_OK(ValidateActivationQuantParams(*p));
  }
  SECTION("per tensor, symmetric") {
    auto obs = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, true, 2);
    REQUIRE_OK(obs.Observe(batch1, 2));
    REQUIRE_OK(obs.Observe(batch2, 2));
    auto p = obs.Compute();
    REQUIRE_OK(p);
    CHECK(p->scale == std::vector<float>{3.0f / 127.5f});  // max(2, 3) / ((127 + 128) / 2)
    CHECK(p->zero_point == std::vector<int32_t>{0});
    CHECK(p->symmetric);
  }
  SECTION("per channel, affine") {
    auto obs = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerChannel, false, 2);
    REQUIRE_OK(obs.Observe(batch1, 2));
    REQUIRE_OK(obs.Observe(batch2, 2));
    auto p = obs.Compute();
    REQUIRE_OK(p);
    // Column 0: {-1, 2, -2, 0} -> [-2, 2]; column 1: {0.5, 3, 1, 0.25} ->
    // [0.25, 3], whose min_neg is 0 (the range always holds 0).
    CHECK(p->min_val == std::vector<float>{-2.0f, 0.25f});
    CHECK(p->max_val == std::vector<float>{2.0f, 3.0f});
    const float s0 = 4.0f / 255.0f, s1 = 3.0f / 255.0f;
    CHECK(p->scale == std::vector<float>{s0, s1});
    // float32 4/255 rounds up, so -2 / s0 lands just above -127.5 and
    // rounds to -127: zero point -128 + 127 = -1 (float64 would tie at 127.5).
    CHECK(-2.0f / s0 > -127.5f);
    CHECK(-2.0f / s0 < -127.49f);
    CHECK(p->zero_point == std::vector<int32_t>{-1, -128});
  }
  SECTION("zero point rounds half to even") {
    // scale = (31.5625 + 0.3125) / 255 = 0.125 exactly, and min / scale =
    // -2.5, a tie: round gives -2 (half to even; half away would give -3),
    // so zero point = -128 + 2 = -126.
    auto obs = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, false, 2);
    REQUIRE_OK(obs.Observe(std::vector<float>{-0.3125f, 31.5625f}, 1));
    auto p = obs.Compute();
    REQUIRE_OK(p);
    CHECK(p->scale[0] == 0.125f);
    CHECK(p->zero_point[0] == -126);
  }
  SECTION("all-positive, all-negative and all-zero data") {
    auto positive = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, false, 4);
    REQUIRE_OK(positive.Observe(std::vector<float>{1.0f, 2.0f, 3.0f, 4.0f}, 1));
    auto p = positive.Compute();
    REQUIRE_OK(p);
    CHECK(p->scale[0] == 4.0f / 255.0f);  // min_neg = 0, not 1
    CHECK(p->zero_point[0] == -128);      // 0 is the lowest code

    auto negative = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, false, 2);
    REQUIRE_OK(negative.Observe(std::vector<float>{-4.0f, -1.0f}, 1));
    p = negative.Compute();
    REQUIRE_OK(p);
    CHECK(p->scale[0] == 4.0f / 255.0f);  // max_pos = 0
    CHECK(p->zero_point[0] == 127);       // -128 - round(-255)

    for (bool symmetric : {false, true}) {
      auto zero = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, symmetric, 3);
      REQUIRE_OK(zero.Observe(std::vector<float>{0.0f, -0.0f, 0.0f}, 1));
      p = zero.Compute();
      REQUIRE_OK(p);
      CHECK(p->scale[0] == kObserverScaleEps);  // eps floor
      CHECK(p->scale[0] == std::ldexp(1.0f, -23));
      CHECK(p->zero_point[0] == (symmetric ? 0 : -128));
    }
  }
}

TEST_CASE("moving-average observer matches hand-computed values", "[activation_quant]") {
  for (QuantGranularity g : {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel}) {
    INFO("granularity " << QuantGranularityName(g));
    auto obs = MakeObserver(ObserverKind::kMovingAverageMinMax, g, false, 1, 0.5f);
    REQUIRE_OK(obs.Observe(std::vector<float>{-1.0f, 1.0f}, 2));  // first batch sets [-1, 1]
    REQUIRE_OK(obs.Observe(std::vector<float>{-3.0f, 5.0f}, 2));
    REQUIRE_OK(obs.Observe(std::vector<float>{}, 0));  // empty: no change, not counted
    auto p = obs.Compute();
    REQUIRE_OK(p);
    // min = -1 + 0.5 (-3 - -1) = -2, max = 1 + 0.5 (5 - 1) = 3
    CHECK(p->min_val == std::vector<float>{-2.0f});
    CHECK(p->max_val == std::vector<float>{3.0f});
    CHECK(p->scale[0] == 5.0f / 255.0f);
    CHECK(p->zero_point[0] == -26);
    CHECK(p->batches_observed == 2);
    CHECK(p->rows_observed == 4);
    CHECK(p->averaging_constant == 0.5f);
  }
  // A plain min-max observer keeps the extremes instead.
  auto obs = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, false, 1);
  REQUIRE_OK(obs.Observe(std::vector<float>{-1.0f, 1.0f}, 2));
  REQUIRE_OK(obs.Observe(std::vector<float>{-3.0f, 5.0f}, 2));
  auto p = obs.Compute();
  REQUIRE_OK(p);
  CHECK(p->min_val == std::vector<float>{-3.0f});
  CHECK(p->max_val == std::vector<float>{5.0f});
}

// ---- observers: float64 reimplementation of torch's formulas ----

// observer.py in float64: running min/max per value, then _calculate_qparams.
struct ReferenceObserver {
  ObserverOptions options;
  int64_t channels;
  std::vector<double> min_val, max_val;

  void Observe(const std::vector<float>& x, int64_t rows) {
    const bool per_channel = options.granularity == QuantGranularity::kPerChannel;
    const size_t n = per_channel ? channels : 1;
    std::vector<double> lo(n, std::numeric_limits<double>::infinity());
    std::vector<double> hi(n, -std::numeric_limits<double>::infinity());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < channels; ++c) {
        const size_t i = per_channel ? c : 0;
        lo[i] = std::min<double>(lo[i], x[r * channels + c]);
        hi[i] = std::max<double>(hi[i], x[r * channels + c]);
      }
    }
    if (min_val.empty()) {
      min_val = lo;
      max_val = hi;
      return;
    }
    for (size_t i = 0; i < n; ++i) {
      if (options.kind == ObserverKind::kMinMax) {
        min_val[i] = std::min(min_val[i], lo[i]);
        max_val[i] = std::max(max_val[i], hi[i]);
      } else {
        const double c = options.averaging_constant;
        min_val[i] = min_val[i] + c * (lo[i] - min_val[i]);
        max_val[i] = max_val[i] + c * (hi[i] - max_val[i]);
      }
    }
  }

  // scale and the unrounded zero-point shift min_neg / scale.
  void Compute(size_t i, double& scale, double& shift) const {
    const double min_neg = std::min(min_val[i], 0.0), max_pos = std::max(max_val[i], 0.0);
    const double eps = std::ldexp(1.0, -23);
    if (options.symmetric) {
      scale = std::max(std::max(-min_neg, max_pos) / (255.0 / 2), eps);
      shift = 0;
    } else {
      scale = std::max((max_pos - min_neg) / 255.0, eps);
      shift = min_neg / scale;
    }
  }
};

TEST_CASE("observers match a float64 reimplementation of torch's formulas", "[activation_quant]") {
  const int64_t channels = GENERATE(1, 7, 64);
  CAPTURE(channels);
  auto rng = MakeRng();
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::normal_distribution<float> normal;

  // Per-channel scales over 5 orders of magnitude, and offsets that make
  // some channels all-positive or all-negative (min_neg = 0 / max_pos = 0).
  std::vector<float> channel_scale(channels), channel_offset(channels);
  for (int64_t c = 0; c < channels; ++c) {
    channel_scale[c] = static_cast<float>(std::pow(10.0, -3.0 + 5.0 * unit(rng)));
    const double kind = unit(rng);
    channel_offset[c] = kind < 0.25 ? 6.0f : kind < 0.5 ? -6.0f : 0.0f;
  }
  const int num_batches = 6;
  std::vector<std::vector<float>> batches;
  std::vector<int64_t> batch_rows;
  const bool all_positive = channels == 7;  // one shape with all-positive data
  for (int b = 0; b < num_batches; ++b) {
    const int64_t rows = 1 + static_cast<int64_t>(unit(rng) * 40);
    std::vector<float> x(rows * channels);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < channels; ++c) {
        float v = (normal(rng) + channel_offset[c]) * channel_scale[c];
        if (all_positive) v = std::abs(v) + 0.1f * channel_scale[c];
        x[r * channels + c] = v;
      }
    }
    batches.push_back(std::move(x));
    batch_rows.push_back(rows);
  }

  for (ObserverKind kind : {ObserverKind::kMinMax, ObserverKind::kMovingAverageMinMax}) {
    for (QuantGranularity g : {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel}) {
      for (bool symmetric : {false, true}) {
        INFO(ObserverKindName(kind)
             << ", " << QuantGranularityName(g) << (symmetric ? ", symmetric" : ", affine"));
        // c = 0.25 moves the average visibly within six batches; torch's
        // default 0.01 is covered by the end-to-end test.
        const ObserverOptions options{kind, g, symmetric, 0.25f};
        auto obs = ActivationObserver::Create(options, channels);
        REQUIRE_OK(obs);
        ReferenceObserver ref{options, channels, {}, {}};
        for (int b = 0; b < num_batches; ++b) {
          REQUIRE_OK(obs->Observe(batches[b], batch_rows[b]));
          ref.Observe(batches[b], batch_rows[b]);
        }
        auto p = obs->Compute();
        REQUIRE_OK(p);
        REQUIRE_OK(ValidateActivationQuantParams(*p));
        const size_t n = g == QuantGranularity::kPerChannel ? channels : 1;
        REQUIRE(p->scale.size() == n);
        for (size_t i = 0; i < n; ++i) {
          CAPTURE(i);
          // float32 vs float64 arithmetic: min-max picks the same floats
          // (exact); the moving average rounds 3 float32 operations per
          // batch, each 2^-24 relative to the running range, so 6 batches
          // stay far below 1e-5 of the range.
          const double range = std::max(std::abs(ref.min_val[i]), std::abs(ref.max_val[i]));
          const double tol = kind == ObserverKind::kMinMax ? 0.0 : 1e-5 * range;
          CHECK(std::abs(p->min_val[i] - ref.min_val[i]) <= tol);
          CHECK(std::abs(p->max_val[i] - ref.max_val[i]) <= tol);
          double scale, shift;
          ref.Compute(i, scale, shift);
          // Scale: a float32 division by 255 (or 127.5) of float32 inputs
          // that are within tol of the reference's: relative 1e-5.
          CHECK(std::abs(p->scale[i] - scale) <= 1e-5 * scale);
          // Zero point: exact unless the shift lies within the float32
          // rounding (1e-5 of 255 codes) of a half, where round may go
          // either way.
          const int32_t expected =
              symmetric ? 0
                        : std::clamp(static_cast<int32_t>(-128 - RoundHalfEven(shift)), -128, 127);
          const double distance_to_half = std::abs(std::abs(shift - std::floor(shift)) - 0.5);
          if (distance_to_half > 1e-2) {
            CHECK(p->zero_point[i] == expected);
          } else {
            CHECK(std::abs(p->zero_point[i] - expected) <= 1);
          }
          if (all_positive && !symmetric) CHECK(p->zero_point[i] == -128);
        }
      }
    }
  }
}

TEST_CASE("observer rejects bad input and keeps its state", "[activation_quant]") {
  REQUIRE_STATUS_IS(ActivationObserver::Create({}, 0), Code::kInvalidArgument);
  for (float c : {0.0f, -0.1f, 1.5f, kNaN}) {
    CAPTURE(c);
    REQUIRE_STATUS_IS(ActivationObserver::Create(
                          {.kind = ObserverKind::kMovingAverageMinMax, .averaging_constant = c}, 4),
                      Code::kInvalidArgument);
  }
  REQUIRE_OK(ActivationObserver::Create(
      {.kind = ObserverKind::kMovingAverageMinMax, .averaging_constant = 1.0f}, 4));

  auto obs = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerChannel, false, 3);
  REQUIRE_STATUS_IS(obs.Compute(), Code::kFailedPrecondition);
  REQUIRE_OK(obs.Observe(std::vector<float>{}, 0));
  REQUIRE_STATUS_IS(obs.Compute(), Code::kFailedPrecondition);  // rows = 0 records nothing

  const std::vector<float> good = {1.0f, -2.0f, 3.0f, 0.5f, 0.25f, -4.0f};
  REQUIRE_OK(obs.Observe(good, 2));
  auto before = obs.Compute();
  REQUIRE_OK(before);

  REQUIRE_STATUS_IS(obs.Observe(good, 3), Code::kInvalidArgument);  // 6 != 3 * 3
  REQUIRE_STATUS_IS(obs.Observe(good, -2), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(obs.Observe(std::span<const float>(good).first(5), 2), Code::kInvalidArgument);
  for (float bad : {kNaN, kInf, -kInf}) {
    std::vector<float> x = good;
    x[5] = bad;  // row 1, column 2
    const absl::Status status = obs.Observe(x, 2);
    INFO(status.ToString());
    CHECK(status.code() == Code::kInvalidArgument);
    CHECK(std::string(status.message()).find("row 1, column 2") != std::string::npos);
  }
  auto after = obs.Compute();
  REQUIRE_OK(after);
  CHECK(*after == *before);
}

// ---- fake quantization ----

// Random activations with differently-scaled channels.
std::vector<float> RandomActivations(std::mt19937_64& rng, int64_t rows, int64_t channels) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> unit;
  std::vector<float> gain(channels);
  for (float& g : gain) g = std::pow(10.0f, -2.0f + 3.0f * unit(rng));
  std::vector<float> x(rows * channels);
  for (int64_t i = 0; i < rows * channels; ++i) x[i] = normal(rng) * gain[i % channels] + 0.1f;
  return x;
}

TEST_CASE("fake quantization rounds to within half a step and clamps outside the range",
          "[activation_quant]") {
  auto rng = MakeRng();
  const int64_t rows = 37, channels = 19;
  const std::vector<float> x = RandomActivations(rng, rows, channels);
  for (QuantGranularity g : {QuantGranularity::kPerTensor, QuantGranularity::kPerChannel}) {
    for (bool symmetric : {false, true}) {
      INFO(QuantGranularityName(g) << (symmetric ? ", symmetric" : ", affine"));
      auto obs = MakeObserver(ObserverKind::kMinMax, g, symmetric, channels);
      REQUIRE_OK(obs.Observe(x, rows));
      auto p = obs.Compute();
      REQUIRE_OK(p);
      const auto scale_of = [&](int64_t c) { return p->scale[p->scale.size() == 1 ? 0 : c]; };
      const auto zero_of = [&](int64_t c) {
        return p->zero_point[p->zero_point.size() == 1 ? 0 : c];
      };

      std::vector<float> y = x;
      REQUIRE_OK(FakeQuantizeActivations(y, rows, *p));
      std::vector<int8_t> codes(x.size(), 0x55);
      REQUIRE_OK(QuantizeActivations(x, rows, *p, codes));
      for (int64_t i = 0; i < rows * channels; ++i) {
        const int64_t c = i % channels;
        const float s = scale_of(c);
        CAPTURE(i, x[i], y[i], s);
        // Inside the observed range the error is at most half a step; the
        // ends may round half a step out and clamp back, still <= s/2. Slack:
        // x * (1/s) carries 2 float32 roundings of |x/s| <= 256 codes, and
        // the dequantization one of <= 255 s: 1e-4 s in all.
        CHECK(std::abs(static_cast<double>(y[i]) - x[i]) <= s * (0.5 + 1e-4));
        // y is a code's value, and the code is QuantizeActivations'.
        CHECK(y[i] == static_cast<float>(codes[i] - zero_of(c)) * s);
      }

      // Outside the range: clamped to the end codes.
      std::vector<float> far(2 * channels);
      for (int64_t c = 0; c < channels; ++c) {
        far[c] = 1e30f;
        far[channels + c] = -1e30f;
      }
      std::vector<float> far_q = far;
      REQUIRE_OK(FakeQuantizeActivations(far_q, 2, *p));
      for (int64_t c = 0; c < channels; ++c) {
        CHECK(far_q[c] == static_cast<float>(127 - zero_of(c)) * scale_of(c));
        CHECK(far_q[channels + c] == static_cast<float>(-128 - zero_of(c)) * scale_of(c));
      }
    }
  }
}

TEST_CASE("fake quantization rounds half to even and multiplies by the reciprocal",
          "[activation_quant]") {
  std::vector<float> x = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -127.5f};
  REQUIRE_OK(FakeQuantizeActivations(x, 1, PerTensor(1.0f, 0)));
  CHECK(x == std::vector<float>{0.0f, 2.0f, 2.0f, -0.0f, -2.0f, -2.0f, 126.0f, -128.0f});

  // torch's kernels compute x * (1.0f / scale), not x / scale. Find values
  // where the two round to different codes and check which one we follow.
  int differing = 0;
  for (float s : {0.3f, 0.7f, 0.11f, 1.9f, 0.013f}) {
    const float inv = 1.0f / s;
    for (int k = -120; k < 120 && differing < 50; ++k) {
      for (float v : {(k + 0.5f) * s, std::nextafter((k + 0.5f) * s, 0.0f),
                      std::nextafter((k + 0.5f) * s, 1e9f)}) {
        const float by_reciprocal = std::nearbyint(v * inv);
        if (by_reciprocal == std::nearbyint(v / s)) continue;
        ++differing;
        std::vector<float> one = {v};
        REQUIRE_OK(FakeQuantizeActivations(one, 1, PerTensor(s, 0)));
        CAPTURE(s, v);
        CHECK(one[0] == by_reciprocal * s);
      }
    }
  }
  INFO("values where x * (1/s) and x / s round apart: " << differing);
  CHECK(differing > 0);
}

TEST_CASE("fake quantization rejects bad input without writing", "[activation_quant]") {
  ActivationQuantParams per_channel;
  per_channel.granularity = QuantGranularity::kPerChannel;
  per_channel.scale = {0.1f, 0.2f, 0.3f};
  per_channel.zero_point = {0, 1, -1};
  std::vector<float> x = {1, 2, 3, 4, 5, 6};
  REQUIRE_STATUS_IS(FakeQuantizeActivations(x, 3, per_channel), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(FakeQuantizeActivations(x, -1, per_channel), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(FakeQuantizeActivations(x, 4, PerTensor(0.1f, 0)), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(FakeQuantizeActivations(x, 2, PerTensor(0.0f, 0)), Code::kInvalidArgument);
  std::vector<int8_t> codes(5);
  REQUIRE_STATUS_IS(QuantizeActivations(x, 2, per_channel, codes), Code::kInvalidArgument);
  x[4] = kNaN;  // row 1, column 1
  const std::vector<float> before = x;
  const absl::Status status = FakeQuantizeActivations(x, 2, per_channel);
  INFO(status.ToString());
  CHECK(status.code() == Code::kInvalidArgument);
  CHECK(std::string(status.message()).find("row 1, column 1") != std::string::npos);
  CHECK(std::memcmp(x.data(), before.data(), x.size() * sizeof(float)) == 0);
  std::vector<float> empty;
  REQUIRE_OK(FakeQuantizeActivations(empty, 0, per_channel));
}

// ---- integer Linear ----

// The reference's own quantizer (torch's formula, written out again):
// clamp(zp + round_half_even(float(x * float(1 / s))), qmin, qmax).
int32_t ReferenceCode(float x, float s, int32_t zp) {
  const float product = x * (1.0f / s);
  const double q = zp + RoundHalfEven(product);
  return static_cast<int32_t>(std::clamp(q, -128.0, 127.0));
}

TEST_CASE("LinearInt8 equals integer math and stays within the step-size bound",
          "[activation_quant]") {
  auto rng = MakeRng();
  std::normal_distribution<float> normal;
  struct Shape {
    int64_t rows, in, out;
  };
  for (const Shape& shape :
       {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{17, 768, 64}, Shape{2, 1536, 33}, Shape{5, 100, 1}}) {
    for (bool symmetric : {false, true}) {
      const auto [rows, in, out] = shape;
      CAPTURE(rows, in, out, symmetric);
      std::vector<float> x = RandomActivations(rng, rows, in);
      std::vector<float> w(out * in);
      for (float& v : w) v = normal(rng) / std::sqrt(static_cast<float>(in));
      auto weights = QuantizeInt8Rows(w, out, in);
      REQUIRE_OK(weights);

      auto obs = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerTensor, symmetric, in);
      REQUIRE_OK(obs.Observe(x, rows));
      auto p = obs.Compute();
      REQUIRE_OK(p);
      const float sx = p->scale[0];
      const int32_t zp = p->zero_point[0];

      std::vector<float> y(rows * out, kNaN);  // poisoned
      REQUIRE_OK(LinearInt8(x, rows, in, weights->view(), out, *p, y));

      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t o = 0; o < out; ++o) {
          CAPTURE(r, o);
          const float sw = weights->scale[o];
          // 1. The same integer math in float64: sums of integers below 2^53
          //    are exact, so acc is the int32 sum. y = float(acc) * (sx * sw)
          //    is injective in acc while |acc| < 2^24, so equal y means equal
          //    sums.
          double acc = 0, abs_w = 0, abs_xq = 0, weight_part = 0, exact = 0;
          for (int64_t k = 0; k < in; ++k) {
            const double centered = ReferenceCode(x[r * in + k], sx, zp) - zp;
            const double code_w = weights->codes[o * in + k];
            acc += centered * code_w;
            const double xq = centered * sx, wq = code_w * sw, wf = w[o * in + k];
            exact += static_cast<double>(x[r * in + k]) * wf;
            abs_w += std::abs(wf);
            abs_xq += std::abs(xq);
            weight_part += xq * (wf - wq);  // the weight quantization's share
          }
          REQUIRE(std::abs(acc) < 16777216.0);
          CHECK(y[r * out + o] == static_cast<float>(acc) * (sx * sw));

          // 2. Against the float Linear: y - exact = -sum (x - xq) w -
          //    sum xq (w - wq). The second sum is computed exactly above; the
          //    first is at most (sx/2)(1 + 1e-4) sum |w| (the observer saw
          //    these rows, so nothing clamps; slack as in the fake-quant
          //    test). Rounding float(acc) and the two products costs at most
          //    3 * 2^-24 < 2e-7 of sum |xq| |wq| <= abs_xq * max|w| * 1.01
          //    (|wq| <= |w| (1 + 1/128)); we allow 1e-6 of that.
          double max_w = 0;
          for (int64_t k = 0; k < in; ++k)
            max_w = std::max(max_w, std::abs(static_cast<double>(w[o * in + k])));
          const double bound = 0.5 * sx * (1 + 1e-4) * abs_w + 1e-6 * abs_xq * max_w * 1.01;
          const double activation_error = y[r * out + o] - exact + weight_part;
          CHECK(std::abs(activation_error) <= bound);
        }
      }
    }
  }
}

TEST_CASE("LinearInt8 int32 sums reach their bound without overflow", "[activation_quant]") {
  static_assert(kMaxInt8DotLength == 65793);
  static_assert(kMaxInt8DotLength * 255 * 128 <= std::numeric_limits<int32_t>::max());
  static_assert((kMaxInt8DotLength + 1) * 255 * 128 > std::numeric_limits<int32_t>::max());
  // The worst case: every x clamps to code -128 with zero point 127
  // (q - zp = -255) against weight codes of -128.
  const int64_t in = kMaxInt8DotLength;
  const std::vector<float> x(in, -1000.0f);
  const std::vector<int8_t> codes(in, -128);
  const std::vector<float> scale = {1.0f};
  std::vector<float> y = {kNaN};
  REQUIRE_OK(LinearInt8(x, 1, in, {codes, scale}, 1, PerTensor(1.0f, 127), y));
  CHECK(y[0] == 2147483520.0f);  // 65793 * 255 * 128 = 2^7 (2^24 - 1): exact in float
  const std::vector<float> x_long(in + 1, 1.0f);
  const std::vector<int8_t> codes_long(in + 1, 1);
  REQUIRE_STATUS_IS(LinearInt8(x_long, 1, in + 1, {codes_long, scale}, 1, PerTensor(1.0f, 0), y),
                    Code::kInvalidArgument);
}

TEST_CASE("LinearInt8 rejects bad arguments without writing", "[activation_quant]") {
  const int64_t rows = 2, in = 3, out = 2;
  const std::vector<float> x = {1, 2, 3, -1, -2, -3};
  const std::vector<int8_t> codes = {1, 2, 3, 4, 5, 6};
  const std::vector<float> scale = {0.5f, 0.25f};
  const Int8Rows weight{codes, scale};
  const ActivationQuantParams p = PerTensor(0.1f, 0);
  std::vector<float> y(rows * out, kNaN);
  REQUIRE_OK(LinearInt8(x, rows, in, weight, out, p, y));
  // x codes {10, 20, 30}: row 0 = 0.1 * 0.5 * (10 + 40 + 90), ...
  CHECK(y[0] == 140.0f * (0.1f * 0.5f));
  CHECK(y[3] == -320.0f * (0.1f * 0.25f));

  std::fill(y.begin(), y.end(), kNaN);
  ActivationQuantParams per_channel = p;
  per_channel.granularity = QuantGranularity::kPerChannel;
  per_channel.scale = {0.1f, 0.1f, 0.1f};
  per_channel.zero_point = {0, 0, 0};
  const absl::Status status = LinearInt8(x, rows, in, weight, out, per_channel, y);
  INFO(status.ToString());
  CHECK(status.code() == Code::kInvalidArgument);
  CHECK(std::string(status.message()).find("per_tensor") != std::string::npos);
  REQUIRE_STATUS_IS(LinearInt8(x, rows, in, weight, out, PerTensor(-1.0f, 0), y),
                    Code::kInvalidArgument);
  REQUIRE_STATUS_IS(LinearInt8(x, rows + 1, in, weight, out, p, y), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(LinearInt8(x, rows, in, weight, out + 1, p, y), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(LinearInt8(x, rows, in, weight, out, p, std::span(y).first(3)),
                    Code::kInvalidArgument);
  REQUIRE_STATUS_IS(LinearInt8(x, rows, 0, weight, out, p, y), Code::kInvalidArgument);
  const std::vector<float> bad_scale = {0.5f, 0.0f};
  REQUIRE_STATUS_IS(LinearInt8(x, rows, in, {codes, bad_scale}, out, p, y), Code::kInvalidArgument);
  std::vector<float> x_nan = x;
  x_nan[4] = kInf;  // row 1, column 1
  const absl::Status nan_status = LinearInt8(x_nan, rows, in, weight, out, p, y);
  INFO(nan_status.ToString());
  CHECK(nan_status.code() == Code::kInvalidArgument);
  CHECK(std::string(nan_status.message()).find("row 1, column 1") != std::string::npos);
  for (float v : y) CHECK(std::isnan(v));  // nothing written on any error
}

TEST_CASE("QuantizeInt8Rows is Quantize with the int8 per-row symmetric config",
          "[activation_quant]") {
  auto rng = MakeRng();
  std::normal_distribution<float> normal;
  const int64_t out = 9, in = 40;
  std::vector<float> w(out * in);
  for (float& v : w) v = normal(rng);
  auto q = QuantizeInt8Rows(w, out, in);
  REQUIRE_OK(q);
  std::vector<int8_t> codes(out * in);
  std::vector<float> scale(out), zero(out, 1.0f);
  REQUIRE_OK(Quantize(kInt8RowWeightConfig, DType::kF32, std::as_bytes(std::span(w)), out, in,
                      {codes, scale, zero}));
  CHECK(q->codes == codes);
  CHECK(q->scale == scale);
  for (float z : zero) CHECK(z == 0.0f);
  REQUIRE_STATUS_IS(QuantizeInt8Rows(w, out, in + 1), Code::kInvalidArgument);
}

// ---- persistence ----

std::map<std::string, ActivationQuantParams> SampleParams(std::mt19937_64& rng) {
  const std::vector<float> x = RandomActivations(rng, 20, 6);
  auto per_tensor = MakeObserver(ObserverKind::kMovingAverageMinMax, QuantGranularity::kPerTensor,
                                 false, 6, 0.01f);
  auto per_channel = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerChannel, true, 6);
  for (int b = 0; b < 2; ++b) {
    REQUIRE_OK(per_tensor.Observe(std::span(x).subspan(b * 60, 60), 10));
    REQUIRE_OK(per_channel.Observe(std::span(x).subspan(b * 60, 60), 10));
  }
  auto a = per_tensor.Compute();
  auto b = per_channel.Compute();
  REQUIRE_OK(a);
  REQUIRE_OK(b);
  return {{"model.embed_vision.embedding_projection.weight", *a},
          {"model.vision_tower.encoder.layers.0.mlp.down_proj.linear.weight", *b}};
}

TEST_CASE("activation quant params round-trip through the safetensors file", "[activation_quant]") {
  auto rng = MakeRng();
  TempDir dir;
  REQUIRE_STATUS_IS(ReadActivationQuantParams(dir.path().string()), Code::kNotFound);

  const auto params = SampleParams(rng);
  REQUIRE_OK(
      WriteActivationQuantParams(dir.path().string(), params, {{"calibration_set", "synthetic"}}));
  auto back = ReadActivationQuantParams(dir.path().string());
  REQUIRE_OK(back);
  REQUIRE(back->size() == params.size());
  for (const auto& [name, p] : params) {
    CAPTURE(name);
    REQUIRE(back->count(name) == 1);
    ActivationQuantParams expected = p;
    expected.min_val.clear();  // not persisted
    expected.max_val.clear();
    CHECK(back->at(name) == expected);
  }

  // The file's layout, as other readers see it.
  auto file = SafetensorsFile::Open(dir.File(std::string(kActivationQuantFileName)));
  REQUIRE_OK(file);
  const std::string w = "model.embed_vision.embedding_projection.weight";
  const SafetensorsTensorInfo* scale = file->Find(w + ".input_scale");
  const SafetensorsTensorInfo* zero = file->Find(w + ".input_zero_point");
  REQUIRE(scale != nullptr);
  REQUIRE(zero != nullptr);
  CHECK(scale->dtype == DType::kF32);
  CHECK(zero->dtype == DType::kI32);
  CHECK(scale->shape == std::vector<int64_t>{1});
  CHECK(file->metadata().at("calibration_set") == "synthetic");
  CHECK(file->metadata().at(w + ".observer") == "moving_average_min_max");
  CHECK(file->metadata().at(w + ".granularity") == "per_tensor");
  CHECK(file->metadata().at(w + ".rows_observed") == "20");
  CHECK(file->metadata().at("gquant.activation_quant.version") == "1");

  // Rewriting replaces the file.
  std::map<std::string, ActivationQuantParams> one = {{"w", PerTensor(0.25f, 3)}};
  REQUIRE_OK(WriteActivationQuantParams(dir.path().string(), one));
  back = ReadActivationQuantParams(dir.path().string());
  REQUIRE_OK(back);
  CHECK(*back == one);
}

TEST_CASE("WriteActivationQuantParams rejects bad params", "[activation_quant]") {
  TempDir dir;
  const std::string d = dir.path().string();
  REQUIRE_STATUS_IS(WriteActivationQuantParams(d, {}), Code::kInvalidArgument);
  REQUIRE_STATUS_IS(WriteActivationQuantParams(d, {{"", PerTensor(1.0f, 0)}}),
                    Code::kInvalidArgument);
  const absl::Status status = WriteActivationQuantParams(
      d, {{"good", PerTensor(1.0f, 0)}, {"blocks.3.fc", PerTensor(0.0f, 0)}});
  INFO(status.ToString());
  CHECK(status.code() == Code::kInvalidArgument);
  CHECK(std::string(status.message()).find("blocks.3.fc") != std::string::npos);
  REQUIRE_STATUS_IS(
      WriteActivationQuantParams(d, {{"w", PerTensor(1.0f, 0)}}, {{"w.observer", "mine"}}),
      Code::kInvalidArgument);
  REQUIRE_STATUS_IS(WriteActivationQuantParams(d + "/missing", {{"w", PerTensor(1.0f, 0)}}),
                    Code::kNotFound);
  CHECK(std::filesystem::is_empty(dir.path()));  // nothing left behind
}

// A tensor for a hand-built file.
struct RawTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

template <typename T>
RawTensor Raw(std::string name, DType dtype, std::vector<T> values,
              std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
  RawTensor t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

void WriteRaw(const std::string& path, const std::vector<RawTensor>& raw,
              const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> tensors;
  for (const RawTensor& r : raw) {
    auto t = Tensor::Allocate(r.name, r.dtype, r.shape);
    REQUIRE_OK(t);
    REQUIRE(t->num_bytes() == r.bytes.size());
    if (!r.bytes.empty()) std::memcpy(t->mutable_bytes().data(), r.bytes.data(), r.bytes.size());
    tensors.push_back(*std::move(t));
  }
  REQUIRE_OK(WriteSafetensors(path, tensors, metadata));
}

// The metadata WriteActivationQuantParams writes for weight `w`.
std::map<std::string, std::string> GoodMetadata(const std::string& w,
                                                const std::string& granularity = "per_tensor",
                                                const std::string& symmetric = "false") {
  return {{"gquant.activation_quant.version", "1"},
          {w + ".granularity", granularity},
          {w + ".symmetric", symmetric},
          {w + ".quant_min", "-128"},
          {w + ".quant_max", "127"},
          {w + ".observer", "min_max"},
          {w + ".averaging_constant", "0"},
          {w + ".rows_observed", "10"},
          {w + ".batches_observed", "1"}};
}

TEST_CASE("ReadActivationQuantParams rejects hostile files", "[activation_quant]") {
  TempDir dir;
  const std::string d = dir.path().string();
  const std::string path = dir.File(std::string(kActivationQuantFileName));
  const auto scale = [](std::vector<float> v) { return Raw("w.input_scale", DType::kF32, v); };
  const auto zero = [](std::vector<int32_t> v) {
    return Raw("w.input_zero_point", DType::kI32, v);
  };
  const auto expect = [&](const std::vector<RawTensor>& raw,
                          const std::map<std::string, std::string>& metadata, Code code,
                          const std::string& fragment) {
    WriteRaw(path, raw, metadata);
    const absl::Status status = ReadActivationQuantParams(d).status();
    INFO(status.ToString());
    CHECK(status.code() == code);
    CHECK(std::string(status.message()).find(fragment) != std::string::npos);
  };

  // The baseline is good.
  WriteRaw(path, {scale({0.5f}), zero({-3})}, GoodMetadata("w"));
  auto good = ReadActivationQuantParams(d);
  REQUIRE_OK(good);
  CHECK(good->at("w").scale == std::vector<float>{0.5f});
  CHECK(good->at("w").zero_point == std::vector<int32_t>{-3});

  SECTION("truncated file") {
    // The container's own codes (safetensors.h): cut inside the data, a
    // tensor ends past the end (OutOfRange); cut inside the length, DataLoss.
    const auto size = std::filesystem::file_size(path);
    std::filesystem::resize_file(path, size - 2);
    REQUIRE_STATUS_IS(ReadActivationQuantParams(d), Code::kOutOfRange);
    std::filesystem::resize_file(path, 5);
    REQUIRE_STATUS_IS(ReadActivationQuantParams(d), Code::kDataLoss);
  }
  SECTION("wrong dtypes and shapes") {
    expect({Raw("w.input_scale", DType::kF64, std::vector<double>{0.5}), zero({0})},
           GoodMetadata("w"), Code::kInvalidArgument, "dtype F32");
    expect({scale({0.5f}), Raw("w.input_zero_point", DType::kF32, std::vector<float>{0})},
           GoodMetadata("w"), Code::kInvalidArgument, "dtype I32");
    expect({Raw("w.input_scale", DType::kF32, std::vector<float>{0.5f}, {1, 1}), zero({0})},
           GoodMetadata("w"), Code::kInvalidArgument, "shape");
    expect({scale({}), zero({})}, GoodMetadata("w"), Code::kInvalidArgument, "shape");
  }
  SECTION("partners and sizes") {
    expect({scale({0.5f})}, GoodMetadata("w"), Code::kInvalidArgument, "no partner");
    expect({zero({0})}, GoodMetadata("w"), Code::kInvalidArgument, "no partner");
    expect({scale({0.5f, 0.25f}), zero({0, 0, 0})}, GoodMetadata("w", "per_channel"),
           Code::kInvalidArgument, "differ in size");
    expect({scale({0.5f, 0.25f}), zero({0, 0})}, GoodMetadata("w"), Code::kInvalidArgument,
           "per_tensor");
    expect({scale({0.5f}), zero({0}), Raw("w.bias", DType::kF32, std::vector<float>{1})},
           GoodMetadata("w"), Code::kInvalidArgument, "unexpected tensor 'w.bias'");
  }
  SECTION("bad values") {
    for (float s : {0.0f, -0.5f, kNaN, kInf}) {
      CAPTURE(s);
      expect({scale({s}), zero({0})}, GoodMetadata("w"), Code::kInvalidArgument, "scale[0]");
    }
    expect({scale({0.5f}), zero({128})}, GoodMetadata("w"), Code::kInvalidArgument,
           "zero_point[0]");
    expect({scale({0.5f, 0.5f}), zero({0, -7})}, GoodMetadata("w", "per_channel", "true"),
           Code::kInvalidArgument, "zero_point[1]");
  }
  SECTION("bad metadata") {
    auto metadata = GoodMetadata("w");
    metadata.erase("gquant.activation_quant.version");
    expect({scale({0.5f}), zero({0})}, metadata, Code::kInvalidArgument, "version");
    metadata = GoodMetadata("w");
    metadata.erase("w.granularity");
    expect({scale({0.5f}), zero({0})}, metadata, Code::kInvalidArgument, "w.granularity");
    for (const auto& [key, value] :
         std::vector<std::pair<std::string, std::string>>{{"w.granularity", "per_row"},
                                                          {"w.symmetric", "yes"},
                                                          {"w.quant_min", "-12x"},
                                                          {"w.observer", "histogram"},
                                                          {"w.averaging_constant", "2"},
                                                          {"w.rows_observed", "-1"}}) {
      CAPTURE(key, value);
      metadata = GoodMetadata("w");
      metadata[key] = value;
      expect({scale({0.5f}), zero({0})}, metadata, Code::kInvalidArgument, key);
    }
    metadata = GoodMetadata("w");
    metadata["w.quant_max"] = "300";
    expect({scale({0.5f}), zero({0})}, metadata, Code::kInvalidArgument, "quant range");
  }
}

// ---- SNR ----

TEST_CASE("SignalToNoiseDb", "[activation_quant]") {
  const std::vector<float> ref = {3.0f, 4.0f};
  CHECK(SignalToNoiseDb(ref, std::vector<float>{3.0f, 3.0f}) == Approx(10 * std::log10(25.0)));
  CHECK(std::isinf(SignalToNoiseDb(ref, ref)));
  CHECK(SignalToNoiseDb(ref, ref) > 0);
  const std::vector<float> zeros = {0.0f, 0.0f};
  CHECK(SignalToNoiseDb(zeros, zeros) > 0);
  CHECK(std::isinf(SignalToNoiseDb(zeros, zeros)));
  CHECK(SignalToNoiseDb(zeros, ref) < 0);
  CHECK(std::isinf(SignalToNoiseDb(zeros, ref)));
  CHECK(std::isnan(SignalToNoiseDb(ref, std::vector<float>{3.0f})));
}

// ---- end to end: the vision embedder ----

// Synthetic vision soft tokens, one image (280 tokens of Hv) at a time:
// Student-t (4 degrees of freedom, so heavy tails) in every channel, with
// per-channel gains spread log-normally, plus a few "massive activation"
// channels that hold large values of a fixed sign in every token, as real
// ViT features have. Then RMSNorm without weight (eps 1e-6), as the
// embedder's pre-norm.
struct SoftTokenSource {
  int64_t hidden;
  std::vector<float> gain;
  std::vector<float> outlier;  // 0, or the channel's large mean

  SoftTokenSource(std::mt19937_64& rng, int64_t hidden)
      : hidden(hidden), gain(hidden), outlier(hidden) {
    std::normal_distribution<float> normal;
    for (float& g : gain) g = std::exp(0.5f * normal(rng));
    std::uniform_int_distribution<int64_t> channel(0, hidden - 1);
    for (int i = 0; i < 6; ++i) outlier[channel(rng)] = (i % 2 ? -1.0f : 1.0f) * (20.0f + 4 * i);
  }

  std::vector<float> Image(std::mt19937_64& rng, int64_t tokens) const {
    std::student_t_distribution<float> student(4.0f);
    std::normal_distribution<float> normal;
    std::vector<float> x(tokens * hidden);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t c = 0; c < hidden; ++c) {
        x[t * hidden + c] =
            outlier[c] != 0 ? outlier[c] * (1.0f + 0.1f * normal(rng)) : gain[c] * student(rng);
      }
    }
    gemma4::cpu::RmsNorm(x, hidden, {}, 1e-6f);
    return x;
  }
};

TEST_CASE("int8 vision embedder calibration keeps held-out SNR within the step-size bound",
          "[activation_quant]") {
  auto rng = MakeRng();
  // E2B/E4B embedder shape: embed_vision.embedding_projection.weight [1536, 768]
  // (E2B text hidden 1536), 280 soft tokens per image.
  const int64_t hv = 768, h_text = 1536, tokens = 280;
  const int calibration_images = 8, held_out_images = 2;
  const SoftTokenSource source(rng, hv);
  std::vector<std::vector<float>> calibration;
  for (int i = 0; i < calibration_images; ++i) calibration.push_back(source.Image(rng, tokens));
  std::vector<float> held_out;
  for (int i = 0; i < held_out_images; ++i) {
    const std::vector<float> image = source.Image(rng, tokens);
    held_out.insert(held_out.end(), image.begin(), image.end());
  }
  const int64_t rows = held_out_images * tokens;

  std::normal_distribution<float> normal;
  std::vector<float> w(h_text * hv);
  const float w_std = 1.0f / std::sqrt(static_cast<float>(hv));
  for (float& v : w) v = normal(rng) * w_std;
  auto weights = QuantizeInt8Rows(w, h_text, hv);
  REQUIRE_OK(weights);

  // Float reference on the held-out tokens (float64 sums).
  std::vector<float> reference(rows * h_text);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < h_text; ++o) {
      double sum = 0;
      for (int64_t k = 0; k < hv; ++k) {
        sum += static_cast<double>(held_out[r * hv + k]) * w[o * hv + k];
      }
      reference[r * h_text + o] = static_cast<float>(sum);
    }
  }
  double signal = 0;
  for (float v : reference) signal += static_cast<double>(v) * v;

  // The weight's own share of the noise (float activations, int8 weights).
  std::vector<float> dequantized_w(h_text * hv);
  for (int64_t i = 0; i < h_text * hv; ++i) {
    dequantized_w[i] = weights->codes[i] * weights->scale[i / hv];
  }
  std::vector<float> weight_only(rows * h_text);
  gemma4::cpu::Linear(held_out, rows, hv, dequantized_w, h_text, weight_only, nullptr);
  WARN("vision embedder [" << h_text << ", " << hv << "], " << rows
                           << " held-out tokens: int8 weights only, float activations: SNR "
                           << SignalToNoiseDb(reference, weight_only) << " dB");

  double weight_sq_total = 0;  // sum_o ||w_o||^2
  double weight_step_sq = 0;   // sum_o s_w[o]^2 / 12
  for (int64_t o = 0; o < h_text; ++o) {
    weight_step_sq += weights->scale[o] * static_cast<double>(weights->scale[o]) / 12;
    for (int64_t k = 0; k < hv; ++k)
      weight_sq_total += static_cast<double>(w[o * hv + k]) * w[o * hv + k];
  }

  for (ObserverKind kind : {ObserverKind::kMinMax, ObserverKind::kMovingAverageMinMax}) {
    for (bool symmetric : {false, true}) {
      INFO(ObserverKindName(kind) << (symmetric ? ", symmetric" : ", affine"));
      auto obs = MakeObserver(kind, QuantGranularity::kPerTensor, symmetric, hv, 0.01f);
      for (const auto& image : calibration) REQUIRE_OK(obs.Observe(image, tokens));
      auto p = obs.Compute();
      REQUIRE_OK(p);
      const float sx = p->scale[0];
      const int32_t zp = p->zero_point[0];

      std::vector<float> y(rows * h_text, kNaN);
      REQUIRE_OK(LinearInt8(held_out, rows, hv, weights->view(), h_text, *p, y));
      const double snr = SignalToNoiseDb(reference, y);

      // The bound. Rounding to a step s leaves an error of at most s/2,
      // modelled as uniform noise of variance s^2 / 12, independent per
      // element (conservative for the many |x| << s, whose error is x
      // itself). Through y = x w^T that gives, summed over outputs,
      //   activations  rows * (sx^2 / 12) * sum_o ||w_o||^2
      //   weights      sum_r ||xq_r||^2 * sum_o s_w[o]^2 / 12
      // Held-out values beyond the calibrated range clamp; their error is
      // not a rounding error, so it is added exactly: sum (c w^T)^2 with c
      // the clamped excess. The measured noise may exceed the model by 3 dB
      // (factor 2) for correlations the model ignores.
      const double lo = (kInt8QuantMin - zp) * static_cast<double>(sx);
      const double hi = (kInt8QuantMax - zp) * static_cast<double>(sx);
      double xq_sq = 0, clip_noise = 0;
      int64_t clipped = 0;
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<std::pair<int64_t, double>> excess;
        for (int64_t k = 0; k < hv; ++k) {
          const double v = held_out[r * hv + k];
          const double c = std::clamp(v, lo, hi);
          xq_sq += c * c;
          if (c != v) excess.emplace_back(k, v - c);
        }
        clipped += static_cast<int64_t>(excess.size());
        if (excess.empty()) continue;
        for (int64_t o = 0; o < h_text; ++o) {
          double e = 0;
          for (const auto& [k, d] : excess) e += d * w[o * hv + k];
          clip_noise += e * e;
        }
      }
      const double rounding_noise =
          rows * (static_cast<double>(sx) * sx / 12) * weight_sq_total + xq_sq * weight_step_sq;
      const double predicted_snr = 10 * std::log10(signal / (rounding_noise + clip_noise));

      WARN("vision embedder int8 ("
           << ObserverKindName(kind) << (symmetric ? ", symmetric" : ", affine")
           << ", per-tensor activations, int8 per-row weights): held-out SNR " << snr
           << " dB; step-size model " << predicted_snr << " dB; activation scale " << sx
           << ", zero point " << zp << ", calibrated range [" << p->min_val[0] << ", "
           << p->max_val[0] << "], " << clipped << " of " << rows * hv
           << " held-out values clamped");
      CHECK(snr >= predicted_snr - 3.0103);
      CHECK(snr <= predicted_snr + 10);  // the model is not absurdly pessimistic either
    }
  }

  // For comparison: per-channel activation scales (served by fake
  // quantization and a float Linear, as LinearInt8 cannot factor them).
  auto per_channel = MakeObserver(ObserverKind::kMinMax, QuantGranularity::kPerChannel, false, hv);
  for (const auto& image : calibration) REQUIRE_OK(per_channel.Observe(image, tokens));
  auto pc = per_channel.Compute();
  REQUIRE_OK(pc);
  int64_t pc_clipped = 0;
  for (int64_t i = 0; i < rows * hv; ++i) {
    const int64_t c = i % hv;
    const double lo = (kInt8QuantMin - pc->zero_point[c]) * static_cast<double>(pc->scale[c]);
    const double hi = (kInt8QuantMax - pc->zero_point[c]) * static_cast<double>(pc->scale[c]);
    pc_clipped += held_out[i] < lo || held_out[i] > hi;
  }
  std::vector<float> fake = held_out;
  REQUIRE_OK(FakeQuantizeActivations(fake, rows, *pc));
  std::vector<float> y_pc(rows * h_text);
  gemma4::cpu::Linear(fake, rows, hv, dequantized_w, h_text, y_pc, nullptr);
  WARN(
      "vision embedder (min_max, affine, per-channel fake-quantized activations, int8 per-row "
      "weights, float Linear): held-out SNR "
      << SignalToNoiseDb(reference, y_pc) << " dB; " << pc_clipped << " of " << rows * hv
      << " held-out values clamped (each channel's range is its own calibration extremes)");
}

}  // namespace
}  // namespace gquant
