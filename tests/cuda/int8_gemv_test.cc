// The int8 decode GEMV against a float64 CPU reference and the int8 row
// dequantizer against an exact host computation, on fresh random data with
// outputs poisoned first; and the host side of the "cuda_int8_rows" layout
// (CheckInt8RowsShape, PackInt8Rows), which needs no GPU.
#include "int8_gemv.cuh"

#include <cuda_bf16.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/dtype.h"
#include "gquant/gemma4/linear_shapes.h"
#include "int8_dequantize.cuh"
#include "int8_layout.h"

namespace gquant::cuda {
namespace {

// Error bound of one GEMV output y (checked per element):
//   |got − ref| <= 2^-8 |ref| + 2^-14 T,  T = Σ_k |s c x| + |s z x| (or |min x|).
// - 2^-8 |ref|: rounding to bf16 (8 significant bits, unit roundoff 2^-8).
//   The weights enter the tensor cores exactly (int8 codes are exact bf16)
//   and the activations are bf16, so products are exact.
// - 2^-14 T: fp32 accumulation (mma sums, the per-group s·Σcx − s·z·Σx, the
//   sum over groups and warps). Each rounding costs at most 2^-24 of terms
//   bounded by T; random-sign errors over the ~K/16 sequential additions grow
//   like their square root (~2^-19 T at K = 21504), so 2^-14 is a wide margin
//   that still fails on garbage: T is ~100 |y| at these K, so it allows ~0.6%
//   of a typical output.
// Also ||got − ref|| / ||ref|| <= 2^-8 over all outputs (the bf16 rounding
// averages ~2^-9.3 of the norm).
constexpr double kBf16Rounding = 0x1p-8;
constexpr double kAccumulation = 0x1p-14;

enum class Codes {
  kInt8,    // symmetric intx codes in [-128, 127]
  kSixBit,  // 6-bit codes: [-32, 31] in the zero form, [0, 63] in the min form
};

struct Spec {
  int64_t n, k, group;  // group = k: per-row
  bool min_form;
  Codes codes;
  bool symmetric;  // zero form with zero = 0
};

// A weight in the packed layout (host), its parts as the packer saw them.
struct HostWeight {
  Spec spec;
  std::vector<int8_t> codes;       // [N, K]
  std::vector<float> scale, zero;  // [N, G]: zero is the min in the min form
  PackedInt8Rows packed;
};

HostWeight MakeWeight(const Spec& spec, std::mt19937_64& rng) {
  HostWeight w{spec, {}, {}, {}, {}};
  w.codes.resize(spec.n * spec.k);
  // Eight codes per 64-bit draw: every byte is uniform.
  for (size_t i = 0; i < w.codes.size(); i += 8) {
    uint64_t bits = rng();
    for (size_t j = i; j < std::min(i + 8, w.codes.size()); ++j, bits >>= 8) {
      const int byte = static_cast<int>(bits & 0xFF);
      w.codes[j] = static_cast<int8_t>(spec.codes == Codes::kInt8 ? byte - 128
                                       : spec.min_form            ? byte & 63
                                                                  : (byte & 63) - 32);
    }
  }
  const int64_t params = spec.n * (spec.k / spec.group);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f), zero(-8.0f, 8.0f), min(0.0f, 64.0f);
  w.scale.resize(params);
  w.zero.resize(params);
  for (int64_t i = 0; i < params; ++i) {
    w.scale[i] = scale(rng);
    // A min is the scale times a code-sized factor.
    w.zero[i] = spec.min_form ? min(rng) * w.scale[i] : spec.symmetric ? 0.0f : zero(rng);
  }
  auto packed = PackInt8Rows(w.codes, w.scale, w.zero, spec.n, spec.k, spec.group);
  REQUIRE_OK(packed);
  w.packed = *std::move(packed);
  return w;
}

// The packed weight on the device.
struct DeviceWeight {
  DeviceBuffer<int8_t> codes;
  DeviceBuffer<float> params;
  Int8RowsWeight view;
};

DeviceWeight UploadWeight(const HostWeight& w) {
  DeviceWeight d{testing::Upload(w.packed.codes), testing::Upload(w.packed.params), {}};
  d.view = {d.codes.data(), reinterpret_cast<const float2*>(d.params.data()),
            w.spec.n,       w.spec.k,
            w.spec.group,   w.spec.min_form};
  return d;
}

// y = x · Wᵀ in float64 for all kInt8GemvMaxM rows of x, and the magnitude
// T of each output's terms (see the bound above); both [M][N].
struct Reference {
  std::vector<double> y, terms;
};

Reference ReferenceProducts(const HostWeight& w, const std::vector<uint16_t>& x) {
  constexpr int kM = kInt8GemvMaxM;
  const int64_t n = w.spec.n, k = w.spec.k, groups = k / w.spec.group;
  std::vector<double> xt(k * kM), xt_abs(k * kM);  // [K][M]: the inner loop vectorizes
  for (int t = 0; t < kM; ++t) {
    for (int64_t c = 0; c < k; ++c) {
      xt[c * kM + t] = BFloat16ToFloat(x[t * k + c]);
      xt_abs[c * kM + t] = std::abs(xt[c * kM + t]);
    }
  }
  Reference ref{std::vector<double>(kM * n), std::vector<double>(kM * n)};
  for (int64_t r = 0; r < n; ++r) {
    std::array<double, kM> y{}, terms{};
    for (int64_t g = 0; g < groups; ++g) {
      const double s = w.scale[r * groups + g], z = w.zero[r * groups + g];
      for (int64_t c = g * w.spec.group; c < (g + 1) * w.spec.group; ++c) {
        const double q = w.codes[r * k + c];
        const double weight = w.spec.min_form ? q * s - z : (q - z) * s;
        const double magnitude =
            w.spec.min_form ? std::abs(q * s) + std::abs(z) : (std::abs(q) + std::abs(z)) * s;
        for (int t = 0; t < kM; ++t) {
          y[t] += weight * xt[c * kM + t];
          terms[t] += magnitude * xt_abs[c * kM + t];
        }
      }
    }
    for (int t = 0; t < kM; ++t) {
      ref.y[t * n + r] = y[t];
      ref.terms[t * n + r] = terms[t];
    }
  }
  return ref;
}

std::vector<uint16_t> RandomActivations(int64_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> act(0.0f, 1.0f);
  std::vector<uint16_t> x(count);
  for (uint16_t& v : x) v = FloatToBFloat16(act(rng));
  return x;
}

// Checks y ([m, N] bf16 bits) against the first m rows of `ref`.
void CheckOutputs(const std::vector<uint16_t>& got, const Reference& ref, int m, int64_t n) {
  int64_t failures = 0, first_failure = -1;
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    const double v = BFloat16ToFloat(got[i]), want = ref.y[i];
    const double bound = kBf16Rounding * std::abs(want) + kAccumulation * ref.terms[i];
    if (!(std::abs(v - want) <= bound)) {  // NaN (unwritten poison) fails too
      if (failures++ == 0) first_failure = i;
    }
    err2 += (v - want) * (v - want);
    ref2 += want * want;
  }
  if (failures > 0) {
    const int64_t i = first_failure;
    INFO(failures << " outputs out of bound; first: token " << i / n << " row " << i % n << " got "
                  << BFloat16ToFloat(got[i]) << " want " << ref.y[i] << " terms " << ref.terms[i]);
    REQUIRE(failures == 0);
  }
  CAPTURE(std::sqrt(err2 / ref2));
  REQUIRE(std::sqrt(err2 / ref2) <= kBf16Rounding);
}

