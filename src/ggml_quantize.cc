// ggml's reference quantizers (ggml-quants.c quantize_row_*_ref,
// make_qkx2_quants, make_qx_quants), rewritten over gquant's block structs.
//
// Bit-exactness (spec gguf.md §3): every intermediate is float32, every
// expression keeps ggml's evaluation order (`w*l*x` is `(w*l)*x`), sums run in
// index order, and this file is compiled with -ffp-contract=off so no a*b+c is
// fused. Do not "simplify" the arithmetic here: reassociating a single sum
// changes the chosen codes of some blocks.
//
// ggml converts out-of-range floats to int8 with a plain C cast (undefined
// behaviour for NaN); gquant uses TruncToInt8, which agrees on every value the
// reference can produce from finite input and is defined for the rest.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "gquant/dtype.h"
#include "gquant/ggml_blocks.h"
#include "gquant/ggml_format.h"

namespace gquant::ggml_ref {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS

template <typename Block>
void StoreBlock(const Block& block, std::byte* dst, int64_t index) {
  std::memcpy(dst + index * static_cast<int64_t>(sizeof(Block)), &block, sizeof(Block));
}

// ggml's nearest_int: round to nearest, ties to even, via the 1.5*2^23 trick.
// Exact for |f| <= 2^22; defined (if meaningless) for anything else.
int NearestInt(float fval) {
  const float val = fval + 12582912.f;
  const int32_t i = std::bit_cast<int32_t>(val);
  return (i & 0x007fffff) - 0x00400000;
}

// The C cast (int8_t)v for v in (-129, 128): truncation toward zero.
int8_t TruncToInt8(float v) {
  if (!(v > -129.0f && v < 128.0f)) return 0;
  return static_cast<int8_t>(static_cast<int>(v));
}

// The C cast (uint8_t)v for v in (-1, 256).
uint8_t TruncToUint8(float v) {
  if (!(v > -1.0f && v < 256.0f)) return 0;
  return static_cast<uint8_t>(static_cast<int>(v));
}

// Packs the 6-bit scale `ls` and min `lm` of sub-block j as get_scale_min_k4
// unpacks them (spec §5.1). j ascending; j >= 4 ORs into bytes 0..7.
void PackScaleMinK4(int j, uint8_t ls, uint8_t lm, uint8_t* scales) {
  if (j < 4) {
    scales[j] = ls;
    scales[j + 4] = lm;
  } else {
    scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
    scales[j - 4] |= ((ls >> 4) << 6);
    scales[j - 0] |= ((lm >> 4) << 6);
  }
}

void ScaleMinK4(int j, const uint8_t* scales, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
    *m = (scales[j + 4] >> 4) | ((scales[j - 0] >> 6) << 4);
  }
}

