#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_primitives.cuh"
#include "int4_mma_dequantize.cuh"
#include "int4_mma_layout.h"
#include "int4_wgmma_gemm.cuh"
#include "sm90_primitives.cuh"

namespace gquant::cuda {
namespace {

constexpr int kTokensPerTile = 256;                             // wgmma N
constexpr int kRowsPerTile = 128;                               // two warp groups x wgmma M = 64
constexpr int kRowBlocksPerTile = kRowsPerTile / kInt4MmaRows;  // 8

// Two warp groups, each copying, dequantizing and multiplying: warp group c
// owns weight rows 64 c .. 64 c + 63 of the tile (warp w dequantizes row
// block 4 c + w) and all 256 tokens (one m64n256 accumulator, 128
// registers a thread). It dequantizes step i + 2 while the tensor cores run
// its step i and i + 1 wgmmas (asynchronous), so the ALU work (~5.5
// instructions per weight) overlaps the matrix work, and 256 tokens per
// tile halve that work per flop. No warp group of its own copies: at 384 threads ptxas caps a
// thread at 168 registers and spilled the accumulators (the wgmmas then
// serialize); measured alternatives in bench/RESULTS.md.
constexpr int kThreads = 256;

// Ring depths. x tiles and the raw packed tiles share a 4-deep ring: step
// s's copies are issued during step s - 3 and needed (dequantized) during
// step s - 2, and the wgmmas of steps s - 2 and s - 1 read two more slots.
// bf16 weight tiles rotate through 4 slots: the one being written, the two
// the wgmmas in flight read, and the next one, written a step ahead.
constexpr int kCopyStages = 4;
constexpr int kWeightStages = 4;

constexpr int kXTileBytes = kTokensPerTile * kInt4MmaTileK * 2;     // 32 KiB
constexpr int kWTileBytes = kRowsPerTile * kInt4MmaTileK * 2;       // 16 KiB
constexpr int kCodesBytes = kRowBlocksPerTile * kInt4MmaTileBytes;  // 4 KiB
constexpr int kParamsBytesPerRowBlock = 128;  // up to two groups x 8 (row g, row g + 8) x 8 bytes
constexpr int kRawBytes = kCodesBytes + kRowBlocksPerTile * kParamsBytesPerRowBlock;

constexpr int kXOffset = 0;
constexpr int kWOffset = kXOffset + kCopyStages * kXTileBytes;
constexpr int kRawOffset = kWOffset + kWeightStages * kWTileBytes;
// + 1024: the dynamic allocation is aligned up to the 128-byte swizzle's atom.
constexpr int kSharedBytes = kRawOffset + kCopyStages * kRawBytes + 1024;
static_assert(kXTileBytes % 1024 == 0 && kWTileBytes % 1024 == 0 && kRawOffset % 1024 == 0);

// The epilogue stages y's tile [256 tokens][128 rows] bf16 in the x ring
// (free by then), rows padded by 16 bytes so the fragment stores of a warp
// (4 tokens x 8 rows) hit distinct banks.
constexpr int kOutRowBytes = kRowsPerTile * 2 + 16;
static_assert(kTokensPerTile * kOutRowBytes <= kCopyStages * kXTileBytes);

struct Args {
  const uint4* tiles;      // [N/16][K/64][32 lanes]
  const uint4* params;     // [N/16][G][8] x 8 bytes, as 16-byte chunks
  const __nv_bfloat16* x;  // [m, k]
  __nv_bfloat16* y;        // [m, n]
  int64_t m, n, k;
  int k_tiles;          // K / 64
  int groups;           // K / group size
  int tiles_per_group;  // group size / 64 (group sizes of 64 and more)
  int token_tiles;      // ceil(m / 256)
};

// Where a thread's copies of one step go. Thread p copies x rows p / 8 +
// 32 r, chunk p % 8; warp w (= the row block it dequantizes) its packed
// tile, lane l's 16 bytes, and lanes 0..7 (or 0..3 with one group per tile)
// the row block's params.
struct Copier {
  const Args& a;
  uint32_t smem;
  int64_t token0, row_block0;
  int row_blocks, p, block, lane;

