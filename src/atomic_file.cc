#include "gquant/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "absl/strings/str_format.h"
#include "gquant/status.h"

namespace gquant {
namespace {

absl::Status ErrnoError(int err, std::string_view what, std::string_view path) {
  const std::string message = absl::StrFormat("%s '%s': %s", what, path, std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == ENOSPC || err == EDQUOT || err == EFBIG) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

// umask(2) can only be read by changing it, which races with other threads;
// Linux also reports it in /proc/self/status.
mode_t CurrentUmask() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Umask:", 0) == 0)
      return static_cast<mode_t>(std::strtoul(line.c_str() + 6, nullptr, 8));
  }
  return 022;
}

// pwrite until done; pwrite may write less than asked (signals, huge sizes).
absl::Status PWriteAll(int fd, uint64_t offset, std::span<const std::byte> data,
                       const std::string& path) {
  constexpr size_t kMaxChunk = size_t{1} << 30;
  while (!data.empty()) {
    const size_t chunk = std::min(data.size(), kMaxChunk);
    const ssize_t n = ::pwrite(fd, data.data(), chunk, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "cannot write", path);
    }
    if (n == 0) return absl::InternalError(absl::StrFormat("cannot write '%s': no progress", path));
    data = data.subspan(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status FsyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open directory", dir);
  absl::Status status;
  if (::fsync(fd) != 0) status = ErrnoError(errno, "cannot fsync directory", dir);
  ::close(fd);
  return status;
}

std::string DirectoryOf(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(
    const std::string& final_path) {
  const std::filesystem::path final_fs(final_path);
  const std::string name = final_fs.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(
        absl::StrFormat("output path '%s': expected a file name, but got none", final_path));
  }
  const std::string dir = DirectoryOf(final_path);
  std::string temp_path = (std::filesystem::path(dir) / ("." + name + ".tmp.XXXXXX")).string();
  const int fd = ::mkostemp(temp_path.data(), O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(
          absl::StrFormat("output path '%s': directory '%s' does not exist", final_path, dir));
    }
    return ErrnoError(err, "cannot create a temporary file in", dir);
  }
  // mkstemp creates the file 0600; give it the mode a plain open(2) would.
  if (::fchmod(fd, 0666 & ~CurrentUmask()) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(temp_path.c_str());
    return ErrnoError(err, "cannot chmod", temp_path);
  }
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(final_path, temp_path, fd));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

absl::Status AtomicFileWriter::CheckUsable() const {
  if (committed_) {
    return absl::FailedPreconditionError(
        absl::StrFormat("output file '%s': already committed", final_path_));
  }
  if (!error_.ok()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "output file '%s': an earlier write failed: %s", final_path_, error_.ToString()));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Remember(absl::Status status) {
  if (!status.ok() && error_.ok()) error_ = status;
  return status;
}

absl::Status AtomicFileWriter::Flush() {
  if (buffer_.empty()) return absl::OkStatus();
  GQ_RETURN_IF_ERROR(Remember(PWriteAll(fd_, buffer_offset_, buffer_, temp_path_)));
  buffer_offset_ += buffer_.size();
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Write(std::span<const std::byte> data) {
  GQ_RETURN_IF_ERROR(CheckUsable());
  if (buffer_.size() + data.size() > kBufferSize) GQ_RETURN_IF_ERROR(Flush());
  if (data.size() >= kBufferSize) {
    // Large payloads go straight to the file rather than through a copy.
    GQ_RETURN_IF_ERROR(Remember(PWriteAll(fd_, buffer_offset_, data, temp_path_)));
    buffer_offset_ += data.size();
    return absl::OkStatus();
  }
  buffer_.insert(buffer_.end(), data.begin(), data.end());
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::WriteAt(uint64_t offset, std::span<const std::byte> data) {
  GQ_RETURN_IF_ERROR(CheckUsable());
  GQ_RETURN_IF_ERROR(Flush());
  return Remember(PWriteAll(fd_, offset, data, temp_path_));
}

absl::Status AtomicFileWriter::Allocate(uint64_t size) {
  GQ_RETURN_IF_ERROR(CheckUsable());
  GQ_RETURN_IF_ERROR(Flush());
  if (size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return Remember(absl::InvalidArgumentError(
        absl::StrFormat("output file '%s': size %d does not fit off_t", final_path_, size)));
  }
  if (size == 0) return absl::OkStatus();
  const off_t length = static_cast<off_t>(size);
  // Linux fallocate, not posix_fallocate: glibc emulates the latter by
  // writing a byte per block where the file system lacks support.
  int result;
  do {
    result = ::fallocate(fd_, 0, 0, length);
  } while (result != 0 && errno == EINTR);
  if (result == 0) return absl::OkStatus();
  if (errno != EOPNOTSUPP && errno != ENOSYS) {
    return Remember(ErrnoError(errno, "cannot reserve space for", temp_path_));
  }
  if (::ftruncate(fd_, length) != 0)
    return Remember(ErrnoError(errno, "cannot resize", temp_path_));
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  GQ_RETURN_IF_ERROR(CheckUsable());
  GQ_RETURN_IF_ERROR(Flush());
  if (::fsync(fd_) != 0) return Remember(ErrnoError(errno, "cannot fsync", temp_path_));
  const int fd = fd_;
  fd_ = -1;
  // close can report deferred write errors (e.g. on NFS).
  if (::close(fd) != 0) return Remember(ErrnoError(errno, "cannot close", temp_path_));
  if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    return Remember(ErrnoError(errno, "cannot rename onto", final_path_));
  }
  committed_ = true;
  return FsyncDirectory(DirectoryOf(final_path_));
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> writer, AtomicFileWriter::Create(path));
  GQ_RETURN_IF_ERROR(
      writer->Write(std::as_bytes(std::span<const char>(contents.data(), contents.size()))));
  return writer->Commit();
}

}  // namespace gquant
