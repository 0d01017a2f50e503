// RAII owner of a typed cudaMalloc allocation, with checked host copies.
// Header-only and free of device code, so plain C++ files (tests, tools) can
// use it.
#ifndef GQUANT_CUDA_DEVICE_BUFFER_CUH_
#define GQUANT_CUDA_DEVICE_BUFFER_CUH_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <span>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "cuda_status.cuh"

namespace gquant::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Returns Internal (with the CUDA error) if the allocation fails.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t size) {
    DeviceBuffer buffer;
    if (size > 0) {
      if (const cudaError_t error =
              cudaMalloc(reinterpret_cast<void**>(&buffer.data_), size * sizeof(T));
          error != cudaSuccess) {
        return CudaStatus(error, absl::StrFormat("cudaMalloc(%d bytes)", size * sizeof(T)).c_str());
      }
    }
    buffer.size_ = size;
    return buffer;
  }

  // Copies host -> device; the sizes must match exactly.
  absl::Status CopyFromHost(std::span<const T> host) {
    if (host.size() != size_) return SizeMismatch(host.size());
    GQ_RETURN_IF_CUDA_ERROR(
        cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  // Copies device -> host (synchronous); the sizes must match exactly.
  absl::Status CopyToHost(std::span<T> host) const {
    if (host.size() != size_) return SizeMismatch(host.size());
    GQ_RETURN_IF_CUDA_ERROR(
        cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }
  // Fills every byte with `value` (tests poison outputs this way).
  absl::Status FillBytes(unsigned char value) {
    GQ_RETURN_IF_CUDA_ERROR(cudaMemset(data_, value, size_ * sizeof(T)));
    return absl::OkStatus();
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void Reset() {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    size_ = 0;
  }
  absl::Status SizeMismatch(size_t host_size) const {
    return absl::InvalidArgumentError(
        absl::StrFormat("device buffer copy: expected %d elements, but got %d", size_, host_size));
  }

  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_DEVICE_BUFFER_CUH_
