// VisionFlashAttention against a float64 reference computed from the same
// bf16 q, k and v, and against VisionAttention (the cuBLAS path, every
// output) at the Gemma 4 vision shapes (31B: 16 heads of 72; E2B: 12 heads
// of 64; 2520 and 10080 patch rows) and small odd ones (head dims 8 to 128,
// grouped heads, 1, 63, 65 keys, rows not a multiple of 64); outputs
// poisoned first; NaN / Inf in the padding K/V rows must not change any
// output bit; the launcher's argument errors.
//
// Error bound of one output element o vs the float64 reference (as
// prefill_attention_test.cc, checked per element):
//   |got − ref| <= 2^-8 |ref| + 2^-7 A,   A = Σ_j p_j |v_j| (reference weights p).
// - 2^-8 |ref|: the output's rounding to bf16 (unit roundoff 2^-8, 2x slack).
// - 2^-7 A: the kernel rounds P to bf16 before P·V (as HF's eager path),
//   a relative error <= 2^-8 per weight, so <= 2^-8 A in all. The other
//   2^-8 A covers the fp32 parts: the fp32 scores (an error δ in a score
//   moves its weight by <= ~2δ; |δ| <~ D 2^-24 Σ_d |q_d k_d|, ~2^-12 with
//   the inputs here: Σ|q k| ~ 72 at D 72 and |q| <= 4, ~32 at D 128 and
//   |q| <= 1), exp2 (~2^-22), the running-max rescaling and the fp32 sums
//   over <= 10080 keys (<= ~2^-12).
// Also ||got − ref|| / ||ref|| <= 2^-7 over the checked outputs: the two
// bf16 roundings have random signs and average ~2^-9 of the norm.
//
// Against VisionAttention (which makes the same two bf16 roundings, P after
// the division): each is ~2^-9.3 (rms, relative) from the exact result, so
//   ||flash − cublas|| / ||cublas|| <= 2^-7 over the whole output, and
//   <= 2^-6 over each query row (all heads: >= 32 outputs, >= 768 at the
//   model shapes), 4x and 8x the expected ~2^-8.8.
#include "vision_flash_attention.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/dtype.h"
#include "vision_kernels.cuh"

