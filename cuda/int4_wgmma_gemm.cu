#include <cuda.h>          // CUtensorMap (types only)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_primitives.cuh"
#include "gquant/status.h"
#include "int4_mma_layout.h"
#include "int4_wgmma_gemm.cuh"
#include "sm90_primitives.cuh"

namespace gquant::cuda {
namespace {

constexpr int kTokensPerTile = 256;                             // wgmma N
constexpr int kRowsPerTile = 128;                               // two warp groups x wgmma M = 64
constexpr int kRowBlocksPerTile = kRowsPerTile / kInt4MmaRows;  // 8

// Two warp groups multiply, each owning weight rows 64 c .. 64 c + 63 of
// the tile and all 256 tokens (one m64n256 accumulator, 128 registers a
// thread), and one more issues the copies. Three warps then share each of
// the four register files, so ptxas caps a thread at 168 registers at
// entry, too few beside the accumulators; the copying group gives registers
// back (setmaxnreg) and the multiplying groups take 232.
constexpr int kConsumerThreads = 256;
constexpr int kThreads = kConsumerThreads + 128;
constexpr int kConsumerWarps = kConsumerThreads / 32;
constexpr int kCopierRegisters = 40, kConsumerRegisters = 232;
static_assert(kCopierRegisters * 128 + kConsumerRegisters * kConsumerThreads <= 65536);

// A stage holds one K step (64 columns): x's [256 tokens][64] tile, put
// there 128-byte swizzled by the copy engine from a tensor map (rows past M
// read as zeros), and the tile's packed codes and params (plain bulk
// copies). Each stage has a "full" barrier (the issuing lane's arrival +
// the bytes) and an "empty" one (one arrival per multiplying warp, after
// its wgmmas that read the stage's x have completed), so copies run up to
// kStages - 1 steps ahead.
constexpr int kStages = 5;
constexpr int kXTileBytes = kTokensPerTile * kInt4MmaTileK * 2;     // 32 KiB
constexpr int kCodesBytes = kRowBlocksPerTile * kInt4MmaTileBytes;  // 4 KiB
constexpr int kParamsBytesPerRowBlock = 128;  // up to two groups x 8 (row g, row g + 8) x 8 bytes
constexpr int kStageBytes = kXTileBytes + kCodesBytes + kRowBlocksPerTile * kParamsBytesPerRowBlock;
static_assert(kStageBytes % 1024 == 0, "x tiles stay aligned to the swizzle atom");

// Each multiplying warp dequantizes its row block of a step into its warp
// group's weight tile [64 rows][64] bf16, 128-byte swizzled as wgmma reads
// its A operand, two tiles per group alternating by step, so one is written
// while the wgmmas of the step before read the other. (A from registers,
// through ldmatrix since the packed order pairs columns for the GEMV's x
// loads, measured ~5% slower: 341 / 927 / 957 against 324 / 882 / 902 µs on
// q_proj, gate/up and down at M = 2048.)
constexpr int kWeightTileBytes = 64 * kInt4MmaTileK * 2;  // 8 KiB
constexpr int kWeightTilesOffset = kStages * kStageBytes;
constexpr int kBarriersOffset = kWeightTilesOffset + 2 * 2 * kWeightTileBytes;
// + 1024: the dynamic allocation is aligned up to the 128-byte swizzle's atom.
constexpr int kSharedBytes = kBarriersOffset + 2 * kStages * 8 + 1024;

// The epilogue stages y's tile [256 tokens][128 rows] bf16 in the stages
// (free by then), rows padded by 16 bytes so the fragment stores of a warp
// (4 tokens x 8 rows) hit distinct banks.
constexpr int kOutRowBytes = kRowsPerTile * 2 + 16;
static_assert(kTokensPerTile * kOutRowBytes <= kStages * kStageBytes);

struct Args {
  const uint8_t* tiles;   // [N/16][K/64] tiles of kInt4MmaTileBytes
  const uint8_t* params;  // [N/16][G] x 64 bytes
  __nv_bfloat16* y;       // [m, n]
  int64_t m, n;
  int k_tiles;          // K / 64
  int groups;           // K / group size
  int tiles_per_group;  // group size / 64 (group sizes of 64 and more)
  int token_tiles;      // ceil(m / 256)
};

// The copying warp's copies of step i into its stage, once every
// multiplying warp has released the stage (from its second use on): x's
// tile (lane 0, the tensor map) and each row block's packed tile and params
// (lanes 0..7 and 8..15).
template <bool kTwoGroups>
__device__ __forceinline__ void CopyStep(const Args& a, const CUtensorMap& x_map, uint32_t smem,
                                         int i, int64_t token0, int64_t row_block0, int row_blocks,
                                         int lane) {
  constexpr uint32_t kParamBytes = kTwoGroups ? 128 : 64;
  const int slot = i % kStages;
  const uint32_t stage = smem + slot * kStageBytes;
  const uint32_t full = smem + kBarriersOffset + slot * 8;
  if (i >= kStages) BarrierWait(full + kStages * 8, (i / kStages - 1) % 2);
  if (lane == 0) {
    BarrierArriveExpectingBytes(full, kXTileBytes + row_blocks * (kInt4MmaTileBytes + kParamBytes));
    CopyTile2d(stage, &x_map, i * kInt4MmaTileK, static_cast<int>(token0), full);
  }
  const int block = lane % 8;
  if (lane < 16 && block < row_blocks) {
    const int64_t row_block = row_block0 + block;
    if (lane < 8) {
      CopyBytes(stage + kXTileBytes + block * kInt4MmaTileBytes,
                a.tiles + (row_block * a.k_tiles + i) * kInt4MmaTileBytes, kInt4MmaTileBytes, full);
    } else {
      const int group = kTwoGroups ? 2 * i : i / a.tiles_per_group;
      CopyBytes(stage + kXTileBytes + kCodesBytes + block * kParamsBytesPerRowBlock,
                a.params + (row_block * a.groups + group) * 64, kParamBytes, full);
    }
  }
}

// The weights as this kernel computes them, two per bf16x2 instruction:
// w = bf16(q * scale + bf16(-zero * scale)), or bf16(q * scale - min) in the
// min form, each a single rounding of an exact value (q exact from the
// nibble's 128 + q bits, zero * scale exact in float). The zero form's
// offset is rounded once more than the dequantizer's float formula
// (int4_mma_dequantize.cuh), so weights may differ from it by a bf16 unit.
// That formula costs ~5.5 instructions a weight against ~1.5 here (q_proj
// at M = 2048: 463 against 409 µs).
struct PairParams {
  __nv_bfloat162 scale, offset;
};

template <bool kMinForm>
__device__ __forceinline__ PairParams PairParamsOf(uint32_t param) {
  const float scale = __uint_as_float(param << 16);
  const float zero = __uint_as_float(param & 0xFFFF0000u);  // or min
  const __nv_bfloat16 offset = __float2bfloat16_rn(kMinForm ? -zero : -(zero * scale));
  return {__float2bfloat162_rn(scale), __bfloat162bfloat162(offset)};
}

// Eight consecutive columns of one row from the lane's two words of a tile
// half (int4_mma_dequantize.cuh's DequantizeRun, other arithmetic): the
// nibbles at 4 i and 4 i + 16 of a word are two adjacent columns, pair i =
// row_half, then row_half + 2 of each word.
__device__ __forceinline__ uint4 DequantizeRunPairs(uint32_t word0, uint32_t word1, int row_half,
                                                    PairParams p) {
  const __nv_bfloat162 bias = __float2bfloat162_rn(128.0f);
  auto pair = [&](uint32_t word, int i) {
    uint32_t biased;  // bf16x2 (128 + q_lo, 128 + q_hi)
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n"
        : "=r"(biased)
        : "r"(word >> (4 * i)), "n"(0x000F000F), "n"(0x43004300));
    const __nv_bfloat162 q = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&biased), bias);
    const __nv_bfloat162 w = __hfma2(q, p.scale, p.offset);
    return *reinterpret_cast<const uint32_t*>(&w);
  };
  return make_uint4(pair(word0, row_half), pair(word0, row_half + 2), pair(word1, row_half),
                    pair(word1, row_half + 2));
}

