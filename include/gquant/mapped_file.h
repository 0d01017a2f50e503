// A read-only memory map of a whole file, shared by the tensors that view it.
#ifndef GQUANT_MAPPED_FILE_H_
#define GQUANT_MAPPED_FILE_H_

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant {

// Symlinks: `path` may be, or pass through, symbolic links; they are followed
// (the Hugging Face cache stores every checkpoint file as a link into a blob
// directory). What it finally names must be a regular file: a directory, a
// device such as /dev/zero or a FIFO is refused without being read (a FIFO
// is opened non-blocking, so a missing writer cannot hang Open).
//
// A file that shrinks while mapped: reading a page past its new end raises
// SIGBUS, which no Status can report. The mapping keeps the file open, and
// CheckNotTruncated re-reads its size, so readers (SafetensorsFile::Get,
// GgufFile::CheckNotTruncated) call it before handing out tensor bytes and
// turn most truncations into a clean DataLoss. What remains: a truncation
// that races between that check and the read, or during parsing, still
// raises SIGBUS (avoiding it entirely would take a signal handler or reading
// instead of mapping).
class MappedFile {
 public:
  // Maps `path` read-only. An empty file maps to an empty span.
  // Returns NotFound if the file (or a directory on its path) does not exist
  // or a symlink dangles; InvalidArgument if it is not a regular file or
  // symlinks loop; PermissionDenied if it may not be read; Internal for other
  // system errors. Messages name the path and carry the errno text.
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

  // OK while the file is still at least as long as the mapping; DataLoss
  // ("'<path>' shrank from N to M bytes since it was opened") once it was
  // truncated, after which touching the lost pages would raise SIGBUS. One
  // fstat: cheap enough to call before every tensor read.
  absl::Status CheckNotTruncated() const;

 private:
  MappedFile(std::string path, int fd, const std::byte* data, size_t size)
      : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}

  std::string path_;
  int fd_;  // kept open for CheckNotTruncated
  const std::byte* data_;
  size_t size_;
};

}  // namespace gquant

#endif  // GQUANT_MAPPED_FILE_H_
