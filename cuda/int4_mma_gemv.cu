#include <cuda_bf16.h>

#include "absl/strings/str_format.h"
#include "cuda_status.cuh"
#include "int4_mma_gemv.cuh"

namespace gquant::cuda {
namespace {

constexpr int kRows = 16;   // rows per tile (the mma's M)
constexpr int kTileK = 64;  // columns per tile: four k16 steps

// A 16-byte streaming load: weights are read once, so keep them out of L1,
// which holds the activations every warp re-reads.
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// D += A · B for one m16n8k16 bf16 tile, fp32 accumulate.
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One block per 16-row block; its kWarps warps split the 64-column tiles
// (warp w takes tiles w, w + kWarps, ...) and add their partial sums at the
// end. kGroupsPerTile: 2 for group size 32, 1 for multiples of 64.
// kTilesInFlight: tiles each warp loads before using any. kTokenTiles: n8
// tiles of tokens (1 for M <= 8, 2 for M <= 16), sharing each weight fragment.
template <int kWarps, int kGroupsPerTile, bool kMinForm, int kTilesInFlight, int kTokenTiles>
__global__ void __launch_bounds__(kWarps * 32)
    Int4MmaGemvKernel(const uint4* __restrict__ qweight, const __nv_bfloat162* __restrict__ params,
                      const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y, int m,
                      int n, int k, int tiles_per_group) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates
  const int k_tiles = k / kTileK;
  const int groups = kGroupsPerTile == 2 ? k_tiles * 2 : k_tiles / tiles_per_group;
  const uint4* tiles = qweight + static_cast<int64_t>(blockIdx.x) * k_tiles * 32;
  const __nv_bfloat162* block_params = params + static_cast<int64_t>(blockIdx.x) * groups * kRows;
  // Lane quad g feeds token g (+ 8 per token tile) as the B operand; padding tokens are 0.
  bool has_token[kTokenTiles];
  const uint32_t* xrow[kTokenTiles];
#pragma unroll
  for (int n8 = 0; n8 < kTokenTiles; ++n8) {
    has_token[n8] = g + 8 * n8 < m;
    xrow[n8] = reinterpret_cast<const uint32_t*>(
        x + static_cast<int64_t>(has_token[n8] ? g + 8 * n8 : 0) * k);
  }
  constexpr uint32_t kOnes = 0x3F803F80u;  // bf16x2 (1, 1)
  const uint32_t ones[4] = {kOnes, kOnes, kOnes, kOnes};

