// Min-max quantization (spec formats.md §2.6) against an independent
// reference, plus the Quantize/Dequantize API contract.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gquant/dtype.h"
#include "gquant/quantize.h"
#include "gquant/thread_pool.h"
#include "quantize_test_util.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;

// ---- test data ----

// A [rows, cols] weight held both as source bytes and as the exact values
// those bytes decode to.
struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> values;
  std::vector<std::byte> bytes;
};

Matrix Encode(DType dtype, int64_t rows, int64_t cols, const std::vector<float>& values) {
  Matrix m{dtype, rows, cols, values, {}};
  m.bytes.resize(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&m.bytes[4 * i], &values[i], 4);
      continue;
    }
    const uint16_t bits =
        dtype == DType::kBF16 ? FloatToBFloat16(values[i]) : FloatToHalf(values[i]);
    m.values[i] = dtype == DType::kBF16 ? BFloat16ToFloat(bits) : HalfToFloat(bits);
    std::memcpy(&m.bytes[2 * i], &bits, 2);
  }
  return m;
}

// Random weights whose groups are mostly normal with a scale that varies by
// 4 orders of magnitude, mixed with the shapes that stress min-max: all-zero,
// constant, all-negative, all-positive and single-outlier groups.
std::vector<float> RandomWeights(std::mt19937_64& rng, int64_t rows, int64_t cols, int64_t group,
                                 bool special_groups = true) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> unit;
  std::vector<float> w(rows * cols);
  for (int64_t start = 0; start < rows * cols; start += group) {
    const float sigma = std::pow(10.0f, -3 + 4 * unit(rng));
    const float kind = special_groups ? unit(rng) : 0.0f;
    const float constant = sigma * normal(rng);
    const int64_t outlier = start + static_cast<int64_t>(unit(rng) * group) % group;
    for (int64_t i = start; i < start + group; ++i) {
      const float x = sigma * normal(rng);
      if (kind < 0.85f) {
        w[i] = x;
      } else if (kind < 0.88f) {
        w[i] = 0;
      } else if (kind < 0.91f) {
        w[i] = constant;
      } else if (kind < 0.94f) {
        w[i] = -std::fabs(x) - sigma * 1e-3f;
      } else if (kind < 0.97f) {
        w[i] = std::fabs(x) + sigma * 1e-3f;
      } else {
        w[i] = i == outlier ? 1e3f * sigma : x;
      }
    }
  }
  return w;
}

// ---- reference ----

using ::gquant::testing::Bf16;
using ::gquant::testing::RoundHalfEven;

struct Quantized {
  std::vector<int8_t> codes;
  std::vector<float> scale;
  std::vector<float> zero;
};

struct ReferenceOptions {
  bool bf16_reciprocal = true;       // r = bf16(1 / s_bf16) (§2.6), or 1 / s_bf16
  bool zero_from_fp32_scale = true;  // z from the float32 s (§2.6), or from bf16(s)
};

// §2.6 (a)/(d) in plain loops. Group extremes are exact (double), rounding is
// RoundHalfEven, bf16 goes through dtype.h and x * r is formed exactly in
// double before the float32 rounding the reference applies. The qparam steps
// that the spec computes in float32 (s = diff / range, mn / s, 1 / s_bf16)
// are written as the same float32 operations: a double version would round
// differently in the last bit, which bf16 rounding can then magnify.
Quantized ReferenceMinMax(const QuantConfig& config, const Matrix& m,
                          const ReferenceOptions& options = {}) {
  const int64_t group = config.group_size == kPerRowGroupSize ? m.cols : config.group_size;
  double qmin = -(1 << (config.bits - 1)), qmax = (1 << (config.bits - 1)) - 1;
  int offset = 0;
  if (config.bits == 4 && !config.symmetric) qmin = 0, qmax = 15;
  if (config.bits == 4 && config.symmetric) offset = 8;
  Quantized out;
  out.codes.resize(m.values.size());
  for (int64_t start = 0; start < m.rows * m.cols; start += group) {
    double mn = 0, mx = 0;
    for (int64_t i = start; i < start + group; ++i) {
      mn = std::min(mn, static_cast<double>(m.values[i]));
      mx = std::max(mx, static_cast<double>(m.values[i]));
    }
    const float mnf = static_cast<float>(mn), mxf = static_cast<float>(mx);
    float s;
    double z = 0;
    if (config.symmetric) {
      const float a = std::max(-mnf, mxf);
      s = std::max(a / (static_cast<float>(qmax - qmin) / 2), FLT_MIN);
    } else {
      const float diff = mxf - mnf;
      s = std::max(diff / static_cast<float>(qmax - qmin), FLT_MIN);
      const float s_for_zero = options.zero_from_fp32_scale ? s : Bf16(s);
      z = std::clamp(qmin - RoundHalfEven(mnf / s_for_zero), qmin, qmax);
    }
    const float sb = Bf16(s);
    const float r = options.bf16_reciprocal ? Bf16(1.0f / sb) : 1.0f / sb;
    for (int64_t i = start; i < start + group; ++i) {
      const float product = static_cast<float>(static_cast<double>(m.values[i]) * r);
      const double q = std::clamp(RoundHalfEven(product) + z, qmin, qmax);
      out.codes[i] = static_cast<int8_t>(q + offset);
    }
    out.scale.push_back(sb);
    out.zero.push_back(static_cast<float>(z + offset));
  }
  return out;
}

