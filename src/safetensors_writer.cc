// safetensors writer: lays out the whole file up front, byte-compatible with
// the reference writer (safetensors/src/tensor.rs `prepare`), so payloads can
// arrive in any order.
#include <algorithm>
#include <array>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gquant/safetensors.h"
#include "gquant/status.h"

namespace gquant {
namespace {

using OrderedJson = nlohmann::ordered_json;

// Position of each DType in the reference's `Dtype` enum, which lists dtypes
// in increasing alignment; its writer sorts tensors by this, descending, so
// every payload starts aligned (spec §1.2-1.3). Indexed by DType.
constexpr std::array<int, kNumDTypes> kReferenceDTypeRank = {
    11,  // F32
    7,   // F16
    8,   // BF16
    12,  // F64
    2,   // I8
    1,   // U8
    5,   // I16
    6,   // U16
    9,   // I32
    10,  // U32
    13,  // I64
    14,  // U64
    0,   // BOOL
    4,   // F8_E4M3
    3,   // F8_E5M2
};

// Also rejects a bad shape; the byte size must fit 64 bits.
absl::StatusOr<uint64_t> SpecBytes(const SafetensorsTensorSpec& spec) {
  if (static_cast<int>(spec.dtype) >= kNumDTypes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor '%s': expected a valid dtype, but got %d", spec.name,
                        static_cast<int>(spec.dtype)));
  }
  absl::StatusOr<int64_t> elements = NumElements(spec.shape);
  if (!elements.ok()) return Annotate(elements.status(), "tensor '", spec.name, "'");
  const uint64_t size = DTypeSize(spec.dtype);
  if (static_cast<uint64_t>(*elements) > std::numeric_limits<uint64_t>::max() / size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor '%s': shape %s of %s: byte size overflows 64 bits", spec.name,
                        ShapeToString(spec.shape), DTypeName(spec.dtype)));
  }
  return static_cast<uint64_t>(*elements) * size;
}

// The compact JSON the reference emits (serde_json::to_string), padded with
// spaces to a multiple of 8 bytes.
absl::StatusOr<std::string> SerializeHeader(const SafetensorsHeader& header) {
  OrderedJson root = OrderedJson::object();
  if (!header.metadata.empty()) {
    OrderedJson metadata = OrderedJson::object();
    for (const auto& [key, value] : header.metadata) metadata[key] = value;
    root["__metadata__"] = std::move(metadata);
  }
  for (const SafetensorsTensorInfo& t : header.tensors) {
    OrderedJson entry = OrderedJson::object();
    entry["dtype"] = std::string(DTypeName(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {t.begin, t.end};
    root[t.name] = std::move(entry);
  }
  std::string text;
  try {
    // Non-ASCII stays raw UTF-8 like serde_json; invalid UTF-8 throws.
    text = root.dump(-1, ' ', /*ensure_ascii=*/false, OrderedJson::error_handler_t::strict);
  } catch (const OrderedJson::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors header: expected UTF-8 tensor names and metadata: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kSafetensorsMaxHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("header too large: expected at most %d bytes, but got %d",
                        kSafetensorsMaxHeaderSize, text.size()));
  }
  return text;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<SafetensorsTensorSpec> specs,
    std::map<std::string, std::string> metadata) {
  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->path_ = path;
  std::vector<std::pair<SafetensorsTensorSpec, uint64_t>> sized;
  sized.reserve(specs.size());
  for (SafetensorsTensorSpec& spec : specs) {
    if (spec.name.empty() || spec.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor name '%s': expected a non-empty name other than '__metadata__'", spec.name));
    }
    GQ_ASSIGN_OR_RETURN(uint64_t bytes, SpecBytes(spec));
    sized.emplace_back(std::move(spec), bytes);
  }
  std::sort(sized.begin(), sized.end(), [](const auto& a, const auto& b) {
    const int rank_a = kReferenceDTypeRank[static_cast<int>(a.first.dtype)];
    const int rank_b = kReferenceDTypeRank[static_cast<int>(b.first.dtype)];
    if (rank_a != rank_b) return rank_a > rank_b;
    return a.first.name < b.first.name;  // bytewise, like Rust's String order
  });

  SafetensorsHeader& header = writer->header_;
  header.metadata = std::move(metadata);
  uint64_t offset = 0;
  for (auto& [spec, bytes] : sized) {
    if (bytes > std::numeric_limits<uint64_t>::max() - offset) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor '%s': expected the total data size to fit 64 bits, but it overflows", spec.name));
    }
    if (!writer->index_.emplace(spec.name, header.tensors.size()).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tensor '%s': expected unique names, but got it twice", spec.name));
    }
    header.tensors.push_back(
        {std::move(spec.name), spec.dtype, std::move(spec.shape), offset, offset + bytes});
    offset += bytes;
  }
  writer->written_.assign(header.tensors.size(), false);

  GQ_ASSIGN_OR_RETURN(std::string text, SerializeHeader(header));
  header.data_start = 8 + text.size();
  std::array<std::byte, 8> length;
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>(text.size() >> (8 * i));
  GQ_ASSIGN_OR_RETURN(writer->file_, AtomicFileWriter::Create(path));
  GQ_RETURN_IF_ERROR(writer->file_->Write(length));
  GQ_RETURN_IF_ERROR(writer->file_->Write(std::as_bytes(std::span<const char>(text))));
  // The temporary file gets its final size now: a full disk fails before any
  // payload is produced, and an interrupted writer leaves a file with a
  // complete header that gquant-quantize --resume reads back.
  if (offset > std::numeric_limits<uint64_t>::max() - header.data_start) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "safetensors '%s': expected the file size to fit 64 bits, but it overflows", path));
  }
  GQ_RETURN_IF_ERROR(writer->file_->Allocate(header.data_start + offset));
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() = default;

