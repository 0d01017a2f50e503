// gquant's quantized checkpoint: a safetensors file in the torchao flattening
// schema (spec formats.md §2.3) with ExecuTorch's value convention (§2.1 (2),
// §2.6), so torchao / ExecuTorch users can load it too.
//
// A quantized weight "<module>.<param>" is stored as three tensors
//   <module>._<param>_qdata, <module>._<param>_scale, <module>._<param>_zero_point
// and described in __metadata__ under its FQN. Layouts ([E, ...] prefix for
// 3-D expert tensors):
//   4-bit  Int4Tensor               qdata U8 [N, K/2]: two unsigned codes 0..15 per
//                                   byte, element 2j in the low nibble, 2j+1 high;
//                                   scale BF16 [G, N]; zero_point BF16 [G, N]
//                                   (integer-domain zero, transposed as torchao does)
//   5/6/8  IntxUnpackedToInt8Tensor qdata I8 [N, K]: signed codes;
//                                   scale BF16 [N, G]; zero_point I8 [N, G]
// and w = (q - zero_point) * scale. Scales are BF16 as the quantizers make
// them; a StorageFormat may ask for F16 or F32 (torchao accepts both), which
// the GGUF unpacker needs to keep ggml's fp16 and fp32 scales exact.
//
// gquant's own min form ("_type": "GquantMinTensor"), for ggml's Q4_K, Q5_K,
// Q4_1 and Q5_1, whose w = q * d - m cannot be rewritten as (q - z) * d
// without rounding z = m / d:
//   4..6-bit  GquantMinTensor       qdata U8 [N, K/2] (4-bit, packed as Int4) or
//                                   U8 [N, K] (5/6-bit): unsigned codes;
//                                   scale [N, G]; min [N, G] (F16 or F32)
// and w = q * scale - min in float32. torchao cannot load these.
//
// Kept tensors are stored under their own name in their own dtype
// ("_type": "Tensor").
//
// __metadata__ keys: "tensor_names" (JSON list of FQNs), one JSON string per
// FQN (torchao's _type/_data/_tensor_data_names), "format": "pt", and
// gquant's own: "gquant.convention" = kGquantConvention (the ExecuTorch value
// convention above; torchao's native Int4Tensor convention differs and cannot
// be told apart from the file alone), "gquant.recipe" (the recipe JSON) and
// "gquant.version". Files without "gquant.convention" are read with the
// ExecuTorch convention, which is what its published Gemma 4 checkpoints use.
#ifndef GQUANT_QUANTIZED_CHECKPOINT_H_
#define GQUANT_QUANTIZED_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/checkpoint.h"
#include "gquant/quantize.h"
#include "gquant/safetensors.h"

namespace gquant {

inline constexpr std::string_view kGquantConvention = "executorch-int4-unsigned-v1";
// Written as "gquant.version"; keep equal to the CMake project version.
inline constexpr std::string_view kGquantVersion = "0.1.0";

// The flattened tensor names of a quantized FQN ("a.b.weight" ->
// "a.b._weight_qdata", ...). Returns InvalidArgument for a name without '.'.
struct FlattenedNames {
  std::string qdata;
  std::string scale;
  std::string zero_point;
  std::string min;  // GquantMinTensor's third part, in place of zero_point
};
absl::StatusOr<FlattenedNames> FlattenedNamesOf(std::string_view fqn);

// How the zero of a quantized weight is expressed.
enum class ZeroForm : uint8_t {
  kZeroPoint,  // w = (q - zero_point) * scale: torchao's Int4 / Intx types
  kMin,        // w = q * scale - min, unsigned q: GquantMinTensor
};

// The storage choices that do not change the quantized values.
struct StorageFormat {
  DType scale_dtype = DType::kBF16;  // BF16, F16 or F32; also Int4's zero point and kMin's min
  ZeroForm zero_form = ZeroForm::kZeroPoint;

  friend bool operator==(const StorageFormat&, const StorageFormat&) = default;
};

// How one FQN of a quantized checkpoint is stored.
struct QuantizedWeightInfo {
  enum class Kind { kPlain, kInt4, kIntx, kMin };
  std::string fqn;
  Kind kind = Kind::kPlain;
  std::vector<int64_t> shape;  // logical (dequantized) shape
  int bits = 0;                // 4..8 for quantized kinds (Intx read from torchao files: 1..8)
  int64_t group_size = 0;
};

// The quantization of one [rows, cols] matrix (one expert of an [E, N, K]
// weight), without its data. `kind` fixes the code range and the zero form:
//   kInt4  codes 0..15,                      w = (code - zero_point) * scale
//   kIntx  signed codes of `bits` bits,      w = (code - zero_point) * scale
//   kMin   codes 0..2^bits - 1 (bits 4..6),  w = code * scale - min
// all evaluated in float32, as QuantizedCheckpoint::Dequantize does.
struct QuantizedMatrixInfo {
  QuantizedWeightInfo::Kind kind = QuantizedWeightInfo::Kind::kInt4;
  int bits = 4;
  int64_t rows = 0;  // N
  int64_t cols = 0;  // K
  int64_t group_size = 0;

