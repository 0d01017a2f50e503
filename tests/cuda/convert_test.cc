#include "convert.cuh"

#include <bit>
#include <cmath>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"

namespace gquant::cuda {
namespace {

TEST_CASE("device info names the GPU", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto info = GetDeviceInfo(0);
  REQUIRE_OK(info);
  INFO(info->name);
  REQUIRE(info->multiprocessors > 0);
  REQUIRE(info->global_memory_bytes > 0);
  REQUIRE_STATUS_IS(GetDeviceInfo(DeviceCount()), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("GPU 16-bit -> float32 matches the host on all 65536 patterns", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::vector<uint16_t> patterns(65536);
  for (uint32_t i = 0; i < patterns.size(); ++i) patterns[i] = static_cast<uint16_t>(i);
  auto src = DeviceBuffer<uint16_t>::Allocate(patterns.size());
  auto dst = DeviceBuffer<float>::Allocate(patterns.size());
  REQUIRE_OK(src);
  REQUIRE_OK(dst);
  REQUIRE_OK(src->CopyFromHost(patterns));
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    INFO(DTypeName(dtype));
    REQUIRE_OK(dst->FillBytes(0xff));  // poison: a NaN pattern in every slot
    REQUIRE_OK(Convert16ToFloat(dtype, src->data(), dst->data(), patterns.size(), nullptr));
    std::vector<float> got(patterns.size());
    REQUIRE_OK(dst->CopyToHost(got));
    for (uint32_t i = 0; i < patterns.size(); ++i) {
      const float expected =
          dtype == DType::kF16 ? HalfToFloat(patterns[i]) : BFloat16ToFloat(patterns[i]);
      INFO("bits 0x" << std::hex << i);
      if (std::isnan(expected)) {
        REQUIRE(std::isnan(got[i]));
      } else {
        REQUIRE(std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(expected));
      }
    }
  }
}

TEST_CASE("GPU float32 -> 16-bit rounds exactly like the host", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  std::uniform_int_distribution<uint32_t> any_bits;
  // Odd count so the tail of the grid-stride loop is exercised.
  std::vector<float> values(1000003);
  for (float& v : values) {
    do v = std::bit_cast<float>(any_bits(rng));
    while (std::isnan(v));
  }
  auto src = DeviceBuffer<float>::Allocate(values.size());
  auto dst = DeviceBuffer<uint16_t>::Allocate(values.size());
  REQUIRE_OK(src);
  REQUIRE_OK(dst);
  REQUIRE_OK(src->CopyFromHost(values));
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    INFO(DTypeName(dtype));
    REQUIRE_OK(dst->FillBytes(0xff));
    REQUIRE_OK(ConvertFloatTo16(dtype, src->data(), dst->data(), values.size(), nullptr));
    std::vector<uint16_t> got(values.size());
    REQUIRE_OK(dst->CopyToHost(got));
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t expected =
          dtype == DType::kF16 ? FloatToHalf(values[i]) : FloatToBFloat16(values[i]);
      if (got[i] != expected) {
        INFO("x = " << values[i]);
        REQUIRE(got[i] == expected);
      }
    }
  }
  REQUIRE_STATUS_IS(ConvertFloatTo16(DType::kF32, src->data(), dst->data(), 1, nullptr),
                    absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gquant::cuda