// ---- running the library ----

// Quantizes twice with different poison in the outputs (so an unwritten
// element cannot match by luck) and requires both runs to agree.
Quantized RunQuantize(const QuantConfig& config, const Matrix& m, ThreadPool* pool = nullptr,
                      ErrorStats* stats = nullptr) {
  const int64_t group = config.group_size == kPerRowGroupSize ? m.cols : config.group_size;
  const int64_t num_scales = m.rows * (m.cols / group);
  Quantized runs[2];
  for (int run = 0; run < 2; ++run) {
    Quantized& q = runs[run];
    q.codes.assign(m.values.size(), static_cast<int8_t>(run == 0 ? 0x5a : -0x5b));
    q.scale.assign(num_scales, std::numeric_limits<float>::quiet_NaN());
    q.zero.assign(num_scales, run == 0 ? std::numeric_limits<float>::quiet_NaN() : -12345.0f);
    QuantizeOptions options;
    options.pool = pool;
    options.error_stats = run == 0 ? stats : nullptr;
    REQUIRE_OK(
        Quantize(config, m.dtype, m.bytes, m.rows, m.cols, {q.codes, q.scale, q.zero}, options));
  }
  REQUIRE(runs[0].codes == runs[1].codes);
  REQUIRE(runs[0].scale == runs[1].scale);
  REQUIRE(runs[0].zero == runs[1].zero);
  return runs[0];
}

int64_t CountMismatches(const Quantized& a, const Quantized& b) {
  int64_t n = 0;
  for (size_t i = 0; i < a.codes.size(); ++i) n += a.codes[i] != b.codes[i];
  for (size_t i = 0; i < a.scale.size(); ++i) n += a.scale[i] != b.scale[i];
  for (size_t i = 0; i < a.zero.size(); ++i) n += a.zero[i] != b.zero[i];
  return n;
}

void RequireSame(const Quantized& got, const Quantized& want) {
  REQUIRE(got.codes.size() == want.codes.size());
  REQUIRE(got.scale.size() == want.scale.size());
  for (size_t i = 0; i < want.codes.size(); ++i) {
    if (got.codes[i] != want.codes[i]) {
      FAIL_CHECK("code " << i << ": got " << int{got.codes[i]} << ", want " << int{want.codes[i]});
      return;
    }
  }
  for (size_t g = 0; g < want.scale.size(); ++g) {
    if (got.scale[g] != want.scale[g] || got.zero[g] != want.zero[g]) {
      FAIL_CHECK("group " << g << ": got scale " << got.scale[g] << " zero " << got.zero[g]
                          << ", want " << want.scale[g] << " " << want.zero[g]);
      return;
    }
  }
}

std::string Describe(const QuantConfig& c, DType dtype, int64_t rows, int64_t cols) {
  return std::string(DTypeName(dtype)) + " int" + std::to_string(c.bits) +
         (c.symmetric ? " sym" : " asym") + " gs" + std::to_string(c.group_size) + " [" +
         std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

QuantConfig MinMax(int bits, int group_size, bool symmetric) {
  return QuantConfig{bits, group_size, symmetric, QuantMethod::kMinMax};
}

// ---- exactness ----

TEST_CASE("min-max matches the reference bit for bit", "[quantize]") {
  auto rng = MakeRng();
  ThreadPool pool(3);
  constexpr int64_t kCols = 768;  // a multiple of every group size below
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int64_t rows : {1, 3, 17}) {
      for (int group_size : {32, 64, 128, 256, kPerRowGroupSize}) {
        const int64_t group = group_size == kPerRowGroupSize ? kCols : group_size;
        const Matrix m = Encode(dtype, rows, kCols, RandomWeights(rng, rows, kCols, group));
        for (int bits : {4, 5, 6, 8}) {
          for (bool symmetric : {false, true}) {
            const QuantConfig config = MinMax(bits, group_size, symmetric);
            INFO(Describe(config, dtype, rows, kCols));
            const Quantized want = ReferenceMinMax(config, m);
            RequireSame(RunQuantize(config, m), want);
            RequireSame(RunQuantize(config, m, &pool), want);
          }
        }
      }
    }
  }
}

