// PrepareAttentionInputs (attention_inputs.cuh) bit for bit against the
// unfused sequence it replaces in the decoder layer (the K=V copy,
// HeadNormRope on k, v and q, AppendKv), run on a copy of the same inputs
// into a second cache, and within bf16 rounding of cpu::RmsNorm +
// cpu::ApplyRope. Gemma 4 head layouts (31B sliding / full, E2B) and D = 200
// (k and q take single-element runs, v 16-byte runs), 1 and 7 tokens, rings
// that wrap and rings smaller than the call, a negative position, K=V and
// KV-shared layers. Inputs are fresh random bf16 (the seed is printed); both
// caches are poisoned (0xFF, bf16 NaN) first, so an unwritten slot shows. The
// argument checks are tested on the host (no GPU needed).
//
// Error bound against the CPU ops (as rms_norm_test.cc, which derives it):
// float32 sums of squares, rsqrtf, sincosf and the rotation are within 1e-5
// of the values; one rounding to bf16 adds 2^-8 relative. Hence
//   |got - want| <= (2^-8 + 1e-5) |want| + 1e-5 (|y_j| + |y_j+D/2|),
// y the normalized pair (0 without RoPE), whose rotation may cancel.
#include "attention_inputs.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"
#include "gquant/gemma4/config.h"
#include "kv_cache.cuh"
#include "rms_norm.cuh"

namespace gquant::cuda {
namespace {

using testing::AsBf16;
using testing::Bf16Values;
using testing::RandomBf16;

constexpr float kEps = 1e-6f;
const double kBf16Bound = std::ldexp(1.0, -8) + 1e-5;
constexpr uint16_t kPoison = 0xFFFF;

const gemma4::RopeParameters kSliding{"default", 10000.0, 1.0};
const gemma4::RopeParameters kFull{"proportional", 1000000.0, 0.25};

// One layer type's attention heads.
struct HeadLayout {
  std::string name;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  gemma4::RopeParameters rope;
};

std::vector<uint16_t> Download(const DeviceBuffer<uint16_t>& buffer) {
  std::vector<uint16_t> bits(buffer.size());
  REQUIRE_OK(buffer.CopyToHost(bits));
  return bits;
}

// REQUIREs got == want bit for bit, reporting the count and the first
// difference.
void RequireSameBits(std::span<const uint16_t> got, std::span<const uint16_t> want,
                     const std::string& what) {
  REQUIRE(got.size() == want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i] && bad++ == 0) first = i;
  }
  if (bad > 0) {
    INFO(what << ": " << bad << " of " << got.size() << " elements differ; first at " << first
              << ": got 0x" << std::hex << got[first] << ", want 0x" << want[first]);
    REQUIRE(bad == 0);
  }
}

// cpu::RmsNorm (with `weight`, none if empty) and, when inv_freq is not
// empty, cpu::ApplyRope of x [tokens, heads, D] with token t at first + t;
// pair[i] is |y_i| + |y_partner| of the normalized values (0 without RoPE).
struct CpuHeads {
  std::vector<double> want;
  std::vector<double> pair;
};
CpuHeads CpuNormRope(std::vector<float> x, int64_t tokens, int heads, int d,
                     std::span<const float> weight, std::span<const float> inv_freq,
                     int64_t first) {
  gemma4::cpu::RmsNorm(x, d, weight, kEps);
  CpuHeads out{{}, std::vector<double>(x.size(), 0.0)};
  if (!inv_freq.empty()) {
    const int half = d / 2;
    for (size_t i = 0; i < x.size(); ++i) {
      const size_t partner = i % d < static_cast<size_t>(half) ? i + half : i - half;
      out.pair[i] = std::abs(x[i]) + std::abs(x[partner]);
    }
    for (int64_t t = 0; t < tokens; ++t) {
      gemma4::cpu::ApplyRope(std::span(x).subspan(t * heads * d, int64_t{heads} * d), heads, d,
                             first + t, inv_freq);
    }
  }
  out.want = testing::ToDouble(x);
  return out;
}

// REQUIREs bf16 `got` within the bound above of the CPU values.
void RequireNearCpu(std::span<const uint16_t> got, const CpuHeads& cpu, const std::string& what) {
  std::vector<float> values(got.size());
  for (size_t i = 0; i < got.size(); ++i) values[i] = BFloat16ToFloat(got[i]);
  testing::RequireClose(
      values, cpu.want,
      [&](size_t i) { return kBf16Bound * std::abs(cpu.want[i]) + 1e-5 * cpu.pair[i]; }, what);
}

