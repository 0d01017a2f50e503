// GGUF reader (spec/gguf.md §1): GgufValue accessors, the ggml type size table
// and GgufFile::Parse with ggml's strict checks.
#include <array>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"
#include "gquant/mapped_file.h"
#include "gquant/status.h"

namespace gquant {
namespace {

// Lower bounds on record sizes, used to reject absurd counts before allocating.
constexpr uint64_t kHeaderBytes = 24;
constexpr uint64_t kMinTensorInfoBytes = 24;
constexpr uint64_t kMinKvBytes = 12;
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 30;  // ggml's cap

uint64_t Pad(uint64_t x, uint64_t n) { return (x + n - 1) / n * n; }

bool IsInteger(const GgufValue::Variant& v) {
  return std::visit(
      [](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        return std::is_integral_v<T> && !std::is_same_v<T, bool>;
      },
      v);
}

absl::Status WrongType(GgufValueType got, std::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrFormat("GGUF value: expected %s, but got %s", expected, GgufValueTypeName(got)));
}

// Bounds-checked little-endian reads over the file bytes. Host must be LE.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> bytes) : bytes_(bytes) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      return absl::OutOfRangeError(absl::StrFormat(
          "%s at offset %d: expected %d bytes, but only %d remain", what, pos_, n, remaining()));
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::StatusOr<T> Read(std::string_view what) {
    GQ_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  absl::StatusOr<std::string> ReadString(std::string_view what) {
    GQ_ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(what));
    if (len > remaining()) {
      return absl::OutOfRangeError(
          absl::StrFormat("%s at offset %d: expected length <= %d (bytes left), but got %d", what,
                          pos_ - 8, remaining(), len));
    }
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  std::span<const std::byte> bytes_;
  uint64_t pos_ = 0;
};

uint64_t MinValueBytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kString:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kArray:
      return 12;
  }
  return 1;
}

absl::StatusOr<GgufValueType> ReadType(Cursor& in, const std::string& key) {
  GQ_ASSIGN_OR_RETURN(uint32_t id, in.Read<uint32_t>("value type"));
  if (id > static_cast<uint32_t>(GgufValueType::kFloat64)) {
    return absl::DataLossError(
        absl::StrFormat("value type of key '%s': expected an id in 0..12, but got %d", key, id));
  }
  return static_cast<GgufValueType>(id);
}

// `values_left` is the rest of the file's kGgufMaxMetadataValues budget.
absl::StatusOr<GgufValue> ReadValue(Cursor& in, GgufValueType type, const std::string& key,
                                    int depth, uint64_t* values_left) {
  switch (type) {
    case GgufValueType::kUint8: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<uint8_t>("UINT8 value"));
      return GgufValue(v);
    }
    case GgufValueType::kInt8: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<int8_t>("INT8 value"));
      return GgufValue(v);
    }
    case GgufValueType::kUint16: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<uint16_t>("UINT16 value"));
      return GgufValue(v);
    }
    case GgufValueType::kInt16: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<int16_t>("INT16 value"));
      return GgufValue(v);
    }
    case GgufValueType::kUint32: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<uint32_t>("UINT32 value"));
      return GgufValue(v);
    }
    case GgufValueType::kInt32: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<int32_t>("INT32 value"));
      return GgufValue(v);
    }
    case GgufValueType::kFloat32: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<float>("FLOAT32 value"));
      return GgufValue(v);
    }
    case GgufValueType::kBool: {
      // ggml reads any non-zero byte as true.
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<uint8_t>("BOOL value"));
      return GgufValue(v != 0);
    }
    case GgufValueType::kString: {
      GQ_ASSIGN_OR_RETURN(auto v, in.ReadString("string value"));
      return GgufValue(std::move(v));
    }
    case GgufValueType::kUint64: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<uint64_t>("UINT64 value"));
      return GgufValue(v);
    }
    case GgufValueType::kInt64: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<int64_t>("INT64 value"));
      return GgufValue(v);
    }
    case GgufValueType::kFloat64: {
      GQ_ASSIGN_OR_RETURN(auto v, in.Read<double>("FLOAT64 value"));
      return GgufValue(v);
    }
    case GgufValueType::kArray:
      break;
  }
  if (depth >= kGgufMaxArrayDepth) {
    return absl::UnimplementedError(
        absl::StrFormat("array nesting of key '%s': expected at most %d levels, but got more", key,
                        kGgufMaxArrayDepth));
  }
  GQ_ASSIGN_OR_RETURN(GgufValueType elem_type, ReadType(in, key));
  GQ_ASSIGN_OR_RETURN(uint64_t count, in.Read<uint64_t>("array count"));
  const uint64_t min_bytes = MinValueBytes(elem_type);
  if (count > in.remaining() / min_bytes) {
    return absl::OutOfRangeError(absl::StrFormat(
        "array count of key '%s': expected at most %d %s elements (bytes left), but got %d", key,
        in.remaining() / min_bytes, GgufValueTypeName(elem_type), count));
  }
  if (count > kMaxArrayElements) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "array count of key '%s': expected at most %d, but got %d", key, kMaxArrayElements, count));
  }
  // Each element becomes a GgufValue of ~40 bytes whatever its size in the
  // file (1 byte for UINT8), so the file size alone does not bound memory.
  if (count > *values_left) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "array count of key '%s': expected at most %d metadata values in the file, but this "
        "array alone would leave %d for its %d elements",
        key, kGgufMaxMetadataValues, *values_left, count));
  }
  *values_left -= count;
  GgufArray array;
  array.element_type = elem_type;
  array.elements.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    GQ_ASSIGN_OR_RETURN(GgufValue v, ReadValue(in, elem_type, key, depth + 1, values_left));
    array.elements.push_back(std::move(v));
  }
  return GgufValue::MakeArray(elem_type, std::move(array.elements));
}