  template <bool kTwoGroups>
  __device__ __forceinline__ void Issue(int step) const {
    const int slot = step % kCopyStages;
    const uint32_t x_tile = smem + kXOffset + slot * kXTileBytes;
    const int x_chunk = p % 8;
#pragma unroll
    for (int r = 0; r < kTokensPerTile / (kThreads / 8); ++r) {
      const int row = p / 8 + (kThreads / 8) * r;
      const bool valid = token0 + row < a.m;
      const __nv_bfloat16* src =
          a.x + (valid ? (token0 + row) * a.k : 0) + step * kInt4MmaTileK + x_chunk * 8;
      CopyAsync16If(x_tile + Swizzle128Offset(row, x_chunk), src, valid);
    }
    const uint32_t raw = smem + kRawOffset + slot * kRawBytes;
    const bool valid = block < row_blocks;
    const int64_t row_block = row_block0 + (valid ? block : 0);
    CopyAsync16If(raw + (block * 32 + lane) * 16,
                  a.tiles + (row_block * a.k_tiles + step) * 32 + lane, valid);
    constexpr int kParamChunks = kTwoGroups ? 8 : 4;
    const int group = kTwoGroups ? 2 * step : step / a.tiles_per_group;
    CopyAsync16If(raw + kCodesBytes + block * kParamsBytesPerRowBlock + (lane % kParamChunks) * 16,
                  a.params + (row_block * a.groups + group) * 4 + lane % kParamChunks,
                  valid && lane < kParamChunks);
  }
};

// Warp `block`'s row block of step i's raw tile into weight slot
// i % kWeightStages: lane (g, t) its 16 bytes (rows g, g + 8; columns 8t..,
// 32 + 8t..), stored 128-byte swizzled for wgmma.
template <bool kMinForm, bool kTwoGroups>
__device__ __forceinline__ void DequantizeStep(uint32_t smem, int i, int block, int lane,
                                               int row_blocks) {
  if (block < row_blocks) {  // warp-uniform; rows past N stay unwritten (never stored)
    const int g = lane / 4, t = lane % 4;
    const uint32_t raw = smem + kRawOffset + (i % kCopyStages) * kRawBytes;
    const uint32_t w_tile = smem + kWOffset + (i % kWeightStages) * kWTileBytes;
    uint4 codes;
    uint2 p0, p1;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(codes.x), "=r"(codes.y), "=r"(codes.z), "=r"(codes.w)
                 : "r"(raw + (block * 32 + lane) * 16));
    const uint32_t params = raw + kCodesBytes + block * kParamsBytesPerRowBlock + g * 8;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(p0.x), "=r"(p0.y) : "r"(params));
    if (kTwoGroups) {
      asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n"
                   : "=r"(p1.x), "=r"(p1.y)
                   : "r"(params + 64));
    } else {
      p1 = p0;
    }
    const int row = block * kInt4MmaRows + g;
    auto store = [](uint32_t dst, uint4 v) {
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y),
                   "r"(v.z), "r"(v.w)
                   : "memory");
    };
    store(w_tile + Swizzle128Offset(row, t), DequantizeRun<kMinForm>(codes.x, codes.y, 0, p0.x));
    store(w_tile + Swizzle128Offset(row + 8, t),
          DequantizeRun<kMinForm>(codes.x, codes.y, 1, p0.y));
    store(w_tile + Swizzle128Offset(row, 4 + t),
          DequantizeRun<kMinForm>(codes.z, codes.w, 0, p1.x));
    store(w_tile + Swizzle128Offset(row + 8, 4 + t),
          DequantizeRun<kMinForm>(codes.z, codes.w, 1, p1.y));
  }
  FenceProxyAsyncShared();  // the tile is read by wgmma
}