TEST_CASE("min-max matches the reference for odd shapes and group sizes", "[quantize]") {
  auto rng = MakeRng();
  struct Shape {
    int64_t rows, cols;
    int group_size;
  };
  // Runtime group sizes (not 32/64), tails shorter than a vector, one column.
  for (const Shape& s :
       {Shape{5, 100, kPerRowGroupSize}, Shape{7, 144, 48}, Shape{2, 16, 16},
        Shape{9, 1, kPerRowGroupSize}, Shape{3, 5376, kPerRowGroupSize}, Shape{4, 96, 3}}) {
    const int64_t group = s.group_size == kPerRowGroupSize ? s.cols : s.group_size;
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      const Matrix m = Encode(dtype, s.rows, s.cols, RandomWeights(rng, s.rows, s.cols, group));
      for (int bits : {4, 8}) {
        for (bool symmetric : {false, true}) {
          const QuantConfig config = MinMax(bits, s.group_size, symmetric);
          INFO(Describe(config, dtype, s.rows, s.cols));
          RequireSame(RunQuantize(config, m), ReferenceMinMax(config, m));
        }
      }
    }
  }
}

TEST_CASE("the reference is sensitive to the spec's rounding steps", "[quantize]") {
  // Guards the exactness test itself: implementations that skip the bf16
  // rounding of r, or derive z from the bf16 scale, must disagree with it.
  auto rng = MakeRng();
  const Matrix m = Encode(DType::kBF16, 64, 1024, RandomWeights(rng, 64, 1024, 32, false));
  const QuantConfig config = MinMax(4, 32, false);
  const Quantized got = RunQuantize(config, m);
  REQUIRE(CountMismatches(got, ReferenceMinMax(config, m)) == 0);
  REQUIRE(CountMismatches(got, ReferenceMinMax(config, m, {.bf16_reciprocal = false})) > 0);
  REQUIRE(CountMismatches(got, ReferenceMinMax(config, m, {.zero_from_fp32_scale = false})) > 0);
}

TEST_CASE("min-max rows are independent: a row block equals the whole tensor's slice",
          "[quantize]") {
  auto rng = MakeRng();
  const Matrix m = Encode(DType::kBF16, 10, 256, RandomWeights(rng, 10, 256, 32));
  const QuantConfig config = MinMax(4, 32, false);
  const Quantized whole = RunQuantize(config, m);
  Matrix block = m;
  block.rows = 4;
  block.values.assign(m.values.begin() + 3 * 256, m.values.begin() + 7 * 256);
  block.bytes.assign(m.bytes.begin() + 3 * 256 * 2, m.bytes.begin() + 7 * 256 * 2);
  const Quantized part = RunQuantize(config, block);
  REQUIRE(std::equal(part.codes.begin(), part.codes.end(), whole.codes.begin() + 3 * 256));
  REQUIRE(std::equal(part.scale.begin(), part.scale.end(), whole.scale.begin() + 3 * 8));
  REQUIRE(std::equal(part.zero.begin(), part.zero.end(), whole.zero.begin() + 3 * 8));
}

TEST_CASE("min-max reads unaligned source bytes", "[quantize]") {
  auto rng = MakeRng();
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    const Matrix m = Encode(dtype, 3, 64, RandomWeights(rng, 3, 64, 32));
    std::vector<std::byte> shifted(m.bytes.size() + 1);
    std::memcpy(shifted.data() + 1, m.bytes.data(), m.bytes.size());
    const QuantConfig config = MinMax(4, 32, false);
    Quantized q{std::vector<int8_t>(m.values.size()), std::vector<float>(6), std::vector<float>(6)};
    REQUIRE_OK(
        Quantize(config, dtype, std::span(shifted).subspan(1), 3, 64, {q.codes, q.scale, q.zero}));
    RequireSame(q, ReferenceMinMax(config, m));
  }
}

// ---- edge cases ----

// Quantizes one row of float32 values and returns the result.
Quantized QuantizeRow(const QuantConfig& config, const std::vector<float>& row) {
  const Matrix m = Encode(DType::kF32, 1, static_cast<int64_t>(row.size()), row);
  Quantized q = RunQuantize(config, m);
  RequireSame(q, ReferenceMinMax(config, m));
  return q;
}