// Warp `block`'s row block of the stage into its 16 rows of a weight tile
// (`rows`): lane (g, t) dequantizes rows g and g + 8, columns 8t.. and
// 32 + 8t.. (its 16 packed bytes). Rows past N (a warp-uniform case) are
// left as they are: their outputs are never stored.
template <bool kMinForm, bool kTwoGroups>
__device__ __forceinline__ void DequantizeRows(uint32_t stage, uint32_t rows, int block, int lane,
                                               bool valid) {
  if (!valid) return;
  const int g = lane / 4, t = lane % 4;
  uint4 codes;
  uint2 p0, p1{};
  const uint32_t raw = stage + kXTileBytes;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(codes.x), "=r"(codes.y), "=r"(codes.z), "=r"(codes.w)
               : "r"(raw + (block * 32 + lane) * 16));
  const uint32_t params = raw + kCodesBytes + block * kParamsBytesPerRowBlock + g * 8;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(p0.x), "=r"(p0.y) : "r"(params));
  if (kTwoGroups) {
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(p1.x), "=r"(p1.y) : "r"(params + 64));
  }
  auto store = [](uint32_t dst, uint4 v) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y),
                 "r"(v.z), "r"(v.w)
                 : "memory");
  };
  const PairParams g0 = PairParamsOf<kMinForm>(p0.x), g8 = PairParamsOf<kMinForm>(p0.y);
  const PairParams h0 = kTwoGroups ? PairParamsOf<kMinForm>(p1.x) : g0;
  const PairParams h8 = kTwoGroups ? PairParamsOf<kMinForm>(p1.y) : g8;
  store(rows + Swizzle128Offset(g, t), DequantizeRunPairs(codes.x, codes.y, 0, g0));
  store(rows + Swizzle128Offset(g + 8, t), DequantizeRunPairs(codes.x, codes.y, 1, g8));
  store(rows + Swizzle128Offset(g, 4 + t), DequantizeRunPairs(codes.z, codes.w, 0, h0));
  store(rows + Swizzle128Offset(g + 8, 4 + t), DequantizeRunPairs(codes.z, codes.w, 1, h8));
  FenceProxyAsyncShared();  // read by wgmma
}

