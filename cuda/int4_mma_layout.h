// Layout "cuda_int4_mma16": int4 weights as the Int4MmaGemv kernel
// (int4_mma_gemv.cuh) and the int4 dequantizer read them. Plain C++ (no CUDA
// headers), so the packer runs in gquant_core on machines without a GPU.
//
// The weight [N, K] is cut into tiles of 16 rows x 64 columns. Each tile is
// 512 contiguous bytes, tiles of a 16-row block follow each other along K, row
// blocks follow each other:  qweight [N/16][K/64][32 lanes][4 words].
// Lane l's 16 bytes are its four mma.m16n8k16 A fragments (one per k16 step s
// = word): nibble 4i and 16 + 4i of word s are the two bf16 halves of register
// a_i (PTX fragment layout: a0 rows g, a1 g + 8, a2 g k + 8, a3 g + 8 k + 8;
// g = l / 4, k = 2 (l % 4) and + 1), entering the mma as bf16 128 + q.
//
// Within a tile the columns are permuted so that (1) lane quad column t finds
// the activations of its B fragments for steps 0-1 in one 16-byte run of x and
// those of steps 2-3 in another, and (2) steps 0-1 cover tile columns 0..31
// and steps 2-3 columns 32..63, so a 32-group is two whole steps:
//   physical column c = 32 h + 8 t + 4 u + e   (h, u in 0..1; t, e in 0..3)
//   is step s = 2 h + u, mma k index 2t + (e % 2) + 8 (e / 2).
// The dot product is a sum over k, so any permutation applied to both W and x
// gives the same result; the kernel loads x in the same order.
//
// params [N/16][G][8][2] as bf16x2 words (low half scale, high half zero, or
// min in the min form): the (row g, row g + 8) pair of group j is one 8-byte
// load for lane quad g. w = (q - zero) * scale, or q * scale - min.
// Requires N % 16 == 0, K % 64 == 0, and a group size of 32 or a multiple of
// 64 dividing K.
#ifndef GQUANT_CUDA_INT4_MMA_LAYOUT_H_
#define GQUANT_CUDA_INT4_MMA_LAYOUT_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace gquant::cuda {

inline constexpr int kInt4MmaRows = 16;   // rows per tile: the mma's M
inline constexpr int kInt4MmaTileK = 64;  // columns per tile: four k16 steps
inline constexpr int kInt4MmaTileBytes = kInt4MmaRows * kInt4MmaTileK / 2;

// Where element (r, c) of a tile (r < 16, c < 64) is stored: byte offset of
// its 32-bit word within the tile and the bit shift of its nibble.
struct Int4MmaSlot {
  int word_offset;  // (lane * 4 + step) * 4
  int shift;        // 0..28
};
constexpr Int4MmaSlot Int4MmaSlotOf(int r, int c) {
  const int h = c / 32, t = c % 32 / 8, u = c % 8 / 4, e = c % 4;
  const int lane = 4 * (r % 8) + t, step = 2 * h + u;
  const int reg = r / 8 + 2 * (e / 2);  // a0..a3
  return {(lane * 4 + step) * 4, 4 * reg + 16 * (e % 2)};
}

// Index of the bf16x2 params word of `row` and `group` (groups = K / group size).
constexpr int64_t Int4MmaParamIndex(int64_t row, int64_t group, int64_t groups) {
  return ((row / kInt4MmaRows * groups + group) * 8 + row % 8) * 2 + row % kInt4MmaRows / 8;
}

// Whether (n, k, group size) can be packed; InvalidArgument naming the shape otherwise.
absl::Status CheckInt4MmaShape(int64_t n, int64_t k, int64_t group_size);

struct PackedInt4Mma {
  std::vector<uint8_t> qweight;  // n * k / 2 bytes
  std::vector<uint32_t> params;  // n * k / group_size words
};

// Packs one [n, k] matrix from gquant's unpacked form: codes [n, k] in 0..15,
// scale and zero (or min, for the min form) [n, G] float, rounded to bf16
// (exact for gquant's own quantizers, whose scales and zeros are bf16 values).
// InvalidArgument for a bad shape, mismatched spans or a code outside 0..15.
absl::StatusOr<PackedInt4Mma> PackInt4Mma(std::span<const int8_t> codes,
                                          std::span<const float> scale, std::span<const float> zero,
                                          int64_t n, int64_t k, int64_t group_size);

// Interleaves two packed [n, k] matrices a and b (same group size and zero
// form) into one [2n, k] by halves of 16-row blocks: its row 16 i + j is a's
// row 8 i + j and its row 16 i + 8 + j is b's (j < 8). A row r of a and of b
// then share a lane and a params word pair (rows g and g + 8 of a block), so
// Int4MmaGemvGeluPairs can combine them in its epilogue. Works on the packed
// bytes (nibble masks), no unpacking. InvalidArgument for a bad shape or
// mis-sized parts.
absl::StatusOr<PackedInt4Mma> InterleaveInt4MmaRowHalves(std::span<const uint8_t> a_qweight,
                                                         std::span<const uint32_t> a_params,
                                                         std::span<const uint8_t> b_qweight,
                                                         std::span<const uint32_t> b_params,
                                                         int64_t n, int64_t k, int64_t group_size);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_MMA_LAYOUT_H_