namespace gquant::cuda {
namespace {

using testing::AsBf16;
using testing::Bf16Values;
using testing::RandomBf16;

constexpr double kBf16Rounding = 0x1p-8;
constexpr double kWeightRounding = 0x1p-7;
constexpr double kNormBound = 0x1p-7;
constexpr double kCublasNormBound = 0x1p-7;
constexpr double kCublasRowBound = 0x1p-6;
constexpr uint16_t kBf16NaN = 0x7FC0;
constexpr uint16_t kBf16Inf = 0x7F80, kBf16MinusInf = 0xFF80;

struct Case {
  const char* name;
  int64_t patches, num_keys;
  int heads, kv_heads, head_dim;
  int64_t sample_rows;   // query rows checked against float64; 0: all
  float q_scale = 1.0f;  // q magnitudes in [0.01, q_scale] (4: peaked softmax)
  bool out_is_q = false;
};

const Case kCases[] = {
    // 31B: 16 heads of 72 (padded to 80 inside); 280 soft tokens are 2520
    // patch rows, the largest image 10080.
    {"31B, 280 tokens", 2520, 2520, 16, 16, 72, 48},
    {"31B, 280 tokens padded to 10080", 10080, 2520, 16, 16, 72, 48},
    {"31B, 1120 tokens", 10080, 10080, 16, 16, 72, 16},
    // E2B: 12 heads of 64.
    {"E2B, 280 tokens", 2520, 2520, 12, 12, 64, 48},
    {"E2B, 700 tokens padded to 10080", 10080, 6300, 12, 12, 64, 24},
    // Peaked scores (|s| up to ~100): the running maximum matters.
    {"31B heads, peaked scores", 300, 257, 16, 16, 72, 0, 4.0f},
    // Small odd ones: every padded head dim, grouped heads, 1 / 63 / 64 / 65
    // keys, rows not a multiple of 64, out written over q.
    {"D 8, GQA 4 / 2", 50, 37, 4, 2, 8, 0},
    {"D 16, 9 keys", 17, 9, 1, 1, 16, 0},
    {"D 24, 65 keys", 100, 65, 3, 3, 24, 0},
    {"D 40, 63 keys, GQA 6 / 2", 130, 63, 6, 2, 40, 0},
    {"D 48, 64 keys", 64, 64, 2, 2, 48, 0},
    {"D 96, GQA 3 / 1", 200, 191, 3, 1, 96, 0},
    {"D 112", 150, 150, 2, 2, 112, 0},
    {"D 128, one key", 70, 1, 2, 1, 128, 0},
    {"D 128, GQA 4 / 2, two tiles and a key", 129, 129, 4, 2, 128, 0},
    {"D 72, out over q", 100, 77, 4, 4, 72, 0, 1.0f, /*out_is_q=*/true},
};

struct Inputs {
  Bf16Values q, k, v;  // q [patches, heads, D]; k, v [patches, kv_heads, D]
};

Inputs MakeInputs(const Case& c, std::mt19937_64& rng) {
  const int64_t q_size = c.patches * c.heads * c.head_dim;
  const int64_t kv_size = c.patches * c.kv_heads * c.head_dim;
  return {RandomBf16(q_size, 0.01f, c.q_scale, rng), RandomBf16(kv_size, 0.01f, 1.0f, rng),
          RandomBf16(kv_size, 0.01f, 1.0f, rng)};
}

std::vector<uint16_t> Download(const DeviceBuffer<uint16_t>& buffer) {
  std::vector<uint16_t> host(buffer.size());
  REQUIRE_OK(buffer.CopyToHost(host));
  return host;
}

DeviceBuffer<uint16_t> Poisoned(size_t n) {
  auto buffer = DeviceBuffer<uint16_t>::Allocate(n);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0xFF));  // bf16 NaN: an unwritten output fails
  return *std::move(buffer);
}

// VisionFlashAttention on device copies of the bits, into a poisoned output
// (or over q); returns the output bits.
std::vector<uint16_t> RunFlash(const Case& c, const std::vector<uint16_t>& q,
                               const std::vector<uint16_t>& k, const std::vector<uint16_t>& v) {
  auto q_d = testing::Upload(q);
  auto k_d = testing::Upload(k);
  auto v_d = testing::Upload(v);
  auto out_d = Poisoned(c.out_is_q ? 1 : q.size());
  __nv_bfloat16* out = c.out_is_q ? AsBf16(q_d) : AsBf16(out_d);
  REQUIRE_OK(VisionFlashAttention(AsBf16(q_d), AsBf16(k_d), AsBf16(v_d), c.patches, c.num_keys,
                                  c.heads, c.kv_heads, c.head_dim, out, nullptr));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  return Download(c.out_is_q ? q_d : out_d);
}

// VisionAttention (cuBLAS) on the same inputs.
std::vector<uint16_t> RunCublas(const Case& c, const Inputs& in,
                                VisionAttentionWorkspace& workspace) {
  auto q_d = testing::Upload(in.q.bits);
  auto k_d = testing::Upload(in.k.bits);
  auto v_d = testing::Upload(in.v.bits);
  auto out_d = Poisoned(in.q.bits.size());
  REQUIRE_OK(VisionAttention(AsBf16(q_d), AsBf16(k_d), AsBf16(v_d), c.patches, c.num_keys, c.heads,
                             c.kv_heads, c.head_dim, AsBf16(out_d), workspace, nullptr));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  return Download(out_d);
}

std::vector<float> ToFloats(std::span<const uint16_t> bits) {
  std::vector<float> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = BFloat16ToFloat(bits[i]);
  return values;
}

