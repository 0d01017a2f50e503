#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device_primitives.cuh"
#include "embedding_gather.cuh"
#include "launch.cuh"
#include "row_access.cuh"

namespace gquant::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRunsPerThread = 4;  // 16-byte loads in flight per thread
// Runs (16 codes) per launch, so that run indices stay 32-bit.
constexpr int64_t kMaxRunsPerLaunch = int64_t{1} << 30;
constexpr uint32_t kNaNBf16x2 = 0x7FC07FC0u;

struct Args {
  const int8_t* codes;   // [N, K]
  const float2* params;  // [N][groups]
  const int32_t* ids;    // the launch's first id
  uint4* out;            // the launch's first row: [count][runs_per_row][2]
  int64_t n;
  int64_t k;
  int runs;            // count * runs_per_row
  int runs_per_row;    // K / 16
  int runs_per_group;  // group size / 16
  int groups;          // K / group size
  float multiplier;
  bool min_form;
};

// bf16(w * multiplier), w dequantized as DequantizeInt8Rows does: every
// float32 operation rounded on its own (_rn intrinsics are never fused).
__device__ __forceinline__ float Scaled(float c, float2 p, bool min_form, float multiplier) {
  const float w = min_form ? __fsub_rn(__fmul_rn(c, p.x), p.y) : __fmul_rn(__fsub_rn(c, p.y), p.x);
  return __fmul_rn(w, multiplier);
}

// Codes 2j and 2j + 1 of `word` (little-endian bytes), scaled, as bf16x2.
__device__ __forceinline__ uint32_t ScaledPair(const Args& a, uint32_t word, int j, float2 p) {
  const float c0 = static_cast<int8_t>(word >> (16 * j));
  const float c1 = static_cast<int8_t>(word >> (16 * j + 8));
  return PackBf16x2(Scaled(c0, p, a.min_form, a.multiplier),
                    Scaled(c1, p, a.min_form, a.multiplier));
}

// Thread i of block b handles runs b · 1024 + i + 256 j, j < 4: each load
// and store instruction of a warp is coalesced.
__global__ void __launch_bounds__(kThreads) GatherInt8RowsKernel(const Args a) {
  const int first = blockIdx.x * kThreads * kRunsPerThread + threadIdx.x;
  uint4 codes[kRunsPerThread];
  float2 params[kRunsPerThread];
  bool valid[kRunsPerThread];
#pragma unroll
  for (int i = 0; i < kRunsPerThread; ++i) {
    const int run = first + i * kThreads;
    valid[i] = false;
    if (run < a.runs) {
      const int t = run / a.runs_per_row, column_run = run - t * a.runs_per_row;
      const int64_t id = __ldg(a.ids + t);
      valid[i] = id >= 0 && id < a.n;
      if (valid[i]) {
        codes[i] = __ldg(reinterpret_cast<const uint4*>(a.codes + id * a.k) + column_run);
        params[i] = __ldg(a.params + id * a.groups + column_run / a.runs_per_group);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRunsPerThread; ++i) {
    const int run = first + i * kThreads;
    if (run >= a.runs) break;
    uint4 lo = make_uint4(kNaNBf16x2, kNaNBf16x2, kNaNBf16x2, kNaNBf16x2), hi = lo;
    if (valid[i]) {
      const uint4 c = codes[i];
      const float2 p = params[i];
      lo = make_uint4(ScaledPair(a, c.x, 0, p), ScaledPair(a, c.x, 1, p), ScaledPair(a, c.y, 0, p),
                      ScaledPair(a, c.y, 1, p));
      hi = make_uint4(ScaledPair(a, c.z, 0, p), ScaledPair(a, c.z, 1, p), ScaledPair(a, c.w, 0, p),
                      ScaledPair(a, c.w, 1, p));
    }
    a.out[2 * static_cast<int64_t>(run)] = lo;
    a.out[2 * static_cast<int64_t>(run) + 1] = hi;
  }
}

struct Bf16GatherArgs {
  const __nv_bfloat16* table;  // [rows, dim]
  const int32_t* ids;          // [count]
  __nv_bfloat16* out;          // [count, dim]
  int64_t rows;
  int64_t dim;
  int64_t runs_per_row;  // dim / kWidth
  int64_t runs;          // count * runs_per_row
  float multiplier;
};

// One thread per run of kWidth elements of one output row.
template <int kWidth>
__global__ void __launch_bounds__(kThreads) GatherBf16RowsKernel(const Bf16GatherArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t run = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (run >= a.runs) return;
  const int64_t t = run / a.runs_per_row, column = (run - t * a.runs_per_row) * kWidth;
  const int64_t id = a.ids[t];
  float v[kWidth];
  if (id >= 0 && id < a.rows) {
    LoadBf16<kWidth>(a.table + id * a.dim + column, v);
#pragma unroll
    for (int i = 0; i < kWidth; ++i) v[i] = __fmul_rn(v[i], a.multiplier);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) v[i] = __int_as_float(0x7FC00000);  // stays a NaN in bf16
  }
  StoreBf16<kWidth>(a.out + t * a.dim + column, v);
}

}  // namespace

