// GeluTanhMul and SoftCap against float64 on the same bf16 inputs and
// against cpu::GeluTanh / cpu::SoftCap, on fresh random data with outputs
// poisoned first: the MLP widths of the 31B and E2B (fused gate_up layout),
// the E2B PLE gate (a strided per-layer slice), the vocabulary for the soft
// cap, and odd or misaligned ones that take the scalar path.
//
// Error bounds. gelu_tanh in float32: x + 0.044715 x^3 has no cancellation
// and tanhf is within 2 ulp, so 1 + tanh(.) is within ~8 ulp(1) = 5e-7
// absolute (relative error is unbounded in the tail x << 0, where it
// cancels), and gelu(a) * b is within 4 ulp relative plus 2.4e-7 |a b|; one
// bf16 rounding adds 2^-8 relative. With ~4x slack:
//   GeluTanhMul: |got - want| <= (2^-8 + 1e-5) |want| + 1e-6 |a b|.
// The soft cap tanh(x / cap) * cap in float32: the division and product
// round once each and tanh(z) does not amplify a relative error of z (z (1 -
// tanh^2 z) / tanh z <= 1), so the result is within ~5 ulp (3e-7) relative:
//   SoftCap: |got - want| <= 1e-6 |want|  (float32 output, no bf16 step).
// The CPU ops are float32 with errors of the same size (2e-6 for SoftCap).
#include "activations.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"

namespace gquant::cuda {
namespace {

using testing::AsBf16;
using testing::RandomBf16;
using testing::RequireClose;

double GeluTanh(double x) {
  const double beta = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(beta * (x + 0.044715 * x * x * x)));
}

// a and b of one GeluTanhMul: each at `offset` in a buffer of rows x stride
// elements, or both in one buffer (the fused gate_up output).
struct GeluCase {
  std::string name;
  int64_t width;
  int64_t a_stride, a_offset;
  int64_t b_stride, b_offset;
  bool one_buffer;
};

TEST_CASE("GeluTanhMul matches float64 and cpu::GeluTanh", "[cuda][activations]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  auto fused = [](std::string name, int64_t width) {
    return GeluCase{name, width, 2 * width, 0, 2 * width, width, true};
  };
  const GeluCase cases[] = {
      fused("31B mlp", 21504),
      fused("E2B mlp", 6144),
      fused("E2B wide mlp", 12288),
      // E2B PLE: gate [rows, 256] times layer 7's slice of ple [rows, 35 * 256].
      {"E2B ple", 256, 256, 0, 35 * 256, 7 * 256, false},
      fused("width 1", 1),
      fused("width 7", 7),
      fused("width 100", 100),
      {"misaligned", 64, 72, 1, 72, 3, false},
  };
  for (const GeluCase& c : cases) {
    for (int64_t rows : {1, 3, 64}) {
      INFO(c.name << ": rows " << rows << " width " << c.width);
      // Gate values reach both gelu tails; up values any sign.
      const auto a_data = RandomBf16(rows * c.a_stride + c.a_offset, 0.01f, 8.0f, rng);
      const auto b_data =
          c.one_buffer ? a_data : RandomBf16(rows * c.b_stride + c.b_offset, 0.01f, 4.0f, rng);
      auto a_d = testing::Upload(a_data.bits);
      auto b_d = testing::Upload(b_data.bits);
      const __nv_bfloat16* b_base = c.one_buffer ? AsBf16(a_d) : AsBf16(b_d);
      auto out_d = testing::PoisonedBf16(rows * c.width);
      REQUIRE_OK(GeluTanhMul(AsBf16(a_d) + c.a_offset, c.a_stride, b_base + c.b_offset, c.b_stride,
                             rows, c.width, AsBf16(out_d), nullptr));
      const std::vector<float> got = testing::DownloadBf16(out_d);

      std::vector<double> want(rows * c.width), product(rows * c.width), cpu(rows * c.width);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < c.width; ++i) {
          const float a = a_data.values[r * c.a_stride + c.a_offset + i];
          const float b = b_data.values[r * c.b_stride + c.b_offset + i];
          want[r * c.width + i] = GeluTanh(a) * b;
          product[r * c.width + i] = std::abs(static_cast<double>(a) * b);
          cpu[r * c.width + i] = gemma4::cpu::GeluTanh(a) * b;
        }
      }
      const double bf16 = std::ldexp(1.0, -8) + 1e-5;
      RequireClose(
          got, want, [&](size_t i) { return bf16 * std::abs(want[i]) + 1e-6 * product[i]; },
          "vs float64");
      RequireClose(
          got, cpu, [&](size_t i) { return bf16 * std::abs(cpu[i]) + 2e-6 * product[i]; },
          "vs cpu::GeluTanh");
    }
  }
}

