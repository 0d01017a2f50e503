// GGUF v2/v3 container: a validating reader over a memory map and an atomic
// writer. Layout and checks follow spec/gguf.md §1 (ggml's gguf.cpp).
//
// Error codes (every message names the file and the key or tensor):
//   DataLoss       corrupt file: bad magic, negative or impossible counts,
//                  duplicate keys or tensor names, bad alignment, bad dims,
//                  offsets that are misaligned, leave gaps or overlap
//   OutOfRange     a string, array or tensor that runs past the end of the file
//   ResourceExhausted  more metadata values than kGgufMaxMetadataValues
//   Unimplemented  GGUF version other than 2 or 3, big-endian files, unknown or
//                  removed ggml type ids, arrays nested deeper than kGgufMaxArrayDepth
//   InvalidArgument  typed accessor on a value of another type; bad writer input
//   NotFound       missing key or tensor
#ifndef GQUANT_GGUF_H_
#define GQUANT_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant {

// Metadata value types; the enumerator values are the wire ids (spec §1.4).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "UINT8", "STRING", ...; "UNKNOWN" for ids outside the enum.
const char* GgufValueTypeName(GgufValueType type);

inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as LE u32
inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr int kGgufMaxDims = 4;            // GGML_MAX_DIMS
inline constexpr size_t kGgufMaxTensorName = 63;  // GGML_MAX_NAME - 1
// An array of arrays counts 2 levels. The format allows nesting, but note that
// ggml's own reader rejects any array whose element type is ARRAY.
inline constexpr int kGgufMaxArrayDepth = 4;
// Metadata values (keys plus array elements at every level) one file may hold:
// each takes ~40 bytes in memory even when the file spends 1 byte on it. A
// Gemma 4 tokenizer needs ~1M; the cap bounds a hostile file to ~700 MB.
inline constexpr uint64_t kGgufMaxMetadataValues = uint64_t{1} << 24;

class GgufValue;
class MappedFile;

// An ARRAY value: every element has type `element_type`.
struct GgufArray {
  GgufValueType element_type = GgufValueType::kUint8;
  std::vector<GgufValue> elements;
  bool operator==(const GgufArray&) const = default;
};

class GgufValue {
 public:
  // Alternative index == wire type id.
  using Variant = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, GgufArray, uint64_t, int64_t, double>;

  GgufValue() : value_(uint8_t{0}) {}
  explicit GgufValue(uint8_t v) : value_(v) {}
  explicit GgufValue(int8_t v) : value_(v) {}
  explicit GgufValue(uint16_t v) : value_(v) {}
  explicit GgufValue(int16_t v) : value_(v) {}
  explicit GgufValue(uint32_t v) : value_(v) {}
  explicit GgufValue(int32_t v) : value_(v) {}
  explicit GgufValue(float v) : value_(v) {}
  explicit GgufValue(bool v) : value_(v) {}
  explicit GgufValue(std::string v) : value_(std::move(v)) {}
  explicit GgufValue(const char* v) : value_(std::string(v)) {}
  explicit GgufValue(uint64_t v) : value_(v) {}
  explicit GgufValue(int64_t v) : value_(v) {}
  explicit GgufValue(double v) : value_(v) {}

  // An ARRAY of `element_type`. InvalidArgument if an element has another type.
  static absl::StatusOr<GgufValue> MakeArray(GgufValueType element_type,
                                             std::vector<GgufValue> elements);
  // An ARRAY of scalars or strings, e.g. ArrayOf<int32_t>({1, 2}).
  template <typename T>
  static GgufValue ArrayOf(const std::vector<T>& values) {
    GgufArray array;
    array.element_type = static_cast<GgufValueType>(Variant(T{}).index());
    for (const T& v : values) array.elements.push_back(GgufValue(v));
    return GgufValue(std::move(array));
  }

  GgufValueType type() const { return static_cast<GgufValueType>(value_.index()); }
  const Variant& variant() const { return value_; }

  // Any integer type whose value fits; InvalidArgument otherwise.
  absl::StatusOr<uint64_t> AsUint64() const;
  absl::StatusOr<int64_t> AsInt64() const;
  // FLOAT32 or FLOAT64.
  absl::StatusOr<double> AsDouble() const;
  absl::StatusOr<bool> AsBool() const;
  // The returned view lives as long as this value.
  absl::StatusOr<std::string_view> AsString() const;
  absl::StatusOr<std::span<const GgufValue>> AsArray() const;
  // The array, or nullptr if this is not an ARRAY.
  const GgufArray* array() const { return std::get_if<GgufArray>(&value_); }

