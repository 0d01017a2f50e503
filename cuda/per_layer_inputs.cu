#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "device_primitives.cuh"
#include "launch.cuh"
#include "per_layer_inputs.cuh"
#include "row_access.cuh"

namespace gquant::cuda {
namespace {

// One warp per P-long slice (P = 256 in the released models: one 16-byte
// access per lane), a few slices per block as the warp-per-head norms do.
constexpr int kSlicesPerBlock = 4;

struct CombineArgs {
  const __nv_bfloat16* context;      // [slices, dim]
  const __nv_bfloat16* per_layer;    // [slices, dim]; may be `out`
  const __nv_bfloat16* norm_weight;  // [dim]
  __nv_bfloat16* out;                // [slices, dim]
  int64_t slices;                    // tokens * layers
  int dim;
  float projection_scale;
  float eps;
  float input_scale;
};

// v = context run * projection_scale (float32 products).
template <int kWidth>
__device__ __forceinline__ void LoadScaledContext(const CombineArgs& a, int64_t i,
                                                  float (&v)[kWidth]) {
  LoadBf16<kWidth>(a.context + i, v);
#pragma unroll
  for (int k = 0; k < kWidth; ++k) v[k] *= a.projection_scale;
}

// One warp per slice. Pass 1 sums the squares of the scaled context, pass 2
// re-reads it, normalizes, adds per_layer and scales. Each lane reads
// per_layer only at the elements it then writes, so out may alias it; the
// warp sum orders every lane's pass-1 reads before any write.
template <int kWidth>
__global__ void __launch_bounds__(kSlicesPerBlock * 32)
    CombinePerLayerInputsKernel(const CombineArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t slice = int64_t{blockIdx.x} * kSlicesPerBlock + threadIdx.x / 32;
  if (slice >= a.slices) return;  // whole warps
  const int lane = threadIdx.x % 32;
  const int64_t offset = slice * a.dim;
  float sum = 0.0f;
  for (int j = lane * kWidth; j < a.dim; j += 32 * kWidth) {
    float v[kWidth];
    LoadScaledContext<kWidth>(a, offset + j, v);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) sum += v[k] * v[k];
  }
  // (mean(v^2) + eps)^-0.5 as rms_norm.cu: rsqrtf is within 2 ulp of pow.
  const float inverse_rms = rsqrtf(WarpSum(sum) / static_cast<float>(a.dim) + a.eps);
  for (int j = lane * kWidth; j < a.dim; j += 32 * kWidth) {
    float v[kWidth], p[kWidth];
    LoadScaledContext<kWidth>(a, offset + j, v);
    ScaleRun<kWidth>(v, inverse_rms, a.norm_weight + j);
    LoadBf16<kWidth>(a.per_layer + offset + j, p);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) v[k] = (v[k] + p[k]) * a.input_scale;
    StoreBf16<kWidth>(a.out + offset + j, v);
  }
}

}  // namespace

absl::Status CombinePerLayerInputs(const __nv_bfloat16* context, const __nv_bfloat16* per_layer,
                                   int64_t tokens, int layers, int dim,
                                   const __nv_bfloat16* norm_weight, float projection_scale,
                                   float eps, float input_scale, __nv_bfloat16* out,
                                   cudaStream_t stream) {
  if (tokens < 0 || layers < 1 || dim < 1 || tokens * layers > int64_t{INT_MAX} * kSlicesPerBlock) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CombinePerLayerInputs: expected tokens >= 0 and layers, dim >= 1 (at most %d slices), "
        "but got tokens %d, layers %d, dim %d",
        int64_t{INT_MAX} * kSlicesPerBlock, tokens, layers, dim));
  }
  if (!(eps >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CombinePerLayerInputs: eps must be >= 0, got %g", eps));
  }
  if (context == nullptr || per_layer == nullptr || norm_weight == nullptr || out == nullptr ||
      !Aligned(context, 2) || !Aligned(per_layer, 2) || !Aligned(norm_weight, 2) ||
      !Aligned(out, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CombinePerLayerInputs: expected non-null bf16-aligned pointers, but got context %p, "
        "per_layer %p, norm_weight %p, out %p",
        context, per_layer, norm_weight, out));
  }
  if (tokens == 0) return absl::OkStatus();
  const CombineArgs args{context, per_layer,        norm_weight, out,        tokens * layers,
                         dim,     projection_scale, eps,         input_scale};
  const int blocks = static_cast<int>((args.slices + kSlicesPerBlock - 1) / kSlicesPerBlock);
  const bool vectorized = dim % kVectorWidth == 0 && Aligned(context, 16) &&
                          Aligned(per_layer, 16) && Aligned(norm_weight, 16) && Aligned(out, 16);
  const auto kernel =
      vectorized ? CombinePerLayerInputsKernel<kVectorWidth> : CombinePerLayerInputsKernel<1>;
  return LaunchKernel(kernel, blocks, kSlicesPerBlock * 32, 0, stream, /*overlap=*/true, args);
}

}  // namespace gquant::cuda
