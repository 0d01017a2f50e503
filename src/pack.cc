#include "gquant/pack.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gguf_unpack_rows.h"
#include "gquant/dtype.h"
#include "gquant/ggml_blocks.h"
#include "gquant/gguf.h"
#include "gquant/gguf_unpack.h"
#include "gquant/status.h"
#include "gquant/tensor.h"
#include "int4_mma_layout.h"
#include "int8_layout.h"

namespace gquant {
namespace {

using Kind = QuantizedWeightInfo::Kind;

constexpr std::string_view kBackendNames[] = {"cpu", "cuda"};
constexpr std::string_view kSourceNames[] = {"int4",      "intx",      "min4",     "minx",
                                             "gguf_q8_0", "gguf_q6_K", "gguf_q4_K"};
static_assert(std::size(kSourceNames) == static_cast<size_t>(PackSource::kGgufQ4_K) + 1);

// ---- GGUF blocks -> unpacked rows ----
// Rows decode with gguf_unpack.cc's row decoders (gguf_unpack_rows.h), the
// codes and parameters of gguf_unpack.h's table, straight into the unpacked
// form: packers skip the file layout.

// A GGUF type read directly, and the unpacked form its rows decode into.
struct GgufSource {
  PackSource source;
  GgmlType type;
  Kind kind;
  int bits;
  int group_size;
};

constexpr GgufSource kGgufSources[] = {
    {PackSource::kGgufQ8_0, GgmlType::kQ8_0, Kind::kIntx, 8, kQK},
    {PackSource::kGgufQ6_K, GgmlType::kQ6_K, Kind::kIntx, 6, 16},
    {PackSource::kGgufQ4_K, GgmlType::kQ4_K, Kind::kMin, 4, 32},
};

constexpr const GgufSource* FindGgufSource(PackSource source) {
  for (const GgufSource& s : kGgufSources) {
    if (s.source == source) return &s;
  }
  return nullptr;
}

// ---- row suppliers: rows [begin, begin + count) of one matrix, unpacked ----

// A matrix already in the unpacked form: sub-views, no copy.
class ViewRows {
 public:
  explicit ViewRows(const UnpackedMatrixView& matrix) : matrix_(matrix) {}
  const QuantizedMatrixInfo& info() const { return matrix_.info; }
  UnpackedMatrixView operator()(int64_t begin, int64_t count) {
    const int64_t k = matrix_.info.cols, g = matrix_.info.groups();
    UnpackedMatrixView rows = matrix_;
    rows.info.rows = count;
    rows.codes = matrix_.codes.subspan(begin * k, count * k);
    rows.scale = matrix_.scale.subspan(begin * g, count * g);
    rows.zero = matrix_.zero.subspan(begin * g, count * g);
    return rows;
  }

 private:
  UnpackedMatrixView matrix_;
};

// GGUF blocks, decoded by `unpack_row` into a buffer reused from call to
// call. The caller has checked the blocks' size.
class GgufRows {
 public:
  GgufRows(const GgufSource& source, GgufRowUnpackFn unpack_row, std::span<const std::byte> blocks,
           int64_t rows, int64_t cols)
      : unpack_row_(unpack_row),
        blocks_(blocks),
        info_{source.kind, source.bits, rows, cols, source.group_size},
        row_bytes_(static_cast<int64_t>(blocks.size()) / rows) {}
  const QuantizedMatrixInfo& info() const { return info_; }
  UnpackedMatrixView operator()(int64_t begin, int64_t count) {
    const int64_t k = info_.cols, g = info_.groups();
    codes_.resize(count * k);
    scale_.resize(count * g);
    zero_.resize(count * g);
    for (int64_t r = 0; r < count; ++r) {
      unpack_row_(blocks_.data() + (begin + r) * row_bytes_, k,
                  {codes_.data() + r * k, scale_.data() + r * g, zero_.data() + r * g});
    }
    QuantizedMatrixInfo info = info_;
    info.rows = count;
    return {info, codes_, scale_, zero_};
  }

