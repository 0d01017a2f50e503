#include "gquant/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace gquant {
namespace {

absl::Status ErrnoError(int err, std::string_view what, const std::string& path) {
  const std::string message = absl::StrFormat("%s '%s': %s", what, path, std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case ELOOP:
      return absl::InvalidArgumentError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

// Page-aligned sub-range of [begin, end) for madvise.
void AdviseRange(const std::byte* base, size_t size, std::span<const std::byte> range, int advice) {
  if (range.empty() || size == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t begin = reinterpret_cast<uintptr_t>(range.data());
  uintptr_t end = begin + range.size();
  begin = (begin + page - 1) & ~(page - 1);  // whole pages inside the range only
  end &= ~(page - 1);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(base);
  if (begin < lo || end > lo + size || begin >= end) return;
  madvise(reinterpret_cast<void*>(begin), end - begin, advice);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const MappedFile>> MappedFile::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer; it has no
  // effect on a regular file, and anything else is refused below.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, "cannot stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrFormat("'%s' is not a regular file", path));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const std::byte* data = nullptr;
  if (size > 0) {
    void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoError(err, "cannot mmap", path);
    }
    data = static_cast<const std::byte*>(mapped);
  }
  return std::shared_ptr<const MappedFile>(new MappedFile(path, fd, data, size));
}

MappedFile::~MappedFile() {
  if (size_ > 0) ::munmap(const_cast<std::byte*>(data_), size_);
  ::close(fd_);
}

absl::Status MappedFile::CheckNotTruncated() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return ErrnoError(errno, "cannot stat", path_);
  if (static_cast<uint64_t>(st.st_size) < size_) {
    return absl::DataLossError(absl::StrFormat(
        "'%s' shrank from %d to %d bytes since it was opened: expected it unchanged while in use",
        path_, size_, static_cast<uint64_t>(st.st_size)));
  }
  return absl::OkStatus();
}

void MappedFile::AdviseSequential() const {
  if (size_ > 0) madvise(const_cast<std::byte*>(data_), size_, MADV_SEQUENTIAL);
}

void MappedFile::AdviseDone(std::span<const std::byte> range) const {
  AdviseRange(data_, size_, range, MADV_DONTNEED);
}

}  // namespace gquant
