// Min-max (affine) quantization on the GPU, bit-identical to the CPU's
// quantize_minmax.cc (spec formats.md §2.6 (a), (d)).
//
// Thread mapping: one thread per group (rows * num_groups threads), which
// reads its group twice: once for the extremes, once for the codes. A group of
// 32 bf16 is one 64-byte run, so the second pass hits L1. The quantizer runs
// once per matrix between two PCIe transfers of it, so this simple mapping is
// far from the bottleneck.
#include <cuda_runtime_api.h>

#include <cfloat>

#include "cuda_status.cuh"
#include "gpu_quantize_internal.cuh"

namespace gquant::cuda::internal_gpu_quantize {
namespace {

// Scale and zero, then codes, of group g (§2.6, in the CPU's float32 order):
//   asymmetric: mx = max(max_g, +0), mn = min(min_g, -0),
//               s = max((mx - mn) / divisor, FLT_MIN),
//               z = clamp(qmin - round(mn / s), qmin, qmax);
//   symmetric:  s = max(max|x| / divisor, FLT_MIN), z = offset;
//   stored scale sb = bf16(s), r = bf16(1 / sb),
//   code = clamp(round(x * r) + z, qmin + offset, qmax + offset).
// The CPU takes the extremes from integer bit patterns; the float compares
// below give the same values, including the signs of zero (a -0 element never
// replaces mx = +0, a +0 never replaces mn = -0).
template <DType kDtype, bool kSymmetric>
__global__ void MinMaxKernel(const void* __restrict__ weight,  // [rows, cols] of kDtype
                             int64_t total_groups,             // rows * num_groups
                             int64_t group,                    // elements per group
                             MinMaxConstants k,
                             int8_t* __restrict__ codes,      // [rows, cols]
                             float* __restrict__ scale_out,   // [total_groups]
                             float* __restrict__ zero_out) {  // [total_groups]
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (g >= total_groups) return;
  const int64_t begin = g * group;

  float s;
  int zero;
  if constexpr (kSymmetric) {
    float magnitude = 0;
    for (int64_t i = 0; i < group; ++i) {
      magnitude = StdMax(magnitude, fabsf(LoadWeight<kDtype>(weight, begin + i)));
    }
    s = StdMax(__fdiv_rn(magnitude, k.divisor), FLT_MIN);
    zero = k.offset;
  } else {
    float mx = 0.0f, mn = -0.0f;
    for (int64_t i = 0; i < group; ++i) {
      const float x = LoadWeight<kDtype>(weight, begin + i);
      mx = x > mx ? x : mx;
      mn = x < mn ? x : mn;
    }
    s = StdMax(__fdiv_rn(__fsub_rn(mx, mn), k.divisor), FLT_MIN);
    const float z = StdMin(StdMax(__fsub_rn(k.qmin, rintf(__fdiv_rn(mn, s))), k.qmin), k.qmax);
    zero = static_cast<int>(z);
  }
  const float sb = RoundToBFloat16(s);
  const float r = RoundToBFloat16(__fdiv_rn(1.0f, sb));
  scale_out[g] = sb;
  zero_out[g] = static_cast<float>(zero);

  const int code_min = static_cast<int>(k.qmin) + k.offset;
  const int code_max = static_cast<int>(k.qmax) + k.offset;
  for (int64_t i = 0; i < group; ++i) {
    const float x = LoadWeight<kDtype>(weight, begin + i);
    // |x * r| <= (qmax - qmin) * 1.01 (s covers the group's range), so the
    // integer conversion is exact.
    const int v = static_cast<int>(rintf(__fmul_rn(x, r))) + zero;
    codes[begin + i] = static_cast<int8_t>(min(max(v, code_min), code_max));
  }
}

}  // namespace

absl::Status QuantizeMinMaxOnGpu(const GpuQuantJob& job) {
  const MinMaxConstants k = MinMaxConstantsOf(job.config);
  const int64_t total_groups = job.total_groups();
  return DispatchDtype(job.dtype, [&](auto source) -> absl::Status {
    constexpr DType kDtype = decltype(source)::value;
    auto* kernel =
        job.config.symmetric ? &MinMaxKernel<kDtype, true> : &MinMaxKernel<kDtype, false>;
    kernel<<<static_cast<unsigned>(GroupBlocks(total_groups)), kGroupThreads>>>(
        job.weight, total_groups, job.group, k, job.codes, job.scale, job.zero_point);
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

}  // namespace gquant::cuda::internal_gpu_quantize
