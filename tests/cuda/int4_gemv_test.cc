// The int4 tensor-core decode GEMV against a float64 CPU reference on fresh
// random data, outputs poisoned first.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string_view>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/dtype.h"
#include "int4_mma_gemv.cuh"

namespace gquant::cuda {
namespace {

// Weights enter the kernel exactly and sums are fp32, so the error is the
// bf16 rounding of the output: at most 2^-8 of each element (8 significant
// bits), hence of the norm, plus a little for fp32 (measured: ~1.2e-3 on
// large outputs, up to 2.7e-3 on a 9-element one).
constexpr double kOutputRoundingBound = 0x1p-8 + 1e-4;

struct Problem {
  int64_t n, k;
  int group;
  bool min_form;
};

// Random codes, scales, zeros (or mins) and activations, all exactly
// representable in the stored formats, and the float64 reference y.
struct Case {
  std::vector<uint8_t> qweight;             // [N, K/2]
  std::vector<uint16_t> scale_gn, zero_gn;  // [G, N] bf16 bits
  std::vector<uint16_t> x;                  // [M, K] bf16 bits
  std::vector<double> y;                    // [M, N]
};

// c.y = the float64 product of c's weights with its m rows of x.
void SetReference(Case& c, const Problem& p, int m) {
  c.y.assign(m * p.n, 0.0);
  for (int64_t r = 0; r < p.n; ++r) {
    for (int64_t col = 0; col < p.k; ++col) {
      const int q = (c.qweight[r * p.k / 2 + col / 2] >> (4 * (col % 2))) & 0xF;
      const int64_t g = col / p.group;
      const double s = BFloat16ToFloat(c.scale_gn[g * p.n + r]);
      const double z = BFloat16ToFloat(c.zero_gn[g * p.n + r]);
      const double w = p.min_form ? q * s - z : (q - z) * s;
      for (int mi = 0; mi < m; ++mi) c.y[mi * p.n + r] += w * BFloat16ToFloat(c.x[mi * p.k + col]);
    }
  }
}

Case MakeCase(const Problem& p, int m, std::mt19937_64& rng) {
  const int64_t groups = p.k / p.group;
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f), zero(0.0f, 15.0f);
  std::normal_distribution<float> act(0.0f, 1.0f);
  Case c;
  c.qweight.resize(p.n * p.k / 2);
  for (uint8_t& b : c.qweight) b = static_cast<uint8_t>(code(rng) | (code(rng) << 4));
  c.scale_gn.resize(groups * p.n);
  c.zero_gn.resize(groups * p.n);
  for (int64_t i = 0; i < groups * p.n; ++i) {
    c.scale_gn[i] = FloatToBFloat16(scale(rng));
    // A min is a float of the scale's size times a code-sized factor.
    c.zero_gn[i] =
        FloatToBFloat16(p.min_form ? zero(rng) * BFloat16ToFloat(c.scale_gn[i]) : zero(rng));
  }
  c.x.resize(m * p.k);
  for (uint16_t& v : c.x) v = FloatToBFloat16(act(rng));
  SetReference(c, p, m);
  return c;
}

// ||got - want|| / ||want|| after checking every output was written.
double RelativeError(const std::vector<uint16_t>& got, const std::vector<double>& want) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double v = BFloat16ToFloat(got[i]);
    REQUIRE(std::isfinite(v));
    err += (v - want[i]) * (v - want[i]);
    ref += want[i] * want[i];
  }
  return std::sqrt(err / ref);
}

// gquant's unpacked form of a Case (codes [N, K], scale and zero [N, G]) for PackInt4Mma.
PackedInt4Mma PackForMma(const Case& c, const Problem& p) {
  const int64_t groups = p.k / p.group;
  std::vector<int8_t> codes(p.n * p.k);
  for (int64_t r = 0; r < p.n; ++r) {
    for (int64_t col = 0; col < p.k; ++col) {
      codes[r * p.k + col] =
          static_cast<int8_t>((c.qweight[r * p.k / 2 + col / 2] >> (4 * (col % 2))) & 0xF);
    }
  }
  std::vector<float> scale(p.n * groups), zero(p.n * groups);
  for (int64_t r = 0; r < p.n; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      scale[r * groups + g] = BFloat16ToFloat(c.scale_gn[g * p.n + r]);
      zero[r * groups + g] = BFloat16ToFloat(c.zero_gn[g * p.n + r]);
    }
  }
  absl::StatusOr<PackedInt4Mma> packed = PackInt4Mma(codes, scale, zero, p.n, p.k, p.group);
  REQUIRE_OK(packed);
  return *std::move(packed);
}