TEST_CASE("min-max edge groups: zero, constant, one-signed, outlier", "[quantize]") {
  auto rng = MakeRng();
  std::normal_distribution<float> normal;
  std::vector<float> row(5 * 32);
  for (float& x : row) x = normal(rng);
  std::fill(row.begin(), row.begin() + 32, 0.0f);                     // group 0: all zero
  std::fill(row.begin() + 32, row.begin() + 64, 0.75f);               // group 1: constant
  for (int i = 64; i < 96; ++i) row[i] = -std::fabs(row[i]) - 0.01f;  // group 2: all negative
  for (int i = 96; i < 128; ++i) row[i] = std::fabs(row[i]) + 0.01f;  // group 3: all positive
  row[140] = 5e4f;                                                    // group 4: one outlier

  SECTION("asymmetric int4") {
    const Quantized q = QuantizeRow(MinMax(4, 32, false), row);
    // All zero: s = eps (FLT_MIN, exact in bf16), z = 0, everything codes 0.
    REQUIRE(q.scale[0] == FLT_MIN);
    REQUIRE(q.zero[0] == 0);
    for (int i = 0; i < 32; ++i) REQUIRE(q.codes[i] == 0);
    // Constant c > 0: range [0, c], the constant maps to 15.
    REQUIRE(q.scale[1] == Bf16(0.75f / 15));
    REQUIRE(q.zero[1] == 0);
    for (int i = 32; i < 64; ++i) REQUIRE(q.codes[i] == 15);
    // All negative: max is 0, so z = 15 and the minimum maps to 0.
    REQUIRE(q.zero[2] == 15);
    REQUIRE(*std::min_element(q.codes.begin() + 64, q.codes.begin() + 96) == 0);
    // All positive: min is 0, so z = 0 and the maximum maps to 15.
    REQUIRE(q.zero[3] == 0);
    REQUIRE(*std::max_element(q.codes.begin() + 96, q.codes.begin() + 128) == 15);
    // Outlier: the other values collapse onto z (or a neighbour).
    REQUIRE(q.codes[140] == 15);
  }
  SECTION("symmetric int4 and int8") {
    const Quantized q4 = QuantizeRow(MinMax(4, 32, true), row);
    REQUIRE(q4.scale[0] == FLT_MIN);
    for (int g = 0; g < 5; ++g) REQUIRE(q4.zero[g] == 8);
    for (int i = 0; i < 32; ++i) REQUIRE(q4.codes[i] == 8);
    for (int i = 32; i < 64; ++i) REQUIRE(q4.codes[i] == 15);  // +a -> 7.5 -> 8 -> clamp 7, +8
    const Quantized q8 = QuantizeRow(MinMax(8, 32, true), row);
    for (int g = 0; g < 5; ++g) REQUIRE(q8.zero[g] == 0);
    for (int i = 32; i < 64; ++i) REQUIRE(q8.codes[i] == 127);
  }
  SECTION("asymmetric int8 zero-point range") {
    const Quantized q = QuantizeRow(MinMax(8, 32, false), row);
    REQUIRE(q.zero[0] == -128);  // all zero: z = qmin
    REQUIRE(q.zero[2] == 127);   // all negative: z = qmax
    REQUIRE(q.zero[3] == -128);  // all positive: z = qmin
  }
}

TEST_CASE("min-max constant groups reproduce the constant within the documented bound",
          "[quantize]") {
  // quantize.h: asymmetric configs include 0 in the range, so c maps to an
  // end code and comes back within the bf16 rounding of the scale (|error|
  // <= 2^-8 |c|), except that at 8 bits the bf16 reciprocal can move c * r
  // across a rounding boundary: one more step, 1/255 of |c|. Symmetric ones
  // divide the range by (qmax - qmin) / 2, so +-c lands on +-(qmax + 1/2),
  // which rounds (half to even) or clamps half a step off: relative error
  // 1 / (2 qmax + 1) (1/15 for 4-bit, 1/255 for 8-bit) plus the rounding.
  auto rng = MakeRng();
  std::uniform_real_distribution<float> exponent(-30, 30);
  for (const QuantConfig& config : {MinMax(4, 32, false), MinMax(4, 32, true), MinMax(8, 32, false),
                                    MinMax(8, 32, true), MinMax(6, 32, true)}) {
    const MinMaxConstants k = MinMaxConstantsOf(config);
    for (int trial = 0; trial < 50; ++trial) {
      const float magnitude = std::pow(10.0f, exponent(rng));
      const float c = trial % 2 == 0 ? magnitude : -magnitude;
      CAPTURE(QuantConfigToString(config), c);
      const std::vector<float> row(32, c);
      const Quantized q = QuantizeRow(config, row);
      std::vector<float> deq(32);
      REQUIRE_OK(Dequantize(config, 1, 32, q.codes, q.scale, q.zero, deq));
      const double step = config.symmetric   ? 1.0 / (2 * k.qmax + 1)
                          : config.bits == 8 ? 1.0 / (k.qmax - k.qmin)
                                             : 0.0;
      for (float d : deq) {
        REQUIRE(d == deq[0]);  // one value for the whole group
        REQUIRE(std::fabs(double(d) - c) <= (step + std::ldexp(1.0, -8)) * std::fabs(c));
      }
    }
  }
}

