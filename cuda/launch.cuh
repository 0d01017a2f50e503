// Kernel launches with programmatic dependent launch (PDL) allowed: the
// kernel may begin while the previous kernel in the stream is still running,
// and must call WaitForPredecessor (device_primitives.cuh) before it reads
// anything earlier work wrote or writes anything at all. Decode issues a
// chain of short kernels; PDL overlaps each one's launch and start-up (and,
// for the GEMVs, its first weight reads) with the tail of the one before.
// Works in streams and in CUDA graphs captured from them.
#ifndef GQUANT_CUDA_LAUNCH_CUH_
#define GQUANT_CUDA_LAUNCH_CUH_

#include <cuda_runtime.h>

#include <atomic>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda_status.cuh"

namespace gquant::cuda {

// kernel<<<grid, block, shared_bytes, stream>>>(args...) with PDL when
// `overlap` is set (else an ordinary launch), then cudaGetLastError.
template <typename... Params, typename... Args>
absl::Status LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, bool overlap, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = overlap ? &attribute : nullptr;
  config.numAttrs = overlap ? 1 : 0;
  GQ_RETURN_IF_CUDA_ERROR(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// How many thread blocks of `kernel` fit on one multiprocessor, for each block
// size of 1..kMaxWarps warps with `bytes_per_warp` of dynamic shared memory
// per warp; each size is asked of the runtime once. Launchers keep one
// table per kernel instance (a function-local static).
template <int kMaxWarps>
class OccupancyTable {
 public:
  absl::StatusOr<int> BlocksPerMultiprocessor(const void* kernel, int warps, int bytes_per_warp) {
    if (fits_[warps] == 0) {
      int blocks = 0;
      GQ_RETURN_IF_CUDA_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks, kernel, warps * 32, static_cast<size_t>(warps) * bytes_per_warp));
      fits_[warps] = blocks + 1;  // 0 marks "not looked up"
    }
    return fits_[warps] - 1;
  }

 private:
  std::atomic<int> fits_[kMaxWarps + 1] = {};
};

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_LAUNCH_CUH_