// A Case's weights packed and uploaded, and the kernel's view of them.
struct DeviceWeight {
  DeviceBuffer<uint8_t> qweight;
  DeviceBuffer<uint32_t> params;
  Int4MmaWeight view;

  DeviceWeight(const Case& c, const Problem& p) {
    const PackedInt4Mma packed = PackForMma(c, p);
    qweight = testing::Upload(packed.qweight);
    params = testing::Upload(packed.params);
    view = {reinterpret_cast<const uint4*>(qweight.data()),
            reinterpret_cast<const __nv_bfloat162*>(params.data()),
            p.n,
            p.k,
            p.group,
            p.min_form};
  }
};

TEST_CASE("int4 tensor-core GEMV matches a float64 reference", "[cuda][int4_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // Small odd shapes, 31B and E2B layers (gemma4/linear_shapes.h), and group
  // sizes 32, 64, 128, 256 in both zero forms. The reference is computed once
  // for 16 tokens; M < 16 uses its first rows.
  const Problem problems[] = {
      {16, 64, 32, false},       {96, 64, 32, false},     {16, 128, 64, true},
      {48, 4096, 64, true},      {8192, 5376, 32, false}, {2048, 5376, 32, true},
      {5376, 21504, 128, false}, {256, 1536, 32, false},  {1536, 12288, 32, true},
      {4096, 1536, 256, false},  {512, 1536, 32, false},
  };
  for (const Problem& p : problems) {
    const Case c = MakeCase(p, kInt4MmaMaxM, rng);
    const DeviceWeight dw(c, p);
    const Int4MmaWeight& w = dw.view;
    auto x = testing::Upload(c.x);
    // Default; one and two row tiles per step; the deeper ring; few warps (long runs, whole row
    // blocks per warp); one warp per multiprocessor; more warps than fit (the
    // launcher caps them); an ordinary launch; weights requested only after the
    // predecessor wait (M = 1, version 5).
    const Int4MmaTuning tunings[] = {{},
                                     {.row_tiles = 1},
                                     {.row_tiles = 2},
                                     {.stages = 4},
                                     {.stages = 4, .warps_per_sm = 4},
                                     {.warps_per_sm = 1},
                                     {.warps_per_sm = 48},
                                     {.serial_launch = true},
                                     {.late_weights = true}};
    for (int m : {1, 2, 5, 8, 9, 16}) {
      const std::vector<double> want(c.y.begin(), c.y.begin() + m * p.n);
      for (const Int4MmaTuning& tuning : tunings) {
        if (tuning.row_tiles == 2 && p.n % 32 != 0) continue;  // rejected; tested below
        INFO("N=" << p.n << " K=" << p.k << " group " << p.group << " min form " << p.min_form
                  << " M=" << m << " stages " << tuning.stages << " row tiles " << tuning.row_tiles
                  << " warps/SM " << tuning.warps_per_sm);
        std::vector<uint16_t> first;
        for (int run = 0; run < 2; ++run) {
          auto y = testing::Upload(std::vector<uint16_t>(m * p.n, 0xFFFF));  // NaN poison
          REQUIRE_OK(Int4MmaGemv(w, reinterpret_cast<const __nv_bfloat16*>(x.data()), m,
                                 reinterpret_cast<__nv_bfloat16*>(y.data()), nullptr, tuning));
          std::vector<uint16_t> got(m * p.n);
          REQUIRE_OK(y.CopyToHost(got));
          REQUIRE(RelativeError(got, want) < kOutputRoundingBound);
          // Split row blocks are summed in warp order: runs are bit-identical
          // (and the second run proves the counters were reset).
          if (run == 0) first = got;
          if (run == 1) REQUIRE(got == first);
        }
      }
    }
  }
}

double GeluTanh(double v) {
  return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
}