  ZeroForm zero_form() const {
    return kind == QuantizedWeightInfo::Kind::kMin ? ZeroForm::kMin : ZeroForm::kZeroPoint;
  }
  int64_t groups() const { return group_size > 0 ? cols / group_size : 0; }
  friend bool operator==(const QuantizedMatrixInfo&, const QuantizedMatrixInfo&) = default;
};

// One matrix in gquant's unpacked form (quantize.h), read-only:
//   codes  int8  [rows, cols]
//   scale  float [rows, G]
//   zero   float [rows, G]: the zero point, or the min in the min form
// G = cols / group_size.
struct UnpackedMatrixView {
  QuantizedMatrixInfo info;
  std::span<const int8_t> codes;
  std::span<const float> scale;
  std::span<const float> zero;
};

// InvalidArgument (naming `name`) for a plain kind, bits outside the kind's
// range, a group size that does not divide cols, or spans of the wrong sizes.
// Codes are not range-checked here; packers check what their layout needs.
absl::Status ValidateUnpackedMatrix(const UnpackedMatrixView& matrix, std::string_view name);

// The owning version of UnpackedMatrixView.
struct UnpackedMatrix {
  QuantizedMatrixInfo info;
  std::vector<int8_t> codes;
  std::vector<float> scale;
  std::vector<float> zero;

  UnpackedMatrixView view() const { return {info, codes, scale, zero}; }
};

// Where and how one quantized weight is stored: validated, no memory held.
class QuantizedLayout {
 public:
  // For a weight of `shape` ([N, K] or [E, N, K]) with `config`. Returns
  // InvalidArgument for another rank, a bad config, K not divisible by the
  // group size, an odd K for 4-bit, a scale dtype other than BF16/F16/F32, or
  // the min form with 8 bits.
  static absl::StatusOr<QuantizedLayout> Create(std::string fqn, std::vector<int64_t> shape,
                                                const QuantConfig& config,
                                                const StorageFormat& format = {});

  const std::string& fqn() const { return fqn_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const QuantConfig& config() const { return config_; }  // group_size resolved
  const StorageFormat& format() const { return format_; }
  int64_t matrices() const { return matrices_; }  // E (1 for 2-D)
  int64_t rows() const { return rows_; }          // N
  int64_t cols() const { return cols_; }          // K
  int64_t groups() const { return cols_ / config_.group_size; }

  // The three stored tensors (names, dtypes, shapes), their total size, and
  // the FQN's torchao metadata entry.
  std::vector<SafetensorsTensorSpec> Specs() const;
  int64_t num_bytes() const;
  std::string MetadataJson() const;

 private:
  QuantizedLayout() = default;
  std::string fqn_;
  std::vector<int64_t> shape_;
  QuantConfig config_;
  StorageFormat format_;
  int64_t matrices_ = 1, rows_ = 0, cols_ = 0;
};

// A quantized weight in file layout, owned in memory; filled row block by row
// block from the quantizer's unpacked output.
class PackedWeight {
 public:
  explicit PackedWeight(QuantizedLayout layout);

  const QuantizedLayout& layout() const { return layout_; }

  // Stores rows [row_begin, row_begin + rows) of matrix `matrix` from the
  // quantizer's unpacked form (QuantizedSpans sizes: rows*K, rows*G, rows*G).
  // Returns InvalidArgument for out-of-range rows or sizes, or an Intx zero
  // point that is not an integer in int8 range.
  absl::Status Pack(int64_t matrix, int64_t row_begin, int64_t rows, std::span<const int8_t> codes,
                    std::span<const float> scale, std::span<const float> zero_point);

  // Matrix `matrix` (0 for a 2-D weight) back in the unpacked form, exactly
  // as Pack received it up to the stored dtype's rounding (none for values
  // the dtype holds). InvalidArgument for a matrix out of range.
  absl::StatusOr<UnpackedMatrix> Unpack(int64_t matrix) const;

  // File bytes of qdata / scale / zero_point, in Specs() order.
  std::span<const std::byte> qdata() const { return qdata_; }
  std::span<const std::byte> scale() const { return scale_; }
  std::span<const std::byte> zero_point() const { return zero_point_; }

