// GpuSampler: greedy and temperature draws in one launch; top-k and top-p as
// radix selects over a strict total order of the vocabulary, then one draw
// restricted to the kept prefix of that order.
//
// The order. Every token gets a 64-bit composite key
//   key(i) = OrderedKey(logit_i) << id_bits | (vocab - 1 - i),
// where OrderedKey maps floats to uint32 in the same order (-0 = +0) and
// id_bits = bit_width(vocab - 1). Larger keys come first: descending logit,
// lower id first on a tie, which is exactly gquant::Sampler's order. Keys are
// distinct, so top-k and top-p both keep a prefix of this order, and each cut
// is one key: keep key >= cut. No separate tie handling is needed.
//
// Top-k: the key of the k-th token, by most-significant-digit radix select
// (11-bit digits, ceil((32 + id_bits) / 11) passes: 5 for vocab 262144).
// Each pass is one launch: every block histograms the digit of the tokens
// still in the bucket (their higher digits equal the prefix chosen so far) in
// shared memory and adds it to a global histogram; the last block to finish
// scans the histogram from the largest digit down, picks the bin holding the
// k-th token, and zeroes the histogram for the next pass.
//
// Top-p: the same select weighted by probability mass instead of counts,
// over the top-k set, finding the first token at which the mass in order
// reaches (top_p - 1e-6) * total. Masses are fixed point, w = round(2^F exp((l
// - max) / T)) with F = 62 - id_bits (the total stays below 2^62), so sums
// are exact and the same in every pass and on every run; the weights are
// the host's double expression, so the cut agrees with gquant::Sampler
// unless the host's sum lies within that rounding (vocab * 2^-F at worst) of
// the threshold. A Stats launch finds max first.
//
// The draw: Gumbel-max, argmax over kept tokens of l / T + G_i with G_i
// standard Gumbel noise, which picks i with probability exactly
// exp(l_i / T) / sum over kept tokens: the renormalized distribution, in
// one pass. +inf logits form a class above all finite ones (score G_i only:
// uniform among them), NaN a class above both (the draw returns -1). G_i
// comes from Philox4x32-10 keyed by the seed, with counter (token id, draw),
// so draws do not depend on the launch shape.
//
// Every launch uses programmatic dependent launch and waits for its
// predecessor before touching memory; it reads the state the previous
// launch left in Scratch and leaves the ticket and histogram zeroed for the
// next one. The sequence of launches is fixed by the config (no host sync,
// no allocation), so Sample captures into a CUDA graph.
#include <curand_kernel.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_buffer.cuh"
#include "device_primitives.cuh"
#include "gpu_sampler.cuh"
#include "launch.cuh"

namespace gquant::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kLogitsPerThread = 4;  // loads in flight per thread (256 blocks for 262144)
constexpr int kTile = kThreads * kLogitsPerThread;
// Grids are at most two blocks per multiprocessor and this many (one wave,
// so every block is resident and the last-block pattern never waits).
constexpr int kMaxBlocks = 1024;
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerThread = kBins / kThreads;
static_assert(kBins % kThreads == 0);
constexpr double kTopPSlack = 1e-6;  // as gquant::Sampler

// OrderedKey(+inf). The first pass's digit is the top kDigitBits bits of the
// ordered key, and its bin holds only +inf (the other keys in it are NaNs,
// which no pass counts).
constexpr uint32_t kPosInfKey = 0xFF800000u;
constexpr int kPosInfDigit = static_cast<int>(kPosInfKey >> (32 - kDigitBits));

// Classes of a draw candidate, in the order the draw prefers them.
enum : int32_t { kNone = 0, kFinite = 1, kPosInf = 2, kNaN = 3 };

struct Candidate {
  double score;  // l / T + Gumbel noise (the logit when greedy; noise alone for +inf)
  int32_t id;
  int32_t cls;
};

