#include "gquant/quantized_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/dtype.h"
#include "gquant/status.h"
#include "gquant/tensor.h"
#include "strict_json.h"

namespace gquant {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kInt4Type = "Int4Tensor";
constexpr std::string_view kIntxType = "IntxUnpackedToInt8Tensor";
constexpr std::string_view kMinType = "GquantMinTensor";

using Kind = QuantizedWeightInfo::Kind;

Kind KindOf(const QuantConfig& config, const StorageFormat& format) {
  if (format.zero_form == ZeroForm::kMin) return Kind::kMin;
  return config.bits == 4 ? Kind::kInt4 : Kind::kIntx;
}

// Stores `value` as one element of `dtype` (BF16, F16 or F32) at `dst`.
void PutScalar(DType dtype, std::byte* dst, float value) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, &value, 4);
    return;
  }
  const uint16_t bits = dtype == DType::kF16 ? FloatToHalf(value) : FloatToBFloat16(value);
  std::memcpy(dst, &bits, 2);
}

Json TorchDtype(const std::string& name) { return Json{{"_type", "torch.dtype"}, {"_data", name}}; }

// torchao's block_size: 1 along every dim but the last.
Json BlockSize(size_t rank, int64_t group_size) {
  Json block = Json::array();
  for (size_t i = 0; i + 1 < rank; ++i) block.push_back(1);
  block.push_back(group_size);
  return block;
}

absl::Status MetadataError(const std::string& fqn, const std::string& what) {
  return absl::DataLossError(absl::StrFormat("quantized weight '%s': %s", fqn, what));
}

// A metadata value (itself JSON text) parsed without exceptions, inside the
// limits every JSON input gets (a deep value would overflow the stack when
// copied).
absl::StatusOr<Json> ParseMetadataJson(const std::string& fqn, const std::string& text) {
  if (absl::Status limits = internal::CheckJsonLimits(text); !limits.ok()) {
    return MetadataError(fqn, std::string(limits.message()));
  }
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return MetadataError(fqn, "metadata entry is not valid JSON");
  return json;
}

// object[key], or nullptr when `object` is null, not an object or lacks the key
// (nlohmann's value() throws on a non-object).
const Json* Member(const Json* object, std::string_view key) {
  if (object == nullptr || !object->is_object()) return nullptr;
  const auto it = object->find(std::string(key));
  return it == object->end() ? nullptr : &*it;
}
const Json* Member(const Json& object, std::string_view key) { return Member(&object, key); }

// Reads one stored part, checking its dtype and shape.
absl::StatusOr<Tensor> GetPart(const Checkpoint& checkpoint, const std::string& name,
                               std::initializer_list<DType> dtypes,
                               const std::vector<int64_t>& shape) {
  GQ_ASSIGN_OR_RETURN(Tensor tensor, checkpoint.Get(name));
  bool dtype_ok = false;
  for (DType d : dtypes) dtype_ok |= tensor.dtype() == d;
  if (!dtype_ok || tensor.shape() != shape) {
    return absl::DataLossError(
        absl::StrFormat("tensor '%s': expected shape %s, but got %s %s", name, ShapeToString(shape),
                        DTypeName(tensor.dtype()), ShapeToString(tensor.shape())));
  }
  return tensor;
}

// Whether two codes share a byte (element 2j low nibble, 2j+1 high).
bool PacksNibbles(Kind kind, int bits) { return bits == 4 && kind != Kind::kIntx; }

// Shapes of the stored parts for a logical [.., N, K] weight.
struct PartShapes {
  std::vector<int64_t> qdata, scale;  // zero_point / min has scale's shape
};
PartShapes PartShapesOf(const std::vector<int64_t>& shape, Kind kind, int bits,
                        int64_t group_size) {
  std::vector<int64_t> lead(shape.begin(), shape.end() - 2);
  const int64_t n = shape[shape.size() - 2], k = shape.back(), g = k / group_size;
  PartShapes parts{lead, lead};
  parts.qdata.insert(parts.qdata.end(), {n, PacksNibbles(kind, bits) ? k / 2 : k});
  if (kind == Kind::kInt4) {
    parts.scale.insert(parts.scale.end(), {g, n});  // transposed, as torchao stores it
  } else {
    parts.scale.insert(parts.scale.end(), {n, g});
  }
  return parts;
}

