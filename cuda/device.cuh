// What the process can see of the GPU: used by tools to report the device and
// by [cuda] tests to skip cleanly on machines without one.
#ifndef GQUANT_CUDA_DEVICE_CUH_
#define GQUANT_CUDA_DEVICE_CUH_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace gquant::cuda {

struct DeviceInfo {
  int index;
  std::string name;              // e.g. "NVIDIA H100 80GB HBM3"
  int compute_capability_major;  // 9 for Hopper
  int compute_capability_minor;
  int multiprocessors;
  int64_t global_memory_bytes;
};

// Number of usable CUDA devices; 0 when there is no driver or no GPU (never
// an error, so callers can skip).
int DeviceCount();

// Returns InvalidArgument for an index outside [0, DeviceCount()), Internal
// for a CUDA error.
absl::StatusOr<DeviceInfo> GetDeviceInfo(int index);

// The limits launchers size their grids by, for the current device.
struct DeviceLimits {
  int multiprocessors;
  int shared_per_block;           // opt-in maximum of dynamic shared memory per block, bytes
  int shared_per_multiprocessor;  // bytes, shared by the resident blocks
  int major, minor;               // compute capability
};

// Looked up once per device (launchers call it on every launch). Internal for
// a CUDA error.
absl::StatusOr<DeviceLimits> CurrentDeviceLimits();

// Whether sm_90a kernels (wgmma, the bulk copy engine) run on the current
// device: the build has their code (CMake's GQUANT_CUDA_SM90A), the device
// is compute capability 9.0 and grants `shared_bytes` of shared memory to a
// block.
bool Sm90aKernelsRun(int shared_bytes);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_DEVICE_CUH_