 private:
  GgufRowUnpackFn unpack_row_;
  std::span<const std::byte> blocks_;
  QuantizedMatrixInfo info_;
  int64_t row_bytes_;
  std::vector<int8_t> codes_;
  std::vector<float> scale_, zero_;
};

// ---- layout writers: one per layout, over any row supplier ----

// Rows per step: bounds the decode buffers, and a multiple of the int4 tile
// height so every int4 step is whole tiles.
constexpr int64_t kStepRows = 4 * cuda::kInt4MmaRows;

template <typename T>
void CopyInto(std::vector<std::byte>& dst, int64_t byte_offset, std::span<const T> src) {
  std::memcpy(dst.data() + byte_offset, src.data(), src.size_bytes());
}

template <typename Rows>
absl::StatusOr<PackedMatrix> WriteCpuUnpacked(Rows& rows) {
  const QuantizedMatrixInfo& info = rows.info();
  const int64_t n = info.rows, k = info.cols, g = info.groups();
  PackedMatrix out{kCpuUnpackedLayout, info};
  std::vector<std::byte>& codes = out.parts["codes"];
  std::vector<std::byte>& scale = out.parts["scale"];
  std::vector<std::byte>& zero = out.parts["zero"];
  codes.resize(n * k);
  scale.resize(n * g * sizeof(float));
  zero.resize(n * g * sizeof(float));
  for (int64_t r = 0; r < n; r += kStepRows) {
    const UnpackedMatrixView step = rows(r, std::min(kStepRows, n - r));
    CopyInto(codes, r * k, step.codes);
    CopyInto(scale, r * g * int64_t{sizeof(float)}, step.scale);
    CopyInto(zero, r * g * int64_t{sizeof(float)}, step.zero);
  }
  return out;
}

template <typename Rows>
absl::StatusOr<PackedMatrix> WriteInt8Rows(Rows& rows) {
  const QuantizedMatrixInfo& info = rows.info();
  const int64_t n = info.rows, k = info.cols, g = info.groups();
  GQ_RETURN_IF_ERROR(cuda::CheckInt8RowsShape(n, k, info.group_size));
  PackedMatrix out{kCudaInt8RowsLayout, info};
  std::vector<std::byte>& codes = out.parts["codes"];
  std::vector<std::byte>& params = out.parts["params"];
  codes.resize(n * k);
  params.resize(n * g * 2 * sizeof(float));
  // The layout is row-major in both parts, so a step's rows are one run of each.
  for (int64_t r = 0; r < n; r += kStepRows) {
    const UnpackedMatrixView step = rows(r, std::min(kStepRows, n - r));
    GQ_ASSIGN_OR_RETURN(
        const cuda::PackedInt8Rows packed,
        cuda::PackInt8Rows(step.codes, step.scale, step.zero, step.info.rows, k, info.group_size));
    CopyInto(codes, r * k, std::span(packed.codes));
    CopyInto(params, r * g * 2 * int64_t{sizeof(float)}, std::span(packed.params));
  }
  return out;
}

bool Bf16Exact(float v) { return BFloat16ToFloat(FloatToBFloat16(v)) == v; }

template <typename Rows>
absl::StatusOr<PackedMatrix> WriteInt4Mma(Rows& rows) {
  const QuantizedMatrixInfo& info = rows.info();
  const int64_t n = info.rows, k = info.cols, g = info.groups();
  GQ_RETURN_IF_ERROR(cuda::CheckInt4MmaShape(n, k, info.group_size));
  PackedMatrix out{kCudaInt4Mma16Layout, info};
  std::vector<std::byte>& qweight = out.parts["qweight"];
  std::vector<std::byte>& params = out.parts["params"];
  qweight.resize(n * k / 2);
  params.resize(n * g * sizeof(uint32_t));
  // Tiles and params are ordered by 16-row block first, so whole blocks of
  // rows (n % 16 == 0, kStepRows % 16 == 0) are one run of each part.
  for (int64_t r = 0; r < n; r += kStepRows) {
    const UnpackedMatrixView step = rows(r, std::min(kStepRows, n - r));
    GQ_ASSIGN_OR_RETURN(
        const cuda::PackedInt4Mma packed,
        cuda::PackInt4Mma(step.codes, step.scale, step.zero, step.info.rows, k, info.group_size));
    CopyInto(qweight, r * k / 2, std::span(packed.qweight));
    CopyInto(params, r * g * int64_t{sizeof(uint32_t)}, std::span(packed.params));
    out.exact = out.exact && std::all_of(step.scale.begin(), step.scale.end(), Bf16Exact) &&
                std::all_of(step.zero.begin(), step.zero.end(), Bf16Exact);
  }
  return out;
}

// ---- table functions ----

// A valid unpacked matrix whose source is one of `accepted` (the sources the
// table gives this function).
absl::Status CheckUnpacked(const UnpackedMatrixView& matrix, std::string_view layout,
                           std::initializer_list<PackSource> accepted) {
  GQ_RETURN_IF_ERROR(
      Annotate(ValidateUnpackedMatrix(matrix, "input"), std::string(layout), " packer"));
  GQ_ASSIGN_OR_RETURN(const PackSource source, PackSourceOf(matrix.info));
  if (std::find(accepted.begin(), accepted.end(), source) == accepted.end()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s packer: cannot pack a %s matrix",
                                                      std::string(layout), PackSourceName(source)));
  }
  return absl::OkStatus();
}

