#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "device_primitives.cuh"
#include "launch.cuh"
#include "moe_kernels.cuh"
#include "row_access.cuh"

namespace gquant::cuda {
namespace {

constexpr unsigned kFullWarp = 0xFFFFFFFFu;

// ---- RouterLogits ----

// Threads of a router block; thread i takes the float4s i, i + 256, ... of
// every row, in ascending order, in both variants below, so a logit is the
// same float whichever variant computes it.
constexpr int kRouterThreads = 256;
constexpr int kRouterWarps = kRouterThreads / 32;
// Decode: a block per (token, expert), each thread loading kRouterSteps
// float4s of r, scale and the projection at once (hidden 2816: one step, so
// one round trip), 128 blocks for 26B-A4B rather than one warp per SM.
constexpr int kRouterSteps = 4;
// Prefill: a block per kRouterTileTokens tokens x kRouterTileExperts
// experts, each float4 of the projection loaded once for 8 tokens and each
// of r once for 8 experts (L2 traffic per token ~1/8 of a block per logit).
constexpr int kRouterTileTokens = 8;
constexpr int kRouterTileExperts = 8;
// From this many tokens on, the tiled variant (fewer blocks, less traffic).
constexpr int kRouterTileMinTokens = 16;

struct RouterArgs {
  const float* r;      // [tokens, hidden]
  const float* scale;  // [hidden]
  const float* proj;   // [experts, hidden]
  float* logits;       // [tokens, experts]
  int64_t tokens;
  int hidden;
  int experts;
  float root;
  float eps;
};

__device__ __forceinline__ float4 LoadQuadOrZero(const float* row, int q, bool valid) {
  return valid ? reinterpret_cast<const float4*>(row)[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// acc + Σ a[i] b[i] in component order, one fma each (fmaf, __fmul_rn: the
// compiler may not contract or reorder, so both variants round alike).
__device__ __forceinline__ float Dot4(float4 a, float4 b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}

__device__ __forceinline__ float4 Mul4(float4 a, float4 b) {
  return make_float4(__fmul_rn(a.x, b.x), __fmul_rn(a.y, b.y), __fmul_rn(a.z, b.z),
                     __fmul_rn(a.w, b.w));
}

// Grid (token groups of kTokens, expert groups of kExperts). Per logit:
// dot = Σ_i (r_i * scale_i) * proj_i and squares = Σ_i r_i², each per
// thread in ascending i, then per warp (shuffle tree), then over the warps
// in order; logit = dot * (inv_rms * root). inv_rms factors out of the sum,
// so r is read once for both sums and there is no second pass. A float4
// past the row (decode's last step) adds exact zeros: the sums start at +0
// and so never hold -0.
template <int kTokens, int kExperts, int kSteps>
__global__ void __launch_bounds__(kRouterThreads) RouterLogitsKernel(const RouterArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t token0 = int64_t{blockIdx.x} * kTokens;
  const int expert0 = blockIdx.y * kExperts;
  const int quads = a.hidden / 4;
  bool token_valid[kTokens], expert_valid[kExperts];
  const float* rows[kTokens];
  const float* proj[kExperts];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    token_valid[t] = token0 + t < a.tokens;
    rows[t] = a.r + (token0 + t) * a.hidden;
  }
#pragma unroll
  for (int e = 0; e < kExperts; ++e) {
    expert_valid[e] = expert0 + e < a.experts;
    proj[e] = a.proj + int64_t{expert0 + e} * a.hidden;
  }

  float dot[kExperts][kTokens], squares[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    squares[t] = 0.0f;
#pragma unroll
    for (int e = 0; e < kExperts; ++e) dot[e][t] = 0.0f;
  }
  for (int base = threadIdx.x; base < quads; base += kRouterThreads * kSteps) {
    // Every load of the step first, then the math.
    float4 s[kSteps], x[kTokens][kSteps], w[kExperts][kSteps];
#pragma unroll
    for (int c = 0; c < kSteps; ++c) {
      const int q = base + c * kRouterThreads;
      const bool in_row = q < quads;
      s[c] = LoadQuadOrZero(a.scale, q, in_row);
#pragma unroll
      for (int t = 0; t < kTokens; ++t)
        x[t][c] = LoadQuadOrZero(rows[t], q, in_row && token_valid[t]);
#pragma unroll
      for (int e = 0; e < kExperts; ++e)
        w[e][c] = LoadQuadOrZero(proj[e], q, in_row && expert_valid[e]);
    }
#pragma unroll
    for (int c = 0; c < kSteps; ++c) {
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        squares[t] = Dot4(x[t][c], x[t][c], squares[t]);
        const float4 routed = Mul4(x[t][c], s[c]);
#pragma unroll
        for (int e = 0; e < kExperts; ++e) dot[e][t] = Dot4(routed, w[e][c], dot[e][t]);
      }
    }
  }

  // Warp sums into shared memory; thread (e, t) adds its logit's warps.
  constexpr int kDots = kExperts * kTokens;
  __shared__ float warp_sums[kRouterWarps][kDots + kTokens];
  const int warp = threadIdx.x / 32;
  const bool leader = threadIdx.x % 32 == 0;
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    const float sq = WarpSum(squares[t]);
    if (leader) warp_sums[warp][kDots + t] = sq;
#pragma unroll
    for (int e = 0; e < kExperts; ++e) {
      const float d = WarpSum(dot[e][t]);
      if (leader) warp_sums[warp][e * kTokens + t] = d;
    }
  }
  __syncthreads();
  if (threadIdx.x >= kDots) return;
  const int e = threadIdx.x / kTokens, t = threadIdx.x % kTokens;
  if (token0 + t >= a.tokens || expert0 + e >= a.experts) return;
  float dot_sum = 0.0f, square_sum = 0.0f;
#pragma unroll
  for (int w = 0; w < kRouterWarps; ++w) {
    dot_sum += warp_sums[w][threadIdx.x];
    square_sum += warp_sums[w][kDots + t];
  }
  a.logits[(token0 + t) * a.experts + expert0 + e] =
      dot_sum * (InverseRms(square_sum, a.hidden, a.eps) * a.root);
}

// ---- RouteTopK ----

constexpr int kTopKWarps = 4;  // tokens per block

struct TopKArgs {
  const float* logits;  // [tokens, experts]
  const float* per_expert_scale;
  int32_t* ids;    // [tokens, top_k]
  float* weights;  // [tokens, top_k]
  int64_t tokens;
  int experts;
  int top_k;
};

// An int whose order is the float's (for non-NaN floats; -0 just below +0),
// and back (the map is its own inverse), for a one-instruction warp max.
__device__ __forceinline__ int OrderedBits(int bits) {
  return bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
}

__device__ __forceinline__ float WarpMax(float v) {
  const int ordered = __reduce_max_sync(kFullWarp, OrderedBits(__float_as_int(v)));
  return __int_as_float(OrderedBits(ordered));
}

// A candidate as one unsigned key whose order is cpu::RouteTopK's: the
// larger probability, NaN below every number, ties to the lower expert.
// High word: p's bits with the sign bit set (p >= +0 here, so this orders
// every p above 0 and maps +0 and -0 alike), or 0 for NaN. Low word:
// kMaxExperts - expert, larger for the lower expert and never 0, so key 0
// (no candidate, or already picked) is below every candidate.
__device__ __forceinline__ uint64_t CandidateKey(float p, int expert) {
  const uint32_t high = isnan(p) ? 0u : (__float_as_uint(p) | 0x80000000u);
  return (uint64_t{high} << 32) | static_cast<uint32_t>(kMaxExperts - expert);
}

// p of a key's high word (NaN for 0).
__device__ __forceinline__ float KeyProbability(uint32_t high) {
  return high == 0 ? __int_as_float(0x7FFFFFFF) : __uint_as_float(high & 0x7FFFFFFFu);
}

__device__ __forceinline__ uint64_t Max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

// One warp per token, lane l holding experts l + 32 j, j < kSlots, in
// registers (every index a compile-time constant): softmax, top_k rounds
// of a warp argmax of the keys above (the CPU's stable sort by descending
// probability, one pick at a time), then each pick written at its rank
// among the picked experts. A round's argmax is the lane's own max key,
// then two warp reductions (__reduce_max_sync, one instruction each): the
// max high word, then the max low word among the lanes holding it.
//
// Float32 as cpu::RouteTopK except the softmax sum, a per-lane then shuffle
// tree sum rather than a sequential one: it rounds differently, but it
// divides every probability alike, so it cannot change which experts are
// picked, and it cancels in p / Σ_top p up to a few ulp. expf is within 2
// ulp of the CPU's exp, so only probabilities that tie to ~1e-7 may order
// differently. A NaN logit makes the sum and so every probability NaN:
// the picks are then experts 0..k-1, as the CPU's stable sort leaves them.
template <int kSlots>
__global__ void __launch_bounds__(kTopKWarps * 32) RouteTopKKernel(const TopKArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int lane = threadIdx.x % 32;
  const int64_t token = int64_t{blockIdx.x} * kTopKWarps + threadIdx.x / 32;
  if (token >= a.tokens) return;  // whole warps
  const float* logits = a.logits + token * a.experts;

  // The logits and the scales (used at the very end) in one round trip.
  float p[kSlots], scale[kSlots];
  bool valid[kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    const int e = j * 32 + lane;
    valid[j] = e < a.experts;
    p[j] = valid[j] ? logits[e] : -INFINITY;
    scale[j] = valid[j] ? a.per_expert_scale[e] : 0.0f;
  }
  float max = p[0];
#pragma unroll
  for (int j = 1; j < kSlots; ++j) max = fmaxf(max, p[j]);
  max = WarpMax(max);
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    p[j] = valid[j] ? expf(p[j] - max) : 0.0f;
    if (valid[j]) sum += p[j];
  }
  sum = WarpSum(sum);
  uint64_t key[kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    p[j] /= sum;
    key[j] = valid[j] ? CandidateKey(p[j], j * 32 + lane) : 0;
  }

