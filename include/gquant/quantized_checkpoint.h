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
// and w = (q - zero_point) * scale. Kept tensors are stored under their own
// name in their own dtype ("_type": "Tensor").
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

// The three flattened tensor names of a quantized FQN ("a.b.weight" ->
// "a.b._weight_qdata", ...). Returns InvalidArgument for a name without '.'.
struct FlattenedNames {
  std::string qdata;
  std::string scale;
  std::string zero_point;
};
absl::StatusOr<FlattenedNames> FlattenedNamesOf(std::string_view fqn);

// Where and how one quantized weight is stored: validated, no memory held.
class QuantizedLayout {
 public:
  // For a weight of `shape` ([N, K] or [E, N, K]) with `config`. Returns
  // InvalidArgument for another rank, a bad config, K not divisible by the
  // group size, or an odd K for 4-bit.
  static absl::StatusOr<QuantizedLayout> Create(std::string fqn, std::vector<int64_t> shape,
                                                const QuantConfig& config);

  const std::string& fqn() const { return fqn_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const QuantConfig& config() const { return config_; }  // group_size resolved
  int64_t matrices() const { return matrices_; }         // E (1 for 2-D)
  int64_t rows() const { return rows_; }                 // N
  int64_t cols() const { return cols_; }                 // K
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

  // File bytes of qdata / scale / zero_point, in Specs() order.
  std::span<const std::byte> qdata() const { return qdata_; }
  std::span<const std::byte> scale() const { return scale_; }
  std::span<const std::byte> zero_point() const { return zero_point_; }

 private:
  QuantizedLayout layout_;
  std::vector<std::byte> qdata_, scale_, zero_point_;
};

// How one FQN of a quantized checkpoint is stored.
struct QuantizedWeightInfo {
  enum class Kind { kPlain, kInt4, kIntx };
  std::string fqn;
  Kind kind = Kind::kPlain;
  std::vector<int64_t> shape;  // logical (dequantized) shape
  int bits = 0;                // 4..8 for quantized kinds
  int64_t group_size = 0;
};

// Reads a quantized checkpoint (or any safetensors checkpoint: without
// torchao metadata every tensor is plain).
class QuantizedCheckpoint {
 public:
  // Returns the codes of Checkpoint::Open; DataLoss when the torchao metadata
  // is malformed or disagrees with the stored tensors (missing parts, wrong
  // dtypes or shapes); Unimplemented for an unknown _type or convention.
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

 private:
  explicit QuantizedCheckpoint(Checkpoint checkpoint) : checkpoint_(std::move(checkpoint)) {}

  Checkpoint checkpoint_;
  std::vector<std::string> names_;
  std::map<std::string, QuantizedWeightInfo, std::less<>> infos_;
};

}  // namespace gquant

#endif  // GQUANT_QUANTIZED_CHECKPOINT_H_
