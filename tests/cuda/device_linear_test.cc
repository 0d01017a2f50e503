// DeviceLinear (device_linear.cuh): Run for every form and M against a
// float64 host reference over the exact weights, stacking (FromPackedRows,
// FromFloatRows) and RunRows against the matrices run one by one, Gather bit for bit
// against a host dequantization, and Run(M = 1) replayed from a CUDA graph;
// all on fresh random weights with outputs poisoned first. The argument
// checks that run before any CUDA call are tested without a GPU.
#include "device_linear.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/dtype.h"
#include "gquant/gemma4/linear_shapes.h"
#include "gquant/pack.h"
#include "gquant/quantized_checkpoint.h"

namespace gquant::cuda {
namespace {

using Kind = QuantizedWeightInfo::Kind;

// Error bound of one output y of Run against the float64 reference over the
// exact weights (the unpacked codes, scales and zeros; for bf16 the
// bf16-rounded values), with T = Σ_k m_k |x_k| and m_k the size of weight k's
// terms ((|q| + |z|) s, |q s| + |min|, or |w| for bf16):
//   |y − ref| <= 2^-8 |ref| + (2^-8 + 2^-10) T.
// - 2^-8 |ref|: the bf16 rounding of the output (8 significant bits). The
//   activations are bf16, so every product of them with a bf16 (or exact
//   int) weight is exact in fp32.
// - 2^-8 T: on the prefill path (int4 / int8 at M > 16) each weight is first
//   rounded to bf16 (relative 2^-8) and handed to cuBLAS.
// - 2^-10 T: fp32 accumulation. cuBLAS's worst case is about K 2^-23 T
//   (2^-10.6 T at K = 5376); the GEMV kernels' group sums are far below it
//   (~2^-14 T, see int8_gemv_test.cc), and the output rounding of these
//   errors adds 2^-16 T.
// Norm-wise, ||y − ref|| / ||ref|| stays below 2^-8 (plus 1e-4 for fp32)
// where the weights reach the GEMM exactly (bf16 at any M, the GEMVs at
// M <= 16): the output rounding averages ~1.2e-3. On the prefill path the
// weight rounding adds an independent error of the same size: 2^-7.
constexpr double kBf16Rounding = 0x1p-8;
constexpr double kTermBound = 0x1p-8 + 0x1p-10;
constexpr double kExactWeightNorm = 0x1p-8 + 1e-4;
constexpr double kRoundedWeightNorm = 0x1p-7;

// One random weight of a form, as DeviceLinear receives it, and the exact
// values the reference reads.
struct HostWeight {
  LinearForm form = LinearForm::kBf16;
  int64_t n = 0, k = 0;
  UnpackedMatrix unpacked;    // int4 / int8: codes [n, k], scale and zero (min) [n, G]
  std::vector<float> values;  // bf16 form: the floats given to FromFloat [n, k]

  bool min_form() const { return unpacked.info.zero_form() == ZeroForm::kMin; }