// The three stored tensors of a quantized weight, checked against its
// metadata (dtypes and shapes); zero is the min in the min form.
struct QuantizedTensors {
  Tensor qdata, scale, zero;
};
absl::StatusOr<QuantizedTensors> GetQuantizedTensors(const Checkpoint& checkpoint,
                                                     const QuantizedWeightInfo& info) {
  const Kind kind = info.kind;
  const PartShapes shapes = PartShapesOf(info.shape, kind, info.bits, info.group_size);
  GQ_ASSIGN_OR_RETURN(const FlattenedNames parts, FlattenedNamesOf(info.fqn));
  GQ_ASSIGN_OR_RETURN(Tensor qdata,
                      GetPart(checkpoint, parts.qdata,
                              {kind == Kind::kIntx ? DType::kI8 : DType::kU8}, shapes.qdata));
  GQ_ASSIGN_OR_RETURN(
      Tensor scale,
      GetPart(checkpoint, parts.scale, {DType::kBF16, DType::kF16, DType::kF32}, shapes.scale));
  GQ_ASSIGN_OR_RETURN(Tensor zero,
                      GetPart(checkpoint, kind == Kind::kMin ? parts.min : parts.zero_point,
                              {DType::kBF16, DType::kF16, DType::kF32, DType::kI8}, shapes.scale));
  return QuantizedTensors{std::move(qdata), std::move(scale), std::move(zero)};
}

// One weight's stored parts in file layout (quantized_checkpoint.h's table),
// as raw bytes covering every matrix.
struct StoredParts {
  QuantizedMatrixInfo info;  // of one matrix
  std::span<const std::byte> qdata;
  DType scale_dtype;
  std::span<const std::byte> scale;
  DType zero_dtype;  // I8 for Intx, else the scale dtype
  std::span<const std::byte> zero;
};

// Matrix `matrix` of `parts` in the unpacked form. The caller has checked the
// parts' sizes against the layout; ConvertToFloat re-checks the slices.
absl::StatusOr<UnpackedMatrix> UnpackStored(const StoredParts& parts, int64_t matrix) {
  const QuantizedMatrixInfo& info = parts.info;
  const int64_t n = info.rows, k = info.cols, g_count = info.groups();
  UnpackedMatrix out{info};
  out.codes.resize(n * k);
  out.scale.resize(n * g_count);
  out.zero.resize(n * g_count);
  const bool nibbles = PacksNibbles(info.kind, info.bits);
  const auto* q =
      reinterpret_cast<const uint8_t*>(parts.qdata.data()) + matrix * n * k / (nibbles ? 2 : 1);
  if (nibbles) {
    for (int64_t i = 0; i < n * k; ++i) {
      out.codes[i] = static_cast<int8_t>((q[i / 2] >> (4 * (i & 1))) & 0xf);
    }
  } else {  // Intx codes are int8; min-form codes (at most 6 bits) fit too
    std::memcpy(out.codes.data(), q, n * k);
  }
  const auto convert = [&](DType dtype, std::span<const std::byte> bytes, std::span<float> dst) {
    const int64_t item = DTypeSize(dtype);
    return ConvertToFloat(dtype, bytes.subspan(matrix * n * g_count * item, n * g_count * item),
                          dst);
  };
  if (info.kind == Kind::kInt4) {  // stored [E, G, N]: transpose to [N, G]
    std::vector<float> stored(n * g_count);
    for (auto [dtype, bytes, dst] : {std::tuple{parts.scale_dtype, parts.scale, &out.scale},
                                     std::tuple{parts.zero_dtype, parts.zero, &out.zero}}) {
      GQ_RETURN_IF_ERROR(convert(dtype, bytes, stored));
      for (int64_t g = 0; g < g_count; ++g) {
        for (int64_t r = 0; r < n; ++r) (*dst)[r * g_count + g] = stored[g * n + r];
      }
    }
  } else {
    GQ_RETURN_IF_ERROR(convert(parts.scale_dtype, parts.scale, out.scale));
    GQ_RETURN_IF_ERROR(convert(parts.zero_dtype, parts.zero, out.zero));
  }
  return out;
}

}  // namespace

