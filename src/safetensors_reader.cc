// safetensors reader: header validation (ParseSafetensorsHeader) and the
// memory-mapped SafetensorsFile.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/mapped_file.h"
#include "gquant/safetensors.h"
#include "gquant/status.h"

namespace gquant {
namespace {

using Json = nlohmann::json;

// root object > tensor entry > shape / data_offsets array.
constexpr int kMaxHeaderDepth = 3;
// Longest JSON fragment quoted in an error message.
constexpr size_t kMaxQuotedJson = 80;

// nlohmann keeps the last of two equal keys without telling; the spec forbids
// duplicates, so this parser callback records them. It also refuses nesting
// deeper than a valid header, discarding such values so that a hostile header
// cannot build a huge tree.
class HeaderParseGuard {
 public:
  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        // `depth` counts the open containers; the new one is one deeper.
        if (depth + 1 > kMaxHeaderDepth) {
          SetError(absl::StrFormat("expected JSON nested at most %d deep, but got deeper",
                                   kMaxHeaderDepth));
          return false;
        }
        if (event == Json::parse_event_t::object_start) keys_[depth + 1].clear();
        return true;
      case Json::parse_event_t::key:
        // Keys inside discarded (too deep) objects are irrelevant.
        if (depth > kMaxHeaderDepth) return false;
        if (!keys_[depth].insert(parsed.get<std::string>()).second) {
          SetError(absl::StrFormat("duplicate key '%s': expected each key once, but got it twice",
                                   parsed.get<std::string>()));
        }
        return true;
      default:
        return true;
    }
  }

  const std::string& error() const { return error_; }

 private:
  void SetError(std::string error) {
    if (error_.empty()) error_ = std::move(error);
  }

  std::array<std::set<std::string>, kMaxHeaderDepth + 1> keys_;
  std::string error_;
};

std::string Quote(const Json& value) {
  std::string text = value.dump();
  if (text.size() > kMaxQuotedJson) text = text.substr(0, kMaxQuotedJson) + "...";
  return text;
}

absl::Status TensorError(absl::StatusCode code, std::string_view name, std::string_view message) {
  return absl::Status(code, absl::StrFormat("tensor '%s': %s", name, message));
}

// A non-negative JSON integer. nlohmann parses "7" as unsigned and "-0" as a
// signed zero; floats (also "1e3" and integers beyond uint64) are rejected.
bool AsUnsigned(const Json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

absl::Status ParseMetadata(const Json& value, std::map<std::string, std::string>* metadata) {
  if (!value.is_object()) {
    return absl::DataLossError(
        absl::StrCat("'__metadata__': expected an object of strings, but got ", value.type_name()));
  }
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return absl::DataLossError(absl::StrCat("'__metadata__' key '", key,
                                              "': expected a string value, but got ",
                                              item.type_name(), " ", Quote(item)));
    }
    metadata->emplace(key, item.get<std::string>());
  }
  return absl::OkStatus();
}