  // Row r's weights in float64 and the sizes m_k of their terms (see the bound).
  void Row(int64_t r, std::vector<double>& w, std::vector<double>& size) const {
    w.resize(k);
    size.resize(k);
    if (form == LinearForm::kBf16) {
      for (int64_t c = 0; c < k; ++c) {
        w[c] = BFloat16ToFloat(FloatToBFloat16(values[r * k + c]));
        size[c] = std::abs(w[c]);
      }
      return;
    }
    const int64_t group = unpacked.info.group_size, groups = k / group;
    const bool min = min_form();
    for (int64_t g = 0; g < groups; ++g) {
      const double s = unpacked.scale[r * groups + g], z = unpacked.zero[r * groups + g];
      for (int64_t c = g * group; c < (g + 1) * group; ++c) {
        const double q = unpacked.codes[r * k + c];
        w[c] = min ? q * s - z : (q - z) * s;
        size[c] = min ? std::abs(q * s) + std::abs(z) : (std::abs(q) + std::abs(z)) * s;
      }
    }
  }
};

struct QuantSpec {
  Kind kind;
  int bits;  // 4 for int4 and min4; 8 (intx) or 6 (min form) for int8 rows
  int64_t group;
};

// Codes uniform over the kind's range; scales in [0.002, 0.02]; zero points
// code-sized (and, for 8-bit intx, of either sign), mins a code-sized factor
// times the scale. For the int4 layout, which stores bf16 parameters, the
// scales and zeros are bf16 values (as gquant's quantizers make them), so the
// packed weight equals the unpacked one exactly.
HostWeight MakeQuantized(const QuantSpec& spec, int64_t n, int64_t k, std::mt19937_64& rng) {
  const bool int4 = spec.bits == 4;
  HostWeight w;
  w.form = int4 ? LinearForm::kInt4 : LinearForm::kInt8;
  w.n = n;
  w.k = k;
  UnpackedMatrix& u = w.unpacked;
  u.info = {spec.kind, spec.bits, n, k, spec.group};
  const bool min_form = spec.kind == Kind::kMin;
  const bool signed_codes = spec.kind == Kind::kIntx;
  const int levels = 1 << spec.bits;
  u.codes.resize(n * k);
  for (size_t i = 0; i < u.codes.size(); i += 8) {
    uint64_t bits = rng();  // eight uniform bytes per draw
    for (size_t j = i; j < std::min(i + 8, u.codes.size()); ++j, bits >>= 8) {
      const int code = static_cast<int>(bits & 0xFF) % levels;
      u.codes[j] = static_cast<int8_t>(signed_codes ? code - levels / 2 : code);
    }
  }
  const int64_t params = n * (k / spec.group);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f), factor(0.0f, levels - 1.0f),
      signed_zero(-8.0f, 8.0f);
  const auto stored = [&](float v) { return int4 ? BFloat16ToFloat(FloatToBFloat16(v)) : v; };
  u.scale.resize(params);
  u.zero.resize(params);
  for (int64_t i = 0; i < params; ++i) {
    u.scale[i] = stored(scale(rng));
    u.zero[i] = stored(min_form       ? factor(rng) * u.scale[i]
                       : signed_codes ? signed_zero(rng)
                                      : factor(rng));
  }
  return w;
}

HostWeight MakeBf16(int64_t n, int64_t k, std::mt19937_64& rng) {
  HostWeight w;
  w.n = n;
  w.k = k;
  std::normal_distribution<float> value(0.0f, 0.05f);
  w.values.resize(n * k);
  for (float& v : w.values) v = value(rng);
  return w;
}

DeviceLinear Upload(const HostWeight& w, std::string_view name = "test") {
  absl::StatusOr<DeviceLinear> linear;
  if (w.form == LinearForm::kBf16) {
    linear = DeviceLinear::FromFloat(w.values, w.n, w.k, name);
  } else {
    const absl::StatusOr<PackedMatrix> packed = PackMatrix(w.unpacked.view(), PackBackend::kCuda);
    REQUIRE_OK(packed);
    linear = DeviceLinear::FromPacked(*packed, name);
  }
  REQUIRE_OK(linear);
  return *std::move(linear);
}

// Several weights of one form stacked along N on the host: the reference's
// view of FromPackedRows / FromFloatRows.
HostWeight ConcatRows(const std::vector<HostWeight>& parts) {
  HostWeight all = parts.front();
  for (size_t i = 1; i < parts.size(); ++i) {
    const HostWeight& p = parts[i];
    all.n += p.n;
    all.unpacked.info.rows += p.n;
    all.unpacked.codes.insert(all.unpacked.codes.end(), p.unpacked.codes.begin(),
                              p.unpacked.codes.end());
    all.unpacked.scale.insert(all.unpacked.scale.end(), p.unpacked.scale.begin(),
                              p.unpacked.scale.end());
    all.unpacked.zero.insert(all.unpacked.zero.end(), p.unpacked.zero.begin(),
                             p.unpacked.zero.end());
    all.values.insert(all.values.end(), p.values.begin(), p.values.end());
  }
  return all;
}

std::vector<uint16_t> RandomActivations(int64_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> act(0.0f, 1.0f);
  std::vector<uint16_t> x(count);
  for (uint16_t& v : x) v = FloatToBFloat16(act(rng));
  return x;
}

DeviceBuffer<uint16_t> Poisoned(int64_t count) {
  auto buffer = DeviceBuffer<uint16_t>::Allocate(count);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0xFF));  // bf16 NaN
  return *std::move(buffer);
}

std::vector<uint16_t> Download(const DeviceBuffer<uint16_t>& buffer) {
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<uint16_t> host(buffer.size());
  REQUIRE_OK(buffer.CopyToHost(host));
  return host;
}

const __nv_bfloat16* Bf16(const DeviceBuffer<uint16_t>& b) {
  return reinterpret_cast<const __nv_bfloat16*>(b.data());
}
__nv_bfloat16* Bf16(DeviceBuffer<uint16_t>& b) {
  return reinterpret_cast<__nv_bfloat16*>(b.data());
}

