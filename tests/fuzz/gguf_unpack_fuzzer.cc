// Fuzzes the GGUF block unpackers (UnpackGgufWeight) and ggml's dequantizers
// (DequantizeGgml) with arbitrary block bytes. The first input bytes pick the
// ggml type, the rank and the shape; the rest are the blocks. Any byte
// content is valid ggml data, so on success this checks gguf_unpack.h's
// promise: the unpacked form, evaluated as QuantizedCheckpoint::Dequantize
// does, gives float32 values bit-identical to ggml's (NaN only where ggml has
// NaN).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "fuzz_util.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf_unpack.h"

namespace gquant::fuzz {
namespace {

// The unpackable types, plus two that are not (plain F16, Q2_K).
constexpr GgmlType kTypes[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0, GgmlType::kQ4_1,
                               GgmlType::kQ5_1, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K,
                               GgmlType::kF16,  GgmlType::kQ2_K};
// Bounds the work per input (elements of the whole tensor).
constexpr int64_t kMaxElements = int64_t{1} << 18;

bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// QuantizedCheckpoint::DequantizeRows' formulas, on the unpacked form.
std::vector<float> Evaluate(const UnpackedMatrix& m) {
  const int64_t k = m.info.cols, groups = m.info.groups();
  std::vector<float> out(m.codes.size());
  for (int64_t r = 0; r < m.info.rows; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const float code = m.codes[r * k + c];
      const int64_t g = r * groups + c / m.info.group_size;
      out[r * k + c] = m.info.zero_form() == ZeroForm::kMin ? code * m.scale[g] - m.zero[g]
                                                            : (code - m.zero[g]) * m.scale[g];
    }
  }
  return out;
}

}  // namespace
}  // namespace gquant::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gquant;
  fuzz::ByteReader in(data, size);
  const GgmlType type = fuzz::kTypes[in.Byte() % std::size(fuzz::kTypes)];
  const uint8_t mode = in.Byte();
  const bool experts = mode & 1;
  const bool exact_size = (mode & 6) != 6;  // 1 in 4 inputs hand over all the rest
  const int64_t e = experts ? 1 + in.Byte() % 3 : 1;
  const int64_t n = 1 + in.Byte() % 8;
  const std::span<const std::byte> rest = in.Rest();

  const GgmlTypeTraits& traits = *FindGgmlType(static_cast<uint32_t>(type));
  const int64_t blocks_per_row =
      std::clamp<int64_t>(static_cast<int64_t>(rest.size()) / (e * n * traits.block_bytes), 1,
                          fuzz::kMaxElements / (e * n * traits.block_elements));
  const int64_t k = blocks_per_row * traits.block_elements;
  const size_t tensor_bytes = static_cast<size_t>(e * n * blocks_per_row * traits.block_bytes);
  const std::span<const std::byte> blocks =
      exact_size ? rest.first(std::min(rest.size(), tensor_bytes)) : rest;

  std::vector<int64_t> shape = {n, k};
  if (experts) shape.insert(shape.begin(), e);
  absl::StatusOr<PackedWeight> packed = UnpackGgufWeight("blk.0.fuzz.weight", shape, type, blocks);
  if (!packed.ok()) {
    fuzz::CheckErrorNames(packed.status(), "blk.0.fuzz.weight");
    const bool unpackable = GgufUnpackFormatOf(type).ok();
    FUZZ_CHECK(!unpackable || blocks.size() != tensor_bytes);
    return 0;
  }
  FUZZ_CHECK(blocks.size() == tensor_bytes);

  std::vector<float> reference(static_cast<size_t>(e * n * k));
  FUZZ_CHECK(DequantizeGgml(type, blocks, reference).ok());
  for (int64_t matrix = 0; matrix < e; ++matrix) {
    const absl::StatusOr<UnpackedMatrix> unpacked = packed->Unpack(matrix);
    FUZZ_CHECK(unpacked.ok());
    FUZZ_CHECK(unpacked->info.rows == n && unpacked->info.cols == k);
    const std::vector<float> values = fuzz::Evaluate(*unpacked);
    for (int64_t i = 0; i < n * k; ++i) {
      if (!fuzz::SameFloat(values[i], reference[matrix * n * k + i])) {
        std::fprintf(stderr, "element %lld of matrix %lld: unpacked %a, ggml %a\n",
                     static_cast<long long>(i), static_cast<long long>(matrix), values[i],
                     reference[matrix * n * k + i]);
        FUZZ_CHECK(false);
      }
    }
  }
  return 0;
}
