#include "gquant/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gquant/status.h"

namespace gquant {
namespace {

// Wide enough for any SIMD load and for cudaMemcpy-friendly staging.
constexpr size_t kAlignment = 64;

absl::StatusOr<size_t> ByteSize(DType dtype, std::span<const int64_t> shape) {
  auto count = NumElements(shape);
  if (!count.ok()) return count.status();
  const uint64_t size = DTypeSize(dtype);
  if (static_cast<uint64_t>(*count) > std::numeric_limits<uint64_t>::max() / size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shape %s of %s overflows a 64-bit byte count", ShapeToString(shape), DTypeName(dtype)));
  }
  return static_cast<size_t>(*count) * size;
}

}  // namespace

absl::StatusOr<int64_t> NumElements(std::span<const int64_t> shape) {
  int64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("shape %s: expected non-negative dimensions", ShapeToString(shape)));
    }
    if (dim != 0 && count > std::numeric_limits<int64_t>::max() / dim) {
      return absl::InvalidArgumentError(
          absl::StrFormat("shape %s: element count overflows int64", ShapeToString(shape)));
    }
    count *= dim;
  }
  return count;
}

std::string ShapeToString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<Tensor> Tensor::Allocate(std::string name, DType dtype, std::vector<int64_t> shape) {
  auto bytes = ByteSize(dtype, shape);
  if (!bytes.ok()) return Annotate(bytes.status(), "tensor '", name, "'");
  const size_t rounded = (*bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded < *bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat("tensor '%s': %d bytes", name, *bytes));
  }
  void* memory = rounded == 0 ? nullptr : std::aligned_alloc(kAlignment, rounded);
  if (rounded != 0 && memory == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("tensor '%s': cannot allocate %d bytes", name, *bytes));
  }
  if (memory != nullptr) std::memset(memory, 0, rounded);
  Tensor t;
  t.name_ = std::move(name);
  t.dtype_ = dtype;
  t.num_elements_ = *NumElements(shape);
  t.shape_ = std::move(shape);
  t.storage_ = std::shared_ptr<void>(memory, std::free);
  t.bytes_ = {static_cast<const std::byte*>(memory), *bytes};
  t.writable_ = true;
  return t;
}

absl::StatusOr<Tensor> Tensor::View(std::string name, DType dtype, std::vector<int64_t> shape,
                                    std::span<const std::byte> bytes,
                                    std::shared_ptr<const void> keep_alive) {
  auto expected = ByteSize(dtype, shape);
  if (!expected.ok()) return Annotate(expected.status(), "tensor '", name, "'");
  if (*expected != bytes.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor '%s': shape %s of %s needs %d bytes, but got %d", name,
                        ShapeToString(shape), DTypeName(dtype), *expected, bytes.size()));
  }
  Tensor t;
  t.name_ = std::move(name);
  t.dtype_ = dtype;
  t.num_elements_ = *NumElements(shape);
  t.shape_ = std::move(shape);
  t.storage_ = std::move(keep_alive);
  t.bytes_ = bytes;
  t.writable_ = false;
  return t;
}

absl::StatusOr<std::vector<float>> Tensor::ToFloat() const {
  std::vector<float> out(static_cast<size_t>(num_elements_));
  absl::Status status = ConvertToFloat(dtype_, bytes_, out);
  if (!status.ok()) return status;
  return out;
}

}  // namespace gquant
