// CombinePerLayerInputs against a float64 host computation on the same
// inputs and against the CPU forward's steps (cpu::RmsNorm in float32), on
// fresh random data with outputs poisoned first, at the E2B/E4B slice width
// 256 and odd widths that take the scalar path, in place (out = per_layer)
// and out of place.
//
// Error bound. The kernel computes in float32: the product by
// projection_scale (one rounding), a sum of squares of at most a few dozen
// terms per lane plus a shuffle tree (< 3e-6 relative in the worst case),
// rsqrtf (2 ulp) and two more products, so the normalized value n is within
// 4e-6 relative of the exact one; the sum n + per_layer may cancel, so its
// error is relative to |n| + |per_layer|; the product by input_scale adds one
// rounding. A bf16 result is then rounded once (2^-8 relative). Hence, with
// slack on the float32 part,
//   |got - want| <= 2^-8 |want| + 1e-5 (|n| + |per_layer|) |input_scale|.
// The CPU steps have float32 errors of the same size, well inside this.
#include "per_layer_inputs.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"
#include "gquant/dtype.h"

namespace gquant::cuda {
namespace {

using testing::AsBf16;
using testing::RandomBf16;
using testing::RequireClose;

constexpr float kEps = 1e-6f;
constexpr uint16_t kPoison = 0xFFFF;  // a bf16 NaN: FillBytes(0xFF)
constexpr int64_t kGuard = 64;        // poisoned elements past the output: must stay poisoned
const double kBf16Bound = std::ldexp(1.0, -8);
constexpr double kFloatBound = 1e-5;

struct Case {
  int dim;
  int layers;
};

TEST_CASE("CombinePerLayerInputs matches float64 and the CPU steps", "[cuda][per_layer_inputs]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // E2B (35 layers) and E4B (42) at P = 256; small layer counts; a width of
  // two vector rounds per lane; odd widths (scalar path).
  const Case cases[] = {{256, 35}, {256, 42}, {256, 1}, {256, 3}, {512, 2},
                        {1, 3},    {7, 35},   {100, 2}, {264, 5}};
  // Released models: hidden^-0.5 (E2B 1536, E4B 2560), 2^-0.5.
  const float projection_scales[] = {1.0f / std::sqrt(1536.0f), 1.0f / std::sqrt(2560.0f)};
  const float input_scale = 1.0f / std::sqrt(2.0f);
  int round = 0;
  for (const Case& c : cases) {
    for (int64_t tokens : {1, 5, 64}) {
      for (bool in_place : {false, true}) {
        // Odd element offsets make the pointers misaligned for 16-byte
        // accesses: the scalar path at the real width too.
        const int r = round++;
        const int64_t offset = r % 3 == 2 ? 1 : 0;
        const float projection_scale = projection_scales[r % 2];
        INFO("dim " << c.dim << " layers " << c.layers << " tokens " << tokens << " in place "
                    << in_place << " offset " << offset << " projection_scale "
                    << projection_scale);
        const int64_t n = tokens * c.layers * c.dim;
        // context: the projection output, around sqrt(hidden) x per_layer's
        // size before the scale; per_layer: table rows times 16.
        const auto context = RandomBf16(n, 0.01f, 40.0f, rng);
        const auto per_layer = RandomBf16(n, 0.01f, 2.0f, rng);
        const auto weight = RandomBf16(c.dim, 0.25f, 2.0f, rng);
        std::vector<uint16_t> context_bits(offset, 0), per_layer_bits(offset, 0),
            weight_bits(offset, 0);
        context_bits.insert(context_bits.end(), context.bits.begin(), context.bits.end());
        per_layer_bits.insert(per_layer_bits.end(), per_layer.bits.begin(), per_layer.bits.end());
        per_layer_bits.resize(offset + n + kGuard, kPoison);  // the guard, in place
        weight_bits.insert(weight_bits.end(), weight.bits.begin(), weight.bits.end());
        auto context_d = testing::Upload(context_bits);
        auto per_layer_d = testing::Upload(per_layer_bits);
        auto weight_d = testing::Upload(weight_bits);
        auto separate_out_d = testing::PoisonedBf16(offset + n + kGuard);
        auto& out_d = in_place ? per_layer_d : separate_out_d;
        REQUIRE_OK(CombinePerLayerInputs(AsBf16(context_d) + offset, AsBf16(per_layer_d) + offset,
                                         tokens, c.layers, c.dim, AsBf16(weight_d) + offset,
                                         projection_scale, kEps, input_scale,
                                         AsBf16(out_d) + offset, nullptr));
        std::vector<uint16_t> all(out_d.size());
        REQUIRE_OK(out_d.CopyToHost(all));
        std::vector<float> got(n);
        for (int64_t i = 0; i < n; ++i) got[i] = BFloat16ToFloat(all[offset + i]);
        REQUIRE(
            std::all_of(all.end() - kGuard, all.end(), [](uint16_t v) { return v == kPoison; }));

        // float64 reference, and |n| + |per_layer| for the bound.
        std::vector<double> want(n), magnitude(n);
        for (int64_t s = 0; s < tokens * c.layers; ++s) {
          const int64_t base = s * c.dim;
          double sum = 0;
          for (int i = 0; i < c.dim; ++i) {
            const double x = static_cast<double>(context.values[base + i]) * projection_scale;
            sum += x * x;
          }
          const double inverse_rms = 1.0 / std::sqrt(sum / c.dim + kEps);
          for (int i = 0; i < c.dim; ++i) {
            const double normalized = static_cast<double>(context.values[base + i]) *
                                      projection_scale * inverse_rms * weight.values[i];
            const double p = per_layer.values[base + i];
            want[base + i] = (normalized + p) * input_scale;
            magnitude[base + i] = (std::abs(normalized) + std::abs(p)) * input_scale;
          }
        }
        auto bound = [&](size_t i) {
          return kBf16Bound * std::abs(want[i]) + kFloatBound * magnitude[i];
        };
        RequireClose(got, want, bound, "vs float64");

        // The CPU forward's steps (cpu_model.cc PerLayerInputs), in float32.
        std::vector<float> cpu = context.values;
        for (float& v : cpu) v *= projection_scale;
        gemma4::cpu::RmsNorm(cpu, c.dim, weight.values, kEps);
        for (int64_t i = 0; i < n; ++i) cpu[i] = (cpu[i] + per_layer.values[i]) * input_scale;
        RequireClose(got, testing::ToDouble(cpu), bound, "vs cpu::RmsNorm");
      }
    }
  }
}

TEST_CASE("CombinePerLayerInputs rejects bad arguments", "[cuda][per_layer_inputs]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<uint16_t>::Allocate(1 << 16);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));  // zeros normalize to zeros (eps > 0)
  const __nv_bfloat16* context = AsBf16(*buffer);
  __nv_bfloat16* per_layer = AsBf16(*buffer) + 8192;
  const __nv_bfloat16* w = AsBf16(*buffer) + 16384;
  __nv_bfloat16* out = AsBf16(*buffer) + 32768;
  const float s = 0.5f;
  const auto invalid = absl::StatusCode::kInvalidArgument;

  REQUIRE_OK(CombinePerLayerInputs(context, per_layer, 2, 3, 256, w, s, kEps, s, out, nullptr));
  REQUIRE_OK(CombinePerLayerInputs(context, per_layer, 2, 3, 256, w, s, kEps, s, per_layer,
                                   nullptr));  // in place
  REQUIRE_OK(CombinePerLayerInputs(context, per_layer, 0, 3, 256, w, s, kEps, s, out, nullptr));
  REQUIRE_OK(CombinePerLayerInputs(context + 1, per_layer + 1, 2, 3, 7, w + 1, s, kEps, s, out + 1,
                                   nullptr));  // scalar path
  REQUIRE_STATUS_IS(
      CombinePerLayerInputs(nullptr, per_layer, 2, 3, 256, w, s, kEps, s, out, nullptr), invalid);
  REQUIRE_STATUS_IS(CombinePerLayerInputs(context, nullptr, 2, 3, 256, w, s, kEps, s, out, nullptr),
                    invalid);
  REQUIRE_STATUS_IS(
      CombinePerLayerInputs(context, per_layer, 2, 3, 256, nullptr, s, kEps, s, out, nullptr),
      invalid);
  REQUIRE_STATUS_IS(
      CombinePerLayerInputs(context, per_layer, 2, 3, 256, w, s, kEps, s, nullptr, nullptr),
      invalid);
  REQUIRE_STATUS_IS(
      CombinePerLayerInputs(context, per_layer, -1, 3, 256, w, s, kEps, s, out, nullptr), invalid);
  REQUIRE_STATUS_IS(
      CombinePerLayerInputs(context, per_layer, 2, 0, 256, w, s, kEps, s, out, nullptr), invalid);
  REQUIRE_STATUS_IS(CombinePerLayerInputs(context, per_layer, 2, 3, 0, w, s, kEps, s, out, nullptr),
                    invalid);
  REQUIRE_STATUS_IS(
      CombinePerLayerInputs(context, per_layer, 2, 3, 256, w, s, -1.0f, s, out, nullptr), invalid);
  REQUIRE_STATUS_IS(
      CombinePerLayerInputs(context, per_layer, 2, 3, 256, w, s, NAN, s, out, nullptr), invalid);
  REQUIRE_STATUS_IS(CombinePerLayerInputs(reinterpret_cast<const __nv_bfloat16*>(
                                              reinterpret_cast<const char*>(context) + 1),
                                          per_layer, 2, 3, 256, w, s, kEps, s, out, nullptr),
                    invalid);                       // not bf16-aligned
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the accepted launches ran
}

}  // namespace
}  // namespace gquant::cuda
