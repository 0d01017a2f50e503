// Byte layouts of ggml's block-quantized formats (spec gguf.md §4, §5), as
// plain structs that are the source of truth for the bytes on disk.
//
// Glossary (ggml's names, used throughout gquant's ggml code):
//   QK      elements per 32-element block (kQK = 32): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//   QK_K    elements per K-quant super-block (kQKK = 256): Q2_K .. Q8_K.
//   d       the block (or super-block) scale; fp16 unless noted.
//   m/dmin  the block minimum (Q4_1/Q5_1) or the super-block scale of the 6-bit
//           sub-block minimums (Q4_K/Q5_K); the min is *subtracted* in K-quants.
//   qs/ql   low bits of the quantized values; qh their high bits.
//   sc      a sub-block scale code, itself quantized against d.
//
// Every fp16 field is held as its raw little-endian uint16_t bits (gquant's
// HalfToFloat converts). The structs have no padding; each is followed by a
// sizeof static_assert against the byte counts of spec §2. Blocks are read from
// files with memcpy (never by casting a byte pointer), so alignment does not
// matter; gquant only builds on little-endian hosts.
#ifndef GQUANT_GGML_BLOCKS_H_
#define GQUANT_GGML_BLOCKS_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gquant {

static_assert(std::endian::native == std::endian::little, "ggml blocks are little-endian");

inline constexpr int kQK = 32;    // elements per Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q8_1 block
inline constexpr int kQKK = 256;  // elements per K-quant super-block

// Q8_0: x = d * q, q in int8 [-127, 127] (ref quantizer), 32 elements, 8.5 bits/weight.
struct BlockQ8_0 {
  uint16_t d;      // off 0: fp16 scale
  int8_t qs[kQK];  // off 2: element j is qs[j]
};
static_assert(sizeof(BlockQ8_0) == 34);

// Q8_1: x = d * q with s = d * sum(q) cached; activation-side only. 9 bits/weight.
struct BlockQ8_1 {
  uint16_t d;      // off 0: fp16 scale
  uint16_t s;      // off 2: fp16 d * sum(qs)
  int8_t qs[kQK];  // off 4
};
static_assert(sizeof(BlockQ8_1) == 36);

// Q4_0: x = d * (q - 8), q in 0..15, 32 elements, 4.5 bits/weight.
// qs[j] low nibble = element j, high nibble = element j + 16.
struct BlockQ4_0 {
  uint16_t d;           // off 0: fp16 scale (= signed max / -8)
  uint8_t qs[kQK / 2];  // off 2: nibbles
};
static_assert(sizeof(BlockQ4_0) == 18);

// Q4_1: x = d * q + m, q in 0..15, 32 elements, 5 bits/weight. Nibbles as Q4_0.
struct BlockQ4_1 {
  uint16_t d;           // off 0: fp16 scale
  uint16_t m;           // off 2: fp16 block minimum
  uint8_t qs[kQK / 2];  // off 4: nibbles
};
static_assert(sizeof(BlockQ4_1) == 20);

// Q5_0: x = d * (q - 16), q in 0..31, 32 elements, 5.5 bits/weight.
// Low 4 bits as Q4_0; bit 4 of element j is bit j of qh read as a LE uint32.
struct BlockQ5_0 {
  uint16_t d;           // off 0: fp16 scale (= signed max / -16)
  uint8_t qh[4];        // off 2: fifth bits
  uint8_t qs[kQK / 2];  // off 6: nibbles
};
static_assert(sizeof(BlockQ5_0) == 22);

// Q5_1: x = d * q + m, q in 0..31, 32 elements, 6 bits/weight. Bits as Q5_0.
struct BlockQ5_1 {
  uint16_t d;           // off 0: fp16 scale
  uint16_t m;           // off 2: fp16 block minimum
  uint8_t qh[4];        // off 4: fifth bits
  uint8_t qs[kQK / 2];  // off 8: nibbles
};
static_assert(sizeof(BlockQ5_1) == 24);

