// The vision encoder's GPU kernels (vision_kernels.cuh) against float64 host
// references and the CPU ops cpu_vision.cc uses, on the same inputs: fresh
// random data, outputs poisoned (0xFF bytes: NaN) before each run, padding
// rows of the inputs set to NaN wherever the kernel must not read them. Shapes:
// Gemma 4 31B (Hv 1152, 16 heads of 72) and E2B (Hv 768, 12 heads of 64) on a
// 280-token image (a 42 x 60 patch grid: 2520 patches) alone and padded to
// 10080 patches, a full 1120-token image (84 x 120 = 10080 patches), and
// small odd ones (grouped heads, head_dim 4-12, the scalar paths).
//
// Error bounds (bf16 unit roundoff u = 2^-8, float32 2^-24):
// - PatchEmbeddingsToResidual, ClampBf16: exact. The kernels do the CPU's
//   float32 operations in its order (two additions; two comparisons) and one
//   round-to-nearest-even to bf16, as the host does.
// - VisionHeadNormRope2d: as HeadNormRope (rms_norm_test.cc): float32 norm
//   and rotation within 2e-6 of the exact result, then one bf16 rounding:
//   |got - want| <= (2^-8 + 1e-5) |want| + 1e-5 (|y_j| + |y_j+D/4|), y the
//   normalized pair (a rotation can cancel).
// - VisionAttention, per output o of query t, head h (A = Σ_j p_j |v_j|, p
//   the exact softmax): |got - want| <= (2.5 u + 2 E + Nk 2^-23 + 1e-5) A.
//   u A: P is rounded to bf16 before P V (relative 2^-8 per weight); u A:
//   the output's rounding (|o| <= A); E = D 2^-22 max_j Σ_i |q_i k_ji|
//   bounds the float32 error of a score (bf16 products are exact in fp32,
//   the D-term sum costs <= D 2^-24 of Σ|q k|; 4x slack for the tensor
//   cores' accumulation), and a score error e changes its weight by a
//   factor within e^(±2e); Nk 2^-23 A: P V's fp32 sum over Nk keys (2x slack);
//   0.5 u + 1e-5: slack for expf, the softmax sum and division.
// - VisionPool: the float32 window sum (<= k^2 products and adds), scale,
//   and standardization are ~15 roundings of 2^-24 of
//   M = (Σ_members |x| / k^2 * scale + |bias|) |std_scale| (the subtraction
//   can cancel), then one bf16 rounding: |got - want| <= u |want| + 2e-5 M.
// The CPU ops compute in float32 with errors of the same size as the
// kernels' float32 parts, inside the same bounds.
#include "vision_kernels.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"
#include "gquant/dtype.h"
#include "gquant/gemma4/config.h"

namespace gquant::cuda {
namespace {

using testing::AsBf16;
using testing::RandomBf16;
using testing::RequireClose;

constexpr double kBf16Unit = 0x1p-8;
const double kBf16Bound = kBf16Unit + 1e-5;
constexpr uint16_t kBf16NaN = 0x7FC0;
constexpr float kEps = 1e-6f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- helpers ----

// Positions as Gemma4ImageProcessor writes them: a width x height patch grid
// in row-major order (y outer, x inner), then (-1, -1) up to `patches`.
std::vector<int32_t> GridPositions(int width, int height, int64_t patches) {
  REQUIRE(int64_t{width} * height <= patches);
  std::vector<int32_t> positions(2 * patches, -1);
  int64_t p = 0;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x, ++p) {
      positions[2 * p] = x;
      positions[2 * p + 1] = y;
    }
  }
  return positions;
}

bool IsPadding(std::span<const int32_t> positions, int64_t patch) {
  return positions[2 * patch] == -1 && positions[2 * patch + 1] == -1;
}

// A device copy of `host` starting `offset` elements past the allocation
// (256-byte aligned): offset 1 misaligns it for the 16-byte paths.
template <typename T>
DeviceBuffer<T> UploadAt(const std::vector<T>& host, int64_t offset) {
  std::vector<T> padded(offset, T{});
  padded.insert(padded.end(), host.begin(), host.end());
  return testing::Upload(padded);
}

// `n` elements of 0xFF bytes (NaN as bf16 and float32).
template <typename T>
DeviceBuffer<T> Poisoned(size_t n) {
  auto buffer = DeviceBuffer<T>::Allocate(n);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0xFF));
  return *std::move(buffer);
}

// The buffer's elements from `offset` on.
template <typename T>
std::vector<T> Download(const DeviceBuffer<T>& buffer, int64_t offset = 0) {
  std::vector<T> host(buffer.size());
  REQUIRE_OK(buffer.CopyToHost(host));
  host.erase(host.begin(), host.begin() + offset);
  return host;
}

std::vector<float> Bf16BitsToFloats(std::span<const uint16_t> bits) {
  std::vector<float> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = BFloat16ToFloat(bits[i]);
  return values;
}

