// A named, dense, row-major host tensor. Its bytes are either owned (64-byte
// aligned heap memory) or a view into memory kept alive by someone else, such as
// a memory-mapped checkpoint. Copies share the bytes, as torch tensors do.
#ifndef GQUANT_TENSOR_H_
#define GQUANT_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/dtype.h"

namespace gquant {

// Number of elements of `shape` (1 for a scalar shape {}).
// Returns InvalidArgument for a negative dimension or a product that
// overflows int64.
absl::StatusOr<int64_t> NumElements(std::span<const int64_t> shape);

// "[262144, 5376]"
std::string ShapeToString(std::span<const int64_t> shape);

class Tensor {
 public:
  Tensor() = default;

  // A new tensor owning zero-initialised memory.
  // Returns InvalidArgument for a bad shape, ResourceExhausted if the size
  // overflows or cannot be allocated.
  static absl::StatusOr<Tensor> Allocate(std::string name, DType dtype, std::vector<int64_t> shape);

  // A view of `bytes`, which `keep_alive` keeps valid.
  // Returns InvalidArgument if bytes.size() != product(shape) * dtype size.
  static absl::StatusOr<Tensor> View(std::string name, DType dtype, std::vector<int64_t> shape,
                                     std::span<const std::byte> bytes,
                                     std::shared_ptr<const void> keep_alive);

  const std::string& name() const { return name_; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t num_elements() const { return num_elements_; }
  size_t num_bytes() const { return bytes_.size(); }
  bool owns_memory() const { return writable_; }

  std::span<const std::byte> bytes() const { return bytes_; }
  // Writable bytes of an owned tensor; empty for a view.
  std::span<std::byte> mutable_bytes() {
    return writable_ ? std::span<std::byte>(const_cast<std::byte*>(bytes_.data()), bytes_.size())
                     : std::span<std::byte>();
  }

  // The elements converted to float32 (see ConvertToFloat).
  absl::StatusOr<std::vector<float>> ToFloat() const;

 private:
  std::string name_;
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_;
  int64_t num_elements_ = 0;
  std::span<const std::byte> bytes_;
  std::shared_ptr<const void> storage_;
  bool writable_ = false;
};

}  // namespace gquant

#endif  // GQUANT_TENSOR_H_