// Q2_K (layout only): x = d*sc*q - dmin*m per 16 elements, q in 0..3. 2.625 bits/weight.
struct BlockQ2K {
  uint8_t scales[kQKK / 16];  // off 0: low nibble scale, high nibble min, per 16 elements
  uint8_t qs[kQKK / 4];       // off 16: 2-bit quants
  uint16_t d;                 // off 80: fp16 scale of the scales
  uint16_t dmin;              // off 82: fp16 scale of the mins
};
static_assert(sizeof(BlockQ2K) == 84);

// Q3_K (layout only): x = d * (s - 32) * (q2 - (hmask bit ? 0 : 4)). 3.4375 bits/weight.
struct BlockQ3K {
  uint8_t hmask[kQKK / 8];  // off 0: high bits
  uint8_t qs[kQKK / 4];     // off 32: low 2 bits
  uint8_t scales[12];       // off 96: sixteen 6-bit scales, biased by 32
  uint16_t d;               // off 108: fp16 super-block scale
};
static_assert(sizeof(BlockQ3K) == 110);

// Q4_K: x = (d*sc_j) * q - (dmin*m_j), q in 0..15; 8 sub-blocks of 32 elements
// with 6-bit (sc_j, m_j) packed into scales[12] (see get_scale_min_k4 in spec
// §5.1). Element e lives in qs[32*(e/64) + e%32], low nibble when (e/32) is
// even. 4.5 bits/weight.
struct BlockQ4K {
  uint16_t d;            // off 0: fp16 scale of the sub-block scales
  uint16_t dmin;         // off 2: fp16 scale of the sub-block mins
  uint8_t scales[12];    // off 4: packed 6-bit scales and mins
  uint8_t qs[kQKK / 2];  // off 16: nibbles
};
static_assert(sizeof(BlockQ4K) == 144);

// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a
// Q4_K/Q5_K super-block's `scales` (spec §5.1).
inline void ScaleMinK4(int j, const uint8_t* scales, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
    *m = (scales[j + 4] >> 4) | ((scales[j - 0] >> 6) << 4);
  }
}

// Q5_K: as Q4_K with q in 0..31; bit 4 of element e is bit (e/32) of
// qh[e % 32]. 5.5 bits/weight.
struct BlockQ5K {
  uint16_t d;            // off 0: fp16 scale of the sub-block scales
  uint16_t dmin;         // off 2: fp16 scale of the sub-block mins
  uint8_t scales[12];    // off 4: packed 6-bit scales and mins (as Q4_K)
  uint8_t qh[kQKK / 8];  // off 16: fifth bits
  uint8_t qs[kQKK / 2];  // off 48: low nibbles (as Q4_K)
};
static_assert(sizeof(BlockQ5K) == 176);

// Q6_K: x = (d * scales[e/16]) * (q - 32), q in 0..63; two halves of 128
// elements, each with ql[64] (low nibbles) and qh[32] (2-bit pairs); see spec
// §5.3 for the interleave. 6.5625 bits/weight.
struct BlockQ6K {
  uint8_t ql[kQKK / 2];      // off 0: low 4 bits
  uint8_t qh[kQKK / 4];      // off 128: high 2 bits
  int8_t scales[kQKK / 16];  // off 192: signed 8-bit scale per 16 elements
  uint16_t d;                // off 208: fp16 super-block scale (signed)
};
static_assert(sizeof(BlockQ6K) == 210);

// Q8_K: x = d * q with float32 d; activation-side format for K-quant dot
// products. bsums caches the sum of each 16 qs. 9.125 bits/weight.
struct BlockQ8K {
  float d;                   // off 0: float32 scale
  int8_t qs[kQKK];           // off 4
  int16_t bsums[kQKK / 16];  // off 260: sums of qs per 16 elements
};
static_assert(sizeof(BlockQ8K) == 292);

// Block `index` of a byte buffer, copied out (the buffer need not be aligned).
template <typename Block>
Block LoadGgmlBlock(const std::byte* src, int64_t index) {
  Block block;
  std::memcpy(&block, src + index * static_cast<int64_t>(sizeof(Block)), sizeof(Block));
  return block;
}

}  // namespace gquant

#endif  // GQUANT_GGML_BLOCKS_H_