  // Bit j of `picked`: expert j * 32 + lane is one of the top k. top_sum
  // adds the picks in the order they are made, as the CPU adds them.
  uint32_t picked = 0;
  float top_sum = 0.0f;
  for (int round = 0; round < a.top_k; ++round) {
    uint64_t best[kSlots];
#pragma unroll
    for (int j = 0; j < kSlots; ++j) best[j] = key[j];
#pragma unroll
    for (int width = kSlots / 2; width > 0; width /= 2) {
#pragma unroll
      for (int j = 0; j < width; ++j) best[j] = Max64(best[j], best[j + width]);
    }
    const uint32_t own_high = static_cast<uint32_t>(best[0] >> 32);
    const uint32_t high = __reduce_max_sync(kFullWarp, own_high);
    const uint32_t low =
        __reduce_max_sync(kFullWarp, own_high == high ? static_cast<uint32_t>(best[0]) : 0u);
    // top_k <= experts: some candidate is always left, so low >= 1.
    const int expert = kMaxExperts - static_cast<int>(low);
    top_sum += KeyProbability(high);
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (j * 32 + lane == expert) {
        picked |= 1u << j;
        key[j] = 0;
      }
    }
  }

  // Experts ascend with (slot j, lane): a pick's rank is the number of picks
  // in lower slots plus those of lower lanes in its slot.
  int32_t* ids = a.ids + token * a.top_k;
  float* weights = a.weights + token * a.top_k;
  int below = 0;
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    const bool mine = (picked >> j) & 1;
    const uint32_t slot_picks = __ballot_sync(kFullWarp, mine);
    if (mine) {
      const int rank = below + __popc(slot_picks & ((1u << lane) - 1u));
      ids[rank] = j * 32 + lane;
      weights[rank] = p[j] / top_sum * scale[j];
    }
    below += __popc(slot_picks);
  }
}