// REQUIREs got[i] == want[i] bit for bit (any NaN matches any NaN).
void RequireIdentical(std::span<const float> got, std::span<const float> want, const char* what) {
  REQUIRE(got.size() == want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool same = std::isnan(got[i])
                          ? std::isnan(want[i])
                          : std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(want[i]);
    if (!same && bad++ == 0) first = i;
  }
  if (bad > 0) {
    INFO(what << ": " << bad << " of " << got.size() << " elements differ; first at " << first
              << ": got " << got[first] << ", want " << want[first]);
    REQUIRE(bad == 0);
  }
}

// ---- PatchEmbeddingsToResidual ----

TEST_CASE("PatchEmbeddingsToResidual adds position rows to real patches only", "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Case {
    const char* name;
    int width, height;  // the real patches' grid
    int64_t patches;
    int hidden;
    int64_t offset;  // elements past a 256-byte boundary (1: the scalar path)
  };
  const Case cases[] = {
      {"31B, 280 tokens", 60, 42, 2520, 1152, 0},
      {"31B, 280 tokens padded to 10080", 60, 42, 10080, 1152, 0},
      {"E2B, 280 tokens padded to 10080", 60, 42, 10080, 768, 0},
      {"E2B, misaligned (scalar path)", 6, 3, 27, 768, 1},
      {"hidden 7", 3, 3, 13, 7, 0},
      {"one real patch", 1, 1, 9, 16, 0},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const int64_t n = c.patches * c.hidden;
    const std::vector<int32_t> positions = GridPositions(c.width, c.height, c.patches);
    const auto projected = RandomBf16(n, 0.01f, 4.0f, rng);
    auto x_rows = RandomBf16(n, 0.01f, 1.0f, rng);
    auto y_rows = RandomBf16(n, 0.01f, 1.0f, rng);
    std::vector<float> want(n);
    for (int64_t p = 0; p < c.patches; ++p) {
      for (int64_t i = p * c.hidden; i < (p + 1) * c.hidden; ++i) {
        if (IsPadding(positions, p)) {
          // Never read: a NaN here would reach the residual.
          x_rows.bits[i] = y_rows.bits[i] = kBf16NaN;
          want[i] = projected.values[i];
        } else {
          want[i] = projected.values[i] + (x_rows.values[i] + y_rows.values[i]);
        }
      }
    }
    auto projected_d = UploadAt(projected.bits, c.offset);
    auto x_d = UploadAt(x_rows.bits, c.offset);
    auto y_d = UploadAt(y_rows.bits, c.offset);
    auto positions_d = testing::Upload(positions);
    auto residual_d = Poisoned<float>(n + c.offset);
    REQUIRE_OK(PatchEmbeddingsToResidual(AsBf16(projected_d) + c.offset, AsBf16(x_d) + c.offset,
                                         AsBf16(y_d) + c.offset, positions_d.data(), c.patches,
                                         c.hidden, residual_d.data() + c.offset, nullptr));
    const std::vector<float> got = Download(residual_d, c.offset);
    RequireIdentical(got, want, "residual vs the CPU's float32 sum");
    REQUIRE(std::all_of(got.begin(), got.end(), [](float v) { return std::isfinite(v); }));
  }
}

// ---- ClampBf16 ----

TEST_CASE("ClampBf16 is cpu::Clamp (torch.clamp) rounded to bf16", "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  struct Bounds {
    float lo, hi;
  };
  // Finite, infinite, one-sided, not bf16-representable (-pi), lo > hi
  // (gives hi), and lo == hi.
  const Bounds bounds[] = {{-1.5f, 2.25f},       {-kInf, kInf}, {-kInf, 0.3f},
                           {-3.14159265f, kInf}, {0.7f, 0.2f},  {1e-3f, 1e-3f}};
  // NaN (both signs), infinities and zeros (both signs).
  const uint16_t specials[] = {0x7FC0, 0xFFC0, 0x7F80, 0xFF80, 0x0000, 0x8000};
  // The 16-byte path, the scalar path, one element.
  const int64_t counts[] = {4096, 1001, 1};
  for (const Bounds& b : bounds) {
    for (int64_t count : counts) {
      for (bool in_place : {false, true}) {
        INFO("lo " << b.lo << " hi " << b.hi << " count " << count << " in place " << in_place);
        auto in = RandomBf16(count, 1e-3f, 8.0f, rng);
        std::uniform_int_distribution<int64_t> index(0, count - 1);
        for (uint16_t special : specials) in.bits[index(rng)] = special;
        std::vector<float> want = Bf16BitsToFloats(in.bits);
        gemma4::cpu::Clamp(want, b.lo, b.hi);
        for (float& v : want) v = BFloat16ToFloat(FloatToBFloat16(v));

        auto in_d = testing::Upload(in.bits);
        auto out_d = Poisoned<uint16_t>(in_place ? 1 : count);
        __nv_bfloat16* out = in_place ? AsBf16(in_d) : AsBf16(out_d);
        REQUIRE_OK(ClampBf16(AsBf16(in_d), out, count, b.lo, b.hi, nullptr));
        const std::vector<float> got = Bf16BitsToFloats(Download(in_place ? in_d : out_d));
        RequireIdentical(got, want, "vs cpu::Clamp");
      }
    }
  }
}

// ---- VisionHeadNormRope2d ----

// The images the per-patch kernels run on: positions [patches, 2].
struct Image {
  std::string name;
  std::vector<int32_t> positions;
};