absl::StatusOr<PackedMatrix> PackCpuUnpacked(const UnpackedMatrixView& matrix) {
  GQ_RETURN_IF_ERROR(
      CheckUnpacked(matrix, kCpuUnpackedLayout,
                    {PackSource::kInt4, PackSource::kIntx, PackSource::kMin4, PackSource::kMinx}));
  ViewRows rows(matrix);
  return WriteCpuUnpacked(rows);
}

absl::StatusOr<PackedMatrix> PackCudaInt4Mma(const UnpackedMatrixView& matrix) {
  GQ_RETURN_IF_ERROR(
      CheckUnpacked(matrix, kCudaInt4Mma16Layout, {PackSource::kInt4, PackSource::kMin4}));
  ViewRows rows(matrix);
  return WriteInt4Mma(rows);
}

absl::StatusOr<PackedMatrix> PackCudaInt8Rows(const UnpackedMatrixView& matrix) {
  GQ_RETURN_IF_ERROR(
      CheckUnpacked(matrix, kCudaInt8RowsLayout, {PackSource::kIntx, PackSource::kMinx}));
  ViewRows rows(matrix);
  return WriteInt8Rows(rows);
}

// `blocks` holds exactly one [rows, cols] matrix of `source`'s blocks.
absl::Status CheckGgufBlocks(const GgufSource& source, std::span<const std::byte> blocks,
                             int64_t rows, int64_t cols) {
  const GgmlTypeTraits& traits = *FindGgmlType(static_cast<uint32_t>(source.type));
  if (rows <= 0 || cols <= 0 || cols % traits.block_elements != 0 ||
      static_cast<int64_t>(blocks.size()) !=
          rows * (cols / traits.block_elements) * traits.block_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s blocks: expected a [rows, cols] matrix with cols a multiple of %d and %d-byte blocks, "
        "but got [%d, %d] and %d bytes",
        traits.name, traits.block_elements, traits.block_bytes, rows, cols, blocks.size()));
  }
  return absl::OkStatus();
}

// Packs GGUF source `kSource` through layout writer `Write`.
template <PackSource kSource, absl::StatusOr<PackedMatrix> (*Write)(GgufRows&)>
absl::StatusOr<PackedMatrix> PackGguf(std::span<const std::byte> blocks, int64_t rows,
                                      int64_t cols) {
  constexpr const GgufSource* source = FindGgufSource(kSource);
  static_assert(source != nullptr);
  GQ_RETURN_IF_ERROR(CheckGgufBlocks(*source, blocks, rows, cols));
  const GgufRowUnpackFn unpack_row = FindGgufRowUnpacker(source->type);
  if (unpack_row == nullptr) {
    return absl::InternalError(
        absl::StrFormat("%s: no GGUF row decoder", std::string(PackSourceName(kSource))));
  }
  GgufRows supplier(*source, unpack_row, blocks, rows, cols);
  return Write(supplier);
}