// ---- GatherRows / ScatterRows ----

constexpr int kCopyThreads = 256;

struct RowCopyArgs {
  const uint4* src;
  const int32_t* index;  // [count]
  uint4* dst;
  int64_t runs_per_row;  // width / 8: 16-byte runs
  int64_t runs;          // count * runs_per_row
};

// One thread per 16-byte run. Prefill only, often several waves: dependents
// may launch once a block is done (device_primitives.cuh).
template <bool kScatter>
__global__ void __launch_bounds__(kCopyThreads) CopyRowsKernel(const RowCopyArgs a) {
  WaitForPredecessor();
  const int64_t run = int64_t{blockIdx.x} * kCopyThreads + threadIdx.x;
  if (run < a.runs) {
    const int64_t row = run / a.runs_per_row, column = run - row * a.runs_per_row;
    const int64_t indexed = a.index[row];
    const int64_t src_row = kScatter ? row : indexed, dst_row = kScatter ? indexed : row;
    a.dst[dst_row * a.runs_per_row + column] = a.src[src_row * a.runs_per_row + column];
  }
  AllowDependents();
}

absl::Status CopyRows(const char* op, bool scatter, const __nv_bfloat16* src, const int32_t* index,
                      int64_t count, int width, __nv_bfloat16* dst, cudaStream_t stream) {
  if (src == nullptr || index == nullptr || dst == nullptr || !Aligned(src, 16) ||
      !Aligned(index, 4) || !Aligned(dst, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: expected non-null src, index and dst, src and dst 16-byte aligned, but got src %p, "
        "index %p, dst %p",
        op, src, index, dst));
  }
  if (count < 0 || width <= 0 || width % kVectorWidth != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected count >= 0 and width a positive multiple of %d, but got "
                        "count %d, width %d",
                        op, kVectorWidth, count, width));
  }
  if (count == 0) return absl::OkStatus();
  const int64_t runs_per_row = width / kVectorWidth;
  const int64_t blocks = (count * runs_per_row + kCopyThreads - 1) / kCopyThreads;
  if (blocks > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: count %d x width %d is more than one launch covers", op, count, width));
  }
  const RowCopyArgs args{reinterpret_cast<const uint4*>(src), index, reinterpret_cast<uint4*>(dst),
                         runs_per_row, count * runs_per_row};
  const auto kernel = scatter ? CopyRowsKernel<true> : CopyRowsKernel<false>;
  return LaunchKernel(kernel, static_cast<int>(blocks), kCopyThreads, 0, stream,
                      /*overlap=*/true, args);
}