struct Problem {
  HeadLayout heads;
  int64_t tokens;
  int64_t capacity;
  int64_t first;
  bool has_v;
  bool kv_shared;
};

void CheckProblem(const Problem& p, std::mt19937_64& rng) {
  const HeadLayout& h = p.heads;
  INFO(h.name << ": tokens " << p.tokens << ", capacity " << p.capacity << ", first position "
              << p.first << ", has_v " << p.has_v << ", kv_shared " << p.kv_shared);
  const int64_t d = h.head_dim, t = p.tokens;
  const int64_t q_size = t * h.num_heads * d, kv_size = t * h.num_kv_heads * d;
  const int64_t row = int64_t{h.num_kv_heads} * d;  // one cache slot

  // qkv always has room for v (the unfused K=V copy writes there); without
  // v_proj that block holds other random numbers, which must not be read.
  const Bf16Values q = RandomBf16(q_size, 0.01f, 8.0f, rng);
  const Bf16Values k = RandomBf16(kv_size, 0.01f, 8.0f, rng);
  const Bf16Values v = RandomBf16(kv_size, 0.01f, 8.0f, rng);
  const Bf16Values q_norm = RandomBf16(d, 0.25f, 2.0f, rng);
  const Bf16Values k_norm = RandomBf16(d, 0.25f, 2.0f, rng);
  const std::vector<float> inv_freq = gemma4::cpu::RopeInverseFrequencies(h.rope, h.head_dim);
  std::vector<uint16_t> qkv = q.bits;
  qkv.insert(qkv.end(), k.bits.begin(), k.bits.end());
  qkv.insert(qkv.end(), v.bits.begin(), v.bits.end());

  auto fused_qkv = testing::Upload(qkv), unfused_qkv = testing::Upload(qkv);
  auto q_norm_d = testing::Upload(q_norm.bits), k_norm_d = testing::Upload(k_norm.bits);
  auto inv_freq_d = testing::Upload(inv_freq);
  auto first_d = testing::Upload(std::vector<int64_t>{p.first});
  const size_t cache_size = p.capacity * row;
  auto fused_k = testing::PoisonedBf16(cache_size), fused_v = testing::PoisonedBf16(cache_size);
  auto unfused_k = testing::PoisonedBf16(cache_size), unfused_v = testing::PoisonedBf16(cache_size);
  const KvLayerView fused_cache{AsBf16(fused_k), AsBf16(fused_v), p.capacity, h.num_kv_heads,
                                h.head_dim};
  const KvLayerView unfused_cache{AsBf16(unfused_k), AsBf16(unfused_v), p.capacity, h.num_kv_heads,
                                  h.head_dim};

  // A KV-shared layer gets an empty cache view: it must not be needed.
  REQUIRE_OK(PrepareAttentionInputs(AsBf16(fused_qkv), t, h.num_heads, h.num_kv_heads, h.head_dim,
                                    p.has_v, p.kv_shared, AsBf16(q_norm_d), AsBf16(k_norm_d), kEps,
                                    inv_freq_d.data(), first_d.data(),
                                    p.kv_shared ? KvLayerView{} : fused_cache, nullptr));

  // The unfused sequence, as the decoder layer ran it before.
  __nv_bfloat16* const uq = AsBf16(unfused_qkv);
  if (!p.kv_shared) {
    __nv_bfloat16* const uk = uq + q_size;
    __nv_bfloat16* const uv = uk + kv_size;
    if (!p.has_v) {
      REQUIRE(cudaMemcpyAsync(uv, uk, kv_size * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice,
                              nullptr) == cudaSuccess);
    }
    REQUIRE_OK(HeadNormRope(uk, t, h.num_kv_heads, h.head_dim, AsBf16(k_norm_d), kEps,
                            inv_freq_d.data(), first_d.data(), nullptr));
    REQUIRE_OK(
        HeadNormRope(uv, t, h.num_kv_heads, h.head_dim, nullptr, kEps, nullptr, nullptr, nullptr));
    REQUIRE_OK(AppendKv(unfused_cache, uk, uv, static_cast<int>(t), first_d.data(), nullptr));
  }
  REQUIRE_OK(HeadNormRope(uq, t, h.num_heads, h.head_dim, AsBf16(q_norm_d), kEps, inv_freq_d.data(),
                          first_d.data(), nullptr));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  // q: the same bits as the unfused path, close to the CPU ops; k and v
  // blocks of qkv: only read.
  const std::vector<uint16_t> fused = Download(fused_qkv), unfused = Download(unfused_qkv);
  const std::span<const uint16_t> fused_q(fused.data(), q_size);
  RequireSameBits(fused_q, std::span(unfused.data(), q_size), "q vs unfused");
  RequireNearCpu(
      fused_q, CpuNormRope(q.values, t, h.num_heads, h.head_dim, q_norm.values, inv_freq, p.first),
      "q vs CPU");
  RequireSameBits(std::span(fused).subspan(q_size), std::span(qkv).subspan(q_size),
                  "k and v blocks of qkv (unchanged)");

  // The caches: the same bits as AppendKv's, also in the poisoned slots.
  const std::vector<uint16_t> k_got = Download(fused_k), v_got = Download(fused_v);
  RequireSameBits(k_got, Download(unfused_k), "cache.k vs unfused");
  RequireSameBits(v_got, Download(unfused_v), "cache.v vs unfused");

  // Which slots hold which token: the last `capacity` tokens, none for a
  // negative position or a KV-shared layer.
  std::vector<int64_t> token_of_slot(p.capacity, -1);
  if (!p.kv_shared && p.first >= 0) {
    for (int64_t i = std::max<int64_t>(0, t - p.capacity); i < t; ++i) {
      token_of_slot[(p.first + i) % p.capacity] = i;
    }
  }
  for (int64_t slot = 0; slot < p.capacity; ++slot) {
    const std::span<const uint16_t> k_slot(k_got.data() + slot * row, row);
    const std::span<const uint16_t> v_slot(v_got.data() + slot * row, row);
    INFO("slot " << slot << " token " << token_of_slot[slot]);
    if (token_of_slot[slot] < 0) {
      CHECK(std::all_of(k_slot.begin(), k_slot.end(), [](uint16_t b) { return b == kPoison; }));
      CHECK(std::all_of(v_slot.begin(), v_slot.end(), [](uint16_t b) { return b == kPoison; }));
    }
  }
  if (p.kv_shared || p.first < 0) return;

  // The written slots against the CPU ops, token by token.
  const std::vector<float> v_raw = p.has_v ? v.values : k.values;  // K=V: raw k
  const CpuHeads k_cpu =
      CpuNormRope(k.values, t, h.num_kv_heads, h.head_dim, k_norm.values, inv_freq, p.first);
  const CpuHeads v_cpu = CpuNormRope(v_raw, t, h.num_kv_heads, h.head_dim, {}, {}, p.first);
  for (int64_t slot = 0; slot < p.capacity; ++slot) {
    const int64_t token = token_of_slot[slot];
    if (token < 0) continue;
    INFO("slot " << slot << " token " << token);
    const auto cpu_row = [&](const CpuHeads& c) {
      return CpuHeads{{c.want.begin() + token * row, c.want.begin() + (token + 1) * row},
                      {c.pair.begin() + token * row, c.pair.begin() + (token + 1) * row}};
    };
    RequireNearCpu(std::span(k_got).subspan(slot * row, row), cpu_row(k_cpu), "cache.k vs CPU");
    RequireNearCpu(std::span(v_got).subspan(slot * row, row), cpu_row(v_cpu), "cache.v vs CPU");
  }
}

