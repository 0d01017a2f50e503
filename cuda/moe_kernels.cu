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

// Experts per block (a warp each). The warps share nothing, so this only
// trades blocks against L1 reuse of the token's row.
constexpr int kRouterWarps = 4;
// float4s of a projection row each lane keeps in flight: hidden 2816 is 22
// per lane, so a decode step's whole 1.4 MB is requested at once.
constexpr int kRouterChunk = 24;

struct RouterArgs {
  const float* r;      // [tokens, hidden]
  const float* scale;  // [hidden]
  const float* proj;   // [experts, hidden]
  float* logits;       // [tokens, experts]
  int hidden;
  int experts;
  float root;
  float eps;
};

// The next kRouterChunk float4s of the lane (quads base + 32 c + lane).
__device__ __forceinline__ void LoadProjectionChunk(const float4* row, int base, int quads,
                                                    int lane, float4 (&p)[kRouterChunk]) {
#pragma unroll
  for (int c = 0; c < kRouterChunk; ++c) {
    const int q = base + c * 32 + lane;
    if (q < quads) p[c] = row[q];
  }
}

// cpu_model's routed input: RmsNorm(r) without weight, then * scale * root,
// rounded in that order.
__device__ __forceinline__ float Routed(float r, float inv_rms, float scale, float root) {
  return r * inv_rms * scale * root;
}

// Grid (tokens, experts / kRouterWarps); warp w of a block computes one
// logit. Every warp sums the squares of the token's row itself (the row is
// L2/L1-resident; the same data in the same order, so every warp gets the
// same inv_rms) while its first projection chunk is in flight, so no warp
// waits on another and there is no shared-memory copy of the row.
__global__ void __launch_bounds__(kRouterWarps * 32) RouterLogitsKernel(const RouterArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int lane = threadIdx.x % 32;
  const int expert = blockIdx.y * kRouterWarps + threadIdx.x / 32;
  if (expert >= a.experts) return;  // whole warps
  const int64_t token = blockIdx.x;
  const int quads = a.hidden / 4;
  const float4* r = reinterpret_cast<const float4*>(a.r + token * a.hidden);
  const float4* scale = reinterpret_cast<const float4*>(a.scale);
  const float4* proj = reinterpret_cast<const float4*>(a.proj + int64_t{expert} * a.hidden);

  float4 p[kRouterChunk];
  LoadProjectionChunk(proj, 0, quads, lane, p);
  float squares = 0.0f;
#pragma unroll 8  // 8 L2 reads in flight per lane
  for (int q = lane; q < quads; q += 32) {
    const float4 v = r[q];
    squares += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  const float inv_rms = InverseRms(WarpSum(squares), a.hidden, a.eps);

  float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int base = 0;;) {
#pragma unroll
    for (int c = 0; c < kRouterChunk; ++c) {
      const int q = base + c * 32 + lane;
      if (q < quads) {
        const float4 v = r[q], s = scale[q];
        sum.x = fmaf(Routed(v.x, inv_rms, s.x, a.root), p[c].x, sum.x);
        sum.y = fmaf(Routed(v.y, inv_rms, s.y, a.root), p[c].y, sum.y);
        sum.z = fmaf(Routed(v.z, inv_rms, s.z, a.root), p[c].z, sum.z);
        sum.w = fmaf(Routed(v.w, inv_rms, s.w, a.root), p[c].w, sum.w);
      }
    }
    base += kRouterChunk * 32;
    if (base >= quads) break;  // uniform over the warp
    LoadProjectionChunk(proj, base, quads, lane, p);
  }
  const float logit = WarpSum((sum.x + sum.y) + (sum.z + sum.w));
  if (lane == 0) a.logits[token * a.experts + expert] = logit;
}

// ---- RouteTopK ----

constexpr int kTopKWarps = 4;                    // tokens per block
constexpr int kSlotsPerLane = kMaxExperts / 32;  // lane l holds experts l + 32 j

struct TopKArgs {
  const float* logits;  // [tokens, experts]
  const float* per_expert_scale;
  int32_t* ids;    // [tokens, top_k]
  float* weights;  // [tokens, top_k]
  int64_t tokens;
  int experts;
  int top_k;
};