// ---- CombineExperts ----

// Threads of a combine block: one per 8-element run up to this many, each
// then taking kRuns = 1, 2 or 4 runs (hidden <= 4096, 8192, 16384).
constexpr int kCombineThreads = 512;
constexpr int kCombineMaxRuns = 4;
constexpr int kCombineMaxHidden = kCombineThreads * kVectorWidth * kCombineMaxRuns;
// 16-byte expert-output loads a thread has in flight at once: top_k 8 with
// one run is a single round trip for everything the block reads.
constexpr int kCombineLoads = 8;

struct CombineArgs {
  const __nv_bfloat16* dense;        // [tokens, hidden]
  const __nv_bfloat16* expert_out;   // [tokens, top_k, hidden]
  const float* weights;              // [tokens, top_k]
  const __nv_bfloat16* dense_norm;   // [hidden]
  const __nv_bfloat16* expert_norm;  // [hidden]
  __nv_bfloat16* out;                // [tokens, hidden], may be dense
  int top_k;
  int hidden;
  float eps;
};

// The sums of x and y over the block (blockDim.x a multiple of 32), the warp
// sums added in one fixed order; every thread gets the same values.
__device__ __forceinline__ float2 BlockSum2(float x, float y) {
  __shared__ float2 warp_sums[kCombineThreads / 32];
  x = WarpSum(x);
  y = WarpSum(y);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = make_float2(x, y);
  __syncthreads();
  const int warps = blockDim.x / 32;
  float2 total = make_float2(0.0f, 0.0f);
#pragma unroll
  for (int w = 0; w < kCombineThreads / 32; ++w) {
    if (w < warps) {
      total.x += warp_sums[w].x;
      total.y += warp_sums[w].y;
    }
  }
  return total;
}

