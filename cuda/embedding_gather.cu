#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device_primitives.cuh"
#include "embedding_gather.cuh"
#include "gquant/status.h"
#include "int4_mma_layout.h"
#include "launch.cuh"
#include "row_access.cuh"

namespace gquant::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRunsPerThread = 4;  // 16-byte loads in flight per thread
// Runs (16 codes) per launch, so that run indices stay 32-bit.
constexpr int64_t kMaxRunsPerLaunch = int64_t{1} << 30;
constexpr uint32_t kNaNBf16x2 = 0x7FC07FC0u;

// InvalidArgument (prefixed with `op`) unless the table's codes and `out`
// are non-null and 16-byte aligned, params and ids non-null and aligned, and
// count >= 0.
absl::Status CheckGatherPointers(const char* op, const void* codes, const void* params,
                                 int params_alignment, const int32_t* ids, int count,
                                 const void* out) {
  if (codes == nullptr || params == nullptr || ids == nullptr || out == nullptr ||
      !Aligned(codes, 16) || !Aligned(params, params_alignment) || !Aligned(ids, 4) ||
      !Aligned(out, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: expected non-null codes and out 16-byte aligned, params %d-byte and ids 4-byte "
        "aligned, but got codes %p, params %p, ids %p, out %p",
        op, params_alignment, codes, params, ids, out));
  }
  if (count < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: count must be >= 0, but got %d", op, count));
  }
  return absl::OkStatus();
}

// Calls launch(first id, ids, blocks) for slices of the `count` ids whose
// 16-byte runs (runs_per_row per id, kRunsPerThread per thread) fit one grid.
template <typename Launch>
absl::Status ForEachLaunch(int count, int64_t runs_per_row, Launch launch) {
  constexpr int kRunsPerBlock = kThreads * kRunsPerThread;
  const int64_t ids_per_launch = std::max<int64_t>(1, kMaxRunsPerLaunch / runs_per_row);
  for (int64_t begin = 0; begin < count; begin += ids_per_launch) {
    const int64_t ids = std::min<int64_t>(ids_per_launch, count - begin);
    const int blocks = static_cast<int>((ids * runs_per_row + kRunsPerBlock - 1) / kRunsPerBlock);
    GQ_RETURN_IF_ERROR(launch(begin, ids, blocks));
  }
  return absl::OkStatus();
}

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

// Where one row's codes sit in a 16 x 64 tile (int4_mma_layout.h): row r
// (g = r % 8, half = r / 8) is in the 16 bytes of lanes 4g + t, t < 4, as
// columns 8t + j (word j / 4) and 32 + 8t + j (word 2 + j / 4), j < 8; column
// e = j % 4 of a word is the nibble at NibbleShift(half, e).
constexpr int NibbleShift(int half, int e) { return 4 * (half + 2 * (e / 2)) + 16 * (e % 2); }

// The above against the packer's Int4MmaSlotOf, for every element of a tile.
constexpr bool MatchesInt4MmaLayout() {
  for (int r = 0; r < kInt4MmaRows; ++r) {
    for (int c = 0; c < kInt4MmaTileK; ++c) {
      const int h = c / 32, t = c % 32 / 8, j = c % 8;
      const int lane = 4 * (r % 8) + t, word = 2 * h + j / 4;
      const Int4MmaSlot slot = Int4MmaSlotOf(r, c);
      if (slot.word_offset != (lane * 4 + word) * 4 || slot.shift != NibbleShift(r / 8, j % 4)) {
        return false;
      }
    }
  }
  return true;
}
static_assert(MatchesInt4MmaLayout(), "GatherInt4MmaRows reads the tile layout differently");

struct Int4GatherArgs {
  const uint4* tiles;      // [N/16][K/64][32 lanes]
  const uint32_t* params;  // bf16x2 (scale, zero or min) words, at Int4MmaParamIndex
  const int32_t* ids;      // the launch's first id
  uint4* out;              // the launch's first row: [count][K/8] runs of 8 bf16
  int64_t n;
  int64_t k_tiles;   // K / 64
  int64_t groups;    // K / group size
  int group_size;    // 32 or a multiple of 64
  int runs;          // count * runs_per_row
  int runs_per_row;  // K / 16: 4 lane chunks per tile
  float multiplier;
  bool min_form;
};

// Columns 8t..8t+7 of one tile half for row half `half`, from the lane's two
// words of that half (four columns each), scaled as the int8 gather does;
// `param` is the row's bf16x2 word for the group (scale low, zero high).
__device__ __forceinline__ uint4 ScaledInt4Run(const Int4GatherArgs& a, uint32_t word0,
                                               uint32_t word1, int half, uint32_t param) {
  const float2 p = make_float2(__uint_as_float(param << 16), __uint_as_float(param & 0xFFFF0000u));
  auto column = [&](uint32_t word, int e) {
    const float q = static_cast<float>((word >> NibbleShift(half, e)) & 0xFu);  // exact
    return Scaled(q, p, a.min_form, a.multiplier);
  };
  return make_uint4(PackBf16x2(column(word0, 0), column(word0, 1)),
                    PackBf16x2(column(word0, 2), column(word0, 3)),
                    PackBf16x2(column(word1, 0), column(word1, 1)),
                    PackBf16x2(column(word1, 2), column(word1, 3)));
}