// Checks one tensor entry on its own; the layout is checked afterwards.
absl::StatusOr<SafetensorsTensorInfo> ParseTensorEntry(const std::string& name, const Json& value,
                                                       uint64_t buffer_size) {
  using absl::StatusCode;
  if (!value.is_object()) {
    return TensorError(StatusCode::kDataLoss, name,
                       absl::StrCat("expected an object, but got ", value.type_name()));
  }
  for (const auto& [key, unused] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return TensorError(StatusCode::kDataLoss, name,
                         absl::StrCat("expected the fields dtype, shape and data_offsets, but got "
                                      "the extra field '",
                                      key, "'"));
    }
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(field)) {
      return TensorError(StatusCode::kDataLoss, name, absl::StrCat("missing field '", field, "'"));
    }
  }
  SafetensorsTensorInfo info;
  info.name = name;

  const Json& dtype = value["dtype"];
  if (!dtype.is_string()) {
    return TensorError(StatusCode::kDataLoss, name,
                       absl::StrCat("dtype: expected a string, but got ", Quote(dtype)));
  }
  absl::StatusOr<DType> parsed_dtype = DTypeFromName(dtype.get<std::string>());
  if (!parsed_dtype.ok()) return Annotate(parsed_dtype.status(), "tensor '", name, "'");
  info.dtype = *parsed_dtype;

  const Json& shape = value["shape"];
  if (!shape.is_array()) {
    return TensorError(
        StatusCode::kDataLoss, name,
        absl::StrCat("shape: expected an array of non-negative integers, but got ", Quote(shape)));
  }
  for (const Json& dim : shape) {
    uint64_t size;
    if (!AsUnsigned(dim, &size) || size > static_cast<uint64_t>(INT64_MAX)) {
      return TensorError(StatusCode::kDataLoss, name,
                         absl::StrCat("shape: expected non-negative int64 dimensions, but got ",
                                      Quote(dim), " in ", Quote(shape)));
    }
    info.shape.push_back(static_cast<int64_t>(size));
  }
  absl::StatusOr<int64_t> elements = NumElements(info.shape);
  const uint64_t element_size = DTypeSize(info.dtype);
  if (!elements.ok() ||
      static_cast<uint64_t>(*elements) > std::numeric_limits<uint64_t>::max() / element_size) {
    return TensorError(StatusCode::kDataLoss, name,
                       absl::StrFormat("shape %s of %s: byte size overflows 64 bits",
                                       ShapeToString(info.shape), DTypeName(info.dtype)));
  }
  const uint64_t expected_bytes = static_cast<uint64_t>(*elements) * element_size;

  const Json& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !AsUnsigned(offsets[0], &info.begin) ||
      !AsUnsigned(offsets[1], &info.end)) {
    return TensorError(StatusCode::kDataLoss, name,
                       absl::StrCat("data_offsets: expected [begin, end] with non-negative "
                                    "integers, but got ",
                                    Quote(offsets)));
  }
  if (info.begin > info.end) {
    return TensorError(StatusCode::kDataLoss, name,
                       absl::StrFormat("data_offsets: expected begin <= end, but got [%d, %d]",
                                       info.begin, info.end));
  }
  if (info.end > buffer_size) {
    return TensorError(StatusCode::kOutOfRange, name,
                       absl::StrFormat("data_offsets [%d, %d]: expected to end within the "
                                       "%d-byte data buffer, but it ends past it",
                                       info.begin, info.end, buffer_size));
  }
  if (info.num_bytes() != expected_bytes) {
    return TensorError(StatusCode::kDataLoss, name,
                       absl::StrFormat("shape %s of %s: expected %d bytes, but data_offsets "
                                       "[%d, %d] hold %d",
                                       ShapeToString(info.shape), DTypeName(info.dtype),
                                       expected_bytes, info.begin, info.end, info.num_bytes()));
  }
  return info;
}

