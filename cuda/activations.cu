#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "activations.cuh"
#include "aligned.h"
#include "device_primitives.cuh"
#include "gelu_tanh.cuh"
#include "launch.cuh"
#include "row_access.cuh"

namespace gquant::cuda {
namespace {

constexpr int kThreads = 256;

struct GeluArgs {
  const __nv_bfloat16* a;
  const __nv_bfloat16* b;
  __nv_bfloat16* out;
  int64_t a_stride;
  int64_t b_stride;
  int64_t width;
  int64_t runs_per_row;  // width / kWidth
  int64_t runs;          // rows * runs_per_row
};

// One thread per run of kWidth elements of one row.
template <int kWidth>
__global__ void __launch_bounds__(kThreads) GeluTanhMulKernel(const GeluArgs p) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t run = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (run >= p.runs) return;
  const int64_t row = run / p.runs_per_row, column = (run - row * p.runs_per_row) * kWidth;
  float a[kWidth], b[kWidth];
  LoadBf16<kWidth>(p.a + row * p.a_stride + column, a);
  LoadBf16<kWidth>(p.b + row * p.b_stride + column, b);
#pragma unroll
  for (int i = 0; i < kWidth; ++i) a[i] = GeluTanh(a[i]) * b[i];
  StoreBf16<kWidth>(p.out + row * p.width + column, a);
}

// One thread per run of kWidth elements.
template <int kWidth>
__global__ void __launch_bounds__(kThreads)
    SoftCapKernel(const __nv_bfloat16* x, int64_t runs, float cap, float* y) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t run = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (run >= runs) return;
  float v[kWidth];
  LoadBf16<kWidth>(x + run * kWidth, v);
#pragma unroll
  for (int i = 0; i < kWidth; ++i) v[i] = tanhf(v[i] / cap) * cap;
  StoreF32<kWidth>(y + run * kWidth, v);
}

// Blocks of kThreads covering `threads`, or InvalidArgument past the grid.
absl::Status BlocksFor(const char* op, int64_t threads, int& blocks) {
  const int64_t needed = (threads + kThreads - 1) / kThreads;
  if (needed > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d elements is more than one launch covers", op, threads));
  }
  blocks = static_cast<int>(needed);
  return absl::OkStatus();
}

}  // namespace

absl::Status GeluTanhMul(const __nv_bfloat16* a, int64_t a_stride, const __nv_bfloat16* b,
                         int64_t b_stride, int64_t rows, int64_t width, __nv_bfloat16* out,
                         cudaStream_t stream) {
  if (a == nullptr || b == nullptr || out == nullptr || !Aligned(a, 2) || !Aligned(b, 2) ||
      !Aligned(out, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GeluTanhMul: expected non-null aligned a, b and out, but got %p, %p, %p", a, b, out));
  }
  if (rows < 0 || width < 0 || a_stride < width || b_stride < width) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GeluTanhMul: expected rows, width >= 0 and strides >= width, but got rows %d, width "
        "%d, a_stride %d, b_stride %d",
        rows, width, a_stride, b_stride));
  }
  if (rows == 0 || width == 0) return absl::OkStatus();
  const bool vectorized = width % kVectorWidth == 0 && a_stride % kVectorWidth == 0 &&
                          b_stride % kVectorWidth == 0 && Aligned(a, 16) && Aligned(b, 16) &&
                          Aligned(out, 16);
  const int64_t runs_per_row = vectorized ? width / kVectorWidth : width;
  const GeluArgs args{a, b, out, a_stride, b_stride, width, runs_per_row, rows * runs_per_row};
  int blocks = 0;
  if (absl::Status s = BlocksFor("GeluTanhMul", args.runs, blocks); !s.ok()) return s;
  const auto kernel = vectorized ? GeluTanhMulKernel<kVectorWidth> : GeluTanhMulKernel<1>;
  return LaunchKernel(kernel, blocks, kThreads, 0, stream, /*overlap=*/true, args);
}

absl::Status SoftCap(const __nv_bfloat16* x, int64_t count, float cap, float* y,
                     cudaStream_t stream) {
  if (x == nullptr || y == nullptr || !Aligned(x, 2) || !Aligned(y, 4)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("SoftCap: expected non-null aligned x and y, but got %p, %p", x, y));
  }
  if (count < 0 || !(cap > 0.0f) || !std::isfinite(cap)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "SoftCap: expected count >= 0 and a finite cap > 0, but got count %d, cap %g", count, cap));
  }
  if (count == 0) return absl::OkStatus();
  const bool vectorized = count % kVectorWidth == 0 && Aligned(x, 16) && Aligned(y, 16);
  const int64_t runs = vectorized ? count / kVectorWidth : count;
  int blocks = 0;
  if (absl::Status s = BlocksFor("SoftCap", runs, blocks); !s.ok()) return s;
  const auto kernel = vectorized ? SoftCapKernel<kVectorWidth> : SoftCapKernel<1>;
  return LaunchKernel(kernel, blocks, kThreads, 0, stream, /*overlap=*/true, x, runs, cap, y);
}

}  // namespace gquant::cuda
