// Decode attention (decode_attention.cuh) against a float64 host reference on
// the same bf16 values, for the Gemma 4 head layouts, spans from 1 to 131072,
// wrapped sliding rings, chunk maxima far apart, every kernel instance, and a
// decode step replayed from a CUDA graph; once against cpu::Attention. Also
// AppendKv (kv_cache.cuh), and on the host (no GPU needed) the split plan and
// the launchers' argument checks. Inputs are fresh random bf16 (never zeros;
// the seed is printed), outputs are poisoned with NaN before every run.
#include "decode_attention.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gemma4/cpu_ops.h"
#include "gquant/dtype.h"
#include "gquant/thread_pool.h"
#include "kv_cache.cuh"

namespace gquant::cuda {
namespace {

// Error bound of one output (query head h, dim d), checked per element:
//   |got − ref| <= 2^-8 |ref| + 2^-6 T,   T = Σ_j π_j |v_j[d]|
// (π = the exact softmax weights of the visible keys, so T <= max |v|).
// - 2^-8 |ref|: the output is rounded to bf16 (unit roundoff 2^-8).
// - The probabilities are rounded to bf16 for the P·V mma (2^-8 each), and
//   the softmax sum adds the same rounded values, so each normalized weight
//   moves by at most ~2 · 2^-8 of itself: <= 2^-7 T.
// - Logits are fp32 sums of exact bf16 products over D <= 512 (mma steps,
//   then the warps' partial sums): ~40 roundings of at most 2^-24 Σ|q k|,
//   under 7e-4 for the |logits| <= ~300 used here, so a weight moves by
//   <= 2 · 7e-4 ~ 2^-9.5 of itself; exp2 and the log2(e) scaling add ~2^-21.
//   2^-7 + 2^-9.5 < 2^-6 leaves a margin for the merge's fp32 sums.
// Also normwise ||got − ref|| / ||ref|| <= 2^-7: the roundings are
// independent, so together they are ~2^-9 of the norm; a lost or doubled
// chunk of zero-mean values moves the norm by ~sqrt(chunk share) (>= 10%).
constexpr double kOutputRounding = 0x1p-8;
constexpr double kWeightError = 0x1p-6;
constexpr double kNormwise = 0x1p-7;

double Bf16Value(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }

// Uniform in [-scale, scale), rounded to bf16; four values per 64-bit draw.
std::vector<uint16_t> RandomBf16(size_t count, float scale, std::mt19937_64& rng) {
  std::vector<uint16_t> out(count);
  for (size_t i = 0; i < count; i += 4) {
    uint64_t bits = rng();
    for (size_t j = i; j < std::min(i + 4, count); ++j, bits >>= 16) {
      out[j] = FloatToBFloat16(static_cast<int16_t>(bits & 0xFFFF) / 32768.0f * scale);
    }
  }
  return out;
}

struct Heads {
  const char* name;
  int num_heads, num_kv_heads, head_dim;
  int group() const { return num_heads / num_kv_heads; }
};
// Spec gemma4.md §1.1: 31B sliding 32 x 16 x 256, full 32 x 4 x 512; E2B 8 x 1
// on both. Plus odd ones: two head tiles (groups 12 and 16), D = 64 and 128.
constexpr Heads k31bFull{"31B full", 32, 4, 512};
constexpr Heads k31bSliding{"31B sliding", 32, 16, 256};
constexpr Heads kE2bFull{"E2B full", 8, 1, 512};
constexpr Heads kE2bSliding{"E2B sliding", 8, 1, 256};
constexpr Heads kGroup16{"group 16, D=128", 16, 1, 128};
constexpr Heads kGroup12{"group 12, D=64", 24, 2, 64};
constexpr Heads kGroup4{"group 4, D=192", 8, 2, 192};

// One layer's cache and one query on the host (bf16 bits).
struct Problem {
  Heads heads;
  int64_t capacity = 0, position = 0, window = 0;
  std::vector<uint16_t> q;     // [num_heads, D]
  std::vector<uint16_t> k, v;  // [capacity, nKV, D]
};

// Logits of about unit size: q in +-1, keys in +-(2.6 / sqrt(D)) (a logit's
// standard deviation is then ~0.5 sqrt(D) · 2.6 / sqrt(D) / 3 ~ 0.4-1.5 over
// the head dims used), values in +-1.
Problem RandomProblem(const Heads& heads, int64_t capacity, int64_t position, int64_t window,
                      std::mt19937_64& rng) {
  Problem p{heads, capacity, position, window, {}, {}, {}};
  const size_t cache = static_cast<size_t>(capacity) * heads.num_kv_heads * heads.head_dim;
  p.q = RandomBf16(static_cast<size_t>(heads.num_heads) * heads.head_dim, 1.0f, rng);
  p.k = RandomBf16(cache, 2.6f / std::sqrt(static_cast<float>(heads.head_dim)), rng);
  p.v = RandomBf16(cache, 1.0f, rng);
  return p;
}

// The attention of p in float64 ([num_heads, D]) and each output's T (see the
// bound). The visible keys are computed here independently of the library.
struct Reference {
  std::vector<double> out, terms;
};

Reference ReferenceAttention(const Problem& p) {
  const Heads& h = p.heads;
  const int d_count = h.head_dim, group = h.group();
  const int64_t lo = p.window > 0 ? std::max<int64_t>(0, p.position - p.window + 1) : 0;
  const int64_t n = p.position - lo + 1;
  REQUIRE(n >= 1);
  REQUIRE(n <= p.capacity);
  const int64_t stride = int64_t{h.num_kv_heads} * d_count;
  Reference ref{std::vector<double>(h.num_heads * d_count),
                std::vector<double>(h.num_heads * d_count)};
  static ThreadPool pool(0);
  pool.ParallelFor(h.num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> q(group * d_count), scores(n * group), kv(d_count);
    for (int64_t kvh = begin; kvh < end; ++kvh) {
      for (int i = 0; i < group * d_count; ++i) q[i] = Bf16Value(p.q[kvh * group * d_count + i]);
      std::vector<double> max(group, -INFINITY), sum(group, 0.0);
      for (int64_t j = 0; j < n; ++j) {
        const uint16_t* k = p.k.data() + (lo + j) % p.capacity * stride + kvh * d_count;
        for (int d = 0; d < d_count; ++d) kv[d] = Bf16Value(k[d]);
        for (int g = 0; g < group; ++g) {
          double s = 0;
          for (int d = 0; d < d_count; ++d) s += q[g * d_count + d] * kv[d];
          scores[j * group + g] = s;
          max[g] = std::max(max[g], s);
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        for (int g = 0; g < group; ++g) {
          sum[g] += (scores[j * group + g] = std::exp(scores[j * group + g] - max[g]));
        }
      }
      double* out = ref.out.data() + kvh * group * d_count;
      double* terms = ref.terms.data() + kvh * group * d_count;
      for (int64_t j = 0; j < n; ++j) {
        const uint16_t* v = p.v.data() + (lo + j) % p.capacity * stride + kvh * d_count;
        for (int d = 0; d < d_count; ++d) kv[d] = Bf16Value(v[d]);
        for (int g = 0; g < group; ++g) {
          const double w = scores[j * group + g] / sum[g];
          for (int d = 0; d < d_count; ++d) {
            out[g * d_count + d] += w * kv[d];
            terms[g * d_count + d] += w * std::abs(kv[d]);
          }
        }
      }
    }
  });
  return ref;
}

// Checks got ([num_heads, D] bf16 bits) against `expected` with the bound
// above (T from `ref`).
void CheckOutputs(const std::vector<uint16_t>& got, const std::vector<double>& expected,
                  const Reference& ref, int head_dim) {
  int64_t failures = 0, first = -1;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double value = Bf16Value(got[i]), want = expected[i];
    const double bound = kOutputRounding * std::abs(want) + kWeightError * ref.terms[i];
    if (!(std::abs(value - want) <= bound)) {  // NaN (unwritten poison) fails too
      if (failures++ == 0) first = static_cast<int64_t>(i);
    }
    err2 += (value - want) * (value - want);
    ref2 += want * want;
  }
  if (failures > 0) {
    INFO(failures << " outputs out of bound; first: head " << first / head_dim << " dim "
                  << first % head_dim << " got " << Bf16Value(got[first]) << " want "
                  << expected[first] << " T " << ref.terms[first]);
    REQUIRE(failures == 0);
  }
  CAPTURE(std::sqrt(err2 / ref2));
  REQUIRE(std::sqrt(err2 / ref2) <= kNormwise);
}

template <typename T>
T* As(DeviceBuffer<uint16_t>& buffer) {
  return reinterpret_cast<T*>(buffer.data());
}

// p's cache, query and position on the device, and the output buffer.
struct DeviceProblem {
  DeviceBuffer<uint16_t> q, k, v, out;
  DeviceBuffer<int64_t> position;

