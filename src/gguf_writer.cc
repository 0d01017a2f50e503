// GGUF v3 writer (spec/gguf.md §1.8): header, KVs, tensor infos and zero
// padding, then tensor payloads placed with WriteAt in any order.
#include <cstring>
#include <unordered_set>

#include "absl/strings/str_format.h"
#include "gquant/atomic_file.h"
#include "gquant/gguf.h"
#include "gquant/status.h"

namespace gquant {
namespace {

uint64_t Pad(uint64_t x, uint64_t n) { return (x + n - 1) / n * n; }

class Encoder {
 public:
  template <typename T>
  void Put(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    out_.insert(out_.end(), p, p + s.size());
  }
  void PutValue(const GgufValue& value) {
    std::visit(
        [this](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::string>) {
            PutString(x);
          } else if constexpr (std::is_same_v<T, GgufArray>) {
            Put<uint32_t>(static_cast<uint32_t>(x.element_type));
            Put<uint64_t>(x.elements.size());
            for (const GgufValue& e : x.elements) PutValue(e);
          } else if constexpr (std::is_same_v<T, bool>) {
            Put<uint8_t>(x ? 1 : 0);
          } else {
            Put<T>(x);
          }
        },
        value.variant());
  }
  void PadTo(uint64_t alignment) { out_.resize(Pad(out_.size(), alignment), std::byte{0}); }
  std::vector<std::byte>& bytes() { return out_; }

 private:
  std::vector<std::byte> out_;
};

// Checks element types and nesting depth (the reader's limit) of `value`.
absl::Status CheckValue(const GgufValue& value, const std::string& key, int depth) {
  const GgufArray* array = value.array();
  if (array == nullptr) return absl::OkStatus();
  if (depth >= kGgufMaxArrayDepth) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metadata key '%s': expected arrays nested at most %d levels, but got more",
                        key, kGgufMaxArrayDepth));
  }
  for (const GgufValue& e : array->elements) {
    if (e.type() != array->element_type) {
      return absl::InvalidArgumentError(
          absl::StrFormat("metadata key '%s' array element: expected %s, but got %s", key,
                          GgufValueTypeName(array->element_type), GgufValueTypeName(e.type())));
    }
    GQ_RETURN_IF_ERROR(CheckValue(e, key, depth + 1));
  }
  return absl::OkStatus();
}

}  // namespace

GgufWriter::GgufWriter(std::unique_ptr<AtomicFileWriter> file) : file_(std::move(file)) {}
GgufWriter::~GgufWriter() = default;

absl::StatusOr<std::unique_ptr<GgufWriter>> GgufWriter::Create(const std::string& path) {
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file, AtomicFileWriter::Create(path));
  return std::unique_ptr<GgufWriter>(new GgufWriter(std::move(file)));
}

void GgufWriter::SetMetadata(std::string key, GgufValue value) {
  if (frozen_) {
    metadata_after_freeze_ = true;
    return;
  }
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(value));
}

absl::Status GgufWriter::AddTensor(std::string name, std::vector<int64_t> dims, uint32_t type,
                                   uint64_t num_bytes) {
  if (frozen_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "GGUF tensor '%s': expected to be added before any tensor data, but data was written",
        name));
  }
  if (name.empty() || name.size() > kGgufMaxTensorName) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GGUF tensor '%s' name: expected 1..%d bytes, but got %d", name,
                        kGgufMaxTensorName, name.size()));
  }
  for (const GgufTensorInfo& t : tensors_) {
    if (t.name == name) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "GGUF tensor '%s': expected a unique name, but it was already added", name));
    }
  }
  if (dims.empty() || dims.size() > static_cast<size_t>(kGgufMaxDims)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF tensor '%s' dims: expected 1..%d, but got %d", name, kGgufMaxDims, dims.size()));
  }
  auto expected = GgufTensorBytes(dims, type);
  if (!expected.ok()) return Annotate(expected.status(), "GGUF tensor '", name, "'");
  if (*expected != num_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF tensor '%s' num_bytes: expected %d, but got %d", name, *expected, num_bytes));
  }
  tensors_.push_back(GgufTensorInfo{std::move(name), std::move(dims), type, 0, num_bytes});
  written_.push_back(false);
  return absl::OkStatus();
}

