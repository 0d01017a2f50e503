// A read-only memory map of a whole file, shared by the tensors that view it.
#ifndef GQUANT_MAPPED_FILE_H_
#define GQUANT_MAPPED_FILE_H_

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace gquant {

class MappedFile {
 public:
  // Maps `path` read-only. An empty file maps to an empty span.
  // Returns NotFound if the file does not exist, InvalidArgument if it is not
  // a regular file, Internal for other system errors (message has errno text).
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Tells the kernel the range will be read once, front to back, and may be
  // dropped from the page cache afterwards (keeps streaming reads lean).
  void AdviseSequential() const;
  void AdviseDone(std::span<const std::byte> range) const;

 private:
  MappedFile(std::string path, const std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const std::byte* data_;
  size_t size_;
};

}  // namespace gquant

#endif  // GQUANT_MAPPED_FILE_H_