absl::Status CheckVersion(uint32_t version) {
  if (version == 2 || version == 3) return absl::OkStatus();
  if (version == 0x02000000 || version == 0x03000000) {
    return absl::UnimplementedError(absl::StrFormat(
        "GGUF version: expected 2 or 3, but got 0x%08x (a big-endian file?)", version));
  }
  if (version == 1 || (version > 3 && version <= 0xFFFF)) {
    return absl::UnimplementedError(
        absl::StrFormat("GGUF version: expected 2 or 3, but got %d", version));
  }
  return absl::DataLossError(
      absl::StrFormat("GGUF version: expected 2 or 3, but got 0x%08x (corrupt header)", version));
}

absl::StatusOr<GgufTensorInfo> ReadTensorInfo(Cursor& in, uint32_t alignment) {
  GgufTensorInfo info;
  GQ_ASSIGN_OR_RETURN(info.name, in.ReadString("tensor name"));
  const std::string what = absl::StrCat("tensor '", info.name, "'");
  if (info.name.empty() || info.name.size() > kGgufMaxTensorName) {
    return absl::DataLossError(absl::StrFormat("%s name: expected 1..%d bytes, but got %d", what,
                                               kGgufMaxTensorName, info.name.size()));
  }
  GQ_ASSIGN_OR_RETURN(uint32_t n_dims, in.Read<uint32_t>("tensor n_dims"));
  if (n_dims == 0 || n_dims > kGgufMaxDims) {
    return absl::DataLossError(
        absl::StrFormat("%s n_dims: expected 1..%d, but got %d", what, kGgufMaxDims, n_dims));
  }
  int64_t elements = 1;
  for (uint32_t i = 0; i < n_dims; ++i) {
    GQ_ASSIGN_OR_RETURN(int64_t d, in.Read<int64_t>("tensor dim"));
    if (d < 0) {
      return absl::DataLossError(
          absl::StrFormat("%s dim %d: expected >= 0, but got %d", what, i, d));
    }
    if (d != 0 && elements > std::numeric_limits<int64_t>::max() / d) {
      return absl::DataLossError(
          absl::StrFormat("%s dims: expected an element count that fits int64, but got dim %d = "
                          "%d after %d elements",
                          what, i, d, elements));
    }
    elements *= d;
    info.dims.push_back(d);
  }
  GQ_ASSIGN_OR_RETURN(info.type, in.Read<uint32_t>("tensor type"));
  auto bytes = GgufTensorBytes(info.dims, info.type);
  if (!bytes.ok()) {
    const auto code = bytes.status().code() == absl::StatusCode::kUnimplemented
                          ? absl::StatusCode::kUnimplemented
                          : absl::StatusCode::kDataLoss;
    return absl::Status(code, absl::StrCat(what, ": ", bytes.status().message()));
  }
  info.num_bytes = *bytes;
  GQ_ASSIGN_OR_RETURN(info.offset, in.Read<uint64_t>("tensor offset"));
  if (info.offset % alignment != 0) {
    return absl::DataLossError(absl::StrFormat("%s offset: expected a multiple of %d, but got %d",
                                               what, alignment, info.offset));
  }
  return info;
}

}  // namespace