absl::Status ValidateUnpackedMatrix(const UnpackedMatrixView& matrix, std::string_view name) {
  const QuantizedMatrixInfo& info = matrix.info;
  const bool bits_ok = (info.kind == Kind::kInt4 && info.bits == 4) ||
                       (info.kind == Kind::kIntx && info.bits >= 1 && info.bits <= 8) ||
                       (info.kind == Kind::kMin && info.bits >= 4 && info.bits <= 6);
  if (!bits_ok) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "matrix '%s': expected Int4 with 4 bits, Intx with 1..8 or the min form with 4..6, but "
        "got kind %d with %d bits",
        std::string(name), static_cast<int>(info.kind), info.bits));
  }
  if (info.rows <= 0 || info.cols <= 0 || info.group_size <= 0 ||
      info.cols % info.group_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("matrix '%s': expected a positive [rows, cols] and a group size dividing "
                        "cols, but got [%d, %d] group %d",
                        std::string(name), info.rows, info.cols, info.group_size));
  }
  const int64_t params = info.rows * info.groups();
  if (static_cast<int64_t>(matrix.codes.size()) != info.rows * info.cols ||
      static_cast<int64_t>(matrix.scale.size()) != params ||
      static_cast<int64_t>(matrix.zero.size()) != params) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "matrix '%s': expected %d codes and %d scales and zeros for [%d, %d] group %d, but got "
        "%d, %d and %d",
        std::string(name), info.rows * info.cols, params, info.rows, info.cols, info.group_size,
        matrix.codes.size(), matrix.scale.size(), matrix.zero.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<FlattenedNames> FlattenedNamesOf(std::string_view fqn) {
  const size_t dot = fqn.rfind('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == fqn.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': expected '<module>.<param>' to flatten", std::string(fqn)));
  }
  const std::string prefix =
      absl::StrCat(std::string(fqn.substr(0, dot)), "._", std::string(fqn.substr(dot + 1)), "_");
  return FlattenedNames{prefix + "qdata", prefix + "scale", prefix + "zero_point", prefix + "min"};
}

absl::StatusOr<QuantizedLayout> QuantizedLayout::Create(std::string fqn, std::vector<int64_t> shape,
                                                        const QuantConfig& config,
                                                        const StorageFormat& format) {
  GQ_RETURN_IF_ERROR(Annotate(ValidateQuantConfig(config), "weight '", fqn, "'"));
  if (format.scale_dtype != DType::kBF16 && format.scale_dtype != DType::kF16 &&
      format.scale_dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': scale dtype must be BF16, F16 or F32, but got %s", fqn,
                        DTypeName(format.scale_dtype)));
  }
  if (format.zero_form == ZeroForm::kMin && config.bits > 6) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight '%s': the min form stores unsigned codes in int8, so bits must be 4..6, not %d",
        fqn, config.bits));
  }
  GQ_RETURN_IF_ERROR(FlattenedNamesOf(fqn).status());
  if (shape.size() != 2 && shape.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': expected a 2-D [N, K] or 3-D [E, N, K] shape, but got %s",
                        fqn, ShapeToString(shape)));
  }
  GQ_RETURN_IF_ERROR(Annotate(NumElements(shape).status(), "weight '", fqn, "'"));
  QuantizedLayout layout;
  layout.cols_ = shape.back();
  layout.rows_ = shape[shape.size() - 2];
  layout.matrices_ = shape.size() == 3 ? shape[0] : 1;
  auto group_size = ResolveGroupSize(config, layout.cols_);
  GQ_RETURN_IF_ERROR(Annotate(group_size.status(), "weight '", fqn, "'"));
  layout.config_ = config;
  layout.config_.group_size = static_cast<int>(*group_size);
  layout.format_ = format;
  if (config.bits == 4 && layout.cols_ % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': 4-bit packing needs an even number of columns, but got %d",
                        fqn, layout.cols_));
  }
  layout.fqn_ = std::move(fqn);
  layout.shape_ = std::move(shape);
  return layout;
}

std::vector<SafetensorsTensorSpec> QuantizedLayout::Specs() const {
  const FlattenedNames names = *FlattenedNamesOf(fqn_);  // checked in Create
  const Kind kind = KindOf(config_, format_);
  const PartShapes parts = PartShapesOf(shape_, kind, config_.bits, config_.group_size);
  const DType scale = format_.scale_dtype;
  switch (kind) {
    case Kind::kInt4:
      return {{names.qdata, DType::kU8, parts.qdata},
              {names.scale, scale, parts.scale},
              {names.zero_point, scale, parts.scale}};
    case Kind::kMin:
      return {{names.qdata, DType::kU8, parts.qdata},
              {names.scale, scale, parts.scale},
              {names.min, scale, parts.scale}};
    default:
      return {{names.qdata, DType::kI8, parts.qdata},
              {names.scale, scale, parts.scale},
              {names.zero_point, DType::kI8, parts.scale}};
  }
}

