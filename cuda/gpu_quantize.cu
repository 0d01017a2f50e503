// QuantizeOnGpu: the checks of gquant::Quantize, the transfers, the
// finiteness test and the error statistics; the formulas live in
// gpu_minmax.cu and gpu_hqq.cu.
//
// Flow of one call: upload the matrix; find its first NaN/Inf (lowest flat
// index, so the same element the CPU reports); quantize into device outputs;
// optionally form per-row error sums (one warp per row, fixed-order butterfly)
// that the host adds in row order, as the CPU's RowErrorSums; download.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cuda_status.cuh"
#include "device_buffer.cuh"
#include "gpu_quantize.cuh"
#include "gpu_quantize_internal.cuh"
#include "gquant/status.h"

namespace gquant::cuda {
namespace {

using internal_gpu_quantize::DispatchDtype;
using internal_gpu_quantize::GpuQuantJob;
using internal_gpu_quantize::LoadWeight;

constexpr int kScanThreads = 256;
// Enough blocks to fill any current GPU several times; a grid-stride loop
// covers the rest.
constexpr int64_t kMaxScanBlocks = 4096;
constexpr int kStatsWarpsPerBlock = 8;
constexpr unsigned kFullMask = 0xffffffffu;

// *first = min(*first, index of every NaN/Inf element); *first starts at
// all-ones.
template <DType kDtype>
__global__ void FirstNonFiniteKernel(const void* __restrict__ weight,  // [count] of kDtype
                                     int64_t count, unsigned long long* first) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (!isfinite(LoadWeight<kDtype>(weight, i))) {
      atomicMin(first, static_cast<unsigned long long>(i));
    }
  }
}

// Per row r: reference_sq[r] = sum w^2 and error_sq[r] = sum (w - deq)^2 in
// float64, deq = (code - zero) * scale in float32 as Dequantize forms it. The
// min-max CPU path takes w - deq in float32 (kFloatDifference), HQQ's in
// float64. One warp per row; lanes stride over the columns.
template <DType kDtype, bool kFloatDifference>
__global__ void RowErrorSumsKernel(const void* __restrict__ weight,   // [rows, cols] of kDtype
                                   const int8_t* __restrict__ codes,  // [rows, cols]
                                   const float* __restrict__ scale,   // [rows, num_groups]
                                   const float* __restrict__ zero,    // [rows, num_groups]
                                   int64_t rows, int64_t cols, int64_t group, int64_t num_groups,
                                   double* __restrict__ reference_sq,  // [rows]
                                   double* __restrict__ error_sq) {    // [rows]
  const int64_t row = blockIdx.x * int64_t{kStatsWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // the whole warp: row is uniform across it
  double ref = 0, err = 0;
  for (int64_t c = lane; c < cols; c += 32) {
    const int64_t i = row * cols + c, g = row * num_groups + c / group;
    const float w = LoadWeight<kDtype>(weight, i);
    const float deq = __fmul_rn(__fsub_rn(static_cast<float>(codes[i]), zero[g]), scale[g]);
    double d;
    if constexpr (kFloatDifference) {
      d = __fsub_rn(w, deq);
    } else {
      d = __dsub_rn(static_cast<double>(w), static_cast<double>(deq));
    }
    ref = __dadd_rn(ref, __dmul_rn(w, w));
    err = __dadd_rn(err, __dmul_rn(d, d));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    ref = __dadd_rn(ref, __shfl_xor_sync(kFullMask, ref, offset));
    err = __dadd_rn(err, __shfl_xor_sync(kFullMask, err, offset));
  }
  if (lane == 0) {
    reference_sq[row] = ref;
    error_sq[row] = err;
  }
}

// The flat index of the first NaN/Inf of the device matrix, or `count`.
absl::StatusOr<int64_t> FirstNonFinite(DType dtype, const void* weight, int64_t count) {
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<unsigned long long> first,
                      DeviceBuffer<unsigned long long>::Allocate(1));
  GQ_RETURN_IF_ERROR(first.FillBytes(0xff));
  const int blocks = static_cast<int>(
      std::min<int64_t>(kMaxScanBlocks, (count + kScanThreads - 1) / kScanThreads));
  GQ_RETURN_IF_ERROR(DispatchDtype(dtype, [&](auto source) -> absl::Status {
    FirstNonFiniteKernel<decltype(source)::value>
        <<<blocks, kScanThreads>>>(weight, count, first.data());
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  }));
  unsigned long long index = 0;
  GQ_RETURN_IF_ERROR(first.CopyToHost(std::span(&index, 1)));
  return index < static_cast<unsigned long long>(count) ? static_cast<int64_t>(index) : count;
}