// Device state of one sampler. Zeroed at Create; each launch leaves `ticket`,
// `hist` and `max_key_accum` zero again.
struct Scratch {
  unsigned long long hist[kBins];  // the current select pass's histogram
  unsigned long long prefix;       // cut-key digits chosen so far
  unsigned long long remaining;    // rank or mass still to cover inside the bucket
  unsigned long long top_k_cut;    // key of the k-th token: keep keys >= it
  unsigned long long top_p_cut;    // key of the last token of the nucleus
  unsigned long long draw;         // Samples so far: the Philox counter's high half
  unsigned int max_key_accum;      // Stats: running atomicMax of OrderedKey
  unsigned int max_key;            // Stats: OrderedKey of the largest logit
  unsigned int ticket;             // blocks finished in the running launch
  Candidate partial[kMaxBlocks];   // each block's best candidate
};

// ---- keys ----

// Monotone map of non-NaN floats to uint32 (-0 and +0 map alike, since the
// host compares them equal).
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  const uint32_t bits = x == 0.0f ? 0u : __float_as_uint(x);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float FromOrderedKey(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) != 0 ? key & 0x7FFFFFFFu : ~key);
}

__device__ __forceinline__ uint64_t CompositeKey(float x, int32_t id, int64_t vocab, int id_bits) {
  return uint64_t{OrderedKey(x)} << id_bits | static_cast<uint64_t>(vocab - 1 - id);
}

// ---- block-wide helpers ----

// Calls f(id, logit) for this thread's logits: tiles of kTile, each thread
// loading kLogitsPerThread coalesced values before using any.
template <typename F>
__device__ __forceinline__ void ForEachLogit(const float* __restrict__ logits, int64_t vocab,
                                             F&& f) {
  const int64_t stride = int64_t{gridDim.x} * kTile;
  for (int64_t base = int64_t{blockIdx.x} * kTile + threadIdx.x; base < vocab; base += stride) {
    float x[kLogitsPerThread];
#pragma unroll
    for (int j = 0; j < kLogitsPerThread; ++j) {
      const int64_t i = base + j * kThreads;
      x[j] = i < vocab ? logits[i] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kLogitsPerThread; ++j) {
      const int64_t i = base + j * kThreads;
      if (i < vocab) f(static_cast<int32_t>(i), x[j]);
    }
  }
}

// True in every thread of the block that finishes last; by then the global
// writes and atomics every block made before its call are visible to it
// (read them with __ldcg). Leaves the ticket zero for the next launch.
__device__ bool LastBlockToFinish(unsigned int* ticket) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    if (last) *ticket = 0;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// Sum of v over the threads before this one; *total gets the block's sum.
__device__ unsigned long long BlockExclusiveSum(unsigned long long v, unsigned long long* total) {
  __shared__ unsigned long long warp_sums[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  unsigned long long inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const unsigned long long other = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  unsigned long long before = 0, sum = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += warp_sums[w];
    sum += warp_sums[w];
  }
  __syncthreads();  // warp_sums may be reused
  *total = sum;
  return before + inclusive - v;
}

__device__ __forceinline__ Candidate NoCandidate() { return {-INFINITY, INT_MAX, kNone}; }

// The preferred of two candidates: higher class, then higher score, then
// lower id (a strict total order, so any reduction tree gives one answer).
__device__ __forceinline__ Candidate Best(const Candidate& a, const Candidate& b) {
  if (a.cls != b.cls) return a.cls > b.cls ? a : b;
  if (a.score != b.score) return a.score > b.score ? a : b;
  return a.id < b.id ? a : b;
}

// The block's best candidate, in every thread.
__device__ Candidate BlockBest(Candidate c) {
  __shared__ Candidate warp_best[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const Candidate other{__shfl_xor_sync(0xFFFFFFFFu, c.score, offset),
                          __shfl_xor_sync(0xFFFFFFFFu, c.id, offset),
                          __shfl_xor_sync(0xFFFFFFFFu, c.cls, offset)};
    c = Best(c, other);
  }
  if (lane == 0) warp_best[warp] = c;
  __syncthreads();
  c = warp_best[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) c = Best(c, warp_best[w]);
  __syncthreads();  // warp_best may be reused
  return c;
}

