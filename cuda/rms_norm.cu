#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "device_primitives.cuh"
#include "launch.cuh"
#include "rms_norm.cuh"
#include "rope_rotation.cuh"
#include "row_access.cuh"

namespace gquant::cuda {
namespace {

// Row kernels use one thread per vector access of the row, up to this many,
// so a decode row (one block) takes a single round trip to memory.
constexpr int kMaxRowThreads = 1024;

// The sum of `v` over the block (blockDim.x a multiple of 32); every thread
// gets the same value, the warp sums being added in one fixed order.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float warp_sums[kMaxRowThreads / 32];
  v = WarpSum(v);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += warp_sums[w];
  __syncthreads();  // before a second call overwrites warp_sums
  return total;
}

struct NormArgs {
  const float* x;               // [rows, dim]
  const __nv_bfloat16* weight;  // [dim] or null
  __nv_bfloat16* y;             // [rows, dim]
  int dim;
  float eps;
};

// One block per row; thread i handles the runs i, i + blockDim.x, ...
template <int kWidth>
__global__ void __launch_bounds__(kMaxRowThreads) RmsNormKernel(const NormArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t offset = int64_t{blockIdx.x} * a.dim;
  const int step = blockDim.x * kWidth;
  float sum = 0.0f;
  for (int i = threadIdx.x * kWidth; i < a.dim; i += step) {
    float v[kWidth];
    LoadF32<kWidth>(a.x + offset + i, v);
    sum += SumOfSquares<kWidth>(v);
  }
  const float scale = InverseRms(BlockSum(sum), a.dim, a.eps);
  for (int i = threadIdx.x * kWidth; i < a.dim; i += step) {
    float v[kWidth];
    LoadF32<kWidth>(a.x + offset + i, v);
    ScaleRun<kWidth>(v, scale, OffsetOrNull(a.weight, i));
    StoreBf16<kWidth>(a.y + offset + i, v);
  }
}

struct AddArgs {
  float* residual;                    // [rows, dim]
  const __nv_bfloat16* delta;         // [rows, dim]
  const __nv_bfloat16* delta_weight;  // [dim] or null
  const float* scalar;                // one float or null
  const __nv_bfloat16* next_weight;   // [dim] or null
  __nv_bfloat16* y;                   // [rows, dim], or null: no second norm
  int dim;
  float eps;
};

// One block per row. Pass 1 reads delta for its norm, pass 2 updates the
// residual (and sums its squares), pass 3 (only with y) normalizes the new
// residual; each thread re-reads only the elements it wrote itself.
template <int kWidth>
__global__ void __launch_bounds__(kMaxRowThreads) AddNormalizedKernel(const AddArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t offset = int64_t{blockIdx.x} * a.dim;
  float* residual = a.residual + offset;
  const __nv_bfloat16* delta = a.delta + offset;
  const int step = blockDim.x * kWidth;
  float delta_sum = 0.0f;
  for (int i = threadIdx.x * kWidth; i < a.dim; i += step) {
    float d[kWidth];
    LoadBf16<kWidth>(delta + i, d);
    delta_sum += SumOfSquares<kWidth>(d);
  }
  const float delta_scale = InverseRms(BlockSum(delta_sum), a.dim, a.eps);
  const float multiplier = a.scalar == nullptr ? 1.0f : *a.scalar;  // * 1 is exact
  float next_sum = 0.0f;
  for (int i = threadIdx.x * kWidth; i < a.dim; i += step) {
    float d[kWidth], r[kWidth];
    LoadBf16<kWidth>(delta + i, d);
    ScaleRun<kWidth>(d, delta_scale, OffsetOrNull(a.delta_weight, i));
    LoadF32<kWidth>(residual + i, r);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) r[k] = (r[k] + d[k]) * multiplier;
    next_sum += SumOfSquares<kWidth>(r);
    StoreF32<kWidth>(residual + i, r);
  }
  if (a.y == nullptr) return;  // uniform over the grid
  const float next_scale = InverseRms(BlockSum(next_sum), a.dim, a.eps);
  for (int i = threadIdx.x * kWidth; i < a.dim; i += step) {
    float r[kWidth];
    LoadF32<kWidth>(residual + i, r);
    ScaleRun<kWidth>(r, next_scale, OffsetOrNull(a.next_weight, i));
    StoreBf16<kWidth>(a.y + offset + i, r);
  }
}

struct HeadArgs {
  __nv_bfloat16* x;  // [vectors, head_dim]
  int64_t vectors;   // tokens * heads
  int heads;
  int head_dim;
  const __nv_bfloat16* weight;  // [head_dim] or null
  float eps;
  const float* inv_freq;  // [head_dim / 2], or null: no RoPE
  const int64_t* first_position;
};

// One warp per head vector. The warp sum orders every lane's reads of pass
// 1 before any write of pass 2, which may touch other lanes' elements.
template <int kWidth>
__global__ void __launch_bounds__(kHeadsPerBlock * 32) HeadNormRopeKernel(const HeadArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t vector = int64_t{blockIdx.x} * kHeadsPerBlock + threadIdx.x / 32;
  if (vector >= a.vectors) return;  // whole warps
  const int lane = threadIdx.x % 32;
  __nv_bfloat16* head = a.x + vector * a.head_dim;
  const float scale = HeadInverseRms<kWidth>(head, a.head_dim, a.eps, lane);
  const float position =
      a.inv_freq == nullptr ? 0.0f : RopePosition(a.first_position, vector / a.heads);
  ScaleAndRotateHead<kWidth>(head, a.head_dim, scale, a.weight, a.inv_freq, position, lane);
}