// Knob settings, the defaults first: one warp per block (every row block
// split), odd splits, several blocks per multiprocessor, four ring stages,
// the first weights requested only after the predecessor wait with ordinary
// launches, and the rounds grid (the LM head's).
constexpr std::array<Int8GemvTuning, 9> kKnobs = {
    {{},
     {.warps_per_sm = 1},
     {.warps_per_sm = 3},
     {.warps_per_sm = 7},
     {.warps_per_sm = 32},
     {.warps_per_sm = 5, .stages = 4},
     {.serial_launch = true, .late_weights = true},
     {.schedule = Int8GemvTuning::kRounds},
     {.stages = 4, .schedule = Int8GemvTuning::kRounds}}};

void CheckGemv(const Spec& spec, std::mt19937_64& rng, bool all_knobs) {
  INFO("N=" << spec.n << " K=" << spec.k << " group " << spec.group << " min form " << spec.min_form
            << " codes " << (spec.codes == Codes::kInt8 ? "int8" : "6-bit") << " symmetric "
            << spec.symmetric);
  const HostWeight w = MakeWeight(spec, rng);
  const std::vector<uint16_t> x = RandomActivations(kInt8GemvMaxM * spec.k, rng);
  const Reference ref = ReferenceProducts(w, x);
  DeviceWeight dw = UploadWeight(w);
  auto x_d = testing::Upload(x);  // M = 16 rows; smaller M use the first rows
  for (int m : {1, 3, 16}) {
    for (const Int8GemvTuning& tuning : kKnobs) {
      if (!all_knobs && &tuning != &kKnobs[0]) break;
      INFO("M=" << m << " warps per multiprocessor " << tuning.warps_per_sm << " stages "
                << tuning.stages << " late weights " << tuning.late_weights << " schedule "
                << tuning.schedule);
      auto y = DeviceBuffer<uint16_t>::Allocate(m * spec.n);
      REQUIRE_OK(y);
      REQUIRE_OK(y->FillBytes(0xFF));  // bf16 NaN: an unwritten output fails
      REQUIRE_OK(Int8Gemv(dw.view, reinterpret_cast<const __nv_bfloat16*>(x_d.data()), m,
                          reinterpret_cast<__nv_bfloat16*>(y->data()), nullptr, tuning));
      std::vector<uint16_t> got(m * spec.n);
      REQUIRE_OK(y->CopyToHost(got));
      CheckOutputs(got, ref, m, spec.n);
    }
  }
}