// ---- the draw ----

// A standard Gumbel variate -log(E), E = -log(1 - V) ~ Exp(1), V uniform in
// (0, 1) from two Philox words on a 2^-64 grid: the winning E are small
// (about the winner's probability), where float keeps full relative
// precision.
__device__ __forceinline__ double Gumbel(uint64_t seed, uint64_t draw, int32_t id) {
  const uint4 r = curand_Philox4x32_10(
      make_uint4(static_cast<uint32_t>(id), 0u, static_cast<uint32_t>(draw),
                 static_cast<uint32_t>(draw >> 32)),
      make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
  float v = fmaf(__uint2float_rn(r.x), 0x1p-32f, (__uint2float_rn(r.y) + 0.5f) * 0x1p-64f);
  v = fminf(v, 0x1.fffffep-1f);  // rounding may reach 1
  const float e = -log1pf(-v);   // in [2^-65, 16.7)
  return -static_cast<double>(logf(e));
}

struct SampleArgs {
  const float* logits;  // [vocab]
  int32_t* token;
  Scratch* scratch;
  int64_t vocab;
  int id_bits;
  const unsigned long long* cut;  // keep keys >= *cut; null: keep all
  double inv_temperature;
  uint64_t seed;
};

// The best candidate of each block, then of the blocks (in the last block),
// which writes the token and advances the draw counter.
template <bool kGreedy>
__global__ void __launch_bounds__(kThreads) SampleKernel(const SampleArgs a) {
  WaitForPredecessor();
  AllowDependents();
  Scratch& s = *a.scratch;
  // Read before this block finishes, so before the last block advances it.
  const uint64_t draw = s.draw;
  const uint64_t cut = a.cut != nullptr ? *a.cut : 0;
  Candidate best = NoCandidate();
  ForEachLogit(a.logits, a.vocab, [&](int32_t id, float x) {
    if (x == -INFINITY) return;
    Candidate c{0.0, id, kNaN};
    if (!isnan(x)) {
      if (a.cut != nullptr && CompositeKey(x, id, a.vocab, a.id_bits) < cut) return;
      c.cls = isinf(x) ? kPosInf : kFinite;
      if constexpr (kGreedy) {
        c.score = c.cls == kFinite ? static_cast<double>(x) : 0.0;
      } else {
        const double logit = c.cls == kFinite ? static_cast<double>(x) * a.inv_temperature : 0.0;
        c.score = logit + Gumbel(a.seed, draw, id);
      }
    }
    best = Best(best, c);
  });
  best = BlockBest(best);
  if (threadIdx.x == 0) s.partial[blockIdx.x] = best;
  if (!LastBlockToFinish(&s.ticket)) return;
  best = NoCandidate();
  for (int b = threadIdx.x; b < static_cast<int>(gridDim.x); b += kThreads) {
    const Candidate& p = s.partial[b];
    best = Best(best, Candidate{__ldcg(&p.score), __ldcg(&p.id), __ldcg(&p.cls)});
  }
  best = BlockBest(best);
  if (threadIdx.x == 0) {
    *a.token = best.cls == kFinite || best.cls == kPosInf ? best.id : -1;
    s.draw = draw + 1;
  }
}

// ---- the cuts ----

struct StatsArgs {
  const float* logits;
  Scratch* scratch;
  int64_t vocab;
};

// max_key = OrderedKey of the largest non-NaN logit (0 when all are NaN).
__global__ void __launch_bounds__(kThreads) StatsKernel(const StatsArgs a) {
  WaitForPredecessor();
  AllowDependents();
  Scratch& s = *a.scratch;
  unsigned int max_key = 0;
  ForEachLogit(a.logits, a.vocab, [&](int32_t, float x) {
    if (!isnan(x)) max_key = max(max_key, OrderedKey(x));
  });
  max_key = __reduce_max_sync(0xFFFFFFFFu, max_key);
  if (threadIdx.x % 32 == 0 && max_key != 0) atomicMax(&s.max_key_accum, max_key);
  if (!LastBlockToFinish(&s.ticket)) return;
  if (threadIdx.x == 0) s.max_key = atomicExch(&s.max_key_accum, 0u);
}

struct SelectArgs {
  const float* logits;
  Scratch* scratch;
  int64_t vocab;
  int id_bits;
  int shift;  // this pass's digit is bits [shift, shift + width) of the key
  int width;
  bool first, last;
  // Counting (top-k): the rank of the cut token.
  uint64_t top_k;
  // Mass (top-p):
  double top_p_target;  // top_p - kTopPSlack, as a fraction of the total
  double temperature;
  int fixed_bits;     // weights are round(2^fixed_bits * probability / p_max)
  bool within_top_k;  // count only keys >= top_k_cut
};

// The weight of logit x in fixed point (see the file comment); `max_logit`
// is the largest logit. Only +inf weighs anything when max_logit is +inf.
__device__ __forceinline__ unsigned long long FixedWeight(float x, float max_logit,
                                                          double temperature, int fixed_bits) {
  if (isinf(max_logit)) return x == max_logit ? 1ull << fixed_bits : 0;
  // The host's expression: exp((double(l) - double(max)) / double(T)).
  const double w = exp((static_cast<double>(x) - static_cast<double>(max_logit)) / temperature);
  return __double2ull_rn(ldexp(w, fixed_bits));
}

// One digit of the radix select of the top-k cut (kMass false: the k-th key)
// or the top-p cut (kMass true: the key at which the mass reaches the
// target), as the file comment describes. Updates prefix and remaining; the
// last pass writes the cut.
template <bool kMass>
__global__ void __launch_bounds__(kThreads) SelectPassKernel(const SelectArgs a) {
  using Bin = std::conditional_t<kMass, unsigned long long, unsigned int>;
  __shared__ Bin hist[kBins];
  __shared__ int chosen;
  __shared__ unsigned long long inf_count;
  WaitForPredecessor();
  AllowDependents();
  Scratch& s = *a.scratch;
  for (int b = threadIdx.x; b < kBins; b += kThreads) hist[b] = 0;
  const unsigned long long prefix = a.first ? 0 : s.prefix;
  const int bucket_shift = a.shift + a.width;  // <= 63
  const unsigned int digit_mask = (1u << a.width) - 1;
  float max_logit = 0;
  unsigned long long floor_key = 0;
  if constexpr (kMass) {
    max_logit = FromOrderedKey(s.max_key);
    floor_key = a.within_top_k ? s.top_k_cut : 0;
  }
  __syncthreads();
  ForEachLogit(a.logits, a.vocab, [&](int32_t id, float x) {
    if (isnan(x) || x == -INFINITY) return;
    const uint64_t key = CompositeKey(x, id, a.vocab, a.id_bits);
    if ((key >> bucket_shift) != prefix) return;
    const unsigned int digit = static_cast<unsigned int>(key >> a.shift) & digit_mask;
    if constexpr (kMass) {
      if (key < floor_key) return;
      const unsigned long long w = FixedWeight(x, max_logit, a.temperature, a.fixed_bits);
      if (w != 0) atomicAdd(&hist[digit], w);
    } else {
      atomicAdd(&hist[digit], 1u);
    }
  });
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += kThreads) {
    if (hist[b] != 0) atomicAdd(&s.hist[b], static_cast<unsigned long long>(hist[b]));
  }
  if (!LastBlockToFinish(&s.ticket)) return;

  // The last block: bins in key order, largest digit first (q = kBins - 1 -
  // digit); thread t holds q in [t * kBinsPerThread, (t + 1) * kBinsPerThread).
  if (threadIdx.x == 0) {
    chosen = INT_MAX;
    inf_count = 0;
  }
  unsigned long long bins[kBinsPerThread], local = 0;
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) {
    const int digit = kBins - 1 - (static_cast<int>(threadIdx.x) * kBinsPerThread + j);
    bins[j] = __ldcg(&s.hist[digit]);
    s.hist[digit] = 0;
    local += bins[j];
  }
  __syncthreads();  // chosen and inf_count initialized
  if constexpr (!kMass) {
#pragma unroll
    for (int j = 0; j < kBinsPerThread; ++j) {
      if (kBins - 1 - (static_cast<int>(threadIdx.x) * kBinsPerThread + j) == kPosInfDigit) {
        inf_count = bins[j];
      }
    }
  }
  unsigned long long total;
  const unsigned long long before = BlockExclusiveSum(local, &total);  // syncs
  // What the cut bin must cover, counting from the top of the bucket: a rank
  // (top-k) or a mass (top-p), at least 1 so the cut is a real token.
  unsigned long long need;
  if (!a.first) {
    need = s.remaining;
  } else if constexpr (kMass) {
    const double target = fmax(0.0, a.top_p_target * static_cast<double>(total));
    need = max(1ull, min(total, static_cast<unsigned long long>(ceil(target))));
  } else {
    // With any +inf, only the +inf tokens are candidates (all in one bin).
    need = min(static_cast<unsigned long long>(a.top_k), inf_count > 0 ? inf_count : total);
  }
  // The first bin (in key order) whose running sum reaches `need`. A bin
  // that does has a nonzero sum, so it holds a token; none does only when
  // the bucket is empty (every logit NaN or -inf), and then the draw
  // returns -1 whatever the cut.
  int my_q = INT_MAX;
  unsigned long long my_before = 0, running = before;
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) {
    if (my_q == INT_MAX && bins[j] != 0 && running + bins[j] >= need) {
      my_q = static_cast<int>(threadIdx.x) * kBinsPerThread + j;
      my_before = running;
    }
    running += bins[j];
  }
  if (my_q != INT_MAX) atomicMin(&chosen, my_q);
  __syncthreads();
  const bool writer = chosen == INT_MAX ? threadIdx.x == 0 : my_q == chosen;
  if (writer) {
    const unsigned long long digit = chosen == INT_MAX ? 0 : kBins - 1 - chosen;
    const unsigned long long next = prefix << a.width | digit;
    s.prefix = next;
    s.remaining = chosen == INT_MAX ? 1 : need - my_before;
    if (a.last) (kMass ? s.top_p_cut : s.top_k_cut) = next;
  }
}