TEST_CASE("PrepareAttentionInputs matches the unfused norms, RoPE and AppendKv bit for bit",
          "[cuda][attention_inputs]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const HeadLayout layouts[] = {
      {"31B sliding", 32, 16, 256, kSliding}, {"31B full", 32, 4, 512, kFull},
      {"E2B sliding", 8, 1, 256, kSliding},   {"E2B full", 8, 1, 512, kFull},
      {"32x4 D 256", 32, 4, 256, kSliding},   {"32x16 D 512", 32, 16, 512, kFull},
      {"D 200", 4, 2, 200, kSliding},
  };
  std::uniform_int_distribution<int64_t> laps(1, 1000);
  for (const HeadLayout& heads : layouts) {
    for (int64_t tokens : {1, 7}) {
      // 16 slots: 7 tokens from slot 13 wrap to 0..3, the rest stays
      // poisoned; 5 slots: fewer than 7 tokens, only the last 5 are kept.
      for (int64_t capacity : {16, 5}) {
        for (int64_t first : {capacity * laps(rng) + capacity - 3, int64_t{-3}}) {
          for (bool kv_shared : {false, true}) {
            for (bool has_v : {true, false}) {
              CheckProblem({heads, tokens, capacity, first, has_v, kv_shared}, rng);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("PrepareAttentionInputs rejects bad arguments", "[attention_inputs]") {
  // Fake device pointers: every call below returns before any CUDA call, so
  // none is dereferenced and no GPU is needed.
  alignas(16) static uint16_t memory[64];
  alignas(16) static int64_t position[2];
  alignas(16) static float inv_freq[4];
  __nv_bfloat16* const qkv = reinterpret_cast<__nv_bfloat16*>(memory);
  const __nv_bfloat16* const norm = qkv + 8;
  const KvLayerView cache{qkv + 16, qkv + 24, 128, 4, 256};
  const auto prepare = [&](__nv_bfloat16* x, int64_t tokens, int num_heads, int num_kv_heads,
                           int head_dim, bool kv_shared, const __nv_bfloat16* q_norm,
                           const float* freq, const int64_t* pos, const KvLayerView& c,
                           float eps = kEps) {
    return PrepareAttentionInputs(x, tokens, num_heads, num_kv_heads, head_dim, /*has_v=*/true,
                                  kv_shared, q_norm, norm, eps, freq, pos, c, nullptr);
  };
  const auto expect = [](const absl::Status& status, const std::string& part) {
    INFO(status.ToString());
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(status.message()).find(part) != std::string::npos);
  };
  const auto* misaligned_norm =
      reinterpret_cast<const __nv_bfloat16*>(reinterpret_cast<const char*>(norm) + 1);
  const auto* misaligned_freq =
      reinterpret_cast<const float*>(reinterpret_cast<const char*>(inv_freq) + 2);

  expect(prepare(nullptr, 1, 32, 4, 256, false, norm, inv_freq, position, cache), "qkv");
  expect(prepare(qkv, -1, 32, 4, 256, false, norm, inv_freq, position, cache), "tokens");
  expect(prepare(qkv, 1, 0, 4, 256, false, norm, inv_freq, position, cache), "heads");
  expect(prepare(qkv, 1, 32, 4, 0, false, norm, inv_freq, position, cache), "head_dim");
  expect(prepare(qkv, 1, 32, 4, 255, true, norm, inv_freq, position, {}), "even head_dim");
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, misaligned_freq, position, cache), "inv_freq");
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, inv_freq, nullptr, cache), "first_position");
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, nullptr, nullptr, cache), "first_position");
  expect(prepare(qkv, 1, 32, 4, 256, false, misaligned_norm, inv_freq, position, cache), "q_norm");
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, inv_freq, position, cache, -1.0f), "eps");
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, inv_freq, position, cache, NAN), "eps");
  expect(prepare(qkv, 1, 32, 0, 256, false, norm, inv_freq, position, cache), "num_kv_heads");
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, inv_freq, position, {}), "cache.k");
  KvLayerView c = cache;
  c.v = qkv + 4;  // 8-byte aligned
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, inv_freq, position, c), "aligned");
  c = cache;
  c.capacity = 0;
  expect(prepare(qkv, 1, 32, 4, 256, false, norm, inv_freq, position, c), "cache.capacity");
  expect(prepare(qkv, 1, 32, 2, 256, false, norm, inv_freq, position, cache), "cache.num_kv_heads");
  expect(prepare(qkv, 1, 32, 4, 512, false, norm, inv_freq, position, cache), "cache.head_dim");
  c = cache;
  c.head_dim = 100;  // not a multiple of 8: AppendKv's layout needs one
  expect(prepare(qkv, 1, 32, 4, 100, false, norm, inv_freq, position, c), "cache.head_dim");
  // 2^28 - 1 tokens pass the q-only limit (32 heads) but not with 2 x 16 KV
  // heads: more than INT_MAX blocks of 4 warps.
  expect(prepare(qkv, (int64_t{INT_MAX} * 4) / 32, 32, 16, 256, false, norm, inv_freq, position,
                 KvLayerView{qkv + 16, qkv + 24, 128, 16, 256}),
         "exceeds");

  // Nothing to do: no launch, so these pass without a GPU too. A KV-shared
  // layer needs neither KV heads nor a cache; no RoPE needs no inv_freq.
  CHECK(prepare(qkv, 0, 32, 4, 256, false, norm, inv_freq, position, cache).ok());
  CHECK(prepare(qkv, 0, 32, 0, 256, true, norm, inv_freq, position, {}).ok());
  CHECK(prepare(qkv, 0, 32, 4, 7, true, nullptr, nullptr, position, {}).ok());
}

}  // namespace
}  // namespace gquant::cuda