// Step i of a multiplying warp: wait until the stage is full, dequantize
// the warp's rows into the step's weight tile (while the tensor cores still
// run step i - 1), meet the warp group's other warps, issue step i's four
// wgmmas, wait for step i - 1's and release its stage.
template <bool kMinForm, bool kTwoGroups>
__global__ void __launch_bounds__(kThreads, 1)
    Int4WgmmaGemmKernel(const Args a, const __grid_constant__ CUtensorMap x_map) {
#if GQUANT_SM90A_DEVICE
  extern __shared__ uint8_t shared_raw[];
  const uint32_t smem = (SharedAddress(shared_raw) + 1023) & ~1023u;
  const int64_t token_tile = blockIdx.x % a.token_tiles, row_tile = blockIdx.x / a.token_tiles;
  const int64_t token0 = token_tile * kTokensPerTile, row0 = row_tile * kRowsPerTile;
  const int64_t left = (a.n - row0) / kInt4MmaRows;
  const int row_blocks = left < kRowBlocksPerTile ? static_cast<int>(left) : kRowBlocksPerTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t barriers = smem + kBarriersOffset;  // full[kStages], then empty[kStages]
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      BarrierInit(barriers + s * 8, 1);
      BarrierInit(barriers + (kStages + s) * 8, kConsumerWarps);
    }
    FenceBarrierInit();
  }
  __syncthreads();
  if (warp >= kConsumerWarps) {  // the copying warp group: one warp issues
    SetMaxRegisters<kCopierRegisters, false>();
    if (warp == kConsumerWarps) {
      for (int i = 0; i < a.k_tiles; ++i) {
        CopyStep<kTwoGroups>(a, x_map, smem, i, token0, row0 / kInt4MmaRows, row_blocks, lane);
      }
    }
    return;
  }
  SetMaxRegisters<kConsumerRegisters, true>();

  const int consumer = warp / 4;  // the warp group
  const bool valid = warp < row_blocks;
  float d[128];  // set by the first wgmma (accumulate = false)
  for (int i = 0; i < a.k_tiles; ++i) {
    const int slot = i % kStages;
    const uint32_t stage = smem + slot * kStageBytes;
    const uint32_t weights = smem + kWeightTilesOffset + (i % 2 * 2 + consumer) * kWeightTileBytes;
    BarrierWait(barriers + slot * 8, (i / kStages) % 2);
    DequantizeRows<kMinForm, kTwoGroups>(stage, weights + warp % 4 * kInt4MmaRows * 128, warp, lane,
                                         valid);
    asm volatile("bar.sync %0, 128;\n" ::"r"(2 + consumer) : "memory");  // the group's tile
    const uint64_t w_desc = Swizzle128Descriptor(weights), x_desc = Swizzle128Descriptor(stage);
    WgmmaFence();
#pragma unroll
    for (int s = 0; s < kInt4MmaTileK / 16; ++s) {
      WgmmaM64N256K16(d, w_desc + 2 * s, x_desc + 2 * s, i > 0 || s > 0);
    }
    WgmmaCommit();
    WgmmaWait<1>();  // step i - 1's wgmmas are done with their stage and weight tile
    if (i > 0 && lane == 0) BarrierArrive(barriers + (kStages + (i - 1) % kStages) * 8);
  }
  WgmmaWait<0>();
