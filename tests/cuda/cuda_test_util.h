// [cuda] tests call GQ_SKIP_WITHOUT_CUDA() first: on a machine without a GPU
// (CI) they pass with a warning instead of failing.
#ifndef GQUANT_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define GQUANT_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include "device.cuh"
#include "test_util.h"

#define GQ_SKIP_WITHOUT_CUDA()                         \
  do {                                                 \
    if (::gquant::cuda::DeviceCount() == 0) {          \
      WARN("skipped: no CUDA device on this machine"); \
      return;                                          \
    }                                                  \
  } while (0)

#endif  // GQUANT_TESTS_CUDA_CUDA_TEST_UTIL_H_
