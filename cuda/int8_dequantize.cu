#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_primitives.cuh"
#include "int8_dequantize.cuh"

namespace gquant::cuda {
namespace {

constexpr int kThreads = 256;
// 16-byte runs (16 codes) a thread loads before it stores any: 4 x 16 bytes
// per thread, 64 KB per SM at the default grid, several times what covers
// DRAM latency at the copy ceiling (~3 TB/s x ~1 us over 132 SMs).
constexpr int kRunsPerThread = 4;
constexpr int kDefaultBlocksPerSm = 4;
// Runs per launch, so that run indices stay 32-bit (a larger range is cut
// into several launches; 2^30 runs = 16 G weights).
constexpr int64_t kMaxRunsPerLaunch = int64_t{1} << 30;

struct Args {
  const uint4* codes;    // the range's first row: [rows][runs_per_row] runs of 16 codes
  const float2* params;  // the range's first row: [rows][groups]
  uint4* out;            // [rows][runs_per_row][2]: 16 bf16 per run
  int runs;              // rows * runs_per_row
  int runs_per_row;      // K / 16
  int runs_per_group;    // group size / 16
  int groups;            // K / group size
};

// Rounded operation by operation (the _rn intrinsics are never contracted
// into an FMA), as the host reference computes it.
template <bool kMinForm>
__device__ __forceinline__ float Dequantize(float c, float scale, float zero) {
  return kMinForm ? __fsub_rn(__fmul_rn(c, scale), zero) : __fmul_rn(__fsub_rn(c, zero), scale);
}

// Codes 2j and 2j + 1 of `word` (j = 0, 1; little-endian bytes) as bf16x2.
template <bool kMinForm>
__device__ __forceinline__ uint32_t DequantizePair(uint32_t word, int j, float2 p) {
  const float c0 = static_cast<int8_t>(word >> (16 * j));
  const float c1 = static_cast<int8_t>(word >> (16 * j + 8));
  return PackBf16x2(Dequantize<kMinForm>(c0, p.x, p.y), Dequantize<kMinForm>(c1, p.x, p.y));
}

// Grid-stride over runs; kRunsPerThread runs per thread and step, a block's
// runs contiguous so each load and store instruction is coalesced. A run
// lies in one group (group sizes are multiples of 16).
template <bool kMinForm>
__global__ void __launch_bounds__(kThreads) DequantizeInt8RowsKernel(const Args a) {
  const int stride = gridDim.x * kThreads * kRunsPerThread;
  for (int first = blockIdx.x * kThreads * kRunsPerThread + threadIdx.x; first < a.runs;
       first += stride) {
    uint4 codes[kRunsPerThread];
    float2 params[kRunsPerThread];
    // Every load before any store. Codes are read once: stream them past the
    // caches (.cs), which keeps L2 for the bf16 rows the GEMM reads next.
#pragma unroll
    for (int i = 0; i < kRunsPerThread; ++i) {
      const int run = first + i * kThreads;
      if (run < a.runs) {
        const int row = run / a.runs_per_row, column_run = run - row * a.runs_per_row;
        codes[i] = __ldcs(a.codes + run);
        params[i] =
            __ldg(a.params + static_cast<int64_t>(row) * a.groups + column_run / a.runs_per_group);
      }
    }
#pragma unroll
    for (int i = 0; i < kRunsPerThread; ++i) {
      const int run = first + i * kThreads;
      if (run < a.runs) {
        const uint4 c = codes[i];
        const float2 p = params[i];
        a.out[2 * static_cast<int64_t>(run)] =
            make_uint4(DequantizePair<kMinForm>(c.x, 0, p), DequantizePair<kMinForm>(c.x, 1, p),
                       DequantizePair<kMinForm>(c.y, 0, p), DequantizePair<kMinForm>(c.y, 1, p));
        a.out[2 * static_cast<int64_t>(run) + 1] =
            make_uint4(DequantizePair<kMinForm>(c.z, 0, p), DequantizePair<kMinForm>(c.z, 1, p),
                       DequantizePair<kMinForm>(c.w, 0, p), DequantizePair<kMinForm>(c.w, 1, p));
      }
    }
  }
}

}  // namespace

absl::Status DequantizeInt8Rows(const Int8RowsWeight& weight, int64_t row_begin, int64_t rows,
                                __nv_bfloat16* out, cudaStream_t stream, int max_blocks) {
  if (absl::Status s = CheckInt8RowsShape(weight.n, weight.k, weight.group_size); !s.ok()) {
    return s;
  }
  if (weight.codes == nullptr || weight.params == nullptr || out == nullptr ||
      !Aligned(weight.codes, 16) || !Aligned(weight.params, 8) || !Aligned(out, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "DequantizeInt8Rows: expected non-null codes and out 16-byte aligned and params 8-byte "
        "aligned, but got codes %p, params %p, out %p",
        weight.codes, weight.params, out));
  }
  if (row_begin < 0 || rows < 0 || row_begin + rows > weight.n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DequantizeInt8Rows: expected rows [%d, %d) within N=%d", row_begin,
                        row_begin + rows, weight.n));
  }
  if (max_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DequantizeInt8Rows: max_blocks must be >= 0, but got %d", max_blocks));
  }
  if (rows == 0) return absl::OkStatus();

  absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
  if (!device.ok()) return device.status();
  const int multiprocessors = device->multiprocessors;
  const int64_t runs_per_row = weight.k / 16, groups = weight.k / weight.group_size;
  const int64_t rows_per_launch = std::max<int64_t>(1, kMaxRunsPerLaunch / runs_per_row);
  const auto kernel =
      weight.min_form ? DequantizeInt8RowsKernel<true> : DequantizeInt8RowsKernel<false>;
  for (int64_t begin = row_begin; begin < row_begin + rows; begin += rows_per_launch) {
    const int64_t count = std::min(rows_per_launch, row_begin + rows - begin);
    const Args args{reinterpret_cast<const uint4*>(weight.codes) + begin * runs_per_row,
                    weight.params + begin * groups,
                    reinterpret_cast<uint4*>(out) + (begin - row_begin) * runs_per_row * 2,
                    static_cast<int>(count * runs_per_row),
                    static_cast<int>(runs_per_row),
                    static_cast<int>(weight.group_size / 16),
                    static_cast<int>(groups)};
    constexpr int64_t kRunsPerBlock = kThreads * kRunsPerThread;
    const int64_t needed = (args.runs + kRunsPerBlock - 1) / kRunsPerBlock;
    const int64_t cap =
        max_blocks > 0 ? max_blocks : int64_t{kDefaultBlocksPerSm} * multiprocessors;
    kernel<<<static_cast<int>(std::min(needed, cap)), kThreads, 0, stream>>>(args);
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace gquant::cuda