// Checks y ([m, n] bf16 bits) = x ([m, k] bf16 bits) · Wᵀ against the
// float64 reference with the bounds above: every output written, and the
// bound on every entry when m n k is small, else on two random rows of x per
// output column (every row of W is covered). The norm is over the checked
// entries.
void CheckProducts(const std::vector<uint16_t>& y, const HostWeight& w,
                   const std::vector<uint16_t>& x, int64_t m, double norm_bound,
                   std::mt19937_64& rng) {
  REQUIRE(static_cast<int64_t>(y.size()) == m * w.n);
  int64_t unwritten = 0;
  for (uint16_t v : y) unwritten += !std::isfinite(BFloat16ToFloat(v));
  REQUIRE(unwritten == 0);

  std::vector<double> xd(x.size());
  std::transform(x.begin(), x.end(), xd.begin(), BFloat16ToFloat);
  const bool all = m * w.n * w.k <= (int64_t{1} << 24);
  std::uniform_int_distribution<int64_t> row_of_x(0, m - 1);
  std::vector<double> weights, sizes;
  double err2 = 0, ref2 = 0;
  int64_t outside = 0;
  for (int64_t r = 0; r < w.n; ++r) {
    w.Row(r, weights, sizes);
    const int64_t checks = all ? m : std::min<int64_t>(m, 2);
    for (int64_t i = 0; i < checks; ++i) {
      const int64_t mi = all ? i : row_of_x(rng);
      double ref = 0, terms = 0;
      for (int64_t c = 0; c < w.k; ++c) {
        ref += weights[c] * xd[mi * w.k + c];
        terms += sizes[c] * std::abs(xd[mi * w.k + c]);
      }
      const double got = BFloat16ToFloat(y[mi * w.n + r]);
      const double bound = kBf16Rounding * std::abs(ref) + kTermBound * terms;
      if (std::abs(got - ref) > bound && outside++ == 0) {
        INFO("y[" << mi << ", " << r << "] = " << got << ", reference " << ref << ", bound "
                  << bound);
        CHECK(std::abs(got - ref) <= bound);
      }
      err2 += (got - ref) * (got - ref);
      ref2 += ref * ref;
    }
  }
  REQUIRE(outside == 0);
  const double relative = std::sqrt(err2 / ref2);
  CAPTURE(relative);
  REQUIRE(relative < norm_bound);
}

// T (see the bound) of every output [m, n] of x ([m, k] bf16 bits) · Wᵀ.
std::vector<double> TermSizes(const HostWeight& w, const std::vector<uint16_t>& x, int64_t m) {
  std::vector<double> terms(m * w.n, 0.0), weights, sizes;
  for (int64_t r = 0; r < w.n; ++r) {
    w.Row(r, weights, sizes);
    for (int64_t mi = 0; mi < m; ++mi) {
      for (int64_t c = 0; c < w.k; ++c) {
        terms[mi * w.n + r] += sizes[c] * std::abs(BFloat16ToFloat(x[mi * w.k + c]));
      }
    }
  }
  return terms;
}

// y = Run(x) for m random rows, checked against the reference.
void CheckRun(const DeviceLinear& linear, const HostWeight& w, int64_t m, LinearContext& context,
              std::mt19937_64& rng) {
  INFO(LinearFormName(w.form) << " [" << w.n << ", " << w.k << "] M=" << m);
  const std::vector<uint16_t> x_host = RandomActivations(m * w.k, rng);
  const auto x = testing::Upload(x_host);
  auto y = Poisoned(m * w.n);
  REQUIRE_OK(linear.Run(Bf16(x), m, Bf16(y), context, nullptr));
  const bool rounded_weights = w.form != LinearForm::kBf16 && m > 16;
  CheckProducts(Download(y), w, x_host, m, rounded_weights ? kRoundedWeightNorm : kExactWeightNorm,
                rng);
}

LinearContext MakeContext() {
  absl::StatusOr<LinearContext> context = LinearContext::Create();
  REQUIRE_OK(context);
  return *std::move(context);
}

int64_t ExpectedBytes(const HostWeight& w) {
  if (w.form == LinearForm::kBf16) return w.n * w.k * 2;
  const int64_t params = w.n * (w.k / w.unpacked.info.group_size);
  return w.form == LinearForm::kInt4 ? w.n * w.k / 2 + params * 4 : w.n * w.k + params * 8;
}