// The float64 reference of query row t, head h: the output and A (see the
// bound) per element.
struct ReferenceRow {
  std::vector<double> out, weighted_abs;
};
ReferenceRow Reference(const Case& c, const Inputs& in, int64_t t, int h) {
  const int d = c.head_dim, g = h / (c.heads / c.kv_heads);
  const float* q = in.q.values.data() + (t * c.heads + h) * d;
  std::vector<double> p(c.num_keys);
  for (int64_t j = 0; j < c.num_keys; ++j) {
    const float* key = in.k.values.data() + (j * c.kv_heads + g) * d;
    double dot = 0;
    for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * key[i];
    p[j] = dot;
  }
  const double max = *std::max_element(p.begin(), p.end());
  double sum = 0;
  for (double& s : p) sum += (s = std::exp(s - max));
  ReferenceRow row{std::vector<double>(d, 0.0), std::vector<double>(d, 0.0)};
  for (int64_t j = 0; j < c.num_keys; ++j) {
    const float* value = in.v.values.data() + (j * c.kv_heads + g) * d;
    const double weight = p[j] / sum;
    for (int i = 0; i < d; ++i) {
      row.out[i] += weight * value[i];
      row.weighted_abs[i] += weight * std::abs(value[i]);
    }
  }
  return row;
}

// The query rows checked against float64: all, or the first, the last real,
// the first padding, the last rows of the last full and the partial query
// tile, plus random ones.
std::vector<int64_t> CheckedRows(const Case& c, std::mt19937_64& rng) {
  std::vector<int64_t> rows;
  if (c.sample_rows == 0 || c.sample_rows >= c.patches) {
    rows.resize(c.patches);
    std::iota(rows.begin(), rows.end(), 0);
    return rows;
  }
  rows = {0, 63, 64, c.num_keys - 1, c.patches - 1};
  if (c.num_keys < c.patches) rows.push_back(c.num_keys);
  std::uniform_int_distribution<int64_t> row(0, c.patches - 1);
  while (static_cast<int64_t>(rows.size()) < c.sample_rows) rows.push_back(row(rng));
  return rows;
}

void CheckAgainstFloat64(const Case& c, const Inputs& in, std::span<const float> got,
                         std::mt19937_64& rng) {
  const int d = c.head_dim;
  int64_t failures = 0;
  double err2 = 0, ref2 = 0;
  for (const int64_t t : CheckedRows(c, rng)) {
    for (int h = 0; h < c.heads; ++h) {
      const ReferenceRow ref = Reference(c, in, t, h);
      for (int i = 0; i < d; ++i) {
        const double value = got[(t * c.heads + h) * d + i];
        const double want = ref.out[i];
        const double bound = kBf16Rounding * std::abs(want) + kWeightRounding * ref.weighted_abs[i];
        if (!(std::abs(value - want) <= bound) && failures++ == 0) {
          UNSCOPED_INFO("first failure: row " << t << " head " << h << " dim " << i << " got "
                                              << value << " want " << want << " bound " << bound);
        }
        err2 += (value - want) * (value - want);
        ref2 += want * want;
      }
    }
  }
  CAPTURE(failures);
  REQUIRE(failures == 0);
  CAPTURE(std::sqrt(err2 / ref2));
  REQUIRE(std::sqrt(err2 / ref2) <= kNormBound);
}

