// Turns CUDA runtime errors into absl::Status (code Internal; ResourceExhausted
// when device memory runs out), so every host
// launcher can return a Status instead of aborting.
#ifndef GQUANT_CUDA_CUDA_STATUS_CUH_
#define GQUANT_CUDA_CUDA_STATUS_CUH_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gquant::cuda {

inline absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  if (error == cudaErrorMemoryAllocation) {  // out of device memory: the caller can size down
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
  }
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
}

}  // namespace gquant::cuda

// Returns an Internal status from the enclosing function if `expr` (a
// cudaError_t) is not cudaSuccess; the message names the expression.
#define GQ_RETURN_IF_CUDA_ERROR(expr)                                               \
  do {                                                                              \
    if (const cudaError_t gq_cuda_error_ = (expr); gq_cuda_error_ != cudaSuccess) { \
      return ::gquant::cuda::CudaStatus(gq_cuda_error_, #expr);                     \
    }                                                                               \
  } while (0)

#endif  // GQUANT_CUDA_CUDA_STATUS_CUH_
