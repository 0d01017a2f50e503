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

absl::StatusOr<PackedInt4Mma> InterleaveInt4MmaRowHalves(std::span<const uint8_t> a_qweight,
                                                         std::span<const uint32_t> a_params,
                                                         std::span<const uint8_t> b_qweight,
                                                         std::span<const uint32_t> b_params,
                                                         int64_t n, int64_t k, int64_t group_size) {
  if (absl::Status s = CheckInt4MmaShape(2 * n, k, group_size); !s.ok()) return s;
  if (n % kInt4MmaRows != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda_int4_mma16 row-half interleave: expected N %% 16 == 0, but got N=%d", n));
  }
  const int64_t groups = k / group_size;
  const size_t qweight_bytes = static_cast<size_t>(n * k / 2);
  const size_t params_words = static_cast<size_t>(n * groups);
  if (a_qweight.size() != qweight_bytes || b_qweight.size() != qweight_bytes ||
      a_params.size() != params_words || b_params.size() != params_words) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda_int4_mma16 row-half interleave: expected %d qweight bytes and %d params words per "
        "matrix for [%d, %d] group %d, but got %d / %d and %d / %d",
        qweight_bytes, params_words, n, k, group_size, a_qweight.size(), b_qweight.size(),
        a_params.size(), b_params.size()));
  }
  // Rows r < 8 of a tile sit in the low nibble of each byte of a lane's
  // words, rows r + 8 in the high one (Int4MmaSlotOf: register a0/a2 against
  // a1/a3). Source block s gives output blocks 2 s (its rows 0-7 of a and b)
  // and 2 s + 1 (rows 8-15).
  constexpr uint32_t kLow = 0x0F0F0F0Fu;
  const int64_t k_tiles = k / kInt4MmaTileK;
  const int64_t block_bytes = k_tiles * kInt4MmaTileBytes;
  PackedInt4Mma out;
  out.qweight.resize(2 * qweight_bytes);
  out.params.resize(2 * params_words);
  for (int64_t block = 0; block < n / kInt4MmaRows; ++block) {
    for (int64_t byte = 0; byte < block_bytes; byte += 4) {
      uint32_t a, b;
      std::memcpy(&a, a_qweight.data() + block * block_bytes + byte, 4);
      std::memcpy(&b, b_qweight.data() + block * block_bytes + byte, 4);
      const uint32_t halves[2] = {(a & kLow) | ((b & kLow) << 4), ((a >> 4) & kLow) | (b & ~kLow)};
      for (int h = 0; h < 2; ++h) {
        std::memcpy(out.qweight.data() + (2 * block + h) * block_bytes + byte, &halves[h], 4);
      }
    }
    // params [block][group][8][2]: the pair (row j, row j + 8) of a block.
    for (int64_t g = 0; g < groups; ++g) {
      for (int j = 0; j < 8; ++j) {
        const int64_t source = ((block * groups + g) * 8 + j) * 2;
        for (int h = 0; h < 2; ++h) {
          const int64_t target = (((2 * block + h) * groups + g) * 8 + j) * 2;
          out.params[target] = a_params[source + h];
          out.params[target + 1] = b_params[source + h];
        }
      }
    }
  }
  return out;
}

}  // namespace gquant::cuda
