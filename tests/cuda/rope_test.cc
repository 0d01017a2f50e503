// ApplyRope against a float64 rotation of the same bf16 inputs and against
// cpu::ApplyRope, for Gemma 4's two RoPE configurations (spec gemma4.md §3)
// with cpu::RopeInverseFrequencies, at the 31B and E2B head shapes and odd
// head dims (scalar path), positions 0 to past 131071 (2^17 - 1).
//
// The angle. Both the kernel and the CPU reference (like HF) compute
// angle = float32(position) * inv_freq[j] as one rounded float32 product, so
// the float64 reference uses that same float32 angle and then exact cos/sin.
// Against the exact angle position * inv_freq the float32 one is off by up
// to half an ulp: 2^-8 rad at positions in [2^16, 2^17) such as 131071
// (2^-7 just past it), which moves a rotated value by up to 0.4% (0.8%) of
// the pair's magnitude: more than bf16 rounding, so a comparison with the
// exact angle could not use a bf16 bound. The kernel's own error on top of
// the shared float32 angle does not grow with the position: sincosf reduces
// any argument accurately (2 ulp).
//
// Bound: the rotation x1 cos - x2 sin in float32 with cos/sin within 2 ulp
// is within 3e-7 (|x1| + |x2|) of the exact rotation (2e-6 allows ~6x), and
// the result is rounded to bf16 once (2^-8 relative):
//   |got - want| <= 2^-8 |want| + 2e-6 (|x_j| + |x_j+D/2|).
// The "proportional" RoPE's unrotated dims (inv_freq 0) must come back bit
// for bit.
#include "rope.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
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

const gemma4::RopeParameters kSliding{"default", 10000.0, 1.0};
const gemma4::RopeParameters kFull{"proportional", 1000000.0, 0.25};

struct RopeCase {
  std::string name;
  int heads;
  int head_dim;
  gemma4::RopeParameters rope;
};

TEST_CASE("ApplyRope matches float64 and cpu::ApplyRope", "[cuda][rope]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const RopeCase cases[] = {
      {"31B sliding q", 32, 256, kSliding}, {"31B sliding k", 16, 256, kSliding},
      {"31B full q", 32, 512, kFull},       {"31B full k", 4, 512, kFull},
      {"E2B sliding q", 8, 256, kSliding},  {"E2B sliding k", 1, 256, kSliding},
      {"E2B full q", 8, 512, kFull},        {"E2B full k", 1, 512, kFull},
      {"D 100", 3, 100, kSliding},          {"D 6", 2, 6, kSliding},
      {"D 8 proportional", 5, 8, kFull},    {"D 2", 7, 2, kSliding},
  };
  for (const RopeCase& c : cases) {
    const std::vector<float> inv_freq = gemma4::cpu::RopeInverseFrequencies(c.rope, c.head_dim);
    auto inv_freq_d = testing::Upload(inv_freq);
    for (int64_t tokens : {1, 3, 64}) {
      const int64_t positions[] = {0, std::uniform_int_distribution<int64_t>(1, 100000)(rng),
                                   131071 - tokens + 1, 131071};
      for (int64_t first : positions) {
        INFO(c.name << ": tokens " << tokens << " first position " << first);
        const int64_t d = c.head_dim, half = d / 2, n = tokens * c.heads * d;
        const auto x = RandomBf16(n, 0.01f, 8.0f, rng);
        auto x_d = testing::Upload(x.bits);
        auto first_d = testing::Upload(std::vector<int64_t>{first});
        REQUIRE_OK(ApplyRope(AsBf16(x_d), tokens, c.heads, c.head_dim, inv_freq_d.data(),
                             first_d.data(), nullptr));
        std::vector<uint16_t> got_bits(n);
        REQUIRE_OK(x_d.CopyToHost(got_bits));
        const std::vector<float> got = testing::DownloadBf16(x_d);

        std::vector<double> want(n), pair(n);
        int64_t unrotated_changed = 0;
        for (int64_t v = 0; v < tokens * c.heads; ++v) {
          const float position = static_cast<float>(first + v / c.heads);
          for (int64_t j = 0; j < half; ++j) {
            const int64_t lo = v * d + j, hi = lo + half;
            const double angle = static_cast<float>(static_cast<double>(position) * inv_freq[j]);
            const double cosine = std::cos(angle), sine = std::sin(angle);
            want[lo] = x.values[lo] * cosine - x.values[hi] * sine;
            want[hi] = x.values[hi] * cosine + x.values[lo] * sine;
            pair[lo] = pair[hi] = std::abs(x.values[lo]) + std::abs(x.values[hi]);
            if (inv_freq[j] == 0.0f) {
              unrotated_changed += (got_bits[lo] != x.bits[lo]) + (got_bits[hi] != x.bits[hi]);
            }
          }
        }
        REQUIRE(unrotated_changed == 0);
        const double bf16 = std::ldexp(1.0, -8);
        RequireClose(
            got, want, [&](size_t i) { return bf16 * std::abs(want[i]) + 2e-6 * pair[i]; },
            "vs float64");

        std::vector<float> cpu = x.values;
        for (int64_t t = 0; t < tokens; ++t) {
          gemma4::cpu::ApplyRope(std::span(cpu).subspan(t * c.heads * d, c.heads * d), c.heads,
                                 c.head_dim, first + t, inv_freq);
        }
        const std::vector<double> cpu_d = testing::ToDouble(cpu);
        RequireClose(
            got, cpu_d, [&](size_t i) { return bf16 * std::abs(cpu_d[i]) + 2e-6 * pair[i]; },
            "vs cpu::ApplyRope");
      }
    }
  }
}