  explicit DeviceProblem(const Problem& p)
      : q(testing::Upload(p.q)),
        k(testing::Upload(p.k)),
        v(testing::Upload(p.v)),
        position(testing::Upload(std::vector<int64_t>{p.position})) {
    auto o = DeviceBuffer<uint16_t>::Allocate(p.q.size());
    REQUIRE_OK(o);
    out = *std::move(o);
  }
  KvLayerView Cache(const Problem& p) {
    return {As<__nv_bfloat16>(k), As<__nv_bfloat16>(v), p.capacity, p.heads.num_kv_heads,
            p.heads.head_dim};
  }
  void SetPosition(int64_t value) {
    REQUIRE_OK(position.CopyFromHost(std::vector<int64_t>{value}));
  }
};

// Runs DecodeAttention on d (poisoned output) and returns the output bits.
std::vector<uint16_t> RunDecode(const Problem& p, DeviceProblem& d,
                                DecodeAttentionWorkspace& workspace,
                                const DecodeAttentionTuning& tuning = {}) {
  REQUIRE_OK(d.out.FillBytes(0xFF));  // bf16 NaN: an unwritten output fails
  REQUIRE_OK(DecodeAttention(As<const __nv_bfloat16>(d.q), p.heads.num_heads, d.Cache(p),
                             d.position.data(), p.window, As<__nv_bfloat16>(d.out), workspace,
                             nullptr, tuning));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<uint16_t> got(p.q.size());
  REQUIRE_OK(d.out.CopyToHost(got));
  return got;
}

DecodeAttentionWorkspace MakeWorkspace(const Problem& p) {
  auto workspace = DecodeAttentionWorkspace::Create(p.heads.num_heads, p.heads.head_dim,
                                                    DecodeMaxSpan(p.window, p.capacity));
  REQUIRE_OK(workspace);
  return *std::move(workspace);
}

// Uploads p, runs it (with each tuning in `tunings`) and checks the outputs.
void CheckProblem(const Problem& p, std::initializer_list<DecodeAttentionTuning> tunings = {{}}) {
  INFO(p.heads.name << ": heads " << p.heads.num_heads << " kv heads " << p.heads.num_kv_heads
                    << " D " << p.heads.head_dim << " capacity " << p.capacity << " position "
                    << p.position << " window " << p.window);
  const Reference ref = ReferenceAttention(p);
  DeviceProblem d(p);
  DecodeAttentionWorkspace workspace = MakeWorkspace(p);
  for (const DecodeAttentionTuning& tuning : tunings) {
    INFO("stages " << tuning.stages << " blocks per SM " << tuning.blocks_per_sm);
    CheckOutputs(RunDecode(p, d, workspace, tuning), ref.out, ref, p.heads.head_dim);
  }
}

// ---- host: split plan and argument checks ----

TEST_CASE("Decode attention split plan covers the visible keys", "[decode_attention]") {
  const auto same = [](VisibleKeys got, int64_t first, int64_t count) {
    CHECK(got.first == first);
    CHECK(got.count == count);
  };
  same(VisibleKeysOf(0, 0, 10), 0, 1);
  same(VisibleKeysOf(99, 0, 100), 0, 100);
  same(VisibleKeysOf(10, 1024, 1024), 0, 11);
  same(VisibleKeysOf(5000, 1024, 1024), 3977, 1024);
  same(VisibleKeysOf(5000, 1024, 2048), 3977, 1024);
  same(VisibleKeysOf(150, 0, 100), 51, 100);  // cut to the capacity: the newest keys
  CHECK(VisibleKeysOf(-1, 0, 100).count <= 0);
  CHECK(DecodeMaxSpan(0, 131072) == 131072);
  CHECK(DecodeMaxSpan(1024, 1024) == 1024);
  CHECK(DecodeMaxSpan(1024, 512) == 512);

  for (int chunks : {1, 3, 66, 99, 1024}) {
    for (int64_t span : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{17}, int64_t{255},
                         int64_t{1024}, int64_t{4097}, int64_t{100000}, int64_t{131072}}) {
      INFO("chunks " << chunks << " span " << span);
      const int64_t keys = DecodeChunkKeys(span, chunks);
      const int64_t active = DecodeActiveChunks(span, chunks);
      CHECK(keys % kDecodeBlockKeys == 0);
      CHECK(active >= 1);
      CHECK(active <= chunks);
      CHECK((active - 1) * keys < span);  // every active chunk has a visible key
      CHECK(active * keys >= span);       // and together they cover the span
      // No smaller multiple of 16 would fit in `chunks` chunks.
      if (keys > kDecodeBlockKeys) CHECK((span + keys - 17) / (keys - 16) > chunks);
    }
  }
  CHECK(DecodeActiveChunks(0, 8) == 0);
  CHECK(DecodeActiveChunks(-5, 8) == 0);