// Whether candidate a (probability pa of expert ea) is picked before b:
// the larger probability, NaN below every number, ties to the lower expert;
// expert -1 (no candidate) after everything. A strict total order on
// distinct experts, so every lane of a butterfly reduction agrees.
__device__ __forceinline__ bool PickedBefore(float pa, int ea, float pb, int eb) {
  if (ea < 0 || eb < 0) return eb < 0 && ea >= 0;
  const bool a_nan = isnan(pa), b_nan = isnan(pb);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && pa != pb) return pa > pb;
  return ea < eb;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  }
  return v;
}

// One warp per token: softmax in registers, top_k rounds of a warp argmax
// (the CPU's stable sort by descending probability, one pick at a time),
// then each pick written at its rank among the picked experts.
//
// Float32 as cpu::RouteTopK except the softmax sum, a per-lane then shuffle
// tree sum rather than a sequential one: it rounds differently, but it
// divides every probability alike, so it cannot change which experts are
// picked, and it cancels in p / Σ_top p up to a few ulp. expf is within 2
// ulp of the CPU's exp, so only probabilities that tie to ~1e-7 may order
// differently. A NaN logit makes the sum and so every probability NaN:
// the picks are then experts 0..k-1, as the CPU's stable sort leaves them.
__global__ void __launch_bounds__(kTopKWarps * 32) RouteTopKKernel(const TopKArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int lane = threadIdx.x % 32;
  const int64_t token = int64_t{blockIdx.x} * kTopKWarps + threadIdx.x / 32;
  if (token >= a.tokens) return;  // whole warps
  const float* logits = a.logits + token * a.experts;

  float p[kSlotsPerLane];
  float max = -INFINITY;
#pragma unroll
  for (int j = 0; j < kSlotsPerLane; ++j) {
    const int e = j * 32 + lane;
    p[j] = e < a.experts ? logits[e] : 0.0f;
    if (e < a.experts) max = fmaxf(max, p[j]);
  }
  max = WarpMax(max);
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kSlotsPerLane; ++j) {
    if (j * 32 + lane < a.experts) sum += (p[j] = expf(p[j] - max));
  }
  sum = WarpSum(sum);