 private:
  QuantizedLayout layout_;
  std::vector<std::byte> qdata_, scale_, zero_point_;
};

// One weight of a quantized checkpoint being written: quantized (its layout)
// or kept (its plain dtype and shape).
struct QuantizedCheckpointEntry {
  std::string fqn;
  std::optional<QuantizedLayout> layout;  // nullopt: a plain tensor
  DType dtype = DType::kBF16;             // plain tensors only
  std::vector<int64_t> shape;             // plain tensors only
};

// Streams a quantized checkpoint file: every weight is declared up front (the
// header and torchao metadata come first), then payloads are written in any
// order, then Commit renames the temporary file onto `path`.
class QuantizedCheckpointWriter {
 public:
  // `extra_metadata` joins the torchao keys (e.g. "gquant.recipe"); the writer
  // sets "tensor_names", "format", "gquant.convention" and "gquant.version".
  // Returns SafetensorsWriter::Create's errors.
  static absl::StatusOr<std::unique_ptr<QuantizedCheckpointWriter>> Create(
      const std::string& path, const std::vector<QuantizedCheckpointEntry>& entries,
      std::map<std::string, std::string> extra_metadata = {});

  // NotFound for an undeclared weight; SafetensorsWriter::WriteTensor's errors.
  absl::Status WritePlain(std::string_view fqn, std::span<const std::byte> bytes);
  absl::Status WritePacked(const PackedWeight& packed);
  // FailedPrecondition (listing them) when a weight was not written.
  absl::Status Commit();
  // The temporary file written until Commit (gquant-quantize --resume reads it back).
  const std::string& temp_path() const { return writer_->temp_path(); }

 private:
  explicit QuantizedCheckpointWriter(std::unique_ptr<SafetensorsWriter> writer)
      : writer_(std::move(writer)) {}
  std::unique_ptr<SafetensorsWriter> writer_;
};

// Reads a quantized checkpoint (or any safetensors checkpoint: without
// torchao metadata every tensor is plain).
class QuantizedCheckpoint {
 public:
  // Returns the codes of Checkpoint::Open; DataLoss when the torchao metadata
  // is malformed (also: deeper than 64 levels or over 16 MiB of JSON, an FQN
  // listed twice, a quantized weight with an empty last dimension) or
  // disagrees with the stored tensors (missing parts, wrong dtypes or shapes);
  // Unimplemented for an unknown _type or convention. Messages name the
  // checkpoint and the weight.
  static absl::StatusOr<QuantizedCheckpoint> Open(const std::string& path);

  const Checkpoint& checkpoint() const { return checkpoint_; }
  // FQNs in file metadata order (tensor names when there is no metadata).
  const std::vector<std::string>& weight_names() const { return names_; }
  const QuantizedWeightInfo* Find(std::string_view fqn) const;
  // The recipe JSON gquant stored, if any.
  std::string recipe_json() const;

  // The weight in float32 (plain tensors converted, quantized ones
  // dequantized), row-major in its logical shape. NotFound for an unknown FQN.
  absl::StatusOr<std::vector<float>> Dequantize(std::string_view fqn) const;
  // Rows [row_begin, row_begin + rows) of the weight (its leading dims
  // flattened), decoding only what they need: an embedding lookup reads one
  // row, not the table. NotFound for an unknown FQN, InvalidArgument for rows
  // outside the weight.
  absl::StatusOr<std::vector<float>> DequantizeRows(std::string_view fqn, int64_t row_begin,
                                                    int64_t rows) const;
  // Matrix `matrix` of a quantized weight (expert e of [E, N, K]; 0 for a
  // 2-D weight) in the unpacked form, read straight from the stored parts (no
  // dequantization): what packers start from. NotFound for an unknown FQN,
  // InvalidArgument for a plain weight or a matrix out of range, DataLoss for
  // mis-stored parts.
  absl::StatusOr<UnpackedMatrix> Unpack(std::string_view fqn, int64_t matrix) const;
  // Lets the pages of the weight's stored tensors go (Checkpoint::Release), so
  // reading a large checkpoint weight by weight stays near one weight.
  void Release(std::string_view fqn) const;

 private:
  explicit QuantizedCheckpoint(Checkpoint checkpoint) : checkpoint_(std::move(checkpoint)) {}
  // Fills names_ and infos_ from the torchao metadata ("tensor_names" and
  // one entry per FQN), checking every stored part's dtype and shape.
  absl::Status ReadWeightInfos(const std::map<std::string, std::string>& metadata,
                               const std::string& tensor_names);

  Checkpoint checkpoint_;
  std::vector<std::string> names_;
  std::map<std::string, QuantizedWeightInfo, std::less<>> infos_;
};

}  // namespace gquant

#endif  // GQUANT_QUANTIZED_CHECKPOINT_H_
