#include "gquant/atomic_file.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;
using ::gquant::testing::TempDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

std::vector<std::string> ListDir(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::span<const std::byte> Bytes(std::string_view s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

void RequireMessageHas(const absl::Status& status, std::string_view part) {
  INFO(status.ToString());
  REQUIRE(std::string(status.message()).find(part) != std::string::npos);
}

TEST_CASE("WriteFileAtomically creates and replaces a file", "[atomic_file]") {
  TempDir dir;
  const std::string path = dir.File("out.txt");
  REQUIRE_OK(WriteFileAtomically(path, "first"));
  REQUIRE(ReadFile(path) == "first");
  REQUIRE_OK(WriteFileAtomically(path, std::string("second\0x", 8)));
  REQUIRE(ReadFile(path) == std::string("second\0x", 8));
  REQUIRE_OK(WriteFileAtomically(path, ""));
  REQUIRE(ReadFile(path).empty());
  REQUIRE(ListDir(dir.path()) == std::vector<std::string>{"out.txt"});
}

TEST_CASE("AtomicFileWriter mixes buffered appends and positioned writes", "[atomic_file]") {
  TempDir dir;
  const std::string path = dir.File("mixed.bin");
  auto writer = AtomicFileWriter::Create(path);
  REQUIRE_OK(writer);
  REQUIRE_OK((*writer)->Write(Bytes("hello")));
  // Lands beyond the append cursor, leaving a gap the next append fills.
  REQUIRE_OK((*writer)->WriteAt(10, Bytes("X")));
  REQUIRE_OK((*writer)->Write(Bytes("world")));
  // Overwrites appended bytes that were still buffered.
  REQUIRE_OK((*writer)->WriteAt(0, Bytes("J")));
  REQUIRE_FALSE(std::filesystem::exists(path));
  REQUIRE_OK((*writer)->Commit());
  REQUIRE(ReadFile(path) == "JelloworldX");
}

TEST_CASE("AtomicFileWriter handles writes larger than its buffer", "[atomic_file]") {
  TempDir dir;
  const std::string path = dir.File("big.bin");
  auto rng = MakeRng();
  std::string expected;
  auto writer = AtomicFileWriter::Create(path);
  REQUIRE_OK(writer);
  // Small, exactly-buffer-sized and oversized appends, interleaved.
  for (size_t size :
       {size_t{3}, AtomicFileWriter::kBufferSize, size_t{1} << 10,
        AtomicFileWriter::kBufferSize + 17, size_t{1}, AtomicFileWriter::kBufferSize - 1}) {
    std::string chunk(size, '\0');
    for (char& c : chunk) c = static_cast<char>(rng());
    chunk[0] = 'A';  // never all zeros
    REQUIRE_OK((*writer)->Write(Bytes(chunk)));
    expected += chunk;
  }
  REQUIRE_OK((*writer)->Commit());
  REQUIRE(ReadFile(path) == expected);
}

TEST_CASE("AtomicFileWriter::Allocate gives the temporary its final size up front",
          "[atomic_file]") {
  TempDir dir;
  const std::string path = dir.File("sized.bin");
  auto writer = AtomicFileWriter::Create(path);
  REQUIRE_OK(writer);
  REQUIRE_OK((*writer)->Write(Bytes("head")));  // buffered: Allocate flushes it first
  REQUIRE_OK((*writer)->Allocate(10000));
  REQUIRE(std::filesystem::file_size((*writer)->temp_path()) == 10000);
  REQUIRE(ReadFile((*writer)->temp_path()).substr(0, 4) == "head");
  REQUIRE_OK((*writer)->WriteAt(9996, Bytes("tail")));
  REQUIRE_OK((*writer)->Allocate(0));  // no-op
  REQUIRE_FALSE(std::filesystem::exists(path));
  REQUIRE_OK((*writer)->Commit());
  const std::string contents = ReadFile(path);
  REQUIRE(contents.size() == 10000);
  REQUIRE(contents.substr(0, 4) == "head");
  REQUIRE(contents.substr(9996) == "tail");
  REQUIRE(contents.substr(4, 9992) == std::string(9992, '\0'));  // unwritten bytes read as zeros
  REQUIRE(ListDir(dir.path()) == std::vector<std::string>{"sized.bin"});
}

TEST_CASE("AtomicFileWriter gives the file the umask's mode", "[atomic_file]") {
  TempDir dir;
  const mode_t mask = ::umask(0);
  ::umask(mask);
  const std::string path = dir.File("mode.txt");
  REQUIRE_OK(WriteFileAtomically(path, "x"));
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  REQUIRE((st.st_mode & 0777) == (0666 & ~mask));
}

TEST_CASE("AtomicFileWriter without Commit leaves no trace", "[atomic_file]") {
  TempDir dir;
  const std::string path = dir.File("keep.txt");
  REQUIRE_OK(WriteFileAtomically(path, "original"));
  std::string temp_path;
  {
    auto writer = AtomicFileWriter::Create(path);
    REQUIRE_OK(writer);
    temp_path = (*writer)->temp_path();
    REQUIRE(std::filesystem::path(temp_path).parent_path() == dir.path());
    REQUIRE(std::filesystem::path(temp_path).filename().string().rfind(".keep.txt.tmp.", 0) == 0);
    REQUIRE_OK((*writer)->Write(Bytes("replacement")));
    REQUIRE_OK((*writer)->WriteAt(100, Bytes("tail")));
    REQUIRE(std::filesystem::exists(temp_path));
  }
  REQUIRE_FALSE(std::filesystem::exists(temp_path));
  REQUIRE(ReadFile(path) == "original");
  REQUIRE(ListDir(dir.path()) == std::vector<std::string>{"keep.txt"});
}

TEST_CASE("AtomicFileWriter refuses use after Commit", "[atomic_file]") {
  TempDir dir;
  auto writer = AtomicFileWriter::Create(dir.File("done.txt"));
  REQUIRE_OK(writer);
  REQUIRE_OK((*writer)->Write(Bytes("x")));
  REQUIRE_OK((*writer)->Commit());
  REQUIRE_STATUS_IS((*writer)->Write(Bytes("y")), absl::StatusCode::kFailedPrecondition);
  REQUIRE_STATUS_IS((*writer)->WriteAt(0, Bytes("y")), absl::StatusCode::kFailedPrecondition);
  REQUIRE_STATUS_IS((*writer)->Commit(), absl::StatusCode::kFailedPrecondition);
  RequireMessageHas((*writer)->Commit(), "already committed");
  writer->reset();
  REQUIRE(ReadFile(dir.File("done.txt")) == "x");
}

TEST_CASE("AtomicFileWriter reports bad paths", "[atomic_file]") {
  TempDir dir;
  const std::string missing = dir.File("no/such/dir/file.txt");
  REQUIRE_STATUS_IS(AtomicFileWriter::Create(missing), absl::StatusCode::kNotFound);
  RequireMessageHas(AtomicFileWriter::Create(missing).status(), dir.File("no/such/dir"));
  REQUIRE_STATUS_IS(WriteFileAtomically(missing, "x"), absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(AtomicFileWriter::Create(""), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(AtomicFileWriter::Create(dir.File("sub/")), absl::StatusCode::kInvalidArgument);
  // The parent is a file, not a directory.
  REQUIRE_OK(WriteFileAtomically(dir.File("plain"), "x"));
  REQUIRE_STATUS_IS(AtomicFileWriter::Create(dir.File("plain/file.txt")),
                    absl::StatusCode::kNotFound);
}

TEST_CASE("AtomicFileWriter Commit failure keeps the destination and cleans up", "[atomic_file]") {
  TempDir dir;
  // rename(2) cannot replace a non-empty directory.
  const std::string target = dir.File("target");
  std::filesystem::create_directory(target);
  REQUIRE_OK(WriteFileAtomically(dir.File("target/inner"), "x"));
  {
    auto writer = AtomicFileWriter::Create(target);
    REQUIRE_OK(writer);
    REQUIRE_OK((*writer)->Write(Bytes("data")));
    const absl::Status status = (*writer)->Commit();
    REQUIRE_STATUS_IS(status, absl::StatusCode::kInternal);
    RequireMessageHas(status, target);
    // A failed writer stays failed.
    REQUIRE_STATUS_IS((*writer)->Commit(), absl::StatusCode::kFailedPrecondition);
  }
  REQUIRE(std::filesystem::is_directory(target));
  REQUIRE(ListDir(dir.path()) == std::vector<std::string>{"target"});
}

}  // namespace
}  // namespace gquant