// The tensors, sorted by offset, must tile [0, buffer_size) exactly (spec §1.2).
absl::Status CheckLayout(const std::vector<SafetensorsTensorInfo>& tensors, uint64_t data_start,
                         uint64_t file_size) {
  uint64_t expected_begin = 0;
  const SafetensorsTensorInfo* previous = nullptr;
  for (const SafetensorsTensorInfo& t : tensors) {
    if (t.begin != expected_begin) {
      if (previous == nullptr) {
        return absl::DataLossError(absl::StrFormat(
            "tensor '%s': expected the first tensor to begin at offset 0, but got %d", t.name,
            t.begin));
      }
      return absl::DataLossError(absl::StrFormat(
          "tensors '%s' [%d, %d] and '%s' [%d, %d]: expected adjacent data, but got %s",
          previous->name, previous->begin, previous->end, t.name, t.begin, t.end,
          t.begin < expected_begin ? "an overlap" : "a hole"));
    }
    expected_begin = t.end;
    previous = &t;
  }
  const uint64_t expected_size = data_start + expected_begin;
  if (expected_size != file_size) {
    return absl::DataLossError(absl::StrFormat(
        "expected the file to end with the last tensor at byte %d, but got %d trailing bytes",
        expected_size, file_size - expected_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsHeader> ParseHeader(std::span<const std::byte> file) {
  if (file.size() < 8) {
    return absl::DataLossError(
        absl::StrFormat("file too short: expected at least 8 bytes, but got %d", file.size()));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(file[i]);
  if (header_size > kSafetensorsMaxHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("header too large: expected at most %d bytes, but got %d",
                        kSafetensorsMaxHeaderSize, header_size));
  }
  // A header running past the end means the file was cut short or is not
  // safetensors at all: corruption, hence DataLoss.
  if (8 + header_size > file.size()) {
    return absl::DataLossError(absl::StrFormat(
        "truncated header: expected %d header bytes, but the file has only %d after the "
        "length",
        header_size, file.size() - 8));
  }
  const char* text = reinterpret_cast<const char*>(file.data()) + 8;
  if (header_size == 0 || text[0] != '{') {
    return absl::DataLossError(absl::StrFormat(
        "header: expected to start with '{', but got %s",
        header_size == 0 ? "an empty header" : absl::StrFormat("byte 0x%02x", text[0] & 0xff)));
  }
  HeaderParseGuard guard;
  Json root;
  try {
    // Accepts trailing JSON whitespace (the padding); rejects invalid UTF-8.
    root = Json::parse(text, text + header_size, std::ref(guard));
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat("header: invalid JSON: ", e.what()));
  }
  if (!guard.error().empty()) return absl::DataLossError(absl::StrCat("header: ", guard.error()));
  if (!root.is_object()) {
    return absl::DataLossError(
        absl::StrCat("header: expected a JSON object, but got ", root.type_name()));
  }

  // No separate cap on the tensor count: an entry takes at least ~45 bytes, so
  // the header size limit already bounds it to ~2 million.
  SafetensorsHeader header;
  header.data_start = 8 + header_size;
  const uint64_t buffer_size = file.size() - header.data_start;
  header.tensors.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      GQ_RETURN_IF_ERROR(ParseMetadata(value, &header.metadata));
      continue;
    }
    GQ_ASSIGN_OR_RETURN(SafetensorsTensorInfo info, ParseTensorEntry(key, value, buffer_size));
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  GQ_RETURN_IF_ERROR(CheckLayout(header.tensors, header.data_start, file.size()));
  return header;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::span<const std::byte> file,
                                                         std::string_view source) {
  absl::StatusOr<SafetensorsHeader> header = ParseHeader(file);
  if (!header.ok()) return Annotate(header.status(), "safetensors '", std::string(source), "'");
  return header;
}

struct SafetensorsFile::State {
  std::shared_ptr<const MappedFile> mapping;
  SafetensorsHeader header;
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> index;
};

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  auto state = std::make_shared<State>();
  GQ_ASSIGN_OR_RETURN(state->mapping, MappedFile::Open(path));
  GQ_ASSIGN_OR_RETURN(state->header, ParseSafetensorsHeader(state->mapping->bytes(), path));
  state->index.reserve(state->header.tensors.size());
  for (size_t i = 0; i < state->header.tensors.size(); ++i) {
    state->index.emplace(state->header.tensors[i].name, i);
  }
  return SafetensorsFile(std::move(state));
}

const std::string& SafetensorsFile::path() const { return state_->mapping->path(); }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return state_->header.metadata;
}
const std::vector<SafetensorsTensorInfo>& SafetensorsFile::tensors() const {
  return state_->header.tensors;
}
uint64_t SafetensorsFile::data_start() const { return state_->header.data_start; }

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  const auto it = state_->index.find(name);
  return it == state_->index.end() ? nullptr : &state_->header.tensors[it->second];
}

absl::StatusOr<Tensor> SafetensorsFile::MakeTensor(const SafetensorsTensorInfo& info) const {
  // Touching pages the file no longer has would raise SIGBUS (mapped_file.h).
  GQ_RETURN_IF_ERROR(state_->mapping->CheckNotTruncated());
  const std::span<const std::byte> bytes =
      state_->mapping->bytes().subspan(state_->header.data_start + info.begin, info.num_bytes());
  if (reinterpret_cast<uintptr_t>(bytes.data()) % DTypeSize(info.dtype) == 0) {
    return Tensor::View(info.name, info.dtype, info.shape, bytes, state_->mapping);
  }
  // Only an unpadded header (e.g. MLX) misaligns payloads; readers of such
  // files must copy rather than reinterpret in place (spec §1.1).
  GQ_ASSIGN_OR_RETURN(Tensor copy, Tensor::Allocate(info.name, info.dtype, info.shape));
  if (!bytes.empty()) std::memcpy(copy.mutable_bytes().data(), bytes.data(), bytes.size());
  return copy;
}

absl::StatusOr<Tensor> SafetensorsFile::Get(std::string_view name) const {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("tensor '%s': not found in safetensors file '%s'", name, path()));
  }
  return MakeTensor(*info);
}

void SafetensorsFile::Release(std::string_view name) const {
  if (const SafetensorsTensorInfo* info = Find(name)) {
    state_->mapping->AdviseDone(state_->mapping->bytes().subspan(
        state_->header.data_start + info->begin, info->num_bytes()));
  }
}

absl::Status SafetensorsFile::ForEachTensor(
    const std::function<absl::Status(const Tensor&)>& fn) const {
  state_->mapping->AdviseSequential();
  for (const SafetensorsTensorInfo& info : state_->header.tensors) {
    GQ_ASSIGN_OR_RETURN(Tensor tensor, MakeTensor(info));
    GQ_RETURN_IF_ERROR(fn(tensor));
    state_->mapping->AdviseDone(
        state_->mapping->bytes().subspan(state_->header.data_start + info.begin, info.num_bytes()));
  }
  return absl::OkStatus();
}

}  // namespace gquant
