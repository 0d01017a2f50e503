#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "add_normalized_row.cuh"
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
  ResidualAddNorm row;  // of row 0: residual, residual_out (the same) and delta advance by dim
  __nv_bfloat16* y;     // [rows, dim], or null: no second norm
  int dim;
};

// One block per row (AddNormalizedRow, add_normalized_row.cuh).
template <int kWidth>
__global__ void __launch_bounds__(kMaxRowThreads) AddNormalizedKernel(const AddArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t offset = int64_t{blockIdx.x} * a.dim;
  ResidualAddNorm row = a.row;
  row.residual += offset;
  row.residual_out += offset;
  row.delta += offset;
  AddNormalizedRow<kWidth>(row, a.dim, a.y == nullptr ? nullptr : a.y + offset);
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

absl::Status LaunchAddNormalized(const char* op, const ResidualAddNorm& row, __nv_bfloat16* y,
                                 int64_t rows, int dim, cudaStream_t stream) {
  if (absl::Status s = CheckRows(op, rows, dim, row.eps); !s.ok()) return s;
  if (row.residual == nullptr || row.delta == nullptr || !Aligned(row.residual, 4) ||
      !Aligned(row.delta, 2) || !Aligned(row.delta_weight, 2) || !Aligned(row.scalar, 4) ||
      !Aligned(row.next_weight, 2) || !Aligned(y, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: expected non-null residual and delta and aligned pointers, but got residual %p, "
        "delta %p, delta_weight %p, scalar %p, next_weight %p, y %p",
        op, row.residual, row.delta, row.delta_weight, row.scalar, row.next_weight, y));
  }
  if (rows == 0) return absl::OkStatus();
  const bool vectorized = dim % kVectorWidth == 0 && Aligned(row.residual, 16) &&
                          Aligned(row.delta, 16) && Aligned(row.delta_weight, 16) &&
                          Aligned(row.next_weight, 16) && Aligned(y, 16);
  const int width = vectorized ? kVectorWidth : 1;
  const auto kernel = vectorized ? AddNormalizedKernel<kVectorWidth> : AddNormalizedKernel<1>;
  return LaunchKernel(kernel, static_cast<int>(rows), RowThreads(dim, width), 0, stream,
                      /*overlap=*/true, AddArgs{row, y, dim});
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
  return LaunchAddNormalized("AddNormalized",
                             {residual, residual, delta, delta_weight, scalar, nullptr, eps},
                             nullptr, rows, dim, stream);
}

absl::Status AddNormalizedThenNorm(float* residual, const __nv_bfloat16* delta, int64_t rows,
                                   int dim, const __nv_bfloat16* delta_weight, float eps,
                                   const float* scalar, const __nv_bfloat16* next_weight,
                                   __nv_bfloat16* y, cudaStream_t stream) {
  if (y == nullptr) {
    return absl::InvalidArgumentError("AddNormalizedThenNorm: y must be non-null");
  }
  return LaunchAddNormalized("AddNormalizedThenNorm",
                             {residual, residual, delta, delta_weight, scalar, next_weight, eps}, y,
                             rows, dim, stream);
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