// Every output against VisionAttention's: the whole tensor's and each query
// row's relative difference (file comment).
void CheckAgainstCublas(const Case& c, std::span<const float> got, std::span<const float> cublas) {
  REQUIRE(got.size() == cublas.size());
  REQUIRE(std::all_of(cublas.begin(), cublas.end(), [](float x) { return std::isfinite(x); }));
  const int64_t row_size = int64_t{c.heads} * c.head_dim;
  double err2 = 0, ref2 = 0, worst_row = 0;
  int64_t worst = -1;
  for (int64_t t = 0; t < c.patches; ++t) {
    double row_err2 = 0, row_ref2 = 0;
    for (int64_t i = t * row_size; i < (t + 1) * row_size; ++i) {
      const double diff = static_cast<double>(got[i]) - cublas[i];
      row_err2 += diff * diff;
      row_ref2 += static_cast<double>(cublas[i]) * cublas[i];
    }
    const double relative = std::sqrt(row_err2 / row_ref2);
    if (!(relative <= worst_row)) worst_row = relative, worst = t;
    err2 += row_err2;
    ref2 += row_ref2;
  }
  CAPTURE(worst, worst_row);
  REQUIRE(worst_row <= kCublasRowBound);
  CAPTURE(std::sqrt(err2 / ref2));
  REQUIRE(std::sqrt(err2 / ref2) <= kCublasNormBound);
}

TEST_CASE("VisionFlashAttention matches float64 and VisionAttention", "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  auto workspace = VisionAttentionWorkspace::Create(10080, 16);
  REQUIRE_OK(workspace);
  for (const Case& c : kCases) {
    INFO(c.name << ": patches " << c.patches << ", keys " << c.num_keys << ", heads " << c.heads
                << " / " << c.kv_heads << ", D " << c.head_dim << ", q scale " << c.q_scale);
    const Inputs in = MakeInputs(c, rng);
    const std::vector<float> got = ToFloats(RunFlash(c, in.q.bits, in.k.bits, in.v.bits));
    // Every output was written (the poison is NaN) and is finite.
    REQUIRE(std::all_of(got.begin(), got.end(), [](float x) { return std::isfinite(x); }));
    CheckAgainstFloat64(c, in, got, rng);
    CheckAgainstCublas(c, got, ToFloats(RunCublas(c, in, *workspace)));
    if (c.num_keys == 1) {
      // softmax = 1 exactly: each output is its KV head's value, unrounded.
      const int64_t row_size = int64_t{c.heads} * c.head_dim;
      int64_t mismatches = 0;
      for (int64_t t = 0; t < c.patches; ++t) {
        for (int64_t i = 0; i < row_size; ++i) {
          const int64_t kv =
              (i / c.head_dim) / (c.heads / c.kv_heads) * c.head_dim + i % c.head_dim;
          mismatches += got[t * row_size + i] == in.v.values[kv] ? 0 : 1;
        }
      }
      REQUIRE(mismatches == 0);
    }
  }
}

TEST_CASE("VisionFlashAttention: padding keys and values are never read, results repeat",
          "[cuda][vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  const Case cases[] = {
      {"31B heads, 63 of 100 keys", 100, 63, 16, 16, 72, 0},
      {"D 8, GQA 4 / 2", 90, 54, 4, 2, 8, 0},
      {"E2B, 1800 of 2520 keys", 2520, 1800, 12, 12, 64, 0},
      {"D 40, 65 of 130 keys, GQA 3 / 1", 130, 65, 3, 1, 40, 0},
      {"D 128, one key", 70, 1, 2, 2, 128, 0},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const Inputs in = MakeInputs(c, rng);
    const int64_t q_row = int64_t{c.heads} * c.head_dim, kv_row = int64_t{c.kv_heads} * c.head_dim;
    // Copies whose padding rows [num_keys, patches) of K and V (and of Q
    // with poison_q) hold NaN and +-Inf instead of their random values.
    const auto poisoned = [&](const std::vector<uint16_t>& bits, int64_t row, int shift) {
      const uint16_t garbage[] = {kBf16NaN, kBf16Inf, kBf16MinusInf};
      std::vector<uint16_t> out = bits;
      for (int64_t i = c.num_keys * row; i < c.patches * row; ++i)
        out[i] = garbage[(i + shift) % 3];
      return out;
    };
    const std::vector<uint16_t> clean = RunFlash(c, in.q.bits, in.k.bits, in.v.bits);
    const std::vector<float> clean_values = ToFloats(clean);
    REQUIRE(std::all_of(clean_values.begin(), clean_values.end(),
                        [](float x) { return std::isfinite(x); }));
    // The same inputs give the same bits (a race would not).
    REQUIRE(RunFlash(c, in.q.bits, in.k.bits, in.v.bits) == clean);
    // Padding K/V: every row (padding queries too) is unchanged, bit for bit.
    const std::vector<uint16_t> k_bad = poisoned(in.k.bits, kv_row, 0);
    const std::vector<uint16_t> v_bad = poisoned(in.v.bits, kv_row, 1);
    REQUIRE(RunFlash(c, in.q.bits, k_bad, v_bad) == clean);
    // Padding Q as well: the real rows are unchanged.
    const std::vector<uint16_t> all_bad = RunFlash(c, poisoned(in.q.bits, q_row, 2), k_bad, v_bad);
    REQUIRE(std::equal(clean.begin(), clean.begin() + c.num_keys * q_row, all_bad.begin()));
  }
}