#pragma unroll
  for (int r = 0; r < 128; ++r) PinRegister(d[r]);

  // Stage the tile transposed ([token][row]) in the stages, then write y's
  // rows in 16-byte pieces. Both warp groups' wgmmas must be done with the
  // stages first; every copy has landed (each was waited for).
  const auto consumers_sync = [] { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerThreads)); };
  consumers_sync();
  const uint32_t out = smem;
  const int row = consumer * 64 + warp % 4 * 16 + lane / 4;
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
  consumers_sync();
  constexpr int kChunksPerToken = kRowsPerTile / 8;
#pragma unroll 4
  for (int c = threadIdx.x; c < kTokensPerTile * kChunksPerToken; c += kConsumerThreads) {
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

// x [m, k] bf16 as a tensor map whose boxes are the kernel's x tiles
// (64 columns x 256 rows, 128-byte swizzled); rows past m read as zeros.
// The encoder comes from the driver through the runtime, so the library
// does not link libcuda itself.
absl::StatusOr<CUtensorMap> XTileMap(const __nv_bfloat16* x, int64_t m, int64_t k) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function,
                                                           12000, cudaEnableDefault, &found);
    return e == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function)
               : nullptr;
  }();
  if (encode == nullptr) {
    return absl::InternalError("Int4WgmmaGemm: the driver has no cuTensorMapEncodeTiled");
  }
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {kInt4MmaTileK, kTokensPerTile};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                            const_cast<__nv_bfloat16*>(x), dims, strides, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrFormat(
        "Int4WgmmaGemm: cuTensorMapEncodeTiled failed (%d) for x [%d, %d]", r, m, k));
  }
  return map;
}

}  // namespace

int64_t Int4WgmmaGemmTiles(int64_t n, int64_t m) {
  return (m + kTokensPerTile - 1) / kTokensPerTile * ((n + kRowsPerTile - 1) / kRowsPerTile);
}

bool Int4WgmmaGemmAvailable() { return Sm90aKernelsRun(kSharedBytes); }

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
  const int64_t tiles = Int4WgmmaGemmTiles(weight.n, m);
  if (tiles >= int64_t{1} << 31) {  // gridDim.x < 2^31
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4WgmmaGemm: %d x %d output tiles exceed one grid", token_tiles, tiles / token_tiles));
  }
  GQ_ASSIGN_OR_RETURN(const CUtensorMap x_map, XTileMap(x, m, weight.k));
  const Args args{reinterpret_cast<const uint8_t*>(weight.qweight),
                  reinterpret_cast<const uint8_t*>(weight.params),
                  y,
                  m,
                  weight.n,
                  static_cast<int>(weight.k / kInt4MmaTileK),
                  static_cast<int>(weight.k / weight.group_size),
                  std::max(weight.group_size / kInt4MmaTileK, 1),
                  static_cast<int>(token_tiles)};
  const bool two_groups = weight.group_size == 32;
  void (*kernel)(Args, CUtensorMap) =
      weight.min_form
          ? (two_groups ? Int4WgmmaGemmKernel<true, true> : Int4WgmmaGemmKernel<true, false>)
          : (two_groups ? Int4WgmmaGemmKernel<false, true> : Int4WgmmaGemmKernel<false, false>);
  GQ_RETURN_IF_CUDA_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  kernel<<<static_cast<unsigned>(tiles), kThreads, kSharedBytes, stream>>>(args, x_map);
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace gquant::cuda