// A weight of each form: int4 in both zero forms, int8 from 8-bit intx and
// from the 6-bit min form, and bf16. Groups fit each layout (int4: 32 or a
// multiple of 64; int8: a multiple of 16).
std::vector<HostWeight> EveryForm(int64_t n, int64_t k, int64_t bf16_k, std::mt19937_64& rng) {
  std::vector<HostWeight> weights;  // built in place: the 31B ones are large
  weights.push_back(MakeQuantized({Kind::kInt4, 4, 32}, n, k, rng));
  weights.push_back(MakeQuantized({Kind::kMin, 4, k % 128 == 0 ? 128 : 64}, n, k, rng));
  weights.push_back(MakeQuantized({Kind::kIntx, 8, k}, n, k, rng));  // per row, as embeddings
  weights.push_back(MakeQuantized({Kind::kMin, 6, 16}, n, k, rng));
  weights.push_back(MakeBf16(n, bf16_k, rng));
  return weights;
}

TEST_CASE("DeviceLinear::Run matches a float64 reference for every form and M",
          "[cuda][device_linear]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  LinearContext context = MakeContext();
  const auto check = [&](const std::vector<HostWeight>& weights) {
    for (const HostWeight& w : weights) {
      const DeviceLinear linear = Upload(w);
      CHECK(linear.form() == w.form);
      CHECK(linear.n() == w.n);
      CHECK(linear.k() == w.k);
      CHECK(linear.num_bytes() == ExpectedBytes(w));
      // M = 300 on the 31B shape: 2 x 64 tiles, enough for the fused int4
      // GEMM (PreferFusedInt4Gemm) where it is available.
      for (int64_t m : {1, 3, 16, 17, 64, 300}) CheckRun(linear, w, m, context, rng);
    }
  };
  // Small: N = 48 is three int4 row blocks; bf16 takes an odd K (cuBLAS needs no alignment).
  SECTION("small shapes") { check(EveryForm(48, 192, 203, rng)); }
  SECTION("31B q_sliding") {
    const gemma4::LinearShape& s = gemma4::kGemma4_31bLinearShapes[0];
    INFO(s.name);
    check(EveryForm(s.n, s.k, s.k, rng));
  }
}

TEST_CASE("DeviceLinear stacks matrices along N", "[cuda][device_linear]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  LinearContext context = MakeContext();
  const std::vector<std::vector<HostWeight>> stacks = {
      {MakeQuantized({Kind::kInt4, 4, 64}, 16, 192, rng),
       MakeQuantized({Kind::kInt4, 4, 64}, 48, 192, rng),
       MakeQuantized({Kind::kInt4, 4, 64}, 32, 192, rng)},
      {MakeQuantized({Kind::kMin, 6, 16}, 37, 208, rng),
       MakeQuantized({Kind::kMin, 6, 16}, 19, 208, rng)},
      {MakeBf16(5, 203, rng), MakeBf16(11, 203, rng), MakeBf16(3, 203, rng)},
  };
  for (const std::vector<HostWeight>& parts : stacks) {
    const bool bf16 = parts.front().form == LinearForm::kBf16;
    std::vector<DeviceLinear> separate;
    std::vector<PackedMatrix> packed;
    std::vector<std::span<const float>> floats;
    std::vector<int64_t> rows;
    for (const HostWeight& p : parts) {
      separate.push_back(Upload(p));
      if (bf16) {
        floats.push_back(p.values);
        rows.push_back(p.n);
      } else {
        absl::StatusOr<PackedMatrix> one = PackMatrix(p.unpacked.view(), PackBackend::kCuda);
        REQUIRE_OK(one);
        packed.push_back(*std::move(one));
      }
    }
    absl::StatusOr<DeviceLinear> stacked =
        bf16 ? DeviceLinear::FromFloatRows(floats, rows, parts.front().k, "stacked")
             : DeviceLinear::FromPackedRows(packed, "stacked");
    REQUIRE_OK(stacked);
    const HostWeight all = ConcatRows(parts);
    REQUIRE(stacked->n() == all.n);
    CHECK(stacked->num_bytes() == ExpectedBytes(all));
    for (int64_t m : {1, 17}) {
      INFO(LinearFormName(all.form) << " stack of " << parts.size() << ", M=" << m);
      const std::vector<uint16_t> x_host = RandomActivations(m * all.k, rng);
      const auto x = testing::Upload(x_host);
      auto y = Poisoned(m * all.n);
      REQUIRE_OK(stacked->Run(Bf16(x), m, Bf16(y), context, nullptr));
      const std::vector<uint16_t> got = Download(y);
      CheckProducts(got, all, x_host, m, bf16 || m <= 16 ? kExactWeightNorm : kRoundedWeightNorm,
                    rng);
      // Each matrix alone gives the same rows. The kernels may sum in another
      // order for another N (grid and split-K depend on it), so the two bf16
      // outputs round fp32 sums that differ by the accumulation error (at
      // most ~2 K 2^-23 T = 2^-14.3 T at K = 208, see the bound): they are at
      // most one bf16 step (2^-7 of the larger) plus 2^-13 T apart, and
      // nearly always equal.
      const std::vector<double> terms = TermSizes(all, x_host, m);
      int64_t offset = 0, differing = 0;
      for (size_t i = 0; i < parts.size(); ++i) {
        auto yi = Poisoned(m * parts[i].n);
        REQUIRE_OK(separate[i].Run(Bf16(x), m, Bf16(yi), context, nullptr));
        const std::vector<uint16_t> alone = Download(yi);
        for (int64_t mi = 0; mi < m; ++mi) {
          for (int64_t r = 0; r < parts[i].n; ++r) {
            const int64_t at = mi * all.n + offset + r;
            const double a = BFloat16ToFloat(alone[mi * parts[i].n + r]);
            const double b = BFloat16ToFloat(got[at]);
            differing += a != b;
            INFO("matrix " << i << " y[" << mi << ", " << r << "]: alone " << a << ", stacked "
                           << b);
            REQUIRE(std::abs(a - b) <=
                    0x1p-7 * std::max(std::abs(a), std::abs(b)) + 0x1p-13 * terms[at]);
          }
        }
        // RunRows over the member's range is that matrix's own computation
        // (the same bytes at the same N): bit for bit the one alone.
        auto rows_out = Poisoned(m * parts[i].n);
        REQUIRE_OK(
            stacked->RunRows(Bf16(x), m, offset, parts[i].n, Bf16(rows_out), context, nullptr));
        CHECK(Download(rows_out) == alone);
        offset += parts[i].n;
      }
      CAPTURE(differing);
      CHECK(differing <= m * all.n / 8);
    }
  }
}