TEST_CASE("VisionFlashAttention rejects bad arguments", "[cuda][vision]") {
  // Every call fails its host checks before any CUDA call, so fake (host)
  // pointers serve and no GPU is needed.
  alignas(16) static __nv_bfloat16 storage[4][64];
  __nv_bfloat16 *const q = storage[0], *const k = storage[1], *const v = storage[2],
                       *const out = storage[3];
  // 2 patches x 2 heads x 16 dims = 64 elements per tensor.
  const auto call = [](const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                       int64_t patches, int64_t keys, int heads, int kv_heads, int d,
                       __nv_bfloat16* out) {
    return VisionFlashAttention(q, k, v, patches, keys, heads, kv_heads, d, out, nullptr);
  };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_STATUS_IS(call(nullptr, k, v, 2, 2, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, nullptr, v, 2, 2, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, nullptr, 2, 2, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 2, 2, 16, nullptr), kInvalid);
  // Misaligned (8-byte offsets).
  REQUIRE_STATUS_IS(call(q + 4, k, v, 1, 1, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k + 4, v, 1, 1, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v + 4, 1, 1, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 1, 1, 2, 2, 16, out + 4), kInvalid);
  // out over k or v, or over part of q (out == q is fine: see below).
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 2, 2, 16, k), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 2, 2, 16, v), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 2, 2, 16, q + 8), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 2, 2, 16, k + 8), kInvalid);
  REQUIRE_STATUS_IS(call(q + 32, k, v, 2, 2, 2, 2, 16, q), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 2, 2, 16, storage[2] - 8), kInvalid);  // into v
  // Heads.
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 0, 1, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 2, 0, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 6, 4, 16, out), kInvalid);  // 6 % 4
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, -2, -1, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 2, 65536, 1, 16, out), kInvalid);  // past gridDim.y
  // Head dims: multiples of 8 in [8, 128] only.
  for (const int d : {0, -8, 4, 12, 36, 72 + 4, 136, 256}) {
    CAPTURE(d);
    REQUIRE_STATUS_IS(call(q, k, v, 1, 1, 1, 1, d, out), kInvalid);
  }
  // Patches and keys: 1 <= num_keys <= patches <= 2^30.
  REQUIRE_STATUS_IS(call(q, k, v, 2, 0, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, 3, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 2, -1, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, -1, -1, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, 0, 1, 2, 2, 16, out), kInvalid);
  REQUIRE_STATUS_IS(call(q, k, v, (int64_t{1} << 30) + 1, 1, 2, 2, 16, out), kInvalid);
  // An empty image is fine and launches nothing (no GPU needed).
  REQUIRE_OK(call(q, k, v, 0, 0, 2, 2, 16, out));
  REQUIRE_OK(call(q, k, v, 0, 0, 16, 16, 72, q));
}

}  // namespace
}  // namespace gquant::cuda