TEST_CASE("min-max keeps subnormal inputs (no flush to zero)", "[quantize]") {
  // A group of subnormals: the scale is its floor FLT_MIN and r = 2^126, so
  // x * r is x in units of FLT_MIN: 0.75 FLT_MIN rounds to one step, which a
  // flush-to-zero (DAZ) CPU would have read as 0. Dequantized values are
  // multiples of FLT_MIN within FLT_MIN / 2 of the input.
  const float tiny = 0.75f * FLT_MIN;
  REQUIRE(std::fpclassify(tiny) == FP_SUBNORMAL);
  std::vector<float> row(32, 0.0f);
  row[0] = tiny;
  row[1] = -0.25f * FLT_MIN;
  row[2] = std::numeric_limits<float>::denorm_min();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const QuantConfig& config : {MinMax(4, 32, false), MinMax(8, 32, true)}) {
      CAPTURE(DTypeName(dtype), QuantConfigToString(config));
      const Matrix m = Encode(dtype, 1, 32, row);
      const Quantized q = RunQuantize(config, m);
      REQUIRE(q.scale[0] == FLT_MIN);
      REQUIRE(q.codes[0] == static_cast<int>(q.zero[0]) + 1);
      std::vector<float> deq(32);
      REQUIRE_OK(Dequantize(config, 1, 32, q.codes, q.scale, q.zero, deq));
      REQUIRE(deq[0] == FLT_MIN);
      for (int i = 0; i < 32; ++i) REQUIRE(std::fabs(deq[i] - m.values[i]) <= FLT_MIN / 2);
    }
  }
}

