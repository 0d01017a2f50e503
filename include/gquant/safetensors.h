// Reading and writing safetensors files (spec: formats.md §1).
//
// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON that
// start with '{' (right-padded with spaces), then the data buffer holding every
// tensor's bytes back to back:
//   {"__metadata__":{"k":"v"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}
// data_offsets are relative to the start of the data buffer, END exclusive.
//
// The reader validates everything a later consumer relies on, so a Tensor it
// returns always lies inside the file and has exactly the declared size. The
// writer produces the same bytes as the reference Python/Rust writer
// (safetensors.torch.save_file) for the same tensors and metadata.
#ifndef GQUANT_SAFETENSORS_H_
#define GQUANT_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/atomic_file.h"
#include "gquant/dtype.h"
#include "gquant/tensor.h"

namespace gquant {

// The reference reader refuses larger headers ("header too large").
inline constexpr uint64_t kSafetensorsMaxHeaderSize = 100'000'000;

struct SafetensorsTensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // first byte, relative to the data buffer
  uint64_t end = 0;    // one past the last byte

  uint64_t num_bytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;  // "__metadata__"; empty if absent
  std::vector<SafetensorsTensorInfo> tensors;   // sorted by (begin, end, name)
  uint64_t data_start = 0;                      // file offset of the data buffer: 8 + N
};

// Parses and validates the header of a whole safetensors file held in `file`.
// Pure: reads only `file`, so fuzzers can call it directly. Every error message
// starts with "safetensors '<source>': " and names the offending tensor or key.
// Returns
//   DataLoss         the file is shorter than 8 bytes ("file too short"); the
//                    header runs past the end of the file ("truncated header");
//                    the header does not start with '{', is not valid UTF-8
//                    JSON, is not an object, repeats a key, or nests deeper
//                    than a valid header; "__metadata__" is not an object of
//                    strings; a tensor entry is not an object, lacks or has
//                    extra fields, has a non-string dtype, a shape that is not
//                    an array of non-negative int64 integers or whose byte size
//                    overflows, data_offsets that are not two non-negative
//                    integers with begin <= end, or a byte size that differs
//                    from product(shape) * dtype size; the tensors, sorted by
//                    offset, do not start at 0 or leave a hole or overlap; bytes
//                    follow the last tensor.
//   InvalidArgument  N > kSafetensorsMaxHeaderSize ("header too large"); an
//                    unknown dtype string.
//   Unimplemented    a safetensors dtype gquant does not hold (F4, C64, ...).
//   OutOfRange       a tensor ends past the end of the data buffer.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::span<const std::byte> file,
                                                         std::string_view source);

// A memory-mapped, validated safetensors file. Copies are cheap and share the
// mapping, which stays alive while any copy or returned Tensor does.
// Immutable after Open, so it may be used from several threads at once.
class SafetensorsFile {
 public:
  // Maps `path` and validates it with ParseSafetensorsHeader (source = path).
  // Returns the codes of MappedFile::Open and ParseSafetensorsHeader.
  // Symlinks are followed (see MappedFile::Open).
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const;
  const std::map<std::string, std::string>& metadata() const;
  // In file order (ascending offsets).
  const std::vector<SafetensorsTensorInfo>& tensors() const;
  // File offset of the data buffer.
  uint64_t data_start() const;

  // nullptr if there is no tensor called `name`. O(1).
  const SafetensorsTensorInfo* Find(std::string_view name) const;

  // The tensor `name` as a zero-copy view into the mapping. A payload that is
  // not aligned to its element size (files from writers that do not pad the
  // header) is copied into an owned, aligned tensor instead.
  // Returns NotFound (naming the file) if there is no such tensor,
  // ResourceExhausted if a misaligned payload cannot be copied, DataLoss if
  // the file was truncated since Open (MappedFile::CheckNotTruncated; a
  // truncation after Get returns can still raise SIGBUS on access).
  absl::StatusOr<Tensor> Get(std::string_view name) const;

  // Calls `fn` on every tensor in file order, then tells the kernel that the
  // tensor's pages may be dropped, so resident memory stays near one tensor
  // while streaming a large file. Tensors stay valid after `fn` returns (the
  // pages are re-read from the file on access). Stops at and returns the
  // first error of `fn` or Get.
  absl::Status ForEachTensor(const std::function<absl::Status(const Tensor&)>& fn) const;

  // Tells the kernel the pages of tensor `name` may be dropped (they are
  // re-read on access): for callers that stream with Get. No-op when unknown.
  void Release(std::string_view name) const;

 private:
  struct State;
  explicit SafetensorsFile(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  absl::StatusOr<Tensor> MakeTensor(const SafetensorsTensorInfo& info) const;

  std::shared_ptr<const State> state_;
};

struct SafetensorsTensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
};

// Writes a safetensors file whose layout is fixed up front, so tensors can be
// produced in any order (e.g. by parallel quantization) without buffering them.
// The file appears at `path` only on a successful Commit. Not thread-safe:
// serialize calls (the payloads themselves may be produced in parallel).
//
// Layout, as the reference writer: tensors sorted by dtype in the reference's
// alignment order, widest first (U64 I64 F64 F32 U32 I32 BF16 F16 U16 I16
// F8_E4M3 F8_E5M2 I8 U8 BOOL), then by name (bytewise); offsets back to back;
// compact JSON with "__metadata__" first (omitted when `metadata` is empty),
// then the tensors in layout order, each as {"dtype","shape","data_offsets"};
// the JSON padded with spaces so the data buffer starts 8-byte aligned.
// Metadata keys are written in sorted order (the reference uses hash order,
// so files with 2+ metadata keys may differ from it in key order only).
class SafetensorsWriter {
 public:
  // Validates `specs` and `metadata` and writes the header to a temporary file.
  // Returns InvalidArgument for an empty, duplicate or "__metadata__" tensor
  // name, a name or metadata string that is not valid UTF-8, an invalid dtype,
  // a negative dimension, a byte size that overflows, or a header larger than
  // kSafetensorsMaxHeaderSize; the codes of AtomicFileWriter::Create/Write.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<SafetensorsTensorSpec> specs,
      std::map<std::string, std::string> metadata);

  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Writes the payload of tensor `name` (little-endian, row-major bytes).
  // Returns NotFound for an unknown name, InvalidArgument if bytes.size() is
  // not the tensor's byte size, FailedPrecondition if it was already written;
  // the codes of AtomicFileWriter::WriteAt.
  absl::Status WriteTensor(std::string_view name, std::span<const std::byte> bytes);

  // Moves the finished file onto `path`.
  // Returns FailedPrecondition (listing them) if some tensors were not
  // written, in which case nothing is renamed and writing may continue;
  // the codes of AtomicFileWriter::Commit.
  absl::Status Commit();

  // The layout being written (tensors in file order).
  const SafetensorsHeader& header() const { return header_; }
  // The temporary file the bytes go to until Commit (AtomicFileWriter).
  const std::string& temp_path() const { return file_->temp_path(); }

 private:
  SafetensorsWriter() = default;

  std::string path_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> header_.tensors index
  std::vector<bool> written_;
  std::unique_ptr<AtomicFileWriter> file_;
};

// Writes `tensors` (each under its name()) and `metadata` to `path`.
// Returns the codes of SafetensorsWriter::Create, WriteTensor and Commit.
absl::Status WriteSafetensors(const std::string& path, std::span<const Tensor> tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace gquant

#endif  // GQUANT_SAFETENSORS_H_
