// The GPU RMSNorm kernels against a float64 host computation on the same
// inputs and against cpu::RmsNorm (and cpu::ApplyRope for HeadNormRope), on
// fresh random data with outputs poisoned first, at the Gemma 4 sizes and
// odd ones that take the scalar path.
//
// Error bounds. The kernels compute in float32: a sum of squares of at most
// a few dozen terms per thread plus a shuffle tree (relative error < 3e-6 in
// the worst case), rsqrtf (2 ulp) and two products, so a normalized value is
// within 2e-6 relative of the exact one, and a cos/sin (sincosf, 2 ulp) and
// rotation add < 1e-6 of the pair's magnitude. A bf16 result is then rounded
// once: 2^-8 relative. Hence, with 5x slack on the float32 part,
//   bf16 outputs:   |got - want| <= (2^-8 + 1e-5) |want|
//                   (+ 1e-5 (|y_j| + |y_j+D/2|) after a rotation, whose
//                   result can cancel), y the normalized pair;
//   the residual:   |got - want| <= 1e-5 (|r| + |n|) |scalar|, one float32
//                   sum of r and the normalized delta n (which may cancel).
// The CPU ops have float32 errors of the same size, well inside these.
#include "rms_norm.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"
#include "gquant/gemma4/config.h"

namespace gquant::cuda {
namespace {

using testing::AsBf16;
using testing::RandomBf16;
using testing::RequireClose;

constexpr float kEps = 1e-6f;
const double kBf16Bound = std::ldexp(1.0, -8) + 1e-5;
constexpr double kFloatBound = 1e-5;

// (mean(x^2) + eps)^-0.5 over x[0, dim) in double.
template <typename T>
double InverseRms(const T* x, int64_t dim) {
  double sum = 0;
  for (int64_t i = 0; i < dim; ++i) sum += static_cast<double>(x[i]) * x[i];
  return 1.0 / std::sqrt(sum / static_cast<double>(dim) + kEps);
}

// Float32 rows with a magnitude per row from 1e-2 to 1e2 (the residual
// stream grows through the layers).
std::vector<float> RandomResidual(int64_t rows, int64_t dim, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> exponent(-2.0f, 2.0f);
  std::vector<float> x(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = std::pow(10.0f, exponent(rng));
    const auto row = RandomBf16(dim, 0.01f, 1.0f, rng);
    for (int64_t i = 0; i < dim; ++i) x[r * dim + i] = row.values[i] * scale;
  }
  return x;
}

// Gemma 4 hidden sizes (31B, E2B), the PLE width, one longer than the
// residual row kernel keeps in registers (20480: three passes), and odd
// ones (scalar path).
constexpr int kDims[] = {5376, 1536, 256, 20480, 1, 7, 100};
constexpr int64_t kRows[] = {1, 3, 64};

TEST_CASE("RmsNorm matches float64 and cpu::RmsNorm", "[cuda][rms_norm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  for (int dim : kDims) {
    for (int64_t rows : kRows) {
      for (bool with_weight : {true, false}) {
        INFO("rows " << rows << " dim " << dim << " weight " << with_weight);
        const std::vector<float> x = RandomResidual(rows, dim, rng);
        const auto weight = RandomBf16(dim, 0.25f, 2.0f, rng);
        auto x_d = testing::Upload(x);
        auto weight_d = testing::Upload(weight.bits);
        auto y_d = testing::PoisonedBf16(rows * dim);
        REQUIRE_OK(RmsNorm(x_d.data(), rows, dim, with_weight ? AsBf16(weight_d) : nullptr, kEps,
                           AsBf16(y_d), nullptr));
        const std::vector<float> got = testing::DownloadBf16(y_d);

        std::vector<double> want(rows * dim);
        for (int64_t r = 0; r < rows; ++r) {
          const double s = InverseRms(x.data() + r * dim, dim);
          for (int i = 0; i < dim; ++i) {
            want[r * dim + i] = x[r * dim + i] * s * (with_weight ? weight.values[i] : 1.0);
          }
        }
        RequireClose(
            got, want, [&](size_t i) { return kBf16Bound * std::abs(want[i]); }, "vs float64");

        std::vector<float> cpu = x;
        gemma4::cpu::RmsNorm(cpu, dim, with_weight ? weight.values : std::vector<float>{}, kEps);
        const std::vector<double> cpu_d = testing::ToDouble(cpu);
        RequireClose(
            got, cpu_d, [&](size_t i) { return kBf16Bound * std::abs(cpu_d[i]); },
            "vs cpu::RmsNorm");
      }
    }
  }
}

TEST_CASE("AddNormalized and AddNormalizedThenNorm match float64 and the CPU ops",
          "[cuda][rms_norm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  std::uniform_real_distribution<float> scalar_dist(0.25f, 2.0f);
  for (int dim : kDims) {
    for (int64_t rows : kRows) {
      for (bool with_scalar : {false, true}) {
        for (bool fused : {false, true}) {
          INFO("rows " << rows << " dim " << dim << " scalar " << with_scalar << " fused "
                       << fused);
          const int64_t n = rows * dim;
          const std::vector<float> residual = RandomResidual(rows, dim, rng);
          const auto delta = RandomBf16(n, 0.01f, 4.0f, rng);
          const auto delta_weight = RandomBf16(dim, 0.25f, 2.0f, rng);
          const auto next_weight = RandomBf16(dim, 0.25f, 2.0f, rng);
          const float scalar = with_scalar ? scalar_dist(rng) : 1.0f;
          auto residual_d = testing::Upload(residual);
          auto delta_d = testing::Upload(delta.bits);
          auto delta_weight_d = testing::Upload(delta_weight.bits);
          auto next_weight_d = testing::Upload(next_weight.bits);
          auto scalar_d = testing::Upload(std::vector<float>{scalar});
          auto y_d = testing::PoisonedBf16(n);
          const float* scalar_p = with_scalar ? scalar_d.data() : nullptr;
          if (fused) {
            REQUIRE_OK(AddNormalizedThenNorm(residual_d.data(), AsBf16(delta_d), rows, dim,
                                             AsBf16(delta_weight_d), kEps, scalar_p,
                                             AsBf16(next_weight_d), AsBf16(y_d), nullptr));
          } else {
            REQUIRE_OK(AddNormalized(residual_d.data(), AsBf16(delta_d), rows, dim,
                                     AsBf16(delta_weight_d), kEps, scalar_p, nullptr));
          }
          std::vector<float> got(n);
          REQUIRE_OK(residual_d.CopyToHost(got));

          // The residual: float64 reference and the CPU ops of RunLayer.
          std::vector<double> want(n), magnitude(n);
          for (int64_t r = 0; r < rows; ++r) {
            const double s = InverseRms(delta.values.data() + r * dim, dim);
            for (int i = 0; i < dim; ++i) {
              const int64_t k = r * dim + i;
              const double normalized = delta.values[k] * s * delta_weight.values[i];
              want[k] = (residual[k] + normalized) * scalar;
              magnitude[k] = (std::abs(residual[k]) + std::abs(normalized)) * scalar;
            }
          }
          auto residual_bound = [&](size_t i) { return kFloatBound * magnitude[i]; };
          RequireClose(got, want, residual_bound, "residual vs float64");
          std::vector<float> cpu = residual, normalized(delta.values);
          gemma4::cpu::RmsNorm(normalized, dim, delta_weight.values, kEps);
          for (int64_t k = 0; k < n; ++k) cpu[k] += normalized[k];
          if (with_scalar) {
            for (float& v : cpu) v *= scalar;
          }
          RequireClose(got, testing::ToDouble(cpu), residual_bound, "residual vs CPU ops");

          // The fused norm, from the residual the kernel wrote.
          const std::vector<float> y = testing::DownloadBf16(y_d);
          if (!fused) {
            // AddNormalized leaves y (still poisoned) alone.
            REQUIRE(std::all_of(y.begin(), y.end(), [](float v) { return std::isnan(v); }));
            continue;
          }
          std::vector<double> want_y(n);
          for (int64_t r = 0; r < rows; ++r) {
            const double s = InverseRms(got.data() + r * dim, dim);
            for (int i = 0; i < dim; ++i) {
              want_y[r * dim + i] = got[r * dim + i] * s * next_weight.values[i];
            }
          }
          RequireClose(
              y, want_y, [&](size_t i) { return kBf16Bound * std::abs(want_y[i]); },
              "fused norm vs float64");
          std::vector<float> cpu_y = got;
          gemma4::cpu::RmsNorm(cpu_y, dim, next_weight.values, kEps);
          const std::vector<double> cpu_y_d = testing::ToDouble(cpu_y);
          RequireClose(
              y, cpu_y_d, [&](size_t i) { return kBf16Bound * std::abs(cpu_y_d[i]); },
              "fused norm vs cpu::RmsNorm");
        }
      }
    }
  }
}

// A q/k/v head norm of one layer type: heads x head_dim, with the learnable
// weight or not (v_norm), with RoPE or not (v).
struct HeadCase {
  std::string name;
  int heads;
  int head_dim;
  bool weight;
  std::optional<gemma4::RopeParameters> rope;
};

const gemma4::RopeParameters kSliding{"default", 10000.0, 1.0};
const gemma4::RopeParameters kFull{"proportional", 1000000.0, 0.25};

TEST_CASE("HeadNormRope matches float64 and cpu::RmsNorm + cpu::ApplyRope", "[cuda][rms_norm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const HeadCase cases[] = {
      {"31B sliding q", 32, 256, true, kSliding},
      {"31B sliding k", 16, 256, true, kSliding},
      {"31B sliding v", 16, 256, false, {}},
      {"31B full q", 32, 512, true, kFull},
      {"31B full k", 4, 512, true, kFull},
      {"31B full v", 4, 512, false, {}},
      {"E2B sliding q", 8, 256, true, kSliding},
      {"E2B sliding k", 1, 256, true, kSliding},
      {"E2B full q", 8, 512, true, kFull},
      {"E2B full v", 1, 512, false, {}},
      {"D 100 rope", 3, 100, true, kSliding},
      {"D 8 rope", 5, 8, true, kFull},
      {"D 1", 3, 1, true, {}},
      {"D 7", 2, 7, false, {}},
      {"D 100", 3, 100, true, {}},
  };
  for (const HeadCase& c : cases) {
    const std::vector<float> inv_freq =
        c.rope ? gemma4::cpu::RopeInverseFrequencies(*c.rope, c.head_dim) : std::vector<float>{};
    auto inv_freq_d = testing::Upload(c.rope ? inv_freq : std::vector<float>{1.0f});
    for (int64_t tokens : kRows) {
      // Position 0, a random one, and the last token at 131071, where the
      // float32 angle is coarsest (see rope_test.cc).
      const int64_t positions[] = {0, std::uniform_int_distribution<int64_t>(1, 100000)(rng),
                                   131071 - tokens + 1};
      for (int64_t first : positions) {
        INFO(c.name << ": tokens " << tokens << " first position " << first);
        const int64_t d = c.head_dim, half = d / 2, n = tokens * c.heads * d;
        const auto x = RandomBf16(n, 0.01f, 8.0f, rng);
        const auto weight = RandomBf16(d, 0.25f, 2.0f, rng);
        auto x_d = testing::Upload(x.bits);
        auto weight_d = testing::Upload(weight.bits);
        auto first_d = testing::Upload(std::vector<int64_t>{first});
        REQUIRE_OK(HeadNormRope(AsBf16(x_d), tokens, c.heads, c.head_dim,
                                c.weight ? AsBf16(weight_d) : nullptr, kEps,
                                c.rope ? inv_freq_d.data() : nullptr, first_d.data(), nullptr));
        const std::vector<float> got = testing::DownloadBf16(x_d);

        // float64: normalize each head vector, then rotate with the float32
        // angle (float(position) * inv_freq[j], one rounded product).
        std::vector<double> y(n), want(n), pair(n);
        for (int64_t v = 0; v < tokens * c.heads; ++v) {
          const double s = InverseRms(x.values.data() + v * d, d);
          for (int64_t i = 0; i < d; ++i) {
            y[v * d + i] = x.values[v * d + i] * s * (c.weight ? weight.values[i] : 1.0);
          }
          const float position = static_cast<float>(first + v / c.heads);
          for (int64_t j = 0; j < (c.rope ? half : d); ++j) {
            const int64_t lo = v * d + j, hi = lo + half;
            if (!c.rope) {
              want[lo] = y[lo];
              continue;
            }
            const double angle = static_cast<float>(static_cast<double>(position) * inv_freq[j]);
            const double cosine = std::cos(angle), sine = std::sin(angle);
            want[lo] = y[lo] * cosine - y[hi] * sine;
            want[hi] = y[hi] * cosine + y[lo] * sine;
            pair[lo] = pair[hi] = std::abs(y[lo]) + std::abs(y[hi]);
          }
        }
        auto bound = [&](size_t i) { return kBf16Bound * std::abs(want[i]) + 1e-5 * pair[i]; };
        RequireClose(got, want, bound, "vs float64");

        std::vector<float> cpu = x.values;
        gemma4::cpu::RmsNorm(cpu, d, c.weight ? weight.values : std::vector<float>{}, kEps);
        if (c.rope) {
          for (int64_t t = 0; t < tokens; ++t) {
            gemma4::cpu::ApplyRope(std::span(cpu).subspan(t * c.heads * d, c.heads * d), c.heads,
                                   c.head_dim, first + t, inv_freq);
          }
        }
        const std::vector<double> cpu_d = testing::ToDouble(cpu);
        RequireClose(
            got, cpu_d, [&](size_t i) { return kBf16Bound * std::abs(cpu_d[i]) + 1e-5 * pair[i]; },
            "vs cpu::RmsNorm + cpu::ApplyRope");
      }
    }
  }
}