// The registry. Sources without a cuda row have no kernel yet (Unimplemented).
constexpr Packer kPackers[] = {
    {PackSource::kInt4, PackBackend::kCpu, kCpuUnpackedLayout, PackCpuUnpacked, nullptr},
    {PackSource::kIntx, PackBackend::kCpu, kCpuUnpackedLayout, PackCpuUnpacked, nullptr},
    {PackSource::kMin4, PackBackend::kCpu, kCpuUnpackedLayout, PackCpuUnpacked, nullptr},
    {PackSource::kMinx, PackBackend::kCpu, kCpuUnpackedLayout, PackCpuUnpacked, nullptr},
    {PackSource::kGgufQ8_0, PackBackend::kCpu, kCpuUnpackedLayout, nullptr,
     PackGguf<PackSource::kGgufQ8_0, WriteCpuUnpacked<GgufRows>>},
    {PackSource::kGgufQ6_K, PackBackend::kCpu, kCpuUnpackedLayout, nullptr,
     PackGguf<PackSource::kGgufQ6_K, WriteCpuUnpacked<GgufRows>>},
    {PackSource::kGgufQ4_K, PackBackend::kCpu, kCpuUnpackedLayout, nullptr,
     PackGguf<PackSource::kGgufQ4_K, WriteCpuUnpacked<GgufRows>>},
    {PackSource::kInt4, PackBackend::kCuda, kCudaInt4Mma16Layout, PackCudaInt4Mma, nullptr},
    {PackSource::kMin4, PackBackend::kCuda, kCudaInt4Mma16Layout, PackCudaInt4Mma, nullptr},
    {PackSource::kIntx, PackBackend::kCuda, kCudaInt8RowsLayout, PackCudaInt8Rows, nullptr},
    {PackSource::kMinx, PackBackend::kCuda, kCudaInt8RowsLayout, PackCudaInt8Rows, nullptr},
    {PackSource::kGgufQ8_0, PackBackend::kCuda, kCudaInt8RowsLayout, nullptr,
     PackGguf<PackSource::kGgufQ8_0, WriteInt8Rows<GgufRows>>},
    {PackSource::kGgufQ6_K, PackBackend::kCuda, kCudaInt8RowsLayout, nullptr,
     PackGguf<PackSource::kGgufQ6_K, WriteInt8Rows<GgufRows>>},
    {PackSource::kGgufQ4_K, PackBackend::kCuda, kCudaInt4Mma16Layout, nullptr,
     PackGguf<PackSource::kGgufQ4_K, WriteInt4Mma<GgufRows>>},
};

// At most one row per (source, backend). (Which function is set per source
// is checked in pack_test: GCC cannot fold function addresses under UBSan.)
constexpr bool PackersAreUnique() {
  for (size_t i = 0; i < std::size(kPackers); ++i) {
    for (size_t j = i + 1; j < std::size(kPackers); ++j) {
      if (kPackers[i].source == kPackers[j].source && kPackers[i].backend == kPackers[j].backend) {
        return false;
      }
    }
  }
  return true;
}
static_assert(PackersAreUnique());

std::string PairName(PackSource source, PackBackend backend) {
  return absl::StrCat(std::string(PackSourceName(source)), " -> ",
                      std::string(PackBackendName(backend)));
}

}  // namespace

// Both name lookups tolerate values outside the enum (a cast from a newer
// build's number), so error messages can always name them.
std::string_view PackBackendName(PackBackend backend) {
  const auto i = static_cast<size_t>(backend);
  return i < std::size(kBackendNames) ? kBackendNames[i] : "unknown backend";
}

absl::StatusOr<PackBackend> PackBackendFromName(std::string_view name) {
  for (size_t i = 0; i < std::size(kBackendNames); ++i) {
    if (kBackendNames[i] == name) return static_cast<PackBackend>(i);
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("pack backend '%s': expected 'cpu' or 'cuda'", std::string(name)));
}

std::string_view PackSourceName(PackSource source) {
  const auto i = static_cast<size_t>(source);
  return i < std::size(kSourceNames) ? kSourceNames[i] : "unknown source";
}

bool IsGgufPackSource(PackSource source) { return FindGgufSource(source) != nullptr; }

absl::StatusOr<PackSource> PackSourceOf(const QuantizedMatrixInfo& info) {
  switch (info.kind) {
    case Kind::kInt4:
      if (info.bits == 4) return PackSource::kInt4;
      break;
    case Kind::kIntx:
      if (info.bits >= 1 && info.bits <= 8) return PackSource::kIntx;
      break;
    case Kind::kMin:
      if (info.bits == 4) return PackSource::kMin4;
      if (info.bits == 5 || info.bits == 6) return PackSource::kMinx;
      break;
    case Kind::kPlain:
      break;
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "matrix kind %d with %d bits is no pack source (expected Int4 4-bit, Intx 1..8-bit or the "
      "min form 4..6-bit)",
      static_cast<int>(info.kind), info.bits));
}

