// Crash-safe file replacement. Bytes go to a temporary file beside the
// destination, which is fsync'ed and renamed over the destination only when
// complete. A reader therefore never sees a half-written checkpoint, and an
// interrupted or abandoned write never clobbers an existing file.
#ifndef GQUANT_ATOMIC_FILE_H_
#define GQUANT_ATOMIC_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant {

// Error codes shared by every method below:
//   Internal           a failed system call (message has the path and strerror)
//   ResourceExhausted  the disk or quota is full, or the file is too large for
//                      the file system (ENOSPC, EDQUOT, EFBIG)
//   FailedPrecondition the writer already committed, or an earlier call failed
//                      (the earlier error is repeated in the message)
class AtomicFileWriter {
 public:
  // Size of the append buffer; larger writes bypass it.
  static constexpr size_t kBufferSize = size_t{4} << 20;

  // Creates a unique temporary file `.<name>.tmp.XXXXXX` in the directory of
  // `final_path`. The final file gets mode 0666 & ~umask, like open(2) would.
  // Returns InvalidArgument if `final_path` names no file (empty, or ends in
  // '/'), NotFound if its directory does not exist, Internal otherwise.
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(const std::string& final_path);

  // Removes the temporary file unless Commit succeeded.
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // Appends `data` at the append cursor, which starts at offset 0.
  absl::Status Write(std::span<const std::byte> data);

  // Writes `data` at byte `offset` (pwrite). The append cursor does not move.
  // The append buffer is flushed first, so writes land in call order.
  absl::Status WriteAt(uint64_t offset, std::span<const std::byte> data);

  // Flushes, then gives the temporary file its final `size` up front: disk
  // blocks are reserved (fallocate) where the file system can, so a full disk
  // fails now rather than after hours of work; elsewhere the file is only
  // extended (ftruncate). Unwritten bytes read as zeros. The file then always
  // has its final size, so an interrupted writer leaves a file whose layout
  // (e.g. a safetensors header) can be read back to resume from it.
  absl::Status Allocate(uint64_t size);

  // Flushes, fsyncs the file, renames it onto the final path (replacing any
  // file there) and fsyncs the directory so the rename itself is durable.
  // If only the directory fsync fails the file is already in place; the error
  // is still returned.
  absl::Status Commit();

  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  AtomicFileWriter(std::string final_path, std::string temp_path, int fd)
      : final_path_(std::move(final_path)), temp_path_(std::move(temp_path)), fd_(fd) {}

  absl::Status CheckUsable() const;
  absl::Status Flush();
  // Records the first failure so later calls cannot commit a damaged file.
  absl::Status Remember(absl::Status status);

  std::string final_path_;
  std::string temp_path_;
  int fd_;
  std::vector<std::byte> buffer_;
  uint64_t buffer_offset_ = 0;  // file offset of buffer_[0]
  bool committed_ = false;
  absl::Status error_;
};

// Writes `contents` to `path` through an AtomicFileWriter.
// Returns the codes of AtomicFileWriter::Create and Commit.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

}  // namespace gquant

#endif  // GQUANT_ATOMIC_FILE_H_