int64_t QuantizedLayout::num_bytes() const {
  int64_t total = 0;
  for (const SafetensorsTensorSpec& spec : Specs()) {
    total += *NumElements(spec.shape) * DTypeSize(spec.dtype);
  }
  return total;
}

std::string QuantizedLayout::MetadataJson() const {
  const Json block = BlockSize(shape_.size(), config_.group_size);
  Json entry;
  const Kind kind = KindOf(config_, format_);
  if (kind == Kind::kMin) {
    entry = Json{{"_type", kMinType},
                 {"_data", {{"bits", config_.bits}, {"block_size", block}, {"shape", shape_}}},
                 {"_tensor_data_names", {"qdata", "scale", "min"}}};
  } else if (kind == Kind::kInt4) {
    entry = Json{
        {"_type", kInt4Type},
        {"_data",
         {{"activation_dtype", TorchDtype("bfloat16")}, {"block_size", block}, {"shape", shape_}}},
        {"_tensor_data_names", {"qdata", "scale", "zero_point"}}};
  } else {
    entry = Json{{"_type", kIntxType},
                 {"_data",
                  {{"target_dtype", TorchDtype(absl::StrCat("int", config_.bits))},
                   {"block_size", block},
                   {"dtype", TorchDtype("bfloat16")},
                   {"activation_quantization", nullptr}}},
                 {"_tensor_data_names", {"qdata", "scale", "zero_point"}}};
  }
  return entry.dump();
}

PackedWeight::PackedWeight(QuantizedLayout layout) : layout_(std::move(layout)) {
  const std::vector<SafetensorsTensorSpec> specs = layout_.Specs();
  std::vector<std::byte>* buffers[] = {&qdata_, &scale_, &zero_point_};
  for (int i = 0; i < 3; ++i) {
    buffers[i]->resize(*NumElements(specs[i].shape) * DTypeSize(specs[i].dtype));
  }
}

absl::Status PackedWeight::Pack(int64_t matrix, int64_t row_begin, int64_t rows,
                                std::span<const int8_t> codes, std::span<const float> scale,
                                std::span<const float> zero_point) {
  const QuantizedLayout& l = layout_;
  const int64_t g_count = l.groups(), total_rows = l.rows(), cols = l.cols();
  if (matrix < 0 || matrix >= l.matrices() || row_begin < 0 || rows < 0 ||
      row_begin + rows > total_rows || static_cast<int64_t>(codes.size()) != rows * cols ||
      static_cast<int64_t>(scale.size()) != rows * g_count ||
      static_cast<int64_t>(zero_point.size()) != rows * g_count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': Pack(matrix %d, rows [%d, %d)) does not fit %s or its spans",
                        l.fqn(), matrix, row_begin, row_begin + rows, ShapeToString(l.shape())));
  }
  const int64_t base_row = matrix * total_rows + row_begin;
  const Kind kind = KindOf(l.config(), l.format());
  const DType scale_dtype = l.format().scale_dtype;
  const int scale_bytes = DTypeSize(scale_dtype);
  if (PacksNibbles(kind, l.config().bits)) {
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* row_codes = codes.data() + r * cols;
      std::byte* out = qdata_.data() + (base_row + r) * (cols / 2);
      for (int64_t j = 0; j < cols / 2; ++j) {
        out[j] =
            static_cast<std::byte>((row_codes[2 * j] & 0xf) | ((row_codes[2 * j + 1] & 0xf) << 4));
      }
    }
  } else {
    std::memcpy(qdata_.data() + base_row * cols, codes.data(), codes.size());
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < g_count; ++g) {
      const int64_t from = r * g_count + g;
      // Int4 stores [E, G, N] (group-major within the matrix), the others [E, N, G].
      const int64_t at = kind == Kind::kInt4 ? (matrix * g_count + g) * total_rows + row_begin + r
                                             : (base_row + r) * g_count + g;
      PutScalar(scale_dtype, scale_.data() + scale_bytes * at, scale[from]);
      if (kind != Kind::kIntx) {
        PutScalar(scale_dtype, zero_point_.data() + scale_bytes * at, zero_point[from]);
        continue;
      }
      const float z = zero_point[from];
      if (z != std::nearbyint(z) || z < -128 || z > 127) {
        return absl::InvalidArgumentError(
            absl::StrFormat("weight '%s': Intx zero point %g is not an int8 integer", l.fqn(), z));
      }
      zero_point_[at] = static_cast<std::byte>(static_cast<int8_t>(z));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UnpackedMatrix> PackedWeight::Unpack(int64_t matrix) const {
  const QuantizedLayout& l = layout_;
  if (matrix < 0 || matrix >= l.matrices()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight '%s': matrix %d is outside its %d matrices", l.fqn(), matrix, l.matrices()));
  }
  const Kind kind = KindOf(l.config(), l.format());
  const DType scale_dtype = l.format().scale_dtype;
  return UnpackStored({{kind, l.config().bits, l.rows(), l.cols(), l.config().group_size},
                       qdata_,
                       scale_dtype,
                       scale_,
                       kind == Kind::kIntx ? DType::kI8 : scale_dtype,
                       zero_point_},
                      matrix);
}

// ---- writing ----

absl::StatusOr<std::unique_ptr<QuantizedCheckpointWriter>> QuantizedCheckpointWriter::Create(
    const std::string& path, const std::vector<QuantizedCheckpointEntry>& entries,
    std::map<std::string, std::string> extra_metadata) {
  std::vector<SafetensorsTensorSpec> specs;
  std::map<std::string, std::string> metadata = std::move(extra_metadata);
  Json names = Json::array();
  for (const QuantizedCheckpointEntry& entry : entries) {
    names.push_back(entry.fqn);
    if (entry.layout) {
      for (SafetensorsTensorSpec& spec : entry.layout->Specs()) specs.push_back(std::move(spec));
      metadata[entry.fqn] = entry.layout->MetadataJson();
    } else {
      specs.push_back({entry.fqn, entry.dtype, entry.shape});
      metadata[entry.fqn] = R"({"_type":"Tensor"})";
    }
  }
  metadata["tensor_names"] = names.dump();
  metadata["format"] = "pt";
  metadata["gquant.convention"] = std::string(kGquantConvention);
  metadata["gquant.version"] = std::string(kGquantVersion);
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                      SafetensorsWriter::Create(path, std::move(specs), std::move(metadata)));
  return std::unique_ptr<QuantizedCheckpointWriter>(
      new QuantizedCheckpointWriter(std::move(writer)));
}