TEST_CASE("RMSNorm kernels reject bad arguments", "[cuda][rms_norm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<float>::Allocate(1 << 16);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));  // zeros normalize to zeros (eps > 0)
  float* f = buffer->data();
  auto* b = reinterpret_cast<__nv_bfloat16*>(f + (1 << 15));
  const __nv_bfloat16* w = b + 8192;
  const auto* position = reinterpret_cast<const int64_t*>(f + 1000);
  const auto invalid = absl::StatusCode::kInvalidArgument;

  REQUIRE_OK(RmsNorm(f, 4, 64, w, kEps, b + 256, nullptr));
  REQUIRE_OK(RmsNorm(f, 0, 64, nullptr, kEps, b, nullptr));
  REQUIRE_OK(RmsNorm(f + 1, 3, 7, w + 1, kEps, b + 3, nullptr));  // scalar path
  REQUIRE_STATUS_IS(RmsNorm(nullptr, 4, 64, w, kEps, b, nullptr), invalid);
  REQUIRE_STATUS_IS(RmsNorm(f, 4, 64, w, kEps, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(RmsNorm(f, -1, 64, w, kEps, b, nullptr), invalid);
  REQUIRE_STATUS_IS(RmsNorm(f, 4, 0, w, kEps, b, nullptr), invalid);
  REQUIRE_STATUS_IS(RmsNorm(f, 4, 64, w, -1.0f, b, nullptr), invalid);
  REQUIRE_STATUS_IS(RmsNorm(f, 4, 64, w, NAN, b, nullptr), invalid);
  REQUIRE_STATUS_IS(RmsNorm(reinterpret_cast<const float*>(reinterpret_cast<const char*>(f) + 2), 4,
                            64, b, kEps, b, nullptr),
                    invalid);  // misaligned float

  REQUIRE_OK(AddNormalized(f, b, 4, 64, w, kEps, f + 2000, nullptr));
  REQUIRE_OK(AddNormalized(f, b, 4, 64, nullptr, kEps, nullptr, nullptr));
  REQUIRE_STATUS_IS(AddNormalized(nullptr, b, 4, 64, w, kEps, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(AddNormalized(f, nullptr, 4, 64, w, kEps, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(AddNormalized(f, b, 4, -64, w, kEps, nullptr, nullptr), invalid);
  REQUIRE_OK(AddNormalizedThenNorm(f, b, 4, 64, w, kEps, nullptr, w, b + 256, nullptr));
  REQUIRE_STATUS_IS(AddNormalizedThenNorm(f, b, 4, 64, w, kEps, nullptr, w, nullptr, nullptr),
                    invalid);

  REQUIRE_OK(HeadNormRope(b, 2, 4, 256, w, kEps, f, position, nullptr));
  REQUIRE_OK(HeadNormRope(b, 2, 4, 7, nullptr, kEps, nullptr, nullptr, nullptr));  // no RoPE
  REQUIRE_OK(HeadNormRope(b, 0, 4, 256, w, kEps, f, position, nullptr));
  REQUIRE_STATUS_IS(HeadNormRope(nullptr, 2, 4, 256, w, kEps, f, position, nullptr), invalid);
  REQUIRE_STATUS_IS(HeadNormRope(b, -1, 4, 256, w, kEps, f, position, nullptr), invalid);
  REQUIRE_STATUS_IS(HeadNormRope(b, 2, 0, 256, w, kEps, f, position, nullptr), invalid);
  REQUIRE_STATUS_IS(HeadNormRope(b, 2, 4, 0, w, kEps, f, position, nullptr), invalid);
  REQUIRE_STATUS_IS(HeadNormRope(b, 2, 4, 7, w, kEps, f, position, nullptr), invalid);  // odd D
  REQUIRE_STATUS_IS(HeadNormRope(b, 2, 4, 256, w, kEps, f, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(HeadNormRope(b, 2, 4, 256, w, -1.0f, f, position, nullptr), invalid);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the accepted launches ran
}

}  // namespace
}  // namespace gquant::cuda