std::vector<Image> HeadImages(std::mt19937_64& rng) {
  // Coordinates anywhere in the 31B's position table (10240 entries): the
  // float32 angle is coarsest at the largest.
  std::vector<int32_t> scattered = GridPositions(3, 3, 13);
  std::uniform_int_distribution<int32_t> coordinate(0, 10239);
  for (int i = 0; i < 18; ++i) scattered[i] = coordinate(rng);
  return {{"280 tokens (42 x 60)", GridPositions(60, 42, 2520)},
          {"280 tokens padded to 10080", GridPositions(60, 42, 10080)},
          {"3 x 3 grid + 4 padding", GridPositions(3, 3, 13)},
          {"scattered coordinates + 4 padding", scattered}};
}

TEST_CASE("VisionHeadNormRope2d matches float64 and cpu::RmsNorm + cpu::ApplyRope2d",
          "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Case {
    const char* name;
    int heads, head_dim;
    bool weight, rope;
    int64_t offset;  // elements past a 256-byte boundary (1: the scalar path)
  };
  const Case cases[] = {
      {"31B q / k (scalar RoPE: D/4 = 18)", 16, 72, true, true, 0},
      {"31B v", 16, 72, false, false, 0},
      {"E2B q / k (16-byte path)", 12, 64, true, true, 0},
      {"E2B q / k misaligned (scalar path)", 12, 64, true, true, 1},
      {"E2B v", 12, 64, false, false, 0},
      {"GQA k, D 8", 2, 8, true, true, 0},
      {"D 4", 3, 4, true, true, 0},
      {"D 12, RoPE without weight", 1, 12, false, true, 0},
      {"D 128 (16-byte RoPE, D/4 = 32)", 2, 128, true, true, 0},
      {"D 6, norm only", 5, 6, true, false, 0},
  };
  const gemma4::RopeParameters vision_rope{"default", 100.0, 1.0};
  for (const Image& image : HeadImages(rng)) {
    const int64_t patches = static_cast<int64_t>(image.positions.size()) / 2;
    auto positions_d = testing::Upload(image.positions);
    for (const Case& c : cases) {
      INFO(c.name << " on " << image.name);
      const int d = c.head_dim, half = d / 2, quarter = d / 4;
      const int64_t vectors = patches * c.heads, n = vectors * d;
      // d / 4 entries: the "default" table over half a head.
      const std::vector<float> inv_freq =
          c.rope ? gemma4::cpu::RopeInverseFrequencies(vision_rope, half) : std::vector<float>{};
      REQUIRE(static_cast<int>(inv_freq.size()) == (c.rope ? quarter : 0));
      const auto x = RandomBf16(n, 0.01f, 8.0f, rng);
      const auto weight = RandomBf16(d, 0.25f, 2.0f, rng);
      auto x_d = UploadAt(x.bits, c.offset);
      auto weight_d = testing::Upload(weight.bits);
      auto inv_freq_d = testing::Upload(inv_freq.empty() ? std::vector<float>{1.0f} : inv_freq);
      REQUIRE_OK(VisionHeadNormRope2d(
          AsBf16(x_d) + c.offset, patches, c.heads, d, c.weight ? AsBf16(weight_d) : nullptr, kEps,
          c.rope ? inv_freq_d.data() : nullptr, c.rope ? positions_d.data() : nullptr, nullptr));
      const std::vector<float> got = Bf16BitsToFloats(Download(x_d, c.offset));

      // float64: normalize, then rotate each half with the float32 angle
      // float(position) * inv_freq[j] (one rounded product).
      std::vector<double> y(n), want(n), pair(n, 0.0);
      for (int64_t v = 0; v < vectors; ++v) {
        const float* xv = x.values.data() + v * d;
        double sum = 0;
        for (int i = 0; i < d; ++i) sum += static_cast<double>(xv[i]) * xv[i];
        const double s = 1.0 / std::sqrt(sum / d + kEps);
        for (int i = 0; i < d; ++i) {
          y[v * d + i] = want[v * d + i] = xv[i] * s * (c.weight ? weight.values[i] : 1.0);
        }
        if (!c.rope) continue;
        const int64_t patch = v / c.heads;
        for (int axis = 0; axis < 2; ++axis) {
          const float position = static_cast<float>(image.positions[2 * patch + axis]);
          for (int j = 0; j < quarter; ++j) {
            const int64_t lo = v * d + axis * half + j, hi = lo + quarter;
            const double angle = static_cast<float>(static_cast<double>(position) * inv_freq[j]);
            const double cosine = std::cos(angle), sine = std::sin(angle);
            want[lo] = y[lo] * cosine - y[hi] * sine;
            want[hi] = y[hi] * cosine + y[lo] * sine;
            pair[lo] = pair[hi] = std::abs(y[lo]) + std::abs(y[hi]);
          }
        }
      }
      RequireClose(
          got, want, [&](size_t i) { return kBf16Bound * std::abs(want[i]) + 1e-5 * pair[i]; },
          "vs float64");

      std::vector<float> cpu = x.values;
      gemma4::cpu::RmsNorm(cpu, d, c.weight ? weight.values : std::vector<float>{}, kEps);
      if (c.rope) {
        for (int64_t p = 0; p < patches; ++p) {
          gemma4::cpu::ApplyRope2d(std::span(cpu).subspan(p * c.heads * d, c.heads * d), c.heads, d,
                                   image.positions[2 * p], image.positions[2 * p + 1], inv_freq);
        }
      }
      const std::vector<double> cpu_d = testing::ToDouble(cpu);
      RequireClose(
          got, cpu_d, [&](size_t i) { return kBf16Bound * std::abs(cpu_d[i]) + 1e-5 * pair[i]; },
          "vs cpu::RmsNorm + cpu::ApplyRope2d");
    }
  }
}