absl::Status QuantizedCheckpointWriter::WritePlain(std::string_view fqn,
                                                   std::span<const std::byte> bytes) {
  return writer_->WriteTensor(fqn, bytes);
}

absl::Status QuantizedCheckpointWriter::WritePacked(const PackedWeight& packed) {
  const std::vector<SafetensorsTensorSpec> parts = packed.layout().Specs();
  GQ_RETURN_IF_ERROR(writer_->WriteTensor(parts[0].name, packed.qdata()));
  GQ_RETURN_IF_ERROR(writer_->WriteTensor(parts[1].name, packed.scale()));
  return writer_->WriteTensor(parts[2].name, packed.zero_point());
}

absl::Status QuantizedCheckpointWriter::Commit() { return writer_->Commit(); }

// ---- reading ----

namespace {

// A stored part named by the metadata: present, of one of `dtypes`, of `shape`.
absl::Status CheckStoredPart(const Checkpoint& checkpoint, const std::string& fqn,
                             const std::string& name, std::initializer_list<DType> dtypes,
                             const std::vector<int64_t>& shape) {
  const SafetensorsTensorInfo* part = checkpoint.Find(name);
  if (part == nullptr) return MetadataError(fqn, absl::StrCat("missing part '", name, "'"));
  bool dtype_ok = false;
  for (DType d : dtypes) dtype_ok |= part->dtype == d;
  if (!dtype_ok || part->shape != shape) {
    return MetadataError(fqn, absl::StrFormat("part '%s': expected shape %s, but got %s %s", name,
                                              ShapeToString(shape), DTypeName(part->dtype),
                                              ShapeToString(part->shape)));
  }
  return absl::OkStatus();
}

// The QuantizedWeightInfo of a quantized `fqn` of torchao `type` from its
// "_data" (nullptr when absent) and its stored parts, which must agree with
// it (as GetQuantizedTensors checks them again when reading).
absl::StatusOr<QuantizedWeightInfo> QuantizedInfoOf(const Checkpoint& checkpoint,
                                                    const std::string& fqn, std::string_view type,
                                                    const Json* data) {
  QuantizedWeightInfo info{fqn};
  const Json* block = Member(data, "block_size");
  if (block == nullptr || !block->is_array() || block->empty() ||
      !block->back().is_number_integer() || block->back().get<int64_t>() <= 0) {
    return MetadataError(fqn, "missing or bad _data.block_size");
  }
  info.group_size = block->back().get<int64_t>();
  GQ_ASSIGN_OR_RETURN(const FlattenedNames parts, FlattenedNamesOf(fqn));
  const SafetensorsTensorInfo* qdata = checkpoint.Find(parts.qdata);
  if (qdata == nullptr || qdata->shape.size() < 2) {
    return MetadataError(fqn, absl::StrCat("missing or bad '", parts.qdata, "'"));
  }
  info.shape = qdata->shape;
  if (type == kInt4Type) {
    info.kind = Kind::kInt4;
    info.bits = 4;
  } else if (type == kMinType) {
    info.kind = Kind::kMin;
    const Json* bits = Member(data, "bits");
    // Compared as int64: get<int>() would truncate 2^32 + 4 to 4.
    if (bits == nullptr || !bits->is_number_integer() || bits->get<int64_t>() < 4 ||
        bits->get<int64_t>() > 6) {
      return MetadataError(fqn, "missing or bad _data.bits (expected 4..6)");
    }
    info.bits = static_cast<int>(bits->get<int64_t>());
  } else {
    info.kind = Kind::kIntx;
    const Json* target = Member(Member(data, "target_dtype"), "_data");
    const std::string name =
        target != nullptr && target->is_string() ? target->get<std::string>() : "";
    if (name.size() != 4 || name.rfind("int", 0) != 0 || name[3] < '1' || name[3] > '8') {
      return MetadataError(fqn, absl::StrCat("bad target_dtype '", name, "'"));
    }
    info.bits = name[3] - '0';
  }
  int64_t& k = info.shape.back();
  if (PacksNibbles(info.kind, info.bits)) {
    if (k > std::numeric_limits<int64_t>::max() / 2) {
      return MetadataError(fqn, absl::StrCat("'", parts.qdata, "' is too wide: ", k, " bytes"));
    }
    k *= 2;
  }
  // K = 0 would leave every row empty however many rows the shape claims, and
  // readers loop over rows: a zero-byte file could make them spin for 2^62.
  if (k == 0 || k % info.group_size != 0) {
    return MetadataError(
        fqn, absl::StrFormat("expected a positive last dimension that block size %d divides, but "
                             "got %d",
                             info.group_size, k));
  }
  const PartShapes shapes = PartShapesOf(info.shape, info.kind, info.bits, info.group_size);
  GQ_RETURN_IF_ERROR(CheckStoredPart(checkpoint, fqn, parts.qdata,
                                     {info.kind == Kind::kIntx ? DType::kI8 : DType::kU8},
                                     shapes.qdata));
  GQ_RETURN_IF_ERROR(CheckStoredPart(checkpoint, fqn, parts.scale,
                                     {DType::kBF16, DType::kF16, DType::kF32}, shapes.scale));
  GQ_RETURN_IF_ERROR(
      CheckStoredPart(checkpoint, fqn, info.kind == Kind::kMin ? parts.min : parts.zero_point,
                      {DType::kBF16, DType::kF16, DType::kF32, DType::kI8}, shapes.scale));
  return info;
}

}  // namespace

