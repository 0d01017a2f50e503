// HQQ on the GPU, operation for operation the CPU's quantize_hqq.cc:
//   asymmetric 4-bit: the proximal solver of spec formats.md §3.1 (zero only);
//   symmetric (any bits): the scale-only least-squares refits of §3.3.
//
// Thread mapping: one thread per group for every per-group step (state
// init, one solver iteration, final write), reading its group's elements in
// order, so every per-group sum is accumulated in the CPU's order and comes
// out bit-identical. The solver's stopping rules are global over the matrix,
// so each iteration is one kernel launch followed by a host decision:
//   asymmetric: each block sums its groups' |W - W_r| (float64, fixed tree),
//     the host adds the block partials in block order: the mean error of the
//     early stop, deterministic (and equal to the CPU's row-order sum up to
//     float64 rounding, ~1e-16 relative);
//   scale-only: the max relative change, an exact max (atomicMax on the bit
//     patterns of non-negative floats).
// The one operation that can round differently from the CPU is |x|^(p-1) of
// the shrinkage (see gpu_quantize.cuh); it is computed in float64 and rounded
// to float32, the closest we can get to the host's powf.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "cuda_status.cuh"
#include "device_buffer.cuh"
#include "gpu_quantize_internal.cuh"
#include "gquant/status.h"