absl::StatusOr<PackSource> GgufPackSourceOf(GgmlType type) {
  for (const GgufSource& s : kGgufSources) {
    if (s.type == type) return s.source;
  }
  return absl::UnimplementedError(
      absl::StrFormat("ggml type %s is not packed directly (direct: q8_0, q6_K, q4_K)",
                      GgmlTypeName(static_cast<uint32_t>(type))));
}

absl::StatusOr<std::span<const std::byte>> PackedMatrix::Part(std::string_view name) const {
  const auto it = parts.find(name);
  if (it == parts.end()) {
    return absl::NotFoundError(absl::StrFormat("packed matrix (%s): no part '%s'",
                                               std::string(layout), std::string(name)));
  }
  return std::span<const std::byte>(it->second);
}

int64_t PackedMatrix::num_bytes() const {
  int64_t total = 0;
  for (const auto& [name, bytes] : parts) total += static_cast<int64_t>(bytes.size());
  return total;
}

absl::StatusOr<UnpackedMatrixView> CpuUnpackedView(const PackedMatrix& packed) {
  if (packed.layout != kCpuUnpackedLayout) {
    return absl::InvalidArgumentError(
        absl::StrFormat("packed matrix: expected layout '%s', but got '%s'",
                        std::string(kCpuUnpackedLayout), std::string(packed.layout)));
  }
  const QuantizedMatrixInfo& info = packed.info;
  GQ_ASSIGN_OR_RETURN(const std::span<const std::byte> codes, packed.Part("codes"));
  GQ_ASSIGN_OR_RETURN(const std::span<const std::byte> scale, packed.Part("scale"));
  GQ_ASSIGN_OR_RETURN(const std::span<const std::byte> zero, packed.Part("zero"));
  if (scale.size() % sizeof(float) != 0 || zero.size() % sizeof(float) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cpu_unpacked matrix: float parts of %d and %d bytes", scale.size(), zero.size()));
  }
  // Vector storage is aligned for any scalar, so the float parts are viewed in place.
  const UnpackedMatrixView view{
      info,
      {reinterpret_cast<const int8_t*>(codes.data()), codes.size()},
      {reinterpret_cast<const float*>(scale.data()), scale.size() / sizeof(float)},
      {reinterpret_cast<const float*>(zero.data()), zero.size() / sizeof(float)}};
  GQ_RETURN_IF_ERROR(ValidateUnpackedMatrix(view, "cpu_unpacked"));
  return view;
}

std::span<const Packer> Packers() { return kPackers; }

absl::StatusOr<const Packer*> FindPacker(PackSource source, PackBackend backend) {
  for (const Packer& packer : kPackers) {
    if (packer.source == source && packer.backend == backend) return &packer;
  }
  return absl::UnimplementedError(
      absl::StrFormat("no packer for %s (source format '%s', backend '%s')",
                      PairName(source, backend), PackSourceName(source), PackBackendName(backend)));
}

namespace {

// Finds the packer of (`source`, `backend`) and runs `pack` on it, naming
// `name` and the pair in any error.
template <typename Pack>
absl::StatusOr<PackedMatrix> RunPacker(const absl::StatusOr<PackSource>& source,
                                       PackBackend backend, std::string_view name, Pack pack) {
  if (!source.ok()) {
    return Annotate(source.status(), std::string(name), " (-> ",
                    std::string(PackBackendName(backend)), ")");
  }
  const std::string context =
      absl::StrCat(std::string(name), " (", PairName(*source, backend), ")");
  const absl::StatusOr<const Packer*> packer = FindPacker(*source, backend);
  if (!packer.ok()) return Annotate(packer.status(), context);
  absl::StatusOr<PackedMatrix> packed = pack(**packer);
  if (!packed.ok()) return Annotate(packed.status(), context);
  return packed;
}

}  // namespace

absl::StatusOr<PackedMatrix> PackMatrix(const UnpackedMatrixView& matrix, PackBackend backend,
                                        std::string_view name) {
  return RunPacker(PackSourceOf(matrix.info), backend, name,
                   [&](const Packer& packer) { return packer.pack_unpacked(matrix); });
}

absl::StatusOr<PackedMatrix> PackGgufMatrix(GgmlType type, std::span<const std::byte> blocks,
                                            int64_t rows, int64_t cols, PackBackend backend,
                                            std::string_view name) {
  return RunPacker(GgufPackSourceOf(type), backend, name,
                   [&](const Packer& packer) { return packer.pack_gguf(blocks, rows, cols); });
}