TEST_CASE("int4 GEMV gate / up pairs give gelu_tanh(gate) * up", "[cuda][int4_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // Each problem is one of the two matrices [I, K]; the pair weight is [2I, K].
  const Problem problems[] = {
      {16, 64, 32, false}, {48, 4096, 64, true}, {4096, 5376, 32, false}, {1536, 1536, 128, false}};
  for (const Problem& p : problems) {
    const Case gate = MakeCase(p, kInt4MmaMaxM, rng);
    Case up = MakeCase(p, kInt4MmaMaxM, rng);
    up.x = gate.x;  // one input: up's reference with it
    SetReference(up, p, kInt4MmaMaxM);
    const PackedInt4Mma packed_gate = PackForMma(gate, p), packed_up = PackForMma(up, p);
    absl::StatusOr<PackedInt4Mma> pairs =
        InterleaveInt4MmaRowHalves(packed_gate.qweight, packed_gate.params, packed_up.qweight,
                                   packed_up.params, p.n, p.k, p.group);
    REQUIRE_OK(pairs);
    auto qweight = testing::Upload(pairs->qweight);
    auto params = testing::Upload(pairs->params);
    const Int4MmaWeight w{reinterpret_cast<const uint4*>(qweight.data()),
                          reinterpret_cast<const __nv_bfloat162*>(params.data()),
                          2 * p.n,
                          p.k,
                          p.group,
                          p.min_form};
    auto x = testing::Upload(gate.x);
    // Default; two row tiles; one warp per multiprocessor and more than fit
    // (split row blocks finished in the block); an ordinary launch.
    const Int4MmaTuning tunings[] = {
        {}, {.row_tiles = 2}, {.warps_per_sm = 1}, {.warps_per_sm = 48}, {.serial_launch = true}};
    for (int m : {1, 3, 9, 16}) {
      std::vector<double> want(m * p.n);
      for (int64_t i = 0; i < m * p.n; ++i) want[i] = GeluTanh(gate.y[i]) * up.y[i];
      for (const Int4MmaTuning& tuning : tunings) {
        if (tuning.row_tiles == 2 && (2 * p.n) % 32 != 0) continue;
        INFO("I=" << p.n << " K=" << p.k << " group " << p.group << " min form " << p.min_form
                  << " M=" << m << " row tiles " << tuning.row_tiles << " warps/SM "
                  << tuning.warps_per_sm);
        auto y = testing::Upload(std::vector<uint16_t>(m * p.n, 0xFFFF));  // NaN poison
        REQUIRE_OK(Int4MmaGemvGeluPairs(w, reinterpret_cast<const __nv_bfloat16*>(x.data()), m,
                                        reinterpret_cast<__nv_bfloat16*>(y.data()), nullptr,
                                        tuning));
        std::vector<uint16_t> got(m * p.n);
        REQUIRE_OK(y.CopyToHost(got));
        // One bf16 rounding of the product of two fp32 sums.
        REQUIRE(RelativeError(got, want) < kOutputRoundingBound);
      }
    }
  }
}

// Launches overlap their predecessor (programmatic dependent launch): a
// chain whose second GEMV reads the first one's output (read after write)
// and overwrites its input (write after read), queued back to back with no
// host synchronization between them, must see finished data both ways. The
// intermediate buffer is poisoned before each chain.
TEST_CASE("int4 GEMV chained launches wait for their predecessor", "[cuda][int4_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const Problem p{5376, 5376, 32, false};
  Case c = MakeCase(p, 1, rng);
  const DeviceWeight dw(c, p);
  const Int4MmaWeight& w = dw.view;
  // The float64 product of the weights with a bf16 vector.
  const auto reference = [&](const std::vector<uint16_t>& v) {
    std::vector<double> y(p.n, 0.0);
    for (int64_t r = 0; r < p.n; ++r) {
      for (int64_t col = 0; col < p.k; ++col) {
        const int q = (c.qweight[r * p.k / 2 + col / 2] >> (4 * (col % 2))) & 0xF;
        const int64_t g = col / p.group;
        y[r] += (q - BFloat16ToFloat(c.zero_gn[g * p.n + r])) *
                static_cast<double>(BFloat16ToFloat(c.scale_gn[g * p.n + r])) *
                BFloat16ToFloat(v[col]);
      }
    }
    return y;
  };
  for (int chain = 0; chain < 3; ++chain) {
    INFO("chain " << chain);
    auto a = testing::Upload(c.x);
    auto b = testing::Upload(std::vector<uint16_t>(p.n, 0xFFFF));  // NaN poison
    const auto bf16 = [](DeviceBuffer<uint16_t>& d) {
      return reinterpret_cast<__nv_bfloat16*>(d.data());
    };
    REQUIRE_OK(Int4MmaGemv(w, bf16(a), 1, bf16(b), nullptr));  // b = W a
    REQUIRE_OK(Int4MmaGemv(w, bf16(b), 1, bf16(a), nullptr));  // a = W b
    std::vector<uint16_t> first(p.n), second(p.n);
    REQUIRE_OK(b.CopyToHost(first));
    REQUIRE_OK(a.CopyToHost(second));
    REQUIRE(RelativeError(first, reference(c.x)) < kOutputRoundingBound);
    REQUIRE(RelativeError(second, reference(first)) < kOutputRoundingBound);
    c.x = second;  // the next chain starts where this one ended
  }
}