// ggml's make_qkx2_quants with use_mad = false (spec §6.1): an asymmetric
// weighted least-squares grid search. Returns the scale; *the_min gets -min.
float MakeQkx2Quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                     float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = NearestInt(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = diff * diff;
    const float w = weights[i];
    best_error += w * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = NearestInt(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = diff * diff;
        const float w = weights[i];
        cur_error += w * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// ggml's make_qx_quants with rmse_type = 1 and qw = NULL (spec §6.4): a
// symmetric search over 19 scales. L gets codes in [0, 2*nmax).
float MakeQxQuants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = NearestInt(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = NearestInt(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = NearestInt(iscale * x[i]);
        L[i] = static_cast<int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// The shared first half of quantize_row_q4_K_ref / q5_K_ref (spec §6.2 steps
// 1-4): fills d, dmin, the packed scales and the codes L[256] in 0..nmax.
void QuantizeScalesMinsK(const float* x, int nmax, float rmin, float rdelta, int nstep,
                         uint16_t* d_out, uint16_t* dmin_out, uint8_t* packed, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32];
  float mins[kQKK / 32];
  float scales[kQKK / 32];
  float max_scale = 0;  // as the min is subtracted, scales are non-negative
  float max_min = 0;
  for (int j = 0; j < kQKK / 32; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    scales[j] = MakeQkx2Quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin,
                               rdelta, nstep);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  std::memset(packed, 0, 12);
  for (int j = 0; j < kQKK / 32; ++j) {
    uint8_t ls = static_cast<uint8_t>(NearestInt(inv_scale * scales[j]));
    uint8_t lm = static_cast<uint8_t>(NearestInt(inv_min * mins[j]));
    ls = std::min<uint8_t>(63, ls);
    lm = std::min<uint8_t>(63, lm);
    PackScaleMinK4(j, ls, lm, packed);
  }
  *d_out = Fp32ToFp16(max_scale / 63.f);
  *dmin_out = Fp32ToFp16(max_min / 63.f);
  // Re-quantize against the stored (rounded) scales; a sub-block whose scale
  // rounded to 0 keeps its first-pass codes.
  for (int j = 0; j < kQKK / 32; ++j) {
    uint8_t sc, m;
    ScaleMinK4(j, packed, &sc, &m);
    const float d = HalfToFloat(*d_out) * sc;
    if (!d) continue;
    const float dm = HalfToFloat(*dmin_out) * m;
    for (int ii = 0; ii < 32; ++ii) {
      int l = NearestInt((x[32 * j + ii] + dm) / d);
      l = std::max(0, std::min(nmax, l));
      L[32 * j + ii] = static_cast<uint8_t>(l);
    }
  }
}

// The signed value with the largest magnitude (first one wins ties).
float SignedAbsMax(const float* x, int n) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void MinMax(const float* x, int n, float* min, float* max) {
  *min = std::numeric_limits<float>::max();
  *max = -std::numeric_limits<float>::max();
  for (int j = 0; j < n; ++j) {
    if (x[j] < *min) *min = x[j];
    if (x[j] > *max) *max = x[j];
  }
}

}  // namespace

uint16_t Fp32ToFp16(float f) {
  // ggml_compute_fp32_to_fp16 (the FP16 library's bit trick).
  const float scale_to_inf = std::bit_cast<float>(UINT32_C(0x77800000));
  const float scale_to_zero = std::bit_cast<float>(UINT32_C(0x08800000));
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & UINT32_C(0x80000000);
  uint32_t bias = shl1_w & UINT32_C(0xFF000000);
  if (bias < UINT32_C(0x71000000)) bias = UINT32_C(0x71000000);
  base = std::bit_cast<float>((bias >> 1) + UINT32_C(0x07800000)) + base;
  const uint32_t bits = std::bit_cast<uint32_t>(base);
  const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
  const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) |
                               (shl1_w > UINT32_C(0xFF000000) ? UINT32_C(0x7E00) : nonsign));
}

uint16_t Fp32ToBf16(float value) {
  const uint32_t u = std::bit_cast<uint32_t>(value);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);  // quiet NaN
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

void QuantizeRowF32(const float* src, std::byte* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void QuantizeRowF16(const float* src, std::byte* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t bits = Fp32ToFp16(src[i]);
    std::memcpy(dst + 2 * i, &bits, 2);
  }
}

void QuantizeRowBF16(const float* src, std::byte* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t bits = Fp32ToBf16(src[i]);
    std::memcpy(dst + 2 * i, &bits, 2);
  }
}

void QuantizeRowQ8_0(const float* src, std::byte* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float* x = src + i * kQK;
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    BlockQ8_0 block;
    block.d = Fp32ToFp16(d);
    for (int j = 0; j < kQK; ++j) block.qs[j] = TruncToInt8(std::round(x[j] * id));
    StoreBlock(block, dst, i);
  }
}

void QuantizeRowQ4_0(const float* src, std::byte* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float* x = src + i * kQK;
    const float max = SignedAbsMax(x, kQK);
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    BlockQ4_0 block;
    block.d = Fp32ToFp16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = x[j] * id;
      const float x1 = x[kQK / 2 + j] * id;
      const uint8_t xi0 = static_cast<uint8_t>(std::min<int>(15, TruncToInt8(x0 + 8.5f)));
      const uint8_t xi1 = static_cast<uint8_t>(std::min<int>(15, TruncToInt8(x1 + 8.5f)));
      block.qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
    StoreBlock(block, dst, i);
  }
}

void QuantizeRowQ4_1(const float* src, std::byte* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float* x = src + i * kQK;
    float min, max;
    MinMax(x, kQK, &min, &max);
    const float d = (max - min) / ((1 << 4) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    BlockQ4_1 block;
    block.d = Fp32ToFp16(d);
    block.m = Fp32ToFp16(min);
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = (x[j] - min) * id;
      const float x1 = (x[kQK / 2 + j] - min) * id;
      const uint8_t xi0 = static_cast<uint8_t>(std::min<int>(15, TruncToInt8(x0 + 0.5f)));
      const uint8_t xi1 = static_cast<uint8_t>(std::min<int>(15, TruncToInt8(x1 + 0.5f)));
      block.qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
    StoreBlock(block, dst, i);
  }
}

