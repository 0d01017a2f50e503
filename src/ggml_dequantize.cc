// ggml's reference dequantizers (ggml-quants.c dequantize_row_*), rewritten
// over gquant's block structs. Each product and difference is float32 and in
// ggml's order, and this file is compiled with -ffp-contract=off, so the output
// floats are bit-identical to ggml's (spec gguf.md §3-§5).
//
// Every block is copied out of the byte buffer with memcpy, and every index is
// derived from loop counters and masked bit fields, so no byte content can make
// a decoder read or write out of bounds: the callers (DequantizeGgml) only have
// to check the buffer sizes.
#include <cstring>

#include "gquant/dtype.h"
#include "gquant/ggml_blocks.h"
#include "gquant/ggml_format.h"

namespace gquant::ggml_ref {

void DequantizeRowF32(const std::byte* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void DequantizeRowF16(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t bits;
    std::memcpy(&bits, src + 2 * i, 2);
    dst[i] = HalfToFloat(bits);
  }
}

void DequantizeRowBF16(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t bits;
    std::memcpy(&bits, src + 2 * i, 2);
    dst[i] = BFloat16ToFloat(bits);
  }
}

void DequantizeRowQ8_0(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ8_0>(src, i);
    const float d = HalfToFloat(block.d);
    for (int j = 0; j < kQK; ++j) dst[i * kQK + j] = block.qs[j] * d;
  }
}

void DequantizeRowQ4_0(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ4_0>(src, i);
    const float d = HalfToFloat(block.d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int x0 = (block.qs[j] & 0x0F) - 8;
      const int x1 = (block.qs[j] >> 4) - 8;
      dst[i * kQK + j] = x0 * d;
      dst[i * kQK + j + kQK / 2] = x1 * d;
    }
  }
}

void DequantizeRowQ4_1(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ4_1>(src, i);
    const float d = HalfToFloat(block.d);
    const float m = HalfToFloat(block.m);
    for (int j = 0; j < kQK / 2; ++j) {
      const int x0 = block.qs[j] & 0x0F;
      const int x1 = block.qs[j] >> 4;
      dst[i * kQK + j] = x0 * d + m;
      dst[i * kQK + j + kQK / 2] = x1 * d + m;
    }
  }
}

void DequantizeRowQ5_0(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ5_0>(src, i);
    const float d = HalfToFloat(block.d);
    uint32_t qh;
    std::memcpy(&qh, block.qh, sizeof(qh));
    for (int j = 0; j < kQK / 2; ++j) {
      const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
      const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
      const int32_t x0 = ((block.qs[j] & 0x0F) | xh_0) - 16;
      const int32_t x1 = ((block.qs[j] >> 4) | xh_1) - 16;
      dst[i * kQK + j] = x0 * d;
      dst[i * kQK + j + kQK / 2] = x1 * d;
    }
  }
}

void DequantizeRowQ5_1(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ5_1>(src, i);
    const float d = HalfToFloat(block.d);
    const float m = HalfToFloat(block.m);
    uint32_t qh;
    std::memcpy(&qh, block.qh, sizeof(qh));
    for (int j = 0; j < kQK / 2; ++j) {
      const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
      const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
      const int x0 = (block.qs[j] & 0x0F) | xh_0;
      const int x1 = (block.qs[j] >> 4) | xh_1;
      dst[i * kQK + j] = x0 * d + m;
      dst[i * kQK + j + kQK / 2] = x1 * d + m;
    }
  }
}

void DequantizeRowQ4K(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ4K>(src, i);
    const float d = HalfToFloat(block.d);
    const float min = HalfToFloat(block.dmin);
    float* y = dst + i * kQKK;
    const uint8_t* q = block.qs;
    // Each group of 64 elements shares 32 bytes: sub-block 2g in the low
    // nibbles, sub-block 2g+1 in the high nibbles.
    for (int g = 0; g < kQKK / 64; ++g) {
      uint8_t sc, m;
      ScaleMinK4(2 * g, block.scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = min * m;
      ScaleMinK4(2 * g + 1, block.scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = min * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
      q += 32;
    }
  }
}

void DequantizeRowQ5K(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ5K>(src, i);
    const float d = HalfToFloat(block.d);
    const float min = HalfToFloat(block.dmin);
    float* y = dst + i * kQKK;
    const uint8_t* ql = block.qs;
    const uint8_t* qh = block.qh;
    uint8_t u1 = 1, u2 = 2;  // the qh bits of sub-blocks 2g and 2g+1
    for (int g = 0; g < kQKK / 64; ++g) {
      uint8_t sc, m;
      ScaleMinK4(2 * g, block.scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = min * m;
      ScaleMinK4(2 * g + 1, block.scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = min * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      ql += 32;
      u1 <<= 2;
      u2 <<= 2;
    }
  }
}

void DequantizeRowQ6K(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ6K>(src, i);
    const float d = HalfToFloat(block.d);
    float* y = dst + i * kQKK;
    const uint8_t* ql = block.ql;
    const uint8_t* qh = block.qh;
    const int8_t* sc = block.scales;
    for (int half = 0; half < 2; ++half) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int8_t q1 = static_cast<int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int8_t q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int8_t q3 = static_cast<int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int8_t q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

void DequantizeRowQ8K(const std::byte* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const auto block = LoadGgmlBlock<BlockQ8K>(src, i);
    for (int j = 0; j < kQKK; ++j) dst[i * kQKK + j] = block.d * block.qs[j];
  }
}

}  // namespace gquant::ggml_ref