// ---- VisionAttention ----

struct AttentionCase {
  const char* name;
  int64_t patches, num_keys;
  int heads, kv_heads, head_dim;
  int64_t sample_rows;     // query rows checked against float64; 0: all
  int64_t ws_max_patches;  // 0: the shared workspace (10080 patches, 16 heads)
  int ws_heads;
  bool out_is_q = false;
};

// float64 attention of query row t, head h into want[0, D) and each
// element's bound (file comment).
void ReferenceAttention(const AttentionCase& c, std::span<const float> q, std::span<const float> k,
                        std::span<const float> v, int64_t t, int h, double* want, double* bound) {
  const int d = c.head_dim, g = h / (c.heads / c.kv_heads);
  const float* qv = q.data() + (t * c.heads + h) * d;
  std::vector<double> p(c.num_keys);
  double max_score = -std::numeric_limits<double>::infinity(), max_abs = 0;
  for (int64_t j = 0; j < c.num_keys; ++j) {
    const float* kv = k.data() + (j * c.kv_heads + g) * d;
    double dot = 0, abs = 0;
    for (int i = 0; i < d; ++i) {
      dot += static_cast<double>(qv[i]) * kv[i];
      abs += std::abs(static_cast<double>(qv[i]) * kv[i]);
    }
    p[j] = dot;
    max_score = std::max(max_score, dot);
    max_abs = std::max(max_abs, abs);
  }
  double sum = 0;
  for (double& s : p) sum += (s = std::exp(s - max_score));
  std::vector<double> weighted_abs(d, 0.0);
  std::fill_n(want, d, 0.0);
  for (int64_t j = 0; j < c.num_keys; ++j) {
    const float* vv = v.data() + (j * c.kv_heads + g) * d;
    const double pj = p[j] / sum;
    for (int i = 0; i < d; ++i) {
      want[i] += pj * vv[i];
      weighted_abs[i] += pj * std::abs(vv[i]);
    }
  }
  const double relative = 2.5 * kBf16Unit + 2 * d * 0x1p-22 * max_abs +
                          static_cast<double>(c.num_keys) * 0x1p-23 + 1e-5;
  for (int i = 0; i < d; ++i) bound[i] = relative * weighted_abs[i];
}

// The query rows a case checks: all, or the first, the last real, the first
// padding and the last row plus random ones.
std::vector<int64_t> CheckedRows(const AttentionCase& c, std::mt19937_64& rng) {
  std::vector<int64_t> rows;
  if (c.sample_rows == 0 || c.sample_rows >= c.patches) {
    rows.resize(c.patches);
    std::iota(rows.begin(), rows.end(), 0);
    return rows;
  }
  rows = {0, c.num_keys - 1, c.patches - 1};
  if (c.num_keys < c.patches) rows.push_back(c.num_keys);
  std::uniform_int_distribution<int64_t> row(0, c.patches - 1);
  while (static_cast<int64_t>(rows.size()) < c.sample_rows) rows.push_back(row(rng));
  return rows;
}