  // Per token tile: rows g, g, g+8, g+8; tokens 2t, 2t+1, 2t, 2t+1 (+ 8 per tile).
  float acc[kTokenTiles][4] = {};
  for (int tile0 = warp; tile0 < k_tiles; tile0 += kWarps * kTilesInFlight) {
    uint4 w[kTilesInFlight];
    uint32_t b[kTilesInFlight][kTokenTiles][8];
    __nv_bfloat162 p[kTilesInFlight][kGroupsPerTile][2];
#pragma unroll
    for (int u = 0; u < kTilesInFlight; ++u) {
      const int tile = min(tile0 + u * kWarps, k_tiles - 1);  // clamped; skipped below
      w[u] = LoadStreaming(tiles + static_cast<int64_t>(tile) * 32 + lane);
#pragma unroll
      for (int j = 0; j < kGroupsPerTile; ++j) {
        const int group = kGroupsPerTile == 2 ? 2 * tile + j : tile / tiles_per_group;
        p[u][j][0] = block_params[group * kRows + g];
        p[u][j][1] = block_params[group * kRows + g + 8];
      }
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const int col = tile * kTileK + s * 16 + 2 * t;
#pragma unroll
        for (int n8 = 0; n8 < kTokenTiles; ++n8) {
          b[u][n8][2 * s] = has_token[n8] ? __ldg(xrow[n8] + col / 2) : 0u;
          b[u][n8][2 * s + 1] = has_token[n8] ? __ldg(xrow[n8] + col / 2 + 4) : 0u;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kTilesInFlight; ++u) {
      if (tile0 + u * kWarps >= k_tiles) break;
      const uint32_t words[4] = {w[u].x, w[u].y, w[u].z, w[u].w};
      float dq[kTokenTiles][4] = {}, ds[kTokenTiles][4] = {};  // Σ (128 + q) x and Σ x
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint32_t a[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          // bf16 bits 0x4300 | q are 128 + q exactly (bf16 has 7 mantissa bits).
          a[i] = ((words[s] >> (4 * i)) & 0x000F000Fu) | 0x43004300u;
        }
#pragma unroll
        for (int n8 = 0; n8 < kTokenTiles; ++n8) {
          Mma(dq[n8], a, b[u][n8][2 * s], b[u][n8][2 * s + 1]);
          Mma(ds[n8], ones, b[u][n8][2 * s], b[u][n8][2 * s + 1]);
        }
        if (s % (4 / kGroupsPerTile) == 4 / kGroupsPerTile - 1) {  // end of a group's part
          const int j = kGroupsPerTile == 2 ? s / 2 : 0;
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // row g, then row g + 8
            const float scale = __low2float(p[u][j][h]), zero = __high2float(p[u][j][h]);
            const float c = kMinForm ? 128.0f * scale + zero : scale * (128.0f + zero);
#pragma unroll
            for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
              for (int i = 2 * h; i < 2 * h + 2; ++i) {
                acc[n8][i] += scale * dq[n8][i] - c * ds[n8][i];
                dq[n8][i] = ds[n8][i] = 0;
              }
            }
          }
        }
      }
    }
  }

  __shared__ float partial[kWarps][kTokenTiles][32][4];
#pragma unroll
  for (int n8 = 0; n8 < kTokenTiles; ++n8) {
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][n8][lane][i] = acc[n8][i];
  }
  __syncthreads();
  // 128 outputs per token tile; a 4-warp block covers two tiles in two passes.
  for (int e = threadIdx.x; e < 128 * kTokenTiles; e += kWarps * 32) {
    const int n8 = e / 128, l = e % 128 / 4, i = e % 4;
    float sum = 0;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) sum += partial[v][n8][l][i];
    const int token = 8 * n8 + 2 * (l % 4) + i % 2;
    const int row = blockIdx.x * kRows + l / 4 + (i / 2) * 8;
    if (token < m) y[static_cast<int64_t>(token) * n + row] = __float2bfloat16(sum);
  }
}