struct SelectPass {
  int shift, width;
};

// The digits of a key of `key_bits` bits, most significant first.
std::vector<SelectPass> SelectPasses(int key_bits) {
  std::vector<SelectPass> passes;
  for (int high = key_bits; high > 0;) {
    const int shift = std::max(high - kDigitBits, 0);
    passes.push_back({shift, high - shift});
    high = shift;
  }
  return passes;
}

}  // namespace

struct GpuSampler::State {
  SamplerConfig config;
  int64_t vocab;
  int id_bits;
  int blocks;
  bool greedy, top_k_cut, top_p_cut;
  std::vector<SelectPass> passes;
  DeviceBuffer<Scratch> scratch;
};

absl::StatusOr<GpuSampler> GpuSampler::Create(const SamplerConfig& config, int64_t vocab) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (vocab < 1 || vocab > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GpuSampler: expected vocab in [1, 2^31 - 1], but got %d", vocab));
  }
  const absl::StatusOr<DeviceLimits> limits = CurrentDeviceLimits();
  if (!limits.ok()) return limits.status();
  auto state = std::make_unique<State>();
  state->config = config;
  state->vocab = vocab;
  state->id_bits = std::bit_width(static_cast<uint64_t>(vocab - 1));
  const int64_t tiles = (vocab + kTile - 1) / kTile;
  state->blocks =
      static_cast<int>(std::min<int64_t>(tiles, std::min(kMaxBlocks, 2 * limits->multiprocessors)));
  state->greedy = config.temperature == 0;
  state->top_k_cut = !state->greedy && config.top_k > 0 && config.top_k < vocab;
  state->top_p_cut = !state->greedy && config.top_p < 1;
  state->passes = SelectPasses(32 + state->id_bits);
  auto scratch = DeviceBuffer<Scratch>::Allocate(1);
  if (!scratch.ok()) return scratch.status();
  state->scratch = *std::move(scratch);
  if (absl::Status s = state->scratch.FillBytes(0); !s.ok()) return s;
  // The fill ran on the default stream, which a non-blocking stream does not
  // wait for.
  GQ_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(nullptr));
  return GpuSampler(std::move(state));
}