const char* GgufValueTypeName(GgufValueType type) {
  static constexpr const char* kNames[] = {"UINT8",  "INT8",    "UINT16", "INT16",  "UINT32",
                                           "INT32",  "FLOAT32", "BOOL",   "STRING", "ARRAY",
                                           "UINT64", "INT64",   "FLOAT64"};
  const auto id = static_cast<uint32_t>(type);
  return id < std::size(kNames) ? kNames[id] : "UNKNOWN";
}

absl::StatusOr<GgufValue> GgufValue::MakeArray(GgufValueType element_type,
                                               std::vector<GgufValue> elements) {
  if (static_cast<uint32_t>(element_type) > static_cast<uint32_t>(GgufValueType::kFloat64)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF array element type: expected an id in 0..12, but got %d", element_type));
  }
  for (size_t i = 0; i < elements.size(); ++i) {
    if (elements[i].type() != element_type) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF array element %d: expected %s, but got %s", i,
                          GgufValueTypeName(element_type), GgufValueTypeName(elements[i].type())));
    }
  }
  return GgufValue(GgufArray{element_type, std::move(elements)});
}

absl::StatusOr<uint64_t> GgufValue::AsUint64() const {
  if (!IsInteger(value_)) return WrongType(type(), "an integer");
  return std::visit(
      [this](const auto& x) -> absl::StatusOr<uint64_t> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T>) {
          if constexpr (std::is_signed_v<T>) {
            if (x < 0) {
              return absl::InvalidArgumentError(absl::StrFormat(
                  "GGUF %s value: expected >= 0, but got %d", GgufValueTypeName(type()), x));
            }
          }
          return static_cast<uint64_t>(x);
        }
        return uint64_t{0};
      },
      value_);
}

absl::StatusOr<int64_t> GgufValue::AsInt64() const {
  if (!IsInteger(value_)) return WrongType(type(), "an integer");
  if (const auto* u = std::get_if<uint64_t>(&value_)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GGUF UINT64 value: expected <= INT64_MAX, but got %d", *u));
    }
    return static_cast<int64_t>(*u);
  }
  return std::visit(
      [](const auto& x) -> int64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T>) return static_cast<int64_t>(x);
        return 0;
      },
      value_);
}

absl::StatusOr<double> GgufValue::AsDouble() const {
  if (const auto* f = std::get_if<float>(&value_)) return *f;
  if (const auto* d = std::get_if<double>(&value_)) return *d;
  return WrongType(type(), "FLOAT32 or FLOAT64");
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  if (const auto* b = std::get_if<bool>(&value_)) return *b;
  return WrongType(type(), "BOOL");
}

absl::StatusOr<std::string_view> GgufValue::AsString() const {
  if (const auto* s = std::get_if<std::string>(&value_)) return std::string_view(*s);
  return WrongType(type(), "STRING");
}

absl::StatusOr<std::span<const GgufValue>> GgufValue::AsArray() const {
  if (const auto* a = array()) return std::span<const GgufValue>(a->elements);
  return WrongType(type(), "ARRAY");
}