TEST_CASE("ScanWeight counts non-finite, subnormal, constant and zero groups", "[quantize]") {
  auto rng = MakeRng();
  std::normal_distribution<float> normal;
  const int64_t rows = 37, cols = 96;  // 3 groups of 32 per row
  std::vector<float> w(rows * cols);
  for (float& x : w) x = normal(rng);
  std::fill_n(w.begin() + 5 * cols, 32, 0.0f);        // zero group
  std::fill_n(w.begin() + 5 * cols + 32, 32, -0.0f);  // zero group (-0)
  std::fill_n(w.begin() + 9 * cols + 64, 32, 1.5f);   // constant group
  w[11 * cols + 3] = std::numeric_limits<float>::denorm_min();
  w[12 * cols + 7] = -0.5f * FLT_MIN;
  w[20 * cols + 50] = std::numeric_limits<float>::infinity();
  w[30 * cols + 1] = std::numeric_limits<float>::quiet_NaN();
  ThreadPool pool(3);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Matrix m = Encode(dtype, rows, cols, w);
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      auto scan = ScanWeight(MinMax(4, 32, false), dtype, m.bytes, rows, cols, p);
      REQUIRE_OK(scan);
      CHECK(scan->non_finite == 2);
      CHECK(scan->first_non_finite == 20 * cols + 50);
      CHECK(scan->subnormal == (dtype == DType::kF32 ? 2 : 1));  // bf16 rounds denorm_min to 0
      CHECK(scan->zero_groups == 2);
      CHECK(scan->constant_groups == 3);
    }
  }
  // Per-row groups, and F16 (whose subnormals are normal floats once widened).
  const Matrix h = Encode(DType::kF16, rows, cols, std::vector<float>(rows * cols, 2.0f));
  auto per_row = ScanWeight(MinMax(8, kPerRowGroupSize, true), DType::kF16, h.bytes, rows, cols);
  REQUIRE_OK(per_row);
  CHECK(per_row->constant_groups == rows);
  CHECK(per_row->zero_groups == 0);
  CHECK(per_row->first_non_finite == -1);
  REQUIRE_STATUS_IS(ScanWeight(MinMax(4, 32, false), DType::kI8, h.bytes, rows, cols),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(ScanWeight(MinMax(4, 32, false), DType::kF16, h.bytes, rows, cols + 32),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("min-max rounds ties half to even", "[quantize]") {
  // mn = 0 and mx = 15 give s = 1 exactly, so r = 1 and x * r = x: every
  // x.5 is a tie.
  std::vector<float> row = {0.0f, 15.0f, 0.5f, 1.5f, 2.5f, 3.5f, 12.5f, 13.5f, 14.5f, 7.25f};
  row.resize(16, 1.0f);
  const Quantized q = QuantizeRow(MinMax(4, 16, false), row);
  REQUIRE(q.scale[0] == 1.0f);
  REQUIRE(q.zero[0] == 0);
  const std::vector<int8_t> want = {0, 15, 0, 2, 2, 4, 12, 14, 14, 7};
  REQUIRE(std::vector<int8_t>(q.codes.begin(), q.codes.begin() + 10) == want);

  // A tie in the zero point: mn / s = -2.5 rounds to -2, so z = 2 (not 3).
  std::vector<float> shifted = {-2.5f, 12.5f};
  shifted.resize(16, 0.0f);
  const Quantized qz = QuantizeRow(MinMax(4, 16, false), shifted);
  REQUIRE(qz.scale[0] == 1.0f);
  REQUIRE(qz.zero[0] == 2);
  REQUIRE(qz.codes[0] == 0);   // -2.5 -> -2 + 2
  REQUIRE(qz.codes[1] == 14);  // 12.5 -> 12 + 2
}

TEST_CASE("bf16 int4 gs32: the AVX2 rows equal the portable rows", "[quantize]") {
  // On AVX2 CPUs bf16 int4 asymmetric gs32 rows without statistics take a
  // hand-written kernel; with statistics they take the portable loops, so the
  // two runs compare the kernels directly (on other CPUs both are portable).
  // The groups below add what random weights rarely hit: ties in x * r and in
  // mn / s, huge values whose range overflows to inf, and subnormals. 21
  // groups per row leave a partial batch of five after two batches of eight.
  auto rng = MakeRng();
  constexpr int64_t kRows = 7, kCols = 21 * 32;
  std::vector<float> w = RandomWeights(rng, kRows, kCols, 32);
  std::uniform_int_distribution<int> half_steps(-31, 31);
  for (int64_t start = 0; start < kRows * kCols; start += 32 * 3) {
    float* g = &w[start];
    switch (start / (32 * 3) % 4) {
      case 0:  // mn = -7.5, mx = 7.5: s = r = 1, z = 8 (a tie), x.5 ties
        for (int i = 0; i < 32; ++i) g[i] = 0.5f * static_cast<float>(half_steps(rng) / 2);
        g[0] = -7.5f;
        g[1] = 7.5f;
        break;
      case 1:  // near the bf16 maximum: mx - mn = inf
        for (int i = 0; i < 32; ++i) g[i] = (i % 2 ? 3e38f : -3e38f) * (0.5f + (i % 7) / 14.0f);
        break;
      case 2:  // subnormals and zeros: s = eps
        for (int i = 0; i < 32; ++i) g[i] = (i % 3 - 1) * 1e-39f * (i % 5);
        break;
      default:  // ties at a power-of-two scale: mn = -2^-10 * 2.5
        for (int i = 0; i < 32; ++i) {
          g[i] = std::ldexp(0.5f * static_cast<float>(half_steps(rng) / 2 + 2), -10);
        }
        g[0] = std::ldexp(-2.5f, -10);
        g[1] = std::ldexp(12.5f, -10);
    }
  }
  const QuantConfig config = MinMax(4, 32, false);
  const Matrix m = Encode(DType::kBF16, kRows, kCols, w);
  ErrorStats stats;
  const Quantized portable = RunQuantize(config, m, nullptr, &stats);
  RequireSame(RunQuantize(config, m), portable);
  RequireSame(portable, ReferenceMinMax(config, m));
}

TEST_CASE("symmetric extremes: +a clamps to qmax, -a reaches qmin", "[quantize]") {
  // a = 7.5 (int4) and 127.5 (int8) give s = 1 and r = 1.
  std::vector<float> row4 = {7.5f, -7.5f, 6.5f, -6.5f, 0.5f, -0.5f};
  row4.resize(16, 0.25f);
  const Quantized q4 = QuantizeRow(MinMax(4, 16, true), row4);
  REQUIRE(q4.scale[0] == 1.0f);
  REQUIRE(q4.zero[0] == 8);
  const std::vector<int8_t> want4 = {15, 0, 14, 2, 8, 8};  // stored +8
  REQUIRE(std::vector<int8_t>(q4.codes.begin(), q4.codes.begin() + 6) == want4);

  std::vector<float> row8 = {127.5f, -127.5f, 126.5f, -126.5f};
  row8.resize(16, 1.0f);
  const Quantized q8 = QuantizeRow(MinMax(8, 16, true), row8);
  REQUIRE(q8.scale[0] == 1.0f);
  REQUIRE(q8.zero[0] == 0);
  const std::vector<int8_t> want8 = {127, -128, 126, -126};
  REQUIRE(std::vector<int8_t>(q8.codes.begin(), q8.codes.begin() + 4) == want8);
}

TEST_CASE("non-finite weights are InvalidArgument naming row and column", "[quantize]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (QuantMethod method : {QuantMethod::kMinMax, QuantMethod::kHqq}) {
      for (float bad : {nan, inf, -inf, -nan}) {
        std::vector<float> values(4 * 64, 0.5f);
        values[2 * 64 + 37] = bad;
        values[3 * 64 + 1] = nan;  // a later row must not be the one reported
        const Matrix m = Encode(dtype, 4, 64, values);
        std::vector<int8_t> codes(values.size());
        std::vector<float> scale(8), zero(8);
        ThreadPool pool(2);
        QuantizeOptions options;
        options.pool = &pool;
        const absl::Status status = Quantize(QuantConfig{4, 32, false, method}, dtype, m.bytes, 4,
                                             64, {codes, scale, zero}, options);
        INFO(status.ToString());
        REQUIRE(status.code() == absl::StatusCode::kInvalidArgument);
        REQUIRE(std::string(status.message()).find("row 2, column 37") != std::string::npos);
      }
    }
  }
}