absl::Status GatherInt8Rows(const Int8RowsWeight& table, const int32_t* ids, int count,
                            float multiplier, __nv_bfloat16* out, cudaStream_t stream) {
  if (absl::Status s = CheckInt8RowsShape(table.n, table.k, table.group_size); !s.ok()) return s;
  if (table.codes == nullptr || table.params == nullptr || ids == nullptr || out == nullptr ||
      !Aligned(table.codes, 16) || !Aligned(table.params, 8) || !Aligned(ids, 4) ||
      !Aligned(out, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GatherInt8Rows: expected non-null codes and out 16-byte aligned, params 8-byte and ids "
        "4-byte aligned, but got codes %p, params %p, ids %p, out %p",
        table.codes, table.params, ids, out));
  }
  if (count < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GatherInt8Rows: count must be >= 0, but got %d", count));
  }
  const int64_t runs_per_row = table.k / 16;
  const int64_t ids_per_launch = std::max<int64_t>(1, kMaxRunsPerLaunch / runs_per_row);
  for (int64_t begin = 0; begin < count; begin += ids_per_launch) {
    const int64_t ids_now = std::min<int64_t>(ids_per_launch, count - begin);
    const Args args{table.codes,
                    table.params,
                    ids + begin,
                    reinterpret_cast<uint4*>(out) + begin * runs_per_row * 2,
                    table.n,
                    table.k,
                    static_cast<int>(ids_now * runs_per_row),
                    static_cast<int>(runs_per_row),
                    static_cast<int>(table.group_size / 16),
                    static_cast<int>(table.k / table.group_size),
                    multiplier,
                    table.min_form};
    constexpr int kRunsPerBlock = kThreads * kRunsPerThread;
    const int blocks = (args.runs + kRunsPerBlock - 1) / kRunsPerBlock;
    GatherInt8RowsKernel<<<blocks, kThreads, 0, stream>>>(args);
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  }
  return absl::OkStatus();
}

absl::Status GatherBf16Rows(const __nv_bfloat16* table, int64_t rows, int64_t dim,
                            const int32_t* ids, int count, float multiplier, __nv_bfloat16* out,
                            cudaStream_t stream) {
  if (rows <= 0 || dim <= 0 || count < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GatherBf16Rows: expected rows, dim > 0 and count >= 0, but got rows %d, dim %d, count %d",
        rows, dim, count));
  }
  if (table == nullptr || ids == nullptr || out == nullptr || !Aligned(table, 2) ||
      !Aligned(ids, 4) || !Aligned(out, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GatherBf16Rows: expected non-null aligned table, ids and out, but got %p, %p, %p", table,
        ids, out));
  }
  if (count == 0) return absl::OkStatus();
  const bool vectorized = dim % kVectorWidth == 0 && Aligned(table, 16) && Aligned(out, 16);
  const int64_t runs_per_row = vectorized ? dim / kVectorWidth : dim;
  const Bf16GatherArgs args{table,     ids, out, rows, dim, runs_per_row, count * runs_per_row,
                            multiplier};
  const int64_t blocks = (args.runs + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GatherBf16Rows: %d ids of %d elements is more than one launch covers", count, dim));
  }
  const auto kernel = vectorized ? GatherBf16RowsKernel<kVectorWidth> : GatherBf16RowsKernel<1>;
  return LaunchKernel(kernel, static_cast<int>(blocks), kThreads, 0, stream, /*overlap=*/true,
                      args);
}

}  // namespace gquant::cuda