TEST_CASE("SoftCap matches float64 and cpu::SoftCap", "[cuda][activations]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Case {
    int64_t count, offset;
  };
  // One and two tokens of 262144 logits, odd counts, and a misaligned input.
  const Case cases[] = {{262144, 0}, {2 * 262144, 0}, {1, 0}, {7, 0}, {100, 0}, {262144, 1}};
  for (const Case& c : cases) {
    for (float cap : {30.0f, 1.5f}) {
      INFO("count " << c.count << " offset " << c.offset << " cap " << cap);
      // Up to 80: past the cap, where tanh saturates.
      const auto x = RandomBf16(c.count + c.offset, 0.01f, 80.0f, rng);
      auto x_d = testing::Upload(x.bits);
      auto y_d = DeviceBuffer<float>::Allocate(c.count);
      REQUIRE_OK(y_d);
      REQUIRE_OK(y_d->FillBytes(0xFF));
      REQUIRE_OK(SoftCap(AsBf16(x_d) + c.offset, c.count, cap, y_d->data(), nullptr));
      std::vector<float> got(c.count);
      REQUIRE_OK(y_d->CopyToHost(got));

      std::vector<double> want(c.count);
      std::vector<float> cpu(x.values.begin() + c.offset, x.values.end());
      for (int64_t i = 0; i < c.count; ++i) want[i] = std::tanh(cpu[i] / double{cap}) * cap;
      gemma4::cpu::SoftCap(cpu, cap);
      const std::vector<double> cpu_d = testing::ToDouble(cpu);
      RequireClose(
          got, want, [&](size_t i) { return 1e-6 * std::abs(want[i]); }, "vs float64");
      RequireClose(
          got, cpu_d, [&](size_t i) { return 2e-6 * std::abs(cpu_d[i]); }, "vs cpu::SoftCap");
    }
  }
}

TEST_CASE("Activations reject bad arguments", "[cuda][activations]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<float>::Allocate(1 << 14);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));
  float* y = buffer->data();
  auto* x = reinterpret_cast<__nv_bfloat16*>(y + 4096);
  auto* out = x + 4096;
  const auto invalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_OK(GeluTanhMul(x, 128, x + 64, 128, 4, 64, out, nullptr));
  REQUIRE_OK(GeluTanhMul(x, 128, x + 64, 128, 0, 64, out, nullptr));
  REQUIRE_STATUS_IS(GeluTanhMul(nullptr, 128, x, 128, 4, 64, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GeluTanhMul(x, 128, nullptr, 128, 4, 64, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GeluTanhMul(x, 128, x, 128, 4, 64, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(GeluTanhMul(x, 32, x, 128, 4, 64, out, nullptr), invalid);  // a_stride
  REQUIRE_STATUS_IS(GeluTanhMul(x, 128, x, 32, 4, 64, out, nullptr), invalid);  // b_stride
  REQUIRE_STATUS_IS(GeluTanhMul(x, 128, x, 128, -1, 64, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GeluTanhMul(x, 128, x, 128, 4, -1, out, nullptr), invalid);

  REQUIRE_OK(SoftCap(x, 1000, 30.0f, y, nullptr));
  REQUIRE_OK(SoftCap(x, 0, 30.0f, y, nullptr));
  REQUIRE_STATUS_IS(SoftCap(nullptr, 1000, 30.0f, y, nullptr), invalid);
  REQUIRE_STATUS_IS(SoftCap(x, 1000, 30.0f, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(SoftCap(x, -1, 30.0f, y, nullptr), invalid);
  REQUIRE_STATUS_IS(SoftCap(x, 1000, 0.0f, y, nullptr), invalid);
  REQUIRE_STATUS_IS(SoftCap(x, 1000, -30.0f, y, nullptr), invalid);
  REQUIRE_STATUS_IS(SoftCap(x, 1000, INFINITY, y, nullptr), invalid);
  REQUIRE_STATUS_IS(SoftCap(x, 1000, NAN, y, nullptr), invalid);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the accepted launches ran
}

}  // namespace
}  // namespace gquant::cuda