  // One wave: 132 SMs x 3 blocks over 4 KV heads; small spans get fewer chunks.
  CHECK(DecodeChunksPerKvHead(132, 3, 4, 131072) == 99);
  CHECK(DecodeChunksPerKvHead(132, 3, 4, 100) == 7);
  CHECK(DecodeChunksPerKvHead(132, 6, 16, 1024) == 49);
  CHECK(DecodeChunksPerKvHead(132, 3, 1, int64_t{1} << 20) == 396);
  CHECK(DecodeChunksPerKvHead(1000, 8, 1, int64_t{1} << 30) == kDecodeMaxChunks);
  CHECK(DecodeChunksPerKvHead(4, 1, 16, 1 << 20) == 1);
}

TEST_CASE("Decode attention and AppendKv reject bad arguments", "[decode_attention]") {
  // Fake device pointers: every call below fails its checks before any CUDA
  // call, so none is dereferenced and no GPU is needed.
  alignas(16) static uint16_t memory[64];
  alignas(16) static int64_t position[2];
  __nv_bfloat16* const base = reinterpret_cast<__nv_bfloat16*>(memory);
  const KvLayerView cache{base, base + 16, 128, 4, 512};
  DecodeAttentionWorkspace none;  // created for nothing: mismatches every layer
  const auto decode = [&](const __nv_bfloat16* q, int num_heads, const KvLayerView& c,
                          const int64_t* pos, int64_t window, __nv_bfloat16* out,
                          const DecodeAttentionTuning& tuning = {}) {
    return DecodeAttention(q, num_heads, c, pos, window, out, none, nullptr, tuning);
  };
  const auto expect = [](const absl::Status& status, const std::string& part) {
    INFO(status.ToString());
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(status.message()).find(part) != std::string::npos);
  };
  KvLayerView c = cache;
  expect(decode(nullptr, 32, c, position, 0, base), "q");
  expect(decode(base + 1, 32, c, position, 0, base), "q");  // 2-byte aligned
  expect(decode(base, 32, c, position, 0, nullptr), "out");
  expect(decode(base, 32, c, position, 0, base + 2), "out");  // 4-byte aligned
  expect(decode(base, 32, c, nullptr, 0, base), "position");
  expect(decode(base, 32, c, position, -1, base), "window");
  expect(decode(base, 32, c, position, 0, base, {.stages = 5}), "tuning.stages");
  expect(decode(base, 32, c, position, 0, base, {.blocks_per_sm = -1}), "tuning.blocks_per_sm");
  expect(decode(base, 30, c, position, 0, base), "num_heads");  // not a multiple of 4
  expect(decode(base, 0, c, position, 0, base), "num_heads");
  expect(decode(base, 128, c, position, 0, base), "query heads per KV head");  // group 32
  expect(decode(base, 32, c, position, 0, base), "workspace");
  c.k = nullptr;
  expect(decode(base, 32, c, position, 0, base), "cache.k");
  c = cache;
  c.v = base + 4;  // 8-byte aligned
  expect(decode(base, 32, c, position, 0, base), "aligned");
  c = cache;
  c.capacity = 0;
  expect(decode(base, 32, c, position, 0, base), "cache.capacity");
  c = cache;
  c.num_kv_heads = 0;
  expect(decode(base, 32, c, position, 0, base), "cache.num_kv_heads");
  c = cache;
  c.head_dim = 100;
  expect(decode(base, 32, c, position, 0, base), "cache.head_dim");
  c.head_dim = 72;  // a multiple of 8 (the cache accepts it), not of 64
  expect(decode(base, 32, c, position, 0, base), "head_dim");
  c.head_dim = 576;
  expect(decode(base, 32, c, position, 0, base), "head_dim");

  expect(DecodeAttentionWorkspace::Create(0, 512, 16).status(), "num_heads");
  expect(DecodeAttentionWorkspace::Create(8, 96, 16).status(), "head_dim");
  expect(DecodeAttentionWorkspace::Create(8, 512, 0).status(), "max_span");

  expect(AppendKv(cache, nullptr, base, 1, position, nullptr), "k / v");
  expect(AppendKv(cache, base, base + 1, 1, position, nullptr), "k / v");
  expect(AppendKv(cache, base, base, 1, nullptr, nullptr), "first_position");
  expect(AppendKv(cache, base, base, -1, position, nullptr), "tokens");
  c = cache;
  c.head_dim = 12;
  expect(AppendKv(c, base, base, 1, position, nullptr), "cache.head_dim");
  c = cache;
  c.k = base + 1;
  expect(AppendKv(c, base, base, 1, position, nullptr), "aligned");
  CHECK(AppendKv(cache, base, base, 0, position, nullptr).ok());  // nothing to write
}