// Step i of warp group c: issue step i + 1's wgmmas (steps i and i + 1 in
// flight); wait for step i - 1's wgmmas and for this thread's copies of
// step i + 2; a block barrier (every thread's copies landed, since both
// warp groups read the whole x tile, and no wgmma reads step i - 1's copy
// slot any more); issue step i + 3's copies into that slot; dequantize step
// i + 2 (into the weight slot step i - 2 used); a block barrier (its weight
// tile is complete before step i + 1 issues its wgmmas).
template <bool kMinForm, bool kTwoGroups>
__global__ void __launch_bounds__(kThreads, 1) Int4WgmmaGemmKernel(const Args a) {
#if GQUANT_SM90A_DEVICE
  extern __shared__ uint8_t shared_raw[];
  const uint32_t smem = (SharedAddress(shared_raw) + 1023) & ~1023u;
  const int64_t token_tile = blockIdx.x % a.token_tiles, row_tile = blockIdx.x / a.token_tiles;
  const int64_t token0 = token_tile * kTokensPerTile, row0 = row_tile * kRowsPerTile;
  const int64_t left = (a.n - row0) / kInt4MmaRows;
  const int row_blocks = left < kRowBlocksPerTile ? static_cast<int>(left) : kRowBlocksPerTile;
  const int p = threadIdx.x, consumer = p / 128, warp = p % 128 / 32, lane = p % 32;
  const int block = 4 * consumer + warp;  // the row block this warp copies and dequantizes
  const Copier copier{a, smem, token0, row0 / kInt4MmaRows, row_blocks, p, block, lane};

  // Prologue: steps 0 .. 2 copied, 0 and 1 dequantized, step 0's wgmmas issued.
#pragma unroll
  for (int s = 0; s < kCopyStages - 1; ++s) {
    if (s < a.k_tiles) copier.Issue<kTwoGroups>(s);
    CommitCopies();  // one group per step, empty past the end
  }
  WaitCopies<kCopyStages - 3>();  // steps 0 and 1
  FenceProxyAsyncShared();
  __syncthreads();
  DequantizeStep<kMinForm, kTwoGroups>(smem, 0, block, lane, row_blocks);
  if (a.k_tiles > 1) DequantizeStep<kMinForm, kTwoGroups>(smem, 1, block, lane, row_blocks);
  __syncthreads();

  float d[128];  // set by the first wgmma (accumulate = false)
  auto multiply = [&](int step) {
    const uint64_t x_desc =
        Swizzle128Descriptor(smem + kXOffset + (step % kCopyStages) * kXTileBytes);
    const uint64_t w_desc = Swizzle128Descriptor(
        smem + kWOffset + (step % kWeightStages) * kWTileBytes + consumer * (kWTileBytes / 2));
    WgmmaFence();
#pragma unroll
    for (int s = 0; s < kInt4MmaTileK / 16; ++s) {
      WgmmaM64N256K16(d, w_desc + 2 * s, x_desc + 2 * s, step > 0 || s > 0);
    }
    WgmmaCommit();
  };
  multiply(0);
  for (int i = 0; i < a.k_tiles; ++i) {
    if (i + 1 < a.k_tiles) multiply(i + 1);  // steps i and i + 1 in flight
    WgmmaWait<2>();                          // step i - 1's are done
    if (i + 2 < a.k_tiles) {
      WaitCopies<0>();          // step i + 2's copies (issued last step) landed
      FenceProxyAsyncShared();  // x is read by wgmma
    }
    __syncthreads();  // every thread's copies of step i + 2, both groups past step i - 1
    if (i + 3 < a.k_tiles) copier.Issue<kTwoGroups>(i + 3);  // into step i - 1's slot
    CommitCopies();
    if (i + 2 < a.k_tiles) {
      DequantizeStep<kMinForm, kTwoGroups>(smem, i + 2, block, lane, row_blocks);
    }
    __syncthreads();  // step i + 2's weight tile is complete
  }
  WgmmaWait<0>();
#pragma unroll
  for (int r = 0; r < 128; ++r) PinRegister(d[r]);

  // Stage the tile transposed ([token][row]) in the x ring, then write y's
  // rows in 16-byte pieces. Both warp groups' wgmmas must be done with the
  // ring first, and every copy has landed (the last steps issued none).
  WaitCopies<0>();
  __syncthreads();
  const uint32_t out = smem + kXOffset;
  const int row = consumer * 64 + warp * 16 + lane / 4;
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    const int token = 8 * j + 2 * (lane % 4);
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      // Tokens token and token + 1 of row (+ 8 for e = 2): one rounding
      // for the pair, one store per half.
      const uint32_t pair = PackBf16x2(d[4 * j + e], d[4 * j + e + 1]);
      const uint32_t at = out + token * kOutRowBytes + (row + 8 * (e / 2)) * 2;
      asm volatile(
          "{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n st.shared.b16 [%0], lo;\n"
          " st.shared.b16 [%0 + %2], hi;\n}\n" ::"r"(at),
          "r"(pair), "n"(kOutRowBytes)
          : "memory");
    }
  }
  __syncthreads();
  constexpr int kChunksPerToken = kRowsPerTile / 8;