TEST_CASE("VisionAttention matches float64 and cpu::BidirectionalAttention", "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  auto shared = VisionAttentionWorkspace::Create(10080, 16);
  REQUIRE_OK(shared);
  const AttentionCase cases[] = {
      // 31B: 16 heads of 72 (one batch at 2520 patches, one head per batch at
      // 10080 x 10080), padding queries computed too.
      {"31B, 280 tokens", 2520, 2520, 16, 16, 72, 48, 0, 0},
      {"31B, 280 tokens padded to 10080", 10080, 2520, 16, 16, 72, 48, 0, 0},
      {"31B, 1120 tokens", 10080, 10080, 16, 16, 72, 24, 0, 0},
      // E2B: 12 heads of 64.
      {"E2B, 280 tokens", 2520, 2520, 12, 12, 64, 48, 0, 0},
      {"E2B, 700 tokens padded to 10080", 10080, 6300, 12, 12, 64, 24, 0, 0},
      // Grouped heads: batches of one KV group, of one head, of 2 + 1 heads.
      {"GQA 4 / 2, D 8", 50, 37, 4, 2, 8, 0, 50, 4},
      {"GQA 4 / 2, D 8, one head per batch", 50, 37, 4, 2, 8, 0, 50, 1},
      {"GQA 6 / 2, D 12, batches of 2 + 1", 33, 33, 6, 2, 12, 0, 33, 2},
      {"MHA 5 heads, batches of 2 + 2 + 1", 40, 33, 5, 5, 16, 0, 40, 2},
      // Keys not a multiple of 4 (the softmax's scalar tail), one key (the
      // output is that key's value), out written over q.
      {"31B heads, 5 keys", 19, 5, 16, 16, 72, 0, 0, 0},
      {"one key", 9, 1, 2, 2, 64, 0, 0, 0},
      {"out over q", 30, 22, 4, 4, 72, 0, 0, 0, /*out_is_q=*/true},
  };
  for (const AttentionCase& c : cases) {
    INFO(c.name << ": patches " << c.patches << ", keys " << c.num_keys << ", heads " << c.heads
                << " / " << c.kv_heads << ", D " << c.head_dim);
    std::optional<VisionAttentionWorkspace> own;
    if (c.ws_max_patches > 0) {
      auto created = VisionAttentionWorkspace::Create(c.ws_max_patches, c.ws_heads);
      REQUIRE_OK(created);
      own.emplace(*std::move(created));
    }
    VisionAttentionWorkspace& workspace = own.has_value() ? *own : *shared;
    const int d = c.head_dim;
    const int64_t q_size = c.patches * c.heads * d, kv_size = c.patches * c.kv_heads * d;
    const auto q = RandomBf16(q_size, 0.01f, 1.0f, rng);
    const auto k = RandomBf16(kv_size, 0.01f, 1.0f, rng);
    const auto v = RandomBf16(kv_size, 0.01f, 1.0f, rng);
    auto q_d = testing::Upload(q.bits);
    auto k_d = testing::Upload(k.bits);
    auto v_d = testing::Upload(v.bits);
    auto out_d = Poisoned<uint16_t>(c.out_is_q ? 1 : q_size);
    __nv_bfloat16* out = c.out_is_q ? AsBf16(q_d) : AsBf16(out_d);
    REQUIRE_OK(VisionAttention(AsBf16(q_d), AsBf16(k_d), AsBf16(v_d), c.patches, c.num_keys,
                               c.heads, c.kv_heads, d, out, workspace, nullptr));
    const std::vector<float> all = Bf16BitsToFloats(Download(c.out_is_q ? q_d : out_d));
    // Every output was written (the poison is NaN) and is finite.
    REQUIRE(std::all_of(all.begin(), all.end(), [](float x) { return std::isfinite(x); }));

    const std::vector<int64_t> rows = CheckedRows(c, rng);
    const int64_t row_size = int64_t{c.heads} * d;
    std::vector<float> got;
    std::vector<double> want(rows.size() * row_size), bound(want.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      got.insert(got.end(), all.begin() + rows[r] * row_size,
                 all.begin() + (rows[r] + 1) * row_size);
      for (int h = 0; h < c.heads; ++h) {
        ReferenceAttention(c, q.values, k.values, v.values, rows[r], h, &want[r * row_size + h * d],
                           &bound[r * row_size + h * d]);
      }
    }
    RequireClose(
        got, want, [&](size_t i) { return bound[i]; }, "vs float64");
    if (c.num_keys == 1) {
      // softmax = 1 exactly: each output is its KV head's value, unrounded.
      for (int64_t t = 0; t < c.patches; ++t) {
        for (int64_t i = 0; i < row_size; ++i) {
          REQUIRE(all[t * row_size + i] == v.values[(i / d) / (c.heads / c.kv_heads) * d + i % d]);
        }
      }
    }
    if (c.patches <= 64) {
      std::vector<int64_t> keys(c.num_keys);
      std::iota(keys.begin(), keys.end(), 0);
      std::vector<float> cpu(q_size);
      gemma4::cpu::BidirectionalAttention(q.values, k.values, v.values, c.patches, c.heads,
                                          c.kv_heads, d, keys, cpu, nullptr);
      REQUIRE(rows.size() == static_cast<size_t>(c.patches));  // all rows checked
      const std::vector<double> cpu_d = testing::ToDouble(cpu);
      RequireClose(
          all, cpu_d, [&](size_t i) { return bound[i]; }, "vs cpu::BidirectionalAttention");
    }
  }
}

