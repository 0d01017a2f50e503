#include <cstring>

#include "absl/strings/str_format.h"
#include "gquant/dtype.h"
#include "int4_mma_layout.h"

namespace gquant::cuda {

absl::Status CheckInt4MmaShape(int64_t n, int64_t k, int64_t group_size) {
  if (n <= 0 || n % kInt4MmaRows != 0 || k <= 0 || k % kInt4MmaTileK != 0 ||
      !(group_size == 32 || (group_size > 0 && group_size % kInt4MmaTileK == 0)) ||
      k % group_size != 0 || n > (int64_t{1} << 30) || k > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda_int4_mma16 layout: expected N %% 16 == 0, K %% 64 == 0 and a group size of 32 or "
        "a multiple of 64 dividing K, but got N=%d K=%d group=%d",
        n, k, group_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<PackedInt4Mma> PackInt4Mma(std::span<const int8_t> codes,
                                          std::span<const float> scale, std::span<const float> zero,
                                          int64_t n, int64_t k, int64_t group_size) {
  if (absl::Status s = CheckInt4MmaShape(n, k, group_size); !s.ok()) return s;
  const int64_t groups = k / group_size;
  if (static_cast<int64_t>(codes.size()) != n * k ||
      static_cast<int64_t>(scale.size()) != n * groups ||
      static_cast<int64_t>(zero.size()) != n * groups) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda_int4_mma16 packer: expected %d codes and %d scales and zeros for [%d, %d] group "
        "%d, but got %d, %d and %d",
        n * k, n * groups, n, k, group_size, codes.size(), scale.size(), zero.size()));
  }
  PackedInt4Mma out;
  out.qweight.assign(n * k / 2, 0);
  const int64_t k_tiles = k / kInt4MmaTileK;
  for (int64_t row = 0; row < n; ++row) {
    const int8_t* code_row = codes.data() + row * k;
    for (int64_t col = 0; col < k; ++col) {
      const int8_t q = code_row[col];
      if (q < 0 || q > 15) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "cuda_int4_mma16 packer: code %d at row %d column %d is outside 0..15", q, row, col));
      }
      const Int4MmaSlot slot = Int4MmaSlotOf(static_cast<int>(row % kInt4MmaRows),
                                             static_cast<int>(col % kInt4MmaTileK));
      const int64_t tile = row / kInt4MmaRows * k_tiles + col / kInt4MmaTileK;
      uint8_t* word = out.qweight.data() + tile * kInt4MmaTileBytes + slot.word_offset;
      uint32_t bits;  // words are little-endian in memory, as on the GPU
      std::memcpy(&bits, word, 4);
      bits |= static_cast<uint32_t>(q) << slot.shift;
      std::memcpy(word, &bits, 4);
    }
  }
  out.params.resize(n * groups);
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t g = 0; g < groups; ++g) {
      out.params[Int4MmaParamIndex(row, g, groups)] =
          FloatToBFloat16(scale[row * groups + g]) |
          (static_cast<uint32_t>(FloatToBFloat16(zero[row * groups + g])) << 16);
    }
  }
  return out;
}

}  // namespace gquant::cuda