#pragma unroll
  for (int j = 0; j < kSlotsPerLane; ++j) p[j] /= sum;

  // Bit j of `picked`: expert j * 32 + lane is one of the top k. top_sum
  // adds the picks in the order they are made, as the CPU adds them.
  uint32_t picked = 0;
  float top_sum = 0.0f;
  for (int round = 0; round < a.top_k; ++round) {
    float best_p = 0.0f;
    int best = -1;
#pragma unroll
    for (int j = 0; j < kSlotsPerLane; ++j) {
      const int e = j * 32 + lane;
      if (e < a.experts && !((picked >> j) & 1) && PickedBefore(p[j], e, best_p, best)) {
        best_p = p[j];
        best = e;
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other_p = __shfl_xor_sync(kFullWarp, best_p, offset);
      const int other = __shfl_xor_sync(kFullWarp, best, offset);
      if (PickedBefore(other_p, other, best_p, best)) {
        best_p = other_p;
        best = other;
      }
    }
    // top_k <= experts: some candidate is always left, so best >= 0.
    top_sum += best_p;
    if (best % 32 == lane) picked |= 1u << (best / 32);
  }

  // Experts ascend with (slot j, lane): a pick's rank is the number of picks
  // in lower slots plus those of lower lanes in its slot.
  int32_t* ids = a.ids + token * a.top_k;
  float* weights = a.weights + token * a.top_k;
  int below = 0;
#pragma unroll
  for (int j = 0; j < kSlotsPerLane; ++j) {
    const bool mine = (picked >> j) & 1;
    const uint32_t slot_picks = __ballot_sync(kFullWarp, mine);
    if (mine) {
      const int rank = below + __popc(slot_picks & ((1u << lane) - 1u));
      const int e = j * 32 + lane;
      ids[rank] = e;
      weights[rank] = p[j] / top_sum * a.per_expert_scale[e];
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

// Threads of a combine block: one per 8-element run, at most this many, each
// holding at most kCombineRuns runs of both sums in registers (64 floats:
// 1024 threads would cap a thread at 64 registers and spill them).
constexpr int kCombineThreads = 512;
constexpr int kCombineRuns = 4;
constexpr int kCombineMaxHidden = kCombineThreads * kVectorWidth * kCombineRuns;

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
  float2 total = make_float2(0.0f, 0.0f);
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
    total.x += warp_sums[w].x;
    total.y += warp_sums[w].y;
  }
  return total;
}

// One block per token. Each thread keeps its runs of dense and of the
// expert sum in registers from the loads to the store, and stores exactly
// the elements it loaded, so out may be dense.
__global__ void __launch_bounds__(kCombineThreads) CombineExpertsKernel(const CombineArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t token = blockIdx.x;
  const int step = blockDim.x * kVectorWidth;
  const int first = threadIdx.x * kVectorWidth;
  float dense[kCombineRuns][kVectorWidth], experts[kCombineRuns][kVectorWidth];
#pragma unroll
  for (int run = 0; run < kCombineRuns; ++run) {
    const int i = first + run * step;
    if (i < a.hidden) LoadBf16<kVectorWidth>(a.dense + token * a.hidden + i, dense[run]);
#pragma unroll
    for (int k = 0; k < kVectorWidth; ++k) experts[run][k] = 0.0f;
  }
  // Σ_j weight_j y_j in j order (ascending expert), as cpu_model adds them.
  for (int j = 0; j < a.top_k; ++j) {
    const int64_t slot = token * a.top_k + j;
    const float weight = a.weights[slot];
    const __nv_bfloat16* y = a.expert_out + slot * a.hidden;
#pragma unroll
    for (int run = 0; run < kCombineRuns; ++run) {
      const int i = first + run * step;
      if (i >= a.hidden) continue;
      float v[kVectorWidth];
      LoadBf16<kVectorWidth>(y + i, v);
#pragma unroll
      for (int k = 0; k < kVectorWidth; ++k) experts[run][k] += v[k] * weight;
    }
  }
  float dense_squares = 0.0f, expert_squares = 0.0f;
#pragma unroll
  for (int run = 0; run < kCombineRuns; ++run) {
    if (first + run * step >= a.hidden) continue;
    dense_squares += SumOfSquares<kVectorWidth>(dense[run]);
    expert_squares += SumOfSquares<kVectorWidth>(experts[run]);
  }
  const float2 sums = BlockSum2(dense_squares, expert_squares);
  const float dense_scale = InverseRms(sums.x, a.hidden, a.eps);
  const float expert_scale = InverseRms(sums.y, a.hidden, a.eps);
#pragma unroll
  for (int run = 0; run < kCombineRuns; ++run) {
    const int i = first + run * step;
    if (i >= a.hidden) continue;
    ScaleRun<kVectorWidth>(dense[run], dense_scale, a.dense_norm + i);
    ScaleRun<kVectorWidth>(experts[run], expert_scale, a.expert_norm + i);
#pragma unroll
    for (int k = 0; k < kVectorWidth; ++k) dense[run][k] += experts[run][k];
    StoreBf16<kVectorWidth>(a.out + token * a.hidden + i, dense[run]);
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
  constexpr int kMaxRouterExperts = 65535 * kRouterWarps;  // gridDim.y
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
  const dim3 grid(static_cast<unsigned>(tokens),
                  static_cast<unsigned>((experts + kRouterWarps - 1) / kRouterWarps));
  return LaunchKernel(RouterLogitsKernel, grid, kRouterWarps * 32, 0, stream, /*overlap=*/true,
                      RouterArgs{r, scale, proj, logits, hidden, experts, root, eps});
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
  return LaunchKernel(RouteTopKKernel, static_cast<int>(blocks), kTopKWarps * 32, 0, stream,
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
  return LaunchKernel(
      CombineExpertsKernel, static_cast<int>(tokens), threads, 0, stream, /*overlap=*/true,
      CombineArgs{dense, expert_out, weights, dense_norm, expert_norm, out, top_k, hidden, eps});
}

}  // namespace gquant::cuda