// Run i of the launch is lane chunk q = i % 4 of k tile (i % runs_per_row) /
// 4 of output row i / runs_per_row: the thread loads lane 4g + q's 16 bytes
// of the id's tile and writes two 16-byte runs of the row (columns 8q.. and
// 32 + 8q.. of the tile), so the 4 threads of a tile fill 128 contiguous
// bytes. Thread i of block b handles runs b · 1024 + i + 256 j, j < 4, all
// loaded before any is stored, as GatherInt8RowsKernel.
__global__ void __launch_bounds__(kThreads) GatherInt4MmaRowsKernel(const Int4GatherArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int first = blockIdx.x * kThreads * kRunsPerThread + threadIdx.x;
  uint4 codes[kRunsPerThread];
  uint32_t params[kRunsPerThread][2];
  int halves[kRunsPerThread];
  bool valid[kRunsPerThread];
#pragma unroll
  for (int i = 0; i < kRunsPerThread; ++i) {
    const int run = first + i * kThreads;
    valid[i] = false;
    if (run < a.runs) {
      const int t = run / a.runs_per_row, chunk = run - t * a.runs_per_row;
      const int64_t id = a.ids[t];  // written by the predecessor: not through __ldg
      valid[i] = id >= 0 && id < a.n;
      if (valid[i]) {
        const int row = static_cast<int>(id % kInt4MmaRows), k_tile = chunk / 4, q = chunk % 4;
        halves[i] = row / 8;
        codes[i] =
            __ldg(a.tiles + (id / kInt4MmaRows * a.k_tiles + k_tile) * 32 + 4 * (row % 8) + q);
        const int column = k_tile * kInt4MmaTileK + 8 * q;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          params[i][h] =
              __ldg(a.params + Int4MmaParamIndex(id, (column + 32 * h) / a.group_size, a.groups));
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRunsPerThread; ++i) {
    const int run = first + i * kThreads;
    if (run >= a.runs) break;
    uint4 lo = make_uint4(kNaNBf16x2, kNaNBf16x2, kNaNBf16x2, kNaNBf16x2), hi = lo;
    if (valid[i]) {
      lo = ScaledInt4Run(a, codes[i].x, codes[i].y, halves[i], params[i][0]);
      hi = ScaledInt4Run(a, codes[i].z, codes[i].w, halves[i], params[i][1]);
    }
    const int t = run / a.runs_per_row, chunk = run - t * a.runs_per_row;
    uint4* tile_out = a.out + int64_t{t} * 2 * a.runs_per_row + chunk / 4 * 8 + chunk % 4;
    tile_out[0] = lo;  // columns 8q..8q+7 of the tile
    tile_out[4] = hi;  // columns 32+8q..32+8q+7
  }
}

}  // namespace

absl::Status GatherInt8Rows(const Int8RowsWeight& table, const int32_t* ids, int count,
                            float multiplier, __nv_bfloat16* out, cudaStream_t stream) {
  if (absl::Status s = CheckInt8RowsShape(table.n, table.k, table.group_size); !s.ok()) return s;
  GQ_RETURN_IF_ERROR(CheckGatherPointers("GatherInt8Rows", table.codes, table.params,
                                         /*params_alignment=*/8, ids, count, out));
  const int64_t runs_per_row = table.k / 16;
  return ForEachLaunch(count, runs_per_row, [&](int64_t begin, int64_t ids_now, int blocks) {
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
    GatherInt8RowsKernel<<<blocks, kThreads, 0, stream>>>(args);
    GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
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

absl::Status GatherInt4MmaRows(const Int4MmaWeight& table, const int32_t* ids, int count,
                               float multiplier, __nv_bfloat16* out, cudaStream_t stream) {
  if (absl::Status s = CheckInt4MmaShape(table.n, table.k, table.group_size); !s.ok()) return s;
  GQ_RETURN_IF_ERROR(CheckGatherPointers("GatherInt4MmaRows", table.qweight, table.params,
                                         /*params_alignment=*/4, ids, count, out));
  const int64_t runs_per_row = table.k / 16;
  return ForEachLaunch(count, runs_per_row, [&](int64_t begin, int64_t ids_now, int blocks) {
    const Int4GatherArgs args{table.qweight,
                              reinterpret_cast<const uint32_t*>(table.params),
                              ids + begin,
                              reinterpret_cast<uint4*>(out) + begin * runs_per_row * 2,
                              table.n,
                              table.k / kInt4MmaTileK,
                              table.k / table.group_size,
                              table.group_size,
                              static_cast<int>(ids_now * runs_per_row),
                              static_cast<int>(runs_per_row),
                              multiplier,
                              table.min_form};
    return LaunchKernel(GatherInt4MmaRowsKernel, blocks, kThreads, 0, stream, /*overlap=*/true,
                        args);
  });
}

}  // namespace gquant::cuda