TEST_CASE("int8 GEMV matches a float64 reference on small odd shapes", "[cuda][int8_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // Every group kind the kernel specializes (16, 32, per-row, other), K not
  // a multiple of the 128-column tile, N not a multiple of 16 or 32.
  const std::array<std::array<int64_t, 3>, 9> shapes = {{{3, 16, 16},
                                                         {37, 48, 16},
                                                         {37, 48, 48},
                                                         {50, 160, 32},
                                                         {29, 240, 48},
                                                         {17, 400, 80},
                                                         {1, 2048, 128},
                                                         {130, 1040, 16},
                                                         {70, 4224, 64}}};
  for (const auto& [n, k, group] : shapes) {
    for (bool min_form : {false, true}) {
      for (Codes codes : {Codes::kInt8, Codes::kSixBit}) {
        CheckGemv({n, k, group, min_form, codes, /*symmetric=*/false}, rng, /*all_knobs=*/true);
      }
    }
    CheckGemv({n, k, group, false, Codes::kInt8, /*symmetric=*/true}, rng, true);
  }
}

TEST_CASE("int8 GEMV matches a float64 reference on Gemma 4 shapes", "[cuda][int8_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // E2B (all but the 262144-row lm_head), cycling through group sizes,
  // forms and codes; each setting appears several times.
  const int64_t groups[] = {32, 16, 0 /* per-row */, 64};
  int i = 0;
  for (const gemma4::LinearShape& s : gemma4::kGemma4E2bLinearShapes) {
    if (s.name == "lm_head") continue;
    INFO(s.name);
    const int64_t group = groups[i % 4] != 0 ? groups[i % 4] : s.k;
    const bool min_form = i % 3 == 1;
    const Codes codes = i % 2 == 0 ? Codes::kInt8 : Codes::kSixBit;
    CheckGemv({s.n, s.k, group, min_form, codes, /*symmetric=*/i % 3 == 0}, rng,
              /*all_knobs=*/i < 3);
    ++i;
  }
  // 31B: the benchmark's g32 symmetric int8 (q_sliding), per-row int8 at the
  // widest K (down), and Q6_K-like group 16 6-bit min form (k_full).
  const auto& b31 = gemma4::kGemma4_31bLinearShapes;
  CheckGemv({b31[0].n, b31[0].k, 32, false, Codes::kInt8, true}, rng, false);         // q_sliding
  CheckGemv({b31[7].n, b31[7].k, b31[7].k, false, Codes::kInt8, false}, rng, false);  // down
  CheckGemv({b31[4].n, b31[4].k, 16, true, Codes::kSixBit, false}, rng, false);       // k_full
}