// v[i] = the 8 bf16 of `raw` as float32 (as LoadBf16).
__device__ __forceinline__ void UnpackBf16(uint4 raw, float (&v)[kVectorWidth]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(words[i] << 16);
    v[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}

__device__ __forceinline__ uint4 LoadRaw(const __nv_bfloat16* p) {
  return *reinterpret_cast<const uint4*>(p);
}

// One block per token; thread i takes the runs i, i + blockDim.x, ... (at
// most kRuns). All the block's loads are issued before any math: dense and
// both norm weights (kept as raw bf16 until the end), then the expert
// outputs kSlotBatch slots at a time (all 8 of top 8 for one run). Each
// thread stores exactly the elements it loaded, so out may be dense.
template <int kRuns>
__global__ void __launch_bounds__(kCombineThreads) CombineExpertsKernel(const CombineArgs a) {
  WaitForPredecessor();
  AllowDependents();
  constexpr int kSlotBatch = kCombineLoads / kRuns;
  const int64_t token = blockIdx.x;
  const int step = blockDim.x * kVectorWidth;
  const __nv_bfloat16* dense_row = a.dense + token * a.hidden;
  int column[kRuns];
  bool in_row[kRuns];
  uint4 dense_raw[kRuns], dense_norm[kRuns], expert_norm[kRuns];
#pragma unroll
  for (int run = 0; run < kRuns; ++run) {
    column[run] = threadIdx.x * kVectorWidth + run * step;
    in_row[run] = column[run] < a.hidden;
    if (in_row[run]) {
      dense_raw[run] = LoadRaw(dense_row + column[run]);
      dense_norm[run] = LoadRaw(a.dense_norm + column[run]);
      expert_norm[run] = LoadRaw(a.expert_norm + column[run]);
    }
  }
  // Σ_j weight_j y_j in j order (ascending expert), as cpu_model adds them.
  float experts[kRuns][kVectorWidth];
#pragma unroll
  for (int run = 0; run < kRuns; ++run) {
#pragma unroll
    for (int k = 0; k < kVectorWidth; ++k) experts[run][k] = 0.0f;
  }
  for (int j0 = 0; j0 < a.top_k; j0 += kSlotBatch) {
    float weight[kSlotBatch];
    uint4 y[kSlotBatch][kRuns];
#pragma unroll
    for (int b = 0; b < kSlotBatch; ++b) {
      const int64_t slot = token * a.top_k + j0 + b;
      const bool in_slots = j0 + b < a.top_k;
      weight[b] = in_slots ? a.weights[slot] : 0.0f;
#pragma unroll
      for (int run = 0; run < kRuns; ++run) {
        if (in_slots && in_row[run])
          y[b][run] = LoadRaw(a.expert_out + slot * a.hidden + column[run]);
      }
    }
#pragma unroll
    for (int b = 0; b < kSlotBatch; ++b) {
      if (j0 + b >= a.top_k) break;
#pragma unroll
      for (int run = 0; run < kRuns; ++run) {
        if (!in_row[run]) continue;
        float v[kVectorWidth];
        UnpackBf16(y[b][run], v);
#pragma unroll
        for (int k = 0; k < kVectorWidth; ++k) {
          experts[run][k] = fmaf(v[k], weight[b], experts[run][k]);
        }
      }
    }
  }
  float dense[kRuns][kVectorWidth];
  float dense_squares = 0.0f, expert_squares = 0.0f;
#pragma unroll
  for (int run = 0; run < kRuns; ++run) {
    if (!in_row[run]) continue;
    UnpackBf16(dense_raw[run], dense[run]);
    dense_squares += SumOfSquares<kVectorWidth>(dense[run]);
    expert_squares += SumOfSquares<kVectorWidth>(experts[run]);
  }
  const float2 sums = BlockSum2(dense_squares, expert_squares);
  const float dense_scale = InverseRms(sums.x, a.hidden, a.eps);
  const float expert_scale = InverseRms(sums.y, a.hidden, a.eps);
#pragma unroll
  for (int run = 0; run < kRuns; ++run) {
    if (!in_row[run]) continue;
    // x * inv_rms * weight, rounded in that order as cpu::RmsNorm (ScaleRun).
    float dense_weight[kVectorWidth], expert_weight[kVectorWidth], sum[kVectorWidth];
    UnpackBf16(dense_norm[run], dense_weight);
    UnpackBf16(expert_norm[run], expert_weight);
#pragma unroll
    for (int k = 0; k < kVectorWidth; ++k) {
      sum[k] = dense[run][k] * dense_scale * dense_weight[k] +
               experts[run][k] * expert_scale * expert_weight[k];
    }
    StoreBf16<kVectorWidth>(a.out + token * a.hidden + column[run], sum);
  }
}

}  // namespace