// ---- GPU ----

TEST_CASE("AppendKv writes ring slots", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  constexpr int kCapacity = 10, kKvHeads = 2, kDim = 64, kRow = kKvHeads * kDim;
  std::vector<uint16_t> k_cache = RandomBf16(kCapacity * kRow, 1.0f, rng);
  std::vector<uint16_t> v_cache = RandomBf16(kCapacity * kRow, 1.0f, rng);
  auto k_d = testing::Upload(k_cache), v_d = testing::Upload(v_cache);
  auto position_d = testing::Upload(std::vector<int64_t>{0});
  const KvLayerView cache{As<__nv_bfloat16>(k_d), As<__nv_bfloat16>(v_d), kCapacity, kKvHeads,
                          kDim};
  // Appends `tokens` fresh rows at `first` on the device and on the host copy.
  const auto append = [&](int tokens, int64_t first) {
    INFO("append " << tokens << " tokens at " << first);
    const std::vector<uint16_t> k = RandomBf16(tokens * kRow, 1.0f, rng);
    const std::vector<uint16_t> v = RandomBf16(tokens * kRow, 1.0f, rng);
    auto k_new = testing::Upload(k), v_new = testing::Upload(v);
    REQUIRE_OK(position_d.CopyFromHost(std::vector<int64_t>{first}));
    REQUIRE_OK(AppendKv(cache, As<const __nv_bfloat16>(k_new), As<const __nv_bfloat16>(v_new),
                        tokens, position_d.data(), nullptr));
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    if (first >= 0) {
      for (int i = 0; i < tokens; ++i) {
        const int64_t slot = (first + i) % kCapacity;
        std::copy_n(k.begin() + i * kRow, kRow, k_cache.begin() + slot * kRow);
        std::copy_n(v.begin() + i * kRow, kRow, v_cache.begin() + slot * kRow);
      }
    }
    std::vector<uint16_t> k_got(k_cache.size()), v_got(v_cache.size());
    REQUIRE_OK(k_d.CopyToHost(k_got));
    REQUIRE_OK(v_d.CopyToHost(v_got));
    REQUIRE(k_got == k_cache);  // written slots hold the new rows, the rest is untouched
    REQUIRE(v_got == v_cache);
  };
  append(1, 3);
  append(4, 8);   // slots 8, 9, 0, 1
  append(3, 29);  // slots 9, 0, 1
  append(23, 3);  // more than the ring: the last 10 (positions 16..25) win
  append(2, -1);  // negative position: nothing written
  append(10, 100000000007);
}