#pragma unroll 4
  for (int c = p; c < kTokensPerTile * kChunksPerToken; c += kThreads) {
    const int token = c / kChunksPerToken, chunk = c % kChunksPerToken;
    const int64_t n = row0 + chunk * 8;
    if (token0 + token >= a.m || n >= a.n) continue;  // N % 16 == 0: whole chunks
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(out + token * kOutRowBytes + chunk * 16));
    *reinterpret_cast<uint4*>(a.y + (token0 + token) * a.n + n) = v;
  }
#else
  __trap();
#endif
}

}  // namespace

bool Int4WgmmaGemmAvailable() {
#if defined(GQUANT_CUDA_SM90A)
  absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
  return device.ok() && device->major == 9 && device->minor == 0 &&
         device->shared_per_block >= kSharedBytes;
#else
  return false;
#endif
}

absl::Status Int4WgmmaGemm(const Int4MmaWeight& weight, const __nv_bfloat16* x, int64_t m,
                           __nv_bfloat16* y, cudaStream_t stream) {
  if (absl::Status s = CheckInt4MmaShape(weight.n, weight.k, weight.group_size); !s.ok()) {
    return s;
  }
  if (weight.qweight == nullptr || weight.params == nullptr || x == nullptr || y == nullptr ||
      !Aligned(weight.qweight, 16) || !Aligned(weight.params, 16) || !Aligned(x, 16) ||
      !Aligned(y, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4WgmmaGemm: expected non-null qweight, params, x and y, 16-byte aligned, but got "
        "qweight %p, params %p, x %p, y %p",
        weight.qweight, weight.params, x, y));
  }
  if (m < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4WgmmaGemm: expected m >= 1, but got %d", m));
  }
  if (!Int4WgmmaGemmAvailable()) {
    return absl::FailedPreconditionError(
        "Int4WgmmaGemm: needs a build for sm_90a and a compute capability 9.0 device");
  }
  const int64_t token_tiles = (m + kTokensPerTile - 1) / kTokensPerTile;
  const int64_t row_tiles = (weight.n + kRowsPerTile - 1) / kRowsPerTile;
  if (token_tiles * row_tiles >= int64_t{1} << 31) {  // gridDim.x < 2^31
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4WgmmaGemm: %d x %d output tiles exceed one grid", token_tiles, row_tiles));
  }
  const Args args{weight.qweight,
                  reinterpret_cast<const uint4*>(weight.params),
                  x,
                  y,
                  m,
                  weight.n,
                  weight.k,
                  static_cast<int>(weight.k / kInt4MmaTileK),
                  static_cast<int>(weight.k / weight.group_size),
                  std::max(weight.group_size / kInt4MmaTileK, 1),
                  static_cast<int>(token_tiles)};
  const bool two_groups = weight.group_size == 32;
  void (*kernel)(Args) =
      weight.min_form
          ? (two_groups ? Int4WgmmaGemmKernel<true, true> : Int4WgmmaGemmKernel<true, false>)
          : (two_groups ? Int4WgmmaGemmKernel<false, true> : Int4WgmmaGemmKernel<false, false>);
  GQ_RETURN_IF_CUDA_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  kernel<<<static_cast<unsigned>(token_tiles * row_tiles), kThreads, kSharedBytes, stream>>>(args);
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gquant::cuda