template <int kWarps, int kTilesInFlight>
absl::Status Launch(const Int4MmaWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                    cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(w.n / kRows));
  const int n = static_cast<int>(w.n), k = static_cast<int>(w.k);
  const int tiles_per_group = w.group_size / kTileK;  // 0 for group size 32
  const auto launch = [&](auto kernel) {
    kernel<<<grid, kWarps * 32, 0, stream>>>(w.qweight, w.params, x, y, m, n, k, tiles_per_group);
  };
  const auto for_tokens = [&]<int kGroupsPerTile, bool kMinForm>() {
    m <= 8 ? launch(Int4MmaGemvKernel<kWarps, kGroupsPerTile, kMinForm, kTilesInFlight, 1>)
           : launch(Int4MmaGemvKernel<kWarps, kGroupsPerTile, kMinForm, kTilesInFlight, 2>);
  };
  if (w.group_size == 32) {
    w.min_form ? for_tokens.template operator()<2, true>()
               : for_tokens.template operator()<2, false>();
  } else {
    w.min_form ? for_tokens.template operator()<1, true>()
               : for_tokens.template operator()<1, false>();
  }
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status Int4MmaGemv(const Int4MmaWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                         cudaStream_t stream, int warps_per_row_block, int tiles_in_flight) {
  if (w.qweight == nullptr || w.params == nullptr || x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("Int4MmaGemv: null pointer");
  }
  if (w.n <= 0 || w.n % kRows != 0 || w.k <= 0 || w.k % kTileK != 0 ||
      !(w.group_size == 32 || (w.group_size > 0 && w.group_size % kTileK == 0)) ||
      w.k % w.group_size != 0 || w.n > (int64_t{1} << 30) || w.k > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4MmaGemv: expected N %% 16 == 0, K %% 64 == 0 and a group size of 32 or a multiple "
        "of 64 dividing K, but got N=%d K=%d group=%d",
        w.n, w.k, w.group_size));
  }
  if (m < 1 || m > kInt4MmaMaxM) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Int4MmaGemv: M must be 1..%d, but got %d", kInt4MmaMaxM, m));
  }
  // Measured on an H100 (bench/RESULTS.md): split K over more warps when there
  // are few row blocks, and keep 2 tiles in flight per warp (fewer registers,
  // more resident warps, beat 4 or 8 on every 31B shape).
  const int64_t row_blocks = w.n / kRows;
  const int warps = warps_per_row_block != 0 ? warps_per_row_block
                    : row_blocks < 528       ? 16
                    : row_blocks < 4096      ? 8
                                             : 4;
  switch (warps * 100 + (tiles_in_flight != 0 ? tiles_in_flight : 2)) {
    case 402:
      return Launch<4, 2>(w, x, m, y, stream);
    case 404:
      return Launch<4, 4>(w, x, m, y, stream);
    case 802:
      return Launch<8, 2>(w, x, m, y, stream);
    case 804:
      return Launch<8, 4>(w, x, m, y, stream);
    case 1602:
      return Launch<16, 2>(w, x, m, y, stream);
    case 1604:
      return Launch<16, 4>(w, x, m, y, stream);
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "Int4MmaGemv: warps_per_row_block must be 4, 8 or 16 and tiles_in_flight 2 or 4, "
          "not %d and %d",
          warps, tiles_in_flight));
  }
}

PackedInt4Mma PackInt4Mma(std::span<const uint8_t> qdata, std::span<const uint16_t> scale_gn,
                          std::span<const uint16_t> zero_gn, int64_t n, int64_t k, int group_size) {
  PackedInt4Mma out;
  out.qweight.resize(n * k / 2);
  const int64_t k_tiles = k / kTileK, groups = k / group_size;
  const auto code = [&](int64_t row, int64_t col) {
    return (qdata[row * (k / 2) + col / 2] >> (4 * (col % 2))) & 0xF;
  };
  for (int64_t rb = 0; rb < n / kRows; ++rb) {
    for (int64_t tile = 0; tile < k_tiles; ++tile) {
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        for (int s = 0; s < 4; ++s) {
          uint32_t word = 0;
          for (int i = 0; i < 4; ++i) {
            // a_i: a0 (g, c), a1 (g + 8, c), a2 (g, c + 8), a3 (g + 8, c + 8).
            const int64_t row = rb * kRows + g + (i % 2) * 8;
            const int64_t col = tile * kTileK + s * 16 + 2 * t + (i / 2) * 8;
            word |= static_cast<uint32_t>(code(row, col)) << (4 * i);
            word |= static_cast<uint32_t>(code(row, col + 1)) << (16 + 4 * i);
          }
          const int64_t at = ((rb * k_tiles + tile) * 32 + lane) * 16 + s * 4;
          for (int byte = 0; byte < 4; ++byte) out.qweight[at + byte] = (word >> (8 * byte)) & 0xFF;
        }
      }
    }
  }
  out.params.resize(n * groups);
  for (int64_t rb = 0; rb < n / kRows; ++rb) {
    for (int64_t g = 0; g < groups; ++g) {
      for (int r = 0; r < kRows; ++r) {
        const int64_t row = rb * kRows + r;
        out.params[(rb * groups + g) * kRows + r] =
            scale_gn[g * n + row] | (static_cast<uint32_t>(zero_gn[g * n + row]) << 16);
      }
    }
  }
  return out;
}

}  // namespace gquant::cuda
