#include <cuda_bf16.h>

#include "absl/strings/str_format.h"
#include "cuda_status.cuh"
#include "int4_gemv.cuh"

namespace gquant::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kChunk = 32;  // weights per 16-byte load
// Chunks each lane loads before using any: keeps 16-byte loads in flight.
constexpr int kChunksInFlight = 2;

// Eight bf16 activations (one 16-byte load) as floats.
__device__ __forceinline__ void LoadX8(const __nv_bfloat16* p, float (&out)[8]) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(w[i] << 16);
    out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// The eight nibbles of `word` (nibble t = element t) as exact floats:
// float bits 0x4B000000 | v are 2^23 + v, so one OR and one subtract replace
// the slow integer-to-float conversion.
__device__ __forceinline__ void Nibbles8(uint32_t word, float (&q)[8]) {
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    q[t] = __uint_as_float(0x4B000000u | ((word >> (4 * t)) & 0xFu)) - 8388608.0f;
  }
}

__device__ __forceinline__ uint32_t Word(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// One warp per R rows; lane l takes chunks l, l + 32, ... of K.
template <int M, int R, bool kMinForm>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    Int4GemvKernel(const uint4* __restrict__ qweight, const __nv_bfloat162* __restrict__ params,
                   const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y, int n, int k,
                   int chunks_per_group) {
  const int lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kWarpsPerBlock + threadIdx.x / 32) * R;
  if (row0 >= n) return;
  const int chunks = k / kChunk;
  const int groups = chunks / chunks_per_group;
  float acc[M][R] = {};
  for (int base = lane; base < chunks; base += 32 * kChunksInFlight) {
    uint4 w[kChunksInFlight][R];
    __nv_bfloat162 p[kChunksInFlight][R];
#pragma unroll
    for (int u = 0; u < kChunksInFlight; ++u) {
      const int c = min(base + 32 * u, chunks - 1);  // clamped; unused when out of range
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t row = min(row0 + r, n - 1);  // rows past N: computed, never stored
        w[u][r] = __ldg(qweight + row * chunks + c);
        p[u][r] = params[row * groups + c / chunks_per_group];
      }
    }
#pragma unroll
    for (int u = 0; u < kChunksInFlight; ++u) {
      const int c = base + 32 * u;
      if (c >= chunks) break;
      float dot[M][R] = {}, xsum[M] = {};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float xv[M][8];
#pragma unroll
        for (int mi = 0; mi < M; ++mi) {
          LoadX8(x + static_cast<int64_t>(mi) * k + c * kChunk + 8 * j, xv[mi]);
#pragma unroll
          for (int t = 0; t < 8; ++t) xsum[mi] += xv[mi][t];
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float q[8];
          Nibbles8(Word(w[u][r], j), q);
#pragma unroll
          for (int mi = 0; mi < M; ++mi) {
#pragma unroll
            for (int t = 0; t < 8; ++t) dot[mi][r] = fmaf(q[t], xv[mi][t], dot[mi][r]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float s = __low2float(p[u][r]), z = __high2float(p[u][r]);
#pragma unroll
        for (int mi = 0; mi < M; ++mi) {
          acc[mi][r] += kMinForm ? s * dot[mi][r] - z * xsum[mi] : s * (dot[mi][r] - z * xsum[mi]);
        }
      }
    }
  }
#pragma unroll
  for (int mi = 0; mi < M; ++mi) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[mi][r] += __shfl_xor_sync(0xffffffffu, acc[mi][r], offset);
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (row0 + r >= n) break;
#pragma unroll
      for (int mi = 0; mi < M; ++mi) {
        y[static_cast<int64_t>(mi) * n + row0 + r] = __float2bfloat16(acc[mi][r]);
      }
    }
  }
}

template <int M, int R>
absl::Status Launch(const Int4GemvWeight& w, const __nv_bfloat16* x, __nv_bfloat16* y,
                    cudaStream_t stream) {
  const int64_t warps = (w.n + R - 1) / R;
  const dim3 grid(static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const auto* q = reinterpret_cast<const uint4*>(w.qweight);
  const int n = static_cast<int>(w.n), k = static_cast<int>(w.k);
  const int chunks_per_group = w.group_size / kChunk;
  if (w.min_form) {
    Int4GemvKernel<M, R, true>
        <<<grid, kWarpsPerBlock * 32, 0, stream>>>(q, w.params, x, y, n, k, chunks_per_group);
  } else {
    Int4GemvKernel<M, R, false>
        <<<grid, kWarpsPerBlock * 32, 0, stream>>>(q, w.params, x, y, n, k, chunks_per_group);
  }
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// Rows per warp by M: more rows share each activation load as M grows.
template <int M>
absl::Status LaunchForM(const Int4GemvWeight& w, const __nv_bfloat16* x, __nv_bfloat16* y,
                        cudaStream_t stream, int rows_per_warp) {
  switch (rows_per_warp != 0 ? rows_per_warp : (M <= 2 ? 2 : 4)) {
    case 1:
      return Launch<M, 1>(w, x, y, stream);
    case 2:
      return Launch<M, 2>(w, x, y, stream);
    case 4:
      return Launch<M, 4>(w, x, y, stream);
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("Int4Gemv: rows_per_warp must be 1, 2 or 4, not %d", rows_per_warp));
  }
}

}  // namespace

absl::Status Int4Gemv(const Int4GemvWeight& w, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                      cudaStream_t stream, int rows_per_warp) {
  if (w.qweight == nullptr || w.params == nullptr || x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("Int4Gemv: null pointer");
  }
  if (w.n <= 0 || w.k <= 0 || w.k % kChunk != 0 || w.group_size <= 0 ||
      w.group_size % kChunk != 0 || w.k % w.group_size != 0 || w.n > (int64_t{1} << 30) ||
      w.k > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Int4Gemv: expected N > 0 and K a multiple of the group size, itself a multiple of 32, "
        "but got N=%d K=%d group=%d",
        w.n, w.k, w.group_size));
  }
  switch (m) {
    case 1:
      return LaunchForM<1>(w, x, y, stream, rows_per_warp);
    case 2:
      return LaunchForM<2>(w, x, y, stream, rows_per_warp);
    case 3:
      return LaunchForM<3>(w, x, y, stream, rows_per_warp);
    case 4:
      return LaunchForM<4>(w, x, y, stream, rows_per_warp);
    case 5:
      return LaunchForM<5>(w, x, y, stream, rows_per_warp);
    case 6:
      return LaunchForM<6>(w, x, y, stream, rows_per_warp);
    case 7:
      return LaunchForM<7>(w, x, y, stream, rows_per_warp);
    case 8:
      return LaunchForM<8>(w, x, y, stream, rows_per_warp);
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("Int4Gemv: M must be 1..%d, but got %d", kInt4GemvMaxM, m));
  }
}

std::vector<uint32_t> PackInt4GemvParams(std::span<const uint16_t> scale_gn,
                                         std::span<const uint16_t> zero_gn, int64_t n,
                                         int64_t groups) {
  std::vector<uint32_t> params(n * groups);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t r = 0; r < n; ++r) {
      // bf16x2: scale in the low half, zero (or min) in the high half.
      params[r * groups + g] =
          scale_gn[g * n + r] | (static_cast<uint32_t>(zero_gn[g * n + r]) << 16);
    }
  }
  return params;
}

}  // namespace gquant::cuda