TEST_CASE("VisionAttention: padding keys, values and queries never reach real rows",
          "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Case {
    int64_t patches, num_keys;
    int heads, kv_heads, head_dim;
  };
  const Case cases[] = {{100, 63, 16, 16, 72}, {90, 54, 4, 2, 8}, {2520, 1800, 12, 12, 64}};
  for (const Case& c : cases) {
    INFO("patches " << c.patches << ", keys " << c.num_keys << ", heads " << c.heads << " / "
                    << c.kv_heads << ", D " << c.head_dim);
    auto workspace = VisionAttentionWorkspace::Create(c.patches, c.heads);
    REQUIRE_OK(workspace);
    const int64_t q_row = int64_t{c.heads} * c.head_dim, kv_row = int64_t{c.kv_heads} * c.head_dim;
    const auto q = RandomBf16(c.patches * q_row, 0.01f, 1.0f, rng);
    const auto k = RandomBf16(c.patches * kv_row, 0.01f, 1.0f, rng);
    const auto v = RandomBf16(c.patches * kv_row, 0.01f, 1.0f, rng);
    // Runs attention on copies whose padding rows [num_keys, patches) of the
    // chosen tensors hold NaN (and +-Inf) instead of their random values.
    auto run = [&](bool poison_kv, bool poison_q) {
      std::vector<uint16_t> qb = q.bits, kb = k.bits, vb = v.bits;
      const uint16_t garbage[] = {kBf16NaN, 0x7F80, 0xFF80};
      if (poison_kv) {
        for (int64_t i = c.num_keys * kv_row; i < c.patches * kv_row; ++i) {
          kb[i] = garbage[i % 3];
          vb[i] = garbage[(i + 1) % 3];
        }
      }
      if (poison_q) {
        for (int64_t i = c.num_keys * q_row; i < c.patches * q_row; ++i) qb[i] = garbage[i % 3];
      }
      auto q_d = testing::Upload(qb);
      auto k_d = testing::Upload(kb);
      auto v_d = testing::Upload(vb);
      auto out_d = Poisoned<uint16_t>(qb.size());
      REQUIRE_OK(VisionAttention(AsBf16(q_d), AsBf16(k_d), AsBf16(v_d), c.patches, c.num_keys,
                                 c.heads, c.kv_heads, c.head_dim, AsBf16(out_d), *workspace,
                                 nullptr));
      return Download(out_d);
    };
    const std::vector<uint16_t> clean = run(false, false);
    const std::vector<float> clean_values = Bf16BitsToFloats(clean);
    REQUIRE(std::all_of(clean_values.begin(), clean_values.end(),
                        [](float x) { return std::isfinite(x); }));
    // Padding K/V: every row (padding queries too) is unchanged, bit for bit.
    const std::vector<uint16_t> kv_poisoned = run(true, false);
    REQUIRE(kv_poisoned == clean);
    // Padding Q as well: the real rows are unchanged.
    const std::vector<uint16_t> all_poisoned = run(true, true);
    const auto real_end = clean.begin() + c.num_keys * q_row;
    REQUIRE(std::equal(clean.begin(), real_end, all_poisoned.begin()));
  }
}

// ---- VisionPool ----

TEST_CASE("VisionPool matches float64 and cpu::AvgPoolWindows + the standardization",
          "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Case {
    const char* name;
    int width, height;  // the real patches' grid, whole windows
    int64_t patches;
    int hidden, kernel;
    bool standardize;
    bool shuffled;  // real patches in random order (still first)
  };
  const Case cases[] = {
      {"31B, 280 tokens", 60, 42, 2520, 1152, 3, true, false},
      {"31B, 280 tokens padded to 10080", 60, 42, 10080, 1152, 3, true, false},
      {"E2B, 1120 tokens", 120, 84, 10080, 768, 3, false, false},
      {"E2B, 280 tokens padded to 10080", 60, 42, 10080, 768, 3, false, false},
      {"6 x 9 grid padded to 81, hidden 5", 9, 6, 81, 5, 3, true, false},
      {"kernel 2, shuffled, hidden 300 (a partial column tile)", 6, 4, 32, 300, 2, true, true},
      {"kernel 1", 5, 3, 20, 33, 1, false, true},
  };
  std::uniform_real_distribution<float> magnitude(0.01f, 10.0f);
  std::bernoulli_distribution negative(0.5);
  for (const Case& c : cases) {
    INFO(c.name);
    const int h = c.hidden, k = c.kernel;
    const int64_t real = int64_t{c.width} * c.height;
    const int64_t windows = real / (int64_t{k} * k);
    std::vector<int32_t> positions = GridPositions(c.width, c.height, c.patches);
    if (c.shuffled) {
      std::vector<int64_t> order(real);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      const std::vector<int32_t> grid = positions;
      for (int64_t p = 0; p < real; ++p) {
        positions[2 * p] = grid[2 * order[p]];
        positions[2 * p + 1] = grid[2 * order[p] + 1];
      }
    }
    std::vector<float> residual(c.patches * h);
    for (int64_t p = 0; p < c.patches; ++p) {
      for (int i = 0; i < h; ++i) {
        // Padding rows hold whatever the encoder left: NaN here, skipped.
        residual[p * h + i] =
            IsPadding(positions, p) ? kNaN : (negative(rng) ? -magnitude(rng) : magnitude(rng));
      }
    }
    const auto bias = RandomBf16(h, 0.01f, 2.0f, rng);
    const auto std_scale = RandomBf16(h, 0.25f, 2.0f, rng);
    // HF: hidden_size**0.5, a Python float, rounded to float32 (as cpu_vision.cc).
    const float scale = static_cast<float>(std::pow(static_cast<double>(h), 0.5));

    auto residual_d = testing::Upload(residual);
    auto positions_d = testing::Upload(positions);
    auto bias_d = testing::Upload(bias.bits);
    auto std_scale_d = testing::Upload(std_scale.bits);
    auto out_d = Poisoned<uint16_t>(windows * h);
    REQUIRE_OK(VisionPool(residual_d.data(), positions_d.data(), c.patches, h, k, windows, scale,
                          c.standardize ? AsBf16(bias_d) : nullptr,
                          c.standardize ? AsBf16(std_scale_d) : nullptr, AsBf16(out_d), nullptr));
    const std::vector<float> got = Bf16BitsToFloats(Download(out_d));

    // float64: each window's members found from its grid coordinates.
    const int64_t per_row = c.width / k;
    std::vector<double> want(windows * h, 0.0), magnitude_sum(windows * h, 0.0);
    for (int64_t p = 0; p < real; ++p) {
      const int64_t w = positions[2 * p] / k + per_row * (positions[2 * p + 1] / k);
      REQUIRE(w < windows);
      for (int i = 0; i < h; ++i) {
        want[w * h + i] += residual[p * h + i] / (double{1.0} * k * k);
        magnitude_sum[w * h + i] += std::abs(residual[p * h + i]) / (double{1.0} * k * k);
      }
    }
    std::vector<double> bound(want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      const double b = c.standardize ? bias.values[i % h] : 0.0;
      const double s = c.standardize ? std_scale.values[i % h] : 1.0;
      want[i] = (want[i] * scale - b) * s;
      bound[i] = 2e-5 * (magnitude_sum[i] * scale + std::abs(b)) * std::abs(s);
    }
    RequireClose(
        got, want, [&](size_t i) { return kBf16Unit * std::abs(want[i]) + bound[i]; },
        "vs float64");

    // The CPU path of cpu_vision.cc's SoftTokens.
    std::vector<float> zeroed = residual;
    for (int64_t p = 0; p < c.patches; ++p) {
      if (IsPadding(positions, p)) std::fill_n(zeroed.begin() + p * h, h, 0.0f);
    }
    std::vector<float> cpu = gemma4::cpu::AvgPoolWindows(
        zeroed, h, gemma4::cpu::PoolWindows(positions, k), k, c.patches / (int64_t{k} * k), scale);
    REQUIRE(static_cast<int64_t>(cpu.size()) == windows * h);
    if (c.standardize) {
      for (size_t i = 0; i < cpu.size(); ++i) {
        cpu[i] = (cpu[i] - bias.values[i % h]) * std_scale.values[i % h];
      }
    }
    const std::vector<double> cpu_d = testing::ToDouble(cpu);
    RequireClose(
        got, cpu_d, [&](size_t i) { return kBf16Unit * std::abs(cpu_d[i]) + bound[i]; },
        "vs cpu::AvgPoolWindows");
  }
}