// InvalidArgument unless rows >= 0 fits the grid, dim > 0 and eps >= 0.
absl::Status CheckRows(const char* op, int64_t rows, int dim, float eps) {
  if (rows < 0 || rows > INT_MAX || dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected 0 <= rows <= %d and dim > 0, but got rows %d, dim %d", op,
                        INT_MAX, rows, dim));
  }
  if (!(eps >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: eps must be >= 0, got %g", op, eps));
  }
  return absl::OkStatus();
}

// Threads of a row kernel: one per vector access of the row, in whole warps,
// at most kMaxRowThreads.
int RowThreads(int dim, int width) {
  const int runs = (dim + width - 1) / width;
  return std::min(kMaxRowThreads, (runs + 31) / 32 * 32);
}

absl::Status LaunchAddNormalized(const char* op, const AddArgs& args, int64_t rows,
                                 cudaStream_t stream) {
  if (absl::Status s = CheckRows(op, rows, args.dim, args.eps); !s.ok()) return s;
  if (args.residual == nullptr || args.delta == nullptr || !Aligned(args.residual, 4) ||
      !Aligned(args.delta, 2) || !Aligned(args.delta_weight, 2) || !Aligned(args.scalar, 4) ||
      !Aligned(args.next_weight, 2) || !Aligned(args.y, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: expected non-null residual and delta and aligned pointers, but got residual %p, "
        "delta %p, delta_weight %p, scalar %p, next_weight %p, y %p",
        op, args.residual, args.delta, args.delta_weight, args.scalar, args.next_weight, args.y));
  }
  if (rows == 0) return absl::OkStatus();
  const bool vectorized = args.dim % kVectorWidth == 0 && Aligned(args.residual, 16) &&
                          Aligned(args.delta, 16) && Aligned(args.delta_weight, 16) &&
                          Aligned(args.next_weight, 16) && Aligned(args.y, 16);
  const int width = vectorized ? kVectorWidth : 1;
  const auto kernel = vectorized ? AddNormalizedKernel<kVectorWidth> : AddNormalizedKernel<1>;
  return LaunchKernel(kernel, static_cast<int>(rows), RowThreads(args.dim, width), 0, stream,
                      /*overlap=*/true, args);
}

}  // namespace

absl::Status RmsNorm(const float* x, int64_t rows, int dim, const __nv_bfloat16* weight, float eps,
                     __nv_bfloat16* y, cudaStream_t stream) {
  if (absl::Status s = CheckRows("RmsNorm", rows, dim, eps); !s.ok()) return s;
  if (x == nullptr || y == nullptr || !Aligned(x, 4) || !Aligned(weight, 2) || !Aligned(y, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RmsNorm: expected non-null aligned x and y, but got x %p, weight %p, y %p", x, weight, y));
  }
  if (rows == 0) return absl::OkStatus();
  const bool vectorized =
      dim % kVectorWidth == 0 && Aligned(x, 16) && Aligned(weight, 16) && Aligned(y, 16);
  const int width = vectorized ? kVectorWidth : 1;
  const auto kernel = vectorized ? RmsNormKernel<kVectorWidth> : RmsNormKernel<1>;
  return LaunchKernel(kernel, static_cast<int>(rows), RowThreads(dim, width), 0, stream,
                      /*overlap=*/true, NormArgs{x, weight, y, dim, eps});
}

absl::Status AddNormalized(float* residual, const __nv_bfloat16* delta, int64_t rows, int dim,
                           const __nv_bfloat16* delta_weight, float eps, const float* scalar,
                           cudaStream_t stream) {
  return LaunchAddNormalized(
      "AddNormalized", AddArgs{residual, delta, delta_weight, scalar, nullptr, nullptr, dim, eps},
      rows, stream);
}

absl::Status AddNormalizedThenNorm(float* residual, const __nv_bfloat16* delta, int64_t rows,
                                   int dim, const __nv_bfloat16* delta_weight, float eps,
                                   const float* scalar, const __nv_bfloat16* next_weight,
                                   __nv_bfloat16* y, cudaStream_t stream) {
  if (y == nullptr) {
    return absl::InvalidArgumentError("AddNormalizedThenNorm: y must be non-null");
  }
  return LaunchAddNormalized(
      "AddNormalizedThenNorm",
      AddArgs{residual, delta, delta_weight, scalar, next_weight, y, dim, eps}, rows, stream);
}

absl::Status HeadNormRope(__nv_bfloat16* x, int64_t tokens, int heads, int head_dim,
                          const __nv_bfloat16* weight, float eps, const float* inv_freq,
                          const int64_t* first_position, cudaStream_t stream) {
  if (absl::Status s =
          CheckHeads("HeadNormRope", x, tokens, heads, head_dim, inv_freq, first_position);
      !s.ok()) {
    return s;
  }
  if (!Aligned(weight, 2) || !(eps >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "HeadNormRope: expected an aligned weight and eps >= 0, but got %p and %g", weight, eps));
  }
  if (tokens == 0) return absl::OkStatus();
  const HeadArgs args{x, tokens * heads, heads, head_dim, weight, eps, inv_freq, first_position};
  const int blocks = static_cast<int>((args.vectors + kHeadsPerBlock - 1) / kHeadsPerBlock);
  const auto kernel = HeadsVectorizable(x, head_dim, weight, inv_freq)
                          ? HeadNormRopeKernel<kVectorWidth>
                          : HeadNormRopeKernel<1>;
  return LaunchKernel(kernel, blocks, kHeadsPerBlock * 32, 0, stream, /*overlap=*/true, args);
}

}  // namespace gquant::cuda