double GeluTanh(double v) {
  return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
}

TEST_CASE("DeviceLinear gate / up pairs give gelu_tanh(gate) * up at any M",
          "[cuda][device_linear]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  LinearContext context = MakeContext();
  for (const QuantSpec& spec : {QuantSpec{Kind::kInt4, 4, 32}, QuantSpec{Kind::kMin, 4, 64}}) {
    const int64_t width = 48, k = 192;
    const HostWeight gate = MakeQuantized(spec, width, k, rng);
    const HostWeight up = MakeQuantized(spec, width, k, rng);
    absl::StatusOr<PackedMatrix> packed[2];
    for (int i = 0; i < 2; ++i) {
      packed[i] = PackMatrix((i == 0 ? gate : up).unpacked.view(), PackBackend::kCuda);
      REQUIRE_OK(packed[i]);
    }
    absl::StatusOr<DeviceLinear> pairs =
        DeviceLinear::FromPackedGatePairs(*packed[0], *packed[1], "gate + up");
    REQUIRE_OK(pairs);
    CHECK(pairs->gate_pairs());
    CHECK(pairs->n() == 2 * width);
    CHECK(pairs->num_bytes() == ExpectedBytes(gate) + ExpectedBytes(up));
    const DeviceLinear plain = Upload(gate);
    CHECK_FALSE(plain.gate_pairs());
    REQUIRE_STATUS_IS(plain.RunGeluGate(nullptr, 1, nullptr, nullptr, context, nullptr),
                      absl::StatusCode::kInvalidArgument);
    // M <= 16: the GEMV's epilogue (one rounding); above, the prefill GEMM
    // (weights and both products rounded to bf16) and the elementwise kernel.
    for (int64_t m : {1, 5, 16, 17, 40}) {
      INFO("group " << spec.group << " M=" << m);
      const std::vector<uint16_t> x_host = RandomActivations(m * k, rng);
      const auto x = testing::Upload(x_host);
      auto scratch = Poisoned(m * 2 * width);
      auto y = Poisoned(m * width);
      REQUIRE_OK(pairs->RunGeluGate(Bf16(x), m, Bf16(scratch), Bf16(y), context, nullptr));
      const std::vector<uint16_t> got = Download(y);
      std::vector<double> gate_row, up_row, sizes;
      double err2 = 0, ref2 = 0;
      for (int64_t r = 0; r < width; ++r) {
        gate.Row(r, gate_row, sizes);
        up.Row(r, up_row, sizes);
        for (int64_t mi = 0; mi < m; ++mi) {
          double g = 0, u = 0;
          for (int64_t c = 0; c < k; ++c) {
            g += gate_row[c] * BFloat16ToFloat(x_host[mi * k + c]);
            u += up_row[c] * BFloat16ToFloat(x_host[mi * k + c]);
          }
          const double want = GeluTanh(g) * u, value = BFloat16ToFloat(got[mi * width + r]);
          REQUIRE(std::isfinite(value));
          err2 += (value - want) * (value - want);
          ref2 += want * want;
        }
      }
      const double relative = std::sqrt(err2 / ref2);
      CAPTURE(relative);
      REQUIRE(relative < (m <= 16 ? kExactWeightNorm : 3 * kRoundedWeightNorm));
    }
  }
}