GpuSampler::GpuSampler(std::unique_ptr<State> state) : state_(std::move(state)) {}
GpuSampler::GpuSampler(GpuSampler&&) noexcept = default;
GpuSampler& GpuSampler::operator=(GpuSampler&&) noexcept = default;
GpuSampler::~GpuSampler() = default;

const SamplerConfig& GpuSampler::config() const { return state_->config; }
int64_t GpuSampler::vocab() const { return state_->vocab; }

absl::Status GpuSampler::Sample(const float* logits, int32_t* token, cudaStream_t stream) {
  if (state_ == nullptr) return absl::FailedPreconditionError("GpuSampler: moved from");
  if (logits == nullptr || token == nullptr || !Aligned(logits, 4) || !Aligned(token, 4)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GpuSampler::Sample: expected non-null 4-byte aligned logits and token, but got %p, %p",
        logits, token));
  }
  State& st = *state_;
  Scratch* scratch = st.scratch.data();
  const SamplerConfig& c = st.config;
  if (st.top_p_cut) {
    if (absl::Status s = LaunchKernel(StatsKernel, st.blocks, kThreads, 0, stream, true,
                                      StatsArgs{logits, scratch, st.vocab});
        !s.ok()) {
      return s;
    }
  }
  for (const bool mass : {false, true}) {
    if (!(mass ? st.top_p_cut : st.top_k_cut)) continue;
    for (size_t p = 0; p < st.passes.size(); ++p) {
      const SelectArgs args{logits,
                            scratch,
                            st.vocab,
                            st.id_bits,
                            st.passes[p].shift,
                            st.passes[p].width,
                            p == 0,
                            p + 1 == st.passes.size(),
                            static_cast<uint64_t>(c.top_k),
                            static_cast<double>(c.top_p) - kTopPSlack,
                            static_cast<double>(c.temperature),
                            62 - st.id_bits,
                            st.top_k_cut};
      if (absl::Status s = LaunchKernel(mass ? SelectPassKernel<true> : SelectPassKernel<false>,
                                        st.blocks, kThreads, 0, stream, true, args);
          !s.ok()) {
        return s;
      }
    }
  }
  const unsigned long long* cut = st.top_p_cut   ? &scratch->top_p_cut
                                  : st.top_k_cut ? &scratch->top_k_cut
                                                 : nullptr;
  const SampleArgs args{logits,
                        token,
                        scratch,
                        st.vocab,
                        st.id_bits,
                        cut,
                        st.greedy ? 0.0 : 1.0 / static_cast<double>(c.temperature),
                        c.seed};
  return LaunchKernel(st.greedy ? SampleKernel<true> : SampleKernel<false>, st.blocks, kThreads, 0,
                      stream, true, args);
}

}  // namespace gquant::cuda