// ---- API contract ----

TEST_CASE("Quantize rejects bad shapes, sizes, dtypes and configs", "[quantize]") {
  std::vector<std::byte> weight(4 * 64 * 2);
  std::vector<int8_t> codes(4 * 64);
  std::vector<float> scale(8), zero(8);
  const QuantConfig ok = MinMax(4, 32, false);
  REQUIRE_OK(Quantize(ok, DType::kBF16, weight, 4, 64, {codes, scale, zero}));
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  // cols not a multiple of the group size
  REQUIRE_STATUS_IS(
      Quantize(MinMax(4, 48, false), DType::kBF16, weight, 4, 64, {codes, scale, zero}), kInvalid);
  // span sizes
  std::vector<int8_t> short_codes(4 * 64 - 1);
  std::vector<float> long_scale(9);
  REQUIRE_STATUS_IS(Quantize(ok, DType::kBF16, weight, 4, 64, {short_codes, scale, zero}),
                    kInvalid);
  REQUIRE_STATUS_IS(Quantize(ok, DType::kBF16, weight, 4, 64, {codes, long_scale, zero}), kInvalid);
  REQUIRE_STATUS_IS(Quantize(ok, DType::kBF16, weight, 4, 64, {codes, scale, long_scale}),
                    kInvalid);
  REQUIRE_STATUS_IS(Quantize(ok, DType::kF32, weight, 4, 64, {codes, scale, zero}), kInvalid);
  REQUIRE_STATUS_IS(Quantize(ok, DType::kBF16, weight, 4, 0, {codes, scale, zero}), kInvalid);
  REQUIRE_STATUS_IS(Quantize(ok, DType::kBF16, weight, -1, 64, {codes, scale, zero}), kInvalid);
  // dtype
  std::vector<std::byte> bytes8(4 * 64);
  REQUIRE_STATUS_IS(Quantize(ok, DType::kI8, bytes8, 4, 64, {codes, scale, zero}), kInvalid);
  // configs
  REQUIRE_STATUS_IS(
      Quantize(MinMax(3, 32, false), DType::kBF16, weight, 4, 64, {codes, scale, zero}), kInvalid);
  REQUIRE_STATUS_IS(
      Quantize(MinMax(4, -32, false), DType::kBF16, weight, 4, 64, {codes, scale, zero}), kInvalid);
  REQUIRE_STATUS_IS(Quantize(QuantConfig{8, 32, false, QuantMethod::kHqq}, DType::kBF16, weight, 4,
                             64, {codes, scale, zero}),
                    kInvalid);
  // Zero rows is fine and writes nothing.
  REQUIRE_OK(Quantize(ok, DType::kBF16, {}, 0, 64, {}));
}

TEST_CASE("config helpers", "[quantize]") {
  REQUIRE(QuantMethodName(QuantMethod::kMinMax) == "min_max");
  REQUIRE(QuantMethodName(QuantMethod::kHqq) == "hqq");
  REQUIRE(*QuantMethodFromName("min_max") == QuantMethod::kMinMax);
  REQUIRE(*QuantMethodFromName("hqq") == QuantMethod::kHqq);
  REQUIRE_STATUS_IS(QuantMethodFromName("gptq"), absl::StatusCode::kInvalidArgument);

  REQUIRE_OK(ValidateQuantConfig(MinMax(8, kPerRowGroupSize, true)));
  REQUIRE_OK(ValidateQuantConfig(QuantConfig{6, 32, true, QuantMethod::kHqq}));
  REQUIRE_STATUS_IS(ValidateQuantConfig(MinMax(7, 32, true)), absl::StatusCode::kInvalidArgument);
  const absl::Status hqq8 = ValidateQuantConfig(QuantConfig{8, 32, false, QuantMethod::kHqq});
  REQUIRE(hqq8.code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(std::string(hqq8.message()).find("'bits'") != std::string::npos);

  const auto range = [](int bits, bool symmetric) {
    const CodeRange r = CodeRangeOf(MinMax(bits, 32, symmetric));
    return std::pair(r.quant_min, r.quant_max);
  };
  REQUIRE(range(4, false) == std::pair(0, 15));
  REQUIRE(range(4, true) == std::pair(0, 15));
  REQUIRE(range(5, false) == std::pair(-16, 15));
  REQUIRE(range(6, true) == std::pair(-32, 31));
  REQUIRE(range(8, true) == std::pair(-128, 127));

  REQUIRE(*ResolveGroupSize(MinMax(4, 32, false), 5376) == 32);
  REQUIRE(*ResolveGroupSize(MinMax(8, kPerRowGroupSize, true), 5376) == 5376);
  REQUIRE_STATUS_IS(ResolveGroupSize(MinMax(4, 32, false), 100),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(ResolveGroupSize(MinMax(4, 32, false), 0), absl::StatusCode::kInvalidArgument);

  REQUIRE(ErrorStats{4, 1}.RelativeError() == 0.5);
  REQUIRE(ErrorStats{100, 1}.SnrDb() == Approx(20));
  REQUIRE(ErrorStats{1, 0}.SnrDb() == std::numeric_limits<double>::infinity());
  REQUIRE(ErrorStats{0, 0}.RelativeError() == 0);
}

// ---- dequantization and error statistics ----

TEST_CASE("min-max round trip stays within half a step", "[quantize]") {
  auto rng = MakeRng();
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int bits : {4, 5, 6, 8}) {
      for (bool symmetric : {false, true}) {
        const QuantConfig config = MinMax(bits, 64, symmetric);
        const Matrix m = Encode(dtype, 9, 512, RandomWeights(rng, 9, 512, 64));
        INFO(Describe(config, dtype, 9, 512));
        const Quantized q = RunQuantize(config, m);
        std::vector<float> deq(m.values.size(), std::numeric_limits<float>::quiet_NaN());
        REQUIRE_OK(Dequantize(config, 9, 512, q.codes, q.scale, q.zero, deq));
        for (size_t g = 0; g < q.scale.size(); ++g) {
          double amax = 0;
          for (size_t i = g * 64; i < (g + 1) * 64; ++i) {
            amax = std::max(amax, std::fabs(static_cast<double>(m.values[i])));
          }
          // Half a step, plus the bf16 rounding of s and of r = 1/s (2^-8
          // relative each) acting on values up to amax.
          const double bound = 0.5 * q.scale[g] + amax * 0x1p-7;
          for (size_t i = g * 64; i < (g + 1) * 64; ++i) {
            const double err = std::fabs(static_cast<double>(m.values[i]) - deq[i]);
            if (err > bound) {
              FAIL_CHECK("element " << i << " error " << err << " > bound " << bound);
              return;
            }
          }
        }
      }
    }
  }
}

