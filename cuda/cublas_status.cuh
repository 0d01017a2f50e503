// Turns cuBLAS status codes into absl::Status (code Internal), as
// cuda_status.cuh does for the CUDA runtime.
#ifndef GQUANT_CUDA_CUBLAS_STATUS_CUH_
#define GQUANT_CUDA_CUBLAS_STATUS_CUH_

#include <cublas_v2.h>

#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gquant/status.h"

namespace gquant::cuda {

inline absl::Status CublasStatus(cublasStatus_t status, std::string_view what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(std::string(what), ": ", cublasGetStatusName(status),
                                          " (", cublasGetStatusString(status), ")"));
}

}  // namespace gquant::cuda

// Returns an Internal status from the enclosing function if `expr` (a
// cublasStatus_t) is not CUBLAS_STATUS_SUCCESS; the message names the call.
#define GQ_RETURN_IF_CUBLAS_ERROR(expr) \
  GQ_RETURN_IF_ERROR(::gquant::cuda::CublasStatus((expr), #expr))

#endif  // GQUANT_CUDA_CUBLAS_STATUS_CUH_