absl::StatusOr<QuantizedCheckpoint> QuantizedCheckpoint::Open(const std::string& path) {
  GQ_ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(path));
  QuantizedCheckpoint result(std::move(checkpoint));
  const std::map<std::string, std::string> metadata = result.checkpoint_.metadata();
  const auto names_it = metadata.find("tensor_names");
  if (names_it == metadata.end()) {  // a plain checkpoint
    for (const std::string& name : result.checkpoint_.TensorNames()) {
      const SafetensorsTensorInfo* info = result.checkpoint_.Find(name);
      result.names_.push_back(name);
      result.infos_[name] = {name, Kind::kPlain, info->shape, 0, 0};
    }
    return result;
  }
  if (const auto it = metadata.find("gquant.convention");
      it != metadata.end() && it->second != kGquantConvention) {
    return absl::UnimplementedError(
        absl::StrFormat("checkpoint '%s': unknown gquant.convention '%s' (this build reads '%s')",
                        path, it->second, std::string(kGquantConvention)));
  }
  const absl::Status status = result.ReadWeightInfos(metadata, names_it->second);
  if (!status.ok()) return Annotate(status, "checkpoint '", path, "'");
  return result;
}

absl::Status QuantizedCheckpoint::ReadWeightInfos(
    const std::map<std::string, std::string>& metadata, const std::string& tensor_names) {
  GQ_ASSIGN_OR_RETURN(const Json names, ParseMetadataJson("tensor_names", tensor_names));
  if (!names.is_array()) return MetadataError("tensor_names", "expected a JSON list");
  for (const Json& name_json : names) {
    if (!name_json.is_string()) return MetadataError("tensor_names", "expected strings");
    const std::string fqn = name_json.get<std::string>();
    if (infos_.contains(fqn)) return MetadataError(fqn, "listed twice in tensor_names");
    const auto entry_it = metadata.find(fqn);
    if (entry_it == metadata.end()) return MetadataError(fqn, "no metadata entry");
    GQ_ASSIGN_OR_RETURN(const Json entry, ParseMetadataJson(fqn, entry_it->second));
    const Json* type_json = Member(entry, "_type");
    if (type_json == nullptr || !type_json->is_string()) {
      return MetadataError(fqn, "metadata entry is not an object with a string _type");
    }
    const std::string type = type_json->get<std::string>();
    QuantizedWeightInfo info{fqn};
    if (type == "Tensor") {
      const SafetensorsTensorInfo* stored = checkpoint_.Find(fqn);
      if (stored == nullptr) return MetadataError(fqn, "listed but not stored");
      info.shape = stored->shape;
    } else if (type == kInt4Type || type == kIntxType || type == kMinType) {
      GQ_ASSIGN_OR_RETURN(info, QuantizedInfoOf(checkpoint_, fqn, type, Member(entry, "_data")));
    } else {
      return absl::UnimplementedError(
          absl::StrFormat("quantized weight '%s': unsupported _type '%s'", fqn, type));
    }
    names_.push_back(fqn);
    infos_[fqn] = std::move(info);
  }
  return absl::OkStatus();
}

