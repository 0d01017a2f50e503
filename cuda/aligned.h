// Pointer alignment checks for the host launchers (vector loads and
// cp.async need 8- or 16-byte aligned addresses).
#ifndef GQUANT_CUDA_ALIGNED_H_
#define GQUANT_CUDA_ALIGNED_H_

#include <cstdint>

namespace gquant::cuda {

// Whether p is a multiple of `bytes`; null passes (optional pointers are
// checked for null separately).
inline bool Aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ALIGNED_H_