// ---- host-side logic and argument errors (no GPU needed: every rejection
// returns before any CUDA call) ----

TEST_CASE("PlanVisionAttentionBatches covers the heads, one KV group per grouped batch",
          "[cuda][vision]") {
  using Batches = std::vector<std::pair<int, int>>;
  auto plan = [](int heads, int kv_heads, int64_t most) {
    Batches out;
    for (const VisionAttentionBatch& b : PlanVisionAttentionBatches(heads, kv_heads, most)) {
      out.emplace_back(b.first_head, b.heads);
    }
    return out;
  };
  CHECK(plan(16, 16, 16) == Batches{{0, 16}});
  CHECK(plan(16, 16, 100) == Batches{{0, 16}});
  CHECK(plan(16, 16, 5) == Batches{{0, 5}, {5, 5}, {10, 5}, {15, 1}});
  CHECK(plan(4, 4, 0) == Batches{{0, 1}, {1, 1}, {2, 1}, {3, 1}});  // at least one head
  CHECK(plan(4, 2, 4) == Batches{{0, 2}, {2, 2}});
  CHECK(plan(6, 2, 2) == Batches{{0, 2}, {2, 1}, {3, 2}, {5, 1}});
  CHECK(plan(8, 1, 3) == Batches{{0, 3}, {3, 3}, {6, 2}});
  CHECK(plan(12, 12, 1).size() == 12);
  CHECK(plan(6, 4, 2).empty());  // 4 does not divide 6
  CHECK(plan(0, 1, 2).empty());
}

