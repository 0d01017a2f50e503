// Test data and checks for the bf16 activation kernels (rms_norm, rope,
// activations, embedding gather): random bf16 tensors kept as bits (for the
// device) and floats (for the references), and an elementwise comparison
// with a per-element tolerance that also fails on NaN (poisoned outputs).
#ifndef GQUANT_TESTS_CUDA_BF16_TEST_DATA_H_
#define GQUANT_TESTS_CUDA_BF16_TEST_DATA_H_

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/dtype.h"

namespace gquant::testing {

struct Bf16Values {
  std::vector<uint16_t> bits;
  std::vector<float> values;  // the same numbers, exactly
};

// n bf16 numbers with magnitudes uniform in [lo, hi] (then rounded to bf16)
// and random signs: never zero for lo > 0.
inline Bf16Values RandomBf16(size_t n, float lo, float hi, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> magnitude(lo, hi);
  std::bernoulli_distribution negative(0.5);
  Bf16Values v{std::vector<uint16_t>(n), std::vector<float>(n)};
  for (size_t i = 0; i < n; ++i) {
    v.bits[i] = FloatToBFloat16(negative(rng) ? -magnitude(rng) : magnitude(rng));
    v.values[i] = BFloat16ToFloat(v.bits[i]);
  }
  return v;
}

inline __nv_bfloat16* AsBf16(cuda::DeviceBuffer<uint16_t>& b) {
  return reinterpret_cast<__nv_bfloat16*>(b.data());
}
inline const __nv_bfloat16* AsBf16(const cuda::DeviceBuffer<uint16_t>& b) {
  return reinterpret_cast<const __nv_bfloat16*>(b.data());
}

// A bf16 device buffer of `n` elements poisoned with 0xFF bytes (bf16 NaN).
inline cuda::DeviceBuffer<uint16_t> PoisonedBf16(size_t n) {
  auto buffer = cuda::DeviceBuffer<uint16_t>::Allocate(n);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0xFF));
  return *std::move(buffer);
}

// The buffer's contents as floats.
inline std::vector<float> DownloadBf16(const cuda::DeviceBuffer<uint16_t>& b) {
  std::vector<uint16_t> bits(b.size());
  REQUIRE_OK(b.CopyToHost(bits));
  std::vector<float> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = BFloat16ToFloat(bits[i]);
  return values;
}

// REQUIREs |got[i] - want[i]| <= tolerance(i) for every i (false for a NaN),
// reporting the count and the first failure.
inline void RequireClose(std::span<const float> got, std::span<const double> want,
                         const std::function<double(size_t)>& tolerance, std::string_view what) {
  REQUIRE(got.size() == want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::abs(got[i] - want[i]) <= tolerance(i)) && bad++ == 0) first = i;
  }
  if (bad > 0) {
    INFO(what << ": " << bad << " of " << got.size() << " elements out of bounds; first at "
              << first << ": got " << got[first] << ", want " << want[first] << ", tolerance "
              << tolerance(first));
    REQUIRE(bad == 0);
  }
}

// `values` as doubles (the CPU reference ops compute in float32).
inline std::vector<double> ToDouble(std::span<const float> values) {
  return std::vector<double>(values.begin(), values.end());
}

}  // namespace gquant::testing

#endif  // GQUANT_TESTS_CUDA_BF16_TEST_DATA_H_