void QuantizeRowQ5_0(const float* src, std::byte* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float* x = src + i * kQK;
    const float max = SignedAbsMax(x, kQK);
    const float d = max / -16;
    const float id = d ? 1.0f / d : 0.0f;
    BlockQ5_0 block;
    block.d = Fp32ToFp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = x[j] * id;
      const float x1 = x[kQK / 2 + j] * id;
      const uint8_t xi0 = static_cast<uint8_t>(std::min<int>(31, TruncToInt8(x0 + 16.5f)));
      const uint8_t xi1 = static_cast<uint8_t>(std::min<int>(31, TruncToInt8(x1 + 16.5f)));
      block.qs[j] = static_cast<uint8_t>((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
      qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
      qh |= ((xi1 & 0x10u) >> 4) << (j + kQK / 2);
    }
    std::memcpy(block.qh, &qh, sizeof(qh));
    StoreBlock(block, dst, i);
  }
}

void QuantizeRowQ5_1(const float* src, std::byte* dst, int64_t n) {
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float* x = src + i * kQK;
    float min, max;
    MinMax(x, kQK, &min, &max);
    const float d = (max - min) / ((1 << 5) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    BlockQ5_1 block;
    block.d = Fp32ToFp16(d);
    block.m = Fp32ToFp16(min);
    uint32_t qh = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const float x0 = (x[j] - min) * id;
      const float x1 = (x[kQK / 2 + j] - min) * id;
      const uint8_t xi0 = TruncToUint8(x0 + 0.5f);
      const uint8_t xi1 = TruncToUint8(x1 + 0.5f);
      block.qs[j] = static_cast<uint8_t>((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
      qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
      qh |= ((xi1 & 0x10u) >> 4) << (j + kQK / 2);
    }
    std::memcpy(block.qh, &qh, sizeof(qh));
    StoreBlock(block, dst, i);
  }
}

void QuantizeRowQ4K(const float* src, std::byte* dst, int64_t n) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float* x = src + i * kQKK;
    BlockQ4K block;
    QuantizeScalesMinsK(x, 15, -1.f, 0.1f, 20, &block.d, &block.dmin, block.scales, L);
    uint8_t* q = block.qs;
    for (int j = 0; j < kQKK; j += 64) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
      q += 32;
    }
    StoreBlock(block, dst, i);
  }
}

void QuantizeRowQ5K(const float* src, std::byte* dst, int64_t n) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float* x = src + i * kQKK;
    BlockQ5K block;
    QuantizeScalesMinsK(x, 31, -0.5f, 0.1f, 15, &block.d, &block.dmin, block.scales, L);
    uint8_t* qh = block.qh;
    uint8_t* ql = block.qs;
    std::memset(qh, 0, kQKK / 8);
    uint8_t m1 = 1, m2 = 2;
    for (int g = 0; g < kQKK; g += 64) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[g + j];
        if (l1 > 15) {
          l1 -= 16;
          qh[j] |= m1;
        }
        int l2 = L[g + j + 32];
        if (l2 > 15) {
          l2 -= 16;
          qh[j] |= m2;
        }
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
      m1 <<= 2;
      m2 <<= 2;
      ql += 32;
    }
    StoreBlock(block, dst, i);
  }
}

void QuantizeRowQ6K(const float* src, std::byte* dst, int64_t n) {
  int8_t L[kQKK];
  float scales[kQKK / 16];
  for (int64_t i = 0; i < n / kQKK; ++i) {
    const float* x = src + i * kQKK;
    BlockQ6K block;
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      const float scale = MakeQxQuants(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      const float abs_scale = std::fabs(scale);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scale;
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&block, 0, sizeof(block));
      StoreBlock(block, dst, i);
      continue;
    }
    const float iscale = -128.f / max_scale;
    block.d = Fp32ToFp16(1 / iscale);
    for (int ib = 0; ib < kQKK / 16; ++ib) {
      block.scales[ib] = static_cast<int8_t>(std::min(127, NearestInt(iscale * scales[ib])));
    }
    // Re-quantize against the stored scales; a zero scale keeps the first-pass codes.
    for (int j = 0; j < kQKK / 16; ++j) {
      const float d = HalfToFloat(block.d) * block.scales[j];
      if (!d) continue;
      for (int ii = 0; ii < 16; ++ii) {
        int l = NearestInt(x[16 * j + ii] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + ii] = static_cast<int8_t>(l + 32);
      }
    }
    uint8_t* ql = block.ql;
    uint8_t* qh = block.qh;
    for (int j = 0; j < kQKK; j += 128) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF;
        const uint8_t q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF;
        const uint8_t q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = static_cast<uint8_t>(q1 | (q3 << 4));
        ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
        qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                     ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
      }
      ql += 64;
      qh += 32;
    }
    StoreBlock(block, dst, i);
  }
}

}  // namespace gquant::ggml_ref