// The CPU's message for a non-finite element (quantize.cc NonFiniteError),
// with the value read back from the host copy.
absl::Status NonFiniteError(DType dtype, std::span<const std::byte> weight, int64_t cols,
                            int64_t index) {
  const std::byte* p = weight.data() + index * DTypeSize(dtype);
  float value = 0;
  if (dtype == DType::kF32) {
    std::memcpy(&value, p, sizeof(float));
  } else {
    uint16_t bits;
    std::memcpy(&bits, p, sizeof(bits));
    value = dtype == DType::kBF16 ? BFloat16ToFloat(bits) : HalfToFloat(bits);
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("weight element [row %d, column %d]: expected a finite value, but got %f",
                      index / cols, index % cols, value));
}

// Adds the job's reconstruction error to *stats, rows in order.
absl::Status AccumulateErrorStats(const GpuQuantJob& job, ErrorStats* stats) {
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<double> reference_sq, DeviceBuffer<double>::Allocate(job.rows));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<double> error_sq, DeviceBuffer<double>::Allocate(job.rows));
  const int64_t blocks = (job.rows + kStatsWarpsPerBlock - 1) / kStatsWarpsPerBlock;
  const bool float_difference = job.config.method == QuantMethod::kMinMax;
  GQ_RETURN_IF_ERROR(DispatchDtype(job.dtype, [&](auto source) -> absl::Status {
    constexpr DType kDtype = decltype(source)::value;
    auto* kernel =
        float_difference ? RowErrorSumsKernel<kDtype, true> : RowErrorSumsKernel<kDtype, false>;
    kernel<<<static_cast<unsigned>(blocks), kStatsWarpsPerBlock * 32>>>(
        job.weight, job.codes, job.scale, job.zero_point, job.rows, job.cols, job.group,
        job.num_groups, reference_sq.data(), error_sq.data());
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  }));
  std::vector<double> ref(job.rows), err(job.rows);
  GQ_RETURN_IF_ERROR(reference_sq.CopyToHost(std::span(ref)));
  GQ_RETURN_IF_ERROR(error_sq.CopyToHost(std::span(err)));
  for (int64_t r = 0; r < job.rows; ++r) {
    stats->reference_sq += ref[r];
    stats->error_sq += err[r];
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status QuantizeOnGpu(const QuantConfig& config, DType dtype,
                           std::span<const std::byte> weight, int64_t rows, int64_t cols,
                           const QuantizedSpans& out, const QuantizeOptions& options) {
  GQ_ASSIGN_OR_RETURN(const int64_t group,
                      CheckQuantizeArguments(config, dtype, weight, rows, cols, out));
  if (rows == 0) return absl::OkStatus();
  const int64_t count = rows * cols, num_groups = cols / group;

  GQ_ASSIGN_OR_RETURN(DeviceBuffer<std::byte> device_weight,
                      DeviceBuffer<std::byte>::Allocate(weight.size()));
  GQ_RETURN_IF_ERROR(device_weight.CopyFromHost(weight));
  GQ_ASSIGN_OR_RETURN(const int64_t bad, FirstNonFinite(dtype, device_weight.data(), count));
  if (bad < count) return NonFiniteError(dtype, weight, cols, bad);

  GQ_ASSIGN_OR_RETURN(DeviceBuffer<int8_t> codes, DeviceBuffer<int8_t>::Allocate(count));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<float> scale, DeviceBuffer<float>::Allocate(rows * num_groups));
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<float> zero, DeviceBuffer<float>::Allocate(rows * num_groups));
  const GpuQuantJob job{config,       dtype,       device_weight.data(), rows,
                        cols,         group,       num_groups,           codes.data(),
                        scale.data(), zero.data(), options.hqq};
  switch (config.method) {
    case QuantMethod::kMinMax:
      GQ_RETURN_IF_ERROR(internal_gpu_quantize::QuantizeMinMaxOnGpu(job));
      break;
    case QuantMethod::kHqq:
      GQ_RETURN_IF_ERROR(internal_gpu_quantize::QuantizeHqqOnGpu(job));
      break;
  }
  if (options.error_stats != nullptr) {
    GQ_RETURN_IF_ERROR(AccumulateErrorStats(job, options.error_stats));
  }
  GQ_RETURN_IF_ERROR(codes.CopyToHost(out.codes));
  GQ_RETURN_IF_ERROR(scale.CopyToHost(out.scale));
  GQ_RETURN_IF_ERROR(zero.CopyToHost(out.zero_point));
  return absl::OkStatus();
}

}  // namespace gquant::cuda