namespace {

// "weight 'a.b' expert 3" for matrix 3 of several, "weight 'a.b'" for one.
std::string MatrixLabel(std::string_view what, std::string_view name, int64_t matrix,
                        int64_t matrices) {
  std::string label = absl::StrCat(std::string(what), " '", std::string(name), "'");
  if (matrices > 1) absl::StrAppend(&label, " expert ", matrix);
  return label;
}

}  // namespace

absl::StatusOr<std::vector<PackedMatrix>> PackWeight(const QuantizedCheckpoint& checkpoint,
                                                     std::string_view fqn, PackBackend backend) {
  const QuantizedWeightInfo* info = checkpoint.Find(fqn);
  if (info == nullptr) return checkpoint.Unpack(fqn, 0).status();  // the NotFound error
  if (info->kind == Kind::kPlain) {
    return absl::InvalidArgumentError(
        absl::StrFormat("weight '%s': a plain %s tensor has nothing to pack for %s",
                        std::string(fqn), ShapeToString(info->shape), PackBackendName(backend)));
  }
  int64_t matrices = 1;
  for (size_t d = 0; d + 2 < info->shape.size(); ++d) matrices *= info->shape[d];
  std::vector<PackedMatrix> out;
  out.reserve(matrices);
  for (int64_t e = 0; e < matrices; ++e) {
    GQ_ASSIGN_OR_RETURN(const UnpackedMatrix unpacked, checkpoint.Unpack(fqn, e));
    GQ_ASSIGN_OR_RETURN(PackedMatrix packed, PackMatrix(unpacked.view(), backend,
                                                        MatrixLabel("weight", fqn, e, matrices)));
    out.push_back(std::move(packed));
  }
  return out;
}

absl::StatusOr<std::vector<PackedMatrix>> PackGgufTensor(const GgufFile& file,
                                                         std::string_view name,
                                                         PackBackend backend) {
  const GgufTensorInfo* tensor = file.FindTensor(name);
  if (tensor == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("GGUF '%s': no tensor '%s'", file.source(), std::string(name)));
  }
  const std::vector<int64_t> shape = tensor->TorchShape();
  const std::string type_name = GgmlTypeName(tensor->type);
  if (shape.size() != 2 && shape.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor '%s' (%s): expected [N, K] or [E, N, K] to pack, but got %s",
                        std::string(name), type_name, ShapeToString(shape)));
  }
  const int64_t matrices = shape.size() == 3 ? shape[0] : 1;
  const int64_t n = shape[shape.size() - 2], k = shape.back();
  GQ_RETURN_IF_ERROR(file.CheckNotTruncated());  // before touching mapped tensor bytes
  const std::span<const std::byte> data = file.TensorData(*tensor);
  const auto type = static_cast<GgmlType>(tensor->type);
  std::vector<PackedMatrix> out;
  out.reserve(matrices);
  if (GgufPackSourceOf(type).ok()) {  // straight from the blocks
    const auto matrix_bytes = static_cast<int64_t>(data.size()) / matrices;
    for (int64_t e = 0; e < matrices; ++e) {
      GQ_ASSIGN_OR_RETURN(PackedMatrix packed,
                          PackGgufMatrix(type, data.subspan(e * matrix_bytes, matrix_bytes), n, k,
                                         backend, MatrixLabel("tensor", name, e, matrices)));
      out.push_back(std::move(packed));
    }
    return out;
  }
  // Other types: the exact gquant form first, then its packer.
  absl::StatusOr<PackedWeight> unpacked = UnpackGgufWeight(std::string(name), shape, type, data);
  if (!unpacked.ok()) {
    return Annotate(unpacked.status(), "packing tensor '", std::string(name), "' (", type_name,
                    ") for ", std::string(PackBackendName(backend)));
  }
  for (int64_t e = 0; e < matrices; ++e) {
    GQ_ASSIGN_OR_RETURN(const UnpackedMatrix matrix, unpacked->Unpack(e));
    GQ_ASSIGN_OR_RETURN(PackedMatrix packed, PackMatrix(matrix.view(), backend,
                                                        MatrixLabel("tensor", name, e, matrices)));
    out.push_back(std::move(packed));
  }
  return out;
}

}  // namespace gquant