TEST_CASE("Decode attention matches a float64 reference", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  for (const Heads& heads : {kE2bFull, kE2bSliding, k31bSliding, k31bFull}) {
    for (int64_t span : {1, 255, 256, 4097}) {
      // A flat cache twice the span: the grid is sized for the capacity, the
      // chunks for the live span.
      CheckProblem(RandomProblem(heads, 2 * span + 37, span - 1, 0, rng));
    }
  }
  // Every kernel instance (3 ring depths x 1 and 2 head tiles), with grids
  // for 1 and up to 8 blocks per multiprocessor, and D = 64, 128, 192.
  const std::initializer_list<DecodeAttentionTuning> all = {{},
                                                            {.stages = 3},
                                                            {.stages = 6},
                                                            {.stages = 4, .blocks_per_sm = 1},
                                                            {.stages = 3, .blocks_per_sm = 8},
                                                            {.stages = 4, .blocks_per_sm = 8}};
  for (const Heads& heads : {k31bFull, kGroup16, kGroup12, kGroup4}) {
    CheckProblem(RandomProblem(heads, 3001, 2999, 0, rng), all);
  }
}

TEST_CASE("Decode attention at 128K context on the 31B full layer", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  constexpr int64_t kSpan = 131072;  // 1 GiB of K + V
  CheckProblem(RandomProblem(k31bFull, kSpan, kSpan - 1, 0, rng));
}