  bool operator==(const GgufValue&) const = default;

 private:
  explicit GgufValue(GgufArray array) : value_(std::move(array)) {}

  Variant value_;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // GGUF order: innermost (contiguous) first
  uint32_t type = 0;          // ggml type id (spec §2)
  uint64_t offset = 0;        // relative to GgufFile::data_start()
  uint64_t num_bytes = 0;

  // PyTorch shape: dims reversed (spec §8).
  std::vector<int64_t> TorchShape() const { return {dims.rbegin(), dims.rend()}; }
};

// Bytes of a tensor of `type` with GGUF dims `dims` (spec §1.5). Unimplemented
// for unknown or removed type ids, InvalidArgument if dims[0] is not a multiple
// of the block size, a dim is negative, or the size overflows.
absl::StatusOr<uint64_t> GgufTensorBytes(std::span<const int64_t> dims, uint32_t type);

class GgufFile {
 public:
  // Maps and parses `path`. NotFound if it does not exist; see the top of this
  // file for the parse errors.
  static absl::StatusOr<GgufFile> Open(const std::string& path);
  // Parses `bytes` (`source` names them in messages). TensorData views point
  // into `bytes`; `keep_alive` is held to keep them valid.
  static absl::StatusOr<GgufFile> Parse(std::span<const std::byte> bytes, std::string_view source,
                                        std::shared_ptr<const void> keep_alive = nullptr);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_start() const { return data_start_; }
  const std::string& source() const { return source_; }

  // Key/value pairs in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;
  // NotFound for a missing key, InvalidArgument for a value of the wrong type.
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;

  // Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;
  // `info` must come from tensors() of this file.
  std::span<const std::byte> TensorData(const GgufTensorInfo& info) const {
    return bytes_.subspan(data_start_ + info.offset, info.num_bytes);
  }
  // Lets the kernel drop the tensor's pages once read (files from Open only),
  // so streaming a large file keeps memory near one tensor.
  void ReleaseTensorData(const GgufTensorInfo& info) const;
  // For a file from Open: DataLoss once the file shrank below its size at
  // Open, when reading TensorData would raise SIGBUS (MappedFile has the
  // details). Call it before reading tensor bytes; OK for Parse()d bytes.
  absl::Status CheckNotTruncated() const;

 private:
  GgufFile() = default;

  std::string source_;
  std::span<const std::byte> bytes_;
  std::shared_ptr<const void> keep_alive_;
  std::shared_ptr<const MappedFile> mapped_;  // set by Open
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_start_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

class AtomicFileWriter;

// Writes a GGUF v3 file. Usage: SetMetadata / AddTensor, then WriteTensorData
// for every tensor in any order, then Commit. The header is laid out at the
// first WriteTensorData (or at Commit), using general.alignment if set (it must
// then be a UINT32 power of two). Padding is zeros, after the tensor infos and
// after every tensor including the last (ggml's writer and reader agree).
class GgufWriter {
 public:
  static absl::StatusOr<std::unique_ptr<GgufWriter>> Create(const std::string& path);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Insertion order is kept; replacing a key keeps its position. Calling this
  // after the first WriteTensorData makes Commit fail (FailedPrecondition).
  void SetMetadata(std::string key, GgufValue value);
  // InvalidArgument for a bad name, dims, or num_bytes that does not match
  // dims and type; Unimplemented for an unknown type; FailedPrecondition after
  // the first WriteTensorData.
  absl::Status AddTensor(std::string name, std::vector<int64_t> dims, uint32_t type,
                         uint64_t num_bytes);
  // NotFound for an undeclared name, InvalidArgument for a size mismatch,
  // FailedPrecondition if already written.
  absl::Status WriteTensorData(std::string_view name, std::span<const std::byte> data);
  // FailedPrecondition if a declared tensor was not written.
  absl::Status Commit();

 private:
  explicit GgufWriter(std::unique_ptr<AtomicFileWriter> file);
  absl::Status Freeze();

  std::unique_ptr<AtomicFileWriter> file_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::vector<bool> written_;
  bool frozen_ = false;
  bool metadata_after_freeze_ = false;
  absl::Status freeze_status_;
  uint64_t data_start_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
};

}  // namespace gquant

#endif  // GQUANT_GGUF_H_