// float32 (q − zero) · scale, or q · scale − min, each operation rounded on
// its own, times the multiplier (rounded), then bf16: the gathers' contract
// (embedding_gather.cuh). Each float operation is done in double and rounded
// once to float: double has more than 2 x 24 + 2 bits, so this equals the
// correctly rounded float operation, whatever the host compiler contracts.
uint16_t GatheredValue(double q, float scale, float zero, bool min_form, float multiplier) {
  const float w =
      min_form ? static_cast<float>(static_cast<double>(static_cast<float>(q * scale)) - zero)
               : static_cast<float>(static_cast<double>(static_cast<float>(q - zero)) * scale);
  return FloatToBFloat16(static_cast<float>(static_cast<double>(w) * multiplier));
}

TEST_CASE("DeviceLinear::Gather reads dequantized rows of every form", "[cuda][device_linear]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  for (const HostWeight& w : EveryForm(48, 192, 203, rng)) {
    INFO(LinearFormName(w.form) << " [" << w.n << ", " << w.k << "]");
    const DeviceLinear table = Upload(w);
    // Both ends, random rows, and two ids outside [0, N) (NaN rows).
    std::uniform_int_distribution<int32_t> row(0, static_cast<int32_t>(w.n) - 1);
    std::vector<int32_t> ids = {0,        static_cast<int32_t>(w.n) - 1, row(rng), row(rng),
                                row(rng), static_cast<int32_t>(w.n),     -1};
    const float multiplier = std::uniform_real_distribution<float>(0.5f, 80.0f)(rng);
    CAPTURE(multiplier);
    const auto ids_device = testing::Upload(ids);
    const int count = static_cast<int>(ids.size());
    auto out = Poisoned(count * w.k);
    REQUIRE_OK(table.Gather(ids_device.data(), count, multiplier, Bf16(out), nullptr));
    const std::vector<uint16_t> got = Download(out);
    const int64_t group = w.unpacked.info.group_size;
    for (int t = 0; t < count; ++t) {
      const int32_t id = ids[t];
      for (int64_t c = 0; c < w.k; ++c) {
        const uint16_t v = got[t * w.k + c];
        INFO("row " << t << " (id " << id << "), column " << c);
        if (id < 0 || id >= w.n) {
          REQUIRE(std::isnan(BFloat16ToFloat(v)));
          continue;
        }
        uint16_t want;
        if (w.form == LinearForm::kBf16) {
          const float stored = BFloat16ToFloat(FloatToBFloat16(w.values[id * w.k + c]));
          want = FloatToBFloat16(static_cast<float>(static_cast<double>(stored) * multiplier));
        } else {
          const int64_t g = id * (w.k / group) + c / group;
          want = GatheredValue(w.unpacked.codes[id * w.k + c], w.unpacked.scale[g],
                               w.unpacked.zero[g], w.min_form(), multiplier);
        }
        REQUIRE(v == want);
      }
    }
  }
}

