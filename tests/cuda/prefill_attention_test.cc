// PrefillAttention against a float64 host reference computed from the same
// bf16 q, k and v (and once against cpu::Attention), on fresh random data
// with the output poisoned first and every cache slot outside the chunk's
// key range set to NaN, so a read of the wrong slot fails; the launcher's
// argument errors; and the host helpers ChunkKeyRange and VisiblePairs.
#include "prefill_attention.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"
#include "gquant/dtype.h"

namespace gquant::cuda {
namespace {

// Error bound of one output element o (checked per element):
//   |got − ref| <= 2^-8 |ref| + 2^-7 A,   A = Σ_j p_j |v_j| (reference weights p).
// - 2^-8 |ref|: the output's rounding to bf16 (unit roundoff 2^-8).
// - 2^-7 A: the kernel rounds P to bf16 before P·V (as HF's eager path
//   does), a relative error <= 2^-8 per weight, so <= 2^-8 A in all. The
//   other 2^-8 A covers the fp32 parts, each far smaller: exp2 (~2^-22
//   relative), the running-max rescaling, the sums over <= 3072 keys, and
//   the fp32 scores (an error δ in a score changes its weight by ~δ; here
//   |δ| <~ 2^-24 sqrt(D) Σ_d |q_d k_d| <= ~1e-3 even with scores of ~±200).
// Also ||got − ref|| / ||ref|| <= 2^-7 over the checked outputs: the two bf16
// roundings have random signs and average ~2^-9 of the norm.
constexpr double kBf16Rounding = 0x1p-8;
constexpr double kWeightRounding = 0x1p-7;
constexpr double kNormBound = 0x1p-7;
constexpr uint16_t kBf16NaN = 0xFFFF;

struct Case {
  const char* name;
  int num_heads, num_kv_heads, head_dim;
  int64_t window;  // 0: none
  int64_t tokens, first_position;
  int64_t capacity;      // 0: exactly the chunk's key range
  float q_scale = 1.0f;  // q uniform in ±q_scale (8: scores up to ~±200)
};

// Gemma 4 31B: sliding 32 / 16 heads of 256, window 1024; full 32 / 4 heads
// of 512. E2B: 8 / 1 heads, window 512. Plus small odd ones (windows shorter
// than a key tile, capacities that are not multiples of anything).
const Case kCases[] = {
    {"31B sliding, 1 token", 32, 16, 256, 1024, 1, 0, 0},
    {"31B sliding, 17 tokens", 32, 16, 256, 1024, 17, 0, 0},
    {"31B sliding, later chunk reaching the window", 32, 16, 256, 1024, 128, 900, 0},
    {"31B sliding, 2048 tokens", 32, 16, 256, 1024, 2048, 0, 0},
    {"31B sliding, wrapped ring", 32, 16, 256, 1024, 128, 3000, 1152},
    {"31B sliding, peaked scores", 32, 16, 256, 1024, 200, 37, 0, 8.0f},
    {"31B full, 1 token", 32, 4, 512, 0, 1, 0, 0},
    {"31B full, 17 tokens", 32, 4, 512, 0, 17, 5, 0},
    {"31B full, 128 tokens", 32, 4, 512, 0, 128, 0, 0},
    {"31B full, later chunk", 32, 4, 512, 0, 100, 333, 0},
    {"31B full, 2048 tokens", 32, 4, 512, 0, 2048, 0, 0},
    {"E2B sliding, wrapped ring", 8, 1, 256, 512, 128, 1000, 0},
    {"E2B sliding, 2048 tokens", 8, 1, 256, 512, 2048, 0, 0},
    {"E2B sliding, 1 token, wrapped ring", 8, 1, 256, 512, 1, 700, 512},
    {"E2B full, 17 tokens", 8, 1, 512, 0, 17, 0, 0},
    {"E2B full, later chunk", 8, 1, 512, 0, 128, 64, 0},
    {"E2B full, 2048 tokens, later chunk", 8, 1, 512, 0, 2048, 256, 2400},
    {"E2B full, peaked scores", 8, 1, 512, 0, 130, 500, 0, 8.0f},
    {"small window, wrapped ring", 4, 2, 256, 40, 130, 500, 171},
    {"small window, D 512", 2, 2, 512, 70, 65, 3, 0},
    {"tiny ring across a key tile's edge", 2, 2, 256, 3, 5, 61, 7},
    {"one slot", 1, 1, 512, 0, 1, 0, 1},
};

// The host side of one problem: bf16 bits, with the cache already holding
// the chunk's key range and NaN in every other slot.
struct Problem {
  Case c;
  KeyRange keys;
  int64_t capacity;
  std::vector<uint16_t> q;        // [tokens, num_heads, D]
  std::vector<uint16_t> k, v;     // [capacity, num_kv_heads, D]
  std::vector<int32_t> last_key;  // [tokens] for image runs; empty: causal
};

std::vector<uint16_t> RandomBf16(int64_t count, float scale, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> value(-scale, scale);
  std::vector<uint16_t> bits(count);
  for (uint16_t& b : bits) {
    do {
      b = FloatToBFloat16(value(rng));
    } while (b == 0 || b == 0x8000);  // never zero
  }
  return bits;
}

Problem MakeProblem(const Case& c, std::mt19937_64& rng) {
  Problem p{c, ChunkKeyRange(c.first_position, c.tokens, c.window), 0, {}, {}, {}, {}};
  p.capacity = c.capacity > 0 ? c.capacity : p.keys.size();
  REQUIRE(p.capacity >= p.keys.size());
  p.q = RandomBf16(c.tokens * c.num_heads * c.head_dim, c.q_scale, rng);
  const int64_t row = int64_t{c.num_kv_heads} * c.head_dim;
  p.k = RandomBf16(p.capacity * row, 1.0f, rng);
  p.v = RandomBf16(p.capacity * row, 1.0f, rng);
  std::vector<bool> live(p.capacity, false);
  for (int64_t j = p.keys.first; j <= p.keys.last; ++j) live[j % p.capacity] = true;
  for (int64_t slot = 0; slot < p.capacity; ++slot) {
    if (live[slot]) continue;
    std::fill_n(p.k.begin() + slot * row, row, kBf16NaN);
    std::fill_n(p.v.begin() + slot * row, row, kBf16NaN);
  }
  return p;
}

std::vector<float> ToFloat(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = BFloat16ToFloat(bits[i]);
  return out;
}

// The kernels this device runs: mma.sync everywhere, wgmma on Hopper.
std::vector<PrefillAttentionPath> Paths() {
  std::vector<PrefillAttentionPath> paths = {PrefillAttentionPath::kMmaSync};
  if (PrefillAttentionWgmmaAvailable()) paths.push_back(PrefillAttentionPath::kWgmma);
  return paths;
}
const char* Name(PrefillAttentionPath path) {
  return path == PrefillAttentionPath::kWgmma ? "wgmma" : "mma.sync";
}

// Runs kernel `path` on a poisoned output and returns it (bf16 bits).
std::vector<uint16_t> RunKernel(const Problem& p, PrefillAttentionPath path) {
  auto q = testing::Upload(p.q);
  auto k = testing::Upload(p.k);
  auto v = testing::Upload(p.v);
  auto out = DeviceBuffer<uint16_t>::Allocate(p.q.size());
  REQUIRE_OK(out);
  REQUIRE_OK(out->FillBytes(0xFF));  // bf16 NaN: an unwritten output fails
  const KvLayerView cache{reinterpret_cast<__nv_bfloat16*>(k.data()),
                          reinterpret_cast<__nv_bfloat16*>(v.data()), p.capacity, p.c.num_kv_heads,
                          p.c.head_dim};
  std::optional<DeviceBuffer<int32_t>> last_key;
  if (!p.last_key.empty()) last_key = testing::Upload(p.last_key);
  REQUIRE_OK(PrefillAttention(reinterpret_cast<const __nv_bfloat16*>(q.data()), p.c.tokens,
                              p.c.num_heads, p.c.first_position, p.c.window, cache,
                              reinterpret_cast<__nv_bfloat16*>(out->data()), nullptr,
                              last_key.has_value() ? last_key->data() : nullptr, path));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<uint16_t> got(p.q.size());
  REQUIRE_OK(out->CopyToHost(got));
  return got;
}

// The float64 reference for query `token`, head `head`: the output row and A
// (see the bound) per element. k and v are the cache as floats.
struct ReferenceRow {
  std::vector<double> out, weighted_abs;
};
ReferenceRow Reference(const Problem& p, const std::vector<float>& k, const std::vector<float>& v,
                       int64_t token, int head) {
  const int d = p.c.head_dim;
  const int64_t pos = p.c.first_position + token;
  const int64_t lo = p.c.window > 0 ? std::max<int64_t>(0, pos - p.c.window + 1) : 0;
  const int64_t kv_offset = int64_t{head / (p.c.num_heads / p.c.num_kv_heads)} * d;
  const int64_t stride = int64_t{p.c.num_kv_heads} * d;
  std::vector<double> q(d);
  for (int i = 0; i < d; ++i) {
    q[i] = BFloat16ToFloat(p.q[(token * p.c.num_heads + head) * d + i]);
  }
  const int64_t hi = p.last_key.empty() ? pos : p.last_key[token];
  std::vector<double> scores(hi - lo + 1);
  for (int64_t j = lo; j <= hi; ++j) {
    const float* key = k.data() + (j % p.capacity) * stride + kv_offset;
    double s = 0;
    for (int i = 0; i < d; ++i) s += q[i] * key[i];
    scores[j - lo] = s;
  }
  const double max = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  for (double& s : scores) sum += (s = std::exp(s - max));
  ReferenceRow row{std::vector<double>(d), std::vector<double>(d)};
  for (int64_t j = lo; j <= hi; ++j) {
    const double weight = scores[j - lo] / sum;
    const float* value = v.data() + (j % p.capacity) * stride + kv_offset;
    for (int i = 0; i < d; ++i) {
      row.out[i] += weight * value[i];
      row.weighted_abs[i] += weight * std::abs(value[i]);
    }
  }
  return row;
}

// Which (token, head) pairs the host checks: all of them for small
// problems; for large ones the first and last 70 tokens (both ends of the
// key walk: the diagonal, the window's edge, partial tiles) and every 61st,
// in 8 heads spread over the KV heads. Every output is checked for NaN.
bool Checked(const Problem& p, int64_t token, int head) {
  if (p.c.tokens * p.c.num_heads <= 1024) return true;
  const bool token_checked = token < 70 || token >= p.c.tokens - 70 || token % 61 == 0;
  const bool head_checked = p.c.num_heads <= 8 || head % 5 == 0 || head == p.c.num_heads - 1;
  return token_checked && head_checked;
}

// Compares the kernel's output with `expected(token, head)` (a ReferenceRow;
// its `out` may come from another reference) on the checked rows.
template <typename Expected>
void CheckOutputs(const Problem& p, const std::vector<uint16_t>& got, Expected expected) {
  const int d = p.c.head_dim;
  int64_t unwritten = 0;
  for (uint16_t bits : got) unwritten += std::isnan(BFloat16ToFloat(bits)) ? 1 : 0;
  REQUIRE(unwritten == 0);
  int64_t failures = 0;
  double err2 = 0, ref2 = 0;
  for (int64_t token = 0; token < p.c.tokens; ++token) {
    for (int head = 0; head < p.c.num_heads; ++head) {
      if (!Checked(p, token, head)) continue;
      const ReferenceRow ref = expected(token, head);
      for (int i = 0; i < d; ++i) {
        const double value = BFloat16ToFloat(got[(token * p.c.num_heads + head) * d + i]);
        const double want = ref.out[i];
        const double bound = kBf16Rounding * std::abs(want) + kWeightRounding * ref.weighted_abs[i];
        if (!(std::abs(value - want) <= bound) && failures++ == 0) {
          UNSCOPED_INFO("first failure: token " << token << " head " << head << " dim " << i
                                                << " got " << value << " want " << want << " bound "
                                                << bound);
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

// Both kernels against cpu::Attention's output: float32 (errors ~2^-20), so
// the same bound applies, with A from the float64 reference.
void CheckAgainstCpu(const Problem& p, const std::vector<float>& k, const std::vector<float>& v,
                     const std::vector<float>& cpu_out) {
  for (PrefillAttentionPath path : Paths()) {
    INFO(Name(path));
    CheckOutputs(p, RunKernel(p, path), [&](int64_t token, int head) {
      ReferenceRow row = Reference(p, k, v, token, head);
      const int64_t begin = (token * p.c.num_heads + head) * p.c.head_dim;
      for (int i = 0; i < p.c.head_dim; ++i) row.out[i] = cpu_out[begin + i];
      return row;
    });
  }
}

TEST_CASE("PrefillAttention matches a float64 reference", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  for (const Case& c : kCases) {
    INFO(c.name << ": " << c.num_heads << " / " << c.num_kv_heads << " heads of " << c.head_dim
                << ", window " << c.window << ", tokens " << c.tokens << " from position "
                << c.first_position << ", capacity " << c.capacity << ", q scale " << c.q_scale);
    const Problem p = MakeProblem(c, rng);
    const std::vector<float> k = ToFloat(p.k), v = ToFloat(p.v);
    for (PrefillAttentionPath path : Paths()) {
      INFO(Name(path));
      CheckOutputs(p, RunKernel(p, path),
                   [&](int64_t token, int head) { return Reference(p, k, v, token, head); });
    }
  }
}

TEST_CASE("PrefillAttention agrees with cpu::Attention", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  // Window 8, the ring wrapped (positions 23..46 in 24 slots).
  const Problem p = MakeProblem({"cpu", 4, 2, 256, 8, 17, 30, 0}, rng);
  const std::vector<float> q = ToFloat(p.q), k = ToFloat(p.k), v = ToFloat(p.v);
  std::vector<float> cpu_out(q.size());
  const gemma4::cpu::KvView kv{k.data(), v.data(), p.capacity, p.c.num_kv_heads, p.c.head_dim};
  gemma4::cpu::Attention(q, p.c.tokens, p.c.num_heads, p.c.first_position, p.c.window, kv, cpu_out,
                         nullptr);
  CheckAgainstCpu(p, k, v, cpu_out);
}

// Image runs of a chunk (rows [begin, end)): each of their queries sees up
// to the run's last position, the others stay causal.
void SetImageRuns(Problem& p, const std::vector<std::pair<int64_t, int64_t>>& runs) {
  p.last_key.resize(p.c.tokens);
  for (int64_t t = 0; t < p.c.tokens; ++t) {
    p.last_key[t] = static_cast<int32_t>(p.c.first_position + t);
  }
  for (const auto& [begin, end] : runs) {
    for (int64_t t = begin; t < end; ++t) {
      p.last_key[t] = static_cast<int32_t>(p.c.first_position + end - 1);
    }
  }
}

TEST_CASE("PrefillAttention lets image tokens see the rest of their image", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  struct ImageCase {
    Case c;
    std::vector<std::pair<int64_t, int64_t>> runs;
  };
  const ImageCase cases[] = {
      // An image wider than the window (the window still bounds keys below),
      // one inside a key tile, one ending the chunk; the ring wrapped.
      {{"window 40, three images", 4, 2, 256, 40, 300, 20, 0}, {{50, 250}, {260, 270}, {290, 300}}},
      // 31B sliding shapes: a 280-token image after 7 text tokens.
      {{"31B sliding, 280-token image", 32, 16, 256, 1024, 300, 0, 0}, {{7, 287}}},
      {{"31B sliding, later chunk, wrapped", 32, 16, 256, 1024, 400, 2000, 1500}, {{100, 380}}},
      {{"D 512", 8, 1, 512, 0, 130, 3, 0}, {{1, 129}}},
  };
  for (const ImageCase& ic : cases) {
    INFO(ic.c.name);
    Problem p = MakeProblem(ic.c, rng);
    SetImageRuns(p, ic.runs);
    const std::vector<float> k = ToFloat(p.k), v = ToFloat(p.v);
    for (PrefillAttentionPath path : Paths()) {
      INFO(Name(path));
      CheckOutputs(p, RunKernel(p, path),
                   [&](int64_t token, int head) { return Reference(p, k, v, token, head); });
    }
  }
  // And against cpu::Attention with the same last keys.
  Problem p = MakeProblem({"cpu", 4, 2, 256, 8, 40, 30, 0}, rng);
  SetImageRuns(p, {{3, 25}});
  const std::vector<float> q = ToFloat(p.q), k = ToFloat(p.k), v = ToFloat(p.v);
  std::vector<float> cpu_out(q.size());
  const gemma4::cpu::KvView kv{k.data(), v.data(), p.capacity, p.c.num_kv_heads, p.c.head_dim};
  const std::vector<int64_t> last(p.last_key.begin(), p.last_key.end());
  gemma4::cpu::Attention(q, p.c.tokens, p.c.num_heads, p.c.first_position, p.c.window, kv, cpu_out,
                         nullptr, last);
  CheckAgainstCpu(p, k, v, cpu_out);
}

TEST_CASE("PrefillAttention rejects bad arguments") {
  // Every call fails its host checks before any CUDA call, so fake (host)
  // pointers serve and no GPU is needed.
  alignas(16) static __nv_bfloat16 storage[16];
  __nv_bfloat16* const buffer = storage;
  const KvLayerView good{buffer, buffer, 4096, 4, 512};
  const auto call = [&](const __nv_bfloat16* q, int64_t tokens, int heads, int64_t first,
                        int64_t window, const KvLayerView& cache, __nv_bfloat16* out) {
    return PrefillAttention(q, tokens, heads, first, window, cache, out, nullptr);
  };
  const auto with = [&](auto change) {
    KvLayerView cache = good;
    change(cache);
    return cache;
  };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_STATUS_IS(call(nullptr, 16, 32, 0, 0, good, buffer), kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, good, nullptr), kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, with([](auto& c) { c.k = nullptr; }), buffer),
                    kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, with([](auto& c) { c.v = nullptr; }), buffer),
                    kInvalid);
  REQUIRE_STATUS_IS(call(buffer + 1, 16, 32, 0, 0, good, buffer), kInvalid);  // misaligned
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, good, buffer + 4), kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, with([&](auto& c) { c.v = buffer + 2; }), buffer),
                    kInvalid);
  REQUIRE_STATUS_IS(call(buffer, -1, 32, 0, 0, good, buffer), kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, with([](auto& c) { c.head_dim = 128; }), buffer),
                    kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 0, 0, 0, good, buffer), kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 6, 0, 0, good, buffer), kInvalid);  // 6 % 4 KV heads
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, with([](auto& c) { c.num_kv_heads = 0; }), buffer),
                    kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, -1, 0, good, buffer), kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, -1, good, buffer), kInvalid);
  // The cache must hold every key the chunk sees at once.
  REQUIRE_STATUS_IS(call(buffer, 100, 32, 0, 0, with([](auto& c) { c.capacity = 99; }), buffer),
                    kInvalid);
  REQUIRE_STATUS_IS(
      call(buffer, 128, 32, 3000, 1024, with([](auto& c) { c.capacity = 1150; }), buffer),
      kInvalid);
  REQUIRE_STATUS_IS(call(buffer, 16, 32, 0, 0, with([](auto& c) { c.capacity = 0; }), buffer),
                    kInvalid);
  // Positions and query tiles beyond the kernel's int indexing.
  const KvLayerView huge = with([](auto& c) { c.capacity = int64_t{1} << 40; });
  REQUIRE_STATUS_IS(call(buffer, 16, 32, (int64_t{1} << 30) - 8, 0, huge, buffer), kInvalid);
  REQUIRE_STATUS_IS(call(buffer, int64_t{65536} * 64, 32, 0, 0, huge, buffer), kInvalid);
  // An empty chunk is fine and launches nothing.
  REQUIRE_OK(call(buffer, 0, 32, 0, 0, good, buffer));
  // The wgmma kernel by name where it cannot run (checked after the
  // arguments; on Hopper it would launch, so only elsewhere).
  if (!PrefillAttentionWgmmaAvailable()) {
    REQUIRE_STATUS_IS(PrefillAttention(buffer, 16, 32, 0, 0, good, buffer, nullptr, nullptr,
                                       PrefillAttentionPath::kWgmma),
                      absl::StatusCode::kFailedPrecondition);
  }
}

TEST_CASE("ChunkKeyRange and VisiblePairs count the mask's keys") {
  std::mt19937_64 rng = testing::MakeRng();
  std::uniform_int_distribution<int64_t> first(0, 3000), tokens(1, 700), window(0, 1500);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t f = trial < 3 ? 0 : first(rng), t = tokens(rng);
    const int64_t w = trial % 4 == 0 ? 0 : window(rng);
    CAPTURE(f, t, w);
    int64_t pairs = 0, lowest = std::numeric_limits<int64_t>::max(), highest = -1;
    for (int64_t pos = f; pos < f + t; ++pos) {
      for (int64_t j = 0; j <= pos; ++j) {
        if (w > 0 && pos - j >= w) continue;
        ++pairs;
        lowest = std::min(lowest, j);
        highest = std::max(highest, j);
      }
    }
    REQUIRE(VisiblePairs(f, t, w) == pairs);
    const KeyRange keys = ChunkKeyRange(f, t, w);
    REQUIRE(keys.first == lowest);
    REQUIRE(keys.last == highest);
  }
}

}  // namespace
}  // namespace gquant::cuda