const QuantizedWeightInfo* QuantizedCheckpoint::Find(std::string_view fqn) const {
  const auto it = infos_.find(fqn);
  return it == infos_.end() ? nullptr : &it->second;
}

void QuantizedCheckpoint::Release(std::string_view fqn) const {
  checkpoint_.Release(fqn);
  if (const auto parts = FlattenedNamesOf(fqn); parts.ok()) {
    for (const std::string* name :
         {&parts->qdata, &parts->scale, &parts->zero_point, &parts->min}) {
      checkpoint_.Release(*name);
    }
  }
}

std::string QuantizedCheckpoint::recipe_json() const {
  const auto metadata = checkpoint_.metadata();
  const auto it = metadata.find("gquant.recipe");
  return it == metadata.end() ? "" : it->second;
}

absl::StatusOr<std::vector<float>> QuantizedCheckpoint::Dequantize(std::string_view fqn) const {
  const QuantizedWeightInfo* info = Find(fqn);
  if (info == nullptr) return DequantizeRows(fqn, 0, 0);  // the NotFound error
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < info->shape.size(); ++d) rows *= info->shape[d];
  return DequantizeRows(fqn, 0, rows);
}

absl::StatusOr<UnpackedMatrix> QuantizedCheckpoint::Unpack(std::string_view fqn,
                                                           int64_t matrix) const {
  const QuantizedWeightInfo* info = Find(fqn);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrFormat("checkpoint '%s': no weight '%s'",
                                               checkpoint_.directory(), std::string(fqn)));
  }
  if (info->kind == Kind::kPlain) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': a plain %s tensor has no quantized form to unpack",
                        std::string(fqn), ShapeToString(info->shape)));
  }
  const int64_t n = info->shape[info->shape.size() - 2], k = info->shape.back();
  int64_t matrices = 1;
  for (size_t d = 0; d + 2 < info->shape.size(); ++d) matrices *= info->shape[d];
  if (matrix < 0 || matrix >= matrices) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': matrix %d is outside its %d matrices (shape %s)",
                        std::string(fqn), matrix, matrices, ShapeToString(info->shape)));
  }
  const Kind kind = info->kind;
  GQ_ASSIGN_OR_RETURN(const QuantizedTensors stored, GetQuantizedTensors(checkpoint_, *info));
  const Tensor &qdata = stored.qdata, &scale = stored.scale, &zero = stored.zero;
  return UnpackStored({{kind, info->bits, n, k, info->group_size},
                       qdata.bytes(),
                       scale.dtype(),
                       scale.bytes(),
                       zero.dtype(),
                       zero.bytes()},
                      matrix);
}