TEST_CASE("Decode attention on a wrapped sliding ring", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  struct Ring {
    Heads heads;
    int64_t capacity, window;
  };
  // window = capacity (decode), and a ring larger than the window (chunked
  // prefill keeps window + chunk positions).
  for (const Ring& ring : {Ring{k31bSliding, 1024, 1024}, Ring{kE2bSliding, 512, 512},
                           Ring{k31bSliding, 1100, 1024}, Ring{kGroup16, 77, 77}}) {
    Problem p = RandomProblem(ring.heads, ring.capacity, 0, ring.window, rng);
    DeviceProblem d(p);
    DecodeAttentionWorkspace workspace = MakeWorkspace(p);
    // Before the ring fills, exactly full, wrapped at several offsets.
    for (int64_t position : {int64_t{0}, int64_t{100}, ring.window - 1, ring.window,
                             ring.capacity + 517, int64_t{5000}, int64_t{1} << 33}) {
      p.position = position;
      INFO(ring.heads.name << " capacity " << ring.capacity << " window " << ring.window
                           << " position " << position);
      d.SetPosition(position);
      const Reference ref = ReferenceAttention(p);
      CheckOutputs(RunDecode(p, d, workspace), ref.out, ref, p.heads.head_dim);
    }
  }
}

TEST_CASE("Decode attention at a negative position writes NaN", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  for (const Heads& heads : {k31bSliding, kE2bFull}) {
    INFO(heads.name);
    Problem p = RandomProblem(heads, 300, 0, 0, rng);
    DeviceProblem d(p);
    DecodeAttentionWorkspace workspace = MakeWorkspace(p);
    d.SetPosition(-1);
    REQUIRE_OK(d.out.FillBytes(0x3F));  // finite poison: an unwritten output is not NaN
    REQUIRE_OK(DecodeAttention(As<const __nv_bfloat16>(d.q), heads.num_heads, d.Cache(p),
                               d.position.data(), p.window, As<__nv_bfloat16>(d.out), workspace,
                               nullptr));
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<uint16_t> got(p.q.size());
    REQUIRE_OK(d.out.CopyToHost(got));
    REQUIRE(std::all_of(got.begin(), got.end(),
                        [](uint16_t bits) { return std::isnan(Bf16Value(bits)); }));
  }
}

TEST_CASE("Decode attention merges chunks whose maxima differ wildly", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  // 31B full heads over 20000 keys: ~100 chunks of ~200 keys. Each KV head's
  // query heads share a component c (q_h = c + noise), and key j gets a_j
  // c / |c|² added, so its logit is ~a_j for every head of the group. Eight
  // regions with offsets from -300 to +120: three regions far apart (120,
  // 119.2, 118.5) share the weight, and single keys reach 121. A fixed
  // offset instead of the true max overflows (e^120) or underflows (e^-300)
  // fp32; a merge that mishandles chunk maxima loses regions.
  const Heads& heads = k31bFull;
  constexpr int64_t kSpan = 20000;
  constexpr double kOffsets[] = {-300, 120, 0, 118.5, -50, 119.2, -250, 60};
  Problem p = RandomProblem(heads, kSpan, kSpan - 1, 0, rng);
  const int d_count = heads.head_dim, group = heads.group();
  std::uniform_real_distribution<float> noise(-1.0f, 1.0f);
  for (int kvh = 0; kvh < heads.num_kv_heads; ++kvh) {
    std::vector<float> c(d_count);
    double c2 = 0;
    for (float& x : c) {
      x = 0.5f * noise(rng);
      c2 += x * x;
    }
    for (int g = 0; g < group; ++g) {
      for (int d = 0; d < d_count; ++d) {
        uint16_t& q = p.q[(kvh * group + g) * d_count + d];
        q = FloatToBFloat16(c[d] + 0.3f * noise(rng));
      }
    }
    for (int64_t j = 0; j < kSpan; ++j) {
      double a = kOffsets[j * 8 / kSpan] + 2.0 * noise(rng);
      if (j % 4999 == 7) a = 121;  // lone spikes inside chunks
      uint16_t* k = p.k.data() + (j * heads.num_kv_heads + kvh) * d_count;
      for (int d = 0; d < d_count; ++d) {
        k[d] = FloatToBFloat16(static_cast<float>(Bf16Value(k[d]) + a * c[d] / c2));
      }
    }
  }
  CheckProblem(p);
}