TEST_CASE("DeviceLinear::Run(M = 1) replays from a CUDA graph", "[cuda][device_linear]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  LinearContext context = MakeContext();
  const gemma4::LinearShape& s = gemma4::kGemma4E2bLinearShapes[0];  // q_sliding
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (const HostWeight& w :
       {MakeQuantized({Kind::kInt4, 4, 32}, s.n, s.k, rng), MakeBf16(s.n, s.k, rng)}) {
    INFO(LinearFormName(w.form) << " " << s.name);
    const DeviceLinear linear = Upload(w);
    auto x = testing::Upload(RandomActivations(w.k, rng));
    auto y = Poisoned(w.n);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the legacy stream's copies and fill
    // One eager run first, as a decode loop does before capturing its step
    // (kernels and cuBLAS load their modules then).
    REQUIRE_OK(linear.Run(Bf16(x), 1, Bf16(y), context, stream));
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    cudaGraph_t graph;
    REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    const absl::Status captured = linear.Run(Bf16(x), 1, Bf16(y), context, stream);
    REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
    REQUIRE_OK(captured);
    cudaGraphExec_t exec;
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    for (int replay = 0; replay < 3; ++replay) {
      INFO("replay " << replay);
      const std::vector<uint16_t> x_host = RandomActivations(w.k, rng);
      REQUIRE_OK(x.CopyFromHost(x_host));
      REQUIRE_OK(y.FillBytes(0xFF));
      // The copy and the fill ran on the legacy stream, which a non-blocking
      // stream does not wait for.
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
      CheckProducts(Download(y), w, x_host, 1, kExactWeightNorm, rng);
    }
    REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
    REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
  }
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("DeviceLinear::Run rejects bad arguments", "[cuda][device_linear]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  LinearContext context = MakeContext();
  const HostWeight w = MakeQuantized({Kind::kInt4, 4, 32}, 16, 64, rng);
  const DeviceLinear linear = Upload(w, "q_proj");
  auto x = testing::Upload(RandomActivations(2 * w.k, rng));
  auto y = Poisoned(2 * w.n);
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_OK(linear.Run(nullptr, 0, nullptr, context, nullptr));  // M = 0: nothing to do
  REQUIRE_STATUS_IS(linear.Run(Bf16(x), -1, Bf16(y), context, nullptr), kInvalid);
  REQUIRE_STATUS_IS(linear.Run(nullptr, 1, Bf16(y), context, nullptr), kInvalid);
  REQUIRE_STATUS_IS(linear.Run(Bf16(x), 1, Bf16(y) + 1, context, nullptr), kInvalid);
  const absl::Status empty = DeviceLinear().Run(Bf16(x), 1, Bf16(y), context, nullptr);
  REQUIRE_STATUS_IS(empty, kInvalid);
  LinearContext moved = std::move(context);
  const absl::Status stale = linear.Run(Bf16(x), 1, Bf16(y), context, nullptr);
  REQUIRE_STATUS_IS(stale, kInvalid);
  CHECK(std::string(stale.message()).find("q_proj") != std::string::npos);
  REQUIRE_OK(linear.Run(Bf16(x), 2, Bf16(y), moved, nullptr));
}

TEST_CASE("DeviceLinear::RunRows rejects a range that is not whole rows of N",
          "[cuda][device_linear]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  LinearContext context = MakeContext();
  const HostWeight int4 = MakeQuantized({Kind::kInt4, 4, 32}, 48, 64, rng);
  const HostWeight bf16 = MakeBf16(5, 64, rng);
  const DeviceLinear a = Upload(int4, "gate_up"), b = Upload(bf16, "qkv");
  const std::vector<uint16_t> x_host = RandomActivations(2 * 64, rng);
  auto x = testing::Upload(x_host);
  auto y = Poisoned(2 * 48);
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  for (const auto& [begin, rows] : {std::pair{0, 0}, {-16, 32}, {32, 32}, {8, 16}, {16, 24}}) {
    INFO("int4 rows " << begin << " + " << rows);
    const absl::Status status = a.RunRows(Bf16(x), 2, begin, rows, Bf16(y), context, nullptr);
    REQUIRE_STATUS_IS(status, kInvalid);
    CHECK(std::string(status.message()).find("gate_up") != std::string::npos);
  }
  REQUIRE_STATUS_IS(b.RunRows(Bf16(x), 2, 3, 3, Bf16(y), context, nullptr), kInvalid);
  // The bf16 form takes any row range: rows 3 and 4 against the reference.
  HostWeight rows_3_4 = bf16;
  rows_3_4.n = 2;
  rows_3_4.values.assign(bf16.values.begin() + 3 * 64, bf16.values.begin() + 5 * 64);
  auto part = Poisoned(2 * 2);
  REQUIRE_OK(b.RunRows(Bf16(x), 2, 3, 2, Bf16(part), context, nullptr));
  CheckProducts(Download(part), rows_3_4, x_host, 2, kExactWeightNorm, rng);
}

// ---- argument checks that run before any CUDA call (no GPU needed) ----

PackedMatrix PackedOrDie(const QuantSpec& spec, int64_t n, int64_t k, std::mt19937_64& rng,
                         PackBackend backend = PackBackend::kCuda) {
  absl::StatusOr<PackedMatrix> packed =
      PackMatrix(MakeQuantized(spec, n, k, rng).unpacked.view(), backend);
  REQUIRE_OK(packed);
  return *std::move(packed);
}

// The status of FromPackedRows(parts, "gate_up"), which must be
// InvalidArgument and name the weight.
void RequireRejected(std::vector<PackedMatrix> parts) {
  const absl::StatusOr<DeviceLinear> linear = DeviceLinear::FromPackedRows(parts, "gate_up");
  REQUIRE_STATUS_IS(linear, absl::StatusCode::kInvalidArgument);
  CHECK(std::string(linear.status().message()).find("gate_up") != std::string::npos);
}

TEST_CASE("DeviceLinear rejects what it cannot upload or stack", "[device_linear]") {
  auto rng = testing::MakeRng();
  const QuantSpec int4{Kind::kInt4, 4, 32};
  const PackedMatrix a = PackedOrDie(int4, 32, 128, rng);
  SECTION("no matrices") { RequireRejected({}); }
  SECTION("another layout") {
    RequireRejected({PackedOrDie(int4, 32, 128, rng, PackBackend::kCpu)});
  }
  SECTION("int4 and int8 rows") {
    RequireRejected({a, PackedOrDie({Kind::kIntx, 8, 32}, 32, 128, rng)});
  }
  SECTION("another K") { RequireRejected({a, PackedOrDie(int4, 32, 192, rng)}); }
  SECTION("another group size") {
    RequireRejected({a, PackedOrDie({Kind::kInt4, 4, 64}, 32, 128, rng)});
  }
  SECTION("another zero form") {
    RequireRejected({a, PackedOrDie({Kind::kMin, 4, 32}, 32, 128, rng)});
  }
  SECTION("a missing part") {
    PackedMatrix b = a;
    b.parts.erase("params");
    RequireRejected({a, b});
  }
  SECTION("a part of the wrong size") {
    PackedMatrix b = a;
    b.parts["qweight"].pop_back();
    RequireRejected({b});
  }
  SECTION("a shape the layout cannot take") {
    PackedMatrix b = a;  // rows not a multiple of 16: parts sized to match
    b.info.rows = 24;
    b.parts["qweight"].resize(24 * 128 / 2);
    b.parts["params"].resize(24 * 4 * 4);
    RequireRejected({b});
  }
  SECTION("a plain matrix") {
    PackedMatrix b = a;
    b.info.kind = Kind::kPlain;
    RequireRejected({b});
  }
  SECTION("floats") {
    constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
    const std::vector<float> values(6 * 8, 0.5f);
    REQUIRE_STATUS_IS(DeviceLinear::FromFloat(values, 6, 7), kInvalid);  // 48 != 42
    REQUIRE_STATUS_IS(DeviceLinear::FromFloat(values, 0, 8), kInvalid);
    REQUIRE_STATUS_IS(DeviceLinear::FromFloat(std::span<const float>(), 0, 0), kInvalid);
    const std::span<const float> parts[2] = {values, values};
    const int64_t rows[2] = {6, 6};
    REQUIRE_STATUS_IS(DeviceLinear::FromFloatRows(parts, std::span(rows, 1), 8), kInvalid);
    REQUIRE_STATUS_IS(DeviceLinear::FromFloatRows({}, {}, 8), kInvalid);
    const int64_t wrong[2] = {6, 5};
    const absl::StatusOr<DeviceLinear> linear = DeviceLinear::FromFloatRows(parts, wrong, 8, "up");
    REQUIRE_STATUS_IS(linear, kInvalid);
    CHECK(std::string(linear.status().message()).find("'up'") != std::string::npos);
  }
  SECTION("gate / up pairs of other forms or shapes") {
    constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
    const PackedMatrix int8 = PackedOrDie({Kind::kIntx, 8, 32}, 32, 128, rng);
    REQUIRE_STATUS_IS(DeviceLinear::FromPackedGatePairs(int8, int8), kInvalid);
    REQUIRE_STATUS_IS(DeviceLinear::FromPackedGatePairs(a, PackedOrDie(int4, 48, 128, rng)),
                      kInvalid);
    const absl::StatusOr<DeviceLinear> mixed = DeviceLinear::FromPackedGatePairs(
        a, PackedOrDie({Kind::kMin, 4, 32}, 32, 128, rng), "gate_up");
    REQUIRE_STATUS_IS(mixed, kInvalid);
    CHECK(std::string(mixed.status().message()).find("gate_up") != std::string::npos);
  }
  SECTION("an empty object") {
    const DeviceLinear empty;
    CHECK(empty.n() == 0);
    CHECK(empty.num_bytes() == 0);
    REQUIRE_STATUS_IS(empty.Gather(nullptr, 1, 1.0f, nullptr, nullptr),
                      absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("LinearFormName names each form", "[device_linear]") {
  CHECK(LinearFormName(LinearForm::kInt4) == "int4");
  CHECK(LinearFormName(LinearForm::kInt8) == "int8");
  CHECK(LinearFormName(LinearForm::kBf16) == "bf16");
}

}  // namespace
}  // namespace gquant::cuda