absl::Status RouterLogits(const float* r, int64_t tokens, int hidden, const float* scale,
                          float root, float eps, const float* proj, int experts, float* logits,
                          cudaStream_t stream) {
  if (r == nullptr || scale == nullptr || proj == nullptr || logits == nullptr || !Aligned(r, 16) ||
      !Aligned(scale, 16) || !Aligned(proj, 16) || !Aligned(logits, 4)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RouterLogits: expected non-null r, scale, proj (16-byte aligned) and logits, but got "
        "r %p, scale %p, proj %p, logits %p",
        r, scale, proj, logits));
  }
  constexpr int kMaxRouterExperts = 65535;  // gridDim.y of the decode variant
  if (tokens < 0 || tokens > INT_MAX || hidden <= 0 || hidden % 4 != 0 || experts <= 0 ||
      experts > kMaxRouterExperts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RouterLogits: expected 0 <= tokens <= %d, hidden a positive multiple of 4 and 0 < "
        "experts <= %d, but got tokens %d, hidden %d, experts %d",
        INT_MAX, kMaxRouterExperts, tokens, hidden, experts));
  }
  if (!(eps >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("RouterLogits: eps must be >= 0, got %g", eps));
  }
  if (tokens == 0) return absl::OkStatus();
  const RouterArgs args{r, scale, proj, logits, tokens, hidden, experts, root, eps};
  if (tokens < kRouterTileMinTokens) {
    const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(experts));
    return LaunchKernel(RouterLogitsKernel<1, 1, kRouterSteps>, grid, kRouterThreads, 0, stream,
                        /*overlap=*/true, args);
  }
  const dim3 grid(static_cast<unsigned>((tokens + kRouterTileTokens - 1) / kRouterTileTokens),
                  static_cast<unsigned>((experts + kRouterTileExperts - 1) / kRouterTileExperts));
  return LaunchKernel(RouterLogitsKernel<kRouterTileTokens, kRouterTileExperts, 1>, grid,
                      kRouterThreads, 0, stream, /*overlap=*/true, args);
}