namespace gquant::cuda::internal_gpu_quantize {
namespace {

// ---------------------------------------------------------------------------
// Asymmetric 4-bit HQQ, §3.1. State per group: s_inv (the inverse scale;
// fixed) and z (the zero; optimized).

constexpr float kQmax = 15;  // 2^4 - 1; qmin = 0

// s_inv = qmax / (max - min) clamped to 2e4, or 1 when |max - min| <= 1e-4
// (hqq-lib's guard); z = round(-min * s_inv). min/max in element order with
// std::min/std::max's choice, as the CPU.
template <DType kDtype>
__global__ void HqqInitKernel(const void* __restrict__ weight,  // [rows, cols] of kDtype
                              int64_t total_groups, int64_t group,
                              float* __restrict__ s_inv,   // [total_groups]
                              float* __restrict__ zero) {  // [total_groups]
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (g >= total_groups) return;
  const int64_t begin = g * group;
  float mn = LoadWeight<kDtype>(weight, begin), mx = mn;
  for (int64_t i = 1; i < group; ++i) {
    const float x = LoadWeight<kDtype>(weight, begin + i);
    mn = StdMin(mn, x);
    mx = StdMax(mx, x);
  }
  const float range = __fsub_rn(mx, mn);
  float s = fabsf(range) <= 1e-4f ? 1.0f : __fdiv_rn(kQmax, range);
  s = StdMin(s, 2e4f);
  s_inv[g] = s;
  zero[g] = rintf(__fmul_rn(-mn, s));
}

// The per-iteration constants of the shrinkage, as the CPU's ProximalStep.
struct ProximalStep {
  float inv_beta;    // float32(1 / beta)
  float p_minus_1;   // lp_norm - 1
  float skip_below;  // shrink_p is exactly 0 below this |x|
};

// |x|^(p-1) for the shrinkage: float64 pow rounded once to float32.
__device__ __forceinline__ float PowForShrink(float a, float p_minus_1) {
  return static_cast<float>(pow(static_cast<double>(a), static_cast<double>(p_minus_1)));
}

// One solver pass over group g, §3.1 (CPU ProximalRow):
//   W_q = clamp(round(W * s_inv + z), 0, qmax)
//   W_r = (W_q - z) / s_inv
//   W_e = shrink_p(W - W_r, beta)
//   z'  = mean_group(W_q - (W - W_e) * s_inv)       (float64 sum)
// and block_error[block] = the block's sum of |W - W_r| (float64).
template <DType kDtype>
__global__ void HqqProximalKernel(const void* __restrict__ weight,  // [rows, cols] of kDtype
                                  int64_t total_groups, int64_t group,
                                  const float* __restrict__ s_inv,  // [total_groups]
                                  const float* __restrict__ zero,   // [total_groups]
                                  float* __restrict__ next_zero,    // [total_groups]
                                  ProximalStep step,
                                  double* __restrict__ block_error) {  // [gridDim.x]
  __shared__ double partial[kGroupThreads];
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  double abs_error = 0;
  if (g < total_groups) {
    const float s = s_inv[g], z = zero[g];
    const int64_t begin = g * group;
    double sum = 0;
    for (int64_t i = 0; i < group; ++i) {
      const float x = LoadWeight<kDtype>(weight, begin + i);
      const float wq = StdMin(StdMax(rintf(__fadd_rn(__fmul_rn(x, s), z)), 0.0f), kQmax);
      const float d = __fsub_rn(x, __fdiv_rn(__fsub_rn(wq, z), s));
      const float a = fabsf(d);
      abs_error = __dadd_rn(abs_error, a);
      float we = 0;
      if (a >= step.skip_below) {
        const float t =
            StdMax(__fsub_rn(a, __fmul_rn(step.inv_beta, PowForShrink(a, step.p_minus_1))), 0.0f);
        we = d > 0 ? t : -t;
      }
      sum = __dadd_rn(sum, __fsub_rn(wq, __fmul_rn(__fsub_rn(x, we), s)));
    }
    next_zero[g] = static_cast<float>(__ddiv_rn(sum, static_cast<double>(group)));
  }
  // Fixed-shape tree: the same association on every run.
  partial[threadIdx.x] = abs_error;
  __syncthreads();
  for (unsigned stride = kGroupThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      partial[threadIdx.x] = __dadd_rn(partial[threadIdx.x], partial[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) block_error[blockIdx.x] = partial[0];
}

// Codes from the float32 s_inv and z; stored scale = bf16(1 / s_inv), zero =
// bf16(z) (§2.6 (b)).
template <DType kDtype>
__global__ void HqqWriteAsymmetricKernel(const void* __restrict__ weight,  // [rows, cols]
                                         int64_t total_groups, int64_t group,
                                         const float* __restrict__ s_inv,  // [total_groups]
                                         const float* __restrict__ zero,   // [total_groups]
                                         int8_t* __restrict__ codes,       // [rows, cols]
                                         float* __restrict__ scale_out,    // [total_groups]
                                         float* __restrict__ zero_out) {   // [total_groups]
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (g >= total_groups) return;
  const float s = s_inv[g], z = zero[g];
  scale_out[g] = RoundToBFloat16(__fdiv_rn(1.0f, s));
  zero_out[g] = RoundToBFloat16(z);
  const int64_t begin = g * group;
  for (int64_t i = 0; i < group; ++i) {
    const float x = LoadWeight<kDtype>(weight, begin + i);
    codes[begin + i] =
        static_cast<int8_t>(StdMin(StdMax(rintf(__fadd_rn(__fmul_rn(x, s), z)), 0.0f), kQmax));
  }
}

// One solver pass over the whole matrix: writes next_zero and returns the
// mean |W - W_r| (block partials summed in block order).
absl::Status ProximalPass(const GpuQuantJob& job, const float* s_inv, const float* zero,
                          float* next_zero, const ProximalStep& step,
                          DeviceBuffer<double>& block_error, std::vector<double>& host_error,
                          double* mean_error) {
  const int64_t total_groups = job.total_groups();
  GQ_RETURN_IF_ERROR(DispatchDtype(job.dtype, [&](auto source) -> absl::Status {
    HqqProximalKernel<decltype(source)::value>
        <<<static_cast<unsigned>(block_error.size()), kGroupThreads>>>(
            job.weight, total_groups, job.group, s_inv, zero, next_zero, step, block_error.data());
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  }));
  GQ_RETURN_IF_ERROR(block_error.CopyToHost(std::span(host_error)));
  double total = 0;
  for (double e : host_error) total += e;
  *mean_error = total / (static_cast<double>(job.rows) * static_cast<double>(job.cols));
  return absl::OkStatus();
}

absl::Status QuantizeAsymmetric(const GpuQuantJob& job) {
  const HqqOptions& opt = job.hqq;
  const int64_t total_groups = job.total_groups();
  const auto blocks = static_cast<unsigned>(GroupBlocks(total_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<float> s_inv, DeviceBuffer<float>::Allocate(total_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<float> zero, DeviceBuffer<float>::Allocate(total_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<float> next_zero, DeviceBuffer<float>::Allocate(total_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<double> block_error, DeviceBuffer<double>::Allocate(blocks));
  std::vector<double> host_error(blocks);
  GQ_RETURN_IF_ERROR(DispatchDtype(job.dtype, [&](auto source) -> absl::Status {
    HqqInitKernel<decltype(source)::value>
        <<<blocks, kGroupThreads>>>(job.weight, total_groups, job.group, s_inv.data(), zero.data());
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  }));

  // The iterations and the early stop exactly as the CPU's QuantizeAsymmetric
  // (the returned z is one update past the best measured one unless
  // keep_best_iterate); the step constants are computed on the host with the
  // CPU's expressions, so they are the same floats.
  const double p = opt.lp_norm;
  ProximalStep step{0, opt.lp_norm - 1.0f, 0};
  double beta = opt.beta;
  double best_error = 1e4;  // torchao's initial best_error
  double kept_error = std::numeric_limits<double>::infinity();
  DeviceBuffer<float> kept_zero;
  bool have_kept = false;
  for (int it = 0; it < opt.iterations; ++it) {
    step.inv_beta = static_cast<float>(1.0 / beta);
    step.skip_below =
        p > 0 && p < 2 ? static_cast<float>(std::pow(step.inv_beta, 1 / (2 - p)) * (1 - 1e-3)) : 0;
    double error = 0;
    GQ_RETURN_IF_ERROR(ProximalPass(job, s_inv.data(), zero.data(), next_zero.data(), step,
                                    block_error, host_error, &error));
    beta *= opt.kappa;
    std::swap(zero, next_zero);  // next_zero now holds the z `error` was measured with
    if (opt.keep_best_iterate && error < kept_error) {
      kept_error = error;
      if (!have_kept) {
        GQ_ASSIGN_OR_RETURN(kept_zero, DeviceBuffer<float>::Allocate(total_groups));
        have_kept = true;
      }
      GQ_RETURN_IF_CUDA_ERROR(cudaMemcpy(kept_zero.data(), next_zero.data(),
                                         total_groups * sizeof(float), cudaMemcpyDeviceToDevice));
    }
    if (opt.early_stop) {
      if (error < best_error) {
        best_error = error;
      } else {
        break;
      }
    }
  }
  if (opt.keep_best_iterate && have_kept) {
    double final_error = 0;
    GQ_RETURN_IF_ERROR(ProximalPass(job, s_inv.data(), zero.data(), next_zero.data(), step,
                                    block_error, host_error, &final_error));
    if (kept_error < final_error) std::swap(zero, kept_zero);
  }

  return DispatchDtype(job.dtype, [&](auto source) -> absl::Status {
    HqqWriteAsymmetricKernel<decltype(source)::value>
        <<<blocks, kGroupThreads>>>(job.weight, total_groups, job.group, s_inv.data(), zero.data(),
                                    job.codes, job.scale, job.zero_point);
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------
// Scale-only (symmetric) HQQ, §3.3: least-squares refits of the scale, zero 0.

constexpr float kScaleEps = FLT_EPSILON;  // finfo(fp32).eps
constexpr float kScaleTolerance = 1e-5f;
constexpr int kScaleIterations = 20;

// The code range and storage offset of one config, as the CPU.
struct ScaleOnlyConstants {
  float qmin;    // -2^(b-1)
  float qmax;    // 2^(b-1) - 1
  float qabs;    // max(|qmin|, |qmax|)
  float offset;  // 8 for 4-bit (stored +8 with zero_point 8), else 0
};

// s = max(amax(|W|) / qabs, eps).
template <DType kDtype>
__global__ void ScaleOnlyInitKernel(const void* __restrict__ weight,  // [rows, cols]
                                    int64_t total_groups, int64_t group, ScaleOnlyConstants k,
                                    float* __restrict__ scale) {  // [total_groups]
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (g >= total_groups) return;
  const int64_t begin = g * group;
  float amax = 0;
  for (int64_t i = 0; i < group; ++i)
    amax = StdMax(amax, fabsf(LoadWeight<kDtype>(weight, begin + i)));
  scale[g] = StdMax(__fdiv_rn(amax, k.qabs), kScaleEps);
}

// One refit of group g (CPU RefitScaleRow):
//   Q  = clamp(round(W / s), qmin, qmax)
//   s' = |max(sum(W Q) / sum(Q Q), eps)|   (s' = s when sum(Q Q) = 0; float64 sums)
// and *max_change = max over groups of |s' - s| / max(s, eps), kept as the
// bits of a non-negative float (ordered like the floats).
template <DType kDtype>
__global__ void ScaleOnlyRefitKernel(const void* __restrict__ weight,  // [rows, cols]
                                     int64_t total_groups, int64_t group, ScaleOnlyConstants k,
                                     const float* __restrict__ scale,  // [total_groups]
                                     float* __restrict__ next_scale,   // [total_groups]
                                     unsigned int* __restrict__ max_change) {
  __shared__ float block_max[kGroupThreads];
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  float change = 0;
  if (g < total_groups) {
    const float s = scale[g];
    const int64_t begin = g * group;
    double wq = 0, qq = 0;
    for (int64_t i = 0; i < group; ++i) {
      const float w = LoadWeight<kDtype>(weight, begin + i);
      const float q = StdMin(StdMax(rintf(__fdiv_rn(w, s)), k.qmin), k.qmax);
      wq = __dadd_rn(wq, __dmul_rn(w, q));  // products exact in float64
      qq = __dadd_rn(qq, __dmul_rn(q, q));
    }
    float next = qq > 0 ? static_cast<float>(__ddiv_rn(wq, qq)) : s;
    next = fabsf(StdMax(next, kScaleEps));
    change = __fdiv_rn(fabsf(__fsub_rn(next, s)), StdMax(s, kScaleEps));
    next_scale[g] = next;
  }
  block_max[threadIdx.x] = change;
  __syncthreads();
  for (unsigned stride = kGroupThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      block_max[threadIdx.x] = fmaxf(block_max[threadIdx.x], block_max[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicMax(max_change, __float_as_uint(block_max[0]));
}

// Codes from the float32 s; stored scale bf16(s), zero = offset.
template <DType kDtype>
__global__ void ScaleOnlyWriteKernel(const void* __restrict__ weight,  // [rows, cols]
                                     int64_t total_groups, int64_t group, ScaleOnlyConstants k,
                                     const float* __restrict__ scale,  // [total_groups]
                                     int8_t* __restrict__ codes,       // [rows, cols]
                                     float* __restrict__ scale_out,    // [total_groups]
                                     float* __restrict__ zero_out) {   // [total_groups]
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (g >= total_groups) return;
  const float s = scale[g];
  scale_out[g] = RoundToBFloat16(s);
  zero_out[g] = k.offset;
  const int64_t begin = g * group;
  for (int64_t i = 0; i < group; ++i) {
    const float w = LoadWeight<kDtype>(weight, begin + i);
    const float q = StdMin(StdMax(rintf(__fdiv_rn(w, s)), k.qmin), k.qmax);
    codes[begin + i] = static_cast<int8_t>(__fadd_rn(q, k.offset));
  }
}

absl::Status QuantizeScaleOnly(const GpuQuantJob& job) {
  const int bits = job.config.bits;
  ScaleOnlyConstants k;
  k.qmin = static_cast<float>(-(1 << (bits - 1)));
  k.qmax = static_cast<float>((1 << (bits - 1)) - 1);
  k.qabs = std::max(std::fabs(k.qmin), std::fabs(k.qmax));
  k.offset = bits == 4 ? 8 : 0;

  const int64_t total_groups = job.total_groups();
  const auto blocks = static_cast<unsigned>(GroupBlocks(total_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<float> scale, DeviceBuffer<float>::Allocate(total_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<float> next_scale, DeviceBuffer<float>::Allocate(total_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<unsigned int> max_change,
                      DeviceBuffer<unsigned int>::Allocate(1));
  return DispatchDtype(job.dtype, [&](auto source) -> absl::Status {
    constexpr DType kDtype = decltype(source)::value;
    ScaleOnlyInitKernel<kDtype>
        <<<blocks, kGroupThreads>>>(job.weight, total_groups, job.group, k, scale.data());
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    // The stop test is global and, as in §3.3, checked before s = s', so a
    // converged step is not applied.
    for (int it = 0; it < kScaleIterations; ++it) {
      GQ_RETURN_IF_ERROR(max_change.FillBytes(0));  // +0.0f
      ScaleOnlyRefitKernel<kDtype><<<blocks, kGroupThreads>>>(job.weight, total_groups, job.group,
                                                              k, scale.data(), next_scale.data(),
                                                              max_change.data());
      GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
      unsigned int change_bits = 0;
      GQ_RETURN_IF_ERROR(max_change.CopyToHost(std::span(&change_bits, 1)));
      if (std::bit_cast<float>(change_bits) < kScaleTolerance) break;
      std::swap(scale, next_scale);
    }
    ScaleOnlyWriteKernel<kDtype><<<blocks, kGroupThreads>>>(
        job.weight, total_groups, job.group, k, scale.data(), job.codes, job.scale, job.zero_point);
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

}  // namespace

absl::Status QuantizeHqqOnGpu(const GpuQuantJob& job) {
  return job.config.symmetric ? QuantizeScaleOnly(job) : QuantizeAsymmetric(job);
}

}  // namespace gquant::cuda::internal_gpu_quantize