TEST_CASE("Vision kernels reject bad arguments before touching the device", "[cuda][vision]") {
  const auto invalid = absl::StatusCode::kInvalidArgument;
  // Never dereferenced: each call below fails its checks first.
  auto* b = reinterpret_cast<__nv_bfloat16*>(uintptr_t{1} << 20);
  auto* f = reinterpret_cast<float*>(uintptr_t{2} << 20);
  auto* pos = reinterpret_cast<int32_t*>(uintptr_t{3} << 20);
  const float* inv = f + 4096;

  REQUIRE_STATUS_IS(PatchEmbeddingsToResidual(nullptr, b, b, pos, 4, 8, f, nullptr), invalid);
  REQUIRE_STATUS_IS(PatchEmbeddingsToResidual(b, b, b, nullptr, 4, 8, f, nullptr), invalid);
  REQUIRE_STATUS_IS(PatchEmbeddingsToResidual(b, b, b, pos, 4, 8, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(PatchEmbeddingsToResidual(b, b, b, pos, -1, 8, f, nullptr), invalid);
  REQUIRE_STATUS_IS(PatchEmbeddingsToResidual(b, b, b, pos, 4, 0, f, nullptr), invalid);
  REQUIRE_STATUS_IS(
      PatchEmbeddingsToResidual(b, b, b, pos, 4, 8,
                                reinterpret_cast<float*>(uintptr_t{(2 << 20) + 2}), nullptr),
      invalid);  // misaligned float

  REQUIRE_STATUS_IS(ClampBf16(nullptr, b, 8, 0.0f, 1.0f, nullptr), invalid);
  REQUIRE_STATUS_IS(ClampBf16(b, nullptr, 8, 0.0f, 1.0f, nullptr), invalid);
  REQUIRE_STATUS_IS(ClampBf16(b, b, -1, 0.0f, 1.0f, nullptr), invalid);
  REQUIRE_STATUS_IS(ClampBf16(b, b, 8, kNaN, 1.0f, nullptr), invalid);
  REQUIRE_STATUS_IS(ClampBf16(b, b, 8, 0.0f, kNaN, nullptr), invalid);

  REQUIRE_STATUS_IS(VisionHeadNormRope2d(nullptr, 4, 16, 72, b, kEps, inv, pos, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionHeadNormRope2d(b, -1, 16, 72, b, kEps, inv, pos, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionHeadNormRope2d(b, 4, 0, 72, b, kEps, inv, pos, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionHeadNormRope2d(b, 4, 16, 0, b, kEps, inv, pos, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionHeadNormRope2d(b, 4, 16, 70, b, kEps, inv, pos, nullptr),
                    invalid);  // RoPE: D % 4
  REQUIRE_STATUS_IS(VisionHeadNormRope2d(b, 4, 16, 72, b, kEps, inv, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionHeadNormRope2d(b, 4, 16, 72, b, -1.0f, inv, pos, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionHeadNormRope2d(b, 4, 16, 72, b, kNaN, nullptr, nullptr, nullptr),
                    invalid);

  REQUIRE_STATUS_IS(VisionAttentionWorkspace::Create(0, 16), invalid);
  REQUIRE_STATUS_IS(VisionAttentionWorkspace::Create(2520, 0), invalid);

  REQUIRE_STATUS_IS(VisionPool(nullptr, pos, 18, 8, 3, 2, 2.0f, nullptr, nullptr, b, nullptr),
                    invalid);
  REQUIRE_STATUS_IS(VisionPool(f, nullptr, 18, 8, 3, 2, 2.0f, nullptr, nullptr, b, nullptr),
                    invalid);
  REQUIRE_STATUS_IS(VisionPool(f, pos, 18, 8, 3, 2, 2.0f, nullptr, nullptr, nullptr, nullptr),
                    invalid);
  REQUIRE_STATUS_IS(VisionPool(f, pos, 18, 8, 3, 2, 2.0f, b, nullptr, b, nullptr),
                    invalid);  // bias without scale
  REQUIRE_STATUS_IS(VisionPool(f, pos, 0, 8, 3, 2, 2.0f, nullptr, nullptr, b, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionPool(f, pos, 18, 0, 3, 2, 2.0f, nullptr, nullptr, b, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionPool(f, pos, 18, 8, 0, 2, 2.0f, nullptr, nullptr, b, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionPool(f, pos, 18, 8, 3, 0, 2.0f, nullptr, nullptr, b, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionPool(f, pos, 18, 8, 3, 2, kNaN, nullptr, nullptr, b, nullptr), invalid);
}

TEST_CASE("VisionAttention rejects bad arguments; empty calls do nothing", "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  const auto invalid = absl::StatusCode::kInvalidArgument;
  auto workspace = VisionAttentionWorkspace::Create(64, 4);
  REQUIRE_OK(workspace);
  REQUIRE(workspace->max_patches() == 64);
  REQUIRE(workspace->score_capacity() == 4 * 64 * 64);
  auto buffer = Poisoned<uint16_t>(4 * 64 * 4 * 72 + 64);
  __nv_bfloat16* q = AsBf16(buffer);
  __nv_bfloat16* k = q + 64 * 4 * 72;
  __nv_bfloat16* v = k + 64 * 4 * 72;
  __nv_bfloat16* out = v + 64 * 4 * 72;
  VisionAttentionWorkspace& ws = *workspace;

  REQUIRE_OK(VisionAttention(q, k, v, 0, 0, 4, 4, 72, out, ws, nullptr));  // nothing to do
  REQUIRE_STATUS_IS(VisionAttention(nullptr, k, v, 64, 64, 4, 4, 72, out, ws, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 64, 64, 4, 4, 72, nullptr, ws, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionAttention(q + 1, k, v, 64, 64, 4, 4, 72, out, ws, nullptr),
                    invalid);  // not 16-byte aligned
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 64, 64, 4, 4, 72, k, ws, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 65, 64, 4, 4, 72, out, ws, nullptr),
                    invalid);  // more patches than the workspace holds
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 64, 0, 4, 4, 72, out, ws, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 32, 33, 4, 4, 72, out, ws, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 64, 64, 4, 3, 72, out, ws, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 64, 64, 0, 1, 72, out, ws, nullptr), invalid);
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 64, 64, 4, 4, 0, out, ws, nullptr), invalid);

  VisionAttentionWorkspace moved = std::move(ws);
  REQUIRE_STATUS_IS(VisionAttention(q, k, v, 64, 64, 4, 4, 72, out, ws, nullptr), invalid);
  REQUIRE(ws.max_patches() == 0);
  REQUIRE(moved.max_patches() == 64);
}

}  // namespace
}  // namespace gquant::cuda