absl::Status RouteTopK(const float* logits, int64_t tokens, int experts,
                       const float* per_expert_scale, int top_k, int32_t* ids, float* weights,
                       cudaStream_t stream) {
  if (logits == nullptr || per_expert_scale == nullptr || ids == nullptr || weights == nullptr ||
      !Aligned(logits, 4) || !Aligned(per_expert_scale, 4) || !Aligned(ids, 4) ||
      !Aligned(weights, 4)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RouteTopK: expected non-null aligned logits, per_expert_scale, ids and weights, but got "
        "%p, %p, %p, %p",
        logits, per_expert_scale, ids, weights));
  }
  if (tokens < 0 || top_k < 1 || top_k > experts || experts > kMaxExperts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RouteTopK: expected tokens >= 0 and 1 <= top_k <= experts <= %d, but got tokens %d, "
        "top_k %d, experts %d",
        kMaxExperts, tokens, top_k, experts));
  }
  if (tokens == 0) return absl::OkStatus();
  const int64_t blocks = (tokens + kTopKWarps - 1) / kTopKWarps;
  if (blocks > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("RouteTopK: %d tokens is more than one launch covers", tokens));
  }
  // Experts per lane: 4 covers up to 128 (26B-A4B), 8 up to kMaxExperts.
  const auto kernel = experts <= 128 ? RouteTopKKernel<4> : RouteTopKKernel<kMaxExperts / 32>;
  return LaunchKernel(kernel, static_cast<int>(blocks), kTopKWarps * 32, 0, stream,
                      /*overlap=*/true,
                      TopKArgs{logits, per_expert_scale, ids, weights, tokens, experts, top_k});
}

absl::Status GatherRows(const __nv_bfloat16* src, const int32_t* index, int64_t count, int width,
                        __nv_bfloat16* dst, cudaStream_t stream) {
  return CopyRows("GatherRows", /*scatter=*/false, src, index, count, width, dst, stream);
}

absl::Status ScatterRows(const __nv_bfloat16* src, const int32_t* index, int64_t count, int width,
                         __nv_bfloat16* dst, cudaStream_t stream) {
  return CopyRows("ScatterRows", /*scatter=*/true, src, index, count, width, dst, stream);
}

absl::Status CombineExperts(const __nv_bfloat16* dense, const __nv_bfloat16* expert_out,
                            const float* weights, int64_t tokens, int top_k, int hidden,
                            const __nv_bfloat16* dense_norm, const __nv_bfloat16* expert_norm,
                            float eps, __nv_bfloat16* out, cudaStream_t stream) {
  if (dense == nullptr || expert_out == nullptr || weights == nullptr || dense_norm == nullptr ||
      expert_norm == nullptr || out == nullptr || !Aligned(dense, 16) || !Aligned(expert_out, 16) ||
      !Aligned(weights, 4) || !Aligned(dense_norm, 16) || !Aligned(expert_norm, 16) ||
      !Aligned(out, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CombineExperts: expected non-null dense, expert_out, weights, dense_norm, expert_norm "
        "and out, the bf16 ones 16-byte aligned, but got %p, %p, %p, %p, %p, %p",
        dense, expert_out, weights, dense_norm, expert_norm, out));
  }
  if (tokens < 0 || tokens > INT_MAX || top_k < 1 || hidden <= 0 || hidden % kVectorWidth != 0 ||
      hidden > kCombineMaxHidden) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CombineExperts: expected 0 <= tokens <= %d, top_k >= 1 and hidden a positive multiple "
        "of %d up to %d, but got tokens %d, top_k %d, hidden %d",
        INT_MAX, kVectorWidth, kCombineMaxHidden, tokens, top_k, hidden));
  }
  if (!(eps >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CombineExperts: eps must be >= 0, got %g", eps));
  }
  if (tokens == 0) return absl::OkStatus();
  const int runs = hidden / kVectorWidth;
  const int threads = std::min(kCombineThreads, (runs + 31) / 32 * 32);
  const int runs_per_thread = (runs + kCombineThreads - 1) / kCombineThreads;
  const auto kernel = runs_per_thread == 1   ? CombineExpertsKernel<1>
                      : runs_per_thread == 2 ? CombineExpertsKernel<2>
                                             : CombineExpertsKernel<kCombineMaxRuns>;
  return LaunchKernel(
      kernel, static_cast<int>(tokens), threads, 0, stream, /*overlap=*/true,
      CombineArgs{dense, expert_out, weights, dense_norm, expert_norm, out, top_k, hidden, eps});
}

}  // namespace gquant::cuda