// (mean(v^2) + eps)^-0.5 in double.
template <typename T>
double InverseRms(const std::vector<T>& v, double eps) {
  double sum = 0;
  for (const T e : v) sum += static_cast<double>(e) * e;
  return 1.0 / std::sqrt(sum / static_cast<double>(v.size()) + eps);
}

// Int4MmaGemvAfterAddNorm: the residual the first block stores against
// float64 (the bound of rms_norm_test.cc: 1e-5 of |residual| + |normalized
// delta|, times the scalar), and y against the float64 product with the
// input row computed in float64 from that stored residual and rounded to
// bf16 as the kernel rounds it (a rare element one bf16 unit off where the
// float32 norm lands by a rounding boundary moves y far less than its own
// bf16 rounding, the bound).
TEST_CASE("int4 GEMV forms its input from the residual add and norms", "[cuda][int4_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  constexpr float kEps = 1e-6f;
  std::uniform_real_distribution<float> scalar_dist(0.25f, 2.0f), exponent(-2.0f, 2.0f);
  // 31B q/k/v-like, E2B-like, group 64 min form, and small odd ones; each
  // also as gate / up pairs (the problem is then one of the two matrices)
  // and with the gelu_times store (a factor per output row).
  const Problem problems[] = {{8192, 5376, 32, false},
                              {2048, 1536, 32, true},
                              {48, 4096, 64, true},
                              {16, 64, 32, false},
                              {96, 192, 64, false}};
  for (const Problem& p : problems) {
    for (const std::string_view store : {"sums", "gelu pairs", "gelu times"}) {
      const bool gated = store == "gelu pairs", times = store == "gelu times";
      // 0: both norms; 1: with layer_scalar, one warp a block; 2: no next
      // norm (the PLE gate's bf16(r)), the 4-stage ring for plain stores
      // (the gated ones come in 3 stages only).
      for (int mode : {0, 1, 2}) {
        const bool with_scalar = mode == 1, next_norm = mode != 2;
        INFO("N=" << p.n << " K=" << p.k << " group " << p.group << " min form " << p.min_form
                  << " store " << store << " mode " << mode);
        // The row's inputs: a residual of magnitude 1e-2..1e2, delta and weights.
        const float magnitude = std::pow(10.0f, exponent(rng));
        std::vector<float> residual = testing::RandomBf16(p.k, 0.01f, 1.0f, rng).values;
        for (float& v : residual) v *= magnitude;
        const auto delta = testing::RandomBf16(p.k, 0.01f, 4.0f, rng);
        const auto delta_weight = testing::RandomBf16(p.k, 0.25f, 2.0f, rng);
        const auto next_weight = testing::RandomBf16(p.k, 0.25f, 2.0f, rng);
        const float scalar = with_scalar ? scalar_dist(rng) : 1.0f;
        auto residual_d = testing::Upload(residual);
        auto residual_out_d = testing::Upload(std::vector<float>(p.k, std::nanf("")));
        auto delta_d = testing::Upload(delta.bits);
        auto delta_weight_d = testing::Upload(delta_weight.bits);
        auto next_weight_d = testing::Upload(next_weight.bits);
        auto scalar_d = testing::Upload(std::vector<float>{scalar});
        const ResidualAddNorm row{residual_d.data(),
                                  residual_out_d.data(),
                                  testing::AsBf16(delta_d),
                                  testing::AsBf16(delta_weight_d),
                                  with_scalar ? scalar_d.data() : nullptr,
                                  testing::AsBf16(next_weight_d),
                                  kEps,
                                  next_norm};

        // The weights: one matrix, or gate and up interleaved into pairs.
        Case gate = MakeCase(p, 1, rng), up = MakeCase(p, 1, rng);
        DeviceBuffer<uint8_t> qweight;
        DeviceBuffer<uint32_t> params;
        if (gated) {
          const PackedInt4Mma g = PackForMma(gate, p), u = PackForMma(up, p);
          absl::StatusOr<PackedInt4Mma> pairs = InterleaveInt4MmaRowHalves(
              g.qweight, g.params, u.qweight, u.params, p.n, p.k, p.group);
          REQUIRE_OK(pairs);
          qweight = testing::Upload(pairs->qweight);
          params = testing::Upload(pairs->params);
        } else {
          const PackedInt4Mma packed = PackForMma(gate, p);
          qweight = testing::Upload(packed.qweight);
          params = testing::Upload(packed.params);
        }
        const Int4MmaWeight w{reinterpret_cast<const uint4*>(qweight.data()),
                              reinterpret_cast<const __nv_bfloat162*>(params.data()),
                              gated ? 2 * p.n : p.n,
                              p.k,
                              p.group,
                              p.min_form};
        // The default block; one warp per block in mode 1 (the row then
        // longer than its registers hold: three passes); the 4-stage ring in
        // mode 2.
        const Int4MmaTuning tuning = {.stages = mode == 2 && !gated && !times ? 4 : 0,
                                      .warps_per_sm = mode == 1 ? 1 : 0};
        const auto factors = testing::RandomBf16(p.n, 0.1f, 3.0f, rng);  // signed
        auto factors_d = testing::Upload(factors.bits);
        auto y = testing::Upload(std::vector<uint16_t>(p.n, 0xFFFF));  // NaN poison
        REQUIRE_OK(Int4MmaGemvAfterAddNorm(
            w, row,
            {.gelu_pairs = gated, .gelu_times = times ? testing::AsBf16(factors_d) : nullptr},
            reinterpret_cast<__nv_bfloat16*>(y.data()), nullptr, tuning));

        // The residual, and the input left as it was.
        std::vector<float> got_residual(p.k), got_input(p.k);
        REQUIRE_OK(residual_out_d.CopyToHost(got_residual));
        REQUIRE_OK(residual_d.CopyToHost(got_input));
        REQUIRE(got_input == residual);
        const double delta_scale = InverseRms(delta.values, kEps);
        std::vector<double> want_residual(p.k);
        for (int64_t i = 0; i < p.k; ++i) {
          const double normalized = delta.values[i] * delta_scale * delta_weight.values[i];
          want_residual[i] = (residual[i] + normalized) * scalar;
        }
        testing::RequireClose(
            got_residual, want_residual,
            [&](size_t i) {
              return 1e-5 *
                     (std::abs(residual[i]) + std::abs(want_residual[i] / scalar - residual[i])) *
                     scalar;
            },
            "residual_out vs float64");

        // y from the row the kernel should have formed.
        const double next_scale = InverseRms(got_residual, kEps);
        std::vector<uint16_t> x(p.k);
        for (int64_t i = 0; i < p.k; ++i) {
          x[i] = FloatToBFloat16(
              next_norm ? static_cast<float>(got_residual[i] * next_scale * next_weight.values[i])
                        : got_residual[i]);
        }
        gate.x = x;
        up.x = x;
        SetReference(gate, p, 1);
        SetReference(up, p, 1);
        std::vector<double> want = gate.y;
        for (int64_t i = 0; i < p.n; ++i) {
          if (gated) want[i] = GeluTanh(gate.y[i]) * up.y[i];
          if (times) want[i] = GeluTanh(gate.y[i]) * factors.values[i];
        }
        std::vector<uint16_t> got(p.n);
        REQUIRE_OK(y.CopyToHost(got));
        REQUIRE(RelativeError(got, want) < kOutputRoundingBound);
      }
    }
  }
}