TEST_CASE("ApplyRope reads the position from the device at run time", "[cuda][rope]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // The same launch arguments at two positions give the two rotations: the
  // decode graph replays one launch for every position.
  const std::vector<float> inv_freq = gemma4::cpu::RopeInverseFrequencies(kSliding, 256);
  auto inv_freq_d = testing::Upload(inv_freq);
  const auto x = RandomBf16(256, 0.01f, 8.0f, rng);
  auto position_d = testing::Upload(std::vector<int64_t>{5});
  for (int64_t position : {5, 70000}) {
    REQUIRE_OK(position_d.CopyFromHost(std::vector<int64_t>{position}));
    auto x_d = testing::Upload(x.bits);
    REQUIRE_OK(ApplyRope(AsBf16(x_d), 1, 1, 256, inv_freq_d.data(), position_d.data(), nullptr));
    std::vector<float> cpu = x.values;
    gemma4::cpu::ApplyRope(cpu, 1, 256, position, inv_freq);
    const std::vector<double> cpu_d = testing::ToDouble(cpu);
    RequireClose(
        testing::DownloadBf16(x_d), cpu_d,
        [&](size_t i) {
          const size_t j = i % 128;
          return std::ldexp(1.0, -8) * std::abs(cpu_d[i]) +
                 2e-6 * (std::abs(x.values[j]) + std::abs(x.values[j + 128]));
        },
        "vs cpu::ApplyRope");
  }
}

TEST_CASE("ApplyRope rejects bad arguments", "[cuda][rope]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<float>::Allocate(1 << 14);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));
  float* inv_freq = buffer->data();
  const auto* position = reinterpret_cast<const int64_t*>(inv_freq + 1024);
  auto* x = reinterpret_cast<__nv_bfloat16*>(inv_freq + 2048);
  const auto invalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_OK(ApplyRope(x, 2, 4, 256, inv_freq, position, nullptr));
  REQUIRE_OK(ApplyRope(x + 1, 3, 2, 6, inv_freq + 1, position, nullptr));  // scalar path
  REQUIRE_OK(ApplyRope(x, 0, 4, 256, inv_freq, position, nullptr));
  REQUIRE_STATUS_IS(ApplyRope(nullptr, 2, 4, 256, inv_freq, position, nullptr), invalid);
  REQUIRE_STATUS_IS(ApplyRope(x, 2, 4, 256, nullptr, position, nullptr), invalid);
  REQUIRE_STATUS_IS(ApplyRope(x, 2, 4, 256, inv_freq, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(ApplyRope(x, -1, 4, 256, inv_freq, position, nullptr), invalid);
  REQUIRE_STATUS_IS(ApplyRope(x, 2, 0, 256, inv_freq, position, nullptr), invalid);
  REQUIRE_STATUS_IS(ApplyRope(x, 2, 4, 255, inv_freq, position, nullptr), invalid);  // odd
  REQUIRE_STATUS_IS(ApplyRope(x, 2, 4, 0, inv_freq, position, nullptr), invalid);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the accepted launches ran
}

}  // namespace
}  // namespace gquant::cuda