TEST_CASE("Decode attention agrees with cpu::Attention", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  const Heads heads{"8 heads over 2, D=128", 8, 2, 128};
  const Problem p = RandomProblem(heads, 300, 299, 0, rng);
  const Reference ref = ReferenceAttention(p);
  std::vector<float> q(p.q.size()), k(p.k.size()), v(p.v.size()), cpu_out(p.q.size());
  std::transform(p.q.begin(), p.q.end(), q.begin(), BFloat16ToFloat);
  std::transform(p.k.begin(), p.k.end(), k.begin(), BFloat16ToFloat);
  std::transform(p.v.begin(), p.v.end(), v.begin(), BFloat16ToFloat);
  const gemma4::cpu::KvView kv{k.data(), v.data(), p.capacity, heads.num_kv_heads, heads.head_dim};
  gemma4::cpu::Attention(q, 1, heads.num_heads, p.position, p.window, kv, cpu_out, nullptr);
  // The float32 CPU path is itself within ~1e-6 of the float64 reference.
  const std::vector<double> cpu(cpu_out.begin(), cpu_out.end());
  DeviceProblem d(p);
  DecodeAttentionWorkspace workspace = MakeWorkspace(p);
  CheckOutputs(RunDecode(p, d, workspace), cpu, ref, heads.head_dim);
}

TEST_CASE("Decode step (AppendKv + attention) replays from one CUDA graph", "[cuda]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = testing::MakeRng();
  // E2B-like sliding heads on a 64-slot ring: 160 steps wrap it twice. The
  // graph is captured once; only the device-side position and the new
  // token's q, k, v change between replays.
  const Heads heads{"E2B sliding heads, window 64", 8, 1, 256};
  constexpr int64_t kWindow = 64;
  Problem p = RandomProblem(heads, kWindow, 0, kWindow, rng);
  const int row = heads.num_kv_heads * heads.head_dim;
  DeviceProblem d(p);
  DecodeAttentionWorkspace workspace = MakeWorkspace(p);
  auto k_new = testing::Upload(std::vector<uint16_t>(row, 0x3F80));
  auto v_new = testing::Upload(std::vector<uint16_t>(row, 0x3F80));
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  cudaGraph_t graph;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  const absl::Status appended =
      AppendKv(d.Cache(p), As<const __nv_bfloat16>(k_new), As<const __nv_bfloat16>(v_new), 1,
               d.position.data(), stream);
  const absl::Status attended =
      DecodeAttention(As<const __nv_bfloat16>(d.q), heads.num_heads, d.Cache(p), d.position.data(),
                      kWindow, As<__nv_bfloat16>(d.out), workspace, stream);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  REQUIRE_OK(appended);
  REQUIRE_OK(attended);
  cudaGraphExec_t exec;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int64_t position = 0; position < 160; ++position) {
    INFO("step at position " << position);
    p.position = position;
    p.q = RandomBf16(p.q.size(), 1.0f, rng);
    const std::vector<uint16_t> k = RandomBf16(row, 2.6f / 16, rng), v = RandomBf16(row, 1.0f, rng);
    std::copy(k.begin(), k.end(), p.k.begin() + position % kWindow * row);
    std::copy(v.begin(), v.end(), p.v.begin() + position % kWindow * row);
    REQUIRE_OK(d.q.CopyFromHost(p.q));
    REQUIRE_OK(k_new.CopyFromHost(k));
    REQUIRE_OK(v_new.CopyFromHost(v));
    d.SetPosition(position);
    REQUIRE_OK(d.out.FillBytes(0xFF));
    // The copies and the fill ran on the legacy stream, which a non-blocking
    // stream does not wait for.
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    std::vector<uint16_t> got(p.q.size());
    REQUIRE_OK(d.out.CopyToHost(got));
    const Reference ref = ReferenceAttention(p);
    CheckOutputs(got, ref.out, ref, heads.head_dim);
  }
  REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

}  // namespace
}  // namespace gquant::cuda