TEST_CASE("int8 GEMV rejects bad arguments", "[cuda][int8_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<uint8_t>::Allocate(1 << 20);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));
  const auto* codes = reinterpret_cast<const int8_t*>(buffer->data());
  const auto* params = reinterpret_cast<const float2*>(buffer->data());
  const auto* x = reinterpret_cast<const __nv_bfloat16*>(buffer->data());
  auto* y = reinterpret_cast<__nv_bfloat16*>(buffer->data() + (1 << 19));  // apart from x
  const auto invalid = absl::StatusCode::kInvalidArgument;
  const Int8RowsWeight good{codes, params, 64, 64, 32, false};
  REQUIRE_OK(Int8Gemv(good, x, 16, y, nullptr));  // the baseline the bad calls differ from
  REQUIRE_STATUS_IS(Int8Gemv(good, x, 17, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv(good, x, 0, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv({codes, params, 64, 24, 24, false}, x, 1, y, nullptr),
                    invalid);  // K % 16
  REQUIRE_STATUS_IS(Int8Gemv({codes, params, 64, 96, 24, false}, x, 1, y, nullptr),
                    invalid);  // group % 16
  REQUIRE_STATUS_IS(Int8Gemv({codes, params, 64, 96, 64, false}, x, 1, y, nullptr),
                    invalid);  // K % group
  REQUIRE_STATUS_IS(Int8Gemv({codes, params, 0, 64, 32, false}, x, 1, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv({codes, params, 64, 0, 32, false}, x, 1, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv({nullptr, params, 64, 64, 32, false}, x, 1, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv({codes, nullptr, 64, 64, 32, false}, x, 1, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv(good, nullptr, 1, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv(good, x, 1, nullptr, nullptr), invalid);
  // codes not 16-byte aligned
  REQUIRE_STATUS_IS(Int8Gemv({codes + 8, params, 64, 64, 32, false}, x, 1, y, nullptr), invalid);
  REQUIRE_STATUS_IS(Int8Gemv(good, x, 1, y, nullptr, {.warps_per_sm = 65}), invalid);
  REQUIRE_STATUS_IS(Int8Gemv(good, x, 1, y, nullptr, {.stages = 2}), invalid);
  REQUIRE_STATUS_IS(Int8Gemv(good, x, 1, y, nullptr, {.schedule = 3}), invalid);
  REQUIRE_STATUS_IS(Int8Gemv(good, x, 1, y, nullptr, {.warps_per_sm = -1}), invalid);
}

// The dequantizer's contract, computed on the host: float32 operations
// rounded one at a time, then round-to-nearest-even to bf16. Products go
// through double, where they are exact (8 x 24 and 24 x 24 significant bits),
// and are rounded to float once: no FMA contraction by the host compiler can
// change them.
uint16_t DequantizeOnHost(int8_t code, float scale, float zero, bool min_form) {
  const float c = code;
  const float w = min_form ? static_cast<float>(static_cast<double>(c) * scale) - zero
                           : static_cast<float>(static_cast<double>(c - zero) * scale);
  return FloatToBFloat16(w);
}

void CheckDequantize(const Spec& spec, int64_t row_begin, int64_t rows, int max_blocks,
                     std::mt19937_64& rng) {
  INFO("N=" << spec.n << " K=" << spec.k << " group " << spec.group << " min form " << spec.min_form
            << " rows [" << row_begin << ", " << row_begin + rows << ") max_blocks " << max_blocks);
  const HostWeight w = MakeWeight(spec, rng);
  DeviceWeight dw = UploadWeight(w);
  auto out = DeviceBuffer<uint16_t>::Allocate(rows * spec.k);
  REQUIRE_OK(out);
  REQUIRE_OK(out->FillBytes(0xFF));  // bf16 NaN: never a dequantized value
  REQUIRE_OK(DequantizeInt8Rows(dw.view, row_begin, rows,
                                reinterpret_cast<__nv_bfloat16*>(out->data()), nullptr,
                                max_blocks));
  std::vector<uint16_t> got(rows * spec.k);
  REQUIRE_OK(out->CopyToHost(got));
  const int64_t groups = spec.k / spec.group;
  int64_t mismatches = 0, first = -1;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < spec.k; ++c) {
      const int64_t row = row_begin + r, p = row * groups + c / spec.group;
      const uint16_t want =
          DequantizeOnHost(w.codes[row * spec.k + c], w.scale[p], w.zero[p], spec.min_form);
      if (got[r * spec.k + c] != want && mismatches++ == 0) first = r * spec.k + c;
    }
  }
  if (mismatches > 0) {
    INFO(mismatches << " mismatches; first at row " << row_begin + first / spec.k << " column "
                    << first % spec.k << ": got 0x" << std::hex << got[first]);
    REQUIRE(mismatches == 0);
  }
}

TEST_CASE("int8 dequantizer is bit-exact against the host", "[cuda][int8_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  for (bool min_form : {false, true}) {
    const Codes codes = min_form ? Codes::kSixBit : Codes::kInt8;
    CheckDequantize({3, 16, 16, min_form, codes, false}, 0, 3, 0, rng);
    CheckDequantize({37, 48, 16, min_form, codes, false}, 5, 17, 0, rng);
    CheckDequantize({29, 240, 48, min_form, codes, false}, 1, 27, 1, rng);  // grid-stride loop
    CheckDequantize({6144, 1536, 32, min_form, codes, false}, 1000, 2048, 0, rng);  // E2B gate_up
    CheckDequantize({6144, 1536, 32, min_form, codes, false}, 0, 6144, 7, rng);
    CheckDequantize({2048, 5376, 5376, min_form, codes, false}, 16, 2000, 0, rng);  // 31B k_full
  }
}

TEST_CASE("int8 dequantizer rejects bad arguments", "[cuda][int8_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<uint8_t>::Allocate(1 << 20);
  REQUIRE_OK(buffer);
  const auto* codes = reinterpret_cast<const int8_t*>(buffer->data());
  const auto* params = reinterpret_cast<const float2*>(buffer->data());
  auto* out = reinterpret_cast<__nv_bfloat16*>(buffer->data());
  const auto invalid = absl::StatusCode::kInvalidArgument;
  const Int8RowsWeight good{codes, params, 64, 64, 32, false};
  REQUIRE_OK(DequantizeInt8Rows(good, 60, 0, out, nullptr));                  // nothing to do
  REQUIRE_STATUS_IS(DequantizeInt8Rows(good, 60, 5, out, nullptr), invalid);  // past N
  REQUIRE_STATUS_IS(DequantizeInt8Rows(good, -1, 5, out, nullptr), invalid);
  REQUIRE_STATUS_IS(DequantizeInt8Rows(good, 0, -1, out, nullptr), invalid);
  REQUIRE_STATUS_IS(DequantizeInt8Rows(good, 0, 1, out, nullptr, -1), invalid);
  REQUIRE_STATUS_IS(DequantizeInt8Rows(good, 0, 1, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(DequantizeInt8Rows(good, 0, 1, out + 1, nullptr), invalid);  // alignment
  REQUIRE_STATUS_IS(DequantizeInt8Rows({codes, params, 64, 40, 40, false}, 0, 1, out, nullptr),
                    invalid);  // K % 16
  REQUIRE_STATUS_IS(DequantizeInt8Rows({nullptr, params, 64, 64, 32, false}, 0, 1, out, nullptr),
                    invalid);
}

// ---- host side of the layout (no GPU) ----

TEST_CASE("CheckInt8RowsShape accepts the layout's shapes and names bad ones", "[int8_layout]") {
  REQUIRE_OK(CheckInt8RowsShape(3, 16, 16));
  REQUIRE_OK(CheckInt8RowsShape(5376, 21504, 21504));  // per-row
  REQUIRE_OK(CheckInt8RowsShape(8192, 5376, 32));
  REQUIRE_OK(CheckInt8RowsShape(37, 48, 48));
  const auto invalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_STATUS_IS(CheckInt8RowsShape(0, 16, 16), invalid);
  REQUIRE_STATUS_IS(CheckInt8RowsShape(4, 0, 16), invalid);
  REQUIRE_STATUS_IS(CheckInt8RowsShape(4, 24, 8), invalid);   // K % 16
  REQUIRE_STATUS_IS(CheckInt8RowsShape(4, 96, 24), invalid);  // group % 16
  REQUIRE_STATUS_IS(CheckInt8RowsShape(4, 96, 64), invalid);  // K % group
  REQUIRE_STATUS_IS(CheckInt8RowsShape(4, 96, 0), invalid);
  const absl::Status s = CheckInt8RowsShape(4, 96, 64);
  REQUIRE(s.message().find("K=96") != std::string_view::npos);
}

TEST_CASE("PackInt8Rows keeps the codes and interleaves scale and zero", "[int8_layout]") {
  auto rng = testing::MakeRng();
  const int64_t n = 5, k = 64, group = 32, groups = k / group;
  std::vector<int8_t> codes(n * k);
  std::vector<float> scale(n * groups), zero(n * groups);
  std::uniform_int_distribution<int> code(-128, 127);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (int8_t& c : codes) c = static_cast<int8_t>(code(rng));
  for (float& s : scale) s = value(rng);
  for (float& z : zero) z = value(rng);
  auto packed = PackInt8Rows(codes, scale, zero, n, k, group);
  REQUIRE_OK(packed);
  REQUIRE(packed->codes == codes);
  REQUIRE(packed->params.size() == static_cast<size_t>(2 * n * groups));
  for (int64_t i = 0; i < n * groups; ++i) {
    CAPTURE(i);
    REQUIRE(packed->params[2 * i] == scale[i]);
    REQUIRE(packed->params[2 * i + 1] == zero[i]);
  }
  const auto invalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_STATUS_IS(PackInt8Rows(codes, scale, zero, n, k, 24), invalid);
  REQUIRE_STATUS_IS(PackInt8Rows(std::span(codes).first(n * k - 1), scale, zero, n, k, group),
                    invalid);
  REQUIRE_STATUS_IS(PackInt8Rows(codes, std::span(scale).first(1), zero, n, k, group), invalid);
  REQUIRE_STATUS_IS(PackInt8Rows(codes, scale, std::span(zero).first(1), n, k, group), invalid);
}

}  // namespace
}  // namespace gquant::cuda