absl::StatusOr<uint64_t> GgufTensorBytes(std::span<const int64_t> dims, uint32_t type) {
  const GgmlTypeTraits* traits = FindGgmlType(type);
  if (traits == nullptr) {
    return absl::UnimplementedError(
        absl::StrFormat("ggml type: expected a supported type id (spec §2), but got %d", type));
  }
  if (dims.empty()) {
    return absl::InvalidArgumentError("dims: expected at least 1, but got 0");
  }
  const int64_t block = traits->block_elements, block_bytes = traits->block_bytes;
  for (int64_t d : dims) {
    if (d < 0)
      return absl::InvalidArgumentError(absl::StrFormat("dim: expected >= 0, but got %d", d));
  }
  if (dims[0] % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ne[0]: expected a multiple of the block size %d of type %d, but got %d",
                        block, type, dims[0]));
  }
  // Blocks never span rows: bytes = ne[0]/block * block_bytes * ne[1] * ...
  int64_t bytes = dims[0] / block;
  bool overflow = __builtin_mul_overflow(bytes, block_bytes, &bytes);
  for (size_t i = 1; i < dims.size() && !overflow; ++i) {
    overflow = __builtin_mul_overflow(bytes, dims[i], &bytes);
  }
  if (overflow) {
    return absl::InvalidArgumentError("byte size: expected to fit int64, but it overflows");
  }
  return static_cast<uint64_t>(bytes);
}

absl::StatusOr<GgufFile> GgufFile::Open(const std::string& path) {
  GQ_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> mapped, MappedFile::Open(path));
  const std::span<const std::byte> bytes = mapped->bytes();
  GQ_ASSIGN_OR_RETURN(GgufFile file, Parse(bytes, path, mapped));
  file.mapped_ = std::move(mapped);
  return file;
}

void GgufFile::ReleaseTensorData(const GgufTensorInfo& info) const {
  if (mapped_ != nullptr) mapped_->AdviseDone(TensorData(info));
}

absl::Status GgufFile::CheckNotTruncated() const {
  return mapped_ == nullptr ? absl::OkStatus() : mapped_->CheckNotTruncated();
}