TEST_CASE("int4 GEMV rejects bad shapes", "[cuda][int4_gemv]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<uint8_t>::Allocate(1 << 20);
  REQUIRE_OK(buffer);
  const auto* any = buffer->data();
  const auto* params = reinterpret_cast<const __nv_bfloat162*>(any);
  const auto* x = reinterpret_cast<const __nv_bfloat16*>(any);
  auto* y = reinterpret_cast<__nv_bfloat16*>(buffer->data());
  const auto* tiles = reinterpret_cast<const uint4*>(any);
  REQUIRE_STATUS_IS(Int4MmaGemv({tiles, params, 24, 64, 32}, x, 1, y, nullptr),
                    absl::StatusCode::kInvalidArgument);  // N % 16
  REQUIRE_STATUS_IS(Int4MmaGemv({tiles, params, 16, 96, 32}, x, 1, y, nullptr),
                    absl::StatusCode::kInvalidArgument);  // K % 64
  REQUIRE_STATUS_IS(Int4MmaGemv({tiles, params, 16, 192, 96}, x, 1, y, nullptr),
                    absl::StatusCode::kInvalidArgument);  // group 96
  REQUIRE_STATUS_IS(Int4MmaGemv({tiles, params, 16, 64, 32}, x, 0, y, nullptr),
                    absl::StatusCode::kInvalidArgument);  // M
  REQUIRE_STATUS_IS(
      Int4MmaGemvGeluPairs({tiles, params, 32, 64, 32}, x, 1, y, nullptr, {.stages = 4}),
      absl::StatusCode::kInvalidArgument);  // gate / up pairs: 3 stages only
  REQUIRE_STATUS_IS(Int4MmaGemv({tiles, params, 16, 64, 32}, x, 17, y, nullptr),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(Int4MmaGemv({tiles, params, 16, 64, 32}, x, 1, y, nullptr, {.stages = 5}),
                    absl::StatusCode::kInvalidArgument);  // stages
  REQUIRE_STATUS_IS(Int4MmaGemv({tiles, params, 16, 64, 32}, x, 1, y, nullptr, {.row_tiles = 2}),
                    absl::StatusCode::kInvalidArgument);  // N % 32
  REQUIRE_STATUS_IS(
      Int4MmaGemv({tiles, params, 16, 64, 32}, x, 1, y, nullptr, {.warps_per_sm = -1}),
      absl::StatusCode::kInvalidArgument);

  // The row of Int4MmaGemvAfterAddNorm: K = 64 floats of residual at the
  // start of the buffer, the output at 1 KiB, delta and weights from x.
  const Int4MmaWeight small{tiles, params, 16, 64, 32};
  auto* floats = reinterpret_cast<float*>(buffer->data());
  const ResidualAddNorm row{floats, floats + 256, x, x, nullptr, x, 1e-6f};
  REQUIRE_OK(Int4MmaGemvAfterAddNorm(small, row, {}, y + 4096, nullptr));  // well-formed
  ResidualAddNorm bad = row;
  bad.residual_out = floats + 32;  // overlaps the residual it reads
  REQUIRE_STATUS_IS(Int4MmaGemvAfterAddNorm(small, bad, {}, y + 4096, nullptr),
                    absl::StatusCode::kInvalidArgument);
  bad = row;
  bad.delta = x + 1;  // not 16-byte aligned
  REQUIRE_STATUS_IS(Int4MmaGemvAfterAddNorm(small, bad, {}, y + 4096, nullptr),
                    absl::StatusCode::kInvalidArgument);
  bad = row;
  bad.residual = nullptr;
  REQUIRE_STATUS_IS(Int4MmaGemvAfterAddNorm(small, bad, {}, y + 4096, nullptr),
                    absl::StatusCode::kInvalidArgument);
  bad = row;
  bad.eps = -1.0f;
  REQUIRE_STATUS_IS(Int4MmaGemvAfterAddNorm(small, bad, {}, y + 4096, nullptr),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(Int4MmaGemvAfterAddNorm(small, row, {}, y + 4096, nullptr, {.row_tiles = 2}),
                    absl::StatusCode::kInvalidArgument);  // one row tile only
  REQUIRE_STATUS_IS(
      Int4MmaGemvAfterAddNorm(small, row, {.gelu_pairs = true, .gelu_times = x}, y + 4096, nullptr),
      absl::StatusCode::kInvalidArgument);  // one gated store at a time
  REQUIRE_STATUS_IS(
      Int4MmaGemvAfterAddNorm(small, row, {.gelu_times = x}, y + 4096, nullptr, {.stages = 4}),
      absl::StatusCode::kInvalidArgument);  // gated stores: 3 stages only
  REQUIRE_STATUS_IS(Int4MmaGemvAfterAddNorm(small, row,
                                            {.gelu_times = reinterpret_cast<const __nv_bfloat16*>(
                                                 reinterpret_cast<const char*>(x) + 1)},
                                            y + 4096, nullptr),
                    absl::StatusCode::kInvalidArgument);  // misaligned factors
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);        // the accepted launch ran
}

}  // namespace
}  // namespace gquant::cuda