absl::StatusOr<std::vector<float>> QuantizedCheckpoint::DequantizeRows(std::string_view fqn,
                                                                       int64_t row_begin,
                                                                       int64_t rows) const {
  const QuantizedWeightInfo* info = Find(fqn);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrFormat("checkpoint '%s': no weight '%s'",
                                               checkpoint_.directory(), std::string(fqn)));
  }
  // Rows are the shape's leading dims flattened; a 0-D or 1-D tensor is one row.
  const int64_t k = info->shape.empty() ? 1 : info->shape.back();
  int64_t total_rows = 1;
  for (size_t d = 0; d + 1 < info->shape.size(); ++d) total_rows *= info->shape[d];
  if (row_begin < 0 || rows < 0 || row_begin + rows > total_rows) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': rows [%d, %d) are outside its %d rows", std::string(fqn),
                        row_begin, row_begin + rows, total_rows));
  }
  std::vector<float> out(rows * k);
  if (info->kind == Kind::kPlain) {
    GQ_ASSIGN_OR_RETURN(const Tensor tensor, checkpoint_.Get(fqn));
    const int64_t item = DTypeSize(tensor.dtype());
    GQ_RETURN_IF_ERROR(ConvertToFloat(
        tensor.dtype(), tensor.bytes().subspan(row_begin * k * item, rows * k * item), out));
    return out;
  }
  const Kind kind = info->kind;
  GQ_ASSIGN_OR_RETURN(const QuantizedTensors stored, GetQuantizedTensors(checkpoint_, *info));
  const Tensor &qdata = stored.qdata, &scale_part = stored.scale, &zero_part = stored.zero;

  const int64_t n = info->shape[info->shape.size() - 2];
  const int64_t group = info->group_size, g_count = k / group;
  // The rows' scales and zeros as float [rows, G]. Int4 stores them [E, G, N],
  // so each (matrix, group) gives a contiguous run over rows; the others store
  // [E, N, G], contiguous for the whole range.
  std::vector<float> scale(rows * g_count), zero(rows * g_count);
  const auto convert = [](const Tensor& part, int64_t first, std::span<float> dst) {
    const int64_t item = DTypeSize(part.dtype());
    return ConvertToFloat(part.dtype(), part.bytes().subspan(first * item, dst.size() * item), dst);
  };
  if (kind == Kind::kInt4) {
    std::vector<float> run;
    for (int64_t r = 0; r < rows;) {
      const int64_t e = (row_begin + r) / n, first = (row_begin + r) % n;
      const int64_t count = std::min(rows - r, n - first);
      run.resize(count);
      for (int64_t g = 0; g < g_count; ++g) {
        for (auto [part, dst] : {std::pair{&scale_part, &scale}, std::pair{&zero_part, &zero}}) {
          GQ_RETURN_IF_ERROR(convert(*part, (e * g_count + g) * n + first, run));
          for (int64_t i = 0; i < count; ++i) (*dst)[(r + i) * g_count + g] = run[i];
        }
      }
      r += count;
    }
  } else {
    GQ_RETURN_IF_ERROR(convert(scale_part, row_begin * g_count, scale));
    GQ_RETURN_IF_ERROR(convert(zero_part, row_begin * g_count, zero));
  }

  const bool nibbles = PacksNibbles(kind, info->bits);
  const auto* q = reinterpret_cast<const uint8_t*>(qdata.bytes().data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < g_count; ++g) {
      const float s = scale[r * g_count + g], z = zero[r * g_count + g];
      for (int64_t c = g * group; c < (g + 1) * group; ++c) {
        const int64_t i = (row_begin + r) * k + c;
        const int code = nibbles ? (q[i / 2] >> (4 * (i & 1))) & 0xf
                                 : (kind == Kind::kIntx ? static_cast<int8_t>(q[i]) : q[i]);
        // ExecuTorch's (q - z) * s (§2.6), or ggml's q * d - m: both in float32.
        out[r * k + c] = kind == Kind::kMin ? static_cast<float>(code) * s - z
                                            : (static_cast<float>(code) - z) * s;
      }
    }
  }
  return out;
}

}  // namespace gquant
