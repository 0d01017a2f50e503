// Shared pieces of the CUDA tests. [cuda] tests call GQ_SKIP_WITHOUT_CUDA()
// first: on a machine without a GPU (CI) they pass with a warning instead of
// failing.
#ifndef GQUANT_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define GQUANT_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <utility>
#include <vector>

#include "device.cuh"
#include "device_buffer.cuh"
#include "test_util.h"

#define GQ_SKIP_WITHOUT_CUDA()                         \
  do {                                                 \
    if (::gquant::cuda::DeviceCount() == 0) {          \
      WARN("skipped: no CUDA device on this machine"); \
      return;                                          \
    }                                                  \
  } while (0)

namespace gquant::testing {

// A device copy of `host`; the test fails if allocation or the copy does.
template <typename T>
cuda::DeviceBuffer<T> Upload(const std::vector<T>& host) {
  auto buffer = cuda::DeviceBuffer<T>::Allocate(host.size());
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->CopyFromHost(host));
  return *std::move(buffer);
}

}  // namespace gquant::testing

#endif  // GQUANT_TESTS_CUDA_CUDA_TEST_UTIL_H_
