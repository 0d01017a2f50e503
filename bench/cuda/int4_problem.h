// Device buffers of one int4 g32 benchmark (decode GEMV and prefill GEMM):
// rotating copies of random codes and of (scale, zero) = (2^-7, 2^-7) in bf16
// (sane values; the speed does not depend on them), activations and the
// output, in the cuda_int4_mma16 layout.
#ifndef GQUANT_BENCH_CUDA_INT4_PROBLEM_H_
#define GQUANT_BENCH_CUDA_INT4_PROBLEM_H_

#include <cuda_bf16.h>

#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

#include "cuda_bench_util.h"
#include "int4_mma_gemv.cuh"

namespace gquant::cuda::bench {

struct Int4Problem {
  static constexpr int kGroup = 32;

  const LinearShape& shape;
  int64_t m;
  int64_t bytes;  // codes + params of one copy
  int copies;
  std::vector<DeviceBuffer<uint8_t>> codes;
  std::vector<DeviceBuffer<uint32_t>> params;
  DeviceBuffer<uint16_t> x, y;  // empty when m == 0 (weights only)

  Int4Problem(const LinearShape& s, int64_t m_rows) : shape(s), m(m_rows) {
    const int64_t qbytes = s.n * s.k / 2, pbytes = s.n * (s.k / kGroup) * 4;
    bytes = qbytes + pbytes;
    copies = Copies(bytes);
    codes = RandomCopies<uint8_t>(qbytes, copies, 1);
    for (int c = 0; c < copies; ++c) {
      params.push_back(Upload(std::vector<uint32_t>(pbytes / 4, 0x3C003C00u)));
    }
    if (m > 0) {
      x = Upload(RandomHost<uint16_t>(m * s.k, 99));
      auto out = DeviceBuffer<uint16_t>::Allocate(m * s.n);
      if (!out.ok()) std::abort();
      y = *std::move(out);
    }
  }

  // Copy i % copies as the tensor-core kernels' weight.
  Int4MmaWeight MmaWeight(int64_t i) const {
    return {reinterpret_cast<const uint4*>(codes[i % copies].data()),
            Params(i),
            shape.n,
            shape.k,
            kGroup,
            false};
  }
  const __nv_bfloat16* X() const { return reinterpret_cast<const __nv_bfloat16*>(x.data()); }
  __nv_bfloat16* Y() { return reinterpret_cast<__nv_bfloat16*>(y.data()); }

 private:
  const __nv_bfloat162* Params(int64_t i) const {
    return reinterpret_cast<const __nv_bfloat162*>(params[i % copies].data());
  }
};

}  // namespace gquant::cuda::bench

#endif  // GQUANT_BENCH_CUDA_INT4_PROBLEM_H_