absl::StatusOr<GgufFile> GgufFile::Parse(std::span<const std::byte> bytes, std::string_view source,
                                         std::shared_ptr<const void> keep_alive) {
  const std::string src(source);
  auto fail = [&](const absl::Status& s) { return Annotate(s, "GGUF file '", src, "'"); };
  GgufFile file;
  file.source_ = src;
  file.bytes_ = bytes;
  file.keep_alive_ = std::move(keep_alive);
  Cursor in(bytes);
  if (bytes.size() < kHeaderBytes) {
    return fail(absl::OutOfRangeError(absl::StrFormat(
        "header: expected at least %d bytes, but the file has %d", kHeaderBytes, bytes.size())));
  }
  const uint32_t magic = *in.Read<uint32_t>("magic");
  if (magic != kGgufMagic) {
    return fail(absl::DataLossError(
        absl::StrFormat("magic: expected 0x%08x (\"GGUF\"), but got 0x%08x", kGgufMagic, magic)));
  }
  file.version_ = *in.Read<uint32_t>("version");
  if (absl::Status s = CheckVersion(file.version_); !s.ok()) return fail(s);
  const int64_t tensor_count = *in.Read<int64_t>("tensor_count");
  const int64_t kv_count = *in.Read<int64_t>("kv_count");
  const uint64_t body = bytes.size() - kHeaderBytes;
  if (tensor_count < 0 || static_cast<uint64_t>(tensor_count) > body / kMinTensorInfoBytes) {
    return fail(absl::DataLossError(
        absl::StrFormat("tensor_count: expected 0..%d (what %d bytes can hold), but got %d",
                        body / kMinTensorInfoBytes, body, tensor_count)));
  }
  if (kv_count < 0 ||
      static_cast<uint64_t>(kv_count) > (body - tensor_count * kMinTensorInfoBytes) / kMinKvBytes) {
    return fail(absl::DataLossError(absl::StrFormat(
        "kv_count: expected 0..%d (what %d bytes can hold), but got %d",
        (body - tensor_count * kMinTensorInfoBytes) / kMinKvBytes, body, kv_count)));
  }

  if (static_cast<uint64_t>(kv_count) > kGgufMaxMetadataValues) {
    return fail(absl::ResourceExhaustedError(
        absl::StrFormat("kv_count: expected at most %d metadata values, but got %d",
                        kGgufMaxMetadataValues, kv_count)));
  }
  uint64_t values_left = kGgufMaxMetadataValues - kv_count;
  file.metadata_.reserve(kv_count);
  for (int64_t i = 0; i < kv_count; ++i) {
    auto key = in.ReadString("metadata key");
    if (!key.ok()) return fail(Annotate(key.status(), "metadata entry ", i));
    if (key->empty()) {
      return fail(absl::DataLossError(
          absl::StrFormat("metadata entry %d key: expected a non-empty string, but got ''", i)));
    }
    if (file.metadata_index_.count(*key)) {
      return fail(absl::DataLossError(absl::StrFormat(
          "metadata key '%s': expected unique keys, but got a duplicate (entry %d)", *key, i)));
    }
    auto type = ReadType(in, *key);
    if (!type.ok()) return fail(type.status());
    auto value = ReadValue(in, *type, *key, 0, &values_left);
    if (!value.ok()) return fail(Annotate(value.status(), "metadata key '", *key, "'"));
    file.metadata_index_.emplace(*key, file.metadata_.size());
    file.metadata_.emplace_back(std::move(*key), std::move(*value));
  }

  if (const GgufValue* a = file.Find("general.alignment")) {
    const auto* v = std::get_if<uint32_t>(&a->variant());
    if (v == nullptr) {
      return fail(absl::DataLossError(
          absl::StrFormat("metadata key 'general.alignment': expected UINT32, but got %s",
                          GgufValueTypeName(a->type()))));
    }
    if (*v == 0 || (*v & (*v - 1)) != 0) {
      return fail(absl::DataLossError(absl::StrFormat(
          "metadata key 'general.alignment': expected a power of two, but got %d", *v)));
    }
    file.alignment_ = *v;
  }

  file.tensors_.reserve(tensor_count);
  uint64_t expected_offset = 0;
  for (int64_t i = 0; i < tensor_count; ++i) {
    auto info = ReadTensorInfo(in, file.alignment_);
    if (!info.ok()) return fail(Annotate(info.status(), "tensor info ", i));
    if (file.tensor_index_.count(info->name)) {
      return fail(absl::DataLossError(absl::StrFormat(
          "tensor '%s': expected unique names, but got a duplicate (tensor info %d)", info->name,
          i)));
    }
    // ggml: offsets must equal the running sum of padded sizes, in info order.
    if (info->offset != expected_offset) {
      return fail(absl::DataLossError(absl::StrFormat(
          "tensor '%s' offset: expected %d, but got %d (%s)", info->name, expected_offset,
          info->offset,
          info->offset < expected_offset ? "overlaps the previous tensor" : "leaves a gap")));
    }
    expected_offset += Pad(info->num_bytes, file.alignment_);
    file.tensor_index_.emplace(info->name, file.tensors_.size());
    file.tensors_.push_back(std::move(*info));
  }

  file.data_start_ = Pad(in.pos(), file.alignment_);
  if (tensor_count == 0) return file;
  for (const GgufTensorInfo& t : file.tensors_) {
    const uint64_t end = file.data_start_ + t.offset + t.num_bytes;
    if (end > bytes.size()) {
      return fail(absl::OutOfRangeError(
          absl::StrFormat("tensor '%s' data: expected to end by file size %d, but ends at %d",
                          t.name, bytes.size(), end)));
    }
  }
  // ggml reads the padding after the last tensor too and rejects files without it.
  if (file.data_start_ + expected_offset > bytes.size()) {
    return fail(absl::OutOfRangeError(absl::StrFormat(
        "tensor '%s' padding: expected the file to hold %d bytes, but it has %d",
        file.tensors_.back().name, file.data_start_ + expected_offset, bytes.size())));
  }
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_index_.find(std::string(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

namespace {
template <typename T, typename F>
absl::StatusOr<T> GetTyped(const GgufFile& file, std::string_view key, F get) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("GGUF file '%s': metadata key '%s' not found", file.source(), key));
  }
  auto r = get(*v);
  if (!r.ok())
    return Annotate(r.status(), "GGUF file '", file.source(), "' key '", std::string(key), "'");
  return T(*r);
}
}  // namespace

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  return GetTyped<uint64_t>(*this, key, [](const GgufValue& v) { return v.AsUint64(); });
}
absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  return GetTyped<std::string>(*this, key, [](const GgufValue& v) { return v.AsString(); });
}
absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  return GetTyped<double>(*this, key, [](const GgufValue& v) { return v.AsDouble(); });
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace gquant