absl::Status GgufWriter::Freeze() {
  if (frozen_) return freeze_status_;
  frozen_ = true;
  freeze_status_ = [&]() -> absl::Status {
    for (const auto& [key, value] : metadata_) {
      if (key.empty()) {
        return absl::InvalidArgumentError("GGUF metadata key '': expected a non-empty key");
      }
      GQ_RETURN_IF_ERROR(CheckValue(value, key, 0));
      if (key == "general.alignment") {
        const auto* a = std::get_if<uint32_t>(&value.variant());
        if (a == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrFormat("GGUF metadata key 'general.alignment': expected UINT32, but got %s",
                              GgufValueTypeName(value.type())));
        }
        if (*a == 0 || (*a & (*a - 1)) != 0) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "GGUF metadata key 'general.alignment': expected a power of two, but got %d", *a));
        }
        alignment_ = *a;  // used for the padding too (unlike ggml, spec §1.8)
      }
    }
    Encoder enc;
    enc.Put<uint32_t>(kGgufMagic);
    enc.Put<uint32_t>(kGgufVersion);
    enc.Put<uint64_t>(tensors_.size());
    enc.Put<uint64_t>(metadata_.size());
    for (const auto& [key, value] : metadata_) {
      enc.PutString(key);
      enc.Put<uint32_t>(static_cast<uint32_t>(value.type()));
      enc.PutValue(value);
    }
    uint64_t offset = 0;
    for (GgufTensorInfo& t : tensors_) {
      t.offset = offset;
      offset += Pad(t.num_bytes, alignment_);
      enc.PutString(t.name);
      enc.Put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
      for (int64_t d : t.dims) enc.Put<int64_t>(d);
      enc.Put<uint32_t>(t.type);
      enc.Put<uint64_t>(t.offset);
    }
    enc.PadTo(alignment_);
    data_start_ = enc.bytes().size();
    return file_->Write(enc.bytes());
  }();
  return freeze_status_;
}

absl::Status GgufWriter::WriteTensorData(std::string_view name, std::span<const std::byte> data) {
  size_t i = 0;
  while (i < tensors_.size() && tensors_[i].name != name) ++i;
  if (i == tensors_.size()) {
    return absl::NotFoundError(
        absl::StrFormat("GGUF tensor '%s': expected a tensor declared by AddTensor", name));
  }
  const GgufTensorInfo& t = tensors_[i];
  if (written_[i]) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "GGUF tensor '%s': expected one write, but data was already written", name));
  }
  if (data.size() != t.num_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GGUF tensor '%s' data: expected %d bytes, but got %d", name, t.num_bytes, data.size()));
  }
  GQ_RETURN_IF_ERROR(Freeze());
  GQ_RETURN_IF_ERROR(file_->WriteAt(data_start_ + t.offset, data));
  const uint64_t pad = Pad(t.num_bytes, alignment_) - t.num_bytes;
  if (pad > 0) {
    const std::vector<std::byte> zeros(pad, std::byte{0});
    GQ_RETURN_IF_ERROR(file_->WriteAt(data_start_ + t.offset + t.num_bytes, zeros));
  }
  written_[i] = true;
  return absl::OkStatus();
}

absl::Status GgufWriter::Commit() {
  GQ_RETURN_IF_ERROR(Freeze());
  if (metadata_after_freeze_) {
    return absl::FailedPreconditionError(
        "GGUF metadata: expected SetMetadata before any tensor data, but it was called after");
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!written_[i]) {
      return absl::FailedPreconditionError(
          absl::StrFormat("GGUF tensor '%s': expected its data before Commit, but none was written",
                          tensors_[i].name));
    }
  }
  return Annotate(file_->Commit(), "GGUF file '", file_->final_path(), "'");
}

}  // namespace gquant