absl::Status SafetensorsWriter::WriteTensor(std::string_view name,
                                            std::span<const std::byte> bytes) {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(
        absl::StrFormat("tensor '%s': not declared when creating '%s'", name, path_));
  }
  const SafetensorsTensorInfo& info = header_.tensors[it->second];
  if (bytes.size() != info.num_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tensor '%s': expected %d bytes for shape %s of %s, but got %d", name, info.num_bytes(),
        ShapeToString(info.shape), DTypeName(info.dtype), bytes.size()));
  }
  if (written_[it->second]) {
    return absl::FailedPreconditionError(
        absl::StrFormat("tensor '%s': expected to be written once, but got it twice", name));
  }
  if (!bytes.empty()) GQ_RETURN_IF_ERROR(file_->WriteAt(header_.data_start + info.begin, bytes));
  written_[it->second] = true;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Commit() {
  std::vector<std::string> missing;
  for (size_t i = 0; i < written_.size(); ++i) {
    if (!written_[i]) missing.push_back(header_.tensors[i].name);
  }
  if (!missing.empty()) {
    constexpr size_t kMaxListed = 10;
    std::string listed =
        absl::StrCat("'",
                     absl::StrJoin(missing.begin(),
                                   missing.begin() + std::min(missing.size(), kMaxListed), "', '"),
                     "'");
    if (missing.size() > kMaxListed) {
      absl::StrAppend(&listed, " and ", missing.size() - kMaxListed, " more");
    }
    return absl::FailedPreconditionError(
        absl::StrFormat("safetensors '%s': expected every tensor written before Commit, but %d "
                        "are not: %s",
                        path_, missing.size(), listed));
  }
  return file_->Commit();
}

absl::Status WriteSafetensors(const std::string& path, std::span<const Tensor> tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsTensorSpec> specs;
  specs.reserve(tensors.size());
  for (const Tensor& t : tensors) specs.push_back({t.name(), t.dtype(), t.shape()});
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                      SafetensorsWriter::Create(path, std::move(specs), metadata));
  for (const Tensor& t : tensors) GQ_RETURN_IF_ERROR(writer->WriteTensor(t.name(), t.bytes()));
  return writer->Commit();
}

}  // namespace gquant