TEST_CASE("Dequantize computes (code - zero) * scale in float32", "[quantize]") {
  const QuantConfig config = MinMax(4, 2, false);
  const std::vector<int8_t> codes = {0, 15, 7, 8};
  const std::vector<float> scale = {0.5f, 0.25f}, zero = {3.0f, 8.0f};
  std::vector<float> out(4);
  REQUIRE_OK(Dequantize(config, 1, 4, codes, scale, zero, out));
  REQUIRE(out == std::vector<float>{-1.5f, 6.0f, -0.25f, 0.0f});
  std::vector<float> short_out(3);
  REQUIRE_STATUS_IS(Dequantize(config, 1, 4, codes, scale, zero, short_out),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(Dequantize(config, 1, 4, codes, std::span(scale).first(1), zero, out),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(Dequantize(MinMax(4, 3, false), 1, 4, codes, scale, zero, out),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("ErrorStats matches a direct computation", "[quantize]") {
  auto rng = MakeRng();
  ThreadPool pool(2);
  for (int group_size : {32, 48, kPerRowGroupSize}) {
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      const int64_t group = group_size == kPerRowGroupSize ? 480 : group_size;
      const QuantConfig config = MinMax(4, group_size, false);
      const Matrix m = Encode(dtype, 13, 480, RandomWeights(rng, 13, 480, group));
      ErrorStats stats{1.0, 2.0};  // accumulated into, not overwritten
      const Quantized q = RunQuantize(config, m, &pool, &stats);
      std::vector<float> deq(m.values.size());
      REQUIRE_OK(Dequantize(config, 13, 480, q.codes, q.scale, q.zero, deq));
      double ref = 1.0, err = 2.0;
      for (size_t i = 0; i < deq.size(); ++i) {
        const double d = static_cast<double>(m.values[i]) - deq[i];
        ref += static_cast<double>(m.values[i]) * m.values[i];
        err += d * d;
      }
      // The library forms w - deq in float32 (exact unless the two are far
      // apart) and sums in a different order.
      REQUIRE(stats.reference_sq == Approx(ref).epsilon(1e-9));
      REQUIRE(stats.error_sq == Approx(err).epsilon(1e-9));
      // Results with statistics on equal those without.
      RequireSame(RunQuantize(config, m), q);
    }
  }
}

}  // namespace
}  // namespace gquant

namespace gquant {
namespace {

TEST_CASE("QuantConfigToString names every field", "[quantize]") {
  REQUIRE(QuantConfigToString({4, 32, false, QuantMethod::kMinMax}) == "int4 g32 asym min_max");
  REQUIRE(QuantConfigToString({8, kPerRowGroupSize, true, QuantMethod::kMinMax}) ==
          "int8 per-row sym min_max");
  REQUIRE(QuantConfigToString({6, 128, true, QuantMethod::kHqq}) == "int6 g128 sym hqq");
}

}  // namespace
}  // namespace gquant
